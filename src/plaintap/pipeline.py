"""Wiring, in one place: kernel → data plane → records → sinks.

    ring buffers ─► dataplane.Pipeline (native core: decode, connections, reassembly,
                    │                   classification, HTTP; Python: plugins, records)
                    ▼
                    events / objects / lines ─► QueuedSink ─► stdout | OTLP | S3 | console

The ring buffers are the bounded queue between the kernel and this loop; sinks sit behind
their own bounded queues. Everything from decode to record building runs on the loop's
thread, driven by kernel timestamps, in bounded slices (the loop sees its stop flag at
least every slice). Stages that are not configured are not wired.
Start order: status server, sinks, BPF load, attach, ready. Stop order (first SIGINT/SIGTERM):
not ready, drain what the rings held at the signal (for at most RING_DRAIN_SHARE of
--shutdown-timeout, RING_DRAIN_SECONDS at least; what is left is said), finalise connections, deliver what
the sinks hold for at most --shutdown-timeout with a progress line (the rest is spooled or
counted as dropped{reason="shutdown"}), log the record accounting, detach. A second signal
exits at once (what is still held counted as dropped{reason="interrupted"}); a watchdog
does the same if the stop itself hangs past the timeout.
"""
from __future__ import annotations

import gc
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

from . import _core, metrics
from .bpf import abi
from .bpf.loader import KernelCapture, KernelSettings
from .capture.existing import find_existing
from .capture.filters import KERNEL_BITS as KERNEL_FILTER_BITS, SKIP_ALL, SKIP_DATA, ProcessFilter
from .capture.filters import describe as describe_filter
from .capture.containers import ContainerHold, ContainerResolver, RuntimeSockets
from .capture.process import ProcessTable
from .config.summary import startup_line
from .capture.tls_attach import LAYER_STORES, TlsAttacher
from .conn.dump import StreamDumper
from .dataplane import Emitted, Pipeline
from .plugins import PluginStacks
from .records.dns import DnsAudit
from .records.model import Record
from .health import Health, HealthCollector
from .sinks.base import MemoryBudget, QueuedSink
from .sinks.retry import NO_RETRY, RetryPolicy
from .sinks.spool import Spool, SpoolBudget
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
RING_DRAIN_SECONDS = 1.0        # at stop: reading what the kernel produced before the signal, at least this long
RING_DRAIN_SHARE = 0.4          # ... and up to this share of --shutdown-timeout while it is not all read
PROGRESS_EVERY = 2.0            # at stop: a progress line this often while sinks drain
FINALISE_SECONDS = 2.0          # at stop: parsing what open connections hold, at most (then final reports only)
FINALISE_SLICE = 512            # connections finalised per step
WATCHDOG_AFTER = 4.5            # a stop still running this long past --shutdown-timeout is forced (exit ≤ 15 s)
DEFAULT_SPOOL_DIR = "/var/lib/plaintap/spool"
# One slice of the capture loop: at most this many ring records or this much time before
# the loop looks at its stop/reload flags, ticks and flushes records to the sinks.
SLICE_RECORDS = 4096
SLICE_NS = 20_000_000
# At start-up, at most this long handling the records gathered meanwhile before ready.
CATCH_UP_SECONDS = 1.0
# After waking on empty rings, gather this much more before handling (µs): a turn of the
# loop per handful of records costs more than the records (DataPlane.drain). A control
# record (exec, open, close, DNS) ends the wait at once; with one already waiting it is
# at most 2 ms.
BATCH_WAIT_US = 10_000

