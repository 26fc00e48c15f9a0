"""Container attribution: cgroup layouts of every runtime, the metadata resolver (its
bounds: absent, slow and garbage runtimes are counted misses), record attributes, rule
variables, and the host pid namespace check."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent import futures

import pytest

from plaintap.capture.containers import (ContainerdApi, ContainerInfo, ContainerMeta, ContainerRef,
                                         ContainerResolver, CriApi, DockerApi, RuntimeSockets,
                                         container_from_cgroup, host_pid_namespace_problem, messages)
from plaintap.config import load_config_text
from plaintap.plugins import TransactionContext, build_stack

from records.samples import h1_json_post, wall_ns

CID = "3f4e0c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f"
POD = "6d3a9f0e-1b2c-4d5e-8f90-a1b2c3d4e5f6"

# Real /proc/<pid>/cgroup texts (ids replaced by CID, pod uids by POD).
CGROUP_SAMPLES = [
    # Docker, cgroup v2, systemd driver
    (f"0::/system.slice/docker-{CID}.scope\n", "docker", ""),
    # Docker, cgroup v1, cgroupfs driver
    ("12:pids:/docker/{0}\n11:memory:/docker/{0}\n1:name=systemd:/docker/{0}\n".format(CID), "docker", ""),
    # Docker, cgroup v1, systemd driver
    (f"10:memory:/system.slice/docker-{CID}.scope\n1:name=systemd:/system.slice/docker-{CID}.scope\n",
     "docker", ""),
    # Kubernetes + containerd, cgroup v2, systemd driver
    ("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{0}.slice/cri-containerd-{1}.scope\n"
     .format(POD.replace("-", "_"), CID), "containerd", POD),
    # Kubernetes + containerd, cgroup v1, cgroupfs driver
    (f"11:memory:/kubepods/besteffort/pod{POD}/{CID}\n1:name=systemd:/kubepods/besteffort/pod{POD}/{CID}\n",
     "", POD),
    # Kubernetes burstable, cgroup v1, systemd driver, colon form
    ("4:memory:/system.slice/containerd.service/kubepods-burstable-pod{0}.slice:cri-containerd:{1}\n"
     .format(POD.replace("-", "_"), CID), "containerd", POD),
    # Kubernetes + CRI-O, cgroup v2, systemd driver
    ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{0}.slice/crio-{1}.scope\n"
     .format(POD.replace("-", "_"), CID), "cri-o", POD),
    # CRI-O, cgroupfs driver
    (f"0::/kubepods/pod{POD}/crio-{CID}\n", "cri-o", POD),
    # podman rootful, cgroup v2, systemd: the container's processes sit in a nested leaf
    (f"0::/machine.slice/libpod-{CID}.scope/container\n", "podman", ""),
    # podman rootless
    (f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope\n", "podman", ""),
    # podman, cgroupfs manager (this project's machines), cgroup v1
    (f"4:memory:/libpod_parent/libpod-{CID}\n9:name=systemd:/libpod_parent/libpod-{CID}\n", "podman", ""),
    # containerd via ctr (cgroupfs): /<namespace>/<id>
    (f"4:memory:/k8s.io/{CID}\n0::/k8s.io/{CID}\n", "", ""),
]


@pytest.mark.parametrize("text, runtime, pod_uid", CGROUP_SAMPLES)
def test_cgroup_layouts(text, runtime, pod_uid):
    ref = container_from_cgroup(text)
    assert ref is not None and ref.id == CID
    assert (ref.runtime, ref.pod_uid) == (runtime, pod_uid)


def test_ctr_namespace_is_the_parent_segment():
    assert container_from_cgroup(f"0::/k8s.io/{CID}\n").parent == "k8s.io"


@pytest.mark.parametrize("text", [
    "0::/user.slice/user-0.slice/session-3.scope\n",
    "0::/\n",
    f"0::/machine.slice/libpod-conmon-{CID}.scope\n",      # conmon is not in the container
    f"0::/system.slice/crio-conmon-{CID}.scope\n",
    f"0::/system.slice/docker-{CID[:63]}.scope\n",         # 63 hex: not an id
    f"0::/system.slice/docker-{CID}x.scope\n",
    "garbage without colons\n",
    "",
])
def test_not_a_container(text):
    assert container_from_cgroup(text) is None


def test_nested_runtimes_name_the_innermost():
    inner = "a" * 64
    assert container_from_cgroup(f"0::/docker/{CID}/docker/{inner}\n").id == inner


def test_attributes_before_and_after_the_runtime_answers():
    info = ContainerInfo(ContainerRef(CID, "containerd", POD))
    assert info.attributes() == {"container.id": CID, "container.runtime": "containerd"}
    info.meta = ContainerMeta("containerd", "web", "docker.io/library/nginx:1.25", {
        "io.kubernetes.pod.name": "web-7d4b9", "io.kubernetes.pod.namespace": "shop",
        "io.kubernetes.pod.uid": POD, "io.kubernetes.container.name": "web"})
    assert info.attributes() == {
        "container.id": CID, "container.runtime": "containerd", "container.name": "web",
        "container.image.name": "docker.io/library/nginx:1.25", "k8s.pod.name": "web-7d4b9",
        "k8s.pod.uid": POD, "k8s.namespace.name": "shop", "k8s.container.name": "web"}


# ---- host pid namespace ------------------------------------------------------------------

def fake_proc(tmp_path, own_ino: int, init_same: bool, nspid: str):
    """A /proc where ns/pid are files (their inode stands for the namespace)."""
    import os as _os
    (tmp_path / "self" / "ns").mkdir(parents=True)
    (tmp_path / "1" / "ns").mkdir(parents=True)
    own = tmp_path / "self" / "ns" / "pid"
    own.write_text("")
    if init_same:
        _os.link(own, tmp_path / "1" / "ns" / "pid")
    else:
        (tmp_path / "1" / "ns" / "pid").write_text("")
    (tmp_path / "self" / "status").write_text(f"Name:\tplaintap\nNSpid:\t{nspid}\n")
    return str(tmp_path)


@pytest.mark.parametrize("pid, init_same, nspid, refused", [
    (1, True, "1", True),            # a container without --pid=host: the agent is its pid 1
    (42, True, "900\t42", True),     # NSpid lists two namespaces
    (42, False, "42", True),         # /proc's pid 1 lives in another pid namespace
    (42, True, "42", False),         # a nested host (its own init, hostPID): allowed
])
def test_private_pid_namespace_is_refused_with_one_line(tmp_path, pid, init_same, nspid, refused):
    problem = host_pid_namespace_problem(fake_proc(tmp_path, 0, init_same, nspid), pid=pid)
    if refused:
        assert problem and "--pid=host" in problem and "hostPID: true" in problem and "\n" not in problem
    else:
        assert problem is None


def test_the_initial_pid_namespace_is_always_right():
    # this machine's tests run in the initial pid namespace (as the agent on a host does)
    if os.stat("/proc/self/ns/pid").st_ino == 0xEFFFFFFC:
        assert host_pid_namespace_problem() is None


# ---- Docker Engine API client against a local unix-socket server ---------------------------

class UnixServer:
    """A tiny HTTP server on a unix socket whose reply per request is `respond(path)`."""

    def __init__(self, path: str, respond) -> None:
        self.path = path
        self.respond = respond
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.requests: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c):
        with c:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(4096)
                if not chunk:
                    return
                data += chunk
            path = data.split(b" ")[1].decode()
            self.requests.append(path)
            try:
                c.sendall(self.respond(path))
            except OSError:
                pass

    def close(self):
        self.sock.close()


def http_reply(status: int, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


INSPECT = {"Id": CID, "Name": "/shop-api", "ImageName": "docker.io/library/debian:12-slim",
           "Config": {"Image": "debian:12-slim", "Labels": {"app": "shop", "tier": "api"}}}


@pytest.fixture
def sockdir(tmp_path_factory):
    # unix socket paths are limited to 108 bytes: keep them short
    d = tmp_path_factory.mktemp("s", numbered=True)
    return d


def test_docker_api_inspect(sockdir):
    srv = UnixServer(str(sockdir / "d.sock"), lambda p: http_reply(200, json.dumps(INSPECT).encode()))
    try:
        meta = DockerApi(srv.path).inspect(CID, 2.0)
    finally:
        srv.close()
    assert srv.requests == [f"/containers/{CID}/json"]
    assert meta == ContainerMeta("docker", "shop-api", "docker.io/library/debian:12-slim",
                                 {"app": "shop", "tier": "api"})


def resolver_for(tmp, respond, timeout=1.0):
    srv = UnixServer(str(tmp / "d.sock"), respond)
    results: list[str] = []
    r = ContainerResolver(RuntimeSockets(containerd="", docker=srv.path, cri="", podman=""),
                          timeout=timeout, on_result=results.append)
    return srv, r, results


def test_resolver_fills_metadata_off_thread_and_caches(sockdir):
    srv, r, results = resolver_for(sockdir, lambda p: http_reply(200, json.dumps(INSPECT).encode()))
    r.start()
    try:
        ref = ContainerRef(CID, "docker")
        info = r.lookup(ref)
        assert info.state == "pending" and info.attributes()["container.id"] == CID
        deadline = time.monotonic() + 5
        while info.state == "pending" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert info.attributes()["container.name"] == "shop-api"
        assert r.lookup(ref) is info and len(srv.requests) == 1 and results == ["ok"]
    finally:
        r.stop()
        srv.close()


@pytest.mark.parametrize("respond, reason", [
    (lambda p: http_reply(200, b"{not json"), "garbage"),
    (lambda p: http_reply(200, b"[1, 2, 3]"), "garbage"),
    (lambda p: http_reply(500, b"{}"), "garbage"),
    (lambda p: http_reply(404, b'{"message": "no such container"}'), "not_found"),
    (lambda p: b"\x00\xff garbage that is not HTTP\r\n\r\n", "garbage"),
    (lambda p: http_reply(200, b'{"Name": 5, "Config": {"Labels": ["x"]}}'), "ok-empty"),
])
def test_bad_runtime_replies_are_counted_misses(sockdir, respond, reason):
    srv, r, results = resolver_for(sockdir, respond)
    info = ContainerInfo(ContainerRef(CID, "docker"))
    try:
        r.resolve(info)
    finally:
        srv.close()
    if reason == "ok-empty":   # well-formed JSON of the wrong shape: no names, no crash
        assert results == ["ok"] and info.attributes() == {"container.id": CID, "container.runtime": "docker"}
    else:
        assert results == ["miss"] and info.state == "missed" and info.meta is None


def test_slow_runtime_costs_a_bounded_miss(sockdir):
    def slow(p):
        time.sleep(3)
        return http_reply(200, json.dumps(INSPECT).encode())
    srv, r, results = resolver_for(sockdir, slow, timeout=0.3)
    info = ContainerInfo(ContainerRef(CID, "docker"))
    t0 = time.monotonic()
    try:
        r.resolve(info)
    finally:
        srv.close()
    assert time.monotonic() - t0 < 1.5 and results == ["miss"]


def test_lookup_never_blocks_and_counts_a_full_queue():
    # no worker started and a queue of one: the second new container is dropped, counted
    results: list[str] = []
    r = ContainerResolver(RuntimeSockets(containerd="", docker="/nonexistent/d.sock", cri="", podman=""),
                          queue_size=1, on_result=results.append)
    a = r.lookup(ContainerRef("a" * 64))
    b = r.lookup(ContainerRef("b" * 64))
    assert a.state == "pending" and b.state == "missed" and results == ["dropped"]


def test_absent_sockets_are_a_miss_without_waiting():
    results: list[str] = []
    r = ContainerResolver(RuntimeSockets(containerd="/nonexistent/c.sock", docker="/nonexistent/d.sock",
                                         cri="/nonexistent/x.sock", podman="/nonexistent/p.sock"),
                          on_result=results.append)
    info = ContainerInfo(ContainerRef(CID))
    t0 = time.monotonic()
    r.resolve(info)
    assert time.monotonic() - t0 < 0.5 and results == ["miss"] and info.attributes() == {"container.id": CID}


# ---- gRPC clients (containerd, CRI) against in-process servers speaking their messages ------

def grpc_server(path: str, method: str, handler):
    import grpc
    m = messages()
    req_cls, resp_cls = {
        "/containerd.services.containers.v1.Containers/Get": (
            m["containerd.services.containers.v1.GetContainerRequest"],
            m["containerd.services.containers.v1.GetContainerResponse"]),
        "/runtime.v1.RuntimeService/ContainerStatus": (
            m["runtime.v1.ContainerStatusRequest"], m["runtime.v1.ContainerStatusResponse"]),
    }[method]
    service, name = method[1:].split("/")
    rpc = grpc.unary_unary_rpc_method_handler(lambda req, ctx: handler(req, ctx, resp_cls),
                                              request_deserializer=req_cls.FromString,
                                              response_serializer=lambda msg: msg.SerializeToString())
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {name: rpc})])
    server.add_insecure_port(f"unix://{path}")
    server.start()
    return server


def test_containerd_client_reads_kubelet_labels_in_the_namespace(sockdir):
    import grpc
    seen = []

    def get(req, ctx, resp_cls):
        ns = dict(ctx.invocation_metadata()).get("containerd-namespace")
        seen.append(ns)
        if ns != "k8s.io" or req.id != CID:
            ctx.abort(grpc.StatusCode.NOT_FOUND, "not found")
        resp = resp_cls()
        resp.container.id = CID
        resp.container.image = "docker.io/library/nginx:1.25"
        resp.container.labels.update({"io.kubernetes.pod.name": "web-0", "io.kubernetes.pod.namespace": "shop",
                                      "io.kubernetes.pod.uid": POD, "io.kubernetes.container.name": "web"})
        return resp
    path = str(sockdir / "c.sock")
    server = grpc_server(path, "/containerd.services.containers.v1.Containers/Get", get)
    client = ContainerdApi(path)
    try:
        meta = client.inspect(CID, 2.0, namespaces=("default",))
        with pytest.raises(Exception) as e:
            client.inspect("b" * 64, 2.0)
    finally:
        client.close()
        server.stop(0)
    assert seen[:2] == ["default", "k8s.io"]
    assert getattr(e.value, "reason", None) == "not_found"
    assert (meta.runtime, meta.name, meta.image, meta.pod_name, meta.pod_namespace, meta.pod_uid) == \
        ("containerd", "web", "docker.io/library/nginx:1.25", "web-0", "shop", POD)


def test_cri_client_container_status(sockdir):
    def status(req, ctx, resp_cls):
        resp = resp_cls()
        resp.status.id = req.container_id
        resp.status.metadata.name = "api"
        resp.status.image.image = "quay.io/shop/api:2"
        resp.status.labels.update({"io.kubernetes.pod.name": "api-1", "io.kubernetes.pod.namespace": "prod"})
        return resp
    path = str(sockdir / "x.sock")
    server = grpc_server(path, "/runtime.v1.RuntimeService/ContainerStatus", status)
    client = CriApi(path)
    try:
        meta = client.inspect(CID, 2.0)
    finally:
        client.close()
        server.stop(0)
    assert (meta.runtime, meta.name, meta.image, meta.pod_name, meta.pod_namespace) == \
        ("cri-o", "api", "quay.io/shop/api:2", "api-1", "prod")


def test_grpc_garbage_reply_is_a_miss(sockdir):
    import grpc
    path = str(sockdir / "g.sock")
    # a server answering raw bytes that are not the message
    rpc = grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"\xff\xff\xff\xff garbage",
                                              request_deserializer=lambda b: b,
                                              response_serializer=lambda b: b)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "runtime.v1.RuntimeService", {"ContainerStatus": rpc})])
    server.add_insecure_port(f"unix://{path}")
    server.start()
    results: list[str] = []
    r = ContainerResolver(RuntimeSockets(containerd="", docker="", cri=path, podman=""), timeout=2,
                          on_result=results.append)
    info = ContainerInfo(ContainerRef(CID, "cri-o"))
    try:
        r.resolve(info)
    finally:
        r.stop()
        server.stop(0)
    assert results == ["miss"] and info.meta is None


# ---- rule variables ----------------------------------------------------------------------

RULES = """
stacks:
  capture:
    plugins:
      - type: http_capture
        config:
          level: summary
          rules:
            - name: shop in full
              expr: src.pod.namespace == "shop"
              level: full
            - name: by label
              expr: src.container.labels.team == "payments"
              level: details
