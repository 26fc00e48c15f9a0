"""The exec lane's bookkeeping on the Python side (capture/tls_attach.py): plans and their
Go slots, claims shared with the Python attach path, adopting the lane's hooks. The lane
itself (native/src/exec_lane.rs) is replaced by a recording stand-in; the e2e test
test_go_net_http_started_after_agent runs the real one on the kernel."""
from __future__ import annotations

import os
import struct

from plaintap.capture import tls_attach
from plaintap.capture.tls_attach import GO_SLOTS, LANE_PLANS, TlsAttacher

from .test_hardening import MultiKernel, NoAnalysis, go_result, opened


class LaneKernel(MultiKernel):
    uprobe_multi = True

    def program_fd(self, name):
        return {"go_write_enter": 101, "go_read_enter": 102, "go_read_return": 103, "ssl_write_enter": 111,
                "ssl_read_enter": 112, "ssl_exit_probe": 113}[name]

    def adopt_links(self, fds):
        for fd in fds:
            self.links[fd] = ("adopted", fd)
        return list(fds)

    def detach(self, link):
        del self.links[link]
        if isinstance(link, int) and link >= 1000:   # a real fd the test made for an adopted link
            os.close(link)


class FakeLane:
    def __init__(self):
        self.plans = {}
        self.claimed = set()
        self.released = []
        self.queue = []

    def add_plan(self, key, digest, ranges_json, sites, links, library=False):
        self.plans[key] = (digest, ranges_json, sites, links)
        self.libraries = getattr(self, "libraries", set()) | ({key} if library else set())

    def remove_plan(self, key):
        del self.plans[key]

    def claim(self, dev, ino):
        if (dev, ino) in self.claimed:
            return False
        self.claimed.add((dev, ino))
        return True

    def release(self, dev, ino, lane_hooked=False):
        self.claimed.discard((dev, ino))
        self.released.append(((dev, ino), lane_hooked))

    def take(self):
        out, self.queue = self.queue, []
        return out

    spare_slots = 0

    def give_slots(self, slots):
        self.spare_slots += len(slots)

    def take_slots(self):
        return []

    def stop(self):
        pass

    def stats(self):
        return (0, 0, 0, 0, 0, 0, 0, 0)


def elf(path, size=4096):
    """A minimal ELF64 file (header + one PT_LOAD): enough for the content cache's digest."""
    head = bytearray(64)
    head[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<QHH", head, 32, 64, 0, 0)
    struct.pack_into("<HH", head, 54, 56, 1)
    ph = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, size, size, 4096)
    path.write_bytes(bytes(head) + ph + bytes(size - 64 - len(ph)))


def attacher(families=("gotls",)):
    att = TlsAttacher(LaneKernel(), families, analysis=NoAnalysis())
    att._lane = FakeLane()
    return att


def lane_hooked(path, n_links: int, first_fd: int):
    """A file as the lane hands it over: (fd, its stat, stand-ins for its link fds)."""
    elf(path)
    fd = os.open(path, os.O_RDONLY)
    return fd, os.fstat(fd), [os.dup2(fd, first_fd + i) for i in range(n_links)]


def assert_closed(*fds):
    """Each of `fds` is closed (an undone lane hook leaks none)."""
    for f in fds:
        try:
            os.fstat(f)
        except OSError:
            continue
        raise AssertionError(f"fd {f} left open")


def learn(att, path, key):
    """The agent attached Go file `path` from analysis: cached under `key`, and planned."""
    elf(path)
    of, mf = opened(path)
    result = go_result(4096)
    att.content.store(key, of.fd, 4096, result)
    att._apply(1, mf, of, None, result)
    att._plan(key, result)
    return of


