"""DNS exchanges as connection events (`connection.protocol = "dns"`), RECORDS.md's DNS section.

The native data plane pairs a query with its answer (by process, socket and DNS id) and
hands over one dict per exchange (`plaintap._core.DataPlane.take`, kind 4): the two ends,
the question, the response code and the answers as text. With `tap.audit_include_dns`
each exchange that passes the tap's loopback, direction and process filters becomes one
connection record — a finished one (`part` 0, `finalized`), like a connection that closed
before its first report. Without it nothing is reported: the data plane still learns the
names (the address → name map that names later connections). DNS over TCP (a connection
to port 53) is reported the same way, one event per exchange with `network.transport:
tcp`; the TCP connection's own reports are not made (its exchanges stand for it).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable

from ..bpf import abi
from .connection import endpoint_attrs
from .model import SCOPE_EVENTS, Record
from .redact import DEFAULT_REDACTION, Redaction


def peer_direction(addr: str) -> str:
    """qtap's class of an egress peer: private, loopback, link-local and CGNAT addresses
    are internal (the kernel's is_internal, for the DNS server's address)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return "egress-external"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_link_local or ip.is_private or ip in _CGNAT:
        return "egress-internal"
    return "egress-external"


_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_DIRECTION_BITS = {"ingress": abi.DIR_INGRESS, "egress-internal": abi.DIR_EGRESS_INTERNAL,
                   "egress-external": abi.DIR_EGRESS_EXTERNAL}


def is_loopback(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@dataclass(frozen=True)
class DnsAudit:
    """Which DNS exchanges become records: `tap.audit_include_dns` and the tap's
    `ignore_loopback` and `direction` (a mask of abi.DIR_* bits)."""

    enabled: bool = False
    ignore_loopback: bool = True
    direction_mask: int = abi.DIR_EGRESS_EXTERNAL

    def reports(self, ex: dict, direction: str) -> bool:
        if not self.enabled:
            return False
        if self.ignore_loopback and is_loopback(ex["remote_addr"]):
            return False
        return bool(self.direction_mask & _DIRECTION_BITS.get(direction, 0))


@dataclass
class DnsConn:
    """The connection-shaped view of one exchange that endpoint_attrs reads."""

    id: str
    pid: int
    process: object
    direction: str
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    is_client: bool = True
    domain: str = ""


def dns_record(ex: dict, conn: DnsConn, wall_ns: Callable[[int], int],
               redaction: Redaction = DEFAULT_REDACTION) -> Record:
    """One exchange → one finished connection event (RECORDS.md, DNS)."""
    qname = ex.get("question_name") or ""
    qtype = ex.get("question_type") or ""
    rcode = ex.get("response_code")
    answers = list(ex.get("answers") or ())
    outcome = rcode if rcode is not None else "no answer"
    if answers:
        outcome += " " + ", ".join(answers[:3]) + (" …" if len(answers) > 3 else "")
    body = (f"Connection: [{conn.direction} via dns] {conn.process.exe_name or '?'} → "
            f"{conn.remote_addr}:{conn.remote_port} {qtype} {qname}: {outcome}")
    attrs = {
        "event.type": "connection",
        "connection.part": 0,
        "connection.finalized": True,
        "connection.protocol": "dns",
        "network.transport": ex.get("transport") or "udp",
        "tls.enabled": False,
        "tls.inspected": False,
        "connection.bytes_sent": int(ex.get("bytes_sent") or 0),
        "connection.bytes_received": int(ex.get("bytes_recv") or 0),
    }
    attrs.update(endpoint_attrs(conn, redaction))
    if qname:
        attrs["dns.question.name"] = qname
    if qtype:
        attrs["dns.question.type"] = qtype
    if rcode is not None:
        attrs["dns.response_code"] = rcode
    attrs["dns.answers"] = answers
    return Record(SCOPE_EVENTS, wall_ns(ex["ts_ns"]), body, attrs)
