"""Status endpoints on --httpd-listen: GET /readyz, /healthz, /status and /metrics.

* `/readyz` — 200 while capturing (BPF attached, not stopping), else 503.
* `/healthz` — 200 while the capture loop makes progress; 503 with the reason once it has
  made none for `Health.stall_after` seconds (health.py).
* `/status` — JSON for people: readiness, health, loop lag, memory, and per sink the
  backlog in memory and on disk, retry state, outage age, last error, the accounting.
* `/metrics` — Prometheus exposition of plaintap.metrics.REGISTRY.

The server must stay answerable while the agent is loaded, and must not be exhausted by
idle or slow clients (the agent is root among untrusted neighbours): each connection
gets a socket timeout (`REQUEST_TIMEOUT`) for reading its request and writing the answer,
one request per connection (HTTP/1.0, closed after the answer), and at most
`MAX_CONNECTIONS` are served at once — a connection past the cap is closed at once.
"""
from __future__ import annotations

import errno
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .errors import UserError
from .health import Health
from .metrics import REGISTRY

log = logging.getLogger("plaintap.status")

REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 32


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr, handler, family: int, max_connections: int) -> None:
        self.address_family = family
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0
        super().__init__(addr, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)     # over the cap: close at once, never queue a thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _listen_error(host: str, port: int, e: OSError) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return (f"cannot serve /readyz /healthz /metrics on {where}: the address is in use (another plaintap may be "
                "running); stop it or pick another --httpd-listen HOST:PORT")
    if e.errno in (errno.EADDRNOTAVAIL, socket.EAI_NONAME, socket.EAI_AGAIN) or isinstance(e, socket.gaierror):
        return f"cannot serve the status endpoints on {where}: no such local address; fix --httpd-listen HOST:PORT"
    return f"cannot serve the status endpoints on {where}: {e.strerror or e}; fix --httpd-listen HOST:PORT"


class StatusServer:
    def __init__(self, listen: str, health: Health | None = None,
                 max_connections: int = MAX_CONNECTIONS, timeout: float = REQUEST_TIMEOUT) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]") or "0.0.0.0"
        self.port = int(port)
        self.health = health or Health()
        self.ready = self.health.ready
        self.max_connections = max_connections
        self.timeout = timeout
        self._server: _Server | None = None

    # The capture loop's heartbeat, as the loop and tests call it (health.py holds it).
    def progress(self) -> None:
        """The capture loop made a turn (call every turn)."""
        self.health.touch()

    @property
    def last_progress(self) -> float | None:
        return self.health.last_beat

    @last_progress.setter
    def last_progress(self, value: float | None) -> None:
        self.health.last_beat = value

    @property
    def stall_s(self) -> float:
        return self.health.stall_after

    def is_healthy(self) -> bool:
        return self.health.healthy()[0]

    def start(self) -> None:
        health = self.health

        class Handler(BaseHTTPRequestHandler):
            timeout = self.timeout          # socket timeout: an idle or slow client is cut off

            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/readyz":
                    ok = health.ready.is_set() and not health.stopping
                    self._send(200 if ok else 503, b"ready\n" if ok else
                               (b"stopping\n" if health.stopping else b"not ready\n"))
                elif path == "/healthz":
                    ok, why = health.healthy()
                    self._send(200 if ok else 503, (why + "\n").encode())
                elif path == "/status":
                    body = json.dumps(health.status(), indent=2, sort_keys=False).encode() + b"\n"
                    self._send(200, body, "application/json")
                elif path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found: try /readyz, /healthz, /status or /metrics\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):  # keep the agent's log clean
                log.debug("status: " + fmt, *args)

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            self._server = _Server((self.host, self.port), Handler, family, self.max_connections)
        except OSError as e:
            raise UserError(_listen_error(self.host, self.port, e)) from None
        threading.Thread(target=self._server.serve_forever, name="status-http", daemon=True).start()
        log.info("status endpoints on http://%s:%d (/readyz /healthz /status /metrics)", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
