"""The sinks' retry policy, on a fake clock: backoff, the shared outage budget, stopping."""
from __future__ import annotations

import threading

import pytest

from plaintap.sinks.retry import NO_RETRY, ExportFailed, Retrier, RetryPolicy


class FakeTime:
    """A clock and a stop event whose wait() advances the clock instead of sleeping."""

    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []
        self.stop_after: int | None = None

    def clock(self) -> float:
        return self.now

    def make_stop(self) -> threading.Event:
        fake = self

        class Stop(threading.Event):
            def wait(self, timeout=None):
                fake.waits.append(timeout)
                fake.now += timeout
                if fake.stop_after is not None and len(fake.waits) >= fake.stop_after:
                    self.set()
                return self.is_set()

        return Stop()


def make(policy: RetryPolicy):
    t = FakeTime()
    stop = t.make_stop()
    return t, stop, Retrier(policy, stop, clock=t.clock, rand=lambda: 0.5)  # rand 0.5 → no jitter


def failing(n: int, retryable: bool = True, result="ok"):
    calls = {"n": 0}

    def attempt():
        calls["n"] += 1
        if calls["n"] <= n:
            raise ExportFailed(f"down #{calls['n']}", retryable=retryable)
        return result

    return attempt, calls


def test_delay_grows_exponentially_up_to_the_maximum_with_bounded_jitter():
    p = RetryPolicy(initial=0.5, maximum=5.0, multiplier=2.0, jitter=0.2)
    assert [p.delay(i, lambda: 0.5) for i in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert p.delay(0, lambda: 0.0) == pytest.approx(0.4)
    assert p.delay(0, lambda: 1.0) == pytest.approx(0.6)


def test_success_after_transient_failures():
    t, _, r = make(RetryPolicy())
    attempt, calls = failing(3)
    seen = []
    assert r.run(attempt, lambda err, wait: seen.append((err.message, wait))) == "ok"
    assert calls["n"] == 4
    assert t.waits == [0.5, 1.0, 2.0]
    assert seen == [("down #1", 0.5), ("down #2", 1.0), ("down #3", 2.0)]
    assert r.outage_since is None


def test_not_retryable_is_raised_at_once():
    t, _, r = make(RetryPolicy())
    attempt, calls = failing(5, retryable=False)
    with pytest.raises(ExportFailed, match="down #1"):
        r.run(attempt)
    assert calls["n"] == 1 and t.waits == []


def test_gives_up_when_the_outage_is_older_than_the_budget():
    t, _, r = make(RetryPolicy(initial=1.0, maximum=4.0, max_elapsed=10.0))
    attempt, calls = failing(100)
    with pytest.raises(ExportFailed):
        r.run(attempt)
    assert sum(t.waits) <= 10.0
    assert t.waits == [1.0, 2.0, 4.0]        # a 4th wait (4 s) would pass the 10 s budget
    assert calls["n"] == 4


def test_budget_is_shared_by_the_batches_of_one_outage_and_reset_by_success():
    t, _, r = make(RetryPolicy(initial=1.0, maximum=4.0, max_elapsed=10.0))
    first, _ = failing(100)
    with pytest.raises(ExportFailed):
        r.run(first)                          # t = 107: waited 1 + 2 + 4
    # the next batch of the same outage only gets what is left of the budget (3 s)
    second, calls = failing(100)
    with pytest.raises(ExportFailed):
        r.run(second)
    assert t.waits[3:] == [1.0, 2.0] and calls["n"] == 3
    # the outage is now older than the budget: one attempt per batch, no waiting
    t.now += 5
    third, calls = failing(100)
    with pytest.raises(ExportFailed):
        r.run(third)
    assert calls["n"] == 1 and len(t.waits) == 5
    # the backend is back: success ends the outage, and the next outage has a full budget
    assert r.run(lambda: "ok") == "ok"
    fourth, calls = failing(2)
    assert r.run(fourth) == "ok" and calls["n"] == 3


def test_stop_interrupts_the_wait_and_raises_the_last_error():
    t, stop, r = make(RetryPolicy())
    t.stop_after = 2
    attempt, calls = failing(100)
    with pytest.raises(ExportFailed, match="down #2"):
        r.run(attempt)
    assert calls["n"] == 2 and stop.is_set()


def test_no_retry_policy():
    t, _, r = make(NO_RETRY)
    attempt, calls = failing(1)
    with pytest.raises(ExportFailed):
        r.run(attempt)
    assert calls["n"] == 1 and t.waits == []
