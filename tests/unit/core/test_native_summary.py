"""The native `artifact_record` (native/src/summary.rs) gives exactly the Python builders'
bytes: the same kernel records through `dataplane.Pipeline` with the native summary and
with every transaction on the Python path give identical JSON lines. Cases cover what
the native path builds (hosts, ports, query redaction, headers, gRPC, both ends, TLS or
not) and what it must decline (absolute-form and `*` targets, CONNECT, encoded or
non-ASCII parameter names, non-ASCII hosts)."""
from __future__ import annotations

import pytest

from plaintap import _core
from plaintap.bpf import abi
from plaintap.config import load_config_text
from plaintap.dataplane import Pipeline
from plaintap.plugins import PluginStacks
from plaintap.records.model import to_json_line
from plaintap.records.redact import Redaction

from protocols.helpers import H2, S, C, get, grpc_message  # noqa: F401

from .kernel_records import MS, StaticProcs, conn_close, conn_open, data

CONFIG = """
version: 2
services: {{event_stores: [{{type: stdout}}], object_stores: [{{type: {objects}}}]}}
stacks: {{b: {{plugins: [{{type: http_capture, config: {{level: {level}}}}}]}}}}
tap: {{direction: all, ignore_loopback: false, http: {{stack: b}}}}
"""

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

