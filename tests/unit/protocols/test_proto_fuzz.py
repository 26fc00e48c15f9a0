"""Fuzzing: random and mutated HTTP/1 and HTTP/2 byte streams never make a parser raise.

Each example feeds both directions at random split points with random gaps and a close;
besides "nothing escapes feed/feed_gap/close/next_event", a parser must not hit its
internal-error safety net (that would be a bug hidden from users as a ParseError).
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plaintap.protocols import ParseError, Transaction, detect, new_parser
from plaintap.protocols.tls import hello_incomplete, parse_client_hello, parse_server_hello

from .helpers import C, H2, PREFACE, S, get, grpc_message

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _h1_corpus() -> list[list[tuple]]:
    get_ = b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"
    return [
        [(C, get_), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")],
        [(C, b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\nT: v\r\n\r\n"),
         (S, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3\r\nabc\r\n0\r\n\r\n")],
        [(C, b"HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n"),
         (S, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil close")],
        [(C, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x80abcd"),
         (S, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00")],
        [(C, b"CONNECT h:443 HTTP/1.1\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\n\r\n\x16\x03\x01")],
        [(C, get_ * 3), (S, b"HTTP/1.1 204 No Content\r\n\r\n" * 2 + b"HTTP/1.1 304 NM\r\n\r\n")],
    ]


def _h2_corpus() -> list[list[tuple]]:
    out = []
    b = H2()
    out.append([(C, PREFACE + H2.settings(header_table_size=8192)
                 + b.headers(C, 1, get("/x", extra=[("a", "b" * 30)]), end_stream=True, split=6)),
                (S, H2.settings() + H2.settings(ack=True)
                 + b.headers(S, 1, [(":status", "200"), ("c", "d")], pad=4)
                 + H2.data(1, b"body", pad=3) + H2.data(1, b"", end_stream=True))])
    b = H2()
    ct = [("content-type", "application/grpc")]
    out.append([(C, PREFACE + H2.settings() + b.headers(C, 1, get("/p.S/M", "POST", ct))
                 + H2.data(1, grpc_message(b"req"), end_stream=True)
                 + b.headers(C, 3, get("/p.S/N", "POST", ct)) + H2.rst(3, 8)),
                (S, H2.settings() + b.headers(S, 1, [(":status", "200"), *ct])
                 + H2.data(1, grpc_message(b"resp" * 5)) + b.headers(S, 1, [("grpc-status", "0")],
                                                                     end_stream=True)
                 + b.push_promise(1, 2, get("/push")) + H2.goaway(3, 0))])
    b = H2()
    out.append([(C, PREFACE + H2.settings() + b.headers(C, 1, [(":method", "CONNECT"),
                                                               (":authority", "h:1")])
                 + H2.data(1, b"tunnel") + H2.ping()),
                (S, H2.settings() + b.headers(S, 1, [(":status", "200")]) + H2.data(1, b"x")
                 + H2.window_update(0) + H2.priority(1))])
    return out


@st.composite
def _mutated(draw, corpus):
    steps = [list(step) for step in draw(st.sampled_from(corpus))]
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(steps) - 1))
        data = bytearray(steps[i][1])
        if not data:
            continue
        pos = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "dup", "truncate", "byte"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif kind == "dup":
            n = draw(st.integers(1, 32))
            data[pos:pos] = data[pos:pos + n]
        else:
            del data[pos:]
        steps[i][1] = bytes(data)
    return [tuple(s) for s in steps]


@st.composite
def _schedule(draw, steps):
    """Feed calls: each step cut at random points, random gaps, random interleaving."""
    pending = {C: [], S: []}
    order = []
    for side, data in steps:
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(data) - 1)), max_size=6)))
        bounds = [0, *[c for c in cuts if c < len(data)], len(data)]
        for a, b in zip(bounds, bounds[1:]):
            pending[side].append(("data", side, data[a:b]))
            if draw(st.integers(0, 15)) == 0:
                pending[side].append(("gap", side, draw(st.integers(1, 64))))
        order.append(side)
    calls = []
    while pending[C] or pending[S]:
        sides = [s for s in (C, S) if pending[s]]
        side = draw(st.sampled_from(sides))
        calls.append(pending[side].pop(0))
    return calls


def _drive(protocol: str, midstream: bool, calls, close: bool) -> None:
    p = new_parser(protocol, body_limit=64, midstream=midstream)
    ts = 0
    events = []
    for kind, side, payload in calls:
        ts += 1
        if kind == "data":
            p.feed(side, payload, ts)
        else:
            p.feed_gap(side, payload, ts)
        while (ev := p.next_event()) is not None:
            events.append(ev)
    if close:
        p.close(ts + 1)
        p.feed(C, b"after close", ts + 2)
    while (ev := p.next_event()) is not None:
        events.append(ev)
    assert all(isinstance(e, (Transaction, ParseError)) for e in events)
    bugs = [e for e in events if isinstance(e, ParseError) and e.reason.startswith("internal")]
    assert not bugs, bugs
    assert p.stats["internal_errors"] == 0
    for e in events:
        if isinstance(e, Transaction):
            assert len(e.request.body) <= 64 and e.request.body_size >= len(e.request.body)
            if e.response is not None:
                assert len(e.response.body) <= 64
            e.request.render()
            if e.response is not None:
                e.response.render()


RANDOM_STEPS = st.lists(st.tuples(st.sampled_from([C, S]), st.binary(max_size=300)),
                        max_size=12)


@FUZZ
@given(protocol=st.sampled_from(["http1", "http2"]), midstream=st.booleans(),
       steps=RANDOM_STEPS, close=st.booleans(), data=st.data())
def test_random_bytes_never_raise(protocol, midstream, steps, close, data):
    _drive(protocol, midstream, data.draw(_schedule(steps)), close)


@FUZZ
@given(midstream=st.booleans(), close=st.booleans(), data=st.data())
def test_mutated_http1_never_raises(midstream, close, data):
    steps = data.draw(_mutated(_h1_corpus()))
    _drive("http1", midstream, data.draw(_schedule(steps)), close)


@FUZZ
@given(midstream=st.booleans(), close=st.booleans(), data=st.data())
def test_mutated_http2_never_raises(midstream, close, data):
    steps = data.draw(_mutated(_h2_corpus()))
    _drive("http2", midstream, data.draw(_schedule(steps)), close)


@FUZZ
@given(data=st.data())
def test_detect_and_tls_never_raise(data):
    blob = data.draw(st.one_of(
        st.binary(max_size=600),
        _mutated([[(C, b"\x16\x03\x01\x00\x30\x01\x00\x00\x2c\x03\x03" + b"\x00" * 40)]]).map(
            lambda s: s[0][1]),
        _mutated(_h1_corpus()).map(lambda s: s[0][1]),
        _mutated(_h2_corpus()).map(lambda s: s[0][1]),
    ))
    detect(blob)
    detect(blob, alpn=data.draw(st.sampled_from([None, "h2", "http/1.1", "x"])))
    parse_client_hello(blob)
    parse_server_hello(blob)
    hello_incomplete(blob)
