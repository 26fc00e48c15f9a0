"""Issue 9 end to end: untrusted processes must not steer or stop the agent's TLS hooks.

* A library swapped for a symlink to another file the moment the agent opens it (a
  fanotify watch fires on the agent's own open): the hooks land on the file the process
  maps, never on the symlink's target — checked in the kernel's own terms: a process
  mapping the target shows no breakpoint (0xCC) at the hooked offsets.
* Hostile files mapped executable by a process — a 64 GiB sparse .dynsym, a Go Read of
  100k RETs, a DWARF sibling loop, a file truncated the moment the agent opens it, a FIFO
  bind-mounted over a mapped library's name — each cost one counted refusal (named in
  plaintap_tls_refusals_total and the log), while a TLS exchange of another process is
  captured whole and /healthz stays 200.
"""
from __future__ import annotations

import ctypes
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ALL_LOOPBACK, ROOT
from test_tls import check_exchange, run_client
from tlsenv import Nginx, build_go_client

sys.path.insert(0, str(ROOT / "tests" / "unit" / "tls_targets"))
import crafted  # noqa: E402

pytestmark = pytest.mark.kernel

LIBSSL = os.path.realpath("/usr/lib/x86_64-linux-gnu/libssl.so.3")
LIBC = os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")
NODE = os.path.realpath(shutil.which("node") or "/usr/bin/node")
PYTHON = sys.executable

MAPPER = """
import mmap, os, subprocess, sys, time
paths = sys.argv[1:]
fds = [os.open(p, os.O_RDONLY) for p in paths]
print("opened", flush=True)
sys.stdin.readline()
maps = []
for fd in fds:
    size = min(os.fstat(fd).st_size, 32 << 20)
    maps.append(mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_EXEC))
if os.environ.get("BIND_SRC"):     # cover a mapped name with another file at once (own mount namespace)
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    MS_BIND = 4096
    if libc.mount(os.environb[b"BIND_SRC"], os.environb[b"BIND_DST"], None, MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --bind failed")
print("mapped", flush=True)
time.sleep(120)
"""

FAN_CLOEXEC, FAN_CLASS_CONTENT, FAN_MARK_ADD, FAN_OPEN_PERM, FAN_ALLOW = 0x1, 0x4, 0x1, 0x10000, 0x1
AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


