"""The tests' WebSocket client for `resforce play`: websockets' sync client that never stops
reading. With frames streaming at --fps 0, websockets pauses reading once 16 messages lie
unread; a test that then leaves its `with connect(...)` sends its close frame but never reads
the server's answer behind the queued frames, and close() waits its 10 s timeout. A browser
tab reads every frame, so this is the client's artifact, not the server's."""

from websockets.sync.client import connect as _connect


def connect(url: str, **kw):
    return _connect(url, max_queue=None, **kw)
