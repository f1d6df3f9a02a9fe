"""Product text speaks of the product: README, docs/, src/, tests/, benchmarks/, scripts/,
configs/ and the results' READMEs never tell the history of the project's development (work
sessions, dates of work, commit hashes as provenance, issue numbers, machine-load anecdotes)
and never point outside the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["README.md", "docs", "src", "tests", "benchmarks", "scripts", "configs", "results"]
SUFFIXES = {".md", ".py", ".sh", ".yaml", ".yml", ".toml", ".html", ".js", ".txt"}
ORDINAL = r"(this|that|the same|previous|next|earlier|later|last|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth)"
FORBIDDEN = {
    "a work session": rf"\b{ORDINAL} session\b|\bsession's (changes|work)\b|\bsession notes?\b",
    "an issue number": r"\b[Ii]ssue\s*#?\d+\b|\bresforce issue\b|\b(the|a) [\w-]+ issue\b",
    "a date of work": r"\b20\d\d-[01]\d-[0-3]\d\b",
    "a commit hash as provenance": r"\b(at )?commit [0-9a-f]{7,40}\b",
    "a machine-load anecdote": r"\bbusy (machine|CPU|one)\b|\bwhile training held the cores\b",
    "a path outside the repository": r"\.\./shared\b|\bMETHOD\.md\b|\bCPU-BUDGET\.md\b",
}


def product_files():
    for name in SCANNED:
        p = ROOT / name
        paths = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for q in paths:
            if q.suffix in SUFFIXES and "egg-info" not in q.parts:
                if name == "results" and q.name != "README.md" and q.suffix != ".md":
                    continue
                yield q


def offences(text: str):
    for what, pattern in FORBIDDEN.items():
        for m in re.finditer(pattern, text):
            line = text.count("\n", 0, m.start()) + 1
            yield what, line, m.group(0)


def test_no_development_history_in_product_text():
    found = [f"{q.relative_to(ROOT)}:{line}: {what} ({hit!r})"
             for q in product_files() for what, line, hit in offences(q.read_text(errors="replace"))]
    assert not found, "product text that speaks of development history:\n" + "\n".join(found)


def _words(*parts: str) -> str:
    """Example offences assembled from parts, so this file itself holds none of them."""
    return " ".join(parts)


@pytest.mark.parametrize("text, what", [
    ("Before this " + "session" + "'s changes it printed 0.4", "a work session"),
    (_words("measured in the seventh", "session"), "a work session"),
    ("Safety (resforce " + "issue" + " 9): one trainer", "an issue number"),
    (_words("Issue", "15: third seeds"), "an issue number"),
    ("Measured " + "-".join(["2026", "11", "24"]) + " on 2 cores", "a date of work"),
    (_words("at commit", "cb93c77 of main"), "a commit hash as provenance"),
    (_words("7m23s on a busy", "CPU"), "a machine-load anecdote"),
    ("see ../" + "shared/METHOD" + ".md", "a path outside the repository"),
])
def test_each_kind_of_history_is_caught(text, what):
    assert what in {w for w, _, _ in offences(text)}


@pytest.mark.parametrize("text", [
    "InteractiveSession: a played session equals a rollout",
    "the rolling session a trained run is rolled out with",
    "seed 20240917 of the random kill points",
    "background:#fafafa",
])
def test_product_words_pass(text):
    assert not list(offences(text))
