"""Issue 2 end to end: connections and their bytes, per process, on the real kernel.

Every assertion compares what the agent reported with what the real programs say they
did (byte counts, digests, ports, pids); nothing here is satisfied by construction.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import ALL_LOOPBACK, HELPERS, PLAINTAP, compile_c

pytestmark = pytest.mark.kernel

NETPEERS = str(HELPERS / "netpeers.py")
CURL = os.path.realpath(shutil.which("curl") or "/usr/bin/curl")
PYTHON = os.path.realpath(sys.executable)


class Server:
    """A netpeers server subprocess; `.port` once ready, `.result()` after its connections."""

    def __init__(self, mode: str, family: str = "4", conns: int = 1, body: int = 4096):
        self.proc = subprocess.Popen([sys.executable, NETPEERS, "server", "--family", family, "--mode", mode,
                                      "--conns", str(conns), "--body", str(body)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("ready "), f"server did not start: {self.proc.stderr.read()}"
        self.port = int(line.split()[1])

    def result(self, timeout: float = 120) -> dict:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])


def client(*args: str, timeout: float = 300) -> dict:
    r = subprocess.run([sys.executable, NETPEERS, *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def finalized(records: list[dict]) -> list[dict]:
    return [a for a in records if a["connection.finalized"]]


def one(conns: list[dict], what: str) -> dict:
    fin = finalized(conns)
    assert len(fin) == 1, f"{what}: expected exactly one finalized connection record, got {len(fin)}: {conns}"
    return fin[0]


def pair_by_port_and_message(agent, records: list[dict], conns: list[dict]) -> list[tuple[dict, dict]]:
    """Each of many-client's connections with the one finalized record that is its own.

    A local port alone does not name a connection: with ``net.ipv4.tcp_tw_reuse = 2`` (the
    default) loopback connects reuse ports still in TIME_WAIT, so a run of a thousand can
    hold two connections on one port. Each message names its connection's index, so the
    record whose captured bytes are that message is the one."""
    by_port: dict[int, list[dict]] = {}
    for a in records:
        by_port.setdefault(a["client.port"], []).append(a)
    pairs, used = [], set()
    for c in conns:
        mine = [a for a in by_port.get(c["local_port"], [])
                if (agent.dump / f"{a['connection.id']}.send").read_text() == c["msg"]]
        if len(mine) != 1:
            same_port = [(a, (agent.dump / f"{a['connection.id']}.send").read_text())
                         for a in by_port.get(c["local_port"], [])]
            clients_on_port = [x for x in conns if x["local_port"] == c["local_port"]]
            raise AssertionError(f"connection {c} has {len(mine)} records carrying its bytes; the client's "
                                 f"connections on its port: {clients_on_port}; the records on it and their "
                                 f"bytes: {same_port}")
        assert mine[0]["connection.id"] not in used, f"two connections claim one record: {mine[0]}"
        used.add(mine[0]["connection.id"])
        pairs.append((c, mine[0]))
    return pairs


def sha_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else hashlib.sha256(b"").hexdigest()


def assert_no_agent_records(agent) -> None:
    mine = [r for r in agent.records if r["attributes"].get("process.pid") == agent.pid]
    assert not mine, f"the agent reported its own traffic: {mine[:2]}"


@pytest.mark.parametrize("family", ["4", "6"], ids=["ipv4", "ipv6"])
def test_curl_and_python_server_both_ends(start_agent, family):
    agent = start_agent(ALL_LOOPBACK)
    srv = Server("http", family=family, body=12345)
    host = "[::1]" if family == "6" else "127.0.0.1"
    ip = "::1" if family == "6" else "127.0.0.1"
    curl = subprocess.Popen([CURL, "-s", "-o", "/dev/null", "-w", "%{size_request} %{size_header} %{size_download}",
                             f"http://{host}:{srv.port}/token-{os.urandom(4).hex()}"],
                            stdout=subprocess.PIPE, text=True)
    out, _ = curl.communicate(timeout=30)
    req, hdr, body = map(int, out.split())
    res = srv.result()
    (sconn,) = res["conns"]
    # Let the agent see the closes, then a status request that must not be reported as ingress.
    urllib.request.urlopen(f"http://127.0.0.1:{agent.status_port}/healthz", timeout=5).read()
    agent.stop()
    assert_no_agent_records(agent)

    egress = one(agent.connections(**{"process.pid": curl.pid}), "curl")
    assert egress["process.executable.path"] == CURL
    assert egress["process.executable.name"] == "curl"
    assert egress["process.user.id"] == os.geteuid()
    assert egress["connection.direction"] == "egress-internal"
    assert (egress["client.address"], egress["client.port"]) == (ip, sconn["peer_port"])
    assert (egress["server.address"], egress["server.port"]) == (ip, srv.port)
    assert (egress["network.peer.address"], egress["network.peer.port"]) == (ip, srv.port)
    assert egress["connection.bytes_sent"] == req == sconn["read"]
    assert egress["connection.bytes_received"] == hdr + body == sconn["written"]
    assert isinstance(egress["client.port"], int) and isinstance(egress["process.pid"], int)

    ingress = one(agent.connections(**{"process.pid": res["pid"]}), "server")
    assert ingress["process.executable.path"] == PYTHON
    assert ingress["connection.direction"] == "ingress"
    assert (ingress["client.address"], ingress["client.port"]) == (ip, sconn["peer_port"])
    assert (ingress["server.address"], ingress["server.port"]) == (ip, srv.port)
    assert ingress["connection.bytes_received"] == sconn["read"]
    assert ingress["connection.bytes_sent"] == sconn["written"]
    assert ingress["connection.id"] != egress["connection.id"]
    assert "python" in ingress["process.command_line"] and "netpeers.py" in ingress["process.command_line"]


def test_5mib_upload_and_download_reassemble_exactly(start_agent):
    agent = start_agent(ALL_LOOPBACK)
    srv = Server("bulk")
    size = 5 * 1024 * 1024
    cl = client("bulk-client", "--port", str(srv.port), "--size", str(size))
    res = srv.result()
    (sconn,) = res["conns"]
    agent.stop()

    egress = one(agent.connections(**{"process.pid": cl["pid"]}), "bulk client")
    ingress = one(agent.connections(**{"process.pid": res["pid"]}), "bulk server")
    assert egress["connection.bytes_sent"] == cl["sent"] == size + 8
    assert egress["connection.bytes_received"] == cl["recv"] == size
    assert ingress["connection.bytes_received"] == sconn["read"] == size + 8
    assert ingress["connection.bytes_sent"] == sconn["written"] == size
    d = agent.dump
    eid, iid = egress["connection.id"], ingress["connection.id"]
    assert sha_file(d / f"{eid}.send") == cl["sent_sha256"], "client upload differs from the bytes sent"
    assert sha_file(d / f"{eid}.recv") == cl["recv_sha256"], "client download differs from the bytes received"
    assert sha_file(d / f"{iid}.recv") == sconn["read_sha256"], "server side upload differs"
    assert sha_file(d / f"{iid}.send") == sconn["written_sha256"], "server side download differs"
    assert not (d / f"{eid}.gaps").exists() and not (d / f"{iid}.gaps").exists(), "gaps in the streams"


def test_many_sequential_and_concurrent_connections(start_agent):
    agent = start_agent(ALL_LOOPBACK)
    seq, conc = 1000, 200
    srv = Server("echo", conns=seq + conc)
    cl = client("many-client", "--port", str(srv.port), "--sequential", str(seq), "--concurrent", str(conc))
    res = srv.result()
    agent.stop()
    # Said at the stop from the kernel's own counters (a metric read before it can be one
    # copy behind): a lost open, close or data event would explain any mismatch below.
    assert "kernel ring buffer lost" not in agent.stderr(), agent.stderr()[-2000:]

    conns = agent.connections(**{"process.pid": cl["pid"]})
    fin = finalized(conns)
    assert len(fin) == seq + conc, f"expected {seq + conc} finalized client connections, got {len(fin)}"
    ids = [a["connection.id"] for a in fin]
    assert len(set(ids)) == len(ids), "a connection was finalized twice"
    parts = [(a["connection.id"], a["connection.part"]) for a in conns]
    assert len(set(parts)) == len(parts), "a report part was emitted twice"
    # The bytes captured on each connection name its own index and port: no mix-up after
    # fd (or port) reuse.
    for c, a in pair_by_port_and_message(agent, fin, cl["conns"]):
        assert (a["connection.bytes_sent"], a["connection.bytes_received"]) == (c["sent"], c["recv"]), (c, a)
    srv_fin = finalized(agent.connections(**{"process.pid": res["pid"]}))
    assert len(srv_fin) == seq + conc
    assert {a["client.port"] for a in srv_fin} == {c["local_port"] for c in cl["conns"]}
    assert_no_agent_records(agent)


def test_loopback_ignored_by_default(start_agent):
    agent = start_agent(ALL_LOOPBACK.replace("ignore_loopback: false", "ignore_loopback: true"))
    srv = Server("http")
    subprocess.run([CURL, "-s", "-o", "/dev/null", f"http://127.0.0.1:{srv.port}/"], check=True, timeout=30)
    srv.result()
    filtered = agent.metric("plaintap_kernel_total", 'counter="conns_filtered"')
    agent.stop()
    assert filtered >= 2, "the kernel did not see (and filter) the loopback connections"
    leaked = [a for a in agent.connections() if srv.port in (a["server.port"], a["client.port"])]
    assert not leaked, f"loopback connection reported despite ignore_loopback: {leaked}"


@pytest.mark.parametrize("close_first", [True, False], ids=["close", "exit-without-close"])
def test_process_exiting_within_a_millisecond_is_attributed(start_agent, tmp_path, close_first):
    exe = compile_c(tmp_path, "quickconn", r"""
