"""The one sink interface, and the bounded queue every sink runs behind.

A sink has `export(batch)`, `force_flush(timeout)` and `shutdown()`. `QueuedSink` wraps any
sink with a bounded queue and a worker thread so that a slow or dead backend never
blocks capture: when the queue is full the batch is dropped and counted
(`plaintap_sink_dropped_records{sink,reason="queue_full"}`), and export failures are
counted and logged once per burst, never raised into the pipeline.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Protocol, Sequence

from .. import metrics
from ..records.model import Record

log = logging.getLogger("plaintap.sinks")


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


class QueuedSink:
    """Runs `inner.export` on a worker thread behind a bounded queue of batches."""

    _STOP = object()

    def __init__(self, inner: Sink, max_batches: int = 1024) -> None:
        self.inner = inner
        self.name = inner.name
        self._q: queue.Queue = queue.Queue(maxsize=max_batches)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._burst = BurstLogger()
        # Plain tallies beside the Prometheus counters, for the shutdown accounting line.
        self.exported = 0
        self.dropped = 0
        metrics.preset_sink(self.name)

    def _drop(self, n: int, reason: str) -> None:
        self.dropped += n
        metrics.sink_dropped.labels(self.name, reason).inc(n)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
            self._thread.start()

    def export(self, batch: Sequence[Record]) -> None:
        if not batch:
            return
        if self._closed:
            self._drop(len(batch), "shutdown")
            return
        try:
            self._q.put_nowait(list(batch))
        except queue.Full:
            self._drop(len(batch), "queue_full")
            self._burst(log, "%s sink: queue full, dropped %d records", self.name, len(batch))

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is self._STOP:
                    return
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                try:
                    self.inner.export(item)
                    self.exported += len(item)
                    metrics.sink_exported.labels(self.name).inc(len(item))
                except Exception as e:  # a sink error never kills the agent
                    # A sink may have delivered part of the batch (SinkExportError says how much).
                    delivered = getattr(e, "delivered", 0)
                    self.exported += delivered
                    if delivered:
                        metrics.sink_exported.labels(self.name).inc(delivered)
                    self._drop(getattr(e, "failed", len(item) - delivered), "export_error")
                    self._burst(log, "%s sink: export failed, dropped %d records: %s", self.name, len(item), e)
            finally:
                self._q.task_done()

    def force_flush(self, timeout: float = 5.0) -> bool:
        if self._thread is None:
            return True
        done = threading.Event()
        try:
            self._q.put(done, timeout=timeout)
        except queue.Full:
            return False
        ok = done.wait(timeout)
        return self.inner.force_flush(timeout) and ok

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread is not None:
            try:
                self._q.put(self._STOP, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
        self.inner.shutdown()
