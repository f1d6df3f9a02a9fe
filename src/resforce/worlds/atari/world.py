"""Atari 2600 games as a world (data.kind = atari): the real game, emulated by ale-py.

Training clips are played on the fly by a seeded sticky random policy (each action repeats the
previous one with probability `sticky_prob`, else a uniform draw from the action set) in
`LANES` episodes kept running side by side; each clip continues a randomly drawn lane for
`num_frames` actions, so consecutive clips are not consecutive video. An episode lasts
`episode_frames` actions or until the game is over, then its lane restarts (a random number of
NOOPs first). The stream is pure in its seed and resumes exactly: its state holds the policy's
generator and every lane's emulator state (ALE's serialization, a uint8 array: nothing pickled).

Frame convention (resforce.actions): a clip's action f is the one that produced frame f; every
clip frame is the result of an action of the clip, so none is the null action. Ground truth per
frame: the RAM (128 bytes) and, for Pong and Breakout, the objects decoded from it (ram.py).

`simulator(seed)` steps one emulator for `resforce play --world atari:GAME`; `clips` gives
evaluation episodes far from the training seeds, with their actions and RAM objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from resforce.actions import ActionSpace
from resforce.metrics.video import DRIFT_DEFINITION, evaluate_generic
from resforce.worlds.atari import metrics as atari_metrics
from resforce.worlds.atari import objects
from resforce.worlds.atari import ram as ram_objects
from resforce.worlds.atari.emulator import Emulator, action_names, check_game
from resforce.worlds.base import EVAL_SEED_OFFSET, World
from resforce.worlds.config_coerce import coerce_config

LANES = 16
"""Episodes the training stream keeps running at once (clips are drawn from them at random)."""
NOOP_MAX = 30
"""An episode starts with 0..NOOP_MAX NOOP actions (seeded), so episodes start apart."""
EPISODE_TRIES = 64
"""Evaluation clips: episodes tried per clip asked for before clips() gives up with an error
(an episode that ends before the clip does is replaced by the next seed's)."""

BROWSER_KEYS = {"ArrowLeft": "LEFT", "ArrowRight": "RIGHT", "ArrowUp": "UP", "ArrowDown": "DOWN", " ": "FIRE",
                "a": "LEFT", "d": "RIGHT", "w": "UP", "s": "DOWN"}
"""Browser key -> ALE action of the joystick (keys whose action the game lacks are dropped)."""
GAME_KEYS = {"pong": {"ArrowUp": "RIGHT", "ArrowDown": "LEFT", "w": "RIGHT", "s": "LEFT", " ": "FIRE"}}
"""Games whose joystick directions are not the screen's (replacing BROWSER_KEYS): Pong's
paddle goes up on RIGHT and down on LEFT."""


@dataclass
class AtariConfig:
    """Which game, how its frames are made and how the random policy plays."""

    game: str = "pong"
    """An ale-py ROM id (pong, breakout, ...; ale-py ships the ROMs)."""
    resolution: int = 32
    """Frame size: 32 or 64 (the 210x160 screen, area-resized to a square)."""
    frame_skip: int = 4
    """Emulator frames per action (and per video frame)."""
    sticky_prob: float = 0.75
    """Random policy: probability that an action repeats the previous one."""
    action_set: str = "minimal"
    """'minimal' (the game's own buttons, e.g. 6 for Pong) or 'full' (the 18 joystick actions)."""
    episode_frames: int = 1000
    """Actions per episode before its lane restarts (sooner if the game ends)."""
    grayscale: bool = False
    """Grey frames (the screen's luminance in all three channels) instead of colour."""
    seed: int = 0
    """Seed of the stream (a run adds its own seed)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field (the game is checked when it loads)."""
        if self.resolution not in (32, 64):
            raise ValueError(f"data.atari.resolution must be 32 or 64, got {self.resolution}")
        if not isinstance(self.game, str) or not self.game:
            raise ValueError(f"data.atari.game must name an ale-py ROM (e.g. pong), got {self.game!r}")
        if self.frame_skip < 1:
            raise ValueError(f"data.atari.frame_skip must be >= 1, got {self.frame_skip}")
        if not 0 <= self.sticky_prob <= 1:
            raise ValueError(f"data.atari.sticky_prob must be in [0, 1], got {self.sticky_prob}")
        if self.action_set not in ("minimal", "full"):
            raise ValueError(f"data.atari.action_set must be 'minimal' or 'full', got {self.action_set!r}")
        if self.episode_frames < 2:
            raise ValueError(f"data.atari.episode_frames must be >= 2, got {self.episode_frames}")
        if self.seed < 0:
            raise ValueError(f"data.atari.seed must be >= 0, got {self.seed}")

    def action_space(self) -> ActionSpace:
        """The game's action set, with browser keys for its buttons (needs ale-py)."""
        check_game(self.game)
        names = action_names(self.game, self.action_set)
        keys = {k: a for k, a in GAME_KEYS.get(self.game, BROWSER_KEYS).items() if a in names}
        return ActionSpace(kind="discrete", n=len(names), names=names, keys=keys, default=0)

    def emulator(self) -> Emulator:
        return Emulator(self.game, self.resolution, self.frame_skip, self.action_set, self.grayscale, NOOP_MAX)


@dataclass
class AtariStates:
    """Ground truth of clips: per-frame actions and RAM, and the RAM-decoded objects (screen
    pixels, ram.py) of games that have a decoder. Arrays have a leading batch axis in a batch."""

    actions: np.ndarray
    """(F,) int64: action f produced frame f."""
    ram: np.ndarray
    """(F, 128) uint8 RAM after each frame."""
    objects: dict[str, np.ndarray] = field(default_factory=dict)
    """name -> (F, 2) screen (x, y) or (F,) counts (Pong: ball, player, enemy; Breakout: ball,
    player, bricks); empty for other games."""
    played: np.ndarray | None = None
    """(F,) the actions that played `ram` and `objects` (default: `actions`). A rollout given
    other actions replaces `actions` only, so scoring knows from which frame on the ground
    truth is not the continuation under the video's actions."""

    def __post_init__(self) -> None:
        if self.played is None:
            self.played = np.array(self.actions, copy=True)

    @staticmethod
    def stack(states: list["AtariStates"]) -> "AtariStates":
        return AtariStates(np.stack([s.actions for s in states]), np.stack([s.ram for s in states]),
                           {k: np.stack([s.objects[k] for s in states]) for k in states[0].objects},
                           np.stack([s.played for s in states]))


def sticky_step(rng: np.random.Generator, previous: int, n: int, sticky: float) -> int:
    """The random policy's next action: `previous` with probability `sticky`, else uniform in [0, n)."""
    draw = int(rng.integers(n))
    return previous if rng.random() < sticky else draw


def fast_forward(emulator: Emulator, rng: np.random.Generator, steps: int, cfg: AtariConfig, previous: int):
    """`steps` actions of the sticky policy without making frames: (last action, game over)."""
    n = len(emulator.actions)
    for _ in range(steps):
        previous = sticky_step(rng, previous, n, cfg.sticky_prob)
        emulator.act(previous)
        if emulator.game_over:
            return previous, True
    return previous, False


def play_clip(emulator: Emulator, rng: np.random.Generator, frames: int, cfg: AtariConfig, previous: int,
              actions: np.ndarray | None = None):
    """`frames` actions of the sticky policy (or the given ones) from the emulator's current
    state: (frames (F, 3, R, R), AtariStates, last action, game over before the end)."""
    n = len(emulator.actions)
    out, acts, rams = [], [], []
    for f in range(frames):
        a = int(actions[f]) if actions is not None else sticky_step(rng, previous, n, cfg.sticky_prob)
        out.append(emulator.step(a))
        acts.append(a)
        rams.append(emulator.ram)
        previous = a
        if emulator.game_over and f < frames - 1:
            return None, None, previous, True
    ram = np.stack(rams)
    objects = ram_objects.decode(cfg.game, ram) or {}
    return np.stack(out), AtariStates(np.asarray(acts, dtype=np.int64), ram, objects), previous, False


def check_episode_holds(cfg: AtariConfig, frames: int, key: str | None = None) -> None:
    """ValueError (prefixed with `key`) when a clip of `frames` frames is longer than one episode
    of the stream (data.atari.episode_frames): every stream clip is cut from one episode."""
    if frames > cfg.episode_frames:
        raise ValueError(("" if key is None else f"{key}: ") + f"clips of {frames} frames need "
                         f"data.atari.episode_frames >= {frames}, got {cfg.episode_frames}")


class AtariStream:
    """Seeded, resumable stream of game clips: batch(n, frames) -> ((n, 3, F, R, R) in [-1, 1],
    AtariStates with `.actions` (n, F))."""

    def __init__(self, config: AtariConfig | Mapping[str, Any], num_frames: int = 16) -> None:
        self.config = coerce_config(config, AtariConfig)
        self.num_frames = num_frames
        self.rng = np.random.default_rng(self.config.seed)
        self.lanes: list[dict | None] = [None] * LANES  # emulator, previous action, actions played
        self.clips_emitted = 0

    def _lane(self, i: int) -> dict:
        if self.lanes[i] is None:
            self.lanes[i] = {"emulator": self.config.emulator(), "previous": 0, "played": 0, "fresh": True}
            self._restart(self.lanes[i])
        return self.lanes[i]

    def _restart(self, lane: dict) -> None:
        lane["emulator"].reset(self.rng)
        lane["previous"], lane["played"] = 0, 0

    def sample(self, num_frames: int | None = None) -> tuple[torch.Tensor, AtariStates]:
        frames = num_frames or self.num_frames
        cfg = self.config
        check_episode_holds(cfg, frames)
        lane = self._lane(int(self.rng.integers(LANES)))
        if lane.pop("fresh", False):  # a new lane starts somewhere inside its first episode
            skip = int(self.rng.integers(cfg.episode_frames - frames + 1))
            lane["previous"], over = fast_forward(lane["emulator"], self.rng, skip, cfg, 0)
            lane["played"] = skip
            if over:
                self._restart(lane)
        while True:
            if lane["played"] + frames > cfg.episode_frames or lane["emulator"].game_over:
                self._restart(lane)
            video, states, lane["previous"], over = play_clip(lane["emulator"], self.rng, frames, cfg, lane["previous"])
            lane["played"] += frames
            if not over:
                break
            self._restart(lane)  # the game ended inside the clip: play it again from a new episode
        self.clips_emitted += 1
        return torch.from_numpy(video).permute(1, 0, 2, 3).contiguous(), states

    def batch(self, batch_size: int, num_frames: int | None = None) -> tuple[torch.Tensor, AtariStates]:
        clips = [self.sample(num_frames) for _ in range(batch_size)]
        return torch.stack([c[0] for c in clips]), AtariStates.stack([c[1] for c in clips])

    def state_dict(self) -> dict[str, Any]:
        lanes = [None if lane is None else
                 {"emulator": torch.from_numpy(lane["emulator"].save()), "previous": lane["previous"],
                  "played": lane["played"], "fresh": bool(lane.get("fresh", False))} for lane in self.lanes]
        return {"seed": self.config.seed, "clips_emitted": self.clips_emitted,
                "bit_generator": self.rng.bit_generator.state, "lanes": lanes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]
        self.clips_emitted = int(state["clips_emitted"])
        self.lanes = [None] * LANES
        for i, saved in enumerate(state["lanes"]):
            if saved is None:
                continue
            lane = {"emulator": self.config.emulator(), "previous": int(saved["previous"]),
                    "played": int(saved["played"])}
            if saved.get("fresh"):
                lane["fresh"] = True
            em = saved["emulator"]
            lane["emulator"].load(em.numpy() if isinstance(em, torch.Tensor) else np.asarray(em))
            self.lanes[i] = lane


def episode(cfg: AtariConfig, seed: int, frames: int, actions: np.ndarray | None = None, warmup: int = 0):
    """An episode of `seed` (its NOOP start, then `warmup` policy actions unseen): (frames
    (F, 3, R, R), AtariStates). Frame 0 is where it starts (its action: the one that produced
    it, NOOP without a warm-up) and frames 1.. are produced by the sticky policy of `seed` (or by
    actions[1:]). Stops early if the game ends."""
    rng = np.random.default_rng(seed)
    em = cfg.emulator()
    em.reset(rng)
    previous, over = fast_forward(em, rng, warmup, cfg, 0)
    if over:
        return em.frame[None], AtariStates(np.zeros(1, np.int64), em.ram[None], {})
    out, acts, rams = [em.frame], [previous], [em.ram]
    for f in range(1, frames):
        a = int(actions[f]) if actions is not None else sticky_step(rng, previous, len(em.actions), cfg.sticky_prob)
        out.append(em.step(a))
        acts.append(a), rams.append(em.ram)
        previous = a
        if em.game_over:
            break
    ram = np.stack(rams)
    return np.stack(out), AtariStates(np.asarray(acts, dtype=np.int64), ram, ram_objects.decode(cfg.game, ram) or {})


class AtariSimulator:
    """The game one action at a time (ground truth for a player): reset(seed) -> frame 0,
    step(action) -> the next frame ((3, R, R) in [-1, 1]); a finished game restarts."""

    def __init__(self, config: AtariConfig, seed: int = 0) -> None:
        self.config = coerce_config(config, AtariConfig)
        self.action_space = self.config.action_space()
        self.emulator = self.config.emulator()
        self.reset(seed)

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.frame = self.emulator.reset(np.random.default_rng(self.config.seed if seed is None else seed))
        self.frame_index, self.last_action = 0, 0
        return self.frame

    def step(self, action) -> np.ndarray:
        a = self.action_space.index(action)
        if self.emulator.game_over:
            self.emulator.reset(None)
        self.frame = self.emulator.step(max(a, 0))
        self.frame_index, self.last_action = self.frame_index + 1, a
        return self.frame

    @property
    def ram(self) -> np.ndarray:
        return self.emulator.ram


class AtariWorld(World):
    kind = "atari"
    playable = True
    config_class = AtariConfig
    config_doc = "An Atari 2600 game through ale-py (used when kind = atari): pip install 'resforce[atari]'."
    title = "Atari frames"
    scores_files = True
    table_metrics = ("missing", "spurious", "ball_found", "position_error", "ball_error", "player_error",
                     "enemy_error", "brick_error", "drift", "flicker")
    plot_metrics = ("missing", "position_error", "brick_error", "drift")
    per_sample_metrics = ("missing", "spurious", "found_rate", "ball_found", "player_found", "enemy_found",
                          "position_error", "ball_error", "player_error", "enemy_error", "brick_error", "drift")
    verdict_metrics = {"missing": ("keeps more of the game's objects", "objects missing per frame"),
                       "position_error": ("puts the objects nearer where the game does", "object position error (px)"),
                       "brick_error": ("keeps the bricks' count nearer the game's", "brick-count error")}

    def check_clip_frames(self, frames: int, key: str) -> None:
        check_episode_holds(self.config, frames, key)

    @property
    def finds_objects(self) -> bool:
        """The game's objects are found in its frames (Pong, Breakout; in colour)."""
        return self.config.game in objects.GAMES and not self.config.grayscale

    @property
    def summary_definition(self) -> str:
        return atari_metrics.DEFINITION if self.finds_objects else DRIFT_DEFINITION

    def reference_note(self, prefix_frames: int) -> str:
        if not self.finds_objects:
            return super().reference_note(prefix_frames)
        return f"reference objects: those found in the first {prefix_frames} frame(s)"

    def score(self, videos: np.ndarray, states=None, ground_truth=None, ref_frames: int = 2) -> dict[str, np.ndarray]:
        """The generic metrics and, for Pong and Breakout in colour, the object metrics
        (metrics.py): against the RAM's ground truth where states are given, else against
        ground-truth frames, else against the first `ref_frames` frames."""
        generic = evaluate_generic(videos)
        if not self.finds_objects:
            return generic
        gt = None if ground_truth is None else np.asarray(ground_truth)
        return {**generic, **atari_metrics.evaluate_objects(videos, self.config.game, states, gt, ref_frames)}

    @property
    def action_space(self) -> ActionSpace:
        return self.config.action_space()

    def stream(self, seed: int = 0) -> AtariStream:
        check_game(self.config.game)
        return AtariStream(dataclasses.replace(self.config, seed=self.config.seed + seed))

    def clips(self, batch: int, frames: int, seed: int):
        """`batch` evaluation clips of `frames` frames, each from its own episode (seeds far from
        training) after a seeded warm-up of up to episode_frames - frames policy actions:
        (videos (B, 3, F, R, R) tensor, AtariStates); an episode that ends early is replaced by
        the next seed's."""
        check_game(self.config.game)
        cfg = self.config
        videos, states, s = [], [], cfg.seed + EVAL_SEED_OFFSET + seed * 7919
        tries, longest = 0, 0
        while len(videos) < batch:
            # a game whose episodes under the policy end sooner than `frames` (Breakout's last
            # a few hundred frames) would be retried forever: a bounded number, then an error
            if tries >= EPISODE_TRIES * batch:
                raise ValueError(f"{batch} clips of {frames} frames: {len(videos)} of the {tries} {cfg.game} episodes "
                                 f"of the sticky policy held that long (the longest played {longest} frames after "
                                 f"its warm-up): evaluate shorter rollouts (--chunks)")
            warmup = int(np.random.default_rng([s, 1]).integers(max(cfg.episode_frames - frames, 0) + 1))
            v, st = episode(cfg, s, frames, warmup=warmup)
            s, tries, longest = s + 1, tries + 1, max(longest, len(v))
            if len(v) == frames:
                videos.append(torch.from_numpy(v).permute(1, 0, 2, 3)), states.append(st)
        return torch.stack(videos), AtariStates.stack(states)

    def simulator(self, seed: int = 0) -> AtariSimulator:
        return AtariSimulator(self.config, seed)

    @classmethod
    def config_for(cls, argument: str) -> AtariConfig:
        """`atari:GAME`: the default config of that game (checked against ale-py's ROMs)."""
        check_game(argument, f"--world atari:{argument}")
        return AtariConfig(game=argument)
