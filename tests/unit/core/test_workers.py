"""`--workers N` (native/src/shard.rs): the connection table split into shards on their own
threads, records routed by connection id. The same kernel records give the same records
with 2 or 3 workers as with 1 (every connection's outputs in the same order; across
connections the order may differ), the same counters summed over the shards, and the same
hook calls (opens and exits on the Python thread, forgets from every shard)."""
from __future__ import annotations

import inspect
import struct
from collections import defaultdict

import pytest

from plaintap import _core, metrics
from plaintap.bpf import abi
from plaintap.config import load_config_text
from plaintap.dataplane import Pipeline
from plaintap.plugins import PluginStacks
from plaintap.records.model import to_json_line

from .kernel_records import (MS, Plane, StaticProcs, conn_close, conn_open, data, dgram, gap, proc_exec, proc_exit,
                             sock_state)
from .test_dns import NAME, query, response
from .test_native_summary import CONFIG, _events

WORKERS = [2, 3]


def _pipeline_lines(events, workers, level="summary", objects="disabled"):
    cfg = load_config_text(CONFIG.format(level=level, objects=objects))
    p = Pipeline(PluginStacks(cfg), lambda ns: 1_700_000_000_000_000_000 + ns, procs=StaticProcs(), run_id="t",
                 object_url=(lambda d: None) if objects != "disabled" else None, workers=workers)
    assert p.core.workers == workers
    out = p.feed(events)
    closed = p.close_all(10**12)
    records = out.events + closed.events
    return ([to_json_line(r) for r in records], [to_json_line(r) for r in out.objects + closed.objects],
            p.stats(), len(p.core))


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("role", [abi.ROLE_CLIENT, abi.ROLE_SERVER])
@pytest.mark.parametrize("tls", [True, False])
@pytest.mark.parametrize("level,objects", [("summary", "disabled"), ("full", "stdout")])
def test_records_are_the_same_with_workers(workers, role, tls, level, objects):
    events = _events(role, tls)
    one, one_objects, one_stats, _ = _pipeline_lines(events, 1, level, objects)
    many, many_objects, many_stats, left = _pipeline_lines(events, workers, level, objects)
    assert len(one) >= 58    # reports and transactions of 29 connections
    assert sorted(many) == sorted(one)
    assert sorted(many_objects) == sorted(one_objects)
    if objects != "disabled":
        assert len(one_objects) > 20
    assert many_stats == one_stats
    assert one_stats["transactions"] >= 29 and left == 0


def _mixed_records() -> list[bytes]:
    """Twelve connections of three processes: HTTP, a hole nobody fills, gaps, a TCP_CLOSE
    without close(2), an exec and an exit (of pid 21, with four open connections), UDP DNS
    naming a later connection, and DNS over TCP."""
    req = b"GET /x HTTP/1.1\r\nHost: h.test\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    q, a = query(5), response(5)
    out, ts = [proc_exec(20, 1, b"/usr/bin/x", b"x\0")], 10
    for kid in range(1, 13):
        pid = 20 + kid % 3
        out.append(conn_open(kid, ts, pid=pid, fd=kid + 2))
        out.append(data(kid, ts + 1, 0, req, pid=pid, fd=kid + 2))
        out.append(data(kid, ts + 2, 0, resp, flow=abi.FLOW_RECV, pid=pid, fd=kid + 2))
        ts += MS
    out.append(data(1, ts, len(req) + 1000, req, pid=21))                 # a hole of 1000 bytes
    out.append(gap(2, ts, len(req), 500, pid=22))
    out.append(sock_state(3, ts, new=7, pid=20))
    out.append(dgram(ts, q, sk=9))
    out.append(dgram(ts + 1, a, flow=abi.FLOW_RECV, sk=9))
    out.append(conn_open(40, ts + 2, remote=("93.184.216.34", 80)))        # named by the answer
    out.append(conn_open(41, ts + 3, remote=("10.0.0.53", 53)))
    out.append(data(41, ts + 4, 0, struct.pack(">H", len(q)) + q))
    out.append(data(41, ts + 5, 0, struct.pack(">H", len(a)) + a, flow=abi.FLOW_RECV))
    out.append(proc_exit(21, ts + 6))
    out.append(data(7, ts + 7, 0, b"late", pid=21))                        # after its exit: orphan
    for kid in (2, 5, 8, 11, 40, 41):
        out.append(conn_close(kid, 200 * MS + kid))
    out.append(data(12, 300 * MS, len(req), req, pid=20, fd=14))          # 60 ms on: hole given up
    return out


def _by_connection(p: Plane) -> dict:
    seen = defaultdict(list)
    for conn, part, finalized in p.reports:
        seen[conn.kid].append(("report", part, finalized, conn.bytes_sent, conn.bytes_recv, conn.protocol,
                               conn.domain, conn.close_ns, conn.pid, conn.fd, conn.process.exe))
    for conn, tx, seq in p.txs:
        seen[conn.kid].append(("tx", seq, tx.request.method, tx.request.target, tx.response and tx.response.status))
    return dict(seen)


