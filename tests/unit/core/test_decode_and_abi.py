"""Decoding raw kernel records (native decoder) built in memory with the ABI layouts."""
import socket

import pytest

from plaintap import _core
from plaintap.bpf import abi

from .kernel_records import conn_open, data, gap, proc_exec


def test_mirror_and_native_decoder_match_compiled_header():
    abi.check_layout()
    assert _core.abi_layout()["ev_data"]["data"] == abi.DATA_PAYLOAD_OFFSET


def test_mirror_mismatch_is_detected():
    compiled = abi.load_compiled_layout()
    compiled["ev_data"]["offset"] += 8
    with pytest.raises(abi.AbiMismatch, match="ev_data.offset"):
        abi.check_layout(compiled)


def test_native_decoder_mismatch_is_detected():
    compiled = abi.load_compiled_layout()
    compiled["ev_conn_open"]["comm"] += 1
    with pytest.raises(abi.AbiMismatch, match="native ev_conn_open.comm"):
        abi.check_layout(compiled)


def test_conn_open_ipv4_and_mapped_ipv6():
    raw = conn_open(7, 1000, pid=42, fd=5, uid=1000, local=("10.0.0.1", 5555), remote=("93.184.216.34", 443),
                    comm=b"curl")
    t, pid, ts, ev = _core.decode(raw)
    assert (t, pid, ts) == (abi.EV_CONN_OPEN, 42, 1000)
    assert (ev["local_addr"], ev["local_port"], ev["remote_addr"], ev["remote_port"]) == \
        ("10.0.0.1", 5555, "93.184.216.34", 443)
    assert ev["direction"] == "egress-external" and ev["comm"] == "curl" and ev["uid"] == 1000
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1")
    raw6 = conn_open(1, 1, family=10, role=abi.ROLE_SERVER, direction=abi.DIR_INGRESS, laddr=mapped,
                     raddr=socket.inet_pton(socket.AF_INET6, "::1"))
    ev6 = _core.decode(raw6)[3]
    assert ev6["local_addr"] == "127.0.0.1" and ev6["remote_addr"] == "::1" and ev6["direction"] == "ingress"


def test_data_payload_and_truncated_record():
    raw = data(3, 5, 100, b"abcd", flow=abi.FLOW_RECV, pid=9, fd=7)
    ev = _core.decode(raw)[3]
    assert ev["data"] == b"abcd" and ev["offset"] == 100 and ev["fd"] == 7
    with pytest.raises(ValueError):
        _core.decode(raw[:-2])          # shorter than its len: counted by the data plane


def test_every_gap_reason_has_the_abi_name():
    """The native decoder names each GAP_* reason as abi.GAP_REASONS does (metrics labels)."""
    for code, name in abi.GAP_REASONS.items():
        assert _core.decode(gap(1, 2, 0, 10, reason=code))[3]["reason"] == name
    assert _core.decode(gap(1, 2, 0, 10, reason=200))[3]["reason"] == "unknown"


def test_exec_argv_and_unknown_type():
    ev = _core.decode(proc_exec(5, 1, b"/bin/foo", b"foo\0-x\0bar\0"))[3]
    assert ev["filename"] == "/bin/foo" and ev["argv"] == ["foo", "-x", "bar"]
    for bad in (b"\x63\0\0\0" + bytes(40), b"\x01"):
        with pytest.raises(ValueError):
            _core.decode(bad)


def test_garbage_never_crashes():
    import random
    rnd = random.Random(3)
    for n in range(3000):
        blob = bytes([n % 9, 0, 0, 0]) + rnd.randbytes(rnd.randrange(0, 900))
        try:
            _core.decode(blob)
        except ValueError:
            pass
