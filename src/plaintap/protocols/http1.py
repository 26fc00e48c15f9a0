"""HTTP/1.x observer: the native parser (`native/src/http1.rs`) behind the sans-IO API.

Both directions of one connection in, transactions out. How it frames, pairs, resyncs and
bounds memory is written down in the Rust module's documentation; the rules that matter
to a user: keep-alive, pipelining (FIFO pairing, never a pairing the kernel timestamps
contradict), chunked with trailers, close-delimited bodies, HEAD/1xx/204/304,
Upgrade/CONNECT, HTTP/1.0; a malformed request is a counted ParseError and ends parsing
of that client stream (a server answers 400 and closes), while capture gaps and
mid-stream joins are resynchronised at the next start line.

The per-direction framing table (`H1_TABLE`, `(state, input) -> next state`) is the one
the native parser applies, read from it so the tests walk the real thing.
"""
from __future__ import annotations

from .. import _core

STATES: tuple[str, ...]
INPUTS: tuple[str, ...]
_states, _inputs, H1_TABLE = _core.http1_table()
STATES = tuple(_states)
INPUTS = tuple(_inputs)
(HUNT, IDLE, BODY_LENGTH, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILERS, BODY_EOF, BLOCKED,
 SWITCHED, IGNORE, REJECTED, CLOSED) = STATES

Http1Parser = _core.NativeParser   # the type; make one with `new_parser`


class ProtocolStateError(Exception):
    """An input arrived in a state where the table does not allow it."""


def h1_next_state(state: str, event: str) -> str:
    """Next framing state, or ProtocolStateError if the pair is not in `H1_TABLE`."""
    try:
        return H1_TABLE[(state, event)]
    except KeyError:
        raise ProtocolStateError(f"{event!r} in state {state!r}") from None


def new_parser(body_limit: int, midstream: bool = False) -> Http1Parser:
    """A native HTTP/1 parser for one connection."""
    return _core.new_parser("http1", body_limit, midstream)
