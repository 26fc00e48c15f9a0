"""Issue 10, connection table life cycle, on the real kernel.

A tracked socket's entry leaves the kernel's table however its fd stops naming it —
dup2/dup3 over it, close_range, close-on-exec, process exit, a close the kernel side does
not see (io_uring's IORING_OP_CLOSE) — each counted by reason in /metrics; a data call is
attributed to a connection only while its fd names the socket it was tracked with, so a
reused fd number never feeds the old connection. `helpers/connlife.c` does one of these
to its own connections per mode and says what it sent where; the netpeers sink server
says what arrived. Counters are compared as lower bounds: other processes on the machine
may add to them, never take away.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ALL_LOOPBACK, HELPERS
from test_capture_core import Server, finalized, one

pytestmark = pytest.mark.kernel


# Loopback, but only the test program's own connections: everything else on this machine
# (servers, load generators, other test runs) lives under these prefixes and is skipped in
# the kernel, so a neighbour's flood cannot fill the ring under these exact-bytes checks.
# The program itself is built under /var/tmp.
SKIP_PREFIXES = ("/usr/", "/bin/", "/sbin/", "/lib", "/opt/", "/root/", "/home/", "/work/", "/tmp/", "/snap/")
ONLY_CONNLIFE = ALL_LOOPBACK + "  filters:\n    custom:\n" + "".join(
    f"      - exe: {p}\n        strategy: prefix\n" for p in SKIP_PREFIXES)


@pytest.fixture(scope="module")
def connlife():
    d = Path(tempfile.mkdtemp(prefix="plaintap-connlife-", dir="/var/tmp"))
    exe = d / "connlife"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(HELPERS / "connlife.c")], check=True)
    yield str(exe)
    shutil.rmtree(d, ignore_errors=True)


def wait_finalized(agent, pid: int, n: int, timeout: float = 60) -> None:
    """Until the agent has written n finalized connection records of pid (a busy machine
    can put it seconds behind the kernel), so stopping it loses none of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = 0
        for line in agent.out.read_text().splitlines():
            if line.startswith("{") and str(pid) in line:
                a = json.loads(line)["attributes"]
                got += a.get("event.type") == "connection" and a.get("process.pid") == pid \
                    and bool(a.get("connection.finalized"))
        if got >= n:
            return
        time.sleep(0.2)


def kernel_counter(agent, name: str) -> float:
    return agent.metric("plaintap_kernel_total", f'counter="{name}"')


