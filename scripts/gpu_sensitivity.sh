#!/usr/bin/env bash
# The sensitivity map at the paper's size (configs/sensitivity_gpu.yaml: VGG-19 and ResNet-110,
# ±BN, α × schedule × scope × classifier base, 5 seeds, 640 runs) on one CUDA GPU, in parts that
# each end within 9 minutes and resume where the last stopped:
#
#   bash scripts/gpu_sensitivity.sh vgg19         # repeat each part until it reports "todo 0"
#   bash scripts/gpu_sensitivity.sh vgg19_bn
#   bash scripts/gpu_sensitivity.sh resnet110
#   bash scripts/gpu_sensitivity.sh resnet110_bn
#   bash scripts/gpu_sensitivity.sh report        # tables, the paired differences and the α map
#   bash scripts/gpu_sensitivity.sh stage         # copy the offline data into data/ (for a GPU box)
#
# A part is scripts/gpu_common.sh's: JOBS (default 4) runs side by side on the GPU (these nets at
# batch 128 leave a large GPU mostly idle), no run started after MAX_MINUTES, the part stopped at
# PART_SECONDS, a run cut off run again by the next call, and at its end the runs done / failed /
# to do and the report. The image settings are gpu_table1.sh's (bf16, channels_last, compile with
# CUDA graphs, fused SGD, cuDNN autotuning). Runs are seed-major, so a map stopped early has whole
# seeds. Environment: gpu_common.sh's, and RESULTS (default results/sensitivity_gpu.jsonl).
set -euo pipefail
part=${1:?usage: gpu_sensitivity.sh vgg19|vgg19_bn|resnet110|resnet110_bn|report|stage}
source "$(dirname "$0")/gpu_common.sh"
RESULTS=${RESULTS:-results/sensitivity_gpu.jsonl}
JOBS=${JOBS:-4}
read -r -a sets <<< "$(gpu_image_sets)"

status=0
case "$part" in
  vgg19|vgg19_bn|resnet110|resnet110_bn)
    gpu_check
    gpu_part configs/sensitivity_gpu.yaml "$RESULTS" "${sets[@]}" --where "model=$part" || status=$? ;;
  report) ;;
  stage) gpu_stage; exit 0 ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
gpu_report "$RESULTS"
exit $status
