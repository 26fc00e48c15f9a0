"""Issue 4 end to end: HTTP/1.x and HTTP/2 (gRPC included) become transactions.

Real clients and servers on loopback; assertions on the artifact_record events and the
http_request/http_response objects the agent writes (RECORDS.md), compared with what the
programs really sent.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import capture_config
from tlsenv import Nginx

pytestmark = pytest.mark.kernel

CURL = os.path.realpath(shutil.which("curl") or "/usr/bin/curl")

CAPTURE_FULL = capture_config("{level: full, format: json}")


def records(agent, kind: str, **match) -> list[dict]:
    out = []
    for r in agent.records:
        a = r["attributes"]
        if a.get("event.type") == kind or a.get("artifact.type") == kind:
            if all(a.get(k.replace("__", ".")) == v for k, v in match.items()):
                out.append(a)
    return out


def artifact_bytes(a: dict) -> bytes:
    if "artifact.data_b64" in a:
        return base64.b64decode(a["artifact.data_b64"])
    return a["artifact.data"].encode()


def start_server(script: str, *args: str) -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("ready "), "server did not start"
    return p, int(line.split()[1])


KEEPALIVE_SERVER = textwrap.dedent("""
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = ("hello " + self.path).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass
    s = http.server.HTTPServer(("127.0.0.1", 0), H)
    print("ready", s.server_address[1], flush=True)
    s.handle_request()
""")


def test_keepalive_three_requests_on_one_connection(start_agent):
    agent = start_agent(CAPTURE_FULL)
    srv, port = start_server(KEEPALIVE_SERVER)
    paths = ["/a?x=1", "/b", "/c/d?y=2&z=3"]
    curl = subprocess.Popen([CURL, "-s", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null"]
                            + [f"http://127.0.0.1:{port}{p}" for p in paths])
    assert curl.wait(30) == 0
    srv.wait(30)
    agent.stop()
    txs = records(agent, "artifact_record", **{"process.pid": curl.pid})
    assert len(txs) == 3, txs
    assert len({t["connection.id"] for t in txs}) == 1, "the three requests were not on one connection"
    got = sorted((t["url.path"] + (("?" + t["url.query"]) if t.get("url.query") else ""), t["http.response.status_code"])
                 for t in txs)
    assert got == sorted((p, 200) for p in paths)
    for t in txs:
        assert t["http.request.method"] == "GET" and t["network.protocol.version"] == "1.1"
        assert t["url.full"] == f"http://127.0.0.1:{port}{t['url.path']}" + (f"?{t['url.query']}" if t.get("url.query") else "")
        assert t["http.response.body.size"] == len(("hello " + t["url.path"] + (("?" + t["url.query"]) if t.get("url.query") else "")).encode())
        assert t["http.duration_ms"] > 0
    server_txs = records(agent, "artifact_record", **{"process.pid": srv.pid})
    assert len(server_txs) == 3 and {t["connection.direction"] for t in server_txs} == {"ingress"}


CHUNKED_SERVER = textwrap.dedent("""
    import os, random, socket, sys
    body = open(sys.argv[1], "rb").read()
    ls = socket.create_server(("127.0.0.1", 0))
    print("ready", ls.getsockname()[1], flush=True)
    c, _ = ls.accept()
    buf = b""
    while b"\\r\\n\\r\\n" not in buf:
        buf += c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/octet-stream\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n")
    rnd = random.Random(7)
    i = 0
    while i < len(body):
        n = rnd.randint(1, 70000)
        part = body[i:i + n]
        c.sendall(b"%x\\r\\n" % len(part) + part + b"\\r\\n")
        i += n
    c.sendall(b"0\\r\\nX-Trailer: done\\r\\n\\r\\n")
    c.close()
