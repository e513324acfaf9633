#!/usr/bin/env bash
# Measures a GPU host in one command, within 8 minutes: the benchmark entries in float32 and
# bfloat16, a short recipe training run, and how far bfloat16 moves that checkpoint's bounds.
#
#   bash benchmarks/gpu_check.sh --prepare [CARRY [--data-dir D] [--no-wheels]]   # here
#   bash benchmarks/gpu_check.sh OUT_DIR             # on the GPU host, from the repo root
#   bash benchmarks/gpu_check.sh --dry-run OUT_DIR   # every phase, tiny, on the CPU
#
# --prepare fills CARRY (default .gpu_check/, gitignored) with the wheels a bare GPU host
# lacks (ml-collections, PyYAML, absl-py; pure Python but PyYAML, for Python 3.12) and the
# prepared numpy cache of Omniglot's train and test splits (22 MB; `python -m vma_jax.data`
# first). Copy the repository with CARRY to the GPU host; there the check installs only the
# packages that are missing, from those wheels (`pip install --no-index --no-deps --target`,
# never over the host's JAX), and reads the data from CARRY/data.
#
# Phases, each under its own `timeout`, all together within VMA_GPU_CHECK_SECONDS (480):
#   install     the missing packages from CARRY/wheels; the carried files' checksums
#   probe       JAX version, devices, the package's imports (no GPU: the rest is skipped)
#   lower_cuda  (--dry-run only) the train step and the bound lowered for CUDA
#   bench_<dtype>_<entry>   benchmarks/run.py --only <entry> --dtype <dtype>, with the
#               same-run matmul, at the benchmark sizes (float32, then bfloat16)
#   train       train.py, configs/default.py, VMA_GPU_CHECK_STEPS (300) steps from scratch,
#               one checkpoint at the end, no event files; the step time after the first
#               log interval
#   precision   benchmarks/precision.py on that checkpoint: bfloat16 vs float32 on the cells
#               VMA_GPU_CHECK_CELLS (1:1,1:5,2:19), VMA_GPU_CHECK_TARGETS (256) targets each
# OUT_DIR gets gpu_check.json (every figure, and how each phase ended) and gpu_check.log
# (every phase's output). Scratch (checkpoints, phase outputs) goes to VMA_GPU_CHECK_WORK
# (default: a new folder under /tmp). PYTHON (default python3) runs everything.
# Exit status: 0 if every phase finished, 1 otherwise (the JSON is written either way).

set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
CARRY=${VMA_GPU_CHECK_CARRY:-$ROOT/.gpu_check}

usage() {
  echo "usage: bash benchmarks/gpu_check.sh [--dry-run] OUT_DIR | --prepare [CARRY [...]]" >&2
  exit 2
}

MODE=gpu
case "${1:-}" in
  --prepare)
    exec "$PY" benchmarks/gpu_check.py prepare --carry "${2:-$CARRY}" "${@:3}" ;;
  --dry-run) MODE=dry-run; shift ;;
  -h|--help|"") usage ;;
