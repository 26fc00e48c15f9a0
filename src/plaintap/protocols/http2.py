"""HTTP/2 observer: both directions of one connection in, one transaction per stream out.

The implementation is native (`native/src/http2/`, Rust; its module docs say how it works):
frames, HPACK per direction (partial decoding after a mid-stream join or a loss, with
`Transaction.headers_known`), CONTINUATION, trailers, RST_STREAM, GOAWAY, padding,
priority, capture gaps, and gRPC names, status and message framing. Every size is
bounded and every bound counted in `parser.stats`: tracked streams per connection, header
block bytes (CONTINUATION floods), the HPACK table whatever SETTINGS_HEADER_TABLE_SIZE the
peer announces (beyond it: partial decoding, `hpack_table_capped`), stored body bytes.

This module is its Python face: `new_parser(...)` returns the native sans-IO parser, and
the stream state table and frame-boundary checks are read from the native module, so
tests and protocol detection use the one implementation.
"""
from __future__ import annotations

from .. import _core
from .model import Side

PREFACE: bytes = _core.H2_PREFACE

_states, _inputs = _core.h2_stream_names()
STREAM_STATES: tuple[str, ...] = tuple(_states)
STREAM_INPUTS: tuple[str, ...] = tuple(_inputs)
(S_IDLE, S_OPEN, S_OPEN_RESP, S_REQ_DONE, S_REQ_DONE_RESP, S_RESP_DONE, S_TUNNEL,
 S_CLOSED) = STREAM_STATES

H2_STREAM_TABLE: dict[tuple[str, str], str] = {
    (state, event): nxt for state, event, nxt in _core.h2_stream_table()}


def h2_stream_next(state: str, event: str) -> str | None:
    """Next stream state, or None when the pair is a stream error."""
    return H2_STREAM_TABLE.get((state, event))


def plausible_frame_header(buf: bytes, p: int, side: Side) -> tuple[int, int, int, int] | None:
    """(length, type, flags, stream id) if the 9 bytes at `p` look like a real frame
    header that `side` could send, else None."""
    return _core.h2_plausible_frame_header(buf if type(buf) is bytes else bytes(buf), p, int(side))


def frame_chain_verdict(buf: bytes, p: int, limit: int, side: Side) -> bool | None:
    """Is `p` a frame boundary? True / False, or None when more bytes are needed."""
    return _core.h2_frame_chain_verdict(buf if type(buf) is bytes else bytes(buf), p, limit,
                                        int(side))


Http2Parser = _core.NativeParser   # the type; make one with `new_parser`


def new_parser(body_limit: int = 2 * 1024 * 1024, midstream: bool = False) -> Http2Parser:
    """A native HTTP/2 parser for one connection."""
    return _core.new_parser("http2", body_limit, midstream)
