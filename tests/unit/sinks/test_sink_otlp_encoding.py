"""Records → OTLP, the pure half of the otel sink, and its endpoint/error helpers.

The golden file pins the exact `ExportLogsServiceRequest` (as OTLP/JSON) for fixed
records, resource and observed time: attribute types (bytes stay bytesValue, ints stay
intValue), scopes grouped by `Record.scope`, severity, body, timestamps. Regenerate with
PLAINTAP_UPDATE_GOLDEN=1 after an intended change, and read the diff.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import grpc
import pytest

import plaintap
import requests
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry._logs import LogRecord
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from plaintap.config.errors import ConfigError
from plaintap.config.model import OtelEventStore
from plaintap.records.model import SCOPE_EVENTS, SCOPE_OBJECTS, Record
from plaintap.sinks.otel import (
    OtelSink,
    approx_size,
    classify_grpc_failure,
    classify_http_failure,
    encode_request,
    grpc_target,
    http_logs_url,
    otlp_attributes,
    otlp_value,
    request_json,
    resource_attributes,
    severity_number,
    split_batch,
)
from plaintap.sinks.retry import SinkExportError

GOLDEN = Path(__file__).parent / "golden" / "otlp_request.json"
T0 = 1_764_000_000_000_000_001
OBSERVED = 1_764_000_001_000_000_000
RESOURCE = {"service.name": "plaintap", "service.version": "0.1.0",
            "deployment.environment.name": "production", "environment": "production", "host.name": "host-1"}


def records() -> list[Record]:
    return [
        Record(SCOPE_EVENTS, T0, "Connection: [egress-external via tcp] curl → example.com:443", {
            "event.type": "connection", "connection.id": "c1", "server.port": 443, "tls.enabled": True,
            "http.duration_ms": 1.5, "container.id": None}),
        Record(SCOPE_OBJECTS, T0 + 1, "Artifact: http_response", {
            "artifact.data": b"\x00\x01\xfe\xff", "artifact.size_bytes": 4}, severity="ERROR"),
        Record(SCOPE_EVENTS, T0 + 2, "second event", {"event.type": "artifact_record"}, severity="WARN"),
    ]


def scope_logs(request: ExportLogsServiceRequest) -> dict[str, list]:
    (rl,) = request.resource_logs
    return {sl.scope.name: list(sl.log_records) for sl in rl.scope_logs}


def test_request_matches_golden_file():
    text = json.dumps(json.loads(request_json(encode_request(records(), RESOURCE, OBSERVED))), indent=1,
                      ensure_ascii=False, sort_keys=True) + "\n"
    # the scope carries plaintap's version; keep the golden file independent of releases
    text = text.replace(f'"version": "{plaintap.__version__}"', '"version": "<plaintap version>"')
    if os.environ.get("PLAINTAP_UPDATE_GOLDEN"):
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


def sdk_encoding(batch: list[Record], observed_ns: int) -> ExportLogsServiceRequest:
    """The same batch through the OpenTelemetry SDK's own encoder (the reference)."""
    resource = Resource(RESOURCE)
    readable = [
        ReadableLogRecord(
            log_record=LogRecord(timestamp=r.time_ns, observed_timestamp=observed_ns, severity_text=r.severity,
                                 severity_number=severity_number(r.severity), body=r.body,
                                 attributes=otlp_attributes(r.attributes)),
            resource=resource,
            instrumentation_scope=InstrumentationScope(r.scope, plaintap.__version__),
        )
        for r in batch
    ]
    return encode_logs(readable)


def awkward_records() -> list[Record]:
    return records() + [
        Record(SCOPE_OBJECTS, T0 + 9, "b", {
            "arr": [1, "a", 2.5, True, b"\x01"], "map": {"k": 1, "n": None, "m": {"x": "y"}},
            "big": 2**64, "neg": -(2**63), "ba": bytearray(b"\x00\xff"), "path": Path("/bin/sh"),
            "empty": "", "zero": 0, "nan-ish": float("inf")}),
    ]


