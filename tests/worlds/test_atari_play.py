"""`resforce play --world atari:GAME` plays the emulator itself: the game's minimal buttons are
the actions, browser keys map onto them, and the page receives its frames over the socket."""

import json
import signal

import numpy as np
import pytest

pytest.importorskip("ale_py", reason="the atari world needs ale-py: pip install 'resforce[atari]'")
pytest.importorskip("starlette", reason="resforce play needs starlette (pip install 'resforce[play]')")
pytest.importorskip("uvicorn", reason="resforce play needs uvicorn (pip install 'resforce[play]')")
websockets = pytest.importorskip("websockets", reason="the test client needs websockets")

from ws_client import connect  # noqa: E402

from resforce.play.protocol import HEADER  # noqa: E402
from resforce.play.sources import WorldSource, display_frames  # noqa: E402


def test_world_source_plays_the_game():
    src = WorldSource("atari:breakout", seed=2)
    assert src.action_space.names == ["NOOP", "FIRE", "RIGHT", "LEFT"] and "breakout" in src.description
    first = display_frames(src.reset(2))[0]
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    frames = [display_frames(src.step(a))[0] for a in [1] * 5 + [2] * 20]
    assert np.array_equal(display_frames(src.reset(2))[0], first)  # reset(seed) starts the same episode
    assert any(not np.array_equal(f, first) for f in frames)  # the game moves under the actions


@pytest.mark.parametrize("spec, match", [
    ("atari:pongg", "--world atari:pongg: no Atari ROM 'pongg'"),
    ("agent_balls:pong", "--world agent_balls:pong: the agent_balls world takes no argument"),
    ("pong", "--world 'pong': not a controllable world; playable worlds: agent_balls, atari"),
])
def test_bad_world_is_named(spec, match):
    with pytest.raises(ValueError, match=match):
        WorldSource(spec)


def test_the_page_gets_the_games_frames_and_keys():
    from play_process import play_process, ws_url

    with play_process(["--world", "atari:pong"]) as (url, proc):
        with connect(ws_url(url), origin=url.rstrip("/")) as ws:
            hello = json.loads(ws.recv(timeout=30))
            assert hello["actions"][:4] == ["NOOP", "FIRE", "RIGHT", "LEFT"] and hello["keys"]["ArrowUp"] == "RIGHT"
            assert len(ws.recv(timeout=30)) == HEADER.size + 32 * 32 * 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