"""


def _in_pod(namespace: str, labels: dict | None = None):
    conn, tx = h1_json_post()
    info = ContainerInfo(ContainerRef(CID, "containerd"))
    info.meta = ContainerMeta("containerd", "web", "nginx:1", {"io.kubernetes.pod.namespace": namespace,
                                                               "io.kubernetes.pod.name": "web-0", **(labels or {})})
    conn.process.container = info
    return conn, tx


@pytest.mark.parametrize("conn_tx, level", [
    (lambda: _in_pod("shop"), "full"),
    (lambda: _in_pod("other"), "summary"),
    (lambda: _in_pod("other", {"team": "payments"}), "details"),
])
def test_rule_on_pod_namespace_selects_the_level(conn_tx, level):
    stack = build_stack(load_config_text(RULES).stacks["capture"], "capture")
    conn, tx = conn_tx()
    assert stack.plugins[0].level_for(TransactionContext(conn, tx, "t", wall_ns)) == level


def test_rule_variables_for_containers():
    from plaintap.records.transaction import transaction_vars
    conn, tx = _in_pod("shop", {"team": "payments"})
    v = transaction_vars(conn, tx)
    assert (v["src.container.name"], v["src.container.image"], v["src.pod.name"], v["src.pod.namespace"]) == \
        ("web", "nginx:1", "web-0", "shop")
    assert v["src.container.labels.team"] == "payments" and v.get("src.container.labels.nope") is None
    bare, tx2 = h1_json_post()
    bare.process.container = None
    assert transaction_vars(bare, tx2).get("src.pod.namespace") is None


def test_process_info_without_runtime_answer_keeps_the_id(tmp_path):
    from plaintap.capture.process import read_proc
    proc = tmp_path / "proc" / "77"
    proc.mkdir(parents=True)
    (proc / "status").write_text("Name:\tcurl\nUid:\t0\t0\t0\t0\n")
    (proc / "cmdline").write_bytes(b"curl\0-s\0")
    (proc / "cgroup").write_text(f"0::/system.slice/docker-{CID}.scope\n")
    info = read_proc(77, str(tmp_path / "proc"))
    assert info.container_id == CID and info.container_attributes() == {"container.id": CID,
                                                                         "container.runtime": "docker"}


# ---- records held while a lookup is pending; exec fallbacks ------------------------------

def test_hold_releases_when_the_container_settles_or_the_wait_runs_out():
    from plaintap.capture.containers import ContainerHold
    from plaintap.records.model import Record
    hold = ContainerHold(max_wait_ns=1000)
    pending = ContainerInfo(ContainerRef(CID, "docker"))
    other = ContainerInfo(ContainerRef("b" * 64, "docker"))
    settled = ContainerInfo(ContainerRef("c" * 64))
    settled.state = "missed"
    r1, r2, r3 = (Record("plaintap.events", 0, "x", {}) for _ in range(3))
    assert hold.keep(pending, r1, "events", 0) and hold.keep(other, r2, "objects", 0)
    assert not hold.keep(settled, r3, "events", 0) and not hold.keep(None, r3, "events", 0)
    assert hold.release(10) == []
    pending.meta = ContainerMeta("docker", "web", "nginx:1")
    pending.state = "resolved"
    assert hold.release(20) == [("events", r1)] and r1.attributes["container.name"] == "web"
    assert hold.release(1000) == [("objects", r2)] and r2.attributes == {"container.id": "b" * 64,
                                                                         "container.runtime": "docker"}
    assert len(hold) == 0


def test_a_process_gone_before_its_exec_is_handled_keeps_its_parents_container(tmp_path):
    from plaintap.capture.process import ProcessTable
    proc = tmp_path / "proc" / "10"
    proc.mkdir(parents=True)
    (proc / "status").write_text("Name:\tsh\nUid:\t0\t0\t0\t0\n")
    (proc / "cgroup").write_text(f"0::/system.slice/docker-{CID}.scope\n")
    table = ProcessTable(proc_root=str(tmp_path / "proc"))
    parent = table.on_exec(10, "/bin/sh", ["sh"], 0)
    child = table.on_exec(11, "/usr/bin/curl", ["curl"], 0, ppid=10)   # /proc/11 never seen
    assert child.container is parent.container and child.container_id == CID
    orphan = table.on_exec(12, "/usr/bin/curl", ["curl"], 0, ppid=999)
    assert orphan.container is None and orphan.container_id == ""
