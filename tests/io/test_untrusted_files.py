"""Untrusted files are checked before they cost anything, and bit rot never resumes silently.

A weights file is checked against its safetensors header (and its config against the header)
before a tensor is read or a model built; every checkpoint records the SHA-256 of its files in
state.json, and every weights file the SHA-256 of its tensor data in its metadata.
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import pytest
import torch

from resforce.cli.main import main
from resforce.config import load_config, to_yaml
from resforce.io import weights as W
from resforce.io.weights import DamagedFileError, load_model, read_header, read_weights, save_weights
from resforce.model import dit
from resforce.training.checkpoint import CheckpointDamaged, latest_checkpoint, load_checkpoint
from resforce.training.loop import Trainer, train
from tiny import tiny
from cli_errors import cli_error  # noqa: E402

RECIPE = "configs/bb_teacher.yaml"


def cfg(tmp_path, name, *extra):
    return load_config(RECIPE, tiny(tmp_path / name, "stages.0.steps=2", "stages.1.steps=0", *extra))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(a tiny model's config, its weights file)."""
    root = tmp_path_factory.mktemp("weights")
    c = load_config(RECIPE, tiny(root / "run"))
    torch.manual_seed(0)
    model = dit.CausalVideoDiT(c.model)
    path = root / "model.safetensors"
    save_weights(path, model.state_dict(), to_yaml(c))
    return c, path


def crafted(path: Path, config_yaml: str | None, tensors: dict | None = None, extra_meta: dict | None = None) -> Path:
    """A hand-made safetensors file: header JSON + zero bytes for each (dtype F32, shape)."""
    header, pos = {}, 0
    for name, shape in (tensors or {"w": [2]}).items():
        n = 4 * int(torch.tensor(shape).prod()) if shape else 4
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [pos, pos + n]}
        pos += n
    meta = {"format": "resforce", **({"config": config_yaml} if config_yaml is not None else {}), **(extra_meta or {})}
    header["__metadata__"] = meta
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(pos))
    return path




@pytest.fixture
def no_model_built(monkeypatch):
    """Fails the test if a model is built with real (non-meta) tensors."""
    real_init = dit.CausalVideoDiT.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        if any(p.device.type != "meta" for p in self.parameters()):
            raise AssertionError("a model was built before the weights file was checked")

    monkeypatch.setattr(dit.CausalVideoDiT, "__init__", init)


def flip_a_byte(path: Path, from_end: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[-from_end] ^= 0x10
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- checksums
def test_a_checkpoint_records_the_sha256_of_its_files_in_state_json(tmp_path):
    import hashlib

    train(cfg(tmp_path, "r"), stop_at=1, progress=False)
    d = latest_checkpoint(tmp_path / "r")
    sums = json.loads((d / "state.json").read_text())["sha256"]
    assert set(sums) == {"model.safetensors", "ema.safetensors", "state.safetensors"}
    for name, want in sums.items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == want


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "state.safetensors"])
def test_a_flipped_byte_in_a_checkpoint_is_caught(tmp_path, name):
    c = cfg(tmp_path, "r")
    train(c, stop_at=1, progress=False)
    d = latest_checkpoint(c.run_dir)
    flip_a_byte(d / name)
    with pytest.raises(CheckpointDamaged, match=rf"{name} fails its checksum"):
        load_checkpoint(d)


def test_resume_falls_back_past_a_checkpoint_with_bit_rot(tmp_path):
    c = cfg(tmp_path, "r", "ckpt_every=1")
    train(c, stop_at=2, progress=False)
    flip_a_byte(latest_checkpoint(c.run_dir) / "model.safetensors", from_end=100)
    with pytest.warns(UserWarning, match=r"skipped checkpoint step_00000002 .*model\.safetensors fails its checksum"):
        t = Trainer(cfg(tmp_path, "r", "ckpt_every=1"), progress=False)
    assert t.step == 1 and (Path(c.run_dir) / "checkpoints" / "step_00000002.damaged").is_dir()


def test_a_weights_file_records_its_data_sha256_and_a_flipped_byte_is_refused(tmp_path, exported, capsys):
    import hashlib

    _, path = exported
    header = read_header(path)
    data = path.read_bytes()[header.data_start:]
    assert header.metadata["data_sha256"] == hashlib.sha256(data).hexdigest()
    bad = tmp_path / "rot.safetensors"
    bad.write_bytes(path.read_bytes())
    flip_a_byte(bad)
    with pytest.raises(DamagedFileError, match="fails its checksum"):
        read_weights(bad)
    err = cli_error(["generate", str(bad), "--out", str(tmp_path / "o.npy")], capsys)
    assert f"{bad} fails its checksum" in err and not (tmp_path / "o.npy").exists()


def test_export_records_the_checksum_of_what_it_wrote(tmp_path, exported):
    _, path = exported
    out = tmp_path / "half.safetensors"
    main(["export", str(path), "--out", str(out)])
    header = read_header(out)
    assert header.metadata["data_sha256"] == W.sha256_of(out, header.data_start)
    W.verify_checksum(header)


# ----------------------------------------------------------------------------- checked before built
def test_a_crafted_file_claiming_60000_layers_is_refused_before_any_model(tmp_path, exported, capsys, no_model_built):
    c, _ = exported
    evil = crafted(tmp_path / "evil.safetensors", to_yaml(c).replace("num_layers: 2", "num_layers: 60000"))
    assert evil.stat().st_size < 8000
    err = cli_error(["generate", str(evil), "--out", str(tmp_path / "o.npy")], capsys)
    assert f"{evil}: model.num_layers=60000 in its config; at most 256 expected" in err


