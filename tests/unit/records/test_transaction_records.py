"""HTTP transaction → records (records/transaction.py): golden files, types, URLs, vars."""
from __future__ import annotations

import json

import pytest

from plaintap.config import load_config_text
from plaintap.protocols.model import Message, Transaction
from plaintap.records.model import SCOPE_EVENTS, SCOPE_OBJECTS, to_json_line
from plaintap.records.transaction import (StoredObject, artifact_record, http_objects, make_transaction_id,
                                          object_digest, stored_objects, transaction_vars, url_of)

from .samples import (CSV_KEPT, EPOCH, GOLDEN, PNG, SAMPLES, T0, binary_body, check_golden, connection, grpc_call,
                      h1_json_post, no_response, truncated_body, wall_ns)


def object_url(digest: str) -> str:
    return f"s3://plaintap-objects/{digest}"


def build(name: str, level: str = "full"):
    conn, tx = SAMPLES[name]()
    tid = make_transaction_id(conn.id, 0)
    objects = http_objects(conn, tx, level, wall_ns, tid)
    record = artifact_record(conn, tx, wall_ns, tid, stored_objects(objects, object_url))
    return record, objects


@pytest.mark.parametrize("name", ["h1_json_post", "h2_get", "grpc_call", "no_response", "binary_body",
                                  "truncated_body", "ingress_get"])
def test_golden_records_and_objects(name):
    record, objects = build(name)
    check_golden(name, {
        "artifact_record": json.loads(to_json_line(record)),
        "objects": [json.loads(to_json_line(o)) for o in objects],
    })


def test_h1_post_record_attribute_types_and_values():
    record, objects = build("h1_json_post")
    a = record.attributes
    assert record.scope == SCOPE_EVENTS and record.severity == "INFO"
    assert record.time_ns == EPOCH + T0
    assert record.body == "HTTP POST 201 https://api.example.com/v1/items?dry_run=1 (12.4 ms)"
    assert a["event.type"] == "artifact_record"
    assert a["transaction.id"] == "r1c0ffee1-0" and a["connection.id"] == "r1c0ffee1"
    assert type(a["http.response.status_code"]) is int and a["http.response.status_code"] == 201
    assert type(a["http.duration_ms"]) is float and a["http.duration_ms"] == 12.4
    assert type(a["http.request.body.size"]) is int and a["http.request.body.size"] == 25
    assert type(a["http.response.body.size"]) is int and a["http.response.body.size"] == 39
    assert type(a["process.pid"]) is int and type(a["process.user.id"]) is int
    assert a["url.full"] == "https://api.example.com/v1/items?dry_run=1"
    assert (a["url.scheme"], a["url.path"], a["url.query"]) == ("https", "/v1/items", "dry_run=1")
    assert a["server.address"] == "api.example.com"
    assert a["network.protocol.version"] == "1.1"
    assert a["user_agent.original"] == "curl/8.5.0"
    assert a["http.request.content_type"] == a["http.response.content_type"] == "application/json"
    assert a["connection.direction"] == "egress-external"
    assert a["container.id"] == "f" * 64 and a["container.name"] == "shop-api"
    assert not any(k.endswith(".truncated") for k in a)
    assert not any(k.startswith(("rpc.", "client.", "network.peer", "network.local")) for k in a)
    req_obj, resp_obj = objects
    assert a["artifact.request.digest"] == req_obj.attributes["artifact.digest"]
    assert a["artifact.request.url"] == object_url(req_obj.attributes["artifact.digest"])
    assert a["artifact.response.digest"] == resp_obj.attributes["artifact.digest"]


def test_h1_post_objects():
    conn, tx = h1_json_post()
    req_obj, resp_obj = http_objects(conn, tx, "full", wall_ns, "t-1")
    data = req_obj.attributes["artifact.data"]
    assert isinstance(data, str)
    assert data == ("POST /v1/items?dry_run=1 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: curl/8.5.0\r\n"
                    "Accept: */*\r\nContent-Type: application/json\r\nContent-Length: 25\r\n\r\n"
                    '{"name":"widget","qty":2}')
    a = req_obj.attributes
    assert req_obj.scope == SCOPE_OBJECTS
    assert a["artifact.type"] == "http_request" and resp_obj.attributes["artifact.type"] == "http_response"
    assert a["artifact.size_bytes"] == len(data.encode()) and type(a["artifact.size_bytes"]) is int
    assert a["artifact.digest"] == object_digest(data.encode())
    assert a["artifact.digest"].startswith("sha256:") and len(a["artifact.digest"]) == 7 + 64
    assert req_obj.body == f"Artifact: http_request (application/json, {len(data)} bytes)"
    assert a["artifact.summary.status"] == 201 and a["artifact.summary.duration_ms"] == 12.4
    assert a["artifact.summary.process_exe"] == "/usr/bin/curl"
    assert a["artifact.summary.host"] == "api.example.com"
    assert req_obj.time_ns == EPOCH + T0 and resp_obj.time_ns == EPOCH + T0 + 12_000_000
    assert resp_obj.attributes["artifact.data"].startswith("HTTP/1.1 201 Created\r\n")


