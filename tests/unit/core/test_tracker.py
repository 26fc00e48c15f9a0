"""Connection table (native core): report timing from kernel timestamps, fd reuse,
process exit, TCP_CLOSE, orphans, memory budget."""
from plaintap.bpf import abi

from .kernel_records import MS, Plane, conn_close, conn_open, data, gap, proc_exit, sock_state


def finals(p):
    return [(c.kid, part, fin, c.bytes_sent) for c, part, fin in p.reports]


def test_short_connection_gets_only_the_final_report():
    p = Plane()
    p.feed(conn_open(1, 0), data(1, 1 * MS, 0, b"abc"))
    p.tick(100 * MS)
    p.feed(conn_close(1, 200 * MS, sent=3))
    p.tick(10_000 * MS)
    assert finals(p) == [(1, 0, True, 3)]


def test_long_connection_reports_at_500ms_then_every_10s_then_final():
    p = Plane()
    p.feed(conn_open(1, 0))
    for now in (499 * MS, 500 * MS, 5_000 * MS, 10_499 * MS, 10_500 * MS, 20_000 * MS):
        p.tick(now)
    p.feed(conn_close(1, 21_000 * MS))
    assert [(part, fin) for _, part, fin, _ in finals(p)] == [(0, False), (1, False), (2, True)]


def test_reports_are_snapshots():
    p = Plane()
    p.feed(conn_open(1, 0), data(1, 1, 0, b"abc"))
    p.tick(500 * MS)
    p.feed(data(1, 2, 3, b"defg"), conn_close(1, 600 * MS))
    (c0, _, _), (c1, _, _) = p.reports
    assert (c0.bytes_sent, c0.finalized, c0.close_ns) == (3, False, None)
    assert (c1.bytes_sent, c1.finalized, c1.close_ns) == (7, True, 600 * MS)


def test_fd_reuse_never_mixes_connections():
    p = Plane()
    p.feed(conn_open(1, 0, fd=3), data(1, 1, 0, b"first"), conn_close(1, 2, sent=5),
           conn_open(2, 3, fd=3), data(2, 4, 0, b"second!"), conn_close(2, 5, sent=7))
    assert [(k, s) for k, _, _, s in finals(p)] == [(1, 5), (2, 7)]


def test_every_kernel_untrack_reason_ends_the_connection_and_drops_its_state():
    """dup2 over fd 3, close_range, close-on-exec, exit, a stale entry: the kernel says
    why in ev_conn_close.reason; each ends the connection with its final bytes, and a late
    data event for it (none should come) is an orphan, never added to it."""
    reasons = (abi.CLOSE_DUP, abi.CLOSE_RANGE, abi.CLOSE_EXEC, abi.CLOSE_EXIT, abi.CLOSE_STALE)
    p = Plane()
    for kid, reason in enumerate(reasons, 1):
        p.feed(conn_open(kid, kid * MS, fd=3), data(kid, kid * MS + 1, 0, b"old"),
               conn_close(kid, kid * MS + 2, sent=3, reason=reason))
    assert [(k, s) for k, _, _, s in finals(p)] == [(k, 3) for k in range(1, len(reasons) + 1)]
    assert len(p.dp) == 0
    p.feed(data(1, 100 * MS, 3, b"late", fd=3))
    assert p.stats["orphan_events"] == 1 and len(p.dp) == 0


def test_dup2_over_a_tracked_fd_feeds_the_new_connection():
    """The kernel ends connection 1 (fd 3) when dup2(4, 3) replaces its file, and carries
    connection 2 on fd 3 too: data on fd 3 arrives under id 2."""
    p = Plane()
    p.feed(conn_open(1, 0, fd=3), data(1, 1, 0, b"A1", fd=3),
           conn_open(2, 2, fd=4), data(2, 3, 0, b"B1", fd=4),
           conn_close(1, 4, sent=2, fd=3, reason=abi.CLOSE_DUP),
           data(2, 5, 2, b"B2", fd=3), conn_close(2, 6, sent=4, fd=3))
    assert [(k, s) for k, _, _, s in finals(p)] == [(1, 2), (2, 4)]
    assert p.stats["orphan_events"] == 0


