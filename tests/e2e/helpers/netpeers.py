"""Small real network peers for the capture tests; each reports exactly what it moved.

    netpeers.py server --family 4|6 --mode http|bulk|echo|sink --conns N [--body BYTES]
        prints "ready <port>" then, after N connections, one JSON line with per-connection
        {peer_port, read, written, read_sha256, written_sha256} and its pid.
    netpeers.py bulk-client --family 4|6 --port P --size BYTES
        uploads BYTES random bytes (after an 8-byte length), downloads as many back.
    netpeers.py many-client --family 4|6 --port P --sequential N --concurrent M
        N one-at-a-time connections, then M open at once; each sends "conn <i> port <p>\\n".
Only loopback addresses are ever used.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import struct
import sys
import threading


def addr(family: str) -> tuple[int, str]:
    return (socket.AF_INET6, "::1") if family == "6" else (socket.AF_INET, "127.0.0.1")


def recv_exact(s: socket.socket, n: int, h) -> int:
    got = 0
    while got < n:
        b = s.recv(min(1 << 20, n - got))
        if not b:
            break
        h.update(b)
        got += len(b)
    return got


def serve(args) -> None:
    fam, host = addr(args.family)
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, 0))
    ls.listen(512)
    print(f"ready {ls.getsockname()[1]}", flush=True)
    results, lock = [], threading.Lock()

    def handle(c: socket.socket, peer) -> None:
        rh, wh = hashlib.sha256(), hashlib.sha256()
        read = written = 0
        if args.mode == "http":
            buf = b""
            while b"\r\n\r\n" not in buf:
                b = c.recv(65536)
                if not b:
                    break
                buf += b
            rh.update(buf)
            read = len(buf)
            body = os.urandom(args.body)
            resp = (b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body)) + body
            c.sendall(resp)
            wh.update(resp)
            written = len(resp)
        elif args.mode == "bulk":
            hdr = c.recv(8, socket.MSG_WAITALL)
            rh.update(hdr)
            (n,) = struct.unpack("<Q", hdr)
            read = 8 + recv_exact(c, n, rh)
            data = os.urandom(n)
            c.sendall(data)
            wh.update(data)
            written = n
        elif args.mode == "sink":  # read to EOF, send nothing
            pass
        else:  # echo: one line in, one line out
            buf = b""
            while not buf.endswith(b"\n"):
                b = c.recv(4096)
                if not b:
                    break
                buf += b
            rh.update(buf)
            read = len(buf)
            reply = b"ok " + buf
            c.sendall(reply)
            wh.update(reply)
            written = len(reply)
        if args.mode != "sink":
            c.shutdown(socket.SHUT_WR)
        while True:  # read to EOF so the peer's close is seen, count anything extra
            b = c.recv(65536)
            if not b:
                break
            rh.update(b)
            read += len(b)
        c.close()
        with lock:
            results.append({"peer_port": peer[1], "read": read, "written": written,
                            "read_sha256": rh.hexdigest(), "written_sha256": wh.hexdigest()})

    threads = []
    for _ in range(args.conns):
        c, peer = ls.accept()
        t = threading.Thread(target=handle, args=(c, peer))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    ls.close()
    print(json.dumps({"pid": os.getpid(), "conns": results}), flush=True)


def bulk_client(args) -> None:
    fam, host = addr(args.family)
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.connect((host, args.port))
    up = os.urandom(args.size)
    s.sendall(struct.pack("<Q", len(up)) + up)
    dh = hashlib.sha256()
    got = recv_exact(s, args.size, dh)
    local = s.getsockname()[1]
    s.close()
    print(json.dumps({"pid": os.getpid(), "local_port": local, "sent": 8 + len(up),
                      "sent_sha256": hashlib.sha256(struct.pack("<Q", len(up)) + up).hexdigest(),
                      "recv": got, "recv_sha256": dh.hexdigest()}))


def many_client(args) -> None:
    fam, host = addr(args.family)
    out = []

    def one_msg(s: socket.socket, i: int) -> bytes:
        return f"conn {i} port {s.getsockname()[1]}\n".encode()

    for i in range(args.sequential):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.connect((host, args.port))
        msg = one_msg(s, i)
        s.sendall(msg)
        reply = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            reply += b
        out.append({"local_port": s.getsockname()[1], "sent": len(msg), "recv": len(reply), "msg": msg.decode()})
        s.close()
    socks = []
    for i in range(args.concurrent):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.connect((host, args.port))
        socks.append(s)
    for j, s in enumerate(socks):
        i = args.sequential + j
        msg = one_msg(s, i)
        s.sendall(msg)
        out.append({"local_port": s.getsockname()[1], "sent": len(msg), "msg": msg.decode()})
    for j, s in enumerate(socks):
        reply = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            reply += b
        out[args.sequential + j]["recv"] = len(reply)
        s.close()
    print(json.dumps({"pid": os.getpid(), "conns": out}))


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("server")
    sv.add_argument("--family", default="4")
    sv.add_argument("--mode", choices=["http", "bulk", "echo", "sink"], required=True)
    sv.add_argument("--conns", type=int, default=1)
    sv.add_argument("--body", type=int, default=4096)
    bc = sub.add_parser("bulk-client")
    bc.add_argument("--family", default="4")
    bc.add_argument("--port", type=int, required=True)
    bc.add_argument("--size", type=int, required=True)
    mc = sub.add_parser("many-client")
    mc.add_argument("--family", default="4")
    mc.add_argument("--port", type=int, required=True)
    mc.add_argument("--sequential", type=int, default=0)
    mc.add_argument("--concurrent", type=int, default=0)
    args = p.parse_args()
    {"server": serve, "bulk-client": bulk_client, "many-client": many_client}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
