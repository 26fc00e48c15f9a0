"""ProcessTable.prefetch: an exec seen ahead of its turn is read from /proc at once, so a
process gone by its turn (a container's short first program) keeps what /proc said."""
from __future__ import annotations

import os

from plaintap.capture.process import ProcessTable


def test_an_exec_read_early_keeps_its_facts_after_the_process_is_gone(tmp_path):
    proc = tmp_path / "proc"
    d = proc / "4242"
    d.mkdir(parents=True)
    (d / "status").write_text("Name:\tcurl\nUid:\t0\t0\t0\t0\n")
    (d / "cmdline").write_bytes(b"curl\0-sk\0https://x/\0")
    (d / "cgroup").write_text("0::/machine.slice/libpod-" + "ab" * 32 + ".scope\n")
    os.symlink("/usr/bin/curl", d / "exe")
    table = ProcessTable(proc_root=str(proc))
    table.prefetch(4242)
    for f in d.iterdir():
        f.unlink()
    d.rmdir()                                   # gone before its exec is handled
    info = table.on_exec(4242, "/usr/bin/curl", ["curl", "-sk", "https://x/"], 0, ppid=1)
    assert info.exe == "/usr/bin/curl" and info.container_id == "ab" * 32
    # read early, but another image by its turn (its command line differs): not taken for it
    d = proc / "4343"
    d.mkdir()
    (d / "status").write_text("Name:\tsleep\nUid:\t0\t0\t0\t0\n")
    (d / "cmdline").write_bytes(b"sleep\x001\x00")
    (d / "cgroup").write_text("0::/machine.slice/libpod-" + "cd" * 32 + ".scope\n")
    os.symlink("/usr/bin/sleep", d / "exe")
    table.prefetch(4343)
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
    info = table.on_exec(4343, "/usr/bin/true", ["true"], 0, ppid=1)
    assert info.exe == "/usr/bin/true" and not info.container_id
