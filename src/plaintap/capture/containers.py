"""Which container (and Kubernetes pod) a process runs in.

Two steps, the second off the capture path:

1. **cgroup → container id** (`container_from_cgroup`, pure): every runtime names the
   cgroup of a container after its 64-hex id, in one of a few layouts —
   systemd driver: `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
   `libpod-<id>.scope` (podman, possibly with a nested `/container`), and for cgroup v1
   with Kubernetes' systemd driver `kubepods-…-pod<uid>.slice:cri-containerd:<id>`;
   cgroupfs driver: `/docker/<id>`, `/libpod_parent/libpod-<id>`,
   `/kubepods/<qos>/pod<uid>/<id>`, `ctr`'s `/<namespace>/<id>`. cgroup v1 (one line per
   hierarchy) and v2 (`0::/path`) are both read; the innermost match wins (nested
   runtimes). conmon's own scopes (`libpod-conmon-…`, `crio-conmon-…`) are not containers.
2. **id → metadata** (`ContainerResolver`): a worker thread asks the runtime's API —
   containerd (gRPC, namespaces `k8s.io`, `moby`, `default`), CRI-O (the CRI gRPC API),
   Docker or podman (the Docker Engine API over a unix socket) — with a deadline per call
   and a bound on every reply. Results are cached per container. Records built before
   the answer arrives carry `container.id` alone; a runtime that is absent, slow or
   answers garbage is a counted miss (`plaintap_container_lookups_total{result}`), never
   a stall of the capture thread: `ContainerResolver.lookup` only reads a dict and puts
   on a bounded queue.

`ContainerInfo.meta` is assigned once by the worker (a single reference store) and never
mutated afterwards, so readers on the capture thread need no lock.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import queue
import re
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("plaintap.containers")

_HEX64 = r"[0-9a-f]{64}"
# One cgroup path segment → (runtime guess, id). Order matters: conmon first.
_SEGMENT_PATTERNS: tuple[tuple[re.Pattern, str | None], ...] = (
    (re.compile(rf"^(?:libpod|crio)-conmon-{_HEX64}\.scope$"), None),     # conmon, not the container
    (re.compile(rf"^docker-({_HEX64})\.scope$"), "docker"),
    (re.compile(rf"^cri-containerd-({_HEX64})\.scope$"), "containerd"),
    (re.compile(rf"^crio-({_HEX64})(?:\.scope)?$"), "cri-o"),
    (re.compile(rf"^libpod-({_HEX64})(?:\.scope)?$"), "podman"),
    (re.compile(rf"^({_HEX64})$"), ""),                                      # cgroupfs: the bare id
)
# `kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>` (cgroup v1, systemd driver, some setups)
_COLON_FORM = re.compile(rf"^(?:.*:)?(cri-containerd|crio|docker):({_HEX64})$")
_COLON_RUNTIME = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$")

MAX_CGROUP_TEXT = 64 << 10


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """What the cgroup path tells: the id, a runtime guess ('' when the layout does not
    say), the pod uid when the path is under kubepods, the parent segment (ctr's namespace)."""
    id: str
    runtime: str = ""
    pod_uid: str = ""
    parent: str = ""


def _ref_from_path(path: str) -> ContainerRef | None:
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts) - 1, -1, -1):
        seg = parts[i]
        found: tuple[str, str] | None = None
        m = _COLON_FORM.match(seg)
        if m:
            found = (_COLON_RUNTIME[m.group(1)], m.group(2))
        else:
            for pattern, runtime in _SEGMENT_PATTERNS:
                m = pattern.match(seg)
                if m:
                    if runtime is None:
                        return None     # conmon's scope: the process is not in the container
                    found = (runtime, m.group(1))
                    break
        if found is None:
            continue
        runtime, cid = found
        parent = parts[i - 1] if i > 0 else ""
        if not runtime and parent == "docker":
            runtime = "docker"
        pod_uid = ""
        for p in parts[:i + 1]:
            pm = _POD_UID.search(p.split(":")[0])
            if pm:
                pod_uid = pm.group(1).replace("_", "-")
        return ContainerRef(cid, runtime, pod_uid, parent)
    return None


