"""The `otel` event/object store: records as OTLP logs over gRPC, HTTP, or printed on stdout.

What goes out is exactly the `Record` (RECORDS.md): timestamp = `Record.time_ns`,
severity, body, the attributes with their types (bytes stay OTLP `bytesValue`, so
`artifact.data` that is not UTF-8 arrives intact), an instrumentation scope named
`Record.scope` (`plaintap.events` / `plaintap.objects`), and one resource per sink:
`service.name` (store `service_name`), `service.version`, `deployment.environment.name`
and `environment` (store `environment`), `host.name`.

How: the pure half (`encode_request`, the endpoint helpers) builds the OTLP
`ExportLogsServiceRequest` for a batch directly with the generated protobuf classes
(opentelemetry-proto); the sink hands it to the SDK's own OTLP log exporters
(`opentelemetry.exporter.otlp.proto.{grpc,http}._log_exporter.OTLPLogExporter`), which
own the transport: channel/session, TLS, headers, compression, throttling. Batching and
queueing already happen in `QueuedSink`, so no `LoggerProvider`/`BatchLogRecordProcessor`
sits in between. Why not the SDK's encoder: it costs ~43 µs per 18-attribute record here
(it builds every message twice, through keyword constructors), ours ~11 µs (both with
serialisation), and the agent's whole budget is ~50 µs per transaction; a unit test
checks that both produce the same message. The exporters are subclassed only at their
encoding step: the gRPC one through the `_translate_data` hook its base class defines for
that, the HTTP one by an `export` that serialises our request and sends it with the
exporter's own client.

Failures. The exporters only answer SUCCESS/FAILURE and log why; inside our export call
their log lines are captured (not printed, see `retry.ThreadCapture`) and, for HTTP, the
requests session we hand them records the last exception/response. From that the sink
makes one line for people ("TLS handshake with localhost:4317 failed: ...") and decides
whether retrying can help. Retryable failures (collector down, timeouts, 429/503) are
retried with exponential backoff for up to `RetryPolicy.max_elapsed` (60 s) of outage,
interruptible by `shutdown()`; then `export()` raises `SinkExportError`, which
`QueuedSink` counts (`plaintap_sink_dropped_records{reason="export_error"}`) and logs
once per burst. While retrying, the sink itself logs once per burst.

TLS: `tls.enabled` (or an `https://` endpoint) turns TLS on, verified against the system
roots. `tls.insecure_skip_verify: true` accepts any certificate: over HTTP the requests
session is told `verify=False`; gRPC has no "skip verification" switch, so the sink
fetches the certificate the collector presents (`ssl.get_server_certificate`), trusts
exactly that one as the root, and, when the endpoint's host is not among the
certificate's names, overrides the name gRPC checks (`grpc.ssl_target_name_override`).
That accepts self-signed certificates (the case this setting exists for); the
certificate is fetched again whenever a handshake fails, so a collector restarted with
a new self-signed certificate is picked up. It is encryption without authentication:
whoever can intercept the connection can present a certificate and read everything,
headers (API keys) included. `tls.ca_file` (PEM roots) is the way to trust a private CA;
`tls.cert_file` + `tls.key_file` send a client certificate (mutual TLS), over gRPC and
HTTP alike. Files are read once, when the sink is built (at most 1 MiB each).

Headers (usually API keys) configured for a store whose connection is not TLS are sent
in clear text: the sink logs a warning naming them, unless the collector is on loopback.
"""
from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit, urlunsplit

# gRPC's C core prints its own INFO lines (e.g. every failed TLS handshake) on stderr
# unless told otherwise; it reads this once, when grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
import requests  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from opentelemetry._logs import SeverityNumber  # noqa: E402
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as _GrpcLogExporter  # noqa: E402
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as _HttpLogExporter  # noqa: E402
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest  # noqa: E402
from opentelemetry.sdk._logs.export import LogRecordExportResult  # noqa: E402

from .. import __version__  # noqa: E402
from ..config.values import resolve_value_source  # noqa: E402
from ..records.model import Record  # noqa: E402
from .base import BurstLogger  # noqa: E402
from .retry import ExportFailed, Retrier, RetryPolicy, SinkExportError, ThreadCapture, quiet_logger  # noqa: E402
from .retry import short_reason as _short  # noqa: E402
from .stdout import STDOUT_LOCK  # noqa: E402

