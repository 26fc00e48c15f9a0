"""HPACK decoding when the dynamic table's earlier contents are unknown.

After a mid-stream join, or once bytes of a header block were lost, the real dynamic
table holds entries this observer never saw. Decoding with an empty table would resolve
indexes to the wrong entries, so the normal decoder cannot be used. This one keeps what it
can be sure of:

* the static table (indexes 1..61) never changes;
* every entry inserted *after* the join is known, and because HPACK numbers dynamic
  entries newest-first, the k entries we saw inserted are exactly indexes 62..62+k-1 —
  evictions only ever remove the oldest entries, which are the unknown ones (an encoder
  never references an entry it evicted);
* a dynamic table size update to 0 empties the table, after which everything is known.

A field that references an entry older than the join is reported as unknown (skipped),
and the block is marked incomplete. Insertions whose name is unknown still occupy a slot,
so later indexes stay right. A malformed block forgets every learned entry (the block may
have inserted entries we could not account for). Our own copy of the table is bounded.

Integer and string primitives follow RFC 7541 §5; Huffman decoding and the static table
come from the `hpack` package.
"""
from __future__ import annotations

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
_STATIC_LEN = len(STATIC_TABLE)  # 61
MAX_KNOWN_BYTES = 64 * 1024


class PartialHpackDecoder:
    """Decodes what can be decoded; `decode` returns (fields, complete)."""

    __slots__ = ("known", "known_size", "table_cleared")

    def __init__(self) -> None:
        # newest first: (name | None, value) — name None when it referenced an unknown entry
        self.known: list[tuple[bytes | None, bytes]] = []
        self.known_size = 0
        self.table_cleared = False   # a size update to 0 was seen: no unknown entries left

    def decode(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Fields that could be resolved (wire order) and whether every field was.

        Raises HPACKDecodingError on a malformed block (after forgetting learned state).
        """
        try:
            return self._decode(block)
        except HPACKDecodingError:
            self.forget()
            raise
        except (IndexError, ValueError) as exc:
            self.forget()
            raise HPACKDecodingError(f"malformed header block: {exc}") from None

    def forget(self) -> None:
        self.known = []
        self.known_size = 0
        self.table_cleared = False

    def _lookup(self, index: int) -> tuple[bytes | None, bytes | None]:
        if index <= 0:
            raise HPACKDecodingError("index 0")
        if index <= _STATIC_LEN:
            return STATIC_TABLE[index - 1]
        d = index - _STATIC_LEN - 1
        if d < len(self.known):
            return self.known[d]
        if self.table_cleared:
            raise HPACKDecodingError(f"index {index} beyond the dynamic table")
        return None, None

    def _insert(self, name: bytes | None, value: bytes) -> None:
        self.known.insert(0, (name, value))
        self.known_size += 32 + len(name or b"") + len(value)
        while self.known_size > MAX_KNOWN_BYTES and self.known:
            old_name, old_value = self.known.pop()
            self.known_size -= 32 + len(old_name or b"") + len(old_value)
            # Entries past our copy are unknown again.
            self.table_cleared = False

    def _decode(self, data: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
        fields: list[tuple[bytes, bytes]] = []
        complete = True
        i = 0
        n = len(data)
        while i < n:
            b = data[i]
            if b & 0x80:                       # indexed field
                index, i = _integer(data, i, 7)
                name, value = self._lookup(index)
                if name is None or value is None:
                    complete = False
                else:
                    fields.append((name, value))
            elif b & 0x40:                     # literal with incremental indexing
                name, value, i = self._literal(data, i, 6)
                self._insert(name, value)
                if name is None:
                    complete = False
                else:
                    fields.append((name, value))
            elif b & 0x20:                     # dynamic table size update
                size, i = _integer(data, i, 5)
                if size == 0:
                    self.known = []
                    self.known_size = 0
                    self.table_cleared = True
            else:                              # literal without indexing / never indexed
                name, value, i = self._literal(data, i, 4)
                if name is None:
                    complete = False
                else:
                    fields.append((name, value))
        return fields, complete

    def _literal(self, data: bytes, i: int, prefix: int):
        index, i = _integer(data, i, prefix)
        if index:
            name, _ = self._lookup(index)
        else:
            name, i = _string(data, i)
        value, i = _string(data, i)
        return name, value, i


def _integer(data: bytes, i: int, prefix: int) -> tuple[int, int]:
    """RFC 7541 §5.1 integer starting at data[i]; returns (value, next index)."""
    mask = (1 << prefix) - 1
    value = data[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    while True:
        if i >= len(data):
            raise HPACKDecodingError("truncated integer")
        b = data[i]
        i += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i
        if shift > 28:
            raise HPACKDecodingError("integer too large")


def _string(data: bytes, i: int) -> tuple[bytes, int]:
    """RFC 7541 §5.2 string literal at data[i]; returns (bytes, next index)."""
    if i >= len(data):
        raise HPACKDecodingError("truncated string")
    huffman = data[i] & 0x80
    length, i = _integer(data, i, 7)
    end = i + length
    if end > len(data):
        raise HPACKDecodingError("truncated string")
    raw = bytes(data[i:end])
    return (decode_huffman(raw) if huffman else raw), end
