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

import ipaddress
import logging
import os
import queue
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from . import metrics
from .bpf import abi
from .bpf.loader import KernelCapture, KernelSettings
from .capture.decode import ConnOpen, decode
from .capture.existing import find_existing
from .capture.filters import KERNEL_BITS as KERNEL_FILTER_BITS, SKIP_ALL, SKIP_DATA, ProcessFilter
from .capture.filters import describe as describe_filter
from .capture.containers import ContainerHold, ContainerResolver, RuntimeSockets
from .capture.process import ProcessTable
from .config.summary import startup_line
from .capture.tls_attach import TlsAttacher
from .conn.classify import ProtocolClassifier
from .conn.dump import StreamDumper
from .conn.http import HttpConsumer
from .plugins import PluginStacks
from .records.transaction import make_transaction_id
from .conn.tracker import ConnectionTracker
from .records.connection import connection_record
from .records.model import Record
from .sinks.base import QueuedSink
from .sinks.stdout import STDOUT_LOCK, JsonLinesSink, access_log_stream
from .status import StatusServer

log = logging.getLogger("plaintap")

DIRECTION_MASKS = {
    "all": abi.DIR_INGRESS | abi.DIR_EGRESS_INTERNAL | abi.DIR_EGRESS_EXTERNAL,
    "ingress": abi.DIR_INGRESS,
    "egress": abi.DIR_EGRESS_INTERNAL | abi.DIR_EGRESS_EXTERNAL,
    "egress-internal": abi.DIR_EGRESS_INTERNAL,
    "egress-external": abi.DIR_EGRESS_EXTERNAL,
}


DROP_CHECK_NS = 5_000_000_000


@dataclass
class _Prepared:
    """A reloaded config and what was built from it, ready to be swapped in."""

    cfg: object
    redaction: object
    stacks: object
    services_changed: bool
    event_sink: object
    object_sink: object
    object_url: object


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
    tags: dict = field(default_factory=dict)   # --tags: resource attributes on OTLP exports
    config_source: str | None = None           # --config, re-read on SIGHUP (None: built-in default)
    no_redact: bool = False                    # --no-redact: store credentials as captured
    runtime_sockets: RuntimeSockets = field(default_factory=RuntimeSockets)  # container runtimes' APIs
    config_allow_http: bool = False            # --config-allow-http: accept an http:// --config URL


def monotonic_ns() -> int:
    """The clock bpf_ktime_get_ns() uses."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class WallClock:
    """Maps kernel monotonic timestamps to wall-clock ns (fixed at start-up)."""

    def __init__(self) -> None:
        self.offset = time.time_ns() - monotonic_ns()

    def __call__(self, mono_ns: int) -> int:
        return mono_ns + self.offset


def parse_tags(text: str) -> dict[str, str]:
    """`--tags k:v,k2:v2` → {"k": "v", "k2": "v2"}; ValueError names a malformed entry."""
    tags = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"--tags: '{item}' is not key:value (e.g. --tags team:web,region:eu)")
        tags[key.strip()] = value.strip()
    return tags


def resource_tags(cfg, opts: RunOptions) -> dict:
    """OTLP resource attributes: the config's `tags` (env sources), then --tags over them."""
    return {**cfg.resource_tags(os.environ), **opts.tags}


def build_event_sink(cfg, tags: dict | None = None) -> QueuedSink | None:
    """The sink for events (connections, artifact_record), or None when disabled."""
    store = cfg.services.event_store
    if store.type == "disabled":
        return None
    if store.type == "stdout":
        return QueuedSink(JsonLinesSink("events-stdout"))
    if store.type == "otel":
        from .sinks.otel import OtelSink
        return QueuedSink(OtelSink("events-otel", store, "events", resource_attrs=tags))
    raise ConfigUnsupported(f"services.event_stores[0].type: '{store.type}' is not supported (use stdout, otel "
                            "or disabled)")


