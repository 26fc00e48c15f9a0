"""`--dump-streams DIR`: write every connection's reassembled byte streams to files.

For each connection id: `<id>.send` and `<id>.recv` hold the socket bytes the local
process wrote and read (`.tls.send` / `.tls.recv` for TLS plaintext), `<id>.gaps` lists
missing ranges (`flow source offset length` per line, no file when nothing is missing;
a fifth word `dump-limit` marks bytes left out because a limit below was reached), and
`<id>.json` the connection's metadata, written at close. Like tcpflow, for debugging and
for tests that compare captured bytes with what was really sent.

The agent is root and the files hold raw captured plaintext (credentials included:
redaction applies to records, not to these dumps), so the directory is handled like a
root-only spool:

* DIR must be a directory (not a symlink) owned by root with no permissions for group
  or others (0700); it is created so when missing. Anything else is refused at start-up
  in one line. It is opened once; every file is created relative to that descriptor.
* Files are created with `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600: a name that already
  exists (a planted file or symlink) is refused — nothing is written through it — and
  counted in `plaintap_dump_refused_total{reason}`.
* Names are not predictable: the connection id starts with the agent's random run id.
* Sizes are bounded: at most `max_file_bytes` per file and `max_total_bytes` for the
  whole run; bytes past them are counted (`plaintap_dump_dropped_bytes_total`) and
  noted in `<id>.gaps`. At most `MAX_OPEN_FILES` files are held open; the least
  recently written is closed and reopened (`O_APPEND|O_NOFOLLOW`, same inode checked)
  when written again.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections import OrderedDict

from prometheus_client import Counter

from .. import metrics
from ..bpf import abi

__all__ = ["DumpDirError", "StreamDumper", "MAX_FILE_BYTES", "MAX_TOTAL_BYTES"]

log = logging.getLogger("plaintap.dump")

_FLOW = {abi.FLOW_SEND: "send", abi.FLOW_RECV: "recv"}

MAX_FILE_BYTES = 256 << 20
MAX_TOTAL_BYTES = 4 << 30
MAX_OPEN_FILES = 256

dump_refused = Counter("plaintap_dump_refused", "Stream dump files not written, by reason (exists: a file or "
                       "symlink already had the name)", ["reason"], registry=metrics.REGISTRY)
dump_dropped_bytes = Counter("plaintap_dump_dropped_bytes", "Stream bytes left out of --dump-streams files "
                             "because a size limit was reached", registry=metrics.REGISTRY)

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_REOPEN = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class DumpDirError(ValueError):
    """The --dump-streams directory is unsafe or unusable; the message says how to fix it."""


def open_dump_dir(path: str) -> int:
    """Open (creating it 0700 when missing) a root-only directory; return its fd.

    Raises DumpDirError (one line) for a symlink, a non-directory, or a directory that
    root does not own or that group/others may use.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as err:
        raise DumpDirError(f"--dump-streams {path}: cannot create it: {err.strerror or err}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise DumpDirError(f"--dump-streams {path}: is a symlink or not a directory; give a directory "
                               "owned by root with mode 0700 (or a path that does not exist yet)") from None
        raise DumpDirError(f"--dump-streams {path}: cannot open it: {err.strerror or err}") from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not by root"
    elif st.st_mode & 0o077:
        problem = f"has mode {stat.S_IMODE(st.st_mode):04o}; group and others must have no access"
    if problem:
        os.close(fd)
        raise DumpDirError(f"--dump-streams {path}: {problem} (the dumps hold raw captured plaintext: use a "
                           "directory owned by root with mode 0700, e.g. `install -d -m 700 DIR`, or a new path)")
    return fd


class _File:
    __slots__ = ("name", "fobj", "ino", "size")

    def __init__(self, name: str) -> None:
        self.name = name
        self.fobj = None
        self.ino = 0
        self.size = 0


