"""Plugin stacks: building from config, rule-driven capture levels, per-domain override,
inactive plugins, error isolation, http_metrics."""
from __future__ import annotations

import logging

import pytest

from plaintap import metrics
from plaintap.config import load_config_text
from plaintap.plugins import (PluginStack, PluginStacks, TransactionContext, build_stack, stack_for_connection,
                              stack_name_for_connection)
from plaintap.plugins.http_metrics import status_class
from plaintap.records.transaction import make_transaction_id

from records.samples import GOLDEN, SAMPLES, binary_body, connection, grpc_call, h1_json_post, no_response, wall_ns

CAPTURE = """
version: 2
stacks:
  capture:
    plugins:
      - type: http_capture
        config:
          level: summary
          rules:
            - name: never probes
              expr: http.req.path == "/healthz"
              level: none
            - name: server errors in full
              expr: http.res.status >= 500
              level: full
            - name: grpc headers
              expr: protocol == "grpc"
              level: headers
            - name: curl posts in details
              expr: src.process.binary == "curl" and http.req.method == "POST"
              level: details
            - name: everything from wget
              expr: src.process.binary == "wget"
              level: full
tap:
  http:
    stack: capture
"""


def object_url(digest: str) -> str:
    return f"otel://objects/{digest}"


def run(stack: PluginStack, conn, tx, object_url=object_url):
    ctx = TransactionContext(conn, tx, make_transaction_id(conn.id, 0), wall_ns, object_url)
    return stack.run(ctx)


@pytest.fixture
def capture_stack() -> PluginStack:
    cfg = load_config_text(CAPTURE)
    return build_stack(cfg.stacks["capture"], "capture")


def test_build_stack_keeps_every_plugin_in_order():
    cfg = load_config_text("""
stacks:
  s:
    plugins:
      - type: access_logs
      - type: report_usage
      - type: http_capture
        config: {level: full}
      - type: detect_errors
      - type: http_metrics
""")
    stack = build_stack(cfg.stacks["s"], "s")
    assert [p.name for p in stack.plugins] == ["access_logs", "report_usage", "http_capture", "detect_errors",
                                               "http_metrics"]
    assert bool(stack) and not build_stack(None)


def test_a_stack_without_plugins_is_empty():
    cfg = load_config_text("stacks:\n  quiet:\n    plugins: []\n")
    stack = build_stack(cfg.stacks["quiet"], "quiet")
    assert not stack
    assert not run(stack, *h1_json_post())


@pytest.mark.parametrize("sample, level", [
    ("ingress_get", "none"),          # /healthz
    ("h2_get", "summary"),            # default
    ("grpc_call", "details"),         # `headers` is read as details
    ("h1_json_post", "details"),      # curl POST
    ("binary_body", "full"),          # wget
    ("no_response", "details"),       # curl POST, no status: the >= 500 rule does not match
])
def test_rules_choose_the_capture_level(capture_stack, sample, level):
    conn, tx = SAMPLES[sample]()
    assert capture_stack.plugins[0].level_for(TransactionContext(conn, tx, "t", wall_ns)) == level
    out = run(capture_stack, conn, tx)
    assert out.access_log_lines == []
    if level == "none":
        assert not out
        return
    (record,) = out.events
    assert record.attributes["event.type"] == "artifact_record"
    if level == "summary":
        assert out.objects == []
        assert not any(k.startswith("artifact.") for k in record.attributes)
        return
    n = 1 if tx.response is None else 2
    assert [o.attributes["artifact.type"] for o in out.objects] == ["http_request", "http_response"][:n]
    for obj, which, msg in zip(out.objects, ("request", "response"), (tx.request, tx.response)):
        digest = obj.attributes["artifact.digest"]
        assert record.attributes[f"artifact.{which}.digest"] == digest
        assert record.attributes[f"artifact.{which}.url"] == object_url(digest)
        data = obj.attributes["artifact.data"]
        data = data.encode() if isinstance(data, str) else data
        has_body = not data.endswith(b"\r\n\r\n")
        assert has_body == (level == "full" and bool(msg.body))


