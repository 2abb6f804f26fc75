"""A durable FIFO on disk: the gateway's outbox and the collector's spool.

SQLite in WAL mode with ``synchronous=FULL``: a row whose ``append`` returned survives
``kill -9`` and a power cut. The owner deletes a row only once its data is safe elsewhere (the
gateway once the collector receipts it, or on the broker's PUBACK where receipts are off or the
row has no sequence number; the collector once InfluxDB took the batch). The queue is bounded by
bytes and by age; when a bound is hit the oldest rows go first, and every dropped row is counted
(``dropped``, persisted across restarts) and reported, never lost silently.

Each row carries a short ``key`` (the gateway: the MQTT topic; the collector: the line count),
an opaque ``payload`` and, for a gateway's telemetry, the ``boot`` and ``seq`` it was sent
under, by which a receipt names it (contract/receipt.py), also after a restart.

Blocking: every method does disk I/O; async owners call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    key        TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    created_ms INTEGER NOT NULL,
    boot       TEXT,             -- with seq: how a receipt names the row; NULL: confirmed by PUBACK
    seq        INTEGER
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# after the columns exist (a file written before receipts gains them at open)
_INDEX = "CREATE INDEX IF NOT EXISTS queue_receipt ON queue (boot, seq) WHERE boot IS NOT NULL"
REQUEUE_CHUNK = 2000  # rows moved per transaction: a short write lock, and bounded memory


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    key: str
    payload: bytes
    created_ms: int
    boot: str | None = None
    seq: int | None = None


class QueueUnavailable(Exception):
    """The queue's file cannot be opened or created; ``reason`` says why in a few words."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def why_unopenable(path: Path, exc: BaseException) -> str:
    """A few words on why the SQLite file ``path`` could not be opened (what to fix, not SQLite's
    "unable to open database file", which names neither the file nor the cause)."""
    d = path.parent
    if not d.exists():
        return f"unable to open (directory {d} missing)"
    if not d.is_dir():
        return f"unable to open ({d} is not a directory)"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return "unable to open (no permission to read and write the file)"
    if not path.exists() and not os.access(d, os.W_OK | os.X_OK):
        return f"unable to create it (directory {d} not writable)"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"unable to open ({first[:200]})"


