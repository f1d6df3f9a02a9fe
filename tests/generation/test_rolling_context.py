"""Rolling context (model/cache.py eviction, SampleConfig.context): past the training
context the KV cache keeps the last context - 1 chunks, positions stay absolute, memory stays
constant; within the context nothing changes."""

import pytest
import torch

from resforce.model import build_model
from resforce.model.attention import AttentionPolicy, HistoryAttentionConfig
from resforce.rollout import SampleConfig, reference_rollout, rollout

FPC, H, W = 1, 8, 8


def make(randomize):
    return randomize(build_model(preset="test", frames_per_chunk=FPC, patch_size=(1, 4, 4)))


@pytest.mark.parametrize("sink", [0, 1])
def test_rolling_cache_equals_windowed_reference(randomize, sink):
    """Chunk i sees exactly the last context - 1 chunks (plus the sink) at the right relative
    positions: the cached rollout equals an uncached re-run over just those chunks. A cache that
    re-based RoPE on eviction, or evicted the wrong chunk, breaks this."""
    model = make(randomize)
    cfg = SampleConfig(chunks=9, steps=2, shift=3.0, seed=2, context=4, sink=sink)
    prefix = torch.randn(2, 3, 2 * FPC, H, W)
    fast = rollout(model, 2, H, W, cfg, prefix=prefix)
    slow = reference_rollout(model, 2, H, W, cfg, prefix=prefix)
    assert fast.shape == slow.shape == (2, 3, 11 * FPC, H, W)
    assert (fast - slow).abs().max().item() <= 1e-4
    dense = rollout(model, 2, H, W, SampleConfig(chunks=9, steps=2, shift=3.0, seed=2), prefix=prefix)
    assert (fast - dense)[:, :, 6:].abs().max().item() > 1e-3  # the context really rolled


def test_within_context_nothing_changes(randomize):
    model = make(randomize)
    base = rollout(model, 1, H, W, SampleConfig(chunks=5, steps=2, seed=1))
    for context in (6, 7, 100):  # 5 chunks: chunk 4 sees 4 history chunks = context 5 or more
        same = rollout(model, 1, H, W, SampleConfig(chunks=5, steps=2, seed=1, context=context))
        assert torch.equal(base, same)
    rolled = rollout(model, 1, H, W, SampleConfig(chunks=5, steps=2, seed=1, context=3))
    assert torch.equal(base[:, :, :3], rolled[:, :, :3]) and not torch.equal(base, rolled)


def test_cache_memory_is_constant(randomize):
    model = make(randomize)
    caches = []
    orig = model.new_cache

    def spy(*a, **k):
        caches.append(orig(*a, **k))
        return caches[-1]

    model.new_cache = spy
    for chunks in (12, 40):
        rollout(model, 1, H, W, SampleConfig(chunks=chunks, steps=1, context=5))
    short, long = caches[-2][0], caches[-1][0]
    assert long.num_chunks == short.num_chunks == 4 and long.position == 40
    assert long.k.shape == short.k.shape  # same buffer size after 12 or 40 chunks
    rollout(model, 1, H, W, SampleConfig(chunks=40, steps=1, context=0))
    assert caches[-1][0].num_chunks == 40 and caches[-1][0].k.shape[2] > long.k.shape[2]


def test_routing_on_the_retained_cache(randomize):
    """Top-k with k >= the retained history equals dense attention under the same rolling
    context; top-1 selects among the retained chunks only (and differs)."""
    model = make(randomize)
    cfg = SampleConfig(chunks=10, steps=2, seed=4, context=4)
    dense = rollout(model, 1, H, W, cfg)
    top3 = rollout(model, 1, H, W, cfg, attention=AttentionPolicy(HistoryAttentionConfig(mode="topk", topk=3)))
    top1 = rollout(model, 1, H, W, cfg, attention=AttentionPolicy(HistoryAttentionConfig(mode="topk", topk=1)))
    assert (dense - top3).abs().max().item() <= 1e-5
    assert (dense - top1).abs().max().item() > 1e-4


@pytest.mark.parametrize("context, sink, match", [(-1, 0, "context"), (3, 3, "sink")])
def test_bad_context_is_named(randomize, context, sink, match):
    with pytest.raises(ValueError, match=match):
        rollout(make(randomize), 1, H, W, SampleConfig(chunks=2, steps=1, context=context, sink=sink))


