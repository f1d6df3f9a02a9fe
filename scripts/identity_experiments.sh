#!/usr/bin/env bash
# Identity-preserving variants of Resampling Forcing on bouncing balls, resumable: re-run it
# and every run continues from its last checkpoint.
#
#   1. the shared 1500-step teacher-forcing warm-up (runs/bb_warmup; reused if present,
#      as scripts/bb_experiments.sh makes it)
#   2. one 800-step branch per variant and seed: configs/bb_rf_<variant>.yaml, --init-from
#      runs/bb_warmup (equal compute per variant, the same protocol as bb_resampling)
#   3. evaluation as scripts/bb_evaluate.sh does for bb_resampling: 64 rollouts of 128 chunks
#      from 2 given frames under the rolling context of training, 16 Euler steps, shift 2.0,
#      seed 0 (paired with results/bb/*.json), -> results/identity/<run>.json
#   4. the diagnostics (history gap, identity follow score) of every finished run
#      -> results/identity/diagnostics_<run>.{md,json}
#
# Two training processes with one thread each; an 800-step branch took 12-42 min on 2 CPU
# cores in scripts/bb_experiments.sh. Only the runs named in JOBS are trained:
#   JOBS="rf_channel_stats:0 rf_keep_gt:0" scripts/identity_experiments.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RF=${RESFORCE:-.venv/bin/resforce}
PY=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-runs}
OUT=${OUT:-results/identity}
SAMPLES=${SAMPLES:-64}
CHUNKS=${CHUNKS:-128}
DIAG_SAMPLES=${DIAG_SAMPLES:-16}
mkdir -p "$OUT"

[ -d "$RUNS/bb_warmup/checkpoints" ] ||
  OMP_NUM_THREADS=2 $RF train configs/bb_teacher.yaml run_dir=$RUNS/bb_warmup --stop-at 1500

JOBS=${JOBS:-"rf_channel_stats:0 rf_lowpass:0 rf_keep_gt:0 rf_keep_gt_chunk:0 rf_per_chunk:0
  rf_previous_step:0 rf_calibrated:0 rf_parallel_s3:0 rf_anchor:0 rf_anchor_s3:0"}
for job in $JOBS; do echo "$job"; done | xargs -P 2 -I{} bash -c '
  m=${1%%:*}; s=${1##*:}
  OMP_NUM_THREADS=1 '"$RF"' train configs/bb_${m}.yaml run_dir='"$RUNS"'/bb_${m}_s$s seed=$s \
      --init-from '"$RUNS"'/bb_warmup > '"$RUNS"'/bb_${m}_s$s.log 2>&1 && echo "done $1"' _ {}

finished() {  # run -> 0 if its last checkpoint is the recipe's last step
  local run=$1 final
  [ -d "$run/checkpoints" ] || return 1
  final=$($PY -c "import sys; from omegaconf import OmegaConf as O
print(sum(s.steps for s in O.load(sys.argv[1]).stages))" "$run/config.yaml")
  [ -d "$run/checkpoints/$(printf step_%08d "$final")" ]
}
for job in $JOBS; do
  m=${job%%:*}; s=${job##*:}; name=bb_${m}_s$s; run=$RUNS/$name
  finished "$run" || { echo "skip $name: $run is missing or not finished"; continue; }
  [ -f "$OUT/$name.json" ] ||
    { $RF eval "$run" --chunks "$CHUNKS" --samples "$SAMPLES" --segment 32 --seed 0 --json "$OUT/$name.json" \
        > "$OUT/$name.txt" 2>/dev/null && echo "evaluated $name"; }
  [ -f "$OUT/diagnostics_$name.json" ] ||
    { OMP_NUM_THREADS=1 $PY -m resforce.diagnostics "$run" --samples "$DIAG_SAMPLES" \
        --json "$OUT/diagnostics_$name.json" --markdown "$OUT/diagnostics_$name.md" > /dev/null &&
      echo "diagnosed $name"; }
done