def test_our_encoder_matches_the_sdk_encoder():
    ours = encode_request(awkward_records(), RESOURCE, OBSERVED)
    reference = sdk_encoding(awkward_records(), OBSERVED)
    assert ours == reference
    assert ours.SerializeToString(deterministic=True) == reference.SerializeToString(deterministic=True)


def test_undecodable_text_is_replaced_not_an_error():
    rec = Record(SCOPE_EVENTS, T0, "bad \udcff body", {"k": "x\udcffy"})
    logs = scope_logs(encode_request([rec], RESOURCE, OBSERVED))
    (lr,) = logs[SCOPE_EVENTS]
    assert lr.body.string_value == "bad ? body"
    assert lr.attributes[0].value.string_value == "x?y"


def test_scopes_group_records_and_keep_their_order():
    logs = scope_logs(encode_request(records(), RESOURCE, OBSERVED))
    assert [lr.body.string_value for lr in logs[SCOPE_EVENTS]] == [records()[0].body, "second event"]
    assert [lr.time_unix_nano for lr in logs[SCOPE_OBJECTS]] == [T0 + 1]
    assert all(lr.observed_time_unix_nano == OBSERVED for lrs in logs.values() for lr in lrs)


def test_attribute_kinds_on_the_wire():
    logs = scope_logs(encode_request(records(), RESOURCE, OBSERVED))
    kinds = {kv.key: kv.value.WhichOneof("value") for kv in logs[SCOPE_EVENTS][0].attributes}
    assert kinds == {"event.type": "string_value", "connection.id": "string_value", "server.port": "int_value",
                     "tls.enabled": "bool_value", "http.duration_ms": "double_value"}  # None left out
    data = {kv.key: kv.value for kv in logs[SCOPE_OBJECTS][0].attributes}["artifact.data"]
    assert data.WhichOneof("value") == "bytes_value" and data.bytes_value == b"\x00\x01\xfe\xff"


@pytest.mark.parametrize("value, expected", [
    (b"ab", b"ab"),
    (bytearray(b"\x00\xff"), b"\x00\xff"),        # not an array of ints
    (memoryview(b"xy"), b"xy"),
    (True, True),
    (7, 7),
    (2**63, str(2**63)),                           # beyond int64: text, not an encoder error
    (-(2**63), -(2**63)),
    (1.25, 1.25),
    ("ü", "ü"),
    ((1, "a"), [1, "a"]),
    ({"k": None, "j": 1}, {"j": 1}),
    (Path("/usr/bin/curl"), "/usr/bin/curl"),
    (None, None),
])
def test_otlp_value(value, expected):
    got = otlp_value(value)
    assert got == expected and type(got) is type(expected)


def test_otlp_attributes_drops_none_and_keeps_types():
    assert otlp_attributes({"a": None, "b": 1, "c": bytearray(b"z")}) == {"b": 1, "c": b"z"}


def test_severity_numbers():
    assert [severity_number(s).value for s in ("TRACE", "debug", "INFO", "WARN", "warning", "ERROR", "FATAL",
                                               "odd")] == [1, 5, 9, 13, 13, 17, 21, 0]


def test_resource_attributes_from_store():
    store = OtelEventStore.model_validate({"type": "otel", "service_name": "edge", "environment": "staging"})
    attrs = resource_attributes(store, {"k8s.cluster.name": "c1"}, host_name="node-7")
    assert attrs == {"service.name": "edge", "service.version": plaintap.__version__,
                     "deployment.environment.name": "staging",
                     "environment": "staging", "host.name": "node-7", "k8s.cluster.name": "c1"}
    default = resource_attributes(OtelEventStore.model_validate({"type": "otel"}), host_name="h")
    assert default["service.name"] == "plaintap" and default["environment"] == "production"


