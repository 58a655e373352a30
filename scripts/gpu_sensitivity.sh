#!/usr/bin/env bash
# The sensitivity map at the paper's size (configs/sensitivity_gpu.yaml: VGG-19 and ResNet-110,
# ±BN, α × schedule × scope × classifier base, 5 seeds, 640 runs) on one CUDA GPU, in parts that
# each end within 9 minutes and resume where the last stopped:
#
#   bash scripts/gpu_sensitivity.sh vgg19         # repeat each part until it reports "todo: 0"
#   bash scripts/gpu_sensitivity.sh vgg19_bn
#   bash scripts/gpu_sensitivity.sh resnet110
#   bash scripts/gpu_sensitivity.sh resnet110_bn
#   bash scripts/gpu_sensitivity.sh report        # tables, the paired differences and the α map
#
# A part starts no new run after MAX_MINUTES (default 7.5) and is stopped at 8.75 minutes; a run cut
# off is simply run again by the next call (records are written whole, one line each). JOBS
# (default 2) processes share the GPU, each taking every JOBS-th run of the part (compare --shard):
# these nets at batch 128 leave a large GPU mostly idle, and records append safely side by side.
# bf16 autocast and channels_last are on. Runs are seed-major, so a map stopped early has whole
# seeds. Environment: PYTHON (default python3), DATA_DIR (Fashion-MNIST IDX files; default: the
# Debian folder), RESULTS (default results/sensitivity_gpu.jsonl), SEEDS (e.g. "0,1,2"), JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: gpu_sensitivity.sh vgg19|vgg19_bn|resnet110|resnet110_bn|report}
PY=${PYTHON:-python3}
CONFIG=configs/sensitivity_gpu.yaml
RESULTS=${RESULTS:-results/sensitivity_gpu.jsonl}
MAX_MINUTES=${MAX_MINUTES:-7.5}
JOBS=${JOBS:-2}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

case "$part" in
  vgg19|vgg19_bn|resnet110|resnet110_bn) where=(--where "model=$part") ;;
  report) exec "$PY" -m emergeinit.cli report "$RESULTS" --out "${RESULTS%.jsonl}_report" ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
sets=(--set device=cuda --set amp=true --set channels_last=true)
[ -n "${DATA_DIR:-}" ] && sets+=(--set "data_dir=$DATA_DIR")
[ -n "${SEEDS:-}" ] && where+=(--where "seed=[${SEEDS//,/}]")
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
pids=()
for i in $(seq 1 "$JOBS"); do
  timeout --signal=INT 525 "$PY" -m emergeinit.cli compare --config "$CONFIG" --results "$RESULTS" \
    "${sets[@]}" "${where[@]}" --shard "$i/$JOBS" --max-minutes "$MAX_MINUTES" --no-progress &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
"$PY" -m emergeinit.cli compare --config "$CONFIG" --results "$RESULTS" "${sets[@]}" "${where[@]}" --dry-run \
  | awk '{n[$2]++} END {printf "done: %d, todo: %d\n", n["done"], n["todo"]}'
exit $status
