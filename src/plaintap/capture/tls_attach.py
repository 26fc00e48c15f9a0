"""Attach TLS uprobes to every TLS library and Go binary that processes use.

Targets come from the files processes map (tls_targets); this module decides when to
look, gets each file analysed, and attaches each file once, by (device, inode): a uprobe
on a file covers every process that maps it, now and later — also a process that has
not reached the hooked code yet, so a hook attached between exec and the program's first
TLS call sees that call. Looking happens
  * at start-up: all processes, plus the system's own libssl and the `node` on PATH (so
    a client that starts later and uses them is covered before its first byte);
  * at each exec, on the TLS thread (below), at once: the executable (Go binaries, Node)
    and — the first time a (mount namespace, root directory) is seen (a new container) —
    the TLS libraries
    the loader would find in that root's library directories (LOADER_DIRS, resolved
    inside /proc/<pid>/root like every other name), before the loader has mapped them;
    then again at +5, +15, +50, +150, +400 ms, +1 s and +2 s (the first scan usually runs
    before the loader has mapped the program's libraries; then dlopen);
  * at start-up and every 30 s: the TLS libraries of the container image layers on the
    host (survey_layers): a container maps its layer's file through its overlay, so a
    container of an image already there is covered from its first byte;
  * every 30 s over all processes (containers with their own copies).

All of it runs on one thread of its own ("tls-attach", started by `start`): the capture
loop hands exec events over (`on_exec`: a queue and an eventfd; it runs an exec's first
scan itself when the TLS thread is idle, which saves a GIL switch; its drain looks ahead
in the control ring, so an exec is handed over before the older records are handled),
so an exec is looked at within a millisecond whatever the data plane is doing, and an
analysis reply is attached the moment it arrives (the thread waits on the workers'
sockets, natively: from its wake-up until it waits again the drain yields the GIL to it,
see native/src/gilshare.rs). A file
whose content was analysed before — a copy, a container's libssl equal to the host's,
the same program after a restart — is hooked without analysis (tls_cache: build ID plus
the bytes at every hooked offset; saved across restarts). A file's probes are one
uprobe_multi link per program where the kernel has them, and while programs start the
kernel's uprobe registration is kept warm (native UprobeWarmer, see WARM_AFTER_EXEC_MS),
so attaching waits for no RCU grace period. The traced program is never
stopped or slowed: the race is only between our attach and its first TLS call, and
bench/bench_exec_attach.py measures it.

Go programs and copies of known libssl builds skip that race through the native exec lane
(native/src/exec_lane.rs, started here on uprobe_multi kernels): a thread of its own reads
the kernel's exec wake-up ring and hooks, at the exec, a copy of content with a *plan*
(registered here for each Go or libssl result in the content cache, a Go plan with a Go
slot of its own: `_plan`), a never-seen Go binary it can analyse itself (goelf.rs, with
spare slots handed over by `_top_up_lane_slots`), and the planned libssl copies the
program will load (its DT_NEEDED, resolved in its root: needed.rs). The lane
and `_apply` both claim a file's (dev, inode) before attaching, so one file is never hooked
twice; the TLS thread adopts the lane's hooks (`_take_lane`, `_adopt`). Without the lane,
the TLS thread reads the wake-up ring itself (`_take_exec_wakes`).

Untrusted processes name these files, so (issue 9):
  * each file is opened once (safeopen: in the process's root, no symlinks, a regular
    file with the inode maps shows) and that descriptor is analysed and attached
    through (/proc/self/fd/N): a name swapped meanwhile changes nothing;
  * analysis runs in a sandboxed worker process (analysis.py), asynchronously: the
    capture loop never waits for it, and hooks are attached when the result arrives;
    results are cached by (dev, ino, size, mtime), and so are refusals;
  * new files are analysed within a budget per file owner (uid), exec scans are bounded
    in number and time per loop turn, and every refusal is counted by reason in
    plaintap_tls_refusals_total;
  * Go hook slots (256, one per binary, in the kernel's go_offsets map) are recycled
    when a binary is no longer mapped by any process and is deleted, or slots run low.
"""
from __future__ import annotations

import fcntl
import glob
import json
import logging
import math
import os
import re
import shutil
import stat
import struct
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from .. import metrics
from .._core import gil_urgent as _gil_urgent
from .._core import gil_wait_stats as _gil_wait_stats
from .._core import wait_readable as _wait_readable
from ..bpf.abi import EV_PROC_EXEC
from ..bpf.libbpf import BpfError
from . import gotls
from .analysis import AnalysisService
from .safeopen import OpenRefused, open_host_file, open_path_in_root, reopen_for_reading
from .tls_cache import ContentCache, content_key, result_offsets
from .tls_targets import (
    FAMILIES, AnalysisError, GoTlsTarget, MappedFile, OpenedFile, OpenSSLTarget, TlsTarget, _all_pids, _is_node,
    _layer_identity,
    exe_inode, open_mapped, parse_maps, read_maps, read_overlay_mounts, target_from_result, validate_result,
)

log = logging.getLogger("plaintap.tls")

MS = 1_000_000
# The first scan runs ~0.2-1 ms after the exec, usually before the loader has mapped the
# program's libraries: hence the early rescans.
EXEC_RESCANS_NS = (0, 5 * MS, 15 * MS, 50 * MS, 150 * MS, 400 * MS, 1000 * MS, 2000 * MS)
FULL_RESCAN_NS = 30_000 * MS
SYSTEM_LIBSSL_GLOBS = ("/usr/lib/*/libssl.so.*", "/lib/*/libssl.so.*", "/usr/lib/libssl.so.*",
                       "/usr/lib64/libssl.so.*", "/usr/local/lib*/libssl.so.*")
# Exec storms: at most this many processes waiting for a scan, and this much scanning
# per loop turn (the rest waits for the next turn).
MAX_DUE_PIDS = 4096
SCANS_PER_TICK = 64
SCAN_BUDGET_NS = 15 * MS
# New files analysed per owner uid: a burst, then a steady rate. Root's own files
# (system libraries, packaged binaries) get more.
UID_BURST, UID_PER_S = 16, 0.5
ROOT_BURST, ROOT_PER_S = 256, 20.0
GO_SLOTS = 256
START_WAIT_S = 20.0
KNOWN_CAPACITY = 65536
FAILED_CAPACITY = 8192
# Where a new root's TLS libraries are looked for at its first exec: the loader's
# default directories (glibc's multiarch and lib64 layouts, musl's). Names only match
# TLS_LIBRARY_NAME; at most MAX_DIR_ENTRIES entries per directory are looked at, and at
# most MAX_ROOT_LIBS files per root are opened. A root is surveyed again after ROOT_TTL_NS.
LOADER_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
               "/lib/aarch64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib", "/usr/local/lib",
               "/usr/local/lib64")
TLS_LIBRARY_NAME = re.compile(r"^libssl\.so(\.[0-9]+)*[a-z]?$")
MAX_DIR_ENTRIES = 8192
MAX_ROOT_LIBS = 8
MAX_ROOTS = 4096
ROOT_TTL_NS = 30_000 * MS
EXEC_TS_CAPACITY = 8192
# Container image layer stores (overlay layers: store/<layer>/<sub> is a layer's root):
# containers/storage (podman, CRI-O), Docker's overlay2, containerd's overlayfs
# snapshotter. Their TLS libraries are hooked at start-up and each full rescan
# (survey_layers), at most MAX_LAYERS layers and MAX_LAYER_LIBS files each time.
LAYER_STORES = (("/var/lib/containers/storage/overlay", "diff"), ("/var/lib/docker/overlay2", "diff"),
                ("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots", "fs"))
