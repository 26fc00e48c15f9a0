"""Connection table: kernel events in, ordered streams and connection reports out.

Connections are keyed by the kernel's conn_id, which is unique per agent run, so an fd
reused by a new connection can never be confused with the old one. Each connection owns
one reassembly `Stream` per (flow, source); ordered pieces go to the stream consumers
(protocol parsers, stream dumps). Reports follow qtap's timing: one ~500 ms after open,
then every 10 s, then a final one on close (`finalized`); a connection that closes before
its first report gets only the final one. All timing uses kernel timestamps passed in.
"""
from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..bpf import abi
from ..capture import filters
from ..capture.decode import ConnClose, ConnOpen, Data, Gap, ProcExec, ProcExit, SockState
from ..capture.process import ProcessInfo, ProcessTable
from .. import metrics
from .reassembly import Stream

log = logging.getLogger("plaintap.conn")

FIRST_REPORT_NS = 500_000_000
REPORT_INTERVAL_NS = 10_000_000_000
TCP_ESTABLISHED = 1

# The tap.filters bits that keep a stream's bytes from the consumers (counts still kept).
_FILTERED_BY_SOURCE = {abi.SRC_SOCKET: filters.SKIP_DATA, abi.SRC_TLS: filters.SKIP_DATA | filters.SKIP_TLS}


@dataclass(slots=True)
class Connection:
    kid: int                      # kernel conn_id
    id: str                       # record-level connection.id
    pid: int
    fd: int
    role: int                     # abi.ROLE_CLIENT | ROLE_SERVER
    direction: str
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    open_ns: int
    process: ProcessInfo
    close_ns: int | None = None
    bytes_sent: int = 0
    bytes_recv: int = 0
    streams: dict = field(default_factory=dict)    # (flow, source) → Stream
    protocol: str = "tcp"
    domain: str = ""
    tls_enabled: bool = False
    tls_inspected: bool = False
    tls_version: str = ""
    tls_sni: str = ""
    tls_alpn: str = ""
    established: bool = True
    joined: bool = False           # adopted at start-up: its start was not seen
    skip: int = 0                  # tap.filters bits of its process (capture/filters.py)
    parts: int = 0
    finalized: bool = False
    state: dict = field(default_factory=dict)      # per-consumer state (parsers, files)

    @property
    def is_client(self) -> bool:
        return self.role == abi.ROLE_CLIENT

    def stream(self, flow: int, source: int) -> Stream:
        s = self.streams.get((flow, source))
        if s is None:
            s = self.streams[(flow, source)] = Stream()
        return s


class StreamConsumer(Protocol):
    def on_open(self, conn: Connection) -> None: ...
    def on_data(self, conn: Connection, flow: int, source: int, pieces: list, ts_ns: int) -> None: ...
    def on_close(self, conn: Connection) -> None: ...


ReportFn = Callable[[Connection, int, bool], None]