""")


def test_chunked_two_mebibyte_response_body_digest(start_agent, tmp_path):
    agent = start_agent(CAPTURE_FULL)
    payload = os.urandom(2 * 1024 * 1024)
    pf = tmp_path / "payload"
    pf.write_bytes(payload)
    srv, port = start_server(CHUNKED_SERVER, str(pf))
    out = tmp_path / "got"
    curl = subprocess.Popen([CURL, "-s", "-o", str(out), f"http://127.0.0.1:{port}/big"])
    assert curl.wait(60) == 0
    srv.wait(30)
    assert out.read_bytes() == payload
    agent.stop()
    (tx,) = records(agent, "artifact_record", **{"process.pid": curl.pid})
    assert tx["http.response.body.size"] == len(payload)
    assert "http.response.body.truncated" not in tx
    (resp,) = records(agent, "http_response", **{"transaction.id": tx["transaction.id"]})
    data = artifact_bytes(resp)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(payload).hexdigest(), "body differs after de-chunking"
    assert resp["artifact.digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert resp["artifact.size_bytes"] == len(data)
    assert tx["artifact.response.digest"] == resp["artifact.digest"]


def test_h2load_twenty_concurrent_streams_over_tls(start_agent, tmp_path):
    nginx = Nginx(tmp_path / "nginx")
    try:
        paths = []
        for i in range(19):
            (nginx.dir / "www" / f"p{i}.txt").write_text(f"page {i}\n" * (i + 1))
            paths.append(f"/p{i}.txt")
        paths.append("/missing.txt")  # a 404 among them
        agent = start_agent(CAPTURE_FULL)
        h2load = subprocess.Popen(["h2load", "-n", "20", "-c", "1", "-m", "20"]
                                  + [f"https://127.0.0.1:{nginx.port}{p}" for p in paths],
                                  stdout=subprocess.PIPE, text=True)
        out, _ = h2load.communicate(timeout=60)
        assert "20 done, 19 succeeded, 1 failed" in out, out
        agent.stop()
    finally:
        nginx.stop()
    txs = records(agent, "artifact_record", **{"process.pid": h2load.pid})
    assert len(txs) == 20, [t.get("url.path") for t in txs]
    assert len({t["connection.id"] for t in txs}) == 1
    assert sorted(t["url.path"] for t in txs) == sorted(paths)
    for t in txs:
        want = 404 if t["url.path"] == "/missing.txt" else 200
        assert t["http.response.status_code"] == want
        assert t["network.protocol.version"] == "2"
        if want == 200:
            i = int(t["url.path"][2:-4])
            assert t["http.response.body.size"] == len(f"page {i}\n" * (i + 1))
    conn = [a for a in agent.connections(**{"process.pid": h2load.pid}) if a["connection.finalized"]]
    assert conn and conn[0]["connection.protocol"] == "http2" and conn[0]["tls.inspected"] is True


GRPC_SERVER = textwrap.dedent("""
    import grpc, sys
    from concurrent import futures
    def say(req, ctx):
        if req == b"fail":
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return b"echo:" + req
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "plaintap.test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("ready", port, flush=True)
    sys.stdin.read()
    server.stop(0)
""")

GRPC_CLIENT = textwrap.dedent("""
    import grpc, json, os, sys
    ch = grpc.insecure_channel("127.0.0.1:" + sys.argv[1])
    say = ch.unary_unary("/plaintap.test.Echo/Say")
    out = [say(b"x" * 1000).decode()[:5]]
    try:
        say(b"fail")
    except grpc.RpcError as e:
        out.append(e.code().value[0])
    ch.close()
    print(json.dumps({"pid": os.getpid(), "out": out}))
""")


def test_grpc_over_h2_rpc_attributes(start_agent):
    agent = start_agent(CAPTURE_FULL)
    srv = subprocess.Popen([sys.executable, "-c", GRPC_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    port = int(srv.stdout.readline().split()[1])
    r = subprocess.run([sys.executable, "-c", GRPC_CLIENT, str(port)], capture_output=True, text=True, timeout=60)
    srv.stdin.close()
    srv.wait(30)
    assert r.returncode == 0, r.stderr
    cl = json.loads(r.stdout)
    assert cl["out"] == ["echo:", 5]
    agent.stop()
    txs = records(agent, "artifact_record", **{"process.pid": cl["pid"]})
    assert len(txs) == 2, txs
    by_status = {t["rpc.grpc.status_code"]: t for t in txs}
    assert set(by_status) == {0, 5}
    for t in txs:
        assert t["rpc.system"] == "grpc" and t["rpc.service"] == "plaintap.test.Echo" and t["rpc.method"] == "Say"
        assert t["url.path"] == "/plaintap.test.Echo/Say" and t["http.response.status_code"] == 200
    assert by_status[0]["http.request.body.size"] == 1000 + 5  # one message: 5-byte prefix + payload
    conns = [a for a in agent.connections(**{"process.pid": cl["pid"]}) if a["connection.finalized"]]
    assert conns and conns[0]["connection.protocol"] == "grpc"


ABUSE_SERVER = textwrap.dedent("""
    import socket, threading
    ls = socket.create_server(("127.0.0.1", 0))
    print("ready", ls.getsockname()[1], flush=True)
    def handle(c):
        c.settimeout(5)
        buf = b""
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                buf += b
                if buf.startswith(b"GET /fine") and b"\\r\\n\\r\\n" in buf:
                    body = b"still fine"
                    c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
                    break
                if len(buf) > 3_000_000:
                    c.sendall(b"HTTP/1.1 431 Too Large\\r\\nContent-Length: 0\\r\\n\\r\\n")
                    break
        except OSError:
            pass
        c.close()
    for _ in range(4):
        c, _ = ls.accept()
        threading.Thread(target=handle, args=(c,)).start()
