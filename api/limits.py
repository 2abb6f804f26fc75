"""What a caller may cost the API before it is turned away: the size of a request's head, and
(``FailedAuth``) how often one client address may present a credential that does not work.

uvicorn's httptools protocol has no limit on the request line and headers (uvicorn 0.54 offers
``h11_max_incomplete_event_size`` only for its h11 protocol, which costs more CPU per request):
a 1 MB ``Authorization`` header was parsed, handed to the app and cached. ``HeadLimitedProtocol``
counts what arrives before the end of the headers and answers 431 once a head passes
``MAX_HEAD_BYTES``, without waiting for the rest; the h11 fallback gets the same bound through
``h11_max_incomplete_event_size`` (it answers 400, the only refusal uvicorn's h11 code has).
"""

from __future__ import annotations

import math
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# A request line plus every header. Ours are small (a bearer token is 46 bytes); a browser on
# /docs sends well under 2 KB. 16 KiB is h11's own default and twice nginx's per-line buffer.
MAX_HEAD_BYTES = 16 * 1024


class HeadLimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering 431 to a request head over ``MAX_HEAD_BYTES``.

    Bytes are counted as they arrive while a head is open (from the start of a message to its
    end of headers), so a 1 MB header is refused after the first read past the limit (a read is
    at most 256 KiB), not buffered whole. A body in the same read as the end of the head does
    not count: the check runs after the parser had its chance to finish the head."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head: int | None = 0  # bytes of the open head; None between end of head and next message

    def data_received(self, data: bytes) -> None:
        if self._head is not None:
            self._head += len(data)
        super().data_received(data)
        if self._head is not None and self._head > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head is None:
            self._head = 0

    def on_headers_complete(self) -> None:
        self._head = None
        super().on_headers_complete()

    def _refuse(self) -> None:
        msg = f"request line and headers over {MAX_HEAD_BYTES} bytes".encode()
        content = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: " + str(len(msg)).encode() + b"\r\n",
                        b"connection: close\r\n\r\n", msg])
        self.transport.write(b"".join(content))
        self.transport.close()
        self._head = None


class FailedAuth:
    """A token bucket of failed authentications per client address.

    Each address may fail ``burst`` times at once, then once every ``1 / rate`` seconds; past
    that, a request with an unknown credential is answered 429 with Retry-After before the
    credential is looked up (no hash, no store query). At most ``max_clients`` addresses are
    tracked: when full, addresses whose bucket has refilled are forgotten first (they are as
    if never seen), then the least recently failing. Per process: with several workers each
    has its own buckets, so a client gets up to ``workers`` times the burst.
    """

    def __init__(self, *, burst: int = 10, rate: float = 0.2, max_clients: int = 4096) -> None:
        self.burst, self.rate, self.max_clients = float(burst), rate, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # address → (tokens, at), oldest first

    def _level(self, client: str, now: float) -> float:
        hit = self._buckets.get(client)
        if hit is None:
            return self.burst
        tokens, at = hit
        return min(self.burst, tokens + (now - at) * self.rate)

    def retry_after(self, client: str, now: float | None = None) -> int:
        """0 if ``client`` may try a credential now, else the seconds until it may."""
        now = time.monotonic() if now is None else now
        level = self._level(client, now)
        return 0 if level >= 1 else max(1, math.ceil((1 - level) / self.rate))

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        level = self._level(client, now) - 1
        self._buckets.pop(client, None)
        if len(self._buckets) >= self.max_clients:
            self._evict(now)
        self._buckets[client] = (max(0.0, level), now)

    def _evict(self, now: float) -> None:
        full = [c for c, (tokens, at) in self._buckets.items()
                if tokens + (now - at) * self.rate >= self.burst]
        for c in full:
            del self._buckets[c]
        while len(self._buckets) >= self.max_clients:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)
