"""HTTP/1.x observer: every fixture is exact wire bytes, fed three ways."""
from __future__ import annotations

from plaintap.protocols import Message, ParseError, Side, Transaction, new_parser

from .helpers import C, CLOSE, D, GAP, S, errors, feed_three_ways, h1, transactions

GET = b"GET /items?id=7&x=y HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
OK_JSON = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
           b'{"id": 7, "a"')
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def one(events) -> Transaction:
    txs = transactions(events)
    assert len(txs) == 1, events
    return txs[0]


def test_keep_alive_two_exchanges():
    events, p = feed_three_ways(h1(), [
        D(C, GET, 100), D(S, OK_JSON, 200),
        D(C, b"GET /missing HTTP/1.1\r\nHost: api.example.com\r\n\r\n", 300), D(S, NOT_FOUND, 400),
    ])
    assert not errors(events)
    first, second = transactions(events)
    assert first.protocol == "http1" and first.version == "1.1" and first.stream_id is None
    assert first.request.method == "GET"
    assert first.request.target == "/items?id=7&x=y"
    assert first.request.authority == "api.example.com"
    assert first.request.headers == [("Host", "api.example.com"), ("User-Agent", "curl/8.5.0"),
                                     ("Accept", "*/*")]
    assert first.response.status == 200 and first.response.reason == "OK"
    assert first.response.body == b'{"id": 7, "a"' and first.response.body_size == 13
    assert first.response.content_type == "application/json"
    assert (first.start_ns, first.end_ns) == (100, 200)
    assert (first.request.first_ns, first.request.last_ns) == (100, 100)
    assert first.url_path == "/items" and first.url_query == "id=7&x=y"
    assert first.host == "api.example.com"
    assert first.headers_known and first.grpc is None and not first.upgraded and first.error is None
    assert second.response.status == 404 and second.url_path == "/missing"
    assert (second.start_ns, second.end_ns) == (300, 400)
    assert not p.upgraded


def test_native_events_are_the_model_dataclasses_field_for_field():
    events, _ = feed_three_ways(h1(), [
        D(C, b"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", 10),
        D(S, b"HTTP/1.0 201 Created\r\nContent-Length: 2\r\n\r\nok", 20)])
    req = Message(headers=[("Host", "h"), ("Transfer-Encoding", "chunked")], method="POST",
                  target="/p?q=1", authority="h", version="1.1", trailers=[("X-T", "1")],
                  body=b"abc", body_size=3, first_ns=10, last_ns=10)
    resp = Message(headers=[("Content-Length", "2")], status=201, reason="Created",
                   version="1.0", body=b"ok", body_size=2, first_ns=20, last_ns=20,
                   is_response=True)
    assert events == [Transaction(protocol="http1", version="1.1", stream_id=None, request=req,
                                  response=resp, start_ns=10, end_ns=20)]


def test_timestamps_come_from_the_chunks_that_carried_first_and_last_byte():
    events, _ = feed_three_ways(h1(), [
        D(C, GET[:10], 100), D(C, GET[10:], 110),
        D(S, OK_JSON[:20], 200), D(S, OK_JSON[20:-3], 210), D(S, OK_JSON[-3:], 220),
    ])
    tx = one(events)
    assert (tx.request.first_ns, tx.request.last_ns) == (100, 110)
    assert (tx.response.first_ns, tx.response.last_ns) == (200, 220)
    assert (tx.start_ns, tx.end_ns) == (100, 220)


def test_post_with_content_length_body():
    req = (b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n"
           b"hello world")
    resp = b"HTTP/1.1 201 Created\r\nLocation: /upload/1\r\nContent-Length: 2\r\n\r\nok"
    events, _ = feed_three_ways(h1(), [D(C, req, 1), D(S, resp, 2)])
    tx = one(events)
    assert tx.request.body == b"hello world" and tx.request.body_size == 11
    assert tx.request.content_type == "text/plain"
    assert tx.response.status == 201 and tx.response.body == b"ok"
    assert tx.response.header("location") == "/upload/1"