MAX_LAYERS = 4096
MAX_LAYER_LIBS = 64
# Uprobe registration is kept warm (native UprobeWarmer: no RCU grace-period wait before
# a new file's hooks) for this long after the agent starts and after each exec, touching
# the kernel's registration path every WARM_PERIOD_US. Costs ~4% of one CPU while warm.
WARM_AFTER_EXEC_MS = 30_000
WARM_PERIOD_US = 2000
# Exec first scans done on the capture thread itself (see on_exec): at most this many per
# second after a burst; the rest go to the TLS thread.
INLINE_SCANS_PER_S, INLINE_SCANS_BURST = 50, 10
INLINE_WAIT_S = 0.003      # for the TLS thread to finish its step (a rescan, an attach)
MAX_SAME_CONTENT_WAITERS = 64
# The native exec lane (native/src/exec_lane.rs) hooks copies of known Go binaries at their
# exec, and copies of known libssl builds a new program will load (its DT_NEEDED, resolved
# in its root) before the loader maps them: plans for at most LANE_PLANS contents (each Go
# plan holds a Go slot), the most recently used.
# PLAINTAP_EXEC_LANE=0 turns it off (every exec then goes the Python way).
LANE_PLANS = 32
# Go slots kept with the lane for never-seen Go binaries it analyses itself (goelf.rs).
LANE_SPARE_SLOTS = 4
EXEC_LANE = os.environ.get("PLAINTAP_EXEC_LANE", "1") != "0"
# Exec wake-up ring records (ev_header: type, pid, ts) taken per TLS thread turn.
EXEC_WAKE = struct.Struct("<IIQ")
EXEC_WAKE_BATCH = 1024
# The drain yields the GIL to this thread while it works (PLAINTAP_GIL_SHARE=0: not, for
# measurements).
GIL_SHARE = os.environ.get("PLAINTAP_GIL_SHARE", "1") != "0"
# Refusals that say nothing about the file itself: not remembered, tried again later.
TRANSIENT = frozenset({"rate_limited", "queue_full", "worker_unavailable", "gone", "open_failed"})

# (symbol, entry program, cookie): cookie bit 0 marks the _ex variants.
OPENSSL_HOOKS = (("SSL_write", "ssl_write_enter", 0), ("SSL_write_ex", "ssl_write_enter", 1),
                 ("SSL_read", "ssl_read_enter", 0), ("SSL_read_ex", "ssl_read_enter", 1))
# When the library's internal read/write functions are found (tls_targets.find_internal_rw)
# they replace the four exports: every SSL_read/_ex and SSL_write/_ex call goes through
# them, and so does OpenSSL's SSL BIO, which no export sees. They take the _ex arguments.
OPENSSL_INTERNAL_HOOKS = (("ssl_write_internal", "ssl_write_enter", 1), ("ssl_read_internal", "ssl_read_enter", 1))


class UidBudget:
    """Token buckets per uid: how many new files each owner may have analysed."""

    def __init__(self, burst: float = UID_BURST, per_s: float = UID_PER_S,
                 root_burst: float = ROOT_BURST, root_per_s: float = ROOT_PER_S) -> None:
        self.params = {True: (root_burst, root_per_s), False: (burst, per_s)}
        self._buckets: OrderedDict[int, tuple[float, float]] = OrderedDict()

    def take(self, uid: int, now_s: float) -> bool:
        burst, rate = self.params[uid == 0]
        tokens, last = self._buckets.pop(uid, (burst, now_s))
        tokens = min(burst, tokens + (now_s - last) * rate)
        ok = tokens >= 1
        self._buckets[uid] = (tokens - 1 if ok else tokens, now_s)
        while len(self._buckets) > 65536:
            self._buckets.popitem(last=False)
        return ok


@dataclass
class _Hooked:
    target: TlsTarget
    links: list = field(default_factory=list)
    slot: int = -1          # Go offsets slot (owned)
    plan_slot: int = -1     # Go offsets slot of the exec lane's plan it was hooked by (not owned)
    fd: int = -1            # Go: kept open to notice the file's deletion (st_nlink 0)
    lane: bool = False      # hooked by the exec lane (counted under its live-hook bound)


def refuse(reason: str, what: str, detail: str = "") -> None:
    """Count (and log) one refusal."""
    metrics.tls_refusals.labels(reason).inc()
    if reason in ("rate_limited", "queue_full"):
        log.debug("TLS target %s not analysed now (%s)", what, reason)
    else:
        log.warning("TLS hooks refused for %s: %s%s", what, reason, f" ({detail})" if detail else "")


def system_tls_paths(families: frozenset) -> list[str]:
    """The system's libssl files and the node on PATH (canonical paths)."""
    paths = []
    if "openssl" in families:
        for pattern in SYSTEM_LIBSSL_GLOBS:
            paths += sorted(glob.glob(pattern))
    node = shutil.which("node") or shutil.which("nodejs")
    if node and "nodetls" in families:
        paths.append(node)
    return list(dict.fromkeys(os.path.realpath(p) for p in paths))


def _tls_libraries_in(root: str, limit: int):
    """(path, read-only fd, stat) of the TLS libraries (TLS_LIBRARY_NAME) in the loader
    directories (LOADER_DIRS) inside directory `root`, every name resolved inside it
    with no symlink followed; at most `limit` files. The caller owns each fd."""
    opened_n = 0
    for directory in LOADER_DIRS:
        if opened_n >= limit:
            return
        try:
            pfd = open_path_in_root(root, directory)
        except OpenRefused:
            continue          # absent, or a symlink (merged /usr: found under /usr/lib)
        try:
            if not stat.S_ISDIR(os.fstat(pfd).st_mode):
                continue
            dfd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        finally:
            os.close(pfd)
        names = []
        try:
            with os.scandir(dfd) as it:
                for i, entry in enumerate(it):
                    if i >= MAX_DIR_ENTRIES:
                        break
                    if TLS_LIBRARY_NAME.match(entry.name):
                        names.append(entry.name)
        except OSError:
            pass
        finally:
            os.close(dfd)
        for name in sorted(names)[: limit - opened_n]:
            path = f"{directory}/{name}"
            try:
                pfd = open_path_in_root(root, path)
            except OpenRefused:
                continue      # libssl.so -> libssl.so.3: the real file is listed too
            try:
                st0 = os.fstat(pfd)
                fd, st = reopen_for_reading(pfd, path, st0.st_dev, st0.st_ino)
            except (OpenRefused, OSError):
                continue
            finally:
                os.close(pfd)
            opened_n += 1
            yield path, fd, st


