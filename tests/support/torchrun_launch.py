"""A test's own script launched on CPU ranks by torchrun, as a user launches resforce: Gloo,
one thread per rank, this checkout's src/ first on the path. A rank that aborts prints every
thread's Python stack (PYTHONFAULTHANDLER), so a crash at exit says where it happened."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def torchrun_env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), "PYTHONFAULTHANDLER": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # no outer job's group
        env.pop(k, None)
    return env


def torchrun_command(script, *args, ranks: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
            str(script), *(str(a) for a in args)]
