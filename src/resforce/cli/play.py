"""`resforce play`: steer a world model (or a built-in world's ground truth) from a browser."""

from __future__ import annotations


def cmd_play(args) -> None:
    if (args.run is None) == (args.world is None):
        which = "not both" if args.run is not None else "none was given"
        raise ValueError(f"resforce play: give a RUN (a trained world model) or --world KIND (a built-in world's "
                         f"ground truth, e.g. --world agent_balls); {which}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1 Euler step, got {args.steps}")
    if args.shift is not None and not args.shift > 0:
        raise ValueError(f"--shift must be > 0, got {args.shift}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.fps < 0:
        raise ValueError(f"--fps must be >= 0 (0: as fast as the model goes), got {args.fps}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ValueError(f"resforce play needs starlette and uvicorn ({e}): pip install 'resforce[play]'") from None
    from resforce.play.sources import ModelSource, WorldSource
    from resforce.play.server import bind, check_origin, serve

    for origin in args.allow_origin:
        check_origin(origin)
    bind(args.port).close()  # a taken port fails now, not after loading the model
    import torch

    torch.set_num_threads(args.threads)
    if args.world is not None:
        if args.steps is not None or args.shift is not None or args.context is not None or args.cfg_scale != 1.0:
            raise ValueError("--steps, --shift, --context and --cfg-scale set how a model generates; --world "
                             "plays the ground truth")
        if args.prefix is not None:
            raise ValueError("--prefix starts a world model from a video; --world plays the ground truth from its own start")
        source = WorldSource(args.world, args.seed)
    else:
        source = ModelSource.from_run(args.run, steps=args.steps, seed=args.seed, context_chunks=args.context,
                             cfg_scale=args.cfg_scale, shift=args.shift, prefix=args.prefix)
    try:
        serve(source, port=args.port, seed=args.seed, fps=args.fps, allow_origins=args.allow_origin)
    except KeyboardInterrupt:
        pass


def add_command(sub) -> None:
    p = sub.add_parser("play", help="play a world model in the browser (keys -> actions), on 127.0.0.1")
    p.add_argument("run", nargs="?", default=None,
                   help="run directory, checkpoint directory or .safetensors file of an action-conditioned model")
    p.add_argument("--world", default=None, help="play a built-in world's ground truth instead (e.g. agent_balls, or atari:pong: the "
                        "Atari game itself, through ale-py)")
    p.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free port)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="also accept the page from this origin (e.g. https://play.example.com, when a proxy "
                        "serves it); repeatable. By default only http://127.0.0.1:PORT and http://localhost:PORT")
    p.add_argument("--steps", type=int, default=None, help="Euler steps per chunk (default: 4)")
    p.add_argument("--shift", type=float, default=None,
                   help="shift of the Euler grid (default: the run's sample.shift; with fewer steps a larger "
                        "shift can keep action following, see benchmarks/bench_play.py --quality)")
    p.add_argument("--context", type=int, default=None,
                   help="chunks seen at once, own chunk included (default: the training length; the KV cache rolls)")
    p.add_argument("--cfg-scale", type=float, default=1.0,
                   help="guidance over actions (> 1 follows the keys more strongly; the action-free branch "
                        "runs in the same batch); default 1: none")
    p.add_argument("--prefix", default=None, metavar="FILE",
                   help="a video (.mp4/.gif/.npy) whose frames start every episode (needed for a run on your own "
                        "videos: data.kind=video_folder has no ground truth to start from)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (the page's seed box changes it)")
    p.add_argument("--fps", type=float, default=15.0, help="frame-rate cap (0: as fast as the model goes)")
    # a small world model's ops (16 tokens a frame) are too small to split across cores: one
    # thread is as fast on idle cores and far faster when other work holds them (benchmarks/bench_play.py)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the model (default 1)")
    p.set_defaults(func=cmd_play)
