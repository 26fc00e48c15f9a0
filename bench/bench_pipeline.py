"""Pipeline throughput: recorded-style kernel events → decode → connections → HTTP parsing
→ plugins → records, on one core, with no kernel (DESIGN §6 "pipeline throughput").

    .venv/bin/python bench/bench_pipeline.py [--tx 20000] [--level summary] [--profile]

The input is what the kernel emits for TLS keep-alive HTTP/1.1 traffic seen from both
ends (a client and a server process on one host): per transaction, four TLS plaintext
data events (request and response, each seen by both ends), built with the ABI layouts.
Records go to a sink that only counts them. Prints transactions per second per core and
µs per captured transaction (budget: ≤ 50 µs at summary level).
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from plaintap.bpf import abi  # noqa: E402
from plaintap.config import load_config_text  # noqa: E402
from plaintap.pipeline import Agent, RunOptions  # noqa: E402

REQ = (b"GET /api/items?page=%d HTTP/1.1\r\nHost: api.bench.test\r\nUser-Agent: bench/1.0\r\n"
       b"Accept: application/json\r\n\r\n")
BODY = b'{"items": [' + b", ".join(b'{"id": %d}' % i for i in range(40)) + b"]}"
RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Server: bench\r\n\r\n" % len(BODY)) + BODY

CONFIG = """
version: 2
services: {{event_stores: [{{type: stdout}}], object_stores: [{{type: stdout}}]}}
stacks: {{b: {{plugins: [{{type: http_capture, config: {{level: {level}}}}}]}}}}
tap: {{direction: all, ignore_loopback: false, http: {{stack: b}}}}
"""


class CountingSink:
    name = "count"

    def __init__(self) -> None:
        self.n = 0

    def export(self, batch) -> None:
        self.n += len(batch)

    def start(self) -> None:
        pass


def open_event(pid, cid, fd, role, lport, rport):
    lo = socket.inet_aton("127.0.0.1") + bytes(12)
    return abi.CONN_OPEN.struct.pack(abi.EV_CONN_OPEN, pid, 1, cid, pid, fd, 0, 2, role,
                                     abi.DIR_INGRESS if role == abi.ROLE_SERVER else abi.DIR_EGRESS_INTERNAL,
                                     lport, rport, 0, lo, lo, b"bench")


def data_event(pid, ts, cid, off, flow, fd, payload):
    return abi.DATA.struct.pack(abi.EV_DATA, pid, ts, cid, off, len(payload), flow, abi.SRC_TLS, 0, fd, 0) + payload


def build(n_tx: int) -> list[bytes]:
    cpid, spid = 1111, 2222
    ev = [open_event(cpid, 1, 5, abi.ROLE_CLIENT, 40000, 443), open_event(spid, 2, 7, abi.ROLE_SERVER, 443, 40000)]
    offs = {k: 0 for k in ("cs", "cr", "ss", "sr")}
    ts = 10
    for i in range(n_tx):
        req = REQ % i
        ev.append(data_event(cpid, ts, 1, offs["cs"], abi.FLOW_SEND, 5, req)); offs["cs"] += len(req)
        ev.append(data_event(spid, ts + 1, 2, offs["sr"], abi.FLOW_RECV, 7, req)); offs["sr"] += len(req)
        ev.append(data_event(spid, ts + 2, 2, offs["ss"], abi.FLOW_SEND, 7, RESP)); offs["ss"] += len(RESP)
        ev.append(data_event(cpid, ts + 3, 1, offs["cr"], abi.FLOW_RECV, 5, RESP)); offs["cr"] += len(RESP)
        ts += 1000
    return ev


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tx", type=int, default=20000)
    ap.add_argument("--level", default="summary", choices=["none", "summary", "details", "full"])
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    events = build(args.tx)
    best = None
    for _ in range(3):
        agent = Agent(load_config_text(CONFIG.format(level=args.level)), RunOptions(tls_probes=()))
        sink = CountingSink()
        agent.event_sink = agent.object_sink = sink
        for c in agent.tracker.consumers:   # the TLS marking a real kernel connection would have
            pass
        batches = [events[i:i + 256] for i in range(0, len(events), 256)]
        prof = cProfile.Profile() if args.profile else None
        t0 = time.process_time()
        if prof:
            prof.enable()
        for b in batches:
            agent._process(b)
            agent._flush_records()
        if prof:
            prof.disable()
        dt = time.process_time() - t0
        best = dt if best is None else min(best, dt)
    captured = 2 * args.tx  # each transaction is seen by both ends
    print(f"pipeline, level {args.level}: {args.tx:,} requests seen from both ends = {captured:,} captured "
          f"transactions, {sink.n:,} records")
    print(f"  {captured / best:,.0f} captured transactions/s per core   {best / captured * 1e6:.1f} µs each "
          f"(budget 50 µs)   {len(events) / best:,.0f} kernel events/s")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
