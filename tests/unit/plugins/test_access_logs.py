"""access_logs: the console text a newcomer sees (exact), JSON lines, modes by rule."""
from __future__ import annotations

import json

import pytest

from plaintap.config import load_config_text
from plaintap.plugins import AccessLogs, TransactionContext, build_stack, console_lines, json_line
from plaintap.protocols.model import Message, Transaction

from records.samples import (SAMPLES, binary_body, connection, grpc_call, h1_json_post, h2_get, ingress_get,
                             no_response, truncated_body, wall_ns)

H1_SUMMARY = "■ curl → POST https://api.example.com/v1/items?dry_run=1 201 Created (12.4 ms)"

H1_DETAILS = [
    H1_SUMMARY,
    "  META",
    "    process     curl (pid 4242, /usr/bin/curl)",
    "    container   shop-api",
    "    direction   egress-external",
    "    connection  r1c0ffee1, transaction r1c0ffee1-0",
    "    client      10.0.0.2:50000",
    "    server      93.184.216.34:443",
    "    tls         1.3, sni api.example.com, alpn http/1.1",
    "    protocol    HTTP/1.1",
    "  REQUEST",
    "    POST /v1/items?dry_run=1 HTTP/1.1",
    "    Host: api.example.com",
    "    User-Agent: curl/8.5.0",
    "    Accept: */*",
    "    Content-Type: application/json",
    "    Content-Length: 25",
    "  RESPONSE",
    "    HTTP/1.1 201 Created",
    "    Content-Type: application/json",
    "    Content-Length: 39",
    "    Server: example",
]

H1_FULL = H1_DETAILS[:17] + ["", '    {"name":"widget","qty":2}'] + H1_DETAILS[17:] + [
    "", '    {"id":"it_123","name":"widget","qty":2}']


def lines(sample, mode, **kw):
    conn, tx = sample()
    return console_lines(conn, tx, mode, transaction_id=conn.id + "-0", **kw)


def test_summary_mode_is_one_line():
    assert lines(h1_json_post, "summary") == [H1_SUMMARY]


def test_details_mode():
    assert lines(h1_json_post, "details") == H1_DETAILS


def test_full_mode():
    assert lines(h1_json_post, "full") == H1_FULL


@pytest.mark.parametrize("sample, line", [
    (ingress_get, "■ nginx ← GET http://shop.local:8080/healthz 204 No Content (0.8 ms)"),
    (h2_get, "■ python3.11 → GET https://www.example.org/index.html?lang=en 200 OK (31.2 ms)"),
    (grpc_call, "■ checkout → POST http://cart.internal:50051/shop.v1.Cart/AddItem 200 OK · grpc 0 OK (2.5 ms)"),
    (no_response, "■ curl → POST https://upload.example.com:8443/upload no response"
                  " · connection closed before the response (30000.0 ms)"),
    (binary_body, "■ wget → GET http://198.51.100.20/logo.png 200 OK (3.0 ms)"),
])
def test_summary_lines(sample, line):
    assert lines(sample, "summary") == [line]


def test_full_binary_body_is_summarised():
    out = lines(binary_body, "full")
    assert out[-5:] == ["    HTTP/1.0 200 OK", "    Content-Type: image/png", "    Content-Length: 33", "",
                        "    <binary, 33 bytes>"]


def test_full_grpc_shows_trailers_and_binary_messages():
    out = lines(grpc_call, "full")
    assert "    grpc        shop.v1.Cart/AddItem → 0 OK, 1 request message / 1 response message" in out
    assert out[-9:] == ["  RESPONSE", "    HTTP/2 200", "    :status: 200", "    content-type: application/grpc", "",
                        "    <binary, 9 bytes>", "  RESPONSE TRAILERS", "    grpc-status: 0", "    grpc-message:"]


def test_no_response_details():
    out = lines(no_response, "details")
    assert "    note        connection closed before the response" in out
    assert out[-2:] == ["  RESPONSE", "    (none)"]


