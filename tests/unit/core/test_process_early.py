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


def test_a_process_gone_before_anyone_read_proc_gets_the_cgroup_read_at_its_exec(tmp_path):
    # nothing in /proc for it (neither prefetch nor on_exec saw it); the exec lane read its
    # cgroup at the exec; its parent (conmon) is in no container
    table = ProcessTable(proc_root=str(tmp_path / "proc"))
    asked = []
    texts = {4444: "0::/machine.slice/libpod-" + "ef" * 32 + ".scope/container\n"}

    def at_exec(pid):
        asked.append(pid)
        return texts.pop(pid, None)

    table.exec_cgroup = at_exec
    info = table.on_exec(4444, "/usr/bin/curl", ["curl", "https://x/"], 0, ppid=1)
    assert info.container_id == "ef" * 32 and info.container.ref.runtime == "podman"
    assert info.exe == "/usr/bin/curl" and asked == [4444]
    # none read at its exec: the parent's container, as before (none here)
    info = table.on_exec(4545, "/usr/bin/true", ["true"], 0, ppid=1)
    assert not info.container_id and asked == [4444, 4545]
