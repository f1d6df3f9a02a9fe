"""`resforce play`'s server without a browser: its messages, the frame protocol over a real
socket, one player at a time, steps off the event loop, and clear errors for bad input."""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="resforce play needs starlette (pip install 'resforce[play]')")
pytest.importorskip("uvicorn", reason="resforce play needs uvicorn (pip install 'resforce[play]')")
websockets = pytest.importorskip("websockets", reason="the test client needs websockets")

from ws_client import connect  # noqa: E402

from resforce.actions import ActionSpace  # noqa: E402
from resforce.cli.main import build_parser, main  # noqa: E402
from resforce.play.sources import WorldSource, display_frames  # noqa: E402
from resforce.play.protocol import HEADER, MAX_QUEUED_INPUTS, Controls, parse_message  # noqa: E402
from resforce.play.server import PlayServer, serving  # noqa: E402

SPACE = ActionSpace(kind="discrete", n=3, names=["noop", "left", "right"], keys={"ArrowLeft": "left"}, default=0)


class CountingSource:
    """Frame f of an episode shows its seed in pixel (0, 0) and the action in pixel (0, 1);
    remembers which thread stepped it."""

    action_space = SPACE
    description = "counting test source"

    def __init__(self):
        self.threads = set()
        self.fail_at, self.steps = None, 0

    def _frame(self, action):
        self.threads.add(threading.current_thread().name)
        f = np.full((3, 4, 6), -1.0, np.float32)
        f[:, 0, 0] = self.seed / 127.5 - 1.0
        f[:, 0, 1] = action / 127.5 - 1.0
        return f

    def reset(self, seed):
        self.seed = seed
        return self._frame(0)

    def step(self, action):
        self.steps += 1
        if self.steps == self.fail_at:
            raise RuntimeError(f"step {self.steps} failed")
        return self._frame(action)


@pytest.fixture
def served():
    source = CountingSource()
    with serving(PlayServer(source, seed=7, fps=0)) as url:
        yield url, source


def frame(ws):
    msg = ws.recv(timeout=10)
    while isinstance(msg, str):  # skip JSON (errors are checked where expected)
        msg = ws.recv(timeout=10)
    episode, index, action, seq, ms = HEADER.unpack(msg[:HEADER.size])
    rgb = np.frombuffer(msg[HEADER.size:], np.uint8).reshape(4, 6, 3)
    return {"episode": episode, "index": index, "action": action, "seq": seq, "ms": ms, "seed_px": int(rgb[0, 0, 0]),
            "action_px": int(rgb[0, 1, 0])}


def frames_until(ws, done, limit: int = 10_000) -> list[dict]:
    """Frames read up to and including the first for which done(frame) holds."""
    seen = [frame(ws)]
    while not done(seen[-1]):
        assert len(seen) < limit, "the input never reached a frame"
        seen.append(frame(ws))
    return seen


def test_frames_carry_the_pressed_action_and_reset(served):
    url, source = served
    with connect(url) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["type"] == "hello" and (hello["height"], hello["width"]) == (4, 6)
        assert hello["actions"] == SPACE.names and hello["keys"] == SPACE.keys and hello["seed"] == 7
        first = frame(ws)
        assert (first["index"], first["action"], first["seed_px"]) == (0, -1, 7)
        ws.send(json.dumps({"type": "action", "action": "left", "seq": 1}))  # a tap: press, release
        ws.send(json.dumps({"type": "action", "action": 0, "seq": 2}))
        # fps=0: the server may be any number of frames ahead of this reader, so read up to the
        # release's first frame rather than a fixed count. The release may reach the server a frame
        # or more after the press, and the press is held until then: applied to at least one frame
        # (exactly one when both are queued together: test_a_tap_queued_with_its_release_...)
        seen = frames_until(ws, lambda f: f["seq"] == 2)
        taps = [f for f in seen if f["seq"] == 1]
        assert taps and all(f["action"] == 1 and f["action_px"] == 1 for f in taps)
        assert seen[-1]["action"] == 0 and seen[-1]["action_px"] == 0
        assert [f["index"] for f in seen] == list(range(1, len(seen) + 1))
        ws.send(json.dumps({"type": "action", "action": "right", "seq": 3}))  # held
        held = frames_until(ws, lambda f: f["seq"] == 3)[-1:] + [frame(ws) for _ in range(5)]
        assert all(f["seq"] == 3 and f["action"] == 2 and f["action_px"] == 2 for f in held)
        ws.send(json.dumps({"type": "reset", "seed": 42}))
        f = frame(ws)
        while f["episode"] == 0:
            f = frame(ws)
        assert (f["episode"], f["index"], f["action"], f["seed_px"]) == (1, 0, -1, 42)
    assert source.threads == {"resforce-play-step_0"}  # never on the event loop's thread


