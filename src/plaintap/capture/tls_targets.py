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
* Files are opened once (safeopen.py, `open_mapped`): by name inside the process's own
  root (/proc/<pid>/root, openat2 with no symlinks and no magic links), so a process in
  another mount namespace (a container) is resolved inside its own filesystem; it must
  be a regular file with the inode maps shows. A file deleted or replaced since it was
  mapped, or whose name now leads elsewhere, is opened through
  /proc/<pid>/map_files/<start>-<end>, which is the mapped file itself. Everything after
  — analysis (`analyze_image`, from the descriptor with bounded reads) and the uprobe
  attach — uses that descriptor, never the name again.
* Analysis results are plain data (what the agent's sandboxed worker sends back,
  checked by `validate_result`), cached by (dev, ino, size, mtime).

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
from typing import Callable, Iterable

from .elfsyms import ElfError, ElfImage
from .gotls import EM_X86_64, GoBinaryError, GoTlsInfo, analyze_go_binary
from .safeopen import OpenRefused, open_mapped_file

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


@dataclass
class OpenedFile:
    """A mapped file opened once (safeopen.open_mapped_file): `fd` is the caller's to
    close; `ident` the (dev, ino) uprobes attached through it land on (the layer file's
    for overlayfs); `path` says how it was opened, for logs and tools."""

    fd: int
    st: os.stat_result
    ident: tuple[int, int]
    path: str
    name_refusal: str | None = None

    @property
    def key(self) -> tuple[int, int, int, int]:
        """What an analysis is cached by: identity, size and mtime."""
        return (*self.ident, self.st.st_size, self.st.st_mtime_ns)


def open_mapped(pid: int, mf: MappedFile, overlays: Callable[[], dict]) -> OpenedFile:
    """Open the file `mf` of process `pid` safely (see safeopen). `overlays()` gives the
    process's overlay mounts, read on first need. Raises OpenRefused."""
    fd, st, how, name_refusal = open_mapped_file(pid, mf.pathname, mf.deleted, mf.dev, mf.ino, mf.start, mf.end)
    if how == "root":
        path = f"/proc/{pid}/root{mf.pathname}"
        ident = _layer_identity(overlays(), mf.pathname, st) or (st.st_dev, st.st_ino)
    else:
        path = f"/proc/{pid}/map_files/{mf.start:x}-{mf.end:x}"
        ident = (st.st_dev, st.st_ino)
    return OpenedFile(fd, st, ident, path, name_refusal)


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


_DISASSEMBLERS: dict = {}


def disassembler(arch: str):
    """One capstone instance per architecture ("x86_64", "arm64"), made once: making one
    costs ~1.5 ms, more than disassembling a function."""
    md = _DISASSEMBLERS.get(arch)
    if md is None:
        import capstone

        md = (capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64) if arch == "x86_64"
              else capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM))
        _DISASSEMBLERS[arch] = md
    return md


def _x86_64():
    return disassembler("x86_64")


def _direct_calls(elf: ElfImage, vaddr: int, limit: int = 160) -> list[int]:
    """Targets of the direct call/jmp instructions at the start of the function at
    `vaddr`, up to its first RET (or `limit` bytes)."""
    if elf.machine != EM_X86_64:   # only x86-64 is analysed; others keep the exported hooks
        return []
    try:
        code = elf.read_vaddr(vaddr, limit)
    except ValueError:
        return []
    md = _x86_64()
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
    cannot be read; a Go binary whose tables are unreadable is logged and left out.
    (Tests and tools; the agent analyses descriptors in its worker, see analysis.py.)"""
    with ElfImage(path) as elf:
        openssl = analyze_openssl(elf)
        go = None
        try:
            go = analyze_go_binary(elf)
        except GoBinaryError as exc:
            log.warning("Go TLS hooks unavailable for %s: %s", path, exc)
        return _FileAnalysis(openssl, go)


def _decodes_at(elf: ElfImage, offset: int) -> bool:
    """True when an instruction decodes at file `offset` (x86-64; other machines are
    only checked for segment membership): a symbol pointing into the middle of nowhere
    is not a place for a breakpoint."""
    if elf.machine != EM_X86_64:
        return True
    try:
        code = elf.read_exact(offset, max(0, min(16, len(elf.data) - offset)))
    except ElfError:
        return False
    return any(True for _ in _x86_64().disasm_lite(code, 0, 1))


def analyze_image(elf: ElfImage) -> dict:
    """Everything the agent needs to hook `elf`, as plain data (what the analysis worker
    sends back): {"exec_ranges": [[start, end], ...] (file offsets of executable
    segments), "openssl": {"symbols", "flavour", "node_exports"} | None, "go": {...} |
    None, "go_error": [reason, message] | None}. Every offset lies in an executable
    segment at an instruction boundary; symbols that do not are left out (and without
    SSL_read/SSL_write the file is no OpenSSL target). Raises ElfError/GoBinaryError
    (with a `reason`) when the file cannot be analysed within the limits."""
    ranges = elf.executable_ranges()

    def ok(off: int) -> bool:
        return any(a <= off < b for a, b in ranges) and _decodes_at(elf, off)

    out: dict = {"exec_ranges": [list(r) for r in ranges], "openssl": None, "go": None, "go_error": None}
    info = analyze_openssl(elf)
    if info is not None:
        symbols = {name: off for name, off in info.symbols.items() if ok(off)}
        if all(name in symbols for name in OPENSSL_REQUIRED):
            out["openssl"] = {"symbols": symbols, "flavour": info.flavour, "node_exports": info.node_exports}
    try:
        go = analyze_go_binary(elf)
    except GoBinaryError as exc:
        if out["openssl"] is None:
            raise
        out["go_error"] = [exc.reason, str(exc)]
        go = None
    if go is not None:
        offsets = [go.read_entry, go.write_entry, *go.read_returns, *go.write_returns]
        if not all(ok(o) for o in offsets):
            raise GoBinaryError(f"{elf.path}: crypto/tls offsets outside executable code", "bad_offsets")
        out["go"] = {"go_version": go.go_version, "regabi": go.regabi, "read_entry": go.read_entry,
                     "write_entry": go.write_entry, "read_returns": list(go.read_returns),
                     "write_returns": list(go.write_returns),
                     "fd_offsets": {k: v for k, v in go.fd_offsets.items()}}
    return out


class AnalysisError(Exception):
    """A file that was not analysed: `reason` is the refusal counter's label."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


