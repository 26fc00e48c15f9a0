"""A bounded on-disk FIFO of records for one sink: the spool (like the OTel Collector's
persistent queue with `file_storage`).

A sink whose backend is unreachable (or slower than capture) moves the records it holds in
memory here, and replays them in order once the backend answers again; the spool survives
a restart and SIGKILL. Layout of a sink's directory (`--spool-dir`/<sink name>):

    lock                 flock(2)ed while an agent uses the directory (one agent per spool)
    cursor               "<segment> <offset>\\n": where the oldest record not yet delivered starts
    seg-<16 digits>      segments, appended in order; each record is one frame:
                         u32 length, u32 crc32(payload), u64 accepted-at (wall ns), payload

Durability (the fsync policy): `append` writes the frames and fsyncs the segment (and the
directory when it made a new segment) *before* it returns, and only then does the sink
forget the records it held in memory — so a record is always in memory or on disk, never
in neither ("nothing lost between accepted and spooled"). `commit` (after the backend
acknowledged a batch) rewrites `cursor` through a temporary file, fsync and rename. A crash
between a delivery and its commit replays that batch: delivery is at-least-once, exactly
once where nothing crashes between the two (S3 objects are content-addressed, so a replay
there is idempotent). A torn frame at the end of the last segment (power loss) is cut off
at open; a corrupt frame elsewhere ends its segment, and the records lost there are counted
(`spool_corrupt`).

Safety: the agent is root among untrusted neighbours. Directories are created 0700 and
files 0600, every file is opened relative to the directory's fd with O_NOFOLLOW, the
directory itself must be a real directory owned by us (not a symlink, not group/world
accessible), and a frame longer than `MAX_FRAME` is treated as corruption, not allocated.

Payload encoding: JSON `[scope, time_ns, severity, body, [[key, tag, value], ...]]`, tag
"b" for bytes (base64), "j" for anything else JSON can carry (the record contract's
attribute types); decoding gives back the same `Record`.
"""
from __future__ import annotations

import base64
import errno
import fcntl
import json
import logging
import os
import stat
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from ..records.model import Record

log = logging.getLogger("plaintap.sinks.spool")

FRAME = struct.Struct("<IIQ")      # length, crc32, accepted-at wall ns
MAX_FRAME = 256 << 20              # larger than any record a sink accepts (bodies are capped)
SEGMENT_PREFIX = "seg-"
DEFAULT_SEGMENT_BYTES = 32 << 20


class SpoolError(Exception):
    """The spool directory cannot be used; the message says why and what to do."""


class SpoolBusy(SpoolError):
    """Another agent holds the spool directory (the sink then runs without a spool)."""


class SpoolUnavailable(SpoolError):
    """The spool directory cannot be created (read-only or missing file system, no
    permission): the sink then runs without a spool, saying so."""


# --------------------------------------------------------------------------------------
# Pure: record <-> bytes


def encode_record(rec: Record) -> bytes:
    attrs = []
    for key, value in rec.attributes.items():
        if isinstance(value, (bytes, bytearray, memoryview)):
            attrs.append([key, "b", base64.b64encode(bytes(value)).decode("ascii")])
        else:
            attrs.append([key, "j", value])
    return json.dumps([rec.scope, rec.time_ns, rec.severity, rec.body, attrs], ensure_ascii=False,
                      separators=(",", ":"), default=_json_default).encode("utf-8", "surrogatepass")


