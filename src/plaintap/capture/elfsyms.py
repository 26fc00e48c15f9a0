"""Just enough ELF reading to place uprobes: symbols, segments, file offsets.

A uprobe is placed on a *file* at a *file offset*, not at a virtual address: the kernel
finds every mapping of that inode and puts a breakpoint at the page that offset lands
on. So for a symbol at virtual address V the offset is ``V - p_vaddr + p_offset`` of
the PT_LOAD segment that contains V (for most shared libraries the two numbers happen
to be equal, for most executables they are not — /usr/bin/node is one).

Symbol lookup is on the hot path of a host-wide scan (node's ``.dynsym`` + ``.symtab``
hold ~180k entries), so it does not walk symbols one by one in Python: it finds the
wanted names in the string table with ``bytes.find`` and then searches the symbol table
for the 4-byte string-table index of each hit. pyelftools is used for the headers and
for DWARF, where speed does not matter.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Iterable

from elftools.elf.elffile import ELFFile

PT_LOAD = "PT_LOAD"
PF_X = 0x1
STT_FUNC = 2
STB_LOCAL = 0
SHN_UNDEF = 0

SYMBOL_TABLES = (".dynsym", ".symtab")


class ElfError(Exception):
    """The file is not an ELF we can read (truncated, not ELF, unsupported layout)."""


@dataclass(frozen=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int

    def contains_vaddr(self, vaddr: int) -> bool:
        # Only the part backed by the file: .bss (memsz past filesz) has no file offset.
        return self.vaddr <= vaddr < self.vaddr + self.filesz


@dataclass(frozen=True)
class Section:
    name: str
    addr: int
    offset: int
    size: int
    type: str


@dataclass(frozen=True)
class Symbol:
    name: str
    vaddr: int
    size: int
    offset: int  # file offset, what a uprobe wants
    table: str   # ".dynsym" (exported) or ".symtab"
    binding: int


class ElfImage:
    """A read-only view of one ELF file: segments, sections, symbols, bytes by vaddr.

    Use as a context manager. Raises ElfError (or OSError) from the constructor when
    the file cannot be opened or is not an ELF.
    """

    def __init__(self, path: str):
        self.path = path
        self._tables: dict[str, tuple[bytes, bytes, int] | None] = {}
        self._file = open(path, "rb")
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size < 64:
                raise ElfError(f"{path}: too small to be ELF")
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            if self._mm[:4] != b"\x7fELF":
                raise ElfError(f"{path}: not an ELF file")
            try:
                self.elf = ELFFile(self._file)
                self.little_endian = self.elf.little_endian
                self.elfclass = self.elf.elfclass
                self.machine = self.elf["e_machine"]
                self.segments = [
                    Segment(s["p_vaddr"], s["p_offset"], s["p_filesz"], s["p_memsz"], s["p_flags"])
                    for s in self.elf.iter_segments()
                    if s["p_type"] == PT_LOAD
                ]
                self.sections = {}
                for s in self.elf.iter_sections():
                    if s.name and s.name not in self.sections:
                        self.sections[s.name] = Section(
                            s.name, s["sh_addr"], s["sh_offset"], s["sh_size"], s["sh_type"]
                        )
            except ElfError:
                raise
            except Exception as exc:  # pyelftools raises assorted errors on damaged files
                raise ElfError(f"{path}: cannot parse ELF headers: {exc}") from exc
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        mm = getattr(self, "_mm", None)
        if mm is not None:
            mm.close()
            self._mm = None
        self._file.close()

    def __enter__(self) -> "ElfImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- raw access ------------------------------------------------------------------
    @property
    def data(self) -> mmap.mmap:
        return self._mm

    def section_bytes(self, name: str) -> bytes | None:
        sec = self.sections.get(name)
        if sec is None or sec.type == "SHT_NOBITS":
            return None
        return self._mm[sec.offset : sec.offset + sec.size]

    def vaddr_to_offset(self, vaddr: int) -> int:
        """File offset of virtual address `vaddr`. Raises ValueError when no PT_LOAD
        segment backs it with file bytes."""
        for seg in self.segments:
            if seg.contains_vaddr(vaddr):
                return vaddr - seg.vaddr + seg.offset
        raise ValueError(f"{self.path}: vaddr {vaddr:#x} is not in any file-backed PT_LOAD segment")

    def read_vaddr(self, vaddr: int, size: int) -> bytes:
        """Bytes at virtual address `vaddr` as stored in the file. Raises ValueError when
        the range is not wholly file-backed."""
        off = self.vaddr_to_offset(vaddr)
        end_ok = any(s.contains_vaddr(vaddr) and vaddr + size <= s.vaddr + s.filesz for s in self.segments)
        if not end_ok:
            raise ValueError(f"{self.path}: [{vaddr:#x}, +{size}) crosses the end of its segment")
        return self._mm[off : off + size]

    def is_executable_vaddr(self, vaddr: int) -> bool:
        return any(s.contains_vaddr(vaddr) and s.flags & PF_X for s in self.segments)

    # -- symbols ---------------------------------------------------------------------
    def _sym_format(self) -> tuple[struct.Struct, int, int, int, int, int]:
        """(struct, idx of st_name, st_info, st_shndx, st_value, st_size)."""
        e = "<" if self.little_endian else ">"
        if self.elfclass == 64:
            return struct.Struct(e + "IBBHQQ"), 0, 1, 3, 4, 5
        return struct.Struct(e + "IIIBBH"), 0, 3, 5, 1, 2

    def find_symbols(
        self, names: Iterable[str], tables: Iterable[str] = SYMBOL_TABLES
    ) -> dict[str, Symbol]:
        """Defined function symbols among `names`, looked up in `tables` in order (the
        first table that defines a name wins, so exports beat local symbols).

        Undefined entries (imports, e.g. libcurl's reference to SSL_read) and IFUNC
        resolvers are ignored. Versioned names in .symtab ("SSL_read@@OPENSSL_3.0.0")
        match their plain name. Names whose address has no file offset are skipped.
        """
        wanted = [n for n in dict.fromkeys(names)]
        found: dict[str, Symbol] = {}
        for table in tables:
            missing = [n for n in wanted if n not in found]
            if not missing:
                break
            for sym in self._lookup_in_table(table, missing):
                found.setdefault(sym.name, sym)
        return found

    def _table_bytes(self, table: str) -> tuple[bytes, bytes, int] | None:
        """(symbol table, its string table, entry size), read once per ElfImage."""
        cache = self._tables
        if table in cache:
            return cache[table]
        result = None
        symsec = self.sections.get(table)
        if symsec is not None and symsec.type in ("SHT_SYMTAB", "SHT_DYNSYM"):
            try:
                elf_sec = self.elf.get_section_by_name(table)
                strhdr = self.elf.get_section(elf_sec["sh_link"])
                strtab = self._mm[strhdr["sh_offset"] : strhdr["sh_offset"] + strhdr["sh_size"]]
                symtab = self._mm[symsec.offset : symsec.offset + symsec.size]
                result = (symtab, strtab, elf_sec["sh_entsize"])
            except Exception:
                result = None
        cache[table] = result
        return result

    def _lookup_in_table(self, table: str, names: list[str]) -> list[Symbol]:
        tables = self._table_bytes(table)
        if tables is None:
            return []
        symtab, strtab, entsize = tables
        fmt, _i_name, i_info, i_shndx, i_value, i_size = self._sym_format()
        if entsize != fmt.size:
            return []
        e = "<" if self.little_endian else ">"

        # string-table index -> wanted name. The linker may share suffixes, so any
        # occurrence (not just after a NUL) can be the start of a symbol's name.
        name_at: dict[int, str] = {}
        for name in names:
            raw = name.encode()
            for term in (b"\0", b"@"):
                needle = raw + term
                pos = strtab.find(needle)
                while pos != -1:
                    name_at[pos] = name
                    pos = strtab.find(needle, pos + 1)

        best: dict[str, tuple[int, Symbol]] = {}
        for str_index, name in name_at.items():
            needle = struct.pack(e + "I", str_index)
            pos = symtab.find(needle)
            while pos != -1:
                # st_name is the first field of both Elf32_Sym and Elf64_Sym
                if pos % entsize == 0:
                    ent = fmt.unpack_from(symtab, pos)
                    info = ent[i_info]
                    if (
                        info & 0xF == STT_FUNC
                        and ent[i_shndx] != SHN_UNDEF
                        and ent[i_value] != 0
                    ):
                        full = _cstring(strtab, str_index)
                        # prefer global over local, default version ("@@"/plain) over "@"
                        non_default_version = "@" in full and "@@" not in full
                        rank = (0 if info >> 4 != STB_LOCAL else 2) + (1 if non_default_version else 0)
                        try:
                            off = self.vaddr_to_offset(ent[i_value])
                        except ValueError:
                            off = None
                        if off is not None and (name not in best or rank < best[name][0]):
                            best[name] = (
                                rank,
                                Symbol(name, ent[i_value], ent[i_size], off, table, info >> 4),
                            )
                pos = symtab.find(needle, pos + 1)
        return [sym for _, sym in best.values()]

    def string_table_contains(self, needle: bytes, table: str = ".dynsym") -> bool:
        """True if the string table linked to `table` contains `needle` (e.g. a
        symbol-version name such as b"OPENSSL_3.0.0")."""
        tables = self._table_bytes(table)
        return tables is not None and needle in tables[1]

    def soname(self) -> str | None:
        dyn = self.elf.get_section_by_name(".dynamic")
        if dyn is None:
            return None
        try:
            for tag in dyn.iter_tags():
                if tag.entry.d_tag == "DT_SONAME":
                    return tag.soname
        except Exception:
            return None
        return None


def _cstring(buf: bytes, start: int) -> str:
    end = buf.find(b"\0", start)
    if end == -1:
        end = len(buf)
    return buf[start:end].decode("utf-8", "replace")
