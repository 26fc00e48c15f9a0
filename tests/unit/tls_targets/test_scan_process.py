"""Finding TLS libraries in live processes through /proc: maps parsing, deleted files,
paths with spaces, other mount namespaces, vanished processes, de-duplication."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from plaintap.capture.elfsyms import ElfImage
from plaintap.capture.tls_targets import (
    OpenSSLTarget,
    analyze_openssl,
    clear_cache,
    discover,
    parse_maps,
    parse_overlay_mounts,
    scan_process,
)

from .tls_helpers import LIBSSL, wait_for_line

PY_WITH_SSL = "import ssl, time; print('ready', flush=True); time.sleep(30)"
# /proc/<pid>/map_files needs CAP_SYS_ADMIN; mounts need a mount namespace of our own
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (/proc/<pid>/map_files)")
needs_root_and_unshare = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)


def py_loading(path: str) -> list[str]:
    """argv of a Python that loads the library at `path` by path and waits."""
    code = f"import ctypes, time; ctypes.CDLL({path!r}); print('ready', flush=True); time.sleep(30)"
    return [sys.executable, "-c", code]


def libssl_offsets() -> dict[str, int]:
    with ElfImage(LIBSSL) as elf:
        return analyze_openssl(elf).symbols


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


# -- maps parsing ----------------------------------------------------------------------

MAPS = """\
55d0c0a00000-55d0c0a28000 r--p 00000000 fe:00 100                        /usr/bin/python3.11
55d0c0a28000-55d0c0c00000 r-xp 00028000 fe:00 100                        /usr/bin/python3.11
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7f0000100000-7f0000120000 r--p 00000000 fe:00 200                        /opt/my libs/libssl.so.3
7f0000120000-7f0000180000 r-xp 0001f000 fe:00 200                        /opt/my libs/libssl.so.3
7f0000180000-7f00001a0000 r--p 0007c000 fe:00 200                        /opt/my libs/libssl.so.3
7f0000200000-7f0000260000 r-xp 0001f000 00:1f 300                        /tmp/libssl.so.3 (deleted)
7f0000300000-7f0000301000 r-xp 00000000 fe:00 400                        /memfd:jit (deleted)
7f0000400000-7f0000401000 r-xp 00000000 00:00 0                          [vdso]
7f0000500000-7f0000501000 r-xp 00000000 00:00 0                          [vsyscall]
"""


def test_parse_maps_keeps_executable_files_once():
    files = parse_maps(MAPS)
    assert [f.pathname for f in files] == [
        "/usr/bin/python3.11",
        "/opt/my libs/libssl.so.3",
        "/tmp/libssl.so.3",
        "/memfd:jit",
    ]
    spaced = files[1]
    assert (spaced.dev, spaced.ino) == (os.makedev(0xFE, 0), 200)
    assert (spaced.start, spaced.end, spaced.deleted) == (0x7F0000120000, 0x7F0000180000, False)
    deleted = files[2]
    assert deleted.deleted and deleted.dev == os.makedev(0, 0x1F)


def test_parse_maps_tolerates_garbage():
    assert parse_maps("") == []
    assert parse_maps("not a maps line\nzz-yy r-xp 0 fe:00 1 /x\n") == []


# -- live processes --------------------------------------------------------------------

def test_python_with_ssl_finds_libssl(spawn):
    proc = spawn([sys.executable, "-c", PY_WITH_SSL])
    wait_for_line(proc, "ready")
    targets = scan_process(proc.pid)
    libssl = [t for t in targets if t.maps_path.endswith("/libssl.so.3")]
    assert len(libssl) == 1, targets
    target = libssl[0]
    assert isinstance(target, OpenSSLTarget)
    assert target.family == "openssl" and target.flavour == "openssl-3"
    assert target.path.startswith(f"/proc/{proc.pid}/root/")
    st = os.stat(LIBSSL)
    assert (target.dev, target.ino) == (st.st_dev, st.st_ino)
    assert os.stat(target.path).st_ino == st.st_ino
    assert target.symbols == libssl_offsets()
    assert target.pid_seen == proc.pid
    # nothing else in a plain Python process is TLS
    assert len(targets) == 1, targets


def test_families_filter(spawn):
    proc = spawn([sys.executable, "-c", PY_WITH_SSL])
    wait_for_line(proc, "ready")
    assert scan_process(proc.pid, {"gotls", "nodetls"}) == []
    assert [t.family for t in scan_process(proc.pid, {"openssl"})] == ["openssl"]
    with pytest.raises(ValueError):
        scan_process(proc.pid, {"rustls"})


def test_vanished_process_yields_nothing():
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert scan_process(proc.pid) == []
    assert discover([proc.pid]) == {}


def test_discover_skips_itself_and_dedupes(spawn):
    import ssl  # noqa: F401  this process maps libssl too, and must not be reported

    a = spawn([sys.executable, "-c", PY_WITH_SSL])
    b = spawn([sys.executable, "-c", PY_WITH_SSL])
    wait_for_line(a, "ready")
    wait_for_line(b, "ready")
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert discover([os.getpid()]) == {}
    found = discover([os.getpid(), gone.pid, a.pid, b.pid])
    st = os.stat(LIBSSL)
    assert list(found) == [(st.st_dev, st.st_ino)]
    assert found[(st.st_dev, st.st_ino)].pid_seen == a.pid
    # the whole host: must not raise, and includes that libssl
    assert (st.st_dev, st.st_ino) in discover()


@needs_root
def test_deleted_library_is_opened_through_map_files(spawn, tmp_path):
    copy = tmp_path / "libssl.so.3"
    shutil.copy(LIBSSL, copy)
    ino = copy.stat().st_ino
    proc = spawn(py_loading(str(copy)))
    wait_for_line(proc, "ready")
    copy.unlink()
    targets = [t for t in scan_process(proc.pid) if t.maps_path == str(copy)]
    assert len(targets) == 1, scan_process(proc.pid)
    target = targets[0]
    assert target.path.startswith(f"/proc/{proc.pid}/map_files/")
    assert target.ino == ino and os.stat(target.path).st_ino == ino
    assert target.symbols == libssl_offsets()


@needs_root
def test_replaced_library_is_not_confused_with_its_replacement(spawn, tmp_path):
    """A library replaced under the same name (an upgrade): the process maps the old
    inode, and the new file at the path must not be reported for it."""
    path = tmp_path / "libssl.so.3"
    shutil.copy(LIBSSL, path)
    old_ino = path.stat().st_ino
    proc = spawn(py_loading(str(path)))
    wait_for_line(proc, "ready")
    new = tmp_path / "new.so"
    new.write_bytes(b"\x7fELF not really")
    os.replace(new, path)
    targets = [t for t in scan_process(proc.pid) if t.maps_path == str(path)]
    assert len(targets) == 1
    assert targets[0].ino == old_ino and os.stat(targets[0].path).st_ino == old_ino


def test_path_with_spaces(spawn, tmp_path):
    d = tmp_path / "dir with  spaces"
    d.mkdir()
    copy = d / "libssl.so.3"
    shutil.copy(LIBSSL, copy)
    proc = spawn(py_loading(str(copy)))
    wait_for_line(proc, "ready")
    targets = [t for t in scan_process(proc.pid) if t.maps_path == str(copy)]
    assert len(targets) == 1
    assert targets[0].path == f"/proc/{proc.pid}/root{copy}"
    assert targets[0].ino == copy.stat().st_ino


@needs_root_and_unshare
def test_other_mount_namespace(spawn, tmp_path):
    """A process in its own mount namespace sees a different file at the system libssl
    path (a bind-mounted copy, as a container image would have). The target must open
    *its* file, not the host's file at the same path."""
    copy = tmp_path / "container-libssl.so.3"
    shutil.copy(LIBSSL, copy)
    copy_ino = copy.stat().st_ino
    host_ino = os.stat(LIBSSL).st_ino
    assert copy_ino != host_ino
    script = f"mount --bind {copy} {LIBSSL} && exec {sys.executable} -c \"{PY_WITH_SSL}\""
    proc = spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    wait_for_line(proc, "ready")
    targets = [t for t in scan_process(proc.pid) if t.family == "openssl"]
    assert len(targets) == 1, targets
    target = targets[0]
    assert target.maps_path == LIBSSL  # the process sees the file at the system path
    assert target.path == f"/proc/{proc.pid}/root{LIBSSL}"
    assert target.ino == copy_ino and os.stat(target.path).st_ino == copy_ino
    assert os.stat(LIBSSL).st_ino == host_ino  # our own view is untouched
    assert target.symbols == libssl_offsets()
    # and discover keeps the host's libssl and the container's apart
    host = spawn([sys.executable, "-c", PY_WITH_SSL])
    wait_for_line(host, "ready")
    found = discover([proc.pid, host.pid], {"openssl"})
    assert sorted(t.ino for t in found.values()) == sorted([copy_ino, host_ino])