def container_from_cgroup(text: str) -> ContainerRef | None:
    """The container a /proc/<pid>/cgroup text places the process in, or None.

    The unified (v2) line is preferred; then the v1 lines in order."""
    lines = text[:MAX_CGROUP_TEXT].splitlines()
    lines.sort(key=lambda ln: not ln.startswith("0::"))
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        ref = _ref_from_path(fields[2])
        if ref is not None:
            return ref
    return None


# ---- metadata ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ContainerMeta:
    """What a runtime said about a container."""
    runtime: str
    name: str = ""
    image: str = ""
    labels: dict = field(default_factory=dict)

    @property
    def pod_name(self) -> str:
        return self.labels.get("io.kubernetes.pod.name", "")

    @property
    def pod_namespace(self) -> str:
        return self.labels.get("io.kubernetes.pod.namespace", "")

    @property
    def pod_uid(self) -> str:
        return self.labels.get("io.kubernetes.pod.uid", "")

    @property
    def k8s_container_name(self) -> str:
        return self.labels.get("io.kubernetes.container.name", "")


class ContainerInfo:
    """One container, shared by all its processes. `meta` is None until (unless) a
    runtime answered; `state` is 'pending', 'resolved' or 'missed'."""

    __slots__ = ("id", "ref", "meta", "state")

    def __init__(self, ref: ContainerRef) -> None:
        self.id = ref.id
        self.ref = ref
        self.meta: ContainerMeta | None = None
        self.state = "pending"

    def attributes(self) -> dict:
        """`container.*` and `k8s.*` record attributes (RECORDS.md), only the known ones."""
        attrs = {"container.id": self.id}
        meta = self.meta
        runtime = meta.runtime if meta is not None else self.ref.runtime
        if runtime:
            attrs["container.runtime"] = runtime
        if meta is None:
            return attrs
        if meta.name:
            attrs["container.name"] = meta.name
        if meta.image:
            attrs["container.image.name"] = meta.image
        for key, value in (("k8s.pod.name", meta.pod_name), ("k8s.pod.uid", meta.pod_uid),
                           ("k8s.namespace.name", meta.pod_namespace),
                           ("k8s.container.name", meta.k8s_container_name)):
            if value:
                attrs[key] = value
        return attrs