def test_server_error_rule_gives_full(capture_stack):
    conn, tx = h1_json_post()
    tx.response.status = 502
    out = run(capture_stack, conn, tx)
    assert out.objects[0].attributes["artifact.data"].endswith('{"name":"widget","qty":2}')


def test_no_object_store_means_no_objects_and_no_links(capture_stack):
    out = run(capture_stack, *binary_body(), object_url=None)
    assert out.objects == [] and len(out.events) == 1
    assert not any(k.startswith("artifact.") for k in out.events[0].attributes)


def test_store_without_urls_links_by_digest(capture_stack):
    out = run(capture_stack, *binary_body(), object_url=lambda digest: None)
    a = out.events[0].attributes
    assert a["artifact.response.digest"] == out.objects[1].attributes["artifact.digest"]
    assert "artifact.response.url" not in a


def test_level_none_default_produces_nothing():
    cfg = load_config_text("stacks:\n  s:\n    plugins:\n      - type: http_capture\n")
    assert not run(build_stack(cfg.stacks["s"]), *h1_json_post())


# ---- per-domain stack override ----------------------------------------------------------

def test_stack_for_connection_uses_tap_endpoints():
    cfg = load_config_text((GOLDEN.parent / "config" / "capture-rules.yaml").read_text())
    assert stack_name_for_connection(cfg, connection()) == "rules"
    assert stack_for_connection(cfg, connection()) is cfg.stacks["rules"]
    tele = connection(domain="Telemetry.Example.com.")
    assert stack_name_for_connection(cfg, tele) == "quiet"
    assert stack_for_connection(cfg, tele) is cfg.stacks["quiet"]
    meta = connection(domain="metadata.internal")
    assert stack_name_for_connection(cfg, meta) == "none" and stack_for_connection(cfg, meta) is None
    # domain unknown (IP only): the SNI, then the request's host decide
    by_sni = connection(domain="", tls_sni="telemetry.example.com")
    assert stack_name_for_connection(cfg, by_sni) == "quiet"
    by_host = connection(domain="169.254.169.254", tls_sni="")
    assert stack_name_for_connection(cfg, by_host) == "rules"
    assert stack_name_for_connection(cfg, by_host, host="metadata.internal") == "none"


def test_plugin_stacks_pick_and_run_per_transaction():
    cfg = load_config_text((GOLDEN.parent / "config" / "capture-rules.yaml").read_text())
    stacks = PluginStacks(cfg)
    assert stacks.active
    assert [p.name for p in stacks.for_connection(connection()).plugins] == ["http_capture", "access_logs"]
    assert [p.name for p in stacks.for_connection(connection(domain="telemetry.example.com")).plugins] == [
        "report_usage", "detect_errors"]
    assert not stacks.for_connection(connection(domain="metadata.internal"))
    conn, tx = h1_json_post()
    out = stacks.handle(conn, tx, "t-0", wall_ns, object_url)
    assert len(out.events) == 1 and len(out.objects) == 2          # details by rule
    assert out.access_log_lines == ["■ curl → POST https://api.example.com/v1/items?dry_run=1 201 Created (12.4 ms)"]
    conn.domain = "telemetry.example.com"        # the quiet stack: a usage event, no rule fires
    quiet = stacks.handle(conn, tx, "t-1", wall_ns, object_url)
    assert [r.attributes["event.type"] for r in quiet.events] == ["request"] and not quiet.objects
    assert not quiet.access_log_lines


def test_plugin_stacks_inactive_when_no_selectable_stack_has_plugins():
    cfg = load_config_text("""
stacks:
  quiet:
    plugins: []
  loud:
    plugins: [{type: access_logs}]
tap:
  http: {stack: quiet}
""")
    assert not PluginStacks(cfg).active
    assert PluginStacks(load_config_text((GOLDEN.parent / "config" / "qtap-default.yaml").read_text())).active


# ---- robustness and metrics -------------------------------------------------------------

