"""Soak: does the agent's memory stay flat under saturation and through a collector outage?

    sudo .venv/bin/python bench/soak.py [--minutes 5] [--every 30] [--phase saturate,outage]

The agent exports over OTLP/gRPC to a real collector (rotel) that forwards to an in-process
OTLP receiver (tests/e2e/backends.py), with a private spool. Two phases, each --minutes:

* `saturate` — wrk (-t2 -c10) against nginx over TLS on loopback, full speed, summary level:
  more than the pipeline can take, so the kernel drops events and the queues are pushed.
* `outage` — a steady request every 100 ms while the collector is stopped for the whole
  phase: the backlog goes to the spool; then the collector comes back and the backlog drains.
* `idle` (not in the default) — 100,000 idle tracked connections (--idle N), held for the
  phase: RSS before, with them, and after they close.

Every --every seconds one line: RSS, sink queue bytes (memory), spool bytes, pipeline lag,
oldest undelivered record, records produced/exported/dropped, kernel ring drops. At the end
of each phase: RSS min/max and its spread (the goal: flat within 10 %). Figures are
printed, never asserted: this is a benchmark, not a test. Traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import OtlpReceiver, Rotel  # noqa: E402
from bench_live_overhead import PLAINTAP, free_port, start_nginx  # noqa: E402


def config(endpoint: str) -> str:
    return f"""
version: 2
services:
  event_stores: [{{type: otel, endpoint: "{endpoint}", protocol: grpc}}]
  object_stores: [{{type: otel, otel_endpoint: "{endpoint}", protocol: grpc}}]
stacks: {{soak: {{plugins: [{{type: http_capture, config: {{level: summary}}}}]}}}}
tap:
  direction: egress
  ignore_loopback: false
  http: {{stack: soak}}
  filters:
    custom:
      - {{exe: rotel-agent, strategy: suffix}}
      - {{exe: {os.path.realpath(sys.executable)}, strategy: exact}}