def test_split_batch_by_size():
    big = [Record(SCOPE_OBJECTS, i, "b", {"artifact.data": b"x" * 1000}) for i in range(10)]
    chunks = split_batch(big, 3 * approx_size(big[0]))
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [r for c in chunks for r in c] == big
    assert [len(c) for c in split_batch(big[:1], 10)] == [1]      # one record too big still goes, alone
    assert split_batch([], 10) == []


@pytest.mark.parametrize("endpoint, tls, expected", [
    ("localhost:4317", False, ("localhost:4317", False)),
    ("localhost:4317", True, ("localhost:4317", True)),
    ("collector", False, ("collector:4317", False)),
    ("http://collector:4317", False, ("collector:4317", False)),
    ("https://api.honeycomb.io", False, ("api.honeycomb.io:443", True)),
    ("https://api.honeycomb.io:443/", False, ("api.honeycomb.io:443", True)),
    ("[::1]:4317", False, ("[::1]:4317", False)),
    ("::1", False, ("[::1]:4317", False)),
])
def test_grpc_target(endpoint, tls, expected):
    assert grpc_target(endpoint, tls) == expected


@pytest.mark.parametrize("endpoint, tls, expected", [
    ("localhost:4318", False, "http://localhost:4318/v1/logs"),
    ("localhost", False, "http://localhost:4318/v1/logs"),
    ("localhost:4318", True, "https://localhost:4318/v1/logs"),
    ("http://c:4318", False, "http://c:4318/v1/logs"),
    ("http://c:4318/", True, "https://c:4318/v1/logs"),
    ("https://api.axiom.co/v1/logs", False, "https://api.axiom.co/v1/logs"),
    ("https://otlp-gateway.grafana.net/otlp", False, "https://otlp-gateway.grafana.net/otlp/v1/logs"),
    ("https://in.example.com/v1/logs?tenant=a", False, "https://in.example.com/v1/logs?tenant=a"),
    ("[::1]:4318", False, "http://[::1]:4318/v1/logs"),
])
def test_http_logs_url(endpoint, tls, expected):
    assert http_logs_url(endpoint, tls) == expected


@pytest.mark.parametrize("code, details, tls, retryable, starts", [
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:4317: "
     "Failed to connect to remote host: Connection refused", False, True,
     "cannot connect to the collector at localhost:4317: connection refused (is it running?)"),
    (grpc.StatusCode.UNAVAILABLE, "last error: UNKNOWN: ipv4:127.0.0.1:4317: Tls handshake failed "
     "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
     "CERTIFICATE_VERIFY_FAILED: self signed certificate", True, False,
     "TLS handshake with localhost:4317 failed: the collector presented a certificate that is not trusted; "
     "set tls.insecure_skip_verify: true for self-signed certificates"),
    (grpc.StatusCode.UNAVAILABLE, "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:"
     "SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER", True, False,
     "TLS handshake with localhost:4317 failed: the endpoint does not speak TLS"),
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNAVAILABLE: "
     "ipv4:127.0.0.1:4317: Socket closed", False, True,
     "the collector at localhost:4317 closed the connection during setup (if it expects TLS"),
    (grpc.StatusCode.UNAVAILABLE, "Peer name localhost is not in peer certificate", True, False,
     "TLS handshake with localhost:4317 failed: the collector's certificate is not valid for this host name"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", False, True,
     "export to localhost:4317 timed out after 10s"),
    (grpc.StatusCode.UNAUTHENTICATED, "missing x-api-key", False, False,
     "the collector at localhost:4317 rejected the request (UNAUTHENTICATED: missing x-api-key); check"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (5 vs. 4)", False, False,
     "the collector at localhost:4317 refused a request as too large"),
    (grpc.StatusCode.INVALID_ARGUMENT, "bad", False, False, "export to localhost:4317 failed (INVALID_ARGUMENT: bad)"),
])
def test_classify_grpc_failure(code, details, tls, retryable, starts):
    failure = classify_grpc_failure("localhost:4317", code, details, tls, 10.0)
    assert failure.message.startswith(starts)
    assert failure.retryable is retryable
    assert "\n" not in failure.message


