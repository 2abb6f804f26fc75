"""systemd's watchdog for the gateway, over the ``NOTIFY_SOCKET`` datagram socket (sd_notify's
protocol, a few lines: no libsystemd, no dependency).

Each poll loop reports a finished cycle with ``beat(loop, interval_s)``. The first beat sends
``READY=1`` (``Type=notify``: the unit is up once the gateway has polled). Every beat sends
``WATCHDOG=1`` while *every* loop seen so far has finished a cycle within ``2 × interval + GRACE_S``
— so a stuck loop stops the pings even while the process's other loops keep going, and systemd
restarts the gateway ``WatchdogSec`` later. A blocked event loop stops them at once.

Without ``NOTIFY_SOCKET`` (not under systemd, or no ``NotifyAccess``) beats cost a dict update.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

# a cycle may run over its interval by this much before its loop counts as stuck: a cycle whose
# devices all time out (timeout_s up to 30 s, devices of one RS-485 bus read one after another)
GRACE_S = 30.0


class Watchdog:
    def __init__(self, address: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.address: str | None = None
        if address:
            # "@name" is an abstract socket: a leading NUL byte instead of the "@"
            self.address = "\0" + address[1:] if address.startswith("@") else address
        self.sock: socket.socket | None = None
        self.loops: dict[str, tuple[float, float]] = {}  # loop → (last finished cycle, allowed gap)
        self.ready = False
        self.sent = 0

    def stale(self, now: float) -> list[str]:
        return [k for k, (t, gap) in self.loops.items() if now - t > gap]

    def beat(self, loop: str, interval_s: float) -> None:
        now = self.clock()
        self.loops[loop] = (now, 2 * interval_s + GRACE_S)
        if self.address is None:
            return
        if not self.ready:
            self.ready = self._send(b"READY=1")
        if not self.stale(now):
            self._send(b"WATCHDOG=1")

    def _send(self, msg: bytes) -> bool:
        assert self.address is not None
        try:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # never block the event loop: a full queue (max_dgram_qlen, 10 here) means the
                # reader is behind, and this ping can be dropped; the next beat sends another
                self.sock.setblocking(False)
            self.sock.sendto(msg, self.address)
        except OSError:  # BlockingIOError too
            return False  # systemd gone or not listening: the watchdog is its business, not ours
        self.sent += 1
        return True


_process: Watchdog | None = None


def beat(loop: str, interval_s: float) -> None:
    """A poll loop finished a cycle (the one hook in gateway/app.py). One watchdog per process:
    a process polling several stations is restarted if any of their loops is stuck."""
    global _process
    if _process is None:
        _process = Watchdog(os.environ.get("NOTIFY_SOCKET"))
    _process.beat(loop, interval_s)