def test_a_plan_mirrors_the_python_attach_with_its_own_slot(tmp_path):
    att = attacher()
    of = learn(att, tmp_path / "go", "4096:go:aa")
    own = att.attached[of.ident].slot
    slot, _ = att._plans["4096:go:aa"]
    assert slot != own and slot not in att._free_slots and own not in att._free_slots
    digest, ranges, sites, links = att._lane.plans["4096:go:aa"]
    assert digest == att.content.entry("4096:go:aa")[0]
    assert ranges == b"[[0,4096]]" and sites == [16, 32, 48, 64, 80]
    assert links == [(101, [32], [slot], False), (102, [16], [slot], False), (103, [48, 64], [slot, slot], False)]
    assert att.kernel.slots[slot] == att.kernel.slots[own]
    assert of.ident in att._lane.claimed          # the Python attach claimed the file
    att.close()


def test_a_file_the_lane_claimed_is_not_attached_again_by_python(tmp_path):
    att = attacher()
    p = tmp_path / "go"
    elf(p)
    of, mf = opened(p)
    att._lane.claimed.add(of.ident)
    att._apply(1, mf, of, None, go_result(4096))
    assert of.ident not in att.attached and not att.kernel.links
    att.close()


def test_adopted_hooks_are_booked_and_released_when_detached(tmp_path):
    att = attacher()
    learn(att, tmp_path / "go", "4096:go:aa")
    fd, st, links = lane_hooked(tmp_path / "copy", 3, 1000)
    att._lane.claimed.add((st.st_dev, st.st_ino))
    att._lane.queue.append((os.getpid(), 123, (st.st_dev, st.st_ino, fd, links, "4096:go:aa", (400_000, 100_000, 100_000, 200_000), None),
                            None, None))
    att._take_lane()
    h = att.attached[(st.st_dev, st.st_ino)]
    slot, _ = att._plans["4096:go:aa"]
    assert h.plan_slot == slot and h.slot == -1 and h.fd == fd and h.links == links
    assert att._exec_ts[os.getpid()] == 123        # its scans are due as for any exec
    att._detach((st.st_dev, st.st_ino), h)
    assert ((st.st_dev, st.st_ino), True) in att._lane.released
    assert slot not in att._free_slots             # still the plan's
    att.close()


def test_evicted_plans_free_their_slots_unless_a_hook_still_uses_them(tmp_path):
    att = attacher()
    learn(att, tmp_path / "go0", "4096:go:00")
    slot0, _ = att._plans["4096:go:00"]
    # a hook adopted through plan 0
    att.attached[(1, 2)] = tls_attach._Hooked(att.attached[next(iter(att.attached))].target, plan_slot=slot0)
    for i in range(1, LANE_PLANS + 1):
        learn(att, tmp_path / f"go{i}", f"4096:go:{i:02x}")
    assert len(att._plans) == LANE_PLANS and "4096:go:00" not in att._plans
    assert slot0 in att._orphan_slots and slot0 not in att._free_slots
    att._detach((1, 2), att.attached[(1, 2)])
    assert slot0 in att._free_slots and not att._orphan_slots
    used = GO_SLOTS - len(att._free_slots)
    assert used == LANE_PLANS + (LANE_PLANS + 1)     # the plans' slots + each attached file's own
    att.close()


def worker_facts(path):
    """The worker's analysis of `path`, as the lane's go_analyze returns it."""
    from plaintap.capture.elfsyms import ElfImage
    from plaintap.capture.tls_targets import analyze_image

    with ElfImage(str(path)) as elf:
        r = analyze_image(elf)
    g = r["go"]
    if g is None:
        return None
    return (g["go_version"], [tuple(x) for x in r["exec_ranges"]], g["read_entry"], g["write_entry"],
            g["read_returns"], g["write_returns"])


