"""The first hour (issue 13), end to end as a new user meets it: the README's first
command shows a local curl within a second; one agent per host; a busy status port named;
/metrics ready to alert on from the start (every loss series at 0, names not numbers, no
`_created`); JSON log lines with ts/level/msg; the monitoring examples check out against
the real /metrics; and the OTel quick start, run literally from its README, delivers the
three kinds of records to a real collector."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from conftest import PLAINTAP, ROOT, free_port

pytestmark = pytest.mark.kernel

LOCAL_YAML = (ROOT / "examples" / "local.yaml").read_text()

SERVER = textwrap.dedent("""
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = b"hello"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    s = http.server.HTTPServer(("127.0.0.1", 0), H)
    print("ready", s.server_address[1], flush=True)
    s.serve_forever()
""")


def test_local_example_shows_a_curl_within_a_second(start_agent):
    agent = start_agent(LOCAL_YAML)
    srv = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(srv.stdout.readline().split()[1])
        url = f"http://127.0.0.1:{port}/first-hour?x=1"
        subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=True, timeout=30)
        done = time.monotonic()
        line = None
        while time.monotonic() - done < 5 and line is None:
            line = next((ln for ln in agent.out.read_text().splitlines()
                         if url in ln and "curl" in ln and "GET" in ln and " 200" in ln), None)
            time.sleep(0.02)
        seen_after = time.monotonic() - done
    finally:
        srv.kill()
    assert line is not None, agent.out.read_text()[-2000:]
    assert seen_after <= 1.0, f"the access log line came {seen_after:.2f}s after the request"
    # the start-up log says what this config leaves out: only the stores, nothing of the traffic
    said = [ln for ln in agent.stderr().splitlines() if "not captured or reported with this config" in ln]
    assert len(said) == 1 and "loopback" not in said[0] and "tap.direction" not in said[0], said
    assert "events (services.event_stores: disabled)" in said[0]


def test_startup_line_names_what_the_default_config_ignores(start_agent):
    agent = start_agent("version: 2\nservices: {event_stores: [{type: stdout}]}\n")
    agent.stop()
    logs = [json.loads(ln) for ln in agent.stderr().splitlines() if ln.startswith("{")]
    said = [r["msg"] for r in logs if "not captured or reported with this config" in r["msg"]]
    assert len(said) == 1, [r["msg"] for r in logs]
    assert "loopback traffic (tap.ignore_loopback: true)" in said[0]
    assert "egress-internal and ingress connections (tap.direction: egress-external)" in said[0]
    assert "objects (services.object_stores: disabled)" in said[0]
    for r in logs:   # JSON log lines carry qtap's keys and a timestamp
        assert {"ts", "level", "msg"} <= set(r), r
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"]), r["ts"]


def test_second_agent_refuses_naming_the_first(start_agent, tmp_path):
    first = start_agent(LOCAL_YAML)
    lock = first.proc.args[first.proc.args.index("--lock-file") + 1]
    cfg = tmp_path / "second.yaml"
    cfg.write_text(LOCAL_YAML)
    r = subprocess.run([str(PLAINTAP), "--config", str(cfg), "--lock-file", lock, "--httpd-listen",
                        f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert f"another plaintap is already running on this host (pid {first.pid}" in lines[0]
    assert "--allow-multiple" in lines[0]
    # --allow-multiple runs it anyway
    second = start_agent(LOCAL_YAML, "--lock-file", lock, "--allow-multiple")
    assert second.proc.poll() is None and first.proc.poll() is None


def test_busy_status_port_is_named(kernel, tmp_path):
    cfg = tmp_path / "q.yaml"
    cfg.write_text(LOCAL_YAML)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([str(PLAINTAP), "--config", str(cfg), "--httpd-listen", f"127.0.0.1:{port}",
                            "--allow-multiple"], capture_output=True, text=True, timeout=60)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("{")]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0] == (f"plaintap: cannot serve /readyz /healthz /metrics on 127.0.0.1:{port}: the address is in "
                        "use (another plaintap may be running); stop it or pick another --httpd-listen HOST:PORT")
    assert "Traceback" not in r.stderr


def metric_names(text: str) -> set[str]:
    return {re.split(r"[{ ]", ln, 1)[0] for ln in text.splitlines() if ln and not ln.startswith("#")}


def test_metrics_ready_to_alert_on_and_examples_match(start_agent):
    agent = start_agent(LOCAL_YAML)
    text = agent.metrics()
    series = [ln.rsplit(" ", 1)[0] for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert not [s for s in series if "_created" in s]
    types = re.findall(r'plaintap_kernel_events_total\{type="([^"]*)"\}', text)
    assert types and not [t for t in types if t.isdigit() or t.startswith("type_")], types
    for name in ("conn_open", "conn_close", "data", "gap", "proc_exec", "proc_exit", "sock_state"):
        assert f'plaintap_kernel_events_total{{type="{name}"}}' in series
    # every loss/error series present from the start (0 unless something was lost)
    for needed in ['plaintap_kernel_total{counter="ringbuf_drops"}', 'plaintap_kernel_total{counter="conn_table_full"}',
                   'plaintap_stream_gap_bytes_total{reason="ringbuf_full"}',
                   'plaintap_stream_gap_bytes_total{reason="chunk_budget"}',
                   'plaintap_sink_dropped_records_total{reason="queue_full",sink="access-logs"}',
                   'plaintap_parse_errors_total{protocol="http1"}', 'plaintap_parse_errors_total{protocol="http2"}',
                   'plaintap_config_reloads_total{result="failed"}', "plaintap_unknown_kernel_events_total",
                   "plaintap_orphan_events_total"]:
        assert needed in series, needed
    # the monitoring examples: promtool accepts the rules, and every metric they and the
    # dashboard query is served here
    examples = ROOT / "examples" / "monitoring"
    r = subprocess.run(["promtool", "check", "rules", str(examples / "alerts.yaml")], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    served = metric_names(text)
    exprs = [rule["expr"] for g in yaml.safe_load((examples / "alerts.yaml").read_text())["groups"] for rule in g["rules"]]
    dash = json.loads((examples / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    named = {m for e in exprs for m in re.findall(r"\b((?:plaintap|process)_[a-z_]+)\b", e)}
    assert named and named <= served, named - served
    assert len(dash["panels"]) >= 8


QUICK_START = ROOT / "examples" / "otel" / "README.md"


def quick_start_commands() -> str:
    """The shell block of the OTel README's quick start, exactly as written."""
    text = QUICK_START.read_text()
    section = text.split("## Quick start (local collector)", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the quick start has one shell block"
    return blocks[0]


def test_otel_quick_start_from_the_readme(kernel, tmp_path):
    script = tmp_path / "quick-start.sh"
    script.write_text("set -euo pipefail\n" + quick_start_commands())
    made = [ROOT / "collector.log", ROOT / "agent.log"]
    busy = [p for p in (4317, 4318, 8080, 10001) if _listening(p)]
    assert not busy, f"the quick start needs ports {busy}, which are in use on this machine"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAINTAP_")}
    proc = subprocess.Popen(["bash", str(script)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        log = (ROOT / "collector.log").read_text()
        for kind in ("event.type: Str(connection)", "event.type: Str(artifact_record)",
                     "artifact.type: Str(http_request)", "artifact.type: Str(http_response)"):
            assert kind in log, f"{kind} not in collector.log; agent.log: {(ROOT / 'agent.log').read_text()[-2000:]}"
        assert "url.full: Str(http://127.0.0.1:8080/)" in log
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)   # the agent, the collector and the web server
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_listening(p) for p in (4317, 8080, 10001)):
            time.sleep(0.2)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for f in made:
            f.unlink(missing_ok=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
