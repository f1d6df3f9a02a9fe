"""The shipped Pong world model (src/resforce/assets/atari_pong/) follows its buttons: held
RIGHT takes the player's paddle up, held LEFT down, found in the generated pixels by the
world's own object detector; `resforce play` serves it to the page, and in headless Chromium
the arrow keys move the paddle in the frames the page received."""

import base64
import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ale_py", reason="the atari world needs ale-py: pip install 'resforce[atari]'")

import resforce  # noqa: E402
from resforce.generation.interactive import InteractiveSession  # noqa: E402
from resforce.worlds.atari.objects import detect  # noqa: E402

MODELS = Path(resforce.__file__).parent / "assets" / "atari_pong"


def held(session: InteractiveSession, seed: int, action: str, frames: int = 6):
    """(found rate, mean y in world pixels over the last 3 frames) of the player's paddle."""
    session.reset(seed=seed)
    video = np.stack([session.step(action) for _ in range(frames)])  # (F, H, W, 3) uint8
    found = detect(torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1, "pong")
    return found.found["player"].mean(), float(np.nanmean(found.position["player"][0, -3:, 1]))


@pytest.mark.parametrize("name", ["teacher_forcing"])
def test_the_shipped_pong_model_moves_its_paddle_with_the_buttons(name):
    torch.set_num_threads(1)
    session = InteractiveSession.from_run(MODELS / f"{name}.safetensors")
    assert session.action_space.names == ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
    for seed in range(3):
        (up_found, up_y), (down_found, down_y) = held(session, seed, "RIGHT"), held(session, seed, "LEFT")
        assert up_found >= 5 / 6 and down_found >= 5 / 6, (seed, up_found, down_found)
        assert up_y + 10 < down_y, (seed, up_y, down_y)  # y grows downwards


def test_play_serves_the_shipped_pong_model():
    pytest.importorskip("starlette", reason="resforce play needs starlette (pip install 'resforce[play]')")
    pytest.importorskip("websockets", reason="the test client needs websockets")
    from play_process import play_process, ws_url
    from ws_client import connect

    from resforce.play.protocol import HEADER

    with play_process([str(MODELS / "teacher_forcing.safetensors")]) as (url, proc):
        with connect(ws_url(url), origin=url.rstrip("/")) as ws:
            hello = json.loads(ws.recv(timeout=30))
            assert hello["actions"][2:4] == ["RIGHT", "LEFT"] and hello["keys"]["ArrowUp"] == "RIGHT"
            assert len(ws.recv(timeout=30)) == HEADER.size + 32 * 32 * 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0


def test_arrow_keys_move_the_paddle_in_a_browser(tmp_path):
    pytest.importorskip("starlette", reason="resforce play needs starlette (pip install 'resforce[play]')")
    pytest.importorskip("websockets", reason="the DevTools client needs websockets")
    from browser import NO_BROWSER, find_browser
    from devtools import Chromium
    from play_process import play_process

    browser = find_browser()
    if browser is None:
        pytest.skip(NO_BROWSER)
    with play_process([str(MODELS / "teacher_forcing.safetensors")]) as (url, _), \
            Chromium(browser, url, tmp_path / "profile") as page:
        page.wait_for("window.resforcePlay && resforcePlay.count >= 3")
        for key in ("ArrowUp", "ArrowDown"):
            page.key_down(key)
            time.sleep(0.8)  # 8 or more frames at the model's 15 frames/s
            page.key_up(key)
            time.sleep(0.1)
        n = page.evaluate("resforcePlay.count")
        page.wait_for(f"resforcePlay.count >= {n + 2}")
        hello = page.evaluate("resforcePlay.hello")
        frames = json.loads(page.evaluate("JSON.stringify(resforcePlay.frames(240))"))
    h, w = hello["height"], hello["width"]
    rgb = np.stack([np.frombuffer(base64.b64decode(f["rgb"]), np.uint8).reshape(h, w, 3) for f in frames])
    found = detect(torch.from_numpy(rgb).permute(3, 0, 1, 2).float() / 127.5 - 1, "pong")
    y = found.position["player"][0, :, 1]
    actions = [hello["actions"][f["action"]] if f["action"] >= 0 else "reset" for f in frames]

    def last_of(action):  # the paddle's mean y over the last 3 frames of the press
        idx = [i for i, a in enumerate(actions) if a == action]
        assert len(idx) >= 4, (action, actions)
        return float(np.nanmean(y[idx[-3:]]))

    up, down = last_of("RIGHT"), last_of("LEFT")
    assert up + 10 < down, (up, down, actions)  # y grows downwards: ArrowUp = RIGHT = up
