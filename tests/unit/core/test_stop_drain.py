"""The stop's ring drain (pipeline.Agent._drain_rings_at_stop): it reads what the kernel
captured before the signal, for up to a share of --shutdown-timeout, and says what it
could not read instead of dropping it silently."""
from __future__ import annotations

import logging
import types

from plaintap import pipeline
from plaintap.dataplane import Emitted
from plaintap.pipeline import Agent, RunOptions


class FakeRings:
    """Records stamped at `stamps` (kernel ns); each drain reads up to `per_drain` of those
    before `until_ns`, slowly when `slow` (a data plane that is behind)."""

    def __init__(self, stamps: list[int], per_drain: int, clock: list[float], slow: float = 0.0) -> None:
        self.left = sorted(stamps)
        self.per_drain = per_drain
        self.clock = clock
        self.slow = slow
        self.untils: list[int] = []

    def drain(self, rings, timeout_ms, max_records, max_ns, batch_wait_us=0, until_ns=0) -> Emitted:
        self.untils.append(until_ns)
        self.clock[0] += self.slow
        ready = [t for t in self.left if t < until_ns][: self.per_drain]
        for t in ready:
            self.left.remove(t)
        out = Emitted()
        out.newest_ts = ready[-1] if ready else None
        return out

    def unread_before(self, rings, until_ns: int) -> tuple[int, int]:
        n = sum(1 for t in self.left if t < until_ns)
        return n, 100 * n


def agent_with(fake: FakeRings, shutdown_timeout: float) -> Agent:
    a = Agent.__new__(Agent)
    a.opts = RunOptions(shutdown_timeout=shutdown_timeout)
    a.pipeline = fake
    a.rings = []
    a.health = types.SimpleNamespace(beat=lambda ts: None)
    a._take = lambda out: None
    return a


def test_reads_what_came_before_the_signal_and_not_what_keeps_coming(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(pipeline.time, "monotonic", lambda: clock[0])
    # 50 records before the stop at t=1000, a stream of them after it.
    fake = FakeRings(list(range(950, 1000)) + list(range(1000, 5000)), per_drain=10, clock=clock, slow=0.01)
    agent_with(fake, 10)._drain_rings_at_stop(1000)
    assert set(fake.untils) == {1000}
    assert fake.unread_before([], 1000) == (0, 0)
    assert len(fake.left) == 4000, "records stamped after the signal were read"
    assert len(fake.untils) <= 7, "the drain went on after everything before the signal was read"


def test_a_data_plane_that_is_behind_gets_a_share_of_the_shutdown_timeout(monkeypatch, caplog):
    clock = [0.0]
    monkeypatch.setattr(pipeline.time, "monotonic", lambda: clock[0])
    # 3000 records waiting, read 10 per 10 ms: 3 s of work, more than the old fixed 1 s.
    fake = FakeRings(list(range(3000)), per_drain=10, clock=clock, slow=0.01)
    with caplog.at_level(logging.INFO, logger="plaintap"):
        agent_with(fake, 10)._drain_rings_at_stop(10_000)
    assert fake.left == []
    assert 2.9 <= clock[0] <= pipeline.RING_DRAIN_SHARE * 10
    assert "read what the kernel captured before the signal" in caplog.text


def test_what_could_not_be_read_in_time_is_said_with_its_size(monkeypatch, caplog):
    clock = [0.0]
    monkeypatch.setattr(pipeline.time, "monotonic", lambda: clock[0])
    fake = FakeRings(list(range(100_000)), per_drain=10, clock=clock, slow=0.01)
    with caplog.at_level(logging.WARNING, logger="plaintap"):
        agent_with(fake, 10)._drain_rings_at_stop(1_000_000)
    budget = pipeline.RING_DRAIN_SHARE * 10
    assert budget <= clock[0] <= budget + 0.02, "the drain is bounded in time"
    left = len(fake.left)
    assert left > 0
    assert f"{left} kernel records ({100 * left} bytes) captured before the signal were still unread" in caplog.text


def test_a_short_shutdown_timeout_still_drains_for_a_second(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(pipeline.time, "monotonic", lambda: clock[0])
    fake = FakeRings(list(range(100_000)), per_drain=10, clock=clock, slow=0.01)
    agent_with(fake, 0.5)._drain_rings_at_stop(1_000_000)
    assert pipeline.RING_DRAIN_SECONDS <= clock[0] <= pipeline.RING_DRAIN_SECONDS + 0.02
