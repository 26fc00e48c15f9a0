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

Files are read with bounded `pread` from one open descriptor, never mmapped (a file
truncated under a mapping kills the reader with SIGBUS) and never reopened by name: the
agent opens a target once (capture/safeopen.py) and everything reads that descriptor.
Every read is capped (MAX_SECTION_BYTES per piece, a total budget per image), so a
sparse file claiming a 64 GiB symbol table is refused, not copied; a refusal is an
ElfError whose `reason` names the limit.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from dataclasses import dataclass
from typing import Iterable

from elftools.elf import elffile as _elffile
from elftools.elf import enums as _enums
from elftools.elf.elffile import ELFFile
from elftools.elf.structs import ELFStructs as _ELFStructs


class _ReusedELFStructs(_ELFStructs):
    """pyelftools builds its ~200 header parsers anew for every file it opens (~7 ms,
    more than the rest of a Go binary's analysis); they depend only on the ELF kind, so
    build them once per kind and reuse them (the parsers hold no per-file state)."""

    _built: dict = {}

    def create_advanced_structs(self, e_type=None, e_machine=None, e_osabi=None):
        key = (self.little_endian, self.elfclass, e_type, e_machine, e_osabi)
        built = self._built.get(key)
        if built is not None:
            self.__dict__.update(built)
            return
        super().create_advanced_structs(e_type, e_machine, e_osabi)
        if len(self._built) < 64:
            self._built[key] = dict(self.__dict__)


_elffile.ELFStructs = _ReusedELFStructs

_MACHINE_NAMES = {v: k for k, v in _enums.ENUM_E_MACHINE.items()}
_SECTION_TYPE_NAMES = {v: k for k, v in _enums.ENUM_SH_TYPE_BASE.items()}

PT_LOAD = "PT_LOAD"
PF_X = 0x1
STT_FUNC = 2
STB_LOCAL = 0
SHN_UNDEF = 0

SYMBOL_TABLES = (".dynsym", ".symtab")

# Largest single piece read (a symbol or string table, .gopclntab, a DWARF section) and
# the most read from one file in total. node's .strtab is ~7 MiB, a large Go binary's
# .gopclntab ~40 MiB.
MAX_SECTION_BYTES = 128 << 20
MAX_TOTAL_READ = 768 << 20
MAX_SECTIONS = 4096
FIND_CHUNK = 4 << 20
READ_AHEAD = 64 << 10


class ElfError(Exception):
    """The file is not an ELF we can read (truncated, not ELF, unsupported layout), or
    reading it would pass a limit. `reason` is a short label for the refusal counter."""

    def __init__(self, message: str, reason: str = "malformed"):
        super().__init__(message)
        self.reason = reason


