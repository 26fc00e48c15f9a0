"""Container and pod attribution against real runtimes: a private containerd running a
Kubernetes-style container (namespace k8s.io, the kubelet's labels, a 64-hex id), and
podman's Docker-compatible API (`podman system service`); the agent's refusal to run in
a private pid namespace."""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from conftest import PLAINTAP, capture_config, need
import containerenv
from containerenv import CURL_IMAGE, Containerd, PodmanService, ensure_curl_image, missing_tools, podman

pytestmark = pytest.mark.kernel

CAPTURE = capture_config("summary")

POD = {"io.kubernetes.pod.name": "shop-api-7d4b9c-x2x7q", "io.kubernetes.pod.namespace": "shop",
       "io.kubernetes.pod.uid": "0c0ffee0-1b2c-4d5e-8f90-a1b2c3d4e5f6", "io.kubernetes.container.name": "api"}


@pytest.fixture(scope="module")
def tools():
    why = missing_tools("podman", "runc", "containerd", "ctr", "mmdebstrap")
    need(why)


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


def test_containerd_pod_attribution(start_agent, containerd, hello_server):
    agent = start_agent(CAPTURE, "--containerd-socket", containerd.socket, "--docker-socket", "",
                        "--cri-runtime-socket", "")
    cid = run_in_containerd(containerd, hello_server, "/k8s")
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


def test_containerd_socket_absent_is_a_counted_miss(start_agent, containerd, hello_server, tmp_path):
    agent = start_agent(CAPTURE, "--containerd-socket", str(tmp_path / "absent.sock"), "--docker-socket", "",
                        "--cri-runtime-socket", "")
    cid = run_in_containerd(containerd, hello_server, "/nosocket")
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


def test_podman_docker_api_attribution(start_agent, tools, hello_server, tmp_path):
    ensure_curl_image()
    service = PodmanService(tmp_path)
    name = f"pt-curl-{os.getpid()}"
    try:
        agent = start_agent(CAPTURE, "--docker-socket", service.socket, "--containerd-socket", "",
                            "--cri-runtime-socket", "")
        r = podman("run", "--network", "host", "--name", name, CURL_IMAGE,
                   "sh", "-c", f"sleep 0.3; curl -sf http://127.0.0.1:{hello_server}/podman; sleep 0.5")
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


def test_new_containers_https_through_their_own_libssl_is_plaintext(start_agent, tools, tmp_path):
    """Issue 11 item 7: a container carries its own libssl (the image layer's file, not
    the host's, here another build of it). The image is on the host when the agent
    starts: the agent hooks the TLS libraries of the image layers in the store, so the
    containers' first program — curl, with no wait — makes its first request through an
    already hooked file (the uprobe is on the layer's inode, which the overlay maps).
    Four new containers, each checked byte for byte in the captured stream."""
    from conftest import ALL_LOOPBACK
    from tlsenv import Nginx

    ensure_curl_image()
    nginx = Nginx(tmp_path / "nginx")
    try:
        agent = start_agent(ALL_LOOPBACK)
        assert re.search(r"TLS hooks attached: openssl /var/lib/containers/storage/overlay/\S+/diff/\S*libssl\.so",
                         agent.stderr()), agent.stderr()[-3000:]
        tokens = curl_in_new_containers(CURL_IMAGE, nginx, 4)
        agent.stop()
    finally:
        nginx.stop()
    assert_captured_as_plaintext(agent, nginx, tokens)


