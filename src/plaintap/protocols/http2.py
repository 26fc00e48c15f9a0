"""HTTP/2 observer: both directions of one connection in, one transaction per stream out.

How it works
------------
Each direction is a frame reader over a `StreamInput`: the client side first checks the
connection preface, then both read 9-byte frame headers. Non-DATA frames are parsed with
hyperframe once complete; DATA payloads are streamed straight into the stream's body
(so a 16 MiB frame never sits in memory, and a capture gap inside a DATA frame keeps frame
sync: the frame length says where the next frame starts).

Header blocks (HEADERS / PUSH_PROMISE plus any CONTINUATION frames — the block is only
decoded once END_HEADERS arrives, whatever the split) are decoded with one
`hpack.Decoder` per direction, because each end's encoder has its own dynamic table.
SETTINGS_HEADER_TABLE_SIZE sent by one end limits the *other* end's encoder, so it sets
`max_allowed_table_size` on the decoder of the other direction (never below the table's
current size: an encoder may use the old size until it emits the size update the new
setting requires). `max_header_list_size` is raised to 1 MiB: an observer must decode
what the endpoints accepted.

Streams follow `H2_STREAM_TABLE`, an observer's view of RFC 9113 §5.1 that also knows
whether response headers were seen (so DATA before HEADERS, or a second non-final HEADERS,
is an error). An input not in the table is a stream error: a ParseError, the stream is
dropped, and no transaction is emitted for it. Frames for a stream that is not tracked
(never opened in our view, already finished, or begun before a mid-stream join) are
counted in `stats["orphan_frames"]`, not reported as errors: after a join or a reset they
are expected. A transaction is emitted when both ends
have ended the stream, on RST_STREAM, for streams refused by GOAWAY, and at close.

Mid-stream join (``midstream=True``) or lost sync (capture gap across frame boundaries,
frame error): the direction hunts for a plausible frame boundary — a frame header whose
type, flags, length and stream id are consistent, followed by another such header — and
its HPACK state becomes unknown: `PartialHpackDecoder` decodes what the static table and
entries inserted since then allow; such transactions carry ``headers_known=False``
unless every field resolved. Frames for streams whose start was not seen are counted,
not guessed at.

gRPC (content-type application/grpc*): service and method come from `:path`, the status
from `grpc-status` in the trailers (or a trailers-only response), and message counts and
sizes from the length-prefixed framing of each DATA stream.
"""
from __future__ import annotations

import re
from collections import deque
from urllib.parse import unquote

import hpack
from hpack.exceptions import HPACKError
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import Frame

from ._stream import NEED, PROGRESS, BodyBuffer, GrpcFramer, ParserBase, StreamInput
from .hpack_partial import PartialHpackDecoder
from .model import GrpcInfo, Message, ParseError, Side, Transaction

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, \
    WINDOW_UPDATE, CONTINUATION = range(10)
FLAG_END_STREAM = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

MAX_HEADER_LIST = 1 << 20
MAX_HEADER_BLOCK = 1 << 20
MIN_FRAME_LIMIT = 1 << 20      # non-DATA frames are buffered whole up to this (or more if advertised)
# When hunting for a frame boundary, a header claiming a frame longer than the default
# SETTINGS_MAX_FRAME_SIZE, or a stream id no real connection reaches, is not believed.
MAX_HUNT_FRAME = 16384
MAX_HUNT_STREAM_ID = 1 << 24

ERROR_CODES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR",
               3: "FLOW_CONTROL_ERROR", 4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED",
               6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM", 8: "CANCEL",
               9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM",
               12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}

# ---------------------------------------------------------------------------------------
# Stream states as seen by an observer: (request phase, response phase).

S_IDLE = "idle"                    # not yet opened
S_OPEN = "open"                    # request headers seen, neither end finished
S_OPEN_RESP = "open_resp"          # ... and final response headers seen
S_REQ_DONE = "req_done"            # client ended its side; no final response headers yet
S_REQ_DONE_RESP = "req_done_resp"  # client ended; response headers seen, body flowing
S_RESP_DONE = "resp_done"          # server ended its side; client still sending
S_TUNNEL = "tunnel"                # CONNECT answered 2xx: DATA is tunnelled bytes
S_CLOSED = "closed"

STREAM_STATES = (S_IDLE, S_OPEN, S_OPEN_RESP, S_REQ_DONE, S_REQ_DONE_RESP, S_RESP_DONE,
                 S_TUNNEL, S_CLOSED)

# Inputs: who sent what. `_es` = with END_STREAM. `s_info` = 1xx response headers.
STREAM_INPUTS = ("c_headers", "c_headers_es", "c_data", "c_data_es", "s_info", "s_headers",
                 "s_headers_es", "s_tunnel", "s_data", "s_data_es", "push", "rst")

