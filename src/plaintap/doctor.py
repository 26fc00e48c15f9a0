"""`plaintap doctor`: what this kernel and machine support, and the fix for each gap.

Each check returns (ok, what, fix). The last check actually loads and attaches the
capture programs (as root), which is the only test that cannot lie.
"""
from __future__ import annotations

import ctypes.util
import os
import platform

from .bpf.libbpf import BpfError
from .bpf.loader import DEFAULT_BTF, TRACEFS, KernelCapture, KernelSettings, ensure_tracefs, object_path


def _kconfig(name: str) -> str | None:
    paths = [f"/boot/config-{platform.release()}", "/proc/config.gz"]
    for p in paths:
        try:
            if p.endswith(".gz"):
                import gzip
                text = gzip.open(p, "rt").read()
            else:
                text = open(p).read()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(name + "="):
                return line.split("=", 1)[1]
            if line == f"# {name} is not set":
                return "n"
    return None


def checks(btf: str | None = None):
    root = os.geteuid() == 0
    yield (root, "running as root", "run `sudo plaintap doctor` (the agent loads eBPF programs)")
    btf_path = btf or DEFAULT_BTF
    yield (os.path.exists(btf_path), f"kernel BTF at {btf_path}",
           "use a kernel with CONFIG_DEBUG_INFO_BTF=y, or pass --btf FILE")
    lib = ctypes.util.find_library("bpf")
    yield (bool(lib), f"libbpf shared library ({lib or 'missing'})", "apt-get install -y libbpf1")
    try:
        object_path()
        built = True
    except BpfError:
        built = False
    yield (built, "BPF objects built", "run `make -C bpf` (./run and ./test do it)")
    tracefs_ok = os.path.isdir(os.path.join(TRACEFS, "events"))
    if not tracefs_ok and root:
        try:
            ensure_tracefs()
            tracefs_ok = True
        except BpfError:
            pass
    yield (tracefs_ok, f"tracefs at {TRACEFS}", f"mount -t tracefs nodev {TRACEFS}")
    yield (os.path.exists(os.path.join(TRACEFS, "events/syscalls")), "syscall tracepoints",
           "use a kernel with CONFIG_FTRACE_SYSCALLS=y")
    yield (os.path.exists(os.path.join(TRACEFS, "uprobe_events")), "uprobes (TLS plaintext)",
           "use a kernel with CONFIG_UPROBE_EVENTS=y; without it only non-TLS traffic is readable")
    kp = _kconfig("CONFIG_KPROBES")
    yield (True, f"kprobes: {'not needed (plaintap uses tracepoints and uprobes only)'}"
           + (f"; this kernel: {'absent' if kp in (None, 'n') else 'present'}" if kp is not None else ""), "")
    if root and built and os.path.exists(btf_path):
        cap = KernelCapture(KernelSettings(agent_pid=os.getpid(), btf_path=btf, ring_bytes=1 << 20))
        try:
            cap.open_and_load()
            cap.attach()
            yield (True, f"capture programs load and attach ({len(cap.attached_programs)} programs)", "")
        except BpfError as e:
            yield (False, "capture programs load and attach", str(e))
        finally:
            cap.close()


def run(btf: str | None = None) -> int:
    print(f"plaintap doctor — kernel {platform.release()} ({platform.machine()})")
    if os.geteuid() != 0:
        # Without root tracefs and BPF are unreadable, so every later check would blame the kernel.
        print("  [FAIL] running as root\n         fix: run `sudo plaintap doctor` (it loads eBPF programs and "
              "reads tracefs, which need root)")
        print("plaintap doctor needs root to check this kernel.")
        return 1
    bad = 0
    for ok, what, fix in checks(btf):
        mark = "ok  " if ok else "FAIL"
        print(f"  [{mark}] {what}")
        if not ok:
            bad += 1
            print(f"         fix: {fix}")
    print("plaintap can run here." if not bad else f"{bad} problem(s): plaintap cannot run here until fixed.")
    return 0 if not bad else 1