@pytest.mark.parametrize("content", ["same", "new"])
def test_a_container_of_an_image_made_after_the_agent_started_is_plaintext(start_agent, tools, tmp_path, content):
    """Issue 11 item 7: an image made after the agent's layer survey (here built while it
    runs) whose layer carries its own libssl file: a copy of the base image's (content
    the agent analysed, "same"), or a build never seen ("new": bytes appended). Its first
    container's first program, curl with no wait, makes its first request through that
    file. Both are hooked by the exec lane before the loader maps them (curl's DT_NEEDED,
    resolved in the container's root): "same" from the plan of the content it knows, "new"
    from the lane's own analysis of that libssl (sslelf.rs). Each of three containers is
    checked byte for byte."""
    from conftest import ALL_LOOPBACK
    from tlsenv import Nginx

    ensure_curl_image()
    lib = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    change = (f"head -c 200 /dev/urandom >> {lib}" if content == "new"
              else f"cp -p {lib} {lib}.tmp && mv {lib}.tmp {lib}")
    tag = f"localhost/plaintap-test-curl-{content}:{os.urandom(4).hex()}"
    nginx = Nginx(tmp_path / "nginx")
    try:
        agent = start_agent(ALL_LOOPBACK)
        podman("build", "-q", "--pull=never", "--network", "none", "-t", tag, "-f", "-", ".",
               input=f"FROM {CURL_IMAGE}\nRUN {change}\n", cwd=str(tmp_path), timeout=300)
        tokens = curl_in_new_containers(tag, nginx, 3)
        agent.stop()
    finally:
        nginx.stop()
        podman("rmi", "-f", tag, check=False)
    assert_captured_as_plaintext(agent, nginx, tokens)
    log = agent.stderr()
    attached = [ln for ln in log.splitlines() if "TLS hooks attached: openssl" in ln and "libssl.so.3" in ln
                and "after its exec" in ln]
    # hooked by the exec lane at the first container's exec of curl, found through curl's
    # DT_NEEDED in the container's root, and under the layer file's identity (one hook for
    # every container of the image: no event twice)
    lane = [ln for ln in attached if "before the loader mapped it" in ln]
    assert len(lane) == 1, log[-3000:]
    if content == "same":
        assert attached == lane and "analysis cached" in lane[0], log[-3000:]
    else:
        # The lane analyses the new build itself, unless the build's own RUN container had
        # the appended file (another inode, the same content) hooked by a scan already: then
        # the lane hooks the image's file from that analysis, a plan.
        built = [ln for ln in attached if ln not in lane and "analysed in" in ln]
        assert "analysed at its program's exec" in lane[0] or (built and "analysis cached" in lane[0]), \
            log[-3000:]


def curl_in_new_containers(image: str, nginx, n: int) -> list[str]:
    """Run `n` containers of `image` whose first program is curl, one HTTPS request each
    to `nginx` (no wait); returns each request's token."""
    from tlsenv import SNI

    tokens = []
    for _ in range(n):
        token = os.urandom(6).hex()
        out = podman("run", "--rm", "--network", "host", image, "curl", "-sk", "--http1.1", "--resolve",
                     f"{SNI}:{nginx.port}:127.0.0.1", "-o", "/dev/null", "-w", "%{http_code}",
                     f"https://{SNI}:{nginx.port}/file.bin?run={token}").stdout
        assert out == "200"
        tokens.append(token)
    return tokens


def assert_captured_as_plaintext(agent, nginx, tokens: list[str]) -> None:
    """Each token's request was captured from curl in a podman container as plaintext:
    request line first in what it sent, nginx's file byte for byte in what it received."""
    for i, token in enumerate(tokens):
        found = []
        for c in agent.connections(**{"server.port": nginx.port, "process.executable.name": "curl"}):
            sent = agent.dump / f"{c['connection.id']}.tls.send"
            if c["connection.finalized"] and sent.exists() and \
                    sent.read_bytes().startswith(f"GET /file.bin?run={token} HTTP/1.1\r\n".encode()):
                found.append(c)
        mine = [c for c in agent.connections(**{"server.port": nginx.port}) if token in c["process.command_line"]]
        assert len(found) == 1, f"request {i} not captured as plaintext: {mine} {agent.stderr()[-3000:]}"
        c = found[0]
        assert c["tls.inspected"] is True and c["container.runtime"] == "podman"
        recv = (agent.dump / f"{c['connection.id']}.tls.recv").read_bytes()
        head, _, body = recv.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == nginx.file
