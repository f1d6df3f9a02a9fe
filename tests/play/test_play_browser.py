"""`resforce play` in a real browser: headless Chromium presses keys (and holds an on-page
button), and the agent must move that way in the frames the page received.

The agent's position is read from the pixels of the frames the page got over its WebSocket
(window.resforcePlay.frames), located by colour (agent_metrics.locate_agent); the frame
headers only say where each press starts and ends. The DevTools driving is tests/support/devtools.py.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
from browser import NO_BROWSER, find_browser

import resforce
from resforce.worlds.agent_balls.metrics import locate_agent
from resforce.worlds.agent_balls.simulator import AgentBallsConfig, direction

pytest.importorskip("starlette", reason="resforce play needs starlette (pip install 'resforce[play]')")
pytest.importorskip("uvicorn", reason="resforce play needs uvicorn (pip install 'resforce[play]')")
pytest.importorskip("websockets", reason="the DevTools client needs websockets (pip install 'resforce[play]')")

from devtools import Chromium  # noqa: E402
from play_process import play_process  # noqa: E402

SHIPPED_MODEL = Path(resforce.__file__).parent / "assets" / "agent_balls" / "resampling_forcing.safetensors"
MODEL_FOLLOW = 0.5
"""The shipped model must move the agent at least half of what each press commanded."""
NOOP, RESET = 0, -1
MOVES = {"left": 1, "right": 2, "up": 3, "down": 4}
KEYS = {"left": "ArrowLeft", "right": "ArrowRight", "up": "ArrowUp", "down": "ArrowDown"}
HOLD = 0.45
"""Seconds each press is held: 6-7 frames at 15 frames/s, 4-5 at a slower model's rate."""


def plan_presses(x: float, y: float, size: int) -> list[tuple[str, str]]:
    """(key or 'button', action) of each press: toward the middle first, then back, on each axis
    (a world model held against a wall for long is not what this tests). The last press is
    the on-page button, pressed with the mouse."""
    h = ["right", "left"] if x < size / 2 else ["left", "right"]
    v = ["down", "up"] if y < size / 2 else ["up", "down"]
    return [(KEYS[h[0]], h[0]), (KEYS[h[1]], h[1]), (KEYS[v[0]], v[0]), ("button", v[1])]


def latest_agent(page) -> np.ndarray:
    hello = page.evaluate("resforcePlay.hello")
    frames = json.loads(page.evaluate("JSON.stringify(resforcePlay.frames(1))"))
    centres, found = locate_agent(decode(frames, hello), AgentBallsConfig())
    assert found[0, -1], "no agent in the first frames"
    return centres[0, -1]


def play_presses(page) -> tuple[list[dict], list[str]]:
    """Press keys (and a button), then return the frames the page received and the actions pressed."""
    page.wait_for("window.resforcePlay && resforcePlay.count >= 3")
    x, y = latest_agent(page)
    presses = plan_presses(x, y, page.evaluate("resforcePlay.hello.width"))
    for key, action in presses:
        if key == "button":
            # scrolled into view first: in a 900x900 window the d-pad's lowest row ends below the
            # viewport, where a mouse event reaches no element
            x, y, inside = page.evaluate(
                f"(() => {{ const b = document.querySelector('#buttons button[data-action={action}]');"
                f" b.scrollIntoView({{block: 'center'}}); const r = b.getBoundingClientRect();"
                f" const x = r.x + r.width / 2, y = r.y + r.height / 2;"
                f" return [x, y, x >= 0 && y >= 0 && x < innerWidth && y < innerHeight]; }})()")
            assert inside, f"the {action} button's middle ({x:.0f}, {y:.0f}) is outside the window"
            page.mouse("mousePressed", x, y)
            time.sleep(HOLD)
            page.mouse("mouseReleased", x, y)
        else:
            page.key_down(key)
            time.sleep(HOLD)
            page.key_up(key)
        time.sleep(0.2)  # a few noop frames between presses
    n = page.evaluate("resforcePlay.count")
    page.wait_for(f"resforcePlay.count >= {n + 2}")  # frames made after the last release
    return json.loads(page.evaluate("JSON.stringify(resforcePlay.frames(240))")), [a for _, a in presses]


def decode(frames: list[dict], hello: dict) -> np.ndarray:
    """The page's frames as (1, 3, F, H, W) in [-1, 1]."""
    h, w = hello["height"], hello["width"]
    rgb = np.stack([np.frombuffer(base64.b64decode(f["rgb"]), np.uint8).reshape(h, w, 3) for f in frames])
    return (rgb.transpose(3, 0, 1, 2)[None].astype(np.float32) / 127.5) - 1.0


def press_runs(actions: list[int]) -> list[tuple[int, int, int]]:
    """(action, first frame, last frame) of each run of one move in a row."""
    runs, start = [], 0
    for i in range(1, len(actions) + 1):
        if i == len(actions) or actions[i] != actions[start]:
            if actions[start] not in (NOOP, RESET):
                runs.append((actions[start], start, i - 1))
            start = i
    return runs


