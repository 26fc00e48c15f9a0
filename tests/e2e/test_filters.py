"""tap.filters end to end: processes skipped entirely, or traced without payload, without
TLS plaintext, or without HTTP parsing — and everyone else captured as before.

The clients are copies of curl under different paths (so each matches one filter) and a
Python client that is skipped entirely; nginx (not filtered) sees every exchange.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import HELPERS, capture_config
from tlsenv import SNI, Nginx

pytestmark = pytest.mark.kernel

CURL = os.path.realpath(shutil.which("curl") or "/usr/bin/curl")
PYTHON = os.path.realpath(sys.executable)


def config(d) -> str:
    return capture_config("summary", tap=f"""\
  filters:
    groups: [container-runtimes, kubernetes]
    custom:
      - exe: {PYTHON}
      - exe: {d}/curl-data
        strategy: prefix
        only: [data]
      - exe: "/curl-tl[s]$"
        strategy: regex
        only: [tls]
      - exe: /curl-http
        strategy: suffix
        only: [http]
""")


@pytest.fixture
def nginx(tmp_path):
    n = Nginx(tmp_path / "nginx")
    yield n
    n.stop()


def curl(exe: str, nginx: Nginx, token: str) -> int:
    """One HTTPS GET with `token` in the path; returns curl's local port."""
    p = subprocess.run([exe, "-sk", "--http1.1", "--resolve", f"{SNI}:{nginx.port}:127.0.0.1", "-o", "/dev/null",
                        "-w", "%{local_port}", f"https://{SNI}:{nginx.port}/file.bin?token={token}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return int(p.stdout)


def test_filters_skip_or_limit_exactly_the_named_processes(start_agent, nginx, tmp_path):
    copies = {}
    # "kubelet": a copy of curl named like a kubernetes group member, outside the group's
    # install directories: it must be captured like anything else.
    for name in ("curl-data", "curl-tls", "curl-http", "curl-plain", "kubelet"):
        copies[name] = str(tmp_path / name)
        shutil.copy2(CURL, copies[name])
    agent = start_agent(config(tmp_path))
    assert "tap.filters: " in agent.stderr()

    # Skipped entirely: a Python client that connects a second after it starts, by which
    # time the agent has told the kernel, so the kernel itself refuses to track it.
    r = subprocess.run([PYTHON, str(HELPERS / "pyclient.py"), f"https://{SNI}:{nginx.port}/file.bin?token=pyskip",
                        "/dev/null", str(tmp_path / "py-out"), "pyskip", "1.0"], capture_output=True, text=True,
                       timeout=60)
    assert (tmp_path / "py-out").read_bytes() == nginx.file
    assert r.returncode == 0, r.stderr
    ports = {name: curl(exe, nginx, name) for name, exe in copies.items()}
    kernel_skipped = agent.metric("plaintap_kernel_total", 'counter="procs_filtered"')
    records = agent.stop()

    conns = [a for a in agent.connections() if a["connection.finalized"]]
    by_exe = {}
    for a in conns:
        by_exe.setdefault(a["process.executable.path"], []).append(a)
    assert PYTHON not in by_exe, "a skipped process was reported"
    assert agent.records and agent.proc.returncode == 0
    # nginx is not filtered: it reports all six exchanges, inspected, with transactions.
    ingress = [a for a in conns if a["connection.direction"] == "ingress" and a["server.port"] == nginx.port]
    assert len(ingress) == 6 and all(a["tls.inspected"] for a in ingress)

    txs = [r["attributes"] for r in records if r["attributes"].get("event.type") == "artifact_record"]
    tx_conns = {a["connection.id"] for a in txs}

    def client(name):
        mine = [a for a in by_exe.get(copies[name], []) if a["client.port"] == ports[name]]
        assert len(mine) == 1, f"{name}: expected one connection, got {by_exe.get(copies[name])}"
        a = mine[0]
        peer = [n for n in ingress if n["client.port"] == ports[name]]
        assert len(peer) == 1 and peer[0]["connection.id"] in tx_conns, f"nginx's side of {name} not captured"
        # Byte counts are kept whatever the filter: the two ends agree.
        assert a["connection.bytes_sent"] == peer[0]["connection.bytes_received"] > 0
        assert a["connection.bytes_received"] == peer[0]["connection.bytes_sent"] > 0
        return a, agent.dump / a["connection.id"]

    # only: [data] — the connection and its byte counts, no payload at all.
    a, dump = client("curl-data")
    assert a["tls.inspected"] is False and a["connection.id"] not in tx_conns
    assert sorted(p.name for p in agent.dump.glob(a["connection.id"] + ".*")) == [a["connection.id"] + ".json"], \
        "payload was captured"

    # only: [tls] — ciphertext and TLS facts, no plaintext.
    a, dump = client("curl-tls")
    assert a["tls.enabled"] is True and a["tls.inspected"] is False and a["tls.sni"] == SNI
    assert a["connection.id"] not in tx_conns
    assert not dump.with_suffix(".tls.send").exists()
    assert dump.with_suffix(".send").exists() and b"curl-tls" not in dump.with_suffix(".send").read_bytes()

    # only: [http] — plaintext captured, not parsed into transactions.
    a, dump = client("curl-http")
    assert a["tls.inspected"] is True and a["connection.id"] not in tx_conns
    assert b"GET /file.bin?token=curl-http HTTP/1.1" in dump.with_suffix(".tls.send").read_bytes()

    # Not filtered: everything.
    a, dump = client("curl-plain")
    assert a["tls.inspected"] is True and a["connection.id"] in tx_conns
    a, dump = client("kubelet")
    assert a["tls.inspected"] is True and a["connection.id"] in tx_conns
    assert b"GET /file.bin?token=kubelet HTTP/1.1" in dump.with_suffix(".tls.send").read_bytes()

    assert kernel_skipped >= 1, "the kernel did not skip the filtered process itself"

