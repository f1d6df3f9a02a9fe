"""The shipped Atari world models (src/resforce/assets/atari_<game>/) follow their buttons:
Pong's held RIGHT takes the player's paddle up and LEFT down, Breakout's RIGHT takes its paddle
right and LEFT left, found in the generated pixels by the world's own object detector;
`resforce play` serves each to the page, and in headless Chromium the arrow keys move the
paddle in the frames the page received."""

import base64
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ale_py", reason="the atari world needs ale-py: pip install 'resforce[atari]'")

import resforce  # noqa: E402
from resforce.generation.interactive import InteractiveSession  # noqa: E402
from resforce.worlds.atari.objects import detect  # noqa: E402

ASSETS = Path(resforce.__file__).parent / "assets"


@dataclass(frozen=True)
class Game:
    name: str
    buttons: list[str]
    axis: int         # the paddle's coordinate the buttons move: 0 = x, 1 = y (both grow right/down)
    plus: str         # the button that makes that coordinate grow, and the key that presses it
    minus: str
    plus_key: str
    minus_key: str

    @property
    def model(self) -> Path:
        return ASSETS / f"atari_{self.name}" / "teacher_forcing.safetensors"


PONG = Game("pong", ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"], axis=1,
            plus="LEFT", minus="RIGHT", plus_key="ArrowDown", minus_key="ArrowUp")
BREAKOUT = Game("breakout", ["NOOP", "FIRE", "RIGHT", "LEFT"], axis=0,
                plus="RIGHT", minus="LEFT", plus_key="ArrowRight", minus_key="ArrowLeft")
GAMES = [pytest.param(PONG, id="pong"), pytest.param(BREAKOUT, id="breakout")]


def paddle(video: np.ndarray, game: Game) -> tuple[np.ndarray, np.ndarray]:
    """(found (F,), coordinate along the game's axis (F,) in world pixels) of the player's paddle."""
    found = detect(torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1, game.name)
    return found.found["player"][0], found.position["player"][0, :, game.axis]


def held(session: InteractiveSession, game: Game, seed: int, action: str, frames: int = 6):
    """(found rate, mean coordinate over the last 3 frames) of the paddle while `action` is held."""
    session.reset(seed=seed)
    found, where = paddle(np.stack([session.step(action) for _ in range(frames)]), game)
    return float(np.mean(found)), float(np.nanmean(where[-3:]))


@pytest.mark.parametrize("game", GAMES)
def test_a_shipped_atari_model_moves_its_paddle_with_the_buttons(game):
    torch.set_num_threads(1)
    session = InteractiveSession.from_run(game.model)
    assert session.action_space.names == game.buttons
    for seed in range(3):
        (p_found, p_at), (m_found, m_at) = held(session, game, seed, game.plus), held(session, game, seed, game.minus)
        assert p_found >= 5 / 6 and m_found >= 5 / 6, (seed, p_found, m_found)
        assert m_at + 10 < p_at, (seed, m_at, p_at)


@pytest.mark.parametrize("game", GAMES)
def test_play_serves_a_shipped_atari_model(game):
    pytest.importorskip("starlette", reason="resforce play needs starlette (pip install 'resforce[play]')")
    pytest.importorskip("websockets", reason="the test client needs websockets")
    from play_process import play_process, ws_url
    from ws_client import connect

    from resforce.play.protocol import HEADER

    with play_process([str(game.model)]) as (url, proc):
        with connect(ws_url(url), origin=url.rstrip("/")) as ws:
            hello = json.loads(ws.recv(timeout=30))
            assert hello["actions"] == game.buttons
            assert hello["keys"][game.plus_key] == game.plus and hello["keys"][game.minus_key] == game.minus
            assert len(ws.recv(timeout=30)) == HEADER.size + 32 * 32 * 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0


@pytest.mark.parametrize("game", GAMES)
def test_arrow_keys_move_the_paddle_in_a_browser(game, tmp_path):
    pytest.importorskip("starlette", reason="resforce play needs starlette (pip install 'resforce[play]')")
    pytest.importorskip("websockets", reason="the DevTools client needs websockets")
    from browser import NO_BROWSER, find_browser
    from devtools import Chromium
    from play_process import play_process

    browser = find_browser()
    if browser is None:
        pytest.skip(NO_BROWSER)
    with play_process([str(game.model)]) as (url, _), Chromium(browser, url, tmp_path / "profile") as page:
        page.wait_for("window.resforcePlay && resforcePlay.count >= 3")
        for key in (game.minus_key, game.plus_key):
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
    _, where = paddle(rgb, game)
    actions = [hello["actions"][f["action"]] if f["action"] >= 0 else "reset" for f in frames]

    def last_of(action):  # the paddle's mean coordinate over the last 3 frames of the press
        idx = [i for i, a in enumerate(actions) if a == action]
        assert len(idx) >= 4, (action, actions)
        return float(np.nanmean(where[idx[-3:]]))

    assert last_of(game.minus) + 10 < last_of(game.plus), actions