class LookupError_(Exception):
    """A runtime could not answer for a container (message says why); 'not_found' when
    it answered that it does not know the id."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


MAX_REPLY = 1 << 20           # bytes of one runtime reply
MAX_LABELS = 256
MAX_TEXT = 1024               # characters of a name/image/label value kept


def _text(value) -> str:
    return value[:MAX_TEXT] if isinstance(value, str) else ""


def _labels(value) -> dict:
    if not isinstance(value, dict):
        return {}
    out = {}
    for k, v in value.items():
        if isinstance(k, str) and isinstance(v, str) and len(out) < MAX_LABELS:
            out[k[:MAX_TEXT]] = v[:MAX_TEXT]
    return out


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


class DockerApi:
    """The Docker Engine API (`GET /containers/<id>/json`) over a unix socket; podman
    serves the same API (`podman system service`)."""

    def __init__(self, socket_path: str, runtime: str = "docker") -> None:
        self.socket_path = socket_path
        self.runtime = runtime

    def inspect(self, cid: str, timeout: float) -> ContainerMeta:
        deadline = time.monotonic() + timeout
        conn = _UnixHTTPConnection(self.socket_path, timeout)
        try:
            conn.request("GET", f"/containers/{cid}/json", headers={"Host": "docker"})
            resp = conn.getresponse()
            body = b""
            while len(body) <= MAX_REPLY:
                if time.monotonic() > deadline:
                    raise LookupError_("timeout", "reply too slow")
                chunk = resp.read1(65536)
                if not chunk:
                    break
                body += chunk
        except (OSError, http.client.HTTPException) as e:
            raise LookupError_("timeout" if isinstance(e, TimeoutError) else "unreachable", str(e)) from None
        finally:
            conn.close()
        if resp.status == 404:
            raise LookupError_("not_found")
        if resp.status != 200:
            raise LookupError_("garbage", f"HTTP {resp.status}")
        if len(body) > MAX_REPLY:
            raise LookupError_("garbage", "reply too large")
        try:
            doc = json.loads(body)
        except ValueError:
            raise LookupError_("garbage", "reply is not JSON") from None
        if not isinstance(doc, dict):
            raise LookupError_("garbage", "reply is not an object")
        config = doc.get("Config") if isinstance(doc.get("Config"), dict) else {}
        # podman's compat API also gives ImageName (the reference as `podman inspect` shows it)
        image = _text(doc.get("ImageName")) or _text(config.get("Image"))
        return ContainerMeta(self.runtime, _text(doc.get("Name")).lstrip("/"), image, _labels(config.get("Labels")))


# ---- gRPC APIs (containerd, CRI): message classes built from a minimal descriptor ---------

def _build_messages():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    F = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()

    def field_(msg, name, number, type_, label=F.LABEL_OPTIONAL, type_name=""):
        f = msg.field.add(name=name, number=number, type=type_, label=label)
        if type_name:
            f.type_name = type_name

    def map_entry(msg, entry_name):
        e = msg.nested_type.add(name=entry_name)
        e.options.map_entry = True
        field_(e, "key", 1, F.TYPE_STRING)
        field_(e, "value", 2, F.TYPE_STRING)

    # containerd.services.containers.v1 (only the fields read here; others are skipped)
    f1 = descriptor_pb2.FileDescriptorProto(name="plaintap_containerd.proto",
                                            package="containerd.services.containers.v1", syntax="proto3")
    c = f1.message_type.add(name="Container")
    field_(c, "id", 1, F.TYPE_STRING)
    map_entry(c, "LabelsEntry")
    field_(c, "labels", 2, F.TYPE_MESSAGE, F.LABEL_REPEATED,
           ".containerd.services.containers.v1.Container.LabelsEntry")
    field_(c, "image", 3, F.TYPE_STRING)
    req = f1.message_type.add(name="GetContainerRequest")
    field_(req, "id", 1, F.TYPE_STRING)
    resp = f1.message_type.add(name="GetContainerResponse")
    field_(resp, "container", 1, F.TYPE_MESSAGE, type_name=".containerd.services.containers.v1.Container")
    pool.Add(f1)

    # runtime.v1 (CRI) ContainerStatus
    f2 = descriptor_pb2.FileDescriptorProto(name="plaintap_cri.proto", package="runtime.v1", syntax="proto3")
    md = f2.message_type.add(name="ContainerMetadata")
    field_(md, "name", 1, F.TYPE_STRING)
    im = f2.message_type.add(name="ImageSpec")
    field_(im, "image", 1, F.TYPE_STRING)
    st = f2.message_type.add(name="ContainerStatus")
    field_(st, "id", 1, F.TYPE_STRING)
    field_(st, "metadata", 2, F.TYPE_MESSAGE, type_name=".runtime.v1.ContainerMetadata")
    field_(st, "image", 8, F.TYPE_MESSAGE, type_name=".runtime.v1.ImageSpec")
    map_entry(st, "LabelsEntry")
    field_(st, "labels", 12, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".runtime.v1.ContainerStatus.LabelsEntry")
    sreq = f2.message_type.add(name="ContainerStatusRequest")
    field_(sreq, "container_id", 1, F.TYPE_STRING)
    field_(sreq, "verbose", 2, F.TYPE_BOOL)
    sresp = f2.message_type.add(name="ContainerStatusResponse")
    field_(sresp, "status", 1, F.TYPE_MESSAGE, type_name=".runtime.v1.ContainerStatus")
    pool.Add(f2)

    get = message_factory.GetMessageClass
    return {name: get(pool.FindMessageTypeByName(name)) for name in (
        "containerd.services.containers.v1.GetContainerRequest",
        "containerd.services.containers.v1.GetContainerResponse",
        "runtime.v1.ContainerStatusRequest",
        "runtime.v1.ContainerStatusResponse",
    )}


_MESSAGES: dict | None = None


def messages() -> dict:
    global _MESSAGES
    if _MESSAGES is None:
        _MESSAGES = _build_messages()
    return _MESSAGES


class _GrpcUnix:
    """One lazily opened gRPC channel to a unix socket, reopened after a failure."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._channel = None

    def call(self, method: str, request, response_cls, timeout: float, metadata=()):
        import grpc
        if self._channel is None:
            self._channel = grpc.insecure_channel(
                f"unix://{self.socket_path}",
                options=[("grpc.max_receive_message_length", MAX_REPLY), ("grpc.enable_retries", 0)])
        stub = self._channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=response_cls.FromString)
        try:
            return stub(request, timeout=timeout, metadata=list(metadata))
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code == grpc.StatusCode.NOT_FOUND:
                raise LookupError_("not_found") from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise LookupError_("timeout", self.socket_path) from None
            if code == grpc.StatusCode.INTERNAL:   # includes replies that do not decode
                raise LookupError_("garbage", str(e.details() if hasattr(e, "details") else e)) from None
            raise LookupError_("unreachable", f"{self.socket_path}: {code}") from None
        except Exception as e:   # a reply protobuf cannot parse, …
            raise LookupError_("garbage", repr(e)) from None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