def test_chunked_both_ways_with_extensions_and_trailers():
    req = (b"PUT /r HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
    resp = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nTrailer: X-Checksum\r\n\r\n"
            b"A\r\n0123456789\r\n3\r\nabc\r\n0\r\nX-Checksum: 42\r\nX-Other:  v \r\n\r\n")
    events, _ = feed_three_ways(h1(), [D(C, req, 1), D(S, resp, 2),
                                       D(C, b"GET /next HTTP/1.1\r\n\r\n", 3),
                                       D(S, NOT_FOUND, 4)])
    first, second = transactions(events)
    assert first.request.body == b"hello world" and first.request.body_size == 11
    assert first.response.body == b"0123456789abc"
    assert first.response.trailers == [("X-Checksum", "42"), ("X-Other", "v")]
    assert first.request.trailers == []
    assert second.request.target == "/next" and second.response.status == 404


def test_pipelined_requests_pair_fifo():
    reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(3))
    resps = b"".join(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % i for i in range(3))
    events, _ = feed_three_ways(h1(), [D(C, reqs, 10), D(S, resps, 20, overlap=True)])
    txs = transactions(events)
    assert [t.request.target for t in txs] == ["/0", "/1", "/2"]
    assert [t.response.body for t in txs] == [b"0", b"1", b"2"]


def test_head_response_has_no_body_even_with_content_length():
    steps = [
        D(C, b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\n", 1),
        D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nContent-Type: video/mp4\r\n\r\n", 2),
        D(C, b"GET /small HTTP/1.1\r\nHost: h\r\n\r\n", 3),
        D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", 4),
    ]
    events, _ = feed_three_ways(h1(), steps)
    head, get = transactions(events)
    assert head.request.method == "HEAD" and head.response.body_size == 0
    assert head.response.header("content-length") == "5000"
    assert get.response.body == b"abc"


def test_pipelined_head_and_get_in_one_server_chunk():
    steps = [
        D(C, b"HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", 1),
        D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 2),
    ]
    events, _ = feed_three_ways(h1(), steps)
    head, get = transactions(events)
    assert head.response.body == b"" and get.response.body == b"hi"


def test_204_and_304_have_no_body():
    steps = [
        D(C, b"DELETE /x HTTP/1.1\r\n\r\n", 1),
        D(S, b"HTTP/1.1 204 No Content\r\n\r\n", 2),
        D(C, b"GET /y HTTP/1.1\r\nIf-None-Match: \"e\"\r\n\r\n", 3),
        D(S, b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n", 4),
        D(C, b"GET /z HTTP/1.1\r\n\r\n", 5),
        D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz", 6),
    ]
    events, _ = feed_three_ways(h1(), steps)
    assert [(t.response.status, t.response.body) for t in transactions(events)] == [
        (204, b""), (304, b""), (200, b"z")]


def test_100_continue_is_not_the_final_response():
    steps = [
        D(C, b"POST /p HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n", 1),
        D(S, b"HTTP/1.1 100 Continue\r\n\r\n", 2),
        D(C, b"data", 3),
        D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4),
    ]
    events, p = feed_three_ways(h1(), steps)
    tx = one(events)
    assert tx.request.body == b"data" and tx.response.status == 200
    assert (tx.start_ns, tx.end_ns) == (1, 4)
    assert p.stats["informational_responses"] == 1


def test_103_early_hints_then_final():
    steps = [D(C, b"GET / HTTP/1.1\r\n\r\n", 1),
             D(S, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 2)]
    events, _ = feed_three_ways(h1(), steps)
    tx = one(events)
    assert tx.response.status == 200 and tx.response.body == b"ok"
    assert tx.response.header("link") is None


