"""Building blocks shared by the HTTP/1 and HTTP/2 parsers.

`StreamInput` is one direction's unconsumed bytes plus what the parser needs to stay
exact whatever the chunking: the kernel timestamp of every chunk (so a message's first
and last byte get the timestamp of the chunk that carried them), and the capture gaps in
order (so a parser applies a gap exactly at the byte position where bytes went missing,
after it has used every byte before it). Feeding the same bytes whole, byte by byte or at
random split points therefore gives the same events.

`BodyBuffer` keeps at most `limit` bytes of a body and counts the rest; after a capture
gap it stops storing, so a stored body never has a hole in it.

`GrpcFramer` walks the gRPC length-prefixed message framing incrementally, so message
counts and sizes are right even past the body limit.

`ParserBase` is the public, never-raising face both parsers share (feed, feed_gap,
close, next_event): a subclass provides `_consume(side)` and `_close(ts_ns)`.
"""
from __future__ import annotations

from collections import deque

from .model import ParseError, Side

# Handler results of the per-side state machines.
PROGRESS = 1   # consumed input or changed state: run again
NEED = 2       # needs more bytes (a pending gap may now be applied)
WAIT = 3       # blocked on the other side: do not apply gaps yet


class StreamInput:
    """Unconsumed bytes of one direction, with chunk timestamps and pending gaps.

    Positions handed to parsers are indexes into `buf`; `base` is the stream offset of
    `buf[0]`, so marks and gaps (kept in stream offsets) survive compaction.
    """

    __slots__ = ("buf", "base", "pos", "marks", "gaps", "last_ts")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.base = 0
        self.pos = 0
        # (stream offset of a chunk start, ts); ascending; the first covers buf[0].
        self.marks: list[tuple[int, int]] = []
        # (stream offset where the gap sits, lost byte count, ts)
        self.gaps: deque[tuple[int, int, int]] = deque()
        self.last_ts = 0

    def append(self, data: bytes, ts: int) -> None:
        if not self.marks or self.marks[-1][1] != ts:
            self.marks.append((self.base + len(self.buf), ts))
        self.buf += data
        self.last_ts = ts

    def add_gap(self, nbytes: int, ts: int) -> None:
        self.gaps.append((self.base + len(self.buf), nbytes, ts))
        self.last_ts = ts

    def limit(self) -> int:
        """Index in `buf` up to which bytes are contiguous (the next gap, or the end)."""
        if self.gaps:
            return self.gaps[0][0] - self.base
        return len(self.buf)

    def pop_gap(self) -> tuple[int, int]:
        """Remove the next gap and move the read position to it; returns (nbytes, ts)."""
        off, nbytes, ts = self.gaps.popleft()
        # Bytes before the gap that were not consumed (a partial unit) are dropped: the
        # caller's state change decides what that means.
        self.pos = off - self.base
        return nbytes, ts

    def ts_at(self, index: int) -> int:
        """Timestamp of the chunk that carried byte `buf[index]`."""
        off = self.base + index
        marks = self.marks
        j = len(marks) - 1
        while j > 0 and marks[j][0] > off:
            j -= 1
        return marks[j][1] if marks else self.last_ts

    def pending(self) -> bool:
        return self.pos < len(self.buf) or bool(self.gaps)

    def compact(self) -> None:
        pos = self.pos
        if not pos:
            return
        buf = self.buf
        if pos >= len(buf):
            self.base += len(buf)
            buf.clear()
            self.pos = 0
        elif pos >= 65536:
            del buf[:pos]
            self.base += pos
            self.pos = 0
        else:
            return
        marks = self.marks
        if len(marks) > 1:
            base = self.base
            j = len(marks) - 1
            while j > 0 and marks[j][0] > base:
                j -= 1
            if j:
                del marks[:j]


