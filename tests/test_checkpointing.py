"""Activation checkpointing modes (parallel.apply_activation_checkpointing): full and
selective give the gradients of no checkpointing; selective keeps the attention kernels'
outputs, so its backward never re-runs attention, while full re-runs it once per block."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from resforce import parallel
from resforce.config import ConfigError, load_config
from resforce.model import build_model

G = torch.Generator().manual_seed(0)
X, H, T = torch.randn(2, 3, 4, 8, 8, generator=G), torch.randn(2, 3, 4, 8, 8, generator=G), torch.rand(2, 4, generator=G)


CONTEXT = torch.randn(2, 5, 8, generator=G)  # 5 text tokens: cross-attention has 5 keys


class CountAttention(TorchDispatchMode):
    """Counts calls of the attention kernels (forward ones: their backward ops differ),
    self-attention and cross-attention (5 keys) apart."""

    def __init__(self):
        super().__init__()
        self.calls = {"self": 0, "cross": 0}
        self.kernels = parallel.attention_kernel_ops()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.kernels:
            self.calls["cross" if args[1].shape[-2] == CONTEXT.shape[1] else "self"] += 1
        return func(*args, **(kwargs or {}))


def step(model, context=None):
    """(attention calls in the forward, attention calls in the backward, gradients)."""
    fwd, bwd = CountAttention(), CountAttention()
    with fwd:
        loss = model(X, T, history=H, context=context).square().mean()
    with bwd:
        loss.backward()
    return fwd.calls, bwd.calls, [p.grad for p in model.parameters()]


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_keeps_gradients(randomize, mode):
    plain = randomize(build_model(preset="test", patch_size=(1, 4, 4))).train()
    ckpt = parallel.apply_activation_checkpointing(copy.deepcopy(plain), mode)
    assert [n for n, _ in ckpt.named_parameters()] == [n for n, _ in plain.named_parameters()]
    *_, g_plain = step(plain)
    *_, g_ckpt = step(ckpt)
    for a, b in zip(g_plain, g_ckpt):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["chunked", "sdpa"])
def test_selective_keeps_self_attention_full_recomputes_it(randomize, backend):
    """Self-attention: its kernels run in the forward whatever the mode (once per block with
    the dense-mask reference, once per tile group with the chunked backend); full re-runs them
    in the backward, selective keeps their outputs. Cross-attention (5 text keys, cheap, an
    output as large as self-attention's) is recomputed by both."""
    base = randomize(build_model(preset="test", patch_size=(1, 4, 4), text_dim=8,
                                 attention_backend=backend)).train()
    layers = base.config.num_layers
    counts = {mode: step(parallel.apply_activation_checkpointing(copy.deepcopy(base), mode), CONTEXT)[:2]
              for mode in ("none", "full", "selective")}
    once = counts["none"][0]
    assert once["cross"] == layers and once["self"] >= layers
    assert (once["self"] == layers) == (backend == "sdpa")
    assert counts["none"] == (once, {"self": 0, "cross": 0})
    assert counts["full"] == (once, once)
    assert counts["selective"] == (once, {"self": 0, "cross": layers})
    *_, g_none = step(copy.deepcopy(base), CONTEXT)
    *_, g_sel = step(parallel.apply_activation_checkpointing(copy.deepcopy(base), "selective"), CONTEXT)
    for a, b in zip(g_none, g_sel):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("value,mode", [(True, "full"), (False, "none"), ("true", "full"), ("false", "none"),
                                        ("full", "full"), ("selective", "selective"), ("none", "none")])
def test_checkpoint_mode_values(value, mode):
    assert parallel.checkpoint_mode(value) == mode


def test_config_modes_and_wan_default():
    assert load_config(None, ["model.gradient_checkpointing=true"]).model.gradient_checkpointing in ("True", True)
    assert parallel.checkpoint_mode(load_config(None, ["model.gradient_checkpointing=true"])
                                    .model.gradient_checkpointing) == "full"
    assert load_config(None, ["model.preset=wan2.1-1.3b", "data.kind=bouncing_balls", "model.in_channels=3",
                              "model.out_channels=3"]).model.gradient_checkpointing == "selective"
    with pytest.raises(ConfigError, match="model.gradient_checkpointing"):
        load_config(None, ["model.gradient_checkpointing=sometimes"])


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_under_one_autocast_region_with_an_earlier_pass(randomize, mode):
    """The trainer's step may open one bf16 autocast region for the resampling pass (no grad)
    and the training forward: autocast then caches the weights' bf16 casts across both, so the
    training forward dispatches fewer casts than its recomputation. Selective checkpointing
    replays the forward's ops one by one and must not trip over that."""
    base = randomize(build_model(preset="test", patch_size=(1, 4, 4))).train()
    grads = []
    for m in (base, parallel.apply_activation_checkpointing(copy.deepcopy(base), mode)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.no_grad():
                m(X, T, history=H)
            loss = m(X, T, history=H).float().square().mean()
        loss.backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