class ContainerdApi:
    """containerd's Containers service (`containerd.services.containers.v1.Containers/Get`),
    namespace in the `containerd-namespace` metadata."""

    NAMESPACES = ("k8s.io", "moby", "default")

    def __init__(self, socket_path: str) -> None:
        self.grpc = _GrpcUnix(socket_path)

    def inspect(self, cid: str, timeout: float, namespaces: tuple[str, ...] = ()) -> ContainerMeta:
        m = messages()
        deadline = time.monotonic() + timeout
        tried = list(dict.fromkeys(tuple(namespaces) + self.NAMESPACES))
        for ns in tried:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LookupError_("timeout", "containerd")
            try:
                reply = self.grpc.call("/containerd.services.containers.v1.Containers/Get",
                                       m["containerd.services.containers.v1.GetContainerRequest"](id=cid),
                                       m["containerd.services.containers.v1.GetContainerResponse"],
                                       left, metadata=(("containerd-namespace", ns),))
            except LookupError_ as e:
                if e.reason == "not_found":
                    continue
                raise
            c = reply.container
            if c.id != cid:
                raise LookupError_("garbage", "containerd answered for another id")
            labels = _labels(dict(c.labels))
            name = labels.get("io.kubernetes.container.name") or labels.get("nerdctl/name", "")
            return ContainerMeta("containerd", _text(name), _text(c.image), labels)
        raise LookupError_("not_found")

    def close(self) -> None:
        self.grpc.close()


class CriApi:
    """The Kubernetes CRI (`runtime.v1.RuntimeService/ContainerStatus`), as CRI-O serves it."""

    def __init__(self, socket_path: str, runtime: str = "cri-o") -> None:
        self.grpc = _GrpcUnix(socket_path)
        self.runtime = runtime

    def inspect(self, cid: str, timeout: float) -> ContainerMeta:
        m = messages()
        reply = self.grpc.call("/runtime.v1.RuntimeService/ContainerStatus",
                               m["runtime.v1.ContainerStatusRequest"](container_id=cid),
                               m["runtime.v1.ContainerStatusResponse"], timeout)
        st = reply.status
        if st.id and st.id != cid:
            raise LookupError_("garbage", "CRI answered for another id")
        labels = _labels(dict(st.labels))
        name = labels.get("io.kubernetes.container.name") or st.metadata.name
        return ContainerMeta(self.runtime, _text(name), _text(st.image.image), labels)

    def close(self) -> None:
        self.grpc.close()


