"""Exec → TLS hooks attached: how long a new program runs unhooked.

    sudo .venv/bin/python bench/bench_exec_attach.py [--runs 30]

A program started after the agent is covered from its first TLS call only if its file's
hooks are attached before that call; a Go client on loopback makes it ~5–15 ms after its
exec. This starts the agent, then runs, one at a time, programs whose file the agent has
never hooked (each a new inode), and reads from the agent's log the time from the exec
(kernel timestamp) to the hooks being attached ("… ms after its exec"):

  go-copy      a ~10 MB Go binary (net/http and a dozen other stdlib packages), copied to a
               new path each run: content the agent analysed before (build ID + bytes)
  go-new       the same binary with a few random bytes appended each run: new content,
               analysed from scratch in the worker
  libssl-copy  a new mount namespace whose libssl.so.3 is a fresh copy of the system's
               (bind-mounted over it, as a container carries its own copy), running curl:
               content the agent knows, hooked by the exec lane at curl's exec before the
               loader maps it (curl's DT_NEEDED walked in its root)
  libssl-new   the same with random bytes appended to the copy (new content): analysed and
               hooked by the exec lane at curl's exec (sslelf.rs), before the loader maps it

With --load, wrk drives nginx over TLS on loopback (1 KiB responses) all the while, and
the agent captures it (loopback on, http_capture summary, stores disabled): exec → hooked
while the data plane is busy (its drain holds the GIL that TLS discovery needs; the
agent's line on how long the TLS thread waited for the GIL is printed at the end).
--cases picks cases (comma-separated). BENCH_GOCACHE reuses a Go build cache.

Printed per case: p50, p99 and max in ms, runs where no attach was seen within 5 s, and
how many were hooked at their exec by the native exec lane.
Target: p99 ≤ 20 ms. Figures are printed, never asserted: a benchmark, not a test.
Only loopback is used: the clients connect to a local port that never answers and give
up after 0.5 s (so each lives long enough to be scanned).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAINTAP = ROOT / ".venv" / "bin" / "plaintap"
LIBSSL = os.path.realpath("/usr/lib/x86_64-linux-gnu/libssl.so.3")
CURL = shutil.which("curl") or "/usr/bin/curl"

GO_PROGRAM = """package main

import (
	"archive/zip"
	"compress/gzip"
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	htmltemplate "html/template"
	"image/jpeg"
	"image/png"
	"net/http"
	"net/rpc"
	"net/smtp"
	"os"
	"regexp"
	"text/template"
	"time"
)

var keep = []interface{}{zip.NewReader, gzip.NewReader, sql.Open, json.Marshal, xml.Marshal, ast.Print,
	parser.ParseFile, token.NewFileSet, htmltemplate.New, jpeg.Decode, png.Decode, rpc.NewServer,
	smtp.Dial, regexp.MustCompile, template.New, tls.Dial}

func main() {
	if len(os.Args) > 1 {
		c := &http.Client{Timeout: 500 * time.Millisecond}
		_, err := c.Get(os.Args[1])
		fmt.Println(len(keep), err != nil)
	}
}
"""

CONFIG = """
version: 2
services:
  event_stores: [{type: disabled}]
  object_stores: [{type: disabled}]
stacks: {}
tap:
  direction: egress
  ignore_loopback: true    # only exec → hooked is measured: no payload from other loopback users
"""

CONFIG_LOAD = """
version: 2
services:
  event_stores: [{type: disabled}]
  object_stores: [{type: disabled}]
