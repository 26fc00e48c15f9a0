"""Connection events (`event.type = connection`), built purely from a Connection.

Attribute names and types follow ../shared/reference/RECORDS.md exactly. `wall_ns` maps a
kernel monotonic timestamp to wall-clock time (the injected clock). `redaction` is the
policy for `process.command_line` (records/redact.py; on by default).
"""
from __future__ import annotations

from typing import Callable

from .model import SCOPE_EVENTS, Record
from .redact import DEFAULT_REDACTION, Redaction


def shown_command_line(p, redaction: Redaction = DEFAULT_REDACTION) -> str:
    """`process.command_line` for records: masked and cut by `redaction`, computed once
    per process and policy."""
    cached = p.shown_cmdline
    if cached and cached[0] is redaction and cached[1] == p.cmdline:
        return cached[2]
    text = redaction.command_line(p.argv, p.cmdline)
    p.shown_cmdline = (redaction, p.cmdline, text)
    return text


def endpoint_attrs(conn, redaction: Redaction = DEFAULT_REDACTION) -> dict:
    """The two ends of a connection and the local process, shared by every event type."""
    if conn.is_client:
        client = (conn.local_addr, conn.local_port)
        server = (conn.domain or conn.remote_addr, conn.remote_port)
    else:
        client = (conn.remote_addr, conn.remote_port)
        server = (conn.domain or conn.local_addr, conn.local_port)
    p = conn.process
    attrs = {
        "connection.id": conn.id,
        "connection.direction": conn.direction,
        "client.address": client[0],
        "client.port": client[1],
        "server.address": server[0],
        "server.port": server[1],
        "network.peer.address": conn.remote_addr,
        "network.peer.port": conn.remote_port,
        "network.local.address": conn.local_addr,
        "network.local.port": conn.local_port,
        "process.pid": conn.pid,
        "process.executable.path": p.exe,
        "process.executable.name": p.exe_name,
        "process.command_line": shown_command_line(p, redaction),
    }
    if p.uid is not None:
        attrs["process.user.id"] = p.uid
    attrs.update(p.container_attributes())
    return attrs


def connection_record(conn, part: int, finalized: bool, wall_ns: Callable[[int], int],
                      redaction: Redaction = DEFAULT_REDACTION) -> Record:
    arrow = "→" if conn.is_client else "←"
    peer = conn.domain or conn.remote_addr
    body = (f"Connection: [{conn.direction} via {conn.protocol}] "
            f"{conn.process.exe_name or '?'} {arrow} {peer}:{conn.remote_port}")
    attrs = {
        "event.type": "connection",
        "connection.part": part,
        "connection.finalized": finalized,
        "connection.protocol": conn.protocol,
        "network.transport": "tcp",
        "tls.enabled": conn.tls_enabled,
        "tls.inspected": conn.tls_inspected,
        "connection.bytes_sent": conn.bytes_sent,
        "connection.bytes_received": conn.bytes_recv,
    }
    attrs.update(endpoint_attrs(conn, redaction))
    if conn.tls_version:
        attrs["tls.protocol.version"] = conn.tls_version
    if conn.tls_sni:
        attrs["tls.sni"] = conn.tls_sni
    if conn.tls_alpn:
        attrs["tls.next_protocol"] = conn.tls_alpn
    return Record(SCOPE_EVENTS, wall_ns(conn.open_ns), body, attrs)