class BodyBuffer:
    """Stores up to `limit` body bytes, counts all of them, optionally walks gRPC framing."""

    __slots__ = ("parts", "stored", "size", "limit", "truncated", "grpc")

    def __init__(self, limit: int, grpc: "GrpcFramer | None" = None) -> None:
        self.parts: list = []
        self.stored = 0
        self.size = 0
        self.limit = limit
        self.truncated = False
        self.grpc = grpc

    def add(self, data) -> None:
        n = len(data)
        if not n:
            return
        self.size += n
        if self.grpc is not None:
            self.grpc.feed(data)
        room = self.limit - self.stored
        if room >= n:
            self.parts.append(data)
            self.stored += n
        else:
            self.truncated = True
            if room > 0:
                self.parts.append(data[:room])
                self.stored += room

    def lost(self, n: int) -> None:
        """`n` body bytes were lost in a capture gap: count them, store nothing more."""
        if n <= 0:
            return
        self.size += n
        self.truncated = True
        self.limit = self.stored
        if self.grpc is not None:
            self.grpc.lost(n)

    def mark_lost(self) -> None:
        """An unknown number of body bytes may have been lost: store nothing more."""
        self.truncated = True
        self.limit = self.stored
        if self.grpc is not None:
            self.grpc.in_sync = False

    def value(self) -> bytes:
        parts = self.parts
        if not parts:
            return b""
        if len(parts) == 1 and type(parts[0]) is bytes:
            return parts[0]
        return b"".join(parts)


class GrpcFramer:
    """Counts gRPC messages (5-byte prefix: flag, uint32 length) in one direction."""

    __slots__ = ("messages", "nbytes", "remaining", "head", "in_sync")

    def __init__(self) -> None:
        self.messages = 0
        self.nbytes = 0
        self.remaining = 0          # payload bytes left in the current message
        self.head = b""             # partial 5-byte prefix
        self.in_sync = True

    def feed(self, data) -> None:
        if not self.in_sync:
            return
        i = 0
        n = len(data)
        while i < n:
            if self.remaining:
                take = min(self.remaining, n - i)
                self.remaining -= take
                i += take
                continue
            need = 5 - len(self.head)
            self.head += bytes(data[i:i + need])
            i += need
            if len(self.head) == 5:
                length = int.from_bytes(self.head[1:5], "big")
                self.head = b""
                self.messages += 1
                self.nbytes += length
                self.remaining = length

    def lost(self, n: int) -> None:
        if self.in_sync and not self.head and n <= self.remaining:
            self.remaining -= n
        else:
            self.in_sync = False


class ParserBase:
    """The public API of both HTTP parsers; it never raises.

    Subclasses set `_sides` (per side, with an `inp` StreamInput), `stats`, `_events`
    (a deque), `_closed`/`_broken` flags, and implement `_consume(side)` (consume what
    `side` has buffered) and `_close(ts_ns)` (end of connection). An exception inside
    them is a bug: it is counted, reported once as a ParseError, and the parser goes
    quiet for this connection instead of taking the pipeline down.
    """

    def feed(self, side, data: bytes, ts_ns: int) -> None:
        """Bytes `side` sent, in stream order. Never raises."""
        if not data:
            return
        if self._closed or self._broken:
            self.stats["bytes_after_close"] += len(data)
            return
        try:
            self._sides[side].inp.append(data, ts_ns)
            self._consume(side)
        except Exception as exc:  # a bug must not take the agent down: count, go quiet
            self._internal_error(side, exc, ts_ns)

    def feed_gap(self, side, nbytes: int, ts_ns: int) -> None:
        """`nbytes` bytes that `side` sent were lost by the capture. Never raises."""
        if nbytes <= 0 or self._closed or self._broken:
            return
        try:
            self.stats["gaps"] += 1
            self.stats["gap_bytes"] += nbytes
            self._sides[side].inp.add_gap(nbytes, ts_ns)
            self._consume(side)
        except Exception as exc:
            self._internal_error(side, exc, ts_ns)

    def close(self, ts_ns: int) -> None:
        """The connection closed: finish what can be finished, give up on the rest."""
        if self._closed:
            return
        try:
            if not self._broken:
                self._close(ts_ns)
        except Exception as exc:
            self._internal_error(Side.SERVER, exc, ts_ns)
        self._closed = True

    def next_event(self):
        """The next Transaction or ParseError, or None when nothing is pending."""
        events = self._events
        return events.popleft() if events else None

    def _internal_error(self, side, exc: Exception, ts: int) -> None:
        self._broken = True
        self.stats["internal_errors"] += 1
        self._events.append(ParseError(side, f"internal error: {type(exc).__name__}: {exc}", ts))
