"""Resolve a name through a given DNS server with real DNS packets, then talk plain HTTP
to the answer with no Host header.

    dnsclient.py SERVER NAME HTTP_PORT [--garbage] [--tcp]

Sends an A query for NAME to SERVER:53 with sendto() from an unconnected UDP socket,
reads the answer with recvfrom(), connects over TCP to the first address answered at
HTTP_PORT and sends `GET /dns-probe HTTP/1.0` without Host (so the connection has no
SNI and no Host: only DNS can name it). With --garbage it first sends a datagram that is
not DNS to SERVER:53. With --tcp the query goes over TCP (2-byte length prefix, one
connection, the query written in two pieces). Prints one JSON line: {"pid", "address", "local_port", "status"}.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import sys


def query(qid: int, name: str, qtype: int = 1) -> bytes:
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", qtype, 1)


def first_a(msg: bytes) -> str:
    """The first A record's address in a response (the server compresses to the question)."""
    qd, an = struct.unpack(">HH", msg[4:8])
    pos = 12
    while msg[pos]:
        pos += 1 + msg[pos]
    pos += 5
    for _ in range(an):
        pos += 2  # a pointer to the question name
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", msg[pos:pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            return socket.inet_ntoa(msg[pos:pos + 4])
        pos += rdlen
    raise SystemExit(f"no A record in the answer (rcode {msg[3] & 15})")


def recv_exact(c: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = c.recv(n - len(data))
        if not chunk:
            raise SystemExit("DNS server closed the connection early")
        data += chunk
    return data


def main() -> None:
    server, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(10)
    if "--garbage" in sys.argv:
        u.sendto(b"\x12\x34 this is not DNS", (server, 53))
    qid = os.getpid() & 0xFFFF
    if "--tcp" in sys.argv:
        with socket.create_connection((server, 53), timeout=10) as t:
            q = query(qid, name)
            framed = struct.pack(">H", len(q)) + q
            t.sendall(framed[:5])
            t.sendall(framed[5:])
            n = struct.unpack(">H", recv_exact(t, 2))[0]
            msg = recv_exact(t, n)
    else:
        u.sendto(query(qid, name), (server, 53))
        while True:
            msg, peer = u.recvfrom(4096)
            if peer == (server, 53) and msg[:2] == struct.pack(">H", qid):
                break
    addr = first_a(msg)
    with socket.create_connection((addr, port), timeout=10) as c:
        c.sendall(b"GET /dns-probe HTTP/1.0\r\nUser-Agent: dnsclient\r\n\r\n")
        data = b""
        while chunk := c.recv(65536):
            data += chunk
        local_port = c.getsockname()[1]
    status = int(data.split(b" ", 2)[1])
    print(json.dumps({"pid": os.getpid(), "address": addr, "local_port": local_port, "status": status}))


if __name__ == "__main__":
    main()
