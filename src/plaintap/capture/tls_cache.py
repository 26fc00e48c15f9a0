"""Analyses remembered by file content, across copies of a file and across restarts.

A program started after the agent is hooked only once its file is analysed, and the
analysis (tls_targets.analyze_image, in the sandboxed worker) takes 5–40 ms — longer
than a Go client takes to send its first request. Most "new" files are not new content:
a binary copied or rebuilt to a new path, a container image's libssl that is the same
Debian package as the host's, the same program after an agent restart. So besides the
cache by (dev, ino, size, mtime), results are kept by a content key:

* the **key** is the file's size and its linker build ID — `.note.go.buildid` (the Go
  toolchain's hash of the build) or `.note.gnu.build-id` (GNU ld/lld/gold, every distro
  library) — read from the PT_NOTE segments with a few bounded preads (`content_key`).
  Files without one get no content key (they are analysed as before).
* a build ID is written by whoever built the file and proves nothing, so a hit is used
  only when the new file's **bytes at every hooked offset** (16 from each), and its
  program header table, are those of the analysed file (`site_digest`): the uprobes then
  land on the same instructions in the same executable segments. A forged build ID with
  other code just misses (and is analysed normally).

`ContentCache` holds at most MAX_ENTRIES results, least recently used out first, and is
saved as one JSON file (0600, written to a new name and renamed, in a root-owned
directory no one else may write) at most every SAVE_INTERVAL_S and on close. A saved
file is read at start-up only if it is a regular root-owned file not writable by others;
each entry is checked again (tls_targets.validate_result) before use, and a damaged file
is ignored with one log line.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import struct
import threading
import time
from collections import OrderedDict

log = logging.getLogger("plaintap.tls")

PT_NOTE = 4
MAX_PHNUM = 256
MAX_NOTE_BYTES = 64 << 10
MAX_BUILD_ID = 256
SITE_BYTES = 16
MAX_ENTRIES = 4096
MAX_CACHE_FILE = 64 << 20
SAVE_INTERVAL_S = 5.0
FORMAT = 1


def _pread(fd: int, n: int, off: int) -> bytes:
    out = os.pread(fd, n, off)
    if len(out) != n:
        raise ValueError("short read")
    return out


def _program_headers(fd: int, size: int) -> tuple[str, bytes, int, int] | None:
    """(endianness, raw program header table, entry size, count) of an ELF file."""
    ident = _pread(fd, 64, 0) if size >= 64 else b""
    if len(ident) < 52 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        return None
    e = "<" if ident[5] == 1 else ">"
    if ident[4] == 2:
        (phoff,) = struct.unpack_from(e + "Q", ident, 32)
        phentsize, phnum = struct.unpack_from(e + "HH", ident, 54)
        want = 56
    else:
        (phoff,) = struct.unpack_from(e + "I", ident, 28)
        phentsize, phnum = struct.unpack_from(e + "HH", ident, 42)
        want = 32
    if phentsize != want or not 0 < phnum <= MAX_PHNUM or phoff + phentsize * phnum > size:
        return None
    return e + ("64" if ident[4] == 2 else "32"), _pread(fd, phentsize * phnum, phoff), phentsize, phnum


def content_key(fd: int, size: int) -> str | None:
    """"<size>:<kind>:<hex build id>" for an ELF file with a build ID note, else None.
    Bounded: the ELF header, at most MAX_PHNUM program headers and MAX_NOTE_BYTES of
    notes are read. Never raises for a bad file (None)."""
    try:
        ph = _program_headers(fd, size)
        if ph is None:
            return None
        kind, table, entsize, count = ph
        e = kind[0]
        is64 = kind.endswith("64")
        for i in range(count):
            (p_type,) = struct.unpack_from(e + "I", table, i * entsize)
            if p_type != PT_NOTE:
                continue
            if is64:
                off, _va, _pa, filesz = struct.unpack_from(e + "QQQQ", table, i * entsize + 8)
            else:
                off, _va, _pa, filesz = struct.unpack_from(e + "IIII", table, i * entsize + 4)
            if filesz > MAX_NOTE_BYTES or off + filesz > size:
                continue
            notes = _pread(fd, filesz, off)
            pos = 0
            while pos + 12 <= len(notes):
                namesz, descsz, ntype = struct.unpack_from(e + "III", notes, pos)
                name_at = pos + 12
                desc_at = name_at + ((namesz + 3) & ~3)
                end = desc_at + ((descsz + 3) & ~3)
                if end > len(notes) or descsz > MAX_BUILD_ID:
                    break
                name = notes[name_at:name_at + namesz].rstrip(b"\0")
                desc = notes[desc_at:desc_at + descsz]
                if (name, ntype) in ((b"GNU", 3), (b"Go", 4)) and desc:
                    return f"{size}:{name.decode().lower()}:{desc.hex()}"
                pos = end
    except (OSError, ValueError, struct.error):
        return None
    return None


def result_offsets(result: dict) -> list[int]:
    """Every file offset an analysis result hooks (the places whose bytes must match)."""
    offs: list[int] = []
    openssl = result.get("openssl")
    if openssl:
        offs += list(openssl["symbols"].values())
    go = result.get("go")
    if go:
        offs += [go["read_entry"], go["write_entry"], *go["read_returns"], *go["write_returns"]]
    return sorted(set(offs))


def site_digest(fd: int, size: int, result: dict) -> str | None:
    """sha256 over the program header table and SITE_BYTES at each hooked offset of
    `result` in file `fd`; None when the file cannot be read so."""
    try:
        ph = _program_headers(fd, size)
        if ph is None:
            return None
        h = hashlib.sha256(ph[1])
        h.update(json.dumps(result.get("exec_ranges"), separators=(",", ":")).encode())
        for off in result_offsets(result):
            h.update(struct.pack("<Q", off))
            h.update(os.pread(fd, SITE_BYTES, off))
        return h.hexdigest()
    except (OSError, ValueError, struct.error):
        return None


class ContentCache:
    """Analysis results by content key (see the module doc); thread-safe."""

    def __init__(self, path: str | None = None, clock=time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self._items: OrderedDict[str, tuple[str, dict]] = OrderedDict()
        self._lock = threading.Lock()
        self._dirty = False
        self._saved_at = 0.0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._items)

    def lookup(self, key: str, fd: int, size: int) -> dict | None:
        """The result stored under `key` when file `fd` has the same bytes at every
        hooked place; else None."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
        if hit is None:
            return None
        sites, result = hit
        if site_digest(fd, size, result) != sites:
            return None
        self.hits += 1
        return result

    def store(self, key: str, fd: int, size: int, result: dict) -> None:
        sites = site_digest(fd, size, result)
        if sites is None:
            return
        with self._lock:
            self._items[key] = (sites, result)
            self._items.move_to_end(key)
            while len(self._items) > MAX_ENTRIES:
                self._items.popitem(last=False)
            self._dirty = True

    def entry(self, key: str) -> tuple[str, dict] | None:
        """(site digest, result) stored under `key`, or None."""
        with self._lock:
            return self._items.get(key)

    def recent(self, n: int) -> list[tuple[str, str, dict]]:
        """Up to `n` (key, site digest, result), most recently used first."""
        with self._lock:
            items = list(self._items.items())[-n:]
        return [(k, sites, result) for k, (sites, result) in reversed(items)]

    # ---- persistence ----

    def load(self, validate) -> int:
        """Read the saved cache (see the module doc); `validate(result, size)` checks
        each entry (raises to drop it). Returns the number of entries kept."""
        if not self.path:
            return 0
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return 0
        except OSError as e:
            log.warning("TLS analysis cache %s not read: %s", self.path, e.strerror)
            return 0
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
                log.warning("TLS analysis cache %s ignored: not a regular file owned by this user and "
                            "writable by no one else", self.path)
                return 0
            if st.st_size > MAX_CACHE_FILE:
                log.warning("TLS analysis cache %s ignored: larger than %d bytes", self.path, MAX_CACHE_FILE)
                return 0
            raw = os.read(fd, MAX_CACHE_FILE + 1)
        finally:
            os.close(fd)
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("entries"), list):
                raise ValueError("unknown format")
        except ValueError as e:
            log.warning("TLS analysis cache %s ignored: %s", self.path, e)
            return 0
        kept = 0
        with self._lock:
            for ent in doc["entries"][-MAX_ENTRIES:]:
                try:
                    key, sites, result = ent["key"], ent["sites"], ent["result"]
                    size = int(str(key).split(":", 1)[0])
                    if not (isinstance(key, str) and isinstance(sites, str) and len(sites) == 64):
                        raise ValueError("entry")
                    validate(result, size)
                except Exception:
                    continue
                self._items[key] = (sites, result)
                kept += 1
        return kept

    def save(self, force: bool = False) -> None:
        """Write the cache when it changed (at most every SAVE_INTERVAL_S unless
        `force`). Failures are logged, never raised."""
        if not self.path or not self._dirty:
            return
        now = self.clock()
        if not force and now - self._saved_at < SAVE_INTERVAL_S:
            return
        with self._lock:
            entries = [{"key": k, "sites": s, "result": r} for k, (s, r) in self._items.items()]
            self._dirty = False
        self._saved_at = now
        directory = os.path.dirname(os.path.abspath(self.path))
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            dst = os.stat(directory)
            if dst.st_uid != os.geteuid() or dst.st_mode & 0o022:
                log.warning("TLS analysis cache not saved: %s is writable by others", directory)
                return
            data = json.dumps({"format": FORMAT, "entries": entries}, separators=(",", ":")).encode()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("TLS analysis cache %s not saved: %s", self.path, e.strerror or e)
            try:
                os.unlink(tmp)
            except OSError:
                pass
