"""DNS end to end: UDP datagrams to and from port 53 captured in the kernel, parsed, paired,
reported (tap.audit_include_dns) and used to name later connections that carry no SNI and
no Host (qtap's domain rule).

A test-owned DNS server (helpers/dnsserver.py) answers on 127.0.0.2:53 (another loopback
address when that one is taken), over UDP and TCP; the client (helpers/dnsclient.py)
resolves a name through it with sendto/recvfrom (or over TCP), then sends a plain HTTP/1.0
request without Host to the address it got, served by an HTTP server in this process.
glibc's own resolver (getent, in a private mount namespace whose /etc/resolv.conf names the
test server) sends its A and AAAA queries together with sendmmsg; Go's (helpers/goresolve)
connects a UDP socket per query and uses write/read.
"""
from __future__ import annotations

import http.server
import json
import os
import random
import subprocess
import sys
import threading
import time

import pytest

from conftest import HELPERS, capture_config, run_helper

pytestmark = pytest.mark.kernel

NAME = "api.dns-test.example"
OTHER = "getent.dns-test.example"


def config(audit: bool) -> str:
    return capture_config("summary", tap=f"  audit_include_dns: {str(audit).lower()}\n")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        body = b"resolved\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def web():
    """An HTTP server on a loopback address of its own (the address the DNS server gives)."""
    addr = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(1, 250)}"
    srv = http.server.ThreadingHTTPServer((addr, 0), _Quiet)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def dns_server(web):
    """The DNS server on 127.0.0.2:53, or on another loopback address when that is taken."""
    candidates = ["127.0.0.2"] + [f"127.53.{random.randint(0, 255)}.{random.randint(1, 254)}" for _ in range(5)]
    for addr in candidates:
        p = subprocess.Popen([sys.executable, str(HELPERS / "dnsserver.py"), addr, "30",
                              f"{NAME}={web[0]}", f"{OTHER}={web[0]}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        if line:
            assert json.loads(line)["addr"] == addr
            yield addr
            p.kill()
            p.wait()
            return
        p.wait()
    pytest.fail(f"no loopback address to run the DNS server on: {p.stderr.read()[-500:]}")


def wait_records(agent, pred, n: int, timeout: float = 60) -> None:
    """Until the agent has written n records whose attributes satisfy pred (a busy machine
    can put it seconds behind the kernel), so stopping it loses none of them."""
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        got = sum(1 for line in agent.out.read_text().splitlines()
                  if line.startswith("{") and pred(json.loads(line)["attributes"]))
        if got >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"the agent wrote {got} of {n} awaited records within {timeout}s")


def is_dns(pid: int):
    return lambda a: a.get("connection.protocol") == "dns" and a.get("process.pid") == pid


def is_final_tcp(pid: int, port: int):
    return lambda a: (a.get("event.type") == "connection" and a.get("process.pid") == pid
                      and a.get("client.port") == port and a.get("connection.finalized") is True)


def metric_reaching(agent, name: str, labels: str, n: float, timeout: float = 10) -> float:
    """The metric's value once it is at least `n`, or its value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (v := agent.metric(name, labels)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return v


def dns_events(agent) -> list[dict]:
    return [a for a in agent.connections() if a.get("connection.protocol") == "dns"]


def test_dns_exchange_reported_and_names_the_next_connection(start_agent, dns_server, web, tmp_path):
    agent = start_agent(config(audit=True))
    got = run_helper("dnsclient.py", dns_server, NAME, str(web[1]), "--garbage")
    assert got["address"] == web[0] and got["status"] == 200

    # glibc's resolver: A and AAAA in one sendmmsg, the answers by recvfrom.
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {dns_server}\noptions timeout:2 attempts:1\n")
    g = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {resolv} /etc/resolv.conf && exec getent ahosts {OTHER}"],
                       capture_output=True, text=True, timeout=30)
    assert g.returncode == 0 and web[0] in g.stdout, g.stderr
    wait_records(agent, is_dns(got["pid"]), 1)
    wait_records(agent, is_final_tcp(got["pid"], got["local_port"]), 1)
    wait_records(agent, lambda a: a.get("dns.question.name") == OTHER, 2)
    # counters reach Prometheus a little after the records (the data plane copies them at
    # most every METRICS_EVERY_NS): wait for them as for the records
    learned = metric_reaching(agent, "plaintap_dns_total", 'counter="names_learned"', 2)
    parse_errors = metric_reaching(agent, "plaintap_dns_parse_errors_total", "", 1)
    dns_protocol_errors = agent.metric("plaintap_parse_errors_total", 'protocol="dns"')
    agent.stop()

    mine = [a for a in dns_events(agent) if a["process.pid"] == got["pid"]]
    assert len(mine) == 1, f"expected one DNS exchange from the client, got {mine}"
    d = mine[0]
    assert d["network.transport"] == "udp" and d["connection.finalized"] is True
    assert d["dns.question.name"] == NAME and d["dns.question.type"] == "A"
    assert d["dns.response_code"] == "NOERROR" and d["dns.answers"] == [web[0]]
    assert d["server.address"] == dns_server and d["server.port"] == 53
    assert d["network.peer.address"] == dns_server and d["connection.direction"] == "egress-internal"
    assert d["connection.bytes_sent"] == len(NAME) + 2 + 16 and d["connection.bytes_received"] > d["connection.bytes_sent"]
    # the resolved executable, or the exec'd path when the client exited before /proc was read
    assert d["process.executable.path"] in (os.path.realpath(sys.executable), sys.executable)

    # The TCP connection that followed: no SNI, no Host — named by the answer.
    tcp = [a for a in agent.connections(client__port=got["local_port"]) if a["network.transport"] == "tcp"
           and a["process.pid"] == got["pid"]]
    assert tcp and all(a["server.address"] == NAME for a in tcp), tcp
    assert tcp[-1]["network.peer.address"] == web[0] and tcp[-1]["connection.protocol"] == "http1"

    # glibc's A and AAAA queries, sent together with sendmmsg: two exchanges.
    ge = [a for a in dns_events(agent) if a["dns.question.name"] == OTHER]
    assert sorted(a["dns.question.type"] for a in ge) == ["A", "AAAA"], ge
    a_rec = next(a for a in ge if a["dns.question.type"] == "A")
    assert a_rec["dns.answers"] == [web[0]] and a_rec["process.executable.name"] == "getent"
    assert next(a for a in ge if a["dns.question.type"] == "AAAA")["dns.answers"] == []

    assert learned >= 2
    assert parse_errors >= 1 and dns_protocol_errors == parse_errors, \
        "the non-DNS datagram to port 53 was not counted as a parse error"


def test_dns_over_tcp_is_reported_with_transport_tcp_and_names_the_next_connection(start_agent, dns_server, web):
    agent = start_agent(config(audit=True))
    got = run_helper("dnsclient.py", dns_server, NAME, str(web[1]), "--tcp")
    assert got["address"] == web[0] and got["status"] == 200
    wait_records(agent, is_dns(got["pid"]), 1)
    wait_records(agent, is_final_tcp(got["pid"], got["local_port"]), 1)
    agent.stop()
    mine = [a for a in dns_events(agent) if a["process.pid"] == got["pid"]]
    assert len(mine) == 1, mine
    d = mine[0]
    assert d["network.transport"] == "tcp" and d["dns.question.name"] == NAME
    assert d["dns.response_code"] == "NOERROR" and d["dns.answers"] == [web[0]]
    assert d["server.address"] == dns_server and d["server.port"] == 53
    # the TCP connection to port 53 is reported by its exchange only
    plain = [a for a in agent.connections() if a["process.pid"] == got["pid"] and a["server.port"] == 53
             and a.get("connection.protocol") != "dns"]
    assert plain == []
    tcp = [a for a in agent.connections(client__port=got["local_port"]) if a["process.pid"] == got["pid"]]
    assert tcp and all(a["server.address"] == NAME for a in tcp), tcp


@pytest.fixture(scope="module")
def goresolve(tmp_path_factory):
    """Go's own resolver, built once for this module (stdlib only, no network)."""
    dest = tmp_path_factory.mktemp("goresolve")
    exe = dest / "goresolve"
    env = dict(os.environ, GOPROXY="off", GOFLAGS="-mod=mod", GOCACHE=str(dest / "gocache"),
               GOPATH=str(dest / "gopath"), CGO_ENABLED="0")
    subprocess.run(["go", "build", "-o", str(exe), "."], cwd=HELPERS / "goresolve", env=env, check=True,
                   capture_output=True, timeout=600)
    return exe


def test_go_resolver_connected_udp_write_read(start_agent, dns_server, web, goresolve):
    """Go's resolver: a connected UDP socket per query, write(2) and read(2)."""
    agent = start_agent(config(audit=True))
    r = subprocess.run([str(goresolve), dns_server, NAME], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["addrs"] == [web[0]]
    wait_records(agent, is_dns(got["pid"]), 2)
    agent.stop()
    mine = [a for a in dns_events(agent) if a["process.pid"] == got["pid"]]
    assert sorted(a["dns.question.type"] for a in mine) == ["A", "AAAA"], mine
    a_rec = next(a for a in mine if a["dns.question.type"] == "A")
    assert a_rec["dns.answers"] == [web[0]] and a_rec["network.transport"] == "udp"
    # a connected socket: both ends come from the socket itself
    assert a_rec["client.address"].startswith("127.") and a_rec["client.port"] > 0
    assert a_rec["server.address"] == dns_server and a_rec["server.port"] == 53


def test_without_audit_no_dns_events_but_names_still_learned(start_agent, dns_server, web):
    agent = start_agent(config(audit=False))
    got = run_helper("dnsclient.py", dns_server, NAME, str(web[1]))
    assert got["status"] == 200
    wait_records(agent, is_final_tcp(got["pid"], got["local_port"]), 1)
    agent.stop()
    assert dns_events(agent) == []
    tcp = [a for a in agent.connections(client__port=got["local_port"]) if a["process.pid"] == got["pid"]]
    assert tcp and all(a["server.address"] == NAME for a in tcp), tcp
    assert tcp[-1]["network.peer.address"] == web[0]


def test_only_dns_filter_skips_the_process_dns(start_agent, dns_server, web):
    """`filters.custom[].only: [dns]`: the process's DNS is neither reported nor learned from
    (the kernel does not copy it), its connections are captured as usual."""
    # By name, so that it matches the resolved interpreter and the exec'd venv path alike
    # (the latter is all the agent knows of a client that exited before it was looked at).
    agent = start_agent(config(audit=True) + """  filters:
    custom:
      - exe: "/python[0-9.]*$"
        strategy: regex
        only: [dns]
""")
    got = run_helper("dnsclient.py", dns_server, NAME, str(web[1]))
    assert got["status"] == 200
    wait_records(agent, is_final_tcp(got["pid"], got["local_port"]), 1)
    agent.stop()
    assert [a for a in dns_events(agent) if a["process.pid"] == got["pid"]] == []
    tcp = [a for a in agent.connections(client__port=got["local_port"]) if a["process.pid"] == got["pid"]]
    assert tcp and all(a["server.address"] == web[0] for a in tcp), tcp
    assert tcp[-1]["connection.protocol"] == "http1"
