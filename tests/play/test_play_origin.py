"""`resforce play`'s origin policy and hostile messages, over a real socket: no page of another
site (nor a DNS-rebound name) can connect or take the player over, and no message makes a
session deaf or the server print a traceback."""

from __future__ import annotations

import json
import socket

import pytest

pytest.importorskip("starlette", reason="resforce play needs starlette (pip install 'resforce[play]')")
pytest.importorskip("uvicorn", reason="resforce play needs uvicorn (pip install 'resforce[play]')")
websockets = pytest.importorskip("websockets", reason="the test client needs websockets")

from ws_client import connect  # noqa: E402
from test_play import CountingSource, frame, frames_until  # noqa: E402

from resforce.cli.main import main  # noqa: E402
from resforce.play import server as play_server  # noqa: E402
from resforce.play.protocol import MAX_MESSAGE_BYTES  # noqa: E402
from resforce.play.server import PlayServer, check_origin, serving  # noqa: E402


@pytest.fixture
def played():
    """(ws URL with token, the server, the source) of a server on a free port."""
    source = CountingSource()
    server = PlayServer(source, seed=7, fps=0, allow_origins=["https://play.example.com"])
    with serving(server) as url:
        yield url, server, source


def without_token(url: str) -> str:
    return url.split("?")[0]


def refused(url: str, **kw) -> int:
    """The HTTP status a refused WebSocket handshake got."""
    with pytest.raises(websockets.exceptions.InvalidStatus) as e:
        with connect(url, open_timeout=10, **kw):
            pass
    return e.value.response.status_code


