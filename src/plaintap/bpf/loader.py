"""Load, configure and attach the capture BPF object; drain its ring buffer in batches.

`KernelCapture` is the agent's whole view of the kernel side:

    cap = KernelCapture(settings)        # checks privileges, BTF, ABI; nothing loaded yet
    cap.open_and_load()                  # BpfError with one clear line on failure
    cap.attach()                         # every tracepoint program; mounts tracefs if needed
    batch = cap.poll(timeout_ms)         # list[bytes], one per ring-buffer record
    cap.counters()                       # kernel drop counters, summed over CPUs
    cap.close()                          # idempotent: detaches and frees everything

Two ring buffers (maps in bpf/capture.bpf.c, names in abi.DATA_RING / abi.CONTROL_RING):
`events` carries EV_DATA and EV_GAP, `control` every other event (connection open/close,
socket state, exec, exit), so a data flood cannot drop the events that say which
connections and processes exist. `poll` returns ONE list with both, control events
placed among the data by ts_ns (header offset 8) so that a connection's open comes before
its data and its close after it:

    W = now (CLOCK_MONOTONIC); drain `events` and `control`;
    events of either ring with ts < W (and any held from before) are merged by ts;
    events with ts >= W are held back for the next poll.

Why it is exact for the pairs that matter: an event caused by another (data after its
open, a close after its data) takes its timestamp after the cause was committed, so an
event older than W has all its causes committed before W, hence drained now (or
before); one newer than W may not, and waits with its causes. The agent drains the
rings with the native reader (`plaintap._core.Ring` / `DataPlane.drain`, same rule) from
`KernelCapture.ring_maps()`; `poll` (tools and tests) maps them with that same reader on
first use, so libbpf's own ring reader is never set up and the agent maps each ring once.
"""
from __future__ import annotations

import bisect
import ctypes
import errno
import logging
import os
import select
import struct
import subprocess
import time
from dataclasses import dataclass
from importlib import resources

from . import abi, integrity
from .libbpf import BpfError, ObjectOpenOpts, UprobeOpts, lib

log = logging.getLogger("plaintap.bpf")

TRACEFS = "/sys/kernel/tracing"
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # src/plaintap
DEFAULT_BTF = "/sys/kernel/btf/vmlinux"


@dataclass
class KernelSettings:
    """What the kernel programs need to know; compiled from the config by the pipeline."""

    agent_pid: int
    ignore_loopback: bool = True
    direction_mask: int = abi.DIR_EGRESS_EXTERNAL
    capture_data: bool = True
    max_chunks: int = 2048          # per syscall: 2048 × 16 KiB = 32 MiB before a gap
    ring_bytes: int = 64 << 20      # data ring buffer size (power of two, ≥ page size)
    control_ring_bytes: int = 8 << 20   # control ring (open/close/state/exec/exit)
    btf_path: str | None = None     # custom BTF for kernels without /sys/kernel/btf
    budget_rate: int = 32 << 20     # payload bytes/s per process before shedding (0: unlimited)
    budget_burst: int = 0           # token bucket size; 0: 2 s of budget_rate, at most ring_bytes / 4
    max_connections: int = 131072   # size of the kernel's connection table


def object_path(name: str = "capture") -> str:
    """Path of a packaged BPF object; BpfError when the build has not been run."""
    p = resources.files("plaintap.bpf").joinpath(f"obj/{name}.bpf.o")
    if not p.is_file():
        raise BpfError(f"BPF object {name}.bpf.o is not built: run `make -C bpf` (or ./run, which builds it)")
    return str(p)


def _effective_caps() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_privileges() -> None:
    """Raise BpfError unless this process may load and attach tracing BPF programs.

    Root normally has everything; a non-root user, or root with its capabilities
    dropped (containers without --privileged), does not.
    """
    caps = _effective_caps()
    has = lambda bit: bool((caps >> bit) & 1)  # noqa: E731
    cap_sys_admin, cap_perfmon, cap_bpf = 21, 38, 39
    if not (has(cap_sys_admin) or (has(cap_bpf) and has(cap_perfmon))):
        who = "root without capabilities" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        raise BpfError(f"plaintap needs root privileges to load eBPF programs (running as {who}): "
                       "run it as root, e.g. `sudo plaintap`, or with --privileged in a container")


def check_btf(btf_path: str | None) -> None:
    path = btf_path or DEFAULT_BTF
    if not os.path.exists(path):
        if btf_path:
            raise BpfError(f"BTF file {btf_path} does not exist: pass a valid --btf file or omit --btf")
        raise BpfError("this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): use a kernel built "
                       "with CONFIG_DEBUG_INFO_BTF=y, or pass --btf FILE with a BTF file for this kernel")


def ensure_tracefs() -> None:
    """libbpf needs tracefs to resolve tracepoint ids; a fresh machine may not mount it."""
    if os.path.isdir(os.path.join(TRACEFS, "events")):
        return
    r = subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], capture_output=True, text=True)
    if r.returncode != 0 and not os.path.isdir(os.path.join(TRACEFS, "events")):
        raise BpfError(f"cannot mount tracefs on {TRACEFS} ({r.stderr.strip() or 'mount failed'}): "
                       f"mount it with `mount -t tracefs nodev {TRACEFS}`")
    log.info("mounted tracefs on %s", TRACEFS)


# Programs whose tracepoint may be missing on other kernels: left unloaded there (the
# capture they add is then absent, and `plaintap doctor` says so), never fatal.
OPTIONAL_TRACEPOINTS = {"uring_submit": "io_uring/io_uring_submit_req",
                        "uring_complete": "io_uring/io_uring_complete"}
LEARN_SELF = "learn_self"   # attached alone at start-up: finds the agent's own tgid
# uprobe_multi links (kernel >= 6.6): all the offsets of one program in one file are
# attached by one bpf(BPF_LINK_CREATE) call, without the perf-event layer. That layer
# (libbpf 1.1's only way) costs one perf_event_open per probe and takes the kernel's
# global trace event_mutex, which anybody closing a perf uprobe holds through a
# synchronize_rcu_tasks_trace (measured here: 50-100 ms): an attach waited that long
# whenever another tracer (or another agent) detached at the same time.
BPF_PROG_LOAD, BPF_LINK_CREATE = 5, 28
BPF_PROG_TYPE_KPROBE = 2
BPF_TRACE_UPROBE_MULTI = 48
BPF_F_UPROBE_MULTI_RETURN = 1
UPROBE_MULTI_MAX = 1 << 16      # offsets per link (the kernel's MAX_UPROBE_MULTI_CNT is 1M)
_TS = struct.Struct("<Q")


def _ts(raw: bytes) -> int:
    return _TS.unpack_from(raw, 8)[0] if len(raw) >= 16 else 0


def _tiny_program(expected_attach_type: int) -> int:
    """Load `r0 = 0; exit` as a kprobe-type program with that expected attach type;
    its fd, or -1 (errno set)."""
    insns = struct.pack("<BBhiBBhi", 0xB7, 0, 0, 0, 0x95, 0, 0, 0)   # mov64 r0, 0; exit
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_KPROBE, 2, ctypes.addressof(insn_buf), ctypes.addressof(lic))
    struct.pack_into("<I", attr, 68, expected_attach_type)
    return lib.bpf(BPF_PROG_LOAD, attr)


def uprobe_multi_link(prog_fd: int, path: str, offsets: list[int], cookies: list[int], retprobe: bool = False,
                      pid: int = 0) -> int:
    """bpf(BPF_LINK_CREATE) of a uprobe_multi link: `prog_fd` at every offset of the file
    `path` (every process when pid is 0). The link fd, or -1 with errno set."""
    n = len(offsets)
    path_buf = ctypes.create_string_buffer(path.encode())
    offs = (ctypes.c_uint64 * max(1, n))(*offsets)
    cooks = (ctypes.c_uint64 * max(1, n))(*cookies)
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("<IIII", attr, 0, prog_fd, 0, BPF_TRACE_UPROBE_MULTI, 0)
    struct.pack_into("<QQQQIII", attr, 16, ctypes.addressof(path_buf), ctypes.addressof(offs), 0,
                     ctypes.addressof(cooks), n, BPF_F_UPROBE_MULTI_RETURN if retprobe else 0, pid)
    return lib.bpf(BPF_LINK_CREATE, attr)


def uprobe_multi_supported() -> bool:
    """True when this kernel has uprobe_multi links: a program of that attach type
    loads, and a link on a missing file fails on the file (ENOENT), not on the type."""
    fd = _tiny_program(BPF_TRACE_UPROBE_MULTI)
    if fd < 0:
        return False
    try:
        link = uprobe_multi_link(fd, "/nonexistent-plaintap-uprobe-multi-probe", [0], [0])
        err = lib.errno()
        if link >= 0:
            os.close(link)
            return True
        return err == errno.ENOENT
    finally:
        os.close(fd)


