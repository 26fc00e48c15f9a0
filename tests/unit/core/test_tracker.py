"""Connection tracker: report timing from kernel timestamps, fd reuse, process exit."""
from plaintap.bpf import abi
from plaintap.capture.decode import ConnClose, ConnOpen, Data, ProcExit
from plaintap.capture.process import ProcessInfo, ProcessTable
from plaintap.conn.tracker import ConnectionTracker

MS = 1_000_000


class Procs(ProcessTable):
    def get(self, pid, comm="", uid=None):
        return ProcessInfo(pid, exe="/usr/bin/x", comm=comm, uid=uid)


def make(forgotten=None):
    reports = []
    t = ConnectionTracker(Procs(), lambda c, part, fin: reports.append((c.kid, part, fin, c.bytes_sent)),
                          forget_kernel_entry=(lambda p, f: forgotten.append((p, f))) if forgotten is not None else None)
    return t, reports


def opened(kid, ts, fd=3, pid=10):
    return ConnOpen(pid, ts, kid, pid, fd, 0, abi.ROLE_CLIENT, "egress-external", "10.0.0.1", 1000 + kid,
                    "1.1.1.1", 443, "x")


def test_short_connection_gets_only_the_final_report():
    t, reports = make()
    t.handle(opened(1, 0))
    t.handle(Data(10, 1 * MS, 1, 0, abi.FLOW_SEND, abi.SRC_SOCKET, 3, b"abc"))
    t.tick(100 * MS)
    t.handle(ConnClose(10, 200 * MS, 1, 3, 0, 3))
    t.tick(10_000 * MS)
    assert reports == [(1, 0, True, 3)]


def test_long_connection_reports_at_500ms_then_every_10s_then_final():
    t, reports = make()
    t.handle(opened(1, 0))
    for now in (499 * MS, 500 * MS, 5_000 * MS, 10_499 * MS, 10_500 * MS, 20_000 * MS):
        t.tick(now)
    t.handle(ConnClose(10, 21_000 * MS, 1, 0, 0, 3))
    assert [(p, f) for _, p, f, _ in reports] == [(0, False), (1, False), (2, True)]


def test_fd_reuse_never_mixes_connections():
    t, reports = make()
    t.handle(opened(1, 0, fd=3))
    t.handle(Data(10, 1, 1, 0, abi.FLOW_SEND, abi.SRC_SOCKET, 3, b"first"))
    t.handle(ConnClose(10, 2, 1, 5, 0, 3))
    t.handle(opened(2, 3, fd=3))
    t.handle(Data(10, 4, 2, 0, abi.FLOW_SEND, abi.SRC_SOCKET, 3, b"second!"))
    t.handle(ConnClose(10, 5, 2, 7, 0, 3))
    assert [(k, s) for k, _, _, s in reports] == [(1, 5), (2, 7)]


def test_process_exit_finalizes_and_forgets_kernel_entries():
    forgotten = []
    t, reports = make(forgotten)
    t.handle(opened(1, 0, fd=4, pid=77))
    t.handle(opened(2, 0, fd=5, pid=77))
    t.handle(ProcExit(77, 10, 0))
    assert sorted(k for k, _, f, _ in reports if f) == [1, 2]
    assert sorted(forgotten) == [(77, 4), (77, 5)]
    assert not t.conns


def test_data_for_unknown_connection_is_counted_not_raised():
    t, reports = make()
    t.handle(Data(10, 1, 99, 0, abi.FLOW_SEND, abi.SRC_SOCKET, 3, b"x"))
    assert reports == []
