"""Per-direction stream reassembly by byte offset.

The kernel stamps every data event with the stream offset of its first byte, so order is
never guessed: bytes at the expected offset are delivered at once, bytes ahead of it wait
(bounded), bytes behind it are duplicates and trimmed. Known losses arrive as explicit
gap events; unknown ones (pending bytes past the bound) become gaps too. The consumer
sees a strictly ordered sequence of `bytes` pieces and `int` gap lengths.
"""
from __future__ import annotations


class Stream:
    """One direction of one connection.

    `add`/`add_gap` append deliverable pieces to `out`: `bytes` (payload, in order) or
    `int` (a gap of that many missing bytes). `delivered` and `gap_bytes` count them.
    """

    __slots__ = ("next", "pending", "pending_bytes", "max_pending_bytes", "delivered", "gap_bytes",
                 "duplicate_bytes")

    def __init__(self, max_pending_bytes: int = 8 << 20) -> None:
        self.next = 0
        self.pending: dict[int, bytes | int] = {}
        self.pending_bytes = 0
        self.max_pending_bytes = max_pending_bytes
        self.delivered = 0
        self.gap_bytes = 0
        self.duplicate_bytes = 0

    def add(self, offset: int, data: bytes, out: list) -> None:
        end = offset + len(data)
        if end <= self.next:
            self.duplicate_bytes += len(data)
            return
        if offset < self.next:
            self.duplicate_bytes += self.next - offset
            data = data[self.next - offset:]
            offset = self.next
        if offset == self.next:
            out.append(data)
            self.delivered += len(data)
            self.next = end
            if self.pending:
                self._drain(out)
            return
        self.pending[offset] = data
        self.pending_bytes += len(data)
        if self.pending_bytes > self.max_pending_bytes:
            self._skip_to_pending(out)

    def add_gap(self, offset: int, length: int, out: list) -> None:
        if offset + length <= self.next or length <= 0:
            return
        if offset < self.next:
            length -= self.next - offset
            offset = self.next
        if offset == self.next:
            self._deliver_gap(length, out)
            if self.pending:
                self._drain(out)
            return
        self.pending[offset] = length

    def flush(self, out: list) -> None:
        """End of stream: deliver everything pending, with gaps for the holes."""
        while self.pending:
            self._skip_to_pending(out)

    def _deliver_gap(self, length: int, out: list) -> None:
        out.append(length)
        self.gap_bytes += length
        self.next += length

    def _drain(self, out: list) -> None:
        while True:
            item = self.pending.pop(self.next, None)
            if item is None:
                # Something pending may overlap the expected offset (duplicates).
                stale = [o for o in self.pending if o < self.next]
                if not stale:
                    return
                for o in stale:
                    it = self.pending.pop(o)
                    if isinstance(it, bytes):
                        self.pending_bytes -= len(it)
                        if o + len(it) > self.next:
                            self.pending[self.next] = it[self.next - o:]
                            self.pending_bytes += len(it) - (self.next - o)
                            self.duplicate_bytes += self.next - o
                        else:
                            self.duplicate_bytes += len(it)
                    elif o + it > self.next:
                        self.pending[self.next] = o + it - self.next
                continue
            if isinstance(item, int):
                self._deliver_gap(item, out)
            else:
                self.pending_bytes -= len(item)
                out.append(item)
                self.delivered += len(item)
                self.next += len(item)

    def _skip_to_pending(self, out: list) -> None:
        first = min(self.pending)
        if first > self.next:
            self._deliver_gap(first - self.next, out)
        self._drain(out)
