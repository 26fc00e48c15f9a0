"""`--yield-ms` end to end: while real traffic flows, the agent's capture loop is seen at
idle priority (SCHED_IDLE, read from the kernel's /proc/<pid>/sched), goes back to normal
priority when it waits, and captures every request; with `--yield-ms 0` it never leaves
normal priority (native/src/cpu_yield.rs)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import capture_config

pytestmark = pytest.mark.kernel

SCHED_OTHER, SCHED_IDLE = 0, 5
REQUESTS = 400

CLIENT = textwrap.dedent("""
    import http.client, sys
    port, n, run = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(n):
        c.request("GET", f"/{run}-{i}")
        assert c.getresponse().read() == f"hello {run}-{i}".encode()
    print("done", flush=True)
""")


def policy(pid: int) -> int:
    """The scheduling policy of the agent's main thread (its capture loop)."""
    for line in open(f"/proc/{pid}/sched"):
        if line.startswith("policy"):
            return int(line.split(":")[1])
    raise AssertionError("no policy line in /proc/<pid>/sched")


def run_traffic(agent, port: int, run: str) -> set[int]:
    """Send REQUESTS requests while sampling the loop's policy; returns the policies seen."""
    seen: set[int] = set()
    done = threading.Event()

    def sample():
        while not done.is_set():
            seen.add(policy(agent.pid))
            time.sleep(0.0005)
    t = threading.Thread(target=sample)
    t.start()
    try:
        out = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(REQUESTS), run],
                             capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == "done", out.stderr
        time.sleep(0.5)   # the agent catches up
    finally:
        done.set()
        t.join()
    return seen


def captured(agent, run: str) -> set[str]:
    return {r["attributes"]["url.path"] for r in agent.records
            if r["attributes"].get("event.type") == "artifact_record"
            and r["attributes"].get("url.path", "").startswith(f"/{run}-")}


@pytest.mark.parametrize("yield_ms", ["5", "0"])
def test_the_capture_loop_yields_the_cpu_and_misses_nothing(start_agent, hello_server, yield_ms):
    agent = start_agent(capture_config("summary", objects="disabled"), "--yield-ms", yield_ms, dump_streams=False)
    run = f"yield{yield_ms}"
    seen = run_traffic(agent, hello_server, run)
    # waiting for records, the loop is at normal priority (prompt when they come)
    deadline = time.monotonic() + 5
    while policy(agent.pid) != SCHED_OTHER and time.monotonic() < deadline:
        time.sleep(0.01)
    assert policy(agent.pid) == SCHED_OTHER
    agent.stop()
    assert captured(agent, run) == {f"/{run}-{i}" for i in range(REQUESTS)}
    if yield_ms == "0":
        assert seen == {SCHED_OTHER}
    else:
        assert SCHED_IDLE in seen, f"policies seen: {seen}"


def test_the_benchmarks_free_consumer_mode_parses_nothing(start_agent, hello_server, monkeypatch):
    """PLAINTAP_BENCH_DISCARD_DATA=1 (bench_live_overhead's free-consumer round): connections
    are still tracked from the control ring, but no data record is parsed, and it says so."""
    monkeypatch.setenv("PLAINTAP_BENCH_DISCARD_DATA", "1")
    agent = start_agent(capture_config("summary", objects="disabled"), dump_streams=False)
    out = subprocess.run([sys.executable, "-c", CLIENT, str(hello_server), "20", "discard"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "done", out.stderr
    time.sleep(0.5)
    agent.stop()
    assert "data records are discarded unread" in agent.stderr()
    assert captured(agent, "discard") == set()
    conns = [r for r in agent.records if r["attributes"].get("event.type") == "connection"
             and r["attributes"].get("server.port") == hello_server]
    assert conns, "connections are still tracked"