H2_STREAM_TABLE: dict[tuple[str, str], str] = {
    (S_IDLE, "c_headers"): S_OPEN,
    (S_IDLE, "c_headers_es"): S_REQ_DONE,
    (S_IDLE, "push"): S_REQ_DONE,                   # PUSH_PROMISE: request already complete
    (S_OPEN, "c_data"): S_OPEN,
    (S_OPEN, "c_data_es"): S_REQ_DONE,
    (S_OPEN, "c_headers_es"): S_REQ_DONE,           # request trailers
    (S_OPEN, "s_info"): S_OPEN,
    (S_OPEN, "s_headers"): S_OPEN_RESP,
    (S_OPEN, "s_headers_es"): S_RESP_DONE,          # early / trailers-only response
    (S_OPEN, "s_tunnel"): S_TUNNEL,
    (S_OPEN, "rst"): S_CLOSED,
    (S_OPEN_RESP, "c_data"): S_OPEN_RESP,
    (S_OPEN_RESP, "c_data_es"): S_REQ_DONE_RESP,
    (S_OPEN_RESP, "c_headers_es"): S_REQ_DONE_RESP,
    (S_OPEN_RESP, "s_data"): S_OPEN_RESP,
    (S_OPEN_RESP, "s_data_es"): S_RESP_DONE,
    (S_OPEN_RESP, "s_headers_es"): S_RESP_DONE,     # response trailers
    (S_OPEN_RESP, "rst"): S_CLOSED,
    (S_REQ_DONE, "s_info"): S_REQ_DONE,
    (S_REQ_DONE, "s_headers"): S_REQ_DONE_RESP,
    (S_REQ_DONE, "s_headers_es"): S_CLOSED,
    (S_REQ_DONE, "rst"): S_CLOSED,
    (S_REQ_DONE_RESP, "s_data"): S_REQ_DONE_RESP,
    (S_REQ_DONE_RESP, "s_data_es"): S_CLOSED,
    (S_REQ_DONE_RESP, "s_headers_es"): S_CLOSED,
    (S_REQ_DONE_RESP, "rst"): S_CLOSED,
    (S_RESP_DONE, "c_data"): S_RESP_DONE,
    (S_RESP_DONE, "c_data_es"): S_CLOSED,
    (S_RESP_DONE, "c_headers_es"): S_CLOSED,
    (S_RESP_DONE, "rst"): S_CLOSED,
    (S_TUNNEL, "c_data"): S_TUNNEL,
    (S_TUNNEL, "c_data_es"): S_TUNNEL,
    (S_TUNNEL, "s_data"): S_TUNNEL,
    (S_TUNNEL, "s_data_es"): S_TUNNEL,
    (S_TUNNEL, "rst"): S_CLOSED,
}


def h2_stream_next(state: str, event: str) -> str | None:
    """Next stream state, or None when the pair is a stream error."""
    return H2_STREAM_TABLE.get((state, event))


# ---------------------------------------------------------------------------------------
# Direction reader states

R_PREFACE = "preface"
R_FRAME = "frame"
R_DATA_PADLEN = "data_padlen"
R_DATA = "data"
R_SKIP = "skip"
R_HUNT = "hunt"
R_CLOSED = "closed"

# Zero-width match where a frame header could start: length <= 16 KiB, type 0..9, stream
# id < 2**24 (first byte 0).
_FRAME_CANDIDATE_RE = re.compile(rb"(?=\x00[\x00-\x40][\x00-\xff][\x00-\x09][\x00-\xff]\x00)",
                                 re.S)
_DEFINED_FLAGS = (0x09, 0x2D, 0x00, 0x00, 0x01, 0x0C, 0x01, 0x00, 0x00, 0x04)
_NEEDS_STREAM = (True, True, True, True, False, True, False, False, None, True)
_FIXED_LENGTH = {PRIORITY: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}


def plausible_frame_header(buf, p: int, side: Side) -> tuple[int, int, int, int] | None:
    """(length, type, flags, stream id) if the 9 bytes at `p` look like a real frame
    header that `side` could send, else None."""
    length = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
    ftype = buf[p + 3]
    flags = buf[p + 4]
    if buf[p + 5] & 0x80 or ftype > CONTINUATION or length > MAX_HUNT_FRAME:
        return None
    if flags & ~_DEFINED_FLAGS[ftype]:
        return None
    sid = ((buf[p + 5] & 0x7F) << 24) | (buf[p + 6] << 16) | (buf[p + 7] << 8) | buf[p + 8]
    if sid >= MAX_HUNT_STREAM_ID:
        return None
    needs = _NEEDS_STREAM[ftype]
    if needs is True and not sid or needs is False and sid:
        return None
    fixed = _FIXED_LENGTH.get(ftype)
    if fixed is not None and length != fixed:
        return None
    if ftype == SETTINGS and (length % 6 or (flags & 1 and length)):
        return None
    if ftype == GOAWAY and length < 8:
        return None
    if ftype == HEADERS and side == Side.CLIENT and not sid & 1:
        return None
    if ftype == PUSH_PROMISE and (side == Side.CLIENT or length < 4):
        return None
    if ftype == DATA and flags & FLAG_PADDED and not length:
        return None
    return length, ftype, flags, sid