stacks: {bench: {plugins: [{type: http_capture, config: {level: summary}}]}}
tap: {direction: all, ignore_loopback: false, http: {stack: bench}}
"""

CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)

ATTACHED = re.compile(r"TLS hooks attached: \S+ (\S+) .* ([0-9.]+) ms after its exec\)")
# where the time went: exec -> first scan, analysis (absent: cache hit), the attach calls
PARTS = {"scan": re.compile(r"scanned ([0-9.]+) ms after its exec"), "analysis": re.compile(r"analysed in ([0-9.]+) ms"), "worker": re.compile(r"([0-9.]+) in the worker"),
         "attach": re.compile(r"([0-9.]+) ms to attach"),
         "lane-seen": re.compile(r"exec lane.*, seen ([0-9.]+) ms after its exec"),
         "lane-analysis": re.compile(r"analysed at its (?:program.s )?exec(?:, before the loader mapped it,)? by the exec lane in ([0-9.]+) ms")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_go(d: Path) -> Path:
    src = d / "gobig"
    src.mkdir()
    (src / "main.go").write_text(GO_PROGRAM)
    (src / "go.mod").write_text("module example.com/gobig\n\ngo 1.19\n")
    exe = d / "gobig.bin"
    env = dict(os.environ, GOPROXY="off", GOFLAGS="-mod=mod", GOCACHE=os.environ.get("BENCH_GOCACHE", str(d / "gocache")),
               CGO_ENABLED="0")
    subprocess.run(["go", "build", "-o", str(exe), "."], cwd=src, env=env, check=True, capture_output=True)
    return exe


class Agent:
    def __init__(self, d: Path, load: bool = False) -> None:
        (d / "cfg.yaml").write_text(CONFIG_LOAD if load else CONFIG)
        self.port = free_port()
        self.err = open(d / "agent.err", "wb")
        self.log_path = d / "agent.err"
        self.last_msg = ""
        self.proc = subprocess.Popen(
            [str(PLAINTAP), "--config", str(d / "cfg.yaml"), "--httpd-listen", f"127.0.0.1:{self.port}",
             "--log-encoding", "json", "--lock-file", str(d / "agent.lock"), "--spool-dir", str(d / "state" / "spool"),
             "--allow-multiple"], stdout=subprocess.DEVNULL, stderr=self.err)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("the agent did not become ready in 120 s")

    def attach_ms(self, path: str, timeout: float = 5.0) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    msg = json.loads(line).get("msg", "")
                except ValueError:
                    continue
                m = ATTACHED.search(msg)
                if m and m.group(1) == path:
                    self.last_msg = msg
                    return float(m.group(2))
            time.sleep(0.05)
        return None

    def gil_line(self) -> str:
        return "".join(json.loads(ln)["msg"] + "\n" for ln in self.log_path.read_text(errors="replace").splitlines()
                       if "waited for the GIL" in ln)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.err.close()


def fresh_copy(src: str | Path, dest: Path, new_content: bool) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)
    if new_content:
        with open(dest, "ab") as f:
            f.write(os.urandom(8 + os.urandom(1)[0]))
    return dest


def silent_server() -> int:
    """A TCP port on 127.0.0.1 that accepts and never answers: clients wait in their TLS
    handshake (up to their 0.5 s timeout), alive while the agent hooks them."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    held = []

    def serve() -> None:
        while True:
            conn, _ = srv.accept()
            held.append(conn)
            del held[:-64]

    threading.Thread(target=serve, daemon=True).start()
    return srv.getsockname()[1]


def run_go(d: Path, exe: Path, i: int, new_content: bool, port: int) -> str:
    copy = fresh_copy(exe, d / f"go-{'new' if new_content else 'copy'}-{i}" / "gobig", new_content)
    subprocess.run([str(copy), f"https://127.0.0.1:{port}/"], capture_output=True, timeout=30)
    return str(copy)


def run_libssl(d: Path, i: int, new_content: bool, port: int) -> str:
    """curl as the first program in a new mount namespace that has its own libssl (as
    runc sets up a container's mounts, then execs its first program)."""
    copy = fresh_copy(LIBSSL, d / f"ssl-{'new' if new_content else 'copy'}-{i}" / "libssl.so.3", new_content)

    def enter() -> None:
        if (_libc.unshare(CLONE_NEWNS) or _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
                or _libc.mount(str(copy).encode(), LIBSSL.encode(), None, MS_BIND, None)):
            os._exit(99)

    subprocess.run([CURL, "-sk", "--max-time", "0.5", f"https://127.0.0.1:{port}/"], preexec_fn=enter,
                   capture_output=True, timeout=30)
    return LIBSSL   # the path as the process sees it (the agent logs that one)


