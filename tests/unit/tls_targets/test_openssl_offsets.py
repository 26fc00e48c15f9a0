"""OpenSSL / Node symbol offsets, checked against what the kernel actually mapped.

The ground truth is independent of our ELF arithmetic: a loaded function's address,
looked up in /proc/<pid>/maps, gives its file offset as address - start + pgoff; and the
bytes at that address in the process's memory must equal the file's bytes at our offset.
"""

from __future__ import annotations

import ctypes
import os
import ssl  # noqa: F401  (makes sure this interpreter has libssl loaded too)

import pytest

from plaintap.capture.elfsyms import ElfImage
from plaintap.capture.tls_targets import (
    OPENSSL_SYMBOLS,
    analyze_openssl,
    clear_cache,
    openssl_flavour,
    scan_process,
)

from .tls_helpers import (
    LIBSSL,
    NODE,
    load_bias,
    mapping_for_address,
    read_file,
    read_memory,
    same_code,
    wait_for_line,
)

pytestmark = pytest.mark.skipif(not os.path.exists(LIBSSL), reason="libssl.so.3 not installed")

CORE = (
    "SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex",
    "SSL_get_fd", "SSL_do_handshake", "SSL_set_fd", "SSL_get_rbio",
)


def test_libssl_offsets_match_the_live_mapping():
    lib = ctypes.CDLL(LIBSSL)
    with ElfImage(LIBSSL) as elf:
        info = analyze_openssl(elf)
    assert info is not None
    assert set(CORE) <= set(info.symbols)
    for name in CORE:
        address = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
        start, _end, pgoff, path = mapping_for_address("self", address)
        assert os.path.realpath(path) == os.path.realpath(LIBSSL)
        assert info.symbols[name] == address - start + pgoff, name
        assert same_code(read_memory("self", address, 32), read_file(LIBSSL, info.symbols[name], 32)), name


def test_libssl_flavour_is_openssl_3():
    with ElfImage(LIBSSL) as elf:
        assert openssl_flavour(elf) == "openssl-3"


def test_imports_are_not_definitions():
    # Python's _ssl module imports SSL_read_ex & co. (UND entries in .dynsym, and
    # "SSL_read_ex@OPENSSL_3.0.0" entries in .symtab): it is not an OpenSSL.
    import _ssl

    with ElfImage(_ssl.__file__) as elf:
        assert elf.find_symbols(["SSL_read_ex", "SSL_write_ex", "SSL_do_handshake"]) == {}
        assert analyze_openssl(elf) is None


def test_nss_libssl3_is_not_openssl():
    nss = "/usr/lib/x86_64-linux-gnu/libssl3.so"
    if not os.path.exists(nss):
        pytest.skip("NSS not installed")
    with ElfImage(nss) as elf:
        assert analyze_openssl(elf) is None


@pytest.mark.skipif(not os.path.exists(NODE), reason="node not installed")
def test_node_exports_ssl_and_offsets_match_the_live_mapping(spawn):
    clear_cache()
    proc = spawn([NODE, "-e", "require('https'); console.log('ready'); setTimeout(() => {}, 30000)"])
    wait_for_line(proc, "ready")
    targets = scan_process(proc.pid)
    node_targets = [t for t in targets if t.family == "nodetls"]
    assert len(node_targets) == 1, targets
    target = node_targets[0]
    st = os.stat(NODE)
    assert (target.dev, target.ino) == (st.st_dev, st.st_ino)
    assert target.path == f"/proc/{proc.pid}/root{NODE}"
    assert target.flavour == "openssl-3"
    assert set(CORE) <= set(target.symbols)
    # Node's own libssl is linked in statically: no libssl.so target in that process.
    assert not any(t.family == "openssl" for t in targets)

    with ElfImage(NODE) as elf:
        exported = elf.find_symbols(CORE, tables=(".dynsym",))
        assert set(exported) == set(CORE)  # exported, not just in .symtab
        bias = load_bias(proc.pid, st.st_ino, elf) if elf.elf["e_type"] == "ET_DYN" else 0
    for name in CORE:
        address = exported[name].vaddr + bias
        start, _end, pgoff, _path = mapping_for_address(proc.pid, address)
        assert target.symbols[name] == address - start + pgoff, name
        # node is ET_EXEC with .text not at file offset == vaddr: the arithmetic matters
        assert target.symbols[name] != exported[name].vaddr
        assert same_code(read_memory(proc.pid, address, 32), read_file(NODE, target.symbols[name], 32)), name


def test_symbol_list_is_what_the_attach_layer_expects():
    assert OPENSSL_SYMBOLS[:4] == ("SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex")


def _e8_targets(code: bytes, vaddr: int) -> set[int]:
    """Every rel32 CALL target an E8 byte anywhere in `code` could encode (over-approximate)."""
    out = set()
    for i in range(len(code) - 4):
        if code[i] == 0xE8:
            rel = int.from_bytes(code[i + 1:i + 5], "little", signed=True)
            out.add(vaddr + i + 5 + rel)
    return out


def test_internal_read_write_are_what_the_exports_call():
    from plaintap.capture.tls_targets import find_internal_rw
    with ElfImage(LIBSSL) as elf:
        syms = elf.find_symbols(OPENSSL_SYMBOLS)
        internal = find_internal_rw(elf, syms)
        assert set(internal) == {"ssl_read_internal", "ssl_write_internal"}
        for key, names in (("ssl_read_internal", ("SSL_read", "SSL_read_ex")),
                           ("ssl_write_internal", ("SSL_write", "SSL_write_ex"))):
            offsets = {s.offset for s in syms.values()}
            assert internal[key] not in offsets
            for name in names:
                code = elf.read_vaddr(syms[name].vaddr, 64)
                targets = {elf.vaddr_to_offset(t) for t in _e8_targets(code, syms[name].vaddr)
                           if elf.is_executable_vaddr(t)}
                assert internal[key] in targets, f"{name} does not call {key}"
        # Without both exports of a pair there is nothing to cross-check: keep the exports.
        assert find_internal_rw(elf, {k: v for k, v in syms.items() if k != "SSL_write_ex"}) == {}
