"""Test helpers: fixtures as exact wire bytes, fed three ways.

A fixture is a list of steps in realistic order — `D(side, bytes, ts)` for bytes a side
sent, `GAP(side, n, ts)` for bytes the capture lost, `CLOSE(ts)`. `feed_three_ways` runs
it whole, one byte at a time, and at seeded random split points (where a step marked
``overlap=True`` may also interleave its pieces with the previous step's, as two ends
sending at once do), and asserts identical events.

`H2` builds HTTP/2 byte streams with hyperframe frames and one hpack Encoder per side, so
header blocks carry real dynamic-table state.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import hpack
from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame,
                              PingFrame, PriorityFrame, PushPromiseFrame, RstStreamFrame,
                              SettingsFrame, WindowUpdateFrame)

from plaintap.protocols import ParseError, Side, Transaction, new_parser

C = Side.CLIENT
S = Side.SERVER
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(frozen=True)
class Step:
    kind: str            # "data" | "gap" | "close"
    side: Side | None
    data: bytes = b""
    n: int = 0
    ts: int = 0
    overlap: bool = False


def D(side: Side, data: bytes, ts: int, overlap: bool = False) -> Step:
    return Step("data", side, data=data, ts=ts, overlap=overlap)


def GAP(side: Side, n: int, ts: int) -> Step:
    return Step("gap", side, n=n, ts=ts)


def CLOSE(ts: int) -> Step:
    return Step("close", None, ts=ts)


def _pieces(data: bytes, mode: str, rng: random.Random) -> list[bytes]:
    if mode == "whole" or len(data) <= 1:
        return [data]
    if mode == "byte":
        return [data[i:i + 1] for i in range(len(data))]
    k = rng.randint(1, min(len(data) - 1, 12))
    cuts = sorted(rng.sample(range(1, len(data)), k))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def schedule(steps: list[Step], mode: str, seed: int = 0) -> list[tuple]:
    """The feed calls for one way of feeding: (kind, side, payload, ts) tuples."""
    rng = random.Random(seed)
    actions: list[tuple] = []
    prev_units = 0          # how many trailing actions belong to the previous data step
    prev_side = None
    for step in steps:
        if step.kind == "data":
            units = [("data", step.side, p, step.ts) for p in _pieces(step.data, mode, rng)]
            if mode == "random" and step.overlap and prev_units and prev_side != step.side:
                prev = actions[-prev_units:]
                del actions[-prev_units:]
                # The previous step's first piece still goes first (causality).
                merged = [prev[0]]
                a, b = prev[1:], units
                while a or b:
                    if a and (not b or rng.random() < 0.5):
                        merged.append(a.pop(0))
                    else:
                        merged.append(b.pop(0))
                actions.extend(merged)
                prev_units = len(units)
            else:
                actions.extend(units)
                prev_units = len(units)
            prev_side = step.side
        elif step.kind == "gap":
            actions.append(("gap", step.side, step.n, step.ts))
            prev_units = 0
        else:
            actions.append(("close", None, None, step.ts))
            prev_units = 0
    return actions


def run(make_parser, steps: list[Step], mode: str = "whole", seed: int = 0):
    """Feed one way; returns (events, parser). Fails on any internal error."""
    p = make_parser()
    events = []
    for kind, side, payload, ts in schedule(steps, mode, seed):
        if kind == "data":
            p.feed(side, payload, ts)
        elif kind == "gap":
            p.feed_gap(side, payload, ts)
        else:
            p.close(ts)
        while (ev := p.next_event()) is not None:
            events.append(ev)
    internal = [e for e in events if isinstance(e, ParseError) and e.reason.startswith("internal")]
    assert not internal, internal
    assert p.stats["internal_errors"] == 0
    return events, p


def feed_three_ways(make_parser, steps: list[Step], seeds=(1, 2, 3, 4, 5)):
    """Run whole, byte-at-a-time and at random splits; assert identical events; return
    the events (and the parser fed whole)."""
    whole, parser = run(make_parser, steps, "whole")
    bytewise, _ = run(make_parser, steps, "byte")
    assert bytewise == whole, "byte-at-a-time feeding gave different events"
    for seed in seeds:
        randomly, _ = run(make_parser, steps, "random", seed)
        assert randomly == whole, f"random split (seed {seed}) gave different events"
    return whole, parser


def h1(**kw):
    return lambda: new_parser("http1", **kw)


def h2(**kw):
    return lambda: new_parser("http2", **kw)


def transactions(events) -> list[Transaction]:
    return [e for e in events if isinstance(e, Transaction)]


def errors(events) -> list[ParseError]:
    return [e for e in events if isinstance(e, ParseError)]


class H2:
    """Builds HTTP/2 wire bytes: one hpack Encoder per side, frames via hyperframe."""

    def __init__(self) -> None:
        self.enc = {C: hpack.Encoder(), S: hpack.Encoder()}

    def block(self, side: Side, fields) -> bytes:
        return self.enc[side].encode(fields)

    def headers(self, side: Side, sid: int, fields, end_stream: bool = False,
                split: int | None = None, pad: int = 0, priority: bool = False) -> bytes:
        """HEADERS (+ CONTINUATION frames of `split` bytes of block each)."""
        block = self.block(side, fields)
        return self.headers_raw(sid, block, end_stream, split, pad, priority)

    @staticmethod
    def headers_raw(sid: int, block: bytes, end_stream: bool = False, split: int | None = None,
                    pad: int = 0, priority: bool = False) -> bytes:
        chunks = [block] if not split else [block[i:i + split] for i in range(0, len(block), split)]
        flags = []
        if end_stream:
            flags.append("END_STREAM")
        if len(chunks) == 1:
            flags.append("END_HEADERS")
        kw = {}
        if pad:
            flags.append("PADDED")
            kw["pad_length"] = pad
        if priority:
            flags.append("PRIORITY")
            kw.update(depends_on=0, stream_weight=15, exclusive=False)
        out = HeadersFrame(sid, data=chunks[0], flags=flags, **kw).serialize()
        for i, chunk in enumerate(chunks[1:], 1):
            cflags = ["END_HEADERS"] if i == len(chunks) - 1 else []
            out += ContinuationFrame(sid, data=chunk, flags=cflags).serialize()
        return out

    def push_promise(self, sid: int, promised: int, fields, split: int | None = None) -> bytes:
        block = self.block(S, fields)
        chunks = [block] if not split else [block[i:i + split] for i in range(0, len(block), split)]
        flags = ["END_HEADERS"] if len(chunks) == 1 else []
        out = PushPromiseFrame(sid, promised_stream_id=promised, data=chunks[0],
                               flags=flags).serialize()
        for i, chunk in enumerate(chunks[1:], 1):
            cflags = ["END_HEADERS"] if i == len(chunks) - 1 else []
            out += ContinuationFrame(sid, data=chunk, flags=cflags).serialize()
        return out

    @staticmethod
    def data(sid: int, payload: bytes, end_stream: bool = False, pad: int = 0) -> bytes:
        flags = ["END_STREAM"] if end_stream else []
        kw = {}
        if pad:
            flags.append("PADDED")
            kw["pad_length"] = pad
        return DataFrame(sid, data=payload, flags=flags, **kw).serialize()

    @staticmethod
    def settings(ack: bool = False, **settings) -> bytes:
        ids = {"header_table_size": 1, "enable_push": 2, "max_concurrent_streams": 3,
               "initial_window_size": 4, "max_frame_size": 5, "max_header_list_size": 6}
        if ack:
            return SettingsFrame(0, flags=["ACK"]).serialize()
        return SettingsFrame(0, settings={ids[k]: v for k, v in settings.items()}).serialize()

    @staticmethod
    def rst(sid: int, code: int = 8) -> bytes:
        return RstStreamFrame(sid, error_code=code).serialize()

    @staticmethod
    def goaway(last: int, code: int = 0) -> bytes:
        return GoAwayFrame(0, last_stream_id=last, error_code=code).serialize()

    @staticmethod
    def ping(ack: bool = False) -> bytes:
        return PingFrame(0, opaque_data=b"12345678", flags=["ACK"] if ack else []).serialize()

    @staticmethod
    def window_update(sid: int, n: int = 65535) -> bytes:
        return WindowUpdateFrame(sid, window_increment=n).serialize()

    @staticmethod
    def priority(sid: int) -> bytes:
        return PriorityFrame(sid, depends_on=0, stream_weight=200).serialize()


def get(path: str = "/", authority: str = "example.com", method: str = "GET", extra=()):
    return [(":method", method), (":scheme", "https"), (":authority", authority),
            (":path", path), *extra]


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload
