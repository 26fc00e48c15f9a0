"""Decode raw ring-buffer records into typed events.

`decode(raw)` dispatches on the leading `type` field; it is pure (bytes in, event out) so
unit tests build records in memory with the abi layouts and no kernel. An unknown type
or a short record returns None and is counted by the caller, never raised.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..bpf import abi

AF_INET = 2
AF_INET6 = 10


@dataclass(slots=True)
class ConnOpen:
    pid: int
    ts_ns: int
    conn_id: int
    tid: int
    fd: int
    uid: int
    role: int
    direction: str
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    comm: str
    joined: bool = False   # open before the agent started: bytes counted from the join


@dataclass(slots=True)
class ConnClose:
    pid: int
    ts_ns: int
    conn_id: int
    bytes_sent: int
    bytes_recv: int
    fd: int


@dataclass(slots=True)
class Data:
    pid: int
    ts_ns: int
    conn_id: int
    offset: int
    flow: int       # abi.FLOW_SEND | FLOW_RECV
    source: int     # abi.SRC_SOCKET | SRC_TLS
    fd: int
    data: bytes


@dataclass(slots=True)
class Gap:
    pid: int
    ts_ns: int
    conn_id: int
    offset: int
    length: int
    flow: int
    source: int
    reason: str


@dataclass(slots=True)
class ProcExec:
    pid: int
    ts_ns: int
    ppid: int
    uid: int
    filename: str
    argv: list[str]


@dataclass(slots=True)
class ProcExit:
    pid: int
    ts_ns: int
    exit_code: int


@dataclass(slots=True)
class SockState:
    pid: int
    ts_ns: int
    conn_id: int
    oldstate: int
    newstate: int


Event = ConnOpen | ConnClose | Data | Gap | ProcExec | ProcExit | SockState

_OPEN = abi.CONN_OPEN.struct
_CLOSE = abi.CONN_CLOSE.struct
_DATA = abi.DATA.struct
_GAP = abi.GAP.struct
_EXEC = abi.PROC_EXEC.struct
_EXIT = abi.PROC_EXIT.struct
_STATE = abi.SOCK_STATE.struct
_TYPE = struct.Struct("<I")
_PAYLOAD = abi.DATA_PAYLOAD_OFFSET


def format_addr(family: int, raw: bytes) -> str:
    """Text form of a kernel address; IPv4-mapped IPv6 is shown as plain IPv4."""
    if family == AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def decode(raw: bytes) -> Event | None:
    """One ring-buffer record → event, or None for an unknown type or a short record."""
    if len(raw) < 4:
        return None
    t = _TYPE.unpack_from(raw)[0]
    try:
        if t == abi.EV_DATA:
            (_, pid, ts, cid, off, n, flow, src, _p, fd, _p1) = _DATA.unpack_from(raw)
            if len(raw) < _PAYLOAD + n:
                return None
            return Data(pid, ts, cid, off, flow, src, fd, raw[_PAYLOAD:_PAYLOAD + n])
        if t == abi.EV_CONN_OPEN:
            (_, pid, ts, cid, tid, fd, uid, fam, role, dirn, lport, rport, _p,
             laddr, raddr, comm) = _OPEN.unpack_from(raw)
            return ConnOpen(pid, ts, cid, tid, fd, uid, role, abi.DIRECTION_NAMES.get(dirn, "egress-external"),
                            format_addr(fam, laddr), lport, format_addr(fam, raddr), rport, _cstr(comm))
        if t == abi.EV_CONN_CLOSE:
            (_, pid, ts, cid, sent, recv, fd, _reason) = _CLOSE.unpack_from(raw)
            return ConnClose(pid, ts, cid, sent, recv, fd)
        if t == abi.EV_GAP:
            (_, pid, ts, cid, off, n, flow, src, reason, _p) = _GAP.unpack_from(raw)
            return Gap(pid, ts, cid, off, n, flow, src, abi.GAP_REASONS.get(reason, "unknown"))
        if t == abi.EV_PROC_EXEC:
            (_, pid, ts, ppid, uid, flen, alen, _p, fname, args) = _EXEC.unpack_from(raw)
            raw_args = args[:alen].rstrip(b"\0")
            argv = [a.decode("utf-8", "replace") for a in raw_args.split(b"\0")] if raw_args else []
            return ProcExec(pid, ts, ppid, uid, fname[:flen].decode("utf-8", "replace"), argv)
        if t == abi.EV_PROC_EXIT:
            (_, pid, ts, code, _p) = _EXIT.unpack_from(raw)
            return ProcExit(pid, ts, code)
        if t == abi.EV_SOCK_STATE:
            (_, pid, ts, cid, old, new) = _STATE.unpack_from(raw)
            return SockState(pid, ts, cid, old, new)
    except struct.error:
        return None
    return None