int main(int argc, char **argv) {
    int s = connect_loopback(argv[1]);
    const char *m = "quick hello\n";
    if (write(s, m, strlen(m)) != (long)strlen(m)) return 2;
    if (argc > 2) close(s);
    return 0;
}
""")
    agent = start_agent(ALL_LOOPBACK)
    srv = Server("sink")
    args = [str(exe), str(srv.port)] + (["close"] if close_first else [])
    p = subprocess.run(args, timeout=10)
    assert p.returncode == 0
    res = srv.result()
    agent.stop()
    (sconn,) = res["conns"]
    conns = [a for a in agent.connections() if a["client.port"] == sconn["peer_port"]
             and a["connection.direction"] != "ingress"]
    a = one(conns, "quickconn")
    assert a["process.executable.path"] == str(exe)
    assert a["process.executable.name"] == "quickconn"
    assert a["connection.bytes_sent"] == len("quick hello\n") == sconn["read"]


def test_not_root_and_missing_btf_fail_with_one_line(kernel, tmp_path):
    cfg = tmp_path / "q.yaml"
    cfg.write_text(ALL_LOOPBACK)
    cases = {
        "no privileges": (["setpriv", "--bounding-set=-all", str(PLAINTAP), "--config", str(cfg),
                           "--httpd-listen", "127.0.0.1:0", "--allow-multiple"], "root"),
        "no BTF": ([str(PLAINTAP), "--config", str(cfg), "--btf", str(tmp_path / "missing.btf"),
                    "--httpd-listen", "127.0.0.1:0", "--allow-multiple"], "BTF"),
    }
    for what, (cmd, word) in cases.items():
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0, f"{what}: agent did not fail"
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, f"{what}: expected one line on stderr, got: {r.stderr}"
        assert lines[0].startswith("plaintap: ") and word in lines[0], lines[0]
        assert "Traceback" not in r.stderr and r.stdout == ""


def test_doctor_says_this_machine_can_run(kernel):
    r = subprocess.run([str(PLAINTAP), "doctor"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "capture programs load and attach" in r.stdout and "plaintap can run here." in r.stdout
