"""Wan weights in CausalVideoDiT: parity with diffusers' WanTransformer3DModel on tiny random
models (no downloads), per-chunk timesteps, block-causal chunks, loading from disk, errors."""


import pytest
import torch

diffusers = pytest.importorskip(
    "diffusers", reason="diffusers is not installed (pip install -e '.[wan]'); Wan parity tests skipped")
from diffusers import WanTransformer3DModel  # noqa: E402
from diffusers.models.transformers.transformer_wan import WanAttnProcessor  # noqa: E402

from resforce.model.attention.layouts import block_causal_chunk_mask, expand_chunk_mask  # noqa: E402
from resforce.model.cache import KVCache  # noqa: E402
from resforce.wan.transformer import (WanConversionError, config_from_diffusers,  # noqa: E402
                          convert_state_dict, load_wan)

B, C, F, H, W = 2, 4, 4, 8, 8
TEXT_LEN, TEXT_DIM = 5, 16
TOL = 1e-4


def tiny_wan(head_dim=12, seed=0, **kw) -> WanTransformer3DModel:
    """Tiny WanTransformer3DModel, every parameter (scale_shift_tables too) random and O(1)."""
    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=head_dim,
               in_channels=C, out_channels=C, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32,
               num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
               rope_max_seq_len=64)
    cfg.update(kw)
    model = WanTransformer3DModel(**cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 and "scale_shift_table" not in name:  # fan-in scaled: outputs O(1)
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):  # norm gains around 1
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def inputs(seed=1, frames=F):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, frames, H, W, generator=g)
    ctx = torch.randn(B, TEXT_LEN, TEXT_DIM, generator=g)
    return x, ctx


def wan_forward(wan, x, t1000, ctx):
    with torch.no_grad():
        return wan(x, timestep=t1000, encoder_hidden_states=ctx, return_dict=False)[0]


def seq_len(frames=F):
    return frames * (H // 2) * (W // 2)


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("head_dim", [12, 16])
def test_parity_one_chunk(head_dim):
    """All frames in one chunk, one timestep per sample: block-causal == bidirectional Wan."""
    wan = tiny_wan(head_dim)
    ours = load_wan(wan, frames_per_chunk=F)
    x, ctx = inputs()
    t = torch.tensor([0.3, 0.875])
    ref = wan_forward(wan, x, t * 1000, ctx)  # Wan's timesteps are on the 0..1000 scale
    with torch.no_grad():
        out = ours(x, t[:, None], context=ctx)
    assert out.shape == ref.shape == x.shape
    assert ref.abs().mean() > 0.1  # a meaningful comparison, not two near-zero tensors
    err = (out - ref).abs().max().item()
    assert err <= TOL, f"head_dim={head_dim}: max |ours - diffusers| = {err:.3g}"


def test_parity_per_token_timesteps():
    """One chunk at time t vs diffusers' per-token timesteps (B, seq_len) = t repeated."""
    wan = tiny_wan()
    ours = load_wan(wan, frames_per_chunk=F)
    x, ctx = inputs(seed=2)
    t = torch.tensor([0.05, 0.6])
    ref = wan_forward(wan, x, (t * 1000)[:, None].expand(B, seq_len()).contiguous(), ctx)
    ref_b = wan_forward(wan, x, t * 1000, ctx)
    with torch.no_grad():
        out = ours(x, t[:, None], context=ctx)
    assert (ref - ref_b).abs().max() <= TOL  # diffusers' two timestep paths agree
    err = (out - ref).abs().max().item()
    assert err <= TOL, f"max |ours - diffusers(per-token t)| = {err:.3g}"


class _MaskedWanProcessor(WanAttnProcessor):
    """Wan's self-attention under a fixed boolean mask (True = may attend)."""

    def __init__(self, mask):
        super().__init__()
        self.mask = mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, self.mask, rotary_emb)


