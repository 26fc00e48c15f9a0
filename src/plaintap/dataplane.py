"""The data plane, kernel-free: raw ring-buffer records in, records out.

    p = Pipeline(cfg, clock, procs=ProcessTable())
    out = p.feed(records)            # list of raw records (bytes), e.g. recorded or built
    out = p.drain(rings, 100)        # or straight from the kernel's ring buffers
    out = p.tick(now_ns)             # periodic connection reports
    out = p.close_all(now_ns)        # shutdown: final reports
    out.events, out.objects, out.lines

Everything from the ring buffer to finished transactions runs in the native core
(`plaintap._core.DataPlane`: decode, connection table, reassembly, classification, HTTP
parsing); it calls back into Python only per process or connection (exec, exit, open —
the process table and tap.filters live here), never per data record. What comes back is
a batch of connection reports and transactions, turned into records by the plugin stacks
(`PluginStacks.handle`) and the pure record builders. When the plugins' whole output
would be one `artifact_record` per transaction (the only plugin is `http_capture`, no
rules, no objects stored: `_summary_policy`), the native core builds that record's
attributes itself (native/src/summary.rs) and Python only adds the process attributes
and the time; transactions it declines (unusual targets or hosts) take the Python path.
The native core's counters are copied into the Prometheus metrics after each call.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable

from . import _core, metrics
from .bpf import abi
from .capture.filters import SKIP_ALL, SKIP_DNS
from .capture.process import ProcessTable
from .config.model import normalise_capture_level
from .plugins.http_capture import HttpCapture
from .records.connection import connection_record
from .records.dns import DnsAudit, DnsConn, dns_record, peer_direction
from .records.model import SCOPE_EVENTS, Record
from .records.redact import DEFAULT_REDACTION
from .records.transaction import make_transaction_id, transaction_connection_attrs

log = logging.getLogger("plaintap.dataplane")


def monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)

_REPORT, _TRANSACTION, _PIECES, _CLOSED, _SUMMARY, _DNS = 0, 1, 2, 3, 4, 5
# The agent's loop copies the core's counters into Prometheus at most this often (each copy
# builds the whole stats() dict; under load the loop turns every fraction of a millisecond
# with a few dozen records, and copying twice a turn was 6 % of the agent's CPU), and at the
# latest this long after the last change (a drain that finds the rings empty copies what is
# pending); feed, close_*, settle and a waited tick copy at once.
METRICS_EVERY_NS = 2_000_000


@dataclass
class Emitted:
    """What one call produced: event records, object records, console lines."""

    events: list[Record] = field(default_factory=list)
    objects: list[Record] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    newest_ts: int | None = None   # kernel ns of the newest record a drain handled (None: ring was empty)


@dataclass
class _DnsOut:
    process: object
    record: Record


class _Hooks:
    """The native core's calls into Python: per process and per connection only."""

    def __init__(self, procs: ProcessTable, forget: Callable[[int, int], None] | None,
                 on_exec: Callable[[int, int], None] | None) -> None:
        self.procs = procs
        self._forget = forget
        self._on_exec = on_exec

    def on_exec_early(self, pid: int, ts_ns: int) -> None:
        """An exec seen in the ring ahead of its turn (the drain looks ahead for them):
        TLS discovery races the program's first TLS call. on_exec follows in its turn."""
        if self._on_exec is not None:
            self._on_exec(pid, ts_ns)
        self.procs.prefetch(pid)

    def on_exec(self, pid: int, ts_ns: int, ppid: int, uid: int, filename: str, argv: list[str]) -> None:
        if self._on_exec is not None:    # first (unless seen early, which it skips then)
            self._on_exec(pid, ts_ns)
        self.procs.on_exec(pid, filename, argv, uid, ppid)

    def on_exit(self, pid: int, ts_ns: int) -> None:
        self.procs.on_exit(pid)

    def on_open(self, pid: int, fd: int, comm: str, uid: int):
        """The process of a new connection and its tap.filters bits."""
        proc = self.procs.get(pid, comm=comm, uid=uid)
        return proc, proc.filter_flags

    def forget(self, pid: int, fd: int) -> None:
        if self._forget is not None:
            self._forget(pid, fd)


