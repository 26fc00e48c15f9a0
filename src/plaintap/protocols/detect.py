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

`Detected.midstream` is the value to pass to `new_parser(..., midstream=...)`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .http2 import PREFACE, frame_chain_verdict, plausible_frame_header
from .model import Side

PROTOCOLS = ("http1", "http2", "tls", "tcp")

# HTTP/1 start lines, as the native parser recognises them when it resynchronises
# (native/src/http1/syntax.rs): a known method, a visible-ASCII target, HTTP/1.0 or 1.1.
METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE",
           b"PATCH", b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK",
           b"UNLOCK", b"SEARCH", b"REPORT", b"PURGE", b"QUERY", b"MKCALENDAR", b"LINK",
           b"UNLINK", b"BIND", b"REBIND", b"UNBIND", b"ACL", b"MERGE", b"CHECKOUT",
           b"MKACTIVITY", b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE", b"SOURCE")
MAX_TARGET = 16384
REQUEST_LINE_RE = re.compile(
    rb"(?:" + b"|".join(re.escape(m) for m in METHODS) + rb") [!-~]{1,%d} HTTP/1\.[01]\r\n"
    % MAX_TARGET)
MAX_REQUEST_LINE = 12 + MAX_TARGET + 12
STATUS_LINE_RE = re.compile(rb"HTTP/1\.[01] [1-5][0-9][0-9](?: [^\r\n]{0,1024})?\r\n")
_MAX_FRAME_PROBE = 64 * 1024


@dataclass(slots=True, frozen=True)
class Detected:
    """`protocol` is one of "http1", "http2", "tls", "tcp"; `midstream` says the bytes do
    not start at the beginning of the conversation (so the parser must resynchronise)."""

    protocol: str
    midstream: bool = False


def detect(data: bytes, alpn: str | None = None) -> Detected | None:
    """Classify a stream by its first bytes; None when more bytes are needed. Never raises."""
    try:
        return _detect(bytes(data), alpn)
    except Exception:
        return Detected("tcp")


def _detect(data: bytes, alpn: str | None) -> Detected | None:
    if alpn:
        proto = alpn.strip().lower()
        if proto == "h2":
            return Detected("http2", midstream=_h2_midstream(data))
        if proto in ("http/1.1", "http/1.0"):
            if not data:
                return Detected("http1")
            head = _http1(data)
            return Detected("http1", midstream=not isinstance(head, Detected) or head.midstream)
    if not data:
        return None
    n = min(len(data), len(PREFACE))
    if data[:n] == PREFACE[:n]:
        return Detected("http2") if n == len(PREFACE) else None
    first = data[0]
    if first == 0x16:
        tls = _tls(data)
        if tls is not False:
            return tls
    head = _http1(data)
    if head is _MORE:
        return None
    if head is not None:
        return head
    verdict = frame_chain_verdict(data, 0, len(data), Side.SERVER) or \
        frame_chain_verdict(data, 0, len(data), Side.CLIENT)
    if verdict:
        return Detected("http2", midstream=True)
    if verdict is None and len(data) < _MAX_FRAME_PROBE and _h2_header_plausible(data):
        return None
    return Detected("tcp")


def _tls(data: bytes):
    """Detected("tls"), None (need more), or False (not TLS)."""
    if len(data) >= 2 and data[1] != 0x03:
        return False
    if len(data) >= 3 and data[2] > 0x04:
        return False
    if len(data) < 6:
        return None
    # record length sane, and the handshake type a hello (client, server, or HRR-shaped)
    length = (data[3] << 8) | data[4]
    if not 0 < length <= 16384 + 2048:
        return False
    if data[5] not in (1, 2):
        return False
    return Detected("tls")


_MORE = object()   # "may still become a start line": wait for more bytes


def _http1(data: bytes):
    """Detected for a request/status line, _MORE if it may still become one, else None."""
    if REQUEST_LINE_RE.match(data):
        return Detected("http1")
    if STATUS_LINE_RE.match(data):
        return Detected("http1", midstream=True)
    if b"\n" in data[:MAX_REQUEST_LINE] or len(data) > MAX_REQUEST_LINE:
        return None
    if _could_be_request_line(data) or _could_be_status_line(data):
        return _MORE
    return None


def _could_be_request_line(data: bytes) -> bool:
    method, sp, rest = data.partition(b" ")
    if not sp:
        return any(m.startswith(method) for m in METHODS)
    if method not in METHODS:
        return False
    target, sp, version = rest.partition(b" ")
    if any(c < 0x21 or c > 0x7E for c in target):
        return False
    if not sp:
        return True
    want = b"HTTP/1."
    if len(version) <= len(want):
        return want.startswith(version)
    if not version.startswith(want) or version[len(want)] not in b"01":
        return False
    return b"\r\n".startswith(version[len(want) + 1:])


def _could_be_status_line(data: bytes) -> bool:
    want = b"HTTP/1."
    if len(data) <= len(want):
        return want.startswith(data)
    if not data.startswith(want) or data[len(want)] not in b"01":
        return False
    rest = data[len(want) + 1:]
    if not rest:
        return True
    if rest[:1] != b" ":
        return False
    code = rest[1:4]
    return all(0x30 <= c <= 0x39 for c in code)


def _h2_midstream(data: bytes) -> bool:
    """With ALPN h2: does this look like the start of either direction?"""
    if not data:
        return False
    n = min(len(data), len(PREFACE))
    if data[:n] == PREFACE[:n]:
        return False
    # The server's first frame is its SETTINGS.
    if len(data) >= 9 and data[3] == 0x04 and data[4] == 0 and data[5:9] == b"\0\0\0\0":
        return False
    return True


def _h2_header_plausible(data: bytes) -> bool:
    if len(data) < 9:
        return False
    return (plausible_frame_header(data, 0, Side.SERVER) is not None
            or plausible_frame_header(data, 0, Side.CLIENT) is not None)
