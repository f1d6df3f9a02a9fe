# resforce: `make demo` and `make test` do all set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU path: pin torch to the local CPU wheel so no install ever pulls a multi-GB CUDA build.
TORCH_CPU := torch==2.13.0

.PHONY: venv demo test test-slow bench clean browser

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_CPU)
	$(BIN)/pip install -q -e ".[test,atari,lora]" "$(TORCH_CPU)"
	touch $(STAMP)

demo: venv
	$(BIN)/resforce demo

# Two test workers of one thread each (pytest-xdist) use two cores better than one process of
# two threads: most tests are small. Tests that open process groups share one worker.
XDIST := -n $(or $(TEST_WORKERS),2) --dist loadgroup

test: venv browser
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -x $(XDIST) --durations=10

test-slow: venv browser
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m slow $(XDIST) --durations=10

# Every script in benchmarks/ (CUDA-only ones print one "skipped" line on the CPU), each
# recording its headline ratios; then one table of them, targets met or missed.
BENCH_SUMMARY := outputs/bench_summary.jsonl

bench: venv
	@mkdir -p $(dir $(BENCH_SUMMARY)) && rm -f $(BENCH_SUMMARY)
	@for b in benchmarks/*.py; do \
	  [ $$b = benchmarks/summary.py ] && continue; \
	  echo "== $$b"; t=$$(date +%s); \
	  RESFORCE_BENCH_SUMMARY=$(BENCH_SUMMARY) $(BIN)/python $$b || exit 1; \
	  echo "== $$b: $$(( $$(date +%s) - t )) s"; \
	done
	@echo "== summary ($(BENCH_SUMMARY))"
	@$(BIN)/python benchmarks/summary.py $(BENCH_SUMMARY)

# Headless Chromium for the report test; best effort: the test skips with a reason without it.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1) || \
	  echo "note: chromium not installed; the report browser test will skip"; }

clean:
	rm -rf $(VENV) build src/*.egg-info
