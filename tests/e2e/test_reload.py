"""SIGHUP re-reads the config (qtap's behaviour): new stacks, filters and tap settings
apply without a restart; a broken file is reported in one line and the running config is
kept. Real curl against a real Python HTTP server on loopback."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from backends import wait_for_port
from conftest import free_port

pytestmark = pytest.mark.kernel

CURL = os.path.realpath(shutil.which("curl") or "/usr/bin/curl")


def config(level: str, ignore_loopback: bool = False, typo: bool = False, objects: str = "stdout") -> str:
    key = "levle" if typo else "level"
    return f"""
version: 2
services:
  event_stores: [{{type: stdout}}]
  object_stores: [{{type: {objects}}}]
stacks:
  cap:
    plugins:
      - type: http_capture
        config: {{{key}: {level}}}
tap:
  direction: all
  ignore_loopback: {str(ignore_loopback).lower()}
  http: {{stack: cap}}
"""


def wait_for_log(agent, text: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.stderr().count(text) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"agent never logged {text!r} ({count}x): {agent.stderr()[-2000:]}")


def test_sighup_reloads_stacks_and_tap_settings_and_keeps_a_good_config(start_agent, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "hello.txt").write_bytes(b"hello\n")
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], cwd=www,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 20, srv)
        agent = start_agent(config("none"))
        cfg_file = tmp_path / "qtap0.yaml"

        def get(tag: str) -> int:
            p = subprocess.run([CURL, "-s", "-o", "/dev/null", "-w", "%{local_port}",
                                f"http://127.0.0.1:{port}/hello.txt?step={tag}"], capture_output=True, text=True,
                               timeout=30)
            assert p.returncode == 0
            return int(p.stdout)

        def reload(text: str, expect: str, n: int) -> None:
            cfg_file.write_text(text)
            agent.proc.send_signal(signal.SIGHUP)
            wait_for_log(agent, expect, n)

        ports = {"none": get("none")}
        reload(config("summary"), "config reloaded", 1)
        ports["summary"] = get("summary")
        reload(config("summary", typo=True), "config reload failed", 1)
        assert agent.proc.poll() is None
        ports["kept"] = get("kept")
        reload(config("summary", ignore_loopback=True), "config reloaded", 2)
        ports["loopback-ignored"] = get("loopback-ignored")
        # New stores: the old sinks drain off the loop while the new ones take over.
        reload(config("full", ignore_loopback=True, objects="disabled"), "services (event and object stores)", 1)
        assert agent.metric("plaintap_config_reloads_total", 'result="ok"') == 3
        assert agent.metric("plaintap_config_reloads_total", 'result="failed"') == 1
        records = agent.stop()
    finally:
        srv.terminate()
        srv.wait(10)

    err = agent.stderr()
    failed = [ln for ln in err.splitlines() if "config reload failed" in ln]
    assert len(failed) == 1 and "levle" in failed[0], failed
    steps = [r["attributes"]["url.full"].rsplit("=", 1)[1] for r in records
             if r["attributes"].get("event.type") == "artifact_record"
             and r["attributes"].get("connection.direction") != "ingress"
             and f"127.0.0.1:{port}/" in r["attributes"]["url.full"]]   # other agents' probes are traffic too
    # level none made no transactions; summary did; the broken file changed nothing; after
    # ignore_loopback the kernel no longer tracks the new loopback connection at all.
    assert sorted(steps) == ["kept", "summary"], steps
    egress_ports = {a["client.port"] for a in (r["attributes"] for r in records)
                    if a.get("event.type") == "connection" and a["connection.direction"] != "ingress"}
    assert {ports["none"], ports["summary"], ports["kept"]} <= egress_ports
    assert ports["loopback-ignored"] not in egress_ports
    # Nothing produced before the store change was lost with the retired sinks.
    acct = [ln for ln in err.splitlines() if "record accounting" in ln][-1]
    nums = dict(re.findall(r"(produced|exported|dropped)=(\d+)", acct))
    assert int(nums["produced"]) == int(nums["exported"]) == len(records) > 0 and nums["dropped"] == "0", acct