def test_the_lanes_own_go_analysis_is_the_workers(go_builds, tmp_path):
    from plaintap import _core

    for name in ("normal", "stripped", "pie"):
        fd = os.open(go_builds[name], os.O_RDONLY)
        try:
            native = _core.go_analyze(fd)
        finally:
            os.close(fd)
        assert native is not None, name
        assert native == worker_facts(go_builds[name]), name
    # a Go program without crypto/tls, and files that are no Go binary: left to the worker
    for path in (go_builds["plain"], "/bin/true", "/usr/lib/x86_64-linux-gnu/libssl.so.3"):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert _core.go_analyze(fd) is None, path
        finally:
            os.close(fd)
    # damaged copies: never a wrong answer (None, or exactly the worker's on what is left)
    data = bytearray(go_builds["stripped"].read_bytes())
    for cut in (64, 4096, len(data) // 3, len(data) - 1000):
        p = tmp_path / f"cut{cut}"
        p.write_bytes(bytes(data[:cut]))
        fd = os.open(p, os.O_RDONLY)
        try:
            native = _core.go_analyze(fd)
        finally:
            os.close(fd)
        assert native is None or native == worker_facts(p), cut
        assert cut > len(data) // 3 or native is None, cut


def test_a_binary_the_lane_analysed_is_cached_planned_and_owns_its_slot(tmp_path):
    att = attacher()
    fd, st, links = lane_hooked(tmp_path / "new", 3, 1010)
    slot = att._free_slots.pop()                      # handed to the lane earlier
    analysis = ("go1.22.10", [(0, 4096)], 16, 32, [48, 64], [80], slot)
    att._lane.claimed.add((st.st_dev, st.st_ino))
    att._lane.queue.append((os.getpid(), 7, (st.st_dev, st.st_ino, fd, links, "4096:go:bb",
                                             (900_000, 50_000, 600_000, 250_000), analysis), None, None))
    att._take_lane()
    h = att.attached[(st.st_dev, st.st_ino)]
    assert h.slot == slot and h.plan_slot == -1 and h.links == links
    sites, result = att.content.entry("4096:go:bb")
    assert result["go"]["read_returns"] == [48, 64] and result["go"]["fd_offsets"]["sysfd"] == 16
    assert "4096:go:bb" in att._plans and att._lane.plans["4096:go:bb"][0] == sites   # copies from now on
    att._detach((st.st_dev, st.st_ino), h)
    assert slot in att._free_slots
    att.close()


def test_a_lane_analysis_of_an_unknown_release_is_undone(tmp_path):
    att = attacher()
    fd, st, links = lane_hooked(tmp_path / "odd", 1, 1020)
    att._lane.spare_slots = tls_attach.LANE_SPARE_SLOTS       # no top-up in between
    slot = att._free_slots.pop()
    free = len(att._free_slots)
    att._lane.queue.append((os.getpid(), 8, (st.st_dev, st.st_ino, fd, links, "4096:go:cc", (1, 1, 1, 1),
                                             ("go1.99.1", [(0, 4096)], 16, 32, [48], [80], slot)), None, None))
    att._take_lane()
    assert (st.st_dev, st.st_ino) not in att.attached
    assert ((st.st_dev, st.st_ino), True) in att._lane.released and len(att._free_slots) == free + 1 and slot in att._free_slots
    assert_closed(fd, 1020)
    att.close()


SSL_RESULT = {"exec_ranges": [[0, 4096]], "go": None, "go_error": None,
              "openssl": {"symbols": {"SSL_read": 0x100, "SSL_write": 0x200, "SSL_read_ex": 0x300,
                                      "ssl_write_internal": 0x400, "ssl_read_internal": 0x500},
                          "flavour": "openssl-3", "node_exports": False}}


def test_a_libssl_plan_mirrors_the_python_attach_and_holds_no_slot(tmp_path):
    att = attacher(("gotls", "openssl"))
    p = tmp_path / "libssl.so.3"
    elf(p)
    of, mf = opened(p)
    att.content.store("4096:gnu:ee", of.fd, 4096, SSL_RESULT)
    att._apply(1, mf, of, None, SSL_RESULT)
    free = len(att._free_slots)
    att._plan("4096:gnu:ee", SSL_RESULT)
    assert att._plans["4096:gnu:ee"][0] == -1 and len(att._free_slots) == free
    digest, ranges, sites, links = att._lane.plans["4096:gnu:ee"]
    assert "4096:gnu:ee" in att._lane.libraries               # looked for among execs' DT_NEEDED
    # the internal functions (all known) replace the exports, as the Python attach does
    assert links == [(111, [0x400], [1], False), (112, [0x500], [1], False), (113, [0x400, 0x500], [1, 1], True)]
    fds = {"ssl_write_enter": 111, "ssl_read_enter": 112, "ssl_exit_probe": 113}
    assert [(fds[prog], list(o), list(c), r) for prog, o, c, r in att.kernel.calls] == links
    att._drop_plan("4096:gnu:ee")
    assert len(att._free_slots) == free and "4096:gnu:ee" not in att._lane.plans
    att.close()


def test_a_library_the_lane_hooked_at_its_programs_exec_is_adopted_under_its_path(tmp_path, caplog):
    att = attacher(("gotls", "openssl"))
    p = tmp_path / "libssl.so.3"
    elf(p)
    of, mf = opened(p)
    att.content.store("4096:gnu:ee", of.fd, 4096, SSL_RESULT)
    att._plan("4096:gnu:ee", SSL_RESULT)
    os.close(of.fd)
    fd, st, links = lane_hooked(tmp_path / "copy.so", 3, 1030)
    ident = (st.st_dev, st.st_ino)
    att._lane.claimed.add(ident)
    att._lane.queue.append((os.getpid(), 9, None, None, None))          # the exec itself: nothing hooked
    att._lane.queue.append((os.getpid(), 9, (*ident, fd, links, "4096:gnu:ee", (700_000, 100_000, 400_000, 200_000),
                                             None), None, "/usr/lib/x86_64-linux-gnu/libssl.so.3"))
    with caplog.at_level("INFO", logger="plaintap.tls"):
        att._take_lane()
    h = att.attached[ident]
    assert h.lane and h.fd == fd and h.links == links and h.plan_slot == -1 and h.slot == -1
    assert h.target.maps_path == "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    line = next(r.getMessage() for r in caplog.records if "TLS hooks attached" in r.getMessage())
    assert line.startswith("TLS hooks attached: openssl /usr/lib/x86_64-linux-gnu/libssl.so.3 (4 probes in 3 links, "
                           f"opened as /proc/{os.getpid()}/root/usr/lib/x86_64-linux-gnu/libssl.so.3"), line
    assert "before the loader mapped it" in line and "0.7 ms after its exec" in line
    att._detach(ident, h)
    assert (ident, True) in att._lane.released                  # a place under the lane's live bound again
    att.close()


LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"


def worker_libssl(path):
    """The worker's analysis result of `path` and the links the Python attach makes from it
    (None, None when it holds no OpenSSL target)."""
    from plaintap.capture.elfsyms import ElfImage
    from plaintap.capture.tls_targets import analyze_image, target_from_result

    with ElfImage(str(path)) as e:
        r = analyze_image(e)
    t = target_from_result(r, frozenset({"openssl"}), path=str(path), ident=(0, 0), pid_seen=0,
                           maps_path=str(path))
    if t is None:
        return None, None
    return r, [(prog, list(o), list(c), ret) for prog, o, c, ret in tls_attach._openssl_links(t)]


def lane_libssl(path):
    import json

    from plaintap import _core

    fd = os.open(path, os.O_RDONLY)
    try:
        native = _core.openssl_analyze(fd)
    finally:
        os.close(fd)
    if native is None:
        return None, None
    return json.loads(native[0]), [(p, list(o), list(c), r) for p, o, c, r in native[1]]


def test_the_lanes_own_libssl_analysis_is_the_workers(tmp_path):
    import glob
    import shutil

    from .crafted import sparse_dynsym

    # the system's libssl, a never-seen build of it (bytes appended), and container
    # images' own copies where this machine has some
    shutil.copy(LIBSSL, tmp_path / "appended.so")
    with open(tmp_path / "appended.so", "ab") as f:
        f.write(os.urandom(24))
    files = [LIBSSL, tmp_path / "appended.so",
             *sorted(glob.glob("/var/lib/containers/storage/overlay/*/diff/usr/lib/*/libssl.so.*"))[:4]]
    for path in files:
        native, links = lane_libssl(path)
        assert native is not None, path
        worker, worker_links = worker_libssl(path)
        assert native == worker, path
        assert links == worker_links, path
        assert "ssl_read_internal" in native["openssl"]["symbols"], path
    # SSL_read_ex made to call nothing SSL_read calls: no internal functions, the exports
    # hooked instead, on both sides alike
    p = tmp_path / "no-internal.so"
    shutil.copy(LIBSSL, p)
    native, _ = lane_libssl(p)
    read_ex = native["openssl"]["symbols"]["SSL_read_ex"]
    with open(p, "r+b") as f:
        f.seek(read_ex)
        f.write(b"\xf3\x0f\x1e\xfa\xc3")          # endbr64; ret
    native, links = lane_libssl(p)
    worker, worker_links = worker_libssl(p)
    assert native == worker and links == worker_links
    assert "ssl_read_internal" not in native["openssl"]["symbols"]
    assert [prog for prog, *_ in links] == ["ssl_write_enter", "ssl_read_enter", "ssl_exit_probe"]
    # files that are no libssl, and one whose symbol table is out of bounds: the worker's
    for path in ("/bin/true", "/usr/lib/x86_64-linux-gnu/libc.so.6",
                 sparse_dynsym(LIBSSL, tmp_path / "sparse.so"), tmp_path / "missing-tail.so"):
        if str(path).endswith("missing-tail.so"):
            path.write_bytes(open(LIBSSL, "rb").read()[:200_000])
        assert lane_libssl(path) == (None, None), path


def test_a_libssl_build_the_lane_analysed_is_cached_and_planned(tmp_path, caplog):
    import json

    att = attacher(("gotls", "openssl"))
    fd, st, links = lane_hooked(tmp_path / "libssl.so.3", 3, 1040)
    ident = (st.st_dev, st.st_ino)
    att._lane.claimed.add(ident)
    att._lane.queue.append((os.getpid(), 11, (*ident, fd, links, "4096:gnu:ff", (600_000, 90_000, 300_000, 200_000),
                                              None, json.dumps(SSL_RESULT)), None, "/usr/lib/libssl.so.3"))
    with caplog.at_level("INFO", logger="plaintap.tls"):
        att._take_lane()
    h = att.attached[ident]
    assert h.lane and h.slot == -1 and h.plan_slot == -1 and h.links == links
    assert h.target.family == "openssl" and h.target.symbols["ssl_read_internal"] == 0x500
    sites, result = att.content.entry("4096:gnu:ff")
    assert result == SSL_RESULT                                       # cached like the worker's result
    assert "4096:gnu:ff" in att._lane.libraries and att._lane.plans["4096:gnu:ff"][0] == sites   # its copies
    line = next(r.getMessage() for r in caplog.records if "TLS hooks attached" in r.getMessage())
    assert "analysed at its program's exec, before the loader mapped it, by the exec lane in 0.3 ms" in line, line
    att._detach(ident, h)
    assert (ident, True) in att._lane.released
    att.close()


def test_a_libssl_analysis_with_offsets_outside_the_file_is_undone(tmp_path):
    import json

    att = attacher(("gotls", "openssl"))
    fd, st, links = lane_hooked(tmp_path / "libssl.so.3", 2, 1050)
    ident = (st.st_dev, st.st_ino)
    bad = json.loads(json.dumps(SSL_RESULT))
    bad["openssl"]["symbols"]["SSL_read"] = 1 << 40
    att._lane.queue.append((os.getpid(), 12, (*ident, fd, links, "4096:gnu:01", (1, 1, 1, 1), None,
                                              json.dumps(bad)), None, "/usr/lib/libssl.so.3"))
    att._take_lane()
    assert ident not in att.attached and att.content.entry("4096:gnu:01") is None
    assert (ident, True) in att._lane.released
    assert_closed(fd, 1050, 1051)
    att.close()
