"""Live overhead: the same TLS load with and without the agent, alternating, in one run.

    sudo .venv/bin/python bench/bench_live_overhead.py [--rounds 3] [--seconds 5] [--level summary] [--warm-up]
                                                       [--store disabled|stdout] [--workers 1,2]

wrk drives nginx (TLS, HTTP/1.1 keep-alive, 1 KiB file) on 127.0.0.1. Each round runs the
load once bare and once with plaintap capturing it (http_capture at --level, stores
disabled so only capture + parsing + record building are measured, plus stdout access
logs off; `--store stdout` writes every event record as a JSON line to /dev/null instead,
so the records are finished and encoded too). Printed: throughput and p50/p99 latency
ratios (agent / bare), the agent's CPU seconds per 1,000 transactions, kernel events lost
(must be 0), transactions the agent finished against wrk's requests × 2, how long the agent took to exit after SIGINT, and the load average before and
after (other work on the machine skews every figure).

Every round also measures the kernel side alone: right after the agent's run, the same
agent is stopped (SIGSTOP: its ring fills and events are dropped) and the load runs again.
The ratios are taken within each round (bare, agent and kernel-only seconds apart) and
their median printed: this VM's speed drifts by ±20 % over minutes, so ratios of medians
taken minutes apart measure the drift as much as the agent. After an agent exits, the next
measurement waits until the kernel has released its programs (≈ 3 s later: until then
they still run; see wait_programs_gone). A fourth measurement per round runs an agent whose
data records are consumed unread (PLAINTAP_BENCH_DISCARD_DATA=1, a measurement mode): the
kernel's side with every record written to the ring and a consumer that costs nothing, so
the agent's own share of the cost is agent / free consumer. Then a breakdown: BPF program
hits and run time per request (kernel.bpf_stats).

On these 2-core machines wrk, nginx and the agent share the CPUs, so the throughput ratio
also contains the CPU the agent takes from the load: that is the real cost on a busy host.
`--workers 1,2` measures the agent with each `--workers` count in every round (after the
same bare run) and prints the figures per count; the breakdown uses the first count.
Each round starts a new agent; its uprobe warm-up (30 s after start and after each exec,
for TLS hooking's latency; native/src/uprobe_warm.rs) is turned off unless `--warm-up`, so
the rounds measure what a host serving steady traffic pays.
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


def nginx_cpu(master: int) -> float:
    """CPU seconds of nginx: the master and its workers."""
    total = cpu_seconds(master)
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def start_agent(d: Path, level: str, store: str = "disabled", workers: int = 1,
                warm_up: bool = False, discard: bool = False) -> tuple[subprocess.Popen, int]:
    cfg = d / "bench.yaml"
    cfg.write_text(f"""
version: 2
services: {{event_stores: [{{type: {store}}}], object_stores: [{{type: disabled}}]}}
stacks: {{bench: {{plugins: [{{type: http_capture, config: {{level: {level}}}}}]}}}}
tap: {{direction: all, ignore_loopback: false, http: {{stack: bench}}}}
""")
    status = free_port()
    p = subprocess.Popen([str(PLAINTAP), "--config", str(cfg), "--httpd-listen", f"127.0.0.1:{status}",
                          "--log-level", "warn", "--allow-multiple", "--workers", str(workers)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if discard else None,
                         env={**os.environ, "PLAINTAP_UPROBE_WARM": "1" if warm_up else "0",
                              "PLAINTAP_BENCH_DISCARD_DATA": "1" if discard else "0"})
    before = set(bpf_prog_stats())
    for _ in range(300):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{status}/readyz", timeout=1).status == 200:
                p.prog_ids = set(bpf_prog_stats()) - before     # this agent's programs (see stop)
                return p, status
        except OSError:
            time.sleep(0.1)
    raise SystemExit("agent did not become ready")


def lost_events(status: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{status}/metrics", timeout=5).read().decode()
    m = re.search(r'plaintap_kernel_total\{counter="ringbuf_drops"\} ([\d.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def transactions(status: int) -> float:
    """Transactions the agent's data plane finished so far (plaintap_dataplane_total)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{status}/metrics", timeout=5).read().decode()
    m = re.search(r'plaintap_dataplane_total\{counter="transactions"\} ([\d.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def bpf_prog_stats() -> dict[int, tuple[str, int, int]]:
    """id → (name, run_cnt, run_time_ns) of every loaded BPF program (needs bpf_stats)."""
    import json
    progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout or "[]")
    return {p["id"]: (p.get("name", "?"), p.get("run_cnt", 0), p.get("run_time_ns", 0)) for p in progs}


