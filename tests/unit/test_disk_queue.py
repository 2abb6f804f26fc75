"""The outbox on a real SQLite file: durable across reopen, bounded, drops counted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from durable.queue import DiskQueue
from gateway.publisher import mark_backfill


def test_rows_survive_a_killed_writer(tmp_path: Path) -> None:
    db = tmp_path / "o.sqlite"
    code = (f"from durable.queue import DiskQueue\nimport os\n"
            f"o = DiskQueue({str(db)!r}, max_bytes=10**8, max_age_s=3600)\n"
            "for i in range(500): o.append('t', b'x' * 100)\n"
            "os.kill(os.getpid(), 9)\n")
    p = subprocess.run([sys.executable, "-c", code], check=False, cwd=Path(__file__).parents[2])
    assert p.returncode == -9
    o = DiskQueue(db, max_bytes=10**8, max_age_s=3600)
    rows = o.fetch_after(0, 1000)
    assert len(rows) == 500 and o.count == 500 and o.bytes == 50_000
    assert [r.id for r in rows] == sorted(r.id for r in rows)


def test_delete_and_fetch_order(tmp_path: Path) -> None:
    o = DiskQueue(tmp_path / "o.sqlite", max_bytes=10**8, max_age_s=3600)
    ids = [o.append("t", f"m{i}".encode()) for i in range(10)]
    o.delete(ids[:3])
    assert [r.payload for r in o.fetch_after(0, 3)] == [b"m3", b"m4", b"m5"]
    assert [r.payload for r in o.fetch_after(ids[5], 100)] == [b"m6", b"m7", b"m8", b"m9"]
    assert o.count == 7


def test_byte_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    o = DiskQueue(tmp_path / "o.sqlite", max_bytes=1024 * 1024, max_age_s=3600)
    for i in range(30):
        o.append("t", bytes([i]) * 100_000)
    assert o.bytes <= 1024 * 1024
    kept = o.fetch_after(0, 100)
    assert o.dropped == 30 - len(kept) > 0
    assert kept[-1].payload[0] == 29 and kept[0].payload[0] == 30 - len(kept)  # oldest went first
    again = DiskQueue(tmp_path / "o.sqlite", max_bytes=1024 * 1024, max_age_s=3600)
    assert again.dropped == o.dropped  # the count survives restarts


def test_age_bound(tmp_path: Path) -> None:
    o = DiskQueue(tmp_path / "o.sqlite", max_bytes=10**8, max_age_s=60)
    o.append("t", b"old", created_ms=1_000)
    o.append("t", b"new", created_ms=200_000)
    assert o.expire(now_ms=100_000) == 1
    assert [r.payload for r in o.fetch_after(0, 10)] == [b"new"]
    assert o.dropped == 1


def test_backfill_mark_touches_only_the_envelope() -> None:
    raw = b'{"schema":1,"backfill":false,"values":[{"point":"x_a","value":"\\"backfill\\":false"}]}'
    assert mark_backfill(raw) == raw.replace(b'"backfill":false', b'"backfill":true', 1)
    assert mark_backfill(raw).count(b"false") == 1