def test_bad_messages_get_an_error_and_play_goes_on(served):
    url, _ = served
    with connect(url) as ws:
        json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"type": "action", "action": "jump", "seq": 1}))
        msg = ws.recv(timeout=10)
        while not isinstance(msg, str):
            msg = ws.recv(timeout=10)
        assert json.loads(msg) == {"type": "error", "message": "unknown action 'jump'; known: ['noop', 'left', 'right']"}
        after = frames_until(ws, lambda f: f["index"] >= 1)[-1]  # past the reset frame (action -1)
        assert after["action"] == 0  # the bad message changed nothing


def test_a_new_tab_takes_over(served):
    url, _ = served
    with connect(url) as old:
        json.loads(old.recv(timeout=10))
        frame(old)
        with connect(url) as new:
            assert json.loads(new.recv(timeout=10))["type"] == "hello"
            closed = None
            with pytest.raises(websockets.exceptions.ConnectionClosedOK):
                while True:
                    msg = old.recv(timeout=10)
                    closed = json.loads(msg) if isinstance(msg, str) else closed
            assert closed == {"type": "closed", "message": "another tab took over"}
            assert frame(new)["index"] == 0


def test_a_failing_source_is_reported_to_the_page_and_the_server_goes_on(served):
    url, source = served
    source.fail_at = 3  # the third step raises
    with connect(url) as ws:
        json.loads(ws.recv(timeout=10))
        closed = None
        with pytest.raises(websockets.exceptions.ConnectionClosedError):
            while True:
                msg = ws.recv(timeout=10)
                closed = json.loads(msg) if isinstance(msg, str) else closed
        assert closed == {"type": "closed", "message": "the frame source failed: RuntimeError: step 3 failed"}
    source.fail_at = None
    with connect(url) as ws:  # the next tab plays
        assert json.loads(ws.recv(timeout=10))["type"] == "hello" and frame(ws)["index"] == 0


@pytest.mark.parametrize("text, error", [
    ("{", "not JSON"),
    ('{"type": "fly"}', "unknown message type 'fly'"),
    ('{"type": "action", "action": 3, "seq": 1}', "action must be a name of"),
    ('{"type": "action", "action": "left", "seq": -1}', r"seq must be an integer in \[0, 2\^32\)"),
    ('{"type": "reset", "seed": "x"}', "seed must be an integer"),
])
def test_parse_message_names_the_problem(text, error):
    with pytest.raises(ValueError, match=error):
        parse_message(text, SPACE)


def test_queued_inputs_are_bounded_and_kept_in_order():
    c = Controls(default_action=0)
    for i in range(100):
        c.inputs.append((i % 3, i + 1))
    assert len(c.inputs) == MAX_QUEUED_INPUTS
    assert [c.next_action()[1] for _ in range(MAX_QUEUED_INPUTS)] == list(range(93, 101))
    assert c.next_action() == (99 % 3, 100)  # nothing queued: the last input stays held


def test_a_tap_queued_with_its_release_is_applied_to_exactly_one_frame():
    c = Controls(default_action=0)
    c.inputs.extend([(1, 1), (0, 2)])  # press and release arrived within one frame
    assert [c.next_action() for _ in range(3)] == [(1, 1), (0, 2), (0, 2)]


def test_display_frames_shapes():
    one = display_frames(np.zeros((3, 4, 6), np.float32))
    assert len(one) == 1 and one[0].shape == (4, 6, 3) and one[0].dtype == np.uint8 and one[0][0, 0, 0] == 128
    chunk = display_frames(np.ones((1, 3, 2, 4, 6), np.float32))
    assert len(chunk) == 2 and chunk[1][0, 0, 0] == 255
    with pytest.raises(ValueError, match=r"\(3, H, W\) or \(3, F, H, W\)"):
        display_frames(np.zeros((4, 6), np.float32))


def test_world_source_is_the_simulator():
    src = WorldSource("agent_balls", seed=1)
    a = display_frames(src.reset(5))[0]
    b = display_frames(src.reset(5))[0]
    assert np.array_equal(a, b) and src.action_space.names[:3] == ["noop", "left", "right"]
    with pytest.raises(ValueError, match="--world 'bouncing_balls': not a controllable world; playable worlds: agent_balls"):
        WorldSource("bouncing_balls")


