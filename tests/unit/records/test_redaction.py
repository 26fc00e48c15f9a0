"""Redaction (records/redact.py): what is masked, where, and that the parsed transaction
is never changed. The e2e counterpart is tests/e2e/test_redaction.py."""
from __future__ import annotations

import hashlib
import json

import pytest

from plaintap.capture.process import ProcessInfo
from plaintap.config import ConfigError, load_config_text
from plaintap.plugins import PluginStacks, TransactionContext, build_stack
from plaintap.protocols.model import Message, Transaction
from plaintap.records.connection import connection_record
from plaintap.records.model import to_json_line
from plaintap.records.redact import (DEFAULT_REDACTION, MASK, MAX_COMMAND_LINE, NO_REDACTION, Redaction)

from .samples import T0, connection, h1_json_post, h2_get, wall_ns

BEARER = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.sekrit-signature"
COOKIE = "session=0123456789abcdef; theme=dark"
SIG = "d1b2c3d4e5f60718293a4b5c6d7e8f90"


def secret_tx(version: str = "1.1") -> tuple:
    target = f"/bucket/report.csv?X-Amz-Credential=AKIAEXAMPLE%2F20261129&X-Amz-Signature={SIG}&part=2"
    if version == "2":
        headers = [(":method", "GET"), (":scheme", "https"), (":authority", "api.example.com"), (":path", target),
                   ("authorization", f"Bearer {BEARER}"), ("cookie", COOKIE), ("x-api-key", "k-123456"),
                   ("accept", "*/*")]
    else:
        headers = [("Host", "api.example.com"), ("Authorization", f"Bearer {BEARER}"), ("Cookie", COOKIE),
                   ("X-Api-Key", "k-123456"), ("Accept", "*/*")]
    req = Message(headers=headers, method="GET", target=target, authority="api.example.com", version=version,
                  first_ns=T0, last_ns=T0)
    body = b'{"ok":true}'
    resp = Message(headers=[("Content-Type", "application/json"), ("Set-Cookie", "session=fedcba9876543210; Path=/"),
                            ("Location", f"https://cdn.example.com/x?sig={SIG}&se=2026-12-01")],
                   status=200, reason="OK", version=version, body=body, body_size=len(body),
                   first_ns=T0 + 1_000_000, last_ns=T0 + 2_000_000, is_response=True)
    tx = Transaction(protocol="http2" if version == "2" else "http1", version=version, stream_id=1 if version == "2" else None,
                     request=req, response=resp, start_ns=T0, end_ns=T0 + 2_000_000)
    conn = connection(process=ProcessInfo(4242, exe="/usr/bin/curl", argv=(
        "curl", "-H", f"Authorization: Bearer {BEARER}", "-H", f"Cookie: {COOKIE}", "--password=hunter2",
        f"https://api.example.com{target}"), cmdline="(unused when argv is known)", uid=1000, comm="curl"))
    return conn, tx


SECRETS = (BEARER, "0123456789abcdef", "fedcba9876543210", "k-123456", SIG, "AKIAEXAMPLE", "hunter2")

STACK = """
services: {event_stores: [{type: stdout}], object_stores: [{type: stdout}]}
stacks:
  s:
    plugins:
      - {type: http_capture, config: {level: full}}
      - {type: access_logs, config: {mode: full, format: json}}
      - {type: access_logs, config: {mode: full, format: console}}
tap: {http: {stack: s}}
"""


def everything_output(conn, tx, redaction: Redaction) -> str:
    cfg = load_config_text(STACK)
    out = PluginStacks(cfg, redaction=redaction).handle(conn, tx, "t-0", wall_ns, lambda d: f"otel://{d}")
    lines = [to_json_line(r) for r in out.events + out.objects] + out.access_log_lines
    lines.append(to_json_line(connection_record(conn, 0, True, wall_ns, redaction)))
    return "\n".join(lines)


@pytest.mark.parametrize("version", ["1.1", "2"])
def test_default_output_holds_no_secret_and_raw_transaction_is_untouched(version):
    conn, tx = secret_tx(version)
    before = (list(tx.request.headers), tx.request.target, list(tx.response.headers))
    text = everything_output(conn, tx, DEFAULT_REDACTION)
    for secret in SECRETS:
        assert secret not in text, secret
    assert MASK in text
    assert f"Bearer {MASK}" in text                       # the scheme word stays
    assert "part=2" in text and "se=2026-12-01" in text    # other parameters stay
    assert (list(tx.request.headers), tx.request.target, list(tx.response.headers)) == before


