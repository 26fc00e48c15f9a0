"""The OTLP and S3 sinks against real backends: rotel, a recording OTLP receiver, SeaweedFS.

No kernel and no root needed: records are built in memory and go out through the real
sinks (`OtelSink`, `S3Sink`, behind `QueuedSink` where counting matters) to real
processes on 127.0.0.1 (tests/e2e/backends.py). What is asserted is what a user relies
on: every attribute arrives with its type (bytes as bytes), timestamps, scope and
resource are exact; API-key headers arrive; self-signed TLS works with
insecure_skip_verify and fails clearly without; a collector that goes away for a while
loses nothing within the retry budget, and beyond it every record is either delivered or
counted as dropped; objects land in the bucket once under their digest; wrong
credentials are a clear, counted error and never a crash.
"""
from __future__ import annotations

import hashlib
import socket
import time

import pytest

import plaintap
from plaintap import metrics
from plaintap.config.model import OtelEventStore, OtelObjectStore, S3ObjectStore
from plaintap.records.model import SCOPE_EVENTS, SCOPE_OBJECTS, Record
from plaintap.sinks.base import QueuedSink
from plaintap.sinks.otel import OtelSink
from plaintap.sinks.retry import NO_RETRY, RetryPolicy, SinkExportError
from plaintap.sinks.s3 import S3Sink

from backends import OtlpReceiver, Rotel, SeaweedFS, any_value_kind, free_ports, self_signed_cert

BUCKET = "plaintap-objects"
T0 = 1_764_000_000_123_456_789  # a fixed wall-clock time in ns


# --------------------------------------------------------------------------------------
# helpers


