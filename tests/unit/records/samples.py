"""Sample connections and transactions, built directly from the model dataclasses, with
fixed ids and kernel timestamps so record builders give byte-identical output."""
from __future__ import annotations

import json
import os
from pathlib import Path

from dataclasses import dataclass

from plaintap.capture.containers import ContainerInfo, ContainerMeta, ContainerRef
from plaintap.capture.process import ProcessInfo
from plaintap.protocols.model import GrpcInfo, Message, Transaction

GOLDEN = Path(__file__).resolve().parents[2] / "fixtures" / "golden"
EPOCH = 1_700_000_000_000_000_000          # wall ns at kernel time 0
T0 = 5_000_000_000                         # first request byte, kernel ns


@dataclass
class Connection:
    """A connection as record builders see it: the attributes of `plaintap._core.ConnInfo`
    (what the native data plane hands over), settable so samples can vary them."""

    kid: int
    id: str
    pid: int
    fd: int
    role: int
    direction: str
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    open_ns: int
    process: ProcessInfo
    close_ns: int | None = None
    bytes_sent: int = 0
    bytes_recv: int = 0
    protocol: str = "tcp"
    domain: str = ""
    tls_enabled: bool = False
    tls_inspected: bool = False
    tls_version: str = ""
    tls_sni: str = ""
    tls_alpn: str = ""
    joined: bool = False
    skip: int = 0

    @property
    def is_client(self) -> bool:
        return self.role == 1


def wall_ns(mono_ns: int) -> int:
    return EPOCH + mono_ns


def connection(**kw) -> Connection:
    """curl on 10.0.0.2 → api.example.com (93.184.216.34:443) over inspected TLS 1.3."""
    c = Connection(kid=0xC0FFEE1, id="r1c0ffee1", pid=4242, fd=5, role=1, direction="egress-external",
                   local_addr="10.0.0.2", local_port=50000, remote_addr="93.184.216.34", remote_port=443,
                   open_ns=T0 - 3_000_000,
                   process=ProcessInfo(4242, exe="/usr/bin/curl",
                                       cmdline="curl -d @item.json https://api.example.com/v1/items",
                                       uid=1000, comm="curl"),
                   protocol="http1", domain="api.example.com", tls_enabled=True, tls_inspected=True,
                   tls_version="1.3", tls_sni="api.example.com", tls_alpn="http/1.1")
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def h1_json_post() -> tuple[Connection, Transaction]:
    req_body = b'{"name":"widget","qty":2}'
    resp_body = b'{"id":"it_123","name":"widget","qty":2}'
    req = Message(headers=[("Host", "api.example.com"), ("User-Agent", "curl/8.5.0"), ("Accept", "*/*"),
                           ("Content-Type", "application/json"), ("Content-Length", str(len(req_body)))],
                  method="POST", target="/v1/items?dry_run=1", authority="api.example.com", version="1.1",
                  body=req_body, body_size=len(req_body), first_ns=T0, last_ns=T0 + 40_000)
    resp = Message(headers=[("Content-Type", "application/json"), ("Content-Length", str(len(resp_body))),
                            ("Server", "example")],
                   status=201, reason="Created", version="1.1", body=resp_body, body_size=len(resp_body),
                   first_ns=T0 + 12_000_000, last_ns=T0 + 12_400_000, is_response=True)
    tx = Transaction(protocol="http1", version="1.1", stream_id=None, request=req, response=resp,
                     start_ns=T0, end_ns=T0 + 12_400_000)
    c = connection()
    c.process.container_id = "f" * 64
    c.process.container = ContainerInfo(ContainerRef("f" * 64, "docker"))
    c.process.container.meta = ContainerMeta("docker", "shop-api", "registry.example.com/shop/api:1.4")
    return c, tx


