"""Go crypto/tls hook points, on programs built here with the system Go.

Checks that could fail for real: the stripped build (no .symtab, no DWARF) must give
the same entries and RET sites as the normal one, found through .gopclntab alone; the
RET sites must agree with the Go toolchain's own disassembler; and in a running Go
process the bytes at each offset must be a RET (0xC3) in memory.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from plaintap.capture import gotls
from plaintap.capture.elfsyms import ElfImage
from plaintap.capture.tls_targets import AnalysisError, GoTlsTarget, analyze_in_process, clear_cache, scan_process

from .tls_helpers import find_go, load_bias, mapping_for_address, read_file, read_memory, same_code, wait_for_line

NAMES = (gotls.TLS_READ, gotls.TLS_WRITE)


def analyze(path) -> gotls.GoTlsInfo:
    with ElfImage(str(path)) as elf:
        info = gotls.analyze_go_binary(elf)
    assert info is not None
    return info


def test_buildinfo_version(go_builds):
    go_version = subprocess.run(
        [find_go(), "env", "GOVERSION"], capture_output=True, text=True, check=True
    ).stdout.strip()
    for key in ("normal", "stripped", "pie", "plain"):
        with ElfImage(str(go_builds[key])) as elf:
            info = gotls.read_buildinfo(elf)
        assert info is not None and info.version == go_version, key
        assert info.modinfo.startswith("path\texample.com/"), info.modinfo[:40]


def test_not_go_and_go_without_tls(go_builds):
    with ElfImage("/usr/lib/x86_64-linux-gnu/libssl.so.3") as elf:
        assert gotls.read_buildinfo(elf) is None
        assert gotls.analyze_go_binary(elf) is None
    with ElfImage(str(go_builds["plain"])) as elf:
        assert gotls.read_buildinfo(elf) is not None
        assert gotls.analyze_go_binary(elf) is None  # Go, but no crypto/tls


def test_stripped_build_has_no_symtab_or_dwarf(go_builds):
    with ElfImage(str(go_builds["stripped"])) as elf:
        assert ".symtab" not in elf.sections
        assert ".debug_info" not in elf.sections
        assert ".gopclntab" in elf.sections


@pytest.mark.parametrize("build", ["normal", "pie"])
def test_pclntab_agrees_with_symtab(go_builds, build):
    with ElfImage(str(go_builds[build])) as elf:
        from_symtab = elf.find_symbols(NAMES, tables=(".symtab",))
        from_pcln = gotls.pclntab_functions(elf, NAMES)
        for name in NAMES:
            sym, fn = from_symtab[name], from_pcln[name]
            assert fn.entry == sym.vaddr, name
            # pclntab's end is the next function's entry: the symbol plus INT3 padding
            assert sym.vaddr + sym.size <= fn.end < sym.vaddr + sym.size + 64, name
            padding = elf.read_vaddr(sym.vaddr + sym.size, fn.end - sym.vaddr - sym.size)
            assert set(padding) <= {0xCC}, name
            assert gotls.return_sites(elf, fn) == gotls.return_sites(
                elf, gotls.GoFunc(name, sym.vaddr, sym.vaddr + sym.size, "symtab")
            )


def test_stripped_and_normal_builds_agree(go_builds):
    normal, stripped = analyze(go_builds["normal"]), analyze(go_builds["stripped"])
    assert normal.read.source == "symtab" and stripped.read.source == "pclntab"
    assert stripped.read_entry == normal.read_entry
    assert stripped.write_entry == normal.write_entry
    assert stripped.read_returns == normal.read_returns
    assert stripped.write_returns == normal.write_returns
    assert len(normal.read_returns) >= 2
    assert normal.regabi and stripped.regabi  # go1.19 on amd64


def test_returns_agree_with_go_objdump(go_builds):
    """`go tool objdump` is the Go toolchain's own disassembler: its RETs are ours."""
    info = analyze(go_builds["normal"])
    with ElfImage(str(go_builds["normal"])) as elf:
        for fn, ours in ((info.read, info.read_returns), (info.write, info.write_returns)):
            pattern = "^" + re.escape(fn.name) + "$"
            out = subprocess.run(
                [find_go(), "tool", "objdump", "-s", pattern, str(go_builds["normal"])],
                capture_output=True, text=True, check=True,
            ).stdout
            insns = [line.split() for line in out.splitlines() if line.startswith("  ")]
            theirs = [int(i[1], 16) for i in insns if "RET" in i]
            assert theirs, out[:500]
            assert [elf.vaddr_to_offset(a) for a in theirs] == ours, fn.name
            assert int(insns[0][1], 16) == fn.entry, fn.name


