"""Hostile ELF files made from real ones, for the analysis limits (issue 9): each is a
real libssl or Go binary with one thing changed, so analysis gets exactly as far as the
trap. Used by the unit tests and the kernel end-to-end tests (which map them)."""
from __future__ import annotations

import os
import re
import shutil
import struct
from pathlib import Path

from elftools.elf.elffile import ELFFile

SHF_COMPRESSED = 0x800
TLS_READ = "crypto/tls.(*Conn).Read"


def _section_header_pos(path: Path, name: str) -> tuple[int, dict]:
    """(file offset of section `name`'s header, the header) of a 64-bit ELF."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 64 and elf.little_endian
        for i in range(elf.num_sections()):
            sec = elf.get_section(i)
            if sec.name == name:
                return elf["e_shoff"] + i * elf["e_shentsize"], dict(sec.header)
    raise AssertionError(f"{path} has no {name}")


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def sparse_dynsym(src: str | Path, dest: Path, size: int = 64 << 30) -> Path:
    """`src` (a libssl) whose .dynsym claims `size` bytes at the end of a sparse file
    that long: reading the table whole would copy 64 GiB."""
    shutil.copy(src, dest)
    hdr_at, hdr = _section_header_pos(dest, ".dynsym")
    start = (os.path.getsize(dest) + 0xFFF) & ~0xFFF
    _patch(dest, hdr_at + 24, struct.pack("<QQ", start, size))     # sh_offset, sh_size
    os.truncate(dest, start + size)
    return dest


def _symbol_entry(path: Path, name: str) -> tuple[int, int, int]:
    """(file offset of `name`'s .symtab entry, its st_value, the file offset of st_value)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        for i, sym in enumerate(symtab.iter_symbols()):
            if sym.name == name:
                vaddr = sym["st_value"]
                for seg in elf.iter_segments():
                    if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_filesz"]:
                        return symtab["sh_offset"] + i * symtab["sh_entsize"], vaddr, \
                            vaddr - seg["p_vaddr"] + seg["p_offset"]
    raise AssertionError(f"{path}: no symbol {name}")


def go_ret_flood(src: str | Path, dest: Path, rets: int = 100_000) -> Path:
    """A Go binary (with .symtab) whose crypto/tls.(*Conn).Read is `rets` RET
    instructions long: one uprobe per RET would be one perf fd each."""
    shutil.copy(src, dest)
    entry_at, _vaddr, code_at = _symbol_entry(dest, TLS_READ)
    _patch(dest, entry_at + 16, struct.pack("<Q", rets))       # st_size
    _patch(dest, code_at, b"\xc3" * rets)
    return dest


def _uleb(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def go_dwarf_loop(src: str | Path, dest: Path, unknown_version: bool = False) -> Path:
    """A Go binary whose DWARF (.debug_info, .debug_abbrev, rewritten uncompressed at
    the end of the file) has a crypto/tls.Conn DIE whose DW_AT_sibling points at itself:
    a DIE walk that trusts siblings never ends. DWARF is read only for a Go release line
    the offsets table lacks: `unknown_version` rewrites the version strings in place
    (`go1.NN.` → `go1.98.`, same length) so an agent has to read it."""
    shutil.copy(src, dest)
    if unknown_version:
        data = Path(dest).read_bytes()
        Path(dest).write_bytes(re.sub(rb"go1\.[0-9]{2}\.", b"go1.98.", data))
    abbrev = (
        _uleb(1) + _uleb(0x11) + b"\x01" + b"\x03\x08" + b"\x00\x00"            # compile_unit, children, name:string
        + _uleb(2) + _uleb(0x13) + b"\x01" + b"\x03\x08" + b"\x01\x13" + b"\x00\x00"  # struct, children, name, sibling:ref4
        + b"\x00"
    )
    header_len = 11                                                           # DWARF 4, 32-bit
    cu_die = _uleb(1) + b"runtime\x00"
    struct_at = header_len + len(cu_die)
    struct_die = _uleb(2) + b"crypto/tls.Conn\x00" + struct.pack("<I", struct_at)   # sibling: itself
    body = cu_die + struct_die + b"\x00" + b"\x00"                           # its children end; CU's end
    info = struct.pack("<IHIB", 7 + len(body), 4, 0, 8) + body
    for name, data in ((".debug_abbrev", abbrev), (".debug_info", info)):
        hdr_at, hdr = _section_header_pos(dest, name)
        at = os.path.getsize(dest)
        with open(dest, "ab") as f:
            f.write(data)
        _patch(dest, hdr_at + 8, struct.pack("<Q", hdr["sh_flags"] & ~SHF_COMPRESSED))
        _patch(dest, hdr_at + 24, struct.pack("<QQ", at, len(data)))
    return dest