def test_ctrl_c_stops_the_server_while_a_tab_plays():
    import signal
    import subprocess

    from play_process import play_process, ws_url

    def read_all(ws):  # a tab keeps reading frames (until the server closes the socket)
        try:
            while True:
                ws.recv(timeout=30)
        except Exception:  # noqa: BLE001 - closed: what should happen
            pass

    with play_process(["--world", "agent_balls"]) as (url, proc):
        with connect(ws_url(url)) as ws:
            json.loads(ws.recv(timeout=30))
            frame_bytes = ws.recv(timeout=30)
            assert len(frame_bytes) == HEADER.size + 16 * 16 * 3
            reader = threading.Thread(target=read_all, args=(ws,), daemon=True)
            reader.start()
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            try:
                assert proc.wait(15) == 0  # not held open by the streaming player
            except subprocess.TimeoutExpired:
                pytest.fail("resforce play did not stop on Ctrl-C while a tab was playing")


def _play_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(["play", *argv])
    assert e.value.code == 2
    return capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
    assert "give a RUN" in _play_error([], capsys) and "none was given" in _play_error([], capsys)
    assert "not both" in _play_error([str(tmp_path), "--world", "agent_balls"], capsys)
    missing = tmp_path / "nope"
    err = _play_error([str(missing), "--port", "0"], capsys)
    assert f"RUN {missing}: no such run directory" in err
    import resforce

    demo = Path(resforce.__file__).parent / "assets" / "demo" / "teacher_forcing.safetensors"  # no actions
    assert "trained without actions (model.action_kind='none') cannot be steered" in _play_error(
        [str(demo), "--port", "0"], capsys)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        err = _play_error(["--world", "agent_balls", "--port", str(port)], capsys)
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in err and "--port 0" in err
    assert "--port must be in [0, 65535]" in _play_error(["--world", "agent_balls", "--port", "70000"], capsys)
    assert "--steps, --shift, --context and --cfg-scale" in _play_error(["--world", "agent_balls", "--port", "0", "--steps", "2"], capsys)
    args = build_parser().parse_args(["play", "--world", "agent_balls"])
    assert isinstance(args, argparse.Namespace) and args.port == 8765 and args.fps == 15.0


def test_a_model_is_played_as_an_interactive_session_would(tmp_path, randomize):
    from resforce.training.checkpoint import save_weights
    from resforce.config import load_config, to_yaml
    from resforce.play.sources import ModelSource
    from resforce.generation.interactive import InteractiveSession
    from resforce.model.dit import CausalVideoDiT
    from tiny import tiny

    agent = ["data.kind=agent_balls", "data.agent_balls.balls.resolution=8", "data.agent_balls.balls.radius_min=1.5",
             "data.agent_balls.balls.radius_max=2.0", "data.agent_balls.agent_radius=1.5",
             "model.action_kind=discrete", "model.action_dim=5", "stages.0.clip_chunks=3"]
    cfg = load_config(None, tiny(str(tmp_path / "run"), *agent))
    model = randomize(CausalVideoDiT(cfg.model))
    path = tmp_path / "agent.safetensors"
    save_weights(path, model.state_dict(), to_yaml(cfg))
    source = ModelSource.from_run(path, steps=2, seed=4)
    assert source.action_space.names == ["noop", "left", "right", "up", "down"]
    with serving(PlayServer(source, seed=4, fps=0)) as url, connect(url) as ws:
        hello = json.loads(ws.recv(timeout=30))
        assert (hello["height"], hello["width"]) == (8, 8) and hello["source"] == f"world model {path} (2 Euler steps a frame, shift 5, context 3 chunks)"
        ws.send(json.dumps({"type": "action", "action": "up", "seq": 1}))
        got = []
        while len(got) < 6:
            msg = ws.recv(timeout=30)
            header = HEADER.unpack(msg[:HEADER.size])
            got.append((header[2], np.frombuffer(msg[HEADER.size:], np.uint8).reshape(8, 8, 3)))
    ref = InteractiveSession(model, cfg, steps=2, seed=4)
    assert got[0][0] == -1 and np.array_equal(got[0][1], ref.reset(4))  # the world's first frame
    for action, frame in got[1:]:  # what a session makes under the same actions, bit for bit
        assert np.array_equal(frame, ref.step(action))
    assert {a for a, _ in got[1:]} <= {0, 3} and got[-1][0] == 3