class Boom:
    name = "boom"

    def on_transaction(self, ctx):
        raise RuntimeError("bug")


class Note:
    name = "note"

    def on_transaction(self, ctx):
        ctx.out.access_log_lines.append("ok")


def test_a_failing_plugin_does_not_stop_the_others(caplog):
    before = metrics.REGISTRY.get_sample_value("plaintap_plugin_errors_total", {"plugin": "boom"}) or 0
    stack = PluginStack("s", (Boom(), Note()))
    with caplog.at_level(logging.ERROR, logger="plaintap.plugins"):
        assert run(stack, *h1_json_post()).access_log_lines == ["ok"]
        assert run(stack, *h1_json_post()).access_log_lines == ["ok"]
    assert len([r for r in caplog.records if "boom" in r.getMessage()]) == 1
    assert metrics.REGISTRY.get_sample_value("plaintap_plugin_errors_total", {"plugin": "boom"}) == before + 2


def test_http_metrics_counts_by_status_class():
    cfg = load_config_text("stacks:\n  m:\n    plugins:\n      - type: http_metrics\n")
    stack = build_stack(cfg.stacks["m"])

    def count(protocol, direction, cls):
        return metrics.REGISTRY.get_sample_value(
            "plaintap_http_transactions_total",
            {"protocol": protocol, "direction": direction, "status_class": cls}) or 0

    before = (count("http1", "egress-external", "2xx"), count("http1", "egress-external", "none"),
              count("grpc", "egress-internal", "2xx"))
    assert not run(stack, *h1_json_post())           # metrics only: no records, no lines
    run(stack, *no_response())
    run(stack, *grpc_call())
    assert (count("http1", "egress-external", "2xx"), count("http1", "egress-external", "none"),
            count("grpc", "egress-internal", "2xx")) == (before[0] + 1, before[1] + 1, before[2] + 1)
    conn, tx = h1_json_post()
    tx.response.status = 999
    assert status_class(tx) == "none"


def test_http_metrics_with_qtaps_label_set():
    cfg = load_config_text("stacks:\n  m:\n    plugins:\n      - type: http_metrics\n")
    stack = build_stack(cfg.stacks["m"])
    labels = {"method": "POST", "host": "api.example.com", "status_code": "201", "protocol": "http1"}

    def value(name, **extra):
        return metrics.REGISTRY.get_sample_value(name, {**labels, **extra}) or 0

    before = (value("plaintap_http_requests_total"), value("plaintap_http_responses_total"),
              value("plaintap_http_responses_size_bytes_sum"), value("plaintap_http_requests_duration_ms_count"))
    run(stack, *h1_json_post())
    conn, tx = h1_json_post()
    assert (value("plaintap_http_requests_total"), value("plaintap_http_responses_total"),
            value("plaintap_http_responses_size_bytes_sum"), value("plaintap_http_requests_duration_ms_count")) == (
        before[0] + 1, before[1] + 1, before[2] + tx.response.body_size, before[3] + 1)
    assert metrics.REGISTRY.get_sample_value("plaintap_http_duration_ms_count") >= 1



def test_http_metrics_hosts_are_bounded(monkeypatch):
    from plaintap.plugins import http_metrics
    monkeypatch.setattr(http_metrics, "MAX_HOSTS", 2)
    monkeypatch.setattr(http_metrics, "_hosts", set())
    assert [http_metrics._host_label(h) for h in ("a", "b", "c", "a")] == ["a", "b", "other", "a"]


def test_http_dashboard_queries_name_registered_metrics():
    import json
    import re
    from plaintap.plugins import http_metrics  # noqa: F401  (registers the families)
    dash = json.loads((GOLDEN.parents[1] / ".." / "examples" / "monitoring" / "grafana-http.json").resolve().read_text())
    names = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"\bplaintap_[a-z_]+\b", t["expr"])}
    registered = set()
    for family in metrics.REGISTRY.collect():
        registered |= {family.name, family.name + "_total", family.name + "_bucket", family.name + "_sum",
                       family.name + "_count"}
    assert names and names <= registered, names - registered