"""


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        name = series.split("{", 1)[0]
        if name == "plaintap_kernel_total" and "ringbuf_drops" not in series:
            continue
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            pass
        if name == "plaintap_sink_oldest_record_age_seconds":
            out["oldest_max"] = max(out.get("oldest_max", 0.0), float(value))
    return out


def rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def sample(t0: float, pid: int, port: int, rows: list[int]) -> None:
    m = scrape(port)
    r = rss(pid)
    rows.append(r)
    print(f"{time.monotonic() - t0:6.0f}s  rss {r / 2**20:7.1f} MiB  queue {m.get('plaintap_sink_queue_bytes', 0) / 2**20:7.1f} MiB"
          f"  spool {m.get('plaintap_sink_spool_bytes', 0) / 2**20:7.1f} MiB"
          f"  held {m.get('plaintap_held_bytes', 0) / 2**20:6.1f} MiB"
          f"  lag {m.get('plaintap_pipeline_lag_seconds', 0):6.2f}s  oldest {m.get('oldest_max', 0):6.1f}s"
          f"  produced {m.get('plaintap_sink_accepted_records_total', 0):9.0f}"
          f"  exported {m.get('plaintap_sink_exported_records_total', 0):9.0f}"
          f"  dropped {m.get('plaintap_sink_dropped_records_total', 0):8.0f}"
          f"  ring-drops {m.get('plaintap_kernel_total', 0):9.0f}", flush=True)


def summary(name: str, rows: list[int]) -> None:
    if rows:
        lo, hi = min(rows), max(rows)
        print(f"== {name}: RSS min {lo / 2**20:.1f} MiB, max {hi / 2**20:.1f} MiB, spread {100 * (hi - lo) / lo:.1f} %",
              flush=True)


def run_for(seconds: float, every: float, t0: float, pid: int, port: int, rows: list[int]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(every, max(0.0, end - time.monotonic())))
        sample(t0, pid, port, rows)


def idle_phase(n: int, seconds: float, every: float, t0: float, pid: int, port: int) -> None:
    """n idle connections, each holder process with its own listening port (so the ephemeral
    ports of one destination suffice) and at most 8,400 (its descriptors)."""
    print(f"-- idle: {n} idle tracked connections for {seconds:.0f}s", flush=True)
    helper = ROOT / "tests" / "e2e" / "helpers" / "idle_conns.py"
    before = rss(pid)
    counts = [8400] * (n // 8400) + ([n % 8400] if n % 8400 else [])
    # the system Python: the soak's own (the receiver, the scrapes) is filtered out
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    holders = [subprocess.Popen([python, str(helper), str(k)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for k in counts]
    rows: list[int] = []
    try:
        for h, k in zip(holders, counts):
            assert json.loads(h.stdout.readline())["connections"] == k
        end = time.monotonic() + 120
        while scrape(port).get("plaintap_connections_active", 0) < n and time.monotonic() < end:
            time.sleep(1)
        print(f"   tracked: {scrape(port).get('plaintap_connections_active', 0):.0f}", flush=True)
        run_for(seconds, every, t0, pid, port, rows)
    finally:
        for h in holders:
            h.stdin.close()
        for h in holders:
            h.wait(60)
    time.sleep(5)
    after = rss(pid)
    summary("idle", rows)
    print(f"== idle: RSS {before / 2**20:.1f} MiB before, {max(rows or [0]) / 2**20:.1f} MiB with {n} idle "
          f"connections (+{(max(rows or [0]) - before) / 2**20:.1f} MiB), {after / 2**20:.1f} MiB after they closed",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--every", type=float, default=30.0)
    ap.add_argument("--phase", default="saturate,outage")
    ap.add_argument("--memory-limit", default="512mb")
    ap.add_argument("--idle", type=int, default=100_000, help="connections for the idle phase")
    args = ap.parse_args()
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="plaintap-soak-") as tmp:
        d = Path(tmp)
        nginx, nport = start_nginx(d / "nginx")
        receiver = OtlpReceiver().start()
        rotel = Rotel(d / "rotel", export_to=receiver.grpc_endpoint).start()
        cfg = d / "soak.yaml"
        cfg.write_text(config(rotel.grpc_endpoint))
        sport = free_port()
        agent = subprocess.Popen([str(PLAINTAP), "--config", str(cfg), "--httpd-listen", f"127.0.0.1:{sport}",
                                  "--spool-dir", str(d / "spool"), "--memory-limit", args.memory_limit,
                                  "--lock-file", str(d / "agent.lock"),
                                  "--log-level", "info"], stdout=subprocess.DEVNULL, stderr=open(d / "agent.err", "wb"))
        try:
            for _ in range(600):
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{sport}/readyz", timeout=1).status == 200:
                        break
                except OSError:
                    if agent.poll() is not None:
                        sys.exit("the agent exited at start: " + (d / "agent.err").read_text()[-2000:])
                    time.sleep(0.1)
            t0 = time.monotonic()
            sample(t0, agent.pid, sport, [])
            if "saturate" in args.phase:
                print(f"-- saturate: wrk -t2 -c10 for {seconds:.0f}s", flush=True)
                rows: list[int] = []
                wrk = subprocess.Popen(["wrk", "-t2", "-c10", f"-d{int(seconds)}s", f"https://127.0.0.1:{nport}/1k.bin"],
                                       stdout=subprocess.DEVNULL)
                run_for(seconds, args.every, t0, agent.pid, sport, rows)
                wrk.wait()
                summary("saturate", rows)
            if "outage" in args.phase:
                print(f"-- outage: collector down for {seconds:.0f}s, a request every 100 ms", flush=True)
                rows = []
                stop = threading.Event()

                def steady():
                    while not stop.is_set():
                        subprocess.run(["curl", "-sk", "-o", "/dev/null", f"https://127.0.0.1:{nport}/1k.bin"],
                                       timeout=30)
                        time.sleep(0.1)
                client = threading.Thread(target=steady, daemon=True)
                client.start()
                rotel.stop()
                run_for(seconds, args.every, t0, agent.pid, sport, rows)
                rotel.start()
                print("-- collector back", flush=True)
                run_for(min(60.0, seconds), min(args.every, 10.0), t0, agent.pid, sport, rows)
                stop.set()
                client.join(30)
                summary("outage", rows)
            if "idle" in args.phase:
                idle_phase(args.idle, seconds, args.every, t0, agent.pid, sport)
            t = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
            took = time.monotonic() - t
            lines = (d / "agent.err").read_text().splitlines()
            for ln in lines:
                if any(w in ln for w in ("SIGTERM", "stopping", "stop took", "record accounting")):
                    print("   agent: " + re.sub(r'^.*?"msg": "', "", ln)[:400])
            print(f"-- SIGTERM: exit in {took:.1f}s")
        finally:
            if agent.poll() is None:
                agent.kill()
            rotel.stop()
            receiver.stop()
            nginx.terminate()
            nginx.wait(10)


if __name__ == "__main__":
    main()
