"""Attach TLS uprobes to every TLS library and Go binary that processes use.

Targets (files with their uprobe offsets) come from `tls_targets`; this module decides
when to look and attaches each file once, by (device, inode): a uprobe on a file covers
every process that maps it, now and later. Looking happens
  * at start-up: all processes, plus the system's own libssl and the `node` on PATH (so
    a client that starts later and uses them is covered before its first byte);
  * after each exec (at once for the executable itself — Go binaries, Node — then at
    +50 ms, +300 ms, +2 s: libraries are mapped by the loader, or dlopen'ed later);
  * every 30 s over all processes (containers with their own copies).
Analysis is cached per file; scans run on the pipeline thread between ring polls.
"""
from __future__ import annotations

import glob
import heapq
import logging
import os
import shutil

from ..bpf.libbpf import BpfError
from .tls_targets import GoTlsTarget, OpenSSLTarget, TlsTarget, analyze_file, discover, scan_process

log = logging.getLogger("plaintap.tls")

MS = 1_000_000
EXEC_RESCANS_NS = (0, 50 * MS, 300 * MS, 2000 * MS)
FULL_RESCAN_NS = 30_000 * MS
SYSTEM_LIBSSL_GLOBS = ("/usr/lib/*/libssl.so.*", "/lib/*/libssl.so.*", "/usr/lib/libssl.so.*",
                       "/usr/lib64/libssl.so.*", "/usr/local/lib*/libssl.so.*")

# (symbol, entry program, cookie): cookie bit 0 marks the _ex variants.
OPENSSL_HOOKS = (("SSL_write", "ssl_write_enter", 0), ("SSL_write_ex", "ssl_write_enter", 1),
                 ("SSL_read", "ssl_read_enter", 0), ("SSL_read_ex", "ssl_read_enter", 1))
# When the library's internal read/write functions are found (tls_targets.find_internal_rw)
# they replace the four exports: every SSL_read/_ex and SSL_write/_ex call goes through
# them, and so does OpenSSL's SSL BIO, which no export sees. They take the _ex arguments.
OPENSSL_INTERNAL_HOOKS = (("ssl_write_internal", "ssl_write_enter", 1), ("ssl_read_internal", "ssl_read_enter", 1))


def system_tls_targets(families: frozenset) -> list[OpenSSLTarget]:
    """Targets for the system's libssl files and the node on PATH, mapped or not."""
    out, seen = [], set()
    paths = []
    if "openssl" in families:
        for pattern in SYSTEM_LIBSSL_GLOBS:
            paths += sorted(glob.glob(pattern))
    node = shutil.which("node") or shutil.which("nodejs")
    if node and "nodetls" in families:
        paths.append(os.path.realpath(node))
    for path in paths:
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            info = analyze_file(path).openssl
        except Exception as e:  # unreadable or odd file: not a target
            log.debug("skipping %s: %s", path, e)
            continue
        if info is not None:
            family = "nodetls" if info.node_exports else "openssl"
            out.append(OpenSSLTarget(family, path, st.st_dev, st.st_ino, 0, path,
                                     symbols=info.symbols, flavour=info.flavour))
    return out


class TlsAttacher:
    def __init__(self, kernel, families: tuple[str, ...]) -> None:
        self.kernel = kernel
        self.families = frozenset(families)
        self.attached: dict[tuple[int, int], TlsTarget] = {}
        self.failed: set[tuple[int, int]] = set()
        self._go_slots = 0
        self._due: list[tuple[int, int]] = []   # (due_ns, pid); pid -1 = everything
        self.next_full_ns = 0

    @property
    def known(self) -> set[tuple[int, int]]:
        return set(self.attached) | self.failed

    def start(self, now_ns: int) -> None:
        if not self.families:
            return
        for t in system_tls_targets(self.families):
            self._attach(t)
        self._scan_all()
        self.next_full_ns = now_ns + FULL_RESCAN_NS

    def on_exec(self, pid: int, now_ns: int) -> None:
        if self.families:
            for d in EXEC_RESCANS_NS:
                heapq.heappush(self._due, (now_ns + d, pid))

    def tick(self, now_ns: int) -> None:
        if not self.families:
            return
        due = self._due
        pids = set()
        while due and due[0][0] <= now_ns:
            pids.add(heapq.heappop(due)[1])
        for pid in pids:
            try:
                for t in scan_process(pid, self.families, skip=self.known):
                    self._attach(t)
            except Exception as e:  # a scan problem never stops capture
                log.debug("TLS scan of pid %d failed: %s", pid, e)
        if now_ns >= self.next_full_ns:
            self.next_full_ns = now_ns + FULL_RESCAN_NS
            self._scan_all()

    def _scan_all(self) -> None:
        try:
            found = discover(families=self.families)
        except Exception as e:
            log.warning("TLS discovery failed: %s", e)
            return
        for key, t in found.items():
            if key not in self.attached and key not in self.failed:
                self._attach(t)

    def _attach(self, t: TlsTarget) -> None:
        if t.key in self.attached or t.key in self.failed:
            return
        try:
            if isinstance(t, OpenSSLTarget):
                n = self._attach_openssl(t)
            elif isinstance(t, GoTlsTarget):
                n = self._attach_go(t)
            else:
                return
        except BpfError as e:
            self.failed.add(t.key)
            log.warning("TLS hooks not attached to %s (%s): %s", t.maps_path or t.path, t.family, e)
            return
        self.attached[t.key] = t
        via = ""
        if isinstance(t, OpenSSLTarget):
            via = ", internal read/write" if "ssl_read_internal" in t.symbols else ", exported SSL_read/SSL_write"
        log.info("TLS hooks attached: %s %s (%d probes%s, opened as %s, seen in pid %d)", t.family,
                 t.maps_path or t.path, n, via, t.path, t.pid_seen)

    def _attach_openssl(self, t: OpenSSLTarget) -> int:
        n = 0
        internal = all(sym in t.symbols for sym, _, _ in OPENSSL_INTERNAL_HOOKS)
        for sym, prog, cookie in OPENSSL_INTERNAL_HOOKS if internal else OPENSSL_HOOKS:
            off = t.symbols.get(sym)
            if off is None:
                continue
            self.kernel.attach_uprobe(prog, t.path, off, cookie=cookie)
            self.kernel.attach_uprobe("ssl_exit_probe", t.path, off, retprobe=True, cookie=cookie)
            n += 2
        if not n:
            raise BpfError("no SSL_read/SSL_write symbols")
        return n

    def _attach_go(self, t: GoTlsTarget) -> int:
        if not t.regabi:
            raise BpfError(f"{t.go_version} uses the stack ABI; only Go >= 1.17 (register ABI) is supported")
        fo = t.fd_offsets
        if not all(k in fo for k in ("conn_data", "fd_ptr", "sysfd")):
            raise BpfError(f"no socket offsets known for {t.go_version}")
        if not t.read_returns:
            raise BpfError("no RET instructions found in crypto/tls.(*Conn).Read")
        slot = self._go_slots
        if slot >= 256:
            raise BpfError("too many distinct Go binaries (256)")
        self.kernel.set_go_offsets(slot, fo["conn_data"], fo["fd_ptr"], fo["sysfd"])
        self._go_slots += 1
        self.kernel.attach_uprobe("go_write_enter", t.path, t.write_entry, cookie=slot)
        self.kernel.attach_uprobe("go_read_enter", t.path, t.read_entry, cookie=slot)
        for off in t.read_returns:
            self.kernel.attach_uprobe("go_read_return", t.path, off, cookie=slot)
        return 2 + len(t.read_returns)
