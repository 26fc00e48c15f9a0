"""One agent per host: an advisory lock held for the agent's life.

Two agents side by side would each capture everything, so every record would arrive
twice. The lock is `flock(2)` on a root-owned file (default /run/plaintap.lock) holding
the owner's pid: the kernel releases it when the process dies, so a crash never leaves a
stale lock. The file is opened without following symlinks and must be a regular file.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat

from .errors import UserError

DEFAULT_LOCK_FILE = "/run/plaintap.lock"


class InstanceLock:
    def __init__(self, path: str = DEFAULT_LOCK_FILE) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise UserError naming the running agent's pid."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UserError(f"the lock file {self.path} is a symlink: remove it (plaintap will not follow it)")
            raise UserError(f"cannot open the lock file {self.path}: {e.strerror}; pass --lock-file PATH "
                            "or --allow-multiple") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise UserError(f"the lock file {self.path} is not a regular file: remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise UserError(f"cannot lock {self.path}: {e.strerror}") from None
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"another plaintap is already running on this host (pid {owner}, lock {self.path}): "
                            "stop it first, or pass --allow-multiple to run a second one (each captures "
                            "everything)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)   # closing the only fd drops the flock
            self.fd = None


def prepare_process() -> None:
    """Process-wide settings made first, while the agent has one thread: its fd table
    reserved and transparent huge pages off (see both functions)."""
    reserve_fd_table()
    disable_huge_pages()


# Transparent huge pages are off for the agent. Its native allocator (mimalloc) marks its
# arenas MADV_HUGEPAGE, so with the usual `defrag=madvise` the first write to each fresh
# 2 MiB of them allocates a huge page and, when memory is fragmented, compacts memory for
# it in that thread, on its CPU: 4.9 ms measured for one such fault in the exec lane, after
# which a new Go program's first TLS write had already gone out unhooked. With THP off each
# first touch is a 4 KiB page (microseconds) and no allocation rounds up to 2 MiB of RSS.
PR_SET_THP_DISABLE = 41


def disable_huge_pages() -> bool:
    """prctl(PR_SET_THP_DISABLE) for this process (inherited by its children); False if the
    kernel refused (the agent works; a fault may then compact memory)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0


# The agent's file descriptor table is sized once, before its threads start. The kernel
# grows a process's table by doubling it, and when threads share the table it waits for an
# RCU grace period first (5-11 ms measured here, with a tick of 4 ms), while every other
# thread that wants a new fd waits behind it. The agent's fds grow with what it hooks (an
# exe fd and a few links per hooked file), so each doubling used to land on whichever
# thread crossed it: the exec lane's open of a new program, stalling its hooks past the
# program's first TLS write. Grown while the process has one thread, the table is copied
# without that wait; 16384 slots cost 128 KiB.
FD_TABLE_RESERVE = 16384


def reserve_fd_table(slots: int = FD_TABLE_RESERVE) -> int:
    """Grow this process's fd table to `slots` (capped by RLIMIT_NOFILE); returns the size
    reserved, 0 if it could not be (the agent works; its first fds past each power of two
    then cost a grace period)."""
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = min(slots, soft) - 1
    if top < 64:
        return 0
    try:
        src = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        os.close(fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, top))   # the lowest free fd >= top
    except OSError:
        return 0
    finally:
        os.close(src)
    return top + 1
