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
