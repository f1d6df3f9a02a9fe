#!/usr/bin/env bash
# The bouncing-balls experiments behind the tables of docs/results.md, resumable: re-run it and every run
# continues from its last checkpoint. Two training processes with one thread each (the
# fastest use of 2 cores). About 8-9 hours on 2 CPU cores for the 36 branches
# of the default JOBS: an estimate from these measured times: 1500 warm-up steps at 0.75-1 s
# on 2 threads, ~22 min; an 800-step branch 12-42 min at 0.9-2.4 s per step (the routed stage's
# 16-chunk top-4 steps 6.4 s) with two processes running, depending on the method and on what
# else holds the cores.
#
#   1. one shared teacher-forcing warm-up (1500 steps)   -> runs/bb_warmup
#   2. branches of 800 steps from it, one per method and seed (equal compute per method)
#   3. evaluation: scripts/bb_evaluate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RF=${RESFORCE:-.venv/bin/resforce}
RUNS=${RUNS:-runs}

OMP_NUM_THREADS=2 $RF train configs/bb_teacher.yaml run_dir=$RUNS/bb_warmup --stop-at 1500

# method:seed, in order of priority; a method is configs/bb_<method>.yaml, and <method>_rerun the
# same config retrained under another name (TF and RF seeds 1 and 2, whose original weights are
# not kept, retrained from the re-run warm-up: RF for the inference-attention table, TF as its
# partner at 128x and under dense attention). The default is the list behind the tables of
# docs/results.md. Longer training (not in docs/results.md): JOBS="long_teacher:0 long_resampling:0".
JOBS=${JOBS:-"teacher:0 resampling:0 noise_aug:0 parallel_resampling:0 teacher:1 resampling:1
  teacher:2 resampling:2 resampling_shift0.1:0 resampling_shift3.0:0 diffusion_forcing:0 noise_aug:1
  parallel_resampling:1 resampling_shift0.1:1 resampling_shift0.1:2
  teacher_detached:0 resampling_detached:0 teacher_detached:1 resampling_detached:1
  native32_teacher:0 native32_resampling:0 resampling_routed:0 resampling_shift3.0:1
  diffusion_forcing:1 resampling_routed:1 native32_teacher:1 native32_resampling:1
  diffusion_forcing:2 resampling_detached:2 teacher_detached:2 parallel_resampling:2 noise_aug:2
  resampling_rerun:1 resampling_rerun:2 teacher_rerun:1 teacher_rerun:2"}
for job in $JOBS; do echo "$job"; done | xargs -P 2 -I{} bash -c '
  m=${1%%:*}; s=${1##*:}
  OMP_NUM_THREADS=1 '"$RF"' train configs/bb_${m%_rerun}.yaml run_dir='"$RUNS"'/bb_${m}_s$s seed=$s \
      --init-from '"$RUNS"'/bb_warmup > '"$RUNS"'/bb_${m}_s$s.log 2>&1 && echo "done $1"' _ {}
