#!/usr/bin/env bash
# Evaluate the bouncing-balls runs of scripts/bb_experiments.sh on the same seeds (paired):
# 64 rollouts of 128 chunks from 2 given frames (130 frames = 16x the 8-frame training clips),
# 16 Euler steps, shift 2.0, under the ROLLING CONTEXT of training (8 chunks: each chunk sees
# the 7 before it; the default of `resforce eval`). Then, labelled separately:
#   *_dense.json   16 of the same rollouts with dense attention over all history
#                  (--context all): context extrapolation, not exposure bias;
#   *_x128.json    8 rollouts of 1024 chunks (128x the training length), rolling context;
#   bb_resampling_sN_{topk,window}*.json   history attention at inference within the context
#                  (also for bb_resampling_rerun_sN, RF retrained under another name);
#   bb_resampling_routed_sN_ctx8.json   the routed fine-tune (trained on 16-chunk clips) at context 8.
# Seed 0 of teacher forcing and Resampling Forcing are the shipped demo models when their
# runs are not in runs/ (the same recipe and seed, exported in float16).
# Results: results/bb/*.json, summarised by scripts/bb_summarize.py into the tables of docs/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
RF=${RESFORCE:-.venv/bin/resforce}
PY=${PYTHON:-.venv/bin/python}
RUNS=${RUNS:-runs}
OUT=${OUT:-results/bb}
SAMPLES=${SAMPLES:-64}
CHUNKS=${CHUNKS:-128}
DEMO=src/resforce/assets/demo
mkdir -p "$OUT"
finished() {  # run -> 0 if its last checkpoint is the recipe's last step (or it is a weights file)
  local run=$1
  [ -f "$run" ] && return 0
  [ -d "$run/checkpoints" ] || return 1
  case $run in */bb_warmup) return 0 ;; esac
  local final
  final=$($PY -c "import sys; from omegaconf import OmegaConf as O
print(sum(s.steps for s in O.load(sys.argv[1]).stages))" "$run/config.yaml")
  [ -d "$run/checkpoints/$(printf step_%08d "$final")" ]
}
ev() {  # name run [extra args]
  local name=$1 run=$2; shift 2
  [ -f "$OUT/$name.json" ] && return 0
  finished "$run" || { echo "skip $name: $run is missing or not finished"; return 0; }
  $RF eval "$run" --chunks "$CHUNKS" --samples "$SAMPLES" --segment 32 --seed 0 --json "$OUT/$name.json" "$@" \
    > "$OUT/$name.txt" 2>/dev/null && echo "evaluated $name"
}
model_of() {  # bb_<method>_s<seed> -> its run directory, or the shipped model for seed 0 of TF/RF
  local name=$1
  if [ -d "$RUNS/$name" ]; then echo "$RUNS/$name"; return; fi
  case $name in
    bb_teacher_s0) echo "$DEMO/teacher_forcing.safetensors" ;;
    bb_resampling_s0) echo "$DEMO/resampling_forcing.safetensors" ;;
    *) echo "$RUNS/$name" ;;
  esac
}
names=$(for d in bb_teacher_s0 bb_resampling_s0 "$RUNS"/bb_*_s[0-9]; do [ "$d" = "$RUNS/bb_*_s[0-9]" ] || basename "$d"; done | sort -u)
for name in $names; do ev "$name" "$(model_of "$name")"; done
# 1024 chunks = 128x the training length (8 rollouts), teacher forcing vs Resampling Forcing
tf_or_rf() {  # name -> 0 for TF and RF s = 0.6, original or re-run (bb_{teacher,resampling}[_rerun]_sN)
  case $1 in bb_teacher_s[0-9]|bb_resampling_s[0-9]|bb_teacher_rerun_s[0-9]|bb_resampling_rerun_s[0-9]) return 0 ;; esac
  return 1
}
for name in $names; do
  tf_or_rf "$name" && CHUNKS=1024 SAMPLES=8 ev "${name}_x128" "$(model_of "$name")" --segment 128
done
# dense attention over all history (context extrapolation; 16 rollouts, the old protocol's count)
for name in $names; do
  tf_or_rf "$name" && SAMPLES=16 ev "${name}_dense" "$(model_of "$name")" --context all
done
# history attention at inference (claim 3), within the rolling context of 8 chunks, per RF seed
for name in $names; do
  case $name in bb_resampling_s[0-9]|bb_resampling_rerun_s[0-9])
    for v in "topk 4" "topk 1" "window 1" "window 4"; do
      set -- $v
      ev "${name}_${1}$2" "$(model_of "$name")" --$1 $2
    done ;;
  esac
done
# the routed fine-tune stage at the context of the runs above (its own default: 16, its longest clips)
for name in $names; do
  case $name in bb_resampling_routed_s[0-9]) ev "${name}_ctx8" "$RUNS/$name" --context 8 ;; esac
done
