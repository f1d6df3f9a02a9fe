"""Mixed precision on the CPU with tiny models: a bf16 Wan from load_wan runs on fp32 inputs
(forward, cached chunk, rollout) with diffusers' fp32 modules kept fp32; its output is as close
to fp32 as diffusers' own bf16 Wan; the training loss and self-resampling run under bf16
autocast; routing merges its log-sum-exp in fp32; the precision field is checked.

bf16 autocast is slow on these CPUs (~29x): everything here is a few tiny forward passes."""

import tempfile

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install -e '.[wan]')")
from diffusers import WanTransformer3DModel  # noqa: E402

from resforce import device as precision
from resforce.config import ConfigError, load_config  # noqa: E402
from resforce.flow import TimestepSampler  # noqa: E402
from resforce.history import HistoryConfig, build_history  # noqa: E402
from resforce.loss import flow_matching_loss  # noqa: E402
from resforce.model import build_model  # noqa: E402
from resforce.model.cache import KVCache  # noqa: E402
from resforce.model.attention.config import HistoryAttentionConfig  # noqa: E402
from resforce.model.attention.routing_fast import RoutedCachedLayout  # noqa: E402
from resforce.rollout import SampleConfig, rollout  # noqa: E402
from resforce.wan.transformer import KEEP_IN_FP32, load_wan  # noqa: E402
from test_wan import H, W, inputs, tiny_wan, wan_forward  # noqa: E402
from tiny import tiny  # noqa: E402

BF16_REL_TOL = 0.02
"""Max |bf16 - fp32| / max |fp32| of the tiny Wan's output. Measured: 0.8% for ours and for
diffusers' bf16 Wan alike (0.6% for a 2-chunk rollout). Timesteps cast to the bf16 weights'
dtype before their sinusoid (a real dtype bug: t * 1000 loses its fractional part) give 13%."""


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def _kept(name):
    return any(m in name.split(".") for m in KEEP_IN_FP32)


def test_bf16_wan_runs_on_fp32_inputs_and_keeps_fp32_modules():
    wan = tiny_wan(seed=3)
    model = load_wan(wan, frames_per_chunk=2, dtype=torch.bfloat16)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if _kept(n)} == {torch.float32}
    assert {d for n, d in dtypes.items() if not _kept(n)} == {torch.bfloat16}
    assert dtypes["scale_shift_table"] == dtypes["blocks.0.scale_shift_table"] == torch.float32
    assert dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    assert dtypes["blocks.0.norm2.weight"] == torch.float32
    x, ctx = inputs()  # float32 noise and context, as a sampler hands them over
    t = torch.tensor([[0.9, 0.2], [0.4, 0.7]])
    with torch.no_grad():
        out = model(x, t, context=ctx)                                  # block-causal
        two = model(x, t, history=x.flip(2), context=ctx)               # two-stream
        cache = model.new_cache(H, W)
        model.write_cache(x[:, :, :2], cache, context=ctx)
        step = model.forward_chunk(x[:, :, 2:], t[:, 1:], cache, context=ctx)
    video = rollout(model, 2, H, W, SampleConfig(chunks=2, steps=2, seed=1), text=ctx)
    for y in (out, two, step, video):
        assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert cache[0].k.dtype == torch.bfloat16  # the cache holds the keys' dtype
    reference = rollout(load_wan(wan, frames_per_chunk=2), 2, H, W, SampleConfig(chunks=2, steps=2, seed=1),
                        text=ctx)
    assert _rel(video, reference) < 2 * BF16_REL_TOL


def test_bf16_output_is_as_close_to_fp32_as_diffusers_bf16():
    wan = tiny_wan(seed=3)
    fp32 = load_wan(wan, frames_per_chunk=4)
    ours = load_wan(wan, frames_per_chunk=4, dtype=torch.bfloat16)
    x, ctx = inputs()
    t = torch.tensor([0.3, 0.875])
    with torch.no_grad():
        ref = fp32(x, t[:, None], context=ctx)
        out = ours(x, t[:, None], context=ctx)
    with tempfile.TemporaryDirectory() as d:  # diffusers' own bf16 load keeps its fp32 modules
        wan.save_pretrained(d)
        theirs = WanTransformer3DModel.from_pretrained(d, torch_dtype=torch.bfloat16).eval()
    diffusers_out = wan_forward(theirs, x.bfloat16(), t * 1000, ctx.bfloat16())
    ours_err, their_err = _rel(out, ref), _rel(diffusers_out, ref)
    assert ref.abs().max() > 0.5  # a meaningful comparison
    assert ours_err < BF16_REL_TOL, f"bf16 vs fp32: {ours_err:.4f} (diffusers' bf16: {their_err:.4f})"
    assert ours_err < 1.5 * their_err + 2e-3, f"ours {ours_err:.4f} vs diffusers {their_err:.4f}"


