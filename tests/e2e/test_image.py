"""The container image as users run it: built by scripts/build-image from this checkout
(podman, base made locally), runtime only, run with qtap's flags (--privileged --pid host
--network host -v /sys:/sys, config mounted read-only). It captures a host curl's TLS
exchange byte-exact, names a container curl as `podman inspect` does, and stops on
`podman stop` with exit code 0, flushed. The least-privilege form (capabilities instead
of --privileged) is checked too."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time
import urllib.request

import pytest

from conftest import capture_config, free_port, need
from containerenv import CURL_IMAGE, PodmanService, ensure_curl_image, ensure_plaintap_image, missing_tools, podman
from tlsenv import SNI, Nginx

pytestmark = pytest.mark.kernel

CONFIG = capture_config("full")

# The capabilities that suffice instead of --privileged (README "Least privilege"):
# BPF and PERFMON load programs and open perf events for tracepoints and uprobes,
# SYS_ADMIN mounts tracefs when absent and reads other tasks' BPF-visible state,
# SYS_PTRACE reads other processes' /proc/<pid>/root (TLS libraries in containers),
# SYS_RESOURCE lifts the locked-memory limit for maps, DAC_READ_SEARCH reads their files.
LEAST_PRIVILEGE = ["--cap-drop", "all", "--cap-add", "BPF,PERFMON,SYS_ADMIN,SYS_PTRACE,SYS_RESOURCE,DAC_READ_SEARCH",
                   "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined"]


@pytest.fixture(scope="module")
def image(kernel):
    why = missing_tools("podman", "runc", "mmdebstrap")
    need(why)
    t0 = time.monotonic()
    tag, line = ensure_plaintap_image()
    print(f"\nplaintap image: {line} ({time.monotonic() - t0:.0f} s)")
    return tag


class ContainerAgent:
    def __init__(self, image: str, tmp_path, *run_args: str, mounts: tuple[str, ...] = ()) -> None:
        self.name = f"plaintap-test-{os.getpid()}-{time.monotonic_ns() % 10**6}"
        cfg = tmp_path / "qtap.yaml"
        cfg.write_text(CONFIG)
        self.port = free_port()
        # Records go to a file in a mounted directory rather than through podman's log pipe:
        # on a shared machine the agent (direction: all) also records the neighbours' loopback
        # traffic, and conmon's log pipe drains slower than a file.
        self.out = tmp_path / "out"
        self.out.mkdir(exist_ok=True)
        args = ["run", "-d", "--name", self.name, "--pid", "host", "--network", "host", "-v", "/sys:/sys",
                "-v", f"{cfg}:/etc/plaintap/qtap.yaml:ro", "-v", f"{self.out}:/out", *mounts, *run_args,
                "--entrypoint", "sh", image, "-c", 'exec /opt/plaintap/bin/plaintap "$@" > /out/records.jsonl',
                "plaintap", "--config", "/etc/plaintap/qtap.yaml", "--httpd-listen", f"127.0.0.1:{self.port}",
                "--containerd-socket", "", "--cri-runtime-socket", "", "--docker-socket", ""]
        podman(*args)
        try:
            self._wait_ready()
        except BaseException:
            self.remove()   # never leave an agent container behind
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            state = podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip()
            if state != "true":
                raise AssertionError(f"agent container exited: {self.logs()[1][-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"containerized agent not ready: {self.logs()[1][-3000:]}")

    def logs(self) -> tuple[str, str]:
        r = podman("logs", self.name, check=False)
        return r.stdout, r.stderr

    def stop(self) -> tuple[float, int, list[dict], str]:
        t0 = time.monotonic()
        podman("stop", "-t", "30", self.name, timeout=60)
        took = time.monotonic() - t0
        code = int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())
        _, err = self.logs()
        text = (self.out / "records.jsonl").read_text()
        records = [json.loads(line) for line in text.splitlines() if line.startswith('{"scope"')]
        return took, code, records, err

    def remove(self) -> None:
        podman("rm", "-f", self.name, check=False)


def test_image_is_runtime_only_and_lean(image):
    found = podman("run", "--rm", "--entrypoint", "sh", image, "-c",
                   "for c in gcc cc clang rustc cargo ld as make; do command -v $c; done; "
                   "ls /usr/include 2>/dev/null | head -3").stdout
    assert found.strip() == "", f"build tools in the final image: {found}"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
    assert size <= 210_000_000, f"image is {size / 1e6:.0f} MB (README target 200 MB)"
    assert podman("run", "--rm", image, "--version").stdout.startswith("plaintap ")


def test_containerized_agent_captures_host_and_container_traffic(image, hello_server, tmp_path):
    ensure_curl_image()
    nginx = Nginx(tmp_path / "nginx")
    service = PodmanService(tmp_path)
    agent = ContainerAgent(image, tmp_path, "--privileged",
                           mounts=("-v", f"{service.socket}:/run/podman/podman.sock",))
    client = f"pt-curl-{os.getpid()}"
    try:
        body = os.urandom(70_000)
        (tmp_path / "body.bin").write_bytes(body)
        out = tmp_path / "got.bin"
        subprocess.run(["curl", "-sf", "--http1.1", "-k", "--resolve", f"{SNI}:{nginx.port}:127.0.0.1",
                        "--data-binary", f"@{tmp_path / 'body.bin'}", "-o", str(out),
                        f"https://{SNI}:{nginx.port}/file.bin?image=1"], check=True, timeout=30)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == nginx.file_sha
        r = podman("run", "--network", "host", "--name", client, CURL_IMAGE,
                   "sh", "-c", f"sleep 0.3; curl -sf http://127.0.0.1:{hello_server}/in-container; sleep 0.5")
        assert r.stdout == "hello in-container"
        inspect = podman("inspect", "--format", "{{.Id}} {{.Name}} {{.ImageName}}", client).stdout.split()
        time.sleep(1.0)
        took, code, records, err = agent.stop()
    finally:
        podman("rm", "-f", client, check=False)
        agent.remove()
        service.stop()
        nginx.stop()
    assert code == 0 and took < 30, f"podman stop took {took:.1f}s, exit {code}: {err[-2000:]}"
    assert "dropped=0" in err, err[-2000:]

    # the host curl's TLS exchange, byte-exact, from the objects
    (tx,) = [r["attributes"] for r in records if r["attributes"].get("event.type") == "artifact_record"
             and r["attributes"].get("url.query") == "image=1" and r["attributes"]["process.executable.name"] == "curl"]
    assert "container.id" not in tx
    objs = {r["attributes"]["artifact.type"]: r["attributes"] for r in records
            if r["attributes"].get("transaction.id") == tx["transaction.id"] and "artifact.type" in r["attributes"]}

    def data(a):
        return base64.b64decode(a["artifact.data_b64"]) if "artifact.data_b64" in a else a["artifact.data"].encode()
    req_head, _, req_body = data(objs["http_request"]).partition(b"\r\n\r\n")
    res_head, _, res_body = data(objs["http_response"]).partition(b"\r\n\r\n")
    assert req_head.startswith(b"POST /file.bin?image=1 HTTP/1.1") and req_body == body
    assert res_head.startswith(b"HTTP/1.1 200") and hashlib.sha256(res_body).hexdigest() == nginx.file_sha
    conn = [r["attributes"] for r in records if r["attributes"].get("event.type") == "connection"
            and r["attributes"].get("connection.id") == tx["connection.id"] and r["attributes"]["connection.finalized"]]
    assert conn and conn[0]["tls.inspected"] is True and conn[0]["tls.sni"] == SNI

    # the container's curl, named as podman names it
    named = [r["attributes"] for r in records if r["attributes"].get("url.path") == "/in-container"
             and r["attributes"].get("process.executable.name") == "curl"]
    assert named
    for a in named:
        assert [a.get("container.id"), a.get("container.name"), a.get("container.image.name")] == inspect
        assert a["container.runtime"] == "podman"


def test_least_privilege_capabilities_suffice(image, hello_server, tmp_path):
    agent = ContainerAgent(image, tmp_path, *LEAST_PRIVILEGE)
    try:
        r = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{hello_server}/least-privilege"], capture_output=True,
                           timeout=30)
        assert r.stdout == b"hello least-privilege"
        time.sleep(1.0)
        took, code, records, err = agent.stop()
    finally:
        agent.remove()
    assert code == 0, err[-2000:]
    assert [r for r in records if r["attributes"].get("url.path") == "/least-privilege"
            and r["attributes"].get("event.type") == "artifact_record"], err[-3000:]
