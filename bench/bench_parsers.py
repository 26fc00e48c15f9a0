"""Protocol parser throughput: HTTP transactions per second per core, small messages.

Recorded streams are built here (exact wire bytes, the way the capture layer hands them
over: one chunk per write, both directions, kernel-like timestamps), then replayed through
fresh parsers on one thread. CPU time (process_time) is measured, so the figures are per
core. Each scenario runs several rounds and reports the best.

    python bench/bench_parsers.py              # all scenarios
    python bench/bench_parsers.py --rounds 3 --transactions 20000

Targets: >= 50,000 HTTP/1 tx/s and >= 10,000 HTTP/2 tx/s per core through the Python API.

Anchor (same run, same bytes): raw `httptools` (llhttp, C) parsing the client side of the
HTTP/1 GET stream — requests only, one direction, callbacks collecting the URL and header
fields. The native HTTP/1 parser replayed from native memory (`_core.RecordedStream`, no
Python per chunk: what the native data plane does when it feeds a parser from
reassembly) frames both directions, pairs them and keeps bodies; target >= 0.5x the
anchor. The native HTTP/2 parser, replayed the same way (frames, HPACK, streams, bodies,
gRPC framing), has targets >= 0.2x the anchor (GET) and >= 0.15x (gRPC unary). The rows through the Python API also pay for building the `Transaction`
dataclasses, so their ratio to the anchor is printed for information.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

try:
    import plaintap  # noqa: F401
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import hpack
from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame

from httptools import HttpRequestParser

from plaintap import _core
from plaintap.protocols import ParseError, Side, Transaction, new_parser

C, S = Side.CLIENT, Side.SERVER
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TARGETS = {"http1": 50_000, "http2": 10_000}
NATIVE_H1_VS_ANCHOR = 0.5
NATIVE_H2_VS_ANCHOR = 0.2
NATIVE_GRPC_VS_ANCHOR = 0.15


# -- recorded streams -------------------------------------------------------------------

def h1_get_stream(n: int) -> list[tuple[Side, bytes, int]]:
    """curl-like GETs and small JSON answers on one keep-alive connection."""
    out = []
    ts = 1_000_000
    for i in range(n):
        req = (b"GET /api/v1/items/%d?fields=id,name HTTP/1.1\r\nHost: api.example.com\r\n"
               b"User-Agent: curl/8.5.0\r\nAccept: application/json\r\n\r\n" % i)
        body = b'{"id":%d,"name":"item-%d","tags":["a","b"]}' % (i, i)
        resp = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Mon, 24 Nov 2025 10:00:00 GMT\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: keep-alive\r\n\r\n" % len(body) + body)
        out.append((C, req, ts))
        out.append((S, resp, ts + 120_000))
        ts += 250_000
    return out


def h1_mixed_stream(n: int) -> list[tuple[Side, bytes, int]]:
    """POSTs with bodies, chunked answers, HEAD and 304s; a response split in two reads."""
    out = []
    ts = 1_000_000
    for i in range(n):
        k = i % 4
        if k == 0:
            body = b'{"name":"x","qty":%d}' % i
            req = (b"POST /api/v1/orders HTTP/1.1\r\nHost: shop.example.com\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            resp = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"order\":12345}\n\r\n0\r\n\r\n")
        elif k == 1:
            req = b"HEAD /static/app.js HTTP/1.1\r\nHost: shop.example.com\r\n\r\n"
            resp = b"HTTP/1.1 200 OK\r\nContent-Length: 48213\r\nContent-Type: text/javascript\r\n\r\n"
        elif k == 2:
            req = (b"GET /static/app.css HTTP/1.1\r\nHost: shop.example.com\r\n"
                   b"If-None-Match: \"abc123\"\r\n\r\n")
            resp = b"HTTP/1.1 304 Not Modified\r\nETag: \"abc123\"\r\n\r\n"
        else:
            req = b"GET /api/v1/cart HTTP/1.1\r\nHost: shop.example.com\r\nCookie: s=1\r\n\r\n"
            resp = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
                    b'{"items":[1,2]}')
        out.append((C, req, ts))
        if k == 3:
            out.append((S, resp[:40], ts + 100_000))
            out.append((S, resp[40:], ts + 110_000))
        else:
            out.append((S, resp, ts + 100_000))
        ts += 250_000
    return out


def h2_get_stream(n: int) -> list[tuple[Side, bytes, int]]:
    """h2load-like GETs on one connection: HEADERS(END_STREAM) / HEADERS + DATA."""
    ce, se = hpack.Encoder(), hpack.Encoder()
    out = [(C, PREFACE + SettingsFrame(0, settings={3: 100, 4: 65535}).serialize(), 1),
           (S, SettingsFrame(0, settings={3: 128}).serialize()
            + SettingsFrame(0, flags=["ACK"]).serialize(), 2)]
    ts = 1_000_000
    for i in range(n):
        sid = 2 * i + 1
        block = ce.encode([(":method", "GET"), (":scheme", "https"), (":authority", "api.example.com"),
                           (":path", f"/api/v1/items/{i}"), ("user-agent", "h2load nghttp2/1.59.0"),
                           ("accept", "*/*")])
        body = b'{"id":%d,"name":"item-%d"}' % (i, i)
        rblock = se.encode([(":status", "200"), ("server", "nginx/1.24.0"),
                            ("content-type", "application/json"),
                            ("content-length", str(len(body)))])
        out.append((C, HeadersFrame(sid, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize(), ts))
        out.append((S, HeadersFrame(sid, data=rblock, flags=["END_HEADERS"]).serialize()
                    + DataFrame(sid, data=body, flags=["END_STREAM"]).serialize(), ts + 90_000))
        ts += 200_000
    return out


def h2_grpc_stream(n: int) -> list[tuple[Side, bytes, int]]:
    """Unary gRPC calls: request HEADERS + DATA, response HEADERS + DATA + trailers."""
    ce, se = hpack.Encoder(), hpack.Encoder()
    out = [(C, PREFACE + SettingsFrame(0).serialize(), 1), (S, SettingsFrame(0).serialize(), 2)]
    ts = 1_000_000
    for i in range(n):
        sid = 2 * i + 1
        block = ce.encode([(":method", "POST"), (":scheme", "http"), (":path", "/shop.v1.Cart/AddItem"),
                           (":authority", "cart:50051"), ("content-type", "application/grpc"),
                           ("te", "trailers"), ("grpc-timeout", "1S"), ("user-agent", "grpc-go/1.64.0")])
        msg = b"\x00\x00\x00\x00\x0b\x0a\x05apple\x10\x02\x18\x01"
        rmsg = b"\x00\x00\x00\x00\x04\x08\x01\x10\x03"
        rblock = se.encode([(":status", "200"), ("content-type", "application/grpc")])
        tblock = se.encode([("grpc-status", "0"), ("grpc-message", "")])
        out.append((C, HeadersFrame(sid, data=block, flags=["END_HEADERS"]).serialize()
                    + DataFrame(sid, data=msg, flags=["END_STREAM"]).serialize(), ts))
        out.append((S, HeadersFrame(sid, data=rblock, flags=["END_HEADERS"]).serialize()
                    + DataFrame(sid, data=rmsg).serialize()
                    + HeadersFrame(sid, data=tblock, flags=["END_HEADERS", "END_STREAM"]).serialize(),
                    ts + 90_000))
        ts += 200_000
    return out


# -- replay -------------------------------------------------------------------------------

def replay(protocol: str, stream, connections: int) -> tuple[int, int]:
    """Feed `stream` through `connections` fresh parsers in turn; (transactions, errors)."""
    txs = errs = 0
    per = max(1, len(stream) // connections)
    for start in range(0, len(stream), per):
        p = new_parser(protocol)
        feed = p.feed
        next_event = p.next_event
        for side, data, ts in stream[start:start + per]:
            feed(side, data, ts)
            ev = next_event()
            while ev is not None:
                if type(ev) is Transaction:
                    txs += 1
                elif isinstance(ev, ParseError):
                    errs += 1
                ev = next_event()
        p.close(stream[-1][2] + 1)
        while (ev := next_event()) is not None:
            txs += type(ev) is Transaction
    return txs, errs


class _Collect:
    """httptools callbacks a real user needs: the URL and the header fields."""

    __slots__ = ("url", "headers", "messages")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list = []
        self.messages = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.messages += 1
        self.url = b""
        self.headers = []


def anchor(stream, expected: int, rounds: int) -> float:
    """Raw httptools requests/s on the client chunks of `stream` (one keep-alive parser)."""
    requests = [data for side, data, _ in stream if side == C]
    best = float("inf")
    for _ in range(rounds):
        cb = _Collect()
        p = HttpRequestParser(cb)
        t0 = time.process_time()
        for data in requests:
            p.feed_data(data)
        best = min(best, time.process_time() - t0)
        if cb.messages != expected:
            raise SystemExit(f"anchor: httptools parsed {cb.messages} requests, expected {expected}")
    rate = expected / best
    print(f"{'anchor: httptools, requests only':<34} {rate:>10,.0f} req/s  {1e6 / rate:6.2f} us/req")
    return rate


def measure_native(name: str, stream, expected: int, rounds: int, anchor_rate: float,
                   protocol: str = "http1", target: float = NATIVE_H1_VS_ANCHOR) -> float:
    """A native parser replayed from native memory; checks the count."""
    rec = _core.RecordedStream([(int(side), data, ts) for side, data, ts in stream])
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        txs, errs = rec.replay(protocol)
        best = min(best, time.process_time() - t0)
        if txs != expected or errs:
            raise SystemExit(f"{name}: expected {expected} transactions and no errors, "
                             f"got {txs} and {errs} errors")
    rate = expected / best
    print(f"{name:<34} {rate:>10,.0f} tx/s   {1e6 / rate:6.2f} us/tx   "
          f"{rate / anchor_rate:5.2f}x anchor (target {target}x)")
    return rate


def measure(name: str, protocol: str, stream, expected: int, rounds: int,
            connections: int, anchor_rate: float = 0.0) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        txs, errs = replay(protocol, stream, connections)
        best = min(best, time.process_time() - t0)
        if txs != expected or errs:
            raise SystemExit(f"{name}: expected {expected} transactions and no errors, "
                             f"got {txs} and {errs} errors")
    rate = expected / best
    target = TARGETS[protocol]
    vs = f"   {rate / anchor_rate:5.2f}x anchor" if anchor_rate else ""
    print(f"{name:<34} {rate:>10,.0f} tx/s   {1e6 / rate:6.1f} us/tx   "
          f"{rate / target:5.2f}x target ({target:,}){vs}")
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transactions", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    n = args.transactions
    print(f"python {sys.version.split()[0]}, {n:,} transactions per scenario, "
          f"best of {args.rounds} rounds, CPU time on one core")
    get_stream = h1_get_stream(n)
    base = anchor(get_stream, n, args.rounds)
    native = [measure_native("native HTTP/1.1 GET keep-alive", get_stream, n, args.rounds, base),
              measure_native("native HTTP/1.1 mixed", h1_mixed_stream(n), n, args.rounds, base)]
    h2_get, h2_grpc = h2_get_stream(n), h2_grpc_stream(n)
    native_h2 = [(measure_native("native HTTP/2 GET, one connection", h2_get, n, args.rounds,
                                 base, "http2", NATIVE_H2_VS_ANCHOR), NATIVE_H2_VS_ANCHOR),
                 (measure_native("native HTTP/2 gRPC unary", h2_grpc, n, args.rounds, base,
                                 "http2", NATIVE_GRPC_VS_ANCHOR), NATIVE_GRPC_VS_ANCHOR)]
    rates = {
        "http1": [measure("HTTP/1.1 GET keep-alive", "http1", get_stream, n, args.rounds, 1, base),
                  measure("HTTP/1.1 GET, 100 tx/connection", "http1", get_stream, n,
                          args.rounds, n // 100, base),
                  measure("HTTP/1.1 mixed (POST/chunked/HEAD)", "http1", h1_mixed_stream(n), n,
                          args.rounds, 1, base)],
        "http2": [measure("HTTP/2 GET, one connection", "http2", h2_get, n, args.rounds, 1, base),
                  measure("HTTP/2 gRPC unary", "http2", h2_grpc, n, args.rounds, 1, base)],
    }
    ok = all(min(r) >= TARGETS[p] for p, r in rates.items())
    ok = ok and min(native) >= NATIVE_H1_VS_ANCHOR * base
    ok = ok and all(rate >= target * base for rate, target in native_h2)
    print("all scenarios meet their targets" if ok else "BELOW TARGET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
