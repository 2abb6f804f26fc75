"""What the benchmarks measure a process by: CPU and memory from /proc, percentiles, and the
counters a heatwatch process exposes on /metrics. Imported by the bench scripts (run from the
repository root as ``python bench/NAME.py``, so this folder is on their path)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx


def proc_cpu_s(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of ``pid`` (and, with ``children``, of the processes it started,
    e.g. uvicorn's workers)."""
    total = 0.0
    stats = Path("/proc").glob("[0-9]*/stat") if children else [Path(f"/proc/{pid}/stat")]
    for stat in stats:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # a process that ended while we looked
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def proc_cpu_split_s(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def proc_mem_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")


def scrape(port: int) -> dict[str, float]:
    """Every sample on a Prometheus /metrics page: series (name with labels) → value."""
    out: dict[str, float] = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


class ModbusCounter:
    """A Modbus TCP proxy on its own thread that counts the requests crossing it (by the MBAP
    header's length field), so two clients' request counts are compared on the wire. Its CPU is
    the benchmark's own, never the measured process's."""

    def __init__(self, upstream_port: int, listen_port: int) -> None:
        import threading

        self.requests = 0
        self.port, self.upstream = listen_port, upstream_port
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve() -> None:
            await asyncio.start_server(self._client, "127.0.0.1", listen_port)
            ready.set()

        threading.Thread(target=self.loop.run_forever, daemon=True, name="modbus-counter").start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop)
        ready.wait(5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import contextlib

        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def answers() -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await up_r.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        task = asyncio.create_task(answers())
        try:
            while True:
                head = await reader.readexactly(6)  # transaction, protocol, length
                body = await reader.readexactly(int.from_bytes(head[4:6], "big"))
                self.requests += 1
                up_w.write(head + body)
                await up_w.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            up_w.close()
            task.cancel()