def _run_mixed(workers: int) -> Plane:
    p = Plane(parse_http=True, workers=workers)
    p.feed(*_mixed_records())
    p.tick(260 * MS)
    p.tick(2000 * MS)
    p.close_all(3000 * MS)
    return p


@pytest.mark.parametrize("workers", WORKERS)
def test_connections_hooks_and_counters_are_the_same_with_workers(workers):
    one, many = _run_mixed(1), _run_mixed(workers)
    assert _by_connection(many) == _by_connection(one)
    assert len(_by_connection(one)) == 14
    assert sorted(many.hooks.forgotten) == sorted(one.hooks.forgotten) == [(21, 3), (21, 6), (21, 9), (21, 12)]
    assert many.hooks.exits == one.hooks.exits == [21]
    assert many.hooks.execs == one.hooks.execs
    assert sorted(map(str, many.dns)) == sorted(map(str, one.dns)) and len(one.dns) == 2
    assert many.stats == one.stats
    s = one.stats
    assert s["finished_by_exit"] == 4 and s["orphan_events"] == 1 and s["closed_by_state"] == 1
    assert s["gap_bytes"] == {"ringbuf_full": 1000 + 500}     # the hole given up, the gap event
    assert [c.domain for c, _, _ in many.reports if c.kid == 40] == [NAME]
    assert len(many.dp) == 0 and many.dp.workers == workers
    # every shard handled all it was sent: the newest record time is the same as with one
    assert many.dp.last_ts == one.dp.last_ts > 0


def test_dns_over_tcp_names_reach_the_host_wide_map():
    q, a = query(5), response(5)
    p = Plane(workers=2)
    p.feed(conn_open(1, 0, remote=("10.0.0.53", 53)), data(1, MS, 0, struct.pack(">H", len(q)) + q),
           data(1, 2 * MS, 0, struct.pack(">H", len(a)) + a, flow=abi.FLOW_RECV), conn_close(1, 3 * MS))
    assert p.dp.dns_name("93.184.216.34", 4 * MS) == NAME
    assert p.stats["dns"]["names_learned"] == 1


def test_shutdown_in_slices_counts_every_shard():
    p = Plane(workers=2)
    p.feed(*(conn_open(kid, kid, fd=kid) for kid in range(1, 41)))
    assert len(p.dp) == 40
    left = p.dp.close_some(10 * MS, 10)
    assert 20 <= left < 40      # up to 10 split between the shards
    p._take()
    while left:
        left = p.dp.close_some(10 * MS, 10)
    p._take()
    assert sorted(c.kid for c, _, f in p.reports if f) == list(range(1, 41))
    assert len(p.dp) == 0


def test_connection_view_from_its_shard():
    p = Plane(workers=3)
    p.feed(conn_open(7, 0, remote=("1.2.3.4", 8080)), data(7, 1, 0, b"abc"))
    c = p.dp.connection(7)
    assert (c.kid, c.remote_addr, c.remote_port, c.bytes_sent) == (7, "1.2.3.4", 8080, 3)
    assert p.dp.connection(8) is None


@pytest.mark.parametrize("n", [0, 65])
def test_workers_out_of_range_are_refused(n):
    with pytest.raises(ValueError, match="workers must be 1 to 64"):
        _core.DataPlane(object(), workers=n)


def test_dataplane_counters_sum_over_shards_into_metrics():
    def value(name):
        return metrics.REGISTRY.get_sample_value("plaintap_dataplane_total", {"counter": name})
    before = value("transactions")
    lines, _, stats, _ = _pipeline_lines(_events(abi.ROLE_CLIENT, False), 2)
    assert value("transactions") - before == stats["transactions"] == 29


def _scenarios():
    """The connection-table scenarios of test_tracker, test_dns and test_process_filters
    (each a whole story with its own assertions), but for the two that assert the order of
    final reports across connections, which workers do not keep."""
    from . import test_dns, test_process_filters, test_tracker
    across = {"test_fd_reuse_never_mixes_connections", "test_dup2_over_a_tracked_fd_feeds_the_new_connection"}
    for m in (test_tracker, test_dns, test_process_filters):
        for name in sorted(dir(m)):
            f = getattr(m, name)
            if name.startswith("test_") and name not in across and callable(f) and not getattr(f, "pytestmark", None):
                if not inspect.signature(f).parameters:
                    yield pytest.param(f, id=f"{m.__name__.rsplit('.', 1)[-1]}.{name}")


@pytest.mark.parametrize("scenario", list(_scenarios()))
def test_table_scenarios_pass_with_two_workers(scenario, monkeypatch):
    from . import kernel_records
    init = kernel_records.Plane.__init__

    def with_workers(self, procs=None, **kw):
        kw.setdefault("workers", 2)
        init(self, procs, **kw)
        assert self.dp.workers == kw["workers"]
    monkeypatch.setattr(kernel_records.Plane, "__init__", with_workers)
    scenario()
