"""A tiny test-owned DNS server (UDP): answers A/AAAA/HTTPS questions from a fixed table.

    dnsserver.py ADDR TTL NAME=IPV4 [NAME=IPV4 ...]

Binds ADDR:53 (UDP and TCP, RFC 1035's 2-byte length prefix), prints one JSON line
{"addr": ADDR, "port": 53} when ready, and answers until killed: an A question for a NAME in the table gets its address (TTL
seconds), an HTTPS question gets `1 . alpn=h2 ipv4hint=<address>`, AAAA gets NOERROR with
no answer, any other name NXDOMAIN. Compression pointers name the question, as real
servers do. Unparseable datagrams are ignored.
"""
from __future__ import annotations

import ipaddress
import json
import socket
import struct
import sys
import threading


def question(msg: bytes) -> tuple[str, int, int]:
    """(name, qtype, end offset) of the first question (plain labels only)."""
    pos, labels = 12, []
    while msg[pos]:
        n = msg[pos]
        labels.append(msg[pos + 1:pos + 1 + n].decode())
        pos += 1 + n
    qtype = struct.unpack(">H", msg[pos + 1:pos + 3])[0]
    return ".".join(labels), qtype, pos + 5


def answer(msg: bytes, table: dict[str, str], ttl: int) -> bytes:
    name, qtype, end = question(msg)
    addr = table.get(name.lower())
    rrs = []
    if addr is not None and qtype == 1:
        rrs.append(struct.pack(">HHHIH", 0xC00C, 1, 1, ttl, 4) + ipaddress.IPv4Address(addr).packed)
    elif addr is not None and qtype == 65:
        data = b"\x00\x01\x00" + b"\x00\x01\x00\x03\x02h2" + b"\x00\x04\x00\x04" + ipaddress.IPv4Address(addr).packed
        rrs.append(struct.pack(">HHHIH", 0xC00C, 65, 1, ttl, len(data)) + data)
    rcode = 0 if addr is not None else 3
    flags = 0x8180 | rcode
    header = struct.pack(">HHHHHH", struct.unpack(">H", msg[:2])[0], flags, 1, len(rrs), 0, 0)
    return header + msg[12:end] + b"".join(rrs)


def recv_exact(c: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = c.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def serve_tcp(t: socket.socket, table: dict[str, str], ttl: int) -> None:
    while True:
        c, _ = t.accept()
        with c:
            try:
                while True:
                    n = struct.unpack(">H", recv_exact(c, 2))[0]
                    reply = answer(recv_exact(c, n), table, ttl)
                    c.sendall(struct.pack(">H", len(reply)) + reply)
            except (EOFError, OSError, IndexError, UnicodeDecodeError, struct.error):
                pass


def main() -> None:
    addr, ttl = sys.argv[1], int(sys.argv[2])
    table = dict(a.lower().split("=", 1) for a in sys.argv[3:])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, 53))
    t.listen(8)
    threading.Thread(target=serve_tcp, args=(t, table, ttl), daemon=True).start()
    print(json.dumps({"addr": addr, "port": 53}), flush=True)
    while True:
        msg, peer = s.recvfrom(4096)
        try:
            reply = answer(msg, table, ttl)
        except (IndexError, UnicodeDecodeError, struct.error):
            continue
        s.sendto(reply, peer)


if __name__ == "__main__":
    main()
