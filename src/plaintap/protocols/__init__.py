"""Sans-IO protocol parsers: bytes of both directions in, transactions out.

Nothing here does I/O, keeps time or logs. The pipeline hands each connection's
reassembled directions to a parser, in the order it observed them:

    d = detect(first_bytes, alpn)                # None: need more bytes
    p = new_parser(d.protocol, body_limit=..., midstream=d.midstream)
    p.feed(Side.CLIENT, data, ts_ns)             # bytes the client sent
    p.feed_gap(Side.SERVER, nbytes, ts_ns)       # bytes the capture lost
    p.close(ts_ns)                               # connection closed
    while (ev := p.next_event()) is not None:    # Transaction | ParseError
        ...

Parsers never raise from feed/feed_gap/close/next_event: protocol errors become
`ParseError` events and the parser resynchronises; each parser also keeps named counters
in `p.stats` (parse errors, abandoned messages, discarded bytes, ...). `p.upgraded` turns
True once an HTTP/1 connection switched protocols (101 / CONNECT 2xx); later bytes are
counted, not parsed.

Modules: `model` (the values), `detect`, `http1` (the native parser, both directions
paired), `http2` (the native HTTP/2 + HPACK + gRPC observer, `native/src/http2/`), `tls`
(ClientHello / ServerHello).
"""
from __future__ import annotations

from .detect import Detected, detect
from . import http1 as _http1
from . import http2 as _http2
from .http1 import Http1Parser
from .http2 import Http2Parser
from .model import GrpcInfo, Message, ParseError, Side, Transaction

DEFAULT_BODY_LIMIT = 2 * 1024 * 1024

Parser = Http1Parser | Http2Parser


def new_parser(protocol: str, body_limit: int = DEFAULT_BODY_LIMIT,
               midstream: bool = False) -> Parser:
    """A parser for "http1" or "http2". Raises ValueError for any other protocol name."""
    if protocol == "http1":
        return _http1.new_parser(body_limit, midstream)
    if protocol == "http2":
        return _http2.new_parser(body_limit, midstream)
    raise ValueError(f"no parser for protocol {protocol!r} (expected 'http1' or 'http2')")


__all__ = ["Detected", "GrpcInfo", "Http1Parser", "Http2Parser", "Message", "ParseError",
           "Parser", "Side", "Transaction", "detect", "new_parser", "DEFAULT_BODY_LIMIT"]