# ---- the agent's own pid namespace ---------------------------------------------------------

INIT_PID_NS_INODE = 0xEFFFFFFC   # the kernel's initial pid namespace (PROC_PID_INIT_INO)


def host_pid_namespace_problem(proc: str = "/proc", pid: int | None = None) -> str | None:
    """One line saying why the agent must not run here, or None.

    Kernel events carry host pids; in a private pid namespace the agent's /proc names
    other processes (or none) for them. The initial pid namespace is always right. Any
    other one is refused when it is visibly private: the agent is its pid 1 (a container
    started without --pid=host), /proc/self/status lists more than one pid (NSpid), or
    the agent's namespace is not that of /proc's pid 1. A nested host (a node that is
    itself a container, with hostPID) passes."""
    me = os.getpid() if pid is None else pid
    try:
        own = os.stat(f"{proc}/self/ns/pid")
    except OSError:
        return None
    if own.st_ino == INIT_PID_NS_INODE:
        return None
    private = me == 1
    try:
        with open(f"{proc}/self/status", "rb") as f:
            for line in f.read(1 << 16).decode("ascii", "replace").splitlines():
                if line.startswith("NSpid:") and len(line.split()) > 2:
                    private = True
    except OSError:
        pass
    try:
        init = os.stat(f"{proc}/1/ns/pid")
        if (init.st_dev, init.st_ino) != (own.st_dev, own.st_ino):
            private = True
    except OSError:
        pass
    if private:
        return ("plaintap runs in a private pid namespace and would see host processes under the wrong pids: "
                "run its container with --pid=host (Kubernetes: hostPID: true)")
    return None


# ---- the resolver ------------------------------------------------------------------------

@dataclass
class RuntimeSockets:
    """Where the runtimes' APIs are (qtap's flags: --containerd-socket, --docker-socket,
    --cri-runtime-socket). An empty string turns one off."""
    containerd: str = "/run/containerd/containerd.sock"
    docker: str = "/var/run/docker.sock"
    cri: str = "/run/crio/crio.sock"
    podman: str = "/run/podman/podman.sock"