def _json_default(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def decode_record(payload: bytes) -> Record:
    """Raises ValueError on a payload that is not a spooled record."""
    scope, time_ns, severity, body, attrs = json.loads(payload.decode("utf-8", "surrogatepass"))
    attributes = {}
    for key, tag, value in attrs:
        attributes[key] = base64.b64decode(value) if tag == "b" else value
    if not isinstance(scope, str) or not isinstance(time_ns, int) or not isinstance(body, str):
        raise ValueError("not a spooled record")
    return Record(scope, time_ns, body, attributes, severity)


# --------------------------------------------------------------------------------------
# Shared size budget: objects shed before events


class SpoolBudget:
    """The bytes all spools of this agent may use together (`--spool-size`).

    Policy (documented in the README): object spools may fill at most `objects_share` of
    the total, so events — small, and the index of everything — always keep room; a spool
    that would go past its share or the total refuses the records (`spool_full`), newest
    first: what is already on disk stays and is replayed in order.
    """

    def __init__(self, total: int, objects_share: float = 0.75) -> None:
        self.total = total
        self.objects_cap = int(total * objects_share)
        self._lock = threading.Lock()
        self._used = {"events": 0, "objects": 0}

    def try_add(self, kind: str, n: int) -> bool:
        with self._lock:
            total = self._used["events"] + self._used["objects"]
            if total + n > self.total:
                return False
            if kind == "objects" and self._used["objects"] + n > self.objects_cap:
                return False
            self._used[kind] += n
            return True

    def force_add(self, kind: str, n: int) -> None:
        with self._lock:
            self._used[kind] += n

    def release(self, kind: str, n: int) -> None:
        with self._lock:
            self._used[kind] = max(0, self._used[kind] - n)

    def used(self) -> int:
        with self._lock:
            return self._used["events"] + self._used["objects"]


# --------------------------------------------------------------------------------------
# Directory safety


def _ensure_private_dir(path: str) -> int:
    """Create `path` (and missing parents) 0700 and return an O_DIRECTORY|O_NOFOLLOW fd.

    Raises SpoolError when it is a symlink, not a directory, not ours, or open to others.
    """
    path = os.path.abspath(path)
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, name in enumerate(parts):
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                pass
            except OSError as e:
                raise SpoolUnavailable(f"spool directory {path}: cannot create /{'/'.join(parts[:i + 1])}: "
                                       f"{e.strerror}; choose a writable --spool-dir") from None
            try:
                nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                what = "is a symlink" if e.errno == errno.ELOOP else f"cannot be opened ({e.strerror})"
                if e.errno == errno.ENOTDIR:
                    what = "is not a directory"
                raise SpoolError(f"spool directory {path}: /{'/'.join(parts[:i + 1])} {what}; "
                                 "choose another --spool-dir") from None
            os.close(fd)
            fd = nfd
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise SpoolError(f"spool directory {path} belongs to uid {st.st_uid}, not to this agent "
                             f"(uid {os.geteuid()}); remove it or choose another --spool-dir")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o700)
        return fd
    except BaseException:
        os.close(fd)
        raise


# --------------------------------------------------------------------------------------
# The spool


@dataclass
class Peeked:
    """Records read from the head, with the position after each (for `commit`)."""

    records: list[Record]
    ends: list[tuple[int, int]]          # (segment, offset) after record i
    sizes: list[int]                     # frame bytes of record i
    oldest_ns: int = 0
    committed: int = 0                   # how many of them `commit` already forgot


