"""HTTP/2 observer: frames built with hyperframe + hpack, every fixture fed three ways."""
from __future__ import annotations

import hpack
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame

from plaintap.protocols import ParseError, Side, Transaction, new_parser

from .helpers import (C, CLOSE, D, GAP, H2, PREFACE, S, errors, feed_three_ways, get,
                      grpc_message, h2, transactions)


def start(b: H2, client_settings=None, server_settings=None):
    """Connection start: client preface + SETTINGS, server SETTINGS + ACK."""
    return [D(C, PREFACE + H2.settings(**(client_settings or {})), 1),
            D(S, H2.settings(**(server_settings or {"max_concurrent_streams": 100}))
              + H2.settings(ack=True), 2),
            D(C, H2.settings(ack=True), 3)]


def one(events) -> Transaction:
    txs = transactions(events)
    assert len(txs) == 1, events
    return txs[0]


def test_simple_get():
    b = H2()
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/index.html?lang=en", extra=[("user-agent", "curl/8")]),
                       end_stream=True), 10),
        D(S, b.headers(S, 1, [(":status", "200"), ("content-type", "text/html"),
                              ("content-length", "5")]) + H2.data(1, b"hello", end_stream=True), 20),
    ]
    events, p = feed_three_ways(h2(), steps)
    tx = one(events)
    assert not errors(events)
    assert tx.protocol == "http2" and tx.version == "2" and tx.stream_id == 1
    assert tx.request.method == "GET" and tx.request.target == "/index.html?lang=en"
    assert tx.request.authority == "example.com" and tx.host == "example.com"
    assert tx.request.headers[:4] == [(":method", "GET"), (":scheme", "https"),
                                      (":authority", "example.com"),
                                      (":path", "/index.html?lang=en")]
    assert tx.request.header("User-Agent") == "curl/8"
    assert tx.response.status == 200 and tx.response.content_type == "text/html"
    assert tx.response.body == b"hello" and tx.response.body_size == 5
    assert (tx.start_ns, tx.end_ns) == (10, 20) and tx.headers_known
    assert tx.url_path == "/index.html" and tx.url_query == "lang=en"
    assert tx.request.render() == (
        b"GET /index.html?lang=en HTTP/2\r\n:method: GET\r\n:scheme: https\r\n"
        b":authority: example.com\r\n:path: /index.html?lang=en\r\nuser-agent: curl/8\r\n\r\n")
    assert tx.response.render() == (b"HTTP/2 200\r\n:status: 200\r\ncontent-type: text/html\r\n"
                                    b"content-length: 5\r\n\r\nhello")
    assert not p.upgraded


def test_header_block_split_across_continuation_frames():
    # qtap gets this wrong; the block must only be decoded once END_HEADERS arrives.
    b = H2()
    big = [("x-long-%d" % i, "v" * 50) for i in range(20)]
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/cont", extra=big), end_stream=True, split=7), 10),
        D(S, b.headers(S, 1, [(":status", "200"), *big], split=100)
          + H2.data(1, b"", end_stream=True), 20),
        D(C, b.headers(C, 3, get("/after", extra=big), end_stream=True, split=33), 30),
        D(S, b.headers(S, 3, [(":status", "204")], end_stream=True), 40),
    ]
    events, _ = feed_three_ways(h2(), steps)
    first, second = transactions(events)
    assert first.request.target == "/cont" and first.request.headers[4:] == big
    assert first.response.headers[1:] == big
    assert second.request.target == "/after" and second.response.status == 204
    assert not errors(events)


def test_padding_priority_and_control_frames_are_handled():
    b = H2()
    steps = start(b) + [
        D(C, H2.priority(1) + b.headers(C, 1, get("/p"), pad=17, priority=True)
          + H2.data(1, b"body", end_stream=True, pad=9) + H2.window_update(0)
          + H2.ping(), 10),
        D(S, H2.ping(ack=True) + H2.window_update(1, 100)
          + b.headers(S, 1, [(":status", "200")], pad=3)
          + H2.data(1, b"resp", pad=255) + H2.data(1, b"", end_stream=True, pad=1), 20),
    ]
    events, _ = feed_three_ways(h2(), steps)
    tx = one(events)
    assert tx.request.body == b"body" and tx.response.body == b"resp"
    assert not errors(events)


