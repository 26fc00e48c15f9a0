"""The two-ring merge (bpf/loader.py merge_rings): control events placed among the data
by kernel timestamp, events newer than the watermark held for the next poll."""
from __future__ import annotations

import random
import struct

from plaintap.bpf import abi
from plaintap.bpf.loader import merge_rings

HDR = struct.Struct("<IIQ")


def ev(kind: int, ts: int, tag: int = 0) -> bytes:
    return HDR.pack(kind, tag, ts)


def kinds(batch):
    return [(HDR.unpack_from(r)[0], HDR.unpack_from(r)[2]) for r in batch]


def test_open_before_its_data_and_close_after_it():
    data = [ev(abi.EV_DATA, 20), ev(abi.EV_DATA, 30)]
    control = [ev(abi.EV_CONN_OPEN, 10), ev(abi.EV_CONN_CLOSE, 40)]
    held: list[bytes] = []
    assert kinds(merge_rings(data, control, 100, held)) == [
        (abi.EV_CONN_OPEN, 10), (abi.EV_DATA, 20), (abi.EV_DATA, 30), (abi.EV_CONN_CLOSE, 40)]
    assert held == []


def test_events_at_or_after_the_watermark_wait_with_their_causes():
    # An open committed during the drain (ts >= watermark) and its data, also drained:
    # both wait; nothing is emitted out of order.
    held: list[bytes] = []
    out = merge_rings([ev(abi.EV_DATA, 5), ev(abi.EV_DATA, 60)], [ev(abi.EV_CONN_OPEN, 50)], 50, held)
    assert kinds(out) == [(abi.EV_DATA, 5)]
    assert kinds(held) == [(abi.EV_CONN_OPEN, 50), (abi.EV_DATA, 60)]
    # Next poll: the held events go first, in front of the new data.
    out = merge_rings(held + [ev(abi.EV_DATA, 70)], [ev(abi.EV_CONN_CLOSE, 80)], 1000, held)
    assert kinds(out) == [(abi.EV_CONN_OPEN, 50), (abi.EV_DATA, 60), (abi.EV_DATA, 70), (abi.EV_CONN_CLOSE, 80)]
    assert held == []


def test_data_only_batches_pass_through_untouched():
    data = [ev(abi.EV_DATA, t) for t in (3, 1, 2)]   # ring order, not ts order: left alone
    held: list[bytes] = []
    assert merge_rings(data, [], 10, held) is data and held == []


def test_every_event_comes_out_exactly_once_in_ts_order():
    rng = random.Random(7)
    data = [ev(abi.EV_DATA, rng.randrange(1000), i) for i in range(300)]
    control = sorted((ev(abi.EV_CONN_OPEN, rng.randrange(1000), 1000 + i) for i in range(50)),
                     key=lambda r: HDR.unpack_from(r)[2])
    held: list[bytes] = []
    out = merge_rings(data, control, 600, held)
    out += merge_rings(list(held), [], 10_000, held)
    assert sorted(out) == sorted(data + control)
    first = [HDR.unpack_from(r)[2] for r in out]
    assert first == sorted(first)
