"""Stream reassembly by offset (native core): order, duplicates, gaps, bounded pending."""
import random

from plaintap._core import Stream


def collect(pieces):
    data, gaps = b"", 0
    for p in pieces:
        if isinstance(p, int):
            gaps += p
            data += b"\0" * p
        else:
            data += p
    return data, gaps


def test_in_order_and_shuffled_chunks_give_the_same_stream():
    payload = bytes(random.Random(1).getrandbits(8) for _ in range(5000))
    chunks = [(i, payload[i:i + 97]) for i in range(0, len(payload), 97)]
    for seed in range(5):
        order = chunks[:]
        random.Random(seed).shuffle(order)
        s, out = Stream(), []
        for off, c in order:
            out += s.add(off, c)
        assert collect(out) == (payload, 0)
        assert s.delivered == len(payload) and s.pending_bytes == 0


def test_duplicates_and_overlaps_are_trimmed():
    s, out = Stream(), []
    out += s.add(0, b"hello")
    out += s.add(0, b"hello")          # full duplicate
    out += s.add(3, b"lo world")       # overlap
    assert collect(out) == (b"hello world", 0)
    assert s.duplicate_bytes == 5 + 2


def test_explicit_gap_is_delivered_in_place():
    s, out = Stream(), []
    out += s.add(0, b"ab")
    out += s.add(5, b"fg")             # waits for the hole
    assert collect(out) == (b"ab", 0)
    out += s.add_gap(2, 3)
    assert out == [b"ab", 3, b"fg"] and s.gap_bytes == 3 and s.hole_bytes == 0


def test_pending_bound_turns_a_hole_into_a_gap():
    s = Stream(max_pending_bytes=10)
    out = s.add(100, b"x" * 11)        # never filled: over the bound
    assert out == [100, b"x" * 11] and s.next == 111 and s.hole_bytes == 100


def test_flush_at_close_reports_holes():
    s, out = Stream(), []
    out += s.add(0, b"a")
    out += s.add(4, b"e")
    out += s.flush()
    assert out == [b"a", 3, b"e"]