def test_many_interleaved_concurrent_streams():
    b = H2()
    sids = [1, 3, 5, 7, 9]
    steps = start(b)
    steps.append(D(C, b"".join(b.headers(C, sid, get(f"/s{sid}", method="POST"))
                               for sid in sids), 10))
    steps.append(D(C, b"".join(H2.data(sid, b"A%d" % sid) for sid in sids), 11))
    server = b"".join(b.headers(S, sid, [(":status", "200"), ("x-sid", str(sid))])
                      for sid in (9, 3, 1, 7, 5))
    for i in range(3):
        server += b"".join(H2.data(sid, b"%d:%d|" % (sid, i)) for sid in (5, 1, 9, 3, 7))
    # Both ends send at once: their pieces interleave in the random feeding.
    steps.append(D(S, server, 20, overlap=True))
    steps.append(D(C, b"".join(H2.data(sid, b"Z", end_stream=True) for sid in reversed(sids)), 30))
    steps.append(D(S, b"".join(H2.data(sid, b"", end_stream=True) for sid in (3, 9, 1, 5, 7)), 40))
    events, _ = feed_three_ways(h2(), steps)
    txs = transactions(events)
    assert [t.stream_id for t in txs] == [3, 9, 1, 5, 7]        # completion order
    for t in txs:
        sid = t.stream_id
        assert t.request.target == f"/s{sid}" and t.request.body == b"A%dZ" % sid
        assert t.response.header("x-sid") == str(sid)
        assert t.response.body == b"".join(b"%d:%d|" % (sid, i) for i in range(3))
        assert (t.start_ns, t.end_ns) == (10, 40)


def test_request_and_response_bodies_across_many_data_frames_and_chunks():
    b = H2()
    payload = bytes(range(256)) * 100
    frames = b"".join(H2.data(1, payload[i:i + 1000]) for i in range(0, len(payload), 1000))
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/up", method="PUT")) + frames[:5000], 10),
        D(C, frames[5000:] + H2.data(1, b"", end_stream=True), 11),
        D(S, b.headers(S, 1, [(":status", "201")]) + H2.data(1, b"ok", end_stream=True), 20),
    ]
    events, _ = feed_three_ways(h2(), steps, seeds=(1, 2))
    tx = one(events)
    assert tx.request.body == payload and tx.request.last_ns == 11
    assert tx.response.status == 201


def test_body_limit():
    b = H2()
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/big"), end_stream=True), 10),
        D(S, b.headers(S, 1, [(":status", "200")]) + H2.data(1, b"x" * 3000)
          + H2.data(1, b"y" * 3000, end_stream=True), 20)]
    events, _ = feed_three_ways(h2(body_limit=4000), steps)
    tx = one(events)
    assert tx.response.body == b"x" * 3000 + b"y" * 1000
    assert tx.response.body_size == 6000 and tx.response.body_truncated


def test_response_and_request_trailers():
    b = H2()
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/t", method="POST", extra=[("te", "trailers")]))
          + H2.data(1, b"in") + b.headers(C, 1, [("x-req-checksum", "1")], end_stream=True), 10),
        D(S, b.headers(S, 1, [(":status", "200")]) + H2.data(1, b"out")
          + b.headers(S, 1, [("x-checksum", "abc"), ("x-more", "1")], end_stream=True), 20),
    ]
    events, _ = feed_three_ways(h2(), steps)
    tx = one(events)
    assert tx.request.trailers == [("x-req-checksum", "1")]
    assert tx.response.trailers == [("x-checksum", "abc"), ("x-more", "1")]
    assert tx.response.body == b"out" and tx.end_ns == 20


