"""Issue 5 end to end, the parts that need no backend: config validation as a user runs
it, the stdout stores' JSON Lines, and access_logs console output at each mode."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import PLAINTAP, ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "config"
VALID = ["qtap-default.yaml", "otel-clickstack.yaml", "s3.yaml", "capture-rules.yaml"]
ENV = {"OTEL_HOST": "collector.internal", "CLICKSTACK_API_KEY": "k", "S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "s"}


def env_for(fixture: Path) -> dict:
    import os
    env = dict(os.environ)
    env.update(ENV)
    # whatever {type: env} variables a fixture names, give them a value
    for word in fixture.read_text().split():
        if word.isupper() and "_" in word:
            env.setdefault(word, "x")
    return env


@pytest.mark.parametrize("name", VALID)
def test_validate_passes_on_qtap_examples(name):
    f = FIXTURES / name
    r = subprocess.run([str(PLAINTAP), "validate", str(f)], capture_output=True, text=True, env=env_for(f))
    assert r.returncode == 0, r.stdout + r.stderr
    # valid; keys that change nothing here (e.g. http_capture.format: text) are named as warnings
    last = r.stdout.strip().splitlines()[-1]
    assert last == f"{f}: valid" or last.startswith(f"{f}: valid (")
    assert all(ln.startswith(f"{f}: warning: ") for ln in r.stdout.strip().splitlines()[:-1])


def test_typo_is_named_by_key_path_and_agent_refuses_to_start(tmp_path):
    f = FIXTURES / "typo-levle.yaml"
    r = subprocess.run([str(PLAINTAP), "validate", str(f)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "stacks." in r.stdout and ".config.levle: unknown key" in r.stdout, r.stdout
    problem = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("stacks.")][0]
    run = subprocess.run([str(PLAINTAP), "--config", str(f), "--httpd-listen", "127.0.0.1:0", "--allow-multiple"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stdout == ""
    assert problem in run.stderr and "Traceback" not in run.stderr
    assert len([ln for ln in run.stderr.splitlines() if ln.strip()]) == 1, run.stderr


SERVER = textwrap.dedent("""
    import http.server
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_POST(self):
            n = int(self.headers["Content-Length"]); self.rfile.read(n)
            body = b'{"ok": true, "items": [1, 2, 3]}'
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    s = http.server.HTTPServer(("127.0.0.1", 0), H)
    print("ready", s.server_address[1], flush=True)
    s.handle_request()
""")


def access_log_config(mode: str) -> str:
    return f"""
version: 2
services:
  event_stores: [{{type: stdout}}]
  object_stores: [{{type: disabled}}]
stacks:
  logs:
    plugins:
      - type: access_logs
        config: {{mode: {mode}, format: console}}
tap:
  direction: egress
  ignore_loopback: false
  http: {{stack: logs}}
"""


@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["summary", "details", "full"])
def test_access_logs_console_at_each_mode_and_json_lines(start_agent, mode):
    agent = start_agent(access_log_config(mode))
    srv = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    port = int(srv.stdout.readline().split()[1])
    curl = subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-H", "Content-Type: application/json",
                             "--data-binary", '{"name": "widget"}', f"http://127.0.0.1:{port}/v1/items?color=red"])
    assert curl.wait(30) == 0
    srv.wait(30)
    agent.stop()
    lines = agent.out.read_text().splitlines()
    # Piped standard output holds only JSON Lines: the console access log went to stderr
    # (where the agent's own log lines are JSON too, so the human lines are the rest).
    for ln in lines:  # every line is a record in the RECORDS.md stdout format
        rec = json.loads(ln)
        assert set(rec) == {"scope", "timestamp", "severity", "body", "attributes"}
        assert rec["scope"] in ("plaintap.events", "plaintap.objects")
        assert rec["timestamp"].endswith("Z") and len(rec["timestamp"].split(".")[1]) == 10
    human = [ln for ln in agent.stderr().splitlines() if not ln.startswith("{")]
    # Only this test's exchange (the machine has other traffic): from its "■" line to the next.
    start = [i for i, ln in enumerate(human) if ln.startswith("■") and f"127.0.0.1:{port}/" in ln]
    assert len(start) == 1, human  # egress only: curl's side, not the server's
    end = next((i for i in range(start[0] + 1, len(human)) if human[i].startswith("■")), len(human))
    human = human[start[0]:end]
    first = human[:1]
    assert first[0].startswith(f"■ curl → POST http://127.0.0.1:{port}/v1/items?color=red 201")
    text = "\n".join(human)
    if mode == "summary":
        assert len(human) == 1
    else:
        assert "REQUEST" in text and "RESPONSE" in text and "POST /v1/items?color=red HTTP/1.1" in text
        assert "Content-Type: application/json" in text
    if mode == "full":
        assert '{"name": "widget"}' in text and '{"ok": true, "items": [1, 2, 3]}' in text
    else:
        assert '"widget"' not in text
