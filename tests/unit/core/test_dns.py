"""DNS in the data plane: datagrams → exchanges (paired by process, socket and id) →
connection events (tap.audit_include_dns), and the address → name map that names later
connections with no SNI and no Host. The parser's and the map's own edge cases (cut
messages, compression loops, huge counts, TTL expiry, the cap) are Rust tests in
native/src/dns.rs; these drive the same code through the data plane's Python API."""
from __future__ import annotations

import struct

from plaintap import _core, metrics
from plaintap.bpf import abi
from plaintap.capture.filters import SKIP_DNS
from plaintap.capture.process import ProcessInfo
from plaintap.dataplane import Pipeline
from plaintap.records.dns import DnsAudit, peer_direction

from .kernel_records import MS, Plane, StaticProcs, conn_close, conn_open, data, dgram, gap

S = 1000 * MS
NAME = "api.example.com"


def qname(name: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"


def query(qid: int, name: str = NAME, qtype: int = 1) -> bytes:
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname(name) + struct.pack(">HH", qtype, 1)


def response(qid: int, addrs=("93.184.216.34",), name: str = NAME, ttl: int = 60, rcode: int = 0) -> bytes:
    rrs = b"".join(struct.pack(">HHHIH", 0xC00C, 1, 1, ttl, 4) + bytes(int(x) for x in a.split("."))
                   for a in addrs)
    return (struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, len(addrs), 0, 0) + qname(name)
            + struct.pack(">HH", 1, 1) + rrs)


def exchange(ts=0, qid=7, pid=10, sk=1, **kw):
    return [dgram(ts, query(qid, **{k: v for k, v in kw.items() if k == "name"}), pid=pid, sk=sk),
            dgram(ts + MS, response(qid, **kw), flow=abi.FLOW_RECV, pid=pid, sk=sk)]


def test_query_and_answer_pair_into_one_exchange_and_teach_the_name():
    p = Plane()
    p.feed(*exchange())
    (ex,) = p.dns
    assert (ex["question_name"], ex["question_type"], ex["response_code"]) == (NAME, "A", "NOERROR")
    assert ex["answers"] == ["93.184.216.34"] and ex["ts_ns"] == 0 and ex["answer_ts_ns"] == MS
    assert ex["bytes_sent"] == len(query(7)) and ex["bytes_recv"] == len(response(7))
    assert p.dp.dns_name("93.184.216.34", 2 * MS) == NAME
    assert p.stats["dns"]["names_learned"] == 1


def test_later_connection_without_sni_or_host_is_named_by_the_answer():
    p = Plane()
    p.feed(*exchange(), conn_open(1, 5 * MS, remote=("93.184.216.34", 80)), conn_close(1, 6 * MS))
    assert p.reports[-1][0].domain == NAME
    # another address is not named; nor is a server-side connection from that address
    p.feed(conn_open(2, 7 * MS, remote=("93.184.216.35", 80)), conn_close(2, 8 * MS))
    p.feed(conn_open(3, 9 * MS, role=abi.ROLE_SERVER, remote=("93.184.216.34", 5555)), conn_close(3, 10 * MS))
    assert [r[0].domain for r in p.reports[1:]] == ["", ""]