# -- overlayfs (container images) ------------------------------------------------------

MOUNTINFO = (
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "300 200 0:40 / / rw,relatime - overlay overlay "
    "rw,lowerdir=/var/lib/l/2/diff:/var/lib/l/1/diff,upperdir=/var/lib/c/upper,workdir=/var/lib/c/work\n"
    "301 300 0:41 / /data\\040dir rw - overlay overlay "
    "rw,lowerdir=/img/a\\:b::/img/data-only,upperdir=/up\\040x,workdir=/w\n"
)


def test_parse_overlay_mounts():
    mounts = parse_overlay_mounts(MOUNTINFO)
    assert set(mounts) == {os.makedev(0, 40), os.makedev(0, 41)}
    (root,) = mounts[os.makedev(0, 40)]
    assert root.mount_point == "/" and root.root == "/"
    assert root.layers == ("/var/lib/c/upper", "/var/lib/l/2/diff", "/var/lib/l/1/diff")
    (data,) = mounts[os.makedev(0, 41)]
    assert data.mount_point == "/data dir"
    assert data.layers == ("/up x", "/img/a:b", "/img/data-only")


OVERLAY_SCRIPT = """\
set -e
mount -t overlay overlay -o lowerdir={lower2}:{lower1},upperdir={upper},workdir={work} {merged}
exec {python} -c "import ctypes, time; ctypes.CDLL('{merged}/lib/libssl.so.3'); print('ready', flush=True); time.sleep(30)"
"""