def test_websocket_upgrade_ends_the_transaction_and_counts_later_bytes():
    req = (b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    resp = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
    client_frames = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"   # masked "Hello"
    server_frames = b"\x81\x05Hello" + b"GET / HTTP/1.1\r\n\r\n"       # not parsed as HTTP
    steps = [D(C, req + client_frames, 1), D(S, resp + server_frames, 2, overlap=True),
             D(C, b"\x88\x80\x00\x00\x00\x00", 3), GAP(S, 100, 4), CLOSE(5)]
    events, p = feed_three_ways(h1(), steps)
    tx = one(events)
    assert tx.upgraded and tx.response.status == 101 and tx.error is None
    assert tx.end_ns == 2
    assert p.upgraded
    assert p.stats["upgraded_bytes_client"] == len(client_frames) + 6
    assert p.stats["upgraded_bytes_server"] == len(server_frames) + 100


def test_connect_2xx_switches_to_tunnel():
    steps = [D(C, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
                  b"\x16\x03\x01\x00\x05hello", 1),
             D(S, b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x03\x00\x01x", 2,
               overlap=True)]
    events, p = feed_three_ways(h1(), steps)
    tx = one(events)
    assert tx.upgraded and tx.request.method == "CONNECT"
    assert tx.host == "example.com:443" and tx.url_path is None
    assert p.upgraded and p.upgraded_bytes == 10 + 6


def test_connect_refused_keeps_parsing():
    steps = [D(C, b"CONNECT example.com:443 HTTP/1.1\r\n\r\nGET /after HTTP/1.1\r\n\r\n", 1),
             D(S, b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2)]
    events, p = feed_three_ways(h1(), steps)
    refused, after = transactions(events)
    assert refused.response.status == 407 and not refused.upgraded
    assert after.request.target == "/after" and after.response.status == 200
    assert not p.upgraded


def test_upgrade_request_answered_normally_keeps_parsing():
    steps = [D(C, b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                  b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", 1),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno", 2),
             D(C, b"GET /2 HTTP/1.1\r\n\r\n", 3),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)]
    events, p = feed_three_ways(h1(), steps)
    assert [t.request.target for t in transactions(events)] == ["/", "/2"]
    assert not p.upgraded and not errors(events)