MAX_RESULT_OFFSETS = 256


def validate_result(result: object, file_size: int) -> dict:
    """Check an analysis result (plain data from the worker) before anything is
    attached from it: types, counts, and every offset inside an executable segment
    within the file. Returns it; raises AnalysisError("bad_offsets")."""
    def bad(why: str) -> AnalysisError:
        return AnalysisError(f"analysis result rejected: {why}", "bad_offsets")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(result, dict):
        raise bad("not an object")
    ranges = result.get("exec_ranges")
    if not isinstance(ranges, list) or len(ranges) > 64:
        raise bad("exec_ranges")
    spans = []
    for r in ranges:
        if not (isinstance(r, list) and len(r) == 2 and all(is_int(v) for v in r) and 0 <= r[0] < r[1] <= file_size):
            raise bad(f"exec range {r!r}")
        spans.append((r[0], r[1]))

    def check(off) -> None:
        if not is_int(off) or not any(a <= off < b for a, b in spans):
            raise bad(f"offset {off!r} outside executable code")

    openssl = result.get("openssl")
    if openssl is not None:
        syms = openssl.get("symbols") if isinstance(openssl, dict) else None
        if not isinstance(syms, dict) or len(syms) > 32 or not all(n in syms for n in OPENSSL_REQUIRED):
            raise bad("openssl symbols")
        for name, off in syms.items():
            if not isinstance(name, str):
                raise bad("symbol name")
            check(off)
        if not isinstance(openssl.get("flavour"), str) or not isinstance(openssl.get("node_exports"), bool):
            raise bad("openssl facts")
    go = result.get("go")
    if go is not None:
        if not isinstance(go, dict):
            raise bad("go")
        rets = [*(go.get("read_returns") or []), *(go.get("write_returns") or [])]
        if len(rets) > MAX_RESULT_OFFSETS:
            raise bad("too many RET sites")
        for off in (go.get("read_entry"), go.get("write_entry"), *rets):
            check(off)
        fo = go.get("fd_offsets")
        if not isinstance(fo, dict) or not all(is_int(fo.get(k)) and 0 <= fo[k] < 4096
                                               for k in ("conn_data", "fd_ptr", "sysfd") if k in fo):
            raise bad("go fd offsets")
        if not isinstance(go.get("go_version"), str) or not isinstance(go.get("regabi"), bool):
            raise bad("go facts")
    return result


def analyze_in_process(fd: int, name: str) -> dict:
    """Analyse open file `fd` here (tools and tests; the agent uses its sandboxed
    worker, analysis.py). Returns validated plain data; raises AnalysisError."""
    try:
        with ElfImage(fd, name) as elf:
            result = analyze_image(elf)
    except (ElfError, GoBinaryError) as exc:
        raise AnalysisError(str(exc), getattr(exc, "reason", "malformed")) from exc
    return validate_result(result, os.fstat(fd).st_size)