def room(position: np.ndarray, action: int, cfg: AgentBallsConfig) -> float:
    """Pixels the agent can go from `position` in the action's direction before a wall."""
    u, r = direction(action), cfg.agent_radius
    return float(((cfg.resolution - r - position) * (u > 0) + (position - r) * (u < 0)).sum())


def _last_found(found: np.ndarray, lo: int, hi: int) -> int | None:
    """The last frame in [lo, hi] where the agent was found, or None."""
    seen = [i for i in range(max(lo, 0), hi + 1) if found[i]]
    return seen[-1] if seen else None


def check_agent_follows(frames: list[dict], pressed: list[str], hello: dict, min_follow: float) -> list[str]:
    """Each press moved the agent its way by at least min_follow of what it commanded (one
    step a frame held, up to the wall). Returns a line per press, for the log."""
    assert len({f["episode"] for f in frames}) == 1, "the episode changed during the presses"
    actions = [f["action"] for f in frames]
    cfg = AgentBallsConfig()
    centres, found = locate_agent(decode(frames, hello), cfg)
    runs = press_runs(actions)
    assert [a for a, _, _ in runs] == [MOVES[a] for a in pressed], \
        f"the frames' actions do not show the presses {pressed}: {actions}"
    log, moved = [], []
    for i, (a, first, last) in enumerate(runs):
        assert first > 0, "no frame before the first press"
        assert last - first + 1 >= 2, f"press {i} ({hello['actions'][a]}) held for {last - first + 1} frame only"
        # the agent where it was last seen just before the press and at its end: a world
        # model may lose it for a frame (a ball drawn over it); gone for longer fails
        before, after = _last_found(found[0], first - 3, first - 1), _last_found(found[0], last - 2, last)
        assert before is not None and after is not None and after >= first, \
            f"agent not found around press {i} ({hello['actions'][a]}): {found[0].tolist()}"
        u = direction(a)
        d = centres[0, after] - centres[0, before]
        along = float(d @ u)
        sideways = float(np.abs(d - along * u).sum())
        commanded = min((after - first + 1) * cfg.agent_speed, room(centres[0, before], a, cfg))
        log.append(f"{hello['actions'][a]:>5}: {last - first + 1} frames, commanded {commanded:.1f} px, "
                   f"moved {along:+.1f} px its way and {sideways:.1f} px sideways")
        assert along >= min_follow * commanded - 0.25, log[-1]
        moved.append(along)
    assert sum(moved) >= 8 * min_follow * cfg.agent_speed, log  # the presses were not all against walls
    return log


def play_in_browser(args: list[str], profile, min_follow: float) -> list[str]:
    browser = find_browser()
    if browser is None:
        pytest.skip(NO_BROWSER)
    with play_process(args) as (url, _), Chromium(browser, url, profile) as page:
        frames, pressed = play_presses(page)
        hello = page.evaluate("resforcePlay.hello")
        assert page.evaluate("resforcePlay.state.received.length") <= 240  # the page keeps a bounded log
        assert page.evaluate("document.getElementById('fps').textContent") not in ("", "–")
    return check_agent_follows(frames, pressed, hello, min_follow)


def test_keys_move_the_agent_of_the_ground_truth_world(tmp_path):
    log = play_in_browser(["--world", "agent_balls", "--seed", "3"], tmp_path / "profile",
                          min_follow=0.9)  # the simulator moves 1 px per frame
    print("\n".join(log))


def test_keys_move_the_agent_of_the_shipped_world_model(tmp_path):
    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"no shipped world model at {SHIPPED_MODEL}")
    # seed 7: the model kept the agent in view in 6 of 6 tries (at seed 1 it lost it in 2 of 4:
    # the shipped model's persistence, not its control, which the presses test)
    log = play_in_browser([str(SHIPPED_MODEL), "--seed", "7"], tmp_path / "profile", min_follow=MODEL_FOLLOW)
    print("\n".join(log))


def test_a_page_of_another_origin_cannot_connect(tmp_path):
    """A page served from another origin (here 127.0.0.1 on another port) opens a WebSocket to
    the play server, even with the right token: the browser sends its Origin and the server
    refuses the handshake, so the page never sees a frame."""
    from browser import serve

    from play_process import page_token

    browser = find_browser()
    if browser is None:
        pytest.skip(NO_BROWSER)
    with play_process(["--world", "agent_balls"]) as (url, _):
        token = page_token(url)
        site = tmp_path / "site"
        site.mkdir()
        target = url.replace("http://", "ws://") + "ws?token=" + token
        (site / "index.html").write_text(
            "<!doctype html><script>window.result = {opened: false, messages: 0, closed: null};"
            f"const ws = new WebSocket({json.dumps(target)});"
            "ws.onopen = () => { window.result.opened = true; };"
            "ws.onmessage = () => { window.result.messages += 1; };"
            "ws.onclose = (e) => { window.result.closed = e.code; };</script>")
        other = serve(site)
        try:
            with Chromium(browser, f"http://127.0.0.1:{other.server_address[1]}/index.html", tmp_path / "profile") as page:
                page.wait_for("window.result && window.result.closed !== null")
                result = page.evaluate("window.result")
        finally:
            other.shutdown()
    assert result == {"opened": False, "messages": 0, "closed": 1006}, result