def test_http10_close_delimited_response_finishes_on_close():
    steps = [D(C, b"GET /old HTTP/1.0\r\n\r\n", 1),
             D(S, b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>", 2),
             D(S, b"</html>", 3), CLOSE(9)]
    events, _ = feed_three_ways(h1(), steps)
    tx = one(events)
    assert tx.version == "1.0" and tx.response.version == "1.0"
    assert tx.response.body == b"<html></html>" and tx.response.complete
    assert tx.end_ns == 3


def test_close_delimited_waits_for_close():
    steps = [D(C, b"GET / HTTP/1.1\r\n\r\n", 1),
             D(S, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nstream", 2)]
    events, p = feed_three_ways(h1(), steps)
    assert events == []                       # the body ends only when the connection does
    p.close(3)
    tx = p.next_event()
    assert isinstance(tx, Transaction) and tx.response.body == b"stream"
    assert p.next_event() is None
    assert feed_three_ways(h1(), steps + [CLOSE(3)])[0] == [tx]


def test_close_before_response_and_mid_response():
    events, p = feed_three_ways(h1(), [
        D(C, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 1),
        D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345", 2),
        CLOSE(3)])
    a, b = transactions(events)
    assert a.response.status == 200 and a.response.body == b"12345"
    assert not a.response.complete and a.error == "connection closed during response"
    assert b.response is None and b.error == "connection closed before response"
    assert b.request.last_ns == 1 and b.end_ns == 3          # ended at the close


def test_partial_request_at_close_is_abandoned_and_counted():
    events, p = feed_three_ways(h1(), [D(C, b"GET / HTTP/1.1\r\nHost: h", 1), CLOSE(2)])
    assert events == []
    assert p.stats["abandoned_requests"] == 1


def test_request_cut_by_close_while_sending_body():
    events, _ = feed_three_ways(h1(), [
        D(C, b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc", 1),
        D(S, b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 2,
          overlap=True),
        CLOSE(3)])
    tx = one(events)
    assert tx.response.status == 413
    assert tx.request.body == b"abc" and not tx.request.complete


def test_early_response_emitted_when_request_completes():
    steps = [D(C, b"POST / HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc", 1),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2)]
    events, p = feed_three_ways(h1(), steps)
    assert events == []                       # the request is still being sent
    events, _ = feed_three_ways(h1(), steps + [D(C, b"def", 3)])
    tx = one(events)
    assert tx.request.body == b"abcdef" and tx.response.status == 200
    assert tx.end_ns == 2


def test_midstream_join_discards_until_request_line_and_pairable_status_line():
    # Joined inside a response body on the server side and inside a request body on the
    # client side: the tails must not be paired with anything.
    steps = [
        D(S, b"l of an old body\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nold", 1),
        D(C, b"tail of a body\r\nGET /fresh HTTP/1.1\r\nHost: h\r\n\r\n", 5),
        D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh", 6),
    ]
    events, p = feed_three_ways(h1(midstream=True), steps)
    tx = one(events)
    assert tx.request.target == "/fresh" and tx.response.body == b"fresh"
    assert not errors(events)


def test_server_first_join_never_pairs_an_answer_to_an_unseen_request():
    # The status line arrives before any request we saw: it answers something else.
    steps = [D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nold!", 1_000),
             D(C, b"GET /new HTTP/1.1\r\n\r\n", 5_000_000),
             D(S, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 6_000_000)]
    for midstream in (True, False):
        events, p = feed_three_ways(h1(midstream=midstream), steps)
        tx = one(events)
        assert tx.response.status == 201


def test_midstream_pairing_is_strict_even_within_the_clock_slack():
    steps = [D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nold!", 10),
             D(C, b"GET /new HTTP/1.1\r\n\r\n", 20),
             D(S, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 30)]
    events, _ = feed_three_ways(h1(midstream=True), steps)
    assert one(events).response.status == 201


def test_answer_stamped_slightly_before_its_request_still_pairs_when_in_sync():
    # Writer thread stamped at write() exit after the reader thread already read the answer.
    steps = [D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1_000_000),
             D(C, b"GET /race HTTP/1.1\r\n\r\n", 1_000_040)]
    events, _ = feed_three_ways(h1(), steps)
    tx = one(events)
    assert tx.request.target == "/race" and tx.response.body == b"ok"


def test_unsolicited_408_before_a_request_is_dropped():
    steps = [D(S, b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n", 1_000),
             D(C, b"GET / HTTP/1.1\r\n\r\n", 60_000_000),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 61_000_000)]
    events, p = feed_three_ways(h1(), steps)
    tx = one(events)
    assert tx.response.status == 200 and tx.response.body == b"ok"
    assert p.stats["unpaired_responses"] == 1


def test_gap_inside_content_length_body_keeps_sync():
    steps = [D(C, GET, 1),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n01234", 2),
             GAP(S, 10, 3), D(S, b"ABCDE", 4),
             D(C, b"GET /2 HTTP/1.1\r\n\r\n", 5), D(S, NOT_FOUND, 6)]
    events, p = feed_three_ways(h1(), steps)
    first, second = transactions(events)
    assert first.response.body == b"01234"          # stored bodies never have holes
    assert first.response.body_size == 20 and first.response.body_truncated
    assert first.response.complete and first.end_ns == 4
    assert second.response.status == 404
    assert p.stats["gap_bytes"] == 10


def test_gap_ending_exactly_at_body_end_keeps_sync():
    steps = [D(C, b"POST / HTTP/1.1\r\nContent-Length: 8\r\n\r\nabcd", 1), GAP(C, 4, 2),
             D(C, b"GET /2 HTTP/1.1\r\n\r\n", 3),
             D(S, NOT_FOUND + NOT_FOUND.replace(b"404 Not Found", b"200 OK"), 4)]
    events, _ = feed_three_ways(h1(), steps)
    first, second = transactions(events)
    assert first.request.body == b"abcd" and first.request.body_size == 8
    assert first.request.last_ns == 2
    assert second.request.target == "/2" and second.response.status == 200


def test_gap_past_body_end_resyncs_at_next_request_line():
    # Not pipelining: /y is sent after the answers to everything before it.
    steps = [D(C, b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", 1),
             GAP(C, 30, 2),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3),
             D(C, b"/x HTTP/1.1\r\n\r\n", 4),                       # tail of a lost request
             D(S, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 5),
             D(C, b"GET /y HTTP/1.1\r\n\r\n", 6),
             D(S, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", 7)]
    events, p = feed_three_ways(h1(), steps)
    post, y = transactions(events)
    assert post.request.method == "POST" and post.request.body_size == 4
    assert post.request.body == b"ab" and post.request.body_truncated
    assert post.response.status == 200
    assert y.request.target == "/y" and y.response.status == 202
    assert p.stats["unpaired_responses"] == 1 and not errors(events)


def test_lost_requests_on_a_pipelining_connection_stop_pairing_instead_of_guessing():
    # /x (lost) and /y were pipelined: 201 could answer either, so /y gets no response.
    steps = [D(C, b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", 1),
             GAP(C, 30, 2),
             D(C, b"/x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n", 3),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4),
             D(S, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 5),
             D(S, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", 6),
             D(C, b"GET /z HTTP/1.1\r\n\r\n", 7),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 8)]
    events, p = feed_three_ways(h1(), steps)
    errs = errors(events)
    assert len(errs) == 1 and errs[0].reason.startswith("response pairing lost")
    assert errs[0].ts_ns == 3
    post, y, z = transactions(events)
    assert post.response.status == 200          # pending before the loss: still certain
    assert y.response is None and z.response is None
    assert y.error == z.error == "response pairing lost after capture loss"
    assert p.stats["pairing_lost"] == 1


def test_server_loss_on_a_pipelining_connection_stops_pairing():
    steps = [D(C, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n", 1),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1", 2),
             GAP(S, 10, 3),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n?", 4),
             D(C, b"GET /3 HTTP/1.1\r\n\r\n", 5),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3", 6)]
    events, _ = feed_three_ways(h1(), steps)
    one_, two, three = transactions(events)
    assert one_.response.body == b"1"
    assert two.response is None and three.response is None


def test_client_gap_swallowing_a_whole_request_never_misparis():
    steps = [D(C, GET, 1), D(S, OK_JSON, 2),
             GAP(C, 40, 3),                                     # a whole request lost
             D(S, b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", 4),
             D(C, b"GET /seen HTTP/1.1\r\n\r\n", 5),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nseen", 6)]
    events, p = feed_three_ways(h1(), steps)
    txs = transactions(events)
    assert [(t.request.target, t.response.status) for t in txs] == [
        ("/items?id=7&x=y", 200), ("/seen", 200)]
    assert txs[1].response.body == b"seen"
    assert p.stats["unpaired_responses"] == 1


def test_server_gap_at_boundary_gives_up_on_requests_sent_before_it():
    steps = [D(C, b"GET /a HTTP/1.1\r\n\r\n", 1),
             GAP(S, 50, 2),                                     # /a's answer may be in here
             D(C, b"GET /b HTTP/1.1\r\n\r\n", 3),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", 4)]
    events, p = feed_three_ways(h1(), steps)
    a, b = transactions(events)
    assert a.request.target == "/a" and a.response is None
    assert a.error == "response not captured" and a.end_ns == 2
    assert b.request.target == "/b" and b.response.body == b"b"


def test_gap_inside_chunk_data_keeps_sync_and_across_chunk_framing_resyncs():
    steps = [D(C, b"GET /1 HTTP/1.1\r\n\r\n", 1),
             D(S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123", 2),
             GAP(S, 4, 3), D(S, b"89abcdef\r\n0\r\n\r\n", 4),
             D(C, b"GET /2 HTTP/1.1\r\n\r\n", 5),
             D(S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab", 6),
             GAP(S, 20, 7),
             D(C, b"GET /3 HTTP/1.1\r\n\r\n", 8),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3", 9)]
    events, _ = feed_three_ways(h1(), steps)
    one_, two, three = transactions(events)
    assert one_.response.body == b"0123" and one_.response.body_size == 16
    assert one_.response.complete
    assert two.response.body == b"ab" and not two.response.complete
    assert two.error == "response not fully captured"
    assert three.request.target == "/3" and three.response.body == b"3"


def test_gap_in_header_section_abandons_the_message():
    steps = [D(C, b"GET /lost HTTP/1.1\r\nHo", 1), GAP(C, 10, 2),
             D(C, b"st: h\r\n\r\nGET /ok HTTP/1.1\r\n\r\n", 3),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)]
    events, p = feed_three_ways(h1(), steps)
    tx = one(events)
    assert tx.request.target == "/ok"
    assert p.stats["abandoned_requests"] == 1


def test_malformed_request_stops_the_client_stream_and_its_answer_is_not_paired():
    # A server answers a bad request head with 400 and closes: what follows it on the
    # client stream was never served, so it is not reported (issue 11 item 8).
    steps = [D(C, b"GET /bad path HTTP/1.1\r\n\r\nGET /good HTTP/1.1\r\n\r\n", 1),
             D(S, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 2),
             CLOSE(3)]
    events, p = feed_three_ways(h1(), steps)
    errs = errors(events)
    assert len(errs) == 1 and errs[0].side == Side.CLIENT and errs[0].ts_ns == 1
    assert "malformed request head" in errs[0].reason
    assert transactions(events) == []
    assert p.stats["parse_errors"] == 1 and p.stats["rejected_requests"] == 1
    assert p.state(C) == "closed"


def test_malformed_status_line_resyncs():
    steps = [D(C, b"GET /1 HTTP/1.1\r\n\r\n", 1),
             D(S, b"HTTP/1.1 2x0 Broken\r\n\r\n", 2),
             D(C, b"GET /2 HTTP/1.1\r\n\r\n", 3),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)]
    events, _ = feed_three_ways(h1(), steps)
    assert [e.side for e in errors(events)] == [Side.SERVER]
    first, second = transactions(events)
    assert first.request.target == "/1" and first.response is None
    assert second.request.target == "/2" and second.response.status == 200


def test_header_section_too_large_is_an_error_and_memory_stays_bounded():
    p = new_parser("http1")
    p.feed(C, b"GET / HTTP/1.1\r\n", 1)
    for i in range(200):
        p.feed(C, b"X-Filler-%d: %s\r\n" % (i, b"v" * 1000), 2)
    assert p.buffered(C) < 100 * 1024
    ev = p.next_event()
    assert isinstance(ev, ParseError) and ev.reason == "header section too large"
    p.feed(C, b"\r\nGET /after HTTP/1.1\r\n\r\n", 3)
    p.feed(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)
    tx = p.next_event()
    assert isinstance(tx, Transaction) and tx.request.target == "/after"


def test_header_section_limit_is_the_same_whatever_the_split():
    big = b"GET / HTTP/1.1\r\nX: " + b"a" * (70 * 1024) + b"\r\n\r\nGET /ok HTTP/1.1\r\n\r\n"
    events, _ = feed_three_ways(h1(), [D(C, big, 1),
                                       D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2)],
                                seeds=(1,))
    assert [e.reason for e in errors(events)] == ["header section too large"]
    assert one(events).request.target == "/ok"


def test_invalid_chunk_size_is_an_error():
    steps = [D(C, b"GET / HTTP/1.1\r\n\r\n", 1),
             D(S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x10\r\n", 2),
             D(C, b"GET /2 HTTP/1.1\r\n\r\n", 3),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)]
    events, _ = feed_three_ways(h1(), steps)
    assert [e.reason for e in errors(events)] == ["invalid chunk size"]
    first, second = transactions(events)
    assert first.response.status == 200 and not first.response.complete
    assert second.request.target == "/2" and second.response.status == 200


def test_body_limit_truncates_but_counts():
    body = bytes(range(256)) * 40
    steps = [D(C, b"GET / HTTP/1.1\r\n\r\n", 1),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body, 2)]
    events, _ = feed_three_ways(h1(body_limit=1000), steps)
    tx = one(events)
    assert tx.response.body == body[:1000] and tx.response.body_size == len(body)
    assert tx.response.body_truncated and tx.response.complete


def test_empty_lines_between_requests_are_tolerated():
    steps = [D(C, b"\r\nGET /1 HTTP/1.1\r\n\r\n\r\n\r\nGET /2 HTTP/1.1\r\n\r\n", 1),
             D(S, NOT_FOUND * 2, 2)]
    events, _ = feed_three_ways(h1(), steps)
    assert [t.request.target for t in transactions(events)] == ["/1", "/2"]
    assert not errors(events)


def test_absolute_form_target_and_render():
    steps = [D(C, b"GET http://proxy.test/a/b?q=1 HTTP/1.1\r\nHost: proxy.test\r\n\r\n", 1),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 2)]
    events, _ = feed_three_ways(h1(), steps)
    tx = one(events)
    assert tx.url_path == "/a/b" and tx.url_query == "q=1" and tx.host == "proxy.test"
    assert tx.request.render() == (b"GET http://proxy.test/a/b?q=1 HTTP/1.1\r\n"
                                   b"Host: proxy.test\r\n\r\n")
    assert tx.response.render() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    assert tx.response.render(include_body=False).endswith(b"\r\n\r\n")


def test_render_of_chunked_message_has_the_framing_removed():
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    events, _ = feed_three_ways(h1(), [D(C, b"GET / HTTP/1.1\r\n\r\n", 1), D(S, resp, 2)])
    assert one(events).response.render() == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nabc")


def test_non_ascii_header_bytes_round_trip_through_render():
    req = "GET / HTTP/1.1\r\nX-Name: José\r\n\r\n".encode()
    events, _ = feed_three_ways(h1(), [D(C, req, 1), D(S, NOT_FOUND, 2)])
    tx = one(events)
    assert tx.request.render() == req
    assert Message(headers=[("a", "b")]).header("A") == "b"


def test_feeding_after_close_is_ignored():
    p = new_parser("http1")
    p.close(1)
    p.feed(C, b"GET / HTTP/1.1\r\n\r\n", 2)
    p.feed_gap(S, 5, 3)
    p.close(4)
    assert p.next_event() is None
    assert p.stats["bytes_after_close"] == 18


def test_held_server_bytes_are_bounded():
    p = new_parser("http1")
    for _ in range(100):
        p.feed(S, b"x" * 10000, 1)
    assert p.buffered(S) <= 256 * 1024 + 65536 + 10000
    assert p.stats["held_bytes_dropped"] > 0


# -- strict framing (issue 11 item 8): an observer must not report requests no server
# received. Each case: no invented request, the rejected one is a counted parse error.

BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _rejected(client: bytes, seen: list[str]):
    events, p = feed_three_ways(h1(), [D(C, client, 1), D(S, BAD_REQUEST, 2), CLOSE(3)])
    assert [t.request.target for t in transactions(events)] == seen, events
    errs = errors(events)
    assert len(errs) == 1 and errs[0].side == Side.CLIENT
    assert p.stats["parse_errors"] == 1 and p.stats["rejected_requests"] == 1
    return events, p


def test_no_request_is_hunted_inside_a_line_after_a_rejected_head():
    # The old parser found `GET /evil:` in the middle of this line and paired it with 400.
    _rejected(b"GET /a b HTTP/1.1\r\n\r\n\rZGET /evil: HTTP/1.1\r\n\r\n", [])
    _rejected(b"\rZGET /evil: HTTP/1.1\r\nHost: h\r\n\r\n", [])


def test_bare_lf_in_a_header_section_is_rejected_and_nothing_after_it_is_reported():
    events, _ = _rejected(b"GET /1 HTTP/1.1\r\nHost: h\nX: y\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"
                          b"GET /3 HTTP/1.1\r\n\r\n", [])
    assert "bare LF" in errors(events)[0].reason


def test_pipelined_requests_before_a_rejected_one_keep_their_answers():
    steps = [D(C, b"GET /ok HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\nBad Header\r\n\r\n"
                  b"GET /never HTTP/1.1\r\n\r\n", 1),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + BAD_REQUEST, 2), CLOSE(3)]
    events, p = feed_three_ways(h1(), steps)
    tx = one(events)
    assert tx.request.target == "/ok" and tx.response.body == b"ok"
    assert len(errors(events)) == 1 and p.stats["rejected_requests"] == 1


def test_connect_has_no_body_and_a_pipelined_request_after_it_is_reported():
    # Content-Length on CONNECT frames nothing (RFC 9110 §9.3.6): the next bytes are the
    # next request, which the proxy parsed separately after refusing the tunnel.
    steps = [D(C, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
                  b"Content-Length: 22\r\n\r\nGET /after HTTP/1.1\r\n\r\n", 1),
             D(S, b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA", 2)]
    events, p = feed_three_ways(h1(), steps)
    connect, after = transactions(events)
    assert connect.request.method == "CONNECT" and connect.request.body_size == 0
    assert connect.response.status == 405 and not connect.upgraded
    assert after.request.target == "/after" and after.response.body == b"A"
    assert not errors(events) and not p.upgraded


CHUNKED_POST = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"


def test_chunk_size_lines_violating_rfc9112_are_counted_errors_and_smuggle_nothing():
    cases = {
        "trailing space": b"5 \r\nhello\r\n0\r\n\r\n",
        "trailing tab": b"5\t\r\nhello\r\n0\r\n\r\n",
        "empty extension": b"5;\r\nhello\r\n0\r\n\r\n",
        "empty extension value": b"5;a=\r\nhello\r\n0\r\n\r\n",
        "unbalanced quote": b'5;a="x\r\nhello\r\n0\r\n\r\n',
        "bare LF in extension": b"5;a\nb\r\nhello\r\n0\r\n\r\n",
        "bare LF line end": b"5\nhello\r\n0\r\n\r\n",
        "bare CR in extension": b"5;a\rb\r\nhello\r\n0\r\n\r\n",
        "hex prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
        "bare LF in trailers": b"5\r\nhello\r\n0\r\nT: v\n\r\n",
    }
    for name, body in cases.items():
        steps = [D(C, CHUNKED_POST + body + SMUGGLED, 1), D(S, BAD_REQUEST, 2), CLOSE(3)]
        events, p = feed_three_ways(h1(), steps)
        txs = transactions(events)
        assert [t.request.target for t in txs] == ["/c"], (name, events)
        assert not txs[0].request.complete and txs[0].response.status == 400, name
        assert len(errors(events)) == 1 and p.stats["parse_errors"] == 1, name
        assert p.stats["rejected_requests"] == 1, name


def test_valid_chunk_extensions_are_accepted():
    body = b'5 ; a = b ; q="x \\" y"\r\nhello\r\n6;name\r\n world\r\n0\r\n\r\n'
    events, _ = feed_three_ways(h1(), [D(C, CHUNKED_POST + body + SMUGGLED, 1),
                                       D(S, NOT_FOUND * 2, 2)])
    assert not errors(events)
    first, second = transactions(events)
    assert first.request.body == b"hello world" and second.request.target == "/smuggled"


def test_server_side_chunk_violation_still_resyncs_on_the_server():
    steps = [D(C, b"GET /1 HTTP/1.1\r\n\r\n", 1),
             D(S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", 2),
             D(C, b"GET /2 HTTP/1.1\r\n\r\n", 3), D(S, NOT_FOUND, 4)]
    events, _ = feed_three_ways(h1(), steps)
    assert [e.side for e in errors(events)] == [Side.SERVER]
    first, second = transactions(events)
    assert first.error.startswith("malformed body") and second.response.status == 404


def test_after_a_capture_gap_request_lines_are_found_only_at_line_or_write_starts():
    steps = [D(C, b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", 1), GAP(C, 30, 2),
             D(S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3),
             D(C, b"x: GET /inside HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n", 4),
             D(S, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 5)]
    events, p = feed_three_ways(h1(), steps)
    assert [t.request.target for t in transactions(events)] == ["/", "/y"]
    assert transactions(events)[1].response.status == 201 and not errors(events)


def test_too_many_outstanding_pipelined_requests_give_up_pairing_counted():
    p = new_parser("http1")
    p.feed(C, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 5000, 1)
    txs = []
    while (ev := p.next_event()) is not None:
        txs.append(ev)
    assert p.stats["pipeline_overflows"] == 1 and p.stats["pairing_lost"] == 1
    # Everything past the cap is reported (without a response) instead of being queued.
    reported = [t for t in txs if isinstance(t, Transaction)]
    assert len(reported) >= 5000 - 1024 and all(t.response is None for t in reported)
    p.close(2)
    rest = [e for e in iter(p.next_event, None) if isinstance(e, Transaction)]
    assert len(reported) + len(rest) == 5000


def test_any_token_method_is_a_request_and_a_bare_cr_before_a_request_line_is_not():
    # Servers answer an unknown method (405/501) and keep the connection: it was received.
    steps = [D(C, b"FOO /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n", 1),
             D(S, b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2)]
    events, _ = feed_three_ways(h1(), steps)
    assert [(t.request.method, t.response.status) for t in transactions(events)] == [
        ("FOO", 501), ("GET", 200)]
    events, _ = _rejected(b"\rGET /z HTTP/1.1\r\n\r\n", [])
    assert errors(events)[0].reason == "bare CR before a start line"
