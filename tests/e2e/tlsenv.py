"""Real TLS peers for the capture tests: nginx-light (TLS, HTTP/1.1 + h2) on 127.0.0.1
with a self-signed certificate and a random ~300 KiB file, plus the clients' builds."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from conftest import HELPERS, free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SNI = "plaintap.test"


def make_cert(d: Path) -> tuple[Path, Path]:
    cert, key = d / "cert.pem", d / "key.pem"
    if not cert.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "2", "-subj", f"/CN={SNI}"], check=True, capture_output=True)
    return cert, key


def nginx_http_head(workdir: Path) -> str:
    """nginx.conf up to inside `http {`: one worker in the foreground as root, its pid, log and
    temporary files under `workdir` (`workdir/tmp` must exist). The caller adds the servers
    and the closing brace."""
    t = workdir / "tmp"
    return f"""
daemon off;
master_process on;
worker_processes 1;
user root;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fcgi;
    uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;
    default_type application/octet-stream;"""


class Nginx:
    def __init__(self, workdir: Path, file_size: int = 300 * 1024 + 17):
        self.dir = workdir
        (workdir / "www").mkdir(parents=True, exist_ok=True)
        (workdir / "tmp").mkdir(exist_ok=True)
        self.file = os.urandom(file_size)
        (workdir / "www" / "file.bin").write_bytes(self.file)
        self.file_sha = hashlib.sha256(self.file).hexdigest()
        cert, key = make_cert(workdir)
        self.port = free_port()
        conf = workdir / "nginx.conf"
        conf.write_text(nginx_http_head(workdir) + f"""
    keepalive_requests 1000;
    server {{
        listen 127.0.0.1:{self.port} ssl http2;
        server_name {SNI};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {workdir}/www;
        client_max_body_size 64m;
        # Static files answer POST too (the tests upload a body and download the file).
        error_page 405 =200 $uri;
        location / {{ }}
    }}
}}
""")
        self.proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx failed: {self.proc.stderr.read().decode()}")
            try:
                import socket
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("nginx did not start listening")
        self.exe = os.path.realpath(NGINX)

    def worker_pids(self) -> set[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return {int(x) for x in out.split()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_BUILT: dict[bool, Path] = {}


def build_go_client(dest: Path, stripped: bool = False) -> Path:
    """Build the Go client; `stripped` builds with -ldflags='-s -w' (no symbol table, no DWARF).
    Built once per test session (later calls return the first build)."""
    if stripped in _BUILT and _BUILT[stripped].exists():
        return _BUILT[stripped]
    exe = dest / ("goclient-stripped" if stripped else "goclient")
    env = dict(os.environ, GOPROXY="off", GOFLAGS="-mod=mod", GOCACHE=str(dest / "gocache"),
               GOPATH=str(dest / "gopath"), CGO_ENABLED="0")
    flags = ["-ldflags=-s -w"] if stripped else []
    subprocess.run(["go", "build", *flags, "-o", str(exe), "."], cwd=HELPERS / "goclient", env=env, check=True,
                   capture_output=True)
    _BUILT[stripped] = exe
    return exe
