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
                        "--dump-streams", str(d), "--allow-multiple"], capture_output=True, text=True, timeout=60)
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


# --------------------------------------------------------------------------------------
# config URLs


class _ConfigServer:
    """A config server on 127.0.0.1 in this process: GET /cfg serves `text` (after
    `delay` seconds), GET /to?URL redirects there. `https` with a certificate the agent
    trusts through SSL_CERT_FILE."""

    def __init__(self, text: str, cert=None) -> None:
        import http.server
        import ssl
        import threading
        outer = self
        self.text, self.delay, self.paths = text, 0.0, []

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.paths.append(self.path)
                if self.path.startswith("/to?"):
                    self.send_response(302)
                    self.send_header("Location", self.path[4:])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                time.sleep(outer.delay)
                body = outer.text.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        if cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert.cert, cert.key)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.base = f"{'https' if cert else 'http'}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("case", ["https-to-http", "to-another-host"])
def test_config_url_redirect_off_origin_is_refused_in_one_line(tmp_path, case):
    import os
    from backends import self_signed_cert
    cert = self_signed_cert(tmp_path / "tls", "127.0.0.1")
    plain = _ConfigServer(EGRESS_LOOPBACK)
    first = _ConfigServer(EGRESS_LOOPBACK, cert if case == "https-to-http" else None)
    try:
        if case == "https-to-http":
            target = f"{plain.base}/cfg"                      # same host, plain http
            extra, why = [], "redirected to plain http"
        else:
            target = plain.base.replace("127.0.0.1", "127.0.0.2") + "/cfg"   # another host (loopback)
            extra, why = ["--config-allow-http"], "redirected to another origin"
        url = f"{first.base}/to?{target}"
        env = dict(os.environ, SSL_CERT_FILE=str(cert.cert))
        r = subprocess.run([str(PLAINTAP), "--config", url, "--httpd-listen", f"127.0.0.1:{free_port()}", "--allow-multiple", *extra],
                           capture_output=True, text=True, timeout=60, env=env)
    finally:
        first.close()
        plain.close()
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and r.stdout == "" and len(lines) == 1, r.stderr
    assert why in lines[0] and target in lines[0] and "Traceback" not in r.stderr, lines[0]
    assert first.paths == [f"/to?{target}"] and plain.paths == []     # the redirect was never followed


def test_plain_http_config_url_is_refused_without_the_flag(tmp_path):
    srv = _ConfigServer(EGRESS_LOOPBACK)
    try:
        r = subprocess.run([str(PLAINTAP), "--config", f"{srv.base}/cfg", "--httpd-listen", f"127.0.0.1:{free_port()}",
                            "--allow-multiple"],
                           capture_output=True, text=True, timeout=60)
    finally:
        srv.close()
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "plain http is refused" in lines[0], r.stderr
    assert srv.paths == []


SUMMARY_CONFIG = """
version: 2
services:
  event_stores: [{type: stdout}]
  object_stores: [{type: disabled}]
stacks:
  cap:
    plugins: [{type: http_capture, config: {level: summary}}]
tap: {direction: egress, ignore_loopback: false, http: {stack: cap}}
"""


def test_slow_config_server_does_not_delay_capture_on_reload(start_agent, tmp_path):
    import signal
    from backends import wait_for_port
    cfg = _ConfigServer(SUMMARY_CONFIG)
    www = tmp_path / "www"
    www.mkdir()
    (www / "a.txt").write_text("a\n")
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], cwd=www,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 20, srv)
        agent = start_agent(SUMMARY_CONFIG, "--config", f"{cfg.base}/cfg", "--config-allow-http")
        # The reload's fetch now takes 7 s: slow, yet inside the fetch's 10 s read timeout
        # (at 10 s the fetch itself may give up first and the reload fails instead).
        cfg.delay = 7.0
        agent.proc.send_signal(signal.SIGHUP)
        sent = time.monotonic()
        time.sleep(0.3)                     # the reload fetch is under way
        subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/a.txt?during-reload"],
                       check=True, timeout=10)
        seen_after = reloaded_when_seen = None
        while time.monotonic() - sent < 6.5:
            if "during-reload" in agent.out.read_text():
                seen_after = time.monotonic() - sent
                reloaded_when_seen = "config reloaded" in agent.stderr()
                break
            time.sleep(0.05)
        assert seen_after is not None, "capture stalled while the config server was slow"
        assert not reloaded_when_seen       # captured while the fetch was still running
        deadline = time.monotonic() + 30
        while "config reloaded" not in agent.stderr() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "config reloaded" in agent.stderr() and time.monotonic() - sent >= 7
        assert agent.metric("plaintap_config_reloads_total", 'result="ok"') == 1
        agent.stop()
    finally:
        srv.terminate()
        srv.wait(10)
        cfg.close()
