"""Action following by inverse dynamics (metrics/inverse_dynamics.py), for any world with
discrete actions: trained on the world's ground truth it scores ground-truth videos near its
ceiling and well above the floor (the same videos against another episode's actions), and a
video that ignores its actions near the floor; `resforce score --inverse-dynamics` reports the
three numbers for the atari world."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from resforce.config import DataConfig
from resforce.metrics.inverse_dynamics import action_following, pairs, train_inverse_dynamics
from resforce.worlds import world_of


@pytest.fixture(scope="module")
def agent():
    torch.set_num_threads(1)
    world = world_of(DataConfig(kind="agent_balls"))
    return world, train_inverse_dynamics(world, steps=400, clips=64, lr=5e-3)


def test_ground_truth_follows_and_a_frozen_video_does_not(agent):
    world, idm = agent
    assert idm.ceiling > 0.45  # chance: 0.2 (a move into a wall looks like a noop)
    videos, states = world.clips(16, 10, seed=0)
    gt = action_following(idm, videos, states.actions, world, given_frames=2)
    assert gt["frames_scored"] == 16 * 8
    assert gt["videos"] > gt["floor"] + 0.2 and gt["videos"] < idm.ceiling + 0.1, gt
    own, floor = (np.array(gt["per_sample"][k]) for k in ("videos", "floor"))  # per video, for paired tests
    assert own.shape == floor.shape == (16,)
    assert np.isclose(own.mean(), gt["videos"]) and np.isclose(floor.mean(), gt["floor"])
    assert (own > floor).mean() > 0.5  # 8 frames a video: noisy one by one, above the floor in most
    frozen = videos[:, :, :1].expand_as(videos)  # ignores every action: no move at all
    ignored = action_following(idm, frozen, states.actions, world, given_frames=2)
    assert ignored["videos"] < gt["floor"] + 0.1, (ignored, gt)


def test_pairs_score_the_action_that_produced_the_second_frame():
    videos = torch.zeros(2, 3, 4, 8, 8)
    x, y = pairs(videos, np.array([[9, 1, 2, 3], [9, 4, 5, 6]]))
    assert x.shape == (6, 9, 8, 8) and y.tolist() == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="'none' actions"):
        train_inverse_dynamics(world_of(DataConfig(kind="bouncing_balls")))


def test_score_reports_ceiling_videos_and_floor_for_atari(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ale_py", reason="the atari world needs ale-py: pip install 'resforce[atari]'")
    import functools

    from resforce.cli.main import main
    from resforce.metrics import inverse_dynamics
    from resforce.worlds.atari.world import AtariConfig

    # the CLI's wiring, not the classifier's quality (the agent-world test above): few clips,
    # since every clip of the atari stream starts its own emulator (~0.2 s to load the ROM)
    monkeypatch.setattr(inverse_dynamics, "train_inverse_dynamics",
                        functools.partial(inverse_dynamics.train_inverse_dynamics, clips=8, held_out=4))

    world = world_of(DataConfig(kind="atari", atari=AtariConfig(episode_frames=200)))
    videos, states = world.clips(3, 8, seed=1)
    files = []
    for i in range(3):
        np.save(tmp_path / f"v{i}.npy", videos[i].numpy())
        np.save(tmp_path / f"a{i}.npy", states.actions[i])
        files.append(str(tmp_path / f"v{i}.npy"))
    out = tmp_path / "score.json"
    main(["score", *files, "--world", "atari", "--frechet-reference", "0", "--actions",
          *[str(tmp_path / f"a{i}.npy") for i in range(3)], "--inverse-dynamics", "20", "--json", str(out)])
    text = capsys.readouterr().out
    assert "(ceiling)" in text and "(floor)" in text
    result = json.loads(out.read_text())["action_following"]
    assert set(result) >= {"ceiling", "videos", "floor"} and result["frames_scored"] == 3 * 6
    with pytest.raises(SystemExit):
        main(["score", *files, "--world", "atari", "--inverse-dynamics", "20"])
    assert "give --actions FILE" in capsys.readouterr().err
    # bad --actions fail once the videos are read, before any of them is scored
    from resforce.evaluation import evaluate

    def no_scoring(*a, **k):
        raise AssertionError("the videos were scored before --actions was checked")

    monkeypatch.setattr(evaluate, "score_videos", no_scoring)
    with pytest.raises(SystemExit):
        main(["score", *files, "--world", "atari", "--actions", str(tmp_path / "a0.npy"), str(tmp_path / "a1.npy"),
              "--inverse-dynamics", "20"])
    assert "--actions: 2 files for 3 videos" in capsys.readouterr().err


def test_eval_scores_the_action_following_of_the_shipped_agent_model(tmp_path, capsys):
    """`resforce eval --inverse-dynamics`: the shipped agent-world model's rollouts, scored
    against the ground-truth actions they were commanded, land well above the floor (an
    action-ignoring model's level); a world without actions is refused before any rollout."""
    from pathlib import Path

    import resforce
    from resforce.cli.main import main

    model = Path(resforce.__file__).parent / "assets" / "agent_balls" / "resampling_forcing.safetensors"
    out = tmp_path / "eval.json"
    main(["eval", str(model), "--samples", "4", "--chunks", "10", "--frechet-reference", "0",
          "--inverse-dynamics", "200", "--json", str(out)])
    assert "(ceiling)" in capsys.readouterr().out
    result = json.loads(out.read_text())["action_following"]
    assert result["frames_scored"] == 4 * 10
    assert result["videos"] > result["floor"] + 0.15, result
    demo = Path(resforce.__file__).parent / "assets" / "demo" / "resampling_forcing.safetensors"
    with pytest.raises(SystemExit):
        main(["eval", str(demo), "--samples", "2", "--chunks", "2", "--inverse-dynamics", "10"])
    assert "'none' actions" in capsys.readouterr().err


def test_a_rollout_longer_than_an_atari_episode_is_refused_before_any_work(monkeypatch, tmp_path):
    """The floor scores rollouts against stream clips of the same length, which one Atari
    episode must hold: too long an evaluation is an error before training the classifier or
    rolling anything out; a training stage too long for an episode is an error when its config loads."""
    pytest.importorskip("ale_py", reason="the atari world needs ale-py: pip install 'resforce[atari]'")
    import resforce
    from resforce.config import ConfigError, load_config
    from resforce.evaluation import evaluate as ev
    from resforce.generation.generate import SampleOverrides

    def no_work(*a, **k):
        raise AssertionError("work started before the length was checked")

    monkeypatch.setattr(ev, "generate", no_work)
    monkeypatch.setattr("resforce.metrics.inverse_dynamics.train_inverse_dynamics", no_work)
    model = Path(resforce.__file__).parent / "assets" / "atari_pong" / "teacher_forcing.safetensors"
    with pytest.raises(ValueError, match=r"--inverse-dynamics with --chunks 1022 and --prefix-chunks 2 \(1024 frames.*"
                                         r"need data.atari.episode_frames >= 1024, got 1000"):
        ev.evaluate(model, samples=1, sample=SampleOverrides(chunks=1022), inverse_dynamics=5, progress=False)
    with pytest.raises(ConfigError, match=r"stages.0.clip_chunks=8: clips of 8 frames need data.atari.episode_frames >= 8, got 6"):
        load_config("configs/atari_pong_motion_teacher.yaml", [f"run_dir={tmp_path}", "data.atari.episode_frames=6"])
