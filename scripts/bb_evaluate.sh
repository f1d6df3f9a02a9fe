#!/usr/bin/env bash
# Evaluate every bouncing-balls run of scripts/bb_experiments.sh on the same seeds:
# 16 rollouts of 128 chunks from 2 given frames (130 frames = 16x the 8-frame training clips),
# 16 Euler steps, shift 2.0; then history attention variants at inference on the RF model.
# Results: results/bb/*.json, summarised by scripts/bb_summarize.py into README's tables.
set -euo pipefail
cd "$(dirname "$0")/.."
RF=${RESFORCE:-.venv/bin/resforce}
PY=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-runs}
OUT=${OUT:-results/bb}
SAMPLES=${SAMPLES:-16}
CHUNKS=${CHUNKS:-128}
mkdir -p "$OUT"
ev() {  # name run [extra args]
  local name=$1 run=$2; shift 2
  [ -f "$OUT/$name.json" ] && return 0
  [ -d "$run/checkpoints" ] || { echo "skip $name: $run has no checkpoints"; return 0; }
  case $run in  # only finished runs (the warm-up stops at 1500 by design)
    */bb_warmup) ;;
    *) local final
       final=$($PY -c "import sys; from omegaconf import OmegaConf as O
print(sum(s.steps for s in O.load(sys.argv[1]).stages))" "$run/config.yaml")
       [ -d "$run/checkpoints/$(printf step_%08d "$final")" ] || { echo "skip $name: not finished"; return 0; } ;;
  esac
  $RF eval "$run" --chunks "$CHUNKS" --samples "$SAMPLES" --segment 32 --seed 0 --json "$OUT/$name.json" "$@" \
    > "$OUT/$name.txt" 2>/dev/null && echo "evaluated $name"
}
for run in "$RUNS"/bb_warmup "$RUNS"/bb_*_s[0-9]; do
  ev "$(basename "$run")" "$run"
done
# history attention at inference (claim 3): dense vs routed top-k vs sliding window
for v in "topk 4" "topk 1" "window 1" "window 4"; do
  set -- $v
  ev "bb_resampling_s0_${1}$2" "$RUNS/bb_resampling_s0" --$1 $2
done
