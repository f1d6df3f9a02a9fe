#!/usr/bin/env bash
# The shipped agent-world models (src/resforce/assets/agent_balls/), resumable: re-run it and
# each run continues from its last checkpoint. ONE training process at a time, one thread
# (about 45 CPU-minutes in all: ~0.8 s per teacher step, ~1.5 s per resampling step).
#
#   1. the shared teacher-forcing warm-up (1500 steps)      -> runs/agent_warmup
#   2. the teacher-forcing branch (600 more steps)          -> runs/agent_teacher
#   3. the Resampling Forcing branch (600 more steps)       -> runs/agent_resampling
#   4. export both EMA weights as float16 safetensors into src/resforce/assets/agent_balls/
set -euo pipefail
cd "$(dirname "$0")/.."
RF=${RESFORCE:-.venv/bin/resforce}
RUNS=${RUNS:-runs}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

$RF train configs/agent_teacher.yaml run_dir=$RUNS/agent_warmup --stop-at 1500
for m in teacher resampling; do
  $RF train configs/agent_$m.yaml run_dir=$RUNS/agent_$m --init-from $RUNS/agent_warmup
done
mkdir -p src/resforce/assets/agent_balls
$RF export $RUNS/agent_teacher --out src/resforce/assets/agent_balls/teacher_forcing.safetensors
$RF export $RUNS/agent_resampling --out src/resforce/assets/agent_balls/resampling_forcing.safetensors