""")

ABUSE_CLIENT = textwrap.dedent("""
    import os, socket, sys
    port = int(sys.argv[1]); kind = sys.argv[2]
    s = socket.create_connection(("127.0.0.1", port))
    if kind == "garbage":
        s.sendall(os.urandom(200_000)); s.shutdown(socket.SHUT_WR); s.recv(10)
    elif kind == "huge-header":
        s.sendall(b"GET /x HTTP/1.1\\r\\nHost: a\\r\\nX-Big: " + b"a" * 2_500_000 + b"\\r\\n\\r\\n")
        s.recv(100)
    elif kind == "half-then-exit":
        s.sendall(b"POST /upload HTTP/1.1\\r\\nHost: a\\r\\nContent-Length: 100000\\r\\n\\r\\n" + b"z" * 500)
        os._exit(0)  # exits mid-request, socket still open
    s.close()
""")


def test_bad_input_never_hurts_the_agent_or_other_connections(start_agent):
    agent = start_agent(CAPTURE_FULL)
    srv, port = start_server(ABUSE_SERVER)
    for kind in ("garbage", "huge-header", "half-then-exit"):
        r = subprocess.run([sys.executable, "-c", ABUSE_CLIENT, str(port), kind], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
    curl = subprocess.Popen([CURL, "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/fine"])
    assert curl.wait(30) == 0
    srv.wait(60)
    assert agent.proc.poll() is None, "the agent died"
    errors = agent.metric("plaintap_parse_errors_total")
    agent.stop()
    assert agent.proc.returncode == 0, agent.stderr()[-2000:]
    assert "Traceback" not in agent.stderr()
    (tx,) = records(agent, "artifact_record", **{"process.pid": curl.pid})
    assert tx["url.path"] == "/fine" and tx["http.response.status_code"] == 200
    assert tx["http.response.body.size"] == len("still fine")
    assert errors >= 1, "the huge header was not counted as a parse error"
    # the garbage connection is reported as a connection, never as a transaction
    garbage = [a for a in agent.connections() if a["server.port"] == port and a["connection.protocol"] == "tcp"]
    assert garbage, "the garbage connection was not reported"


JOIN_SERVER = textwrap.dedent("""
    import http.server
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = ("you asked for " + self.path).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass
    s = http.server.HTTPServer(("127.0.0.1", 0), H)
    print("ready", s.server_address[1], flush=True)
    s.handle_request()   # one connection, any number of keep-alive requests
""")

JOIN_CLIENT = textwrap.dedent("""
    import http.client, json, os, sys
    c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
    c.request("GET", "/before-the-agent"); c.getresponse().read()
    print("first done", flush=True)
    sys.stdin.readline()                       # the agent starts meanwhile
    for p in ("/after-1", "/after-2"):
        c.request("GET", p); c.getresponse().read()
    port = c.sock.getsockname()[1]
    c.close()
    print(json.dumps({"pid": os.getpid(), "local_port": port}), flush=True)
""")


def test_connection_open_before_the_agent_is_joined_midstream(start_agent):
    srv, port = start_server(JOIN_SERVER)
    cl = subprocess.Popen([sys.executable, "-c", JOIN_CLIENT, str(port)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
    assert cl.stdout.readline().strip() == "first done"
    agent = start_agent(CAPTURE_FULL)          # the keep-alive connection already exists
    cl.stdin.write("go\n")
    cl.stdin.flush()
    res = json.loads(cl.stdout.readline())
    cl.wait(30)
    srv.wait(30)
    agent.stop()
    assert "joined" in agent.stderr()
    for pid, direction in ((res["pid"], "egress-internal"), (srv.pid, "ingress")):
        txs = records(agent, "artifact_record", **{"process.pid": pid})
        assert sorted(t["url.path"] for t in txs) == ["/after-1", "/after-2"], txs
        for t in txs:
            assert t["http.response.status_code"] == 200 and t["connection.direction"] == direction
            assert t["http.response.body.size"] == len("you asked for " + t["url.path"])
        conns = [a for a in agent.connections(**{"process.pid": pid}) if a["connection.finalized"]]
        assert len(conns) == 1 and conns[0]["connection.direction"] == direction
        assert conns[0]["client.port"] == res["local_port"]
