"""Walk every (state, input) pair of the protocol state tables.

The HTTP/1 table is the native parser's (read through `plaintap._core.http1_table()`).
Each table is checked twice: against the expectation written out here (so an edit to a
table is a deliberate, reviewed change), and by driving a real parser into every state
with wire bytes and applying every input that bytes can produce.
"""
from __future__ import annotations

import itertools

import pytest

from plaintap.protocols import ParseError, Transaction, new_parser
from plaintap.protocols import http1 as h1m
from plaintap.protocols import http2 as h2m
from plaintap.protocols.http1 import H1_TABLE, INPUTS, STATES, ProtocolStateError, h1_next_state
from plaintap.protocols.http2 import H2_STREAM_TABLE, STREAM_INPUTS, STREAM_STATES, h2_stream_next

from .helpers import C, H2, PREFACE, S, get

# ---------------------------------------------------------------------------------------
# HTTP/1 per-direction framing table

LIVE = [s for s in STATES if s != h1m.CLOSED]
EXPECTED_H1 = {
    (h1m.HUNT, "sync"): h1m.IDLE, (h1m.HUNT, "gap_kept"): h1m.HUNT,
    (h1m.HUNT, "overflow"): h1m.HUNT,
    (h1m.IDLE, "head_no_body"): h1m.IDLE, (h1m.IDLE, "head_length"): h1m.BODY_LENGTH,
    (h1m.IDLE, "head_chunked"): h1m.CHUNK_SIZE, (h1m.IDLE, "head_eof"): h1m.BODY_EOF,
    (h1m.IDLE, "head_switch"): h1m.SWITCHED, (h1m.IDLE, "block"): h1m.BLOCKED,
    (h1m.IDLE, "error"): h1m.HUNT, (h1m.IDLE, "reject"): h1m.REJECTED,
    (h1m.IDLE, "unpaired"): h1m.HUNT,
    (h1m.IDLE, "overflow"): h1m.HUNT, (h1m.IDLE, "gap_lost"): h1m.HUNT,
    (h1m.BODY_LENGTH, "body_done"): h1m.IDLE, (h1m.BODY_LENGTH, "gap_kept"): h1m.BODY_LENGTH,
    (h1m.BODY_LENGTH, "gap_lost"): h1m.HUNT,
    (h1m.CHUNK_SIZE, "chunk_size"): h1m.CHUNK_DATA, (h1m.CHUNK_SIZE, "last_chunk"): h1m.TRAILERS,
    (h1m.CHUNK_SIZE, "error"): h1m.HUNT, (h1m.CHUNK_SIZE, "gap_lost"): h1m.HUNT,
    (h1m.CHUNK_SIZE, "reject"): h1m.REJECTED,
    (h1m.CHUNK_DATA, "chunk_data_done"): h1m.CHUNK_END,
    (h1m.CHUNK_DATA, "gap_kept"): h1m.CHUNK_DATA, (h1m.CHUNK_DATA, "gap_lost"): h1m.HUNT,
    (h1m.CHUNK_END, "chunk_end"): h1m.CHUNK_SIZE, (h1m.CHUNK_END, "error"): h1m.HUNT,
    (h1m.CHUNK_END, "gap_lost"): h1m.HUNT, (h1m.CHUNK_END, "reject"): h1m.REJECTED,
    (h1m.TRAILERS, "trailers_done"): h1m.IDLE, (h1m.TRAILERS, "error"): h1m.HUNT,
    (h1m.TRAILERS, "gap_lost"): h1m.HUNT, (h1m.TRAILERS, "reject"): h1m.REJECTED,
    (h1m.BODY_EOF, "gap_kept"): h1m.BODY_EOF,
    (h1m.BLOCKED, "resume"): h1m.IDLE, (h1m.BLOCKED, "overflow"): h1m.HUNT,
    (h1m.SWITCHED, "gap_kept"): h1m.SWITCHED,
    (h1m.IGNORE, "gap_kept"): h1m.IGNORE,
    (h1m.REJECTED, "gap_kept"): h1m.REJECTED,
    **{(s, "switch"): h1m.SWITCHED for s in LIVE
       if s not in (h1m.SWITCHED, h1m.IGNORE, h1m.REJECTED)},
    **{(s, "pairing_lost"): h1m.IGNORE for s in LIVE
       if s not in (h1m.SWITCHED, h1m.IGNORE, h1m.REJECTED)},
    **{(s, "close"): h1m.CLOSED for s in STATES},
}