class StreamDumper:
    def __init__(self, directory: str, max_file_bytes: int = MAX_FILE_BYTES,
                 max_total_bytes: int = MAX_TOTAL_BYTES) -> None:
        """Raises DumpDirError when `directory` is not a root-only directory."""
        self.dir = directory
        self.dir_fd = open_dump_dir(directory)
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.total = 0
        self._open: OrderedDict[int, _File] = OrderedDict()   # id(_File) → _File, least recent first
        self._warned: set[str] = set()
        self._files: dict[str, dict] = {}      # connection id → {(flow, source) | "gaps": _File | None}
        self._offsets: dict[str, dict] = {}    # connection id → {(flow, source): stream offset}

    # ---- files ----

    def _warn_once(self, key: str, text: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(text, *args)

    def _create(self, name: str) -> _File | None:
        """A new file `name` in the directory; None (counted) when the name exists."""
        try:
            fd = os.open(name, _CREATE, 0o600, dir_fd=self.dir_fd)
        except OSError as err:
            reason = "exists" if err.errno in (errno.EEXIST, errno.ELOOP) else "error"
            dump_refused.labels(reason).inc()
            self._warn_once(reason, "--dump-streams: not writing %s: %s (later refusals are only counted in "
                            "plaintap_dump_refused_total)", name, err.strerror or err)
            return None
        f = _File(name)
        f.fobj = os.fdopen(fd, "ab")
        f.ino = os.fstat(fd).st_ino
        self._remember(f)
        return f

    def _remember(self, f: _File) -> None:
        self._open[id(f)] = f
        while len(self._open) > MAX_OPEN_FILES:
            _, old = self._open.popitem(last=False)
            old.fobj.close()
            old.fobj = None

    def _ready(self, f: _File) -> bool:
        """Make sure `f` is open (reopening it by name, same inode, no symlink)."""
        if f.fobj is not None:
            self._open.move_to_end(id(f))
            return True
        try:
            fd = os.open(f.name, _REOPEN, dir_fd=self.dir_fd)
        except OSError as err:
            dump_refused.labels("reopen").inc()
            self._warn_once("reopen", "--dump-streams: cannot reopen %s: %s", f.name, err.strerror or err)
            return False
        if os.fstat(fd).st_ino != f.ino:
            os.close(fd)
            dump_refused.labels("replaced").inc()
            self._warn_once("replaced", "--dump-streams: %s was replaced; not writing to it", f.name)
            return False
        f.fobj = os.fdopen(fd, "ab")
        self._remember(f)
        return True

    def _write(self, f: _File, data: bytes) -> int:
        """Write what the limits allow; return how many bytes were left out."""
        room = min(self.max_file_bytes - f.size, self.max_total_bytes - self.total)
        take = max(0, min(len(data), room))
        if take and self._ready(f):
            f.fobj.write(data[:take] if take < len(data) else data)
            f.size += take
            self.total += take
        else:
            take = 0
        left = len(data) - take
        if left:
            dump_dropped_bytes.inc(left)
            self._warn_once("limit", "--dump-streams: size limit reached (%d bytes per file, %d in total); "
                            "further bytes are counted in plaintap_dump_dropped_bytes_total", self.max_file_bytes,
                            self.max_total_bytes)
        return left

    def _file(self, conn, key, name: str) -> _File | None:
        files = self._files.setdefault(conn.id, {})
        if key in files:
            return files[key]          # None once refused: not retried for every chunk
        f = files[key] = self._create(name)
        return f

    def _close(self, f: _File | None) -> None:
        if f is not None:
            self._open.pop(id(f), None)
            if f.fobj is not None:
                f.fobj.close()
                f.fobj = None

    # ---- stream consumer ----

    def on_data(self, conn, flow: int, source: int, pieces: list, ts_ns: int) -> None:
        suffix = ("tls." if source == abi.SRC_TLS else "") + _FLOW[flow]
        f = self._file(conn, (flow, source), f"{conn.id}.{suffix}")
        offs = self._offsets.setdefault(conn.id, {})
        pos = offs.get((flow, source), 0)
        for p in pieces:
            if isinstance(p, int):
                self._gap(conn, f"{_FLOW[flow]} {source} {pos} {p}\n")
                pos += p
            else:
                left = self._write(f, p) if f is not None else 0
                if left:
                    self._gap(conn, f"{_FLOW[flow]} {source} {pos + len(p) - left} {left} dump-limit\n")
                pos += len(p)
        offs[(flow, source)] = pos

    def _gap(self, conn, line: str) -> None:
        g = self._file(conn, "gaps", f"{conn.id}.gaps")
        if g is not None and self._ready(g):
            data = line.encode()
            g.fobj.write(data)   # gap notes are small and always written: they explain what is missing
            g.size += len(data)

    def on_close(self, conn) -> None:
        for f in self._files.pop(conn.id, {}).values():
            self._close(f)
        self._offsets.pop(conn.id, None)
        meta = {
            "connection.id": conn.id, "pid": conn.pid, "fd": conn.fd, "exe": conn.process.exe,
            "direction": conn.direction, "local": [conn.local_addr, conn.local_port],
            "remote": [conn.remote_addr, conn.remote_port], "bytes_sent": conn.bytes_sent,
            "bytes_received": conn.bytes_recv,
        }
        f = self._create(f"{conn.id}.json")
        if f is not None:
            self._write(f, json.dumps(meta).encode())
            self._close(f)

    def close(self) -> None:
        for f in list(self._open.values()):
            self._close(f)
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1
