"""`resforce diagnose`: the history gap and identity sensitivity of a trained model."""

from __future__ import annotations


def add_command(sub) -> None:
    from resforce.diagnostics.__main__ import DESCRIPTION, add_arguments

    d = sub.add_parser("diagnose", help=DESCRIPTION, description=DESCRIPTION)
    add_arguments(d)
    d.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args) -> None:
    from resforce.diagnostics.__main__ import main

    main(a=args, prog="resforce")
