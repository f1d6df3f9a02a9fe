"""LoRA (peft) on the model: `lora: {rank, alpha, targets, dropout}` in a recipe trains the
adapters alone under every history strategy (the base weights stay bit-identical, the EMA
follows the adapters only), starts from Wan weights, and its weights export as adapters
(safetensors) or merged into a plain model that computes what the LoRA model computes.
Tiny model, CPU, seconds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[lora]')")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "support"))
from tiny import tiny  # noqa: E402

from resforce.config import ConfigError, load_config  # noqa: E402
from resforce.history import STRATEGIES  # noqa: E402
from resforce.model.dit import CausalVideoDiT, DiTConfig, PRESETS  # noqa: E402
from resforce.model.lora import LoraConfig, apply_lora, base_names, is_adapter, merge_lora_state_dict  # noqa: E402

# model.init=wan: random weights without the zeroed gates and output of a DiT init (a base to adapt)
LORA = ["lora.rank=2", "lora.alpha=4", "optim.lr=1e-2", "optim.warmup_steps=0", "model.init=wan"]


def _cfg(tmp_path, *extra):
    return load_config("configs/bb_teacher.yaml", tiny(tmp_path / "run", "stages.0.steps=1", "stages.1.steps=1",
                                                        "stages.0.clip_chunks=3", "stages.1.clip_chunks=3",
                                                        "device=cpu", "parallel=none", *LORA, *extra))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_only_adapters_train_under_every_history_strategy(tmp_path, strategy):
    from resforce.training.loop import Trainer

    cfg = _cfg(tmp_path, f"stages.1.history.strategy={strategy}")
    t = Trainer(cfg, progress=False)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    assert {n for n, p in t.model.named_parameters() if p.requires_grad} == {n for n in before if is_adapter(n)}
    t.run()
    assert t.step == 2
    for n, p in t.model.named_parameters():
        if is_adapter(n):
            continue
        assert torch.equal(p, before[n]), n  # the base never moves
    changed = [n for n, p in t.model.named_parameters() if ".lora_B." in n and not torch.equal(p, before[n])]
    assert changed  # lora_B left zero: the adapters learned
    ema = dict(t.ema.named_parameters())
    assert all(ema[n] is p for n, p in t.model.named_parameters() if not p.requires_grad)  # base held once
    assert not torch.equal(ema[changed[0]], before[changed[0]])


def test_merged_weights_compute_what_the_lora_model_computes():
    cfg = DiTConfig(**{**PRESETS["test"], "init": "wan"})
    torch.manual_seed(0)
    lora_cfg = LoraConfig(rank=2, alpha=3.0)
    model = apply_lora(CausalVideoDiT(cfg), lora_cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1)
    plain = CausalVideoDiT(cfg).eval()
    plain.load_state_dict(merge_lora_state_dict(model.state_dict(), lora_cfg))
    x, t = torch.randn(1, cfg.in_channels, 3 * cfg.frames_per_chunk, 16, 16), torch.rand(1, 3)
    with torch.no_grad():
        assert (model(x, t) - plain(x, t)).abs().max() < 1e-5
        base = CausalVideoDiT(cfg).eval()
        base.load_state_dict(base_names(model.state_dict()))
        assert (model(x, t) - base(x, t)).abs().max() > 1e-3  # the adapters change the output


def test_export_adapters_and_merged_and_generate(tmp_path, capsys):
    from safetensors import safe_open

    from resforce.cli.main import main
    from resforce.io.weights import load_model
    from resforce.training.loop import train

    run = train(_cfg(tmp_path), progress=False)
    main(["export", str(run), "--out", str(tmp_path / "adapters.safetensors"), "--dtype", "float32"])
    main(["export", str(run), "--out", str(tmp_path / "merged.safetensors"), "--dtype", "float32", "--merge-lora"])
    with safe_open(str(tmp_path / "adapters.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(is_adapter(k) for k in keys)
    merged, cfg = load_model(tmp_path / "merged.safetensors")
    from_run, _ = load_model(run)  # a LoRA run's checkpoint loads merged
    for (n, a), (_, b) in zip(merged.state_dict().items(), from_run.state_dict().items()):
        assert torch.equal(a, b), n
    assert cfg.lora.rank == 2
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "merged.safetensors"), "--out", str(tmp_path / "x.safetensors"), "--merge-lora"])
    assert "holds no LoRA adapters" in capsys.readouterr().err


def test_lora_starts_from_wan_weights(tmp_path):
    pytest.importorskip("diffusers")
    from test_wan_start import wan_config, write_wan
    from resforce.training.loop import Trainer
    from resforce.wan.folder import read_wan_state_dict

    wan = write_wan(tmp_path / "wan")
    cfg = wan_config(tmp_path, wan, "r", "lora.rank=2", "parallel=none")
    t = Trainer(cfg, progress=False)
    base = read_wan_state_dict(wan, cfg.model)
    sd = t.model.state_dict()
    merged = merge_lora_state_dict(sd, cfg.lora)  # lora_B = 0: the model is Wan
    assert all(torch.equal(merged[k], base[k].float()) for k in base)
    assert any(".lora_A." in k and sd[k].abs().sum() > 0 for k in sd)
    t.close()


@pytest.mark.parametrize("override,match", [("lora.rank=-1", "lora.rank"), ("lora.dropout=1.5", "lora.dropout"),
                                            ("lora.alpha=0", "lora.alpha")])
def test_lora_fields_are_checked(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tmp_path, override)


def test_an_unknown_target_is_named():
    with pytest.raises(ValueError, match="attn9.to_q"):
        apply_lora(CausalVideoDiT(DiTConfig(**PRESETS["test"])), LoraConfig(rank=2, targets=["attn9.to_q"]))


def test_bf16_base_weights_train_the_adapters(tmp_path):
    """lora.base_dtype=bf16: frozen weights stored in bf16 (norms and AdaLN tables stay fp32),
    adapters fp32, a bf16 step trains them; fp32 precision is refused."""
    import warnings

    from resforce.training.loop import Trainer

    with pytest.raises(ConfigError, match="needs precision=bf16"):
        _cfg(tmp_path, "lora.base_dtype=bf16")
    cfg = _cfg(tmp_path, "lora.base_dtype=bf16", "precision=bf16", "stages.1.steps=0")
    t = Trainer(cfg, progress=False)
    dtypes = {n: p.dtype for n, p in t.model.named_parameters()}
    assert dtypes["blocks.0.attn1.to_q.base_layer.weight"] == torch.bfloat16
    assert dtypes["blocks.0.scale_shift_table"] == dtypes["blocks.0.attn1.to_q.lora_A.default.weight"] == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = t.train_step()
    assert m["loss"] == m["loss"] and not m.get("skipped")
    t.close()
