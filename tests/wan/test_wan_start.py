"""Starting a run from Wan weights (init.wan, `--init-from` a diffusers folder), with the model
built on the meta device, sharded, then loaded; and the sharded start and resume under FSDP on
2 CPU ranks (Gloo). The Wan folders are tiny random diffusers WanTransformer3DModels written
by the test (tests/wan/test_wan.py's tiny_wan); nothing is downloaded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install -e '.[wan]')")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "support"))
from tiny import TINY  # noqa: E402

# process groups and torchrun launches run on one test worker (make test runs two: pytest-xdist)
pytestmark = pytest.mark.xdist_group("processes")

DATA = [o for o in TINY if not o.startswith("model.")]  # the Wan folder gives the model
RECIPE = """\
stages:
  - {name: warmup, steps: 1, clip_chunks: 3, history: {strategy: teacher}}
  - {name: resampling, steps: 1, clip_chunks: 3, history: {strategy: resampling}}
"""


def write_wan(folder: Path, seed: int = 0) -> Path:
    """A tiny random Wan2.1-like transformer for 3-channel 8x8 clips, saved as diffusers does."""
    from test_wan import tiny_wan

    tiny_wan(seed=seed, in_channels=3, out_channels=3).save_pretrained(folder)
    return folder


def wan_config(tmp: Path, wan: Path, run: str, *extra):
    from resforce.config import load_config

    recipe = tmp / "recipe.yaml"
    recipe.write_text(RECIPE)
    return load_config(recipe, DATA + [f"run_dir={tmp / run}", f"init.wan={wan}", "model.frames_per_chunk=1",
                                       "text.text_len=4", "device=cpu", *extra])


def converted(wan: Path, cfg) -> dict:
    from resforce.wan.folder import read_wan_state_dict
    return read_wan_state_dict(wan, cfg.model)


# ----------------------------------------------------------------------------- single process
def test_the_model_config_comes_from_the_wan_folder(tmp_path):
    cfg = wan_config(tmp_path, write_wan(tmp_path / "wan"), "r", "model.attention_backend=sdpa")
    m = cfg.model
    assert (m.num_layers, m.ffn_dim, m.text_dim, m.freq_dim, tuple(m.patch_size)) == (2, 32, 16, 32, (1, 2, 2))
    assert m.frames_per_chunk == 1 and m.prediction == "velocity"


@pytest.mark.parametrize("override,named", [("model.num_layers=3", "model.num_layers=3"),
                                            ("model.ffn_dim=64", "model.ffn_dim=64"),
                                            ("model.prediction=x0", "model.prediction=x0"),
                                            ("model.preset=tiny", "from model.preset=tiny")])
def test_a_yaml_shape_that_conflicts_with_the_wan_folder_is_an_error(tmp_path, override, named):
    from resforce.config import ConfigError

    wan = write_wan(tmp_path / "wan")
    with pytest.raises(ConfigError, match="init.wan") as e:
        wan_config(tmp_path, wan, "r", override)
    assert named in str(e.value) and "num_layers=2" in str(e.value)


def test_a_missing_wan_folder_names_init_wan(tmp_path):
    from resforce.config import ConfigError

    with pytest.raises(ConfigError, match=r"init.wan=.*nowhere.*does not exist"):
        wan_config(tmp_path, tmp_path / "nowhere", "r")


def test_trainer_starts_from_wan_weights_without_building_a_random_model(tmp_path, monkeypatch):
    """Step-0 model and EMA are the converted Wan weights, exactly; every CausalVideoDiT the
    trainer builds is on the meta device (no random init, nothing held twice); a step trains."""
    from resforce.model.dit import CausalVideoDiT
    from resforce.training.loop import Trainer

    wan = write_wan(tmp_path / "wan")
    cfg = wan_config(tmp_path, wan, "r")
    built = []
    init = CausalVideoDiT.__init__

    def spy(self, *a, **k):
        init(self, *a, **k)
        built.append(next(self.parameters()).device.type)

    monkeypatch.setattr(CausalVideoDiT, "__init__", spy)
    t = Trainer(cfg, progress=False)
    assert built and set(built) == {"meta"}, built
    want = converted(wan, cfg)
    for name, module in (("model", t.model), ("ema", t.ema)):
        sd = module.state_dict()
        assert set(sd) == set(want)
        for k, v in want.items():
            assert torch.equal(sd[k], v.float()), (name, k)
    with pytest.warns(UserWarning, match="empty-prompt stand-in"):
        m = t.train_step()
    assert m["loss"] > 0 and not m.get("skipped")
    t.close()


def test_init_from_a_wan_folder_in_the_cli_then_resume_without_its_weights(tmp_path):
    """`resforce train --init-from WAN_DIR` starts from Wan (as init.wan); the same command
    again resumes from the run's own checkpoint: only the folder's config.json is read (the
    model's shape), not its weights."""
    from resforce.training.checkpoint import latest_checkpoint, load_checkpoint
    from resforce.cli.main import main
    from resforce.config import config_from_yaml

    wan = write_wan(tmp_path / "wan")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    args = ["train", str(recipe), *DATA, f"run_dir={tmp_path / 'r'}", "model.frames_per_chunk=1",
            "text.text_len=4", "device=cpu"]
    cfg = wan_config(tmp_path, wan, "unused")
    with pytest.warns(UserWarning, match="empty-prompt"):
        main(args + ["--init-from", str(wan), "--stop-at", "1"])
    ckpt = latest_checkpoint(tmp_path / "r")
    saved = config_from_yaml((ckpt / "config.yaml").read_text())
    assert saved.init.wan == str(wan) and saved.model == cfg.model
    (wan / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.warns(UserWarning, match="empty-prompt"):
        main(args + ["--init-from", str(wan)])  # resume: step 2
    assert load_checkpoint(latest_checkpoint(tmp_path / "r"))[2]["step"] == 2


def test_two_starting_points_are_refused(tmp_path):
    from resforce.training.loop import Trainer

    wan = write_wan(tmp_path / "wan")
    with pytest.raises(ValueError, match="set init.wan="):
        Trainer(wan_config(tmp_path, wan, "a"), init_from=wan, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError, match="keep one"):
        Trainer(wan_config(tmp_path, wan, "b"), init_from=other, progress=False)


# ----------------------------------------------------------------------------- FSDP on 2 ranks
def _driver(out: str) -> None:
    """torchrun script: start from Wan under fsdp, dump what each rank holds, train a step,
    save, resume; spies count who reads the Wan folder and the checkpoint."""
    from torch.distributed.tensor import DTensor

    from resforce.config import config_from_yaml
    from resforce.training import distributed as parallel
    from resforce.training import loop as train
    from resforce.training import state as train_state
    from resforce.wan import folder as wan_mod

    out = Path(out)
    cfg = config_from_yaml((out / "config.yaml").read_text())
    reads = {"wan": 0, "checkpoint": 0}

    def counted(name, fn):
        def wrapper(*a, **k):
            reads[name] += 1
            return fn(*a, **k)
        return wrapper

    monkey = [(wan_mod, "read_wan_state_dict"), (train_state, "load_checkpoint")]
    originals = {(m, n): getattr(m, n) for m, n in monkey}
    wan_mod.read_wan_state_dict = counted("wan", originals[(wan_mod, "read_wan_state_dict")])
    train_state.load_checkpoint = counted("checkpoint", originals[(train_state, "load_checkpoint")])

    t = train.Trainer(cfg, progress=False)
    r = parallel.rank()
    started = {"reads": dict(reads), "sharded": all(isinstance(p, DTensor) for p in
                                                   [*t.model.parameters(), *t.ema.parameters()]),
               "local_numel": sum(p.to_local().numel() for p in t.model.parameters()),
               "full_numel": sum(p.numel() for p in t.model.parameters())}
    model_sd = parallel.full_state_dict(t.model, "fsdp")  # collective: rank 0 gets the tensors
    ema_sd = parallel.full_state_dict(t.ema, "fsdp")
    if r == 0:
        torch.save({"model": model_sd, "ema": ema_sd}, out / "start.pt")
    t.run(stop_at=1)
    reads.update(wan=0, checkpoint=0)
    t2 = train.Trainer(cfg, progress=False)  # resumes step 1 (the Wan folder is not read again)
    states = [t2.opt.state[p] for p in t2.model.parameters()]
    resumed = {"reads": dict(reads), "step": t2.step,
               "optim_sharded": all(isinstance(s["exp_avg"], DTensor)
                                    and s["exp_avg"].to_local().shape == p.to_local().shape
                                    for s, p in zip(states, t2.model.parameters()))}
    model_sd = parallel.full_state_dict(t2.model, "fsdp")
    opt_sd = parallel.full_optim_state_dict(t2.model, t2.opt, "fsdp")
    if r == 0:
        torch.save({"model": model_sd, "optimizer": opt_sd}, out / "resumed.pt")
    t2.close()
    (out / f"rank{r}.json").write_text(json.dumps({"started": started, "resumed": resumed}))
    parallel.shutdown()


@pytest.mark.slow
def test_fsdp_starts_sharded_from_wan_and_resumes_from_rank0(tmp_path):
    """2 ranks, fsdp: the model and EMA are sharded from the start and equal the Wan weights
    when gathered; only rank 0 reads the Wan folder and, on resume, the checkpoint; the
    optimizer moments come back as each rank's shards, equal to the checkpoint's."""
    from torchrun_launch import run_torchrun
    from resforce.training.checkpoint import latest_checkpoint, load_checkpoint
    from resforce.config import to_yaml

    wan = write_wan(tmp_path / "wan")
    cfg = wan_config(tmp_path, wan, "run", "parallel=fsdp")
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    run_torchrun(__file__, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [d["started"]["reads"]["wan"] for d in ranks] == [1, 0]
    assert [d["resumed"]["reads"] for d in ranks] == [{"wan": 0, "checkpoint": 1}, {"wan": 0, "checkpoint": 0}]
    for d in ranks:
        s = d["started"]
        assert s["sharded"] and s["local_numel"] < s["full_numel"], s
        assert d["resumed"]["step"] == 1 and d["resumed"]["optim_sharded"]
    assert sum(d["started"]["local_numel"] for d in ranks) >= ranks[0]["started"]["full_numel"]
    start = torch.load(tmp_path / "start.pt")
    for k, v in converted(wan, cfg).items():
        assert torch.equal(start["model"][k], v.float()), k
        assert torch.equal(start["ema"][k], v.float()), k
    model_sd, _, state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    resumed = torch.load(tmp_path / "resumed.pt")
    for k, v in model_sd.items():
        assert torch.equal(resumed["model"][k], v), k
    for i, st in state["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][i]["exp_avg_sq"], st["exp_avg_sq"]), i


if __name__ == "__main__":  # run by torchrun from the test above
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    _driver(sys.argv[1])
    from torchrun_launch import end_rank

    end_rank()  # no interpreter teardown: see end_rank
