"""End-to-end fixtures: the real agent (as a user runs it) against real programs on loopback.

Kernel tests need root and BTF. Outside CI they skip with the reason when those are
missing; in CI (CI=true) a missing prerequisite is a failure, never a skip.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAINTAP = ROOT / ".venv" / "bin" / "plaintap"
HELPERS = Path(__file__).resolve().parent / "helpers"


def kernel_ready() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "needs kernel BTF"
    if not (ROOT / "src/plaintap/bpf/obj/capture.bpf.o").exists():
        return "BPF objects not built (run ./test)"
    return None


C_PRELUDE = r"""
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
/* A TCP connection to 127.0.0.1:port (exit code 1 when it cannot be made). */
static int connect_loopback(const char *port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons(atoi(port));
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a)) exit(1);
    return s;
}
"""


def compile_c(tmp_path: Path, name: str, src: str) -> str:
    """A test program from C source (after C_PRELUDE: the usual headers, connect_loopback)."""
    c = tmp_path / f"{name}.c"
    c.write_text(C_PRELUDE + src)
    exe = tmp_path / name
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(c)], check=True)
    return str(exe)


def capture_config(level: str = "summary", *, objects: str = "stdout", tap: str = "") -> str:
    """qtap.yaml: events (and `objects`) to stdout, one stack with http_capture at `level`
    (or a flow mapping such as `{level: full, format: json}`), both directions, loopback
    included; `tap`: more lines under `tap:` (each indented two spaces)."""
    plugin = level if level.startswith("{") else f"{{level: {level}}}"
    return f"""
version: 2
services:
  event_stores: [{{type: stdout}}]
  object_stores: [{{type: {objects}}}]
stacks:
  capture:
    plugins:
      - type: http_capture
        config: {plugin}
tap:
  direction: all
  ignore_loopback: false
  http: {{stack: capture}}
{tap}"""


def need(why: str | None) -> None:
    """A missing prerequisite (`why`, None when all is there): a failure in CI, else a skip."""
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="session")
def kernel():
    why = kernel_ready()
    need(why and f"kernel end-to-end tests cannot run: {why}")


@pytest.fixture(scope="module")
def hello_server():
    """Plain HTTP on 127.0.0.1 (for tests where TLS is not the point): GET /<name> → 200
    `hello <name>`. Yields the port."""
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"hello {self.path[1:]}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def free_port(family=socket.AF_INET) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return s.getsockname()[1]


class RunningAgent:
    def __init__(self, proc: subprocess.Popen, out: Path, err: Path, status_port: int, dump: Path):
        self.proc = proc
        self.out = out
        self.err = err
        self.status_port = status_port
        self.dump = dump
        self.records: list[dict] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of a metric's series; with `labels`, only the series with exactly those labels."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            series = line.rsplit(" ", 1)[0]
            if labels:
                if series == f"{name}{{{labels}}}":
                    total += float(line.rsplit(" ", 1)[1])
            elif series == name or series.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, timeout: float = 30) -> list[dict]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"agent did not stop within {timeout}s; stderr:\n{self.stderr()[-3000:]}")
        self.records = [json.loads(line) for line in self.out.read_text().splitlines() if line.startswith("{")]
        return self.records

    def stderr(self) -> str:
        return self.err.read_text() if self.err.exists() else ""

    def connections(self, **match) -> list[dict]:
        """Connection records (attributes) whose attributes equal every given key=value."""
        out = []
        for r in self.records:
            a = r["attributes"]
            if a.get("event.type") != "connection":
                continue
            if all(a.get(k.replace("__", ".")) == v for k, v in match.items()):
                out.append(a)
        return out


@pytest.fixture
def start_agent(kernel, tmp_path):
    """start_agent(config_yaml_text, *extra_args) → RunningAgent, ready (/readyz 200)."""
    agents: list[RunningAgent] = []

    def _start(config: str, *args: str, ready_timeout: float = 60, dump_streams: bool = True) -> RunningAgent:
        n = len(agents)
        cfg = tmp_path / f"qtap{n}.yaml"
        cfg.write_text(config)
        out, err = tmp_path / f"agent{n}.out", tmp_path / f"agent{n}.err"
        dump = tmp_path / f"dump{n}"
        port = free_port()
        # Each agent its own lock file and spool: tests (and other checkouts' test runs) may run
        # agents side by side; test_first_hour covers the one-agent-per-host lock itself.
        spool = [] if any(a.startswith("--spool-dir") for a in args) else ["--spool-dir", str(tmp_path / f"spool{n}")]
        dumping = ["--dump-streams", str(dump)] if dump_streams else []
        cmd = [str(PLAINTAP), "--config", str(cfg), "--httpd-listen", f"127.0.0.1:{port}",
               *dumping, "--log-level", "info", "--lock-file", str(tmp_path / f"agent{n}.lock"), *spool, *args]
        proc = subprocess.Popen(cmd, stdout=out.open("wb"), stderr=err.open("wb"), cwd=tmp_path)
        agent = RunningAgent(proc, out, err, port, dump)
        agents.append(agent)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"agent exited with {proc.returncode}: {agent.stderr()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return agent
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"agent not ready within {ready_timeout}s: {agent.stderr()[-3000:]}")

    yield _start
    for a in agents:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()


def run_helper(name: str, *args: str, timeout: float = 120) -> dict:
    """Run a helper script from tests/e2e/helpers and return the JSON it prints last."""
    r = subprocess.run([sys.executable, str(HELPERS / name), *args], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{name} failed: {r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


ALL_LOOPBACK = """
version: 2
services:
  event_stores:
    - type: stdout
  object_stores:
    - type: stdout
stacks: {}
tap:
  direction: all
  ignore_loopback: false
"""
