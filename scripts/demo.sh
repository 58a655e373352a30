#!/usr/bin/env bash
# The main job of the README: set up, then run the demo on the offline Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/emergeinit demo "$@"
