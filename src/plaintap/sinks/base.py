"""The one sink interface, and the byte-bounded queue (with an optional disk spool) every
sink runs behind.

A sink has `export(batch)`, `force_flush(timeout)` and `shutdown()`. `QueuedSink` wraps any
sink with a memory queue and a worker thread so that a slow or dead backend never blocks
capture (`export` only appends, or drops and counts).

Accounting, per sink, exact at every moment (and logged at exit):

    accepted + recovered = delivered + dropped{reason} + held (memory + in flight + spool)

`accepted` is every record handed to `export`, `recovered` what an earlier run left in the
spool. Every place a record can die has a reason: `queue_full` (the memory budget refused
it), `spool_full` (the disk budget refused it), `export_error` (the backend refused it for
good, or the retry window ended without a spool), `shutdown` (still held when the
shutdown deadline passed), `interrupted` (held when a second signal forced the exit),
`spool_corrupt` (damaged on disk).

Memory (`MemoryBudget`, `--memory-limit`): queues are bounded in *bytes* (an estimate of
the Python memory a record holds), shared by all sinks. Objects are shed before events:
object queues may use at most `objects_share` of the budget, so events always keep room.

Outage (`retry` given; the sinks built by the pipeline): a failed delivery is retried
with backoff. Without a spool, after `retry.max_elapsed` of outage the batch is dropped
(`export_error`). With a spool (`sinks/spool.py`) nothing is dropped for an outage: once
the backend has failed for `spill_after` seconds, or the memory queue passes
`spill_bytes`, the oldest records move to disk (fsync'd before memory lets go), and
delivery resumes from the spool, in order, when the backend answers. Only the worker
thread touches the spool, so order is kept: everything on disk is older than everything
in memory.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Protocol, Sequence

from .. import metrics
from ..records.model import Record
from .retry import RetryPolicy, SinkExportError
from .spool import SpoolBusy, SpoolUnavailable

log = logging.getLogger("plaintap.sinks")

SPILL_SLICE = 16   # memory batches moved to the spool between two delivery attempts, at most


class Sink(Protocol):
    name: str

    def export(self, batch: Sequence[Record]) -> None: ...
    def force_flush(self, timeout: float = 5.0) -> bool: ...
    def shutdown(self) -> None: ...


class BurstLogger:
    """Log a failure once per burst (at most every `every` seconds), with a count."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last = 0.0
        self._suppressed = 0

    def __call__(self, logger: logging.Logger, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            extra = f" ({self._suppressed} similar since last message)" if self._suppressed else ""
            logger.warning(msg + extra, *args)
            self._last = now
            self._suppressed = 0
        else:
            self._suppressed += 1



def record_bytes(rec) -> int:
    """Estimated Python memory one queued record (or access-log line) holds, in bytes."""
    if isinstance(rec, str):
        return 80 + len(rec)
    n = 360 + len(rec.body) + len(rec.scope)
    for k, v in rec.attributes.items():
        n += 90 + len(k) + (len(v) if isinstance(v, (str, bytes, bytearray)) else 32)
    return n


class MemoryBudget:
    """Bytes all sink queues may hold together; object queues at most `objects_share` of it."""

    def __init__(self, limit: int, objects_share: float = 0.75) -> None:
        self.limit = limit
        self.objects_cap = int(limit * objects_share)
        self._lock = threading.Lock()
        self._used = {"events": 0, "objects": 0}

    def try_reserve(self, kind: str, n: int) -> bool:
        with self._lock:
            if self._used["events"] + self._used["objects"] + n > self.limit:
                return False
            if kind == "objects" and self._used["objects"] + n > self.objects_cap:
                return False
            self._used[kind] += n
            return True

    def release(self, kind: str, n: int) -> None:
        with self._lock:
            self._used[kind] = max(0, self._used[kind] - n)

    def used(self, kind: str | None = None) -> int:
        with self._lock:
            return self._used[kind] if kind else self._used["events"] + self._used["objects"]


DEFAULT_BUDGET = MemoryBudget(256 << 20)

# Every QueuedSink alive, for the gauges and /status (health.py).
LIVE_SINKS: "weakref.WeakSet[QueuedSink]" = weakref.WeakSet()


@dataclass
class _Item:
    records: list
    nbytes: int
    since: float          # monotonic time accepted


class QueuedSink:
    """Runs `inner.export` on a worker thread behind a byte-bounded queue (see the module doc).

    `kind`: "events" or "objects" (the shedding policy). `budget`: the shared MemoryBudget.
    `retry`: the outage policy (None: `inner` retries on its own and a failure is final).
    `spool`: an unopened `Spool` (opened by `start()`, which raises SpoolError).
    `records`: False for sinks of lines, not records (kept out of the record accounting line).
    """

    def __init__(self, inner: Sink, *, kind: str = "events", budget: MemoryBudget | None = None,
                 retry: RetryPolicy | None = None, spool=None, spill_after: float = 1.0,
                 spill_bytes: int | None = None, batch_records: int = 512, records: bool = True,
                 clock=time.monotonic) -> None:
        self.inner = inner
        self.name = inner.name
        self.kind = kind
        self.budget = budget or DEFAULT_BUDGET
        self.retry = retry
        self.spool = spool
        self.spill_after = spill_after
        cap = self.budget.objects_cap if kind == "objects" else self.budget.limit
        self.spill_bytes = spill_bytes if spill_bytes is not None else cap // 4
        self.batch_records = batch_records
        self.is_records = records
        self.clock = clock
        self._items: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False        # export() refuses (counted as shutdown)
        self._stopping = False      # drain what is held, then end (spooled sinks in outage: spill and end)
        self._stop_now = False      # end after the current attempt; spill (spool) or drop the rest
        self._abandoned = False     # the shutdown path counted what was left; the worker counts nothing more
        self._reads_spool = True
        self._burst = BurstLogger()
        self._in_flight: list | None = None
        self._in_flight_bytes = 0
        self._in_flight_since = 0.0
        self._retry_number = 0
        self._final_attempt = False
        self._corrupt_seen = 0
        # Tallies (plain ints beside the Prometheus counters): the accounting line and /status.
        self.accepted = 0
        self.exported = 0
        self.dropped = 0
        self.dropped_by: dict[str, int] = {}
        self.recovered = 0
        self.mem_records = 0
        self.mem_bytes = 0
        self.outage_since: float | None = None
        self.last_error = ""
        LIVE_SINKS.add(self)
        metrics.preset_sink(self.name)

    # -- counting

    def _drop(self, n: int, reason: str) -> None:
        if n <= 0:
            return
        self.dropped += n
        self.dropped_by[reason] = self.dropped_by.get(reason, 0) + n
        metrics.sink_dropped.labels(self.name, reason).inc(n)

    def _delivered(self, n: int) -> None:
        if n <= 0:
            return
        self.exported += n
        metrics.sink_exported.labels(self.name).inc(n)

    @property
    def held(self) -> int:
        """Records accepted (or recovered) and not yet delivered or dropped."""
        with self._cond:
            n = self.mem_records + (len(self._in_flight) if self._in_flight is not None else 0)
        return n + (self.spool.records if self.spool is not None and self.spool.is_open else 0)

    @property
    def spooled(self) -> int:
        return self.spool.records if self.spool is not None and self.spool.is_open else 0

    def state(self) -> dict:
        """The facts /status and the gauges show."""
        now = self.clock()
        with self._cond:
            oldest = self._items[0].since if self._items else None
            if self._in_flight is not None:
                oldest = min(oldest, self._in_flight_since) if oldest is not None else self._in_flight_since
            queue_records = self.mem_records + (len(self._in_flight) if self._in_flight is not None else 0)
            queue_bytes = self.mem_bytes + self._in_flight_bytes
        age = 0.0 if oldest is None else max(0.0, now - oldest)
        spool = self.spool if self.spool is not None and self.spool.is_open else None
        if spool is not None:
            age = max(age, spool.oldest_age())
        outage = 0.0 if self.outage_since is None else max(0.0, now - self.outage_since)
        return {
            "name": self.name, "kind": self.kind,
            "queue_bytes": queue_bytes, "queue_records": queue_records,
            "oldest_record_age_seconds": round(age, 3),
            "spool_bytes": spool.bytes if spool else 0, "spool_records": spool.records if spool else 0,
            "spool_dir": spool.directory if spool else None,
            "retrying": self.outage_since is not None, "outage_seconds": round(outage, 3),
            "last_error": self.last_error if self.outage_since is not None else "",
            "accepted": self.accepted, "recovered": self.recovered, "delivered": self.exported,
            "dropped": dict(self.dropped_by),
        }

    # -- the interface

    def start(self) -> None:
        """Start the worker (and open the spool: raises SpoolError)."""
        if self._thread is not None:
            return
        if self.spool is not None and not self.spool.is_open:
            try:
                self.spool.open()
            except (SpoolBusy, SpoolUnavailable) as e:   # another agent on it, or a read-only file system
                log.warning("%s sink: %s; running without a spool (an outage longer than the retry window drops "
                            "records)", self.name, e)
                self.spool = None
        if self.spool is not None and self.spool.users == 1 and not self.recovered:
            self.recovered = self.spool.recovered
            if self.spool.corrupt:     # damaged at start: counted as recovered, then dropped
                self._drop(self.spool.corrupt, "spool_corrupt")
                self.recovered += self.spool.corrupt
            self._corrupt_seen = self.spool.corrupt
            if self.recovered:
                metrics.sink_recovered.labels(self.name).inc(self.recovered)
                log.info("%s sink: %d records left in the spool by an earlier run (%s) will be delivered first",
                         self.name, self.spool.records, self.spool.directory)
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()

    def export(self, batch: Sequence) -> None:
        """Queue `batch`; never blocks, never raises. Refused records are counted."""
        n = len(batch)
        if not n:
            return
        self.accepted += n
        metrics.sink_accepted.labels(self.name).inc(n)
        if self._closed:
            self._drop(n, "shutdown")
            return
        # Queued in pieces of at most `batch_records`, so that one huge batch (every open
        # connection finalised at shutdown) is delivered, and cut off by a deadline, piecewise.
        step = self.batch_records
        for start in range(0, n, step):
            chunk = list(batch[start:start + step]) if n > step else list(batch)
            size = 0
            for rec in chunk:
                size += record_bytes(rec)
            if not self.budget.try_reserve(self.kind, size):
                self._drop(len(chunk), "queue_full")
                self._burst(log, "%s sink: memory queue full (%d bytes held, --memory-limit), dropped %d records",
                            self.name, self.mem_bytes, len(chunk))
                continue
            with self._cond:
                self._items.append(_Item(chunk, size, self.clock()))
                self.mem_records += len(chunk)
                self.mem_bytes += size
                self._cond.notify()

    def force_flush(self, timeout: float = 5.0) -> bool:
        """Wait until nothing is held in memory (spooled records may remain) or `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._items or self._in_flight is not None:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._cond.wait(min(left, 0.1))
        try:
            return bool(self.inner.force_flush(max(0.0, deadline - time.monotonic())))
        except Exception:
            return False

    def shutdown(self, timeout: float = 10.0, grace: float = 3.0) -> None:
        """Deliver what is held for at most `timeout` seconds (a spooled sink in an outage
        spills to disk at once instead), then stop. What is left is spooled, or counted
        as dropped{reason="shutdown"}. Idempotent."""
        self.begin_shutdown()
        self.finish_shutdown(time.monotonic() + timeout, grace)

    def begin_shutdown(self) -> None:
        with self._cond:
            self._closed = True
            self._stopping = True
            self._cond.notify_all()

    def stop_now(self) -> None:
        """End the current attempt and stop (what is held is then spooled or counted)."""
        t = self._thread
        if t is None or not t.is_alive():
            return
        with self._cond:
            self._stop_now = True
            self._cond.notify_all()
        self._interrupt_inner()

    def finish_shutdown(self, deadline: float, grace: float = 3.0) -> None:
        t = self._thread
        if t is not None:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                self.stop_now()
                t.join(grace)
            if t.is_alive():
                self.abandon("shutdown")
        else:
            self.abandon("shutdown")
        try:
            self.inner.shutdown()
        except Exception as e:
            log.warning("stopping %s: %s", self.name, e)
        if self.spool is not None:
            self.spool.close()

    def abandon(self, reason: str) -> int:
        """Count everything held in memory (and in flight) as dropped now; the worker, if it
        ever returns, counts nothing more. Spooled records stay on disk. Returns the count."""
        with self._cond:
            if self._abandoned:
                return 0
            self._abandoned = True
            self._closed = True
            self._stop_now = True
            n = self.mem_records + (len(self._in_flight) if self._in_flight is not None else 0)
            self.budget.release(self.kind, self.mem_bytes + self._in_flight_bytes)
            self._items.clear()
            self.mem_records = self.mem_bytes = 0
            self._in_flight = None
            self._in_flight_bytes = 0
            self._drop(n, reason)
            self._cond.notify_all()
        return n

    def retire(self) -> None:
        """A reload replaced this sink: it stops reading the spool (its successor does)."""
        self._reads_spool = False

    # -- the worker

    def _interrupt_inner(self) -> None:
        stop = getattr(self.inner, "_stop", None)
        if isinstance(stop, threading.Event):
            stop.set()      # OTLP/S3: a retry wait ends at once

    def _take(self) -> tuple[str, list, object] | None:
        """The next thing to deliver: ("spool", records, peeked) or ("memory", records, item).
        None when the worker should end."""
        spool = self.spool
        with self._cond:
            while True:
                if self._stop_now or self._abandoned:
                    return None
                spool_ready = spool is not None and self._reads_spool and spool.is_open and spool.records > 0
                gave_up = self._stopping and self.outage_since is not None and self._final_attempt
                if spool_ready and not gave_up:
                    break
                if self._items:
                    if gave_up and spool is not None:
                        return None        # backend still down at shutdown: spill, do not wait
                    item = self._items.popleft()
                    self.mem_records -= len(item.records)
                    self.mem_bytes -= item.nbytes
                    self._in_flight, self._in_flight_bytes = item.records, item.nbytes
                    self._in_flight_since = item.since
                    return "memory", item.records, item
                if self._stopping:
                    return None
                self._cond.wait(0.5)
        peeked = spool.peek(self.batch_records)
        if spool.corrupt > self._corrupt_seen:     # damaged frames found while reading: counted
            with self._cond:
                self._drop(spool.corrupt - self._corrupt_seen, "spool_corrupt")
            self._corrupt_seen = spool.corrupt
        if not peeked.records:
            return self._take()
        return "spool", peeked.records, peeked

    def _run(self) -> None:
        try:
            while True:
                taken = self._take()
                if taken is None:
                    break
                self._deliver(*taken)
                if self.spool is not None:
                    self._spill_if_needed()
        except Exception:  # never let the worker die silently: count what it held
            log.exception("%s sink: internal error in the export worker", self.name)
            self.abandon("export_error")
            return
        self._finish()

    def _finish(self) -> None:
        """The worker ends: spill what memory holds (spool) or drop it (no spool)."""
        if self._abandoned:
            return
        if self.spool is not None and self.spool.is_open:
            self._spill(everything=True, limit=None)
        with self._cond:
            if self._abandoned:
                return
            n = self.mem_records
            self.budget.release(self.kind, self.mem_bytes)
            self._items.clear()
            self.mem_records = self.mem_bytes = 0
            self._drop(n, "shutdown")
            self._cond.notify_all()

    def _attempt(self, pending: list) -> tuple[int, list, Exception | None]:
        """(delivered, not delivered, error) of one call to the inner sink."""
        try:
            self.inner.export(pending)
            return len(pending), [], None
        except SinkExportError as e:
            remaining = list(e.remaining) if e.remaining is not None else list(pending[e.delivered:])
            return len(pending) - len(remaining), remaining, e
        except Exception as e:  # a sink error never kills the agent
            return 0, list(pending), SinkExportError(str(e), failed=len(pending), retryable=False)

    def _deliver(self, source: str, records: list, handle) -> None:
        """Deliver one batch taken from memory (retried here until done, dropped, or spooled) or
        from the spool (one attempt; on failure wait, and the next `_take` reads it again)."""
        pending = records
        while True:
            sent, remaining, err = self._attempt(pending)
            with self._cond:
                if self._abandoned:
                    return
                self._delivered(sent)
                if not remaining:
                    self.outage_since = None
                    self.last_error = ""
                    self._retry_number = 0
            if source == "spool":
                if not remaining:
                    self.spool.commit(handle)
                elif sent:
                    prefix = len(pending) - len(remaining)
                    if remaining[0] is pending[prefix]:
                        self.spool.commit(handle, prefix)
                    else:   # a scattered remainder (S3 uploads in parallel): requeue it at the tail
                        self.spool.commit(handle)
                        self._spool_records(remaining)
                        remaining = []
            if not remaining:
                self._done_in_flight(source)
                return
            pending = remaining
            self.last_error = str(err)
            retryable = bool(getattr(err, "retryable", False)) and self.retry is not None and not self._stop_now
            now = self.clock()
            if retryable and self.outage_since is None:
                self.outage_since = now
            if not retryable:
                self._give_up(source, handle, pending, "shutdown" if self._stop_now else "export_error", err)
                return
            if self.spool is None and now - self.outage_since > self.retry.max_elapsed:
                self._give_up(source, handle, pending, "export_error", err)
                return
            self._burst(log, "%s sink: %s; retrying, holding %d records%s", self.name, err, self.held,
                        " (spooling to disk)" if self.spool is not None else
                        f" for up to {self.retry.max_elapsed:.0f}s of outage")
            if source == "memory" and self.spool is not None and (
                    now - self.outage_since >= self.spill_after or self.mem_bytes > self.spill_bytes):
                # The outage lasts: this batch goes to disk (the spool is empty, or we would have
                # read from it), and delivery continues from there, in order.
                self._spool_records(pending)
                self._done_in_flight(source)
                return
            wait = self.retry.delay(self._retry_number)
            self._retry_number += 1
            go_on = self._wait(wait, spill=source == "spool")
            if source == "spool":
                self._done_in_flight(source)      # still on disk; read again next time
                return
            if not go_on:
                if self.spool is not None:
                    self._spool_records(pending)
                    self._done_in_flight(source)
                else:
                    self._give_up(source, handle, pending, "shutdown", err)
                return

    def _wait(self, seconds: float, spill: bool) -> bool:
        """Wait between attempts (spilling memory to disk meanwhile when no memory batch is in
        flight: spilled records must stay younger than it). False: stop now."""
        deadline = self.clock() + seconds
        while True:
            with self._cond:
                if self._stop_now or self._abandoned:
                    return False
                if self._stopping and self.spool is not None:
                    # Shutting down in an outage: one more attempt right away (the backend may be
                    # back), then spill and end rather than wait out the deadline.
                    if self._final_attempt:
                        return False
                    self._final_attempt = True
                    return True
                left = deadline - self.clock()
                if left <= 0:
                    return True
                self._cond.wait(min(left, 0.25))
            if spill and self.spool is not None:
                self._spill_if_needed()

    def _spill_if_needed(self) -> None:
        in_outage = self.outage_since is not None and self.clock() - self.outage_since >= self.spill_after
        if in_outage or self.mem_bytes > self.spill_bytes:
            self._spill(everything=in_outage, limit=SPILL_SLICE)

    def _spill(self, everything: bool, limit: int | None = None) -> None:
        """Move the oldest memory records to the spool (all, or until under half the threshold),
        at most `limit` batches a call: while records arrive faster than the disk takes them,
        an unbounded spill never returned to delivery — nothing was exported, and in an outage
        the backend's return was never noticed."""
        moved = 0
        while True:
            with self._cond:
                if self._abandoned or not self._items:
                    return
                if not everything and self.mem_bytes <= self.spill_bytes // 2:
                    return
                if limit is not None and moved >= limit:
                    return
                moved += 1
                item = self._items.popleft()
                self.mem_records -= len(item.records)
                self.mem_bytes -= item.nbytes
                self._in_flight, self._in_flight_bytes, self._in_flight_since = item.records, item.nbytes, item.since
            self._spool_records(item.records)
            self._done_in_flight("memory")

    def _spool_records(self, records: list) -> bool:
        """Write `records` to the spool; what does not fit is dropped (spool_full). True when
        the records are accounted for (written or dropped); False on a disk error."""
        try:
            written = self.spool.append(records)
        except OSError as e:
            self._burst(log, "%s sink: cannot write to the spool %s: %s", self.name, self.spool.directory, e)
            with self._cond:
                if not self._abandoned:
                    self._drop(len(records), "spool_full")
            return True
        with self._cond:
            if not self._abandoned:
                self._drop(len(records) - written, "spool_full")
        if written < len(records):
            self._burst(log, "%s sink: spool full (--spool-size), dropped %d records", self.name,
                        len(records) - written)
        return True

    def _commit_spool(self, peeked, records: list, pending: list, remaining: list) -> None:
        """Records of a spool batch were delivered: forget them on disk. A delivered prefix is
        committed exactly; a scattered remainder (S3) is re-queued at the tail."""
        if not remaining:
            self.spool.commit(peeked, len(records))
            return
        done_prefix = len(records) - len(remaining)
        if remaining == records[done_prefix:]:
            self.spool.commit(peeked, done_prefix)
        else:
            self.spool.commit(peeked, len(records))
            self._spool_records(remaining)

    def _give_up(self, source: str, handle, records: list, reason: str, err) -> None:
        with self._cond:
            if not self._abandoned:
                self._drop(len(records), reason)
        if source == "spool" and handle is not None:
            self.spool.commit(handle)
        self._burst(log, "%s sink: %s; dropped %d records", self.name, err, len(records))
        self._done_in_flight(source)

    def _done_in_flight(self, source: str) -> None:
        with self._cond:
            if source == "memory" and self._in_flight_bytes:
                self.budget.release(self.kind, self._in_flight_bytes)
            self._in_flight = None
            self._in_flight_bytes = 0
            self._cond.notify_all()