@needs_root_and_unshare
def test_overlay_containers_sharing_a_layer_give_one_target(spawn, tmp_path):
    """Two "containers" (own mount namespace, own overlay mount) from one image whose
    second layer holds libssl: the kernel probes the layer's file, so there must be one
    target whose identity is the layer file's, reachable through either process."""
    lower1, lower2 = tmp_path / "layer1", tmp_path / "layer2"
    (lower1 / "lib").mkdir(parents=True)
    (lower2 / "lib").mkdir(parents=True)
    shutil.copy(LIBSSL, lower1 / "lib" / "libssl.so.3")
    (lower2 / "lib" / "other").write_text("x")
    layer_st = (lower1 / "lib" / "libssl.so.3").stat()
    procs = []
    for name in ("c1", "c2"):
        dirs = {k: tmp_path / name / k for k in ("upper", "work", "merged")}
        for d in dirs.values():
            d.mkdir(parents=True)
        script = OVERLAY_SCRIPT.format(lower1=lower1, lower2=lower2, python=sys.executable, **dirs)
        procs.append(spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", script]))
    for proc in procs:
        wait_for_line(proc, "ready")
    views = []
    for proc in procs:
        (target,) = [t for t in scan_process(proc.pid) if t.maps_path.endswith("/merged/lib/libssl.so.3")]
        view = os.stat(target.path)
        views.append(view)
        assert target.path == f"/proc/{proc.pid}/root{target.maps_path}"
        assert (target.dev, target.ino) == (layer_st.st_dev, layer_st.st_ino)
        assert view.st_ino == layer_st.st_ino
        assert target.symbols == libssl_offsets()
    assert views[0].st_dev != views[1].st_dev  # two overlay mounts, two views of one file
    found = discover([p.pid for p in procs], {"openssl"})
    ours = [t for t in found.values() if t.maps_path.endswith("/merged/lib/libssl.so.3")]
    assert len(ours) == 1 and ours[0].pid_seen == procs[0].pid