esac
[ $# -eq 1 ] || usage
OUT_DIR=$1
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG=$OUT_DIR/gpu_check.log
: >"$LOG"
WORK=${VMA_GPU_CHECK_WORK:-$(mktemp -d /tmp/vma_gpu_check.XXXXXX)}
mkdir -p "$WORK" || exit 2
WORK=$(cd "$WORK" && pwd)
# A fresh start: train.py would resume from an earlier run's checkpoint.
rm -rf "$WORK/train" "$WORK/results" "$WORK/logs" "$WORK/phases.tsv"
mkdir -p "$WORK/results" "$WORK/logs"
RES=$WORK/results

STEPS=${VMA_GPU_CHECK_STEPS:-300}
CELLS=${VMA_GPU_CHECK_CELLS:-1:1,1:5,2:19}
TARGETS=${VMA_GPU_CHECK_TARGETS:-256}
export PYTHONUNBUFFERED=1
# Compiled programs are kept across the check's processes: one compiled twice (the recipe
# step of bench_float32_train_recipe and of train, where XLA sees the same program) loads.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/jax_cache}
if [ -d "$CARRY/data/vma_jax" ]; then
  export TFDS_DATA_DIR=$CARRY/data
fi

# Seconds per phase: 450 s in all, 465 s with the report's, not yet set from a GPU run. A
# phase also never runs past the whole check's limit, less REPORT_S for the JSON.
declare -A BUDGET=(
  [install]=15 [probe]=30
  [bench_float32_train_recipe]=50 [bench_float32_eval_t19_k1000]=45
  [bench_float32_train_small]=35
  [bench_bfloat16_train_recipe]=50 [bench_bfloat16_eval_t19_k1000]=45
  [bench_bfloat16_train_small]=35
  [train]=80 [precision]=65)
if [ "$MODE" = gpu ]; then
  LIMIT=${VMA_GPU_CHECK_SECONDS:-480}
  BENCH_ARGS=(--matmul-n 8192 --repeats 20)
  TRAIN_ARGS=("--config.train.num_steps=$STEPS" --config.train.log_every=50)
  PRECISION_ARGS=("--cells=$CELLS" "--num_targets=$TARGETS")
else
  # The same phases at tiny sizes on the CPU: what they run, not how fast.
  LIMIT=${VMA_GPU_CHECK_SECONDS:-1800}
  for phase in "${!BUDGET[@]}"; do BUDGET[$phase]=600; done
  BUDGET[lower_cuda]=600
  export JAX_PLATFORMS=cpu
  # gpu_check.py's DRY_RUN_XLA_FLAGS (tests/test_gpu_check.py checks the two agree).
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_cpu_use_fusion_emitters=false"
  BENCH_ARGS=(--batch 2 --memory 3 --samples 2 --chunk-size 2 --repeats 2 --warmup 1
              --matmul-n 64 --cpu-devices 1)
  TRAIN_ARGS=(--config.train.num_steps=6 --config.train.log_every=2
              --config.train.batch_size=4 --config.validation.batch_size=4
              --config.episodes.memory_size=4 --config.episodes.per_class=2
              --config.model.latent_dim=8 --config.model.embed_dim=16
              --config.model.match_dim=16 --cpu_devices=1)
  PRECISION_ARGS=(--cells=1:1,2:3 --num_targets=4 --num_importance=4 --batch_size=2
                  --chunk_size=2 --cpu_devices=1)
fi
REPORT_S=15
MIN_PHASE_S=5
DEADLINE=$((SECONDS + LIMIT))

log() { echo "$*" | tee -a "$LOG"; }

record() {  # record NAME STATUS RC SECONDS LIMIT NOTE
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$WORK/phases.tsv"
}

skip() {  # skip NAME WHY
  record "$1" skipped "" 0 0 "$2"
  log "[$1] skipped: $2"
}

# phase NAME CMD...: runs CMD under min(its budget, the time left); OK_RC (default "0") are
# the exit statuses that count as finished. Returns 0 if it finished.
phase() {
  local name=$1 ok_rc=${OK_RC:-0}
  shift
  local left=$((DEADLINE - SECONDS - REPORT_S)) budget=${BUDGET[$name]}
  local limit=$((budget < left ? budget : left))
  if [ "$limit" -lt "$MIN_PHASE_S" ]; then
    skip "$name" "no time left of the check's ${LIMIT} s"
    return 1
  fi
  log "[$name] up to ${limit} s: $*"
  local start=$SECONDS rc status
  set -o pipefail
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$WORK/logs/$name.log" >>"$LOG"
  rc=$?
  set +o pipefail
  if [[ " $ok_rc " == *" $rc "* ]]; then
    status=finished
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status=timed_out
  else
    status=failed
  fi
  record "$name" "$status" "$rc" $((SECONDS - start)) "$limit" ""
  log "[$name] $status (exit $rc) after $((SECONDS - start)) s"
  [ "$status" = finished ]
}

log "gpu_check $MODE: $(date -u +%FT%TZ), limit ${LIMIT} s, work $WORK, carry $CARRY"
phase install "$PY" benchmarks/gpu_check.py install --wheels "$CARRY/wheels" \
  --carry "$CARRY" --target "$WORK/site" --out "$RES/install.json"
export PYTHONPATH="$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

STOP=""
phase probe "$PY" benchmarks/gpu_check.py probe --mode "$MODE" --out "$RES/probe.json" \
  || STOP="the probe failed (no GPU, or the package does not import): see its log"

if [ "$MODE" = dry-run ]; then
  if [ -z "$STOP" ]; then
    phase lower_cuda "$PY" benchmarks/gpu_check.py lower --platform cuda --out "$RES/lower.json"
  else
    skip lower_cuda "$STOP"
  fi
fi

for dtype in float32 bfloat16; do
  for entry in train_recipe eval_t19_k1000 train_small; do
    name=bench_${dtype}_${entry}
    if [ -n "$STOP" ]; then skip "$name" "$STOP"; continue; fi
    phase "$name" "$PY" benchmarks/run.py --only "$entry" --dtype "$dtype" \
      --out "$RES/$name.json" "${BENCH_ARGS[@]}"
  done
done

if [ -n "$STOP" ]; then
  skip train "$STOP"
  skip precision "$STOP"
else
  # No event files: the check reads metrics.jsonl, and the GPU host has neither CLU nor
  # TensorFlow (the dry run then imports what the host does, not TensorFlow: 10-15 s on 2 cores).
  if phase train "$PY" train.py --config=configs/default.py --workdir="$WORK/train" \
      --config.train.checkpoint_every=1000000 --config.train.max_checkpoints=1 \
      --config.train.validate_every=0 --config.train.image_every=0 \
      --config.train.tensorboard=False "${TRAIN_ARGS[@]}"; then
    # Exit status 1: a gap of 0.1 nat or more, which the JSON reports (a measurement too).
    OK_RC="0 1" phase precision "$PY" benchmarks/precision.py --workdir="$WORK/train" \
      --dtype=bfloat16 --out "$RES/precision.json" "${PRECISION_ARGS[@]}"
  else
    skip precision "training wrote no checkpoint"
  fi
fi

timeout -k 2 $((REPORT_S - 3)) "$PY" benchmarks/gpu_check.py report --work "$WORK" \
  --mode "$MODE" --limit-s "$LIMIT" --elapsed-s "$SECONDS" \
  --setting "bench_args=${BENCH_ARGS[*]}" --setting "train_args=${TRAIN_ARGS[*]}" \
  --setting "precision_args=${PRECISION_ARGS[*]}" --setting "carry=$CARRY" \
  --setting "work=$WORK" --setting "tfds_data_dir=${TFDS_DATA_DIR:-}" \
  --out "$OUT_DIR/gpu_check.json" 2>&1 | tee -a "$LOG"
if [ ! -s "$OUT_DIR/gpu_check.json" ]; then
  log "the report failed: no $OUT_DIR/gpu_check.json"
  exit 1
fi
log "wrote $OUT_DIR/gpu_check.json and $LOG in ${SECONDS} s"
! grep -qv $'\tfinished\t' "$WORK/phases.tsv"