def frame_chain_verdict(buf, p: int, limit: int, side: Side) -> bool | None:
    """Is `p` a frame boundary? True / False, or None when more bytes are needed.

    Two consecutive plausible headers are required; a CONTINUATION cannot start a chain
    (its HEADERS is missing), and a HEADERS without END_HEADERS must be followed by a
    CONTINUATION of the same stream."""
    if limit - p < 9:
        return None
    first = plausible_frame_header(buf, p, side)
    if first is None or first[1] == CONTINUATION:
        return False
    q = p + 9 + first[0]
    if limit - q < 9:
        return None
    second = plausible_frame_header(buf, q, side)
    if second is None:
        return False
    if first[1] in (HEADERS, PUSH_PROMISE) and not first[2] & FLAG_END_HEADERS:
        return second[1] == CONTINUATION and second[3] == first[3]
    return second[1] != CONTINUATION


class _HeaderBlock:
    """A header block being collected across HEADERS/PUSH_PROMISE + CONTINUATION."""

    __slots__ = ("sid", "push", "fragments", "size", "end_stream", "promised", "first_ns")

    def __init__(self, sid, push, fragment, end_stream, promised, first_ns) -> None:
        self.sid = sid
        self.push = push
        self.fragments = [fragment]
        self.size = len(fragment)
        self.end_stream = end_stream
        self.promised = promised
        self.first_ns = first_ns


class _H2Stream:
    __slots__ = ("sid", "state", "request", "response", "req_body", "resp_body",
                 "req_known", "resp_known", "grpc", "error", "end_ns", "emitted",
                 "req_ended", "resp_ended", "tunnel_ends")

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.state = S_IDLE
        self.request: Message | None = None
        self.response: Message | None = None
        self.req_body: BodyBuffer | None = None
        self.resp_body: BodyBuffer | None = None
        self.req_known = True
        self.resp_known = True
        self.grpc: tuple[GrpcFramer, GrpcFramer] | None = None
        self.error: str | None = None
        self.end_ns = 0
        self.emitted = False
        self.req_ended = False
        self.resp_ended = False
        self.tunnel_ends = 0


class _H2Side:
    __slots__ = ("side", "inp", "state", "decoder", "partial", "table_limit",
                 "frame_limit", "block", "f_type", "f_flags", "f_sid", "f_len",
                 "f_first_ns", "f_stream", "data_remaining", "pad_remaining",
                 "skip_remaining", "skip_data_end", "preface_checked", "is_client")

    def __init__(self, side: Side, state: str, partial: bool) -> None:
        self.side = side
        self.is_client = side == Side.CLIENT
        self.inp = StreamInput()
        self.state = state
        self.decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        self.partial: PartialHpackDecoder | None = PartialHpackDecoder() if partial else None
        self.table_limit: int | None = None      # SETTINGS_HEADER_TABLE_SIZE of the peer
        self.frame_limit = MIN_FRAME_LIMIT       # largest non-DATA frame accepted
        self.block: _HeaderBlock | None = None
        self.f_type = 0
        self.f_flags = 0
        self.f_sid = 0
        self.f_len = 0
        self.f_first_ns = 0
        self.f_stream: _H2Stream | None = None
        self.data_remaining = 0
        self.pad_remaining = 0
        self.skip_remaining = 0
        self.skip_data_end = False
        self.preface_checked = False


_STAT_NAMES = ("parse_errors", "stream_errors", "frame_errors", "hpack_errors",
               "hpack_resets", "orphan_frames", "abandoned_streams", "abandoned_blocks",
               "resyncs", "discarded_bytes", "tunnel_bytes", "gaps", "gap_bytes",
               "bytes_after_close", "streams_evicted", "internal_errors")