def raw_request(port: int, lines: list[str]) -> str:
    """Send an HTTP request of `lines` (no Host added) and return the status line and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and (b"403" in data.split(b"\r\n")[0] or len(data) > 4096):
                break
    return data.decode("latin-1")


def text_reply(ws, limit: int = 3000) -> dict:
    """The next JSON message, skipping (at most `limit`) frames."""
    msg = ws.recv(timeout=10)
    while not isinstance(msg, str):
        limit -= 1
        assert limit > 0, "no reply: frames keep coming but the message was never answered"
        msg = ws.recv(timeout=10)
    return json.loads(msg)


def still_steered(ws, seq: int) -> None:
    """A key press after the bad message reaches the frames: the session is not deaf."""
    ws.send(json.dumps({"type": "action", "action": "right", "seq": seq}))
    f = frames_until(ws, lambda f: f["seq"] == seq, limit=3000)[-1]
    assert f["action"] == 2 and f["action_px"] == 2


# ----------------------------------------------------------------------------- origin policy
@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1"])
def test_a_page_of_another_origin_cannot_connect_or_take_over(played, origin):
    url, server, _ = played
    with connect(url, origin=f"http://127.0.0.1:{server.port}") as player:
        assert text_reply(player)["type"] == "hello"
        assert refused(url, origin=origin) == 403
        frame(player)
        still_steered(player, 5)  # still playing, not taken over


def test_the_pages_own_origins_and_an_allowed_one_connect(played):
    url, server, _ = played
    for origin in (f"http://127.0.0.1:{server.port}", f"http://localhost:{server.port}", "https://play.example.com"):
        with connect(url, origin=origin) as ws:
            assert text_reply(ws)["type"] == "hello"


@pytest.mark.parametrize("token", [None, "", "wrong"])
def test_a_connection_without_the_token_is_refused_and_takes_nothing_over(played, token):
    url, server, _ = played
    with connect(url) as player:
        assert text_reply(player)["type"] == "hello"
        bad = without_token(url) + ("" if token is None else f"?token={token}")
        assert refused(bad, origin=f"http://127.0.0.1:{server.port}") == 403
        still_steered(player, 3)


def test_a_rebound_host_gets_no_page_and_no_socket(played):
    url, server, _ = played
    page = raw_request(server.port, ["GET / HTTP/1.1", "Host: evil.example", "Connection: close"])
    assert page.startswith("HTTP/1.1 403") and server.token not in page and "Host 'evil.example'" in page
    page = raw_request(server.port, ["GET / HTTP/1.1", f"Host: evil.example:{server.port}", "Connection: close"])
    assert page.startswith("HTTP/1.1 403") and server.token not in page
    ws = raw_request(server.port, [f"GET /ws?token={server.token} HTTP/1.1", "Host: evil.example",
                                   "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])
    assert ws.startswith("HTTP/1.1 403")
    good = raw_request(server.port, ["GET / HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Connection: close"])
    assert good.startswith("HTTP/1.1 200") and f'content="{server.token}"' in good


def test_each_launch_has_its_own_token():
    a, b = PlayServer(CountingSource()), PlayServer(CountingSource())
    assert a.token != b.token and len(a.token) >= 32


@pytest.mark.parametrize("origin", ["evil.example", "ftp://x.example", "https://x.example/path", "https://",
                                    "https://user@x.example"])
def test_allow_origin_must_be_an_origin(origin):
    with pytest.raises(ValueError, match=r"--allow-origin .*expected an origin like"):
        check_origin(origin)


def test_allow_origin_cli_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["play", "--world", "agent_balls", "--port", "0", "--allow-origin", "evil.example/x"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --allow-origin 'evil.example/x': expected an origin") and "Traceback" not in err


# ----------------------------------------------------------------------------- hostile messages
@pytest.mark.parametrize("message, error", [
    (b"\x00", "binary messages are not understood"),
    (json.dumps({"type": "action", "action": "left", "seq": 2 ** 32}), "seq must be an integer in [0, 2^32)"),
    (json.dumps({"type": "action", "action": "left", "seq": True}), "seq must be an integer in [0, 2^32)"),
    ("[" * 5000 + "]" * 5000, f"at most {MAX_MESSAGE_BYTES} expected"),
    ("[" * 400 + "]" * 400, "unknown message type None"),
    ('{"type": "pause", "paused": "no"}', "paused must be true or false"),
    ('{"type": "action", "action": "left", "seq": ' + "9" * 900 + "}", "seq must be an integer in [0, 2^32)"),
    ("x" * 5000, f"at most {MAX_MESSAGE_BYTES} expected"),
])
def test_a_bad_message_gets_an_error_and_the_session_goes_on(played, message, error, capfd):
    url, _, _ = played
    with connect(url) as ws:
        assert text_reply(ws)["type"] == "hello"
        ws.send(message)
        reply = text_reply(ws)
        assert reply["type"] == "error" and error in reply["message"], reply
        still_steered(ws, 9)
    assert "Traceback" not in capfd.readouterr().err


def test_an_oversized_message_closes_with_1009_and_the_server_goes_on(played):
    url, _, _ = played
    with connect(url, max_size=None) as ws:
        assert text_reply(ws)["type"] == "hello"
        ws.send("x" * (play_server.MAX_FRAME_BYTES + 1))
        with pytest.raises(websockets.exceptions.ConnectionClosed) as e:
            while True:
                ws.recv(timeout=10)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009
    with connect(url) as ws:
        assert text_reply(ws)["type"] == "hello"
        still_steered(ws, 1)


def test_a_failing_reader_ends_the_session_with_a_reason(played, monkeypatch):
    url, _, _ = played

    def broken(text, space):
        raise KeyError("broken parser")

    monkeypatch.setattr(play_server, "parse_message", broken)
    with connect(url) as ws:
        assert text_reply(ws)["type"] == "hello"
        ws.send('{"type": "pause", "paused": true}')
        closed = None
        with pytest.raises(websockets.exceptions.ConnectionClosedError) as e:
            for _ in range(3000):  # frames that keep coming after the reader died: a deaf session
                msg = ws.recv(timeout=10)
                closed = json.loads(msg) if isinstance(msg, str) else closed
        assert e.value.rcvd.code == 1011
        assert closed == {"type": "closed", "message": "reading the page's messages failed: KeyError: 'broken parser'"}