def test_informational_headers_are_skipped():
    b = H2()
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/e", method="POST", extra=[("expect", "100-continue")])), 10),
        D(S, b.headers(S, 1, [(":status", "100")]) + b.headers(S, 1, [(":status", "103"),
                                                                       ("link", "</a>")]), 11),
        D(C, H2.data(1, b"body", end_stream=True), 12),
        D(S, b.headers(S, 1, [(":status", "200")], end_stream=True), 13)]
    events, _ = feed_three_ways(h2(), steps)
    tx = one(events)
    assert tx.response.status == 200 and tx.response.header("link") is None


def test_rst_stream_before_response():
    b = H2()
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/slow"), end_stream=True), 10),
        D(C, H2.rst(1, 8), 15),
        D(S, b.headers(S, 1, [(":status", "200")]), 16),     # crossed the RST: ignored
        D(C, b.headers(C, 3, get("/next"), end_stream=True), 20),
        D(S, b.headers(S, 3, [(":status", "200")], end_stream=True), 21)]
    events, p = feed_three_ways(h2(), steps)
    reset, nxt = transactions(events)
    assert reset.response is None and reset.error == "stream reset by client: CANCEL"
    assert reset.end_ns == 15
    assert nxt.response.status == 200
    assert not errors(events) and p.stats["orphan_frames"] == 1


def test_rst_stream_mid_response_keeps_partial_response():
    b = H2()
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/dl"), end_stream=True), 10),
        D(S, b.headers(S, 1, [(":status", "200")]) + H2.data(1, b"part"), 20),
        D(S, H2.rst(1, 2), 21)]
    events, _ = feed_three_ways(h2(), steps)
    tx = one(events)
    assert tx.response.status == 200 and tx.response.body == b"part"
    assert not tx.response.complete and tx.request.complete
    assert tx.error == "stream reset by server: INTERNAL_ERROR"


def test_goaway_refuses_streams_above_last_stream_id():
    b = H2()
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/1"), end_stream=True) + b.headers(C, 3, get("/3"), end_stream=True)
          + b.headers(C, 5, get("/5"), end_stream=True), 10),
        D(S, H2.goaway(1, 0) + b.headers(S, 1, [(":status", "200")], end_stream=True), 20),
        CLOSE(30)]
    events, _ = feed_three_ways(h2(), steps)
    txs = transactions(events)
    assert [(t.stream_id, t.error) for t in txs] == [
        (3, "refused by GOAWAY (NO_ERROR)"), (5, "refused by GOAWAY (NO_ERROR)"), (1, None)]
    assert txs[2].response.status == 200


def test_close_with_open_streams():
    b = H2()
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/a"), end_stream=True) + b.headers(C, 3, get("/b")), 10),
        D(S, b.headers(S, 1, [(":status", "200")]) + H2.data(1, b"x"), 20),
        D(C, b.headers(C, 5, get("/c"), split=5)[:20], 25),   # partial header block
        CLOSE(30)]
    events, p = feed_three_ways(h2(), steps)
    a, bb = transactions(events)
    assert a.stream_id == 1 and a.response.body == b"x" and not a.response.complete
    assert a.error == "connection closed"
    assert bb.stream_id == 3 and bb.response is None and not bb.request.complete
    assert bb.end_ns == 30


def test_dynamic_table_state_is_kept_per_direction():
    b = H2()
    fields = get("/same", extra=[("authorization", "Bearer abc"), ("x-custom", "value")])
    steps = start(b)
    for i, sid in enumerate((1, 3, 5)):
        steps.append(D(C, b.headers(C, sid, fields, end_stream=True), 10 + i * 10))
        steps.append(D(S, b.headers(S, sid, [(":status", "200"), ("x-server", "same")],
                                    end_stream=True), 15 + i * 10))
    events, _ = feed_three_ways(h2(), steps)
    txs = transactions(events)
    assert len(txs) == 3 and all(t.request.headers == fields for t in txs)
    assert all(t.response.header("x-server") == "same" for t in txs)


