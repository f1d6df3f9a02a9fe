"""Drive headless Chromium over the DevTools protocol: real key presses and clicks on a page.

Chromium starts with --remote-debugging-port=0 and prints the port it took; the page's
target is read from /json/list and driven over its WebSocket with the `websockets` client (a
dependency of the play server already; no browser download, unlike Playwright or pyppeteer,
which fetch their own Chromium). Input.dispatchKeyEvent / dispatchMouseEvent go through the
browser's input pipeline: the page sees trusted keydown / pointerdown events, as from a user.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

KEY_CODES = {"ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40}


class Chromium:
    """A headless Chromium showing `url`; `evaluate`, `key_down`/`key_up` and mouse presses."""

    def __init__(self, browser: str, url: str, profile: Path, timeout: float = 30.0) -> None:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
               "--disable-background-networking", "--disable-component-update", "--mute-audio",
               "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
               "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
               f"--user-data-dir={profile}", "--window-size=900,900", url]
        env = dict(os.environ, HOME=str(profile))
        self.profile = Path(profile)
        self.profile.mkdir(parents=True, exist_ok=True)
        self.log = open(self.profile / "chromium.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.ids = 0
        self.stack = contextlib.ExitStack()
        try:
            port = self._devtools_port(timeout)
            self.ws = self._page_socket(port, url, timeout)
        except Exception:
            self.close()
            raise

    def _devtools_port(self, timeout: float) -> int:
        """The port Chromium took: the first line of DevToolsActivePort in its profile."""
        marker, deadline = self.profile / "DevToolsActivePort", time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            lines = marker.read_text().splitlines() if marker.exists() else []
            if len(lines) >= 2:  # written whole: port, then the browser target's path
                return int(lines[0])
            time.sleep(0.05)
        self.log.flush()
        raise RuntimeError("chromium did not open its DevTools port:\n" + (self.profile / "chromium.log").read_text()[-2000:])

    def _page_socket(self, port: int, url: str, timeout: float):
        from websockets.sync.client import connect

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return self.stack.enter_context(connect(pages[0]["webSocketDebuggerUrl"], max_size=None, max_queue=None,
                                                        open_timeout=timeout))
            time.sleep(0.1)
        raise RuntimeError(f"chromium shows no page for {url}")

    def call(self, method: str, **params):
        self.ids += 1
        self.ws.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        while True:  # skip events until our answer
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.ids:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0, every: float = 0.05):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(every)
        raise TimeoutError(f"{expression} still false after {timeout} s")

    def _key(self, kind: str, key: str) -> None:
        code = KEY_CODES.get(key, ord(key.upper()) if len(key) == 1 else 0)
        self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key if key in KEY_CODES else f"Key{key.upper()}",
                  windowsVirtualKeyCode=code, nativeVirtualKeyCode=code)

    def key_down(self, key: str) -> None:
        self._key("rawKeyDown", key)  # what a keyboard sends for a key without text (arrows)

    def key_up(self, key: str) -> None:
        self._key("keyUp", key)

    def mouse(self, kind: str, x: float, y: float) -> None:
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=1 if kind != "mouseReleased" else 0,
                  clickCount=1)

    def close(self) -> None:
        self.stack.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
