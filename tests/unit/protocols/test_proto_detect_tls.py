"""Protocol detection, TLS hello parsing, and the public model helpers."""
from __future__ import annotations

import ssl

import pytest

from plaintap.protocols import (Detected, Message, Side, Transaction, detect, new_parser)
from plaintap.protocols.tls import (ClientHello, ServerHello, hello_incomplete, is_grease,
                                    parse_client_hello, parse_server_hello, version_name)

from .helpers import H2, PREFACE, C, S, get

# ---------------------------------------------------------------------------------------
# detect


@pytest.mark.parametrize("data,expected", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Detected("http1")),
    (b"POST /api/v1/items?x=1 HTTP/1.0\r\n", Detected("http1")),
    (b"M-SEARCH * HTTP/1.1\r\n", Detected("http1")),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Detected("http1", midstream=True)),
    (b"HTTP/1.0 404\r\n", Detected("http1", midstream=True)),
    (PREFACE + H2.settings(), Detected("http2")),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", Detected("tls")),
    (b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76", Detected("tls")),
    (b"SSH-2.0-OpenSSH_9.6\r\n", Detected("tcp")),
    (b"*1\r\n$4\r\nPING\r\n", Detected("tcp")),
    (b"\x16\x03\x05\x00\x10\x01", Detected("tcp")),       # not a TLS version
    (b"\x17\x03\x03\x00\x10", Detected("tcp")),           # application data: not a start
    (b"GET /a b HTTP/1.1\r\n", Detected("tcp")),          # space in target
    (b"FOO / HTTP/1.1\r\n", Detected("tcp")),             # unknown method
    (b"GET / HTTP/2.0\r\n", Detected("tcp")),
])
def test_detect_decides(data, expected):
    assert detect(data) == expected


@pytest.mark.parametrize("data", [
    b"", b"G", b"GE", b"GET", b"GET ", b"GET /", b"GET /x HTTP/1.", b"GET /x HTTP/1.1",
    b"GET /x HTTP/1.1\r", b"H", b"HTTP/1.1 2", b"PRI * HTTP/2.0\r\n", b"\x16", b"\x16\x03\x01",
])
def test_detect_needs_more(data):
    assert detect(data) is None


def test_detect_is_stable_as_bytes_arrive():
    for full in (b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n", PREFACE + H2.settings(),
                 b"HTTP/1.1 301 Moved Permanently\r\n\r\n", b"\x16\x03\x01\x00\x10\x01" + b"\0" * 16):
        final = detect(full)
        for i in range(len(full) + 1):
            got = detect(full[:i])
            assert got is None or got == final, (full[:i], got)


def test_detect_with_alpn():
    assert detect(b"", alpn="h2") == Detected("http2")
    assert detect(PREFACE, alpn="h2") == Detected("http2")
    assert detect(H2.settings(), alpn="h2") == Detected("http2")
    assert detect(H2.data(1, b"x" * 20), alpn="h2") == Detected("http2", midstream=True)
    assert detect(b"GET / HTTP/1.1\r\n\r\n", alpn="http/1.1") == Detected("http1")
    assert detect(b"HTTP/1.1 200 OK\r\n", alpn="http/1.1") == Detected("http1", midstream=True)
    assert detect(b"{json body}", alpn="http/1.1") == Detected("http1", midstream=True)
    assert detect(b"GET / HTTP/1.1\r\n\r\n", alpn="spdy/3") == Detected("http1")


def test_detect_midstream_http2_frames():
    b = H2()
    frames = b.headers(C, 5, get("/x"), end_stream=True) + H2.ping() + H2.window_update(0)
    assert detect(frames) == Detected("http2", midstream=True)
    assert detect(frames[:9]) is None            # one plausible header: wait for the next


def test_detect_never_raises():
    for data in (b"\x00" * 100, bytes(range(256)), b"\x16" * 10, memoryview(b"GET / HTTP/1.1\r\n")):
        detect(data)


# ---------------------------------------------------------------------------------------
# TLS


def _real_client_hello(alpn=("h2", "http/1.1"), sni="api.example.com") -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def _record(payload: bytes, version: int = 0x0303, ctype: int = 22) -> bytes:
    return bytes([ctype]) + version.to_bytes(2, "big") + len(payload).to_bytes(2, "big") + payload


def _server_hello(legacy=0x0303, selected=None, alpn=None, random=b"\x11" * 32,
                  suite=0x1301) -> bytes:
    body = legacy.to_bytes(2, "big") + random + b"\x20" + b"\x07" * 32 + suite.to_bytes(2, "big")
    body += b"\x00"
    exts = b""
    if selected is not None:
        exts += (43).to_bytes(2, "big") + (2).to_bytes(2, "big") + selected.to_bytes(2, "big")
    if alpn is not None:
        proto = alpn.encode()
        lst = bytes([len(proto)]) + proto
        exts += (16).to_bytes(2, "big") + (len(lst) + 2).to_bytes(2, "big") \
            + len(lst).to_bytes(2, "big") + lst
    body += len(exts).to_bytes(2, "big") + exts
    return _record(b"\x02" + len(body).to_bytes(3, "big") + body)