class Spool:
    """The on-disk FIFO of one sink. Thread-safe; one reader (the sink's worker) at a time.

    `open()` raises SpoolError. Counts: `records`, `bytes` (frames not yet committed),
    `recovered` (records found at open, left by an earlier run), `corrupt` (records lost to
    a damaged file).
    """

    def __init__(self, directory: str, kind: str, budget: SpoolBudget,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = os.path.abspath(directory)
        self.kind = kind
        self.budget = budget
        self.segment_bytes = segment_bytes
        self._lock = threading.RLock()
        self._dirfd = -1
        self._lockfd = -1
        self._segments: list[int] = []   # sequence numbers, ascending
        self._seg_bytes: dict[int, int] = {}
        self._head = (0, 0)              # committed read position
        self._tail_fd = -1
        self._tail_seq = 0
        self.records = 0
        self.bytes = 0
        self.recovered = 0
        self.corrupt = 0
        self._oldest_ns = 0
        self.users = 0                   # sinks sharing this open spool (a reload hands it over)

    # -- life cycle

    def share(self) -> "Spool":
        """One more sink uses this open spool (the successor of a sink a reload replaced)."""
        with self._lock:
            self.users += 1
            return self

    def open(self) -> "Spool":
        with self._lock:
            self.users = 1
            self._dirfd = _ensure_private_dir(self.directory)
            self._lockfd = self._open("lock", os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.close()
                raise SpoolBusy(f"spool directory {self.directory} is in use by another plaintap; give each "
                                "agent its own --spool-dir") from None
            self._load()
            return self

    def close(self) -> None:
        """Release this user's hold; the files close when the last user is gone."""
        with self._lock:
            self.users -= 1
            if self.users > 0:
                return
            for fd in (self._tail_fd, self._lockfd, self._dirfd):
                if fd >= 0:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._tail_fd = self._lockfd = self._dirfd = -1

    @property
    def is_open(self) -> bool:
        return self._dirfd >= 0

    # -- writing

    def append(self, records: Sequence[Record], accepted_ns: int | None = None) -> int:
        """Write `records` at the tail, durably (fsync) before returning. Returns how many
        were written; the rest (from the first that does not fit the budget on) are
        refused. Raises OSError when the disk fails (nothing of this call is counted then)."""
        if not records:
            return 0
        stamp = accepted_ns or time.time_ns()
        frames = []
        for rec in records:
            payload = encode_record(rec)
            frames.append(FRAME.pack(len(payload), zlib.crc32(payload), stamp) + payload)
        with self._lock:
            if self._dirfd < 0:
                raise OSError(errno.EBADF, "spool is closed")
            taken = 0
            for frame in frames:
                if not self.budget.try_add(self.kind, len(frame)):
                    break
                taken += 1
            if not taken:
                return 0
            data = frames[:taken]
            new_segment = False
            if self._tail_fd < 0 or self._seg_bytes.get(self._tail_seq, 0) >= self.segment_bytes:
                self._new_tail()
                new_segment = True
            buf = b"".join(data)
            try:
                _write_all(self._tail_fd, buf)
                os.fsync(self._tail_fd)
                if new_segment:
                    os.fsync(self._dirfd)
            except OSError:
                self.budget.release(self.kind, len(buf))
                raise
            self._seg_bytes[self._tail_seq] = self._seg_bytes.get(self._tail_seq, 0) + len(buf)
            if self.records == 0:
                self._oldest_ns = stamp
            self.records += taken
            self.bytes += len(buf)
            return taken

    # -- reading

    def peek(self, max_records: int = 512, max_bytes: int = 3 << 20) -> Peeked:
        """Up to `max_records` records (and about `max_bytes`) from the head, not removed.
        Corrupt frames are skipped (counted in `corrupt`, committed away)."""
        out = Peeked([], [], [])
        with self._lock:
            seq, off = self._head
            total = 0
            while len(out.records) < max_records and total < max_bytes:
                if seq not in self._seg_bytes:
                    nxt = [s for s in self._segments if s > seq]
                    if not nxt:
                        break
                    seq, off = nxt[0], 0
                    continue
                if off >= self._seg_bytes[seq]:
                    later = [s for s in self._segments if s > seq]
                    if not later:
                        break
                    seq, off = later[0], 0
                    continue
                frame = self._read_frame(seq, off)
                if frame is None:   # corrupt: the rest of this segment is lost
                    lost = self._count_lost(seq, off)
                    self.corrupt += lost
                    self._drop_bytes(self._seg_bytes[seq] - off, lost)
                    self._seg_bytes[seq] = off
                    continue
                payload, stamp, size = frame
                try:
                    rec = decode_record(payload)
                except (ValueError, TypeError, UnicodeDecodeError, json.JSONDecodeError):
                    self.corrupt += 1
                    self._skip_frame(seq, off, size)
                    off += size
                    self._head = (seq, off)
                    continue
                if not out.records:
                    out.oldest_ns = stamp
                out.records.append(rec)
                off += size
                out.ends.append((seq, off))
                out.sizes.append(size)
                total += size
        return out

    def commit(self, peeked: Peeked, n: int | None = None) -> None:
        """The first `n` (default all) records of `peeked` were delivered: forget them, durably."""
        n = len(peeked.records) if n is None else n
        if n <= peeked.committed:
            return
        with self._lock:
            self._head = peeked.ends[n - 1]
            freed = sum(peeked.sizes[peeked.committed:n])
            self._drop_bytes(freed, n - peeked.committed)
            peeked.committed = n
            self._write_cursor()
            self._delete_consumed()
            if self.records == 0:
                self._oldest_ns = 0
            elif n < len(peeked.records):
                self._oldest_ns = peeked.oldest_ns
            else:
                nxt = self.peek(1)
                self._oldest_ns = nxt.oldest_ns if nxt.records else 0

    def oldest_age(self, now_ns: int | None = None) -> float:
        if not self.records or not self._oldest_ns:
            return 0.0
        return max(0.0, ((now_ns or time.time_ns()) - self._oldest_ns) / 1e9)

    # -- internals

    def _open(self, name: str, flags: int) -> int:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self._dirfd)

    def _drop_bytes(self, nbytes: int, nrecords: int) -> None:
        self.bytes = max(0, self.bytes - nbytes)
        self.records = max(0, self.records - nrecords)
        self.budget.release(self.kind, nbytes)

    def _new_tail(self) -> None:
        if self._tail_fd >= 0:
            os.close(self._tail_fd)
        self._tail_seq = (self._segments[-1] + 1) if self._segments else 1
        self._tail_fd = self._open(f"{SEGMENT_PREFIX}{self._tail_seq:016d}",
                                   os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        self._segments.append(self._tail_seq)
        self._seg_bytes[self._tail_seq] = 0

    def _read_frame(self, seq: int, off: int) -> tuple[bytes, int, int] | None:
        try:
            fd = self._open(f"{SEGMENT_PREFIX}{seq:016d}", os.O_RDONLY)
        except OSError:
            return None
        try:
            head = os.pread(fd, FRAME.size, off)
            if len(head) < FRAME.size:
                return None
            length, crc, stamp = FRAME.unpack(head)
            if length > MAX_FRAME or off + FRAME.size + length > self._seg_bytes.get(seq, 0):
                return None
            payload = os.pread(fd, length, off + FRAME.size)
            if len(payload) != length or zlib.crc32(payload) != crc:
                return None
            return payload, stamp, FRAME.size + length
        finally:
            os.close(fd)

    def _skip_frame(self, seq: int, off: int, size: int) -> None:
        self._drop_bytes(size, 1)

    def _count_lost(self, seq: int, off: int) -> int:
        """Records in a damaged segment tail cannot be counted exactly; count at least one."""
        return 1

    def _write_cursor(self) -> None:
        seq, off = self._head
        fd = self._open("cursor.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            _write_all(fd, f"{seq} {off}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename("cursor.tmp", "cursor", src_dir_fd=self._dirfd, dst_dir_fd=self._dirfd)

    def _delete_consumed(self) -> None:
        seq, off = self._head
        for s in list(self._segments):
            done = s < seq or (s == seq and off >= self._seg_bytes.get(s, 0) and s != self._tail_seq)
            if not done:
                continue
            if s == self._tail_seq:
                continue
            try:
                os.unlink(f"{SEGMENT_PREFIX}{s:016d}", dir_fd=self._dirfd)
            except OSError:
                pass
            self._segments.remove(s)
            self._seg_bytes.pop(s, None)

    def _load(self) -> None:
        """Find the segments and the cursor; count what is left from an earlier run."""
        names = os.listdir(self._dirfd)
        segs = []
        for name in names:
            if name.startswith(SEGMENT_PREFIX) and name[len(SEGMENT_PREFIX):].isdigit():
                segs.append(int(name[len(SEGMENT_PREFIX):]))
        segs.sort()
        head = (segs[0], 0) if segs else (0, 0)
        try:
            fd = self._open("cursor", os.O_RDONLY)
            try:
                text = os.read(fd, 64).decode("ascii", "replace").split()
            finally:
                os.close(fd)
            if len(text) == 2 and text[0].isdigit() and text[1].isdigit():
                head = (int(text[0]), int(text[1]))
        except FileNotFoundError:
            pass
        self._segments = []
        for s in segs:
            if s < head[0]:
                try:
                    os.unlink(f"{SEGMENT_PREFIX}{s:016d}", dir_fd=self._dirfd)
                except OSError:
                    pass
                continue
            self._segments.append(s)
        self._head = head if self._segments and head[0] >= self._segments[0] else \
            ((self._segments[0], 0) if self._segments else (0, 0))
        # Scan what is left: count records, cut a torn tail.
        for s in self._segments:
            fd = self._open(f"{SEGMENT_PREFIX}{s:016d}", os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                off = self._head[1] if s == self._head[0] else 0
                good = off
                count = 0
                oldest = 0
                while good + FRAME.size <= size:
                    length, crc, stamp = FRAME.unpack(os.pread(fd, FRAME.size, good))
                    if length > MAX_FRAME or good + FRAME.size + length > size:
                        break
                    if zlib.crc32(os.pread(fd, length, good + FRAME.size)) != crc:
                        break
                    if not oldest:
                        oldest = stamp
                    good += FRAME.size + length
                    count += 1
                if good < size:
                    log.warning("spool %s: segment %d damaged at byte %d (%d bytes cut off)", self.directory, s,
                                good, size - good)
                    self.corrupt += 1
                    os.ftruncate(fd, good)
                    os.fsync(fd)
            finally:
                os.close(fd)
            self._seg_bytes[s] = good
            live = good - off
            self.bytes += live
            self.records += count
            if count and not self._oldest_ns:
                self._oldest_ns = oldest
            self.budget.force_add(self.kind, live)
        self.recovered = self.records
        # New records always go to a fresh segment: the old tail may have been cut.
        self._tail_fd = -1
        self._tail_seq = self._segments[-1] if self._segments else 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
