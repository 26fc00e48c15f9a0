"""Wiring, in one place: kernel → decode → connections → records → sinks.

    KernelCapture.poll ─► decode ─► ConnectionTracker ─► (stream consumers)
                                         │ reports
                                         ▼
                          connection_record ─► event sink (QueuedSink ─► stdout | …)

The ring buffer is the bounded queue between the kernel and this loop; sinks sit behind
their own bounded queues. Everything from decode to record building runs on the loop's
thread, driven by kernel timestamps. Stages that are not configured are not wired.
Start order: status server, sinks, BPF load, attach, ready. Stop order: not ready, drain
the ring, finalise connections, flush sinks (deadline), detach.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field

from . import metrics
from .bpf import abi
from .bpf.loader import KernelCapture, KernelSettings
from .capture.decode import ProcExec, decode
from .capture.process import ProcessTable
from .capture.tls_attach import TlsAttacher
from .conn.classify import ProtocolClassifier
from .conn.dump import StreamDumper
from .conn.tracker import ConnectionTracker
from .records.connection import connection_record
from .records.model import Record
from .sinks.base import QueuedSink
from .sinks.stdout import JsonLinesSink
from .status import StatusServer

log = logging.getLogger("plaintap")

DIRECTION_MASKS = {
    "all": abi.DIR_INGRESS | abi.DIR_EGRESS_INTERNAL | abi.DIR_EGRESS_EXTERNAL,
    "ingress": abi.DIR_INGRESS,
    "egress": abi.DIR_EGRESS_INTERNAL | abi.DIR_EGRESS_EXTERNAL,
    "egress-internal": abi.DIR_EGRESS_INTERNAL,
    "egress-external": abi.DIR_EGRESS_EXTERNAL,
}


class ConfigUnsupported(RuntimeError):
    """The config asks for something this build cannot do yet; the message says what."""


@dataclass
class RunOptions:
    httpd_listen: str = "127.0.0.1:10001"
    http_buffer_size: int = 2 << 20
    tls_probes: tuple[str, ...] = ("openssl", "gotls", "nodetls")
    btf: str | None = None
    dump_streams: str | None = None
    ring_buffer_size: int = 64 << 20
    extra: dict = field(default_factory=dict)


def monotonic_ns() -> int:
    """The clock bpf_ktime_get_ns() uses."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class WallClock:
    """Maps kernel monotonic timestamps to wall-clock ns (fixed at start-up)."""

    def __init__(self) -> None:
        self.offset = time.time_ns() - monotonic_ns()

    def __call__(self, mono_ns: int) -> int:
        return mono_ns + self.offset


def build_event_sink(cfg) -> QueuedSink | None:
    stores = list(cfg.services.event_stores or [])
    store = stores[0] if stores else None
    kind = getattr(store, "type", "stdout") if store is not None else "stdout"
    if kind == "disabled":
        return None
    if kind == "stdout":
        return QueuedSink(JsonLinesSink("events-stdout"))
    raise ConfigUnsupported(f"services.event_stores[0].type: '{kind}' is not available in this build yet "
                            "(use stdout or disabled)")


class Agent:
    def __init__(self, cfg, opts: RunOptions) -> None:
        self.cfg = cfg
        self.opts = opts
        self.clock = WallClock()
        self.status = StatusServer(opts.httpd_listen)
        self.event_sink = build_event_sink(cfg)
        tap = cfg.tap
        self.kernel = KernelCapture(KernelSettings(
            agent_pid=os.getpid(),
            ignore_loopback=bool(tap.ignore_loopback),
            direction_mask=DIRECTION_MASKS[tap.direction],
            capture_data=True,
            ring_bytes=opts.ring_buffer_size,
            btf_path=opts.btf,
        ))
        consumers = [ProtocolClassifier()]
        if opts.dump_streams:
            consumers.append(StreamDumper(opts.dump_streams))
        self.procs = ProcessTable()
        self.tracker = ConnectionTracker(
            self.procs, self._on_report, consumers,
            forget_kernel_entry=self.kernel.forget_connection,
            run_id=secrets.token_hex(4))
        self.tls = TlsAttacher(self.kernel, opts.tls_probes)
        self._pending: list[Record] = []
        self._stop = threading.Event()

    # ---- records ----

    def _on_report(self, conn, part: int, finalized: bool) -> None:
        if self.event_sink is None:
            return
        self._pending.append(connection_record(conn, part, finalized, self.clock))

    def _flush_records(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            metrics.records.labels("plaintap.events").inc(len(batch))
            self.event_sink.export(batch)

    # ---- lifecycle ----

    def stop(self, *_args) -> None:
        self._stop.set()

    def run(self) -> int:
        self.kernel.preflight()  # fail with one line before anything starts
        self.status.start()
        if self.event_sink is not None:
            self.event_sink.start()
        try:
            self.kernel.open_and_load()
            metrics.register_kernel_counters(self.kernel.counters)
            self.kernel.attach()
            self.tls.start(monotonic_ns())
            self.status.ready.set()
            log.info("plaintap capturing (direction=%s, ignore_loopback=%s)",
                     self.cfg.tap.direction, self.cfg.tap.ignore_loopback)
            self._loop()
        finally:
            self.status.ready.clear()
            self._shutdown()
        return 0

    def _process(self, batch: list[bytes]) -> None:
        handle = self.tracker.handle
        counted: dict[int, int] = {}
        for raw in batch:
            ev = decode(raw)
            if ev is None:
                metrics.unknown_events.inc()
                continue
            t = raw[0]
            counted[t] = counted.get(t, 0) + 1
            if t == abi.EV_PROC_EXEC:
                self.tls.on_exec(ev.pid, ev.ts_ns)
            try:
                handle(ev)
            except Exception:  # bad input must not kill the agent or other connections
                log.exception("internal error handling %s; event dropped", type(ev).__name__)
        for t, n in counted.items():
            metrics.kernel_events.labels(str(t)).inc(n)

    def _loop(self) -> None:
        while not self._stop.is_set():
            batch = self.kernel.poll(100)
            if batch:
                self._process(batch)
            now = monotonic_ns()
            self.tracker.tick(now)
            self.tls.tick(now)
            self._flush_records()

    def _shutdown(self) -> None:
        # Drain what the kernel already produced, then finalise and flush.
        try:
            for _ in range(100):
                batch = self.kernel.poll(0)
                if not batch:
                    break
                self._process(batch)
        except Exception as e:
            log.debug("drain at shutdown: %s", e)
        self.tracker.close_all(monotonic_ns())
        self._flush_records()
        lost = {k: v for k, v in (self._safe_counters()).items() if k.startswith("ringbuf") and v}
        if lost:
            log.warning("kernel ring buffer lost %s during this run (raise --ring-buffer-size)", lost)
        if self.event_sink is not None:
            self.event_sink.force_flush(10)
            self.event_sink.shutdown()
        self.kernel.close()
        self.status.stop()

    def _safe_counters(self) -> dict:
        try:
            return self.kernel.counters()
        except Exception:
            return {}


def install_signal_handlers(agent: Agent) -> None:
    signal.signal(signal.SIGINT, agent.stop)
    signal.signal(signal.SIGTERM, agent.stop)
