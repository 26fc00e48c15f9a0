"""Stream reassembly by offset: order, duplicates, gaps, bounded pending."""
import random

from plaintap.conn.reassembly import Stream


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
            s.add(off, c, out)
        assert collect(out) == (payload, 0)
        assert s.delivered == len(payload) and not s.pending


def test_duplicates_and_overlaps_are_trimmed():
    s, out = Stream(), []
    s.add(0, b"hello", out)
    s.add(0, b"hello", out)          # full duplicate
    s.add(3, b"lo world", out)       # overlap
    assert collect(out) == (b"hello world", 0)
    assert s.duplicate_bytes == 5 + 2


def test_explicit_gap_is_delivered_in_place():
    s, out = Stream(), []
    s.add(0, b"ab", out)
    s.add(5, b"fg", out)             # waits for the hole
    assert collect(out) == (b"ab", 0)
    s.add_gap(2, 3, out)
    assert out == [b"ab", 3, b"fg"] and s.gap_bytes == 3


def test_pending_bound_turns_a_hole_into_a_gap():
    s, out = Stream(max_pending_bytes=10), []
    s.add(100, b"x" * 11, out)       # never filled: over the bound
    assert out == [100, b"x" * 11] and s.next == 111


def test_flush_at_close_reports_holes():
    s, out = Stream(), []
    s.add(0, b"a", out)
    s.add(4, b"e", out)
    s.flush(out)
    assert out == [b"a", 3, b"e"]