def test_settings_header_table_size_is_honoured():
    # The server allows the client's encoder a 64 KiB table; the client grows its table
    # (a size update in the block) and fills it. That decodes only because the server's
    # SETTINGS raised the decoder's limit.
    b = H2()
    steps = start(b, server_settings={"header_table_size": 65536})
    b.enc[C].header_table_size = 65536
    many = [("x-h%03d" % i, "v" * 100) for i in range(100)]
    steps.append(D(C, b.headers(C, 1, get("/big", extra=many), end_stream=True), 10))
    steps.append(D(C, b.headers(C, 3, get("/big", extra=many), end_stream=True), 11))
    steps.append(D(S, b.headers(S, 1, [(":status", "200")], end_stream=True)
                   + b.headers(S, 3, [(":status", "200")], end_stream=True), 20))
    events, _ = feed_three_ways(h2(), steps, seeds=(1,))
    assert not errors(events)
    assert [t.request.headers[4:] == many for t in transactions(events)] == [True, True]


def test_table_size_update_beyond_what_the_peer_allowed_is_an_hpack_error():
    b = H2()
    steps = start(b)                                      # server never raised the default
    b.enc[C].header_table_size = 65536
    steps.append(D(C, b.headers(C, 1, get("/x"), end_stream=True), 10))
    steps.append(D(S, b.headers(S, 1, [(":status", "200")], end_stream=True), 20))
    events, p = feed_three_ways(h2(), steps)
    assert [e.side for e in errors(events)] == [Side.CLIENT]
    assert "HPACK" in errors(events)[0].reason
    assert transactions(events) == [] and p.stats["hpack_errors"] == 1


def test_server_push():
    b = H2()
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/page"), end_stream=True), 10),
        D(S, b.push_promise(1, 2, get("/style.css"), split=10)
          + b.headers(S, 1, [(":status", "200")]) + H2.data(1, b"<html>", end_stream=True)
          + b.headers(S, 2, [(":status", "200"), ("content-type", "text/css")])
          + H2.data(2, b"body{}", end_stream=True), 20)]
    events, _ = feed_three_ways(h2(), steps)
    page, css = transactions(events)
    assert page.stream_id == 1 and page.response.body == b"<html>"
    assert css.stream_id == 2 and css.request.target == "/style.css"
    assert css.response.body == b"body{}" and css.response.content_type == "text/css"


def test_grpc_unary_and_streaming_counts_and_status():
    b = H2()
    req_ct = [("content-type", "application/grpc+proto"), ("te", "trailers")]
    msg1 = grpc_message(b"\x08\x01" * 10)
    msg2 = grpc_message(b"\x0a\x03abc")
    both = msg1 + msg2
    steps = start(b) + [
        # unary
        D(C, b.headers(C, 1, get("/helloworld.Greeter/SayHello", method="POST", extra=req_ct))
          + H2.data(1, msg2, end_stream=True), 10),
        D(S, b.headers(S, 1, [(":status", "200"), ("content-type", "application/grpc")])
          + H2.data(1, msg1) + b.headers(S, 1, [("grpc-status", "0")], end_stream=True), 20),
        # server streaming with messages split across DATA frames
        D(C, b.headers(C, 3, get("/pkg.v1.Feed/Watch", method="POST", extra=req_ct))
          + H2.data(3, msg2, end_stream=True), 30),
        D(S, b.headers(S, 3, [(":status", "200"), ("content-type", "application/grpc")])
          + H2.data(3, both[:3]) + H2.data(3, both[3:17]) + H2.data(3, both[17:] + msg1)
          + b.headers(S, 3, [("grpc-status", "14"), ("grpc-message", "unavailable%20now")],
                      end_stream=True), 40),
        # trailers-only error response
        D(C, b.headers(C, 5, get("/pkg.v1.Feed/Fail", method="POST", extra=req_ct))
          + H2.data(5, b"", end_stream=True), 50),
        D(S, b.headers(S, 5, [(":status", "200"), ("content-type", "application/grpc"),
                              ("grpc-status", "12")], end_stream=True), 60),
    ]
    events, _ = feed_three_ways(h2(), steps)
    unary, stream, fail = transactions(events)
    g = unary.grpc
    assert (g.service, g.method, g.status_code) == ("helloworld.Greeter", "SayHello", 0)
    assert (g.request_messages, g.response_messages) == (1, 1)
    assert (g.request_bytes, g.response_bytes) == (5, 20) and not g.framing_lost
    g = stream.grpc
    assert (g.service, g.method, g.status_code) == ("pkg.v1.Feed", "Watch", 14)
    assert g.status_message == "unavailable now"
    assert (g.response_messages, g.response_bytes) == (3, 20 + 5 + 20)
    g = fail.grpc
    assert g.status_code == 12 and g.response_messages == 0 and fail.response.status == 200
    assert fail.response.trailers == []