def test_capture_truncated_body_is_marked():
    out = lines(truncated_body, "full")
    assert out[-6:] == ["", "    id,name,qty", "    1,widget,2", "    2,gadget,5", "    3,gizmo,7",
                        "    … [the capture kept 44 of 5000000 bytes]"]


def _text_response(body: bytes, content_type="text/plain", **kw) -> Transaction:
    req = Message(headers=[("Host", "h")], method="GET", target="/", authority="h")
    resp = Message(headers=[("Content-Type", content_type)], status=200, reason="OK", body=body,
                   body_size=kw.pop("body_size", len(body)), is_response=True, **kw)
    return Transaction(protocol="http1", version="1.1", stream_id=None, request=req, response=resp,
                       start_ns=0, end_ns=1_000_000)


def test_long_body_is_cut_with_a_marker():
    tx = _text_response(b"0123456789" * 10)
    out = console_lines(connection(), tx, "full", max_body_bytes=25)
    assert out[-3:] == ["", "    0123456789012345678901234", "    … [25 of 100 bytes shown]"]


def test_many_lines_are_cut_with_a_marker():
    tx = _text_response(b"".join(b"line %d\r\n" % i for i in range(10)))
    out = console_lines(connection(), tx, "full", max_body_lines=3)
    assert out[-5:] == ["", "    line 0", "    line 1", "    line 2", "    … [24 of 80 bytes shown]"]


def test_cut_and_capture_truncated_together():
    tx = _text_response(b"a" * 50, body_size=1000, body_truncated=True)
    out = console_lines(connection(), tx, "full", max_body_bytes=10)
    assert out[-1] == "    … [10 of 1000 bytes shown; the capture kept 50]"


def test_utf8_cut_by_the_capture_limit_is_still_text():
    tx = _text_response("héllo wörld".encode()[:-4], body_size=13, body_truncated=True)
    out = console_lines(connection(), tx, "full")
    assert out[-2:] == ["    héllo w", "    … [the capture kept 9 of 13 bytes]"]


def test_compressed_body_names_its_encoding():
    tx = _text_response(b"\x1f\x8b\x08\x00\xff\xfe", content_type="application/json")
    tx.response.headers.append(("Content-Encoding", "gzip"))
    assert console_lines(connection(), tx, "full")[-1] == "    <binary, 6 bytes, gzip>"


def test_control_characters_are_escaped():
    tx = _text_response(b"ok\x1b[2Jgone\tx", content_type="text/plain")
    tx.request.headers.append(("X-Evil", "a\x1b]0;title\x07b"))
    out = console_lines(connection(), tx, "full")
    assert "    X-Evil: a\\x1b]0;title\\x07b" in out
    assert out[-1] == "    <binary, 12 bytes>"              # ESC in a body: not shown as text
    tx2 = _text_response(b"col1\tcol2\n")
    assert console_lines(connection(), tx2, "full")[-1] == "    col1\tcol2"
    assert not any("\x1b" in line or "\x07" in line for line in out)


def test_utf8_header_values_are_shown_as_utf8():
    tx = _text_response(b"")
    tx.request.headers.append(("X-Name", "zoë".encode().decode("latin-1")))
    assert "    X-Name: zoë" in console_lines(connection(), tx, "details")


def test_colour_only_when_asked():
    plain = lines(h1_json_post, "full")
    assert not any("\x1b" in line for line in plain)
    coloured = lines(h1_json_post, "details", color=True)
    assert coloured[0] == ("\x1b[32m■\x1b[0m curl → \x1b[1mPOST\x1b[0m https://api.example.com/v1/items?dry_run=1 "
                           "\x1b[32m201 Created\x1b[0m \x1b[2m(12.4 ms)\x1b[0m")
    assert coloured[1] == "  \x1b[1mMETA\x1b[0m"


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("mode", ["summary", "details", "full"])
def test_console_lines_never_look_like_json_records(name, mode):
    for line in lines(SAMPLES[name], mode):
        assert not line.startswith("{") and "\n" not in line and "\r" not in line


# ---- json format ----------------------------------------------------------------------