log = logging.getLogger("plaintap.sinks.otel")

DEFAULT_GRPC_PORT = 4317
DEFAULT_HTTP_PORT = 4318
LOGS_PATH = "/v1/logs"
DEFAULT_TIMEOUT = 10.0
# Collectors refuse gRPC messages over 4 MiB by default; stay under it by splitting a
# batch into several requests (a single record larger than this still goes alone).
DEFAULT_MAX_REQUEST_BYTES = 3 * 1024 * 1024 + 512 * 1024

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_SEVERITY = {
    "TRACE": SeverityNumber.TRACE,
    "DEBUG": SeverityNumber.DEBUG,
    "INFO": SeverityNumber.INFO,
    "WARN": SeverityNumber.WARN,
    "WARNING": SeverityNumber.WARN,
    "ERROR": SeverityNumber.ERROR,
    "FATAL": SeverityNumber.FATAL,
}

# --------------------------------------------------------------------------------------
# Pure: records → OTLP


def otlp_value(value: Any) -> Any:
    """`value` as the Python type of the AnyValue it becomes; None means "leave out".

    bytes-like → bytes (bytesValue; a bytearray would otherwise become an int array),
    bool/int/float/str as they are (ints outside int64 as text), sequences → lists,
    mappings → dicts, anything else → its text.
    """
    if value is None or isinstance(value, (bool, float, str, bytes)):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Mapping):
        return {str(k): v for k, v in ((k, otlp_value(v)) for k, v in value.items()) if v is not None}
    if isinstance(value, (list, tuple)):
        return [otlp_value(v) for v in value]
    return str(value)


def otlp_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as they go on the wire (None values dropped, types as `otlp_value`)."""
    out = {}
    for key, value in attributes.items():
        v = otlp_value(value)
        if v is not None:
            out[str(key)] = v
    return out


def severity_number(text: str) -> SeverityNumber:
    return _SEVERITY.get(text.upper(), SeverityNumber.UNSPECIFIED)


def resource_attributes(store_cfg: Any, extra: Mapping[str, Any] | None = None,
                        host_name: str | None = None) -> dict[str, Any]:
    """The resource of every record a sink sends (RECORDS.md), `extra` merged on top."""
    environment = getattr(store_cfg, "environment", "production")
    attrs: dict[str, Any] = {
        "service.name": getattr(store_cfg, "service_name", "plaintap"),
        "service.version": __version__,
        "deployment.environment.name": environment,
        "environment": environment,
        "host.name": host_name or socket.gethostname(),
    }
    attrs.update(otlp_attributes(extra or {}))
    return attrs


def _set_string(target: Any, text: str) -> None:
    try:
        target.string_value = text
    except (ValueError, UnicodeEncodeError):  # lone surrogates from undecodable input
        target.string_value = text.encode("utf-8", "replace").decode("utf-8")


def _set_value(target: Any, value: Any) -> None:
    """Fill the AnyValue `target` from `value` (see `otlp_value` for the mapping)."""
    kind = type(value)
    if kind is str:
        _set_string(target, value)
    elif kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            target.int_value = value
        else:
            target.string_value = str(value)
    elif kind is bool:
        target.bool_value = value
    elif kind is float:
        target.double_value = value
    elif kind is bytes:
        target.bytes_value = value
    elif value is None:
        pass  # an empty AnyValue (only reachable inside arrays)
    else:
        _set_other(target, value)


def _set_other(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_value = bool(value)
    elif isinstance(value, int):
        _set_value(target, int(value))
    elif isinstance(value, float):
        target.double_value = float(value)
    elif isinstance(value, str):
        _set_string(target, str(value))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        target.bytes_value = bytes(value)
    elif isinstance(value, Mapping):
        _set_attributes(target.kvlist_value.values, value)
    elif isinstance(value, (list, tuple)):
        values = target.array_value.values
        for item in value:
            _set_value(values.add(), item)
    else:
        _set_string(target, str(value))


def _set_attributes(repeated: Any, attributes: Mapping[str, Any]) -> None:
    add = repeated.add
    for key, value in attributes.items():
        if value is None:
            continue
        kv = add()
        kv.key = key if type(key) is str else str(key)
        _set_value(kv.value, value)


def encode_request(batch: Sequence[Record], resource: Mapping[str, Any],
                   observed_ns: int | None = None) -> ExportLogsServiceRequest:
    """The OTLP `ExportLogsServiceRequest` for `batch`: one resource, a ScopeLogs per
    `Record.scope` (in first-seen order, records in batch order), each record with its
    time, severity, body and attributes. `observed_ns` is every record's observed time
    (default: now)."""
    observed = time.time_ns() if observed_ns is None else observed_ns
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    _set_attributes(resource_logs.resource.attributes, resource)
    scopes: dict[str, Any] = {}
    for rec in batch:
        scope_logs = scopes.get(rec.scope)
        if scope_logs is None:
            scope_logs = scopes[rec.scope] = resource_logs.scope_logs.add()
            scope_logs.scope.name = rec.scope
            scope_logs.scope.version = __version__
        lr = scope_logs.log_records.add()
        lr.time_unix_nano = rec.time_ns
        lr.observed_time_unix_nano = observed
        lr.severity_number = severity_number(rec.severity).value
        lr.severity_text = rec.severity
        _set_string(lr.body, rec.body)
        _set_attributes(lr.attributes, rec.attributes)
    return request


def request_json(request: ExportLogsServiceRequest) -> str:
    """OTLP/JSON on one line (lowerCamelCase names, enums as integers, bytes as base64)."""
    return json_format.MessageToJson(request, indent=None, use_integers_for_enums=True).replace("\n", "")


def approx_size(rec: Record) -> int:
    """A cheap over-estimate of a record's encoded size, for splitting batches."""
    n = 64 + len(rec.body) + len(rec.scope)
    for k, v in rec.attributes.items():
        n += len(k) + 8 + (len(v) if isinstance(v, (str, bytes, bytearray)) else 16)
    return n


