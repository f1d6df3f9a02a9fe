"""`resforce play` as a subprocess on a free port, for page tests: yields its URL and process."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import resforce


@contextlib.contextmanager
def play_process(args: list[str], timeout: float = 90.0):
    """Run `resforce play ARGS --port 0`; once it listens, yield (http://127.0.0.1:PORT/, the process)."""
    src = str(Path(resforce.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "resforce.cli.main", "play", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # the server exited

    threading.Thread(target=read, daemon=True).start()
    seen = []
    try:
        while True:  # the server prints its URL once the socket listens
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"resforce play printed no URL in {timeout} s:\n{''.join(seen)}") from None
            if line is None:
                raise RuntimeError(f"resforce play exited with {proc.wait()}:\n{''.join(seen)}")
            seen.append(line)
            if line.startswith("resforce play: http://"):
                yield line.split()[2], proc
                break
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def page_token(url: str) -> str:
    """The per-launch token in the page served at `url` (http://127.0.0.1:PORT/)."""
    with urllib.request.urlopen(url, timeout=30) as r:
        m = re.search(r'<meta name="resforce-token" content="([^"]+)">', r.read().decode())
    assert m, f"no token in the page at {url}"
    return m.group(1)


def ws_url(url: str) -> str:
    """The page's WebSocket URL, with its token, as the page itself connects."""
    return url.replace("http://", "ws://") + "ws?token=" + page_token(url)
