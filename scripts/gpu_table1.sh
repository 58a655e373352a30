#!/usr/bin/env bash
# The paper's Table-1 grid (configs/table1.yaml: 4 models x 8 rows x 5 seeds) on Fashion-MNIST-32,
# on one CUDA GPU, in parts of at most 9 minutes that resume where the last one stopped:
#
#   bash scripts/gpu_table1.sh vgg        # VGG-19 +-BN           (repeat a part until "todo 0")
#   bash scripts/gpu_table1.sh resnet     # ResNet-110 without BN
#   bash scripts/gpu_table1.sh resnet_bn  # ResNet-110 with BN
#   bash scripts/gpu_table1.sh report     # tables and plots from what has run so far
#   bash scripts/gpu_table1.sh stage      # copy the offline data into data/ (to carry it to a GPU box)
#   bash scripts/gpu_table1.sh smoke      # every part on the CPU at tiny sizes, seed 0 (a check)
#
# Each part runs JOBS (default 4) runs side by side on the GPU, with bf16 autocast, channels_last,
# torch.compile with CUDA graphs (compiled once per model in each worker, reused by its later
# runs), the fused optimizer, cuDNN autotuning and evaluation in batches of 5000; it ends with how
# many runs are done / to do and the report. Runs are seed-major: all cells get seed 0 first, so a
# grid stopped early has whole seeds. Besides gpu_common.sh's: DATA_DIR (Fashion-MNIST IDX files;
# default data/fashion-mnist when present, else the Debian folder), RESULTS (default
# results/table1_fmnist32.jsonl), COMPILE (default reduce-overhead; false in smoke mode: compiling
# these nets takes minutes on a CPU, and tests/test_bench_speed.py checks the compiled path there).
set -euo pipefail
part=${1:?usage: gpu_table1.sh vgg|resnet|resnet_bn|report|stage|smoke}
[ "$part" = smoke ] && export SMOKE=1
source "$(dirname "$0")/gpu_common.sh"

if [ "$SMOKE" = 1 ]; then
  RESULTS=${RESULTS:-$SMOKE_DIR/table1_smoke.jsonl}
  SEEDS=${SEEDS-0} JOBS=${JOBS:-2} COMPILE=${COMPILE:-false}
  sizes=(--set train_limit=8 --set test_limit=4 --set batch_size=2 --set eval_batch_size=4
         --set max_epoch_steps=1 --set emergence_batch_size=2 --set init_batch_size=2 --set init_iterations=1)
else
  RESULTS=${RESULTS:-results/table1_fmnist32.jsonl}
  JOBS=${JOBS:-4} COMPILE=${COMPILE:-reduce-overhead}
  sizes=(--set eval_batch_size=5000)
fi
[ -z "${DATA_DIR:-}" ] && [ -d data/fashion-mnist ] && DATA_DIR=data/fashion-mnist
sets=(--set dataset=fashion-mnist-32 $(gpu_device_sets) --set channels_last=true --set "compile=$COMPILE"
      --set cudnn_benchmark=true "${sizes[@]}")
[ -n "${DATA_DIR:-}" ] && sets+=(--set "data_dir=$DATA_DIR")

table1_part() {
  local where
  case "$1" in
    vgg) where='model=vgg19*' ;;
    resnet) where='model=resnet110' ;;
    resnet_bn) where='model=resnet110_bn' ;;
    *) echo "unknown part $1" >&2; return 2 ;;
  esac
  gpu_part configs/table1.yaml "$RESULTS" "${sets[@]}" --where "$where"
}

status=0
case "$part" in
  vgg|resnet|resnet_bn) gpu_check; table1_part "$part" || status=$? ;;
  smoke) for p in vgg resnet resnet_bn; do table1_part "$p" || status=$?; done ;;
  report) ;;
  stage) gpu_stage; exit 0 ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
gpu_report "$RESULTS"
exit $status