def split_batch(batch: Sequence[Record], max_bytes: int) -> list[Sequence[Record]]:
    """Consecutive slices of `batch` whose estimated size stays under `max_bytes`."""
    chunks: list[Sequence[Record]] = []
    start, size = 0, 0
    for i, rec in enumerate(batch):
        n = approx_size(rec)
        if i > start and size + n > max_bytes:
            chunks.append(batch[start:i])
            start, size = i, 0
        size += n
    if start < len(batch):
        chunks.append(batch[start:])
    return chunks


# --------------------------------------------------------------------------------------
# Pure: endpoints


def _split_host_port(hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if port and not port.isdigit():
            raise ValueError(f"endpoint {hostport!r}: the port must be a number")
        return host, int(port) if port else None
    if hostport.count(":") == 1:
        host, port = hostport.split(":")
    else:
        return hostport, None  # bare name, or an IPv6 address without brackets
    if port and not port.isdigit():
        raise ValueError(f"endpoint {hostport!r}: the port must be a number")
    return host, int(port) if port else None


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def grpc_target(endpoint: str, tls_enabled: bool) -> tuple[str, bool]:
    """(`host:port` to dial, use TLS) for a gRPC endpoint as written in the config.

    A scheme is accepted and dropped (`https://`/`grpcs://` turn TLS on); a missing port
    is 4317 (443 with an `https://` scheme). Raises ValueError for a bad port.
    """
    text = endpoint.strip()
    scheme = ""
    if "://" in text:
        scheme, text = text.split("://", 1)
        scheme = scheme.lower()
    secure_scheme = scheme in ("https", "grpcs")
    host, port = _split_host_port(text.split("/", 1)[0])
    if port is None:
        port = 443 if secure_scheme else DEFAULT_GRPC_PORT
    return _join_host_port(host, port), tls_enabled or secure_scheme


def http_logs_url(endpoint: str, tls_enabled: bool) -> str:
    """The full OTLP/HTTP logs URL for an endpoint as written in the config.

    `host[:port]` gets `http://` (`https://` with tls.enabled) and port 4318 when none is
    given; a URL keeps its host and port; `tls.enabled` upgrades `http://` to `https://`;
    `/v1/logs` is appended unless the path already ends with it.
    """
    text = endpoint.strip()
    if "://" not in text:
        host, port = _split_host_port(text.split("/", 1)[0])
        rest = text.split("/", 1)[1] if "/" in text else ""
        text = f"{'https' if tls_enabled else 'http'}://{_join_host_port(host, port or DEFAULT_HTTP_PORT)}/{rest}"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if tls_enabled and scheme == "http":
        scheme = "https"
    path = parts.path.rstrip("/")
    if not path.endswith(LOGS_PATH):
        path += LOGS_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


# --------------------------------------------------------------------------------------
# Errors for people


def _tls_untrusted(where: str) -> str:
    return (f"TLS handshake with {where} failed: the collector presented a certificate that is not trusted; "
            "set tls.insecure_skip_verify: true for self-signed certificates")


def _tls_wrong_name(where: str) -> str:
    return (f"TLS handshake with {where} failed: the collector's certificate is not valid for this host name; "
            "use the name in the certificate as the endpoint, or set tls.insecure_skip_verify: true")


def _tls_not_tls(where: str) -> str:
    return (f"TLS handshake with {where} failed: the endpoint does not speak TLS; "
            "set tls.enabled: false (or point the endpoint at the collector's TLS port)")


def classify_grpc_failure(where: str, code: grpc.StatusCode | None, details: str, tls: bool,
                          timeout: float) -> ExportFailed:
    """One-line error and retry decision for a failed gRPC export."""
    d = details or ""
    low = d.lower()
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        return ExportFailed(_tls_untrusted(where), retryable=False, reset=True)
    if "peer name" in low and "not in peer certificate" in low:
        return ExportFailed(_tls_wrong_name(where), retryable=False, reset=True)
    if tls and ("wrong_version_number" in low or "packet_length_too_long" in low or "http_request" in low):
        return ExportFailed(_tls_not_tls(where), retryable=False)
    if tls and "handshake failed" in low:
        return ExportFailed(f"TLS handshake with {where} failed: {_short(d)}", retryable=False, reset=True)
    if code == grpc.StatusCode.UNAVAILABLE:
        if "connection refused" in low:
            return ExportFailed(f"cannot connect to the collector at {where}: connection refused (is it running?)")
        if "dns resolution failed" in low or "name or service not known" in low:
            return ExportFailed(f"cannot resolve the collector's host name in {where}")
        if not tls and "socket closed" in low:
            return ExportFailed(f"the collector at {where} closed the connection during setup "
                                "(if it expects TLS, set tls.enabled: true)")
        return ExportFailed(f"the collector at {where} is unavailable: {_short(d)}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ExportFailed(f"export to {where} timed out after {timeout:g}s")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return ExportFailed(f"the collector at {where} rejected the request ({code.name}: {_short(d)}); "
                            "check the store's headers (API key)", retryable=False)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in low:
        return ExportFailed(f"the collector at {where} refused a request as too large ({_short(d)}); "
                            "raise its maximum message size", retryable=False)
    if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED,
                grpc.StatusCode.DATA_LOSS, grpc.StatusCode.OUT_OF_RANGE):
        return ExportFailed(f"export to {where} failed ({code.name}: {_short(d)})")
    name = code.name if code is not None else "no status"
    return ExportFailed(f"export to {where} failed ({name}: {_short(d) or 'no details'})", retryable=False)