def counter(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(f"{name}_total", labels) or 0.0


def exported(sink: str) -> float:
    return counter("plaintap_sink_exported_records", sink=sink)


def dropped(sink: str, reason: str = "export_error") -> float:
    return counter("plaintap_sink_dropped_records", sink=sink, reason=reason)


_names = iter(range(1_000_000))


def unique(prefix: str) -> str:
    """Sink names are metric labels: one per test keeps the counters exact."""
    return f"{prefix}-{next(_names)}-{time.monotonic_ns()}"


def otel_store(cls=OtelEventStore, **cfg) -> OtelEventStore:
    return cls.model_validate({"type": "otel", **cfg})


def sample_records() -> list[Record]:
    """Every attribute type the record contract uses, plus the awkward values."""
    binary = bytes(range(256)) * 400 + b"\x00\xff\xfe"          # ~100 KiB, not UTF-8
    text_http = "GET /v1/items?q=ü HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
    return [
        Record(SCOPE_EVENTS, T0, "Connection: [egress-external via tcp] curl → api.example.com:443", {
            "event.type": "connection",
            "connection.id": "c-1",
            "connection.part": 0,
            "connection.finalized": False,
            "server.port": 443,
            "process.pid": 4242,
            "process.user.id": 0,
            "connection.bytes_sent": 2**40 + 7,
            "tls.enabled": True,
            "server.address": "api.example.com",
            "process.command_line": "curl -s https://api.example.com/ ünïcødé ✓",
        }),
        Record(SCOPE_EVENTS, T0 + 1, "HTTP GET 200 https://api.example.com/v1/items (12.4 ms)", {
            "event.type": "artifact_record",
            "http.response.status_code": 200,
            "http.duration_ms": 12.4,
            "http.request.body.size": 0,
            "url.full": "https://api.example.com/v1/items?q=%C3%BC",
        }, severity="WARN"),
        Record(SCOPE_OBJECTS, T0 + 2, "Artifact: http_request (text/plain, 52 bytes)", {
            "artifact.type": "http_request",
            "artifact.data": text_http,
            "artifact.size_bytes": len(text_http.encode()),
            "artifact.digest": "sha256:" + hashlib.sha256(text_http.encode()).hexdigest(),
        }),
        Record(SCOPE_OBJECTS, T0 + 3, "Artifact: http_response (application/octet-stream)", {
            "artifact.type": "http_response",
            "artifact.data": binary,
            "artifact.size_bytes": len(binary),
            "artifact.digest": "sha256:" + hashlib.sha256(binary).hexdigest(),
            "http.response.body.truncated": True,
        }, severity="ERROR"),
    ]


EXPECTED_KIND = {bool: "bool_value", int: "int_value", float: "double_value", str: "string_value",
                 bytes: "bytes_value"}
SEVERITY_NUMBER = {"INFO": 9, "WARN": 13, "ERROR": 17}


def assert_delivered_exactly(received, sent: list[Record], resource: dict) -> None:
    assert len(received) == len(sent)
    by_time = {log.record.time_unix_nano: log for log in received}
    for rec in sent:
        log = by_time[rec.time_ns]
        assert log.scope == rec.scope
        assert log.resource == resource
        assert log.record.body.string_value == rec.body
        assert log.record.severity_text == rec.severity
        assert log.record.severity_number == SEVERITY_NUMBER[rec.severity]
        assert log.attributes == rec.attributes
        kinds = {kv.key: any_value_kind(kv.value) for kv in log.record.attributes}
        assert kinds == {k: EXPECTED_KIND[type(v)] for k, v in rec.attributes.items()}


def expected_resource(service: str, environment: str, **extra) -> dict:
    return {
        "service.name": service,
        "service.version": plaintap.__version__,
        "deployment.environment.name": environment,
        "environment": environment,
        "host.name": socket.gethostname(),
        **extra,
    }


# --------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def receiver():
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
def rotel(receiver, tmp_path):
    collector = Rotel(tmp_path / "rotel", export_to=receiver.grpc_endpoint)
    collector.start()
    yield collector
    collector.stop()


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    fs = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    fs.start()
    fs.create_bucket(BUCKET)
    yield fs
    fs.stop()


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed_cert(tmp_path_factory.mktemp("certs"))


# --------------------------------------------------------------------------------------
# OTLP through a real collector


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_every_field_arrives_as_sent_through_rotel(protocol, rotel, receiver):
    endpoint = rotel.grpc_endpoint if protocol == "grpc" else rotel.http_url
    store = otel_store(OtelObjectStore, protocol=protocol, otel_endpoint=endpoint, service_name="svc-test",
                       environment="staging")
    sink = OtelSink(unique("otel"), store, kind="objects", resource_attrs={"plaintap.tags": "team:edge"})
    sent = sample_records()
    sink.export(sent)
    sink.shutdown()

    received = receiver.wait_for_logs(len(sent))
    assert_delivered_exactly(received, sent,
                             expected_resource("svc-test", "staging", **{"plaintap.tags": "team:edge"}))
    # the ~100 KiB non-UTF-8 body survived byte for byte
    binary = next(log for log in received if log.attributes.get("artifact.type") == "http_response")
    assert binary.attributes["artifact.data"] == sent[3].attributes["artifact.data"]


def test_http_endpoint_as_full_url_and_as_host_port(receiver):
    for endpoint in (f"{receiver.http_url}/v1/logs", f"127.0.0.1:{receiver.http_port}", receiver.http_url + "/"):
        sink = OtelSink(unique("otel"), otel_store(protocol="http", endpoint=endpoint))
        sink.export(sample_records()[:1])
        sink.shutdown()
    receiver.wait_for_logs(3)
    assert {e.path for e in receiver.exports} == {"/v1/logs"}


# --------------------------------------------------------------------------------------
# headers (API keys). rotel does not forward client metadata, so these go straight to the
# recording receiver, which plays a vendor endpoint that demands its key.


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_api_key_headers_from_env_arrive(protocol, monkeypatch):
    monkeypatch.setenv("PLAINTAP_TEST_API_KEY", "s3cr3t-key")
    with OtlpReceiver(require_header=("x-api-key", "s3cr3t-key")) as r:
        endpoint = r.grpc_endpoint if protocol == "grpc" else r.http_url
        headers = {"X-Api-Key": {"type": "env", "value": "PLAINTAP_TEST_API_KEY"},
                   "Authorization": {"type": "text", "value": "Basic dXNlcjpwYXNz"}}
        sink = OtelSink(unique("otel"), otel_store(protocol=protocol, endpoint=endpoint, headers=headers))
        sink.export(sample_records()[:2])
        sink.shutdown()
        r.wait_for_logs(2)
        got = r.exports[0].headers
        assert got["x-api-key"] == "s3cr3t-key"
        assert got["authorization"] == "Basic dXNlcjpwYXNz"

        # Without the key: refused at once (retrying cannot help), with a message that says why.
        name = unique("otel")
        queued = QueuedSink(OtelSink(name, otel_store(protocol=protocol, endpoint=endpoint)))
        queued.start()
        started = time.monotonic()
        queued.export(sample_records()[:2])
        queued.force_flush(10)
        queued.shutdown()
        assert time.monotonic() - started < 5
        assert dropped(name) == 2 and exported(name) == 0


# --------------------------------------------------------------------------------------
# TLS with a self-signed certificate


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_self_signed_tls_with_and_without_insecure_skip_verify(protocol, cert, caplog):
    with OtlpReceiver(tls=cert) as r:
        endpoint = r.grpc_endpoint if protocol == "grpc" else r.http_url
        # The endpoint is written as "localhost" while the receiver is reached on 127.0.0.1:
        # both are in the certificate, so only trust is at stake.
        endpoint = endpoint.replace("127.0.0.1", "localhost")
        ok = OtelSink(unique("otel"), otel_store(protocol=protocol, endpoint=endpoint,
                                                 tls={"enabled": True, "insecure_skip_verify": True}))
        sent = sample_records()
        ok.export(sent)
        ok.shutdown()
        assert_delivered_exactly(r.wait_for_logs(len(sent)), sent, expected_resource("plaintap", "production"))

        strict = OtelSink(unique("otel"), otel_store(protocol=protocol, endpoint=endpoint, tls={"enabled": True}))
        with pytest.raises(SinkExportError) as err:
            strict.export(sent)
        strict.shutdown()
        host_port = endpoint.split("://")[-1]
        assert str(err.value) == (
            f"TLS handshake with {host_port} failed: the collector presented a certificate that is not trusted; "
            "set tls.insecure_skip_verify: true for self-signed certificates")

        # Behind the queue, as the pipeline runs it: counted and logged once, never raised.
        name = unique("otel")
        queued = QueuedSink(OtelSink(name, otel_store(protocol=protocol, endpoint=endpoint, tls={"enabled": True})))
        queued.start()
        queued.export(sent)
        queued.force_flush(10)
        queued.shutdown()
        assert dropped(name) == len(sent) and exported(name) == 0
        assert any("not trusted" in rec.getMessage() for rec in caplog.records)
        assert r.log_count() == len(sent)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ca_file_and_client_certificate(protocol, cert, tmp_path):
    """tls.ca_file trusts the collector's own CA without insecure_skip_verify;
    tls.cert_file/key_file present a client certificate the collector requires (mTLS)."""
    client = self_signed_cert(tmp_path / "client", "plaintap-agent")
    with OtlpReceiver(tls=cert, client_ca=client) as r:
        endpoint = (r.grpc_endpoint if protocol == "grpc" else r.http_url).replace("127.0.0.1", "localhost")
        tls = {"enabled": True, "ca_file": str(cert.cert), "cert_file": str(client.cert), "key_file": str(client.key)}
        ok = OtelSink(unique("otel"), otel_store(protocol=protocol, endpoint=endpoint, tls=tls))
        sent = sample_records()
        ok.export(sent)
        ok.shutdown()
        assert_delivered_exactly(r.wait_for_logs(len(sent)), sent, expected_resource("plaintap", "production"))

        without_client_cert = OtelSink(unique("otel"), otel_store(
            protocol=protocol, endpoint=endpoint, tls={"enabled": True, "ca_file": str(cert.cert)}),
            retry=NO_RETRY)
        with pytest.raises(SinkExportError):
            without_client_cert.export(sent)
        without_client_cert.shutdown()
        assert r.log_count() == len(sent)


def test_headers_over_plaintext_are_warned_about(caplog, monkeypatch):
    monkeypatch.setenv("PT_TEST_KEY", "k")
    headers = {"x-api-key": {"type": "env", "value": "PT_TEST_KEY"}}
    for protocol, endpoint in (("grpc", "collector.example:4317"), ("http", "http://collector.example:4318")):
        caplog.clear()
        OtelSink(unique("otel"), otel_store(protocol=protocol, endpoint=endpoint, headers=headers)).shutdown()
        assert any("headers x-api-key are sent to" in rec.getMessage() and "without TLS" in rec.getMessage()
                   for rec in caplog.records), protocol
    caplog.clear()
    for quiet in ({"endpoint": "127.0.0.1:4317"}, {"endpoint": "collector.example:4317", "tls": {"enabled": True}}):
        OtelSink(unique("otel"), otel_store(protocol="grpc", headers=headers, **quiet)).shutdown()
    assert not [rec for rec in caplog.records if "without TLS" in rec.getMessage()]


def test_unreadable_ca_file_is_one_line(tmp_path):
    from plaintap.config import ConfigError
    with pytest.raises(ConfigError) as err:
        OtelSink(unique("otel"), otel_store(protocol="grpc", endpoint="localhost:4317",
                                            tls={"enabled": True, "ca_file": str(tmp_path / "missing.pem")}))
    assert str(err.value).endswith("tls.ca_file: cannot read " + str(tmp_path / "missing.pem") + ": No such file or directory")


def test_unreachable_collector_is_one_clear_line():
    (port,) = free_ports(1)
    sink = OtelSink(unique("otel"), otel_store(endpoint=f"127.0.0.1:{port}"), retry=NO_RETRY)
    with pytest.raises(SinkExportError) as err:
        sink.export(sample_records()[:1])
    sink.shutdown()
    assert str(err.value) == (f"cannot connect to the collector at 127.0.0.1:{port}: connection refused "
                              "(is it running?)")


# --------------------------------------------------------------------------------------
# collector outages


def _produce(queued: QueuedSink, seq: list[int], seconds: float, per_batch: int = 5, pause: float = 0.1) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = []
        for _ in range(per_batch):
            n = len(seq)
            seq.append(n)
            batch.append(Record(SCOPE_EVENTS, T0 + n, f"event {n}", {"event.type": "connection", "seq": n}))
        queued.export(batch)
        time.sleep(pause)


def test_collector_down_for_a_while_loses_nothing(rotel, receiver, caplog):
    """gRPC, the default 60 s budget: an 8 s outage mid-stream costs nothing."""
    name = unique("otel-outage")
    queued = QueuedSink(OtelSink(name, otel_store(endpoint=rotel.grpc_endpoint)))
    queued.start()
    seq: list[int] = []
    _produce(queued, seq, 1.0)
    rotel.stop()
    _produce(queued, seq, 8.0)
    rotel.start()
    _produce(queued, seq, 1.0)
    assert queued.force_flush(30)
    queued.shutdown()

    assert exported(name) == len(seq)
    assert dropped(name) == 0 and dropped(name, "queue_full") == 0
    # it really was down: the sink said so (once per burst) while holding the records
    assert any("connection refused (is it running?); retrying" in rec.getMessage() for rec in caplog.records)
    received = receiver.wait_for_logs(len(seq), timeout=20)
    assert sorted(log.attributes["seq"] for log in received) == seq  # each exactly once


def test_collector_down_beyond_the_budget_every_record_is_accounted(rotel, receiver):
    """HTTP, a 2 s budget, a 6 s outage: delivered + dropped == produced, exactly."""
    name = unique("otel-outage")
    sink = OtelSink(name, otel_store(protocol="http", endpoint=rotel.http_url, timeout=1),
                    retry=RetryPolicy(initial=0.2, maximum=0.5, max_elapsed=2.0))
    queued = QueuedSink(sink)
    queued.start()
    seq: list[int] = []
    _produce(queued, seq, 1.0)
    rotel.stop()
    _produce(queued, seq, 6.0)
    rotel.start()
    _produce(queued, seq, 1.5)
    assert queued.force_flush(30)
    queued.shutdown()

    delivered, lost = exported(name), dropped(name)
    assert lost > 0
    assert delivered + lost == len(seq)
    assert dropped(name, "queue_full") == 0
    received = receiver.wait_for_logs(int(delivered), timeout=20)
    time.sleep(0.5)  # nothing beyond what was counted as delivered may show up
    assert len(received) == receiver.log_count() == delivered
    assert len({log.attributes["seq"] for log in received}) == delivered


def test_shutdown_interrupts_a_retrying_export():
    (port,) = free_ports(1)
    name = unique("otel")
    queued = QueuedSink(OtelSink(name, otel_store(endpoint=f"127.0.0.1:{port}")))  # 60 s budget
    queued.start()
    queued.export(sample_records())
    time.sleep(1.0)
    started = time.monotonic()
    queued.shutdown(timeout=1)
    # the worker gives the batch up (counted as a shutdown loss) right after the retry is interrupted
    deadline = time.monotonic() + 5
    while dropped(name, "shutdown") < len(sample_records()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dropped(name, "shutdown") == len(sample_records())
    assert time.monotonic() - started < 5


# --------------------------------------------------------------------------------------
# S3 (SeaweedFS)


def s3_store(fs: SeaweedFS, **overrides) -> S3ObjectStore:
    cfg = {
        "type": "s3",
        "endpoint": f"http://{fs.endpoint}",
        "bucket": BUCKET,
        "access_key": {"type": "env", "value": "PLAINTAP_TEST_S3_KEY"},
        "secret_key": {"type": "text", "value": fs.SECRET_KEY},
    }
    cfg.update(overrides)
    return S3ObjectStore.model_validate(cfg)


def object_record(data: str | bytes, content_type: str, n: int) -> Record:
    raw = data.encode() if isinstance(data, str) else data
    return Record(SCOPE_OBJECTS, T0 + n, "Artifact", {
        "artifact.type": "http_response",
        "artifact.data": data,
        "artifact.content_type": content_type,
        "artifact.size_bytes": len(raw),
        "artifact.digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
    })


def test_s3_objects_land_once_under_their_digest(seaweed, monkeypatch):
    monkeypatch.setenv("PLAINTAP_TEST_S3_KEY", seaweed.ACCESS_KEY)
    salt = str(time.monotonic_ns())
    text = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{{\"salt\": \"{salt}\", \"ü\": 1}}"
    binary = salt.encode() + bytes(range(256)) * 1000
    recs = [object_record(text, "application/json", 0), object_record(binary, "application/octet-stream", 1),
            object_record(text, "application/json", 2)]
    digests = sorted({r.attributes["artifact.digest"] for r in recs})
    before = set(seaweed.keys(BUCKET))

    # endpoint written with http:// (a qtap crash); access_url filled for the events
    store = s3_store(seaweed, access_url="{{SCHEME}}://{{ENDPOINT}}/{{BUCKET}}/{{DIGEST}}")
    name = unique("s3")
    sink = S3Sink(name, store)
    queued = QueuedSink(sink)
    queued.start()
    queued.export(recs)
    queued.export(recs[:1])  # again, later: known, not uploaded
    assert queued.force_flush(20)
    queued.shutdown()

    assert exported(name) == 4 and dropped(name) == 0
    assert sink.stats["uploaded"] == 2
    assert set(seaweed.keys(BUCKET)) - before == set(digests)
    assert seaweed.get(BUCKET, recs[0].attributes["artifact.digest"]) == (text.encode(), "application/json")
    assert seaweed.get(BUCKET, recs[1].attributes["artifact.digest"]) == (binary, "application/octet-stream")
    digest = recs[1].attributes["artifact.digest"]
    assert sink.url_for(digest) == f"http://{seaweed.endpoint}/{BUCKET}/{digest}"

    # A new agent (empty memory) finds the objects already there and uploads nothing.
    again = S3Sink(unique("s3"), s3_store(seaweed, endpoint=seaweed.endpoint, insecure=True))
    again.export(recs)
    assert again.stats["uploaded"] == 0 and again.stats["already_stored"] == 2
    assert again.url_for(digest) == f"s3://{BUCKET}/{digest}"


@pytest.mark.parametrize("problem, message", [
    ({"secret_key": {"type": "text", "value": "wrong-secret"}}, "rejected the request signature"),
    ({"access_key": {"type": "text", "value": "no-such-key"}}, "does not know the access key"),
    ({"bucket": "no-such-bucket"}, "bucket 'no-such-bucket' does not exist"),
])
def test_s3_wrong_credentials_or_bucket_is_a_clear_counted_error(problem, message, seaweed, monkeypatch, caplog):
    monkeypatch.setenv("PLAINTAP_TEST_S3_KEY", seaweed.ACCESS_KEY)
    name = unique("s3")
    recs = [object_record(f"payload {time.monotonic_ns()} {i}", "text/plain", i) for i in range(3)]
    sink = S3Sink(name, s3_store(seaweed, **problem))
    with pytest.raises(SinkExportError) as err:
        sink.export(recs)
    assert message in str(err.value)

    queued = QueuedSink(sink)
    queued.start()
    started = time.monotonic()
    queued.export(recs)
    queued.export(recs)
    assert queued.force_flush(10)
    queued.shutdown()
    assert time.monotonic() - started < 5  # not retried: retrying cannot fix it
    assert dropped(name) == 6 and exported(name) == 0
    assert any(message in rec.getMessage() for rec in caplog.records)


def test_s3_a_large_batch_is_stored_whole(seaweed, monkeypatch):
    """Many distinct objects in one batch go up in parallel; every one lands, intact."""
    monkeypatch.setenv("PLAINTAP_TEST_S3_KEY", seaweed.ACCESS_KEY)
    salt = time.monotonic_ns()
    recs = [object_record(f"object {salt} {i} ".encode() * (50 + i), "text/plain", i) for i in range(40)]
    name = unique("s3")
    sink = S3Sink(name, s3_store(seaweed))
    queued = QueuedSink(sink)
    queued.start()
    queued.export(recs)
    assert queued.force_flush(30)
    queued.shutdown()
    assert exported(name) == 40 and sink.stats["uploaded"] == 40
    keys = set(seaweed.keys(BUCKET))
    for rec in recs[::7]:
        assert rec.attributes["artifact.digest"] in keys
        assert seaweed.get(BUCKET, rec.attributes["artifact.digest"])[0] == rec.attributes["artifact.data"]
    assert {r.attributes["artifact.digest"] for r in recs} <= keys