class TlsAttacher:
    def __init__(self, kernel, families: tuple[str, ...] | frozenset, analysis: AnalysisService | None = None,
                 budget_clock: Callable[[], int] = time.monotonic_ns, cache_path: str | None = None,
                 layer_stores: tuple[tuple[str, str], ...] = ()) -> None:
        """`layer_stores`: container image layer stores to survey (LAYER_STORES in the agent)."""
        self.kernel = kernel
        self.layer_stores = layer_stores
        self.content = ContentCache(cache_path)
        self._lock = threading.Lock()              # guards _due, _fresh, _exec_ts (on_exec's caller)
        self._fresh: set[int] = set()              # pids whose first scan (with the root survey) is due
        self._exec_ts: OrderedDict[int, int] = OrderedDict()   # pid -> its exec's kernel timestamp
        # where exec -> hooked goes, for the attach log line: pid -> ms from exec to its
        # first scan; file identity -> ms its analysis took (absent: cache hit)
        self._scan_delay: dict[int, float] = {}
        self._analysis_ms: dict[tuple, float] = {}
        self._roots: OrderedDict[tuple, int] = OrderedDict()  # (mount ns, root dir) surveyed -> when
        self._layers_seen: OrderedDict[tuple, bool] = OrderedDict()   # image layer dirs looked at
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread: threading.Thread | None = None
        # content key being analysed -> files with the same key waiting for its result
        self._same_content: dict[str, list] = {}
        self._thread_stop = False
        self.families = frozenset(families) & FAMILIES
        self.analysis = analysis or AnalysisService()
        self.budget_clock = budget_clock
        self.attached: dict[tuple[int, int], _Hooked] = {}
        self._results: OrderedDict[tuple, dict] = OrderedDict()      # (dev, ino, size, mtime) -> result
        self._failed: OrderedDict[tuple, str] = OrderedDict()        # same key -> refusal reason
        self._inflight: set[tuple[int, int]] = set()                 # identities being analysed
        # maps (dev, ino) already dealt with -> identity (None: no target), so rescans
        # cost nothing per known file
        self._known: OrderedDict[tuple[int, int], tuple[int, int] | None] = OrderedDict()
        self._known_st: dict[tuple[int, int], tuple[int, int, int]] = {}   # mkey -> _file_version
        self._budget = UidBudget()
        self._due: dict[int, list[int]] = {}       # pid -> due times (ns) of its rescans
        self._cycle: list[int] = []                # pids left in the current full rescan
        self._cycle_start_ns = 0
        self._last_seen: dict[tuple[int, int], int] = {}    # hooked identity -> last time a scan saw it
        self._free_slots = list(range(GO_SLOTS - 1, -1, -1))
        self.next_full_ns = 0
        self._now_ns = 0
        self._closing = False
        self._warmer = None
        self._warmed_ns = 0
        # Held by whoever runs discovery: the TLS thread (tick), or the capture thread for
        # an exec's first scan when the TLS thread is idle (see on_exec).
        self._work = threading.Lock()
        self._inline = (float(INLINE_SCANS_BURST), 0)   # token bucket (tokens, last ns) of those
        self._lane = None                                # native exec lane (see LANE_PLANS)
        self._plans: OrderedDict[str, tuple[int, dict]] = OrderedDict()   # content key -> (slot, result)
        self._orphan_slots: set[int] = set()           # evicted plans' slots still used by hooks

    # ---- lifecycle ----

    def start(self, now_ns: int, idle: Callable[[], None] | None = None) -> None:
        """Hook the system's libssl, node, and every running process's TLS files. Waits
        (bounded) for their analyses so what runs now is covered before ready, calling
        `idle()` meanwhile (see AnalysisService.wait_idle)."""
        self._now_ns = now_ns
        if not self.families:
            return
        kept = self.content.load(validate_result)
        if kept:
            log.info("TLS analysis cache: %d files known from earlier runs (%s)", kept, self.content.path)
        self._start_lane()
        for path in system_tls_paths(self.families):
            try:
                fd, st = open_host_file(path)
            except OpenRefused as e:
                log.debug("not hooking %s: %s", path, e)
                continue
            mf = MappedFile(path, False, st.st_dev, st.st_ino, 0, 0)
            self._consider_opened(0, mf, OpenedFile(fd, st, (st.st_dev, st.st_ino), path), None)
        for pid in _all_pids():
            if pid != os.getpid():
                self.scan(pid)
        self.survey_layers()
        self.analysis.wait_idle(START_WAIT_S, idle)
        self.next_full_ns = now_ns + FULL_RESCAN_NS
        self.content.save(force=True)
        self._start_warmer()
        self._thread = threading.Thread(target=self._run, name="tls-attach", daemon=True)
        self._thread.start()

    def _start_warmer(self) -> None:
        """Keep uprobe registration warm while programs start (see WARM_AFTER_EXEC_MS);
        only where hooks are uprobe_multi links (the warmer touches the kernel that way)."""
        if not getattr(self.kernel, "uprobe_multi", False) or os.environ.get("PLAINTAP_UPROBE_WARM", "1") == "0":
            return
        try:
            from .. import _core
            self._warmer = _core.UprobeWarmer(WARM_PERIOD_US)
        except (ImportError, AttributeError, OSError) as e:
            log.info("uprobe registration is not kept warm (%s): a new file's first hooks may wait for a kernel "
                     "grace period", e)
            return
        self._warm(time.monotonic_ns())

    def _warm(self, now_ns: int) -> None:
        if self._warmer is not None and now_ns - self._warmed_ns > 1_000 * MS:
            self._warmed_ns = now_ns
            self._warmer.warm_for(WARM_AFTER_EXEC_MS)

    # ---- the exec lane ----

    def _start_lane(self) -> None:
        """Start the native exec lane (uprobe_multi kernels) and give it plans for the Go
        binaries and libssl builds the analysis cache knows, most recently used first."""
        wake_map = getattr(self.kernel, "exec_wake_map", None)
        if (not EXEC_LANE or not {"gotls", "openssl"} & self.families or wake_map is None
                or not getattr(self.kernel, "uprobe_multi", False)):
            return
        found = wake_map()
        if found is None:
            return
        try:
            if "gotls" not in self.families:
                raise BpfError("Go TLS probes are off")
            go = (self.kernel.go_offsets_map_fd(),
                  tuple(self.kernel.program_fd(p) for p in ("go_write_enter", "go_read_enter", "go_read_return")),
                  _lane_layouts())
        except (AttributeError, BpfError) as e:
            log.debug("exec lane: no Go analysis of its own (%s)", e)
            go = None
        try:
            if "openssl" not in self.families:
                raise BpfError("OpenSSL probes are off")
            openssl = tuple(self.kernel.program_fd(p) for p in ("ssl_write_enter", "ssl_read_enter", "ssl_exit_probe"))
        except (AttributeError, BpfError) as e:
            log.debug("exec lane: no libssl analysis of its own (%s)", e)
            openssl = None
        try:
            from .._core import ExecLane
            self._lane = ExecLane(found[0], found[1], self._wake, go, openssl)
        except (ImportError, OSError) as e:
            log.warning("exec lane unavailable (%s): copies of known Go programs and libssl builds are hooked by "
                        "the scan", e)
            return
        self._top_up_lane_slots()
        for key, _sites, result in self.content.recent(LANE_PLANS * 4):
            if len(self._plans) >= LANE_PLANS:
                break
            self._plan(key, result)

    def _plan(self, ckey: str | None, result: dict) -> None:
        """Give the exec lane a plan for content `ckey` (analysis `result`, in the content
        cache): the links _attach_go or _attach_openssl would make. A Go plan holds a Go
        slot of its own; a libssl plan makes the lane look for that library among what each
        new program will load (DT_NEEDED) and hook it before the loader maps it."""
        if self._lane is None or ckey is None:
            return
        if ckey in self._plans:
            self._plans.move_to_end(ckey)
            return
        entry = self.content.entry(ckey)
        t = target_from_result(result, self.families, path="", ident=(0, 0), pid_seen=0, maps_path="")
        go = isinstance(t, GoTlsTarget)
        if entry is None or t is None or (go and _go_unusable(t) is not None) \
                or (isinstance(t, OpenSSLTarget) and t.family != "openssl"):
            return
        while len(self._plans) >= LANE_PLANS or (go and not self._free_slots and self._plans):
            self._drop_plan(next(iter(self._plans)))
        if go and not self._free_slots:
            return
        slot = self._free_slots.pop() if go else -1
        try:
            if go:
                fo = t.fd_offsets
                self.kernel.set_go_offsets(slot, fo["conn_data"], fo["fd_ptr"], fo["sysfd"])
                links = [(self.kernel.program_fd(prog), offs, cookies, False) for prog, offs, cookies in _go_links(t, slot)]
            else:
                links = [(self.kernel.program_fd(prog), offs, cookies, ret) for prog, offs, cookies, ret in _openssl_links(t)]
            self._lane.add_plan(ckey, entry[0], json.dumps(result.get("exec_ranges"), separators=(",", ":")).encode(),
                                result_offsets(result), links, library=not go)
        except (BpfError, ValueError, KeyError) as e:
            log.debug("no exec-lane plan for %s: %s", ckey, e)
            if go:
                self._free_slots.append(slot)
            return
        self._plans[ckey] = (slot, result)
        self._update_gauges()

    def cgroup_at_exec(self, pid: int) -> str | None:
        """`pid`'s /proc/<pid>/cgroup as the exec lane read it at its latest exec (taken:
        asked once), or None: for a program that was gone before the agent read /proc (a
        container's first program can be). Any thread may ask."""
        lane = self._lane
        take = getattr(lane, "cgroup_at_exec", None)
        return take(pid) if take is not None else None

    def _drop_plan(self, ckey: str) -> None:
        slot, _ = self._plans.pop(ckey)
        self._lane.remove_plan(ckey)
        if slot < 0:
            return                            # a library's plan: no slot
        if any(h.plan_slot == slot for h in self.attached.values()):
            self._orphan_slots.add(slot)      # freed when its last hook goes (_detach)
        else:
            self._free_slots.append(slot)

    def _take_lane(self) -> None:
        """Execs from the exec lane: note each (its scans), adopt the hooks it made."""
        now = None
        for pid, ts, hooked, note, library in self._lane.take():
            if library is None and self._note_exec(pid, ts):
                now = now or time.monotonic_ns()
            if note:
                log.info("pid %d: %s%s", pid, f"{library}: " if library else "", note)
            if hooked is not None:
                try:
                    self._adopt(pid, *hooked, library=library)
                except Exception:    # never leak the links: undo them, the scan hooks the file
                    log.exception("adopting the exec lane's hooks for pid %d failed", pid)
                    dev, ino, fd, links = hooked[:4]
                    if (dev, ino) not in self.attached:     # booked already: detached like any hook
                        self._undo_lane_hook(dev, ino, fd, links, hooked[6][6] if hooked[6] is not None else -1)
        self._top_up_lane_slots()
        if now is not None:
            self._warm(now)

    def _adopt(self, pid: int, dev: int, ino: int, fd: int, links: list[int], ckey: str,
               timing: tuple[int, int, int, int], analysis: tuple | None = None,
               lib_result: str | None = None, library: str | None = None) -> None:
        """Book the hooks the exec lane attached to `pid`'s executable (opened as `fd`), or
        to `library` (its path in the process's root) that the program will load: from a
        plan (a copy of known content), or from its own analysis of a file nobody had seen —
        `analysis` of a Go binary, `lib_result` (the worker-shaped result, JSON) of a libssl
        build — then cached and planned here like the worker's result."""
        ident = (dev, ino)
        plan = self._plans.get(ckey)
        slot = analysis[6] if analysis is not None else -1
        result = None
        analysed = analysis is not None or lib_result is not None
        if analysed:
            try:
                result = _lane_result(analysis) if analysis is not None else json.loads(lib_result)
                result = validate_result(result, os.fstat(fd).st_size) if result is not None else None
            except (AnalysisError, ValueError) as e:
                log.warning("exec lane analysis of pid %d's %s rejected: %s", pid, library or "program", e)
                result = None
        elif plan is not None:
            result = plan[1]
        if result is None or ident in self.attached:   # its plan went meanwhile (rare): undo
            self._undo_lane_hook(dev, ino, fd, links, slot)
            return
        try:
            name = library or os.readlink(f"/proc/{pid}/exe")
        except OSError:
            name = f"/proc/self/fd/{fd}"
        t = target_from_result(result, self.families, path=f"/proc/self/fd/{fd}", ident=ident, pid_seen=pid,
                               maps_path=name)
        if t is None:                                  # not a family that is on (cannot happen): undo
            self._undo_lane_hook(dev, ino, fd, links, slot)
            return
        if analysed:
            hooked = _Hooked(t, links=self.kernel.adopt_links(links), slot=slot, fd=fd, lane=True)
        else:
            hooked = _Hooked(t, links=self.kernel.adopt_links(links), plan_slot=plan[0], fd=fd, lane=True)
        self.attached[ident] = hooked
        st = os.fstat(fd)
        self._remember((st.st_dev, st.st_ino), ident, st)    # as maps will show it (overlay: its view)
        self._results[(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)] = result
        self._last_seen[ident] = self._now_ns
        took_ns, seen_ns, work_ns, attach_ns = timing
        metrics.tls_exec_to_hooked.observe(took_ns / 1e9)
        if analysed:
            self.content.store(ckey, fd, st.st_size, result)
            self._plan(ckey, result)        # its copies from now on
            how = f"analysed at its exec by the exec lane in {work_ns / 1e6:.1f} ms"
        else:
            metrics.tls_analysis_cache_hits.inc()
            how = "hooked at its exec by the exec lane, analysis cached"
        if library is not None:
            how = how.replace("at its exec", "at its program's exec, before the loader mapped it,")
        how += f", seen {seen_ns / 1e6:.1f} ms after its exec, {attach_ns / 1e6:.1f} ms to attach"
        self._update_gauges()
        n = len(t.read_returns) + 2 if isinstance(t, GoTlsTarget) else sum(len(x[1]) for x in _openssl_links(t))
        opened = f"/proc/{pid}/root{library}" if library else f"/proc/{pid}/exe"
        log.info("TLS hooks attached: %s %s (%d probes in %d links, opened as %s, seen in pid %d, %s, "
                 "%.1f ms after its exec)", t.family, name, n, len(links), opened, pid, how, took_ns / 1e6)

    def _undo_lane_hook(self, dev: int, ino: int, fd: int, links: list[int], slot: int) -> None:
        """Close hooks the lane made that are not booked, release the file's claim and take
        back the slot it was given (-1: none)."""
        for link in links:
            os.close(link)
        os.close(fd)
        self._lane.release(dev, ino, True)
        if slot >= 0:
            self._free_slots.append(slot)

    def _top_up_lane_slots(self) -> None:
        """Keep LANE_SPARE_SLOTS Go slots with the lane for binaries it analyses itself,
        while a quarter of all slots is still free."""
        if self._lane is None or "gotls" not in self.families:
            return
        want = LANE_SPARE_SLOTS - self._lane.spare_slots
        give = []
        while want > 0 and len(self._free_slots) > GO_SLOTS // 4:
            give.append(self._free_slots.pop())
            want -= 1
        if give:
            self._lane.give_slots(give)
            self._update_gauges()

    def _open_exec_wake(self):
        """The exec wake-up ring (abi.EXEC_WAKE_RING), mapped on the calling thread (the
        reader is bound to it); None when the kernel object has none or it cannot be
        mapped (execs then come from the capture loop alone)."""
        wake_map = getattr(self.kernel, "exec_wake_map", None)
        found = wake_map() if wake_map is not None else None
        if found is None:
            return None
        try:
            from .._core import Ring
            return Ring(found[0], found[1], "exec_wake")
        except (ImportError, OSError) as e:
            log.warning("exec wake-ups unavailable (%s): a new program is hooked when the capture loop reaches "
                        "its exec", e)
            return None

    def _take_exec_wakes(self, ring) -> None:
        """Register the execs waiting in the exec wake-up ring (see on_exec); their first
        scans are then due at once on this thread."""
        now = None
        for rec in ring.read(EXEC_WAKE_BATCH):
            if len(rec) < EXEC_WAKE.size:
                continue
            typ, pid, ts = EXEC_WAKE.unpack_from(rec)
            if typ == EV_PROC_EXEC and self._note_exec(pid, ts):
                now = now or time.monotonic_ns()
        if now is not None:
            self._warm(now)

    def _run(self) -> None:
        """The TLS thread: exec scans, analysis replies, rescans (see the module doc)."""
        wakes = self._open_exec_wake() if self._lane is None else None
        while not self._thread_stop:
            try:
                if self._lane is not None:
                    self._take_lane()
                elif wakes is not None:
                    self._take_exec_wakes(wakes)
                with self._work:
                    self.tick(time.monotonic_ns(), _on_thread=True)
                self.content.save()
            except Exception:   # a bug here must not end TLS discovery for the agent's life
                log.exception("TLS discovery step failed")
            with self._lock:
                nxt = min((due[0] for due in self._due.values()), default=None)
            timeout = 1.0 if nxt is None else max(0.0, min(1.0, (nxt - time.monotonic_ns()) / 1e9))
            if self._fresh:
                timeout = 0.0
            try:
                # Native wait: from its wake-up until it waits again this thread is marked
                # urgent, and the capture loop's drain hands it the GIL within ~a
                # millisecond instead of after its slice (gilshare.rs). The exec wake-up
                # ring wakes it at each exec, whatever the capture loop is doing.
                fds = [self._wake, *(s.fileno() for s in self.analysis.sockets())]
                if wakes is not None:
                    fds.append(wakes.fd)
                _wait_readable(fds, math.ceil(timeout * 1000), GIL_SHARE)
                os.eventfd_read(self._wake)
            except BlockingIOError:
                pass
            except (OSError, ValueError):   # a worker socket closed meanwhile
                time.sleep(0.001)
        _gil_urgent(False)

    @property
    def waiting(self) -> bool:
        """Analyses are queued or running and the caller's tick attaches them (no TLS
        thread)."""
        return self._thread is None and bool(self.analysis.pending)

    def close(self) -> None:
        self._closing = True          # what is still queued is dropped quietly
        if self._thread is not None:
            self._thread_stop = True
            os.eventfd_write(self._wake, 1)
            self._thread.join(5)
        if self._lane is not None:
            self._lane.stop()
            self._free_slots += self._lane.take_slots()
            execs, hooked, analysed, no_plan, mismatched, failed, demoted, libs = self._lane.stats()
            log.info("exec lane: %d execs, %d files hooked at their exec (%d libraries before the loader mapped "
                     "them; %d analysed there; %d programs left to the scan with no plan, %d files whose bytes "
                     "differed, %d attach failures; %d times over its real-time budget)",
                     execs, hooked, libs, analysed, no_plan, mismatched, failed, demoted)
        self.content.save(force=True)
        self.analysis.close()
        wakes, wait_ns, max_ns = _gil_wait_stats()
        if wakes:
            log.info("TLS thread: %d wake-ups, then waited for the GIL %.2f ms on average, %.1f ms at most "
                     "(GIL sharing %s)", wakes, wait_ns / wakes / 1e6, max_ns / 1e6, "on" if GIL_SHARE else "off")
        if self._warmer is not None:
            touches, errors, last_errno, _ = self._warmer.stats()
            self._warmer.stop()
            if errors:
                log.warning("uprobe warm-up: %d of %d touches failed (last: %s)", errors, touches,
                            os.strerror(last_errno))
        for h in self.attached.values():
            if h.fd >= 0:
                os.close(h.fd)
                h.fd = -1

    def _note_exec(self, pid: int, now_ns: int) -> bool:
        """Schedule `pid`'s scans for its exec at kernel time `now_ns`; False when that
        exec was noted already (the wake-up ring, the look-ahead and the capture loop
        each report it) or too many pids wait."""
        with self._lock:
            if self._exec_ts.get(pid) == now_ns:
                return False
            if pid not in self._due and len(self._due) >= MAX_DUE_PIDS:
                metrics.tls_scans_dropped.inc()
                return False
            self._due[pid] = [now_ns + d for d in EXEC_RESCANS_NS]
            self._fresh.add(pid)
            self._exec_ts[pid] = now_ns
            self._exec_ts.move_to_end(pid)
            while len(self._exec_ts) > EXEC_TS_CAPACITY:
                self._exec_ts.popitem(last=False)
        return True

    def on_exec(self, pid: int, now_ns: int) -> None:
        """Process `pid` exec'd at kernel time `now_ns`: scan it now and a few times
        later. Thread-safe (the capture loop calls it); the first scan runs here when the
        TLS thread is idle (bounded, see INLINE_SCANS_PER_S), else on the TLS thread."""
        if not self.families or not self._note_exec(pid, now_ns):
            return
        now = time.monotonic_ns()
        self._warm(now)
        # The exec's first scan at once, on this (the capture) thread, when the TLS thread
        # is idle: handing it over costs a GIL switch, up to 5 ms while the capture loop is
        # in native code, and a Go client writes its first request ~5 ms after its exec.
        # Bounded (INLINE_SCANS_PER_S): an exec storm is left to the TLS thread.
        if (self._thread is not None and self._take_inline(now)
                and self._work.acquire(timeout=INLINE_WAIT_S)):    # the GIL is released meanwhile
            try:
                self._now_ns = now
                self._due_scan(pid, now, inline=True)
            except Exception:   # never into the capture loop
                log.exception("TLS exec scan of pid %d failed", pid)
            finally:
                self._work.release()
        os.eventfd_write(self._wake, 1)

    def _take_inline(self, now_ns: int) -> bool:
        tokens, last = self._inline
        tokens = min(float(INLINE_SCANS_BURST), tokens + (now_ns - last) / 1e9 * INLINE_SCANS_PER_S)
        ok = tokens >= 1
        self._inline = (tokens - 1 if ok else tokens, now_ns)
        return ok

    def tick(self, now_ns: int, _on_thread: bool = False) -> None:
        """Deliver analyses, run due scans within the budget. Done by the TLS thread once
        `start` has started it (a call from elsewhere then does nothing)."""
        if not self.families or (self._thread is not None and not _on_thread):
            return
        self._now_ns = now_ns
        self.analysis.poll()
        started = self.budget_clock()
        scans = 0

        def budget_left() -> bool:
            return scans < SCANS_PER_TICK and self.budget_clock() - started < SCAN_BUDGET_NS

        with self._lock:
            ready = [p for p, due in self._due.items() if due[0] <= now_ns]
        for pid in ready:
            if not budget_left():
                break
            if self._due_scan(pid, now_ns):
                scans += 1
        if not self._cycle and now_ns >= self.next_full_ns:
            me = os.getpid()
            self._cycle = [p for p in reversed(_all_pids()) if p != me]
            self._cycle_start_ns = now_ns
            self.next_full_ns = now_ns + FULL_RESCAN_NS
            self.survey_layers()        # images pulled since
            if not self._cycle:
                self._end_cycle()
        while self._cycle and budget_left():
            self.scan(self._cycle.pop())
            scans += 1
            if not self._cycle:
                self._end_cycle()
        self.analysis.poll()

    def _due_scan(self, pid: int, now_ns: int, inline: bool = False) -> bool:
        """Run `pid`'s scan that is due at `now_ns` (its first: with the root survey).
        False when none was due."""
        with self._lock:
            due = self._due.get(pid)
            if due is None or not due or due[0] > now_ns:
                return False
            while due and due[0] <= now_ns:
                due.pop(0)
            if not due:
                del self._due[pid]
            first = pid in self._fresh
            self._fresh.discard(pid)
            ts = self._exec_ts.get(pid) if first else None
        if ts is not None:
            self._scan_delay[pid] = ((time.monotonic_ns() - ts) / 1e6, inline)
            while len(self._scan_delay) > EXEC_TS_CAPACITY:
                del self._scan_delay[next(iter(self._scan_delay))]
        self.scan(pid, survey=first)
        self.analysis.poll()       # a new file goes to a worker at once
        return True

    # ---- scanning ----

    def scan(self, pid: int, survey: bool = False) -> None:
        """Look at the files `pid` maps executable; hook or queue the new ones. With
        `survey` (its exec's first scan), also the TLS libraries of its root."""
        maps = read_maps(pid)
        if maps is None:
            return
        if survey:
            self._forget_reused_exe(pid)
        exe_ino: int | None = -1
        overlays: dict | None = None

        def get_overlays() -> dict:
            nonlocal overlays
            if overlays is None:
                overlays = read_overlay_mounts(pid)
            return overlays

        for mf in parse_maps(maps):
            mkey = (mf.dev, mf.ino)
            if mkey in self._known:
                ident = self._known[mkey]
                self._known.move_to_end(mkey)
                if ident is not None and ident in self._last_seen:
                    self._last_seen[ident] = self._now_ns
                continue
            if exe_ino == -1:
                exe_ino = exe_inode(pid)
            try:
                opened = open_mapped(pid, mf, get_overlays)
            except OpenRefused as e:
                if e.reason not in TRANSIENT:
                    refuse(e.reason, f"{mf.pathname} (pid {pid})", str(e))
                    self._remember(mkey, None)
                continue
            if opened.name_refusal and opened.name_refusal not in TRANSIENT:
                # the name led elsewhere (a symlink, a FIFO, another file): counted; the
                # mapped file itself was opened through map_files instead
                refuse(opened.name_refusal, f"{mf.pathname} (pid {pid})", "opened the mapped file instead")
            self._consider_opened(pid, mf, opened, exe_ino)
        if survey:
            self._survey_root(pid, get_overlays)

    def _forget_reused_exe(self, pid: int) -> None:
        """At an exec: a (dev, inode) taken for a known file is checked against that
        file's size, mtime and ctime, since inode numbers are reused once a file is
        deleted (a new binary in a busy /tmp would otherwise inherit the verdict on a
        deleted one, e.g. "no TLS"). One stat per exec; other mappings trust the cache."""
        try:
            st = os.stat(f"/proc/{pid}/exe")
        except OSError:
            return
        mkey = (st.st_dev, st.st_ino)
        if mkey in self._known and self._known_st.get(mkey) != _file_version(st):
            del self._known[mkey]
            self._known_st.pop(mkey, None)

    def _survey_root(self, pid: int, overlays: Callable[[], dict]) -> None:
        """The first exec in a root directory not seen lately (a new container): open
        the TLS libraries in its loader directories and hook them (their analysis, or a
        cached one, goes first), so they are hooked before the loader maps them."""
        root = f"/proc/{pid}/root"
        try:
            rst = os.stat(root)
            mntns = mount_ns_id(pid)
        except OSError:
            return
        rkey = (mntns, rst.st_dev, rst.st_ino)
        seen = self._roots.get(rkey)
        if seen is not None and self._now_ns - seen < ROOT_TTL_NS:
            return
        self._roots[rkey] = self._now_ns
        self._roots.move_to_end(rkey)
        while len(self._roots) > MAX_ROOTS:
            self._roots.popitem(last=False)
        for path, fd, st in _tls_libraries_in(root, MAX_ROOT_LIBS):
            ident = _layer_identity(overlays(), path, st) or (st.st_dev, st.st_ino)
            mf = MappedFile(path, False, st.st_dev, st.st_ino, 0, 0)
            self._consider_opened(pid, mf, OpenedFile(fd, st, ident, f"{root}{path}"), None, library=True)

    def survey_layers(self) -> None:
        """The TLS libraries of the container image layers on this host (LAYER_STORES),
        hooked by their own (device, inode): a container started later maps the layer's
        file through its overlay, so it is covered from its first byte with no analysis
        racing its first TLS call. Layers already looked at are skipped (they do not
        change); at most MAX_LAYERS layers and MAX_LAYER_LIBS files per call."""
        layers = files = 0
        for store, sub in self.layer_stores:
            try:
                with os.scandir(store) as it:
                    names = [e.name for _, e in zip(range(MAX_LAYERS), it)]
            except OSError:
                continue
            for name in sorted(names):
                if layers >= MAX_LAYERS or files >= MAX_LAYER_LIBS:
                    return
                root = f"{store}/{name}/{sub}"
                try:
                    rst = os.stat(root, follow_symlinks=False)
                except OSError:
                    continue
                lkey = (rst.st_dev, rst.st_ino)
                if lkey in self._layers_seen or not stat.S_ISDIR(rst.st_mode):
                    continue
                self._layers_seen[lkey] = True
                while len(self._layers_seen) > MAX_LAYERS:
                    self._layers_seen.popitem(last=False)
                layers += 1
                for path, fd, st in _tls_libraries_in(root, MAX_LAYER_LIBS - files):
                    files += 1
                    mf = MappedFile(f"{root}{path}", False, st.st_dev, st.st_ino, 0, 0)
                    self._consider_opened(0, mf, OpenedFile(fd, st, (st.st_dev, st.st_ino), f"{root}{path}"), None,
                                          library=True)

    def _consider_opened(self, pid: int, mf: MappedFile, opened: OpenedFile, exe_ino: int | None,
                         library: bool = False) -> None:
        """Takes ownership of opened.fd. `library`: a TLS library found by name."""
        mkey = (mf.dev, mf.ino)
        ident, key = opened.ident, opened.key
        if ident in self._last_seen:
            self._last_seen[ident] = self._now_ns
        if ident in self.attached or ident in self._inflight:
            if ident in self.attached:
                self._remember(mkey, ident, opened.st)
            os.close(opened.fd)
            return
        result = self._results.get(key)
        if result is not None:
            self._results.move_to_end(key)
            self._apply(pid, mf, opened, exe_ino, result)
            return
        if key in self._failed:
            self._remember(mkey, None, opened.st)
            os.close(opened.fd)
            return
        ckey = content_key(opened.fd, opened.st.st_size)
        if ckey is not None:
            result = self.content.lookup(ckey, opened.fd, opened.st.st_size)
            if result is not None:
                metrics.tls_analysis_cache_hits.inc()
                self._results[key] = result
                self._apply(pid, mf, opened, exe_ino, result)
                self._plan(ckey, result)
                return
            waiters = self._same_content.get(ckey)
            if waiters is not None and len(waiters) < MAX_SAME_CONTENT_WAITERS:
                # a copy of a file being analysed right now: its result serves this one
                waiters.append((pid, mf, opened, exe_ino, library))
                return
        what = f"{mf.pathname} (pid {pid})" if pid else mf.pathname
        uid = opened.st.st_uid
        if not self._budget.take(uid, self._now_ns / 1e9):
            refuse("rate_limited", what)
            os.close(opened.fd)
            return
        self._inflight.add(ident)
        submitted = time.monotonic_ns()

        def done(reply: dict) -> None:
            self._inflight.discard(ident)
            worker_ms = reply.get("worker_ms")
            self._analysis_ms[ident] = ((time.monotonic_ns() - submitted) / 1e6,
                                        float(worker_ms) if isinstance(worker_ms, (int, float)) else -1.0)
            while len(self._analysis_ms) > 1024:
                del self._analysis_ms[next(iter(self._analysis_ms))]
            waiting = self._same_content.pop(ckey, []) if ckey is not None else []
            self._on_reply(pid, mf, opened, exe_ino, reply, ckey)
            for args in waiting:      # hooked from the cache now, or analysed themselves
                if self._closing:
                    os.close(args[2].fd)
                else:
                    self._consider_opened(*args[:4], library=args[4])

        # First the programs just started (a Go binary's first request waits on this;
        # the uid budget bounds how many one user can start), then TLS libraries by name
        # (a hint only: it orders, it trusts nothing), then root's other files, then
        # everybody else's.
        if (exe_ino is not None and mf.ino == exe_ino) or library:
            priority = 0
        elif "ssl" in os.path.basename(mf.pathname):
            priority = 1
        else:
            priority = 2 if uid == 0 else 3
        if not self.analysis.submit(opened.fd, what, done, priority=priority):
            self._inflight.discard(ident)
            refuse("queue_full", what)
            os.close(opened.fd)
            return
        if ckey is not None:
            self._same_content[ckey] = []

    def _on_reply(self, pid: int, mf: MappedFile, opened: OpenedFile, exe_ino: int | None, reply: dict,
                  ckey: str | None = None) -> None:
        what = f"{mf.pathname} (pid {pid})" if pid else mf.pathname
        if self._closing:
            os.close(opened.fd)
            return
        try:
            if "refused" in reply:
                raise AnalysisError(str(reply.get("detail", ""))[:300], str(reply["refused"])[:40])
            result = validate_result(reply.get("result"), opened.st.st_size)
        except AnalysisError as e:
            os.close(opened.fd)
            if e.reason == "not_elf":        # not a program at all: simply no target
                self._remember((mf.dev, mf.ino), None, opened.st)
                return
            if e.reason not in TRANSIENT:
                self._failed[opened.key] = e.reason
                while len(self._failed) > FAILED_CAPACITY:
                    self._failed.popitem(last=False)
                self._remember((mf.dev, mf.ino), None, opened.st)
            refuse(e.reason, what, str(e))
            return
        if result.get("go_error"):
            log.warning("Go TLS hooks unavailable for %s: %s", what, result["go_error"][1])
        self._results[opened.key] = result
        while len(self._results) > FAILED_CAPACITY:
            self._results.popitem(last=False)
        if ckey is not None:
            self.content.store(ckey, opened.fd, opened.st.st_size, result)
        self._apply(pid, mf, opened, exe_ino, result)
        self._plan(ckey, result)

    def _apply(self, pid: int, mf: MappedFile, opened: OpenedFile, exe_ino: int | None, result: dict) -> None:
        """Attach what `result` says through opened.fd; closes it (Go keeps it)."""
        keep = False
        try:
            t = target_from_result(result, self.families, path=f"/proc/self/fd/{opened.fd}", ident=opened.ident,
                                   pid_seen=pid, maps_path=mf.pathname,
                                   is_exe_named_node=exe_ino is not None and _is_node(False, mf, exe_ino))
            if t is None or opened.ident in self.attached:
                self._remember((mf.dev, mf.ino), opened.ident if t is not None else None, opened.st)
                return
            if self._lane is not None and not self._lane.claim(*opened.ident):
                # The exec lane is hooking it: adopted through _take_lane. Not remembered,
                # so should the lane give up, a rescan of the exec hooks it here.
                return
            keep = self._attach(t, opened)
            self._remember((mf.dev, mf.ino), opened.ident, opened.st)
        finally:
            if not keep:
                os.close(opened.fd)

    def _remember(self, mkey: tuple[int, int], ident: tuple[int, int] | None,
                  st: os.stat_result | None = None) -> None:
        """(dev, inode) `mkey` is dealt with (`ident`: hooked as; None: no target). `st`:
        the file as it was then, so an exec of a new file that got a freed inode number
        back is not taken for the old one (see scan)."""
        self._known[mkey] = ident
        self._known.move_to_end(mkey)
        if st is not None:
            self._known_st[mkey] = _file_version(st)
        else:
            self._known_st.pop(mkey, None)
        while len(self._known) > KNOWN_CAPACITY:
            old, _ = self._known.popitem(last=False)
            self._known_st.pop(old, None)

    # ---- attaching ----

    def _attach(self, t: TlsTarget, opened: OpenedFile) -> bool:
        """Attach `t` through its /proc/self/fd path. True when opened.fd is kept."""
        hooked = _Hooked(t)
        started = time.monotonic()
        try:
            if isinstance(t, OpenSSLTarget):
                n = self._attach_openssl(t, hooked)
            else:
                n = self._attach_go(t, hooked)
        except BpfError as e:
            for link in hooked.links:
                self.kernel.detach(link)
            if hooked.slot >= 0:
                self._free_slots.append(hooked.slot)
            reason, detail = "attach_failed", str(e)
            try:
                now = os.fstat(opened.fd).st_size
            except OSError:
                now = opened.st.st_size
            if now < opened.st.st_size:      # cut short after it was analysed: say so, not "attach failed"
                reason, detail = "truncated", f"the file shrank from {opened.st.st_size} to {now} bytes while being hooked ({e})"
            refuse(reason, f"{t.maps_path} (pid {t.pid_seen})", f"{t.family}: {detail}")
            self.attached[t.key] = _Hooked(t)     # known, nothing attached: not retried
            return False
        if isinstance(t, GoTlsTarget) or t.maps_path.startswith(tuple(st + "/" for st, _ in self.layer_stores)):
            # kept open to notice the file's deletion (a removed image: detached, see _end_cycle)
            hooked.fd = opened.fd
            self._last_seen[t.key] = self._now_ns
        self.attached[t.key] = hooked
        self._update_gauges()
        via = ""
        if isinstance(t, OpenSSLTarget):
            via = ", internal read/write" if "ssl_read_internal" in t.symbols else ", exported SSL_read/SSL_write"
        with self._lock:
            exec_ts = self._exec_ts.get(t.pid_seen)
        since_exec = ""
        if exec_ts is not None:
            # CLOCK_MONOTONIC, like the kernel's bpf_ktime_get_ns() exec timestamp
            elapsed = max(0, time.monotonic_ns() - exec_ts)
            metrics.tls_exec_to_hooked.observe(elapsed / 1e9)
            scan = self._scan_delay.get(t.pid_seen)
            analysis = self._analysis_ms.pop(t.key, None)
            since_exec = (f", scanned {scan[0]:.1f} ms after its exec{' (inline)' if scan[1] else ''}"
                          if scan is not None else "") + \
                (f", analysed in {analysis[0]:.1f} ms ({analysis[1]:.1f} in the worker)" if analysis is not None
                 else ", analysis cached") + \
                f", {elapsed / 1e6:.1f} ms after its exec"
        log.info("TLS hooks attached: %s %s (%d probes in %d links%s, opened as %s, seen in pid %d, %.1f ms to "
                 "attach%s)", t.family, t.maps_path, n, len(hooked.links), via, opened.path, t.pid_seen,
                 (time.monotonic() - started) * 1000, since_exec)
        return hooked.fd >= 0

    def _uprobes(self, hooked: _Hooked, prog: str, t: TlsTarget, offsets: list[int], cookies: list[int],
                 retprobe: bool = False) -> int:
        """Attach `prog` at `offsets` of the file: one uprobe_multi link when the kernel
        has them (one system call for them all), else one perf-event uprobe each (see
        KernelCapture.attach_uprobes). The first uprobe registered after a quiet spell
        waits for an RCU grace period in the kernel (registration takes a global percpu
        rw-semaphore for writing); the rest are cheap."""
        attach_many = getattr(self.kernel, "attach_uprobes", None)
        if attach_many is not None:
            hooked.links += attach_many(prog, t.path, offsets, cookies, retprobe=retprobe)
        else:          # a kernel stand-in with the single-probe interface only
            for off, cookie in zip(offsets, cookies):
                hooked.links.append(self.kernel.attach_uprobe(prog, t.path, off, retprobe=retprobe, cookie=cookie,
                                                              hold_gil=bool(hooked.links)))
        return len(offsets)

    def _attach_openssl(self, t: OpenSSLTarget, hooked: _Hooked) -> int:
        links = _openssl_links(t)
        if not links:
            raise BpfError("no SSL_read/SSL_write symbols")
        return sum(self._uprobes(hooked, prog, t, offs, cookies, retprobe=ret) for prog, offs, cookies, ret in links)

    def _attach_go(self, t: GoTlsTarget, hooked: _Hooked) -> int:
        why = _go_unusable(t)
        if why is not None:
            raise BpfError(why)
        fo = t.fd_offsets
        if not self._free_slots:
            self._recycle_go_slots(force=True)
        if not self._free_slots:
            raise BpfError(f"too many distinct Go binaries in use at once ({GO_SLOTS})")
        slot = hooked.slot = self._free_slots.pop()
        self.kernel.set_go_offsets(slot, fo["conn_data"], fo["fd_ptr"], fo["sysfd"])
        return sum(self._uprobes(hooked, prog, t, offs, cookies) for prog, offs, cookies in _go_links(t, slot))

    # ---- Go slot recycling ----

    def _end_cycle(self) -> None:
        """A full rescan finished: recycle the slots of Go binaries that no process
        mapped during it and that are deleted (or when slots run low)."""
        low = len(self._free_slots) < GO_SLOTS // 4
        for ident, h in list(self.attached.items()):
            if h.fd < 0 or self._last_seen.get(ident, 0) >= self._cycle_start_ns:
                continue
            if (h.slot >= 0 and low) or _deleted(h):     # a Go binary, or an image layer's library
                self._detach(ident, h)
        self._update_gauges()

    def _recycle_go_slots(self, force: bool) -> None:
        """No slot left: free the slots of Go binaries not seen for a while, deleted
        ones first, then the longest unseen (up to an eighth of all slots)."""
        recent = self._now_ns - 5_000 * MS
        stale = [(not _deleted(h), self._last_seen.get(ident, 0), ident) for ident, h in self.attached.items()
                 if h.slot >= 0 and self._last_seen.get(ident, 0) < recent]
        for _, _, ident in sorted(stale)[: max(1, GO_SLOTS // 8)]:
            self._detach(ident, self.attached[ident])
        self._update_gauges()

    def _detach(self, ident: tuple[int, int], h: _Hooked) -> None:
        for link in h.links:
            self.kernel.detach(link)
        gone = _deleted(h)
        if h.fd >= 0:
            os.close(h.fd)
        if h.slot >= 0:
            self._free_slots.append(h.slot)
        del self.attached[ident]
        if self._lane is not None:
            self._lane.release(ident[0], ident[1], h.lane)
        if h.plan_slot in self._orphan_slots and not any(o.plan_slot == h.plan_slot for o in self.attached.values()):
            self._orphan_slots.discard(h.plan_slot)
            self._free_slots.append(h.plan_slot)
        self._last_seen.pop(ident, None)
        for mkey in [k for k, v in self._known.items() if v == ident]:
            del self._known[mkey]
            self._known_st.pop(mkey, None)
        log.info("TLS hooks detached from %s (no longer in use%s)%s", h.target.maps_path,
                 ", deleted" if gone else "", f"; Go slot {h.slot} free" if h.slot >= 0 else "")

    def _update_gauges(self) -> None:
        metrics.tls_go_slots_used.set(GO_SLOTS - len(self._free_slots))
        metrics.tls_hooked_files.set(sum(1 for h in self.attached.values() if h.links))


def _go_unusable(t: GoTlsTarget) -> str | None:
    """Why Go binary `t` cannot be hooked, or None."""
    if not t.regabi:
        return f"{t.go_version} uses the stack ABI; only Go >= 1.17 (register ABI) is supported"
    if not all(k in t.fd_offsets for k in ("conn_data", "fd_ptr", "sysfd")):
        return f"no socket offsets known for {t.go_version}"
    if not t.read_returns:
        return "no RET instructions found in crypto/tls.(*Conn).Read"
    return None


def _lane_layouts() -> list[tuple[int, int, int, int]]:
    """(Go 1.x minor, conn_data, fd_ptr, sysfd) for every release line the offsets table
    knows (gotls._table_entry): the lane hooks those it analyses itself; others, like
    binaries whose layout only their DWARF gives, go to the worker."""
    out = []
    for minor in range(17, 100):
        entry = gotls._table_entry((1, minor))
        if entry is not None:
            fo = gotls._with_derived(*entry)
            out.append((minor, fo["conn_data"], fo["fd_ptr"], fo["sysfd"]))
    return out


def _lane_result(analysis: tuple) -> dict | None:
    """The worker-shaped analysis result (tls_targets.analyze_image) of the lane's own
    analysis of a Go binary; None when its version has no table entry."""
    version, ranges, read_entry, write_entry, read_returns, write_returns, _slot = analysis
    parsed = gotls.parse_go_version(version)
    entry = gotls._table_entry(parsed[:2]) if parsed else None
    if entry is None:
        return None
    return {"exec_ranges": [list(r) for r in ranges], "openssl": None, "go_error": None,
            "go": {"go_version": version, "regabi": gotls.uses_register_abi(parsed, gotls.EM_X86_64),
                   "read_entry": read_entry, "write_entry": write_entry, "read_returns": list(read_returns),
                   "write_returns": list(write_returns), "fd_offsets": gotls._with_derived(*entry)}}


def _openssl_links(t: OpenSSLTarget) -> list[tuple[str, list[int], list[int], bool]]:
    """(program, offsets, cookies, return probe) for an OpenSSL-family file: its internal
    read/write functions when all are known, else the exported SSL_read/SSL_write family;
    a return probe on each. Empty when it has none of them."""
    internal = all(sym in t.symbols for sym, _, _ in OPENSSL_INTERNAL_HOOKS)
    entries: dict[str, tuple[list[int], list[int]]] = {}
    exits: tuple[list[int], list[int]] = ([], [])
    for sym, prog, cookie in OPENSSL_INTERNAL_HOOKS if internal else OPENSSL_HOOKS:
        off = t.symbols.get(sym)
        if off is None:
            continue
        offs, cookies = entries.setdefault(prog, ([], []))
        offs.append(off)
        cookies.append(cookie)
        exits[0].append(off)
        exits[1].append(cookie)
    if not exits[0]:
        return []
    return [(prog, offs, cookies, False) for prog, (offs, cookies) in entries.items()] + \
        [("ssl_exit_probe", exits[0], exits[1], True)]


def _go_links(t: GoTlsTarget, slot: int) -> list[tuple[str, list[int], list[int]]]:
    """(program, offsets, cookies) of a Go binary's hooks; the cookie is its offsets slot."""
    return [("go_write_enter", [t.write_entry], [slot]), ("go_read_enter", [t.read_entry], [slot]),
            ("go_read_return", list(t.read_returns), [slot] * len(t.read_returns))]


NS_GET_MNTNS_ID = 0x8008B705    # _IOR(0xb7, 5, __u64), Linux >= 6.12


def mount_ns_id(pid: int) -> tuple[str, int]:
    """The identity of `pid`'s mount namespace: its 64-bit id, never reused (NS_GET_MNTNS_ID),
    else its nsfs inode number, which a namespace created after another one ended often
    reuses (then a new container in it looks already surveyed). Raises OSError."""
    try:
        fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ("ino", os.stat(f"/proc/{pid}/ns/mnt").st_ino)
    try:
        buf = bytearray(8)
        try:
            fcntl.ioctl(fd, NS_GET_MNTNS_ID, buf)
            return ("id", int.from_bytes(buf, sys.byteorder))
        except OSError:
            return ("ino", os.fstat(fd).st_ino)
    finally:
        os.close(fd)


def _file_version(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _deleted(h: _Hooked) -> bool:
    """True when the hooked file has no name left (st_nlink 0) or cannot be checked."""
    if h.fd < 0:
        return True
    try:
        return os.fstat(h.fd).st_nlink == 0
    except OSError:
        return True