@pytest.mark.parametrize("level", ["details", "headers"])
def test_headers_levels_store_no_bodies(level):
    conn, tx = h1_json_post()
    objs = http_objects(conn, tx, level, wall_ns, "t")
    assert [o.attributes["artifact.data"] for o in objs] == [
        tx.request.render(include_body=False).decode(), tx.response.render(include_body=False).decode()]
    assert all(o.attributes["artifact.data"].endswith("\r\n\r\n") for o in objs)
    full = http_objects(conn, tx, "full", wall_ns, "t")
    assert objs[0].attributes["artifact.digest"] != full[0].attributes["artifact.digest"]


@pytest.mark.parametrize("level", ["none", "summary", "bogus"])
def test_no_objects_below_details(level):
    conn, tx = h1_json_post()
    assert http_objects(conn, tx, level, wall_ns, "t") == []


def test_record_without_stored_objects_has_no_artifact_links():
    conn, tx = h1_json_post()
    a = artifact_record(conn, tx, wall_ns, "t").attributes
    assert not any(k.startswith("artifact.") for k in a)
    # a store without URLs (stdout): linked by digest only
    b = artifact_record(conn, tx, wall_ns, "t", {"request": StoredObject("sha256:ab")}).attributes
    assert b["artifact.request.digest"] == "sha256:ab" and "artifact.request.url" not in b
    assert "artifact.response.digest" not in b


def test_h2_get():
    record, objects = build("h2_get")
    a = record.attributes
    assert a["network.protocol.version"] == "2"
    assert a["url.full"] == "https://www.example.org/index.html?lang=en"
    assert record.body == "HTTP GET 200 https://www.example.org/index.html?lang=en (31.2 ms)"
    assert a["http.duration_ms"] == 31.25
    assert a["http.request.body.size"] == 0
    req = objects[0].attributes
    assert req["artifact.data"].startswith("GET /index.html?lang=en HTTP/2\r\n:method: GET\r\n")
    assert "artifact.content_type" not in req
    assert objects[0].body == f"Artifact: http_request ({req['artifact.size_bytes']} bytes)"
    assert objects[1].attributes["artifact.data"].startswith("HTTP/2 200\r\n:status: 200\r\n")


def test_grpc_record():
    record, objects = build("grpc_call")
    a = record.attributes
    assert (a["rpc.system"], a["rpc.service"], a["rpc.method"], a["rpc.grpc.status_code"]) == \
        ("grpc", "shop.v1.Cart", "AddItem", 0)
    assert type(a["rpc.grpc.status_code"]) is int
    assert a["url.full"] == "http://cart.internal:50051/shop.v1.Cart/AddItem"
    assert a["server.address"] == "cart.internal"
    assert a["connection.direction"] == "egress-internal"
    assert "url.query" not in a


def test_response_less_request():
    conn, tx = no_response()
    objects = http_objects(conn, tx, "full", wall_ns, "t")
    record = artifact_record(conn, tx, wall_ns, "t", stored_objects(objects, object_url))
    a = record.attributes
    assert "http.response.status_code" not in a and "http.response.body.size" not in a
    assert "http.response.content_type" not in a and "artifact.response.digest" not in a
    assert record.body == "HTTP POST no response https://upload.example.com:8443/upload (30000.0 ms)"
    assert [o.attributes["artifact.type"] for o in objects] == ["http_request"]
    assert "artifact.summary.status" not in objects[0].attributes


def test_binary_body_is_bytes_and_b64_in_json():
    conn, tx = binary_body()
    _, resp_obj = http_objects(conn, tx, "full", wall_ns, "t")
    data = resp_obj.attributes["artifact.data"]
    assert isinstance(data, bytes) and data.endswith(PNG)
    assert resp_obj.attributes["artifact.digest"] == object_digest(data)
    line = json.loads(to_json_line(resp_obj))["attributes"]
    assert "artifact.data" not in line and "artifact.data_b64" in line
    assert url_of(conn, tx) == "http://198.51.100.20/logo.png"
    assert artifact_record(conn, tx, wall_ns, "t").attributes["network.protocol.version"] == "1.0"


def test_truncated_body():
    conn, tx = truncated_body()
    objects = http_objects(conn, tx, "full", wall_ns, "t")
    a = artifact_record(conn, tx, wall_ns, "t").attributes
    assert a["http.response.body.truncated"] is True
    assert "http.request.body.truncated" not in a
    assert a["http.response.body.size"] == 5_000_000
    assert objects[1].attributes["artifact.data"].endswith(CSV_KEPT.decode())


# ---- URLs -------------------------------------------------------------------------------

def _tx(target="/p?q=1", authority=None, method="GET", headers=()):
    req = Message(headers=list(headers), method=method, target=target, authority=authority)
    return Transaction(protocol="http1", version="1.1", stream_id=None, request=req, response=None,
                       start_ns=0, end_ns=0)


