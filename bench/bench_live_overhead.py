"""Live overhead: the same TLS load with and without the agent, alternating, in one run.

    sudo .venv/bin/python bench/bench_live_overhead.py [--rounds 3] [--seconds 5] [--level summary]

wrk drives nginx (TLS, HTTP/1.1 keep-alive, 1 KiB file) on 127.0.0.1. Each round runs the
load once bare and once with plaintap capturing it (http_capture at --level, stores
disabled so only capture + parsing + record building are measured, plus stdout access
logs off). Printed: throughput and p50/p99 latency ratios (agent / bare), the agent's
CPU seconds per 1,000 transactions, and kernel events lost (must be 0).

On these 2-core machines wrk, nginx and the agent share the CPUs, so the throughput ratio
also contains the CPU the agent takes from the load: that is the real cost on a busy host.
Figures are printed, never asserted: this is a benchmark, not a test.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAINTAP = ROOT / ".venv" / "bin" / "plaintap"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(d: Path) -> tuple[subprocess.Popen, int]:
    (d / "www").mkdir(parents=True)
    (d / "www" / "1k.bin").write_bytes(os.urandom(1024))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "k.pem"),
                    "-out", str(d / "c.pem"), "-days", "1", "-subj", "/CN=bench.test"], check=True, capture_output=True)
    port = free_port()
    (d / "nginx.conf").write_text(f"""
daemon off; master_process on; worker_processes 1; user root; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;
  server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {d}/c.pem; ssl_certificate_key {d}/k.pem; root {d}/www; }} }}
""")
    p = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(d / "nginx.conf"), "-p", str(d)])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("nginx did not start")


def wrk(port: int, seconds: int) -> dict:
    out = subprocess.run(["wrk", "-t1", "-c10", f"-d{seconds}s", "--latency", f"https://127.0.0.1:{port}/1k.bin"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    return {"rps": rps, "total": total, "p50": pct("50"), "p99": pct("99")}


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_agent(d: Path, level: str) -> tuple[subprocess.Popen, int]:
    cfg = d / "bench.yaml"
    cfg.write_text(f"""
version: 2
services: {{event_stores: [{{type: disabled}}], object_stores: [{{type: disabled}}]}}
stacks: {{bench: {{plugins: [{{type: http_capture, config: {{level: {level}}}}}]}}}}
tap: {{direction: all, ignore_loopback: false, http: {{stack: bench}}}}
""")
    status = free_port()
    p = subprocess.Popen([str(PLAINTAP), "--config", str(cfg), "--httpd-listen", f"127.0.0.1:{status}",
                          "--log-level", "warn"], stdout=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{status}/readyz", timeout=1).status == 200:
                return p, status
        except OSError:
            time.sleep(0.1)
    raise SystemExit("agent did not become ready")


def lost_events(status: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{status}/metrics", timeout=5).read().decode()
    m = re.search(r'plaintap_kernel_total\{counter="ringbuf_drops"\} ([\d.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--level", default="summary", choices=["summary", "details", "full"])
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the agent loads eBPF programs)")
    d = Path(tempfile.mkdtemp(prefix="plaintap-bench-"))
    nginx, port = start_nginx(d)
    bare, agent_runs, cpu_per_k, lost = [], [], [], 0.0
    try:
        wrk(port, 1)  # warm-up
        for r in range(args.rounds):
            bare.append(wrk(port, args.seconds))
            agent, status = start_agent(d, args.level)
            try:
                c0 = cpu_seconds(agent.pid)
                res = wrk(port, args.seconds)
                time.sleep(0.5)  # let the agent finish the tail of the load
                c1 = cpu_seconds(agent.pid)
                lost += lost_events(status)
            finally:
                agent.send_signal(signal.SIGINT)
                agent.wait(60)
            agent_runs.append(res)
            cpu_per_k.append((c1 - c0) / max(res["total"], 1) * 1000)
            print(f"round {r + 1}: bare {bare[-1]['rps']:.0f} req/s, with agent {res['rps']:.0f} req/s", flush=True)
    finally:
        nginx.terminate()
        nginx.wait(10)
        shutil.rmtree(d, ignore_errors=True)
    med = statistics.median
    print(f"\nTLS load: wrk -c10 against nginx, 1 KiB responses, {args.rounds} alternating rounds × {args.seconds}s,"
          f" http_capture level {args.level}")
    print(f"throughput   bare {med(b['rps'] for b in bare):9.0f} req/s   agent {med(a['rps'] for a in agent_runs):9.0f}"
          f" req/s   ratio {med(a['rps'] for a in agent_runs) / med(b['rps'] for b in bare):.2f}")
    for p in ("p50", "p99"):
        print(f"latency {p}  bare {med(b[p] for b in bare):8.2f} ms    agent {med(a[p] for a in agent_runs):8.2f} ms"
              f"    ratio {med(a[p] for a in agent_runs) / med(b[p] for b in bare):.2f}")
    print(f"agent CPU    {med(cpu_per_k):.3f} s per 1,000 transactions ({med(cpu_per_k) * 1000:.0f} µs each)")
    print(f"events lost  {lost:.0f}")


if __name__ == "__main__":
    sys.exit(main())