class Pipeline:
    """Raw kernel records → records, for the agent, the tests and the benchmarks.

    `stacks` (PluginStacks or None: no HTTP parsing), `object_url`, `events_enabled` and
    `dns_audit` (which DNS exchanges become connection events) may be replaced between
    calls (a config reload). `native_summary=False` keeps every transaction on the Python
    path (tests compare the two). `workers=N` (a core option) parses connections on N
    threads (native/src/shard.rs): `feed` returns once they are done; `drain` takes what
    they finished so far, the rest at the next call (or `settle`)."""

    def __init__(self, stacks, clock: Callable[[int], int], *, procs: ProcessTable | None = None,
                 body_limit: int = 2 << 20, dumper=None, run_id: str | None = None,
                 forget: Callable[[int, int], None] | None = None,
                 on_exec: Callable[[int, int], None] | None = None,
                 object_url: Callable[[str], str | None] | None = None, events_enabled: bool = True,
                 objects_enabled: bool = True, redaction=DEFAULT_REDACTION, container_hold=None,
                 native_summary: bool = True, dns_audit: DnsAudit = DnsAudit(), **core_options) -> None:
        self._stacks = stacks
        self.clock = clock
        self.procs = procs if procs is not None else ProcessTable()
        self.dumper = dumper
        self._object_url = object_url
        self._native_summary = native_summary
        self._events_enabled = events_enabled
        self.objects_enabled = objects_enabled
        self.redaction = redaction
        # Records of a process whose container lookup is pending wait there for its names.
        self.container_hold = container_hold
        self.run_id = run_id if run_id is not None else secrets.token_hex(4)
        self.core = _core.DataPlane(_Hooks(self.procs, forget, on_exec), run_id=self.run_id,
                                    parse_http=bool(stacks is not None and stacks.active), body_limit=body_limit,
                                    dump=dumper is not None, **core_options)
        self._seen: dict = {}
        self._metrics_at = 0
        self._metrics_pending = False
        self.dns_audit = dns_audit
        self._dns_seq = 0
        self._plan()

    # ---- input ----

    def feed(self, records) -> Emitted:
        """Handle raw ring-buffer records (bytes), in order."""
        self.core.feed(records)
        return self._collect()

    def drain(self, rings, timeout_ms: int = 100, max_records: int = 4096, max_ns: int = 20_000_000,
              batch_wait_us: int = 0, until_ns: int = 0) -> Emitted:
        """Handle what the kernel's ring buffers hold (waiting up to timeout_ms when empty,
        then `batch_wait_us` more to gather a batch), in bounded slices so the caller can
        check its stop flag between calls. `until_ns`: only records stamped before that
        kernel time (the stop's drain)."""
        if self._metrics_pending and not 0 <= timeout_ms <= METRICS_EVERY_NS // 1_000_000:
            timeout_ms = METRICS_EVERY_NS // 1_000_000     # counters not copied yet: come back soon
        n = self.core.drain(rings, timeout_ms, max_records, max_ns, batch_wait_us, until_ns)
        if n or self.core.busy:
            out = self._collect(metrics_every=METRICS_EVERY_NS)
        else:
            # nothing handled (and no worker with something for us): nothing to take
            out = Emitted()
            if self._metrics_pending:
                self._sync_metrics()
        if n:
            out.newest_ts = self.core.last_ts
        return out

    def unread_before(self, rings, until_ns: int) -> tuple[int, int]:
        """(records, bytes) that `drain(until_ns=until_ns)` has still to read: in each ring,
        those before its first record stamped at or after `until_ns`."""
        return self.core.unread_before(rings, until_ns)

    def settle(self) -> Emitted:
        """With `workers` > 1: wait until they handled what they were sent, and take what
        they made (the drain hands them records and takes their outputs later)."""
        self.core.sync()
        return self._collect()

    def adopt(self, pid: int, ts_ns: int, conn_id: int, fd: int, uid: int, role: int, direction: int,
              local_addr: str, local_port: int, remote_addr: str, remote_port: int, comm: str) -> None:
        """A connection open before the agent started (parsed as a mid-stream join)."""
        self.core.adopt(pid, ts_ns, conn_id, fd, uid, role, direction, local_addr, local_port, remote_addr,
                        remote_port, comm)

    def tick(self, now_ns: int, wait: bool = True) -> Emitted:
        """Periodic reports due at `now_ns`. With workers and `wait=False` (the agent's loop,
        which calls this every turn) they tick at most every 10 ms without being waited
        for: what they produce is taken by a later call."""
        self.core.tick(now_ns, wait)
        return self._collect(metrics_every=0 if wait else METRICS_EVERY_NS)

    def close_all(self, now_ns: int) -> Emitted:
        self.core.close_all(now_ns)
        return self._collect()

    def close_some(self, now_ns: int, max_conns: int = 1024) -> tuple[Emitted, int]:
        """Shutdown in bounded steps: finalise up to max_conns connections; (records, how
        many are left)."""
        left = self.core.close_some(now_ns, max_conns)
        return self._collect(), left

    def abandon_all(self, now_ns: int) -> tuple[Emitted, int]:
        """Shutdown out of time: final reports for the rest, what they hold not parsed
        (counted in shed_bytes["shutdown"]); (records, how many connections)."""
        n = self.core.abandon_all(now_ns)
        return self._collect(), n

    def set_stacks(self, stacks) -> None:
        """A reload: new stacks for the next transaction; HTTP parsing for new connections
        once any stack wants it."""
        self.stacks = stacks
        if stacks is not None and stacks.active:
            self.core.parse_http = True

    @property
    def stacks(self):
        return self._stacks

    @stacks.setter
    def stacks(self, stacks) -> None:
        self._stacks = stacks
        self._plan()

    @property
    def object_url(self):
        return self._object_url

    @object_url.setter
    def object_url(self, object_url) -> None:
        self._object_url = object_url
        self._plan()

    @property
    def events_enabled(self) -> bool:
        return self._events_enabled

    @events_enabled.setter
    def events_enabled(self, on: bool) -> None:
        self._events_enabled = on
        self._plan()

    def _plan(self) -> None:
        # With no event store the summary has no taker: the core only counts the transactions.
        policy = self._summary_policy()
        self.core.set_summary(policy, policy is not None and not self._events_enabled)

    def _summary_policy(self):
        """The redaction the native summary needs, when the plugins would output nothing but
        one `artifact_record` per transaction (else None: every transaction to Python)."""
        stacks = self._stacks
        if not self._native_summary or stacks is None or stacks.cfg.tap.endpoints:
            return None
        stack = stacks.by_name.get(stacks.cfg.tap.http.stack)
        if stack is None or len(stack.plugins) != 1 or type(stack.plugins[0]) is not HttpCapture:
            return None
        config = stack.plugins[0].config
        level = normalise_capture_level(config.level)
        if config.rules or level == "none" or (level != "summary" and self._object_url is not None):
            return None
        r = stacks.redaction
        return r.enabled, sorted(r.query_params), "user-agent" in r.headers, "content-type" in r.headers

    # ---- output ----

    def _collect(self, metrics_every: int = 0) -> Emitted:
        """What the core made, as records; the counters copied into Prometheus (the agent's
        loop, which collects twice a turn: at most every `metrics_every` ns)."""
        out = Emitted()
        items = self.core.take()
        if items:
            self._records(items, out)
        now = monotonic_ns() if metrics_every else 0
        if not metrics_every or now - self._metrics_at >= metrics_every:
            self._metrics_at = now
            self._sync_metrics()
        else:
            self._metrics_pending = True
        return out

    def _records(self, items: list, out: Emitted) -> None:
        clock, stacks, hold = self.clock, self._stacks, self.container_hold
        now = monotonic_ns() if hold is not None else 0
        # A connection's process attributes, once per connection view and call (nothing
        # changes them while this loop runs; the next call starts afresh).
        conn_attrs: dict[int, dict] = {}
        for item in items:
            kind = item[0]
            if kind == _SUMMARY:
                if not self.events_enabled:
                    continue
                _, conn, attrs, body, start_ns = item
                try:
                    shared = conn_attrs.get(id(conn))
                    if shared is None:
                        shared = conn_attrs[id(conn)] = transaction_connection_attrs(conn, stacks.redaction)
                    attrs.update(shared)
                    r = Record(SCOPE_EVENTS, clock(start_ns), body, attrs)
                except Exception:  # as for plugins: a bug costs this transaction, never the agent
                    log.exception("internal error building records for connection %s", conn.id)
                    continue
                if hold is None or not hold.keep(conn.process.container, r, "events", now):
                    out.events.append(r)
            elif kind == _TRANSACTION:
                _, conn, tx, seq = item
                if stacks is None:
                    continue
                try:
                    res = stacks.handle(conn, tx, make_transaction_id(conn.id, seq), wall_ns=clock,
                                        object_url=self.object_url)
                except Exception:  # a plugin bug costs this transaction, never the agent
                    log.exception("internal error building records for connection %s", conn.id)
                    continue
                if res.events and self.events_enabled:
                    if hold is None:
                        out.events.extend(res.events)
                    else:
                        c = conn.process.container
                        out.events.extend(r for r in res.events if not hold.keep(c, r, "events", now))
                if res.objects and self.objects_enabled:
                    if hold is None:
                        out.objects.extend(res.objects)
                    else:
                        c = conn.process.container
                        out.objects.extend(r for r in res.objects if not hold.keep(c, r, "objects", now))
                if res.access_log_lines:
                    out.lines.extend(res.access_log_lines)
            elif kind == _REPORT:
                # a DNS-over-TCP connection is reported by its exchanges (kind _DNS), if at all
                if self.events_enabled and item[1].protocol != "dns":
                    r = connection_record(item[1], item[2], item[3], clock, self.redaction)
                    if hold is None or not hold.keep(item[1].process.container, r, "events", now):
                        out.events.append(r)
            elif kind == _DNS:
                r = self._dns_record(item[1])
                if r is not None and (hold is None or not hold.keep(r.process.container, r.record, "events", now)):
                    out.events.append(r.record)
            elif kind == _PIECES and self.dumper is not None:
                _, conn, flow, source, pieces = item
                self.dumper.on_data(conn, flow, source, pieces, 0)
            elif kind == _CLOSED and self.dumper is not None:
                self.dumper.on_close(item[1])

    def _dns_record(self, ex: dict):
        """A DNS exchange → (process, record), or None when it is not to be reported."""
        if not (self.events_enabled and self.dns_audit.enabled):
            return None
        direction = peer_direction(ex["remote_addr"])
        if not self.dns_audit.reports(ex, direction):
            return None
        proc = self.procs.get(ex["pid"], comm=ex["comm"], uid=ex["uid"])
        if proc.filter_flags & (SKIP_ALL | SKIP_DNS):   # the kernel skips them too once it knows
            return None
        self._dns_seq += 1
        conn = DnsConn(id=f"{self.run_id}u{self._dns_seq:x}", pid=ex["pid"], process=proc, direction=direction,
                       local_addr=ex["local_addr"], local_port=ex["local_port"], remote_addr=ex["remote_addr"],
                       remote_port=ex["remote_port"])
        return _DnsOut(proc, dns_record(ex, conn, self.clock, self.redaction))

    def dns_name(self, addr: str, now_ns: int) -> str | None:
        """The name a DNS answer gave `addr`, if its TTL has not passed at kernel time now_ns."""
        return self.core.dns_name(addr, now_ns)

    def stats(self) -> dict:
        return self.core.stats()

    def _sync_metrics(self) -> None:
        """Copy the native counters into Prometheus (as increments since the last call)."""
        self._metrics_pending = False
        s = self.core.stats()
        seen = self._seen
        for t, n in s["events"].items():
            d = n - seen.get(("events", t), 0)
            if d:
                metrics.kernel_events.labels(abi.EVENT_NAMES.get(t, f"type_{t}")).inc(d)
                seen[("events", t)] = n
        for name, counter in (("unknown_events", metrics.unknown_events), ("orphan_events", metrics.orphan_events),
                              ("orphan_gap_bytes", metrics.orphan_gap_bytes),
                              ("unplaced_gap_bytes", metrics.unplaced_gap_bytes),
                              ("gap_overcount_bytes", metrics.gap_overcount_bytes),
                              ("filtered_connections", metrics.filtered_connections)):
            d = s[name] - seen.get(name, 0)
            if d:
                counter.inc(d)
                seen[name] = s[name]
        for name, counter in (("gap_bytes", metrics.gap_bytes), ("parse_errors", metrics.parse_errors),
                              ("shed_bytes", metrics.shed_bytes)):
            for label, n in s[name].items():
                d = n - seen.get((name, label), 0)
                if d:
                    counter.labels(label).inc(d)
                    seen[(name, label)] = n
        for name in metrics.DATAPLANE_COUNTERS:
            d = s[name] - seen.get(name, 0)
            if d:
                metrics.dataplane.labels(name).inc(d)
                seen[name] = s[name]
        dns = s["dns"]
        for name in metrics.DNS_COUNTERS:
            d = dns[name] - seen.get(("dns", name), 0)
            if d:
                metrics.dns_events.labels(name).inc(d)
                seen[("dns", name)] = dns[name]
        for reason, n in dns["parse_errors"].items():
            d = n - seen.get(("dns_parse", reason), 0)
            if d:
                metrics.dns_parse_errors.labels(reason).inc(d)
                seen[("dns_parse", reason)] = n
        metrics.dns_names.set(dns["names"])
        metrics.connections_active.set(s["connections_active"])
        metrics.held_bytes.set(s["held_bytes"])
