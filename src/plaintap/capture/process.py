"""Who a pid is: executable, command line, user, container.

Facts come from two places: the kernel's exec event (path and argv captured at exec, so
a process that connects and exits within a millisecond is still attributed) and /proc
(for processes that started before the agent, and for the resolved executable path).
Exited processes are kept for a grace period because their connections are finalised
after the exit event.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from .containers import MAX_CGROUP_TEXT, ContainerInfo, container_from_cgroup


@dataclass(slots=True)
class ProcessInfo:
    pid: int
    exe: str = ""
    cmdline: str = ""
    argv: tuple[str, ...] = ()     # when known: records mask and cut the command line per argument
    uid: int | None = None
    comm: str = ""
    container_id: str = ""
    container: ContainerInfo | None = None   # shared by the container's processes (capture/containers.py)
    exited: bool = False
    filter_flags: int = 0          # tap.filters bits (capture/filters.py)
    attrs: dict = field(default_factory=dict)
    shown_cmdline: tuple = ()      # (redaction policy, process.command_line) cache for records

    @property
    def exe_name(self) -> str:
        return os.path.basename(self.exe) if self.exe else self.comm


    def container_attributes(self) -> dict:
        """`container.*` / `k8s.*` record attributes (RECORDS.md) of this process."""
        if self.container is not None:
            return self.container.attributes()
        return {"container.id": self.container_id} if self.container_id else {}


def container_id_from_cgroup(text: str) -> str:
    """The 64-hex container id in a /proc/<pid>/cgroup text, or ''."""
    ref = container_from_cgroup(text)
    return ref.id if ref is not None else ""


MAX_PROC_READ = 64 << 10  # /proc/<pid>/cmdline can be megabytes; records keep 4 KiB of it


def _read(path: str, limit: int = MAX_PROC_READ) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def read_proc(pid: int, proc_root: str = "/proc", containers=None) -> ProcessInfo | None:
    """`containers`: a ContainerResolver (capture/containers.py) that names the container;
    without one the process gets the id from its cgroup only."""
    """ProcessInfo from /proc, or None when the process is gone."""
    base = f"{proc_root}/{pid}"
    status = _read(f"{base}/status")
    if status is None:
        return None
    info = ProcessInfo(pid)
    try:
        info.exe = os.readlink(f"{base}/exe").removesuffix(" (deleted)")
    except OSError:
        pass
    cmd = _read(f"{base}/cmdline")
    if cmd:
        info.argv = tuple(a for a in cmd.split("\0") if a)
        info.cmdline = " ".join(info.argv)
    for line in status.splitlines():
        if line.startswith("Uid:"):
            info.uid = int(line.split()[1])
        elif line.startswith("Name:"):
            info.comm = line.split(None, 1)[1] if len(line.split()) > 1 else ""
    _place(info, _read(f"{base}/cgroup", MAX_CGROUP_TEXT), containers)
    return info


def _place(info: ProcessInfo, cgroup_text: str | None, containers) -> bool:
    """Put `info` in the container its /proc/<pid>/cgroup text names (named through
    `containers`, a ContainerResolver, when there is one); False when it names none."""
    ref = container_from_cgroup(cgroup_text or "")
    if ref is None:
        return False
    info.container_id = ref.id
    info.container = containers.lookup(ref) if containers is not None else ContainerInfo(ref)
    return True


class ProcessTable:
    """pid → ProcessInfo, fed by exec/exit events and lazily from /proc."""

    def __init__(self, proc_root: str = "/proc", keep_exited: int = 4096, flags_for=None, on_flags=None,
                 containers=None) -> None:
        """`flags_for(exe) -> int`: tap.filters bits of an executable; `on_flags(pid,
        flags)`: told whenever a pid's bits are first known or change (kernel sync);
        `containers`: the ContainerResolver that names containers (None: ids only)."""
        self.proc_root = proc_root
        self.containers = containers
        self.flags_for = flags_for
        self.on_flags = on_flags
        # pid -> /proc/<pid>/cgroup as read at its exec by someone faster (the exec lane), or
        # None; asked for a process already gone when its exec is handled
        self.exec_cgroup: Callable[[int], str | None] | None = None
        self._live: dict[int, ProcessInfo] = {}
        self._exited: OrderedDict[int, ProcessInfo] = OrderedDict()
        self.keep_exited = keep_exited
        # read at an exec seen ahead of its turn (prefetch), for its turn (on_exec)
        self._early: OrderedDict[int, ProcessInfo] = OrderedDict()

    def prefetch(self, pid: int) -> None:
        """An exec of `pid` was seen ahead of its turn: read /proc now, while a short-lived
        process (a container's first program) is still there; its on_exec uses that."""
        info = read_proc(pid, self.proc_root, self.containers)
        if info is not None:
            self._early[pid] = info
            self._early.move_to_end(pid)
            while len(self._early) > self.keep_exited:
                self._early.popitem(last=False)

    def on_exec(self, pid: int, filename: str, argv: list[str], uid: int, ppid: int = 0) -> ProcessInfo:
        early = self._early.pop(pid, None)
        if early is not None and (not argv or early.argv == tuple(argv)):
            info = early       # read when its exec was seen (this image: the same command line)
        else:
            info = read_proc(pid, self.proc_root, self.containers)
        if info is None:  # already gone: the kernel's facts are all there is
            seen = self._live.get(pid)
            if seen is not None and seen.exe and argv and seen.argv == tuple(argv):
                # The agent is behind: this image was already read from /proc (same command
                # line; a connection asked for it), with its resolved executable. Keep that
                # rather than the exec's filename, which may name a symlink.
                self._exited.pop(pid, None)
                return seen
            info = ProcessInfo(pid, uid=uid)
            # its cgroup as the exec lane read it at the exec (a container's first program,
            # done before the agent got to it)
            text = self.exec_cgroup(pid) if self.exec_cgroup is not None else None
            if not _place(info, text, self.containers):
                # An exec keeps the cgroup, and a child starts in its parent's: a process that
                # exited before its exec was handled is still placed in its container.
                known = self._live.get(pid) or self._live.get(ppid) or self._exited.get(ppid)
                if known is not None and known.container is not None:
                    info.container_id, info.container = known.container_id, known.container
        # /proc/<pid>/exe is the resolved path (and right inside containers); the exec
        # event's filename is the fallback for a process already gone.
        if not info.exe:
            info.exe = filename
        if argv:
            info.argv = tuple(argv)
            info.cmdline = " ".join(argv)
        if info.uid is None:
            info.uid = uid
        if not info.comm:
            info.comm = os.path.basename(filename)[:15]
        self._exited.pop(pid, None)
        old = self._live.get(pid)
        self._live[pid] = info
        self._classify(info, old.filter_flags if old is not None else 0)
        return info

    def refilter(self) -> None:
        """flags_for now answers differently (a reload changed tap.filters): reclassify
        every live process, telling on_flags of each change. Exited ones keep their bits."""
        for info in list(self._live.values()):
            self._classify(info, info.filter_flags)

    def _classify(self, info: ProcessInfo, previous: int = 0) -> None:
        if self.flags_for is None:
            return
        info.filter_flags = self.flags_for(info.exe)
        if info.filter_flags != previous and self.on_flags is not None:
            self.on_flags(info.pid, info.filter_flags)

    def on_exit(self, pid: int) -> None:
        info = self._live.pop(pid, None)
        if info is None:
            return
        info.exited = True
        self._exited[pid] = info
        while len(self._exited) > self.keep_exited:
            self._exited.popitem(last=False)

    def get(self, pid: int, comm: str = "", uid: int | None = None) -> ProcessInfo:
        """Known info for pid, else read /proc, else a stub with the kernel's comm/uid."""
        info = self._live.get(pid) or self._exited.get(pid)
        if info is not None:
            return info
        info = read_proc(pid, self.proc_root, self.containers) or ProcessInfo(pid, comm=comm, uid=uid)
        if not info.comm:
            info.comm = comm
        if info.uid is None:
            info.uid = uid
        self._live[pid] = info
        self._classify(info)
        return info
