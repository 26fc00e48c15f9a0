"""Connections that were already open when the agent started.

Tracepoints only see connect/accept calls made after attach, so a long-lived connection
(a keep-alive pool, a gRPC channel) opened earlier would stay invisible. At start-up,
after the programs are attached, this module lists ESTABLISHED TCP sockets per network
namespace (/proc/<pid>/net/tcp{,6}) and the processes holding them (/proc/<pid>/fd), and
returns them for the pipeline to add to the kernel's connection table. Their bytes are
counted from the join and parsed as a mid-stream join (resynchronise at the next
request). Role: a socket whose local port is also LISTENing in that namespace is the
server end (ingress), otherwise the client end.

Everything here is best effort: processes and sockets vanish while we look.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from ..bpf import abi

TCP_ESTABLISHED = "01"
TCP_LISTEN = "0A"


@dataclass(frozen=True)
class ExistingConnection:
    pid: int
    fd: int
    role: int            # abi.ROLE_CLIENT | ROLE_SERVER
    direction: int       # abi.DIR_*
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    inode: int


def _addr(hexaddr: str) -> str:
    """/proc/net/tcp address (host-order 32-bit words in hex) → text."""
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, struct.pack("<I", struct.unpack(">I", raw)[0]))
    words = struct.unpack(">4I", raw)
    a = ipaddress.IPv6Address(struct.pack("<4I", *words))
    return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)


def parse_proc_net_tcp(text: str) -> tuple[dict[int, tuple[str, int, str, int]], set[int]]:
    """(inode → (local addr, local port, remote addr, remote port)) of ESTABLISHED
    sockets, and the set of LISTENing local ports, from a /proc/net/tcp{,6} text."""
    established, listening = {}, set()
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        local, remote, state, inode = f[1], f[2], f[3], int(f[9])
        lhex, lport = local.split(":")
        if state == TCP_LISTEN:
            listening.add(int(lport, 16))
        elif state == TCP_ESTABLISHED and inode:
            rhex, rport = remote.split(":")
            established[inode] = (_addr(lhex), int(lport, 16), _addr(rhex), int(rport, 16))
    return established, listening


_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def direction_of(role: int, remote: str) -> int:
    """The same classification the kernel makes (capture.bpf.c is_internal)."""
    if role == abi.ROLE_SERVER:
        return abi.DIR_INGRESS
    ip = ipaddress.ip_address(remote)
    internal = ip.is_private or ip.is_loopback or ip.is_link_local or (ip.version == 4 and ip in _CGNAT)
    return abi.DIR_EGRESS_INTERNAL if internal else abi.DIR_EGRESS_EXTERNAL


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def find_existing(skip_pids: set[int], direction_mask: int, ignore_loopback: bool,
                  proc: str = "/proc") -> list[ExistingConnection]:
    """Established TCP connections of every process, filtered like the kernel filters."""
    by_netns: dict[str, tuple[dict, set]] = {}
    out = []
    for name in os.listdir(proc):
        if not name.isdigit() or int(name) in skip_pids:
            continue
        pid = int(name)
        try:
            netns = os.readlink(f"{proc}/{pid}/ns/net")
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            continue
        if netns not in by_netns:
            est, lis = {}, set()
            for f in ("tcp", "tcp6"):
                e, li = parse_proc_net_tcp(_read(f"{proc}/{pid}/net/{f}"))
                est.update(e)
                lis |= li
            by_netns[netns] = (est, lis)
        est, lis = by_netns[netns]
        if not est:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            if not link.startswith("socket:["):
                continue
            ends = est.get(int(link[8:-1]))
            if ends is None:
                continue
            laddr, lport, raddr, rport = ends
            if ignore_loopback and ipaddress.ip_address(raddr).is_loopback:
                continue
            role = abi.ROLE_SERVER if lport in lis else abi.ROLE_CLIENT
            direction = direction_of(role, raddr)
            if not direction & direction_mask:
                continue
            out.append(ExistingConnection(pid, int(fd), role, direction, laddr, lport, raddr, rport,
                                          int(link[8:-1])))
    return out
