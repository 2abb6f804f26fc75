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


def test_a_receipt_deletes_exactly_its_boots_seqs(tmp_path: Path) -> None:
    o = DiskQueue(tmp_path / "o.sqlite", max_bytes=10**8, max_age_s=3600)
    a = [o.append("t", b"a%d" % i, boot="aaaa0001", seq=i) for i in range(10)]
    b = [o.append("t", b"b%d" % i, boot="bbbb0002", seq=i) for i in range(10)]
    result = o.append("r", b"result")  # no boot: confirmed by its PUBACK, never by a receipt
    assert o.receipted("aaaa0001", [(0, 2), (5, 5), (8, 20)]) == [a[0], a[1], a[2], a[5], a[8], a[9]]
    assert o.receipted("cccc0003", [(0, 100)]) == []  # a boot it never had
    left = o.fetch_after(0, 100)
    assert [r.id for r in left] == [a[3], a[4], a[6], a[7], *b, result]
    assert (o.count, o.bytes) == (len(left), sum(len(r.payload) for r in left))
    assert {(r.boot, r.seq) for r in left if r.key == "t"} >= {("aaaa0001", 3), ("bbbb0002", 0)}
    again = DiskQueue(tmp_path / "o.sqlite", max_bytes=10**8, max_age_s=3600)  # a restart
    assert again.receipted("bbbb0002", [(0, 9)]) == b


def test_requeue_moves_tracked_rows_to_the_tail_unchanged(tmp_path: Path) -> None:
    o = DiskQueue(tmp_path / "o.sqlite", max_bytes=10**8, max_age_s=3600)
    ids = [o.append("t", b"m%d" % i, created_ms=1000 + i, boot="aaaa0001", seq=i) for i in range(6)]
    result = o.append("r", b"result", created_ms=2000)
    assert o.requeue(ids[2]) == 3
    rows = o.fetch_after(0, 100)
    assert [r.payload for r in rows] == [b"m3", b"m4", b"m5", b"result", b"m0", b"m1", b"m2"]
    moved = rows[-3:]
    assert all(r.id > result for r in moved)
    assert [(r.created_ms, r.boot, r.seq) for r in moved] == [(1000, "aaaa0001", 0), (1001, "aaaa0001", 1),
                                                              (1002, "aaaa0001", 2)]
    assert o.requeue(ids[2]) == 0  # nothing left at or below it
    assert (o.count, o.bytes) == (7, sum(len(r.payload) for r in rows))
    assert o.count_tracked(result) == 3 and o.count_tracked(10**9) == 6


def test_an_outbox_written_before_receipts_opens_with_its_rows(tmp_path: Path) -> None:
    import sqlite3
    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.executescript("CREATE TABLE queue (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, "
                     "payload BLOB NOT NULL, created_ms INTEGER NOT NULL);"
                     "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
                     "INSERT INTO queue (key, payload, created_ms) VALUES ('t', x'01', 5);")
    db.close()
    o = DiskQueue(tmp_path / "old.sqlite", max_bytes=10**8, max_age_s=3600)
    assert [(r.payload, r.boot, r.seq) for r in o.fetch_after(0, 10)] == [(b"\x01", None, None)]
    new = o.append("t", b"x", boot="aaaa0001", seq=0)
    assert o.receipted("aaaa0001", [(0, 0)]) == [new] and o.count == 1
