"""What a hostile or broken client can cost a real API process (uvicorn, started as `heatwatch
api`): request heads are bounded (431 before the whole head is read), unknown tokens are never
cached, and an address that keeps failing authentication is answered 429 with Retry-After
while valid tokens keep working. Memory is measured as the process's RSS."""

from __future__ import annotations

import secrets
import select
import socket
from pathlib import Path

import httpx
import yaml

from alerting.registry import SiteRegistry
from api.auth import CACHE_S, TokenCache
from api.limits import MAX_HEAD_BYTES
from heatwatch.devstack import free_port
from tests.conftest import Processes, wait_for


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _raw(port: int, head: bytes, source: str = "127.0.0.1", wait_s: float = 0.0) -> tuple[int, int]:
    """Send a request head in 64 KiB pieces, waiting up to ``wait_s`` after each for an answer;
    (the status answered, the bytes sent before it came)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        sent = 0
        try:
            for i in range(0, len(head), 65536):
                if wait_s and select.select([s], [], [], wait_s)[0]:
                    break  # answered already
                s.sendall(head[i:i + 65536])
                sent += len(head[i:i + 65536])
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end: what we want to see
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    assert data.startswith(b"HTTP/1.1 "), data[:100]
    return int(data[9:12]), sent


def test_bad_tokens_and_huge_headers_cost_a_real_api_process_bounded_memory(
        tmp_path: Path, procs: Processes) -> None:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'alerts.sqlite'}"
    registry = SiteRegistry(url).open()
    good = registry.add_token(name="disp-1", role="dispatcher", actor="test", now=0)
    cfg = tmp_path / "api.yaml"
    cfg.write_text(yaml.safe_dump({"kind": "api", "listen": {"port": port}, "store": url, "workers": 1,
                                   "influx": {"url": f"http://127.0.0.1:{free_port()}"}}))
    api = procs.start("api", "api", str(cfg))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(base), 120, "the API")
    ok = {"Authorization": f"Bearer {good}"}
    with httpx.Client(base_url=base, timeout=10) as c:
        for _ in range(200):  # warm: imports, caches, the store's pool
            assert c.get("/v1/alerts", headers=ok).status_code == 200
        rss0 = _rss_mb(api.pid)

        # 1 MB headers: refused with 431 long before the megabyte is read
        head = (b"GET /v1/alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + secrets.token_hex(512 * 1024).encode() + b"\r\n\r\n")
        assert _raw(port, head, wait_s=1.0) == (431, 65536)  # answered after the first piece
        for i in range(300):
            head = (b"GET /v1/alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                    + secrets.token_hex(512 * 1024).encode() + b"\r\n\r\n")
            assert _raw(port, head)[0] == 431, i
        # a head just under the bound still gets an answer from the app
        token = "x" * (MAX_HEAD_BYTES - 200)
        assert _raw(port, f"GET /v1/alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}"
                          "\r\n\r\n".encode())[0] == 401

        # random bad tokens from 60 addresses: each address gets its burst of 401s, then 429
        answers: dict[int, int] = {}
        for n in range(60):
            source = f"127.0.{n // 200 + 1}.{n % 200 + 2}"
            with httpx.Client(base_url=base, timeout=10,
                              transport=httpx.HTTPTransport(local_address=source)) as cc:
                for _ in range(30):
                    bad = {"Authorization": "Bearer hw_" + secrets.token_urlsafe(6000)}
                    r = cc.get("/v1/alerts", headers=bad)
                    answers[r.status_code] = answers.get(r.status_code, 0) + 1
                    if r.status_code == 429:
                        assert int(r.headers["Retry-After"]) >= 1
                # the dispatcher behind the same address is not locked out
                assert cc.get("/v1/alerts", headers=ok).status_code == 200
        assert answers == {401: 60 * 10, 429: 60 * 20}
        r = c.get("/v1/alerts", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
        rss1 = _rss_mb(api.pid)
    # measured here: 93.5 → 93.7 MB; before the fix the 1 MB tokens alone took it from 93 to 398 MB
    assert rss1 - rss0 < 25, (rss0, rss1)
    assert "Traceback" not in procs.log("api")
    registry.close()


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_token_cache_keeps_only_valid_tokens(tmp_path: Path) -> None:
    import asyncio

    registry = SiteRegistry(f"sqlite:///{tmp_path / 'alerts.sqlite'}").open()
    good = registry.add_token(name="disp-1", role="dispatcher", actor="test", now=0)
    now = [1000.0]
    cache = TokenCache(registry, clock=lambda: now[0])

    async def run() -> None:
        unknown = ["hw_" + secrets.token_urlsafe(32) for _ in range(500)]
        for t in unknown:
            assert await cache.lookup(t) is None
        assert not any(cache.known(t) for t in unknown)  # nothing kept of them
        p = await cache.lookup(good)
        assert p is not None and p.name == "disp-1" and cache.known(good)
        registry.revoke_tokens(name="disp-1", actor="test", now=1)
        now[0] += CACHE_S - 1
        assert await cache.lookup(good) == p  # still cached: a revocation elsewhere takes up to 30 s
        now[0] += 1
        assert await cache.lookup(good) is None
        assert not cache.known(good)

    asyncio.run(run())
    registry.close()
