"""report_usage (`request` events) and detect_errors (`issue` events), RECORDS.md, driven
through the real plugin stack with sample transactions."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from plaintap.config import ConfigError, load_config_text
from plaintap.config.variables import TRANSACTION_VARIABLES, VARIABLE_PREFIXES
from plaintap.plugins import TransactionContext, build_stack
from plaintap.records.model import to_json_line
from plaintap.records.transaction import _FIXED
from plaintap.records.usage import auth_token, mime_category

from records.samples import T0, h1_json_post, h2_get, wall_ns

SECRET = "sk-live-0123456789abcdefXYZ7890"


def stack_of(plugins_yaml: str):
    cfg = load_config_text(f"stacks:\n  s:\n    plugins:\n{plugins_yaml}")
    return build_stack(cfg.stacks["s"], "s")


def run(stack, conn, tx, object_url=lambda d: f"otel://objects/{d}"):
    return stack.run(TransactionContext(conn, tx, "r1c0ffee1-0", wall_ns, object_url))


def with_request_headers(conn_tx, *extra):
    conn, tx = conn_tx
    req = dataclasses.replace(tx.request, headers=[*tx.request.headers, *extra])
    return conn, dataclasses.replace(tx, request=req)


def with_response(conn_tx, **changes):
    conn, tx = conn_tx
    return conn, dataclasses.replace(tx, response=dataclasses.replace(tx.response, **changes))


def everything(out) -> str:
    return "\n".join(to_json_line(r) for r in (*out.events, *out.objects)) + "\n".join(out.access_log_lines)


# ---- report_usage ------------------------------------------------------------------------

def test_usage_event_with_a_bearer_token_never_shows_it():
    conn, tx = with_request_headers(h1_json_post(), ("Authorization", f"Bearer {SECRET}"))
    out = run(stack_of("      - type: report_usage\n      - type: access_logs\n        config: {mode: full}\n"
                       "      - type: http_capture\n        config: {level: full}\n"), conn, tx)
    usage = [r for r in out.events if r.attributes["event.type"] == "request"]
    assert len(usage) == 1
    a = usage[0].attributes
    assert usage[0].body == "HTTP POST (201) https://api.example.com/v1/items?dry_run=1"
    assert usage[0].time_ns == wall_ns(T0)
    assert a["http.request.method"] == "POST" and a["http.response.status_code"] == 201
    assert a["url.path"] == "/v1/items" and a["server.address"] == "api.example.com"
    assert a["http.duration_ms"] == 12.4 and a["http.response.category"] == "json"
    assert a["auth.token.source"] == "Authorization" and a["auth.token.type"] == "bearer"
    assert a["auth.token.hash"] == hashlib.sha256(SECRET.encode()).hexdigest()
    assert a["auth.token.mask"] == "sk-l…7890"
    assert a["connection.id"] == conn.id and a["transaction.id"] == "r1c0ffee1-0"
    assert a["process.executable.name"] == "curl" and a["container.id"] == "f" * 64
    assert SECRET not in everything(out)          # not in the usage event, objects or access log


@pytest.mark.parametrize("header, value, source, kind", [
    ("X-API-Key", "abcd1234efgh5678", "X-API-Key", "api_key"),
    ("Authorization", "Basic dXNlcjpwYXNzd29yZA==", "Authorization", "basic"),
    ("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "Authorization", "jwt"),
    ("api-key", "k-123", "Api-Key", "api_key"),
    ("X-Auth-Token", "tok_abcdefghijklmnop", "X-Auth-Token", "api_key"),
])
def test_token_sources_and_kinds(header, value, source, kind):
    _, tx = with_request_headers(h1_json_post(), (header, value))
    token = auth_token(tx)
    assert (token.source, token.type) == (source, kind)
    secret = value.split(" ", 1)[1] if header == "Authorization" else value
    assert token.hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in token.mask


def test_no_credential_no_auth_attributes():
    out = run(stack_of("      - type: report_usage\n"), *h2_get())
    (event,) = out.events
    assert not [k for k in event.attributes if k.startswith("auth.")]
    assert event.attributes["http.response.category"] == "html"


def test_mime_categories():
    assert [mime_category(t) for t in ("application/json; charset=utf-8", "application/vnd.api+json",
                                      "text/html", "image/png", "application/xml", "text/plain",
                                      "application/octet-stream", None)] == [
        "json", "json", "html", "image", "xml", "text", "binary", None]


# ---- detect_errors -----------------------------------------------------------------------

DETECT = """      - type: detect_errors
        config:
          rules:
            - name: server-errors
              triggerStatusCodes: ["5xx"]
              recordReqHeaders: true
              recordResBody: true