def test_parity_block_causal_chunks_and_cache():
    """Several chunks, each at its own t: ours == Wan with per-token timesteps and a
    block-causal mask on self-attention; the KV-cached chunk step agrees too."""
    fpc, n = 2, F // 2
    wan = tiny_wan(head_dim=16, seed=3)
    ours = load_wan(wan, frames_per_chunk=fpc)
    x, ctx = inputs(seed=4)
    t = torch.tensor([[0.9, 0.2], [0.4, 0.7]])
    tpc = seq_len(fpc)
    mask = expand_chunk_mask(block_causal_chunk_mask(n), tpc)[None, None]
    for block in wan.blocks:
        block.attn1.set_processor(_MaskedWanProcessor(mask))
    t_tok = (t * 1000).repeat_interleave(tpc, dim=1)  # (B, seq_len): each chunk's t
    ref = wan_forward(wan, x, t_tok, ctx)
    with torch.no_grad():
        out = ours(x, t, context=ctx)
        # rollout path: chunk 0 written to the cache at its t, then chunk 1 against the cache
        cache = KVCache(ours.config.num_layers, tpc)
        ours.write_cache(x[:, :, :fpc], cache, t=t[:, :1], context=ctx)
        step = ours.forward_chunk(x[:, :, fpc:], t[:, 1:], cache, context=ctx)
    err = (out - ref).abs().max().item()
    assert err <= TOL, f"block-causal: max |ours - masked diffusers| = {err:.3g}"
    err_cache = (step - ref[:, :, fpc:]).abs().max().item()
    assert err_cache <= TOL, f"KV-cached chunk: max diff = {err_cache:.3g}"
    # and chunk 0 does not see chunk 1: it matches plain Wan on chunk 0 alone
    alone = tiny_wan(head_dim=16, seed=3)
    ref0 = wan_forward(alone, x[:, :, :fpc], t[:, 0] * 1000, ctx)
    assert (out[:, :, :fpc] - ref0).abs().max() <= TOL


# ----------------------------------------------------------------------------- files
def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_save_pretrained_round_trip(tmp_path):
    wan = tiny_wan(seed=5)
    from_memory = load_wan(wan, frames_per_chunk=F)
    # the model folder itself, a sharded folder, and a pipeline folder with transformer/
    wan.save_pretrained(tmp_path / "single")
    wan.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    wan.save_pretrained(tmp_path / "pipe" / "transformer")
    assert list((tmp_path / "sharded").glob("*.index.json")), "expected a sharded checkpoint"
    for sub in ("single", "sharded", "pipe"):
        loaded = load_wan(tmp_path / sub, frames_per_chunk=F)
        assert loaded.config == from_memory.config
        _same_weights(loaded, from_memory)
        assert all(p.requires_grad for p in loaded.parameters())
    # weights are copies, not views of the diffusers model
    with torch.no_grad():
        wan.proj_out.weight.add_(1.0)
    assert not torch.equal(wan.proj_out.weight, from_memory.proj_out.weight)
    # dtype
    bf16 = load_wan(tmp_path / "single", frames_per_chunk=F, dtype=torch.bfloat16)
    # bf16, except what diffusers keeps in float32 (time embedder, AdaLN tables, norms)
    kept = {n for n, p in bf16.named_parameters() if p.dtype == torch.float32}
    assert {p.dtype for n, p in bf16.named_parameters() if n not in kept} == {torch.bfloat16}
    assert kept == {n for n, _ in bf16.named_parameters()
                    if any(m in n.split(".") for m in ("time_embedder", "scale_shift_table", "norm2"))}
    x, ctx = inputs()
    t = torch.tensor([0.3, 0.875])
    with torch.no_grad():  # runs without autocast, close to the float32 model
        out = bf16(x.bfloat16(), t[:, None], context=ctx.bfloat16()).float()
        ref = from_memory(x, t[:, None], context=ctx)
    assert (out - ref).abs().mean() < 0.05


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_wan(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_wan(tmp_path)
    tiny_wan().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "m")):
        load_wan(tmp_path / "m")