def build_object_sink(cfg, tags: dict | None = None) -> tuple[QueuedSink | None, Callable[[str], str | None] | None]:
    """The sink for objects and the function giving an object's URL from its digest
    (None when objects are not stored at all)."""
    store = cfg.services.object_store
    if store.type == "disabled":
        return None, None
    if store.type == "stdout":
        return QueuedSink(JsonLinesSink("objects-stdout")), (lambda digest: None)
    if store.type == "otel":
        from .sinks.otel import OtelSink
        sink = OtelSink("objects-otel", store, "objects", resource_attrs=tags)
        return QueuedSink(sink), sink.url_for
    if store.type == "s3":
        from .sinks.s3 import S3Sink
        sink = S3Sink("objects-s3", store)
        return QueuedSink(sink), sink.url_for
    raise ConfigUnsupported(f"services.object_stores[0].type: '{store.type}' is not supported (use stdout, otel, "
                            "s3 or disabled)")


class ConsoleLines:
    """access_logs lines (console or json) to their stream (`access_log_stream`: stdout,
    or stderr when a store writes records to stdout), behind a QueuedSink."""

    name = "access-logs"

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout

    def export(self, lines) -> None:
        text = "".join(line + "\n" for line in lines)
        with STDOUT_LOCK:
            self.stream.write(text)
            self.stream.flush()

    def force_flush(self, timeout: float = 5.0) -> bool:
        return True

    def shutdown(self) -> None:
        pass