class DiskQueue:
    def __init__(self, path: str | Path, *, max_bytes: int, max_age_s: float) -> None:
        """Open (creating it and its directory if need be) the queue at ``path``; raises
        ``QueueUnavailable`` naming the file and the cause when that cannot be done."""
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QueueUnavailable(str(path), f"cannot create directory {p.parent} "
                                              f"({(exc.strerror or str(exc)).lower()})") from None
        self.path = str(path)
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self._lock = threading.Lock()  # one connection, used from the to_thread workers
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
                have = {r[1] for r in self._db.execute("PRAGMA table_info(queue)")}
                for col, typ in (("boot", "TEXT"), ("seq", "INTEGER")):
                    if col not in have:
                        self._db.execute(f"ALTER TABLE queue ADD COLUMN {col} {typ}")
                self._db.execute(_INDEX)
                row = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM queue").fetchone()
        except sqlite3.Error as exc:
            raise QueueUnavailable(self.path, why_unopenable(p, exc)) from None
        self.count, self.bytes = int(row[0]), int(row[1])
        self.dropped = self._counter("dropped")

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def append(self, key: str, payload: bytes, created_ms: int | None = None, *,
               boot: str | None = None, seq: int | None = None) -> int:
        """Store one row durably; return its id. Enforces the byte bound."""
        created = created_ms if created_ms is not None else int(time.time() * 1000)
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO queue (key, payload, created_ms, boot, seq) VALUES (?, ?, ?, ?, ?)",
                (key, payload, created, boot, seq))
            self.count += 1
            self.bytes += len(payload)
            if self.bytes > self.max_bytes:
                self._drop_oldest_locked()
            return int(cur.lastrowid or 0)

    def _drop_oldest_locked(self) -> None:
        target = int(self.max_bytes * 0.9)  # drop in chunks, not one row per insert
        dropped = 0
        self._db.execute("BEGIN IMMEDIATE")
        try:
            while self.bytes > target:
                rows = self._db.execute(
                    "SELECT id, LENGTH(payload) FROM queue ORDER BY id LIMIT 500").fetchall()
                if not rows:
                    break
                freed, n, cut_id = 0, 0, 0
                for rid, size in rows:
                    freed, n, cut_id = freed + int(size), n + 1, int(rid)
                    if self.bytes - freed <= target:
                        break
                self._db.execute("DELETE FROM queue WHERE id <= ?", (cut_id,))
                self.bytes -= freed
                self.count -= n
                dropped += n
            self._add_counter_locked("dropped", dropped)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.dropped += dropped

    def _add_counter_locked(self, name: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, n))

    def expire(self, now_ms: int | None = None) -> int:
        """Drop rows older than the age bound; return how many."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        cutoff = now - int(self.max_age_s * 1000)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM queue WHERE created_ms < ?",
                (cutoff,)).fetchone()
            n = int(row[0])
            if n:
                self._db.execute("DELETE FROM queue WHERE created_ms < ?", (cutoff,))
                self._add_counter_locked("dropped", n)
            self._db.execute("COMMIT")
            self.count -= n
            self.bytes -= int(row[1])
            self.dropped += n
            return n

    def fetch_after(self, after_id: int, limit: int) -> list[Row]:
        """The oldest rows with id > after_id (publish order is id order)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, key, payload, created_ms, boot, seq FROM queue WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit)).fetchall()
        return [Row(int(r[0]), str(r[1]), bytes(r[2]), int(r[3]), r[4], r[5]) for r in rows]

    def receipted(self, boot: str, ranges: Sequence[tuple[int, int]]) -> list[int]:
        """Delete the rows of ``boot`` whose seq lies in one of the inclusive ``ranges`` (a
        receipt); return their ids. Rows of another boot, and rows without one, are untouched."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids: list[int] = []
                size = 0
                for first, last in ranges:
                    for rid, n in self._db.execute(
                            "SELECT id, LENGTH(payload) FROM queue WHERE boot = ? AND seq BETWEEN ? AND ?",
                            (boot, first, last)):
                        ids.append(int(rid))
                        size += int(n)
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    self._db.execute(f"DELETE FROM queue WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.count -= len(ids)
            self.bytes -= size
        return ids

    def requeue(self, upto_id: int) -> int:
        """Move the rows with a boot and an id <= ``upto_id`` to the tail (new ids, everything
        else kept): the publisher, which sends in id order, sends them again. Returns how many
        were moved (at most ``REQUEUE_CHUNK``; call again while it returns that many)."""
        with self._lock:
            first = self._db.execute("SELECT id FROM queue WHERE boot IS NOT NULL AND id <= ? "
                                     "ORDER BY id LIMIT 1 OFFSET ?", (upto_id, REQUEUE_CHUNK - 1)).fetchone()
            cut = upto_id if first is None else int(first[0])
            if self._db.execute("SELECT 1 FROM queue WHERE boot IS NOT NULL AND id <= ? LIMIT 1",
                                (cut,)).fetchone() is None:
                return 0  # the usual answer: a read, no write transaction
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "INSERT INTO queue (key, payload, created_ms, boot, seq) "
                    "SELECT key, payload, created_ms, boot, seq FROM queue "
                    "WHERE boot IS NOT NULL AND id <= ? ORDER BY id", (cut,))
                moved = cur.rowcount
                self._db.execute("DELETE FROM queue WHERE boot IS NOT NULL AND id <= ?", (cut,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return int(moved)

    def count_tracked(self, upto_id: int) -> int:
        """Rows with a boot (confirmed by receipt) and an id <= ``upto_id``; safe from another
        thread (a metrics scrape): one range scan of the primary key."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM queue WHERE id <= ? AND boot IS NOT NULL",
                                   (upto_id,)).fetchone()
        return int(row[0])

    def oldest_ms(self) -> int | None:
        """When the oldest row was created (None when empty): how late the queue runs. One
        primary-key lookup; safe from another thread (a metrics scrape)."""
        with self._lock:
            row = self._db.execute("SELECT created_ms FROM queue ORDER BY id LIMIT 1").fetchone()
        return int(row[0]) if row else None

    def delete(self, ids: list[int]) -> None:
        """The broker confirmed these; forget them."""
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            gone = 0
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                row = self._db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM queue WHERE id IN ({marks})",
                    chunk).fetchone()
                self._db.execute(f"DELETE FROM queue WHERE id IN ({marks})", chunk)
                gone += int(row[0])
                self.bytes -= int(row[1])
            self._db.execute("COMMIT")
            self.count -= gone

    def close(self) -> None:
        with self._lock:
            self._db.close()


async def oldest(queue: DiskQueue, wake: asyncio.Event) -> Row:
    """The queue's oldest row, waiting for ``wake`` (set by whoever appends) while it is empty.
    The row stays in the queue until its consumer deletes it."""
    while True:
        rows = await asyncio.to_thread(queue.fetch_after, 0, 1) if queue.count else []
        if rows:
            return rows[0]
        wake.clear()
        if not queue.count:  # an append between the look and the clear would otherwise be missed
            await wake.wait()