def classify_http_failure(url: str, outcome: object, timeout: float) -> ExportFailed:
    """One-line error and retry decision from the last response or exception of an HTTP export."""
    where = urlsplit(url).netloc or url
    if isinstance(outcome, requests.Response):
        status = outcome.status_code
        text = _short(outcome.text or outcome.reason or "")
        if status in (401, 403):
            return ExportFailed(f"the collector at {url} rejected the request (HTTP {status}: {text}); "
                                "check the store's headers (API key)", retryable=False)
        if status == 404:
            return ExportFailed(f"no OTLP logs endpoint at {url} (HTTP 404); check the endpoint's path",
                                retryable=False)
        if status == 413:
            return ExportFailed(f"the collector at {url} refused a request as too large (HTTP 413)", retryable=False)
        if status in (408, 429) or status >= 500:
            return ExportFailed(f"the collector at {url} answered HTTP {status}: {text}")
        return ExportFailed(f"the collector at {url} answered HTTP {status}: {text}", retryable=False)
    err = outcome.__cause__ if isinstance(outcome, _TlsVerifyError) and outcome.__cause__ else outcome
    text = str(err)
    low = text.lower()
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        if "hostname mismatch" in low or "doesn't match" in low or "not valid for" in low:
            return ExportFailed(_tls_wrong_name(where), retryable=False)
        return ExportFailed(_tls_untrusted(where), retryable=False)
    if "wrong_version_number" in low or "wrong version number" in low or "record layer failure" in low:
        return ExportFailed(_tls_not_tls(where), retryable=False)
    if isinstance(err, requests.exceptions.SSLError):
        return ExportFailed(f"TLS handshake with {where} failed: {_short(text)}", retryable=False)
    if isinstance(err, requests.exceptions.Timeout):
        return ExportFailed(f"export to {url} timed out after {timeout:g}s")
    if isinstance(err, requests.exceptions.ConnectionError):
        if "connection refused" in low:
            return ExportFailed(f"cannot connect to the collector at {where}: connection refused (is it running?)")
        if "name or service not known" in low or "failed to resolve" in low or "nodename nor servname" in low:
            return ExportFailed(f"cannot resolve the collector's host name in {url}")
        if url.startswith("http://") and ("remotedisconnected" in low or "connection reset" in low
                                          or "connection aborted" in low):
            return ExportFailed(f"the collector at {where} closed the connection "
                                "(if it expects TLS, use https:// or set tls.enabled: true)")
        return ExportFailed(f"cannot reach the collector at {where}: {_short(text)}")
    if err is None:
        return ExportFailed(f"export to {url} failed (no details from the exporter)")
    return ExportFailed(f"export to {url} failed: {_short(text)}", retryable=False)


