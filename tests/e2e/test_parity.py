"""qtap parity end to end (issue 11): report_usage and detect_errors on real traffic —
curl against a local server, captured by the kernel, records on stdout."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.kernel

SECRET = "s3cr3t-token-0123456789abcdef"

CONFIG = """
version: 2
services:
  event_stores: [{type: stdout}]
  object_stores: [{type: stdout}]
stacks:
  usage:
    plugins:
      - type: report_usage
      - type: detect_errors
        config:
          rules:
            - name: server-errors
              triggerStatusCodes: ["5xx"]
              recordResHeaders: true
      - type: access_logs
        config: {mode: full}
      - type: http_capture
        config: {level: full}
tap:
  direction: egress
  ignore_loopback: false
  http: {stack: usage}
"""

SERVER = textwrap.dedent("""
    import http.server
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            code = int(self.path.strip("/").split("?")[0] or 200)
            body = b'{"ok": %d}' % code
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    s = http.server.HTTPServer(("127.0.0.1", 0), H)
    print("ready", s.server_address[1], flush=True)
    for _ in range(3): s.handle_request()
""")


def test_report_usage_and_detect_errors(start_agent):
    agent = start_agent(CONFIG)
    srv = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    port = int(srv.stdout.readline().split()[1])
    for code in (200, 404, 503):
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", f"Authorization: Bearer {SECRET}",
                        f"http://127.0.0.1:{port}/{code}"], check=True, timeout=30)
    srv.wait(30)
    agent.stop()
    mine = [r["attributes"] for r in agent.records if f"127.0.0.1:{port}/" in r["attributes"].get("url.full", "")]
    usage = sorted((a for a in mine if a["event.type"] == "request"), key=lambda a: a["http.response.status_code"])
    assert [a["http.response.status_code"] for a in usage] == [200, 404, 503]
    for a in usage:
        assert a["http.request.method"] == "GET" and a["http.duration_ms"] > 0
        assert a["auth.token.source"] == "Authorization" and a["auth.token.type"] == "bearer"
        assert a["auth.token.hash"] == hashlib.sha256(SECRET.encode()).hexdigest()
        assert a["process.executable.name"] == "curl" and a["http.response.category"] == "json"
    issues = [a for a in mine if a["event.type"] == "issue"]
    assert len(issues) == 1
    assert issues[0]["issue.rule"] == "server-errors" and issues[0]["issue.triggers"] == ["status:503"]
    assert issues[0]["http.response.status_code"] == 503 and "artifact.response.digest" in issues[0]
    # the credential appears in no output at all: records, objects, access log, agent log
    everything = agent.out.read_text() + agent.stderr()
    assert f"127.0.0.1:{port}/503" in everything
    assert SECRET not in everything


QPOINT_CONFIG = """
version: 2
tags:
  - {key: team, source: env, location: TEAM}
services:
  event_stores: [{type: otel, protocol: stdout}]
  object_stores: [{type: disabled}]
stacks:
  s:
    plugins: [{type: http_capture, config: {level: summary}}]
tap:
  direction: egress
  ignore_loopback: false
  http: {stack: s}
"""


def test_qtap_environment_names_run_the_agent(kernel, tmp_path):
    """QPOINT_CONFIG picks the config and LOG_LEVEL/HTTPD_LISTEN are read like qtap's; the
    config's env tags become OTLP resource attributes."""
    import json
    import os
    import signal
    import time
    import urllib.request

    from conftest import PLAINTAP, free_port

    cfg = tmp_path / "qtap.yaml"
    cfg.write_text(QPOINT_CONFIG)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAINTAP_")}
    env.update(QPOINT_CONFIG=str(cfg), HTTPD_LISTEN=f"127.0.0.1:{port}", LOG_LEVEL="debug", TEAM="payments")
    out, err = tmp_path / "out", tmp_path / "err"
    agent = subprocess.Popen([str(PLAINTAP), "--lock-file", str(tmp_path / "lock")], env=env,
                             stdout=out.open("wb"), stderr=err.open("wb"))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert agent.poll() is None and time.monotonic() < deadline, err.read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        srv = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
        srv_port = int(srv.stdout.readline().split()[1])
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{srv_port}/200"], check=True, timeout=30)
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{srv_port}/200"], check=True, timeout=30)
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{srv_port}/200"], check=True, timeout=30)
        srv.wait(30)
    finally:
        agent.send_signal(signal.SIGINT)
        agent.wait(60)
    assert '"level": "debug"' in err.read_text()            # LOG_LEVEL=debug was read
    requests = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    found = False
    for req in requests:
        for rl in req["resourceLogs"]:
            attrs = {a["key"]: a["value"] for a in rl["resource"]["attributes"]}
            assert attrs.get("team") == {"stringValue": "payments"}, attrs
            for sl in rl["scopeLogs"]:
                for rec in sl["logRecords"]:
                    if f"127.0.0.1:{srv_port}/200" in json.dumps(rec):
                        found = True
    assert found, out.read_text()[-2000:]