def test_host_header_wins_over_the_dns_name():
    p = Plane(parse_http=True)
    p.feed(*exchange(), conn_open(1, 5 * MS, remote=("93.184.216.34", 80)),
           data(1, 6 * MS, 0, b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n"),
           data(1, 7 * MS, 0, b"HTTP/1.1 204 No Content\r\n\r\n", flow=abi.FLOW_RECV),
           conn_close(1, 8 * MS))
    assert p.reports[-1][0].domain == "other.example"


def test_name_expires_with_its_ttl():
    p = Plane()
    p.feed(*exchange(ttl=30))
    p.feed(conn_open(1, 31 * S, remote=("93.184.216.34", 80)), conn_close(1, 32 * S))
    assert p.reports[-1][0].domain == ""
    assert p.dp.dns_name("93.184.216.34", 29 * S) == NAME


def test_answers_are_paired_by_process_socket_and_id():
    p = Plane()
    p.feed(dgram(0, query(7)), dgram(MS, response(8), flow=abi.FLOW_RECV),        # other id
           dgram(2 * MS, response(7), flow=abi.FLOW_RECV, sk=2),                   # other socket
           dgram(3 * MS, response(7), flow=abi.FLOW_RECV, pid=11))                 # other process
    assert p.stats["dns"]["answers_unmatched"] == 3 and p.dp.dns_name("93.184.216.34", 4 * MS) is None
    # unmatched answers are reported (their question is in the answer), never learned from
    assert [e["bytes_sent"] for e in p.dns] == [0, 0, 0]
    p.feed(dgram(4 * MS, response(7), flow=abi.FLOW_RECV))
    assert p.dp.dns_name("93.184.216.34", 5 * MS) == NAME


def test_unanswered_query_is_reported_after_the_timeout():
    p = Plane()
    p.feed(dgram(0, query(9)))
    p.tick(4 * S)
    assert p.dns == []
    p.tick(5 * S)
    (ex,) = p.dns
    assert ex["response_code"] is None and ex["answers"] == [] and ex["question_name"] == NAME
    assert p.stats["dns"]["queries_unanswered"] == 1


def test_garbage_is_a_counted_parse_error():
    p = Plane()
    bad = [b"", b"\x00\x01", query(1)[:15], struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\0\1\0\1",
           struct.pack(">HHHHHH", 1, 0, 60000, 0, 0, 0)]
    p.feed(*(dgram(i, b) for i, b in enumerate(bad)))
    assert p.dns == []
    assert p.stats["parse_errors"]["dns"] == len(bad)
    assert p.stats["dns"]["parse_errors"] == {"truncated": 3, "name_loop": 1, "too_many_questions": 1}
    assert set(p.stats["dns"]["parse_errors"]) <= set(metrics.DNS_PARSE_ERRORS)


def test_datagram_cut_in_the_kernel_keeps_the_answers_before_the_cut():
    full = response(7, addrs=("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    p = Plane()
    p.feed(dgram(0, query(7)), dgram(MS, full[:-6], flow=abi.FLOW_RECV, orig_len=len(full)))
    (ex,) = p.dns
    assert ex["answers"] == ["10.0.0.1", "10.0.0.2"] and ex["bytes_recv"] == len(full)
    assert p.stats["dns"]["datagrams_cut"] == 1


class SkipDnsProcs(StaticProcs):
    def get(self, pid, comm="", uid=None):
        return ProcessInfo(pid, exe="/usr/bin/x", comm=comm, uid=uid, filter_flags=SKIP_DNS if pid == 10 else 0)


def test_only_dns_filter_skips_reporting_and_learning():
    p = Plane(procs=SkipDnsProcs())
    p.feed(*exchange(pid=10))
    assert p.dns == [] and p.dp.dns_name("93.184.216.34", 2 * MS) is None
    assert p.stats["dns"]["datagrams_filtered"] == 2
    p.feed(*exchange(pid=12, ts=3 * MS))
    assert len(p.dns) == 1 and p.dp.dns_name("93.184.216.34", 5 * MS) == NAME


def pipeline(audit: DnsAudit) -> Pipeline:
    return Pipeline(None, clock=lambda ns: 1_700_000_000_000_000_000 + ns, procs=StaticProcs(), run_id="ab12",
                    dns_audit=audit)


def test_audit_include_dns_makes_one_connection_event_per_exchange():
    out = pipeline(DnsAudit(enabled=True, ignore_loopback=True, direction_mask=7)).feed(exchange())
    (r,) = out.events
    a = r.attributes
    assert a["event.type"] == "connection" and a["connection.protocol"] == "dns"
    assert a["network.transport"] == "udp" and a["connection.part"] == 0 and a["connection.finalized"] is True
    assert (a["dns.question.name"], a["dns.question.type"], a["dns.response_code"]) == (NAME, "A", "NOERROR")
    assert a["dns.answers"] == ["93.184.216.34"]
    assert (a["server.address"], a["server.port"], a["client.address"], a["client.port"]) == \
        ("10.0.0.53", 53, "10.0.0.1", 40000)
    assert a["connection.direction"] == "egress-internal" and a["process.executable.path"] == "/usr/bin/x"
    assert a["connection.id"].startswith("ab12u")
    assert r.time_ns == 1_700_000_000_000_000_000
    assert "A api.example.com: NOERROR 93.184.216.34" in r.body


def test_without_audit_no_events_but_the_name_is_learned():
    p = pipeline(DnsAudit(enabled=False))
    assert p.feed(exchange()).events == []
    assert p.dns_name("93.184.216.34", 2 * MS) == NAME


def test_audit_follows_the_tap_direction_and_loopback_filters():
    loop = [dgram(0, query(7), remote=("127.0.0.53", 53)),
            dgram(MS, response(7), flow=abi.FLOW_RECV, remote=("127.0.0.53", 53))]
    assert pipeline(DnsAudit(True, ignore_loopback=True, direction_mask=7)).feed(loop).events == []
    assert len(pipeline(DnsAudit(True, ignore_loopback=False, direction_mask=7)).feed(loop).events) == 1
    # the server 10.0.0.53 is internal: egress-external only reports nothing
    assert pipeline(DnsAudit(True, False, abi.DIR_EGRESS_EXTERNAL)).feed(exchange()).events == []
    assert (peer_direction("8.8.8.8"), peer_direction("192.168.1.1"), peer_direction("::1"),
            peer_direction("100.64.0.1")) == ("egress-external", "egress-internal", "egress-internal",
                                              "egress-internal")


def test_decode_of_a_datagram_record():
    kind, pid, ts, d = _core.decode(dgram(5, b"abc", flow=abi.FLOW_RECV, pid=3, orig_len=9))
    assert (kind, pid, ts) == (abi.EV_DGRAM, 3, 5)
    assert (d["data"], d["orig_len"], d["flow"], d["remote_addr"], d["remote_port"]) == (b"abc", 9, 1, "10.0.0.53", 53)


def test_dns_over_tcp_messages_split_across_reads():
    q, a = query(5), response(5)
    send = struct.pack(">H", len(q)) + q
    recv = struct.pack(">H", len(a)) + a
    p = Plane()
    p.feed(conn_open(1, 0, remote=("10.0.0.53", 53)),
           data(1, MS, 0, send[:3]), data(1, 2 * MS, 3, send[3:]),
           data(1, 3 * MS, 0, recv[:20], flow=abi.FLOW_RECV), data(1, 4 * MS, 20, recv[20:], flow=abi.FLOW_RECV),
           conn_close(1, 5 * MS))
    (ex,) = p.dns
    assert (ex["transport"], ex["question_name"], ex["answers"]) == ("tcp", NAME, ["93.184.216.34"])
    assert (ex["bytes_sent"], ex["bytes_recv"]) == (len(send), len(recv))
    assert p.reports[-1][0].protocol == "dns"
    assert p.dp.dns_name("93.184.216.34", 6 * MS) == NAME
    # a gap loses the framing: nothing after it is parsed, nothing invented
    p2 = Plane()
    p2.feed(conn_open(1, 0, remote=("10.0.0.53", 53)), gap(1, MS, 0, 1), data(1, 2 * MS, 1, send[1:]))
    assert p2.dns == [] and p2.stats["parse_errors"].get("dns", 0) == 0


def test_dns_over_tcp_connection_reported_only_by_its_exchanges():
    q, a = query(5), response(5)
    recs = [conn_open(1, 0, remote=("10.0.0.53", 53)), data(1, MS, 0, struct.pack(">H", len(q)) + q),
            data(1, 2 * MS, 0, struct.pack(">H", len(a)) + a, flow=abi.FLOW_RECV), conn_close(1, 3 * MS)]
    on = pipeline(DnsAudit(True, False, 7)).feed(recs).events
    assert [(r.attributes["connection.protocol"], r.attributes["network.transport"]) for r in on] == [("dns", "tcp")]
    assert pipeline(DnsAudit(False)).feed(recs).events == []