# --------------------------------------------------------------------------------------
# Transport helpers


class _Encoded:
    """A request we encoded, in the place of the exporters' sequence of log records."""

    __slots__ = ("request", "count")

    def __init__(self, request: ExportLogsServiceRequest, count: int) -> None:
        self.request = request
        self.count = count

    def __len__(self) -> int:
        return self.count


class _GrpcExporter(_GrpcLogExporter):
    """The SDK's gRPC log exporter, sending the request we encoded.

    `_translate_data`/`_count_data` are the hooks its base class (`OTLPExporterMixin`)
    declares abstract for each signal; the channel, TLS, metadata, deadline, throttling
    and reconnection are all the SDK's.
    """

    def _translate_data(self, data: _Encoded) -> ExportLogsServiceRequest:  # type: ignore[override]
        return data.request

    def _count_data(self, data: _Encoded) -> int:  # type: ignore[override]
        return data.count


class _HttpExporter(_HttpLogExporter):
    """The SDK's HTTP log exporter, sending the request we encoded with its own client
    (session, headers, compression, retry on 429/503 and stale connections)."""

    def export(self, batch: _Encoded) -> LogRecordExportResult:  # type: ignore[override]
        if self._shutdown:
            return LogRecordExportResult.FAILURE
        result = self._client.export(batch.request.SerializeToString())
        return LogRecordExportResult.SUCCESS if result.success else LogRecordExportResult.FAILURE


MAX_PEM_BYTES = 1 << 20


def _read_pem(path: str, where: str) -> bytes:
    """A PEM file named in the config, read once. Raises ConfigError (one line)."""
    from ..config import ConfigError
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as err:
        raise ConfigError([f"{where}: cannot read {path}: {err.strerror or err}"]) from None
    if len(data) > MAX_PEM_BYTES or b"-----BEGIN " not in data:
        raise ConfigError([f"{where}: {path} is not a PEM file (expected -----BEGIN …-----, at most 1 MiB)"])
    return data


def _is_loopback_target(target: str) -> bool:
    """Whether a gRPC `host:port` or an HTTP URL points at this host's loopback."""
    host = urlsplit(target).hostname if "://" in target else _split_host_port(target)[0]
    if not host or host == "localhost":
        return host == "localhost"
    try:
        import ipaddress
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _TlsVerifyError(Exception):
    """A TLS set-up problem (untrusted certificate, endpoint not speaking TLS), raised outside
    requests' ConnectionError family so that the HTTP exporter does not spend its timeout
    retrying what retrying cannot fix."""


