"""Pipeline throughput: recorded-style kernel events → decode → connections → HTTP parsing
→ plugins → records, on one core, with no kernel (DESIGN §6 "pipeline throughput"),
driving `dataplane.Pipeline` (the agent's data plane) directly.

    .venv/bin/python bench/bench_pipeline.py [--tx 20000] [--level summary] [--profile]
                                             [--workers 1,2] [--pairs 8]

The input is what the kernel emits for TLS keep-alive HTTP/1.1 traffic seen from both
ends (a client and a server process on one host): per transaction, four TLS plaintext
data events (request and response, each seen by both ends), built with the ABI layouts.
Before any figure is printed the records are checked: one artifact_record event per
captured transaction plus the connections' final reports, and a sample's attributes. Prints
transactions per second per core and µs per captured transaction (budget: ≤ 50 µs at
summary level), and how much of that is the native core vs. Python (plugins, records).
At `summary` (and at any level with no object store) the native core builds the
`artifact_record` attributes itself and Python adds the process attributes and time.
`--workers 1,2` runs it once per worker count (`--workers N`, native/src/shard.rs) and
prints wall-clock throughput next to the CPU figures (CPU time counts every thread);
`--pairs` spreads the requests over that many connection pairs (workers shard by
connection: one pair keeps one or two of them busy).
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
from plaintap.capture.process import ProcessInfo, ProcessTable  # noqa: E402
from plaintap.config import load_config_text  # noqa: E402
from plaintap.dataplane import Pipeline  # noqa: E402
from plaintap.plugins import PluginStacks  # noqa: E402

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


class BenchProcs(ProcessTable):
    """Two fixed processes (no /proc reads)."""

    def get(self, pid, comm="", uid=None):
        return ProcessInfo(pid, exe=f"/usr/bin/{comm or 'x'}", comm=comm, uid=uid, cmdline=comm)


def open_event(pid, cid, fd, role, lport, rport):
    lo = socket.inet_aton("127.0.0.1") + bytes(12)
    return abi.CONN_OPEN.struct.pack(abi.EV_CONN_OPEN, pid, 1, cid, pid, fd, 0, 2, role,
                                     abi.DIR_INGRESS if role == abi.ROLE_SERVER else abi.DIR_EGRESS_INTERNAL,
                                     lport, rport, 0, lo, lo, b"bench")


def data_event(pid, ts, cid, off, flow, fd, payload):
    return abi.DATA.struct.pack(abi.EV_DATA, pid, ts, cid, off, len(payload), flow, abi.SRC_TLS, 0, fd, 0) + payload


def build(n_tx: int, pairs: int = 1) -> list[bytes]:
    cpid, spid = 1111, 2222
    ev = []
    offs = {}
    for k in range(pairs):
        ev += [open_event(cpid, 1 + 2 * k, 5 + k, abi.ROLE_CLIENT, 40000 + k, 443),
               open_event(spid, 2 + 2 * k, 1000 + k, abi.ROLE_SERVER, 443, 40000 + k)]
        offs.update({(k, x): 0 for x in ("cs", "cr", "ss", "sr")})
    ts = 10
    for i in range(n_tx):
        req = REQ % i
        k = i % pairs
        cc, sc, cfd, sfd = 1 + 2 * k, 2 + 2 * k, 5 + k, 1000 + k
        ev.append(data_event(cpid, ts, cc, offs[k, "cs"], abi.FLOW_SEND, cfd, req)); offs[k, "cs"] += len(req)
        ev.append(data_event(spid, ts + 1, sc, offs[k, "sr"], abi.FLOW_RECV, sfd, req)); offs[k, "sr"] += len(req)
        ev.append(data_event(spid, ts + 2, sc, offs[k, "ss"], abi.FLOW_SEND, sfd, RESP)); offs[k, "ss"] += len(RESP)
        ev.append(data_event(cpid, ts + 3, cc, offs[k, "cr"], abi.FLOW_RECV, cfd, RESP)); offs[k, "cr"] += len(RESP)
        ts += 1000
    return ev


def check(events: list, objects: list, n_tx: int, level: str, pairs: int = 1) -> None:
    """The records are what the agent would export, or the figures mean nothing."""
    arts = [r for r in events if r.attributes.get("event.type") == "artifact_record"]
    conns = [r for r in events if r.attributes.get("event.type") == "connection"]
    want = 2 * n_tx if level != "none" else 0
    assert len(arts) == want, f"{len(arts)} artifact records, expected {want}"
    assert len(conns) == 2 * pairs and all(r.attributes["connection.finalized"] for r in conns), conns
    if want:
        a = arts[-1].attributes
        assert a["http.request.method"] == "GET" and a["http.response.status_code"] == 200, a
        assert a["url.path"] == "/api/items" and a["server.address"] == "api.bench.test", a
        assert a["url.scheme"] == "https" and a["network.protocol.version"] == "1.1", a
    c = conns[0].attributes
    assert c["connection.protocol"] == "http1" and c["tls.inspected"] is True, c


def idle_memory(n: int = 10_000) -> tuple[int, float]:
    """RSS added by `n` idle tracked connections (issue 10: 10,000 within 50 MiB)."""
    import gc
    import os

    def rss() -> int:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    p = Pipeline(None, lambda ns: ns, procs=BenchProcs(), run_id="idle")
    p.feed([open_event(1111, 1, 5, abi.ROLE_CLIENT, 40000, 443)])
    gc.collect()
    before = rss()
    for i in range(0, n, 1000):
        p.feed([open_event(1000 + k % 50, 10 + k, 10 + k, abi.ROLE_CLIENT, 1024 + k % 60000, 443)
                for k in range(i, min(n, i + 1000))])
    gc.collect()
    return len(p.core) - 1, (rss() - before) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tx", type=int, default=20000)
    ap.add_argument("--level", default="summary", choices=["none", "summary", "details", "full"])
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--workers", default="1", help="worker counts to measure, e.g. 1,2 (default 1)")
    ap.add_argument("--pairs", type=int, default=1, help="connection pairs the requests are spread over")
    args = ap.parse_args()
    for w in (int(x) for x in args.workers.split(",")):
        run(args, w)
    conns, mib = idle_memory()
    print(f"  {conns:,} idle tracked connections add {mib:.1f} MiB RSS (target ≤ 50 MiB)")


def run(args, workers: int) -> None:
    events = build(args.tx, args.pairs)
    batches = [events[i:i + 256] for i in range(0, len(events), 256)]
    best = None
    core_best = None
    wall_best = None
    cfg = load_config_text(CONFIG.format(level=args.level))
    for _ in range(3):
        p = Pipeline(PluginStacks(cfg), lambda ns: ns, procs=BenchProcs(), run_id="bench", workers=workers)
        out_events, out_objects = [], []
        prof = cProfile.Profile() if args.profile else None
        t0, w0 = time.process_time(), time.perf_counter()
        if prof:
            prof.enable()
        for b in batches:
            out = p.feed(b)
            out_events += out.events
            out_objects += out.objects
        out = p.close_all(10**12)
        out_events += out.events
        if prof:
            prof.disable()
        dt, wall = time.process_time() - t0, time.perf_counter() - w0
        check(out_events, out_objects, args.tx, args.level, args.pairs)
        best = dt if best is None else min(best, dt)
        wall_best = wall if wall_best is None else min(wall_best, wall)
        # The native core alone: the same records, what the core hands to Python (the
        # summary's attributes when it builds them natively, else transaction objects),
        # without the Python part (process attributes, Record, plugins).
        q = Pipeline(PluginStacks(cfg), lambda ns: ns, procs=BenchProcs(), run_id="bench", workers=workers)
        q.core.parse_http = True
        t0 = time.process_time()
        for b in batches:
            q.core.feed(b)
            q.core.take()
        dt = time.process_time() - t0
        assert q.stats()["transactions"] == 2 * args.tx, q.stats()
        core_best = dt if core_best is None else min(core_best, dt)
    captured = 2 * args.tx  # each transaction is seen by both ends
    print(f"pipeline, level {args.level}, --workers {workers}: {args.tx:,} requests on {args.pairs} connection "
          f"pair(s) seen from both ends = {captured:,} captured transactions, {len(out_events):,} events + "
          f"{len(out_objects):,} objects (checked)")
    print(f"  wall clock: {captured / wall_best:,.0f} captured transactions/s")
    print(f"  {captured / best:,.0f} captured transactions/s per core   {best / captured * 1e6:.1f} µs each "
          f"(budget 50 µs)   {len(events) / best:,.0f} kernel events/s")
    native = p.stats()["native_summaries"]
    print(f"  summaries built natively: {native:,} of {captured:,} "
          f"({'native/src/summary.rs' if native else 'Python plugins for every transaction'})")
    print(f"  native core alone (decode → what is handed to Python): {captured / core_best:,.0f} tx/s, "
          f"{core_best / captured * 1e6:.1f} µs each; Python (plugins, records): "
          f"{(best - core_best) / captured * 1e6:.1f} µs each")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