class Http2Parser(ParserBase):
    """Sans-IO HTTP/2 observer for one connection. See the module docstring."""

    protocol = "http2"

    def __init__(self, body_limit: int = 2 * 1024 * 1024, midstream: bool = False,
                 max_streams: int = 4096) -> None:
        self.body_limit = body_limit
        self.max_streams = max_streams
        self.midstream = midstream
        self._sides = (
            _H2Side(Side.CLIENT, R_HUNT if midstream else R_PREFACE, midstream),
            _H2Side(Side.SERVER, R_HUNT if midstream else R_FRAME, midstream),
        )
        self._streams: dict[int, _H2Stream] = {}
        self._max_client_sid = 0
        self._max_push_sid = 0
        self._events: deque = deque()
        self._closed = False
        self._broken = False
        self.upgraded = False   # HTTP/2 never switches the connection; CONNECT is per stream
        self.stats: dict[str, int] = dict.fromkeys(_STAT_NAMES, 0)
        self._handlers = {R_PREFACE: self._preface, R_FRAME: self._frame,
                          R_DATA_PADLEN: self._data_padlen, R_DATA: self._data,
                          R_SKIP: self._skip, R_HUNT: self._hunt, R_CLOSED: self._closed_state}

    # -- public API ----------------------------------------------------------------------

    def _consume(self, side: Side) -> None:
        self._pump(self._sides[side])

    def _close(self, ts_ns: int) -> None:
        """Connection closed: every stream still open ends here."""
        for s in self._sides:
            if s.block is not None:
                self.stats["abandoned_blocks"] += 1
                s.block = None
            s.state = R_CLOSED
        for sid in sorted(self._streams):
            self._finalize(self._streams[sid], "connection closed", ts_ns)

    # -- reader ----------------------------------------------------------------------------

    def _pump(self, s: _H2Side) -> None:
        inp = s.inp
        handlers = self._handlers
        while True:
            limit = inp.limit()
            r = handlers[s.state](s, limit)
            if r == PROGRESS:
                continue
            if r == NEED and inp.gaps:
                self._gap(s, limit)
                continue
            break
        inp.compact()

    def _preface(self, s: _H2Side, limit: int) -> int:
        inp = s.inp
        pos = inp.pos
        n = min(limit - pos, 24)
        if inp.buf[pos:pos + n] != PREFACE[:n]:
            self._error(s, "missing HTTP/2 client preface", inp.ts_at(pos))
            self._lose_sync(s)
            return PROGRESS
        if n < 24:
            return NEED
        inp.pos = pos + 24
        s.state = R_FRAME
        return PROGRESS

    def _frame(self, s: _H2Side, limit: int) -> int:
        inp = s.inp
        buf = inp.buf
        pos = inp.pos
        if limit - pos < 9:
            return NEED
        length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
        ftype = buf[pos + 3]
        flags = buf[pos + 4]
        sid = ((buf[pos + 5] & 0x7F) << 24) | (buf[pos + 6] << 16) | (buf[pos + 7] << 8) \
            | buf[pos + 8]
        block = s.block
        if block is not None and (ftype != CONTINUATION or sid != block.sid):
            self._error(s, f"header block of stream {block.sid} interrupted by frame type "
                           f"{ftype}", inp.ts_at(pos), block.sid)
            self._abandon_block(s)
        if ftype == DATA:
            if not sid:
                self._frame_error(s, "DATA frame on stream 0", inp.ts_at(pos))
                return PROGRESS
            s.f_flags = flags
            s.f_sid = sid
            s.f_len = length
            s.f_first_ns = inp.ts_at(pos)
            inp.pos = pos + 9
            s.f_stream = self._data_begin(s, sid, flags)
            if flags & FLAG_PADDED:
                s.state = R_DATA_PADLEN
            else:
                s.data_remaining = length
                s.pad_remaining = 0
                s.state = R_DATA
            return PROGRESS
        if length > s.frame_limit:
            self._frame_error(s, f"frame of {length} bytes exceeds the limit", inp.ts_at(pos))
            return PROGRESS
        end = pos + 9 + length
        if end > limit:
            return NEED
        try:
            frame, _ = Frame.parse_frame_header(memoryview(bytes(buf[pos:pos + 9])))
            frame.parse_body(memoryview(bytes(memoryview(buf)[pos + 9:end])))
        except (HyperframeError, ValueError) as exc:
            self._frame_error(s, f"invalid frame type {ftype}: {exc}", inp.ts_at(pos))
            return PROGRESS
        first_ns = inp.ts_at(pos)
        last_ns = inp.ts_at(end - 1)
        inp.pos = end
        self._on_frame(s, frame, ftype, flags, sid, first_ns, last_ns)
        return PROGRESS

    def _data_padlen(self, s: _H2Side, limit: int) -> int:
        inp = s.inp
        if limit <= inp.pos:
            return NEED
        pad = inp.buf[inp.pos]
        inp.pos += 1
        if pad >= s.f_len:
            self._frame_error(s, "DATA padding exceeds the frame", inp.ts_at(inp.pos - 1))
            return PROGRESS
        s.data_remaining = s.f_len - 1 - pad
        s.pad_remaining = pad
        s.state = R_DATA
        return PROGRESS

    def _data(self, s: _H2Side, limit: int) -> int:
        inp = s.inp
        pos = inp.pos
        avail = limit - pos
        if s.data_remaining:
            if avail <= 0:
                return NEED
            n = s.data_remaining if s.data_remaining < avail else avail
            st = s.f_stream
            if st is not None:
                self._stream_data(s, st, inp.buf[pos:pos + n])
            pos += n
            avail -= n
            s.data_remaining -= n
        if s.pad_remaining:
            n = s.pad_remaining if s.pad_remaining < avail else avail
            pos += n
            s.pad_remaining -= n
        inp.pos = pos
        if s.data_remaining or s.pad_remaining:
            return NEED if pos >= limit else PROGRESS
        last_ns = inp.ts_at(pos - 1)
        s.state = R_FRAME
        self._data_end(s, last_ns)
        return PROGRESS

    def _skip(self, s: _H2Side, limit: int) -> int:
        inp = s.inp
        avail = limit - inp.pos
        if avail <= 0:
            return NEED
        n = min(avail, s.skip_remaining)
        inp.pos += n
        s.skip_remaining -= n
        if not s.skip_remaining:
            s.state = R_FRAME
            if s.skip_data_end:
                s.skip_data_end = False
                self._data_end(s, inp.ts_at(inp.pos - 1))
        return PROGRESS

    def _hunt(self, s: _H2Side, limit: int) -> int:
        inp = s.inp
        buf = inp.buf
        pos = inp.pos
        if pos >= limit:
            return NEED
        if s.is_client and not s.preface_checked:
            if inp.base + pos == 0:
                # The stream is seen from its first byte: it may start with the preface.
                n = min(limit - pos, 24)
                if buf[pos:pos + n] == PREFACE[:n]:
                    if n < 24:
                        return NEED
                    inp.pos = pos + 24
                    s.preface_checked = True
                    s.state = R_FRAME
                    return PROGRESS
            s.preface_checked = True
        side = s.side
        while True:
            m = _FRAME_CANDIDATE_RE.search(buf, pos, limit)
            if m is None:
                keep = max(pos, limit - 8)
                self.stats["discarded_bytes"] += keep - inp.pos
                inp.pos = keep
                return NEED
            p = m.start()
            verdict = frame_chain_verdict(buf, p, limit, side)
            if verdict is None:
                self.stats["discarded_bytes"] += p - inp.pos
                inp.pos = p
                return NEED
            if verdict:
                self.stats["discarded_bytes"] += p - inp.pos
                self.stats["resyncs"] += 1
                inp.pos = p
                s.state = R_FRAME
                return PROGRESS
            pos = p + 1

    def _closed_state(self, s: _H2Side, limit: int) -> int:
        inp = s.inp
        if limit > inp.pos:
            self.stats["bytes_after_close"] += limit - inp.pos
            inp.pos = limit
        return NEED

    # -- gaps and sync loss ------------------------------------------------------------------

    def _gap(self, s: _H2Side, limit: int) -> None:
        inp = s.inp
        partial = limit - inp.pos
        st = s.state
        frame_rest = -1      # bytes of the current frame still expected after the partial
        if st == R_FRAME and partial >= 9:
            buf = inp.buf
            pos = inp.pos
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            ftype = buf[pos + 3]
            sid = ((buf[pos + 5] & 0x7F) << 24) | (buf[pos + 6] << 16) | (buf[pos + 7] << 8) \
                | buf[pos + 8]
            frame_rest = 9 + length - partial
        nbytes, ts = inp.pop_gap()
        if st == R_DATA:
            rest = s.data_remaining + s.pad_remaining
            lost = min(nbytes, s.data_remaining)
            if s.f_stream is not None and lost:
                self._stream_lost(s, s.f_stream, lost)
            if nbytes <= rest:
                s.data_remaining -= lost
                s.pad_remaining -= nbytes - lost
                if not s.data_remaining and not s.pad_remaining:
                    s.state = R_FRAME
                    self._data_end(s, ts)
                return
            # The DATA frame ended inside the gap: its flags still apply.
            s.data_remaining = s.pad_remaining = 0
            s.state = R_FRAME
            self._data_end(s, ts)
        elif st == R_SKIP:
            if nbytes <= s.skip_remaining:
                s.skip_remaining -= nbytes
                if not s.skip_remaining:
                    s.state = R_FRAME
                    if s.skip_data_end:
                        s.skip_data_end = False
                        self._data_end(s, ts)
                return
        elif st == R_DATA_PADLEN:
            if nbytes < s.f_len:
                # Data/padding split unknown; count the loss as body bytes.
                if s.f_stream is not None:
                    self._stream_lost(s, s.f_stream, nbytes)
                s.skip_remaining = s.f_len - nbytes
                s.skip_data_end = True
                s.state = R_SKIP
                return
            s.state = R_FRAME
            self._data_end(s, ts)
        elif st == R_FRAME and 0 <= nbytes <= frame_rest:
            # A whole non-DATA frame was cut: skip the rest of it, frame sync holds.
            if ftype in (HEADERS, PUSH_PROMISE, CONTINUATION):
                self._hpack_lost(s)
                if s.block is not None:
                    self._abandon_block(s)
                stream = self._streams.get(sid)
                if stream is not None:
                    if s.is_client:
                        stream.req_known = False
                    else:
                        stream.resp_known = False
            if frame_rest > nbytes:
                s.skip_remaining = frame_rest - nbytes
                s.skip_data_end = False
                s.state = R_SKIP
            return
        elif st == R_HUNT:
            self._hpack_lost(s)
            return
        elif st == R_CLOSED:
            return
        self._lose_sync(s)

    def _lose_sync(self, s: _H2Side) -> None:
        """Frame boundaries are unknown from here: hunt, and forget HPACK state (blocks
        may have been lost). Streams this side was still sending may have lost frames."""
        if s.state == R_CLOSED:
            return
        s.state = R_HUNT
        s.preface_checked = True
        s.f_stream = None
        if s.block is not None:
            self._abandon_block(s)
        self._hpack_lost(s)
        for st in self._streams.values():
            if s.is_client:
                if not st.req_ended:
                    st.req_known = False
                    if st.req_body is not None:
                        st.req_body.mark_lost()
            elif not st.resp_ended:
                st.resp_known = False
                if st.resp_body is not None:
                    st.resp_body.mark_lost()

    def _hpack_lost(self, s: _H2Side) -> None:
        self.stats["hpack_resets"] += 1
        if s.partial is None:
            s.partial = PartialHpackDecoder()
        else:
            s.partial.forget()

    def _abandon_block(self, s: _H2Side) -> None:
        """A header block that will never complete: its stream cannot be reported right."""
        block = s.block
        s.block = None
        self.stats["abandoned_blocks"] += 1
        self._hpack_lost(s)
        st = self._streams.get(block.sid)
        if st is not None and not block.push:
            self._drop_stream(st)

    # -- frames ------------------------------------------------------------------------------

    def _on_frame(self, s: _H2Side, frame, ftype: int, flags: int, sid: int,
                  first_ns: int, last_ns: int) -> None:
        if ftype == HEADERS:
            self._fragment(s, sid, False, frame.data, flags, 0, first_ns, last_ns)
        elif ftype == CONTINUATION:
            block = s.block
            if block is None:
                self._error(s, f"CONTINUATION without a header block on stream {sid}",
                            first_ns, sid)
                return
            block.fragments.append(frame.data)
            block.size += len(frame.data)
            if block.size > MAX_HEADER_BLOCK:
                self._error(s, f"header block of stream {sid} too large", first_ns, sid)
                self._abandon_block(s)
                return
            if flags & FLAG_END_HEADERS:
                s.block = None
                self._header_block(s, block.sid, block.push, b"".join(block.fragments),
                                   block.end_stream, block.promised, block.first_ns, last_ns)
        elif ftype == PUSH_PROMISE:
            if s.is_client:
                self._error(s, "PUSH_PROMISE sent by the client", first_ns, sid)
                self._hpack_lost(s)
                return
            self._fragment(s, sid, True, frame.data, flags & ~FLAG_END_STREAM,
                           frame.promised_stream_id, first_ns, last_ns)
        elif ftype == RST_STREAM:
            st = self._streams.get(sid)
            if st is None:
                return
            if self._advance(s, st, "rst", first_ns):
                code = frame.error_code
                self._finalize(st, f"stream reset by {s.side.name.lower()}: "
                                   f"{ERROR_CODES.get(code, hex(code))}", last_ns)
        elif ftype == SETTINGS:
            if "ACK" not in frame.flags:
                self._settings(s, frame.settings)
        elif ftype == GOAWAY:
            if not s.is_client:
                last = frame.last_stream_id
                code = ERROR_CODES.get(frame.error_code, hex(frame.error_code))
                for sid_ in sorted(self._streams):
                    if sid_ > last and sid_ & 1:
                        self._finalize(self._streams[sid_], f"refused by GOAWAY ({code})",
                                       last_ns)
        # PRIORITY, PING, WINDOW_UPDATE and extension frames carry nothing we report.

    def _settings(self, s: _H2Side, settings: dict) -> None:
        other = self._sides[1 - s.side]
        for key, value in settings.items():
            if key == 0x1:    # HEADER_TABLE_SIZE: limits the other end's encoder
                other.table_limit = value
                dec = other.decoder
                dec.max_allowed_table_size = max(value, dec.header_table_size)
            elif key == 0x5:  # MAX_FRAME_SIZE: the other end may send frames this large
                other.frame_limit = max(other.frame_limit, min(value, (1 << 24) - 1))

    def _fragment(self, s: _H2Side, sid: int, push: bool, data: bytes, flags: int,
                  promised: int, first_ns: int, last_ns: int) -> None:
        end_stream = bool(flags & FLAG_END_STREAM)
        if flags & FLAG_END_HEADERS:
            self._header_block(s, sid, push, data, end_stream, promised, first_ns, last_ns)
        else:
            s.block = _HeaderBlock(sid, push, data, end_stream, promised, first_ns)

    def _decode(self, s: _H2Side, block: bytes, sid: int, ts: int):
        """Decode with this direction's HPACK state: (fields | None, all fields known)."""
        if s.partial is None:
            dec = s.decoder
            try:
                raw = dec.decode(block, raw=True)
            except (HPACKError, IndexError, ValueError, TypeError) as exc:
                self.stats["hpack_errors"] += 1
                self._error(s, f"HPACK decoding failed on stream {sid}: {exc}", ts, sid)
                self._hpack_lost(s)
                return None, False
            limit = s.table_limit
            dec.max_allowed_table_size = max(4096 if limit is None else limit,
                                             dec.header_table_size)
            return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw], True
        try:
            raw, complete = s.partial.decode(block)
        except HPACKError:
            # Expected now and then when decoding without full state: not a peer's fault.
            self.stats["hpack_errors"] += 1
            return None, False
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw], complete

    def _header_block(self, s: _H2Side, sid: int, push: bool, block: bytes,
                      end_stream: bool, promised: int, first_ns: int, last_ns: int) -> None:
        fields, known = self._decode(s, block, sid, first_ns)
        streams = self._streams
        if push:
            if fields is None:
                return
            if not promised or promised & 1:
                self._error(s, f"invalid PUSH_PROMISE of stream {promised}", first_ns, sid)
                return
            associated = streams.get(sid)
            pushed = streams.get(promised)
            if pushed is None:
                if promised <= self._max_push_sid:
                    self.stats["orphan_frames"] += 1     # an id already used and finished
                    return
                self._max_push_sid = promised
                pushed = _H2Stream(promised)
            if not self._advance(s, pushed, "push", first_ns):
                return
            pushed.request = _request_message(fields, first_ns, last_ns)
            pushed.req_known = known and (associated is None or associated.req_known)
            pushed.req_ended = True
            pushed.req_body = BodyBuffer(self.body_limit)
            self._track(pushed)
            return
        st = streams.get(sid)
        if s.is_client:
            if st is None:
                if sid <= self._max_client_sid or not sid & 1:
                    self.stats["orphan_frames"] += 1
                    return
                if fields is None:
                    self.stats["abandoned_streams"] += 1
                    self._max_client_sid = sid
                    return
                self._max_client_sid = sid
                st = _H2Stream(sid)
                if not self._advance(s, st, "c_headers_es" if end_stream else "c_headers",
                                     first_ns):
                    return
                req = st.request = _request_message(fields, first_ns, last_ns)
                st.req_known = known
                grpc = _is_grpc(req.content_type)
                if grpc:
                    st.grpc = (GrpcFramer(), GrpcFramer())
                st.req_body = BodyBuffer(self.body_limit, st.grpc[0] if grpc else None)
                st.req_ended = end_stream
                self._track(st)
                return
            if fields is None:
                self._drop_stream(st)
                return
            if not self._advance(s, st, "c_headers_es" if end_stream else "c_headers",
                                 first_ns):
                return
            st.request.trailers = fields
            st.request.last_ns = last_ns
            st.req_known = st.req_known and known
            st.req_ended = True
            self._maybe_closed(st, last_ns)
            return
        # server
        if st is None:
            self.stats["orphan_frames"] += 1
            return
        if fields is None:
            self._drop_stream(st)
            return
        if st.response is None:
            status = _status(fields)
            if status is not None and 100 <= status < 200:
                event = "s_headers_es" if end_stream else "s_info"
                if end_stream:
                    self._error(s, f"informational response ends stream {sid}", first_ns, sid)
                    self._drop_stream(st)
                    return
            elif (st.request.method == "CONNECT" and status is not None
                  and 200 <= status < 300 and not end_stream):
                event = "s_tunnel"
            else:
                event = "s_headers_es" if end_stream else "s_headers"
            if not self._advance(s, st, event, first_ns):
                return
            if event == "s_info":
                return
            st.response = Message(headers=fields, status=status, version="2",
                                  first_ns=first_ns, last_ns=last_ns, is_response=True)
            st.resp_known = known
            st.resp_body = BodyBuffer(self.body_limit, st.grpc[1] if st.grpc else None)
            st.resp_ended = end_stream
            if event == "s_tunnel":
                self._emit(st, None, last_ns, upgraded=True)
                return
            self._maybe_closed(st, last_ns)
            return
        if not self._advance(s, st, "s_headers_es" if end_stream else "s_headers", first_ns):
            return
        st.response.trailers = fields
        st.response.last_ns = last_ns
        st.resp_known = st.resp_known and known
        st.resp_ended = True
        self._maybe_closed(st, last_ns)

    # -- DATA --------------------------------------------------------------------------------

    def _data_begin(self, s: _H2Side, sid: int, flags: int) -> _H2Stream | None:
        st = self._streams.get(sid)
        if st is None:
            self.stats["orphan_frames"] += 1
            return None
        event = ("c_data" if s.is_client else "s_data") + \
            ("_es" if flags & FLAG_END_STREAM else "")
        if h2_stream_next(st.state, event) is None:
            self._stream_error(s, st, event, s.f_first_ns)
            return None
        return st

    def _stream_data(self, s: _H2Side, st: _H2Stream, piece) -> None:
        if st.state == S_TUNNEL:
            self.stats["tunnel_bytes"] += len(piece)
            return
        body = st.req_body if s.is_client else st.resp_body
        if body is not None:
            body.add(piece)

    def _stream_lost(self, s: _H2Side, st: _H2Stream, nbytes: int) -> None:
        if st.state == S_TUNNEL:
            self.stats["tunnel_bytes"] += nbytes
            return
        body = st.req_body if s.is_client else st.resp_body
        if body is not None:
            body.lost(nbytes)

    def _data_end(self, s: _H2Side, last_ns: int) -> None:
        st = s.f_stream
        s.f_stream = None
        if st is None or self._streams.get(st.sid) is not st:
            return
        end = bool(s.f_flags & FLAG_END_STREAM)
        event = ("c_data" if s.is_client else "s_data") + ("_es" if end else "")
        if not self._advance(s, st, event, s.f_first_ns):
            return
        if st.state == S_TUNNEL:
            if end:
                st.tunnel_ends |= 1 << s.side
                if st.tunnel_ends == 3:
                    del self._streams[st.sid]
            return
        msg = st.request if s.is_client else st.response
        msg.last_ns = last_ns
        if end:
            if s.is_client:
                st.req_ended = True
            else:
                st.resp_ended = True
            self._maybe_closed(st, last_ns)

    # -- stream lifecycle ----------------------------------------------------------------------

    def _advance(self, s: _H2Side, st: _H2Stream, event: str, ts: int) -> bool:
        nxt = H2_STREAM_TABLE.get((st.state, event))
        if nxt is None:
            self._stream_error(s, st, event, ts)
            return False
        st.state = nxt
        return True

    def _stream_error(self, s: _H2Side, st: _H2Stream, event: str, ts: int) -> None:
        self.stats["stream_errors"] += 1
        self._error(s, f"stream {st.sid}: {event} in state {st.state}", ts, st.sid)
        self._drop_stream(st)

    def _track(self, st: _H2Stream) -> None:
        """Start tracking a stream; past `max_streams` the oldest is given up (counted)."""
        streams = self._streams
        if len(streams) >= self.max_streams:
            oldest = streams[next(iter(streams))]
            self.stats["streams_evicted"] += 1
            self._finalize(oldest, "too many open streams", oldest.request.last_ns)
        streams[st.sid] = st

    def _drop_stream(self, st: _H2Stream) -> None:
        """Forget a stream without a transaction: what we saw of it cannot be trusted."""
        if self._streams.get(st.sid) is st:
            del self._streams[st.sid]
            if not st.emitted:
                self.stats["abandoned_streams"] += 1

    def _maybe_closed(self, st: _H2Stream, ts: int) -> None:
        if st.state == S_CLOSED:
            self._finalize(st, None, ts)

    def _finalize(self, st: _H2Stream, error: str | None, ts: int) -> None:
        if self._streams.get(st.sid) is st:
            del self._streams[st.sid]
        if st.emitted or st.request is None:
            return
        self._emit(st, error, ts)

    def _emit(self, st: _H2Stream, error: str | None, ts: int, upgraded: bool = False) -> None:
        st.emitted = True
        req = st.request
        _finish_body(req, st.req_body, st.req_ended or upgraded)
        resp = st.response
        if resp is not None:
            _finish_body(resp, st.resp_body, st.resp_ended or upgraded)
            end_ns = resp.last_ns
        else:
            end_ns = max(ts, req.last_ns)
        grpc = None
        if st.grpc is not None:
            grpc = _grpc_info(req, resp, st.grpc)
        self._events.append(Transaction(
            protocol="http2", version="2", stream_id=st.sid, request=req, response=resp,
            start_ns=req.first_ns, end_ns=end_ns,
            headers_known=st.req_known and (resp is None or st.resp_known),
            grpc=grpc, upgraded=upgraded, error=error))

    # -- errors ------------------------------------------------------------------------------

    def _error(self, s: _H2Side, reason: str, ts: int, sid: int | None = None) -> None:
        self.stats["parse_errors"] += 1
        self._events.append(ParseError(s.side, reason, ts, sid))

    def _frame_error(self, s: _H2Side, reason: str, ts: int) -> None:
        self.stats["frame_errors"] += 1
        self._error(s, reason, ts)
        inp = s.inp
        inp.pos = min(inp.pos + 1, inp.limit())
        self._lose_sync(s)



