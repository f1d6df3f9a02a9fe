"""`resforce score`: score any video files with a world's metrics, on the scale of `resforce eval`.

Other tools' outputs (or videos from elsewhere) get the same per-frame metrics, segment table
and JSON as a run's rollouts. Without world states, the world's reference (what must be
conserved) is read off the first ``--prefix-frames`` frames (the given frames of a rollout).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from resforce.cli.args import add_alignment_arg, add_frechet_arg, alignment_of
from resforce.worlds import WORLDS, scoring_worlds, world_of


def load_video_array(path: Path) -> np.ndarray:
    """A video file as float32 (M, C, F, H, W) in [-1, 1].

    .npy: (C,F,H,W) / (F,H,W,C) or a batch (M,C,F,H,W) / (M,F,H,W,C), float in [-1, 1] or
    uint8; other formats are decoded by :func:`resforce.io.video_io.load_video`.
    """
    from resforce.io.video_io import load_video

    if path.is_dir():
        raise ValueError(f"{path} is a directory: expected a video file (.npy, .mp4, .gif, ...)")
    if path.suffix.lower() != ".npy":
        return load_video(path).numpy()[None]
    try:
        a = np.load(path, allow_pickle=False)  # never unpickle what a user hands us
    except (ValueError, OSError, EOFError) as e:  # numpy's message would suggest allow_pickle=True: never
        raise ValueError(f"{path} is not a numeric .npy array ({type(e).__name__}); expected a video array "
                         f"saved with numpy.save (C,F,H,W) or (M,C,F,H,W); object arrays are never loaded") from None
    if a.ndim not in (4, 5):
        raise ValueError(f"{path}: expected a video (C,F,H,W) or (F,H,W,C), or a batch of them; got shape {a.shape}")
    if 0 in a.shape:
        raise ValueError(f"{path}: an empty video array of shape {a.shape}: expected at least one sample of at "
                         f"least one frame of at least 1x1 pixel")
    if a.ndim == 4:
        a = a[None]
    if a.shape[1] not in (1, 3) and a.shape[-1] in (1, 3):
        a = np.moveaxis(a, -1, 1)  # (M,F,H,W,C) -> (M,C,F,H,W)
    if a.shape[1] not in (1, 3):
        raise ValueError(f"{path}: no channel axis of size 1 or 3 first or last in shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 127.5 - 1.0
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{path}: expected float values in [-1, 1] or uint8, got dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all() or a.min() < -1.01 or a.max() > 1.01:
        raise ValueError(f"{path}: float videos must hold values in [-1, 1], got [{np.nanmin(a):.3g}, {np.nanmax(a):.3g}]")
    return np.clip(a, -1.0, 1.0)


SEPARATOR = 2
"""Source pixels between the videos of a grid (io.video_io.make_grid, as generate --batch and
compare write .mp4/.gif)."""


BLOCK_RESIDUAL = 0.01
"""Mean |frame - its k x k block means| (values in [-1, 1]) below which frames may be a k x
nearest-neighbour upscale (~0.004 for resforce's H.264 files at their own factor)."""
BLOCK_JUMP = 0.2
"""...and at most this fraction of the residual at 2k: at twice the true factor the blocks cut
through the content (0.049 vs 0.004 for a 16-px world written 8x), where content drawn at the
finer size changes little between k and 2k."""


def upscale_factor(v: np.ndarray) -> int:
    """The largest k such that the frames are (up to codec noise) a k x nearest-neighbour
    upscale, judged by the jump of the block residual from k to 2k."""
    h, w = v.shape[-2:]
    sample = v[..., :: max(1, v.shape[-3] // 8), :, :]  # a few frames are enough

    def residual(k):
        blocks = sample.reshape(*sample.shape[:-2], h // k, k, w // k, k).mean(axis=(-3, -1))
        return float(np.abs(sample - blocks.repeat(k, -2).repeat(k, -1)).mean())

    for k in range(min(h, w) // 2, 1, -1):
        if h % (2 * k) or w % (2 * k):
            continue
        r = residual(k)
        if r < BLOCK_RESIDUAL and r < BLOCK_JUMP * residual(2 * k):
            return k
    return 1


def split_grid(v: np.ndarray, resolution: tuple[int, int], path, decoded: bool = True) -> tuple[np.ndarray, str]:
    """Split a grid that resforce wrote (n videos of the world's size side by side, SEPARATOR
    white source pixels apart, upscaled by an integer k, padded to even sides) into a batch of
    n videos, each still k times the world's size. A single video is returned as it is; frames
    of any other size are refused, naming both sizes."""
    (h, w), (rh, rw) = v.shape[-2:], resolution
    for k in range(1, h // rh + 1):
        if h - k * rh not in (0, 1) or (h != k * rh and (k * rh) % 2 == 0):
            continue
        for pad in (0, 1):
            src, rem = divmod(w - pad, k)
            if rem or (pad and (w - pad) % 2 == 0):
                continue
            n, rem = divmod(src + SEPARATOR, rw + SEPARATOR)
            if rem or n < 1:
                continue
            step = (rw + SEPARATOR) * k
            if n > 1:
                seps = np.concatenate([v[..., :k * rh, i * step - SEPARATOR * k:i * step] for i in range(1, n)], axis=-1)
                if seps.mean() < 0.8:  # white (1.0) in a grid; codecs blur its edges a little
                    continue
            tiles = [v[..., :k * rh, i * step:i * step + rw * k] for i in range(n)]
            batch = np.concatenate(tiles, axis=0)
            native = upscale_factor(batch) if decoded else 1  # .npy: written at the world's size
            if native > k:  # e.g. 8x of a 16-px world read as 4x of a 32-px one
                nh, nw = batch.shape[-2] // native, batch.shape[-1] // native
                raise ValueError(f"{path}: frames of {h}x{w} px are a {native}x upscale of {nh}x{nw} px videos, but "
                                 f"the world scored against is {rh}x{rw} px (give the video's own run with --run RUN)")
            note = f"a grid of {n} videos side by side: split into {n} samples" if n > 1 else ""
            return batch, note
    raise ValueError(f"{path}: frames are {h}x{w} px but the world scored against is {rh}x{rw} px: expected "
                     f"that size, an integer multiple of it, or a grid of such videos that resforce wrote "
                     f"(give the video's own run with --run RUN, whose config holds its world)")


def to_world_resolution(v: np.ndarray, resolution: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Undo an integer nearest-neighbour upscale (how `resforce generate` writes .mp4/.gif):
    frames k times the world's (H, W) are block-averaged back to it, so sizes and speeds in px
    mean what they mean in the world. Returns the video and a note (empty if unchanged)."""
    (h, w), (rh, rw) = v.shape[-2:], resolution
    if (h, w) == (rh, rw) or h % rh or w % rw or h // rh != w // rw:
        return v, ""
    k = h // rh
    small = v.reshape(*v.shape[:-2], rh, k, rw, k).mean(axis=(-3, -1))
    return small, f"frames of {h}x{w} px = {k} x the world's {_px(resolution)} px: block-averaged to {rh}x{rw}"


def _px(resolution: tuple[int, int]) -> str:
    rh, rw = resolution
    return str(rh) if rh == rw else f"{rh}x{rw}"


def _run_config(flag: str, path: str):
    """The config of a run directory, checkpoint directory or weights file (its metadata), no tensor read."""
    from resforce.io.weights import config_of_weights, read_header, resolve_weights

    try:
        return config_of_weights(read_header(resolve_weights(path)))
    except FileNotFoundError as e:
        raise ValueError(f"{flag} {path}: {e}") from None


def _world_config(args):
    """(config, where it came from or None for the default world config)."""
    from resforce.config import TrainConfig, load_config

    if args.run is not None and args.config is not None:
        raise ValueError("--run and --config both give the world: pass one")
    kind, _, argument = (args.world or "").partition(":")
    if args.world is not None and kind not in WORLDS:
        raise ValueError(f"--world {args.world!r} is not a known world; known: {', '.join(WORLDS)} (own metrics: "
                         f"{', '.join(scoring_worlds())}; the others: generic metrics and --inverse-dynamics; "
                         f"atari:GAME for an Atari game, e.g. atari:pong)")
    if argument and (args.run is not None or args.config is not None):
        raise ValueError(f"--world {args.world}: the run's config sets the {kind} world; with --run or --config "
                         f"give --world {kind}")
    if args.run is None and args.config is None:
        if args.world is None:
            raise ValueError("give --run RUN (the videos' own run: its config holds the world), --config "
                             "config.yaml, or --world KIND (the default world config; atari:GAME for a game)")
        cfg = TrainConfig()
        cfg.data.kind = kind
        if argument:
            setattr(cfg.data, kind, WORLDS[kind].config_for(argument))
        return cfg, None
    flag, given = ("--run", args.run) if args.run is not None else ("--config", args.config)
    p = Path(given)
    if flag == "--run" or p.suffix == ".safetensors" or p.is_dir():
        if flag == "--config" and p.is_dir() and not (p / "checkpoints").is_dir():
            raise ValueError(f"--config {given} is a directory: expected a run's config.yaml (or --run RUN_DIR)")
        cfg = _run_config(flag, given)
    else:
        if not p.is_file():
            raise FileNotFoundError(f"--config {given}: no such file (give a run's config.yaml)")
        cfg = load_config(given)
    if args.world is not None and cfg.data.kind != kind:
        raise ValueError(f"{flag} {given}: data.kind is {cfg.data.kind!r}, not --world {args.world!r}")
    return cfg, f"{flag} {given}"


def score_files(paths: list[Path], cfg, prefix_frames: int = 2, segment_len: int | None = None,
                train_frames: int | None = None, frechet_reference: int | None = None, name: str | None = None,
                check=None):
    """Score video files as the samples of one evaluation (:class:`resforce.evaluation.evaluate.Evaluation`).

    Every file must have the same frames and size once at the world's resolution. `check`:
    called with the videos (M, C, F, H, W) once they are read and before any scoring, so input
    that goes with them (e.g. --actions) fails before the work. Returns the evaluation and
    notes on what was done to the input.
    """
    import torch

    from resforce.evaluation import evaluate as E
    from resforce.generation.generate import Generated
    from resforce.metrics.stats import segment_table

    world = world_of(cfg.data)
    res = world.resolution
    frechet_reference = E.FRECHET_REFERENCE_CLIPS if frechet_reference is None else frechet_reference
    E._check_frechet_reference(frechet_reference)
    if prefix_frames < 1:
        raise ValueError(f"--prefix-frames must be >= 1 (the given frames: the reference of the world's metrics), "
                         f"got {prefix_frames}")
    for p in paths:  # every file checked before any is decoded
        if p.is_dir():
            raise ValueError(f"{p} is a directory: expected a video file (.npy, .mp4, .gif, ...)")
        if not p.is_file():
            raise FileNotFoundError(f"video file not found: {p}")
    videos, notes = [], []
    for p in paths:
        tiles, grid_note = split_grid(load_video_array(p), res, p, decoded=p.suffix.lower() != ".npy")
        v, note = to_world_resolution(tiles, res)
        note = "; ".join(n for n in (grid_note, note) if n)
        if v.shape[1] != world.channels:
            raise ValueError(f"{p}: {world.title} are scored with {world.channels} channels; got {v.shape[1]} channel(s)")
        if videos and v.shape[1:] != videos[0][1].shape[1:]:
            raise ValueError(f"{p} has (C,F,H,W) = {v.shape[1:]} but {videos[0][0]} has {videos[0][1].shape[1:]}: "
                             "score videos of the same length and size together")
        videos.append((p, v))
        if note:
            notes.append(f"{p.name}: {note}")
    batch = np.concatenate([v for _, v in videos])
    frames = batch.shape[2]
    if prefix_frames >= frames:
        raise ValueError(f"--prefix-frames {prefix_frames} must be fewer than the video's {frames} frames")
    if segment_len is not None and segment_len > frames:
        raise ValueError(f"--segment {segment_len} is longer than the video ({frames} frames)")
    seg = segment_len or min(train_frames or frames, frames)
    if check is not None:
        check(batch)
    per_frame = E.score_videos(batch, cfg, ref_frames=prefix_frames)
    rows = segment_table(per_frame, seg, train_len=train_frames)
    info = {}
    if frechet_reference and batch.shape[-2:] == res:
        # floor: as many independent ground-truth clips as videos scored, of the same length
        floor, _ = _floor_clips(cfg, batch.shape[0], frames)
        info = E.add_frechet(rows, batch, cfg, seg, frechet_reference, floor=floor)
    elif frechet_reference:
        notes.append(f"no Frechet distance: frames are {_px(batch.shape[-2:])} px, the world's are {_px(res)} px")
    g = Generated(torch.from_numpy(batch), prefix_frames, train_frames, None, None, cfg)
    ev = E.Evaluation(name or paths[0].stem, g, per_frame, rows, seg, info)
    return ev, notes


FLOOR_SEED = 7_654_322
"""World seed of the ground-truth clips that stand in for the scored videos in the floor."""


def _floor_clips(cfg, clips: int, frames: int):
    from resforce.generation.generate import world_clips

    return world_clips(cfg, clips, frames, FLOOR_SEED)


def load_actions(paths: list[Path], videos: int, frames: int, space, alignment: str = "produced_this") -> np.ndarray:
    """--actions: one .npy per video ((F,): one action per frame, prefix included), or one
    (M, F) file for all M videos; checked against the world's action space and read with
    `alignment` (resforce.actions.per_frame_actions: 'produced_this', action f produced frame f;
    'produces_next', a gymnasium-style log, shifted) -> (M, F) int64, action f produced frame f
    (-1 where no action of the file did)."""
    if len(paths) not in (1, videos):
        raise ValueError(f"--actions: {len(paths)} files for {videos} videos (one per video, or one (videos, frames) array)")
    arrays = []
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"--actions {p}: no such file")
        a = np.load(p, allow_pickle=False)
        rows = a if a.ndim == 2 and space.kind == "discrete" else a[None]
        arrays += [space.check(r, frames, f"--actions {p}") for r in rows]
    if len(arrays) != videos:
        raise ValueError(f"--actions: {len(arrays)} action sequences for {videos} videos")
    from resforce.actions import per_frame_actions

    return per_frame_actions(np.stack(arrays), alignment, "--alignment")


def cmd_score(args) -> None:
    from resforce.evaluation.evaluate import frechet_line, save_json, table_metrics
    from resforce.generation.session import training_context_chunks
    from resforce.metrics.stats import format_table

    cfg, from_run = _world_config(args)
    alignment = alignment_of(args)
    if args.inverse_dynamics is not None and not args.actions:
        raise ValueError("--inverse-dynamics scores videos against their actions: give --actions FILE (one per video)")
    world_name = args.world or cfg.data.kind
    train = training_context_chunks(cfg) * cfg.model.frames_per_chunk if from_run else None
    paths = [Path(p) for p in args.videos]
    world, actions = world_of(cfg.data), {}

    def read_actions(videos: np.ndarray) -> None:  # before the videos are scored: bad --actions fail first
        if args.inverse_dynamics is not None:
            actions["per_frame"] = load_actions([Path(p) for p in args.actions], videos.shape[0], videos.shape[2],
                                                world.action_space, alignment)

    ev, notes = score_files(paths, cfg, args.prefix_frames, args.segment, train, args.frechet_reference,
                            check=read_actions)
    following = None
    if args.inverse_dynamics is not None:
        from resforce.metrics.inverse_dynamics import action_following, describe, train_inverse_dynamics

        videos = ev.generated.videos.numpy()
        following = action_following(train_inverse_dynamics(world, steps=args.inverse_dynamics), videos,
                                     actions["per_frame"], world, given_frames=args.prefix_frames)
    s = ev.summary()
    print(f"scored {s['samples']} video(s) of {s['frames']} frames with the {world_name} metrics "
          f"({'world of ' + from_run if from_run else 'default world config'}); "
          f"{ev.world.reference_note(args.prefix_frames)}" + ("; * = beyond the run's training length" if train else ""))
    for note in notes:
        print(f"note: {note}")
    print(format_table(ev.rows, table_metrics(ev)))
    if frechet_line(ev):
        print(frechet_line(ev))
    print(ev.world.summary_definition.split(". ")[0] + ".")
    if following is not None:
        print(describe(following))
    if args.json:
        extra = {'files': [str(p) for p in paths], 'world': world_name, 'notes': notes}
        if following is not None:
            extra["action_following"] = following
        print(f"wrote {save_json(ev, args.json, extra=extra)}")


def add_command(sub) -> None:
    s = sub.add_parser("score", help="score video files (.npy/.mp4/.gif) with a world's metrics, like eval")
    s.add_argument("videos", nargs="+", metavar="VIDEO", help="video files, scored as the samples of one table")
    s.add_argument("--world", default=None,
                   help=f"the world whose metrics apply: {', '.join(WORLDS)} (own metrics: {', '.join(scoring_worlds())}; "
                        f"the others: generic ones; default: --run's or --config's); atari:GAME: that game's "
                        f"default config (e.g. atari:breakout; objects are found in pong and breakout)")
    s.add_argument("--run", default=None,
                   help="the videos' own run (run directory, checkpoint directory or .safetensors): its config "
                        "(in the weights' metadata) gives the world's geometry and the training length")
    s.add_argument("--prefix-frames", type=int, default=2,
                   help="the first K frames are the given ones: the reference of the world's metrics (default 2)")
    s.add_argument("--config", default=None,
                   help="a run's config.yaml (or .safetensors): its world (data.<kind>: e.g. palette, background, resolution) "
                        "and training length; default: the default world config")
    s.add_argument("--segment", type=int, default=None, help="frames per table segment (default: training length)")
    s.add_argument("--json", default=None, help="also write the metrics here (like eval --json)")
    s.add_argument("--actions", nargs="+", default=None, metavar="FILE",
                   help="the actions each video was made with: .npy, one per video ((frames,): one action per "
                        "frame, given frames included; see --alignment) or one (videos, frames) array")
    add_alignment_arg(s)
    s.add_argument("--inverse-dynamics", type=int, default=None, metavar="STEPS",
                   help="action following: train an inverse-dynamics classifier for STEPS steps (e.g. 400) on the "
                        "world's ground truth and report its accuracy on ground truth (ceiling), on these videos "
                        "against --actions, and against another episode's actions (floor)")
    add_frechet_arg(s)
    s.set_defaults(func=cmd_score)
