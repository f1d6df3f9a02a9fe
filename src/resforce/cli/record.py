"""`resforce record atari:GAME`: episodes of a game played by a sticky random policy, written as a
video folder with actions (NAME.mp4 + NAME.actions.npy, gymnasium convention, recording.json)."""

from __future__ import annotations


def cmd_record(args) -> None:
    kind, _, game = args.world.partition(":")
    if kind != "atari" or not game:
        raise ValueError(f"resforce record {args.world}: expected atari:GAME (an ale-py ROM id, e.g. atari:pong)")
    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.frames < 2:
        raise ValueError(f"--frames must be >= 2 frames per episode, got {args.frames}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    from resforce.worlds.atari.emulator import check_game
    from resforce.worlds.atari.recording import RECORDING_JSON, record
    from resforce.worlds.atari.world import AtariConfig

    check_game(game, f"resforce record atari:{game}")
    cfg = AtariConfig(game=game, resolution=args.resolution, frame_skip=args.frame_skip, sticky_prob=args.sticky_prob,
                      action_set=args.action_set, grayscale=args.grayscale)
    files = record(cfg, args.out, args.episodes, args.frames, args.seed)
    space = cfg.action_space()
    print(f"wrote {len(files)} episode(s) of up to {args.frames} frames to {args.out}/ (NAME.mp4 + NAME.actions.npy, "
          f"{RECORDING_JSON}); actions: {', '.join(space.names)}")
    print(f"train on them: data.kind=video_folder data.video_folder.root={args.out} "
          f"data.video_folder.actions.kind=discrete data.video_folder.actions.n={space.n} "
          f"model.action_kind=discrete model.action_dim={space.n} (alignment produces_next, the default; "
          f"e.g. configs/video_folder_actions.yaml)")


def add_command(sub) -> None:
    p = sub.add_parser("record", help="record episodes of an Atari game (ale-py) as videos with per-frame actions")
    p.add_argument("world", metavar="atari:GAME", help="the game, e.g. atari:pong or atari:breakout")
    p.add_argument("--episodes", type=int, default=8, help="episodes (one video file each)")
    p.add_argument("--frames", type=int, default=512, help="frames per episode (fewer if the game ends)")
    p.add_argument("--out", required=True, help="output folder (a video folder: DIR/NAME.mp4 + DIR/NAME.actions.npy)")
    p.add_argument("--resolution", type=int, default=32, choices=[32, 64], help="frame size (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the NOOP starts and the random policy")
    p.add_argument("--frame-skip", type=int, default=4, help="emulator frames per action and per video frame")
    p.add_argument("--sticky-prob", type=float, default=0.75,
                   help="random policy: probability that an action repeats the previous one")
    p.add_argument("--action-set", default="minimal", choices=["minimal", "full"])
    p.add_argument("--grayscale", action="store_true", help="grey frames (in all three channels)")
    p.set_defaults(func=cmd_record)