def start_load(d: Path) -> list[subprocess.Popen]:
    """nginx over TLS on loopback and wrk against it (until stopped): a busy data plane."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_live_overhead import start_nginx
    nginx, port = start_nginx(d / "nginx")
    w = subprocess.Popen(["wrk", "-t1", "-c4", "-d3600s", f"https://127.0.0.1:{port}/1k.bin"],
                         stdout=subprocess.DEVNULL)
    time.sleep(1)
    return [w, nginx]


def summary(name: str, values: list[float], missed: int) -> str:
    if not values:
        return f"{name:12s} no attach seen ({missed} runs)"
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]
    return (f"{name:12s} n={len(values):3d}  p50 {statistics.median(values):6.1f} ms  p99 {p99:6.1f} ms  "
            f"max {values[-1]:6.1f} ms  missed {missed}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--load", action="store_true", help="wrk against nginx over TLS meanwhile, captured")
    ap.add_argument("--cases", default="go-copy,go-new,libssl-copy,libssl-new")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}; PLAINTAP_UPROBE_MULTI={os.environ.get('PLAINTAP_UPROBE_MULTI', '1')} "
          f"PLAINTAP_UPROBE_WARM={os.environ.get('PLAINTAP_UPROBE_WARM', '1')}")
    if os.geteuid() != 0:
        raise SystemExit("run as root (the agent loads BPF programs)")
    with tempfile.TemporaryDirectory(prefix="bench-exec-") as tmp:
        if os.environ.get("KEEP"):
            tmp = tempfile.mkdtemp(prefix="bench-exec-keep-")
        d = Path(tmp)
        exe = build_go(d)
        print(f"Go binary: {exe.stat().st_size / 1e6:.1f} MB (go {subprocess.run(['go', 'version'], capture_output=True, text=True).stdout.split()[2]})")
        agent = Agent(d, load=args.load)
        results: dict[str, tuple[list[float], int]] = {}
        load = None
        try:
            if args.load:
                load = start_load(d)
            # warm the content cache once (what "a copy of something seen" means)
            port = silent_server()
            run_go(d, exe, -1, False, port)
            agent.attach_ms(str(d / "go-copy--1" / "gobig"))
            cases = {
                "go-copy": lambda i: run_go(d, exe, i, False, port),
                "go-new": lambda i: run_go(d, exe, i, True, port),
                "libssl-copy": lambda i: run_libssl(d, i, False, port),
                "libssl-new": lambda i: run_libssl(d, i, True, port),
            }
            for name, run in cases.items():
                if name not in args.cases.split(","):
                    continue
                values, missed, lane = [], 0, 0
                parts: dict[str, list[float]] = {k: [] for k in PARTS}
                for i in range(args.runs):
                    seen_before = agent.log_path.read_text(errors="replace").count("TLS hooks attached")
                    path = run(i)
                    if name.startswith("libssl"):
                        # the same path each run: wait for one more attach line than before
                        ms = None
                        deadline = time.monotonic() + 5
                        while time.monotonic() < deadline and ms is None:
                            lines = [ln for ln in agent.log_path.read_text(errors="replace").splitlines()
                                     if "TLS hooks attached" in ln]
                            if len(lines) > seen_before:
                                agent.last_msg = json.loads(lines[-1])["msg"]
                                m = ATTACHED.search(agent.last_msg)
                                ms = float(m.group(2)) if m and m.group(1) == path else None
                                break
                            time.sleep(0.05)
                    else:
                        ms = agent.attach_ms(path)
                    if ms is None:
                        missed += 1
                    else:
                        values.append(ms)
                        lane += "by the exec lane" in agent.last_msg
                        for k, rx in PARTS.items():
                            m = rx.search(agent.last_msg)
                            if m:
                                parts[k].append(float(m.group(1)))
                results[name] = (values, missed)
                detail = "  ".join(f"{k} p50 {statistics.median(v):.1f}/max {max(v):.1f}" for k, v in parts.items() if v)
                print(summary(name, values, missed), f"[{detail}]", f"exec lane {lane}/{len(values)}", flush=True)
        finally:
            if load is not None:
                for p in load:
                    p.send_signal(signal.SIGINT)
                    p.wait(10)
            agent.stop()
            print(agent.gil_line(), end="")
            print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