def test_process_exit_finalizes_and_forgets_kernel_entries():
    p = Plane()
    p.feed(conn_open(1, 0, fd=4, pid=77), conn_open(2, 0, fd=5, pid=77), proc_exit(77, 10))
    assert sorted(k for k, _, f, _ in finals(p) if f) == [1, 2]
    assert sorted(p.hooks.forgotten) == [(77, 4), (77, 5)]
    assert len(p.dp) == 0 and p.hooks.exits == [77]
    assert p.stats["finished_by_exit"] == 2


def test_tcp_close_without_close_syscall_finishes_after_grace():
    p = Plane(close_grace_ns=1000 * MS)
    p.feed(conn_open(1, 0), sock_state(1, 100 * MS, new=7))
    p.tick(400 * MS)           # first report time passed, grace not yet over
    assert len(p.dp) == 1
    p.tick(1200 * MS)
    assert len(p.dp) == 0 and [f for _, _, f in p.reports][-1] is True
    assert p.stats["closed_by_state"] == 1
    p.feed(conn_close(1, 1300 * MS))           # a late close(2) of the same socket: nothing new
    assert len([r for r in p.reports if r[2]]) == 1


def test_data_for_unknown_connection_is_counted_not_raised():
    p = Plane()
    p.feed(data(99, 1, 0, b"x"))
    assert p.reports == [] and p.stats["orphan_events"] == 1


def test_unknown_and_short_records_are_counted():
    p = Plane()
    p.feed(b"\x63\0\0\0" + bytes(40), b"\x01", data(1, 1, 0, b"abcd")[:-2])
    assert p.stats["unknown_events"] == 3


def test_lost_ring_record_is_reported_as_gap_bytes():
    """A data record the kernel could not even report leaves a hole: it is delivered as a
    gap and counted with the ring-buffer losses, so gap bytes equal the dropped payload."""
    p = Plane(dump=True)
    p.feed(conn_open(1, 0), data(1, 1, 0, b"abc"), data(1, 3, 1003, b"xyz"),
           gap(1, 4, 1006, 10, reason=1), conn_close(1, 5))
    pieces = [x for _, flow, src, ps in p.pieces for x in ps]
    assert pieces == [b"abc", 1000, b"xyz", 10]
    assert p.stats["gap_bytes"] == {"ringbuf_full": 1010}


def test_the_close_events_loss_books_settle_what_no_event_placed():
    """The kernel keeps per connection the payload bytes that reached no data event
    (ev_conn_close.lost). What gap events and holes placed on its streams is charged; the
    rest (e.g. ciphertext lost with its gap event just before TLS plaintext took over, where
    no later byte shows the hole) is counted as unplaced, so the books are exact."""
    from plaintap.bpf import abi as a
    p = Plane()
    # 10 bytes announced by a gap event + a 1000-byte hole; the kernel lost 1010 + 300
    p.feed(conn_open(1, 0), data(1, 1, 0, b"abc"), data(1, 3, 1003, b"xyz"),
           gap(1, 4, 1006, 10, reason=1), conn_close(1, 5, lost=1310))
    assert p.stats["gap_bytes"] == {"ringbuf_full": 1010}
    assert p.stats["unplaced_gap_bytes"] == 300 and p.stats["gap_overcount_bytes"] == 0
    # process budget gaps are losses too; a read fault is not
    p.feed(conn_open(2, 6, fd=4), gap(2, 7, 0, 50, reason=5, pid=10), gap(2, 8, 50, 7, reason=4),
           conn_close(2, 9, fd=4, lost=50))
    assert p.stats["unplaced_gap_bytes"] == 300 and p.stats["gap_overcount_bytes"] == 0
    # an unknown connection: its gap events, then at close the rest of its books, are orphans
    p.feed(gap(9, 10, 0, 40, reason=1), conn_close(9, 11, fd=9, lost=100))
    assert p.stats["orphan_gap_bytes"] == 100
    # finished before its close event (the process exited): settled when the close comes
    p.feed(conn_open(3, 12, fd=5, pid=20), gap(3, 13, 0, 8, reason=1, pid=20), proc_exit(20, 14),
           conn_close(3, 15, fd=5, pid=20, lost=20))
    assert p.stats["unplaced_gap_bytes"] == 312 and p.stats["orphan_gap_bytes"] == 100
    # placed beyond the books (should not happen) is counted, not hidden
    p.feed(conn_open(4, 16, fd=6), gap(4, 17, 0, 30, reason=1), conn_close(4, 18, fd=6, lost=10))
    assert p.stats["gap_overcount_bytes"] == 20


