#!/usr/bin/env bash
# One GPU smoke command: the checks only a GPU can make, in one run (aimed at < 10 minutes on
# one H100), ending with one table (part | status | seconds | the line that matters).
#
#   PYTHONPATH=src scripts/gpu_smoke.sh            # PY=.venv/bin/python by default
#
# Parts: the CUDA tests (kernels of the chunked attention, detached history), the precision
# check (scripts/cuda_precision_check.py), a routed two-stream forward + backward under bf16
# autocast, one Wan2.1-1.3B 5 s training step (time and peak, benchmarks/gpu_wan_step.py), the
# routing benchmark (benchmarks/bench_routing_cuda.py) and a tiny prepare -> four-stage bf16
# train -> generate (scripts/tiny_recipe_run.py). Without CUDA it runs the CPU parts (the
# routed bf16 tests, the routing benchmark's --smoke, the tiny recipe on the CPU) and marks the
# others "skipped (no CUDA)". Exit status: 1 if any part failed.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH=${PYTHONPATH:-src}
LOG=${LOG:-$(mktemp -d)}
CUDA=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
ROWS=()
FAILED=0

run() {  # run NAME TIMEOUT_S PATTERN CMD...: PATTERN picks the summary line of its output
  local name=$1 limit=$2 pattern=$3; shift 3
  local out="$LOG/$(echo "$name" | tr ' /' '__').log" t0 rc line
  t0=$(date +%s)
  timeout "$limit" "$@" >"$out" 2>&1
  rc=$?
  line=$(grep -E "$pattern" "$out" | tail -1 | cut -c1-90)
  if [ $rc -eq 0 ]; then status=ok; else status="FAILED (rc $rc)"; FAILED=1; line=$(tail -1 "$out" | cut -c1-90); fi
  ROWS+=("$(printf '%-28s | %-14s | %5s | %s' "$name" "$status" "$(( $(date +%s) - t0 ))" "$line")")
}

skip() { ROWS+=("$(printf '%-28s | %-14s | %5s | %s' "$1" "skipped" "-" "no CUDA on this machine")"); }

ROUTED_CUDA='
import torch
from resforce.model.attention import HistoryAttentionConfig, routed_two_stream_layout
b, h, n, L, d = 1, 12, 7, 1560, 128   # Wan2.1-1.3B heads, 7 chunks of a 240x416 clip
q, k, v = (torch.randn(b, h, 2 * n * L, d, device="cuda", requires_grad=True) for _ in range(3))
layout = routed_two_stream_layout(HistoryAttentionConfig(mode="topk", topk=5), n, L, device="cuda")
torch.cuda.reset_peak_memory_stats()
with torch.autocast("cuda", dtype=torch.bfloat16):
    out = layout.attend(0, q.bfloat16(), k.bfloat16(), v.bfloat16())
out.float().square().mean().backward()
torch.cuda.synchronize()
assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
print(f"routed bf16 fwd+bwd ok, {2 * n * L} tokens, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
'

if [ "$CUDA" = 1 ]; then
  run "CUDA tests" 180 "passed|failed" $PY -m pytest -q -p no:cacheprovider tests/model/test_chunk_attention.py \
      tests/training/test_detached_history.py tests/model/test_bf16_routed.py -k "cuda or bf16"
  run "precision check" 120 "." $PY scripts/cuda_precision_check.py
  run "routed bf16 pass (CUDA)" 120 "routed bf16" $PY -c "$ROUTED_CUDA"
  run "1.3B 5 s step (time, peak)" 240 "." $PY benchmarks/gpu_wan_step.py --strategies resampling \
      --warmup 1 --steps 1
  run "routing benchmark" 180 "." $PY benchmarks/bench_routing_cuda.py
  run "tiny prepare/train/generate" 180 "generate|train" $PY scripts/tiny_recipe_run.py --device cuda
else
  skip "CUDA tests"
  skip "precision check"
  run "routed bf16 tests (CPU)" 300 "passed|failed" $PY -m pytest -q -p no:cacheprovider tests/model/test_bf16_routed.py
  skip "1.3B 5 s step (time, peak)"
  run "routing benchmark --smoke" 300 "." $PY benchmarks/bench_routing_cuda.py --smoke
  run "tiny prepare/train/generate" 300 "generate|train" $PY scripts/tiny_recipe_run.py --device cpu
fi

echo
printf '%-28s | %-14s | %5s | %s\n' "part" "status" "s" "summary (logs: $LOG)"
printf '%s\n' "-----------------------------+----------------+-------+------------------------------------------"
printf '%s\n' "${ROWS[@]}"
exit $FAILED