class FdLink(int):
    """A link made by bpf(BPF_LINK_CREATE) (an fd), as opposed to a libbpf bpf_link
    pointer: detached by closing it."""


def pid_namespace_identity() -> tuple[int, int, int]:
    """(device, inode) of this process's pid namespace and its pid there."""
    st = os.stat("/proc/self/ns/pid")
    return st.st_dev, st.st_ino, os.getpid()


class KernelCapture:
    def __init__(self, settings: KernelSettings, obj_name: str = "capture") -> None:
        self.settings = settings
        self.obj_name = obj_name
        self._obj = None
        self._links: list[int] = []
        self._rings = None                    # (data, control) native readers, mapped by the first poll
        self._attached = False
        self._held: list[bytes] = []          # events newer than the last watermark
        self._map_fds: dict[str, int] = {}
        self.attached_programs: list[str] = []
        self.skipped_programs: list[str] = []
        self.uprobe_multi = False           # uprobes attached as uprobe_multi links (open_and_load decides)

    # ---- set-up ----

    def preflight(self) -> None:
        """Everything that can be checked before loading: privileges, BTF, ABI, build,
        and that no non-root user can change the code and objects about to be loaded."""
        check_privileges()
        check_btf(self.settings.btf_path)
        abi.check_layout()
        object_path(self.obj_name)
        try:
            integrity.check_package(PACKAGE_DIR)
        except integrity.UnsafeInstall as e:
            raise BpfError(str(e)) from None
        except OSError as e:
            raise BpfError(f"cannot check who may change the agent's code ({e})") from None

    def open_and_load(self) -> None:
        self.preflight()
        path = object_path(self.obj_name)
        opts = ObjectOpenOpts()
        opts.sz = ctypes.sizeof(ObjectOpenOpts)
        if self.settings.btf_path:
            opts.btf_custom_path = self.settings.btf_path.encode()
        obj = lib.bpf_object__open_file(path.encode(), ctypes.byref(opts))
        if not obj:
            raise BpfError(f"cannot open BPF object {path}: {os.strerror(lib.errno())}")
        self._obj = obj
        sizes = ((abi.DATA_RING, _pow2_at_least(max(self.settings.ring_bytes, 1 << 16))),
                 (abi.CONTROL_RING, _pow2_at_least(max(self.settings.control_ring_bytes, 1 << 16))),
                 ("conns", max(1, self.settings.max_connections)),
                 ("socks", max(1, self.settings.max_connections)),
                 ("proc_conns", max(1, self.settings.max_connections)))
        for name, size in sizes:
            m = lib.bpf_object__find_map_by_name(obj, name.encode())
            if not m or lib.bpf_map__set_max_entries(m, size) < 0:
                raise BpfError(f"cannot size the BPF map {name} to {size} entries (rebuild with `make -C bpf`)")
        self._skip_missing_tracepoints()
        self._use_uprobe_multi()
        lib.recent_messages.clear()
        ret = lib.bpf_object__load(obj)
        if ret < 0:
            reason = _verifier_summary(lib.recent_messages)
            raise BpfError(f"the kernel refused plaintap's BPF programs ({os.strerror(-ret)}{reason}): "
                           "run `plaintap doctor` to see what this kernel supports")
        self._write_settings()
        log.debug("BPF object %s loaded", path)

    @property
    def loaded(self) -> bool:
        return bool(self._obj)

    def _map_fd(self, name: str) -> int:
        fd = self._map_fds.get(name)
        if fd is None:
            m = lib.bpf_object__find_map_by_name(self._obj, name.encode())
            if not m:
                raise BpfError(f"BPF map {name} not found in the object (rebuild with `make -C bpf`)")
            fd = lib.bpf_map__fd(m)
            self._map_fds[name] = fd
        return fd

    def _skip_missing_tracepoints(self) -> None:
        """Do not load optional programs whose tracepoint this kernel lacks."""
        try:
            ensure_tracefs()
        except BpfError:
            return   # attach() reports it
        for prog_name, tp in OPTIONAL_TRACEPOINTS.items():
            if os.path.isdir(os.path.join(TRACEFS, "events", tp)):
                continue
            prog = lib.bpf_object__find_program_by_name(self._obj, prog_name.encode())
            if prog:
                lib.bpf_program__set_autoload(prog, False)
                self.skipped_programs.append(prog_name)
                log.info("tracepoint %s is missing on this kernel: %s is not loaded (its requests are not "
                         "counted)", tp, prog_name)

    def _use_uprobe_multi(self) -> None:
        """Load the uprobe programs for uprobe_multi links when the kernel has them
        (see UPROBE_MULTI_MAX's comment); PLAINTAP_UPROBE_MULTI=0 keeps perf-event uprobes."""
        if os.environ.get("PLAINTAP_UPROBE_MULTI", "1") == "0" or not uprobe_multi_supported():
            log.debug("uprobes are attached one perf event per probe (no uprobe_multi links)")
            return
        prog = lib.bpf_object__next_program(self._obj, None)
        while prog:
            sec = lib.bpf_program__section_name(prog).decode()
            if sec.startswith(("uprobe", "uretprobe")):
                if lib.bpf_program__set_expected_attach_type(prog, BPF_TRACE_UPROBE_MULTI) < 0:
                    raise BpfError(f"cannot prepare {sec} programs for uprobe_multi links")
            prog = lib.bpf_object__next_program(self._obj, prog)
        self.uprobe_multi = True
        log.debug("uprobes are attached as uprobe_multi links")

    def _write_settings(self) -> None:
        s = self.settings
        ns_dev, ns_ino, ns_pid = pid_namespace_identity()
        rate = max(0, min(int(s.budget_rate), (1 << 32) - 1))
        # Two seconds of budget, but never more than a quarter of the data ring: one
        # process's burst alone must not be able to fill it.
        burst = int(s.budget_burst) or min(2 * rate, max(self.settings.ring_bytes, 1 << 16) // 4)
        blob = abi.SETTINGS.struct.pack(s.agent_pid, int(s.ignore_loopback), s.direction_mask,
                                        int(s.capture_data), 0, s.max_chunks, rate, burst,
                                        ns_dev, ns_ino, ns_pid, 0)
        key = ctypes.c_uint32(0)
        val = ctypes.create_string_buffer(blob, len(blob))
        if lib.bpf_map_update_elem(self._map_fd("settings_map"), ctypes.byref(key), val, 0) < 0:
            raise BpfError(f"cannot write BPF settings: {os.strerror(lib.errno())}")

    def _read_settings(self) -> dict:
        lay = abi.SETTINGS
        key = ctypes.c_uint32(0)
        buf = ctypes.create_string_buffer(lay.struct.size)
        if lib.bpf_map_lookup_elem(self._map_fd("settings_map"), ctypes.byref(key), buf) < 0:
            raise BpfError(f"cannot read BPF settings: {os.strerror(lib.errno())}")
        return dict(zip((n for n, _ in lay.fields), lay.struct.unpack(buf.raw)))

    def learn_agent_tgid(self) -> int:
        """Find this process's tgid as the kernel sees it (differs from os.getpid() inside
        a PID namespace) with the learn_self program, and exclude it from capture. Falls
        back to os.getpid() with a warning when the kernel cannot tell."""
        self.settings.agent_pid = 0
        self._write_settings()
        prog = lib.bpf_object__find_program_by_name(self._obj, LEARN_SELF.encode())
        link = lib.bpf_program__attach(prog) if prog else None
        learned = 0
        if link:
            try:
                os.getppid()
                learned = self._read_settings()["agent_pid"]
            finally:
                lib.bpf_link__destroy(link)
        if not learned:
            learned = os.getpid()
            log.warning("could not learn the agent's own pid from the kernel; excluding pid %d "
                        "(wrong inside a PID namespace)", learned)
        elif learned != os.getpid():
            log.info("the agent is pid %d in its namespace, tgid %d for the kernel", os.getpid(), learned)
        self.settings.agent_pid = learned
        self._write_settings()
        return learned

    def update_filters(self, ignore_loopback: bool, direction_mask: int) -> None:
        """Apply new tap.ignore_loopback / tap.direction (a reload) to new connections."""
        self.settings.ignore_loopback = ignore_loopback
        self.settings.direction_mask = direction_mask
        self._write_settings()

    def attach(self) -> None:
        """Attach every tracepoint program by its section name; uprobes are attached
        later, per library file, with attach_uprobe."""
        ensure_tracefs()
        self.learn_agent_tgid()
        prog = lib.bpf_object__next_program(self._obj, None)
        while prog:
            name = lib.bpf_program__name(prog).decode()
            sec = lib.bpf_program__section_name(prog).decode()
            if sec.startswith("tracepoint/") and name != LEARN_SELF and name not in self.skipped_programs:
                link = lib.bpf_program__attach(prog)
                if not link:
                    err = lib.errno()
                    sec = lib.bpf_program__section_name(prog).decode()
                    raise BpfError(f"cannot attach {name} ({sec}): {os.strerror(err)}; "
                                   "run `plaintap doctor` to see what this kernel supports")
                self._links.append(link)
                self.attached_programs.append(name)
            prog = lib.bpf_object__next_program(self._obj, prog)
        self._attached = True
        log.info("attached %d BPF programs", len(self._links))

    def ring_fds(self) -> dict[str, int]:
        """Map fds of the two ring buffers, for a reader outside libbpf (see the module doc)."""
        return {abi.DATA_RING: self._map_fd(abi.DATA_RING), abi.CONTROL_RING: self._map_fd(abi.CONTROL_RING)}

    def ring_maps(self) -> list[tuple[str, int, int]]:
        """(name, fd, data size) of the ring buffers, control first: the agent's native reader
        (plaintap._core.Ring / DataPlane.drain) maps and drains them itself, with the
        watermark rule above."""
        out = []
        for name in (abi.CONTROL_RING, abi.DATA_RING):
            m = lib.bpf_object__find_map_by_name(self._obj, name.encode())
            if m:
                out.append((name, lib.bpf_map__fd(m), lib.bpf_map__max_entries(m)))
        if not out:
            raise BpfError("no ring buffer map in the BPF object (rebuild with `make -C bpf`)")
        return out

    def exec_wake_map(self) -> tuple[int, int] | None:
        """(fd, data size) of the exec wake-up ring (abi.EXEC_WAKE_RING), read by the TLS
        thread so a new program is hooked without waiting for the capture loop; None
        with a BPF object built before it existed."""
        m = lib.bpf_object__find_map_by_name(self._obj, abi.EXEC_WAKE_RING.encode()) if self._obj else None
        if not m:
            return None
        return lib.bpf_map__fd(m), lib.bpf_map__max_entries(m)

    def attach_uprobe(self, prog_name: str, binary: str, offset: int, retprobe: bool = False,
                      cookie: int = 0, pid: int = -1, hold_gil: bool = False) -> int:
        """Attach a uprobe program at a file offset of `binary` (all processes mapping
        that file when pid is -1); `cookie` reaches the program via bpf_get_attach_cookie.
        `binary` is /proc/self/fd/N of a file the caller opened (capture/safeopen.py):
        the kernel resolves it to that open file's path and inode, so no name anybody
        else controls is looked up here. `hold_gil`: keep the GIL during the call (the
        probes after a file's first: ~0.1 ms each, where giving the GIL back to a busy
        capture thread costs up to its 5 ms switch interval per call; the first one can
        wait for an RCU grace period in the kernel and releases it). Returns a link
        handle; raises BpfError."""
        prog = lib.gil_held("bpf_object__find_program_by_name")(self._obj, prog_name.encode())
        if not prog:
            raise BpfError(f"BPF program {prog_name} not found")
        opts = UprobeOpts()
        opts.sz = ctypes.sizeof(UprobeOpts)
        opts.retprobe = retprobe
        opts.bpf_cookie = cookie
        if hold_gil:
            attach = lib.gil_held("bpf_program__attach_uprobe_opts")
        else:
            attach = lib.bpf_program__attach_uprobe_opts
        link = attach(prog, pid, binary.encode(), offset, ctypes.byref(opts))
        if not link:
            raise BpfError(f"cannot attach uprobe {prog_name} at {binary}+{offset:#x}: {os.strerror(lib.errno())}")
        self._links.append(link)
        return link

    def attach_uprobes(self, prog_name: str, binary: str, offsets: list[int], cookies: list[int],
                       retprobe: bool = False) -> list[int]:
        """Attach a uprobe program at several offsets of `binary` (see attach_uprobe), as
        ONE uprobe_multi link when the kernel has them, else one perf-event uprobe per
        offset (the first releases the GIL, see attach_uprobe). Returns the links; on
        failure detaches what it attached and raises BpfError."""
        if not offsets:
            return []
        if not self.uprobe_multi:
            links: list[int] = []
            try:
                for i, (off, cookie) in enumerate(zip(offsets, cookies)):
                    links.append(self.attach_uprobe(prog_name, binary, off, retprobe=retprobe, cookie=cookie,
                                                    hold_gil=i > 0))
            except BpfError:
                for link in links:
                    self.detach(link)
                raise
            return links
        if len(offsets) > UPROBE_MULTI_MAX:
            raise BpfError(f"too many probes for one file ({len(offsets)} > {UPROBE_MULTI_MAX})")
        prog = lib.bpf_object__find_program_by_name(self._obj, prog_name.encode())
        if not prog:
            raise BpfError(f"BPF program {prog_name} not found")
        fd = uprobe_multi_link(lib.bpf_program__fd(prog), binary, list(offsets), list(cookies), retprobe)
        if fd < 0:
            raise BpfError(f"cannot attach uprobes {prog_name} at {binary}+"
                           f"{','.join(f'{o:#x}' for o in offsets[:4])}{'…' if len(offsets) > 4 else ''}: "
                           f"{os.strerror(lib.errno())}")
        link = FdLink(fd)
        self._links.append(link)
        return [link]

    def program_fd(self, prog_name: str) -> int:
        """The fd of loaded program `prog_name` (for the native exec lane's attaches)."""
        prog = lib.bpf_object__find_program_by_name(self._obj, prog_name.encode()) if self._obj else None
        if not prog:
            raise BpfError(f"BPF program {prog_name} not found")
        return lib.bpf_program__fd(prog)

    def go_offsets_map_fd(self) -> int:
        """The fd of go_offsets_map (the exec lane writes the slots it was given)."""
        return self._map_fd("go_offsets_map")

    def adopt_links(self, fds: list[int]) -> list[int]:
        """Links made outside this object (the exec lane's uprobe_multi link fds): from now
        on detached, and closed at stop, like its own."""
        links = [FdLink(fd) for fd in fds]
        self._links += links
        return links

    def detach(self, link: int) -> None:
        """Destroy one link attach_uprobe(s) returned (a Go binary no longer in use).
        Closing a uprobe link waits for the kernel's uprobe grace periods (tens of ms)."""
        try:
            self._links.remove(link)
        except ValueError:
            return
        _destroy(link)

    # ---- running ----

    def poll(self, timeout_ms: int = 100) -> list[bytes]:
        """Wait up to timeout_ms for records; return all available ones (maybe []),
        control events merged among the data by timestamp (see the module doc). For tools
        and tests: the agent drains with `DataPlane.drain`. Raises BpfError when a ring
        cannot be mapped."""
        if not self._attached:
            return []
        if self._rings is None:
            from .. import _core   # the native ring reader (maps the ring, no libbpf reader)
            sizes = {name: (fd, size) for name, fd, size in self.ring_maps()}
            try:
                self._rings = tuple(_core.Ring(*sizes[name], name) for name in (abi.DATA_RING, abi.CONTROL_RING))
            except OSError as e:
                raise BpfError(str(e)) from None
        if self._held:
            timeout_ms = min(timeout_ms, 1)
        if all(r.backlog == 0 for r in self._rings):
            try:
                p = select.poll()
                for name in (abi.DATA_RING, abi.CONTROL_RING):
                    p.register(self._map_fd(name), select.POLLIN)
                p.poll(timeout_ms)
            except InterruptedError:
                pass
        watermark = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        data, control = (r.read() for r in self._rings)
        batch = merge_rings(self._held + data, control, watermark, self._held)
        if not batch and self._held:   # only held events: they are older than now
            batch = merge_rings(self._held[:], [], time.clock_gettime_ns(time.CLOCK_MONOTONIC), self._held)
        return batch

    def counters(self) -> dict[str, int]:
        """Kernel-side counters (drops, filters), summed over CPUs."""
        ncpu = lib.libbpf_num_possible_cpus()
        fd = self._map_fd("counters")
        out = {}
        buf = ctypes.create_string_buffer(8 * ncpu)
        for idx, name in abi.KERNEL_COUNTERS.items():
            key = ctypes.c_uint32(idx)
            if lib.bpf_map_lookup_elem(fd, ctypes.byref(key), buf) == 0:
                out[name] = sum(struct.unpack(f"<{ncpu}Q", buf.raw))
        return out

    def set_go_offsets(self, slot: int, conn_iface_data: int, tcpconn_fd: int, netfd_sysfd: int) -> None:
        """Write one entry of go_offsets_map (struct go_offsets in events.h)."""
        key = ctypes.c_uint32(slot)
        val = ctypes.create_string_buffer(struct.pack("<IIII", conn_iface_data, tcpconn_fd, netfd_sysfd, 0), 16)
        if lib.bpf_map_update_elem(self._map_fd("go_offsets_map"), ctypes.byref(key), val, 0) < 0:
            raise BpfError(f"cannot write Go offsets slot {slot}: {os.strerror(lib.errno())}")

    def forget_connection(self, tgid: int, fd: int) -> None:
        """Drop the kernel's entry for a connection whose process exited without close()."""
        key = ctypes.create_string_buffer(abi.CONN_KEY.struct.pack(tgid, fd), 8)
        lib.bpf_map_delete_elem(self._map_fd("conns"), key)

    def set_proc_filter(self, tgid: int, flags: int) -> None:
        """Set (or, with 0, clear) the tap.filters bits (abi.PF_*) of a process."""
        key = ctypes.c_uint32(tgid)
        fd = self._map_fd("proc_filters")
        if not flags:
            lib.bpf_map_delete_elem(fd, ctypes.byref(key))
            return
        val = ctypes.c_uint32(flags)
        if lib.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(val), 0) < 0:
            log.warning("cannot record the filter of pid %d in the kernel (%s); it is applied in user space",
                        tgid, os.strerror(lib.errno()))

    def adopt_connection(self, tgid: int, fd: int, conn_id: int, role: int, direction: int,
                         no_data: bool = False, inode: int = 0) -> bool:
        """Start tracking a connection that was open before the agent. False when the
        kernel already tracks (tgid, fd) — it saw the connect/accept itself — or the
        table is full. `no_data`: count its bytes only (tap.filters). `inode`: the socket's
        (from /proc): data calls count only while the fd still names that socket (0: the
        kernel takes the socket the fd names at its first data call)."""
        key = ctypes.create_string_buffer(abi.CONN_KEY.struct.pack(tgid, fd), abi.CONN_KEY.struct.size)
        val = abi.CONN.struct.pack(conn_id, 0, 0, 0, 0, 0, role, direction, abi.CONN_NO_DATA if no_data else 0, 0,
                                   inode & 0xFFFFFFFF, 0)
        buf = ctypes.create_string_buffer(val, len(val))
        BPF_NOEXIST = 1
        return lib.bpf_map_update_elem(self._map_fd("conns"), key, buf, BPF_NOEXIST) == 0

    def close(self) -> None:
        self._rings = None       # unmapped when the native readers are dropped
        self._attached = False
        for link in self._links:
            _destroy(link)
        self._links = []
        if self._obj:
            lib.bpf_object__close(self._obj)
            self._obj = None
        self._map_fds = {}


