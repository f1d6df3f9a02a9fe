"""A test's own script launched on CPU ranks by torchrun, as a user launches resforce: Gloo,
one thread per rank, this checkout's src/ first on the path. A rank that aborts prints every
thread's Python stack (PYTHONFAULTHANDLER), so a crash at exit says where it happened."""

from __future__ import annotations

import os
import subprocess
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


def run_torchrun(script, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `script` on 2 ranks to the end; a failed job fails the test with the tails of its
    output (every rank's traceback is in stderr)."""
    p = subprocess.run(torchrun_command(script, *args), cwd=ROOT, env=torchrun_env(), capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"torchrun {Path(script).name} failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return p


def end_rank() -> None:
    """End a torchrun rank whose driver finished (its outputs written and closed) without the
    interpreter's teardown. An FSDP rank keeps its Gloo group to the end (DTensor's caches hold
    the device mesh), and the group's threads, outliving the interpreter, can abort a rank that
    has done all its work ("terminate called without an active exception", exit -6). A driver
    that raised never gets here: its traceback and exit code stand."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
