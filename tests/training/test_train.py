"""Trainer: loss falls, exact resume, stages, checkpoints."""

import json

import torch

from resforce.training import activation_checkpoint
from resforce.training.checkpoint import checkpoint_dirs, latest_checkpoint, load_checkpoint
from resforce.config import load_config
from resforce.training.loop import Trainer, learning_rate, stage_at, train
from tiny import tiny

RECIPE = "configs/bb_resampling.yaml"


def cfg(tmp_path, name, *extra):
    return load_config(RECIPE, tiny(tmp_path / name, "stages.0.steps=3", "stages.1.steps=3", *extra))


def weights(run_dir):
    model, ema, state = load_checkpoint(latest_checkpoint(run_dir))
    return model, ema, state


def test_resume_is_bitwise_identical(tmp_path):
    full = cfg(tmp_path, "full", "optim.grad_accum=2")
    train(full, progress=False)
    part = cfg(tmp_path, "part", "optim.grad_accum=2")
    train(part, stop_at=4, progress=False)  # stops inside the resampling stage
    assert latest_checkpoint(part.run_dir).name == "step_00000004"
    train(cfg(tmp_path, "part", "optim.grad_accum=2"), progress=False)  # a new process would do this
    (m1, e1, s1), (m2, e2, s2) = weights(full.run_dir), weights(part.run_dir)
    assert s1["step"] == s2["step"] == 6
    for k in m1:
        assert torch.equal(m1[k], m2[k]), k
        assert torch.equal(e1[k], e2[k]), k
    # the metrics log of the resumed run has every step once
    steps = [json.loads(l)["step"] for l in open(f"{part.run_dir}/metrics.jsonl")]
    assert steps == list(range(1, 7))


def test_resume_would_differ_without_rng_state(tmp_path, monkeypatch):
    """The resume test is real: restoring everything but the generator breaks equality."""
    train(cfg(tmp_path, "full"), progress=False)
    train(cfg(tmp_path, "part"), stop_at=4, progress=False)
    restore = Trainer._restore

    def forget_generator(self, ckpt):
        restore(self, ckpt)
        self.gen.manual_seed(12345)

    monkeypatch.setattr(Trainer, "_restore", forget_generator)
    train(cfg(tmp_path, "part"), progress=False)
    m1, m2 = weights(tmp_path / "full")[0], weights(tmp_path / "part")[0]
    assert any(not torch.equal(m1[k], m2[k]) for k in m1)


def test_loss_falls_on_bouncing_balls(tmp_path):
    c = load_config("configs/bb_teacher.yaml", tiny(tmp_path / "tf", "stages.0.steps=60", "stages.1.steps=0", "optim.lr=3e-3",
                                                   "optim.warmup_steps=5", "ckpt_every=1000"))
    train(c, progress=False)
    losses = [json.loads(l)["loss"] for l in open(tmp_path / "tf" / "metrics.jsonl")]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5


def test_stages_schedule_and_checkpoints(tmp_path):
    c = cfg(tmp_path, "s", "keep_last=2", "ckpt_every=2", "optim.schedule=cosine")
    assert stage_at(c, 2)[0] == 0 and stage_at(c, 3)[0] == 1
    assert learning_rate(c, 0) < learning_rate(c, 1)  # warm-up
    t = Trainer(c, progress=False)
    t.run()
    lines = [json.loads(l) for l in open(tmp_path / "s" / "metrics.jsonl")]
    assert [l["stage"] for l in lines] == ["warmup"] * 3 + ["resampling"] * 3
    assert lines[0]["resample_time"] < 0.01 < lines[-1]["resample_time"]
    assert [d.name for d in checkpoint_dirs(c.run_dir)] == ["step_00000004", "step_00000006"]
    assert not list((tmp_path / "s" / "checkpoints").glob(".tmp*"))
    assert (tmp_path / "s" / "config.yaml").read_text().count("resampling") >= 1


def test_init_from_branches_a_run(tmp_path):
    base = cfg(tmp_path, "warm")
    train(base, stop_at=3, progress=False)
    branch = load_config("configs/bb_teacher.yaml", tiny(tmp_path / "branch", "stages.0.steps=3", "stages.1.steps=2"))
    t = Trainer(branch, progress=False, init_from=tmp_path / "warm")
    assert t.step == 3
    t.run()
    assert latest_checkpoint(tmp_path / "branch").name == "step_00000005"


def test_branches_with_same_seed_match_and_other_seeds_differ(tmp_path):
    train(cfg(tmp_path, "warm"), stop_at=3, progress=False)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(cfg(tmp_path, name, f"seed={seed}"), init_from=tmp_path / "warm", progress=False)
    a, b, c = (weights(tmp_path / n)[0] for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_activation_checkpointing_applied_from_outside(tmp_path, randomize):
    """activation_checkpoint.apply_activation_checkpointing keeps fewer activations for the backward,
    gives the same gradients and parameter names, and a run with model.gradient_checkpointing
    trains to the same weights."""
    import copy

    from resforce.model import build_model

    plain = randomize(build_model(preset="test", patch_size=(1, 4, 4))).train()
    ckpt = activation_checkpoint.apply_activation_checkpointing(copy.deepcopy(plain))
    assert [n for n, _ in ckpt.named_parameters()] == [n for n, _ in plain.named_parameters()]
    g = torch.Generator().manual_seed(0)
    x, h, t = torch.randn(2, 3, 4, 8, 8, generator=g), torch.randn(2, 3, 4, 8, 8, generator=g), torch.rand(2, 4, generator=g)

    def saved_and_grads(model):
        count = [0]

        def pack(tensor):
            count[0] += 1
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = model(x, t, history=h).square().mean()
        loss.backward()
        return count[0], [p.grad for p in model.parameters()]

    (n_plain, g_plain), (n_ckpt, g_ckpt) = saved_and_grads(plain), saved_and_grads(ckpt)
    assert n_ckpt < n_plain / 2
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_plain, g_ckpt))
    train(cfg(tmp_path, "plain", "stages.0.steps=2", "stages.1.steps=0"), progress=False)
    train(cfg(tmp_path, "ac", "stages.0.steps=2", "stages.1.steps=0", "model.gradient_checkpointing=true"),
          progress=False)
    m1, m2 = weights(tmp_path / "plain")[0], weights(tmp_path / "ac")[0]
    assert all(torch.allclose(m1[k], m2[k], atol=1e-6) for k in m1)
