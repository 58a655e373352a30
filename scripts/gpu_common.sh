# Shared by the scripts that run a grid on one GPU in parts (scripts/gpu_table1.sh,
# scripts/gpu_table2.sh, scripts/gpu_sensitivity.sh); source it, never run it. A part is one `emergeinit compare` call:
#
#   * several runs side by side on the GPU (--jobs $JOBS worker processes; only the driver writes);
#   * time-boxed: no run starts after $MAX_MINUTES, and the whole part is interrupted after
#     $PART_SECONDS (default 540 = 9 min); records are written whole, one line each, so the next
#     call of the same part resumes with what is missing (a run cut off is run again);
#   * it ends by printing how many of its runs are done, failed (error records: run again by the
#     next call; the report lists them) and still to do, and rewriting the report.
#
# SMOKE=1 runs the same code path on the CPU at tiny sizes (a few steps per run, into $SMOKE_DIR),
# so a script can be checked where there is no GPU (tests/test_gpu_scripts.py does).
#
# Environment: PYTHON (default .venv/bin/python if present, else python3; needs torch, pyyaml,
# tqdm, matplotlib; sentencepiece and sacrebleu for translation), JOBS, MAX_MINUTES (7),
# PART_SECONDS (540), SEEDS (e.g. "0,1": only these seeds), DATA_DIR, COMPILE (image task), SMOKE,
# SMOKE_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SMOKE=${SMOKE:-0}
MAX_MINUTES=${MAX_MINUTES:-7}
PART_SECONDS=${PART_SECONDS:-540}
if [ "$SMOKE" = 1 ]; then
  SMOKE_DIR=${SMOKE_DIR:-$(mktemp -d)}
  mkdir -p "$SMOKE_DIR"
fi

# The device and the settings every task shares: bf16 autocast (a no-op on the CPU), the fused
# optimizer, and the CPU cores shared out among the JOBS runs; smoke mode runs them on the CPU, one
# thread per run. Task settings are the caller's (call this after setting JOBS).
gpu_device_sets() {
  if [ "$SMOKE" = 1 ]; then
    echo "--set device=cpu --set cpu_threads=1 --set amp=true --set optimizer_impl=fused"
  else
    local threads=$(( $(nproc) / ${JOBS:-1} ))
    echo "--set device=cuda --set cpu_threads=$(( threads > 0 ? threads : 1 )) --set amp=true --set optimizer_impl=fused"
  fi
}

# The image task's settings (call after setting JOBS): on the GPU, channels_last, torch.compile
# with CUDA graphs (COMPILE, default reduce-overhead), cuDNN autotuning and evaluation in batches of
# 5000; in smoke mode tiny sizes (8 training and 4 test images, batch 2, one step, MetaInit and
# GradInit one iteration) and no compile unless COMPILE says so (compiling these nets takes
# minutes on a CPU; tests/test_bench_speed.py checks the compiled path there). Fashion-MNIST-32
# from DATA_DIR, default data/fashion-mnist when present, else the Debian folder.
gpu_image_sets() {
  local compile sets
  if [ "$SMOKE" = 1 ]; then
    compile=${COMPILE:-false}
    sets="--set train_limit=8 --set test_limit=4 --set batch_size=2 --set eval_batch_size=4 --set max_epoch_steps=1"
    sets+=" --set emergence_batch_size=2 --set init_batch_size=2 --set init_iterations=1"
  else
    compile=${COMPILE:-reduce-overhead}
    sets="--set eval_batch_size=5000"
  fi
  local data=${DATA_DIR:-}
  [ -z "$data" ] && [ -d data/fashion-mnist ] && data=data/fashion-mnist
  echo "--set dataset=fashion-mnist-32 $(gpu_device_sets) --set channels_last=true --set compile=$compile" \
       "--set cudnn_benchmark=true $sets${data:+ --set data_dir=$data}"
}

# Stop early, with a message, when a GPU part is started where torch sees no CUDA device.
gpu_check() {
  [ "$SMOKE" = 1 ] && return 0
  "$PYTHON" -c "import torch, sys; ok = torch.cuda.is_available(); \
print(torch.cuda.get_device_name() if ok else 'no CUDA device (SMOKE=1 runs this on the CPU)'); sys.exit(0 if ok else 3)"
}

# gpu_part CONFIG RESULTS [compare arguments...]: one time-boxed, resumable part, then its status.
gpu_part() {
  local config=$1 results=$2
  shift 2
  local where=()
  [ -n "${SEEDS:-}" ] && where+=(--where "seed=[${SEEDS//,/}]")
  local status=0
  timeout --signal=INT "$PART_SECONDS" "$PYTHON" -m emergeinit.cli compare --config "$config" \
    --results "$results" --jobs "${JOBS:-1}" --max-minutes "$MAX_MINUTES" --no-progress \
    "${where[@]}" "$@" || status=$?
  echo "[part] $(basename "$config") $*: exit $status; runs in this part:"
  "$PYTHON" -m emergeinit.cli compare --config "$config" --results "$results" "${where[@]}" "$@" --dry-run \
    | awk '{n[$2]++} END {printf "  done %d, error %d (run again by the next call), todo %d\n", n["done"], n["error"], n["todo"]}'
  return $status
}

# gpu_report RESULTS: tables and plots from every record so far, next to the results file.
gpu_report() {
  "$PYTHON" -m emergeinit.cli report "$1" --out "${1%.jsonl}_report" | tail -n 2
}

# gpu_stage: copy this machine's offline datasets into data/ (git-ignored), to carry them to a GPU
# machine that lacks them; the scripts read data/ when it is there.
gpu_stage() {
  mkdir -p data/fashion-mnist data/trans
  cp -u /usr/share/datasets/fashion-mnist/*-ubyte* data/fashion-mnist/
  cp -u /usr/share/trans/de-en data/trans/de-en
  du -sh data
}