# ----------------------------------------------------------------------------- config & keys
def test_config_mapping_and_refusals():
    wan = tiny_wan(head_dim=16)
    cfg = config_from_diffusers(wan.config)
    assert cfg.frames_per_chunk == 3 and cfg.init == "wan" and cfg.prediction == "velocity"
    assert (cfg.patch_size, cfg.num_attention_heads, cfg.attention_head_dim) == ((1, 2, 2), 2, 16)
    assert (cfg.in_channels, cfg.out_channels, cfg.text_dim, cfg.freq_dim) == (C, C, TEXT_DIM, 32)
    assert (cfg.ffn_dim, cfg.num_layers, cfg.cross_attn_norm, cfg.eps) == (32, 2, True, 1e-6)
    base = dict(wan.config)
    # Wan2.1-T2V-1.3B's config.json as published in diffusers format
    real = {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0.dev0",
            "added_kv_proj_dim": None, "attention_head_dim": 128, "cross_attn_norm": True,
            "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "image_dim": None, "in_channels": 16,
            "num_attention_heads": 12, "num_layers": 30, "out_channels": 16,
            "patch_size": [1, 2, 2], "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
            "text_dim": 4096}
    assert config_from_diffusers(real).inner_dim == 1536
    for bad, match in [({"qk_norm": "rms_norm"}, "rms_norm_across_heads"),
                       ({"qk_norm": None}, "rms_norm_across_heads"),
                       ({"image_dim": 1280}, "image_dim"),
                       ({"added_kv_proj_dim": 5120}, "added_kv_proj_dim"),
                       ({"some_new_flag": True}, "some_new_flag")]:
        with pytest.raises(WanConversionError, match=match):
            config_from_diffusers({**base, **bad})
    with pytest.raises(ValueError, match="frames_per_chunk"):
        config_from_diffusers({**base, "patch_size": [2, 2, 2]}, frames_per_chunk=3)


def test_state_dict_keys_checked_and_named():
    wan = tiny_wan()
    cfg = config_from_diffusers(wan.config, frames_per_chunk=F)
    sd = wan.state_dict()
    conv = convert_state_dict(sd, cfg)
    assert conv.keys() == sd.keys()  # names map 1:1
    broken = dict(sd)
    del broken["blocks.1.norm2.weight"]
    broken["blocks.0.attn1.bogus.weight"] = torch.zeros(1)
    broken["proj_out.bias"] = torch.zeros(3)
    with pytest.raises(WanConversionError) as e:
        convert_state_dict(broken, cfg)
    msg = str(e.value)
    assert "blocks.1.norm2.weight" in msg and "blocks.0.attn1.bogus.weight" in msg
    assert "proj_out.bias" in msg
    # diffusers' ignorable key and image-conditioning keys
    assert convert_state_dict({**sd, "blocks.0.attn2.norm_added_q.weight": torch.ones(24)}, cfg)
    with pytest.raises(WanConversionError, match="add_k_proj"):
        convert_state_dict({**sd, "blocks.0.attn2.add_k_proj.weight": torch.ones(24, 8)}, cfg)


def test_fused_projections():
    wan = tiny_wan(seed=6)
    plain = load_wan(wan, frames_per_chunk=F)
    for block in wan.blocks:
        block.attn1.fuse_projections()  # to_qkv
        block.attn2.fuse_projections()  # to_kv (to_q stays: it reads the video tokens)
    # keep only the fused copies, as a checkpoint saved after fusing would hold
    sd = {k: v for k, v in wan.state_dict().items()
          if not (".attn1.to_" in k and ".to_qkv." not in k and ".to_out." not in k)
          and not (".attn2.to_k." in k or ".attn2.to_v." in k)}
    assert any(".to_qkv." in k for k in sd) and any(".to_kv." in k for k in sd)
    conv = convert_state_dict(sd, plain.config)
    for k, v in plain.state_dict().items():
        assert torch.equal(conv[k], v), k
