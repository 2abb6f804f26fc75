"""The failed-authentication limiter on a fake clock: burst, refill, Retry-After, bounded memory."""

from __future__ import annotations

from api.limits import FailedAuth


def test_an_address_may_fail_its_burst_then_waits_for_the_refill() -> None:
    lim = FailedAuth(burst=3, rate=0.5)
    for _ in range(3):
        assert lim.retry_after("10.0.0.1", now=100.0) == 0
        lim.failed("10.0.0.1", now=100.0)
    assert lim.retry_after("10.0.0.1", now=100.0) == 2  # one token per 2 s
    assert lim.retry_after("10.0.0.2", now=100.0) == 0  # others are not affected
    assert lim.retry_after("10.0.0.1", now=101.0) == 1
    assert lim.retry_after("10.0.0.1", now=102.0) == 0
    lim.failed("10.0.0.1", now=102.0)
    assert lim.retry_after("10.0.0.1", now=102.0) == 2
    assert lim.retry_after("10.0.0.1", now=200.0) == 0  # refilled, and never above the burst:
    for _ in range(3):
        lim.failed("10.0.0.1", now=200.0)
    assert lim.retry_after("10.0.0.1", now=200.0) > 0


def test_memory_is_bounded_by_max_clients_refilled_addresses_go_first() -> None:
    lim = FailedAuth(burst=2, rate=1.0, max_clients=100)
    for _ in range(2):
        lim.failed("blocked", now=1000.0)
    for i in range(10_000):
        lim.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", now=float(i // 100))
        assert len(lim) <= 100
    # a flood of other addresses, each failing once, cost at most max_clients entries; the last
    # ones are still tracked
    assert lim.retry_after("10.0.39.15", now=99.0) == 0
    lim.failed("10.0.39.15", now=99.0)
    assert lim.retry_after("10.0.39.15", now=99.0) == 1
