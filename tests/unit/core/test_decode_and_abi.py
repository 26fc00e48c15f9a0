"""Decoding raw kernel records built in memory with the ABI layouts (no kernel)."""
import socket

import pytest

from plaintap.bpf import abi
from plaintap.capture.decode import ConnOpen, Data, ProcExec, decode


def test_mirror_matches_compiled_header():
    abi.check_layout()


def test_mirror_mismatch_is_detected():
    compiled = abi.load_compiled_layout()
    compiled["ev_data"]["offset"] += 8
    with pytest.raises(abi.AbiMismatch, match="ev_data.offset"):
        abi.check_layout(compiled)


def test_conn_open_ipv4_and_mapped_ipv6():
    raw = abi.CONN_OPEN.struct.pack(abi.EV_CONN_OPEN, 42, 1000, 7, 43, 5, 1000, 2, abi.ROLE_CLIENT,
                                    abi.DIR_EGRESS_EXTERNAL, 5555, 443, 0, socket.inet_aton("10.0.0.1") + bytes(12),
                                    socket.inet_aton("93.184.216.34") + bytes(12), b"curl")
    ev = decode(raw)
    assert isinstance(ev, ConnOpen)
    assert (ev.local_addr, ev.local_port, ev.remote_addr, ev.remote_port) == ("10.0.0.1", 5555, "93.184.216.34", 443)
    assert ev.direction == "egress-external" and ev.comm == "curl"
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:127.0.0.1")
    raw6 = abi.CONN_OPEN.struct.pack(abi.EV_CONN_OPEN, 1, 1, 1, 1, 3, 0, 10, abi.ROLE_SERVER, abi.DIR_INGRESS,
                                     80, 9999, 0, mapped, socket.inet_pton(socket.AF_INET6, "::1"), b"")
    ev6 = decode(raw6)
    assert ev6.local_addr == "127.0.0.1" and ev6.remote_addr == "::1"


def test_data_payload_and_truncated_record():
    hdr = abi.DATA.struct.pack(abi.EV_DATA, 9, 5, 3, 100, 4, abi.FLOW_RECV, abi.SRC_SOCKET, 0, 7, 0)
    ev = decode(hdr + b"abcd")
    assert isinstance(ev, Data) and ev.data == b"abcd" and ev.offset == 100
    assert decode(hdr + b"ab") is None          # shorter than its len: counted, not raised


def test_exec_argv_and_unknown_type():
    raw = abi.PROC_EXEC.struct.pack(abi.EV_PROC_EXEC, 5, 1, 1, 0, 8, 12, 0, b"/bin/foo", b"foo\0-x\0bar\0")
    ev = decode(raw)
    assert isinstance(ev, ProcExec) and ev.filename == "/bin/foo" and ev.argv == ["foo", "-x", "bar"]
    assert decode(b"\x63\0\0\0" + bytes(40)) is None
    assert decode(b"\x01") is None