def run(exe: str, mode: str, port: int, *args: str) -> dict:
    r = subprocess.run([exe, mode, str(port), *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (mode, r.returncode, r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def by_port(agent, pid: int) -> dict[int, dict]:
    """The process's finalized connection records by local (client) port."""
    out: dict[int, list] = {}
    for a in agent.connections(**{"process.pid": pid}):
        out.setdefault(a["client.port"], []).append(a)
    if not out:
        clients = [(a.get("process.pid"), a.get("client.port"), a.get("connection.finalized"))
                   for a in agent.connections() if a.get("process.executable.name", "").startswith("connlife")
                   or a.get("process.pid") == pid]
        raise AssertionError(f"no connection records of pid {pid} among {len(agent.records)} records; "
                             f"connlife's: {clients}; agent log: {agent.stderr()[-1500:]}")
    return {p: one(rs, f"client port {p}") for p, rs in out.items()}


def sent(agent, a: dict) -> bytes:
    p = agent.dump / f"{a['connection.id']}.send"
    return p.read_bytes() if p.exists() else b""


def received(srv: Server) -> dict[int, int]:
    return {c["peer_port"]: c["read"] for c in srv.result()["conns"]}


@pytest.mark.parametrize("mode", ["dup2", "dup3"])
def test_dup_over_a_tracked_fd_sends_on_the_new_connection_never_the_old(start_agent, connlife, mode):
    agent = start_agent(ONLY_CONNLIFE)
    before = {k: kernel_counter(agent, k) for k in ("untracked_dup", "dup_followed")}
    srv = Server("sink", conns=2)
    out = run(connlife, mode, srv.port)
    got = received(srv)
    after = {k: kernel_counter(agent, k) for k in before}
    wait_finalized(agent, out["pid"], 2)
    agent.stop()
    conns = by_port(agent, out["pid"])
    assert set(conns) == {out["a_port"], out["b_port"]}, conns
    a, b = conns[out["a_port"]], conns[out["b_port"]]
    # The server received exactly what the program says it sent on each socket, and the
    # agent attributed the same bytes to the same connections: the bytes written on the old
    # fd number after dup2 are the new connection's, never the old one's.
    assert got == {out["a_port"]: len(out["a_sent"]), out["b_port"]: len(out["b_sent"])}
    assert sent(agent, a) == out["a_sent"].encode()
    assert sent(agent, b) == out["b_sent"].encode()
    assert a["connection.bytes_sent"] == len(out["a_sent"])
    assert b["connection.bytes_sent"] == len(out["b_sent"])
    assert after["untracked_dup"] >= before["untracked_dup"] + 1, (before, after)
    assert after["dup_followed"] >= before["dup_followed"] + 1, (before, after)


def test_close_range_untracks_and_a_pipe_on_the_reused_fd_is_nobodys(start_agent, connlife):
    n = 4
    agent = start_agent(ONLY_CONNLIFE)
    before = kernel_counter(agent, "untracked_close_range")
    srv = Server("sink", conns=n + 1)
    out = run(connlife, "close_range", srv.port, str(n))
    got = received(srv)
    after = kernel_counter(agent, "untracked_close_range")
    wait_finalized(agent, out["pid"], n + 1)
    agent.stop()
    conns = by_port(agent, out["pid"])
    assert set(conns) == set(out["ports"]) | {out["new_port"]}
    for i, p in enumerate(out["ports"]):
        want = f"connection {i} before close_range\n".encode()
        assert got[p] == len(want)
        # the pipe written on the first fd number after close_range is no connection's
        assert sent(agent, conns[p]) == want, (i, sent(agent, conns[p]))
    new = conns[out["new_port"]]
    assert out["new_fd"] == out["fds"][0]  # the pipe had the first number and closed it: reused again
    assert sent(agent, new) == b"a new connection after close_range\n"
    assert after >= before + n, (before, after)


def test_process_exit_with_open_sockets_untracks_them(start_agent, connlife):
    n = 3
    agent = start_agent(ONLY_CONNLIFE)
    before = kernel_counter(agent, "untracked_exit")
    srv = Server("sink", conns=n)
    out = run(connlife, "exit", srv.port, str(n))
    got = received(srv)
    after = kernel_counter(agent, "untracked_exit")
    wait_finalized(agent, out["pid"], n)
    agent.stop()
    conns = by_port(agent, out["pid"])
    assert set(conns) == set(out["ports"])
    for i, p in enumerate(out["ports"]):
        want = f"connection {i}, left open at exit\n".encode()
        assert got[p] == len(want)
        assert sent(agent, conns[p]) == want
        assert conns[p]["connection.bytes_sent"] == len(want)
    assert after >= before + n, (before, after)


def test_close_on_exec_socket_is_untracked_at_execve(start_agent, connlife):
    agent = start_agent(ONLY_CONNLIFE)
    before = kernel_counter(agent, "untracked_exec")
    srv = Server("sink", conns=1)
    out = run(connlife, "exec", srv.port)
    got = received(srv)
    after = kernel_counter(agent, "untracked_exec")
    wait_finalized(agent, out["pid"], 1)
    agent.stop()
    conns = by_port(agent, out["pid"])
    assert got == {out["port"]: len(b"sent before execve\n")}
    assert sent(agent, conns[out["port"]]) == b"sent before execve\n"
    assert after >= before + 1, (before, after)


def test_fd_reused_after_close_is_a_new_connection(start_agent, connlife):
    agent = start_agent(ONLY_CONNLIFE)
    srv = Server("sink", conns=2)
    out = run(connlife, "reuse", srv.port)
    got = received(srv)
    wait_finalized(agent, out["pid"], 2)
    agent.stop()
    conns = by_port(agent, out["pid"])
    a, b = conns[out["a_port"]], conns[out["b_port"]]
    assert a["connection.id"] != b["connection.id"]
    assert sent(agent, a) == b"first connection\n"
    assert sent(agent, b) == b"second connection, same fd number\n"
    assert got == {out["a_port"]: 17, out["b_port"]: 34}


def test_close_unseen_by_the_kernel_side_never_feeds_the_old_connection(start_agent, connlife):
    """IORING_OP_CLOSE closes the fd without close(2): the entry stays until the next data
    call on that number, which finds another file there and drops it (untracked_stale)."""
    agent = start_agent(ONLY_CONNLIFE)
    before = kernel_counter(agent, "untracked_stale")
    srv = Server("sink", conns=1)
    out = run(connlife, "uring_close", srv.port)
    got = received(srv)
    after = kernel_counter(agent, "untracked_stale")
    wait_finalized(agent, out["pid"], 1)
    agent.stop()
    conns = by_port(agent, out["pid"])
    assert got == {out["port"]: len(b"before the io_uring close\n")}
    assert sent(agent, conns[out["port"]]) == b"before the io_uring close\n"
    assert after >= before + 1, (before, after)
