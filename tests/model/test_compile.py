"""Regional torch.compile of the transformer blocks (config `compile: true`): a block traces
with zero graph breaks (the chunked attention's tile plan is made on the host, outside the
traced region, and the attention runs as opaque custom ops), and the compiled model equals
the eager one forward and backward. CPU; the aot_eager backend (tracing and AOT autograd
without code generation) keeps it to seconds, the trainer uses inductor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from resforce.model.dit import PRESETS, CausalVideoDiT, DiTConfig
from resforce.training.compile import compile_blocks, graph_breaks

sys.path.insert(0, str(Path(__file__).parent))


def _model_and_inputs(seed=0):
    cfg = DiTConfig(**{**PRESETS["test"], "init": "wan"})
    torch.manual_seed(seed)
    model = CausalVideoDiT(cfg)
    x = torch.randn(1, cfg.in_channels, 3 * cfg.frames_per_chunk, 16, 16)
    return model, x, torch.rand(1, 3), torch.randn_like(x), torch.zeros(1, 3)


def _block_call(model, x, t, hist, t_hist):
    """The arguments block 0 gets in a two-stream training forward."""
    seen = {}
    block = model.blocks[0]
    forward = block.forward

    def spy(*a, **k):
        seen["a"], seen["k"] = a, k
        return forward(*a, **k)

    block.forward = spy
    try:
        model(x, t, history=hist, t_history=t_hist)
    finally:
        del block.forward
    return seen["a"], seen["k"]


def test_a_block_traces_without_graph_breaks():
    torch._dynamo.reset()
    model, *inputs = _model_and_inputs()
    a, k = _block_call(model, *inputs)
    count, reasons = graph_breaks(model.blocks[0], *a, **k)
    assert count == 0, reasons


def _assert_compiled_equals_eager(tol: float, **compile_options):
    """One forward and backward of the same model eager and with its blocks compiled: outputs
    and every parameter's gradient agree to `tol` (relative for gradients). Returns the
    compiled model."""
    torch._dynamo.reset()
    eager, x, t, hist, t_hist = _model_and_inputs()
    compiled, *_ = _model_and_inputs()
    compile_blocks(compiled, **compile_options)
    outs, grads = [], []
    for model in (eager, compiled):
        out = model(x, t, history=hist, t_history=t_hist)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert (outs[0] - outs[1]).abs().max() <= tol
    for (n, _), g0, g1 in zip(eager.named_parameters(), *grads):
        assert (g0 - g1).abs().max() <= tol * max(1.0, g0.abs().max().item()), n
    return compiled


def test_compiled_equals_eager_forward_and_backward():
    compiled = _assert_compiled_equals_eager(1e-5, backend="aot_eager")
    assert all(hasattr(b, "_compiled_call_impl") and b._compiled_call_impl is not None for b in compiled.blocks)


def test_the_compile_field_reaches_the_trainer(tmp_path, monkeypatch):
    from tiny import tiny

    from resforce.config import load_config
    from resforce.training import compile as regional
    from resforce.training.loop import Trainer

    seen = []
    monkeypatch.setattr(regional, "compile_blocks", lambda model, **kw: seen.append(model))
    cfg = load_config("configs/bb_teacher.yaml", tiny(tmp_path / "r", "compile=true", "device=cpu", "parallel=none"))
    t = Trainer(cfg, progress=False)
    assert seen == [t.model]
    t.close()


@pytest.mark.slow
def test_inductor_compiled_blocks_equal_eager_forward_and_backward():
    """The trainer's backend: inductor generates fused C++ kernels on the CPU (norm, modulation,
    gated residuals in one loop each) around the opaque attention ops; the result equals eager
    up to float32 reassociation, and one compiled graph serves every block (the blocks share
    their structure, so dynamo reuses the graph: no recompilation per block)."""
    import torch._dynamo.utils as dynamo_utils

    dynamo_utils.counters.clear()
    _assert_compiled_equals_eager(1e-4)  # inductor, the trainer's backend
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 1, dict(dynamo_utils.counters["stats"])