def h2_get() -> tuple[Connection, Transaction]:
    html = b"<!doctype html>\n<title>Example</title>\n<p>Hello</p>\n"
    req = Message(headers=[(":method", "GET"), (":scheme", "https"), (":authority", "www.example.org"),
                           (":path", "/index.html?lang=en"), ("user-agent", "python-httpx/0.27.0"),
                           ("accept", "text/html")],
                  method="GET", target="/index.html?lang=en", authority="www.example.org", version="2",
                  first_ns=T0, last_ns=T0)
    resp = Message(headers=[(":status", "200"), ("content-type", "text/html; charset=utf-8"),
                            ("content-length", str(len(html)))],
                   status=200, version="2", body=html, body_size=len(html),
                   first_ns=T0 + 30_000_000, last_ns=T0 + 31_250_000, is_response=True)
    tx = Transaction(protocol="http2", version="2", stream_id=1, request=req, response=resp,
                     start_ns=T0, end_ns=T0 + 31_250_000)
    c = connection(protocol="http2", domain="www.example.org", tls_sni="www.example.org", tls_alpn="h2",
                   remote_addr="2606:2800:220:1:248:1893:25c8:1946", local_addr="2001:db8::2",
                   process=ProcessInfo(777, exe="/usr/bin/python3.11", cmdline="python3 fetch.py", uid=0,
                                       comm="python3"), pid=777)
    return c, tx


def grpc_call() -> tuple[Connection, Transaction]:
    req_body = b"\x00\x00\x00\x00\x0b\n\x05apple\x10\x03\x18\x01"
    resp_body = b"\x00\x00\x00\x00\x04\n\x02ok"
    req = Message(headers=[(":method", "POST"), (":scheme", "http"), (":path", "/shop.v1.Cart/AddItem"),
                           (":authority", "cart.internal:50051"), ("content-type", "application/grpc"),
                           ("te", "trailers"), ("user-agent", "grpc-go/1.64.0")],
                  method="POST", target="/shop.v1.Cart/AddItem", authority="cart.internal:50051", version="2",
                  body=req_body, body_size=len(req_body), first_ns=T0, last_ns=T0 + 100_000)
    resp = Message(headers=[(":status", "200"), ("content-type", "application/grpc")],
                   trailers=[("grpc-status", "0"), ("grpc-message", "")],
                   status=200, version="2", body=resp_body, body_size=len(resp_body),
                   first_ns=T0 + 2_000_000, last_ns=T0 + 2_500_000, is_response=True)
    grpc = GrpcInfo(service="shop.v1.Cart", method="AddItem", status_code=0, status_message=None,
                    request_messages=1, response_messages=1, request_bytes=11, response_bytes=4)
    tx = Transaction(protocol="http2", version="2", stream_id=3, request=req, response=resp,
                     start_ns=T0, end_ns=T0 + 2_500_000, grpc=grpc)
    c = connection(protocol="grpc", domain="cart.internal", direction="egress-internal", tls_enabled=False,
                   tls_inspected=False, tls_version="", tls_sni="", tls_alpn="", remote_addr="10.0.5.7",
                   remote_port=50051,
                   process=ProcessInfo(900, exe="/app/checkout", cmdline="/app/checkout --port 8080",
                                       uid=65532, comm="checkout"), pid=900)
    return c, tx


def no_response() -> tuple[Connection, Transaction]:
    body = b"a=1&b=2"
    req = Message(headers=[("Host", "upload.example.com:8443"), ("Content-Type", "application/x-www-form-urlencoded"),
                           ("Content-Length", str(len(body)))],
                  method="POST", target="/upload", authority="upload.example.com:8443", version="1.1",
                  body=body, body_size=len(body), first_ns=T0, last_ns=T0 + 10_000)
    tx = Transaction(protocol="http1", version="1.1", stream_id=None, request=req, response=None,
                     start_ns=T0, end_ns=T0 + 30_000_000_000, error="connection closed before the response")
    c = connection(domain="upload.example.com", tls_sni="upload.example.com", remote_port=8443)
    return c, tx


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