def test_every_offset_is_a_ret_in_the_file(go_builds):
    for key in ("normal", "stripped", "pie"):
        info = analyze(go_builds[key])
        for off in info.read_returns + info.write_returns:
            assert read_file(go_builds[key], off, 1) == b"\xc3", (key, off)


def test_fd_offsets(go_builds):
    normal, stripped = analyze(go_builds["normal"]), analyze(go_builds["stripped"])
    # a measured release line comes from the table, DWARF or not (no DWARF walk while a
    # new program waits to be hooked)
    assert normal.fd_offsets["source"].startswith("table go1.19")
    assert stripped.fd_offsets["source"].startswith("table go1.19")
    with ElfImage(str(go_builds["normal"])) as elf:
        dwarf = gotls.fd_offsets_from_dwarf(elf)
    assert dwarf["source"] == "dwarf"
    for key in ("tls_conn_conn", "iface_data", "tcpconn_conn", "conn_fd", "netfd_pfd", "pfd_sysfd",
                "conn_data", "fd_ptr", "sysfd"):
        assert dwarf[key] == stripped.fd_offsets[key], key
    # net.Conn is an interface: (itab, data) -> the *net.TCPConn is the second word;
    # poll.FD starts with a 16-byte fdMutex, then Sysfd.
    assert dwarf["conn_data"] == 8
    assert dwarf["fd_ptr"] == 0
    assert dwarf["sysfd"] == 16


def test_fd_offsets_table_matches_dwarf_here(go_builds):
    """The table entry for this Go release line is what DWARF says here."""
    with ElfImage(str(go_builds["normal"])) as elf:
        dwarf = gotls.fd_offsets_from_dwarf(elf)
        version = gotls.parse_go_version(gotls.read_buildinfo(elf).version)
    table = gotls.GO_FD_OFFSETS_TABLE[version[:2]]
    assert {k: dwarf[k] for k in table} == table


def test_unknown_layout_is_refused_not_guessed(go_builds, monkeypatch):
    table = {(1, 19): gotls.GO_FD_OFFSETS_TABLE[(1, 19)], (1, 21): gotls.GO_FD_OFFSETS_TABLE[(1, 19)]}
    monkeypatch.setattr(gotls, "GO_FD_OFFSETS_TABLE", table)
    with ElfImage(str(go_builds["stripped"])) as elf:
        # between two measured lines that agree: taken, and said so
        between = gotls.fd_offsets_for(elf, (1, 20, 3))
        assert between["source"].startswith("table: go1.20 lies between measured go1.19 and go1.21")
        assert between["sysfd"] == 16
        # outside what was measured, and no DWARF to read: refused with its reason
        for version in ((1, 18, 0), (1, 99, 0), None):
            with pytest.raises(gotls.GoBinaryError) as e:
                gotls.fd_offsets_for(elf, version)
            assert e.value.reason == "unknown_go_layout"
    with ElfImage(str(go_builds["normal"])) as elf:
        assert gotls.fd_offsets_for(elf, (1, 99, 0))["source"] == "dwarf"   # DWARF says it
    # the worker's answer for such a binary is a counted refusal
    monkeypatch.setattr(gotls, "GO_FD_OFFSETS_TABLE", {(1, 99): table[(1, 19)]})
    fd = os.open(go_builds["stripped"], os.O_RDONLY)
    try:
        with pytest.raises(AnalysisError) as e:
            analyze_in_process(fd, "stripped")
        assert e.value.reason == "unknown_go_layout"
    finally:
        os.close(fd)