@pytest.mark.parametrize("state,event", list(itertools.product(STATES, INPUTS)))
def test_h1_table_every_pair(state, event):
    expected = EXPECTED_H1.get((state, event))
    if expected is None:
        with pytest.raises(ProtocolStateError):
            h1_next_state(state, event)
    else:
        assert h1_next_state(state, event) == expected
        assert expected in STATES


def test_h1_table_has_no_unexpected_entries():
    assert H1_TABLE == EXPECTED_H1


def test_h1_every_state_is_reachable():
    reached = {h1m.IDLE, h1m.HUNT}
    while True:
        more = {nxt for (st, _), nxt in H1_TABLE.items() if st in reached} - reached
        if not more:
            break
        reached |= more
    assert reached == set(STATES)


# Drive a real parser into each framing state with bytes, then apply each input that can
# arrive from outside (more bytes, a small gap, a large gap, garbage, close).

GET1 = b"GET /1 HTTP/1.1\r\n\r\n"
OK0 = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
DRIVE_H1 = {
    # state: (parser kwargs, steps, side under test)
    h1m.HUNT: ({"midstream": True}, [(C, b"garbage")], C),
    h1m.IDLE: ({}, [], C),
    h1m.BODY_LENGTH: ({}, [(C, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nab")], C),
    h1m.CHUNK_SIZE: ({}, [(C, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")], C),
    h1m.CHUNK_DATA: ({}, [(C, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nab")], C),
    h1m.CHUNK_END: ({}, [(C, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde")], C),
    h1m.TRAILERS: ({}, [(C, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")], C),
    h1m.BODY_EOF: ({}, [(C, GET1), (S, b"HTTP/1.1 200 OK\r\n\r\nabc")], S),
    h1m.BLOCKED: ({}, [(C, b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")], C),
    h1m.SWITCHED: ({}, [(C, b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
                        (S, b"HTTP/1.1 101 Switching Protocols\r\n\r\n")], C),
    h1m.IGNORE: ({}, [(C, GET1 + GET1), (S, OK0), ("gap", S, 5)], S),
    h1m.REJECTED: ({}, [(C, b"GET /bad path HTTP/1.1\r\n\r\n")], C),
    h1m.CLOSED: ({}, [("close",)], C),
}
EXTERNAL = {
    "more": lambda side: (side, (GET1 if side == C else OK0)),
    "garbage": lambda side: (side, b"\x00\xff garbage \r\n\r\n"),
    "small_gap": lambda side: ("gap", side, 3),
    "large_gap": lambda side: ("gap", side, 1 << 20),
    "close": lambda side: ("close",),
}
# Where a gap leaves each state (the parser consults H1_TABLE for these).
GAP_RESULT = {h1m.HUNT: h1m.HUNT, h1m.IDLE: h1m.HUNT, h1m.BODY_EOF: h1m.BODY_EOF,
              h1m.SWITCHED: h1m.SWITCHED, h1m.IGNORE: h1m.IGNORE, h1m.CLOSED: h1m.CLOSED,
              h1m.BLOCKED: h1m.BLOCKED, h1m.CHUNK_SIZE: h1m.HUNT, h1m.CHUNK_END: h1m.HUNT,
              h1m.TRAILERS: h1m.HUNT, h1m.REJECTED: h1m.REJECTED}


def _apply(p, step, ts):
    if step[0] == "gap":
        p.feed_gap(step[1], step[2], ts)
    elif step[0] == "close":
        p.close(ts)
    else:
        p.feed(step[0], step[1], ts)


@pytest.mark.parametrize("state,external", list(itertools.product(DRIVE_H1, EXTERNAL)))
def test_h1_every_state_with_every_external_input(state, external):
    kwargs, steps, side = DRIVE_H1[state]
    p = new_parser("http1", **kwargs)
    for i, step in enumerate(steps):
        _apply(p, step, i + 1)
    assert p.state(side) == state
    _apply(p, EXTERNAL[external](side), 100)
    events = []
    while (ev := p.next_event()) is not None:
        events.append(ev)
    assert p.stats["internal_errors"] == 0, events
    after = p.state(side)
    if external == "close":
        assert after == h1m.CLOSED
    elif external == "small_gap":
        expected = GAP_RESULT.get(state)
        if state in (h1m.BODY_LENGTH, h1m.CHUNK_DATA):
            expected = state                      # 3 bytes fit in what is left
        assert after == expected
    elif external == "large_gap" and state in (h1m.BODY_LENGTH, h1m.CHUNK_DATA):
        assert after == h1m.HUNT
    assert after in STATES


# ---------------------------------------------------------------------------------------
# HTTP/2 stream table

O, OR, RD, RDR, RSD, T, X, I = (h2m.S_OPEN, h2m.S_OPEN_RESP, h2m.S_REQ_DONE,
                                 h2m.S_REQ_DONE_RESP, h2m.S_RESP_DONE, h2m.S_TUNNEL,
                                 h2m.S_CLOSED, h2m.S_IDLE)
EXPECTED_H2 = {
    (I, "c_headers"): O, (I, "c_headers_es"): RD, (I, "push"): RD,
    (O, "c_data"): O, (O, "c_data_es"): RD, (O, "c_headers_es"): RD, (O, "s_info"): O,
    (O, "s_headers"): OR, (O, "s_headers_es"): RSD, (O, "s_tunnel"): T, (O, "rst"): X,
    (OR, "c_data"): OR, (OR, "c_data_es"): RDR, (OR, "c_headers_es"): RDR,
    (OR, "s_data"): OR, (OR, "s_data_es"): RSD, (OR, "s_headers_es"): RSD, (OR, "rst"): X,
    (RD, "s_info"): RD, (RD, "s_headers"): RDR, (RD, "s_headers_es"): X, (RD, "rst"): X,
    (RDR, "s_data"): RDR, (RDR, "s_data_es"): X, (RDR, "s_headers_es"): X, (RDR, "rst"): X,
    (RSD, "c_data"): RSD, (RSD, "c_data_es"): X, (RSD, "c_headers_es"): X, (RSD, "rst"): X,
    (T, "c_data"): T, (T, "c_data_es"): T, (T, "s_data"): T, (T, "s_data_es"): T, (T, "rst"): X,
}


@pytest.mark.parametrize("state,event", list(itertools.product(STREAM_STATES, STREAM_INPUTS)))
def test_h2_table_every_pair(state, event):
    assert h2_stream_next(state, event) == EXPECTED_H2.get((state, event))


def test_h2_table_has_no_unexpected_entries():
    assert H2_STREAM_TABLE == EXPECTED_H2


def _h2_drive(state: str, b: H2, sid: int, connect: bool):
    """(side, bytes) steps that put stream `sid` in `state` (built lazily: the encoders
    are stateful, so only the frames actually sent may be encoded)."""
    hdr_c = lambda fields, es=False: (C, b.headers(C, sid, fields, end_stream=es))  # noqa: E731
    hdr_s = lambda status, es=False: (S, b.headers(S, sid, [(":status", status)],  # noqa: E731
                                                   end_stream=es))
    if sid % 2 == 0:      # pushed streams: reachable states only
        def push():
            return [(C, b.headers(C, 1, get("/"), end_stream=True)),
                    (S, b.push_promise(1, sid, get("/pushed")))]
        plans = {I: lambda: [(C, b.headers(C, 1, get("/"), end_stream=True))],
                 RD: push,
                 RDR: lambda: push() + [hdr_s("200")],
                 X: lambda: push() + [hdr_s("200", True)]}
        plan = plans.get(state)
        return None if plan is None else plan()
    req = [(":method", "CONNECT"), (":authority", "h:1")] if connect else get("/")
    tunnel_req = [(":method", "CONNECT"), (":authority", "h:1")]
    plans = {
        I: lambda: [],
        O: lambda: [hdr_c(req)],
        OR: lambda: [hdr_c(req), hdr_s("200")],
        RD: lambda: [hdr_c(req, True)],
        RDR: lambda: [hdr_c(req, True), hdr_s("200")],
        RSD: lambda: [hdr_c(req), hdr_s("200", True)],
        T: lambda: [hdr_c(tunnel_req), hdr_s("200")],
        X: lambda: [hdr_c(req, True), hdr_s("200", True)],
    }
    return plans[state]()


def _h2_input(event: str, b: H2, sid: int, state: str):
    trailer = [("x-trailer", "1")]
    first = state == I
    return {
        "c_headers": lambda: (C, b.headers(C, sid, get("/") if first else trailer)),
        "c_headers_es": lambda: (C, b.headers(C, sid, get("/") if first else trailer,
                                              end_stream=True)),
        "c_data": lambda: (C, H2.data(sid, b"c")),
        "c_data_es": lambda: (C, H2.data(sid, b"c", end_stream=True)),
        "s_info": lambda: (S, b.headers(S, sid, [(":status", "103")])),
        "s_headers": lambda: (S, b.headers(S, sid, [(":status", "200")])),
        "s_headers_es": lambda: (S, b.headers(S, sid, [(":status", "200")], end_stream=True)),
        "s_tunnel": lambda: (S, b.headers(S, sid, [(":status", "200")])),
        "s_data": lambda: (S, H2.data(sid, b"s")),
        "s_data_es": lambda: (S, H2.data(sid, b"s", end_stream=True)),
        "rst": lambda: (C, H2.rst(sid, 8)),
        "push": lambda: (S, b.push_promise(1, sid, get("/again"))),
    }[event]()


def _h2_case(state: str, event: str):
    """How to drive (state, event) with bytes, or None when bytes cannot produce it."""
    if event == "push":
        return 2, False
    if event == "s_tunnel":
        # Only a first response to a CONNECT request is classified as s_tunnel.
        return (1, True) if state in (I, O, RD) else None
    if event in ("s_info", "s_headers", "s_headers_es") and state == T:
        return None       # a tunnel already has its response: these are trailers
    return 1, False


def _drivable(state: str, event: str) -> bool:
    case = _h2_case(state, event)
    return case is not None and _h2_drive(state, H2(), case[0], case[1]) is not None


_ALL_PAIRS = list(itertools.product(STREAM_STATES, STREAM_INPUTS))
_DRIVABLE = [pair for pair in _ALL_PAIRS if _drivable(*pair)]


def test_h2_pairs_no_bytes_can_produce_are_exactly_the_known_ones():
    # 8 pairs no byte sequence produces (they are covered by the table walk) and 4 states a
    # pushed stream cannot reach; a change here means the table or the driver changed.
    assert len(_ALL_PAIRS) - len(_DRIVABLE) == 12


@pytest.mark.parametrize("state,event", _DRIVABLE)
def test_h2_every_state_and_input_driven_by_frames(state, event):
    sid, connect = _h2_case(state, event)
    b = H2()
    drive = _h2_drive(state, b, sid, connect)
    p = new_parser("http2")
    p.feed(C, PREFACE + H2.settings(), 1)
    p.feed(S, H2.settings(), 2)
    ts = 10
    for side, data in drive:
        p.feed(side, data, ts)
        ts += 1
    before = []
    while (ev := p.next_event()) is not None:
        before.append(ev)
    assert not [e for e in before if isinstance(e, ParseError)]
    tracked = p.stream_state(sid)
    if state in (I, X):
        assert tracked is None
    else:
        assert tracked == state
    side, data = _h2_input(event, b, sid, state)
    p.feed(side, data, 100)
    p.close(200)
    events = []
    while (ev := p.next_event()) is not None:
        events.append(ev)
    assert p.stats["internal_errors"] == 0
    errs = [e for e in events if isinstance(e, ParseError)]
    txs = [e for e in events if isinstance(e, Transaction) and e.stream_id == sid]
    nxt = h2_stream_next(state, event)
    if state in (I, X) and nxt is None:
        # Frames for a stream the parser does not track are counted, not errors.
        assert not errs and not txs
        assert p.stats["orphan_frames"] >= (1 if event != "rst" else 0)
    elif nxt is None:
        assert [e.stream_id for e in errs] == [sid]
        assert txs == []          # a stream error never yields a transaction
    else:
        assert not errs
        emitted_before = any(isinstance(e, Transaction) and e.stream_id == sid for e in before)
        if state == T or emitted_before:
            assert txs == []      # the tunnel's transaction was emitted on entering it
        else:
            assert len(txs) == 1
            if nxt == X:
                assert txs[0].end_ns <= 100 and (event == "rst") == (txs[0].error is not None)
            elif nxt == T:
                assert txs[0].upgraded
            else:
                assert txs[0].error == "connection closed"
