#!/usr/bin/env bash
# The bouncing-balls experiments behind README's tables, resumable: re-run it and every run
# continues from its last checkpoint. Two training processes with one thread each (the
# fastest use of 2 cores, CPU-BUDGET.md). About 70 minutes on 2 CPU cores
# (measured: 1500 warm-up steps at ~1 s, branches at 1.4-2.3 s per step per process).
#
#   1. one shared teacher-forcing warm-up (1500 steps)   -> runs/bb_warmup
#   2. branches of 800 steps from it, one per method and seed (equal compute per method)
#   3. evaluation: scripts/bb_evaluate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RF=${RESFORCE:-.venv/bin/resforce}
RUNS=${RUNS:-runs}

OMP_NUM_THREADS=2 $RF train configs/bb_teacher.yaml run_dir=$RUNS/bb_warmup --stop-at 1500

# method:seed, in order of priority. README's tables used the first six; add e.g.
# JOBS="teacher:2 resampling:2 diffusion_forcing:0" for more seeds and methods.
JOBS=${JOBS:-"teacher:0 resampling:0 noise_aug:0 parallel_resampling:0 teacher:1 resampling:1"}
for job in $JOBS; do echo "$job"; done | xargs -P 2 -I{} bash -c '
  m=${1%%:*}; s=${1##*:}
  OMP_NUM_THREADS=1 '"$RF"' train configs/bb_$m.yaml run_dir='"$RUNS"'/bb_${m}_s$s seed=$s \
      --init-from '"$RUNS"'/bb_warmup > '"$RUNS"'/bb_${m}_s$s.log 2>&1 && echo "done $1"' _ {}