def test_version_parsing_and_abi():
    assert gotls.parse_go_version("go1.19.8") == (1, 19, 8)
    assert gotls.parse_go_version("go1.21rc2") == (1, 21, 0)
    assert gotls.parse_go_version("devel go1.22-abcdef Tue") == (1, 22, 0)
    assert gotls.parse_go_version("unknown") is None
    assert gotls.uses_register_abi((1, 17, 0), "EM_X86_64")
    assert not gotls.uses_register_abi((1, 16, 15), "EM_X86_64")
    assert not gotls.uses_register_abi((1, 17, 0), "EM_AARCH64")
    assert gotls.uses_register_abi((1, 18, 0), "EM_AARCH64")


def test_go120_magic_is_read_like_go118(go_builds, tmp_path):
    """Go 1.20 changed only the magic for the fields read here: patch it and re-read."""
    data = bytearray(go_builds["stripped"].read_bytes())
    with ElfImage(str(go_builds["stripped"])) as elf:
        base = elf.sections[".gopclntab"].offset
        before = gotls.pclntab_functions(elf, NAMES)
    assert data[base : base + 4] == b"\xf0\xff\xff\xff"
    data[base : base + 4] = b"\xf1\xff\xff\xff"
    patched = tmp_path / "go120"
    patched.write_bytes(bytes(data))
    with ElfImage(str(patched)) as elf:
        assert gotls.pclntab_functions(elf, NAMES) == before
    data[base : base + 4] = b"\xfb\xff\xff\xff"  # go1.2-1.15: refused, not misread
    patched.write_bytes(bytes(data))
    with ElfImage(str(patched)) as elf:
        with pytest.raises(gotls.GoBinaryError):
            gotls.pclntab_functions(elf, NAMES)


@pytest.mark.parametrize("build", ["stripped", "pie"])
def test_running_go_process(go_builds, spawn, build):
    clear_cache()
    proc = spawn([str(go_builds[build]), "sleep"])
    wait_for_line(proc, "ready")
    targets = [t for t in scan_process(proc.pid) if t.family == "gotls"]
    assert len(targets) == 1, targets
    target = targets[0]
    assert isinstance(target, GoTlsTarget)
    assert target.path == f"/proc/{proc.pid}/root{go_builds[build]}"
    assert target.go_version.startswith("go1.")
    assert target.regabi
    assert target.fd_offsets["sysfd"] == 16
    # The offsets are file offsets: map them to addresses through the live mapping and
    # the process's memory holds a RET at each.
    with ElfImage(target.path) as elf:
        info = gotls.analyze_go_binary(elf)
        bias = load_bias(proc.pid, target.ino, elf) if elf.elf["e_type"] == "ET_DYN" else 0
    for vaddr_list, offsets in (
        (_vaddrs(go_builds[build], info.read), target.read_returns),
        (_vaddrs(go_builds[build], info.write), target.write_returns),
    ):
        for vaddr, off in zip(vaddr_list, offsets, strict=True):
            start, _end, pgoff, _path = mapping_for_address(proc.pid, vaddr + bias)
            assert vaddr + bias - start + pgoff == off
            assert same_code(read_memory(proc.pid, vaddr + bias, 1), b"\xc3")


def _vaddrs(path, fn):
    with ElfImage(str(path)) as elf:
        return gotls.return_sites(elf, fn)


def test_without_section_headers(go_builds, tmp_path):
    """sstrip-style binaries have no section headers at all: build info and pclntab are
    then found by their magic in the segments, with the same result."""
    data = bytearray(go_builds["stripped"].read_bytes())
    data[0x28:0x30] = bytes(8)  # e_shoff
    data[0x3C:0x40] = bytes(4)  # e_shnum, e_shstrndx
    bare = tmp_path / "bare"
    bare.write_bytes(bytes(data))
    with ElfImage(str(bare)) as elf:
        assert elf.sections == {}
        info = gotls.analyze_go_binary(elf)
    expected = analyze(go_builds["stripped"])
    assert info is not None
    assert (info.go_version, info.read_entry, info.write_entry) == (
        expected.go_version, expected.read_entry, expected.write_entry)
    assert info.read_returns == expected.read_returns
    assert info.write_returns == expected.write_returns
