"""The systemd unit (deploy/systemd/plaintap.service): `systemd-analyze verify` accepts it
with no warning, and the agent runs, becomes ready and captures under the unit's
capability bounding set with no-new-privileges (applied with setpriv, as systemd would:
these machines do not run systemd as init)."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

from conftest import PLAINTAP, ROOT, free_port

UNIT = ROOT / "deploy" / "systemd" / "plaintap.service"


def unit_setting(name: str) -> str:
    (value,) = re.findall(rf"^{name}=(.*)$", UNIT.read_text(), re.M)
    return value.strip()


def test_unit_verifies_cleanly(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (Debian's systemd package)")
    unit = tmp_path / "plaintap.service"
    unit.write_text(UNIT.read_text().replace("/opt/plaintap/bin/plaintap", str(PLAINTAP)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", r.stderr + r.stdout
    assert float(unit_setting("TimeoutStopSec").rstrip("s")) > 10 + 1 + 5   # shutdown timeout + ring drain + watchdog


@pytest.mark.kernel
def test_agent_runs_within_the_units_capabilities(kernel, tmp_path):
    caps = unit_setting("CapabilityBoundingSet").split()
    bounding = "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    (tmp_path / "qtap.yaml").write_text("""version: 2
services:
  event_stores: [{type: stdout}]
  object_stores: [{type: stdout}]
stacks:
  s:
    plugins: [{type: http_capture, config: {level: summary}}]
tap: {direction: all, ignore_loopback: false, http: {stack: s}}
""")
    port = free_port()
    out = (tmp_path / "out.jsonl").open("wb")
    err = (tmp_path / "err.log").open("wb")
    proc = subprocess.Popen(["setpriv", f"--bounding-set={bounding}", "--no-new-privs", str(PLAINTAP),
                             "--config", str(tmp_path / "qtap.yaml"), "--httpd-listen", f"127.0.0.1:{port}",
                             "--lock-file", str(tmp_path / "lock")], stdout=out, stderr=err)
    try:
        deadline, ready = time.monotonic() + 60, False
        while time.monotonic() < deadline and not ready and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    ready = r.status == 200
            except OSError:
                time.sleep(0.2)
        assert ready, (tmp_path / "err.log").read_text()[-3000:]
        r = subprocess.run(["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{port}/metrics?from=systemd-test"],
                           timeout=30)
        assert r.returncode == 0
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        out.close()
        err.close()
    assert code == 0
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines() if x.startswith("{")]
    assert [r for r in records if r["attributes"].get("url.query") == "from=systemd-test"
            and r["attributes"].get("process.executable.name") == "curl"]
