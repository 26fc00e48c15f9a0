"""Container and pod attribution against real runtimes: a private containerd running a
Kubernetes-style container (namespace k8s.io, the kubelet's labels, a 64-hex id), and
podman's Docker-compatible API (`podman system service`); the agent's refusal to run in
a private pid namespace."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import PLAINTAP
from containerenv import CURL_IMAGE, Containerd, PodmanService, ensure_curl_image, missing_tools, podman

pytestmark = pytest.mark.kernel

CAPTURE = """
version: 2
services:
  event_stores: [{type: stdout}]
  object_stores: [{type: stdout}]
stacks:
  default:
    plugins:
      - type: http_capture
        config: {level: summary}
tap:
  direction: all
  ignore_loopback: false
  http: {stack: default}
"""

POD = {"io.kubernetes.pod.name": "shop-api-7d4b9c-x2x7q", "io.kubernetes.pod.namespace": "shop",
       "io.kubernetes.pod.uid": "0c0ffee0-1b2c-4d5e-8f90-a1b2c3d4e5f6", "io.kubernetes.container.name": "api"}


@pytest.fixture(scope="module")
def tools():
    why = missing_tools("podman", "runc", "containerd", "ctr", "mmdebstrap")
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def http_server():
    """Plain HTTP on 127.0.0.1 (TLS is not the point here): GET /<name> → 200 `hello <name>`."""
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"hello {self.path[1:]}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.fixture(scope="module")
def containerd(tools, tmp_path_factory):
    ensure_curl_image()
    d = tmp_path_factory.mktemp("ctd")
    c = Containerd(d)
    try:
        podman("save", "--format", "docker-archive", "-o", str(d / "curl.tar"), CURL_IMAGE)
        c.ctr("images", "import", str(d / "curl.tar"))
        yield c
    finally:
        c.stop()


def records_for(agent, path: str) -> tuple[list[dict], list[dict]]:
    """(connection events, artifact records) of the transaction GET `path`."""
    arts = [r["attributes"] for r in agent.records
            if r["attributes"].get("event.type") == "artifact_record" and r["attributes"].get("url.path") == path
            and r["attributes"].get("process.executable.name") == "curl"]
    ids = {a["connection.id"] for a in arts}
    conns = [r["attributes"] for r in agent.records
             if r["attributes"].get("event.type") == "connection" and r["attributes"].get("connection.id") in ids]
    return conns, arts


def run_in_containerd(containerd, port: int, path: str) -> str:
    cid = os.urandom(32).hex()
    labels = [a for k, v in POD.items() for a in ("--label", f"{k}={v}")]
    # curl as the child of a shell that lives on (as in most containers): curl exits before
    # the agent handles its exec, and is placed in the container by its parent
    r = containerd.ctr("run", "--rm", "--net-host", *labels, CURL_IMAGE, cid,
                       "sh", "-c", f"sleep 0.3; curl -sf http://127.0.0.1:{port}{path}; sleep 0.5")
    assert r.stdout.decode() == f"hello {path[1:]}"
    return cid


def test_containerd_pod_attribution(start_agent, containerd, http_server):
    agent = start_agent(CAPTURE, "--containerd-socket", containerd.socket, "--docker-socket", "",
                        "--cri-runtime-socket", "")
    cid = run_in_containerd(containerd, http_server, "/k8s")
    time.sleep(1.0)
    ok = agent.metric("plaintap_container_lookups_total", 'result="ok"')
    agent.stop()
    assert ok >= 1
    conns, arts = records_for(agent, "/k8s")
    assert conns and arts, agent.stderr()[-3000:]
    expected = {"container.id": cid, "container.runtime": "containerd", "container.name": "api",
                "container.image.name": CURL_IMAGE, "k8s.pod.name": POD["io.kubernetes.pod.name"],
                "k8s.namespace.name": "shop", "k8s.pod.uid": POD["io.kubernetes.pod.uid"],
                "k8s.container.name": "api"}
    for attrs in conns + arts:
        got = {k: attrs.get(k) for k in expected}
        assert got == expected
        assert attrs["process.executable.name"] == "curl"


def test_containerd_socket_absent_is_a_counted_miss(start_agent, containerd, http_server, tmp_path):
    agent = start_agent(CAPTURE, "--containerd-socket", str(tmp_path / "absent.sock"), "--docker-socket", "",
                        "--cri-runtime-socket", "")
    cid = run_in_containerd(containerd, http_server, "/nosocket")
    # no stall: the records are out within a second of the request
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and "/nosocket" not in agent.out.read_text():
        time.sleep(0.05)
    assert "/nosocket" in agent.out.read_text(), "records held back although no runtime can answer"
    misses = agent.metric("plaintap_container_lookups_total", 'result="miss"')
    agent.stop()
    assert misses >= 1
    conns, arts = records_for(agent, "/nosocket")
    assert conns and arts
    for attrs in conns + arts:
        assert attrs["container.id"] == cid
        assert not [k for k in attrs if k.startswith("k8s.") or k in ("container.name", "container.image.name")]


def test_podman_docker_api_attribution(start_agent, tools, http_server, tmp_path):
    ensure_curl_image()
    service = PodmanService(tmp_path)
    name = f"pt-curl-{os.getpid()}"
    try:
        agent = start_agent(CAPTURE, "--docker-socket", service.socket, "--containerd-socket", "",
                            "--cri-runtime-socket", "")
        r = podman("run", "--network", "host", "--name", name, CURL_IMAGE,
                   "sh", "-c", f"sleep 0.3; curl -sf http://127.0.0.1:{http_server}/podman; sleep 0.5")
        assert r.stdout == "hello podman"
        inspect = podman("inspect", "--format", "{{.Id}} {{.Name}} {{.ImageName}}", name).stdout.split()
        time.sleep(1.0)
        agent.stop()
    finally:
        podman("rm", "-f", name, check=False)
        service.stop()
    conns, arts = records_for(agent, "/podman")
    assert conns and arts, agent.stderr()[-3000:]
    for attrs in conns + arts:
        assert [attrs.get("container.id"), attrs.get("container.name"), attrs.get("container.image.name")] == inspect
        assert attrs["container.runtime"] == "podman"


def test_refuses_a_private_pid_namespace(kernel, tmp_path):
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", str(PLAINTAP), "--httpd-listen",
                        "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--pid=host" in lines[0] and "hostPID: true" in lines[0], r.stderr