def test_real_client_hello_from_openssl():
    data = _real_client_hello()
    hello = parse_client_hello(data)
    assert isinstance(hello, ClientHello)
    assert hello.sni == "api.example.com"
    assert hello.alpn == ("h2", "http/1.1")
    assert hello.legacy_version == "1.2"
    assert "1.3" in hello.supported_versions and hello.max_version == "1.3"
    assert hello.cipher_suites
    assert detect(data) == Detected("tls")
    assert parse_server_hello(data) is None


def test_client_hello_without_extensions_of_interest():
    hello = parse_client_hello(_real_client_hello(alpn=(), sni=None))
    assert hello.sni is None and hello.alpn == ()


def test_client_hello_split_across_records_and_reads():
    data = _real_client_hello()
    payload = data[5:]
    # The same handshake message fragmented over three records.
    fragmented = b"".join(_record(payload[a:b], version=0x0301)
                          for a, b in ((0, 40), (40, 300), (300, len(payload))))
    assert parse_client_hello(fragmented) == parse_client_hello(data)
    for blob in (data, fragmented):
        for cut in range(len(blob)):
            prefix = blob[:cut]
            assert parse_client_hello(prefix) is None
            assert hello_incomplete(prefix), cut
        assert not hello_incomplete(blob)


def test_server_hello_tls12_with_alpn():
    hello = parse_server_hello(_server_hello(legacy=0x0303, alpn="h2", suite=0xC02F))
    assert hello == ServerHello(legacy_version="1.2", version="1.2", cipher_suite=0xC02F,
                                alpn="h2", hello_retry_request=False)


def test_server_hello_tls13_version_comes_from_supported_versions():
    data = _server_hello(legacy=0x0303, selected=0x0304) + _record(b"\x01", ctype=20)
    hello = parse_server_hello(data)
    assert hello.version == "1.3" and hello.legacy_version == "1.2" and hello.alpn is None
    assert not hello.hello_retry_request


def test_hello_retry_request_is_flagged():
    hrr_random = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")
    hello = parse_server_hello(_server_hello(selected=0x0304, random=hrr_random))
    assert hello.hello_retry_request and hello.version == "1.3"


def test_tls_garbage_and_truncation_never_raise():
    samples = [b"", b"\x16", b"\x16\x03\x03\xff\xff" + b"\x01" * 10, b"\x15\x03\x03\x00\x02\x02\x28",
               _record(b"\x01\x00\x00\x05abc"), _record(b"\x01\x00\x00\x02\x03\x03"),
               _record(b"\x02\x00\x00\x01\x00"), bytes(range(256))]
    full = _real_client_hello()
    for i in range(0, len(full), 7):
        mutated = bytearray(full)
        mutated[i] ^= 0xFF
        samples.append(bytes(mutated))
    for s in samples:
        parse_client_hello(s)
        parse_server_hello(s)
        hello_incomplete(s)


def test_version_helpers():
    assert version_name(0x0304) == "1.3" and version_name(0x7F1C) == "0x7f1c"
    assert is_grease(0x0A0A) and is_grease(0xFAFA) and not is_grease(0x0303)


# ---------------------------------------------------------------------------------------
# model and factory


def test_new_parser_rejects_unknown_protocols():
    with pytest.raises(ValueError, match="no parser for protocol 'tcp'"):
        new_parser("tcp")
    assert new_parser("http1").protocol == "http1"
    assert new_parser("http2", midstream=True).protocol == "http2"


def test_side_values():
    assert Side.CLIENT == 0 and Side.SERVER == 1 and [Side(0), Side(1)] == [C, S]


def test_transaction_helpers():
    req = Message(headers=[("Host", "h.test")], method="GET", target="/p/q?x=1#frag",
                  authority="h.test")
    tx = Transaction(protocol="http1", version="1.1", stream_id=None, request=req,
                     response=None, start_ns=5, end_ns=3)
    assert (tx.url_path, tx.url_query, tx.host, tx.duration_ns) == ("/p/q", "x=1", "h.test", 0)
    star = Transaction("http1", "1.1", None, Message(method="OPTIONS", target="*"), None, 0, 0)
    assert star.url_path == "*" and star.host is None
    h2resp = Message(headers=[(":status", "503")], status=503, version="2", is_response=True,
                     body=b"x")
    assert h2resp.render() == b"HTTP/2 503\r\n:status: 503\r\n\r\nx"
    assert Message(status=None, version="2", is_response=True).start_line() == "HTTP/2 -"
    multi = Message(headers=[("Set-Cookie", "a"), ("set-cookie", "b")])
    assert multi.header_values("SET-COOKIE") == ["a", "b"] and multi.content_type is None
