"""Raw kernel records built in memory with the ABI layouts (bpf/events.h), and a small
driver of the native data plane, for unit tests with no kernel."""
from __future__ import annotations

import socket

from plaintap import _core
from plaintap.bpf import abi
from plaintap.capture.process import ProcessInfo, ProcessTable

MS = 1_000_000


def v4(addr: str) -> bytes:
    return socket.inet_aton(addr) + bytes(12)


def conn_open(kid, ts, pid=10, fd=3, role=abi.ROLE_CLIENT, direction=abi.DIR_EGRESS_EXTERNAL,
              local=("10.0.0.1", 1000), remote=("1.1.1.1", 443), comm=b"x", uid=0, family=2,
              laddr=None, raddr=None) -> bytes:
    return abi.CONN_OPEN.struct.pack(abi.EV_CONN_OPEN, pid, ts, kid, pid, fd, uid, family, role, direction,
                                     local[1], remote[1], 0, laddr or v4(local[0]), raddr or v4(remote[0]), comm)


def conn_close(kid, ts, pid=10, sent=0, recv=0, fd=3, reason=abi.CLOSE_SYSCALL, tls_sent=0, tls_recv=0,
               lost=0) -> bytes:
    return abi.CONN_CLOSE.struct.pack(abi.EV_CONN_CLOSE, pid, ts, kid, sent, recv, fd, reason, tls_sent, tls_recv,
                                      lost)


def data(kid, ts, offset, payload: bytes, flow=abi.FLOW_SEND, source=abi.SRC_SOCKET, pid=10, fd=3) -> bytes:
    return abi.DATA.struct.pack(abi.EV_DATA, pid, ts, kid, offset, len(payload), flow, source, 0, fd, 0) + payload


def gap(kid, ts, offset, length, flow=abi.FLOW_SEND, source=abi.SRC_SOCKET, reason=1, pid=10) -> bytes:
    return abi.GAP.struct.pack(abi.EV_GAP, pid, ts, kid, offset, length, flow, source, reason, 0)


def proc_exec(pid, ts, filename: bytes, args: bytes, ppid=1, uid=0) -> bytes:
    return abi.PROC_EXEC.struct.pack(abi.EV_PROC_EXEC, pid, ts, ppid, uid, len(filename), len(args), 0,
                                     filename, args)


def proc_exit(pid, ts, code=0) -> bytes:
    return abi.PROC_EXIT.struct.pack(abi.EV_PROC_EXIT, pid, ts, code, 0)


def sock_state(kid, ts, new, old=1, pid=10) -> bytes:
    return abi.SOCK_STATE.struct.pack(abi.EV_SOCK_STATE, pid, ts, kid, old, new)


def dgram(ts, payload: bytes, flow=abi.FLOW_SEND, pid=10, fd=5, sk=0xFFFF0001, local=("10.0.0.1", 40000),
          remote=("10.0.0.53", 53), comm=b"x", uid=0, orig_len=None) -> bytes:
    """An EV_DGRAM record: one UDP datagram to (FLOW_SEND) or from (FLOW_RECV) port 53."""
    return abi.DGRAM.struct.pack(abi.EV_DGRAM, pid, ts, sk, pid, fd, uid, 2, flow, 1, local[1], remote[1],
                                 len(payload), len(payload) if orig_len is None else orig_len, 0,
                                 v4(local[0]), v4(remote[0]), comm) + payload


class StaticProcs(ProcessTable):
    """Every pid is /usr/bin/x (no /proc reads)."""

    def get(self, pid, comm="", uid=None):
        return ProcessInfo(pid, exe="/usr/bin/x", comm=comm, uid=uid)


class Hooks:
    """What the agent's hooks do, recorded: the process table answers, forget is logged."""

    def __init__(self, procs=None):
        self.procs = procs if procs is not None else StaticProcs()
        self.forgotten: list[tuple[int, int]] = []
        self.execs: list[tuple] = []
        self.exits: list[int] = []

    def on_exec(self, pid, ts, ppid, uid, filename, argv):
        self.execs.append((pid, filename, argv))
        self.procs.on_exec(pid, filename, argv, uid)

    def on_exit(self, pid, ts):
        self.exits.append(pid)
        self.procs.on_exit(pid)

    def on_open(self, pid, fd, comm, uid):
        p = self.procs.get(pid, comm=comm, uid=uid)
        return p, p.filter_flags

    def forget(self, pid, fd):
        self.forgotten.append((pid, fd))


class Plane:
    """A DataPlane with recording hooks; `feed` returns what came out, split by kind."""

    def __init__(self, procs=None, **kw):
        self.hooks = Hooks(procs)
        kw.setdefault("parse_http", False)
        self.dp = _core.DataPlane(self.hooks, **kw)
        self.reports, self.txs, self.pieces, self.closed, self.dns = [], [], [], [], []

    def _take(self):
        for item in self.dp.take():
            kind = item[0]
            if kind == 0:
                self.reports.append(item[1:])
            elif kind == 1:
                self.txs.append(item[1:])
            elif kind == 2:
                self.pieces.append(item[1:])
            elif kind == 5:
                self.dns.append(item[1])
            else:
                self.closed.append(item[1])

    def feed(self, *records):
        self.dp.feed(list(records))
        self._take()
        return self

    def tick(self, now):
        self.dp.tick(now)
        self._take()

    def close_all(self, now):
        self.dp.close_all(now)
        self._take()

    @property
    def stats(self):
        return self.dp.stats()
