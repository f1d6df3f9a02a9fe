"""Activation checkpointing modes (activation_checkpoint.apply_activation_checkpointing): full and
selective give the gradients of no checkpointing; selective keeps the attention kernels'
outputs, so its backward never re-runs attention, while full re-runs it once per block."""

import copy
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from resforce.training import activation_checkpoint
from resforce.model.config import checkpoint_mode
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
        self.kernels = activation_checkpoint.attention_kernel_ops()

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
    ckpt = activation_checkpoint.apply_activation_checkpointing(copy.deepcopy(plain), mode)
    assert [n for n, _ in ckpt.named_parameters()] == [n for n, _ in plain.named_parameters()]
    *_, g_plain = step(plain)
    *_, g_ckpt = step(ckpt)
    for a, b in zip(g_plain, g_ckpt):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["chunked", "sdpa"])
def test_selective_keeps_self_attention_full_recomputes_it(randomize, backend):
    """Self-attention: its kernels run in the forward whatever the mode (once per block with
    the dense-mask reference, once per tile group with the chunked backend, and as one op per
    block under selective checkpointing: chunk_attention.as_one_op); full re-runs them in the
    backward, selective keeps their outputs. Cross-attention (5 text keys, cheap, an output as
    large as self-attention's) is recomputed by both."""
    base = randomize(build_model(preset="test", patch_size=(1, 4, 4), text_dim=8,
                                 attention_backend=backend)).train()
    layers = base.config.num_layers
    counts = {mode: step(activation_checkpoint.apply_activation_checkpointing(copy.deepcopy(base), mode), CONTEXT)[:2]
              for mode in ("none", "full", "selective")}
    once = counts["none"][0]
    assert once["cross"] == layers and once["self"] >= layers
    assert (once["self"] == layers) == (backend == "sdpa")
    assert counts["none"] == (once, {"self": 0, "cross": 0})
    assert counts["full"] == (once, once)
    one_op = {"self": layers, "cross": layers}  # the chunked forward is one op per block
    assert counts["selective"] == (once if backend == "sdpa" else one_op, {"self": 0, "cross": layers})
    *_, g_none = step(copy.deepcopy(base), CONTEXT)
    *_, g_sel = step(activation_checkpoint.apply_activation_checkpointing(copy.deepcopy(base), "selective"), CONTEXT)
    for a, b in zip(g_none, g_sel):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("value,mode", [(True, "full"), (False, "none"), ("true", "full"), ("false", "none"),
                                        ("full", "full"), ("selective", "selective"), ("none", "none")])
def test_checkpoint_mode_values(value, mode):
    assert checkpoint_mode(value) == mode


def test_config_modes_and_wan_default():
    assert load_config(None, ["model.gradient_checkpointing=true"]).model.gradient_checkpointing in ("True", True)
    assert checkpoint_mode(load_config(None, ["model.gradient_checkpointing=true"])
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
    for m in (base, activation_checkpoint.apply_activation_checkpointing(copy.deepcopy(base), mode)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.no_grad():
                m(X, T, history=H)
            loss = m(X, T, history=H).float().square().mean()
        loss.backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


class LiveAttentionOutputs(TorchDispatchMode):
    """Bytes of attention-kernel outputs (activation_checkpoint.attention_kernel_ops) still alive: what
    the forward keeps for the backward."""

    def __init__(self):
        super().__init__()
        self.kernels = activation_checkpoint.attention_kernel_ops()
        self.refs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.kernels:
            self.refs += [weakref.ref(t.untyped_storage()) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out

    def alive_bytes(self) -> int:
        return sum(st.nbytes() for st in {id(s): s for s in (r() for r in self.refs) if s is not None}.values())


def test_selective_keeps_one_merged_attention_output_per_block(randomize):
    """The chunked backend computes attention in tiles (several per query chunk) merged by
    log-sum-exp. Selective checkpointing keeps, per block, exactly the merged output and its
    LSE (B H S d + B H S floats), not every tile's output and LSE: those were 4.5 copies of
    the attention output per block for Wan2.1-1.3B at 15 s (docs/wan.md section 4)."""
    model = randomize(build_model(preset="test", patch_size=(1, 4, 4))).train()
    activation_checkpoint.apply_activation_checkpointing(model, "selective")
    cfg = model.config
    b, _, f, hh, ww = X.shape
    s = 2 * model.num_chunks(f) * model.tokens_per_chunk(hh, ww)
    merged = b * s * (cfg.inner_dim + cfg.num_attention_heads) * 4  # fp32 output + LSE
    with LiveAttentionOutputs() as rec:
        loss = model(X, T, history=H).square().mean()
    assert rec.alive_bytes() == cfg.num_layers * merged
    loss.backward()


def test_selective_keeps_the_routed_attention_output(randomize):
    """Routed top-k training attention (routing_function.py) under selective checkpointing:
    its forward is one kept op per block, the backward does not re-run it, and the gradients
    equal those without checkpointing."""
    from resforce.model.attention import AttentionPolicy, HistoryAttentionConfig

    policy = AttentionPolicy(HistoryAttentionConfig(mode="topk", topk=1))
    routed = torch.ops.resforce.routed_attention_forward.default
    base = randomize(build_model(preset="test", patch_size=(1, 4, 4))).train()

    class CountRouted(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += func is routed
            return func(*args, **(kwargs or {}))

    def routed_step(model):
        fwd, bwd = CountRouted(), CountRouted()
        with fwd:
            loss = model(X, T, history=H, attention=policy).square().mean()
        with bwd:
            loss.backward()
        return fwd.calls, bwd.calls, [p.grad for p in model.parameters()]

    f, b, g_none = routed_step(copy.deepcopy(base))
    assert (f, b) == (0, 0)  # outside selective checkpointing it is not one op
    f, b, g_sel = routed_step(activation_checkpoint.apply_activation_checkpointing(copy.deepcopy(base), "selective"))
    assert (f, b) == (base.config.num_layers, 0)
    for x, y in zip(g_none, g_sel):
        torch.testing.assert_close(y, x, rtol=0, atol=1e-6)
