"""benchmarks/bench_throughput.py: its --quick run prints the full table, and its analytic
FLOP count of a training step equals what torch's FlopCounterMode counts on that step.
(Timings are printed, never asserted: speed is the benchmark's business.)"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from resforce.config import load_config
from resforce.model.dit import CausalVideoDiT, DiTConfig, PRESETS

ROOT = Path(__file__).resolve().parents[2]
FLOP_TOL = 1e-3  # relative; the count is exact today (0.0), the slack is for formula rounding


def _bench():
    spec = importlib.util.spec_from_file_location("bench_throughput", ROOT / "benchmarks" / "bench_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _bench()


def test_quick_run_prints_the_table(bench, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the default --config is relative to the repository
    threads = torch.get_num_threads()
    try:
        result = bench.main(["--quick", "--threads", "1", "--json", str(tmp_path / "t.json")])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[:2] == ["| quantity | value | detail |", "|---|---|---|"]
    rows = [line.split(" | ") for line in table[2:]]
    assert all(len(r) == 3 for r in rows), "a cell holds a '|' or is missing"
    names = [r[0].lstrip("| ") for r in rows]
    assert names[:5] == ["fp32 matmul peak", "TF step model FLOPs", "TF step time", "TF step model FLOP/s (MFU)",
                         "ours / diffusers Wan, fwd+bwd"]
    assert names[5:8] == [f"rollout frames/s, {n} chunks" for n in bench.QUICK.roll_lengths]
    assert names[8:] == ["step ratio RF / TF, two-stream", "step ratio RF / TF, detached history",
                         "step ratio RF detached / TF two-stream"]
    assert "elapsed" in out
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["mfu"]["mfu"] == pytest.approx(result["mfu"]["mfu"]) and saved["mfu"]["mfu"] > 0
    assert set(saved["rollout_fps"]) == {f"{n}/{c}" for n in bench.QUICK.roll_lengths for c in (8, 0)}
    flops = saved["flops"]
    for part in ("linear", "attention"):  # the falsifiable part: analytic == counted
        assert flops["counted"][part] > 0, f"FlopCounterMode saw no {part} FLOPs"
        assert flops["analytic"][part] == pytest.approx(flops["counted"][part], rel=FLOP_TOL), part
    if "skipped" not in saved["diffusers"]:  # same weights, same math: same output
        assert saved["diffusers"]["max_abs_diff"] < 1e-4 < saved["diffusers"]["output_mean_abs"]


@pytest.mark.parametrize("chunks, fpc, pt", [(3, 2, 1), (5, 2, 2)])
def test_flop_count_matches_flop_counter(bench, chunks, fpc, pt):
    """Another shape than the benchmark's: several frames per chunk, a temporal patch,
    2x2 patches on 8x8 frames (T = fpc / pt * 16 tokens), an odd number of chunks."""
    mc = DiTConfig(**{**PRESETS["test"], "frames_per_chunk": fpc, "patch_size": (pt, 2, 2)})
    model = CausalVideoDiT(mc).train()
    cfg = load_config(ROOT / "configs" / "bb_teacher.yaml")  # timesteps and loss space of a step
    clean = torch.rand(2, 3, chunks * fpc, 8, 8) * 2 - 1
    analytic = bench.step_flops(mc, 2, chunks, model.tokens_per_chunk(8, 8))
    counted = bench.counted_step_flops(model, cfg, clean)
    for part in ("linear", "attention"):
        assert analytic[part] == pytest.approx(counted[part], rel=FLOP_TOL), part


def test_flop_count_refuses_text_models(bench):
    with pytest.raises(ValueError, match="model.text_dim=16"):
        bench.step_flops(DiTConfig(text_dim=16), 1, 2, 4)