def test_connect_tunnel_stream():
    b = H2()
    steps = start(b) + [
        D(C, b.headers(C, 1, [(":method", "CONNECT"), (":authority", "db.internal:5432")]), 10),
        D(S, b.headers(S, 1, [(":status", "200")]), 20),
        D(C, H2.data(1, b"tunnelled-bytes"), 30),
        D(S, H2.data(1, b"reply", end_stream=True), 40),
        D(C, H2.data(1, b"", end_stream=True), 50),
        D(C, b.headers(C, 3, get("/after"), end_stream=True), 60),
        D(S, b.headers(S, 3, [(":status", "200")], end_stream=True), 70)]
    events, p = feed_three_ways(h2(), steps)
    tunnel, after = transactions(events)
    assert tunnel.upgraded and tunnel.request.method == "CONNECT"
    assert tunnel.host == "db.internal:5432" and tunnel.end_ns == 20
    assert after.response.status == 200
    assert p.stats["tunnel_bytes"] == len(b"tunnelled-bytes") + len(b"reply")


def test_stream_error_drops_the_stream_only():
    b = H2()
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/a"), end_stream=True) + b.headers(C, 3, get("/b"), end_stream=True), 10),
        D(S, H2.data(1, b"data before headers"), 20),
        D(S, b.headers(S, 3, [(":status", "200")], end_stream=True), 21),
        D(C, H2.data(3, b"after end"), 22)]
    events, p = feed_three_ways(h2(), steps)
    errs = errors(events)
    assert [(e.side, e.stream_id) for e in errs] == [(Side.SERVER, 1)]
    assert errs[0].reason == "stream 1: s_data in state req_done"
    tx = one(events)
    assert tx.stream_id == 3
    assert p.stats["abandoned_streams"] == 1


def test_interrupted_header_block_is_an_error():
    b = H2()
    block = b.block(C, get("/x"))
    steps = start(b) + [
        D(C, HeadersFrame(1, data=block[:4]).serialize() + H2.ping(), 10),
        D(S, b.headers(S, 1, [(":status", "200")], end_stream=True), 20),
        CLOSE(30)]
    events, _ = feed_three_ways(h2(), steps)
    assert [e.stream_id for e in errors(events)] == [1]
    assert transactions(events) == []


def test_frame_error_resyncs_at_next_frame():
    b = H2()
    bad = DataFrame(1, data=b"x").serialize()
    bad = bad[:4] + bytes([0x08]) + bad[5:9] + bytes([5]) + bad[9:]    # PADDED, pad > length
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/a")), 10),
        D(C, bad[:9] + b"\x05x" + H2.data(1, b"", end_stream=True), 11),
        D(S, b.headers(S, 1, [(":status", "200")], end_stream=True), 20)]
    events, p = feed_three_ways(h2(), steps)
    assert any("padding" in e.reason for e in errors(events))


def test_missing_preface_is_reported_and_frames_still_found():
    b = H2()
    steps = [D(C, b"PRI * HTTP/1.1\r\n" + H2.settings() + b.headers(C, 1, get("/"), end_stream=True)
               + H2.ping(), 1),
             D(S, H2.settings() + b.headers(S, 1, [(":status", "200")], end_stream=True)
               + H2.ping(), 2)]
    events, _ = feed_three_ways(h2(), steps)
    assert errors(events)[0].reason == "missing HTTP/2 client preface"
    tx = one(events)
    # HPACK state is unknown after losing sync, but these blocks only use the static
    # table and their own insertions, so every field resolved.
    assert tx.request.target == "/" and tx.response.status == 200


