"""mosquitto and influxd as child processes on loopback, for `heatwatch demo` and the tests.

Each takes a folder for its config and data and a port; the shipped configs under deploy/ are
the base, so the tests exercise what a site deploys. A missing binary raises with the command
that installs it.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


class MissingBinary(RuntimeError):
    pass


def find_binary(name: str, package: str) -> str:
    for cand in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise MissingBinary(f"{name} is not installed: run `sudo apt-get install -y {package}` "
                        "(or `make bootstrap`, which does it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_until(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(pred) and pred():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


class _Service:
    name = "service"

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / f"{self.name}.log"

    def _cmd(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        return port_open(self.port)

    def start(self, timeout: float = 30) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._cmd(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            wait_until(lambda: self._ready() or (self.proc is not None and self.proc.poll() is not None),
                       timeout, self.name)
        except TimeoutError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited at start (code {self.proc.returncode}):\n{tail}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class Mosquitto(_Service):
    name = "mosquitto"

    def __init__(self, folder: Path, port: int) -> None:
        super().__init__(folder, port)
        self.binary = find_binary("mosquitto", "mosquitto")
        (folder / "data").mkdir(exist_ok=True)
        conf = folder / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence_location {folder / 'data'}/\n"
            # run as whoever owns the folder: started as root, mosquitto would otherwise drop to
            # user "mosquitto", fail to write its database, and lose every session on restart
            f"user {getpass.getuser()}\n"
            + (DEPLOY / "mosquitto" / "heatwatch.conf").read_text()
        )
        self.conf = conf

    def _cmd(self) -> list[str]:
        return [self.binary, "-c", str(self.conf)]


class Influxd(_Service):
    name = "influxd"

    def __init__(self, folder: Path, port: int, rpc_port: int | None = None) -> None:
        super().__init__(folder, port)
        self.binary = find_binary("influxd", "influxdb")
        text = (DEPLOY / "influxdb" / "influxdb.conf.template").read_text()
        for k, v in {"DIR": str(folder), "HTTP_PORT": str(port),
                     "RPC_PORT": str(rpc_port or free_port())}.items():
            text = text.replace("${" + k + "}", v)
        self.conf = folder / "influxdb.conf"
        self.conf.write_text(text)
        self.url = f"http://127.0.0.1:{port}"

    def _cmd(self) -> list[str]:
        return [self.binary, "-config", str(self.conf)]

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/ping", timeout=0.5).status_code == 204
        except httpx.HTTPError:
            return False


class Postgres(_Service):
    """A throwaway PostgreSQL cluster (trust auth, loopback only) in a temporary folder.

    PostgreSQL refuses to run as root; as root the cluster runs as the ``postgres`` user the
    Debian package creates, in a folder under /tmp that user owns.
    """

    name = "postgres"

    def __init__(self, port: int) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise MissingBinary("PostgreSQL is not installed: run `sudo apt-get install -y postgresql` "
                                "(or `make bootstrap`, which does it)")
        self.bindir = Path(bins[-1]).parent
        self.as_root = os.geteuid() == 0
        folder = Path(tempfile.mkdtemp(prefix="heatwatch-pg-"))
        super().__init__(folder, port)
        self.data = folder / "data"
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(folder, pw.pw_uid, pw.pw_gid)
            os.chown(self.log_path.parent, pw.pw_uid, pw.pw_gid)
        subprocess.run(self._as_owner([str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                                       "-U", "postgres", "--no-sync", "-E", "UTF8"]),
                       check=True, capture_output=True)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def _ready(self) -> bool:
        """Accepting queries, not only the port: PostgreSQL answers "the database system is
        starting up" for a while after it listens (a test connected in that window and failed)."""
        if not port_open(self.port):
            return False
        r = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", "postgres", "-q"], check=False)
        return r.returncode == 0

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if self.as_root else cmd

    def _cmd(self) -> list[str]:
        return self._as_owner([str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                               "-k", str(self.folder), "-c", "listen_addresses=127.0.0.1",
                               "-c", "fsync=off"])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15, *, keep: bool = False) -> None:
        """Stop the server and remove its cluster, or (``keep``) leave the cluster for ``start``
        again: a database outage. SIGTERM waits for every client to disconnect ("smart"
        shutdown); SIGINT ends their sessions ("fast"), as a crash or a restart looks to them.

        The signal goes to the postmaster itself (its pid is the first line of postmaster.pid):
        as root the child process is ``runuser``, which passed SIGINT on to nobody — the stop
        waited out its timeout, killed runuser and left PostgreSQL running, port and all."""
        if self.as_root and self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int((self.data / "postmaster.pid").read_text().split()[0]), sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout)  # runuser ends with the server
        super().stop(sig, timeout)
        if not keep:
            shutil.rmtree(self.folder, ignore_errors=True)


class NullModem:
    """Two serial ports joined by a cable: a pair of pseudo-terminals whose bytes are relayed.

    Each end is a real tty (/dev/pts/N) that pyserial opens like /dev/ttyUSB0, so the gateway's
    RTU client and the simulator's RTU server talk through the kernel's tty layer, framing and
    CRCs included. ``bytes`` counts what crossed the cable.
    """

    def __init__(self) -> None:
        import threading
        import tty

        self._fds: list[int] = []
        ends: list[tuple[int, str]] = []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(slave)
            self._fds += [master, slave]  # the slave stays open here: no hang-up when a user closes
            ends.append((master, os.ttyname(slave)))
        (self._a, self.a), (self._b, self.b) = ends
        self.bytes = 0
        self._stop = False
        self._thread = threading.Thread(target=self._relay, daemon=True, name="null-modem")
        self._thread.start()

    def _relay(self) -> None:
        import select

        peer = {self._a: self._b, self._b: self._a}
        while not self._stop:
            ready, _, _ = select.select(list(peer), [], [], 0.2)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                self.bytes += len(data)
                os.write(peer[fd], data)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class SimThread:
    """The simulator on its own event loop in a background thread (tests and benchmarks).

    ``call(fn, *args)`` runs a function on the simulator's loop and returns its result, so
    tests can pause the clock, read what is served, or add events safely.
    """

    def __init__(self, configs: list[object], **kwargs: object) -> None:
        import asyncio
        import threading

        from simulator.server import Simulator

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="simulator")
        self._thread.start()

        async def make() -> Simulator:
            return Simulator(configs, **kwargs)  # type: ignore[arg-type]

        self.sim = asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)
        self._task = asyncio.run_coroutine_threadsafe(self.sim.run(), self.loop)
        ports = {(d.host, d.port) for c in configs for d in c.resolved  # type: ignore[attr-defined]
                 if d.host is not None}
        wait_until(lambda: all(port_open(p, h) for h, p in ports), 10, "simulator")

    def call(self, fn: object, *args: object) -> object:
        import asyncio

        async def run() -> object:
            return fn(*args)  # type: ignore[operator]

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self) -> None:
        import asyncio

        async def cancel() -> None:
            task = asyncio.wrap_future(self._task)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self.sim.stop()

        asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