class OpenWatch:
    """Run `action()` once, the first time process `pid` opens `path`, BEFORE that open
    returns (a fanotify permission event: the opener waits for our answer, so the action
    lands exactly between the agent's open and its first read, however fast the agent
    is; the event names the opener, so other agents on the machine do not trigger it).
    Every open of the file is allowed."""

    def __init__(self, path: Path, pid: int, action) -> None:
        self.fd = _libc.fanotify_init(FAN_CLOEXEC | FAN_CLASS_CONTENT, os.O_RDONLY | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        rc = _libc.fanotify_mark(self.fd, FAN_MARK_ADD, ctypes.c_uint64(FAN_OPEN_PERM), AT_FDCWD,
                                 str(path).encode())
        assert rc == 0, os.strerror(ctypes.get_errno())
        self.pid, self.action = pid, action
        self.fired = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            if not select.select([self.fd], [], [], 0.1)[0]:
                continue
            try:
                buf = os.read(self.fd, 4096)
            except OSError:
                return
            pos = 0
            while pos + 24 <= len(buf):
                event_len, _vers, _res, _mlen, _mask, fd, pid = struct.unpack_from("<IBBHQii", buf, pos)
                try:
                    if pid == self.pid and not self.fired.is_set():
                        self.action()
                        self.fired.set()
                finally:
                    if fd >= 0:
                        os.write(self.fd, struct.pack("<iI", fd, FAN_ALLOW))
                        os.close(fd)
                pos += event_len

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        os.close(self.fd)


def start_mapper(paths, wrap=(), env=None) -> subprocess.Popen:
    p = subprocess.Popen([*wrap, PYTHON, "-c", MAPPER, *map(str, paths)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    assert p.stdout.readline().strip() == "opened"
    return p


def tell(p: subprocess.Popen, line: str, expect: str) -> None:
    p.stdin.write(line + "\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == expect


def stop(*procs) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)


def memory_at(pid: int, path: str, offsets) -> bytes:
    """The bytes process `pid` sees at file `offsets` of its mapping of `path` (from
    file offset 0): 0xCC where a uprobe's breakpoint sits."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].removesuffix(" (deleted)") == path and int(parts[2], 16) == 0:
            start = int(parts[0].split("-")[0], 16)
            with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
                out = b""
                for off in offsets:
                    mem.seek(start + off)
                    out += mem.read(1)
                return out
    raise AssertionError(f"{path} not mapped from offset 0 in {pid}")


def hooked_offsets(path: str) -> list[int]:
    """File offsets the agent hooks in an OpenSSL library or Node (analysed here, in
    this process): libssl's internal read/write when found, else the exported calls."""
    from plaintap.capture.tls_attach import OPENSSL_HOOKS, OPENSSL_INTERNAL_HOOKS
    from plaintap.capture.tls_targets import analyze_in_process
    fd = os.open(path, os.O_RDONLY)
    try:
        syms = analyze_in_process(fd, path)["openssl"]["symbols"]
    finally:
        os.close(fd)
    hooks = OPENSSL_INTERNAL_HOOKS if all(h[0] in syms for h in OPENSSL_INTERNAL_HOOKS) else OPENSSL_HOOKS
    return [syms[h[0]] for h in hooks if h[0] in syms]


def refusals(agent) -> dict[str, float]:
    out = {}
    for line in agent.metrics().splitlines():
        m = re.match(r'plaintap_tls_refusals_total\{reason="([a-z_]+)"\} ([0-9.e+]+)', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def healthz(agent) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.status_port}/healthz", timeout=5) as r:
        return r.status


def test_library_swapped_for_a_symlink_when_opened_never_hooks_the_target(start_agent, tmp_path):
    # A copy of node: an OpenSSL the agent hooks, big enough that analysing it takes a
    # while — the window in which a name-based attach used to follow the swapped name.
    lib = tmp_path / "app" / "libnode.so"
    lib.parent.mkdir()
    shutil.copy(NODE, lib)
    # Stands for a host library (sudo's libc…): any file long enough for those offsets.
    target = tmp_path / "host" / "libtarget.so"
    target.parent.mkdir()
    shutil.copy(LIBC, target)
    os.truncate(target, 64 << 20)
    offsets = hooked_offsets(str(lib))
    assert offsets and max(offsets) < 32 << 20
    with open(target, "rb") as f:
        original = b"".join(os.pread(f.fileno(), 1, o) for o in offsets)
    assert 0xCC not in original
    agent = start_agent(ALL_LOOPBACK)
    mapper = checker = watch = None

    def swap():
        link = lib.with_name("swap")
        link.symlink_to(target)
        os.replace(link, lib)

    try:
        mapper = start_mapper([lib])
        watch = OpenWatch(lib, agent.pid, swap)
        tell(mapper, "go", "mapped")
        assert watch.fired.wait(40), "the agent never opened the mapped library"
        assert lib.is_symlink()
        deadline = time.monotonic() + 60
        while f"{lib} (" not in agent.stderr() and time.monotonic() < deadline:
            time.sleep(0.1)         # the agent says what it did with the file
        # Never on the file the name now leads to…
        checker = start_mapper([target])
        tell(checker, "go", "mapped")
        seen = memory_at(checker.pid, str(target), offsets)
        stop(checker)
        if seen != original:
            # A breakpoint on the target: ours only if it goes away with our agent (an older
            # agent of another test run on this machine may have been steered too).
            agent.stop()
            checker = start_mapper([target])
            tell(checker, "go", "mapped")
            assert memory_at(checker.pid, str(target), offsets) != original, \
                "plaintap planted uprobes in the symlink's target"
        # …but on the file the process maps (the agent's descriptor).
        assert memory_at(mapper.pid, str(lib), offsets) == b"\xcc" * len(offsets), "the mapped library was not hooked"
    finally:
        if watch:
            watch.close()
        stop(mapper, checker)
    agent.stop()
    assert any(line for line in agent.stderr().splitlines() if "TLS hooks attached" in line and f" {lib} (" in line)


@pytest.fixture(scope="module")
def go_with_symbols(tmp_path_factory):
    return build_go_client(tmp_path_factory.mktemp("go-hostile"))


def test_hostile_files_are_counted_refusals_and_capture_goes_on(start_agent, tmp_path, go_with_symbols):
    d = tmp_path / "hostile"
    d.mkdir()
    files = {
        "sparse_dynsym": crafted.sparse_dynsym(LIBSSL, d / "libsparse.so"),
        "ret_flood": crafted.go_ret_flood(go_with_symbols, d / "go-rets"),
        "dwarf_loop": crafted.go_dwarf_loop(go_with_symbols, d / "go-dwarf", unknown_version=True),
        "truncated": d / "node-copy",
    }
    shutil.copy(NODE, files["truncated"])
    # the FIFO case runs in its own mount namespace: a FIFO bind-mounted over a mapped name
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    fifo_lib = fifo_dir / "libplain.so"
    shutil.copy("/bin/true", fifo_lib)
    os.mkfifo(fifo_dir / "fifo")
    nginx = Nginx(tmp_path / "nginx")
    agent = start_agent(ALL_LOOPBACK)
    mapper = fifo_mapper = watch = None
    try:
        mapper = start_mapper(files.values())
        watch = OpenWatch(files["truncated"], agent.pid, lambda: os.truncate(files["truncated"], 4096))
        fifo_mapper = start_mapper([fifo_lib], wrap=["unshare", "--mount", "--propagation", "private"],
                                   env={"BIND_SRC": str(fifo_dir / "fifo"), "BIND_DST": str(fifo_lib)})
        tell(fifo_mapper, "go", "mapped")
        tell(mapper, "go", "mapped")
        want = {"sparse_dynsym": "too_large", "ret_flood": "function_too_long", "dwarf_loop": "malformed",
                "truncated": ("truncated", "malformed")}
        logged: dict[str, str] = {}
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and (len(logged) < len(want) or "not_regular_file" not in refusals(agent)):
            for name, path in files.items():
                m = re.search(re.escape(f"TLS hooks refused for {path} (pid {mapper.pid}): ") + r"([a-z_]+)",
                              agent.stderr())
                if m:
                    logged[name] = m.group(1)
            time.sleep(0.2)
            assert healthz(agent) == 200
        for name, reason in want.items():
            assert logged.get(name) in ((reason,) if isinstance(reason, str) else reason), \
                (name, logged, [line for line in agent.stderr().splitlines() if str(files[name]) in line])
        counted = refusals(agent)
        for reason in ("too_large", "function_too_long", "malformed", "not_regular_file"):
            assert counted.get(reason, 0) >= 1, counted
        assert watch.fired.is_set()
        # Another process's TLS exchange is captured whole meanwhile.
        pid, token, body = run_client("curl", nginx, tmp_path)
        assert healthz(agent) == 200 and agent.proc.poll() is None
        agent.stop()
        assert agent.proc.returncode == 0
        check_exchange(agent, nginx, pid, token, body, os.path.realpath(shutil.which("curl")))
    finally:
        if watch:
            watch.close()
        stop(mapper, fifo_mapper)
        nginx.stop()
    err = agent.stderr()
    assert "TLS hooks attached" not in "".join(line for line in err.splitlines() if str(d) in line), \
        "a hostile file was hooked"