# Kernel counters (abi.KERNEL_COUNTERS) that mean something was lost, and what to say.
KERNEL_LOSS_WARNINGS = {
    "control_ring_drops": "control events (connection open/close, exec, exit) lost, control ring full",
    "conn_table_full": "connections not tracked, the kernel's connection table is full (raise --max-connections)",
    "budget_shed_calls": "calls whose bytes were shed as gaps, a process over --process-byte-rate",
}


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
    process_byte_rate: int = 32 << 20          # per-process payload budget in the kernel (0: none)
    max_connections: int = 131072              # kernel connection table size
    tags: dict = field(default_factory=dict)   # --tags: resource attributes on OTLP exports
    config_source: str | None = None           # --config, re-read on SIGHUP (None: built-in default)
    no_redact: bool = False                    # --no-redact: store credentials as captured
    runtime_sockets: RuntimeSockets = field(default_factory=RuntimeSockets)  # container runtimes' APIs
    config_allow_http: bool = False            # --config-allow-http: accept an http:// --config URL
    memory_limit: int = 512 << 20              # --memory-limit; half of it bounds the sink queues
    shutdown_timeout: float = 10.0             # --shutdown-timeout: delivering at stop, at most
    spool_dir: str = DEFAULT_SPOOL_DIR         # --spool-dir: one subdirectory per network sink
    spool_size: int = 1 << 30                  # --spool-size (0: no spool)
    retry_window: float = 60.0                 # --retry-window: outage retried without a spool before dropping
    workers: int = 1                           # --workers: connection-parsing threads (native/src/shard.rs)
    yield_ms: float = 0.0                      # --yield-ms: loop turns at idle priority (native/src/cpu_yield.rs)


