"""`--workers 2` end to end: two agents run side by side on the same real traffic, one with
`--workers 1` and one with `--workers 2` (connections parsed on two threads, native/src/
shard.rs); both ends of plain HTTP/1.1 (curl and a Python client → nginx) and of HTTP/1.1
over TLS (the Python client → nginx, both hooked) give the same transactions, the same
request/response objects (digests of the real bodies) and the same final connection
records from both agents, ids and times aside."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import free_port
from tlsenv import NGINX, make_cert, nginx_http_head

pytestmark = pytest.mark.kernel

CURL = os.path.realpath(shutil.which("curl") or "/usr/bin/curl")

CAPTURE_FULL = """
version: 2
services:
  event_stores: [{type: stdout}]
  object_stores: [{type: stdout}]
stacks:
  capture:
    plugins:
      - type: http_capture
        config: {level: full, format: json}
tap:
  direction: all
  ignore_loopback: false
  http: {stack: capture}
"""

# Waits for a line on stdin (the agents are up and have hooked its libssl), then sends the
# same requests over plain HTTP and over TLS on keep-alive connections; prints its pid and
# the digests of what it received.
CLIENT = textwrap.dedent("""
    import hashlib, http.client, json, os, ssl, sys
    plain, tls = int(sys.argv[1]), int(sys.argv[2])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    body = bytes(range(256)) * 600 + b"end"
    sys.stdin.readline()
    got = []
    for conn in (http.client.HTTPConnection("127.0.0.1", plain, timeout=30),
                 http.client.HTTPSConnection("127.0.0.1", tls, timeout=30, context=ctx)):
        for method, path, data in (("GET", "/file.bin", None), ("POST", "/file.bin", body),
                                   ("GET", "/missing.txt", None), ("GET", "/small.txt?x=1", None),
                                   ("GET", "/small.txt?x=2", None)):
            conn.request(method, path, body=data, headers={"X-Run": "workers"})
            r = conn.getresponse()
            got.append([r.status, hashlib.sha256(r.read()).hexdigest()])
        conn.close()
    print(json.dumps({"pid": os.getpid(), "got": got}), flush=True)
""")

# Attributes that differ between two agents watching the same traffic: their ids, their
# clocks, and what was measured on their own timing.
VARYING = ("connection.id", "transaction.id", "http.duration_ms", "artifact.url", "artifact.request.url",
           "artifact.response.url", "connection.duration_ms", "connection.open_timestamp",
           "connection.close_timestamp", "connection.part", "artifact.summary.duration_ms")


def start_nginx(d: Path) -> tuple[subprocess.Popen, int, int, bytes]:
    (d / "www").mkdir(parents=True)
    (d / "tmp").mkdir()
    blob = os.urandom(300 * 1024 + 17)
    (d / "www" / "file.bin").write_bytes(blob)
    (d / "www" / "small.txt").write_text("small\n" * 20)
    cert, key = make_cert(d)
    plain, tls = free_port(), free_port()
    (d / "nginx.conf").write_text(nginx_http_head(d) + f"""
    server {{
        listen 127.0.0.1:{plain};
        listen 127.0.0.1:{tls} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {d}/www;
        client_max_body_size 64m;
        error_page 405 =200 $uri;
        location / {{ }}
    }}
}}
""")
    proc = subprocess.Popen([NGINX, "-c", str(d / "nginx.conf"), "-p", str(d)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    import socket
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx failed: {proc.stderr.read().decode()}")
        try:
            with socket.create_connection(("127.0.0.1", tls), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    return proc, plain, tls, blob


def content(agent, pids: set[int]) -> dict[str, list[str]]:
    """What one agent recorded for `pids`, ids and times aside, as sorted JSON lines by kind."""
    out: dict[str, list[str]] = {"artifact_record": [], "http_request": [], "http_response": [], "connection": []}
    # objects name their transaction, not their process
    ours = {r["attributes"]["transaction.id"] for r in agent.records
            if r["attributes"].get("event.type") == "artifact_record" and r["attributes"].get("process.pid") in pids}
    for r in agent.records:
        a = r["attributes"]
        if a.get("process.pid") not in pids and a.get("transaction.id") not in ours:
            continue
        kind = a.get("event.type") if a.get("event.type") in ("artifact_record", "connection") else a.get("artifact.type")
        if kind not in out or (kind == "connection" and not a.get("connection.finalized")):
            continue
        out[kind].append(json.dumps({k: v for k, v in a.items() if k not in VARYING}, sort_keys=True))
    return {k: sorted(v) for k, v in out.items()}


def test_two_workers_record_the_same_as_one(start_agent, tmp_path):
    nginx, plain, tls, blob = start_nginx(tmp_path / "nginx")
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(plain), str(tls)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        one = start_agent(CAPTURE_FULL, "--workers", "1")
        two = start_agent(CAPTURE_FULL, "--workers", "2")
        # The client and nginx ran before the agents: both hook their libssl at start.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all("TLS hooks attached: openssl" in a.stderr() for a in (one, two)):
            time.sleep(0.05)
        client.stdin.write("go\n")
        client.stdin.flush()
        res = json.loads(client.stdout.readline())
        assert client.wait(30) == 0
        got, sha = res["got"], hashlib.sha256(blob).hexdigest()
        assert [g[0] for g in got] == [200, 200, 404, 200, 200] * 2 and got[0][1] == got[5][1] == sha
        curl = subprocess.Popen([CURL, "-s", "-o", "/dev/null", f"http://127.0.0.1:{plain}/file.bin",
                                 "-o", "/dev/null", f"http://127.0.0.1:{plain}/small.txt"])
        assert curl.wait(30) == 0
        time.sleep(1)
        workers = nginx_workers(nginx)
        counted = [a.metric("plaintap_dataplane_total", 'counter="transactions"') for a in (one, two)]
        one.stop()
        two.stop()
    finally:
        client.kill()
        nginx.terminate()
        nginx.wait(10)
    pids = {res["pid"], curl.pid, *workers}
    a, b = content(one, pids), content(two, pids)
    # Real outcomes first: both ends of the client's 10 exchanges (plain and TLS) and of
    # curl's two, with the file's digest as served.
    txs = [json.loads(x) for x in a["artifact_record"]]
    assert len(txs) == 2 * 12, [(t["process.pid"], t.get("url.full")) for t in txs]
    assert sum(t["process.pid"] in workers for t in txs) == 12
    assert sum(t.get("url.scheme") == "https" for t in txs) == 10
    resp = [json.loads(x) for x in a["http_response"]]
    assert any(r["artifact.size_bytes"] > len(blob) for r in resp)
    assert len(a["connection"]) >= 4
    for kind in a:
        assert b[kind] == a[kind], f"{kind} differ between --workers 1 and --workers 2"
    # the counters of the two shards add up to what one table counts (other processes'
    # traffic too, so at least ours)
    assert counted[1] >= len(txs) and counted[0] >= len(txs)
    assert "2 workers)" in two.stderr() and "workers)" not in one.stderr()
    assert "Traceback" not in two.stderr()


def nginx_workers(proc: subprocess.Popen) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
    return {int(x) for x in out.split()}