def _tiny_model(randomize):
    return randomize(build_model(preset="test", frames_per_chunk=1, patch_size=(1, 4, 4)))


def test_autocast_training_loss_and_resampling_on_cpu(randomize):
    model = _tiny_model(randomize).train()
    clean = torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sampler = TimestepSampler()
    caches = []
    new_cache = model.new_cache
    model.new_cache = lambda *a, **k: caches.append(new_cache(*a, **k)) or caches[-1]

    def step(prec):
        model.zero_grad()
        g = torch.Generator().manual_seed(1)
        with precision.autocast(prec, "cpu"):
            hist, t_hist = build_history(HistoryConfig(strategy="resampling"), model, clean, g)
            loss = flow_matching_loss(model, clean, hist, t_hist, sampler, g)
        loss.backward()
        return hist, loss, [p.grad.clone() for p in model.parameters()]

    hist32, loss32, grads32 = step("fp32")
    with pytest.warns(UserWarning, match="29x slower"):
        hist16, loss16, grads16 = step("bf16")
    assert caches[0][0].k.dtype == torch.float32 and caches[1][0].k.dtype == torch.bfloat16
    assert loss16.dtype == torch.float32 and abs(loss16.item() / loss32.item() - 1) < 0.02
    assert (hist16 - hist32).abs().max() < 0.05 and not torch.equal(hist16, hist32)
    for p, g16, g32 in zip(model.parameters(), grads16, grads32):  # fp32 master weights and grads
        assert p.dtype == g16.dtype == torch.float32 and torch.isfinite(g16).all()
    flat16, flat32 = torch.cat([g.flatten() for g in grads16]), torch.cat([g.flatten() for g in grads32])
    assert torch.cosine_similarity(flat16, flat32, dim=0) > 0.99


@pytest.mark.parametrize("grad", [False, True])
def test_routed_attention_merges_log_sum_exp_in_fp32(grad):
    """Exact bf16 logits (integers), so only the merge can err: history chunks with logits 100,
    100 (selected) and 88 (not), own key 101; v = 0 on history, 1 on the own key. The union's
    softmax gives 1 / (1 + 2 e^-1) = 0.5761. A bf16 log-sum-exp rounds the history's
    100.693 to 100.5 and gives 0.6225."""
    bf = torch.bfloat16
    cache = KVCache(1, tokens_per_chunk=1)
    for key in (6.25, 6.25, 5.5):  # q = 16: logits 100, 100, 88 (q . mean key routes the same)
        cache[0].append(torch.full((1, 1, 1, 1), key, dtype=bf), torch.zeros(1, 1, 1, 1, dtype=bf), 1)
    q = torch.full((1, 1, 1, 1), 16.0, dtype=bf, requires_grad=grad)
    k, v = torch.full((1, 1, 1, 1), 6.3125, dtype=bf), torch.ones(1, 1, 1, 1, dtype=bf)
    layout = RoutedCachedLayout(cache, False, HistoryAttentionConfig(mode="topk", topk=2))
    out = layout.attend(0, q, k, v)
    expected = 1 / (1 + 2 * torch.tensor(-1.0, dtype=torch.float64).exp())
    assert out.dtype == bf and abs(out.item() - expected.item()) < 4e-3, out.item()


def test_precision_field_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="precision"):
        load_config("configs/bb_teacher.yaml", tiny(tmp_path / "r", "precision=fp16"))
    assert load_config("configs/bb_teacher.yaml", tiny(tmp_path / "r")).precision == "fp32"
    with pytest.raises(ValueError, match="precision"):
        precision.autocast("fp16", "cpu")
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        precision.enable_tf32("cpu")
        assert not torch.backends.cuda.matmul.allow_tf32
        precision.enable_tf32("cuda")  # only sets flags: runs without a GPU
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
