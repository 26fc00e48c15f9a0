"""Real container runtimes for the deployment tests: podman (with this project's
containers.conf), its Docker-compatible API service, a private containerd, and the images
they run (the debian:12-slim base made locally, a curl image built from it, the plaintap
image from scripts/build-image). Images are built once and reused while their inputs
are unchanged (podman's store is the cache)."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import ROOT

CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
BASE_IMAGE = "docker.io/library/debian:12-slim"
CURL_IMAGE = "localhost/plaintap-test-curl:1"
ENV = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def missing_tools(*names: str) -> str | None:
    absent = [n for n in names if shutil.which(n) is None]
    return f"needs {', '.join(absent)} (scripts/bootstrap.sh --test installs them)" if absent else None


def podman(*args: str, timeout: float = 300, check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({r.returncode}): {r.stderr[-3000:]}")
    return r


def ensure_base_image() -> None:
    subprocess.run([str(ROOT / "scripts" / "build-image"), "--base-only"], env=ENV, check=True, timeout=600)


def ensure_curl_image() -> str:
    """A debian:12-slim image with curl (apt inside the build, host network)."""
    ensure_base_image()
    if podman("image", "exists", CURL_IMAGE, check=False).returncode != 0:
        podman("build", "-q", "--pull=never", "--network", "host", "-t", CURL_IMAGE, "-f", "-", ".",
               input=f"FROM {BASE_IMAGE}\nRUN apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                     "curl ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*\n",
               cwd=str(ROOT / "deploy" / "podman"), timeout=600)
    return CURL_IMAGE


def source_digest() -> str:
    """Digest of what goes into the plaintap image: tracked files as they are on disk."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    h = hashlib.sha256()
    for f in sorted(files):
        p = ROOT / f
        if p.is_file() and not f.startswith(("tests/", "bench/")):
            h.update(f.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def ensure_plaintap_image() -> tuple[str, str]:
    """(tag, build-image output) of the plaintap image for the current sources."""
    tag = f"localhost/plaintap:test-{source_digest()}"
    if podman("image", "exists", tag, check=False).returncode == 0:
        size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
        return tag, f"{tag} {size // 1000000} MB (cached)"
    r = subprocess.run([str(ROOT / "scripts" / "build-image"), tag], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, f"scripts/build-image failed: {r.stderr[-4000:]}"
    # images of earlier sources are not needed again: keep the store from growing
    old = podman("images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/plaintap", check=False).stdout.split()
    stale = [t for t in old if t.startswith("localhost/plaintap:test-") and t != tag]
    if stale:
        podman("rmi", "-f", *stale, check=False)
        podman("image", "prune", "-f", check=False)   # their build stages
    return tag, r.stdout.strip()


class PodmanService:
    """`podman system service` on a private unix socket: the Docker Engine API podman serves."""

    def __init__(self, workdir: Path) -> None:
        self.socket = str(workdir / "podman.sock")
        self.proc = subprocess.Popen(["podman", "system", "service", "--time", "0", f"unix://{self.socket}"],
                                     env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_socket(self.socket, self.proc, "podman system service")

    def stop(self) -> None:
        stop_process(self.proc)


class Containerd:
    """Debian's containerd with its own root, state, socket and config (CRI plugin off)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.socket = str(workdir / "c.sock")
        config = workdir / "config.toml"
        config.write_text(f"""version = 2
root = "{workdir}/root"
state = "{workdir}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{workdir}/c.ttrpc.sock"
[debug]
  address = ""
""")
        self.log = open(workdir / "containerd.log", "wb")
        self.proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=self.log, stderr=self.log)
        wait_for_socket(self.socket, self.proc, "containerd")

    def ctr(self, *args: str, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(["ctr", "--address", self.socket, "--namespace", "k8s.io", *args],
                           capture_output=True, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed: {r.stderr[-3000:]!r}")
        return r

    def stop(self) -> None:
        for cid in self.ctr("containers", "list", "-q", check=False).stdout.decode().split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
            self.ctr("tasks", "delete", "-f", cid, check=False)
            self.ctr("containers", "delete", cid, check=False)
        stop_process(self.proc)
        self.log.close()
        # the overlay snapshots may still be mounted: unmount before the tmp dir goes
        subprocess.run(f"grep -o ' {self.dir}/[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                       shell=True, check=False)


def wait_for_socket(path: str, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"{what} exited with {proc.returncode}: {err[-2000:]}")
        if os.path.exists(path):
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(path)
                return
            except OSError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"{what} did not open {path} within {timeout}s")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