def test_gap_inside_data_keeps_frame_sync():
    b = H2()
    data = H2.data(1, b"0123456789" * 10)
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/g"), end_stream=True), 10),
        D(S, b.headers(S, 1, [(":status", "200")]) + data[:30], 20),
        GAP(S, 50, 21),
        D(S, data[80:] + H2.data(1, b"end", end_stream=True), 22),
        D(C, b.headers(C, 3, get("/next"), end_stream=True), 30),
        D(S, b.headers(S, 3, [(":status", "404")], end_stream=True), 40)]
    events, _ = feed_three_ways(h2(), steps)
    first, second = transactions(events)
    assert first.response.body == (b"0123456789" * 10)[:21]
    assert first.response.body_size == 103 and first.response.body_truncated
    assert first.response.complete and first.headers_known
    assert second.response.status == 404 and second.headers_known


def test_gap_across_frames_loses_hpack_state_but_not_the_connection():
    b = H2()
    shared = [("x-api-key", "secret-value"), ("x-tenant", "acme")]
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/one", extra=shared), end_stream=True), 10),
        D(S, b.headers(S, 1, [(":status", "200")], end_stream=True), 11)]
    lost = b.headers(C, 3, get("/lost", extra=shared), end_stream=True)
    steps += [GAP(C, len(lost), 12),
              D(S, b.headers(S, 3, [(":status", "200")], end_stream=True), 13),
              # Stream 5 references table entries inserted before (and inside) the gap.
              D(C, b.headers(C, 5, get("/five", extra=shared), end_stream=True)
                + H2.ping() + H2.ping(), 14),
              D(S, b.headers(S, 5, [(":status", "201")], end_stream=True), 15),
              # Stream 7 only uses fields never seen before: fully decodable again.
              D(C, b.headers(C, 7, [(":method", "PUT"), (":scheme", "http"),
                                    (":authority", "fresh.test"), (":path", "/seven")],
                             end_stream=True) + H2.ping(), 16),
              D(S, b.headers(S, 7, [(":status", "202")], end_stream=True), 17)]
    events, p = feed_three_ways(h2(), steps)
    txs = transactions(events)
    assert [t.stream_id for t in txs] == [1, 5, 7]
    one_, five, seven = txs
    assert one_.headers_known and one_.request.headers[4:] == shared
    assert not five.headers_known and five.response.status == 201
    assert five.request.method == "GET" and five.request.target == "/five"
    assert ("x-api-key", "secret-value") not in five.request.headers
    assert seven.headers_known and seven.request.target == "/seven"
    assert seven.request.authority == "fresh.test"
    assert p.stats["orphan_frames"] >= 1


def test_midstream_join_finds_frames_and_never_decodes_garbage():
    b = H2()
    shared = [("cookie", "session=1234567890"), ("x-trace", "abcdef")]
    history = PREFACE + H2.settings()
    history += b.headers(C, 1, get("/old", extra=shared), end_stream=True)
    server_history = H2.settings() + b.headers(S, 1, [(":status", "200"), ("x-srv", "a")])
    server_history += H2.data(1, b"old body " * 20)
    # The agent starts here, in the middle of a DATA frame on the server side and in the
    # middle of a HEADERS frame on the client side.
    c2 = b.headers(C, 3, get("/new", extra=shared), end_stream=True)
    c3 = b.headers(C, 5, [(":method", "POST"), (":scheme", "https"), (":path", "/submit"),
                          (":authority", "example.com")], end_stream=True)
    s_tail = H2.data(1, b"tail" * 10, end_stream=True)
    s2 = b.headers(S, 3, [(":status", "200"), ("x-srv", "a")]) + H2.data(3, b"new body", end_stream=True)
    s3 = b.headers(S, 5, [(":status", "204")], end_stream=True)
    steps = [D(C, c2[5:] + c3 + H2.ping(), 100),
             D(S, server_history[-30:] + s_tail + s2 + s3, 101)]
    events, p = feed_three_ways(h2(midstream=True), steps)
    assert not errors(events)
    txs = transactions(events)
    # Stream 3 began before the join on the client side: not reported. Stream 5 is.
    assert [t.stream_id for t in txs] == [5]
    tx = txs[0]
    assert tx.request.method == "POST" and tx.request.target == "/submit"
    assert tx.response.status == 204
    # ":authority example.com" was indexed before the join: unknown, so not reported.
    assert tx.request.authority is None and not tx.headers_known
    assert p.stats["resyncs"] == 2


