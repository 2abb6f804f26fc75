"""The alerter's partition moves when its store (PostgreSQL) goes away between a lease round and
the takeover: found by the fault suite (tests/e2e/test_fault_suite.py, PostgreSQL restarted while
a freshly started member was still taking its partitions): the takeover's first read raised
DatabaseUnavailable out of the consume loop and the alerter process exited. Now the move waits
and is tried again; the partitions are taken once the store is back."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import sqlalchemy as sa

from alerter.app import Alerter
from contract.config import load_alerter_config
from heatwatch.devstack import Postgres, free_port
from tests.conftest import wait_for, write_alerter_config


def test_a_takeover_meeting_the_store_away_is_tried_again(tmp_path: Path, postgres: Postgres) -> None:
    with sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.text("CREATE DATABASE away"))  # (a module fixture: one test, one cluster)
    url = postgres.url.rsplit("/", 1)[0] + "/away"
    cfg = load_alerter_config(write_alerter_config(tmp_path, mqtt_port=free_port(), store=url))
    alerter = Alerter(cfg)
    alerter.start()  # migrated, the partitions made
    try:
        # a lease round acquired two partitions; the consume loop takes them over between batches
        for p in (0, 1):
            epoch = alerter.leases.acquire(alerter.owner, p)
            assert epoch is not None
            alerter._gained[p] = epoch
        postgres.stop(signal.SIGINT, keep=True)  # before the takeover reads their state
        try:
            asyncio.run(alerter._ownership())  # raised DatabaseUnavailable: the process exited
            assert alerter.owned() == [] and sorted(alerter._gained) == [0, 1]  # kept for the retry
            retry_at = alerter._ownership_retry_at
            assert retry_at > time.monotonic()
            asyncio.run(alerter._ownership())  # before the pause is over: not tried (no hammering)
            assert sorted(alerter._gained) == [0, 1] and alerter._ownership_retry_at == retry_at
        finally:
            postgres.start()
        wait_for(lambda: time.monotonic() >= retry_at, 10, "the pause")
        asyncio.run(alerter._ownership())
        assert sorted(alerter.owned()) == [0, 1] and not alerter._gained
    finally:
        alerter.store.close()
