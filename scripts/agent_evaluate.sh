#!/usr/bin/env bash
# Evaluate the shipped agent-world models on the same seeds (paired): SAMPLES rollouts of
# CHUNKS chunks from 2 given frames (130 frames = 16x the 8-frame training clips), the
# models' own sampling (4 Euler steps, shift 2.0: what `resforce play` uses), under the
# ROLLING CONTEXT of training (8 chunks; the default of `resforce eval`). The actions of every
# rollout are those of the world's ground-truth clip of the same seed (a sticky random policy),
# so both models are commanded alike. Then the paired differences (scripts/eval_paired.py).
set -euo pipefail
cd "$(dirname "$0")/.."
RF=${RESFORCE:-.venv/bin/resforce}
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-results/agent}
SAMPLES=${SAMPLES:-16}
CHUNKS=${CHUNKS:-128}
ASSETS=src/resforce/assets/agent_balls
mkdir -p "$OUT"
for m in teacher_forcing resampling_forcing; do
  $RF eval $ASSETS/$m.safetensors --samples $SAMPLES --chunks $CHUNKS --prefix-chunks 2 \
      --frechet-reference 0 --json $OUT/$m.json | tee $OUT/$m.txt
done
$PY scripts/eval_paired.py $OUT/teacher_forcing.json $OUT/resampling_forcing.json | tee $OUT/paired.txt
