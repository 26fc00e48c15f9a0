"""--dump-streams (conn/dump.py): a root-only directory, files created exclusively 0600
without following symlinks, sizes bounded. Runs as root in CI (it chowns); skipped
elsewhere only for the ownership case."""
from __future__ import annotations

import os
import stat

import pytest

from plaintap.bpf import abi
from plaintap.capture.process import ProcessInfo
from plaintap.conn.dump import DumpDirError, StreamDumper, dump_dropped_bytes, dump_refused
from records.samples import Connection


def connection(id: str = "5eed1234c1", kid: int = 1) -> Connection:
    return Connection(kid=kid, id=id, pid=42, fd=5, role=1, direction="egress-internal", local_addr="127.0.0.1",
                      local_port=50000, remote_addr="127.0.0.1", remote_port=80, open_ns=0,
                      process=ProcessInfo(42, exe="/usr/bin/curl"))


def fresh_dir(tmp_path, mode=0o700):
    d = tmp_path / "dump"
    d.mkdir()
    d.chmod(mode)
    return d


def counter(c, *labels) -> float:
    return (c.labels(*labels) if labels else c)._value.get()


def test_creates_missing_dir_0700_and_files_0600(tmp_path):
    d = tmp_path / "new"
    dumper = StreamDumper(str(d))
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    conn = connection()
    dumper.on_data(conn, abi.FLOW_SEND, abi.SRC_SOCKET, [b"hello ", 3, b"world"], 0)
    dumper.on_data(conn, abi.FLOW_RECV, abi.SRC_TLS, [b"plain"], 0)
    dumper.on_close(conn)
    assert (d / f"{conn.id}.send").read_bytes() == b"hello world"
    assert (d / f"{conn.id}.tls.recv").read_bytes() == b"plain"
    assert (d / f"{conn.id}.gaps").read_text() == "send 0 6 3\n"
    assert '"connection.id"' in (d / f"{conn.id}.json").read_text()
    for p in d.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o701, 0o1777])
def test_refuses_a_directory_others_can_use(tmp_path, mode):
    d = fresh_dir(tmp_path, mode)
    with pytest.raises(DumpDirError) as err:
        StreamDumper(str(d))
    assert "0700" in str(err.value) and "\n" not in str(err.value)


def test_refuses_a_symlinked_directory(tmp_path):
    real = fresh_dir(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(DumpDirError, match="symlink"):
        StreamDumper(str(link))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_refuses_a_directory_owned_by_another_user(tmp_path):
    d = fresh_dir(tmp_path)
    os.chown(d, 65534, 65534)
    with pytest.raises(DumpDirError, match="owned by uid 65534"):
        StreamDumper(str(d))


def test_planted_symlink_is_refused_and_nothing_written_through_it(tmp_path):
    d = fresh_dir(tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"original")
    dumper = StreamDumper(str(d))
    conn = connection()
    (d / f"{conn.id}.send").symlink_to(victim)
    (d / f"{conn.id}.json").symlink_to(victim)
    before = counter(dump_refused, "exists")
    dumper.on_data(conn, abi.FLOW_SEND, abi.SRC_SOCKET, [b"attacker wants this in victim"], 0)
    dumper.on_data(conn, abi.FLOW_SEND, abi.SRC_SOCKET, [b"again"], 0)
    dumper.on_data(conn, abi.FLOW_RECV, abi.SRC_SOCKET, [b"other flow is fine"], 0)
    dumper.on_close(conn)
    assert victim.read_bytes() == b"original"
    assert counter(dump_refused, "exists") == before + 2    # .send once (not per chunk) and .json
    assert (d / f"{conn.id}.recv").read_bytes() == b"other flow is fine"


def test_sizes_are_bounded_and_the_rest_is_noted(tmp_path):
    d = fresh_dir(tmp_path)
    dumper = StreamDumper(str(d), max_file_bytes=10, max_total_bytes=15)
    conn = connection()
    before = counter(dump_dropped_bytes)
    dumper.on_data(conn, abi.FLOW_SEND, abi.SRC_SOCKET, [b"0123456789abcdef"], 0)
    dumper.on_data(conn, abi.FLOW_RECV, abi.SRC_SOCKET, [b"ABCDEFGHIJ"], 0)
    dumper.on_close(conn)
    assert (d / f"{conn.id}.send").read_bytes() == b"0123456789"
    assert (d / f"{conn.id}.recv").read_bytes() == b"ABCDE"
    assert counter(dump_dropped_bytes) - before >= 6 + 5
    assert (d / f"{conn.id}.gaps").read_text().splitlines() == ["send 0 10 6 dump-limit", "recv 0 5 5 dump-limit"]


def test_many_connections_keep_a_bounded_number_of_files_open(tmp_path, monkeypatch):
    from plaintap.conn import dump as dump_mod
    monkeypatch.setattr(dump_mod, "MAX_OPEN_FILES", 4)
    d = fresh_dir(tmp_path)
    dumper = StreamDumper(str(d))
    conns = [connection(id=f"r1c{i:x}", kid=i) for i in range(10)]
    for _ in range(3):
        for c in conns:
            dumper.on_data(c, abi.FLOW_SEND, abi.SRC_SOCKET, [b"ab"], 0)
    assert len(dumper._open) <= 4
    for c in conns:
        dumper.on_close(c)
        assert (d / f"{c.id}.send").read_bytes() == b"ababab"
    dumper.close()