class _ObservingSession(requests.Session):
    """The requests session given to the HTTP exporter: remembers each thread's last outcome
    (response or exception) and, with `skip_verify`, does not verify certificates."""

    def __init__(self, skip_verify: bool, ca_file: str | None = None,
                 client_cert: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.skip_verify = skip_verify
        self.ca_file = ca_file
        self.client_cert = client_cert
        self._local = threading.local()

    @property
    def last_outcome(self) -> object:
        return getattr(self._local, "last", None)

    def reset_outcome(self) -> None:
        self._local.last = None

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        if self.skip_verify:
            kwargs["verify"] = False  # the exporter sets session.verify=True; per-request wins
        elif self.ca_file:
            kwargs["verify"] = self.ca_file
        if self.client_cert:
            kwargs["cert"] = self.client_cert
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.exceptions.SSLError as err:
            self._local.last = err
            text = str(err).lower()
            if "certificate" in text or "wrong_version_number" in text or "wrong version number" in text:
                raise _TlsVerifyError(str(err)) from err
            raise
        except Exception as err:
            self._local.last = err
            raise
        self._local.last = response
        return response


def fetch_server_certificate(host: str, port: int, timeout: float) -> tuple[str, list[str]]:
    """(PEM, names) of the certificate a TLS server presents, without verifying it.

    The names (subjectAltName DNS/IP, then the CN) come from a second handshake that
    trusts exactly that certificate; they are empty if that handshake fails (a leaf that
    is not self-signed and not accepted as a partial chain). Raises ExportFailed.
    """
    where = _join_host_port(host, port)
    try:
        pem = ssl.get_server_certificate((host, port), timeout=timeout)
    except ssl.SSLError as err:
        if "wrong_version_number" in str(err).lower() or "wrong version number" in str(err).lower():
            raise ExportFailed(_tls_not_tls(where), retryable=False) from None
        raise ExportFailed(f"TLS handshake with {where} failed: {_short(str(err))}") from None
    except ConnectionRefusedError:
        raise ExportFailed(f"cannot connect to the collector at {where}: connection refused (is it running?)") \
            from None
    except OSError as err:
        raise ExportFailed(f"cannot reach the collector at {where}: {_short(str(err))}") from None
    names: list[str] = []
    try:
        ctx = ssl.create_default_context(cadata=pem)
        ctx.check_hostname = False
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        with socket.create_connection((host, port), timeout=timeout) as raw, ctx.wrap_socket(raw) as tls:
            cert = tls.getpeercert() or {}
        names = [value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]
        names += [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    except (OSError, ssl.SSLError, ValueError):
        pass
    return pem, names


def _name_override(host: str, names: list[str]) -> str | None:
    """A name from the certificate for gRPC to check against, when `host` is not one."""
    if not names or host in names:
        return None
    name = names[0]
    return "plaintap." + name[2:] if name.startswith("*.") else name


# The exporters' loggers: their lines are captured inside our export calls.
_CAPTURE = ThreadCapture()
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http._log_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.common._internal",
)
for _name in _EXPORTER_LOGGERS:
    quiet_logger(_name, _CAPTURE)


def _grpc_failure_from_logs(records: list[logging.LogRecord]) -> tuple[grpc.StatusCode | None, str]:
    """(status code, details) from the gRPC exporter's own log lines (their arguments)."""
    for record in reversed(records):
        args = record.args if isinstance(record.args, tuple) else ()
        code = next((a for a in args if isinstance(a, grpc.StatusCode)), None)
        if code is not None:
            details = next((a for a in reversed(args) if isinstance(a, str)), "")
            return code, details
    if records:
        return None, records[-1].getMessage()
    return None, ""


# --------------------------------------------------------------------------------------
# The sink


class OtelSink:
    """Records → OTLP logs, for an `otel` event or object store.

    `store_cfg` is an `OtelEventStore`/`OtelObjectStore` (config/model.py). `kind`
    ("events" | "objects") names what it carries in messages; each record's scope comes
    from `Record.scope`. `resource_attrs` are merged over the resource built from the
    store (`resource_attributes`). `retry`, `stream` (stdout protocol) and
    `max_request_bytes` exist for tests and tuning.

    Raises ConfigError (from a header's value source, e.g. an unset environment variable)
    and ValueError (an endpoint that cannot be parsed) at construction.
    """

    def __init__(
        self,
        name: str,
        store_cfg: Any,
        kind: Literal["events", "objects"] = "events",
        resource_attrs: Mapping[str, Any] | None = None,
        *,
        retry: RetryPolicy | None = None,
        stream: TextIO | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        if kind not in ("events", "objects"):
            raise ValueError(f"kind must be 'events' or 'objects', not {kind!r}")
        self.name = name
        self.kind = kind
        self.protocol: str = store_cfg.protocol
        self.resource: dict[str, Any] = resource_attributes(store_cfg, resource_attrs)
        self.timeout = float(store_cfg.timeout) if getattr(store_cfg, "timeout", None) else DEFAULT_TIMEOUT
        self.max_request_bytes = max_request_bytes
        self._stream = stream
        tls = getattr(store_cfg, "tls", None)
        self._tls_enabled = bool(tls and tls.enabled)
        self._skip_verify = bool(tls and tls.insecure_skip_verify)
        self._headers = {
            key: resolve_value_source(source, where=f"{name}.headers.{key}")
            for key, source in (store_cfg.headers or {}).items()
        }
        endpoint = store_cfg.endpoint
        self.target = ""
        self._use_tls = False
        if self.protocol == "grpc":
            self.target, self._use_tls = grpc_target(endpoint or f"localhost:{DEFAULT_GRPC_PORT}", self._tls_enabled)
        elif self.protocol == "http":
            self.target = http_logs_url(endpoint or f"localhost:{DEFAULT_HTTP_PORT}", self._tls_enabled)
            self._use_tls = self.target.startswith("https://")
        elif self.protocol != "stdout":
            raise ValueError(f"unknown OTLP protocol {self.protocol!r} (grpc, http or stdout)")
        if self._skip_verify and self.protocol == "http":
            import urllib3
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._ca_file = getattr(tls, "ca_file", None) if tls else None
        self._client_cert = ((tls.cert_file, tls.key_file) if tls is not None and getattr(tls, "cert_file", None)
                             else None)
        self._ca_pem = _read_pem(self._ca_file, f"{name}.tls.ca_file") if self._ca_file else None
        self._client_pem = (tuple(_read_pem(path, f"{name}.tls.{key}") for path, key in
                                  zip(self._client_cert, ("cert_file", "key_file")))
                            if self._client_cert else None)
        if self._headers and self.protocol in ("grpc", "http") and not self._use_tls \
                and not _is_loopback_target(self.target):
            log.warning("%s: headers %s are sent to %s without TLS: anyone on the path can read them; set "
                        "tls.enabled: true (or an https:// endpoint)", name, ", ".join(sorted(self._headers)),
                        self.target)

        self._exporter: Any = None
        self._session: _ObservingSession | None = None
        self._stop = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._retrier = Retrier(retry or RetryPolicy(), self._stop)
        self._burst = BurstLogger()

    def url_for(self, digest: str) -> str:
        """A locator for an object sent through this sink, for `artifact.*.url` (RECORDS.md
        `otel://…`): `otel://<collector host:port>/<digest>`, `otel://stdout/<digest>`."""
        where = urlsplit(self.target).netloc if self.protocol == "http" else (self.target or "stdout")
        return f"otel://{where}/{digest}"

    # -- the interface

    def export(self, batch: Sequence[Record]) -> None:
        """Send `batch`; raises SinkExportError when (part of) it is given up."""
        if self._closed:
            raise SinkExportError(f"{self.name}: sink is shut down", failed=len(batch))
        if not batch:
            return
        if self.protocol == "stdout":
            self._print(batch)
            return
        with self._lock:
            delivered = 0
            for chunk in split_batch(batch, self.max_request_bytes):
                encoded = _Encoded(encode_request(chunk, self.resource), len(chunk))
                try:
                    self._retrier.run(lambda: self._attempt(encoded), self._on_retry)
                except ExportFailed as err:
                    suffix = f" ({delivered} of {len(batch)} records were delivered)" if delivered else ""
                    if self._stop.is_set():
                        suffix += " (shutting down)"
                    raise SinkExportError(err.message + suffix, failed=len(batch) - delivered,
                                          delivered=delivered,
                                          retryable=err.retryable and not self._stop.is_set()) from None
                delivered += len(chunk)

    def force_flush(self, timeout: float = 5.0) -> bool:
        """Nothing is buffered here (QueuedSink holds the queue); stdout is flushed."""
        if self.protocol == "stdout":
            with STDOUT_LOCK:
                try:
                    self.stream.flush()
                except (OSError, ValueError):
                    return False
        return True

    def shutdown(self) -> None:
        """Stop: interrupt any retry wait, close the exporter. Idempotent, safe before use."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self.force_flush()
        exporter, self._exporter = self._exporter, None
        if exporter is not None:
            self._close_exporter(exporter)

    # -- internals

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def _print(self, batch: Sequence[Record]) -> None:
        line = request_json(encode_request(batch, self.resource)) + "\n"
        with STDOUT_LOCK:
            self.stream.write(line)
            self.stream.flush()

    def _on_retry(self, err: ExportFailed, wait: float) -> None:
        budget = self._retrier.policy.max_elapsed
        self._burst(log, "%s sink: %s; retrying (holding %s for up to %.0fs)", self.name, err.message, self.kind,
                    budget)

    def _attempt(self, encoded: _Encoded) -> None:
        if self._stop.is_set():
            raise ExportFailed(f"{self.name}: sink is shutting down", retryable=False)
        exporter = self._get_exporter()
        if self._session is not None:
            self._session.reset_outcome()
        with _CAPTURE as captured:
            try:
                result = exporter.export(encoded)
            except Exception as err:  # the exporters should not raise; be safe if one does
                raise ExportFailed(f"export to {self.target} failed: {_short(str(err))}") from None
        if result == LogRecordExportResult.SUCCESS:
            return
        if self.protocol == "grpc":
            code, details = _grpc_failure_from_logs(captured)
            failure = classify_grpc_failure(self.target, code, details, self._use_tls, self.timeout)
        else:
            failure = classify_http_failure(self.target, self._session.last_outcome if self._session else None,
                                            self.timeout)
        if failure.reset:
            self._reset_exporter()
            if self._skip_verify:
                # The certificate we pinned no longer matches (the collector restarted with a
                # new self-signed one): the next attempt fetches it again.
                failure.retryable = True
        raise failure

    def _get_exporter(self) -> Any:
        if self._exporter is None:
            self._exporter = self._make_grpc_exporter() if self.protocol == "grpc" else self._make_http_exporter()
        return self._exporter

    def _reset_exporter(self) -> None:
        exporter, self._exporter = self._exporter, None
        if exporter is not None:
            self._close_exporter(exporter)

    @staticmethod
    def _close_exporter(exporter: Any) -> None:
        with _CAPTURE:
            try:
                exporter.shutdown()
            except Exception:  # closing a broken channel must not fail the caller
                pass

    def _make_grpc_exporter(self) -> Any:
        credentials = None
        options: list[tuple[str, Any]] = [("grpc.max_send_message_length", -1)]
        if self._use_tls:
            if self._skip_verify:
                host, port = _split_host_port(self.target)
                pem, names = fetch_server_certificate(host, port or DEFAULT_GRPC_PORT, self.timeout)
                roots = pem.encode()
                override = _name_override(host, names)
                if override:
                    options.append(("grpc.ssl_target_name_override", override))
            else:
                roots = self._ca_pem
            cert_chain, key = self._client_pem or (None, None)
            credentials = grpc.ssl_channel_credentials(root_certificates=roots, private_key=key,
                                                       certificate_chain=cert_chain)
        headers = tuple((k.lower(), v) for k, v in self._headers.items())
        return _GrpcExporter(
            endpoint=self.target,
            insecure=not self._use_tls,
            credentials=credentials,
            headers=headers or None,
            timeout=self.timeout,
            channel_options=tuple(options),
            # Our Retrier is the one retry policy for outages; the exporter keeps only its
            # handling of throttling (RESOURCE_EXHAUSTED with the server's RetryInfo delay).
            retryable_error_codes=(grpc.StatusCode.RESOURCE_EXHAUSTED,),
        )

    def _make_http_exporter(self) -> Any:
        self._session = _ObservingSession(skip_verify=self._skip_verify, ca_file=self._ca_file,
                                          client_cert=self._client_cert)
        return _HttpExporter(
            endpoint=self.target,
            headers=dict(self._headers) or None,
            timeout=self.timeout,
            session=self._session,
        )

    def __repr__(self) -> str:
        return f"OtelSink({self.name!r}, {self.protocol} {self.target or 'stdout'})"
