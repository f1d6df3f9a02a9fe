"""The path from captioned mp4s to a prompted video, on the CPU with tiny random Wan parts
built here (tests/support/latent_fixtures.py; nothing downloads): `resforce prepare` -> the latents
world -> train TF then RF -> `resforce generate --prompt` with CFG -> mp4. Plus the pieces:
resume after a kill, VAE shapes and normalisation, streaming decode = full decode, caption
dropout and guidance."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "support"))
from latent_fixtures import (TEXT_DIM, Z_DIM, make_text_encoder_folder, make_vae_folder, make_video,  # noqa: E402
                             paper_index)

RECIPE = str(ROOT / "configs" / "wan2.1_1.3b_rf.yaml")
CAPTIONS = {"clip0.mp4": "a red ball moves left", "clip1.mp4": "blue square", "sub/clip2.mp4": "a blue ball moves up"}
TINY_RF = ["model.num_layers=2", "model.num_attention_heads=2", "model.attention_head_dim=12", "model.ffn_dim=48",
           f"model.in_channels={Z_DIM}", f"model.out_channels={Z_DIM}", f"model.text_dim={TEXT_DIM}",
           "precision=fp32", "parallel=none", "device=cpu", "optim.batch_size=2", "optim.grad_accum=1",
           "optim.warmup_steps=0", "optim.lr=1e-2", "log_every=1",
           "stages.0.steps=2", "stages.0.clip_chunks=2", "stages.1.steps=2", "stages.1.clip_chunks=3",
           "stages.2.steps=0", "stages.3.steps=0", "text.caption_dropout=0.5", "sample.steps=2"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Local weight folders and a video folder: 3 captioned clips (one gives two 33-frame
    clips), one too short, one corrupt, one without a caption."""
    d = tmp_path_factory.mktemp("wan_parts")
    make_vae_folder(d / "vae")
    make_text_encoder_folder(d / "wan")
    videos = d / "videos"
    for i, (name, caption) in enumerate(CAPTIONS.items()):
        make_video(videos / name, (33, 45, 70)[i], seed=i, caption=caption)
    make_video(videos / "short.mp4", 20, caption="a ball")
    (videos / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    (videos / "corrupt.txt").write_text("a ball")
    make_video(videos / "uncaptioned.mp4", 40)
    return d


def prepare_args(parts, out, *extra):
    return ["prepare", str(parts / "videos"), "--vae", str(parts / "vae"), "--text-encoder", str(parts / "wan"),
            "--out", str(out), "--chunks", "3", "--size", "32", "32", "--batch", "2",
            "--clips-per-video", "0", "--dtype", "float32", "--quiet", *extra]


@pytest.fixture(scope="module")
def trained(parts, tmp_path_factory):
    """prepare -> train (TF 2 steps at 2 chunks, then RF 2 steps at 3 chunks) -> export, through
    the CLI. The recipe writes sharded checkpoints: export merges the EMA into model.safetensors,
    which generate reads."""
    from resforce.cli.main import main

    d = tmp_path_factory.mktemp("latents_run")
    main(prepare_args(parts, d / "ds"))
    main(["train", RECIPE, *TINY_RF, f"data.latents.root={d / 'ds'}", f"run_dir={d / 'run'}"])
    main(["export", str(d / "run"), "--out", str(d / "model.safetensors"), "--dtype", "float32"])
    return d


def test_prepare_train_generate_end_to_end_through_the_cli(trained, parts, tmp_path, capsys):
    from resforce.cli.main import main
    from resforce.io.video_io import load_video

    index = json.loads((trained / "ds" / "index.json").read_text())
    assert index["complete"] and index["latent_shape"] == [Z_DIM, 9, 4, 4]
    clips = [(c["source"], c["start_frame"], c["caption"]) for s in index["shards"] for c in s["clips"]]
    assert clips == [("clip0.mp4", 0, "a red ball moves left"), ("clip1.mp4", 0, "blue square"),
                     ("sub/clip2.mp4", 0, "a blue ball moves up"), ("sub/clip2.mp4", 33, "a blue ball moves up")]
    reasons = {s["source"]: s["reason"] for s in index["skipped"]}
    assert set(reasons) == {"short.mp4", "corrupt.mp4", "uncaptioned.mp4"}
    assert "too short: 20 frame(s)" in reasons["short.mp4"] and "33" in reasons["short.mp4"]
    assert "cannot decode" in reasons["corrupt.mp4"] and "no caption" in reasons["uncaptioned.mp4"]
    assert index["vae"]["config"]["latents_std"] == [0.05, 0.02, 0.08, 0.04]
    assert index["text_encoder"]["config"]["d_model"] == TEXT_DIM and index["text_encoder"]["text_len"] == 512

    stages = [json.loads(line).get("stage") for line in (trained / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in stages if s] == ["teacher_5s"] * 2 + ["resampling_5s"] * 2

    out = tmp_path / "x.mp4"
    main(["generate", str(trained / "model.safetensors"), "--prompt", "a red ball moves left", "--negative-prompt", "blue square",
          "--cfg-scale", "5", "--chunks", "3", "--steps", "2", "--device", "cpu", "--fps", "16", "--out", str(out)])
    assert "1 video(s) of 33 frames" in capsys.readouterr().out  # 3 chunks x 3 latent frames: 1 + 4 x 8 frames
    video = load_video(out)
    assert video.shape[:2] == (3, 33) and video.std() > 0.01


def generated(run, prompt=None, negative=None, cfg=5.0):
    from resforce.generation.generate import SampleOverrides, generate
    from resforce.text_context import PromptOptions

    g = generate(run, SampleOverrides(chunks=2, steps=2, cfg_scale=cfg), device="cpu", progress=False,
                 prompt=PromptOptions(prompt, negative))
    return g.videos


def test_guidance_uses_the_prompt_and_the_negative_prompt(trained):
    """CFG: the prompt and the negative prompt both change the video; without guidance
    (cfg 1) the negative prompt is never used."""
    run = trained / "model.safetensors"
    a = generated(run, "a red ball moves left")
    assert a.shape == (1, 3, 21, 32, 32)  # 2 chunks: 1 + 4 x 5 frames
    assert (a - generated(run, "blue square")).abs().max() > 1e-3
    assert (a - generated(run, "a red ball moves left", "blue square")).abs().max() > 1e-3
    assert torch.equal(generated(run, "a red ball", cfg=1.0), generated(run, "a red ball", "blue square", cfg=1.0))


def test_caption_dropout_gives_the_stored_empty_prompt(trained):
    from resforce.config import load_config
    from resforce.worlds.latents.dataset import LatentDataset
    from resforce.wan.text_encoder import TextEncoder
    from resforce.text_context import TextConfig, training_text
    from resforce.worlds import world_of

    cfg = load_config(RECIPE, TINY_RF + [f"data.latents.root={trained / 'ds'}"])
    stream = world_of(cfg.data).stream(seed=3)
    latents, info = stream.batch(4, 6)  # a 2-chunk clip: the first 6 latent frames of a 9-frame clip
    assert latents.shape == (4, Z_DIM, 6, 4, 4) and info.context.shape == (4, 512, TEXT_DIM)
    encoder = TextEncoder.load(LatentDataset(trained / "ds").index["text_encoder"]["folder"])
    expected = encoder.encode_padded(info.captions)
    assert torch.allclose(info.context, expected, atol=1e-6)
    empty = encoder.encode_padded([""])
    assert torch.allclose(info.empty_context, empty, atol=1e-6) and empty[0, 1:].abs().max() == 0  # EOS, then zeros
    assert torch.equal(training_text(info, TEXT_DIM, TextConfig(caption_dropout=0.0), 4, "cpu"), info.context)
    dropped = training_text(info, TEXT_DIM, TextConfig(caption_dropout=1.0), 4, "cpu")
    assert torch.equal(dropped, empty.expand(4, -1, -1))


def test_a_killed_prepare_resumes_where_it_stopped(parts, tmp_path):
    from resforce.worlds.latents.dataset import LatentDataset
    from resforce.worlds.latents.prepare import PrepareOptions, prepare

    videos = shutil.copytree(parts / "videos", tmp_path / "videos")

    def opts(out, chunks=3):
        return PrepareOptions(str(videos), str(parts / "vae"), str(parts / "wan"), str(out), chunks=chunks,
                              size=(32, 32), batch=2, clips_per_video=0, dtype="float32", workers=2)

    class Killed(BaseException):
        pass

    def kill_after_first(source):
        raise Killed

    with pytest.raises(Killed):
        prepare(opts(tmp_path / "ds"), after_video=kill_after_first, progress=False)
    index = json.loads((tmp_path / "ds" / "index.json").read_text())
    assert not index["complete"] and index["shards"] == [] and index["done"] == []
    written = [p for p in (tmp_path / "ds" / "clips").rglob("*") if p.is_file()]
    assert len(written) == 1  # the one video done before the kill
    with pytest.raises(ValueError, match="incomplete"):
        LatentDataset(tmp_path / "ds")
    first = written[0].stat().st_mtime_ns
    stale = tmp_path / "ds" / "clips" / ".clip1.mp4.safetensors.x1y2.tmp.safetensors"
    stale.write_bytes(b"half a file")  # a kill mid-write
    with pytest.raises(ValueError, match="--chunks was 3, now 2"):
        prepare(opts(tmp_path / "ds", chunks=2), progress=False)

    prepare(opts(tmp_path / "ds"), progress=False)  # the same command again
    prepare(opts(tmp_path / "whole"), progress=False)  # never stopped
    resumed, whole = LatentDataset(tmp_path / "ds"), LatentDataset(tmp_path / "whole")
    assert written[0].stat().st_mtime_ns == first and not stale.exists()  # not redone; the temp file gone
    assert resumed.index["shards"] == whole.index["shards"] and len(resumed) == 4
    assert resumed.index["skipped"] == whole.index["skipped"] and resumed.index["done"] == whole.index["done"]
    for i in range(len(whole)):
        assert all(torch.equal(a, b) for a, b in zip(resumed.clip(i)[:2], whole.clip(i)[:2]))
    make_video(videos / "later" / "clip4.mp4", 33, seed=4, caption="a ball moves right")
    prepare(opts(tmp_path / "ds"), progress=False)  # a video added since: prepared alone, then listed
    grown = LatentDataset(tmp_path / "ds")
    assert len(grown) == 5 and "later/clip4.mp4" in grown.index["done"]
    assert written[0].stat().st_mtime_ns == first


def tiny_vae(parts):
    from resforce.wan.vae import load_vae
    return load_vae(parts / "vae")


def test_encode_decode_shapes_and_normalisation(parts):
    from resforce.wan.vae import decode, denormalise, encode, normalise

    vae = tiny_vae(parts)
    video = torch.rand(2, 3, 13, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = encode(vae, video)
    assert latents.shape == (2, Z_DIM, 4, 4, 6)  # 1 + 4k frames -> 1 + k; 8x smaller
    mu = vae.encode(video).latent_dist.mean
    mean = torch.tensor([0.05, -0.1, 0.2, 0.0]).view(1, -1, 1, 1, 1)
    std = torch.tensor([0.05, 0.02, 0.08, 0.04]).view(1, -1, 1, 1, 1)
    assert torch.allclose(latents, (mu - mean) / std, atol=1e-5)  # Wan's per-channel normalisation
    assert torch.allclose(denormalise(vae, normalise(vae, mu)), mu, atol=1e-6)
    assert decode(vae, latents).shape == (2, 3, 13, 32, 48)
    # causal: a clip's first 1 + 4j frames encode to its first 1 + j latents (a shorter training clip)
    assert torch.equal(encode(vae, video[:, :, :5]), latents[:, :, :2])
    with pytest.raises(ValueError, match="1 \\+ 4k video frames, got 12"):
        encode(vae, video[:, :, :12])


def test_streaming_decode_equals_the_full_decode(parts):
    from resforce.wan.vae import StreamingDecoder, decode

    vae = tiny_vae(parts)
    latents = torch.randn(2, Z_DIM, 9, 4, 4, generator=torch.Generator().manual_seed(1))
    full = decode(vae, latents)
    stream = StreamingDecoder(vae)
    parts_ = [stream.decode(latents[:, :, i:i + 3]) for i in range(0, 9, 3)]
    assert [p.shape[2] for p in parts_] == [9, 12, 12]  # 1 + 4 + 4, then 4 per latent frame
    assert torch.allclose(torch.cat(parts_, dim=2), full, atol=1e-6)
    # the carried feature cache is what makes it one video: emptied, the next chunk restarts as a
    # first chunk (9 frames, the temporal upsampling of its first latent frame skipped)
    forgetful = StreamingDecoder(vae)
    forgetful.decode(latents[:, :, :3])
    forgetful.feat_cache = [None] * len(forgetful.feat_cache)
    assert forgetful.decode(latents[:, :, 3:6]).shape[2] == 9


def test_missing_weights_and_bad_flags_are_named(parts, tmp_path, capsys):
    from resforce.cli.main import main
    from resforce.wan.vae import load_vae

    with pytest.raises(FileNotFoundError, match="--vae .*nowhere.*AutoencoderKLWan"):
        load_vae(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="vae/.*config.json"):
        load_vae(tmp_path / "empty")
    args = prepare_args(parts, tmp_path / "ds")
    for flag, value, named in [("--size", ["30", "32"], "--size"), ("--chunks", ["0"], "--chunks"),
                               ("--text-encoder", [str(tmp_path / "none")], "--text-encoder")]:
        i = args.index(flag)
        bad = args[:i + 1] + value + args[i + 1 + (2 if flag == "--size" else 1):]
        with pytest.raises(SystemExit):
            main(bad)
        assert named in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(prepare_args(parts, tmp_path / "taken"))
    assert "--out" in capsys.readouterr().err and (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def wan13b_folder(path: Path) -> Path:
    """A Wan2.1-T2V-1.3B-Diffusers-like folder: only transformer/config.json (no weights are
    read when a config loads)."""
    cfg = {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2], "num_attention_heads": 12,
           "attention_head_dim": 128, "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256,
           "ffn_dim": 8960, "num_layers": 30, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
           "eps": 1e-06, "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": 1024}
    (path / "transformer").mkdir(parents=True)
    (path / "transformer" / "config.json").write_text(json.dumps(cfg))
    return path


def test_the_paper_recipe_loads_and_validates(tmp_path):
    from resforce.config import ConfigError, load_config

    ds = paper_index(tmp_path / "ds")
    cfg = load_config(RECIPE, [f"init.wan={wan13b_folder(tmp_path / 'wan')}", f"data.latents.root={ds}"])
    assert [(s.name, s.steps, s.clip_chunks, s.history.strategy) for s in cfg.stages] == [
        ("teacher_5s", 10000, 7, "teacher"), ("resampling_5s", 15000, 7, "resampling"),
        ("resampling_15s", 5000, 21, "resampling"), ("routed_15s", 1500, 21, "resampling")]
    assert [s.attention.mode for s in cfg.stages] == ["dense"] * 3 + ["topk"] and cfg.stages[3].attention.topk == 5
    assert all((s.history.resample_shift, s.history.resample_steps) == (0.6, 1) for s in cfg.stages[1:])
    assert (cfg.optim.batch_size, cfg.optim.lr, cfg.precision, cfg.parallel) == (64, 5e-5, "bf16", "fsdp")
    m = cfg.model
    assert (m.num_layers, m.text_dim, m.in_channels, m.frames_per_chunk) == (30, 4096, 16, 3)
    assert (m.gradient_checkpointing, m.attention_backend) == ("selective", "chunked")
    assert (cfg.sample.steps, cfg.sample.shift, cfg.sample.cfg_scale) == (32, 5.0, 5.0)
    assert cfg.data.kind == "latents" and cfg.data.latents.negative_prompt
    short = paper_index(tmp_path / "short", latent_frames=21)  # 5 s clips cannot feed the 15 s stages
    with pytest.raises(ValueError, match="stages.2.clip_chunks=21.*63 latent frames.*have 21"):
        load_config(RECIPE, [f"data.latents.root={short}"])
    with pytest.raises(FileNotFoundError, match="data.latents.root.*index.json"):
        load_config(RECIPE, [f"data.latents.root={tmp_path / 'nothing'}"])
    assert issubclass(ConfigError, ValueError)


def test_caption_manifests_json_and_csv(tmp_path):
    from resforce.worlds.latents.captions import Captions

    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    (root / "a.mp4").write_bytes(b"")
    (root / "a.txt").write_text(" sidecar caption \n")
    (tmp_path / "m.json").write_text(json.dumps({"a.mp4": "from json", "sub/b.mp4": "b json"}))
    (tmp_path / "l.json").write_text(json.dumps([{"file": "sub/b.mp4", "caption": "b list"}]))
    (tmp_path / "m.csv").write_text('file,caption\na.mp4,"from csv, with a comma"\n')
    (tmp_path / "bad.csv").write_text("video,text\na.mp4,x\n")
    assert Captions(root).caption(root / "a.mp4") == "sidecar caption"
    assert Captions(root, tmp_path / "m.json").caption(root / "sub" / "b.mp4") == "b json"
    assert Captions(root, tmp_path / "l.json").caption(root / "sub" / "b.mp4") == "b list"
    assert Captions(root, tmp_path / "l.json").caption(root / "a.mp4") is None  # a manifest replaces the sidecars
    assert Captions(root, tmp_path / "m.csv").caption(root / "a.mp4") == "from csv, with a comma"
    with pytest.raises(ValueError, match="--captions .*bad.csv.*'file' and 'caption'"):
        Captions(root, tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="--captions"):
        Captions(root, tmp_path / "missing.json")


def test_a_prompt_for_a_world_without_text_is_an_error_naming_the_flag():
    from resforce.config import load_config
    from resforce.text_context import PromptOptions
    from resforce.worlds import world_of

    world = world_of(load_config(None, ["model.preset=test"]).data)
    assert world.text_embeddings(PromptOptions(), "cpu") is None and world.pixel_decoder(None, "cpu") is None
    with pytest.raises(ValueError, match="--prompt.*data.kind=bouncing_balls has no text encoder"):
        world.text_embeddings(PromptOptions("a ball"), "cpu")
    with pytest.raises(ValueError, match="--vae"):
        world.pixel_decoder("somewhere", "cpu")