def test_a_hole_nobody_fills_is_given_up_once_newer_records_are_50ms_on():
    """A hole with no gap event (the kernel's ring was too full to report it) does not hold
    the stream up to its pending bound: once records 50 ms newer (kernel time) have been
    handled, every hole of the stream becomes a gap counted as ringbuf_full and what waited
    behind it is delivered. Wall time alone (an agent behind the ring) gives nothing up."""
    from plaintap.bpf import abi as a
    p = Plane(dump=True)
    p.feed(conn_open(1, 0), conn_open(2, 0, fd=4),
           data(1, 1 * MS, 0, b"abc"), data(1, 2 * MS, 1003, b"xyz"), data(1, 3 * MS, 2006, b"end"),
           data(1, 3 * MS, 0, b"rx", flow=a.FLOW_RECV))
    p.tick(10_000 * MS)                 # the clock moved, the records did not: keep waiting
    waiting = p.dp.held_bytes
    assert waiting >= 6 and p.stats["gap_bytes"] == {}
    p.feed(data(2, 40 * MS, 0, b"other"))
    p.tick(10_000 * MS)
    assert p.stats["gap_bytes"] == {}     # 37 ms newer: not yet
    p.feed(data(2, 53 * MS, 5, b"later"))
    p.tick(10_000 * MS)
    assert p.stats["gap_bytes"] == {"ringbuf_full": 2000}
    pieces = [x for c, flow, src, ps in p.pieces if c.kid == 1 and flow == a.FLOW_SEND for x in ps]
    assert pieces == [b"abc", 1000, b"xyz", 1000, b"end"]
    p.feed(data(1, 60 * MS, 2009, b"more"))   # the stream goes on from there
    pieces = [x for c, flow, src, ps in p.pieces if c.kid == 1 and flow == a.FLOW_SEND for x in ps]
    assert pieces[-1] == b"more"


def test_a_tls_stream_that_ends_short_of_the_kernels_end_lost_its_tail():
    """The close event says where each TLS plaintext stream ended: bytes lost at the very
    end, with no gap event and no later data to reveal them, are a hole too."""
    from plaintap.bpf import abi as a
    p = Plane(dump=True)
    p.feed(conn_open(1, 0), data(1, 1, 0, b"abc", source=a.SRC_TLS),
           data(1, 2, 0, b"hello", source=a.SRC_TLS, flow=a.FLOW_RECV),
           conn_close(1, 3, tls_sent=10, tls_recv=5))
    assert p.stats["gap_bytes"] == {"ringbuf_full": 7}
    sent = [x for c, flow, src, ps in p.pieces if flow == a.FLOW_SEND for x in ps]
    assert sent == [b"abc", 7]
    # a plaintext connection: its socket streams, one of them never seen at all
    p.feed(conn_open(2, 4, fd=5), data(2, 5, 0, b"abc", fd=5), conn_close(2, 6, sent=8, recv=4, fd=5))
    assert p.stats["gap_bytes"] == {"ringbuf_full": 7 + 5 + 4}


def test_byte_budget_sheds_waiting_bytes_counted():
    p = Plane(byte_budget=64 * 1024, dump=True)
    p.feed(conn_open(1, 0))
    # out-of-order bytes waiting for a hole that never fills
    p.feed(*[data(1, i, 100 + i * 16384, b"y" * 16384) for i in range(8)])
    assert p.dp.held_bytes <= 64 * 1024 + 16384
    assert p.stats["shed_bytes"].get("reassembly_wait") == 100
    p.feed(conn_close(1, 99))
    assert p.dp.held_bytes == 0


def test_many_idle_connections_are_cheap():
    p = Plane()
    p.feed(*[conn_open(k, 0, fd=k) for k in range(1, 2001)])
    assert len(p.dp) == 2000 and p.dp.held_bytes == 0
    p.close_all(1)
    assert len(p.dp) == 0 and len(p.reports) == 2000