@pytest.mark.parametrize("version", ["1.1", "2"])
def test_redaction_off_shows_everything(version):
    conn, tx = secret_tx(version)
    text = everything_output(conn, tx, NO_REDACTION)
    for secret in SECRETS:
        assert secret in text, secret
    assert MASK not in text


def test_records_urls_and_object_digest_use_redacted_text():
    conn, tx = secret_tx()
    cfg = load_config_text(STACK)
    out = PluginStacks(cfg).handle(conn, tx, "t-0", wall_ns, lambda d: None)
    record = out.events[0].attributes
    assert record["url.full"] == (f"https://api.example.com/bucket/report.csv?X-Amz-Credential={MASK}"
                                  f"&X-Amz-Signature={MASK}&part=2")
    assert record["url.query"] == f"X-Amz-Credential={MASK}&X-Amz-Signature={MASK}&part=2"
    assert SIG not in out.events[0].body
    request_obj = out.objects[0].attributes
    assert request_obj["artifact.summary.url"] == record["url.full"]
    data = request_obj["artifact.data"].encode()
    assert request_obj["artifact.digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert request_obj["artifact.size_bytes"] == len(data)
    assert data.startswith(f"GET /bucket/report.csv?X-Amz-Credential={MASK}&X-Amz-Signature={MASK}&part=2 "
                           "HTTP/1.1\r\n".encode())
    assert f"Authorization: Bearer {MASK}\r\n".encode() in data
    assert f"Cookie: {MASK}\r\n".encode() in data
    assert record["artifact.request.digest"] == request_obj["artifact.digest"]


def test_plugins_see_raw_transaction_for_reading():
    conn, tx = secret_tx()
    ctx = TransactionContext(conn, tx, "t", wall_ns)
    assert ctx.raw_tx is tx
    assert ctx.raw_tx.request.header("authorization") == f"Bearer {BEARER}"
    assert ctx.tx.request.header("authorization") == f"Bearer {MASK}"
    assert ctx.vars["http.req.headers.authorization"] == f"Bearer {BEARER}"   # rules read the raw value


def test_nothing_to_mask_returns_the_same_transaction():
    conn, tx = h1_json_post()
    assert DEFAULT_REDACTION.transaction(tx) is tx
    _, tx2 = h2_get()
    assert DEFAULT_REDACTION.transaction(tx2) is tx2


@pytest.mark.parametrize("query, shown", [
    ("a=1&b=2", "a=1&b=2"),
    ("sig=abc", f"sig={MASK}"),
    ("SIG=abc&sv=2024-01-01&se=2026", f"SIG={MASK}&sv=2024-01-01&se=2026"),
    ("X-Goog-Signature=ff&X-Goog-Credential=c%2Fd", f"X-Goog-Signature={MASK}&X-Goog-Credential={MASK}"),
    ("X%2DAmz%2DSignature=ff", f"X%2DAmz%2DSignature={MASK}"),      # name compared percent-decoded
    ("access_token=t&token=&api_key=k", f"access_token={MASK}&token=&api_key={MASK}"),   # empty stays empty
    ("sig", "sig"),
    ("Signature=x&AWSAccessKeyId=AKIA&Expires=1", f"Signature={MASK}&AWSAccessKeyId={MASK}&Expires=1"),
])
def test_query(query, shown):
    assert DEFAULT_REDACTION.query(query) == shown


@pytest.mark.parametrize("url, shown", [
    ("/p?sig=1#frag", f"/p?sig={MASK}#frag"),
    ("http://user:pw@proxy.example/x", f"http://user:{MASK}@proxy.example/x"),
    ("http://user@proxy.example/x", "http://user@proxy.example/x"),
    ("/a@b?token=1", f"/a@b?token={MASK}"),
    ("/plain", "/plain"),
])
def test_url(url, shown):
    assert DEFAULT_REDACTION.url(url) == shown


@pytest.mark.parametrize("name, value, shown", [
    ("Authorization", "Bearer abc", f"Bearer {MASK}"),
    ("authorization", "Basic dXNlcjpwYXNz", f"Basic {MASK}"),
    ("Authorization", "sekrit-without-scheme", MASK),
    ("Proxy-Authorization", "Negotiate YIIabc", f"Negotiate {MASK}"),
    ("Cookie", "a=b", MASK),
    ("SET-COOKIE", "a=b; Path=/", MASK),
    ("x-api-key", "k", MASK),
    ("Api-Key", "k", MASK),
    ("X-Auth-Token", "k", MASK),
    ("Referer", "https://a/?token=zz&q=1", f"https://a/?token={MASK}&q=1"),
    ("Content-Type", "text/plain", "text/plain"),
    ("Authorization", "", ""),
])
def test_header_value(name, value, shown):
    assert DEFAULT_REDACTION.header_value(name, value) == shown


def test_extra_names_from_config_and_validation():
    cfg = load_config_text("redaction: {headers: [X-Session], query_params: [code]}\n")
    policy = cfg.redaction.policy()
    assert policy.header_value("x-session", "s1") == MASK
    assert policy.header_value("Authorization", "Bearer x") == f"Bearer {MASK}"   # defaults kept
    assert policy.query("code=abc&state=1") == f"code={MASK}&state=1"
    assert not load_config_text("redaction: {enabled: false}\n").redaction.policy().enabled
    assert not load_config_text("").redaction.policy(force_off=True).enabled
    assert load_config_text("").redaction.policy() == DEFAULT_REDACTION
    with pytest.raises(ConfigError) as err:
        load_config_text("redaction: {headres: [X-Session]}\n")
    assert "redaction.headres" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config_text("redaction: {headers: ['X-Session: 1']}\n")
    assert "redaction.headers[0]" in str(err.value)


@pytest.mark.parametrize("argv, shown", [
    (["curl", "-H", "Authorization: Bearer abc", "https://h/"], f"curl -H Authorization: Bearer {MASK} https://h/"),
    (["curl", "-HCookie: a=b"], f"curl -HCookie: {MASK}"),
    (["curl", "--header=X-API-Key: k"], f"curl --header=X-API-Key: {MASK}"),
    (["curl", "-H", "Accept: */*"], "curl -H Accept: */*"),
    (["curl", "-u", "me:pw", "--proxy-user", "p:q"], f"curl -u me:{MASK} --proxy-user p:{MASK}"),
    (["app", "--password=hunter2", "--db-token", "t", "--api_key=k", "--client-secret", "s"],
     f"app --password={MASK} --db-token {MASK} --api_key={MASK} --client-secret {MASK}"),
    (["mysql", "-p", "hunter2"], f"mysql -p {MASK}"),
    (["ssh", "-p", "2222", "host"], "ssh -p 2222 host"),
    (["env", "API_TOKEN=abc", "PATH=/bin", "run"], f"env API_TOKEN={MASK} PATH=/bin run"),
    (["wget", "https://u:pw@h/f?X-Amz-Signature=s&a=1"], f"wget https://u:{MASK}@h/f?X-Amz-Signature={MASK}&a=1"),
    (["nginx", "-g", "daemon off;"], "nginx -g daemon off;"),
    (["app", "--keyfile", "/etc/k", "--passive"], "app --keyfile /etc/k --passive"),
])
def test_command_line(argv, shown):
    assert DEFAULT_REDACTION.command_line(argv) == shown
    assert NO_REDACTION.command_line(argv) == " ".join(argv)


def test_command_line_is_always_cut():
    long = ["x" * 10_000, "y" * 10_000]
    for policy in (DEFAULT_REDACTION, NO_REDACTION, Redaction.build(command_line=False)):
        text = policy.command_line(long)
        assert len(text) == MAX_COMMAND_LINE and text.endswith("…[truncated]")
    assert DEFAULT_REDACTION.command_line(None, "curl --token=abc") == f"curl --token={MASK}"
    assert Redaction.build(command_line=False).command_line(["a", "--token=abc"]) == "a --token=abc"


def test_connection_record_command_line_masked_and_cached():
    conn = connection(process=ProcessInfo(1, exe="/usr/bin/app", argv=("app", "--token=abc"), cmdline="app --token=abc"))
    attrs = connection_record(conn, 0, False, wall_ns).attributes
    assert attrs["process.command_line"] == f"app --token={MASK}"
    assert connection_record(conn, 0, False, wall_ns, NO_REDACTION).attributes["process.command_line"] \
        == "app --token=abc"
    assert json.dumps(attrs).count("abc") == 0


def test_trailers_are_masked():
    conn, tx = secret_tx()
    tx.response.trailers = [("Set-Cookie", "late=secretvalue")]
    view = DEFAULT_REDACTION.transaction(tx)
    assert view.response.trailers == [("Set-Cookie", MASK)]
    assert tx.response.trailers == [("Set-Cookie", "late=secretvalue")]
    stack = build_stack(load_config_text(STACK).stacks["s"], "s")
    out = stack.run(TransactionContext(conn, tx, "t", wall_ns, lambda d: None))
    assert "secretvalue" not in "\n".join(out.access_log_lines)