def binary_body() -> tuple[Connection, Transaction]:
    """Plain-HTTP/1.0 image download; no Host header, so the URL falls back to the IP."""
    req = Message(headers=[("User-Agent", "Wget/1.21"), ("Accept", "*/*")], method="GET", target="/logo.png",
                  version="1.0", first_ns=T0, last_ns=T0)
    resp = Message(headers=[("Content-Type", "image/png"), ("Content-Length", str(len(PNG)))],
                   status=200, reason="OK", version="1.0", body=PNG, body_size=len(PNG),
                   first_ns=T0 + 3_000_000, last_ns=T0 + 3_050_000, is_response=True)
    tx = Transaction(protocol="http1", version="1.0", stream_id=None, request=req, response=resp,
                     start_ns=T0, end_ns=T0 + 3_050_000)
    c = connection(domain="", tls_enabled=False, tls_inspected=False, tls_version="", tls_sni="", tls_alpn="",
                   remote_addr="198.51.100.20", remote_port=80,
                   process=ProcessInfo(31, exe="/usr/bin/wget", cmdline="wget http://198.51.100.20/logo.png",
                                       uid=1000, comm="wget"), pid=31)
    return c, tx


CSV_KEPT = b"id,name,qty\n1,widget,2\n2,gadget,5\n3,gizmo,7\n"


def truncated_body() -> tuple[Connection, Transaction]:
    """A 5 MB CSV export of which the capture kept the first 44 bytes."""
    req = Message(headers=[("Host", "api.example.com"), ("Accept", "text/csv")], method="GET",
                  target="/v1/export.csv", authority="api.example.com", version="1.1",
                  first_ns=T0, last_ns=T0)
    resp = Message(headers=[("Content-Type", "text/csv"), ("Transfer-Encoding", "chunked")],
                   status=200, reason="OK", version="1.1", body=CSV_KEPT, body_size=5_000_000,
                   body_truncated=True, first_ns=T0 + 50_000_000, last_ns=T0 + 950_000_000, is_response=True)
    tx = Transaction(protocol="http1", version="1.1", stream_id=None, request=req, response=resp,
                     start_ns=T0, end_ns=T0 + 950_000_000)
    return connection(), tx


def ingress_get() -> tuple[Connection, Transaction]:
    """nginx on 10.0.0.2:8080 answering a client at 10.0.0.9."""
    req = Message(headers=[("Host", "shop.local:8080"), ("User-Agent", "kube-probe/1.30")], method="GET",
                  target="/healthz", authority="shop.local:8080", version="1.1", first_ns=T0, last_ns=T0)
    resp = Message(headers=[("Content-Length", "0")], status=204, reason="No Content", version="1.1",
                   first_ns=T0 + 800_000, last_ns=T0 + 800_000, is_response=True)
    tx = Transaction(protocol="http1", version="1.1", stream_id=None, request=req, response=resp,
                     start_ns=T0, end_ns=T0 + 800_000)
    c = connection(role=2, direction="ingress", local_addr="10.0.0.2", local_port=8080, remote_addr="10.0.0.9",
                   remote_port=41000, domain="shop.local", tls_enabled=False, tls_inspected=False,
                   tls_version="", tls_sni="", tls_alpn="",
                   process=ProcessInfo(1, exe="/usr/sbin/nginx", cmdline="nginx: worker process", uid=33,
                                       comm="nginx"), pid=1)
    return c, tx


SAMPLES = {
    "h1_json_post": h1_json_post,
    "h2_get": h2_get,
    "grpc_call": grpc_call,
    "no_response": no_response,
    "binary_body": binary_body,
    "truncated_body": truncated_body,
    "ingress_get": ingress_get,
}


def check_golden(name: str, value) -> None:
    """Compare `value` with tests/fixtures/golden/<name>.json; PLAINTAP_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / f"{name}.json"
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    if os.environ.get("PLAINTAP_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} missing; run with PLAINTAP_UPDATE_GOLDEN=1 and review the file"
    assert json.loads(path.read_text(encoding="utf-8")) == value