# (request bytes, response bytes or None): each on its own connection.
HTTP1 = [
    (b"GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: t/1\r\n\r\n", OK),
    (b"GET /a HTTP/1.1\r\nHost: Example.TEST:8080\r\n\r\n", OK),
    (b"GET /a HTTP/1.1\r\nHost: example.test:443\r\n\r\n", OK),
    (b"GET /a HTTP/1.1\r\nHost: example.test:80\r\n\r\n", OK),
    (b"GET /a HTTP/1.1\r\nHost: example.test:\r\n\r\n", OK),
    (b"GET /a HTTP/1.1\r\nHost: example.test:x\r\n\r\n", OK),
    (b"GET /a HTTP/1.1\r\nHost: u:p@example.test:81\r\n\r\n", OK),
    (b"GET /nohost HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
    (b"GET /v6 HTTP/1.1\r\nHost: [::1]:9000\r\n\r\n", OK),
    (b"GET /v6 HTTP/1.1\r\nHost: [::1]\r\n\r\n", OK),
    (b"GET /s?token=secret&x=1&Sig=abc&a=&token=&b HTTP/1.1\r\nHost: h.test\r\n\r\n", OK),
    (b"GET /s?%20token%20=x HTTP/1.1\r\nHost: h.test\r\n\r\n", OK),
    (b"GET /s?t%6Fken=x HTTP/1.1\r\nHost: h.test\r\n\r\n", OK),
    (b"GET /s?x=1&page=2 HTTP/1.1\r\nHost: h.test\r\n\r\n", OK),
    (b"GET /f#frag?x=1 HTTP/1.1\r\nHost: h.test\r\n\r\n", OK),
    (b"GET /f?x=1#frag&token=1 HTTP/1.1\r\nHost: h.test\r\n\r\n", OK),
    (b"GET /f? HTTP/1.1\r\nHost: h.test\r\n\r\n", OK),
    (b"GET /cafe HTTP/1.1\r\nHost: h.test\r\nUser-Agent: caf\xe9\r\n\r\n", OK),
    (b"GET /ua HTTP/1.1\r\nHost: h.test\r\nUser-Agent:\r\n\r\n", OK),
    (b"POST /p HTTP/1.1\r\nHost: h.test\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
     b"Authorization: Bearer x\r\nCookie: a=b\r\n\r\n{}",
     b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nSet-Cookie: s=1\r\n\r\n"),
    (b"GET /nobody HTTP/1.1\r\nHost: h.test\r\n\r\n", None),
    (b"HEAD /h HTTP/1.1\r\nHost: h.test\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"),
    (b"GET http://u:pw@abs.test:81/x?token=1 HTTP/1.1\r\nHost: abs.test:81\r\n\r\n", OK),
    (b"GET https://abs.test/x HTTP/1.1\r\n\r\n", OK),
    (b"OPTIONS * HTTP/1.1\r\nHost: h.test\r\n\r\n", OK),
    (b"GET /h HTTP/1.1\r\nHost: h\xe9.test\r\n\r\n", OK),
    (b"GET /big HTTP/1.1\r\nHost: h.test:123456789012345678901234\r\n\r\n", OK),
]


def _events(role: int, tls: bool) -> list[bytes]:
    """Every HTTP1 case on its own connection (kernel records), plus one HTTP/2 gRPC and
    one plain HTTP/2 connection, then closes."""
    src = abi.SRC_TLS if tls else abi.SRC_SOCKET
    client = role == abi.ROLE_CLIENT
    req_flow, resp_flow = (abi.FLOW_SEND, abi.FLOW_RECV) if client else (abi.FLOW_RECV, abi.FLOW_SEND)
    direction = abi.DIR_EGRESS_EXTERNAL if client else abi.DIR_INGRESS
    local, remote = (("10.0.0.1", 40000), ("10.0.0.2", 443 if tls else 80)) if client else \
        (("10.0.0.2", 8443), ("10.0.0.1", 40000))
    out, ts = [], 1000
    streams = [(req, resp) for req, resp in HTTP1]
    h2 = H2()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2.settings()
    grpc_req = preface + h2.headers(C, 1, get("/pkg.Svc/Call", "grpc.test:50051",
                                             method="POST", extra=[("content-type", "application/grpc"),
                                                                   ("user-agent", "grpc-x/1")])) + \
        h2.data(1, grpc_message(b"hi"), end_stream=True)
    grpc_resp = h2.settings() + h2.headers(S, 1, [(":status", "200"), ("content-type", "application/grpc")]) + \
        h2.data(1, grpc_message(b"yo")) + h2.headers(S, 1, [("grpc-status", "5")], end_stream=True)
    streams.append((grpc_req, grpc_resp))
    h2b = H2()
    plain_req = preface + h2b.headers(C, 1, get("/x?api_key=1&y=2", "H2.test"), end_stream=True)
    plain_resp = h2b.settings() + h2b.headers(S, 1, [(":status", "404")], end_stream=True)
    streams.append((plain_req, plain_resp))
    for i, (req, resp) in enumerate(streams):
        kid = 100 + i
        out.append(conn_open(kid, ts, role=role, direction=direction, local=local, remote=remote))
        out.append(data(kid, ts + 1, 0, req, flow=req_flow, source=src))
        if resp is not None:
            out.append(data(kid, ts + 2 * MS + 17, 0, resp, flow=resp_flow, source=src))
        ts += 10 * MS
    for i in range(len(streams)):
        out.append(conn_close(100 + i, ts + i))
    return out


def _lines(native: bool, events, level="summary", objects="disabled", redaction=None):
    cfg = load_config_text(CONFIG.format(level=level, objects=objects))
    stacks = PluginStacks(cfg, redaction=redaction) if redaction is not None else PluginStacks(cfg)
    p = Pipeline(stacks, lambda ns: 1_700_000_000_000_000_000 + ns, procs=StaticProcs(), run_id="t",
                 native_summary=native, object_url=(lambda d: None) if objects != "disabled" else None)
    out = p.feed(events)
    closed = p.close_all(10**12)
    lines = [to_json_line(r) for r in out.events + closed.events if r.attributes["event.type"] == "artifact_record"]
    return lines, p.stats()["native_summaries"], p.core.native_summary


@pytest.mark.parametrize("role", [abi.ROLE_CLIENT, abi.ROLE_SERVER])
@pytest.mark.parametrize("tls", [True, False])
@pytest.mark.parametrize("redaction", [None, Redaction.build(extra_headers=["User-Agent", "content-type"],
                                                             extra_query_params=["PAGE", "y"]),
                                       Redaction(enabled=False)], ids=["default", "extra", "off"])
def test_native_summary_is_byte_identical_to_python(role, tls, redaction):
    events = _events(role, tls)
    native, n_native, on = _lines(True, events, redaction=redaction)
    python, n_python, off = _lines(False, events, redaction=redaction)
    assert on and not off
    assert n_python == 0
    assert len(python) == len(HTTP1) + 2   # the two HTTP/2 ones; the no-response one too
    assert native == python
    # Most go the native way; the unusual ones (absolute-form twice, *, a non-ASCII host, a
    # huge port, and while masking is on two percent-encoded parameter names) go to Python.
    assert len(python) - n_native == (5 if redaction is not None and not redaction.enabled else 7)


def test_grpc_attributes_from_native_summary():
    lines, n, _ = _lines(True, _events(abi.ROLE_CLIENT, True))
    grpc = [line for line in lines if '"rpc.system":"grpc"' in line]
    assert len(grpc) == 1 and '"rpc.service":"pkg.Svc"' in grpc[0] and '"rpc.grpc.status_code":5' in grpc[0]
    assert n > 20


@pytest.mark.parametrize("level,objects,native", [
    ("summary", "stdout", True),      # summary stores no objects
    ("full", "disabled", True),       # no object store: the summary is the whole output
    ("full", "stdout", False),        # objects are built: Python path
    ("none", "disabled", False),
])
def test_native_summary_only_where_the_summary_is_everything(level, objects, native):
    lines_n, _, on = _lines(True, _events(abi.ROLE_CLIENT, False), level=level, objects=objects)
    lines_p, _, _ = _lines(False, _events(abi.ROLE_CLIENT, False), level=level, objects=objects)
    assert on is native
    assert lines_n == lines_p


def test_duration_rounding_matches_python():
    # Exact binary ties (multiples of 1/16 ms) included: round-half-even both ways.
    for ns in [*range(0, 200_000, 7), *(j * 62_500 for j in range(20_000)), 10**15 + 1]:
        ms = round(ns / 1e6, 3)
        assert _core.summary_duration(ns) == (ms, f"{ms:.1f}"), ns


def test_dataplane_counters_reach_metrics():
    from plaintap import metrics

    def value(name):
        return metrics.REGISTRY.get_sample_value("plaintap_dataplane_total", {"counter": name})
    before = {n: value(n) for n in metrics.DATAPLANE_COUNTERS}
    assert all(v is not None for v in before.values())   # every series is there from start
    _lines(True, _events(abi.ROLE_CLIENT, False))
    assert value("transactions") - before["transactions"] == len(HTTP1) + 2
    assert value("native_summaries") - before["native_summaries"] == len(HTTP1) + 2 - 7
    assert value("parser_failures") == before["parser_failures"]


def test_no_event_store_builds_no_summary_until_one_comes_back():
    """With no event store (and the summary the stack's whole output) the core only counts
    the transactions; a reload that brings an event store back gets the records again."""
    cfg = load_config_text(CONFIG.format(level="summary", objects="disabled"))
    p = Pipeline(PluginStacks(cfg), lambda ns: ns, procs=StaticProcs(), run_id="t", events_enabled=False)
    events = _events(abi.ROLE_CLIENT, False)
    out = p.feed(events[:len(events) // 2])
    assert out.events == [] and p.stats()["transactions"] > 0
    assert p.stats()["native_summaries"] == p.stats()["transactions"]
    p.events_enabled = True
    out = p.feed(events[len(events) // 2:])
    assert any(r.attributes["event.type"] == "artifact_record" for r in out.events)