def merge_rings(data: list[bytes], control: list[bytes], watermark: int, held: list[bytes]) -> list[bytes]:
    """One batch from the two rings: the events older than `watermark`, in ts_ns order
    (a cause always has a smaller ts than its effect); newer ones of either ring replace
    `held`, which the caller passes back in front of the next data. Pure, so the ordering
    rule is unit-tested without a kernel."""
    if not control and (not data or _ts(max(data, key=_ts)) < watermark):
        held[:] = []
        return data   # the common case under load: data only, all older than the watermark
    keyed = [(_ts(r), r) for r in data]
    keyed += [(_ts(r), r) for r in control]
    keyed.sort(key=lambda p: p[0])   # stable, and near-linear on the rings' near-sorted runs
    cut = bisect.bisect_left(keyed, watermark, key=lambda p: p[0])
    held[:] = [r for _, r in keyed[cut:]]
    return [r for _, r in keyed[:cut]]


def _destroy(link: int) -> None:
    if isinstance(link, FdLink):
        os.close(link)
    else:
        lib.bpf_link__destroy(link)


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


def _verifier_summary(lines: list[str]) -> str:
    """The most telling line of a failed load (the verifier's last complaint)."""
    for line in reversed(lines):
        s = line.strip()
        if s and not s.startswith(("libbpf:", "--", ";", "processed")) and ":" not in s[:6]:
            return f"; verifier: {s[:160]}"
    return ""
