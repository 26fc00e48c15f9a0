"""QueuedSink (byte budget, outage, spool, shutdown accounting) and Spool (disk format,
durability, recovery, safety), with an in-memory backend that can be taken down.

The invariant checked everywhere: accepted + recovered = delivered + dropped + held.
"""
from __future__ import annotations

import os
import stat
import threading
import time

import pytest

from plaintap.records.model import SCOPE_EVENTS, SCOPE_OBJECTS, Record
from plaintap.sinks.base import MemoryBudget, QueuedSink, record_bytes
from plaintap.sinks.retry import RetryPolicy, SinkExportError
from plaintap.sinks.spool import FRAME, Spool, SpoolBudget, SpoolError, decode_record, encode_record

FAST = RetryPolicy(initial=0.02, maximum=0.05, jitter=0.0, max_elapsed=0.3)


def rec(n: int, scope: str = SCOPE_EVENTS, size: int = 10) -> Record:
    return Record(scope, 1_700_000_000_000_000_000 + n, f"record {n}",
                  {"seq": n, "pad": "x" * size, "bin": bytes([n % 256, 0, 255]), "f": 1.5, "ok": True,
                   "list": [1, "a"]})


class Backend:
    """An in-memory backend: `down` makes every export fail as retryable."""

    name = "fake"

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.got: list[int] = []
        self.down = False
        self.block = threading.Event()
        self.block.set()
        self._stop = threading.Event()

    def export(self, batch):
        self.block.wait()
        if self.down:
            raise SinkExportError("collector down", failed=len(batch), retryable=True)
        self.got.extend(r.attributes["seq"] for r in batch)

    def force_flush(self, timeout=5.0):
        return True

    def shutdown(self):
        self._stop.set()


def balanced(q: QueuedSink) -> bool:
    return q.accepted + q.recovered == q.exported + q.dropped + q.held


def wait_until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# ---- spool ----------------------------------------------------------------------------


def test_record_encoding_round_trips_every_attribute_type():
    r = rec(7)
    r.attributes["text"] = "ünï ✓"
    r.attributes["big"] = 2**62
    back = decode_record(encode_record(r))
    assert back == r and isinstance(back.attributes["bin"], bytes)


def test_spool_survives_reopen_in_order_and_commits_durably(tmp_path):
    d = tmp_path / "spool" / "events-otel"
    sp = Spool(str(d), "events", SpoolBudget(1 << 20), segment_bytes=600).open()
    assert sp.append([rec(i) for i in range(5)]) == 5
    assert sp.append([rec(i) for i in range(5, 10)]) == 5       # the first segment is full: a new one
    peek = sp.peek(4)
    assert [r.attributes["seq"] for r in peek.records] == [0, 1, 2, 3]
    sp.commit(peek)
    assert sp.records == 6
    sp.close()
    assert len([n for n in os.listdir(d) if n.startswith("seg-")]) >= 2     # rotated
    sp2 = Spool(str(d), "events", SpoolBudget(1 << 20), segment_bytes=600).open()
    assert sp2.recovered == 6 and sp2.records == 6
    got = sp2.peek(100)
    assert [r.attributes["seq"] for r in got.records] == [4, 5, 6, 7, 8, 9]
    assert got.records[0] == rec(4)
    sp2.commit(got)
    assert sp2.records == 0 and sp2.bytes == 0
    sp2.close()
    # private: directory 0700, files 0600
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(d / n).st_mode) == 0o600 for n in os.listdir(d))


def test_spool_cuts_a_torn_tail_and_keeps_the_rest(tmp_path):
    d = tmp_path / "s"
    sp = Spool(str(d), "events", SpoolBudget(1 << 20)).open()
    sp.append([rec(i) for i in range(3)])
    sp.close()
    seg = next(d / n for n in os.listdir(d) if n.startswith("seg-"))
    with open(seg, "ab") as f:
        f.write(FRAME.pack(1000, 0, 0) + b"partial")
    sp = Spool(str(d), "events", SpoolBudget(1 << 20)).open()
    assert sp.records == 3 and sp.corrupt == 1
    assert [r.attributes["seq"] for r in sp.peek().records] == [0, 1, 2]
    sp.append([rec(3)])
    assert [r.attributes["seq"] for r in sp.peek().records] == [0, 1, 2, 3]
    sp.close()