class Agent:
    def __init__(self, cfg, opts: RunOptions) -> None:
        self.cfg = cfg
        self.opts = opts
        self.clock = WallClock()
        self.status = StatusServer(opts.httpd_listen)
        self.event_sink = build_event_sink(cfg, resource_tags(cfg, opts))
        self.object_sink, self.object_url = build_object_sink(cfg, resource_tags(cfg, opts))
        self.console_lines = ConsoleLines(access_log_stream(cfg))
        self.console = QueuedSink(self.console_lines)
        self.redaction = cfg.redaction.policy(force_off=opts.no_redact)
        self.stacks = PluginStacks(cfg, color=self.console_lines.stream.isatty(), redaction=self.redaction)
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
        if self.stacks.active:  # no plugin wants HTTP: do not parse it
            consumers.append(HttpConsumer(self._on_transaction, opts.http_buffer_size))
        if opts.dump_streams:
            consumers.append(StreamDumper(opts.dump_streams))
        self.filter = ProcessFilter.from_config(tap.filters)
        self.containers = ContainerResolver(opts.runtime_sockets,
                                            on_result=lambda result: metrics.container_lookups.labels(result).inc())
        self.procs = ProcessTable(flags_for=lambda exe: self.filter.flags_for(exe), on_flags=self._sync_filter,
                                  containers=self.containers)
        # records of a container still being looked up wait for its names (bounded in time)
        self.container_hold = ContainerHold(int((self.containers.timeout + 0.5) * 1e9))
        self.tracker = ConnectionTracker(
            self.procs, self._on_report, consumers,
            forget_kernel_entry=self.kernel.forget_connection,
            run_id=secrets.token_hex(4))
        self.tls = TlsAttacher(self.kernel, opts.tls_probes)
        self._pending: list[Record] = []
        self._pending_objects: list[Record] = []
        self._pending_lines: list[str] = []
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._reload_worker: threading.Thread | None = None
        self._reload_results: queue.SimpleQueue = queue.SimpleQueue()
        self._retired: list[tuple[QueuedSink, threading.Thread]] = []   # sinks replaced by a reload
        self._drops_seen = 0
        self._produced = 0

    # ---- tap.filters ----

    def _sync_filter(self, pid: int, flags: int) -> None:
        """A process's tap.filters bits became known or changed: tell the kernel."""
        if flags:
            log.debug("tap.filters: pid %d skips %s", pid, describe_filter(flags))
        if self.kernel.loaded:
            self.kernel.set_proc_filter(pid, flags & KERNEL_FILTER_BITS)

    def _filter_running_processes(self) -> None:
        """At start-up: find the running processes tap.filters name (exe only, cheap)."""
        if not self.filter.active:
            return
        skipped = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                exe = os.readlink(f"/proc/{name}/exe").removesuffix(" (deleted)")
            except OSError:
                continue
            if self.filter.flags_for(exe):
                self.procs.get(int(name))   # records its bits and syncs the kernel
                skipped += 1
        log.info("tap.filters: %d running processes matched", skipped)

    # ---- records ----

    def _on_report(self, conn, part: int, finalized: bool) -> None:
        if self.event_sink is None:
            return
        record = connection_record(conn, part, finalized, self.clock, self.redaction)
        if not self.container_hold.keep(conn.process.container, record, "events", monotonic_ns()):
            self._pending.append(record)

    def _on_transaction(self, conn, tx) -> None:
        # Connection facts learned from HTTP: gRPC, and the domain when no SNI named it.
        if tx.grpc is not None:
            conn.protocol = "grpc"
        if not conn.domain:
            host = _host_name(tx.host)
            if host and not _is_ip(host):
                conn.domain = host
        seq = conn.state.get("tx_seq", 0)
        conn.state["tx_seq"] = seq + 1
        out = self.stacks.handle(conn, tx, make_transaction_id(conn.id, seq), wall_ns=self.clock,
                                 object_url=self.object_url)
        container, now = conn.process.container, monotonic_ns()
        if out.events and self.event_sink is not None:
            self._pending.extend(r for r in out.events if not self.container_hold.keep(container, r, "events", now))
        if out.objects and self.object_sink is not None:
            self._pending_objects.extend(r for r in out.objects
                                         if not self.container_hold.keep(container, r, "objects", now))
        if out.access_log_lines:
            self._pending_lines.extend(out.access_log_lines)

    def _flush_records(self, final: bool = False) -> None:
        for kind, record in self.container_hold.release(monotonic_ns(), force=final):
            (self._pending if kind == "events" else self._pending_objects).append(record)
        if self._pending:
            batch, self._pending = self._pending, []
            metrics.records.labels("plaintap.events").inc(len(batch))
            self._produced += len(batch)
            self.event_sink.export(batch)
        if self._pending_objects:
            batch, self._pending_objects = self._pending_objects, []
            metrics.records.labels("plaintap.objects").inc(len(batch))
            self._produced += len(batch)
            self.object_sink.export(batch)
        if self._pending_lines:
            lines, self._pending_lines = self._pending_lines, []
            self.console.export(lines)

    def _sinks(self) -> list[QueuedSink]:
        return [s for s in (self.event_sink, self.object_sink, self.console) if s is not None]

    # ---- lifecycle ----

    def stop(self, *_args) -> None:
        self._stop.set()

    def request_reload(self, *_args) -> None:
        """SIGHUP: re-read the config off the capture loop; the loop swaps it in."""
        self._reload.set()

    def reload(self) -> bool:
        """Re-read the config and apply it without stopping capture (on the caller's
        thread). A config that does not load is reported in one line and the running one
        is kept."""
        return self._apply_reload(self._prepare_reload())

    def _start_reload(self) -> None:
        """Read and build the new config on a worker thread: fetching a URL can take up to
        the loader's deadline, and capture must not wait for it."""
        def work() -> None:
            try:
                prepared = self._prepare_reload()
            except BaseException as e:   # handed to the loop, which reports it
                prepared = e
            self._reload_results.put(prepared)
        self._reload_worker = threading.Thread(target=work, name="config-reload", daemon=True)
        self._reload_worker.start()

    def _poll_reload(self) -> None:
        """On the loop: start a requested reload, or apply one the worker finished."""
        try:
            prepared = self._reload_results.get_nowait()
        except queue.Empty:
            pass
        else:
            self._reload_worker = None
            self._apply_reload(prepared)
        if self._reload.is_set() and self._reload_worker is None:
            self._reload.clear()
            self._start_reload()

    def _prepare_reload(self):
        """Everything a reload needs that may block or fail, built without touching the
        running state; returns a _Prepared or the exception that stopped it."""
        from .config import ConfigError, default_config, load_config
        source = self.opts.config_source
        try:
            cfg = (load_config(source, allow_http=self.opts.config_allow_http) if source
                   else default_config())
            redaction = cfg.redaction.policy(force_off=self.opts.no_redact)
            stacks = PluginStacks(cfg, color=access_log_stream(cfg).isatty(), redaction=redaction)
            services_changed = cfg.services.model_dump() != self.cfg.services.model_dump()
            event_sink = object_sink = object_url = None
            if services_changed:
                event_sink = build_event_sink(cfg, resource_tags(cfg, self.opts))
                object_sink, object_url = build_object_sink(cfg, resource_tags(cfg, self.opts))
        except (ConfigError, ConfigUnsupported, ValueError, OSError) as e:
            return e
        return _Prepared(cfg, redaction, stacks, services_changed, event_sink, object_sink, object_url)

    def _apply_reload(self, prepared) -> bool:
        """Swap a prepared config in (on the loop), or report why there is none."""
        source = self.opts.config_source
        if not isinstance(prepared, _Prepared):
            metrics.config_reloads.labels("failed").inc()
            first = str(prepared).splitlines()
            log.error("config reload failed, the running config is kept: %s%s", first[0] if first else prepared,
                      f" (+{len(first) - 1} more lines; run `plaintap validate {source}`)" if len(first) > 1 else "")
            return False
        cfg, redaction, stacks = prepared.cfg, prepared.redaction, prepared.stacks
        services_changed = prepared.services_changed
        event_sink, object_sink, object_url = prepared.event_sink, prepared.object_sink, prepared.object_url
        changes = []
        tap, old_tap = cfg.tap, self.cfg.tap
        if (tap.direction, tap.ignore_loopback) != (old_tap.direction, old_tap.ignore_loopback):
            self.kernel.update_filters(bool(tap.ignore_loopback), DIRECTION_MASKS[tap.direction])
            changes.append(f"direction={tap.direction} ignore_loopback={tap.ignore_loopback} (new connections)")
        if tap.filters.model_dump() != old_tap.filters.model_dump():
            self.filter = ProcessFilter.from_config(tap.filters)
            self.procs.refilter()
            self._filter_running_processes()
            changes.append("tap.filters (new connections)")
        if stacks.active and not any(isinstance(c, HttpConsumer) for c in self.tracker.consumers):
            self.tracker.consumers.append(HttpConsumer(self._on_transaction, self.opts.http_buffer_size))
        self.stacks = stacks
        changes.append("stacks")
        if redaction != self.redaction:
            self.redaction = redaction
            changes.append("redaction")
        if services_changed:
            self._flush_records()
            old = [s for s in (self.event_sink, self.object_sink) if s is not None]
            self.event_sink, self.object_sink, self.object_url = event_sink, object_sink, object_url
            for sink in (self.event_sink, self.object_sink):
                if sink is not None:
                    sink.start()
            for sink in old:   # drain the old sinks off the loop thread
                t = threading.Thread(target=_drain_and_stop, args=(sink,), name=f"retire-{sink.name}", daemon=True)
                t.start()
                self._retired.append((sink, t))
            changes.append("services (event and object stores)")
        self.console_lines.stream = access_log_stream(cfg)
        self.cfg = cfg
        metrics.config_reloads.labels("ok").inc()
        log.info("config reloaded from %s: %s", source or "the built-in default", ", ".join(changes))
        return True

    def run(self) -> int:
        self.kernel.preflight()  # fail with one line before anything starts
        self.status.start()
        for sink in self._sinks():
            sink.start()
        self.containers.start()
        try:
            self.kernel.open_and_load()
            metrics.register_kernel_counters(self.kernel.counters)
            self._filter_running_processes()
            self.kernel.attach()
            # drain the ring while the first TLS analyses run (they are awaited: what
            # runs now is hooked before ready)
            self.tls.start(monotonic_ns(), idle=lambda: self._process(self.kernel.poll(20)))
            self._adopt_existing_connections()
            self.status.ready.set()
            log.info("plaintap capturing (direction=%s, ignore_loopback=%s)",
                     self.cfg.tap.direction, self.cfg.tap.ignore_loopback)
            for warning in self.cfg.warnings:
                log.warning("config: %s", warning)
            if startup_line(self.cfg):
                log.info("%s", startup_line(self.cfg))
            self._loop()
        finally:
            self.status.ready.clear()
            self._shutdown()
        return 0

    def _adopt_existing_connections(self) -> None:
        """Track connections opened before the agent (after attach, so none falls between)."""
        tap = self.cfg.tap
        try:
            found = find_existing({os.getpid()}, DIRECTION_MASKS[tap.direction], bool(tap.ignore_loopback))
        except OSError as e:
            log.warning("could not list existing connections: %s", e)
            return
        now = monotonic_ns()
        adopted = 0
        for i, ec in enumerate(found):
            conn_id = abi.ADOPTED_CONN_ID_BASE + i
            proc = self.procs.get(ec.pid)
            if proc.filter_flags & SKIP_ALL:
                continue
            if not self.kernel.adopt_connection(ec.pid, ec.fd, conn_id, ec.role, ec.direction,
                                                no_data=bool(proc.filter_flags & SKIP_DATA)):
                continue
            self.tracker.handle(ConnOpen(ec.pid, now, conn_id, ec.pid, ec.fd, proc.uid or 0, ec.role,
                                         abi.DIRECTION_NAMES[ec.direction], ec.local_addr, ec.local_port,
                                         ec.remote_addr, ec.remote_port, proc.comm, joined=True))
            adopted += 1
        if adopted:
            log.info("joined %d connections that were open before the agent started", adopted)

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
            metrics.kernel_events.labels(abi.EVENT_NAMES.get(t, f"type_{t}")).inc(n)

    def _loop(self) -> None:
        next_check = 0
        while not self._stop.is_set():
            # analyses in flight: come back sooner to attach their hooks
            batch = self.kernel.poll(10 if self.tls.waiting else 100)
            if batch:
                self._process(batch)
            self._poll_reload()
            now = monotonic_ns()
            self.tracker.tick(now)
            self.tls.tick(now)
            self.status.progress()
            self._flush_records()
            if now >= next_check:
                next_check = now + DROP_CHECK_NS
                self._report_kernel_drops()

    def _report_kernel_drops(self) -> None:
        """Say so (once per burst) when the kernel lost events since the last check."""
        c = self._safe_counters()
        drops = c.get("ringbuf_drops", 0)
        if drops > self._drops_seen:
            log.warning("kernel ring buffer full: %d events (%d payload bytes) lost so far; they appear as "
                        "gaps; raise --ring-buffer-size or narrow tap.direction", drops,
                        c.get("ringbuf_drop_bytes", 0))
            self._drops_seen = drops

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
        self._flush_records(final=True)
        lost = {k: v for k, v in (self._safe_counters()).items() if k.startswith("ringbuf") and v}
        if lost:
            log.warning("kernel ring buffer lost %s during this run (raise --ring-buffer-size)", lost)
        for sink in self._sinks():
            _drain_and_stop(sink)
        for _sink, t in self._retired:
            t.join(15)
        record_sinks = [s for s in (self.event_sink, self.object_sink) if s is not None]
        record_sinks += [s for s, _ in self._retired]
        if record_sinks:
            log.info("record accounting: produced=%d exported=%d dropped=%d (%s)", self._produced,
                     sum(s.exported for s in record_sinks), sum(s.dropped for s in record_sinks),
                     ", ".join(f"{s.name}: {s.exported} exported, {s.dropped} dropped" for s in record_sinks))
        self.tls.close()
        self.kernel.close()
        self.containers.stop()
        self.status.stop()

    def _safe_counters(self) -> dict:
        try:
            return self.kernel.counters()
        except Exception:
            return {}


def _host_name(host: str | None) -> str:
    """Host without port or IPv6 brackets."""
    if not host:
        return ""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _drain_and_stop(sink: QueuedSink) -> None:
    """Deliver what a sink holds (10 s deadline), then stop it: at shutdown, and for the
    sinks a reload replaced (on their own thread)."""
    try:
        sink.force_flush(10)
        sink.shutdown()
    except Exception as e:  # its accounting still counts what it could not deliver
        log.warning("stopping %s: %s", sink.name, e)


def install_signal_handlers(agent: Agent) -> None:
    signal.signal(signal.SIGINT, agent.stop)
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGHUP, agent.request_reload)