def test_a_file_whose_tensors_do_not_match_its_config_is_refused_before_any_model(tmp_path, exported, capsys,
                                                                                   no_model_built):
    c, _ = exported
    evil = crafted(tmp_path / "few.safetensors", to_yaml(c).replace("num_layers: 2", "num_layers: 200"))
    err = cli_error(["generate", str(evil), "--out", str(tmp_path / "o.npy")], capsys)
    assert "model.num_layers=200, its tensors hold 0 block(s)" in err
    names = {k: list(s) for k, s in W.expected_tensors(c.model).items()}
    names["blocks.0.attn.to_q.weight" if "blocks.0.attn.to_q.weight" in names else next(iter(names))] = [1, 1]
    shaped = crafted(tmp_path / "shape.safetensors", to_yaml(c), names)
    err = cli_error(["generate", str(shaped), "--out", str(tmp_path / "o.npy")], capsys)
    assert "holds another model than the config describes" in err and "(1, 1) there" in err


@pytest.mark.parametrize("header, why", [
    (b'{"w": {"dtype": "F32", "shape": [1000000], "data_offsets": [0, 8]}}', r"8 bytes for F32 \[1000000\]"),
    (b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}', "overlaps or leaves a gap"),
    (b'{"w": {"dtype": "X99", "shape": [2], "data_offsets": [0, 8]}}', "dtype 'X99'"),
    (b'[' * 5000 + b']' * 5000, "damaged safetensors header"),
])
def test_a_header_that_lies_about_its_tensors_is_refused(tmp_path, header, why):
    p = tmp_path / "lie.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(DamagedFileError, match=why):
        read_header(p)


def test_a_header_larger_than_safetensors_allows_is_refused(tmp_path):
    p = tmp_path / "huge.safetensors"
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", W.MAX_HEADER_BYTES + 1))
        f.truncate(W.MAX_HEADER_BYTES + 100)  # sparse: no disk
    with pytest.raises(DamagedFileError, match=f"at most {W.MAX_HEADER_BYTES} expected"):
        read_header(p)


@pytest.mark.parametrize("config_yaml, why", [
    ("model: {num_layers: [", "the config in its metadata is not valid YAML"),
    ("model: !!python/object:os.system {num_layers: 2}", "the config in its metadata is not"),
    ("model:\n  num_layers: lots", "the config in its metadata is not valid"),
    ("- just\n- a list", "the config in its metadata is not"),
    (None, "carries no resforce config in its metadata"),
])
def test_bad_config_metadata_is_an_error_line(tmp_path, config_yaml, why, capsys):
    p = crafted(tmp_path / "meta.safetensors", config_yaml)
    err = cli_error(["generate", str(p), "--out", str(tmp_path / "o.npy")], capsys)
    assert str(p) in err and why in err


def test_a_sound_file_still_loads_bit_for_bit(exported):
    c, path = exported
    model, c2 = load_model(path)
    sd, _ = read_weights(path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items()) and c2.model == c.model


def test_files_written_before_checksums_still_load(tmp_path, exported):
    """The shipped assets were exported before the checksum: they load, unverified."""
    import resforce

    shipped = Path(resforce.__file__).parent / "assets" / "demo" / "teacher_forcing.safetensors"
    if shipped.is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            load_model(shipped)


# ----------------------------------------------------------------------------- error lines, not tracebacks
TEACHER = "configs/bb_teacher.yaml"


@pytest.mark.parametrize("override, why", [
    ("seed=[1,", "override 'seed=[1,': the value is not valid YAML"),
    ("seed=!!python/object/apply:os.system [echo]", "the value is not valid YAML"),
    ("stages.7.steps=3", "stages.7 does not exist; this recipe has 2 stage(s) (stages.0 to stages.1)"),
])
def test_a_bad_override_is_one_error_line(tmp_path, override, why, capsys):
    err = cli_error(["train", TEACHER, *tiny(tmp_path / "r"), override], capsys)
    assert why in err and not (tmp_path / "r").exists()


def test_a_directory_as_the_config_says_so(tmp_path, capsys):
    err = cli_error(["train", str(tmp_path)], capsys)
    assert f"config {tmp_path} is a directory: expected a YAML recipe file" in err


def test_a_run_dir_that_is_a_file_names_run_dir(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    err = cli_error(["train", TEACHER, *tiny(f)], capsys)
    assert f"run_dir={f}: {f} is a file, not a directory" in err and "Errno" not in err
    assert f.read_text() == "x"


def test_a_base_that_is_not_a_recipe_never_prints_its_content(tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:hunter2:/root:/bin/bash\nother:line\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {secret}\n")
    err = cli_error(["train", str(recipe)], capsys)
    assert str(secret) in err and "hunter2" not in err and "root:x" not in err and "is it a resforce recipe" in err


def test_a_refused_state_pt_never_suggests_weights_only_false(tmp_path):
    from resforce.training.checkpoint import _load_legacy_state

    p = tmp_path / "state.pt"
    torch.save({"step": 1, "obj": Path("x")}, p)  # not plain data: refused by weights_only
    with pytest.raises(DamagedFileError) as e:
        _load_legacy_state(p)
    assert "weights_only loader" in str(e.value) and "weights_only=" + "False" not in str(e.value)  # the unsafe hint, never forwarded
    assert "never loaded any other way" in str(e.value)