def data_plane_budget(memory_limit: int) -> int:
    """The native data plane's share of --memory-limit: bytes waiting in reassembly and held
    before classification (an eighth: 64 MiB at the default; past it they are shed,
    counted in plaintap_shed_bytes_total). The sink queues get half; the rest is the kernel
    ring buffers' mappings, HTTP bodies being parsed and the interpreter."""
    return max(8 << 20, memory_limit // 8)


class SinkEnv:
    """What every sink is built with: the shared memory and disk budgets, the outage policy
    and where the spools live (a spool only for network sinks: OTLP over gRPC/HTTP, S3)."""

    def __init__(self, opts: "RunOptions | None" = None) -> None:
        opts = opts or RunOptions()
        self.budget = MemoryBudget(opts.memory_limit // 2)
        self.spool_budget = SpoolBudget(opts.spool_size) if opts.spool_size > 0 else None
        self.spool_dir = opts.spool_dir
        self.retry = RetryPolicy(max_elapsed=opts.retry_window)

    def queued(self, inner, kind: str, network: bool) -> QueuedSink:
        spool = None
        if network and self.spool_budget is not None:
            spool = Spool(os.path.join(self.spool_dir, inner.name), kind, self.spool_budget)
        return QueuedSink(inner, kind=kind, budget=self.budget, retry=self.retry if network else None,
                          spool=spool)


def dns_audit(tap) -> DnsAudit:
    """Which DNS exchanges become connection events, from `tap`."""
    return DnsAudit(bool(tap.audit_include_dns), bool(tap.ignore_loopback), DIRECTION_MASKS[tap.direction])


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


def build_event_sink(cfg, tags: dict | None = None, env: SinkEnv | None = None) -> QueuedSink | None:
    """The sink for events (connections, artifact_record), or None when disabled."""
    env = env or SinkEnv()
    store = cfg.services.event_store
    if store.type == "disabled":
        return None
    if store.type == "stdout":
        return env.queued(JsonLinesSink("events-stdout"), "events", network=False)
    if store.type == "otel":
        from .sinks.otel import OtelSink
        network = store.protocol != "stdout"
        return env.queued(OtelSink("events-otel", store, "events", resource_attrs=tags, retry=NO_RETRY),
                          "events", network)
    raise ConfigUnsupported(f"services.event_stores[0].type: '{store.type}' is not supported (use stdout, otel "
                            "or disabled)")


def build_object_sink(cfg, tags: dict | None = None, env: SinkEnv | None = None
                      ) -> tuple[QueuedSink | None, Callable[[str], str | None] | None]:
    """The sink for objects and the function giving an object's URL from its digest
    (None when objects are not stored at all)."""
    env = env or SinkEnv()
    store = cfg.services.object_store
    if store.type == "disabled":
        return None, None
    if store.type == "stdout":
        return env.queued(JsonLinesSink("objects-stdout"), "objects", network=False), (lambda digest: None)
    if store.type == "otel":
        from .sinks.otel import OtelSink
        sink = OtelSink("objects-otel", store, "objects", resource_attrs=tags, retry=NO_RETRY)
        return env.queued(sink, "objects", network=store.protocol != "stdout"), sink.url_for
    if store.type == "s3":
        from .sinks.s3 import S3Sink
        sink = S3Sink("objects-s3", store, retry=NO_RETRY)
        return env.queued(sink, "objects", network=True), sink.url_for
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
        self.sink_env = SinkEnv(opts)
        self.health = Health()
        self.health.memory_limit = opts.memory_limit
        self.health.budget = self.sink_env.budget
        self.health.spool_limit = opts.spool_size
        _register_health(self.health)
        self.status = StatusServer(opts.httpd_listen, self.health)
        self.event_sink = build_event_sink(cfg, resource_tags(cfg, opts), self.sink_env)
        self.object_sink, self.object_url = build_object_sink(cfg, resource_tags(cfg, opts), self.sink_env)
        self.console_lines = ConsoleLines(access_log_stream(cfg))
        self.console = QueuedSink(self.console_lines, budget=self.sink_env.budget, records=False)
        self.redaction = cfg.redaction.policy(force_off=opts.no_redact)
        if not self.redaction.enabled:
            log.warning("redaction is off (%s): credentials, cookies and signed URLs are stored as captured",
                        "--no-redact" if opts.no_redact else "redaction.enabled: false")
        self.stacks = PluginStacks(cfg, color=self.console_lines.stream.isatty(), redaction=self.redaction)
        tap = cfg.tap
        self.kernel = KernelCapture(KernelSettings(
            agent_pid=os.getpid(),
            ignore_loopback=bool(tap.ignore_loopback),
            direction_mask=DIRECTION_MASKS[tap.direction],
            capture_data=True,
            ring_bytes=opts.ring_buffer_size,
            btf_path=opts.btf,
            budget_rate=opts.process_byte_rate,
            max_connections=opts.max_connections,
        ))
        self.filter = ProcessFilter.from_config(tap.filters)
        self.containers = ContainerResolver(opts.runtime_sockets,
                                            on_result=lambda result: metrics.container_lookups.labels(result).inc())
        self.procs = ProcessTable(flags_for=lambda exe: self.filter.flags_for(exe), on_flags=self._sync_filter,
                                  containers=self.containers)
        # records of a container still being looked up wait for its names (bounded in time)
        self.container_hold = ContainerHold(int((self.containers.timeout + 0.5) * 1e9))
        # analyses by content, kept across restarts beside the spool (the agent's state directory)
        self.tls = TlsAttacher(self.kernel, opts.tls_probes, cache_path=os.path.join(
            os.path.dirname(os.path.abspath(opts.spool_dir)), "tls-analysis-cache.json"), layer_stores=LAYER_STORES)
        # a program gone before its /proc was read: its cgroup as the exec lane read it at its exec
        self.procs.exec_cgroup = self.tls.cgroup_at_exec
        self.pipeline = Pipeline(
            self.stacks, self.clock, procs=self.procs, body_limit=opts.http_buffer_size,
            dumper=StreamDumper(opts.dump_streams) if opts.dump_streams else None,
            run_id=secrets.token_hex(4), forget=self.kernel.forget_connection, on_exec=self.tls.on_exec,
            object_url=self.object_url, events_enabled=self.event_sink is not None,
            objects_enabled=self.object_sink is not None, redaction=self.redaction, container_hold=self.container_hold,
            dns_audit=dns_audit(tap), byte_budget=data_plane_budget(opts.memory_limit), workers=opts.workers)
        self.rings: list = []
        self._pending: list[Record] = []
        self._pending_objects: list[Record] = []
        self._pending_lines: list[str] = []
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._reload_worker: threading.Thread | None = None
        self._reload_results: queue.SimpleQueue = queue.SimpleQueue()
        self._retired: list[tuple[QueuedSink, threading.Thread]] = []   # sinks replaced by a reload
        self._stopping = False
        # when the stop was asked for (CLOCK_MONOTONIC, the kernel's clock; 0: not yet): the ring
        # drain reads what came before it, the sinks' deadline counts from it
        self._stop_ns = 0
        self._force_lock = threading.Lock()
        self._drops_seen = 0
        self._kernel_seen: dict[str, int] = {}
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

    def _take(self, out: Emitted) -> None:
        """Queue what the data plane produced for the sinks (flushed once per slice)."""
        if out.events and self.event_sink is not None:
            self._pending.extend(out.events)
        if out.objects and self.object_sink is not None:
            self._pending_objects.extend(out.objects)
        if out.lines:
            self._pending_lines.extend(out.lines)

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

    def stop(self, signum=None, _frame=None) -> None:
        """First SIGINT/SIGTERM: stop capturing and drain (bounded). Second: exit at once."""
        if self._stopping:
            self.force_exit(f"second {_signal_name(signum)}")
            return
        self._stopping = True
        self._stop_ns = monotonic_ns()
        self.health.stopping = True
        self._stop.set()
        if signum is not None:
            log.info("%s: stopping capture; delivering what the sinks hold for at most %.0fs (again to exit "
                     "at once)", _signal_name(signum), self.opts.shutdown_timeout)
            # The drain ends at the timeout and its grace 2 s later (both counted from the
            # signal); the watchdog only fires when something else hangs (e.g. finalising
            # connections whose backlog the data plane is still parsing).
            deadline = self.opts.shutdown_timeout + WATCHDOG_AFTER
            threading.Thread(target=self._watchdog, args=(deadline,), name="stop-watchdog", daemon=True).start()

    def _watchdog(self, seconds: float) -> None:
        time.sleep(seconds)
        where = ""
        frame = sys._current_frames().get(threading.main_thread().ident)
        if frame is not None:
            import traceback
            last = traceback.extract_stack(frame)[-3:]
            where = " (the main thread is at " + " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"
                                                           for f in reversed(last)) + ")"
        self.force_exit(f"the stop took longer than {seconds:.0f}s{where}")

    def force_exit(self, why: str) -> None:
        """Exit now: what the sinks still hold is counted as dropped{reason="interrupted"}
        (spooled records stay on disk), the accounting is logged, and the process ends."""
        if not self._force_lock.acquire(blocking=False):
            return
        try:
            lost = sum(s.abandon("interrupted") for s in self._record_sinks())
            for s in self._sinks():
                if not s.is_records:
                    s.abandon("interrupted")
            log.warning("%s: exiting now; %d records still held in memory are counted as dropped "
                        "(reason=interrupted)", why, lost)
            self._log_accounting()
            for handler in logging.getLogger().handlers:
                try:
                    handler.flush()
                except Exception:
                    pass
        finally:
            try:
                sys.stdout.flush()
            except Exception:
                pass
            exit_now(130)

    def _record_sinks(self) -> list[QueuedSink]:
        sinks = [s for s in (self.event_sink, self.object_sink) if s is not None]
        return sinks + [s for s, _ in self._retired]

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
                event_sink = build_event_sink(cfg, resource_tags(cfg, self.opts), self.sink_env)
                object_sink, object_url = build_object_sink(cfg, resource_tags(cfg, self.opts), self.sink_env)
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
        if dns_audit(tap) != self.pipeline.dns_audit:
            self.pipeline.dns_audit = dns_audit(tap)
            changes.append(f"audit_include_dns={tap.audit_include_dns}")
        if tap.filters.model_dump() != old_tap.filters.model_dump():
            self.filter = ProcessFilter.from_config(tap.filters)
            self.procs.refilter()
            self._filter_running_processes()
            changes.append("tap.filters (new connections)")
        self.stacks = stacks
        self.pipeline.set_stacks(stacks)
        changes.append("stacks")
        if redaction != self.redaction:
            self.redaction = redaction
            self.pipeline.redaction = redaction
            changes.append("redaction")
        if services_changed:
            self._flush_records()
            old = [s for s in (self.event_sink, self.object_sink) if s is not None]
            for new in (event_sink, object_sink):    # the same spool directory: hand the open spool over
                for prev in old:
                    if new is not None and new.spool is not None and prev.spool is not None \
                            and prev.spool.is_open and new.spool.directory == prev.spool.directory:
                        new.spool = prev.spool.share()
                        prev.retire()
            self.event_sink, self.object_sink, self.object_url = event_sink, object_sink, object_url
            self.pipeline.object_url = object_url
            self.pipeline.events_enabled = event_sink is not None
            self.pipeline.objects_enabled = object_sink is not None
            for sink in (self.event_sink, self.object_sink):
                if sink is not None:
                    sink.start()
            for sink in old:   # drain the old sinks off the loop thread
                t = threading.Thread(target=_drain_and_stop, args=(sink, self.opts.shutdown_timeout),
                                     name=f"retire-{sink.name}", daemon=True)
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
            self.rings = [_core.Ring(fd, size, name) for name, fd, size in self.kernel.ring_maps()]
            # drain the ring while the first TLS analyses run (they are awaited: what
            # runs now is hooked before ready)
            self.tls.start(monotonic_ns(), idle=lambda: self._take(self.pipeline.drain(self.rings, 20, SLICE_RECORDS,
                                                                                       SLICE_NS)))
            self._adopt_existing_connections()
            _tune_gc()
            self._catch_up()
            self.status.ready.set()
            log.info("plaintap capturing (direction=%s, ignore_loopback=%s%s)",
                     self.cfg.tap.direction, self.cfg.tap.ignore_loopback,
                     f", {self.opts.workers} workers" if self.opts.workers > 1 else "")
            for warning in self.cfg.warnings:
                log.warning("config: %s", warning)
            if startup_line(self.cfg):
                log.info("%s", startup_line(self.cfg))
            if os.environ.get("PLAINTAP_BENCH_DISCARD_DATA") == "1":
                # bench_live_overhead's consumer round: the kernel's side with a free consumer
                self.pipeline.core.set_discard_data(True)
                log.warning("PLAINTAP_BENCH_DISCARD_DATA=1: data records are discarded unread (a measurement "
                            "mode: nothing is captured)")
            control_fd = next(fd for name, fd, _ in self.kernel.ring_maps() if name == abi.CONTROL_RING)
            if self.opts.yield_ms and not self.pipeline.core.set_yield(int(self.opts.yield_ms * 1000), control_fd):
                log.info("--yield-ms: off (this process may not return from idle priority: it lacks "
                         "CAP_SYS_NICE); the capture loop runs at normal priority")
            self._loop()
        finally:
            self.status.ready.clear()
            self._shutdown()
        return 0

    def _catch_up(self) -> None:
        """Handle what the rings gathered while the agent started (bounded by
        CATCH_UP_SECONDS) before saying ready: a program started after /readyz then has its
        exec handled at once, not behind the start-up backlog (issue 11 item 7)."""
        until = time.monotonic() + CATCH_UP_SECONDS
        while time.monotonic() < until and any(r.backlog for r in self.rings):
            self._take(self.pipeline.drain(self.rings, 0, SLICE_RECORDS, SLICE_NS))

    def _adopt_existing_connections(self) -> None:
        """Track connections opened before the agent (after attach, so none falls between)."""
        tap = self.cfg.tap
        me = {os.getpid(), self.kernel.settings.agent_pid}
        try:
            found = find_existing(set(), DIRECTION_MASKS[tap.direction], bool(tap.ignore_loopback))
        except OSError as e:
            log.warning("could not list existing connections: %s", e)
            return
        # The agent's own connections, and their other ends on this host (a local collector
        # that accepted the agent's export connection before capture started): never joined.
        mine = {(ec.local_addr, ec.local_port, ec.remote_addr, ec.remote_port) for ec in found if ec.pid in me}
        found = [ec for ec in found if ec.pid not in me
                 and (ec.remote_addr, ec.remote_port, ec.local_addr, ec.local_port) not in mine]
        now = monotonic_ns()
        adopted = 0
        for i, ec in enumerate(found):
            conn_id = abi.ADOPTED_CONN_ID_BASE + i
            proc = self.procs.get(ec.pid)
            if proc.filter_flags & SKIP_ALL:
                continue
            if not self.kernel.adopt_connection(ec.pid, ec.fd, conn_id, ec.role, ec.direction,
                                                no_data=bool(proc.filter_flags & SKIP_DATA), inode=ec.inode):
                continue
            self.pipeline.adopt(ec.pid, now, conn_id, ec.fd, proc.uid or 0, ec.role, ec.direction, ec.local_addr,
                                ec.local_port, ec.remote_addr, ec.remote_port, proc.comm)
            adopted += 1
        if adopted:
            log.info("joined %d connections that were open before the agent started", adopted)

    def _loop(self) -> None:
        next_check = 0
        while not self._stop.is_set():
            # TLS discovery runs on its own thread (exec events reach it through on_exec)
            out = self.pipeline.drain(self.rings, 100, SLICE_RECORDS, SLICE_NS, BATCH_WAIT_US)
            self._take(out)
            self.health.beat(out.newest_ts)
            self._poll_reload()
            now = monotonic_ns()
            self._take(self.pipeline.tick(now, wait=False))
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
        for name, what in KERNEL_LOSS_WARNINGS.items():
            n = c.get(name, 0)
            if n > self._kernel_seen.get(name, 0):
                log.warning("kernel: %s: %d so far", what, n)
                self._kernel_seen[name] = n

    def _shutdown(self) -> None:
        self._stopping = True
        self.health.stopping = True
        self.pipeline.core.set_yield(0)     # the stop is bounded in time: no yielding now
        # Read what the kernel produced before the signal (not what keeps coming meanwhile),
        # bounded in time; a data plane that was behind can need seconds of it. Then finalise.
        try:
            self._drain_rings_at_stop(self._stop_ns or monotonic_ns())
            self._take(self.pipeline.settle())     # --workers: what they still hold
        except Exception as e:
            log.debug("drain at shutdown: %s", e)
        t0, open_conns, abandoned = time.monotonic(), len(self.pipeline.core), 0
        try:
            # Bounded: what a saturated data plane holds could take longer to parse than the
            # stop may; past FINALISE_SECONDS the rest get final reports only, counted.
            now, until, left = monotonic_ns(), t0 + FINALISE_SECONDS, open_conns
            while left:
                if time.monotonic() >= until:
                    out, abandoned = self.pipeline.abandon_all(now)
                    self._take(out)
                    break
                out, left = self.pipeline.close_some(now, FINALISE_SLICE)
                self._take(out)
        except Exception:  # bad state must not keep the records already made from the sinks
            log.exception("finalising connections at shutdown")
        self._flush_records(final=True)
        self.rings = []
        log.info("stopping: capture stopped; %d open connections finalised in %.1fs%s", open_conns,
                 time.monotonic() - t0, f" ({abandoned} of them out of time: final reports only, their held "
                 "bytes counted in plaintap_shed_bytes_total{reason=\"shutdown\"})" if abandoned else "")
        lost = {k: v for k, v in (self._safe_counters()).items()
                if k.startswith(("ringbuf", "control_ring")) and v}
        if lost:
            log.warning("kernel ring buffer lost %s during this run (raise --ring-buffer-size)", lost)
        self._drain_sinks(self.opts.shutdown_timeout)
        for _sink, t in self._retired:
            t.join(max(0.0, self.opts.shutdown_timeout))
        self._log_accounting()
        # The last helpers get a second, not more: the exit must stay bounded.
        for name, stop in (("TLS analysis", self.tls.close), ("container lookups", self.containers.stop)):
            t = threading.Thread(target=_quietly, args=(name, stop), name=f"stop-{name}", daemon=True)
            t.start()
            t.join(1.0)
        self.status.stop()
        # The BPF links are not released here: the kernel takes seconds to release them one
        # by one; `exit_now` leaves that to a short-lived child (the CLI calls it).

    def _drain_rings_at_stop(self, stop_ns: int) -> None:
        """Handle the records stamped before `stop_ns` for at most RING_DRAIN_SHARE of
        --shutdown-timeout (RING_DRAIN_SECONDS at least). What is still unread then is
        logged with its size: those events never become records."""
        budget = max(RING_DRAIN_SECONDS, RING_DRAIN_SHARE * self.opts.shutdown_timeout)
        t0 = time.monotonic()
        until = t0 + budget
        while time.monotonic() < until:
            out = self.pipeline.drain(self.rings, 0, SLICE_RECORDS, SLICE_NS, until_ns=stop_ns)
            self._take(out)
            if out.newest_ts is None and not self.pipeline.unread_before(self.rings, stop_ns)[0]:
                break
            self.health.beat(out.newest_ts)
        records, size = self.pipeline.unread_before(self.rings, stop_ns)
        if records:
            log.warning("stopping: %d kernel records (%d bytes) captured before the signal were still unread "
                        "after %.1fs and are dropped: the data plane was behind; a longer --shutdown-timeout "
                        "gives the stop more time to read them", records, size, time.monotonic() - t0)
        elif time.monotonic() - t0 > RING_DRAIN_SECONDS:
            log.info("stopping: read what the kernel captured before the signal in %.1fs (the data plane was "
                     "behind)", time.monotonic() - t0)

    def _drain_sinks(self, timeout: float) -> None:
        """Deliver what the sinks hold for at most `timeout` seconds, saying how it goes."""
        sinks = self._sinks()
        # The deadline counts from the signal, not from here (finalising connections took some
        # of it), but every sink gets at least a second.
        start = self._stop_ns / 1e9 if self._stop_ns else time.monotonic()
        deadline = max(start + timeout, time.monotonic() + min(1.0, timeout))
        for s in sinks:
            s.begin_shutdown()
        next_line = time.monotonic() + PROGRESS_EVERY
        while time.monotonic() < deadline:
            busy = [s for s in sinks if s._thread is not None and s._thread.is_alive()]
            if not busy:
                break
            if time.monotonic() >= next_line:
                next_line += PROGRESS_EVERY
                log.info("stopping: %.0fs left; %s", deadline - time.monotonic(), "; ".join(
                    f"{s.name}: {st['queue_records']} records in memory, {st['spool_records']} on disk"
                    + (f", backend failing ({st['last_error']})" if st["retrying"] else "")
                    for s, st in ((s, s.state()) for s in busy)))
            time.sleep(0.05)
        # Past the deadline: every sink is told at once to end its current attempt (one shared
        # grace period, not one per sink), then what is left is spooled or counted.
        for s in sinks:
            s.stop_now()
        grace_until = max(deadline, time.monotonic()) + 2.0
        for s in sinks:
            s.finish_shutdown(deadline, grace=max(0.0, grace_until - time.monotonic()))

    def _log_accounting(self) -> None:
        record_sinks = self._record_sinks()
        if not record_sinks:
            return
        by_name: dict[str, dict] = {}
        for s in record_sinks:
            a = by_name.setdefault(s.name, {"accepted": 0, "recovered": 0, "exported": 0, "dropped": 0,
                                            "spooled": 0, "memory": 0, "reasons": {}})
            a["accepted"] += s.accepted
            a["recovered"] += s.recovered
            a["exported"] += s.exported
            a["dropped"] += s.dropped
            for reason, n in s.dropped_by.items():
                a["reasons"][reason] = a["reasons"].get(reason, 0) + n
            st = s.state()
            a["memory"] += st["queue_records"]
        # A spool shared by a retired sink and its successor is counted once.
        spools = {id(s.spool): s.spool for s in record_sinks if s.spool is not None}
        for sp in spools.values():
            name = os.path.basename(sp.directory)
            if name in by_name:
                by_name[name]["spooled"] += sp.records
        tot = {k: sum(a[k] for a in by_name.values()) for k in ("accepted", "recovered", "exported", "dropped",
                                                                 "spooled", "memory")}
        log.info("record accounting: produced=%d recovered=%d exported=%d dropped=%d spooled=%d unaccounted=%d (%s)",
                 tot["accepted"], tot["recovered"], tot["exported"], tot["dropped"], tot["spooled"],
                 tot["accepted"] + tot["recovered"] - tot["exported"] - tot["dropped"] - tot["spooled"],
                 "; ".join(f"{n}: {a['accepted']} produced, {a['recovered']} recovered, {a['exported']} exported, "
                           f"{a['dropped']} dropped"
                           + (" (" + ", ".join(f"{r}={v}" for r, v in sorted(a["reasons"].items())) + ")"
                              if a["reasons"] else "")
                           + f", {a['spooled']} spooled" for n, a in sorted(by_name.items())))

    def _safe_counters(self) -> dict:
        try:
            return self.kernel.counters()
        except Exception:
            return {}


def _quietly(name: str, fn) -> None:
    try:
        fn()
    except Exception as e:
        log.debug("stopping %s: %s", name, e)


def _drain_and_stop(sink: QueuedSink, timeout: float = 10.0) -> None:
    """Deliver what a sink a reload replaced holds (deadline), then stop it (on its own thread)."""
    try:
        sink.shutdown(timeout)
    except Exception as e:  # its accounting still counts what it could not deliver
        log.warning("stopping %s: %s", sink.name, e)


def exit_now(code: int) -> None:
    """End the process with `code` at once. Releasing the BPF links in our own exit takes the
    kernel seconds (each tracepoint/uprobe unregistration waits for an RCU-tasks-trace grace
    period, one at a time under a kernel mutex): a short-lived child keeps only the anonymous
    kernel objects (BPF programs, maps, links, perf events), so the last reference to them,
    and the slow release, is the child's; it closes everything else at once (spool locks,
    sockets, pipes), so a restarted agent finds its port and spool free."""
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        pid = os.fork()
    except OSError:
        pid = -1
    if pid == 0:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            os.setsid()
            for name in os.listdir("/proc/self/fd"):
                try:
                    if not os.readlink(f"/proc/self/fd/{name}").startswith("anon_inode:"):
                        os.close(int(name))
                except OSError:
                    pass
            time.sleep(1.0)   # the parent's exit must drop its references first
        finally:
            os._exit(0)
    os._exit(code)


def _tune_gc() -> None:
    """Keep the cyclic GC from stopping every thread for long: with tens of thousands of
    connections and queued records, full collections walked every object and paused the
    agent (the status server included) for 0.3-0.8 s, several times a minute (/metrics took
    up to 2.2 s with 50k idle connections). Everything made at start-up (modules, config,
    BPF state) is frozen out of future collections, and the older generations are collected
    less often (records and connections are freed by reference counting; the GC only has
    cycles to find): measured afterwards, no pause over 0.16 s and /metrics ≤ 0.4 s."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _signal_name(signum) -> str:
    try:
        return signal.Signals(signum).name
    except (ValueError, TypeError):
        return "signal"


_HEALTH_COLLECTOR: HealthCollector | None = None


def _register_health(health: Health) -> None:
    """Point the gauges at this agent's Health (registered once per process)."""
    global _HEALTH_COLLECTOR
    if _HEALTH_COLLECTOR is None:
        _HEALTH_COLLECTOR = HealthCollector(health)
        metrics.REGISTRY.register(_HEALTH_COLLECTOR)
    else:
        _HEALTH_COLLECTOR.health = health


def install_signal_handlers(agent: Agent) -> None:
    signal.signal(signal.SIGINT, agent.stop)
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGHUP, agent.request_reload)