@pytest.mark.parametrize("conn_kw, tx_kw, url", [
    ({}, {"authority": "api.example.com"}, "https://api.example.com/p?q=1"),
    ({}, {"authority": "API.Example.com:443"}, "https://api.example.com/p?q=1"),
    ({}, {"authority": "api.example.com:8443"}, "https://api.example.com:8443/p?q=1"),
    ({"tls_enabled": False}, {"authority": "api.example.com:80"}, "http://api.example.com/p?q=1"),
    ({"tls_enabled": False}, {"authority": "api.example.com:443"}, "http://api.example.com:443/p?q=1"),
    ({}, {}, "https://api.example.com/p?q=1"),                                        # SNI
    ({"remote_port": 8443}, {}, "https://api.example.com:8443/p?q=1"),                # SNI + port
    ({"tls_sni": "", "remote_port": 8443}, {}, "https://93.184.216.34:8443/p?q=1"),  # IP
    ({"tls_sni": "", "remote_addr": "2001:db8::1"}, {}, "https://[2001:db8::1]/p?q=1"),
    ({}, {"authority": "[2001:db8::1]:8443"}, "https://[2001:db8::1]:8443/p?q=1"),
    ({"tls_enabled": False}, {"target": "http://proxy.example:3128/x?y"}, "http://proxy.example:3128/x?y"),
    ({}, {"target": "/a#frag", "authority": "h"}, "https://h/a"),
    ({}, {"target": "api.example.com:443", "method": "CONNECT"}, "https://api.example.com"),
])
def test_url_of(conn_kw, tx_kw, url):
    assert url_of(connection(**conn_kw), _tx(**tx_kw)) == url


def test_ingress_url_uses_local_end():
    c = connection(role=2, direction="ingress", tls_enabled=False, tls_sni="", local_port=8080)
    assert url_of(c, _tx()) == "http://10.0.0.2:8080/p?q=1"


def test_transaction_ids_are_deterministic():
    assert make_transaction_id("r1c0ffee1", 0) == make_transaction_id("r1c0ffee1", 0) == "r1c0ffee1-0"
    assert make_transaction_id("r1c0ffee1", 1) != make_transaction_id("r1c0ffee1", 0)


# ---- rule variables -------------------------------------------------------------------

def test_transaction_vars_values():
    conn, tx = h1_json_post()
    v = transaction_vars(conn, tx)
    assert v["http.req.method"] == "POST"
    assert v["http.req.path"] == "/v1/items" and v["http.req.query"] == "dry_run=1"
    assert v["http.req.host"] == "api.example.com"
    assert v["http.req.url"] == "https://api.example.com/v1/items?dry_run=1"
    assert v["http.req.headers.content-type"] == "application/json"
    assert v["http.req.headers.user-agent"] == "curl/8.5.0"
    assert v["http.res.status"] == 201 and v["http.res.headers.server"] == "example"
    assert v["src.process.binary"] == "curl" and v["src.process.path"] == "/usr/bin/curl"
    assert v["src.container.name"] == "shop-api"
    assert (v["dst.ip"], v["dst.port"], v["dst.domain"]) == ("93.184.216.34", 443, "api.example.com")
    assert (v["src.ip"], v["src.port"]) == ("10.0.0.2", 50000)
    assert v["tls.enabled"] is True and v["tls.sni"] == "api.example.com"
    assert v["direction"] == "egress-external" and v["protocol"] == "http1"
    assert v.get("http.req.headers.x-missing") is None and "grpc.service" not in v
    assert "http.req.headers.accept" in set(v)


def test_transaction_vars_grpc_and_missing_response():
    v = transaction_vars(*grpc_call())
    assert (v["protocol"], v["grpc.service"], v["grpc.status"]) == ("grpc", "shop.v1.Cart", 0)
    assert v["tls.enabled"] is False and v.get("tls.sni") is None
    assert v["http.req.headers.te"] == "trailers"
    nr = transaction_vars(*no_response())
    assert nr.get("http.res.status") is None and nr.get("http.res.headers.server") is None
    assert nr["http.req.host"] == "upload.example.com"


def test_repeated_headers_are_joined():
    conn = connection()
    v = transaction_vars(conn, _tx(headers=[("Accept", "a/b"), ("ACCEPT", "c/d")]))
    assert v["http.req.headers.accept"] == "a/b, c/d"


def test_vars_drive_config_rules():
    cfg = load_config_text((GOLDEN.parent / "config" / "capture-rules.yaml").read_text())
    capture = cfg.stacks["rules"].plugin("http_capture").config
    conn, tx = h1_json_post()                                   # curl POST, JSON, api. host
    assert capture.level_for(transaction_vars(conn, tx)) == "details"
    tx.response.status = 503                                     # external 5xx
    assert capture.level_for(transaction_vars(conn, tx)) == "full"
    conn, tx = grpc_call()                                       # internal, not API
    assert capture.level_for(transaction_vars(conn, tx)) == "summary"
