"""The gateway's systemd watchdog (gateway/watchdog.py) on a real datagram socket, with a fake
clock: READY=1 once, WATCHDOG=1 while every poll loop keeps its pace, silence when one stalls."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.watchdog import GRACE_S, Watchdog


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)
    yield path, s
    s.close()


def received(s: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(s.recv(256))
        except BlockingIOError:
            return out


def test_pings_while_every_loop_keeps_its_pace(notify: tuple[str, socket.socket]) -> None:
    path, s = notify
    now = [1000.0]
    w = Watchdog(path, clock=lambda: now[0])
    w.beat("st001/fast", 5)
    assert received(s) == [b"READY=1", b"WATCHDOG=1"]
    for _ in range(3):
        now[0] += 5
        w.beat("st001/fast", 5)
        w.beat("st001/slow", 60)
    assert received(s) == [b"WATCHDOG=1"] * 6
    # the slow loop stops finishing cycles; the fast one goes on
    pings = []
    for _ in range(40):
        now[0] += 5
        w.beat("st001/fast", 5)
        pings += received(s)  # as systemd does: the queue holds max_dgram_qlen datagrams
    stuck_after = 2 * 60 + GRACE_S
    assert len(pings) == int(stuck_after // 5) and w.stale(now[0]) == ["st001/slow"]
    # it finishes a cycle again: pings resume
    w.beat("st001/slow", 60)
    assert received(s) == [b"WATCHDOG=1"]


def test_abstract_socket_and_no_socket(tmp_path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0heatwatch-test-notify-" + tmp_path.name)
    s.settimeout(5)
    try:
        Watchdog("@heatwatch-test-notify-" + tmp_path.name).beat("a", 1)
        assert s.recv(64) == b"READY=1"
    finally:
        s.close()
    quiet = Watchdog(None)
    quiet.beat("a", 1)  # not under systemd: nothing sent, nothing raised
    assert quiet.sent == 0
    gone = Watchdog(str(tmp_path / "nobody-listens"))
    gone.beat("a", 1)  # systemd went away: the gateway keeps polling
    assert gone.sent == 0 and not gone.ready


def test_a_reader_that_falls_behind_never_blocks_the_gateway(notify: tuple[str, socket.socket]) -> None:
    path, s = notify
    w = Watchdog(path)
    for _ in range(2000):  # far past the socket's queue: pings are dropped, beat() returns
        w.beat("a", 1)
    assert 0 < len(received(s)) < 2000
