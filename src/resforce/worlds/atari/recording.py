"""Recordings of Atari play as a video folder: NAME.mp4 + NAME.actions.npy per episode, plus
`recording.json` (the game, its action names, the seeds), the way `resforce record` writes them.

Actions are stored the gymnasium way (alignment produces_next, docs/video_folder.md): beside
frame t the action taken after it, which produces frame t + 1; the last action of a file
produced no recorded frame. Read back with data.video_folder.actions.alignment=produces_next
(the default), every frame is paired with the action that produced it. Each episode is pure in
(seed, episode index): its emulator starts with the NOOPs that seed draws, then the sticky
random policy of the same generator plays; `replay` steps an emulator through a recording.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from resforce.worlds.atari.world import AtariConfig, sticky_step

RECORDING_JSON = "recording.json"
ALIGNMENT = "produces_next"


def episode_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of episode `index` of a recording with seed `seed` (NOOP start and policy)."""
    return np.random.default_rng([seed, index])


def play_episode(cfg: AtariConfig, seed: int, index: int, frames: int):
    """(frames (F, 3, R, R) in [-1, 1], logged actions (F,) int64 in the gymnasium convention,
    game over before F frames). Frame 0 is the episode's start; logged[t] is the action taken
    after frame t (it produced frame t + 1; the last one is drawn but produced no frame)."""
    rng = episode_rng(seed, index)
    em = cfg.emulator()
    out = [em.reset(rng)]
    logged, previous, over = [], 0, False
    while True:
        previous = sticky_step(rng, previous, len(em.actions), cfg.sticky_prob)
        logged.append(previous)
        if len(out) == frames or over:
            break
        out.append(em.step(previous))
        over = em.game_over
    return np.stack(out), np.asarray(logged, dtype=np.int64), len(out) < frames


def replay(cfg: AtariConfig, seed: int, index: int, logged: np.ndarray) -> np.ndarray:
    """The frames an emulator makes from episode `index`'s start under logged actions (gymnasium
    convention): frame 0, then frame t + 1 = the result of logged[t]."""
    em = cfg.emulator()
    out = [em.reset(episode_rng(seed, index))]
    for a in logged[:-1]:
        out.append(em.step(int(a)))
    return np.stack(out)


def record(cfg: AtariConfig, out: str | Path, episodes: int, frames: int, seed: int = 0, crf: int = 10) -> list[Path]:
    """Write `episodes` episodes of up to `frames` frames under `out` (see the module doc);
    returns the video files. The folder must not hold a recording already."""
    from resforce.io.fileio import atomic_write
    from resforce.io.video_io import save_video

    out = Path(out)
    if (out / RECORDING_JSON).exists():
        raise ValueError(f"--out {out}: already holds a recording ({RECORDING_JSON}); choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    space = cfg.action_space()
    fps = 60 / cfg.frame_skip  # the console draws 60 frames a second
    written, info = [], []
    for i in range(episodes):
        video, logged, ended = play_episode(cfg, seed, i, frames)
        name = f"{cfg.game}_{i:04d}"
        path = save_video(out / f"{name}.mp4", video.transpose(1, 0, 2, 3), fps=fps, scale=1, crf=crf)
        atomic_write(out / f"{name}.actions.npy", lambda tmp, a=logged: np.save(tmp, a))
        written.append(path)
        info.append({"name": name, "frames": len(video), "game_over": bool(ended)})
    meta = {"game": cfg.game, "resolution": cfg.resolution, "frame_skip": cfg.frame_skip, "fps": fps,
            "action_set": cfg.action_set, "sticky_prob": cfg.sticky_prob, "grayscale": cfg.grayscale,
            "seed": seed, "alignment": ALIGNMENT,
            "alignment_note": "actions[t] is the action taken after frame t: it produced frame t + 1",
            "actions": {"kind": "discrete", "n": space.n, "names": space.names, "keys": space.keys,
                        "default": space.default},
            "episodes": info}
    atomic_write(out / RECORDING_JSON, lambda tmp: tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8"))
    return written
