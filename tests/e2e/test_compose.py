"""The compose quick start (examples/otel/compose.yaml) under podman-compose: the plaintap
image and a collector image (rotel on the Debian base, standing in for
otel/opentelemetry-collector-contrib, which no registry here can supply) started from the
compose file as written; the collector prints all three kinds of records. Only the OTLP
ports in copies of qtap.yaml/collector.yaml are changed (to free ones)."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ROOT, free_port, need
from containerenv import ENV, ensure_base_image, ensure_plaintap_image, missing_tools, podman

pytestmark = pytest.mark.kernel

EXAMPLE = ROOT / "examples" / "otel"
COLLECTOR_IMAGE = "localhost/plaintap-test-rotel:1"
PODMAN_COMPOSE = ROOT / ".venv" / "bin" / "podman-compose"


def ensure_collector_image(tmp_path: Path) -> str:
    ensure_base_image()
    if podman("image", "exists", COLLECTOR_IMAGE, check=False).returncode != 0:
        import rotel
        ctx = tmp_path / "collector-image"
        shutil.copytree(Path(__file__).parent / "collector-image", ctx)
        shutil.copy2(Path(rotel.__file__).parent / "rotel-agent", ctx / "rotel-agent")
        podman("build", "-q", "--pull=never", "--network", "host", "-t", COLLECTOR_IMAGE, str(ctx), timeout=600)
    return COLLECTOR_IMAGE


def test_compose_quick_start(kernel, tmp_path):
    why = missing_tools("podman", "runc", "mmdebstrap") or (None if PODMAN_COMPOSE.exists() else
                                                            "needs podman-compose (requirements-test.txt)")
    need(why)
    image, _ = ensure_plaintap_image()
    collector = ensure_collector_image(tmp_path)
    grpc, http, status = free_port(), free_port(), free_port()
    work = tmp_path / "otel"
    work.mkdir()
    shutil.copy2(EXAMPLE / "compose.yaml", work / "compose.yaml")
    for name in ("qtap.yaml", "collector.yaml"):
        text = (EXAMPLE / name).read_text().replace(":4317", f":{grpc}").replace(":4318", f":{http}")
        (work / name).write_text(text)

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *a):
            pass
    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    project = f"ptc{os.getpid()}"
    env = {**ENV, "PLAINTAP_IMAGE": image, "OTEL_COLLECTOR_IMAGE": collector, "PLAINTAP_STATUS_PORT": str(status)}
    compose = [str(PODMAN_COMPOSE), "-p", project, "-f", str(work / "compose.yaml")]
    up = subprocess.run([*compose, "up", "-d"], env=env, capture_output=True, text=True, timeout=300, cwd=work)
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        deadline, ready = time.monotonic() + 90, False
        while time.monotonic() < deadline and not ready:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{status}/readyz", timeout=1) as r:
                    ready = r.status == 200
            except OSError:
                time.sleep(0.3)
        assert ready, podman("logs", f"{project}_plaintap_1", check=False).stderr[-3000:]
        r = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{srv.server_address[1]}/compose-quickstart"],
                           capture_output=True, timeout=30)
        assert r.stdout == b"ok"
        wanted = ("Str(connection)", "Str(artifact_record)", "Str(http_request)", "Str(http_response)",
                  "/compose-quickstart")
        deadline, log = time.monotonic() + 30, ""
        while time.monotonic() < deadline:
            got = podman("logs", f"{project}_otel-collector_1", check=False)
            log = got.stdout + got.stderr
            if all(w in log for w in wanted):
                break
            time.sleep(0.5)
        assert all(w in log for w in wanted), [w for w in wanted if w not in log]
    finally:
        subprocess.run([*compose, "down", "-t", "30"], env=env, capture_output=True, timeout=120, cwd=work)
        srv.shutdown()