def test_context_of_one_sees_no_history(randomize):
    model = make(randomize)
    cfg = SampleConfig(chunks=4, steps=2, seed=3, context=1)
    fast = rollout(model, 1, H, W, cfg, prefix=torch.randn(1, 3, FPC, H, W))
    slow = reference_rollout(model, 1, H, W, cfg, prefix=fast[:, :, :FPC])
    assert (fast - slow).abs().max().item() <= 1e-4


def test_generation_defaults_to_the_runs_training_context(tmp_path, capsys):
    """`generate`/`eval` roll the context at the run's longest training clip by default;
    `--context all` keeps every chunk (dense), `--context N` overrides; bad values are named."""
    import json

    import numpy as np

    from resforce.cli.main import main
    from tiny import tiny

    run = tmp_path / "tf"
    main(["train", "configs/bb_teacher.yaml", *tiny(run, "stages.0.steps=1", "stages.1.steps=1",
                                                    "stages.0.clip_chunks=2", "stages.1.clip_chunks=3")])
    out = {}
    for name, flags in (("default", []), ("three", ["--context", "3"]), ("all", ["--context", "all"]),
                        ("top2", ["--topk", "2"])):
        main(["eval", str(run), "--chunks", "6", "--samples", "2", "--json", str(tmp_path / f"{name}.json"), *flags])
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert out["default"]["context_chunks"] == out["three"]["context_chunks"] == 3
    assert out["all"]["context_chunks"] == 0
    # the JSON names the attention each rollout used: the run's own (dense) or the flag's
    assert out["default"]["history_attention"] == out["all"]["history_attention"] == {"mode": "dense"}
    assert out["top2"]["history_attention"] == {"mode": "topk", "topk": 2}
    # and which weights: the same run's evaluations name the same file digest
    digests = {o["weights_sha256"] for o in out.values()}
    assert len(digests) == 1 and len(digests.pop()) == 64
    main(["generate", str(run), "--chunks", "6", "--prefix-chunks", "1", "--out", str(tmp_path / "d.npy")])
    main(["generate", str(run), "--chunks", "6", "--prefix-chunks", "1", "--context", "all", "--out", str(tmp_path / "a.npy")])
    d, a = np.load(tmp_path / "d.npy"), np.load(tmp_path / "a.npy")
    assert np.array_equal(d[:, :3], a[:, :3]) and not np.array_equal(d, a)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["generate", str(run), "--context", "0", "--out", str(tmp_path / "x.npy")])
    assert "--context" in capsys.readouterr().err


def test_generation_defaults_to_the_last_stage_attention(tmp_path):
    """A routed recipe generates with its routing (no flag needed); a window+sink recipe keeps
    its sink when the context rolls; dense recipes keep no sink."""
    from resforce.generation.generate import SampleOverrides, generate
    from resforce.cli.main import main
    from tiny import tiny

    run = tmp_path / "routed"
    main(["train", "configs/bb_resampling_routed.yaml", *tiny(run, "stages.0.steps=1", "stages.1.steps=1",
                                                               "stages.2.steps=1", "stages.2.attention.topk=1")])
    six = SampleOverrides(chunks=6)
    routed = generate(run, six, prefix_chunks=1, progress=False)
    dense = generate(run, six, HistoryAttentionConfig(mode="dense"), prefix_chunks=1, progress=False)
    assert not torch.equal(routed.videos, dense.videos)
    assert torch.equal(routed.videos, generate(run, six, HistoryAttentionConfig(mode="topk", topk=1),
                                               prefix_chunks=1, progress=False).videos)
    win = tmp_path / "win"
    main(["train", "configs/bb_teacher.yaml", *tiny(win, "stages.0.steps=1", "stages.1.steps=1",
                                                    "stages.1.attention.mode=window", "stages.1.attention.window=2",
                                                    "stages.1.attention.sink=1")])
    with_sink = generate(win, SampleOverrides(chunks=12, context=4), prefix_chunks=1, progress=False)
    assert with_sink.context_chunks == 4 and with_sink.sink_chunks == 1
    assert routed.sink_chunks == 0 and routed.context_chunks == 16  # the routed stage trains on 16-chunk clips
