"""`resforce play`'s web server: a page on 127.0.0.1 that streams frames while keys steer.

Starlette (routing, static files, WebSockets) on uvicorn: a well-kept ASGI stack, so the
server is a page, a script and one WebSocket handler, with no HTTP or WebSocket framing of
our own. The page (assets/play/) sends what the player does as small JSON messages; the
server sends each frame as one binary message: HEADER (episode, frame index, the action the
frame was made with (-1: a reset frame), the last input it reflects, the step's milliseconds)
followed by H * W * 3 RGB bytes. At 16 x 16 px that is 788 bytes a frame: no image codec.

Who may connect (the origin policy). A web page in the player's browser, from any site,
can open a WebSocket to 127.0.0.1 and can make a DNS name point there (DNS rebinding), so:
  * every request must carry a Host header of this server (127.0.0.1:PORT, localhost:PORT,
    or a host of an --allow-origin): a rebound name is refused with 403 before anything is
    served;
  * a WebSocket whose Origin header is present must be the page's own origin
    (http://127.0.0.1:PORT, http://localhost:PORT) or one given with --allow-origin (a proxy);
    `Origin: null` and every other site is refused with 403 before the handshake. Browsers
    always send Origin; a client without one is not a web page (a script on this machine);
  * every WebSocket must carry the per-launch token (?token=...) that the served page holds
    (a secret made at start, in the page's HTML, which no other origin can read): without it
    nothing streams and no player is taken over.

One source, one player at a time. A model on two CPU cores makes frames as fast as it can
for one player; a second concurrent game would halve both players' frame rates, and one shared
episode steered from two tabs makes no sense. So a new connection takes over (a reloaded
tab reconnects while the old socket lingers): the previous player is stopped after its
current step and the new one starts from a reset. An asyncio.Lock makes the hand-over
exact: the source is stepped by one player only, and memory stays that of one session.

Model steps run in one worker thread, never on the event loop, so the page's key messages
are read (and the socket kept alive) while a frame is being made; one thread, because a
rollout's KV cache is state that must be stepped in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from resforce.play.protocol import HEADER, MAX_FRAME_BYTES, MAX_QUEUED_INPUTS, RESET_ACTION, Controls, parse_message
from resforce.play.sources import FrameSource, display_frames

PAGE_DIR = Path(__file__).parent.parent / "assets" / "play"
HOST = "127.0.0.1"
TOKEN_PLACEHOLDER = "RESFORCE_PLAY_TOKEN"


def check_origin(origin: str, flag: str = "--allow-origin") -> str:
    """An origin as browsers send it (scheme://host[:port], no path), lower-cased; ValueError
    naming `flag` otherwise."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") \
            or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{flag} {origin!r}: expected an origin like https://play.example.com or "
                         f"http://127.0.0.1:8080 (scheme http or https, a host, an optional port, no path)")
    return f"{parts.scheme}://{parts.netloc}".lower()


