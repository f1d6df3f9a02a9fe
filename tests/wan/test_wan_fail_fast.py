"""A Wan folder (init.wan) the trainer cannot start from fails before anything is allocated:
weights absent, truncated, or of another shape are named from the safetensors headers alone,
before a model is built and before the run directory is created, so nothing is left behind.
A run that resumes from its own checkpoint does not read the folder's weights."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install -e '.[wan]')")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "support"))
from test_wan_start import wan_config, write_wan  # noqa: E402


@pytest.fixture
def no_model_built(monkeypatch):
    """Building a model with memory (CausalVideoDiT.__init__ off the meta device) fails the test."""
    from resforce.model.dit import CausalVideoDiT

    init = CausalVideoDiT.__init__

    def refuse(self, *a, **k):
        if torch.get_default_device().type != "meta":
            raise AssertionError("a model was built before the Wan folder was checked")
        init(self, *a, **k)

    monkeypatch.setattr(CausalVideoDiT, "__init__", refuse)


def _start(cfg):
    from resforce.training.loop import Trainer

    return Trainer(cfg, progress=False)


def test_missing_weights_fail_before_a_model_or_the_run_dir(tmp_path, no_model_built):
    wan = write_wan(tmp_path / "wan")
    cfg = wan_config(tmp_path, wan, "r")
    (wan / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no Wan weights in"):
        _start(cfg)
    assert not (tmp_path / "r").exists()


def test_truncated_weights_fail_before_a_model_or_the_run_dir(tmp_path, no_model_built):
    wan = write_wan(tmp_path / "wan")
    cfg = wan_config(tmp_path, wan, "r")
    f = wan / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        _start(cfg)
    assert not (tmp_path / "r").exists()


def test_weights_of_another_shape_are_named(tmp_path, no_model_built):
    wan = write_wan(tmp_path / "wan")
    cfg = wan_config(tmp_path, wan, "r")
    from test_wan import tiny_wan

    other = tmp_path / "other"
    tiny_wan(in_channels=3, out_channels=3, ffn_dim=40).save_pretrained(other)
    shutil.copy(other / "diffusion_pytorch_model.safetensors", wan / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match=r"shape mismatches.*ffn.*\(40, 24\) vs model \(32, 24\)"):
        _start(cfg)
    assert not (tmp_path / "r").exists()


def test_the_header_check_reads_no_tensor_data(tmp_path, monkeypatch):
    """check_wan_weights never calls safetensors' loader, and agrees with the full read."""
    import safetensors.torch
    from resforce.wan.folder import read_wan_state_dict
    from resforce.wan.transformer import check_wan_weights, read_wan_shapes

    wan = write_wan(tmp_path / "wan")
    cfg = wan_config(tmp_path, wan, "r")
    full = read_wan_state_dict(wan, cfg.model)
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: pytest.fail("tensor data read"))
    check_wan_weights(wan, cfg.model)
    shapes = read_wan_shapes(wan)
    assert all(t.is_meta for t in shapes.values())
    assert {k: tuple(v.shape) for k, v in shapes.items()} == {k: tuple(v.shape) for k, v in full.items()}


def test_a_resume_does_not_check_the_wan_weights(tmp_path):
    """After the first checkpoint the run resumes from it, with the Wan weights gone."""
    wan = write_wan(tmp_path / "wan")
    cfg = wan_config(tmp_path, wan, "r", "ckpt_every=1")
    with pytest.warns(UserWarning, match="empty-prompt"):
        _start(cfg).run(stop_at=1)
    (wan / "diffusion_pytorch_model.safetensors").unlink()
    t = _start(cfg)
    assert t.step == 1
    t.close()
