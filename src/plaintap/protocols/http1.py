"""HTTP/1.x observer: both directions of one connection in, transactions out (sans-IO).

How it works
------------
Each direction has a small framing state machine (`H1_TABLE`, walked by a test) over a
`StreamInput`. The parser finds message boundaries itself: the header section ends at the
first CRLF CRLF, and the body is framed by the rules of RFC 9112 §6 — which for a
response depend on the *request* (HEAD, CONNECT) and the status (1xx, 204, 304), so the
response side learns the method from the client side. httptools (llhttp) parses and
validates each header section (request line / status line and fields); bodies
(Content-Length, chunked with trailers, read-until-close) are framed here. Owning the
framing means every position is known, so the parser can stop exactly after a HEAD
response's headers, resynchronise exactly after an error, and keep framing through a
capture gap that falls inside a body of known length.

Pairing responses to requests is FIFO, with one more rule that makes wrong pairings
impossible in practice: a response can only answer a request whose first byte was seen no
later than the response's first byte (kernel timestamps, one clock). A response that
violates it — an unsolicited 408, or the answer to a request lost in a capture gap or
before a mid-stream join — is dropped (counted) and the server side hunts for the next
status line. Data is stamped when its syscall returns, so a client that writes and reads
on different threads can, rarely, have an answer stamped a little before its own request;
while both sides are in sync the rule therefore allows `clock_slack_ns` (1 ms). Where the
rule is what keeps pairing right — the first request after a resynchronisation, and a
server side hunting for a status line — it is applied strictly. Server bytes that arrive
before any request is pending are held (bounded) until one is.

Mid-stream join (``midstream=True``) and lost sync (capture gap outside a body of known
length, malformed header section) put a side into HUNT: bytes are discarded until a
request line (client) or a status line that can be paired (server). A server-side loss
also gives up on every pending request that was sent before the loss, since its answer
may have been in the missing bytes (they are emitted with ``response=None``).

The timing rule is exact for clients that wait for each answer before sending the next
request. A client that pipelines can have an answer to a *lost* request arrive after the
next request we did see, so when bytes are lost on a connection that has pipelined (a
request seen while an earlier one was unanswered), the parser stops pairing: requests
already pending keep their answers if the server side is still in sync, and everything
after is reported with ``response=None`` (a ParseError says so, `stats["pairing_lost"]`
counts it) rather than risk a wrong pairing.

After a 101 (Upgrade, WebSocket) or a 2xx answer to CONNECT the transaction ends at the
switch and later bytes on both sides are counted in `stats`, not parsed. The client side
holds bytes sent after an Upgrade/CONNECT request until the response decides.

Memory per connection is bounded: header sections beyond `max_header_bytes` are a
ParseError, bodies are stored up to `body_limit`, held bytes up to `max_held_bytes`.
"""
from __future__ import annotations

import re
from collections import deque

from httptools import HttpRequestParser, HttpResponseParser
from httptools.parser.errors import HttpParserError, HttpParserUpgrade

from ._stream import NEED, PROGRESS, WAIT, BodyBuffer, ParserBase, StreamInput
from .model import Message, ParseError, Side, Transaction

# ---------------------------------------------------------------------------------------
# Per-direction framing states and the transition table. Any (state, input) pair that is
# not in the table is a protocol error (see `_go`).

HUNT = "hunt"                # discarding until a start line
IDLE = "idle"                # at a message boundary / inside a header section
BODY_LENGTH = "body_length"  # Content-Length body
CHUNK_SIZE = "chunk_size"    # expecting a chunk-size line
CHUNK_DATA = "chunk_data"
CHUNK_END = "chunk_end"      # expecting CRLF after chunk data
TRAILERS = "trailers"        # after the last chunk: trailer fields, then CRLF
BODY_EOF = "body_eof"        # response body delimited by connection close
BLOCKED = "blocked"          # client: waiting for the answer to Upgrade/CONNECT
SWITCHED = "switched"        # protocol switched: count, do not parse
IGNORE = "ignore"            # server: pairing lost for good, responses are discarded
CLOSED = "closed"

STATES = (HUNT, IDLE, BODY_LENGTH, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILERS, BODY_EOF,
          BLOCKED, SWITCHED, IGNORE, CLOSED)

INPUTS = ("sync", "head_no_body", "head_length", "head_chunked", "head_eof", "head_switch",
          "block", "body_done", "chunk_size", "last_chunk", "chunk_data_done", "chunk_end",
          "trailers_done", "error", "unpaired", "overflow", "gap_kept", "gap_lost",
          "resume", "switch", "pairing_lost", "close")

