"""Where to put TLS uprobes: which files, which offsets, found per process.

plaintap reads TLS plaintext by probing the TLS library *inside* each process, so the
attach layer (plaintap.bpf) needs data, not guesses: for every file that implements TLS
in some running process, the path to open, its identity and the file offsets of the
functions to probe. This module produces that data from /proc and the files
themselves; it never touches libbpf.

How a process is scanned (`scan_process`):

* /proc/<pid>/maps lists the files mapped executable. Each is looked at once per
  (device, inode): a libssl.so* (OpenSSL, BoringSSL), any other file that defines
  SSL_read and SSL_write (OpenSSL linked statically: family "nodetls" when the file is
  Node — Node exports its bundled OpenSSL's SSL_* from the executable — else
  "openssl"), and Go binaries containing crypto/tls (family "gotls").
* Files are opened through /proc/<pid>/root/<path>, so a process in another mount
  namespace (a container) is resolved inside its own filesystem. A file that was
  deleted or replaced after it was mapped (" (deleted)" in maps, or an inode that no
  longer matches) is opened through /proc/<pid>/map_files/<start>-<end>, which is the
  mapped file itself. Either path is valid only while the process lives: attach soon.
* Analysis results are cached by (dev, ino, size, mtime), so a host-wide `discover`
  reads each distinct file once, however many processes map it.

Identity: `dev`/`ino` name the inode the kernel will put the uprobes on. For ordinary
filesystems that is st_dev/st_ino of `path`. For a file on overlayfs (container images)
the kernel attaches to the *layer's* file (d_real_inode of the path), which every
container started from that image shares, while st_dev/st_ino of the overlay path (and,
on 6.18, /proc/<pid>/maps too) name one overlay mount's view of it. So the layer file is
found through the overlay's lowerdir/upperdir in /proc/<pid>/mountinfo and its identity
is used: one target, attached once, for all containers sharing the layer (attaching per
container would make every event arrive twice). When the layer file cannot be found,
the overlay identity is kept.

Nothing here raises for a process that exits mid-scan: it yields fewer targets.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable

from .elfsyms import ElfError, ElfImage
from .gotls import EM_X86_64, GoBinaryError, GoTlsInfo, analyze_go_binary

log = logging.getLogger(__name__)

FAMILIES = frozenset({"openssl", "gotls", "nodetls"})

# Probed when present. SSL_read/SSL_write are required for a file to be a target.
OPENSSL_REQUIRED = ("SSL_read", "SSL_write")
OPENSSL_SYMBOLS = (
    "SSL_read",
    "SSL_read_ex",
    "SSL_write",
    "SSL_write_ex",
    "SSL_get_fd",
    "SSL_do_handshake",
    "SSL_set_fd",
    "SSL_get_rbio",
    "SSL_get_wbio",
    "SSL_free",
)
# Exported only by Node (N-API / addon registration): marks a static OpenSSL as Node's.
NODE_MARKER_SYMBOLS = ("napi_module_register", "node_module_register")
# BoringSSL-only API.
BORINGSSL_MARKER_SYMBOLS = (
    "SSL_CTX_set_grease_enabled",
    "SSL_CTX_set_strict_cipher_list",
    "BORINGSSL_self_test",
)

_NODE_EXE_NAME = re.compile(r"^node(js)?([-_.]?\d+(\.\d+)*)?$")
_DELETED = " (deleted)"
# Layer directories in an overlay's mount options are paths in the mount namespace of
# whoever mounted it (the container runtime, on the host): look in our own root (an
# agent on the host), then in init's (an agent in a container with the host's pids).
HOST_ROOTS = ("", "/proc/1/root")


# --------------------------------------------------------------------------------------
# public data
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TlsTarget:
    """One file to probe. `path` is the path to open from the agent's view
    (/proc/<pid>/root/... or /proc/<pid>/map_files/...); (`dev`, `ino`) identify the
    inode uprobes attached through `path` land on (see the module docstring for
    overlayfs); `maps_path` is the path as the process's maps show it (for logs);
    `pid_seen` is the process it was found in."""

    family: str
    path: str
    dev: int
    ino: int
    pid_seen: int
    maps_path: str = ""

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)


@dataclass(frozen=True)
class OpenSSLTarget(TlsTarget):
    """An OpenSSL-compatible library (family "openssl" or "nodetls").
    `symbols` maps function name -> file offset for a uprobe on `path`."""

    symbols: dict[str, int] = field(default_factory=dict)
    flavour: str = "unknown"  # "openssl-3" | "openssl-1.1" | "boringssl" | "unknown"


@dataclass(frozen=True)
class GoTlsTarget(TlsTarget):
    """A Go binary with crypto/tls. All addresses are file offsets in `path`.

    `read_returns`/`write_returns` are the RET instructions of crypto/tls.(*Conn).Read /
    Write: the Go "return probes" (never uretprobes in Go). `regabi` says arguments and
    results are in registers (Go >= 1.17 on amd64). `fd_offsets` leads from a *tls.Conn
    to its socket fd: fd = *(int64*)(*(void**)(*(void**)(conn + conn_data) + fd_ptr) + sysfd),
    with the per-field offsets alongside and "source" saying where they came from."""

    go_version: str = ""
    write_entry: int = 0
    read_entry: int = 0
    read_returns: list[int] = field(default_factory=list)
    write_returns: list[int] = field(default_factory=list)
    regabi: bool = False
    fd_offsets: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# /proc/<pid>/maps
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MappedFile:
    """One file mapped executable in a process (first executable mapping of it)."""

    pathname: str   # as maps prints it, without " (deleted)"
    deleted: bool
    dev: int        # from maps (major:minor)
    ino: int
    start: int
    end: int


def parse_maps(text: str) -> list[MappedFile]:
    """Executable, file-backed mappings in maps `text`, one per (dev, inode), in order.
    Paths may contain spaces; anonymous and pseudo mappings ([vdso], …) are skipped."""
    out: list[MappedFile] = []
    seen: set[tuple[int, int]] = set()
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        addr, perms, _offset, dev, inode, pathname = parts
        if "x" not in perms or not pathname.startswith("/"):
            continue
        try:
            ino = int(inode)
            major, minor = (int(x, 16) for x in dev.split(":"))
            start, end = (int(x, 16) for x in addr.split("-"))
        except ValueError:
            continue
        if ino == 0:
            continue
        deleted = pathname.endswith(_DELETED)
        if deleted:
            pathname = pathname[: -len(_DELETED)]
        ident = (os.makedev(major, minor), ino)
        if ident in seen:
            continue
        seen.add(ident)
        out.append(MappedFile(pathname, deleted, ident[0], ino, start, end))
    return out


def _resolve(pid: int, mf: MappedFile) -> tuple[str, os.stat_result] | None:
    """A path from the agent's view that opens the file mapped as `mf`, and its stat."""
    candidates = []
    if not mf.deleted:
        candidates.append(f"/proc/{pid}/root{mf.pathname}")
    candidates.append(f"/proc/{pid}/map_files/{mf.start:x}-{mf.end:x}")
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_ino == mf.ino:
            return path, st
    return None


