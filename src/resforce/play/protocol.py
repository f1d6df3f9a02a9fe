"""The play page's protocol: the frame header the server sends, the messages the page sends
(checked: `parse_message`), and the player's controls a frame is made from (`Controls`)."""

from __future__ import annotations

import json
import struct
import asyncio
from collections import deque

HEADER = struct.Struct("<IIiIf")
"""episode, frame index in the episode, action (-1: reset frame), input seq, step ms."""
RESET_ACTION = -1
MAX_QUEUED_INPUTS = 8
"""Inputs waiting for a frame; beyond this the oldest are dropped (bounded latency and memory)."""
MAX_MESSAGE_BYTES = 1024
"""A page message is a few dozen bytes; a longer text is answered with an error and dropped."""
MAX_FRAME_BYTES = 64 * 1024
"""Above this, the WebSocket layer closes the connection with 1009 (message too big) before
reading it into memory."""
MAX_SEQ = 2 ** 32 - 1
"""An input's seq travels back as a u32 in each frame's header."""


class Controls:
    """What the page asked for, read by the frame loop of one connection.

    Every press is applied to at least one frame, in order (a tap shorter than a frame is not
    lost); a held key keeps being applied until the page sends its release."""

    def __init__(self, default_action: int) -> None:
        self.held = default_action
        self.inputs: deque[tuple[int, int]] = deque(maxlen=MAX_QUEUED_INPUTS)
        self.seq = 0
        """The last input the frames reflect (echoed in the header: the page measures latency)."""
        self.reset_seed: int | None = None
        self.paused = False
        self.stopped = False
        self.taken_over = False
        self.failure: str | None = None
        """Why the session ended on the server's side (the page is told, with code 1011)."""
        self.wake = asyncio.Event()

    def next_action(self) -> tuple[int, int]:
        if self.inputs:
            self.held, self.seq = self.inputs.popleft()
        return self.held, self.seq

    def stop(self, taken_over: bool = False) -> None:
        self.stopped, self.taken_over = True, self.taken_over or taken_over
        self.wake.set()


def _short(value) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


def parse_message(text, space) -> dict:
    """One message of the page, checked: {"type": "action", "action": name or index, "seq": n},
    {"type": "reset", "seed": n} or {"type": "pause", "paused": bool}. ValueError otherwise
    (binary, longer than MAX_MESSAGE_BYTES, nested, not JSON, out of range)."""
    if not isinstance(text, str):
        raise ValueError("binary messages are not understood: send JSON text, e.g. "
                         '{"type": "action", "action": "left", "seq": 1}')
    if len(text) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {len(text)} characters: at most {MAX_MESSAGE_BYTES} expected")
    try:
        msg = json.loads(text)
    except RecursionError:
        raise ValueError("message nested too deeply: expected a flat JSON object") from None
    except ValueError as e:  # JSONDecodeError, and ints past Python's digit limit
        raise ValueError(f"not JSON: {e}") from None
    kind = msg.get("type") if isinstance(msg, dict) else None
    if kind == "action":
        seq = msg.get("seq", 0)
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
            raise ValueError(f"action message: seq must be an integer in [0, 2^32), got {_short(seq)}")
        a = msg.get("action")
        if not isinstance(a, (str, int)) or isinstance(a, bool) or (isinstance(a, int) and not 0 <= a < space.n):
            raise ValueError(f"action message: action must be a name of {space.names} or an index in [0, {space.n}), got {_short(a)}")
        return {"type": "action", "action": space.index(a), "seq": seq}
    if kind == "reset":
        seed = msg.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 32:
            raise ValueError(f"reset message: seed must be an integer in [0, 2^32), got {_short(seed)}")
        return {"type": "reset", "seed": seed}
    if kind == "pause":
        paused = msg.get("paused")
        if not isinstance(paused, bool):
            raise ValueError(f"pause message: paused must be true or false, got {_short(paused)}")
        return {"type": "pause", "paused": paused}
    raise ValueError(f"unknown message type {_short(kind)} (expected action, reset or pause)")
