"""Status endpoints: GET /readyz, /healthz and /metrics on --httpd-listen.

/readyz answers 503 until capture is attached (and again once the agent is stopping),
then 200; /healthz answers 200 while the process-wide loop is alive and, once it runs,
makes progress (the loop calls progress() every turn; no turn for STALL_S seconds is
503); /metrics is the Prometheus exposition of plaintap.metrics.REGISTRY.
"""
from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .errors import UserError
from .metrics import REGISTRY

log = logging.getLogger("plaintap.status")

STALL_S = 15.0


def _listen_error(host: str, port: int, e: OSError) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return (f"cannot serve /readyz /healthz /metrics on {where}: the address is in use (another plaintap may be "
                "running); stop it or pick another --httpd-listen HOST:PORT")
    if e.errno in (errno.EADDRNOTAVAIL, socket.EAI_NONAME, socket.EAI_AGAIN) or isinstance(e, socket.gaierror):
        return f"cannot serve the status endpoints on {where}: no such local address; fix --httpd-listen HOST:PORT"
    return f"cannot serve the status endpoints on {where}: {e.strerror or e}; fix --httpd-listen HOST:PORT"


class StatusServer:
    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]") or "0.0.0.0"
        self.port = int(port)
        self.ready = threading.Event()
        self.healthy = threading.Event()
        self.healthy.set()
        self.last_progress: float | None = None    # monotonic time of the loop's last turn
        self.stall_s = STALL_S
        self._server: ThreadingHTTPServer | None = None

    def progress(self) -> None:
        """The capture loop finished a turn (cheap: called every turn)."""
        self.last_progress = time.monotonic()

    def is_healthy(self) -> bool:
        last = self.last_progress
        stalled = last is not None and time.monotonic() - last > self.stall_s
        return self.healthy.is_set() and not stalled

    def start(self) -> None:
        status = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/readyz":
                    ok = status.ready.is_set()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                elif path == "/healthz":
                    ok = status.is_healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"unhealthy: the capture loop is stuck\n")
                elif path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found: try /readyz, /healthz or /metrics\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):  # keep the agent's log clean
                log.debug("status: " + fmt, *args)

        family_host = self.host
        ThreadingHTTPServer.allow_reuse_address = True
        try:
            if ":" in family_host:

                class V6Server(ThreadingHTTPServer):
                    address_family = socket.AF_INET6
                self._server = V6Server((family_host, self.port), Handler)
            else:
                self._server = ThreadingHTTPServer((family_host, self.port), Handler)
        except OSError as e:
            raise UserError(_listen_error(self.host, self.port, e)) from None
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="status-http", daemon=True).start()
        log.info("status endpoints on http://%s:%d (/readyz /healthz /metrics)", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