def stop(agent: subprocess.Popen) -> float:
    """SIGINT, then seconds until the agent exited; then wait (not counted) until the
    kernel released its BPF programs."""
    t0 = time.monotonic()
    agent.send_signal(signal.SIGINT)
    agent.wait(60)
    took = time.monotonic() - t0
    wait_programs_gone(getattr(agent, "prog_ids", set()))
    return took


def wait_programs_gone(ids: set[int], timeout: float = 30) -> None:
    """The kernel releases an exited agent's uprobes and programs seconds later (deferred
    to RCU grace periods, ≈ 3 s here), and until then they still run on every TLS call: a
    bare round right after an agent round measured 63–98k req/s for its first 2–4 s where
    an untouched nginx gave ≈ 110k. So the next round starts when they are gone."""
    deadline = time.monotonic() + timeout
    while ids & set(bpf_prog_stats()) and time.monotonic() < deadline:
        time.sleep(0.1)


def breakdown(port: int, d: Path, level: str, seconds: int, store: str, workers: int) -> None:
    """Where the kernel's share goes: BPF program hits and run time per request (kernel.bpf_stats)."""
    agent, status = start_agent(d, level, store, workers)
    try:
        subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=1"], check=False)
        s0 = bpf_prog_stats()
        res = wrk(port, seconds)
        s1 = bpf_prog_stats()
        subprocess.run(["sysctl", "-qw", "kernel.bpf_stats_enabled=0"], check=False)
    finally:
        stop(agent)
    n = max(res["total"], 1)
    print("\nBPF programs per request (both ends), kernel.bpf_stats:")
    total_ns = 0
    for pid, (name, cnt, ns) in sorted(s1.items()):
        c0, t0 = s0.get(pid, (name, 0, 0))[1:]
        if cnt - c0 > 0:
            total_ns += ns - t0
            print(f"  {name:18s} {(cnt - c0) / n:6.2f} hits/req  {(ns - t0) / (cnt - c0):6.0f} ns/hit"
                  f"  {(ns - t0) / n / 1000:6.2f} µs/req")
    print(f"  BPF run time {total_ns / n / 1000:.1f} µs per request (excludes the uprobe trap itself)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--level", default="summary", choices=["summary", "details", "full"])
    ap.add_argument("--store", default="disabled", choices=["disabled", "stdout"],
                    help="event store: disabled (records built, not written) or stdout (JSON lines to /dev/null)")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the per-program BPF round")
    ap.add_argument("--workers", default="1", help="--workers counts to measure, e.g. 1,2 (default 1)")
    ap.add_argument("--no-consumer-round", action="store_true",
                    help="skip the round with a consumer that discards the data records unread")
    ap.add_argument("--warm-up", action="store_true",
                    help="keep the uprobe warm-up on: the agent runs it for 30 s after its start and after each exec "
                         "(native/src/uprobe_warm.rs); each round starts a new agent, so without this flag the rounds "
                         "measure the steady state of a host whose programs are running, as the warm-up is then")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    if os.geteuid() != 0:
        raise SystemExit("run as root (the agent loads eBPF programs)")
    d = Path(tempfile.mkdtemp(prefix="plaintap-bench-"))
    nginx, port = start_nginx(d)
    bare, lost, stops, consumer = [], 0.0, [], []
    agent_runs, cpu_per_k, nginx_per_k, seen, kernel_only = ({w: [] for w in counts} for _ in range(5))
    load_before = open("/proc/loadavg").read().split()[:3]
    try:
        wrk(port, 1)  # warm-up
        for r in range(args.rounds):
            bare.append(wrk(port, args.seconds))
            line = f"round {r + 1}: bare {bare[-1]['rps']:.0f} req/s"
            for w in counts:
                agent, status = start_agent(d, args.level, args.store, w, args.warm_up)
                try:
                    c0, n0, t0 = cpu_seconds(agent.pid), nginx_cpu(nginx.pid), transactions(status)
                    res = wrk(port, args.seconds)
                    n1 = nginx_cpu(nginx.pid)
                    time.sleep(0.5)  # let the agent finish the tail of the load
                    c1 = cpu_seconds(agent.pid)
                    lost += lost_events(status)
                    seen[w].append((transactions(status) - t0, 2 * res["total"]))
                    # the kernel side alone, seconds later: the same agent stopped
                    agent.send_signal(signal.SIGSTOP)
                    kernel_only[w].append(wrk(port, args.seconds)["rps"])
                finally:
                    agent.send_signal(signal.SIGCONT)
                    stops.append(stop(agent))
                agent_runs[w].append(res)
                cpu_per_k[w].append((c1 - c0) / max(res["total"], 1) * 1000)
                nginx_per_k[w].append((n1 - n0) / max(res["total"], 1) * 1000)
                line += (f", with agent (--workers {w}) {res['rps']:.0f} req/s, kernel-only {kernel_only[w][-1]:.0f}"
                         f" (ratios {res['rps'] / bare[-1]['rps']:.2f} of bare, {res['rps'] / kernel_only[w][-1]:.2f}"
                         f" of kernel-only)")
            if not args.no_consumer_round:
                # the kernel's side with a consumer that costs nothing: every record written
                # to the ring, the data records consumed unread (PLAINTAP_BENCH_DISCARD_DATA)
                agent, status = start_agent(d, args.level, args.store, counts[0], args.warm_up, discard=True)
                try:
                    consumer.append(wrk(port, args.seconds)["rps"])
                finally:
                    stop(agent)
                line += f", free consumer {consumer[-1]:.0f} ({consumer[-1] / bare[-1]['rps']:.2f} of bare)"
            print(line, flush=True)
        if not args.no_breakdown:
            breakdown(port, d, args.level, args.seconds, args.store, counts[0])
    finally:
        nginx.terminate()
        nginx.wait(10)
        shutil.rmtree(d, ignore_errors=True)
    med = statistics.median
    bare_rps = [b["rps"] for b in bare]
    print(f"\nTLS load: wrk -c10 against nginx, 1 KiB responses, {args.rounds} alternating rounds × {args.seconds}s,"
          f" http_capture level {args.level}, event store {args.store},"
          f" uprobe warm-up {'on (as in the 30 s after start or an exec)' if args.warm_up else 'off (steady state)'}")
    print(f"load average before {' '.join(load_before)}, after {' '.join(open('/proc/loadavg').read().split()[:3])}"
          f" (2 cores; above ~2 other work shares the CPUs)")
    if consumer:
        print(f"free consumer (--workers {counts[0]} agent, data records unread) {med(consumer):.0f} req/s:"
              f" {med(c / b['rps'] for c, b in zip(consumer, bare)):.2f} of bare,"
              f" {med(c / k for c, k in zip(consumer, kernel_only[counts[0]])):.2f} of kernel-only"
              " (the kernel's side with every record written and none parsed)")
    for w in counts:
        runs = agent_runs[w]
        print(f"--workers {w}:")
        print(f"  throughput   bare {med(b['rps'] for b in bare):9.0f} req/s   agent {med(a['rps'] for a in runs):9.0f}"
              f" req/s   kernel-only {med(kernel_only[w]):9.0f} req/s (medians)")
        ratios = [("agent / bare       ", bare_rps, "target 0.6"), ("agent / kernel-only", kernel_only[w], "target 0.9")]
        if consumer:
            ratios.append(("agent / free consumer", consumer, "what the agent's own work costs the load"))
        for name, base, why in ratios:
            per_round = [a["rps"] / x for a, x in zip(runs, base)]
            print(f"  {name} {med(per_round):.2f}   (per round: {' '.join(f'{r:.2f}' for r in per_round)}; {why})")
        for p in ("p50", "p99"):
            print(f"  latency {p}  bare {med(b[p] for b in bare):8.2f} ms    agent {med(a[p] for a in runs):8.2f} ms"
                  f"    ratio {med(a[p] for a in runs) / med(b[p] for b in bare):.2f}")
        print(f"  agent CPU    {med(cpu_per_k[w]):.3f} s per 1,000 requests ({med(cpu_per_k[w]) * 1000:.0f} µs each)   "
              f"nginx CPU {med(nginx_per_k[w]) * 1000:.0f} µs per request   "
              f"agent / nginx {med(cpu_per_k[w]) / med(nginx_per_k[w]):.2f}")
        print(f"  transactions finished by the agent {sum(t for t, _ in seen[w]):.0f} of {sum(x for _, x in seen[w])} "
              f"(wrk's requests × 2 ends; other loopback traffic on the machine counts too)")
    print(f"events lost  {lost:.0f}")
    print(f"SIGINT → exit {max(stops):.1f} s at most (target 10 s)")

if __name__ == "__main__":
    sys.exit(main())