def test_json_summary():
    conn, tx = h1_json_post()
    line = json_line(conn, tx, "summary", wall_ns, "r1c0ffee1-0")
    assert line.startswith('{"access_log":')
    assert json.loads(line) == {"access_log": {
        "timestamp": "2023-11-14T22:13:25.000000000Z", "connection_id": "r1c0ffee1",
        "transaction_id": "r1c0ffee1-0", "direction": "egress-external",
        "process": {"name": "curl", "path": "/usr/bin/curl", "pid": 4242},
        "container": {"container.id": "f" * 64, "container.runtime": "docker", "container.name": "shop-api",
                      "container.image.name": "registry.example.com/shop/api:1.4"},
        "method": "POST", "url": "https://api.example.com/v1/items?dry_run=1", "status": 201,
        "duration_ms": 12.4, "protocol": "http1", "version": "1.1",
        "request_body_size": 25, "response_body_size": 39}}


def test_json_details_and_full():
    conn, tx = grpc_call()
    details = json.loads(json_line(conn, tx, "details", wall_ns, "t"))["access_log"]
    assert details["grpc"] == {"service": "shop.v1.Cart", "method": "AddItem", "status": 0}
    assert details["request"]["start_line"] == "POST /shop.v1.Cart/AddItem HTTP/2"
    assert details["request"]["headers"]["content-type"] == "application/grpc"
    assert details["response"]["trailers"] == {"grpc-status": "0", "grpc-message": ""}
    assert "body" not in details["request"]
    conn, tx = binary_body()
    full = json.loads(json_line(conn, tx, "full", wall_ns, "t"))["access_log"]
    assert full["request"]["body"] == "" and "body_b64" in full["response"]
    conn, tx = truncated_body()
    full = json.loads(json_line(conn, tx, "full", wall_ns, "t"))["access_log"]
    assert full["response"]["body_truncated"] is True and full["response"]["body"].startswith("id,name")
    conn, tx = no_response()
    nr = json.loads(json_line(conn, tx, "full", wall_ns, "t"))["access_log"]
    assert "status" not in nr and "response" not in nr and nr["error"].startswith("connection closed")


# ---- the plugin: modes by rule, formats -----------------------------------------------

CONFIG = """
stacks:
  logs:
    plugins:
      - type: access_logs
        config:
          mode: summary
          format: {fmt}
          rules:
            - name: grpc in full
              expr: protocol == "grpc"
              mode: full
            - name: uploads in detail
              expr: http.req.path == "/upload"
              mode: details
"""


def run_logs(fmt, sample, **kw):
    cfg = load_config_text(CONFIG.format(fmt=fmt))
    stack = build_stack(cfg.stacks["logs"], "logs", **kw)
    conn, tx = sample()
    out = stack.run(TransactionContext(conn, tx, conn.id + "-0", wall_ns))
    assert out.events == [] and out.objects == []
    return out.access_log_lines


def test_rules_choose_the_mode():
    assert run_logs("console", h1_json_post) == [H1_SUMMARY]
    assert run_logs("console", no_response) == lines(no_response, "details")
    assert run_logs("console", grpc_call) == lines(grpc_call, "full")
    assert run_logs("console", h1_json_post, color=True) == lines(h1_json_post, "summary", color=True)


def test_json_format_from_config():
    (line,) = run_logs("json", grpc_call)
    entry = json.loads(line)["access_log"]
    assert "body" in entry["request"]                  # full by rule
    (line,) = run_logs("json", h1_json_post)
    assert "request" not in json.loads(line)["access_log"]


def test_default_config_is_summary_console():
    cfg = load_config_text("stacks:\n  s:\n    plugins:\n      - type: access_logs\n")
    plugin = build_stack(cfg.stacks["s"]).plugins[0]
    assert isinstance(plugin, AccessLogs) and not plugin.color
    conn, tx = h1_json_post()
    ctx = TransactionContext(conn, tx, "t", wall_ns)
    plugin.on_transaction(ctx)
    assert ctx.out.access_log_lines == [H1_SUMMARY]