H1_TABLE: dict[tuple[str, str], str] = {
    (HUNT, "sync"): IDLE,
    (HUNT, "gap_kept"): HUNT,
    (HUNT, "overflow"): HUNT,
    (IDLE, "head_no_body"): IDLE,
    (IDLE, "head_length"): BODY_LENGTH,
    (IDLE, "head_chunked"): CHUNK_SIZE,
    (IDLE, "head_eof"): BODY_EOF,
    (IDLE, "head_switch"): SWITCHED,
    (IDLE, "block"): BLOCKED,
    (IDLE, "error"): HUNT,
    (IDLE, "unpaired"): HUNT,
    (IDLE, "overflow"): HUNT,
    (IDLE, "gap_lost"): HUNT,
    (BODY_LENGTH, "body_done"): IDLE,
    (BODY_LENGTH, "gap_kept"): BODY_LENGTH,
    (BODY_LENGTH, "gap_lost"): HUNT,
    (CHUNK_SIZE, "chunk_size"): CHUNK_DATA,
    (CHUNK_SIZE, "last_chunk"): TRAILERS,
    (CHUNK_SIZE, "error"): HUNT,
    (CHUNK_SIZE, "gap_lost"): HUNT,
    (CHUNK_DATA, "chunk_data_done"): CHUNK_END,
    (CHUNK_DATA, "gap_kept"): CHUNK_DATA,
    (CHUNK_DATA, "gap_lost"): HUNT,
    (CHUNK_END, "chunk_end"): CHUNK_SIZE,
    (CHUNK_END, "error"): HUNT,
    (CHUNK_END, "gap_lost"): HUNT,
    (TRAILERS, "trailers_done"): IDLE,
    (TRAILERS, "error"): HUNT,
    (TRAILERS, "gap_lost"): HUNT,
    (BODY_EOF, "gap_kept"): BODY_EOF,
    (BLOCKED, "resume"): IDLE,
    (BLOCKED, "overflow"): HUNT,
    (SWITCHED, "gap_kept"): SWITCHED,
    (IGNORE, "gap_kept"): IGNORE,
}
# A switch (101 / CONNECT 2xx seen on the server side), giving up on pairing, and close
# apply from any live state.
for _s in STATES:
    if _s not in (CLOSED, SWITCHED, IGNORE):
        H1_TABLE[(_s, "switch")] = SWITCHED
        H1_TABLE[(_s, "pairing_lost")] = IGNORE
    H1_TABLE[(_s, "close")] = CLOSED


class ProtocolStateError(Exception):
    """An input arrived in a state where the table does not allow it."""


def h1_next_state(state: str, event: str) -> str:
    """Next framing state, or ProtocolStateError if the pair is not in `H1_TABLE`."""
    try:
        return H1_TABLE[(state, event)]
    except KeyError:
        raise ProtocolStateError(f"{event!r} in state {state!r}") from None


# ---------------------------------------------------------------------------------------

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
MAX_STATUS_LINE = 1100
_HEX_RE = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")
_NO_BODY_STATUSES = (204, 304)
PAIRING_LOST = "response pairing lost after capture loss"


class _HeadCollector:
    """httptools callbacks for one header section; fragments are accumulated."""

    __slots__ = ("url", "status", "headers", "done")

    def __init__(self) -> None:
        self.url = b""
        self.status = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, data: bytes) -> None:
        self.url += data

    def on_status(self, data: bytes) -> None:
        self.status += data

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


class _Exchange:
    """One request and (once seen) its response, in request order."""

    __slots__ = ("request", "response", "req_done", "resp_done", "method", "wants_switch",
                 "upgraded", "error", "response_lost", "end_ns", "strict")

    def __init__(self, request: Message, method: str, wants_switch: bool) -> None:
        self.request = request
        self.response: Message | None = None
        self.req_done = False
        self.resp_done = False
        self.method = method
        self.wants_switch = wants_switch
        self.upgraded = False
        self.error: str | None = None
        self.response_lost = False
        self.end_ns = 0          # when it ended without a response (close, capture loss)
        self.strict = False      # first request after a resync: no clock slack in pairing


class _Side:
    """Framing state of one direction."""

    __slots__ = ("side", "is_req", "inp", "state", "msg", "body", "remaining", "scan_abs",
                 "exch", "lost", "resynced")

    def __init__(self, side: Side, state: str) -> None:
        self.side = side
        self.is_req = side == Side.CLIENT
        self.inp = StreamInput()
        self.state = state
        self.msg: Message | None = None        # message whose body is being read
        self.body: BodyBuffer | None = None
        self.remaining = 0                     # body / chunk bytes left
        self.scan_abs = 0                      # stream offset to resume the CRLFCRLF search
        self.exch: _Exchange | None = None     # exchange of the message being read
        self.lost = False                      # in HUNT because sync was lost (not a join)
        self.resynced = False                  # found a start line by hunting


