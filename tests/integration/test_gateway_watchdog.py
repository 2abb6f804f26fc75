"""The gateway under systemd's watchdog: WATCHDOG=1 on a NOTIFY_SOCKET while it polls the
simulator, and silence once a poll loop hangs (systemd then restarts it)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.config import GatewayConfig
from gateway import watchdog
from gateway.app import Gateway
from gateway.modbus import Answer, Device
from heatwatch.devstack import SimThread
from tests.conftest import Processes, wait_for


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    yield path, s
    s.close()


def recv_until(s: socket.socket, deadline_s: float) -> list[tuple[float, bytes]]:
    """Everything that arrives within ``deadline_s`` seconds, with its arrival time."""
    out = []
    end = time.monotonic() + deadline_s
    while (left := end - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            out.append((time.monotonic(), s.recv(256)))
        except TimeoutError:
            break
    return out


def test_the_gateway_process_notifies_systemd(station_config: GatewayConfig, simulator: SimThread,
                                              procs: Processes, notify_socket: tuple[str, socket.socket],
                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path, s = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    procs.start("gw", "gateway", str(tmp_path / "gw" / "st001.yaml"))
    s.settimeout(30)
    assert s.recv(256) == b"READY=1"
    got = recv_until(s, 3.5)  # poll groups every 1 s and 2 s: a ping after each cycle
    assert len([m for _, m in got if m == b"WATCHDOG=1"]) >= 3, got


def test_a_hung_poll_loop_stops_the_pings(station_config: GatewayConfig, simulator: SimThread,
                                          notify_socket: tuple[str, socket.socket],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """One poll group's read never returns (a stuck await: a lock never released, a library
    bug); the other groups go on polling, but the pings stop, so systemd restarts the gateway."""
    path, s = notify_socket
    monkeypatch.setattr(watchdog, "GRACE_S", 1.0)
    monkeypatch.setattr(watchdog, "_process", watchdog.Watchdog(path))
    hang = threading.Event()
    forever = None
    real_read = Device.read_group

    async def read_group(self: Device, group: str) -> list[Answer]:
        nonlocal forever
        if group == "slow" and hang.is_set():
            forever = forever or asyncio.Event()
            await forever.wait()
        return await real_read(self, group)

    monkeypatch.setattr(Device, "read_group", read_group)
    loop = asyncio.new_event_loop()
    gw: list[Gateway] = []

    async def run() -> None:
        gw.append(Gateway(station_config))
        await gw[0].run()

    task = loop.create_task(run())

    def main() -> None:
        with contextlib.suppress(BaseException):  # the cancellation that ends the test
            loop.run_until_complete(task)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    try:
        s.settimeout(30)
        assert s.recv(256) == b"READY=1"
        assert b"WATCHDOG=1" in [m for _, m in recv_until(s, 3)]
        hang.set()
        at = time.monotonic()
        # the slow loop (2 s) counts as stuck 2 × 2 s + GRACE_S after its last cycle
        got = recv_until(s, 9)
        pings = [t - at for t, m in got if m == b"WATCHDOG=1"]
        assert pings and max(pings) < 2 * 2 + 1 + 2.5, pings  # they stop...
        assert not [t for t in pings if t > max(pings) + 0.01]
        stopped = gw[0].messages
        wait_for(lambda: gw[0].messages > stopped + 2, 10, "the other poll groups still polling")
        assert recv_until(s, 1.5) == []  # ...and stay stopped while the rest of the gateway runs
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10)
