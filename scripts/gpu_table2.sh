#!/usr/bin/env bash
# The paper's Table 2 (configs/table2.yaml: Xavier, T-Fixup, the global and the blockwise emergence
# schemes; post-LN transformer 6+6 layers, d 512, FFN 1024) on one CUDA GPU, one seed per part of
# at most 9 minutes, every init of the seed side by side:
#
#   bash scripts/gpu_table2.sh seed0      # seed 0: 5 runs at once, EPOCHS (6) epochs each
#   bash scripts/gpu_table2.sh seed1      # seed 1 (seed2 likewise); repeat a part until "todo 0"
#   bash scripts/gpu_table2.sh report     # Table-2 report and plots from what has run so far
#   bash scripts/gpu_table2.sh stage      # copy the offline data into data/ (to carry it to a GPU box)
#   bash scripts/gpu_table2.sh smoke      # part seed0 on the CPU at tiny sizes, then the report (a check)
#
# Training uses bf16 autocast and the fused AdamW; after every epoch the validation loss and BLEU
# (beam 5 with incremental decoding under bf16, the first BLEU_SENTENCES (500) test sentences, in
# decoding batches of 16384 tokens). Besides gpu_common.sh's: DATASET (trans-de-en, the offline
# corpus; or iwslt14), DATA_DIR (default data/trans/de-en when present, else the Debian file; for
# iwslt14 the prepared or raw folder), EPOCHS (6), BLEU_SENTENCES (500; 0: the whole split),
# RESULTS (default results/table2_<dataset>.jsonl).
set -euo pipefail
part=${1:?usage: gpu_table2.sh seed0|seed1|seed2|report|stage|smoke}
[ "$part" = smoke ] && export SMOKE=1
source "$(dirname "$0")/gpu_common.sh"

DATASET=${DATASET:-trans-de-en}
if [ "$SMOKE" = 1 ]; then
  RESULTS=${RESULTS:-$SMOKE_DIR/table2_smoke.jsonl}
  JOBS=${JOBS:-2} EPOCHS=${EPOCHS:-2} BLEU_SENTENCES=${BLEU_SENTENCES:-4}
  sizes=(--set dim=16 --set ffn_dim=32 --set heads=2 --set encoder_layers=1 --set decoder_layers=1
         --set vocab_size=120 --set max_tokens=200 --set max_epoch_steps=2 --set warmup_steps=3
         --set train_limit=100 --set valid_size=4 --set test_size=4 --set "cache_dir=$SMOKE_DIR/cache")
else
  RESULTS=${RESULTS:-results/table2_${DATASET}.jsonl}
  JOBS=${JOBS:-5} EPOCHS=${EPOCHS:-6} BLEU_SENTENCES=${BLEU_SENTENCES:-500}
  sizes=(--set decode_max_tokens=16384)
fi
if [ -z "${DATA_DIR:-}" ] && [ "$DATASET" = trans-de-en ] && [ -f data/trans/de-en ]; then
  DATA_DIR=data/trans/de-en
fi
sets=(--set "dataset=$DATASET" $(gpu_device_sets) --set "epochs=$EPOCHS" --set bleu_beam=5
      --set "bleu_max_sentences=$BLEU_SENTENCES" "${sizes[@]}")
[ -n "${DATA_DIR:-}" ] && sets+=(--set "data_dir=$DATA_DIR")

table2_part() {  # table2_part SEED
  gpu_part configs/table2.yaml "$RESULTS" "${sets[@]}" --where "seed=$1"
}

status=0
case "$part" in
  seed[0-9]) gpu_check; table2_part "${part#seed}" || status=$? ;;
  smoke) table2_part 0 || status=$? ;;  # the seed parts differ in their seed only
  report) ;;
  stage) gpu_stage; exit 0 ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
gpu_report "$RESULTS"
exit $status