class _AnalysisCache:
    """LRU of analysis results (plain data) by (dev, ino, size, mtime_ns); thread-safe."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self._items: OrderedDict[tuple, dict] = OrderedDict()
        self._lock = threading.Lock()

    def peek(self, key: tuple) -> dict | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key: tuple, result: dict) -> None:
        with self._lock:
            self._items[key] = result
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, key: tuple, fd: int, name: str) -> dict:
        hit = self.peek(key)
        if hit is None:
            hit = analyze_in_process(fd, name)
            self.put(key, hit)
        return hit

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

MAX_MAPS_BYTES = 8 << 20


def read_maps(pid: int) -> str | None:
    """/proc/<pid>/maps (at most MAX_MAPS_BYTES), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            return f.read(MAX_MAPS_BYTES).decode("utf-8", "surrogateescape")
    except OSError:
        return None


def exe_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/exe").st_ino
    except OSError:
        return None


def read_overlay_mounts(pid: int) -> dict[int, list[_OverlayMount]]:
    try:
        with open(f"/proc/{pid}/mountinfo", "rb") as f:
            return parse_overlay_mounts(f.read(MAX_MAPS_BYTES).decode("utf-8", "surrogateescape"))
    except OSError:
        return {}


def _is_node(node_exports: bool, mf: MappedFile, exe_ino: int | None) -> bool:
    if node_exports:
        return True
    return mf.ino == exe_ino and bool(_NODE_EXE_NAME.match(os.path.basename(mf.pathname)))


def target_from_result(result: dict, families: frozenset, *, path: str, ident: tuple[int, int], pid_seen: int,
                       maps_path: str, is_exe_named_node: bool = False) -> TlsTarget | None:
    """The target a (validated) analysis result gives, restricted to `families`; None
    when the file is no TLS implementation we hook."""
    common = dict(path=path, dev=ident[0], ino=ident[1], pid_seen=pid_seen, maps_path=maps_path)
    openssl = result.get("openssl")
    if openssl is not None:
        family = "nodetls" if openssl["node_exports"] or is_exe_named_node else "openssl"
        if family in families:
            return OpenSSLTarget(family=family, symbols=dict(openssl["symbols"]), flavour=openssl["flavour"], **common)
    go = result.get("go")
    if go is not None and "gotls" in families:
        return GoTlsTarget(family="gotls", go_version=go["go_version"], write_entry=go["write_entry"],
                           read_entry=go["read_entry"], read_returns=list(go["read_returns"]),
                           write_returns=list(go["write_returns"]), regabi=go["regabi"],
                           fd_offsets=dict(go["fd_offsets"]), **common)
    return None


def _check_families(families: Iterable[str]) -> frozenset:
    families = frozenset(families)
    unknown = families - FAMILIES
    if unknown:
        raise ValueError(f"unknown TLS families {sorted(unknown)}; known: {sorted(FAMILIES)}")
    return families


def scan_process(
    pid: int,
    families: Iterable[str] = FAMILIES,
    *,
    skip: Iterable[tuple[int, int]] = (),
) -> list[TlsTarget]:
    """TLS targets mapped in process `pid`, one per file (dev, ino), in maps order,
    analysed here (tools, tests; the agent analyses in its worker: tls_attach.py).

    `families` limits the result to "openssl", "nodetls" and/or "gotls"; `skip` holds
    (dev, ino) identities already known to the caller, which are not analysed again.
    Returns [] for a process that does not exist (any more) or cannot be read; never
    raises for files that vanish, are swapped, or are not ELF. Raises ValueError for an
    unknown family.
    """
    families = _check_families(families)
    maps_text = read_maps(pid)
    if maps_text is None:
        return []
    exe_ino = exe_inode(pid)
    overlays: dict | None = None

    def get_overlays() -> dict:
        nonlocal overlays
        if overlays is None:
            overlays = read_overlay_mounts(pid)
        return overlays

    skip = set(skip)
    targets: list[TlsTarget] = []
    seen: set[tuple[int, int]] = set()
    for mf in parse_maps(maps_text):
        try:
            opened = open_mapped(pid, mf, get_overlays)
        except OpenRefused as exc:
            log.debug("pid %d: not opening %s: %s", pid, mf.pathname, exc)
            continue
        try:
            if opened.ident in seen or opened.ident in skip:
                continue
            seen.add(opened.ident)
            try:
                result = _cache.get(opened.key, opened.fd, opened.path)
            except AnalysisError as exc:
                log.debug("pid %d: skipping %s: %s", pid, opened.path, exc)
                continue
            t = target_from_result(result, families, path=opened.path, ident=opened.ident, pid_seen=pid,
                                   maps_path=mf.pathname,
                                   is_exe_named_node=_is_node(False, mf, exe_ino))
            if t is not None:
                targets.append(t)
        finally:
            os.close(opened.fd)
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
    families = _check_families(families)
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