_STAT_NAMES = ("parse_errors", "abandoned_requests", "abandoned_responses",
               "unpaired_responses", "responses_lost", "discarded_bytes",
               "upgraded_bytes_client", "upgraded_bytes_server", "informational_responses",
               "held_bytes_dropped", "bytes_after_close", "gaps", "gap_bytes",
               "pairing_lost", "internal_errors")


class Http1Parser(ParserBase):
    """Sans-IO HTTP/1.x observer for one connection. See the module docstring."""

    protocol = "http1"

    def __init__(self, body_limit: int = 2 * 1024 * 1024, midstream: bool = False,
                 max_header_bytes: int = 64 * 1024, max_held_bytes: int = 256 * 1024,
                 clock_slack_ns: int = 1_000_000) -> None:
        start = HUNT if midstream else IDLE
        self.clock_slack_ns = clock_slack_ns
        self._sides = (_Side(Side.CLIENT, start), _Side(Side.SERVER, start))
        self.body_limit = body_limit
        self.max_header_bytes = max_header_bytes
        self.max_held_bytes = max_held_bytes
        self._events: deque = deque()
        self._order: deque[_Exchange] = deque()     # not yet emitted, request order
        self._awaiting: deque[_Exchange] = deque()  # no final response started yet
        self._closed = False
        self._broken = False
        self._pipelined = False       # a request was seen while an earlier one was unanswered
        self._pairing_lost = False
        self.upgraded = False
        self.stats: dict[str, int] = dict.fromkeys(_STAT_NAMES, 0)
        self._handlers = {
            HUNT: self._hunt, IDLE: self._idle, BODY_LENGTH: self._body_length,
            CHUNK_SIZE: self._chunk_size, CHUNK_DATA: self._chunk_data,
            CHUNK_END: self._chunk_end, TRAILERS: self._trailers, BODY_EOF: self._body_eof,
            BLOCKED: self._blocked, SWITCHED: self._switched, IGNORE: self._ignore,
            CLOSED: self._closed_state,
        }

    # -- public API ----------------------------------------------------------------------

    @property
    def upgraded_bytes(self) -> int:
        return self.stats["upgraded_bytes_client"] + self.stats["upgraded_bytes_server"]

    def _consume(self, side: Side) -> None:
        self._run(side)

    # -- driving -------------------------------------------------------------------------

    def _run(self, first: int) -> None:
        sides = self._sides
        a = sides[first]
        b = sides[1 - first]
        self._pump(a)
        # Progress on one side can unblock the other (a new request lets held server bytes
        # be framed; an answer to Upgrade/CONNECT releases held client bytes).
        while b.inp.pending() and self._pump(b) and a.inp.pending() and self._pump(a):
            pass

    def _pump(self, s: _Side) -> bool:
        inp = s.inp
        handlers = self._handlers
        progressed = False
        while True:
            limit = inp.limit()
            r = handlers[s.state](s, limit)
            if r == PROGRESS:
                progressed = True
                continue
            if r == NEED and inp.gaps:
                nbytes, ts = inp.pop_gap() if inp.pos >= limit else self._drop_partial(s, limit)
                self._gap(s, nbytes, ts)
                progressed = True
                continue
            break
        inp.compact()
        return progressed

    def _drop_partial(self, s: _Side, limit: int) -> tuple[int, int]:
        """Bytes before a gap that do not form a whole unit: the unit is lost."""
        inp = s.inp
        if s.state == IDLE and inp.pos < limit:
            self.stats["abandoned_requests" if s.is_req else "abandoned_responses"] += 1
        self.stats["discarded_bytes"] += limit - inp.pos
        return inp.pop_gap()

    def _go(self, s: _Side, event: str) -> None:
        old = s.state
        s.state = h1_next_state(old, event)
        if s.state == HUNT and old != HUNT:
            s.lost = True

    # -- handlers: each returns PROGRESS, NEED or WAIT -------------------------------------

    def _hunt(self, s: _Side, limit: int) -> int:
        inp = s.inp
        buf = inp.buf
        pos = inp.pos
        if pos >= limit:
            return NEED
        if s.is_req:
            m = REQUEST_LINE_RE.search(buf, pos, limit)
            if m is not None:
                self.stats["discarded_bytes"] += m.start() - pos
                inp.pos = m.start()
                s.scan_abs = inp.base + inp.pos
                self._go(s, "sync")
                s.resynced = True
                if s.lost:
                    s.lost = False
                    # Requests were lost. Their answers are told apart from this request's
                    # only by time, which fails if the client does not wait for answers.
                    if self._pipelined or self._outstanding():
                        self._lose_pairing("client bytes lost on a pipelining connection",
                                           drain=True, ts=inp.ts_at(inp.pos))
                return PROGRESS
            keep = MAX_REQUEST_LINE
        else:
            if not self._awaiting and self._pairing_lost:
                self._go(s, "pairing_lost")
                return PROGRESS
            if not self._awaiting:
                # Cannot judge a status line before a request is pending: hold (bounded).
                if limit - pos > self.max_held_bytes:
                    drop = limit - pos - self.max_held_bytes
                    inp.pos = pos + drop
                    self.stats["held_bytes_dropped"] += drop
                    self._go(s, "overflow")
                    return PROGRESS
                return WAIT
            first_ns = self._awaiting[0].request.first_ns
            while True:
                m = STATUS_LINE_RE.search(buf, pos, limit)
                if m is None:
                    break
                start = m.start()
                if inp.ts_at(start) >= first_ns:
                    self.stats["discarded_bytes"] += start - inp.pos
                    inp.pos = start
                    s.scan_abs = inp.base + start
                    self._go(s, "sync")
                    return PROGRESS
                pos = start + 1
            keep = MAX_STATUS_LINE
        # No start line yet: a partial one can only begin after the last LF, within reach.
        pos = inp.pos
        nl = buf.rfind(b"\n", pos, limit)
        new_pos = max(pos, nl + 1, limit - keep)
        if new_pos > pos:
            self.stats["discarded_bytes"] += new_pos - pos
            inp.pos = new_pos
        return NEED

    def _idle(self, s: _Side, limit: int) -> int:
        inp = s.inp
        buf = inp.buf
        pos = inp.pos
        if pos >= limit:
            return NEED
        c = buf[pos]
        if c == 13 or c == 10:
            # Empty lines between messages are tolerated (RFC 9112 §2.2).
            while pos < limit and buf[pos] in (10, 13):
                pos += 1
            inp.pos = pos
            s.scan_abs = inp.base + pos
            return PROGRESS
        if not s.is_req and not self._awaiting:
            if self._pairing_lost:
                self._go(s, "pairing_lost")
                return PROGRESS
            if limit - pos > self.max_held_bytes:
                self.stats["held_bytes_dropped"] += limit - pos
                inp.pos = limit
                self._go(s, "overflow")
                self._lost_sync(s, inp.ts_at(limit - 1))
                return PROGRESS
            return WAIT
        base = inp.base
        start = s.scan_abs - base
        if start < pos:
            start = pos
        end = buf.find(b"\r\n\r\n", start, limit)
        if end < 0:
            if limit - pos > self.max_header_bytes:
                return self._error(s, "header section too large", pos + 1, inp.ts_at(pos))
            s.scan_abs = base + max(pos, limit - 3)
            return NEED
        block_end = end + 4
        if block_end - pos > self.max_header_bytes:
            return self._error(s, "header section too large", pos + 1, inp.ts_at(pos))
        first_ns = inp.ts_at(pos)
        if s.is_req:
            return self._request_head(s, pos, block_end, first_ns)
        return self._response_head(s, pos, block_end, first_ns)

    def _parse_head(self, s: _Side, pos: int, block_end: int):
        col = _HeadCollector()
        parser = HttpRequestParser(col) if s.is_req else HttpResponseParser(col)
        try:
            parser.feed_data(s.inp.buf[pos:block_end])
        except HttpParserUpgrade:
            pass
        except HttpParserError as exc:
            # Only the header section is fed, so nothing after on_headers_complete can be
            # wrong; llhttp still "errors" with a pause on some 101/CONNECT shapes.
            if not col.done:
                return None, None, (f"malformed {'request' if s.is_req else 'response'} "
                                    f"head: {exc}")
        if not col.done:
            return None, None, "malformed header section"
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            return None, None, f"unsupported HTTP version {version}"
        return parser, col, version

    def _request_head(self, s: _Side, pos: int, block_end: int, first_ns: int) -> int:
        inp = s.inp
        parser, col, version = self._parse_head(s, pos, block_end)
        if parser is None:
            return self._error(s, version, pos + 1, first_ns)
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in col.headers]
        host = None
        length = None
        te = None
        for name, value in headers:
            n = name.lower()
            if n == "host":
                if host is None:
                    host = value
            elif n == "content-length":
                length = value
            elif n == "transfer-encoding":
                te = value if te is None else f"{te}, {value}"
        method = parser.get_method().decode("ascii", "replace")
        if not self._pipelined and self._outstanding():
            self._pipelined = True
        msg = Message(headers=headers, method=method, target=col.url.decode("latin-1"),
                      authority=host, version=version, first_ns=first_ns)
        framing, size = _body_framing(te, length)
        if framing == "error":
            return self._error(s, f"cannot frame request body ({size})", pos + 1, first_ns)
        ex = _Exchange(msg, method, parser.should_upgrade() or method == "CONNECT")
        if s.resynced:
            ex.strict = True
            s.resynced = False
        self._order.append(ex)
        if self._pairing_lost:
            ex.response_lost = True
            ex.wants_switch = False
            ex.error = PAIRING_LOST
        else:
            self._awaiting.append(ex)
        inp.pos = block_end
        s.scan_abs = inp.base + block_end
        s.exch = ex
        if framing == "none":
            self._go(s, "head_no_body")
            msg.last_ns = inp.ts_at(block_end - 1)
            self._request_done(s, ex)
        else:
            s.msg = msg
            s.body = BodyBuffer(self.body_limit)
            if framing == "length":
                s.remaining = size
                self._go(s, "head_length")
            else:
                self._go(s, "head_chunked")
        return PROGRESS

    def _response_head(self, s: _Side, pos: int, block_end: int, first_ns: int) -> int:
        inp = s.inp
        ex = self._awaiting[0]
        slack = 0 if ex.strict else self.clock_slack_ns
        if first_ns + slack < ex.request.first_ns:
            # Began before the oldest pending request did: it answers something we did
            # not see (or nothing). Drop it and find a response that can be paired.
            self.stats["unpaired_responses"] += 1
            self.stats["discarded_bytes"] += block_end - pos
            inp.pos = block_end
            self._go(s, "unpaired")
            return PROGRESS
        parser, col, version = self._parse_head(s, pos, block_end)
        if parser is None:
            return self._error(s, version, pos + 1, first_ns)
        status = parser.get_status_code()
        inp.pos = block_end
        s.scan_abs = inp.base + block_end
        if status < 200 and status != 101:
            # 100 Continue, 103 Early Hints...: not the final response.
            self.stats["informational_responses"] += 1
            self._go(s, "head_no_body")
            return PROGRESS
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in col.headers]
        last_ns = inp.ts_at(block_end - 1)
        msg = Message(headers=headers, status=status, reason=col.status.decode("latin-1"),
                      version=version, first_ns=first_ns, last_ns=last_ns, is_response=True)
        self._awaiting.popleft()
        ex.response = msg
        s.exch = ex
        if status == 101 or (ex.method == "CONNECT" and 200 <= status < 300):
            ex.resp_done = True
            ex.upgraded = True
            self.upgraded = True
            self._go(s, "head_switch")
            self._switch_client()
            self._flush()
            return PROGRESS
        if ex.method == "HEAD" or status in _NO_BODY_STATUSES:
            framing, size = "none", 0
        else:
            length = None
            te = None
            for name, value in headers:
                n = name.lower()
                if n == "content-length":
                    length = value
                elif n == "transfer-encoding":
                    te = value if te is None else f"{te}, {value}"
            framing, size = _body_framing(te, length, response=True)
            if framing == "error":
                # Unframeable response: the exchange cannot be completed honestly.
                ex.response = None
                ex.response_lost = True
                ex.error = f"unframeable response ({size})"
                self._flush()
                return self._error(s, f"cannot frame response body ({size})", block_end,
                                   first_ns)
        if framing == "none":
            self._go(s, "head_no_body")
            self._response_done(s, ex)
            return PROGRESS
        s.msg = msg
        s.body = BodyBuffer(self.body_limit)
        if framing == "length":
            s.remaining = size
            self._go(s, "head_length")
        elif framing == "chunked":
            self._go(s, "head_chunked")
        else:
            self._go(s, "head_eof")
        return PROGRESS

    @staticmethod
    def _take_body(s: _Side, limit: int) -> bool:
        """Move up to `s.remaining` buffered body bytes (below `limit`) into the body.
        False when there was nothing to take."""
        inp = s.inp
        pos = inp.pos
        n = limit - pos
        if n <= 0:
            return False
        if n > s.remaining:
            n = s.remaining
        s.body.add(inp.buf[pos:pos + n])
        inp.pos = pos + n
        s.remaining -= n
        return True

    def _body_length(self, s: _Side, limit: int) -> int:
        if not self._take_body(s, limit):
            return NEED
        if not s.remaining:
            s.msg.last_ns = s.inp.ts_at(s.inp.pos - 1)
            self._go(s, "body_done")
            self._message_done(s)
        return PROGRESS

    def _chunk_size(self, s: _Side, limit: int) -> int:
        inp = s.inp
        buf = inp.buf
        pos = inp.pos
        nl = buf.find(b"\r\n", pos, limit)
        if nl < 0:
            if limit - pos > 4096:
                return self._body_error(s, "chunk-size line too long")
            return NEED
        size_field = bytes(buf[pos:nl]).split(b";", 1)[0].strip(b" \t")
        if not _HEX_RE.match(size_field):
            return self._body_error(s, "invalid chunk size")
        size = int(size_field, 16)
        inp.pos = nl + 2
        if size:
            s.remaining = size
            self._go(s, "chunk_size")
        else:
            s.scan_abs = inp.base + inp.pos
            self._go(s, "last_chunk")
        return PROGRESS

    def _chunk_data(self, s: _Side, limit: int) -> int:
        if not self._take_body(s, limit):
            return NEED
        if not s.remaining:
            self._go(s, "chunk_data_done")
        return PROGRESS

    def _chunk_end(self, s: _Side, limit: int) -> int:
        inp = s.inp
        pos = inp.pos
        if limit - pos < 2:
            if limit > pos and inp.buf[pos] != 13:
                return self._body_error(s, "missing CRLF after chunk data")
            return NEED
        if inp.buf[pos] != 13 or inp.buf[pos + 1] != 10:
            return self._body_error(s, "missing CRLF after chunk data")
        inp.pos = pos + 2
        self._go(s, "chunk_end")
        return PROGRESS

    def _trailers(self, s: _Side, limit: int) -> int:
        inp = s.inp
        buf = inp.buf
        pos = inp.pos
        if limit - pos < 2:
            return NEED
        if buf[pos] == 13 and buf[pos + 1] == 10:
            end = pos + 2
        else:
            start = max(pos, s.scan_abs - inp.base)
            found = buf.find(b"\r\n\r\n", start, limit)
            if found < 0:
                if limit - pos > self.max_header_bytes:
                    return self._body_error(s, "trailer section too large")
                s.scan_abs = inp.base + max(pos, limit - 3)
                return NEED
            trailers = []
            for line in bytes(buf[pos:found]).split(b"\r\n"):
                name, sep, value = line.partition(b":")
                if not sep or not name or name != name.strip():
                    return self._body_error(s, "malformed trailer field")
                trailers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
            s.msg.trailers = trailers
            end = found + 4
        inp.pos = end
        s.msg.last_ns = inp.ts_at(end - 1)
        self._go(s, "trailers_done")
        self._message_done(s)
        return PROGRESS

    def _body_eof(self, s: _Side, limit: int) -> int:
        inp = s.inp
        pos = inp.pos
        if limit <= pos:
            return NEED
        s.body.add(inp.buf[pos:limit])
        s.msg.last_ns = inp.ts_at(limit - 1)
        inp.pos = limit
        return PROGRESS

    def _blocked(self, s: _Side, limit: int) -> int:
        inp = s.inp
        if limit - inp.pos > self.max_held_bytes:
            self.stats["held_bytes_dropped"] += limit - inp.pos
            inp.pos = limit
            self._go(s, "overflow")
            return PROGRESS
        return WAIT

    def _switched(self, s: _Side, limit: int) -> int:
        inp = s.inp
        n = limit - inp.pos
        if n <= 0:
            return NEED
        self.stats["upgraded_bytes_client" if s.is_req else "upgraded_bytes_server"] += n
        inp.pos = limit
        return PROGRESS

    def _ignore(self, s: _Side, limit: int) -> int:
        inp = s.inp
        if limit <= inp.pos:
            return NEED
        self.stats["discarded_bytes"] += limit - inp.pos
        inp.pos = limit
        return PROGRESS

    def _closed_state(self, s: _Side, limit: int) -> int:
        inp = s.inp
        if limit > inp.pos:
            self.stats["bytes_after_close"] += limit - inp.pos
            inp.pos = limit
        return NEED

    # -- message and exchange bookkeeping --------------------------------------------------

    def _message_done(self, s: _Side) -> None:
        msg = s.msg
        body = s.body
        msg.body = body.value()
        msg.body_size = body.size
        msg.body_truncated = body.truncated
        s.msg = None
        s.body = None
        if s.is_req:
            self._request_done(s, s.exch)
        else:
            self._response_done(s, s.exch)

    def _request_done(self, s: _Side, ex: _Exchange) -> None:
        ex.req_done = True
        s.exch = None
        if ex.wants_switch and not ex.resp_done:
            # Bytes after an Upgrade/CONNECT request wait for the answer.
            self._go(s, "block")
        self._flush()

    def _response_done(self, s: _Side, ex: _Exchange) -> None:
        ex.resp_done = True
        s.exch = None
        client = self._sides[Side.CLIENT]
        if client.state == BLOCKED and ex.wants_switch:
            self._go(client, "resume")
        self._flush()

    def _switch_client(self) -> None:
        client = self._sides[Side.CLIENT]
        if client.state != SWITCHED and client.state != CLOSED:
            # A request that was still being read is cut here.
            if client.msg is not None and client.exch is not None:
                self._finish_partial(client, "protocol switched")
            client.state = h1_next_state(client.state, "switch")

    def _finish_partial(self, s: _Side, why: str) -> None:
        """End the message being read early (close, gap, switch): keep what was read."""
        msg = s.msg
        ex = s.exch
        body = s.body
        msg.body = body.value()
        msg.body_size = body.size
        msg.body_truncated = body.truncated
        msg.complete = False
        if not msg.last_ns:
            inp = s.inp
            msg.last_ns = max(msg.first_ns, inp.ts_at(inp.pos - 1) if inp.marks else 0)
        s.msg = None
        s.body = None
        s.exch = None
        if s.is_req:
            ex.req_done = True
        else:
            ex.resp_done = True
            if ex.error is None:
                ex.error = why
        self._flush()

    def _flush(self) -> None:
        order = self._order
        while order:
            ex = order[0]
            if not ex.req_done or not (ex.resp_done or ex.response_lost):
                return
            order.popleft()
            self._emit(ex)

    def _emit(self, ex: _Exchange) -> None:
        req = ex.request
        resp = ex.response if not ex.response_lost else None
        if resp is not None:
            end_ns = resp.last_ns
        else:
            end_ns = max(req.last_ns, ex.end_ns)
        self._events.append(Transaction(
            protocol="http1", version=req.version, stream_id=None, request=req,
            response=resp, start_ns=req.first_ns, end_ns=end_ns, upgraded=ex.upgraded,
            error=ex.error))

    # -- errors, gaps, close ---------------------------------------------------------------

    def _error(self, s: _Side, reason: str, resume_at: int, ts: int) -> int:
        """Malformed input at a message start: report, then hunt from `resume_at`."""
        self.stats["parse_errors"] += 1
        self._events.append(ParseError(s.side, reason, ts))
        inp = s.inp
        self.stats["discarded_bytes"] += resume_at - inp.pos
        inp.pos = resume_at
        self._go(s, "error")
        if not s.is_req:
            self._lost_sync(s, ts)
        return PROGRESS

    def _body_error(self, s: _Side, reason: str) -> int:
        """Malformed chunked framing: the message ends here, then hunt."""
        inp = s.inp
        ts = inp.ts_at(min(inp.pos, len(inp.buf) - 1)) if inp.buf else inp.last_ts
        self.stats["parse_errors"] += 1
        self._events.append(ParseError(s.side, reason, ts))
        self._finish_partial(s, f"malformed body: {reason}")
        inp.pos = min(inp.pos + 1, inp.limit())
        self._go(s, "error")
        if not s.is_req:
            self._lost_sync(s, ts)
        return PROGRESS

    def _outstanding(self) -> bool:
        """Is an earlier request still waiting for (the end of) its answer?"""
        for ex in self._order:
            if not ex.resp_done and not ex.response_lost:
                return True
        return False

    def _lose_pairing(self, why: str, drain: bool, ts: int) -> None:
        """Pairing can no longer be proven right: requests from now on are reported
        without responses and the server side is discarded (never a wrong pairing).

        With `drain`, the server side is still in sync and the requests already pending
        come before anything that was lost, so their answers are still paired first."""
        if self._pairing_lost:
            return
        self._pairing_lost = True
        self.stats["pairing_lost"] += 1
        server = self._sides[Side.SERVER]
        self._events.append(ParseError(Side.SERVER, f"response pairing lost: {why}", ts))
        if drain and server.state not in (HUNT, IGNORE, CLOSED):
            return    # the server side moves to IGNORE once the pending ones are answered
        if server.msg is not None:
            self._finish_partial(server, PAIRING_LOST)
        for ex in self._awaiting:
            ex.response_lost = True
            ex.error = PAIRING_LOST
        self._awaiting.clear()
        if server.state not in (SWITCHED, CLOSED, IGNORE):
            self._go(server, "pairing_lost")
        client = self._sides[Side.CLIENT]
        if client.state == BLOCKED:
            self._go(client, "resume")
        self._flush()

    def _lost_sync(self, s: _Side, ts: int) -> None:
        """The server side lost track of message boundaries at `ts`: any pending request
        sent by then may have had its answer in the lost bytes, so it cannot be paired."""
        if s.is_req:
            return
        if self._pipelined:
            self._lose_pairing("server bytes lost on a pipelining connection", drain=False,
                               ts=ts)
            return
        awaiting = self._awaiting
        lost = False
        while awaiting and awaiting[0].request.first_ns <= ts:
            ex = awaiting.popleft()
            ex.response_lost = True
            ex.end_ns = ts
            ex.error = "response not captured"
            self.stats["responses_lost"] += 1
            lost = True
        if lost:
            client = self._sides[Side.CLIENT]
            if client.state == BLOCKED:
                self._go(client, "resume")
            self._flush()

    def _gap(self, s: _Side, nbytes: int, ts: int) -> None:
        """Apply a capture gap at the current position (partial units already dropped)."""
        st = s.state
        if st == BODY_LENGTH or st == CHUNK_DATA:
            if nbytes <= s.remaining:
                s.body.lost(nbytes)
                s.remaining -= nbytes
                self._go(s, "gap_kept")
                if not s.remaining:
                    if st == BODY_LENGTH:
                        s.msg.last_ns = ts
                        self._go(s, "body_done")
                        self._message_done(s)
                    else:
                        self._go(s, "chunk_data_done")
                return
            if st == BODY_LENGTH:
                # The body ended inside the gap; whatever followed it is lost.
                s.body.lost(s.remaining)
                s.msg.last_ns = ts
                self._go(s, "gap_lost")
                self._message_done(s)
            else:
                s.body.lost(s.remaining)
                s.msg.last_ns = ts
                self._go(s, "gap_lost")
                self._finish_partial(s, "response not fully captured")
            self._lost_sync(s, ts)
            return
        if st == BODY_EOF:
            s.body.lost(nbytes)
            s.msg.last_ns = ts
            self._go(s, "gap_kept")
            return
        if st == SWITCHED:
            self.stats["upgraded_bytes_client" if s.is_req else "upgraded_bytes_server"] += nbytes
            self._go(s, "gap_kept")
            return
        if st == IGNORE:
            self._go(s, "gap_kept")
            return
        if st == CLOSED:
            return
        if st == HUNT:
            self._go(s, "gap_kept")
            self._lost_sync(s, ts)
            return
        if st in (CHUNK_SIZE, CHUNK_END, TRAILERS):
            s.body.lost(nbytes)
            s.msg.last_ns = ts
            self._finish_partial(s, "response not fully captured")
        # IDLE (a partial head was already dropped) or chunk framing: boundaries are lost.
        self._go(s, "gap_lost")
        self._lost_sync(s, ts)

    def _close(self, ts: int) -> None:
        client, server = self._sides
        st = server.state
        if st == BODY_EOF:
            msg = server.msg
            self._message_done(server)
            if not msg.last_ns:
                msg.last_ns = msg.first_ns
        elif server.msg is not None:
            self._finish_partial(server, "connection closed during response")
        elif st == IDLE and server.inp.pos < server.inp.limit() and self._awaiting:
            self.stats["abandoned_responses"] += 1
        if client.msg is not None:
            self._finish_partial(client, "connection closed during request")
        elif client.state == IDLE and client.inp.pos < client.inp.limit():
            self.stats["abandoned_requests"] += 1
        for ex in self._awaiting:
            ex.response_lost = True
            ex.end_ns = ts
            if ex.error is None:
                ex.error = "connection closed before response"
        self._awaiting.clear()
        for ex in self._order:
            ex.req_done = True
        self._flush()
        for s in (client, server):
            s.state = h1_next_state(s.state, "close")



def _body_framing(te: str | None, length: str | None, response: bool = False):
    """RFC 9112 §6.3 for the header fields: ("none"|"length"|"chunked"|"eof"|"error", n)."""
    if te is not None:
        codings = [c.strip().lower() for c in te.split(",") if c.strip()]
        if codings and codings[-1] == "chunked":
            return "chunked", 0
        if response:
            return "eof", 0
        return "error", f"transfer-encoding {te!r}"
    if length is not None:
        values = {v.strip() for v in length.split(",")}
        if len(values) != 1:
            return "error", f"content-length {length!r}"
        value = values.pop()
        if not value.isdigit() or not value.isascii() or len(value) > 18:
            return "error", f"content-length {length!r}"
        size = int(value)
        return ("length", size) if size else ("none", 0)
    return ("eof", 0) if response else ("none", 0)