def _unescape_mountinfo(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo octal escapes
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class _OverlayMount:
    mount_point: str        # in the process's view
    root: str               # the overlay directory mounted there (usually "/")
    layers: tuple[str, ...]  # upperdir first, then lowerdirs, in lookup order


def parse_overlay_mounts(text: str) -> dict[int, list[_OverlayMount]]:
    """Overlay mounts in mountinfo `text`, by st_dev of the overlay superblock."""
    out: dict[int, list[_OverlayMount]] = {}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3 or rf[0] != "overlay":
            continue
        try:
            major, minor = (int(x) for x in lf[2].split(":"))
        except ValueError:
            continue
        upper: list[str] = []
        lower: list[str] = []
        for opt in re.split(r"(?<!\\),", rf[2]):
            key, _, value = opt.partition("=")
            if key == "upperdir":
                upper.append(value)
            elif key == "lowerdir":
                # layers are ":"-separated, a literal ":" is "\:"; "::" marks data-only
                # layers, which never hold a file's name and are skipped
                lower.extend(p for p in re.split(r"(?<!\\):", value) if p)
            elif key == "lowerdir+":
                lower.append(value)
        layers = tuple(_unescape_mountinfo(p).replace("\\:", ":").replace("\\,", ",") for p in upper + lower)
        if layers:
            out.setdefault(os.makedev(major, minor), []).append(
                _OverlayMount(_unescape_mountinfo(lf[4]), _unescape_mountinfo(lf[3]), layers)
            )
    return out


def _layer_identity(
    mounts: dict[int, list[_OverlayMount]],
    pathname: str,
    st: os.stat_result,
    roots: tuple[str, ...] = HOST_ROOTS,
) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the layer file behind overlay file `pathname` (a path in the
    process's view, stat `st`), or None if it is not on a known overlay or not found.
    The layer file must have the overlay file's inode number (overlayfs shows the real
    inode number of non-directories), so a whiteout or stale copy is never picked."""
    candidates = mounts.get(st.st_dev)
    if not candidates:
        return None
    for mount in sorted(candidates, key=lambda m: len(m.mount_point), reverse=True):
        mp = mount.mount_point.rstrip("/")
        if not (pathname == mp or pathname.startswith(mp + "/")):
            continue
        rel = os.path.join(mount.root, pathname[len(mp):].lstrip("/")).lstrip("/")
        for layer in mount.layers:
            for root in roots:
                try:
                    lst = os.stat(f"{root}{layer.rstrip('/')}/{rel}")
                except OSError:
                    continue
                if lst.st_ino == st.st_ino and lst.st_size == st.st_size:
                    return (lst.st_dev, lst.st_ino)
    return None


# --------------------------------------------------------------------------------------
# per-file analysis (cached)
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _OpenSSLInfo:
    symbols: dict[str, int]
    flavour: str
    node_exports: bool


@dataclass(frozen=True)
class _FileAnalysis:
    openssl: _OpenSSLInfo | None = None
    go: GoTlsInfo | None = None


def openssl_flavour(elf: ElfImage) -> str:
    """Which OpenSSL-compatible library `elf` is, from the API it defines."""
    if elf.find_symbols(BORINGSSL_MARKER_SYMBOLS):
        return "boringssl"
    soname = elf.soname() or ""
    if (
        soname.startswith("libssl.so.3")
        or elf.string_table_contains(b"OPENSSL_3.0.0")  # symbol version of libssl.so.3
        or elf.find_symbols(("SSL_CTX_new_ex",))  # API new in 3.0 (static copies: Node)
    ):
        return "openssl-3"
    if (
        soname.startswith("libssl.so.1.1")
        or elf.string_table_contains(b"OPENSSL_1_1_0")
        # 1.1.1 added SSL_read_ex; OPENSSL_init_ssl is 1.1.0+ (LibreSSL has it too, but
        # not SSL_read_ex before 3.x: a LibreSSL may still land here)
        or (elf.find_symbols(("OPENSSL_init_ssl",)) and elf.find_symbols(("SSL_read_ex",)))
    ):
        return "openssl-1.1"
    return "unknown"


def _direct_calls(elf: ElfImage, vaddr: int, limit: int = 160) -> list[int]:
    """Targets of the direct call/jmp instructions at the start of the function at
    `vaddr`, up to its first RET (or `limit` bytes)."""
    import capstone  # only x86-64 is analysed; other machines keep the exported hooks

    if elf.machine != EM_X86_64:
        return []
    try:
        code = elf.read_vaddr(vaddr, limit)
    except ValueError:
        return []
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out = []
    for _address, _size, mnemonic, op in md.disasm_lite(code, vaddr):
        name = mnemonic.rsplit(" ", 1)[-1]
        if name in ("call", "jmp") and op.startswith("0x"):
            out.append(int(op, 16))
        elif name in ("ret", "retq"):
            break
    return out


def find_internal_rw(elf: ElfImage, syms: dict) -> dict[str, int]:
    """The library-internal functions that SSL_read/SSL_read_ex and SSL_write/SSL_write_ex
    both call (OpenSSL 1.1.1 and 3.x: ssl_read_internal, ssl_write_internal), as file
    offsets, when the exported pairs agree on exactly one callee each; else {}.

    Hooking those instead of the four exports covers the same calls with the same number
    of probe hits, plus OpenSSL's own BIO_f_ssl path (`openssl s_server -www`, apps using
    SSL BIOs), which reaches them without passing through any export. Their signature is
    the _ex one: (SSL *, buf, size_t num, size_t *processed) -> 1 on success.
    """
    found = {}
    exports = {sym.vaddr for sym in syms.values()}
    for plain, ex, key in (("SSL_read", "SSL_read_ex", "ssl_read_internal"),
                           ("SSL_write", "SSL_write_ex", "ssl_write_internal")):
        if plain not in syms or ex not in syms:
            return {}
        common = set(_direct_calls(elf, syms[plain].vaddr)) & set(_direct_calls(elf, syms[ex].vaddr))
        common = {t for t in common if elf.is_executable_vaddr(t) and t not in exports}
        if len(common) != 1:
            return {}
        try:
            found[key] = elf.vaddr_to_offset(common.pop())
        except ValueError:
            return {}
    if found["ssl_read_internal"] == found["ssl_write_internal"]:
        return {}
    return found


def analyze_openssl(elf: ElfImage) -> _OpenSSLInfo | None:
    """SSL_* file offsets when `elf` defines SSL_read and SSL_write, else None; plus the
    internal read/write functions when they can be found (see find_internal_rw)."""
    syms = elf.find_symbols(OPENSSL_SYMBOLS)
    if not all(name in syms for name in OPENSSL_REQUIRED):
        return None
    try:
        internal = find_internal_rw(elf, syms)
    except Exception:  # odd code: keep the exported hooks
        internal = {}
    return _OpenSSLInfo(
        symbols={**{name: sym.offset for name, sym in syms.items()}, **internal},
        flavour=openssl_flavour(elf),
        node_exports=bool(elf.find_symbols(NODE_MARKER_SYMBOLS, tables=(".dynsym",))),
    )


def analyze_file(path: str) -> _FileAnalysis:
    """What TLS implementation `path` contains. Raises OSError/ElfError when the file
    cannot be read; a Go binary whose tables are unreadable is logged and left out."""
    with ElfImage(path) as elf:
        openssl = analyze_openssl(elf)
        go = None
        try:
            go = analyze_go_binary(elf)
        except GoBinaryError as exc:
            log.warning("Go TLS hooks unavailable for %s: %s", path, exc)
        return _FileAnalysis(openssl, go)


class _AnalysisCache:
    """LRU of _FileAnalysis by (dev, ino, size, mtime_ns); thread-safe."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._items: OrderedDict[tuple, _FileAnalysis] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, path: str) -> _FileAnalysis:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        result = analyze_file(path)
        with self._lock:
            self._items[key] = result
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return result

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_cache = _AnalysisCache()