def test_midstream_join_with_dynamic_references_marks_headers_unknown():
    b = H2()
    shared = [("x-user", "alice")]
    b.headers(C, 1, get("/warm", extra=shared), end_stream=True)     # warms the client table
    b.headers(S, 1, [(":status", "200"), ("x-served-by", "node-7")], end_stream=True)
    steps = [D(C, b.headers(C, 3, get("/warm", extra=shared), end_stream=True)
               + H2.ping(), 10),
             D(S, b.headers(S, 3, [(":status", "200"), ("x-served-by", "node-7")],
                            end_stream=True) + H2.ping(), 20)]
    events, _ = feed_three_ways(h2(midstream=True), steps)
    tx = one(events)
    assert not tx.headers_known
    assert tx.request.method == "GET" and tx.response.status == 200
    assert tx.request.target is None       # ":path /warm" was a dynamic-table reference
    assert ("x-served-by", "node-7") not in tx.response.headers


def test_midstream_join_at_connection_start_is_exact():
    b = H2()
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/x", extra=[("a", "b")]), end_stream=True), 10),
        D(S, b.headers(S, 1, [(":status", "200"), ("c", "d")], end_stream=True), 20)]
    events, _ = feed_three_ways(h2(midstream=True), steps)
    tx = one(events)
    assert tx.headers_known and tx.request.header("a") == "b" and tx.response.header("c") == "d"


def test_parser_never_raises_on_garbage_and_keeps_counting():
    p = new_parser("http2")
    p.feed(C, b"\xff" * 1000, 1)
    p.feed(S, b"\x00" * 1000, 2)
    p.feed_gap(C, 10, 3)
    p.close(4)
    evs = []
    while (e := p.next_event()) is not None:
        evs.append(e)
    assert all(isinstance(e, ParseError) for e in evs)
    assert p.stats["internal_errors"] == 0


def test_hpack_decoder_raises_list_size_limit():
    b = H2()
    huge = [("x-big-%d" % i, "z" * 4000) for i in range(30)]       # ~120 KB > hpack default
    steps = start(b) + [
        D(C, b.headers(C, 1, get("/h", extra=huge), end_stream=True), 10),
        D(S, b.headers(S, 1, [(":status", "200")], end_stream=True), 20)]
    events, _ = feed_three_ways(h2(), steps, seeds=(1,))
    assert not errors(events) and one(events).request.headers[4:] == huge


def test_encoder_built_fixture_sanity():
    # The helpers produce what a real peer would: decodable with a fresh hpack Decoder.
    b = H2()
    block = b.block(C, get("/z"))
    assert hpack.Decoder().decode(block) == get("/z")


# ---------------------------------------------------------------------------------------
# Bounds: each one holds whatever the peer sends, is counted, and the connection goes on.