"""


@pytest.mark.parametrize("status, fires", [(503, True), (500, True), (200, False), (404, False)])
def test_status_class_rule(status, fires):
    conn, tx = with_response(h1_json_post(), status=status)
    out = run(stack_of(DETECT), conn, tx)
    issues = [r for r in out.events if r.attributes["event.type"] == "issue"]
    if not fires:
        assert not issues and not out.objects
        return
    (issue,) = issues
    a = issue.attributes
    assert issue.severity == "ERROR"
    assert a["issue.rule"] == "server-errors" and a["issue.triggers"] == [f"status:{status}"]
    assert issue.body == f"HTTP Error: POST ({status}) https://api.example.com/v1/items?dry_run=1 :: server-errors"
    kinds = {o.attributes["artifact.type"]: o for o in out.objects}
    assert set(kinds) == {"http_request", "http_response"}
    assert kinds["http_request"].attributes["artifact.data"].endswith("\r\n\r\n")          # headers only
    assert kinds["http_response"].attributes["artifact.data"].endswith('"qty":2}')         # with body
    assert a["artifact.request.url"] == f"otel://objects/{kinds['http_request'].attributes['artifact.digest']}"
    assert a["artifact.response.url"].startswith("otel://objects/")


def test_exact_code_duration_contains_empty_body_and_url_scopes():
    stack = stack_of("""      - type: detect_errors
        config:
          rules:
            - name: not-here
              triggerStatusCodes: ["201"]
              excludeUrls: ["https://api.example.com/v1/"]
            - name: slow-or-odd
              triggerDuration: 10ms
              triggerContains: widget
              triggerStatusCodes: [201]
              onlyUrls: ["https://api.example.com/*"]
              onlyCategories: [json]
              withTags: [checkout]
              continue: true
            - name: empty
              triggerEmptyBody: true
""")
    conn, tx = h1_json_post()
    out = run(stack, conn, tx)
    (issue,) = out.events
    assert issue.attributes["issue.rule"] == "slow-or-odd"
    assert issue.attributes["issue.triggers"] == ["status:201", "duration:0.012s", "contains:widget"]
    assert issue.attributes["issue.tags"] == ["checkout"]
    assert not out.objects
    conn, tx = with_response(h1_json_post(), body=b"", body_size=0, status=204)
    names = [r.attributes["issue.rule"] for r in run(stack, conn, tx).events]
    assert names == ["slow-or-odd", "empty"]          # still slow; `continue` lets "empty" run too


def test_first_fired_rule_stops_unless_continue_and_report_as_issue_false_records_only():
    stack = stack_of("""      - type: detect_errors
        config:
          rules:
            - name: silent
              triggerStatusCodes: ["2xx"]
              reportAsIssue: false
              recordResHeaders: true
            - name: never-reached
              triggerStatusCodes: ["2xx"]
""")
    out = run(stack, *h1_json_post())
    assert not out.events
    assert [o.attributes["artifact.type"] for o in out.objects] == ["http_response"]


def test_detect_errors_config_problems():
    def problems(rules: str) -> list[str]:
        with pytest.raises(ConfigError) as caught:
            load_config_text(f"stacks:\n  s:\n    plugins:\n      - type: detect_errors\n        config:\n"
                             f"          rules:\n{rules}")
        return caught.value.problems
    assert problems("            - {name: a, triggerStatusCodes: [600]}\n") == [
        "stacks.s.plugins[0].config.rules[0].triggerStatusCodes[0]: 600 is not a status code (\"503\") or class (\"5xx\")"]
    assert problems("            - {name: a, triggerDuration: soon}\n") == [
        "stacks.s.plugins[0].config.rules[0].triggerDuration: 'soon' is not a duration (write e.g. 2s, 500ms, 1m30s)"]
    assert problems("            - {name: a}\n") == [
        "stacks.s.plugins[0].config.rules[0]: the rule has no trigger (set triggerStatusCodes, triggerEmptyBody, "
        "triggerDuration or triggerContains)"]
    assert problems("            - {name: a, triggerEmptyBody: true, recordReqHeader: true}\n") == [
        "stacks.s.plugins[0].config.rules[0].recordReqHeader: unknown key (did you mean 'recordReqHeaders'?)"]


def test_every_rule_variable_the_records_compute_is_known_and_vice_versa():
    assert set(TRANSACTION_VARIABLES) == set(_FIXED)
    assert VARIABLE_PREFIXES == ("http.req.headers.", "http.res.headers.", "src.container.labels.")


def test_unknown_variable_is_a_load_error_naming_it():
    with pytest.raises(ConfigError) as caught:
        load_config_text('stacks:\n  s:\n    plugins:\n      - type: http_capture\n        config:\n'
                         '          rules: [{name: r, expr: \'http.req.hots == "x"\', level: full}]\n')
    (line,) = caught.value.problems
    assert line.startswith("stacks.s.plugins[0].config.rules[0].expr: 'http.req.hots' is not a rule variable "
                           "(did you mean 'http.req.host'?); variables: http.req.method, ")