def clear_cache() -> None:
    """Forget every analysed file (tests; or after a package upgrade storm)."""
    _cache.clear()


# --------------------------------------------------------------------------------------
# scanning
# --------------------------------------------------------------------------------------

def _exe_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/exe").st_ino
    except OSError:
        return None


def _read_overlay_mounts(pid: int) -> dict[int, list[_OverlayMount]]:
    try:
        with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return parse_overlay_mounts(f.read())
    except OSError:
        return {}


def _is_node(info: _OpenSSLInfo, mf: MappedFile, exe_ino: int | None) -> bool:
    if info.node_exports:
        return True
    return mf.ino == exe_ino and bool(_NODE_EXE_NAME.match(os.path.basename(mf.pathname)))


def scan_process(
    pid: int,
    families: Iterable[str] = FAMILIES,
    *,
    skip: Iterable[tuple[int, int]] = (),
) -> list[TlsTarget]:
    """TLS targets mapped in process `pid`, one per file (dev, ino), in maps order.

    `families` limits the result to "openssl", "nodetls" and/or "gotls"; `skip` holds
    (dev, ino) identities already known to the caller, which are not analysed again.
    Returns [] for a process that does not exist (any more) or cannot be read; never
    raises for files that vanish or are not ELF. Raises ValueError for an unknown family.
    """
    families = frozenset(families)
    unknown = families - FAMILIES
    if unknown:
        raise ValueError(f"unknown TLS families {sorted(unknown)}; known: {sorted(FAMILIES)}")
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
            maps_text = f.read()
    except OSError:
        return []
    exe_ino = _exe_inode(pid)
    overlays: dict[int, list[_OverlayMount]] | None = None
    skip = set(skip)
    targets: list[TlsTarget] = []
    seen: set[tuple[int, int]] = set()
    for mf in parse_maps(maps_text):
        resolved = _resolve(pid, mf)
        if resolved is None:
            log.debug("pid %d: cannot open %s (gone?)", pid, mf.pathname)
            continue
        path, st = resolved
        ident = (st.st_dev, st.st_ino)
        if not path.startswith(f"/proc/{pid}/map_files/"):
            if overlays is None:
                overlays = _read_overlay_mounts(pid)
            ident = _layer_identity(overlays, mf.pathname, st) or ident
        if ident in seen or ident in skip:
            continue
        seen.add(ident)
        try:
            analysis = _cache.get((*ident, st.st_size, st.st_mtime_ns), path)
        except (OSError, ElfError) as exc:
            log.debug("pid %d: skipping %s: %s", pid, path, exc)
            continue
        except Exception as exc:  # a malformed file must not stop the scan
            log.warning("pid %d: error analysing %s: %r", pid, path, exc)
            continue
        common = dict(path=path, dev=ident[0], ino=ident[1], pid_seen=pid, maps_path=mf.pathname)
        if analysis.openssl is not None:
            family = "nodetls" if _is_node(analysis.openssl, mf, exe_ino) else "openssl"
            if family in families:
                targets.append(
                    OpenSSLTarget(
                        family=family,
                        symbols=dict(analysis.openssl.symbols),
                        flavour=analysis.openssl.flavour,
                        **common,
                    )
                )
                continue
        if analysis.go is not None and "gotls" in families:
            go = analysis.go
            targets.append(
                GoTlsTarget(
                    family="gotls",
                    go_version=go.go_version,
                    write_entry=go.write_entry,
                    read_entry=go.read_entry,
                    read_returns=list(go.read_returns),
                    write_returns=list(go.write_returns),
                    regabi=go.regabi,
                    fd_offsets=dict(go.fd_offsets),
                    **common,
                )
            )
    return targets


def _all_pids() -> list[int]:
    try:
        return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    except OSError:
        return []


def discover(
    pids: Iterable[int] | None = None,
    families: Iterable[str] = FAMILIES,
) -> dict[tuple[int, int], TlsTarget]:
    """TLS targets of every process (or of `pids`), keyed by the file's (dev, ino):
    each file once, with the first process it was seen in. The calling process is
    skipped. Processes that vanish mid-scan are simply absent. Raises ValueError for an
    unknown family (before scanning)."""
    families = frozenset(families)
    if families - FAMILIES:
        raise ValueError(f"unknown TLS families {sorted(families - FAMILIES)}; known: {sorted(FAMILIES)}")
    me = os.getpid()
    found: dict[tuple[int, int], TlsTarget] = {}
    for pid in _all_pids() if pids is None else pids:
        if pid == me:
            continue
        try:
            for target in scan_process(pid, families, skip=found.keys()):
                found.setdefault(target.key, target)
        except Exception as exc:  # belt and braces: one odd process must not end discovery
            log.warning("pid %s: TLS scan failed: %r", pid, exc)
    return found