def _response(status: int, text: str = "") -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = text.encode()
    r.reason = "reason"
    return r


@pytest.mark.parametrize("outcome, retryable, starts", [
    (_response(401, "bad key"), False,
     "the collector at http://c:4318/v1/logs rejected the request (HTTP 401: bad key)"),
    (_response(404), False, "no OTLP logs endpoint at http://c:4318/v1/logs (HTTP 404)"),
    (_response(503, "busy"), True, "the collector at http://c:4318/v1/logs answered HTTP 503: busy"),
    (_response(429), True, "the collector at http://c:4318/v1/logs answered HTTP 429"),
    (_response(400, "bad"), False, "the collector at http://c:4318/v1/logs answered HTTP 400: bad"),
    (requests.exceptions.ConnectionError("HTTPConnectionPool(host='c', port=4318): Max retries exceeded "
                                         "(Caused by NewConnectionError(': Failed to establish a new connection: "
                                         "[Errno 111] Connection refused'))"),
     True, "cannot connect to the collector at c:4318: connection refused (is it running?)"),
    (requests.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed "
                                  "certificate (_ssl.c:1006)"), False,
     "TLS handshake with c:4318 failed: the collector presented a certificate that is not trusted"),
    (requests.exceptions.ReadTimeout("read timed out"), True, "export to http://c:4318/v1/logs timed out after 10s"),
    (None, True, "export to http://c:4318/v1/logs failed (no details from the exporter)"),
])
def test_classify_http_failure(outcome, retryable, starts):
    failure = classify_http_failure("http://c:4318/v1/logs", outcome, 10.0)
    assert failure.message.startswith(starts)
    assert failure.retryable is retryable


def test_stdout_protocol_prints_one_otlp_json_line_per_batch():
    out = io.StringIO()
    sink = OtelSink("events-otel", OtelEventStore.model_validate({"type": "otel", "protocol": "stdout"}),
                    resource_attrs={"host.name": "h"}, stream=out)
    sink.export(records())
    sink.export(records()[:1])
    sink.shutdown()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    request = json_format.Parse(lines[0], ExportLogsServiceRequest())
    logs = scope_logs(request)
    data = {kv.key: kv.value for kv in logs[SCOPE_OBJECTS][0].attributes}["artifact.data"]
    assert data.bytes_value == b"\x00\x01\xfe\xff"
    assert json.loads(lines[0])["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["severityNumber"] == 9


def test_shutdown_is_idempotent_and_safe_before_use_and_export_after_it_raises():
    sink = OtelSink("e", OtelEventStore.model_validate({"type": "otel", "endpoint": "127.0.0.1:9"}))
    assert sink.force_flush() is True
    sink.shutdown()
    sink.shutdown()
    with pytest.raises(SinkExportError, match="shut down") as err:
        sink.export(records())
    assert err.value.failed == 3


def test_header_from_an_unset_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("PLAINTAP_NO_SUCH_VAR", raising=False)
    store = OtelEventStore.model_validate({"type": "otel", "headers": {
        "x-api-key": {"type": "env", "value": "PLAINTAP_NO_SUCH_VAR"}}})
    with pytest.raises(ConfigError, match="PLAINTAP_NO_SUCH_VAR"):
        OtelSink("events-otel", store)


@pytest.mark.parametrize("cfg, expected", [
    ({"endpoint": "collector:4317"}, "otel://collector:4317/sha256:ab"),
    ({"protocol": "http", "endpoint": "https://otlp.example.com/v1/logs"}, "otel://otlp.example.com/sha256:ab"),
    ({"protocol": "stdout"}, "otel://stdout/sha256:ab"),
])
def test_url_for_objects_sent_over_otlp(cfg, expected):
    sink = OtelSink("objects-otel", OtelEventStore.model_validate({"type": "otel", **cfg}), kind="objects")
    assert sink.url_for("sha256:ab") == expected