# ---------------------------------------------------------------------------------------

def _request_message(fields: list[tuple[str, str]], first_ns: int, last_ns: int) -> Message:
    method = path = authority = host = None
    for name, value in fields:
        if name[:1] == ":":
            if name == ":method":
                method = value
            elif name == ":path":
                path = value
            elif name == ":authority":
                authority = value
        elif name == "host" and host is None:
            host = value
    return Message(headers=fields, method=method, target=path, authority=authority or host,
                   version="2", first_ns=first_ns, last_ns=last_ns)


def _status(fields: list[tuple[str, str]]) -> int | None:
    for name, value in fields:
        if name == ":status":
            return int(value) if value.isdigit() and len(value) == 3 else None
    return None


def _is_grpc(content_type: str | None) -> bool:
    return content_type is not None and content_type.lower().startswith("application/grpc")


def _finish_body(msg: Message, body: BodyBuffer | None, ended: bool) -> None:
    if body is not None:
        msg.body = body.value()
        msg.body_size = body.size
        msg.body_truncated = body.truncated
    msg.complete = ended


def _grpc_info(req: Message, resp: Message | None,
               framers: tuple[GrpcFramer, GrpcFramer]) -> GrpcInfo:
    service = method = None
    path = req.target or ""
    if path.startswith("/") and path.count("/") == 2:
        service, _, method = path[1:].partition("/")
    code = message = None
    if resp is not None:
        # Trailers, or the response headers of a trailers-only response.
        for fields in (resp.trailers, resp.headers):
            for name, value in fields:
                if name == "grpc-status":
                    code = int(value) if value.isdigit() else None
                elif name == "grpc-message":
                    message = unquote(value)
            if code is not None:
                break
    req_f, resp_f = framers
    return GrpcInfo(service=service or None, method=method or None, status_code=code,
                    status_message=message, request_messages=req_f.messages,
                    response_messages=resp_f.messages, request_bytes=req_f.nbytes,
                    response_bytes=resp_f.nbytes,
                    framing_lost=not (req_f.in_sync and resp_f.in_sync))
