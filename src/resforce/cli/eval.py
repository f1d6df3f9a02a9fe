"""`resforce eval`, `resforce compare` and `resforce demo`: parse, call the library, print."""

from __future__ import annotations

from pathlib import Path

from resforce.cli.args import add_frechet_arg, add_sampling_args, generation_options
from resforce.evaluation.demo import DEMO_TITLE


def cmd_eval(args) -> None:
    from resforce.io.checks import check_counts, check_output
    from resforce.evaluation.evaluate import evaluate, frechet_line, save_json, table_metrics
    from resforce.metrics.stats import format_table

    check_counts(args)
    if args.json:
        check_output(args.json, (".json",), "--json")
    ev = evaluate(args.run, samples=args.samples, prefix_chunks=args.prefix_chunks if args.prefix_chunks is not None else 2,
                  segment_len=args.segment, frechet_reference=args.frechet_reference,
                  inverse_dynamics=args.inverse_dynamics, **generation_options(args, seed=args.seed or 0))
    print(f"{ev.name}: {ev.summary()['samples']} rollouts of {ev.summary()['frames']} frames "
          f"({ev.generated.prefix_frames} given); training clips: {ev.generated.train_frames} frames; "
          f"segments marked * lie beyond the training length")
    print(format_table(ev.rows, table_metrics(ev)))
    if frechet_line(ev):
        print(frechet_line(ev))
    if ev.action_following is not None:
        from resforce.metrics.inverse_dynamics import describe
        print(describe(ev.action_following))
    if args.json:
        print(f"wrote {save_json(ev, args.json)}")


def cmd_compare(args) -> None:
    from resforce.io.checks import check_counts
    from resforce.evaluation.compare import compare

    check_counts(args)
    names = args.names.split(",") if args.names else [Path(r).stem for r in args.runs]
    if len(names) != len(args.runs):
        raise ValueError(f"--names gives {len(names)} names for {len(args.runs)} runs")
    page = compare(args.runs, names, args.out, args.samples,
                   prefix_chunks=args.prefix_chunks if args.prefix_chunks is not None else 2,
                   segment_len=args.segment, frechet_reference=args.frechet_reference,
                   **generation_options(args, seed=args.seed or 0))
    print(f"comparison page: {page}")


def cmd_demo(args) -> None:
    from resforce.evaluation.demo import run_demo

    out = Path(args.out)
    page = run_demo(out, args.samples, args.chunks, args.segment, args.retrain, args.configs)
    print(f"\ndemo report: {page.resolve()}")
    print(f"videos, plots, table: {(out / 'report').resolve()}/")


def add_commands(sub) -> None:
    e = sub.add_parser("eval", help="long rollouts, metrics, a table by horizon segment")
    e.add_argument("run", help="run directory, checkpoint directory or .safetensors file")
    e.add_argument("--samples", type=int, default=16)
    e.add_argument("--segment", type=int, default=None, help="frames per table segment (default: training length)")
    e.add_argument("--json", default=None, help="also write the metrics here")
    e.add_argument("--inverse-dynamics", type=int, default=0, metavar="STEPS",
                   help="also score action following: an inverse-dynamics classifier trained STEPS steps on the "
                        "world's ground truth (e.g. 400) checks each generated frame against the action it was "
                        "commanded, next to its ceiling and an independent episode's actions (the floor); "
                        "worlds with discrete actions (default 0: off)")
    add_frechet_arg(e)
    add_sampling_args(e)
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("compare", help="evaluate several runs on the same seeds; one HTML page")
    c.add_argument("runs", nargs="+")
    c.add_argument("--out", required=True, help="output directory (index.html, videos, plots)")
    c.add_argument("--names", default=None, help="comma-separated method names")
    c.add_argument("--samples", type=int, default=16)
    c.add_argument("--segment", type=int, default=None, help="frames per table segment (default: training length)")
    add_frechet_arg(c)
    add_sampling_args(c)
    c.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", help=DEMO_TITLE[0].lower() + DEMO_TITLE[1:])
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--samples", type=int, default=16)
    d.add_argument("--chunks", type=int, default=126,
                   help="generated chunks after the 2 given frames (128 frames = 16x the 8-frame training clips)")
    d.add_argument("--segment", type=int, default=32, help="frames per table segment")
    d.add_argument("--retrain", action="store_true",
                   help="train the two models from scratch (about an hour on 2 CPU cores) instead of "
                        "using the shipped checkpoints")
    d.add_argument("--configs", default="configs", help="folder with bb_teacher.yaml and bb_resampling.yaml")
    d.set_defaults(func=cmd_demo)