class ConnectionTracker:
    def __init__(self, procs: ProcessTable, report: ReportFn, consumers: list[StreamConsumer] | None = None,
                 forget_kernel_entry: Callable[[int, int], None] | None = None, run_id: str = "",
                 first_report_ns: int = FIRST_REPORT_NS, interval_ns: int = REPORT_INTERVAL_NS) -> None:
        self.procs = procs
        self.report = report
        self.consumers = consumers or []
        self.forget_kernel_entry = forget_kernel_entry
        self.run_id = run_id
        self.first_report_ns = first_report_ns
        self.interval_ns = interval_ns
        self.conns: dict[int, Connection] = {}
        self.by_pid: dict[int, set[int]] = {}
        self._due: list[tuple[int, int]] = []      # (due_ns, kid)
        self._skipped: set[int] = set()            # kids of connections tap.filters skip

    # ---- events ----

    def handle(self, ev) -> None:
        t = type(ev)
        if t is Data:
            self._on_data(ev)
        elif t is ConnOpen:
            self._on_open(ev)
        elif t is ConnClose:
            conn = self.conns.get(ev.conn_id)
            if conn is None:
                self._skipped.discard(ev.conn_id)
            else:
                conn.bytes_sent = max(conn.bytes_sent, ev.bytes_sent)
                conn.bytes_recv = max(conn.bytes_recv, ev.bytes_recv)
                self._finish(conn, ev.ts_ns)
        elif t is Gap:
            self._on_gap(ev)
        elif t is ProcExec:
            self.procs.on_exec(ev.pid, ev.filename, ev.argv, ev.uid, ev.ppid)
        elif t is ProcExit:
            for kid in list(self.by_pid.get(ev.pid, ())):
                conn = self.conns.get(kid)
                if conn is not None:
                    if self.forget_kernel_entry:
                        self.forget_kernel_entry(conn.pid, conn.fd)
                    self._finish(conn, ev.ts_ns)
            self.procs.on_exit(ev.pid)
        elif t is SockState:
            conn = self.conns.get(ev.conn_id)
            if conn is not None and ev.newstate == TCP_ESTABLISHED:
                conn.established = True

    def _on_open(self, ev: ConnOpen) -> None:
        old = self.conns.get(ev.conn_id)
        if old is not None:  # cannot happen with unique ids; never mix two connections
            self._finish(old, ev.ts_ns)
        proc = self.procs.get(ev.pid, comm=ev.comm, uid=ev.uid)
        if proc.filter_flags & filters.SKIP_ALL:
            # The kernel skips it too once it knows; this closes the window after exec.
            metrics.filtered_connections.inc()
            if len(self._skipped) >= 65536:   # those of processes that exited without close()
                self._skipped.clear()
            self._skipped.add(ev.conn_id)
            if self.forget_kernel_entry:
                self.forget_kernel_entry(ev.pid, ev.fd)
            return
        conn = Connection(
            kid=ev.conn_id, id=f"{self.run_id}{ev.conn_id:x}", pid=ev.pid, fd=ev.fd, role=ev.role,
            direction=ev.direction, local_addr=ev.local_addr, local_port=ev.local_port,
            remote_addr=ev.remote_addr, remote_port=ev.remote_port, open_ns=ev.ts_ns, process=proc,
            joined=ev.joined, skip=proc.filter_flags)
        self.conns[ev.conn_id] = conn
        self.by_pid.setdefault(ev.pid, set()).add(ev.conn_id)
        heapq.heappush(self._due, (ev.ts_ns + self.first_report_ns, ev.conn_id))
        metrics.connections_active.inc()
        for c in self.consumers:
            c.on_open(conn)

    def _orphan(self, conn_id: int) -> None:
        """An event for a connection not in the table: counted unless tap.filters skipped it."""
        if conn_id not in self._skipped:
            metrics.orphan_events.inc()

    def _on_data(self, ev: Data) -> None:
        conn = self.conns.get(ev.conn_id)
        if conn is None:
            self._orphan(ev.conn_id)
            return
        end = ev.offset + len(ev.data)
        if ev.source == abi.SRC_SOCKET:
            if ev.flow == abi.FLOW_SEND:
                if end > conn.bytes_sent:
                    conn.bytes_sent = end
            elif end > conn.bytes_recv:
                conn.bytes_recv = end
        if conn.skip & _FILTERED_BY_SOURCE[ev.source]:
            return
        if ev.source == abi.SRC_TLS:
            conn.tls_inspected = conn.tls_enabled = True
        pieces: list = []
        conn.stream(ev.flow, ev.source).add(ev.offset, ev.data, pieces)
        if pieces:
            for c in self.consumers:
                c.on_data(conn, ev.flow, ev.source, pieces, ev.ts_ns)

    def _on_gap(self, ev: Gap) -> None:
        conn = self.conns.get(ev.conn_id)
        if conn is None:
            self._orphan(ev.conn_id)
            return
        metrics.gap_bytes.labels(ev.reason).inc(ev.length)
        end = ev.offset + ev.length
        if ev.source == abi.SRC_SOCKET:
            if ev.flow == abi.FLOW_SEND:
                conn.bytes_sent = max(conn.bytes_sent, end)
            else:
                conn.bytes_recv = max(conn.bytes_recv, end)
        if conn.skip & _FILTERED_BY_SOURCE[ev.source]:
            return
        pieces: list = []
        conn.stream(ev.flow, ev.source).add_gap(ev.offset, ev.length, pieces)
        if pieces:
            for c in self.consumers:
                c.on_data(conn, ev.flow, ev.source, pieces, ev.ts_ns)

    def _finish(self, conn: Connection, ts_ns: int) -> None:
        conn.close_ns = ts_ns
        for (flow, source), stream in conn.streams.items():
            pieces: list = []
            stream.flush(pieces)
            if pieces:
                for c in self.consumers:
                    c.on_data(conn, flow, source, pieces, ts_ns)
        for c in self.consumers:
            c.on_close(conn)
        conn.finalized = True
        self.report(conn, conn.parts, True)
        conn.parts += 1
        del self.conns[conn.kid]
        pids = self.by_pid.get(conn.pid)
        if pids is not None:
            pids.discard(conn.kid)
            if not pids:
                del self.by_pid[conn.pid]
        metrics.connections_active.dec()

    # ---- time ----

    def tick(self, now_ns: int) -> None:
        """Emit the periodic reports that are due at kernel time now_ns."""
        due = self._due
        while due and due[0][0] <= now_ns:
            _, kid = heapq.heappop(due)
            conn = self.conns.get(kid)
            if conn is None:
                continue
            self.report(conn, conn.parts, False)
            conn.parts += 1
            heapq.heappush(due, (now_ns + self.interval_ns, kid))

    def close_all(self, now_ns: int) -> None:
        """Shutdown: finalise every open connection."""
        for conn in list(self.conns.values()):
            self._finish(conn, now_ns)