def test_continuation_flood_is_cut_at_the_header_block_limit():
    b = H2()
    flood = HeadersFrame(1, data=b.block(C, get("/flood"))).serialize()
    flood += ContinuationFrame(1, data=b"\x20" * 16000).serialize() * 80   # ~1.3 MB block
    steps = start(b) + [
        D(C, flood, 10),
        # The flooded block may have changed the client's table: stream 3 uses only
        # literals, so it decodes fully again.
        D(C, H2.headers_raw(3, hpack.Encoder().encode(get("/after")), end_stream=True)
          + H2.ping(), 11),
        D(S, b.headers(S, 3, [(":status", "200")], end_stream=True), 20)]
    events, p = feed_three_ways(h2(), steps, seeds=(1,))
    assert [(e.stream_id, e.reason) for e in errors(events)] == [
        (1, "header block of stream 1 too large")]
    assert [t.stream_id for t in transactions(events)] == [3]
    assert transactions(events)[0].request.target == "/after"
    assert p.stats["oversized_header_blocks"] == 1 and p.stats["abandoned_blocks"] == 1


def _frames_alternating(client: bytes, server: bytes):
    """(side, one frame) pairs: client frame, server frame, client frame, ..."""
    def split(buf):
        out, i = [], 0
        while i < len(buf):
            n = 9 + int.from_bytes(buf[i:i + 3], "big")
            out.append(buf[i:i + n])
            i += n
        return out
    for c, s in zip(split(client), split(server)):
        yield C, c
        yield S, s


def test_huge_header_table_size_is_capped_and_decoded_partially_beyond():
    # The server allows the client's encoder a 1 GiB table and the client fills 1 MiB of
    # it: the observer keeps 64 KiB (counted) and still decodes every field it can.
    b = H2()
    steps = start(b, server_settings={"header_table_size": 1 << 30})
    b.enc[C].header_table_size = 1 << 20
    first = [("x-old-%04d" % i, "v" * 200) for i in range(20)]
    done = H2.headers_raw
    steps.append(D(C, b.headers(C, 1, get("/one", extra=first), end_stream=True), 10))
    steps.append(D(S, done(1, b"\x89", end_stream=True), 10))      # :status 204 (static)
    client = b""
    server = b""
    for k, sid in enumerate(range(3, 3 + 2 * 400, 2)):
        fresh = [("x-new-%04d" % k, "w" * 200)]
        client += b.headers(C, sid, get("/n", extra=fresh), end_stream=True)
        server += done(sid, b"\x89", end_stream=True)
    last = 3 + 2 * 400
    # Re-sends stream 1's fields: the encoder refers to its (now far too old) entries.
    client += b.headers(C, last, get("/one", extra=first), end_stream=True)
    server += done(last, b"\x89", end_stream=True)
    # Each response right after its request, so no more than two streams are open.
    steps += [D(side, frames, 11 + i // 2)
              for i, (side, frames) in enumerate(_frames_alternating(client, server))]
    events, p = feed_three_ways(h2(), steps, seeds=(1,))
    assert not errors(events)
    txs = transactions(events)
    assert len(txs) == 402 and p.stats["hpack_table_capped"] == 1
    assert txs[0].headers_known and txs[0].request.headers[4:] == first
    # Entries stay resolvable while they are among the newest 64 KiB: `:authority` and
    # `:path /n`, inserted by stream 3 and referenced by every later stream, fall out of
    # our copy after ~260 streams of new 200-byte entries; from there on the fields that
    # refer to them are left out and the transaction says so.
    known = [t.headers_known for t in txs[1:-1]]
    assert known == sorted(known, reverse=True) and 200 < sum(known) < 400
    assert all(t.response.status == 204 for t in txs)
    assert txs[-2].request.method == "GET" and txs[-2].request.authority is None
    assert not txs[-1].headers_known
    assert ("x-old-0000", "v" * 200) not in txs[-1].request.headers


def test_streams_per_connection_are_bounded_oldest_given_up_first():
    b = H2()
    opened = list(range(1, 2 * 300, 2))
    steps = start(b) + [D(C, b"".join(b.headers(C, sid, get(f"/{sid}")) for sid in opened), 10),
                        CLOSE(20)]
    events, p = feed_three_ways(h2(), steps, seeds=(1,))
    txs = transactions(events)
    assert p.stats["streams_evicted"] == 300 - 256
    assert [t.stream_id for t in txs] == opened
    assert {t.error for t in txs[:44]} == {"too many open streams"}
    assert {t.error for t in txs[44:]} == {"connection closed"}
