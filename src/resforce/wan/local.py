"""Local model folders: a component folder or a diffusers pipeline folder holding it.

Nothing here downloads: every `from_pretrained` gets a folder that exists on disk and
`local_files_only=True`. A missing or incomplete folder is an error naming the flag (or
config key) that gave it and what the folder must contain.
"""

from __future__ import annotations

from pathlib import Path


class MissingWeightsError(FileNotFoundError):
    """A local weight folder does not exist or lacks the files it must contain."""


def component_folder(path: str | Path, subfolder: str, what: str, flag: str,
                     required: tuple[str, ...] = ("config.json",)) -> Path:
    """`path` itself when it holds `required`, else `path/subfolder` when that does (a
    diffusers pipeline folder such as Wan2.1-T2V-1.3B-Diffusers); MissingWeightsError naming
    `flag` otherwise."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise MissingWeightsError(f"{flag} {str(path)!r}: no such folder; expected a local {what} folder "
                                  f"({', '.join(required)} and its weights) or a diffusers pipeline folder "
                                  f"with a {subfolder}/ subfolder (nothing is downloaded)")
    for candidate in (root, root / subfolder):
        if all((candidate / name).is_file() for name in required):
            return candidate
    raise MissingWeightsError(f"{flag} {str(path)!r}: neither it nor {subfolder}/ inside it holds "
                              f"{', '.join(required)}; expected a local {what} folder (nothing is downloaded)")


def has_weights(folder: Path) -> bool:
    """A folder holds safetensors (or legacy .bin) weights."""
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))


def weights_folder(path: str | Path, subfolder: str, what: str, flag: str) -> Path:
    """component_folder that must also hold weight files."""
    folder = component_folder(path, subfolder, what, flag)
    if not has_weights(folder):
        raise MissingWeightsError(f"{flag} {str(path)!r}: {folder} has a config.json but no *.safetensors "
                                  f"weights; expected a local {what} folder (nothing is downloaded)")
    return folder
