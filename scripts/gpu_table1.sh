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
# many runs are done / failed / to do and the report. Runs are seed-major: all cells get seed 0
# first, so a grid stopped early has whole seeds. Environment: gpu_common.sh's, and RESULTS
# (default results/table1_fmnist32.jsonl).
set -euo pipefail
part=${1:?usage: gpu_table1.sh vgg|resnet|resnet_bn|report|stage|smoke}
[ "$part" = smoke ] && export SMOKE=1
source "$(dirname "$0")/gpu_common.sh"

if [ "$SMOKE" = 1 ]; then
  RESULTS=${RESULTS:-$SMOKE_DIR/table1_smoke.jsonl}
  SEEDS=${SEEDS-0} JOBS=${JOBS:-2}
else
  RESULTS=${RESULTS:-results/table1_fmnist32.jsonl}
  JOBS=${JOBS:-4}
fi
read -r -a sets <<< "$(gpu_image_sets)"

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
