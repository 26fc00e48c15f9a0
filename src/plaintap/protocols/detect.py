"""Which parser a connection needs, from the first bytes of one direction.

`detect` looks only at the start of the data and answers as soon as it can: None means
"not decided yet, call again with more bytes". More bytes never change an answer once
given, with one deliberate exception: binary data shorter than an HTTP/2 frame header
(9 bytes) is called tcp at once rather than left waiting, because a binary protocol whose
client sends a few bytes and waits would otherwise never be classified. The checks, in
order:

* ALPN from the TLS handshake, when known, decides for TLS plaintext (`h2` → http2,
  `http/1.x` → http1);
* the HTTP/2 client connection preface → http2;
* a TLS record carrying a handshake message (0x16, version 0x03 0x00..0x04) → tls;
* an HTTP/1 request line (known method, SP, target, SP, HTTP/1.x, CRLF) → http1;
* an HTTP/1 status line → http1 with ``midstream=True`` (the server spoke first in our
  view: we joined after the request);
* two consecutive plausible HTTP/2 frame headers → http2 with ``midstream=True`` (one
  plausible header waits for the next; binary data shorter than a frame header is tcp);
* anything else → tcp.

The implementation is the native core's (`native/src/classify.rs`), the one the data
plane uses; this is its Python face. `Detected.midstream` is the value to pass to
`new_parser(..., midstream=...)`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import _core

PROTOCOLS = ("http1", "http2", "tls", "tcp")


@dataclass(slots=True, frozen=True)
class Detected:
    """`protocol` is one of "http1", "http2", "tls", "tcp"; `midstream` says the bytes do
    not start at the beginning of the conversation (so the parser must resynchronise)."""

    protocol: str
    midstream: bool = False


def detect(data: bytes, alpn: str | None = None) -> Detected | None:
    """Classify a stream by its first bytes; None when more bytes are needed. Never raises."""
    d = _core.detect(bytes(data), alpn)
    return None if d is None else Detected(d[0], d[1])