class PlayServer:
    """The shared source, its worker thread, and who is playing it."""

    def __init__(self, source: FrameSource, seed: int = 0, fps: float = 15.0,
                 allow_origins: list[str] | tuple[str, ...] = ()) -> None:
        if fps < 0:
            raise ValueError(f"--fps must be >= 0 (0: as fast as the source goes), got {fps}")
        self.source, self.seed, self.fps = source, seed, fps
        self.extra_origins = [check_origin(o) for o in allow_origins]
        self.token = secrets.token_urlsafe(24)
        """The per-launch secret a WebSocket must carry (the served page holds it)."""
        self.port: int | None = None
        """Set by `listen`: the page's own origins are on this port."""
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resforce-play-step")
        self.lock = asyncio.Lock()
        self.current: Controls | None = None

    def listen(self, port: int) -> socket.socket:
        """Bind 127.0.0.1:port (0: a free port) and learn the page's origins from it."""
        sock = bind(port)
        self.port = sock.getsockname()[1]
        return sock

    @property
    def origins(self) -> set[str]:
        own = {f"http://{HOST}:{self.port}", f"http://localhost:{self.port}"}
        return own | set(self.extra_origins)

    @property
    def hosts(self) -> set[str]:
        own = {f"{HOST}:{self.port}", f"localhost:{self.port}"}
        return own | {urlsplit(o).netloc for o in self.extra_origins}

    def refusal(self, scope) -> str | None:
        """Why a request may not be served (the origin policy in the module's doc), or None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "").strip().lower()
        if host not in self.hosts:
            return f"Host {host!r} is not this server (expected one of {sorted(self.hosts)})"
        if scope["type"] != "websocket":
            return None
        origin = headers.get("origin")
        if origin is not None and origin.strip().lower().rstrip("/") not in self.origins:
            return (f"Origin {origin!r} may not connect (allowed: {sorted(self.origins)}; "
                    f"resforce play --allow-origin adds one)")
        token = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            return "no valid token: open the page this server printed (its token is in the page)"
        return None

    def guard(self, app):
        """`app` behind the origin policy: a refused request gets 403 and its reason, and a
        refused WebSocket is never accepted."""
        from starlette.responses import PlainTextResponse

        async def guarded(scope, receive, send):
            why = self.refusal(scope) if scope["type"] in ("http", "websocket") else None
            if why is None:
                return await app(scope, receive, send)
            print(f"resforce play: refused {scope['type']} {scope.get('path', '')}: {why}", file=sys.stderr,
                  flush=True)
            if scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
                return await PlainTextResponse(f"403 forbidden: {why}\n", status_code=403)(scope, receive, send)
            await send({"type": "websocket.close", "code": 1008, "reason": why[:120]})

        return guarded

    async def _in_worker(self, fn, *args):
        """fn(*args) in the worker thread -> (display frames, milliseconds it took)."""
        def timed():
            t0 = time.perf_counter()
            frames = display_frames(fn(*args))
            return frames, (time.perf_counter() - t0) * 1e3
        return await asyncio.get_running_loop().run_in_executor(self.worker, timed)

    def hello(self, frame) -> dict:
        space = self.source.action_space
        return {"type": "hello", "source": self.source.description, "height": int(frame.shape[0]),
                "width": int(frame.shape[1]), "actions": list(space.names), "keys": dict(space.keys),
                "default": int(space.default), "seed": self.seed, "fps": self.fps, "header": HEADER.format}

    async def websocket(self, ws) -> None:
        await ws.accept()
        controls = Controls(self.source.action_space.default)
        if self.current is not None:  # take over: the old player stops after its current step
            self.current.stop(taken_over=True)
        self.current = controls
        async with self.lock:
            if controls.stopped:  # a newer connection came while this one waited
                await _close(ws, "another tab took over")
                return
            reader = asyncio.create_task(self._read(ws, controls))
            try:
                await self._play(ws, controls)
            except _Gone:
                pass
            except Exception as e:  # the source failed (a model error): tell the page, log it, go on serving
                traceback.print_exc()
                await _close(ws, f"the frame source failed: {type(e).__name__}: {e}", code=1011)
            finally:
                reader.cancel()
                if self.current is controls:
                    self.current = None
            if controls.taken_over:
                await _close(ws, "another tab took over")
            elif controls.failure is not None:
                await _close(ws, controls.failure, code=1011)

    async def _read(self, ws, controls: Controls) -> None:
        """Read the page's messages into `controls`. A bad message (binary, too long, nested,
        not JSON, out of range) is answered with an error and play goes on; if reading fails
        in any other way the session ends (the frame loop stops and closes with a reason), so
        a session never streams on deaf to the keys."""
        from starlette.websockets import WebSocketDisconnect

        space = self.source.action_space
        try:
            while True:
                raw = await ws.receive()
                if raw["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(raw.get("code", 1000))
                try:
                    text = raw.get("text")
                    msg = parse_message(text if text is not None else raw.get("bytes"), space)
                except ValueError as e:
                    await ws.send_json({"type": "error", "message": str(e)})
                    continue
                if msg["type"] == "action":
                    controls.inputs.append((msg["action"], msg["seq"]))
                elif msg["type"] == "reset":
                    controls.reset_seed = msg["seed"]
                else:
                    controls.paused = msg["paused"]
                controls.wake.set()
        except (WebSocketDisconnect, RuntimeError, OSError):
            controls.stop()  # the page is gone: the frame loop ends
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - never a silent deaf session: log it, end the session
            traceback.print_exc()
            controls.failure = f"reading the page's messages failed: {type(e).__name__}: {e}"
            controls.stop()

    async def _play(self, ws, controls: Controls) -> None:
        loop = asyncio.get_running_loop()
        episode, index, tick = 0, 0, loop.time()
        frames, ms = await self._in_worker(self.source.reset, self.seed)
        await _send(ws.send_json, self.hello(frames[0]))
        action, seq = RESET_ACTION, 0
        while True:
            for f in frames:
                await _send(ws.send_bytes, HEADER.pack(episode, index, action, seq, ms) + f.tobytes())
                index += 1
            tick = await self._pace(loop, tick)
            while controls.paused and not controls.stopped and controls.reset_seed is None:
                controls.wake.clear()
                await controls.wake.wait()
                tick = loop.time()
            if controls.stopped:
                return
            if controls.reset_seed is not None:
                self.seed, controls.reset_seed = controls.reset_seed, None
                frames, ms = await self._in_worker(self.source.reset, self.seed)
                episode, index, action, seq = episode + 1, 0, RESET_ACTION, controls.seq
            else:
                action, seq = controls.next_action()
                frames, ms = await self._in_worker(self.source.step, action)

    async def _pace(self, loop, tick: float) -> float:
        """Sleep to the next tick of --fps (0: no cap); a late frame does not build up debt."""
        if not self.fps:
            await asyncio.sleep(0)
            return tick
        tick += 1.0 / self.fps
        delay = tick - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
            return tick
        return loop.time()

    def app(self):
        from starlette.applications import Starlette
        from starlette.routing import Mount, Route, WebSocketRoute
        from starlette.staticfiles import StaticFiles

        from starlette.responses import HTMLResponse

        page = (PAGE_DIR / "index.html").read_text(encoding="utf-8").replace(TOKEN_PLACEHOLDER, self.token)

        async def index(request):
            return HTMLResponse(page, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                                               "X-Frame-Options": "DENY"})

        return self.guard(Starlette(routes=[Route("/", index), Mount("/static", StaticFiles(directory=PAGE_DIR)),
                                            WebSocketRoute("/ws", self.websocket)]))


class _Gone(Exception):
    """The page closed its socket."""


async def _send(send, payload) -> None:
    from starlette.websockets import WebSocketDisconnect

    try:
        await send(payload)
    except (WebSocketDisconnect, RuntimeError, OSError):
        raise _Gone from None


async def _close(ws, reason: str, code: int = 1000) -> None:
    try:
        await ws.send_json({"type": "closed", "message": reason})
        await ws.close(code=code, reason=reason[:120])  # a close frame's reason is at most 123 bytes
    except Exception:  # noqa: BLE001 - the page may already be gone; nothing left to tell it
        pass


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:port (0: a free port): a clear error if it is taken."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in [0, 65535] (0: any free port), got {port}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
    except OSError as e:
        sock.close()
        raise OSError(f"--port {port}: cannot listen on {HOST}:{port} ({e.strerror}); another program (or "
                      f"resforce play) uses it: pass another --port, or --port 0 for a free one") from None
    sock.listen(16)
    return sock


def uvicorn_server(server: PlayServer):
    """The uvicorn server of a PlayServer's app (run it with `.run(sockets=[bind(port)])`)."""
    import uvicorn

    # players stream until their tab closes: on Ctrl-C, uvicorn cancels them after a second
    return uvicorn.Server(uvicorn.Config(server.app(), log_level="warning", lifespan="off", ws="auto",
                                         ws_max_size=MAX_FRAME_BYTES, ws_max_queue=MAX_QUEUED_INPUTS,
                                         timeout_graceful_shutdown=1))


@contextlib.contextmanager
def serving(server: PlayServer):
    """Run `server` on a free port of 127.0.0.1 in a background thread (tests, benchmarks);
    yields its WebSocket URL (with the page's token) and stops it on exit."""
    sock = server.listen(0)
    uv = uvicorn_server(server)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.01)
    try:
        yield f"ws://{HOST}:{server.port}/ws?token={server.token}"
    finally:
        uv.should_exit = True
        thread.join(10)
        server.worker.shutdown()
        sock.close()


def serve(source: FrameSource, port: int = 8765, seed: int = 0, fps: float = 15.0,
          allow_origins: list[str] | tuple[str, ...] = ()) -> None:
    """Serve the page for `source` on 127.0.0.1:port until interrupted (Ctrl-C)."""
    server = PlayServer(source, seed, fps, allow_origins)
    sock = server.listen(port)
    url = f"http://{HOST}:{server.port}/"
    print(f"resforce play: {url}  ({source.description}; Ctrl-C to stop)", flush=True)
    try:
        uvicorn_server(server).run(sockets=[sock])
    finally:
        server.worker.shutdown(wait=False, cancel_futures=True)
        sock.close()
        sys.stdout.flush()