def test_spool_budget_refuses_and_objects_yield_to_events(tmp_path):
    budget = SpoolBudget(4000, objects_share=0.5)
    ev = Spool(str(tmp_path / "e"), "events", budget).open()
    ob = Spool(str(tmp_path / "o"), "objects", budget).open()
    wrote_obj = ob.append([rec(i, SCOPE_OBJECTS, 200) for i in range(20)])
    assert 0 < wrote_obj < 20 and ob.bytes <= 2000          # objects stop at their share
    wrote_ev = ev.append([rec(i, size=200) for i in range(20)])
    assert wrote_ev > 0 and ev.bytes + ob.bytes <= 4000      # events still had room
    ev.close()
    ob.close()


def test_spool_refuses_symlinks_and_a_second_agent(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(SpoolError, match="symlink"):
        Spool(str(link / "events"), "events", SpoolBudget(1000)).open()
    sp = Spool(str(real / "x"), "events", SpoolBudget(1000)).open()
    with pytest.raises(SpoolError, match="in use by another plaintap"):
        Spool(str(real / "x"), "events", SpoolBudget(1000)).open()
    sp.close()
    # a planted symlink for a file name is not followed
    d = tmp_path / "planted"
    sp = Spool(str(d), "events", SpoolBudget(1 << 20)).open()
    sp.close()
    target = tmp_path / "victim"
    target.write_text("keep")
    (d / "seg-0000000000000001").symlink_to(target)
    sp = Spool(str(d), "events", SpoolBudget(1 << 20))
    with pytest.raises(OSError):
        sp.open()
        sp.append([rec(1)])
    assert target.read_text() == "keep"


# ---- queued sink -----------------------------------------------------------------------


def test_memory_budget_sheds_objects_before_events():
    budget = MemoryBudget(40_000, objects_share=0.5)
    be_e, be_o = Backend("e"), Backend("o")
    be_e.block.clear()
    be_o.block.clear()                   # backends stuck: everything stays queued
    ev = QueuedSink(be_e, kind="events", budget=budget)
    ob = QueuedSink(be_o, kind="objects", budget=budget)
    ev.start()
    ob.start()
    for i in range(100):
        ob.export([rec(i, SCOPE_OBJECTS, 500)])
    assert ob.dropped_by.get("queue_full", 0) > 0 and budget.used("objects") <= 20_000
    for i in range(15):
        ev.export([rec(i, size=100)])
    assert ev.dropped == 0                # events still fit: objects could not take their room
    be_e.block.set()
    be_o.block.set()
    ev.shutdown(5)
    ob.shutdown(5)
    for q, be in ((ev, be_e), (ob, be_o)):
        assert balanced(q) and q.held == 0 and q.exported == len(be.got)
    assert budget.used() == 0


def test_outage_without_spool_drops_after_the_retry_window_counted():
    be = Backend()
    q = QueuedSink(be, retry=FAST)
    q.start()
    be.down = True
    q.export([rec(i) for i in range(5)])
    wait_until(lambda: q.dropped == 5)
    assert q.dropped_by == {"export_error": 5} and balanced(q)
    be.down = False
    q.export([rec(5)])
    q.shutdown(5)
    assert be.got == [5] and balanced(q) and q.held == 0


def test_outage_with_spool_keeps_everything_and_replays_in_order(tmp_path):
    be = Backend()
    q = QueuedSink(be, retry=FAST, spool=Spool(str(tmp_path / "sp"), "events", SpoolBudget(1 << 20)),
                   spill_after=0.1)
    q.start()
    q.export([rec(0)])
    wait_until(lambda: be.got == [0])
    be.down = True
    for i in range(1, 40):
        q.export([rec(i)])
        time.sleep(0.005)
    wait_until(lambda: q.spooled == 39)             # all on disk during the outage
    st = q.state()
    assert st["retrying"] and st["spool_records"] == 39 and "collector down" in st["last_error"]
    assert balanced(q) and q.dropped == 0
    be.down = False
    for i in range(40, 50):
        q.export([rec(i)])
    wait_until(lambda: len(be.got) == 50)
    assert be.got == list(range(50))                # in order, each once
    q.shutdown(5)
    assert balanced(q) and q.dropped == 0 and q.held == 0


def test_spooled_records_survive_a_restart(tmp_path):
    be = Backend()
    be.down = True
    q = QueuedSink(be, retry=FAST, spool=Spool(str(tmp_path / "sp"), "events", SpoolBudget(1 << 20)),
                   spill_after=0.05)
    q.start()
    q.export([rec(i) for i in range(10)])
    wait_until(lambda: q.spooled == 10)
    q.shutdown(1)                                   # backend down: spooled, not dropped
    assert q.dropped == 0 and q.spooled == 0 and q.exported == 0
    be2 = Backend()
    q2 = QueuedSink(be2, retry=FAST, spool=Spool(str(tmp_path / "sp"), "events", SpoolBudget(1 << 20)))
    q2.start()
    assert q2.recovered == 10
    wait_until(lambda: len(be2.got) == 10)
    q2.shutdown(5)
    assert be2.got == list(range(10)) and balanced(q2) and q2.held == 0


def test_full_spool_sheds_counted(tmp_path):
    be = Backend()
    be.down = True
    size = len(encode_record(rec(0))) + FRAME.size
    q = QueuedSink(be, retry=FAST, spool=Spool(str(tmp_path / "sp"), "events", SpoolBudget(size * 5 + 10)),
                   spill_after=0.05)
    q.start()
    for i in range(12):
        q.export([rec(i)])
    wait_until(lambda: q.spooled + q.dropped == 12)
    assert q.spooled == 5 and q.dropped_by == {"spool_full": 7} and balanced(q)
    be.down = False
    wait_until(lambda: len(be.got) == 5)
    assert be.got == [0, 1, 2, 3, 4]               # the oldest stay, the newest are shed
    q.shutdown(5)
    assert balanced(q) and q.held == 0


def test_shutdown_deadline_counts_what_is_left():
    be = Backend()
    be.block.clear()                                # a backend that never answers
    q = QueuedSink(be, retry=FAST)
    q.start()
    for i in range(10):
        q.export([rec(i)])
    t0 = time.monotonic()
    q.shutdown(timeout=0.3, grace=0.2)
    assert time.monotonic() - t0 < 2
    assert q.dropped_by == {"shutdown": 10} and q.exported == 0 and balanced(q) and q.held == 0
    q.export([rec(99)])                             # after shutdown: refused, counted
    assert q.dropped_by["shutdown"] == 11 and balanced(q)
    be.block.set()


def test_abandon_counts_everything_held_once():
    be = Backend()
    be.block.clear()
    q = QueuedSink(be, retry=FAST)
    q.start()
    q.export([rec(i) for i in range(3)])
    q.export([rec(i) for i in range(3, 7)])
    wait_until(lambda: q._in_flight is not None)
    assert q.abandon("interrupted") == 7 and q.abandon("interrupted") == 0
    be.block.set()
    time.sleep(0.1)
    assert q.dropped_by == {"interrupted": 7} and q.exported == 0 and balanced(q)


def test_record_bytes_grows_with_payload():
    assert record_bytes(rec(1, size=10_000)) > record_bytes(rec(1, size=10)) + 9_000


def test_a_spool_that_cannot_be_created_means_no_spool_not_no_agent():
    be = Backend()
    # /proc takes no new directories (like a read-only root file system)
    q = QueuedSink(be, retry=FAST, spool=Spool("/proc/plaintap-no-such-dir/events", "events", SpoolBudget(1 << 20)))
    q.start()                                     # warned; runs without a spool
    assert q.spool is None
    q.export([rec(1)])
    q.shutdown(5)
    assert be.got == [1] and balanced(q)
