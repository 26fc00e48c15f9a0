"""Open a file a process maps, once, without letting anyone steer the agent elsewhere.

The agent runs as root and looks at files named by untrusted processes. A name is only
a hint: between reading it in /proc/<pid>/maps and opening it, its owner can replace it
(or a directory on the way) with a symlink to a host library. So a target is opened
exactly once, here, and everything after — the size and identity check, analysis, the
uprobe attach (through /proc/self/fd/N) — uses that descriptor:

* The name is resolved inside the process's own root (/proc/<pid>/root) with openat2
  RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS: paths in maps are
  already canonical (the kernel prints the real dentry path), so any symlink on the way
  is somebody's swap, and the open fails with ELOOP. Kernels without openat2 (< 5.6)
  get the same rules from a walk one component at a time with O_NOFOLLOW.
* It is first opened O_PATH (no open side effects: a FIFO or device is never really
  opened) and must be a regular file whose (dev, ino) is the one maps shows; only then
  is it reopened for reading through /proc/self/fd, O_NONBLOCK.
* A file deleted or replaced since it was mapped is opened through
  /proc/<pid>/map_files/<range>: the kernel's own reference to the mapped file, not a
  name anybody can change; its inode number must still match.

Each refusal raises OpenRefused with a short `reason` for the refusal counter.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat

O_PATH = getattr(os, "O_PATH", 0o10000000)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10
# openat2 has one number on every architecture that has it (asm-generic and x86 agree)
SYS_OPENAT2 = 437 if platform.machine() in ("x86_64", "aarch64", "arm64", "riscv64", "ppc64le", "s390x") else -1


class OpenRefused(Exception):
    """The file was not opened; `reason` is a short label ("symlink", "not_regular_file",
    "identity_mismatch", "gone", "open_failed")."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_openat2_missing = SYS_OPENAT2 < 0


def _openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(2) or OSError; ENOSYS when the kernel lacks it."""
    how = _OpenHow(flags, 0, resolve)
    fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(path)),
                       ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def _walk_open(rootfd: int, path: str) -> int:
    """The same resolution without openat2: one component at a time, never following a
    symlink, never leaving `rootfd` (".." is refused: canonical paths have none)."""
    parts = [p for p in path.split("/") if p and p != "."]
    if not parts or ".." in parts:
        raise OSError(errno.EINVAL, "not a canonical path", path)
    fd = os.dup(rootfd)
    try:
        for comp in parts[:-1]:
            nxt = os.open(comp, O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        # O_PATH|O_NOFOLLOW on a symlink opens the link itself: caught by the caller
        return os.open(parts[-1], O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def open_path_in_root(root: str, path: str) -> int:
    """An O_PATH descriptor for canonical absolute `path` resolved inside directory
    `root` (e.g. /proc/<pid>/root), following no symlink at all. Raises OpenRefused."""
    global _openat2_missing
    try:
        rootfd = os.open(root, O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise OpenRefused(f"{root}: {e.strerror}", "gone") from e
    try:
        fd = -1
        if not _openat2_missing:
            try:
                fd = _openat2(rootfd, path.lstrip("/") or ".", O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                              RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS)
            except OSError as e:
                # ENOSYS: kernel < 5.6; EPERM: a container seccomp profile that predates
                # openat2 and refuses it. Both: the walk gives the same guarantees.
                if e.errno not in (errno.ENOSYS, errno.EPERM):
                    raise
                _openat2_missing = True
        if fd < 0:
            fd = _walk_open(rootfd, path)
        # with O_PATH|O_NOFOLLOW a final symlink is opened as the link itself
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.ELOOP, "is a symlink", path)
        return fd
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
            raise OpenRefused(f"{path}: a symlink on the way ({e.strerror})", "symlink") from e
        if e.errno == errno.ENOENT:
            raise OpenRefused(f"{path}: gone", "gone") from e
        raise OpenRefused(f"{path}: {e.strerror}", "open_failed") from e
    finally:
        os.close(rootfd)


def reopen_for_reading(pathfd: int, what: str, dev: int | None, ino: int) -> tuple[int, os.stat_result]:
    """A read-only descriptor for the regular file behind O_PATH descriptor `pathfd`
    (which stays the caller's), after checking it is a regular file with inode `ino`
    (and device `dev` unless None). Raises OpenRefused."""
    st = os.fstat(pathfd)
    if not stat.S_ISREG(st.st_mode):
        raise OpenRefused(f"{what}: not a regular file (mode {st.st_mode:o})", "not_regular_file")
    if st.st_ino != ino or (dev is not None and st.st_dev != dev):
        raise OpenRefused(f"{what}: not the mapped file (inode {st.st_ino}, expected {ino})", "identity_mismatch")
    try:
        fd = os.open(f"/proc/self/fd/{pathfd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise OpenRefused(f"{what}: {e.strerror}", "open_failed") from e
    st2 = os.fstat(fd)
    if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino):   # cannot happen; cheap to be sure
        os.close(fd)
        raise OpenRefused(f"{what}: changed while reopening", "identity_mismatch")
    return fd, st2


def open_mapped_file(pid: int, pathname: str, deleted: bool, dev: int, ino: int, start: int, end: int,
                     ) -> tuple[int, os.stat_result, str, str | None]:
    """Open the file process `pid` maps at [start, end) (maps says `pathname`, `dev`,
    `ino`). Returns (fd, stat, how, name_refusal): `how` is "root" (by name in its root)
    or "map_files"; `name_refusal` is the reason the name was refused when map_files
    had to be used (else None). The caller owns fd. Raises OpenRefused."""
    name_refusal: str | None = None
    if not deleted:
        try:
            pfd = open_path_in_root(f"/proc/{pid}/root", pathname)
            try:
                fd, st = reopen_for_reading(pfd, pathname, dev, ino)
                return fd, st, "root", None
            finally:
                os.close(pfd)
        except OpenRefused as e:
            name_refusal = e.reason
    # The kernel's reference to the mapped file itself (a magic link we mean to follow).
    mf = f"/proc/{pid}/map_files/{start:x}-{end:x}"
    try:
        pfd = os.open(mf, O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise OpenRefused(f"{mf}: {e.strerror}", name_refusal or "gone") from e
    try:
        fd, st = reopen_for_reading(pfd, pathname, None, ino)
        return fd, st, "map_files", name_refusal
    finally:
        os.close(pfd)


def open_host_file(path: str) -> tuple[int, os.stat_result]:
    """Open a file of the agent's own filesystem (system libssl, node on PATH) for
    analysis: the name is made canonical first (these are root-owned paths such as
    /usr/lib/x86_64-linux-gnu/libssl.so.3 -> libssl.so.3), then opened like a mapped
    file. Raises OpenRefused."""
    real = os.path.realpath(path)
    pfd = open_path_in_root("/", real)
    try:
        st = os.fstat(pfd)
        return reopen_for_reading(pfd, real, st.st_dev, st.st_ino)
    finally:
        os.close(pfd)