class FileView:
    """Bounded pread access to an open file descriptor of known size; slices and find()
    like the bytes of the whole file, without mapping or copying it. Raises ElfError
    ("too_large") past a limit and ElfError("truncated") when the file shrank."""

    def __init__(self, fd: int, size: int, name: str, budget: int = MAX_TOTAL_READ):
        self.fd = fd
        self.size = size
        self.name = name
        self.budget = budget

    def __len__(self) -> int:
        return self.size

    def read(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes at `offset` (fewer only at the end of the file)."""
        if offset < 0 or n < 0:
            raise ElfError(f"{self.name}: negative read", "malformed")
        n = max(0, min(n, self.size - offset))
        if n > MAX_SECTION_BYTES:
            raise ElfError(f"{self.name}: refusing to read {n} bytes at {offset:#x} (limit {MAX_SECTION_BYTES})",
                           "too_large")
        if n > self.budget:
            raise ElfError(f"{self.name}: read budget exhausted", "too_large")
        self.budget -= n
        parts, got = [], 0
        while got < n:
            chunk = os.pread(self.fd, min(n - got, 16 << 20), offset + got)
            if not chunk:
                raise ElfError(f"{self.name}: file shrank while being read (at {offset + got:#x})", "truncated")
            parts.append(chunk)
            got += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self.size)
            if step != 1:
                raise ValueError("FileView slices have step 1")
            return self.read(start, max(0, stop - start))
        if key < 0:
            key += self.size
        if not 0 <= key < self.size:
            raise IndexError(key)
        return self.read(key, 1)[0]

    def find(self, needle: bytes, start: int = 0, end: int | None = None) -> int:
        """Like bytes.find over [start, end), read in chunks (counted in the budget)."""
        end = self.size if end is None else min(end, self.size)
        pos = max(0, start)
        while pos < end:
            chunk = self.read(pos, min(FIND_CHUNK, end - pos))
            hit = chunk.find(needle)
            if hit != -1 and pos + hit + len(needle) <= end:
                return pos + hit
            if pos + len(chunk) >= end:
                return -1
            pos += max(1, len(chunk) - len(needle) + 1)
        return -1


class _ViewStream(io.RawIOBase):
    """The file-like object pyelftools reads from: a FileView with a position."""

    def __init__(self, view: FileView):
        self.view = view
        self.pos = 0
        self._win = b""
        self._win_start = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.view.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.view.size - self.pos
        # pyelftools reads headers a few bytes at a time: serve those from a small
        # read-ahead window instead of one pread each
        off = self.pos - self._win_start
        if 0 <= off and off + n <= len(self._win):
            data = self._win[off:off + n]
        elif n < READ_AHEAD:
            self._win = self.view.read(self.pos, READ_AHEAD)
            self._win_start = self.pos
            data = self._win[:n]
        else:
            data = self.view.read(self.pos, n)
        self.pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


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
    index: int = 0
    link: int = 0
    entsize: int = 0


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

    `source` is a path (opened here, tests and tools) or an open file descriptor (the
    agent's way: the descriptor stays the caller's); `name` is how to call it in
    messages. Use as a context manager. Raises ElfError (or OSError) from the
    constructor when the file cannot be read or is not an ELF.
    """

    def __init__(self, source: str | int, name: str | None = None):
        self._tables: dict[str, tuple[bytes, bytes, int] | None] = {}
        if isinstance(source, int):
            self._fd, self._own_fd = source, False
            self.path = name or f"fd {source}"
        else:
            self._fd, self._own_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK), True
            self.path = name or source
        path = self.path
        self._mm = None
        self._elf = None
        try:
            st = os.fstat(self._fd)
            if not stat.S_ISREG(st.st_mode):
                raise ElfError(f"{path}: not a regular file", "not_regular_file")
            size = st.st_size
            if size < 64:
                raise ElfError(f"{path}: too small to be ELF", "not_elf")
            self._mm = FileView(self._fd, size, path)
            if self._mm[:4] != b"\x7fELF":
                raise ElfError(f"{path}: not an ELF file", "not_elf")
            try:
                if self._fast_headers():
                    return
                self._elf = ELFFile(_ViewStream(self._mm))
                if self.elf.num_sections() > MAX_SECTIONS or self.elf.num_segments() > MAX_SECTIONS:
                    raise ElfError(f"{path}: implausible number of sections or segments", "too_large")
                self.little_endian = self.elf.little_endian
                self.elfclass = self.elf.elfclass
                self.machine = self.elf["e_machine"]
                headers = (self.elf._get_segment_header(i) for i in range(self.elf.num_segments()))
                self.segments = [
                    Segment(s["p_vaddr"], s["p_offset"], s["p_filesz"], s["p_memsz"], s["p_flags"])
                    for s in headers
                    if s["p_type"] == PT_LOAD
                ]
                self.sections = {}
                # headers only: building pyelftools' section objects parses some of them
                # whole (the GNU hash table: seconds for node)
                for i in range(self.elf.num_sections()):
                    h = self.elf._get_section_header(i)
                    name = self.elf._get_section_name(h)
                    if name and name not in self.sections:
                        self.sections[name] = Section(name, h["sh_addr"], h["sh_offset"], h["sh_size"], h["sh_type"],
                                                      i, h["sh_link"], h["sh_entsize"])
            except ElfError:
                raise
            except Exception as exc:  # pyelftools raises assorted errors on damaged files
                raise ElfError(f"{path}: cannot parse ELF headers: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _fast_headers(self) -> bool:
        """Read the ELF, program and section headers with struct (pyelftools takes ~1 ms
        per file for this, a third of a Go binary's analysis, which a program started
        after the agent is waiting on). True when done; False for the uncommon layouts
        (extended section numbering, odd header sizes), left to pyelftools."""
        ident = self._mm[:64]
        if len(ident) < 52 or ident[4] not in (1, 2) or ident[5] not in (1, 2):
            return False
        is64, little = ident[4] == 2, ident[5] == 1
        e = "<" if little else ">"
        if is64:
            (_type, machine, _v, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize, shnum,
             shstrndx) = struct.unpack_from(e + "HHIQQQIHHHHHH", ident, 16)
            ph, sh = struct.Struct(e + "IIQQQQQQ"), struct.Struct(e + "IIQQQQIIQQ")
        else:
            (_type, machine, _v, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize, shnum,
             shstrndx) = struct.unpack_from(e + "HHIIIIIHHHHHH", ident, 16)
            ph, sh = struct.Struct(e + "IIIIIIII"), struct.Struct(e + "IIIIIIIIII")
        if (phnum >= 0xFFFF or shnum == 0 and shoff or shstrndx >= 0xFF00 or phnum > MAX_SECTIONS
                or shnum > MAX_SECTIONS or (phnum and phentsize != ph.size) or (shnum and shentsize != sh.size)):
            return False
        phdrs = self.read_exact(phoff, phnum * ph.size) if phnum else b""
        shdrs = self.read_exact(shoff, shnum * sh.size) if shnum else b""
        self.little_endian, self.elfclass = little, 64 if is64 else 32
        self.machine = _MACHINE_NAMES.get(machine, machine)
        self.segments = []
        for i in range(phnum):
            f = ph.unpack_from(phdrs, i * ph.size)
            if is64:
                p_type, flags, offset, vaddr, _paddr, filesz, memsz, _align = f
            else:
                p_type, offset, vaddr, _paddr, filesz, memsz, flags, _align = f
            if p_type == 1:   # PT_LOAD
                self.segments.append(Segment(vaddr, offset, filesz, memsz, flags))
        heads = [sh.unpack_from(shdrs, i * sh.size) for i in range(shnum)]
        names = b""
        if shnum and shstrndx < shnum:
            strtab = heads[shstrndx]
            names = self.read_exact(strtab[4], strtab[5])
        self.sections = {}
        for i, (sh_name, sh_type, _flags, addr, offset, size, link, _info, _align, entsize) in enumerate(heads):
            if not 0 <= sh_name < len(names):
                continue
            name = _cstring(names, sh_name)
            if name and name not in self.sections:
                self.sections[name] = Section(name, addr, offset, size, _SECTION_TYPE_NAMES.get(sh_type, sh_type), i,
                                              link, entsize)
        return True

    @property
    def elf(self) -> ELFFile:
        """pyelftools' view of the file (DWARF, the dynamic section), made when needed."""
        if self._elf is None:
            try:
                self._elf = ELFFile(_ViewStream(self._mm))
            except ElfError:
                raise
            except Exception as exc:  # pyelftools raises assorted errors on damaged files
                raise ElfError(f"{self.path}: cannot parse ELF headers: {exc}") from exc
        return self._elf

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        self._mm = None
        if self._own_fd and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "ElfImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- raw access ------------------------------------------------------------------
    @property
    def data(self) -> FileView:
        """The whole file, read on demand (slices, find); see FileView."""
        return self._mm

    def section_bytes(self, name: str) -> bytes | None:
        """A section's bytes. Raises ElfError past MAX_SECTION_BYTES or when it is not
        wholly in the file."""
        sec = self.sections.get(name)
        if sec is None or sec.type == "SHT_NOBITS":
            return None
        return self.read_exact(sec.offset, sec.size)

    def read_exact(self, offset: int, size: int) -> bytes:
        """`size` bytes at file `offset`; ElfError when the file is shorter."""
        data = self._mm.read(offset, size)
        if len(data) != size:
            raise ElfError(f"{self.path}: [{offset:#x}, +{size}) lies past the end of the file", "truncated")
        return data

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
        return self.read_exact(off, size)

    def executable_ranges(self) -> list[tuple[int, int]]:
        """[start, end) file-offset ranges of the executable PT_LOAD segments: every
        uprobe offset must fall inside one."""
        return [(s.offset, s.offset + s.filesz) for s in self.segments if s.flags & PF_X and s.filesz]

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
                strhdr = self.elf._get_section_header(symsec.link)
            except Exception:
                strhdr = None
            if strhdr is not None:
                # ElfError (a table past the limits or the file's end) is a refusal
                strtab = self.read_exact(strhdr["sh_offset"], strhdr["sh_size"])
                symtab = self.read_exact(symsec.offset, symsec.size)
                result = (symtab, strtab, symsec.entsize)
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
        sec = self.sections.get(".dynamic")
        if sec is None:
            return None
        try:
            dyn = self.elf.get_section(sec.index)
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
