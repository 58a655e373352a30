#!/usr/bin/env bash
# One set-up path for the demo, the tests and CI: the offline datasets (Debian), a virtual
# environment in .venv with torch pinned to the local CPU build, and this package with its extras.
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
  [ -e /usr/share/trans/de-en ] || need+=(trans-de-en)
  if [ ${#need[@]} -gt 0 ]; then
    echo "[setup] apt-get install ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  # The package itself asks for torch>=2.2; on this kind of machine 2.13.0 is the local CPU build
  # (a bare 'torch' would pull a multi-GB CUDA build). Override with EMERGEINIT_TORCH=...
  echo "[setup] installing ${EMERGEINIT_TORCH:-torch==2.13.0}"
  .venv/bin/pip install -q "${EMERGEINIT_TORCH:-torch==2.13.0}"
fi
if ! .venv/bin/python -c "import emergeinit, pytest, hypothesis, matplotlib, sentencepiece, sacrebleu, ray, transformers" >/dev/null 2>&1; then
  echo "[setup] installing emergeinit[bench,test]"
  .venv/bin/pip install -q -e ".[bench,test]"
fi
