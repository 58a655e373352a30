#!/usr/bin/env bash
# The paper's Table-1 grid (configs/table1.yaml) on Fashion-MNIST-32, on one CUDA GPU, in parts
# that each end within 10 minutes and resume where the last stopped:
#
#   bash scripts/gpu_table1.sh vgg        # VGG-19 ±BN
#   bash scripts/gpu_table1.sh resnet     # ResNet-110 without BN
#   bash scripts/gpu_table1.sh resnet_bn  # ResNet-110 with BN
#   bash scripts/gpu_table1.sh report     # tables and plots from what has run so far
#
# Each part starts no new run after MAX_MINUTES (default 8) and is killed at 9.5 minutes; a run
# cut off is simply run again by the next call (records are written whole, one line each).
# bf16 autocast and channels_last are on: bf16 needs no loss scaling, and every model here is a
# plain conv net (no ops that channels_last breaks). Runs are seed-major: all cells get seed 0
# first, so a grid stopped early still has whole seeds. Environment: PYTHON (default python3,
# with torch, pyyaml, tqdm, matplotlib), DATA_DIR (Fashion-MNIST IDX files; default: the Debian
# folder), RESULTS (default results/table1_fmnist32.jsonl), SEEDS (e.g. "0,1,2" to cap seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: gpu_table1.sh vgg|resnet|resnet_bn|report}
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-results/table1_fmnist32.jsonl}
MAX_MINUTES=${MAX_MINUTES:-8}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

case "$part" in
  vgg) where=(--where 'model=vgg19*') ;;
  resnet) where=(--where 'model=resnet110') ;;
  resnet_bn) where=(--where 'model=resnet110_bn') ;;
  report) exec "$PY" -m emergeinit.cli report "$RESULTS" --out "${RESULTS%.jsonl}_report" ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
sets=(--set dataset=fashion-mnist-32 --set device=cuda --set amp=true --set channels_last=true)
[ -n "${DATA_DIR:-}" ] && sets+=(--set "data_dir=$DATA_DIR")
[ -n "${SEEDS:-}" ] && where+=(--where "seed=[${SEEDS//,/}]")
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
status=0
timeout --signal=INT 570 "$PY" -m emergeinit.cli compare --config configs/table1.yaml \
  --results "$RESULTS" "${sets[@]}" "${where[@]}" --max-minutes "$MAX_MINUTES" --no-progress || status=$?
"$PY" -m emergeinit.cli compare --config configs/table1.yaml --results "$RESULTS" "${sets[@]}" \
  "${where[@]}" --dry-run | awk '{n[$2]++} END {for (k in n) printf "%s: %d\n", k, n[k]}'
exit $status
