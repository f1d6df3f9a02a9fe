"""One table of every benchmark's headline numbers, from one `make bench` run.

Each benchmark calls `record(benchmark, what, value, unit, target)` where it computes a
headline ratio; with the environment variable RESFORCE_BENCH_SUMMARY set to a file, that
appends one JSON line to it, and without it nothing happens (a benchmark run alone prints
its own numbers as before). `python benchmarks/summary.py FILE` then prints one aligned
table of the lines: benchmark | what | value | target | met. A target is a string
"<= 1.25" or ">= 15" in the value's unit; speed and memory targets live here, as ratios
measured in one run, never in timed tests.

    RESFORCE_BENCH_SUMMARY=outputs/bench_summary.jsonl python benchmarks/bench_resampling.py
    python benchmarks/summary.py outputs/bench_summary.jsonl
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

ENV = "RESFORCE_BENCH_SUMMARY"
OPS = {"<=": lambda v, t: v <= t, ">=": lambda v, t: v >= t}


def parse_target(target: str) -> tuple[str, float]:
    """("<=", 1.25) from "<= 1.25"; ValueError for anything else."""
    op, _, number = target.strip().partition(" ")
    if op not in OPS:
        raise ValueError(f"target {target!r}: expected '<= NUMBER' or '>= NUMBER'")
    return op, float(number)


def record(benchmark: str, what: str, value: float, unit: str = "x", target: str | None = None) -> None:
    """Append {benchmark, what, value, unit, target} as one JSON line to the file named by
    RESFORCE_BENCH_SUMMARY; a no-op when the variable is unset or empty."""
    if target is not None:
        parse_target(target)  # a malformed target fails the benchmark run alone too
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"benchmark": benchmark, "what": what, "value": float(value), "unit": unit,
                       "target": target})
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def met(value: float, target: str) -> bool:
    op, bound = parse_target(target)
    return not math.isnan(value) and OPS[op](value, bound)


def _number(value: float, unit: str) -> str:
    if math.isnan(value):
        return "nan"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f}" + (unit if unit == "x" else f" {unit}" if unit else "")


def _target(target: str, unit: str) -> str:
    op, bound = parse_target(target)
    return f"{op} {bound:g}" + (unit if unit == "x" else f" {unit}" if unit else "")


def table(rows: list[dict]) -> str:
    """The aligned text table of recorded rows, and a last line counting the targets met."""
    cells = [("benchmark", "what", "value", "target", "met")]
    for r in rows:
        t = r.get("target")
        cells.append((r["benchmark"], r["what"], _number(r["value"], r["unit"]),
                      _target(t, r["unit"]) if t else "", ("yes" if met(r["value"], t) else "NO") if t else ""))
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    right = {2}  # values align on the right

    def line(c):
        return " | ".join(s.rjust(w) if i in right else s.ljust(w) for i, (s, w) in enumerate(zip(c, widths))).rstrip()

    out = [line(cells[0]), "-+-".join("-" * w for w in widths)] + [line(c) for c in cells[1:]]
    targets = [r for r in rows if r.get("target")]
    hits = sum(met(r["value"], r["target"]) for r in targets)
    out.append(f"{len(rows)} numbers from {len({r['benchmark'] for r in rows})} benchmarks; "
               f"targets met: {hits} of {len(targets)}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else os.environ.get(ENV)
    if not path:
        print(f"usage: python benchmarks/summary.py FILE (or set {ENV})", file=sys.stderr)
        return 2
    text = Path(path).read_text(encoding="utf-8") if Path(path).exists() else ""
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