class ContainerResolver:
    """Container id → ContainerInfo, metadata filled in by a worker thread.

    `lookup(ref)` never blocks: it returns the cached ContainerInfo (new ones are queued
    for the worker). Each lookup tries the runtimes the cgroup layout suggests first,
    each within `timeout` seconds; the first answer wins. `on_result(result)` is told of
    each outcome ('ok', 'miss', 'dropped') for the metrics."""

    def __init__(self, sockets: RuntimeSockets | None = None, timeout: float = 2.0, max_entries: int = 8192,
                 queue_size: int = 1024, on_result: Callable[[str], None] | None = None,
                 clients: dict | None = None) -> None:
        self.sockets = sockets or RuntimeSockets()
        self.timeout = timeout
        self.max_entries = max_entries
        self.on_result = on_result or (lambda result: None)
        self._cache: OrderedDict[str, ContainerInfo] = OrderedDict()
        self._queue: queue.Queue[ContainerInfo | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._clients = clients if clients is not None else self._make_clients()
        self._warned: set[str] = set()

    def _make_clients(self) -> dict:
        s = self.sockets
        clients = {}
        if s.containerd:
            clients["containerd"] = ContainerdApi(s.containerd)
        if s.cri:
            clients["cri-o"] = CriApi(s.cri)
        if s.docker:
            clients["docker"] = DockerApi(s.docker, "docker")
        if s.podman:
            clients["podman"] = DockerApi(s.podman, "podman")
        return clients

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="container-lookup", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(self.timeout * 4 + 1)
            self._thread = None
        for c in self._clients.values():
            close = getattr(c, "close", None)
            if close:
                close()

    def lookup(self, ref: ContainerRef) -> ContainerInfo:
        info = self._cache.get(ref.id)
        if info is not None:
            self._cache.move_to_end(ref.id)
            return info
        info = ContainerInfo(ref)
        self._cache[ref.id] = info
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        if not self._clients:
            info.state = "missed"
            self.on_result("miss")
            return info
        try:
            self._queue.put_nowait(info)
        except queue.Full:
            info.state = "missed"
            self.on_result("dropped")
        return info

    def _order(self, ref: ContainerRef) -> list[str]:
        prefer = {"docker": ["docker", "podman"], "podman": ["podman", "docker"],
                  "containerd": ["containerd"], "cri-o": ["cri-o"]}.get(ref.runtime, [])
        rest = ["containerd", "cri-o", "docker", "podman"]
        return [r for r in dict.fromkeys(prefer + rest) if r in self._clients]

    def resolve(self, info: ContainerInfo) -> None:
        """Ask the runtimes about one container (the worker's job; tests call it directly)."""
        deadline = time.monotonic() + self.timeout
        reasons = []
        for name in self._order(info.ref):
            left = deadline - time.monotonic()
            if left <= 0:
                reasons.append("timeout")
                break
            client = self._clients[name]
            path = getattr(client, "socket_path", None) or getattr(getattr(client, "grpc", None), "socket_path", None)
            if path and not os.path.exists(path):
                reasons.append(f"{name}: no socket")
                continue
            try:
                if name == "containerd" and info.ref.parent:
                    meta = client.inspect(info.id, left, namespaces=(info.ref.parent,))
                else:
                    meta = client.inspect(info.id, left)
            except LookupError_ as e:
                reasons.append(e.reason)
                if e.reason != "not_found" and name not in self._warned:
                    self._warned.add(name)
                    log.info("container runtime %s did not answer (%s); containers it runs get container.id only",
                             name, e)
                continue
            except Exception as e:   # a client bug must not kill the worker
                reasons.append("error")
                log.debug("container lookup via %s failed: %r", name, e)
                continue
            if info.ref.runtime == "podman" and meta.runtime == "docker":
                meta = ContainerMeta("podman", meta.name, meta.image, meta.labels)
            info.meta = meta
            info.state = "resolved"
            self.on_result("ok")
            return
        info.state = "missed"
        log.debug("container %s: no runtime answered (%s)", info.id[:12], ", ".join(reasons) or "none configured")
        self.on_result("miss")

    def _work(self) -> None:
        while True:
            info = self._queue.get()
            if info is None:
                return
            try:
                self.resolve(info)
            except Exception:
                log.exception("container lookup failed")
                info.state = "missed"
                self.on_result("miss")


class ContainerHold:
    """Records of processes whose container lookup is still pending, held back until it
    settles (at most `max_wait_ns`, the lookup's own deadline plus a margin) and then
    completed with the container's attributes. A container first seen at its process's
    exec is usually looked up within milliseconds, but a short connection is reported
    sooner than that. Bounded: past `max_records` held, records go out as they are."""

    def __init__(self, max_wait_ns: int, max_records: int = 20000) -> None:
        self.max_wait_ns = max_wait_ns
        self.max_records = max_records
        self._held: list[tuple[int, ContainerInfo, str, object]] = []

    def keep(self, container: ContainerInfo | None, record, kind: str, now_ns: int) -> bool:
        """Hold `record` (of stream `kind`) if its container is pending; True when held."""
        if container is None or container.state != "pending" or len(self._held) >= self.max_records:
            return False
        self._held.append((now_ns + self.max_wait_ns, container, kind, record))
        return True

    def release(self, now_ns: int, force: bool = False) -> list[tuple[str, object]]:
        """(kind, record) pairs whose container settled (or whose wait ran out), in the
        order they were held, with the container's attributes brought up to date."""
        if not self._held:
            return []
        out, keep = [], []
        for item in self._held:
            deadline, container, kind, record = item
            if force or container.state != "pending" or now_ns >= deadline:
                record.attributes.update(container.attributes())
                out.append((kind, record))
            else:
                keep.append(item)
        self._held = keep
        return out

    def __len__(self) -> int:
        return len(self._held)
