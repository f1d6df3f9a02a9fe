"""The house's import rules, read from the source (every import, in functions too): the method
imports nothing from training/, generation/, play/ or cli/; a world imports nothing from
training/. A world or the method that needs such code gets it moved to a shared module
(process_group.py, device.py), not imported across the boundary."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "resforce"
METHOD = ["flow.py", "history.py", "loss.py", "rollout.py", "config"]


def resforce_imports(text: str, package: tuple[str, ...]) -> set[str]:
    """Every resforce.* module (or name in one) a module of `package` with source `text`
    imports, relative imports resolved."""
    out = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            out |= {module} | {f"{module}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("resforce.")}


def files(*names: str) -> list[Path]:
    found = []
    for name in names:
        p = SRC / name
        found += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return found


def crossings(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for p in paths:
        package = p.relative_to(SRC.parent).with_suffix("").parts[:-1]
        found += [f"{p.relative_to(SRC)} imports {m}" for m in sorted(resforce_imports(p.read_text(), package))
                  if m.split(".")[1] in forbidden]
    return found


def test_the_method_imports_no_trainer_generator_player_or_cli():
    assert crossings(files(*METHOD), ("training", "generation", "play", "cli")) == []


def test_a_world_imports_nothing_from_training():
    assert crossings(files("worlds"), ("training",)) == []


def test_a_crossing_in_a_function_or_a_relative_import_is_found():
    text = "import resforce.flow\ndef f():\n    from ..training.loop import Trainer\n"
    assert resforce_imports(text, ("resforce", "worlds")) == {"resforce.flow", "resforce.training.loop",
                                                             "resforce.training.loop.Trainer"}
