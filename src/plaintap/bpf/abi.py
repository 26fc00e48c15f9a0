"""Python mirror of bpf/events.h, the one wire contract with the kernel programs.

Each struct is declared once as an ordered list of (field, struct-format) pairs; the
`struct.Struct` used to decode it and its field offsets are derived from that list. At
start-up `check_layout()` compares every size and offset — of this mirror and of the
native decoder (`plaintap._core.abi_layout()`, which decodes the hot path) — with
`obj/abi.json`, which the BPF build writes from the C compiler's own view of events.h, so
a mismatch is caught before the first event is misread.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from importlib import resources

EV_CONN_OPEN = 1
EV_CONN_CLOSE = 2
EV_DATA = 3
EV_GAP = 4
EV_PROC_EXEC = 5
EV_PROC_EXIT = 6
EV_SOCK_STATE = 7
EV_DGRAM = 8
# Names of the event types, for metrics labels and logs (never the bare number).
EVENT_NAMES = {
    EV_CONN_OPEN: "conn_open",
    EV_CONN_CLOSE: "conn_close",
    EV_DATA: "data",
    EV_GAP: "gap",
    EV_PROC_EXEC: "proc_exec",
    EV_PROC_EXIT: "proc_exit",
    EV_SOCK_STATE: "sock_state",
    EV_DGRAM: "dns_datagram",
}

ROLE_CLIENT = 1
ROLE_SERVER = 2

DIR_INGRESS = 1
DIR_EGRESS_INTERNAL = 2
DIR_EGRESS_EXTERNAL = 4
DIRECTION_NAMES = {
    DIR_INGRESS: "ingress",
    DIR_EGRESS_INTERNAL: "egress-internal",
    DIR_EGRESS_EXTERNAL: "egress-external",
}

FLOW_SEND = 0
FLOW_RECV = 1
SRC_SOCKET = 0
SRC_TLS = 1

GAP_REASONS = {1: "ringbuf_full", 2: "chunk_budget", 3: "sendfile", 4: "read_fault", 5: "process_budget",
               6: "sendmmsg", 7: "recvmmsg", 8: "splice", 9: "io_uring"}

# Ring-buffer maps (events.h): `events` carries EV_DATA and EV_GAP, `control` every other type.
DATA_RING = "events"
CONTROL_RING = "control"
# Exec wake-ups: an ev_header (EV_PROC_EXEC) per traced exec, for the TLS thread alone.
EXEC_WAKE_RING = "exec_wake"
CONTROL_TYPES = frozenset({EV_CONN_OPEN, EV_CONN_CLOSE, EV_PROC_EXEC, EV_PROC_EXIT, EV_SOCK_STATE, EV_DGRAM})

# Why the kernel untracked a connection (ev_conn_close.reason, CLOSE_* in events.h).
CLOSE_SYSCALL = 1
CLOSE_DUP = 3
CLOSE_RANGE = 4
CLOSE_EXEC = 5
CLOSE_EXIT = 6
CLOSE_STALE = 7

# Index → name of the kernel's per-CPU `counters` map (CNT_* in events.h).
KERNEL_COUNTERS = {
    0: "ringbuf_drops",
    1: "ringbuf_drop_bytes",
    2: "chunk_budget_gaps",
    3: "conn_table_full",
    4: "read_faults",
    5: "conns_filtered",
    6: "tls_no_fd",
    7: "tls_untracked",
    8: "procs_filtered",
    9: "control_ring_drops",
    10: "budget_shed_calls",
    11: "budget_shed_bytes",
    12: "sendmmsg_gaps",
    13: "recvmmsg_gaps",
    14: "splice_gaps",
    15: "sendfile_gaps",
    16: "io_uring_gaps",
    17: "io_uring_fixed_file_ops",
    18: "agent_peer_conns",
    19: "ssl_fd_stale",
    20: "conns_tracked",
    21: "conns_untracked",
    22: "untracked_dup",
    23: "untracked_close_range",
    24: "untracked_exec",
    25: "untracked_exit",
    26: "untracked_stale",
    27: "dup_followed",
    28: "dup_unfollowed",
    29: "socks_table_full",
    30: "proc_table_full",
    31: "dns_datagrams",
    32: "dns_datagrams_cut",
    33: "dns_mmsg_skipped",
    34: "dns_sock_stale",
    35: "dns_budget_shed",
    36: "gap_unreported_bytes",
}
KERNEL_COUNTER_SLOTS = 37

# tap.filters bits in the `proc_filters` map (PF_* in events.h).
PF_SKIP_ALL = 1
PF_SKIP_DATA = 2
PF_SKIP_TLS = 4
PF_SKIP_DNS = 8
CONN_NO_DATA = 2  # struct conn flags

DATA_CHUNK = 16384
DGRAM_MAX = 4096


@dataclass(frozen=True)
class Layout:
    name: str
    fields: tuple[tuple[str, str], ...]

    @property
    def fmt(self) -> str:
        return "<" + "".join(f for _, f in self.fields)

    @property
    def struct(self) -> struct.Struct:
        return struct.Struct(self.fmt)

    def offsets(self) -> dict[str, int]:
        out, fmt = {}, "<"
        for name, f in self.fields:
            out[name] = struct.calcsize(fmt)
            fmt += f
        return out


_HDR = (("type", "I"), ("pid", "I"), ("ts_ns", "Q"))

HEADER = Layout("ev_header", _HDR)
CONN_OPEN = Layout("ev_conn_open", _HDR + (
    ("conn_id", "Q"), ("tid", "I"), ("fd", "i"), ("uid", "I"), ("family", "H"),
    ("role", "B"), ("direction", "B"), ("local_port", "H"), ("remote_port", "H"),
    ("_pad0", "I"), ("local_addr", "16s"), ("remote_addr", "16s"), ("comm", "16s")))
CONN_CLOSE = Layout("ev_conn_close", _HDR + (
    ("conn_id", "Q"), ("bytes_sent", "Q"), ("bytes_recv", "Q"), ("fd", "i"), ("reason", "I"),
    ("tls_sent", "Q"), ("tls_recv", "Q"), ("lost", "Q")))
DATA = Layout("ev_data", _HDR + (
    ("conn_id", "Q"), ("offset", "Q"), ("len", "I"), ("flow", "B"), ("source", "B"),
    ("_pad0", "H"), ("fd", "i"), ("_pad1", "I")))  # payload follows at `data`
GAP = Layout("ev_gap", _HDR + (
    ("conn_id", "Q"), ("offset", "Q"), ("len", "Q"), ("flow", "B"), ("source", "B"),
    ("reason", "H"), ("_pad0", "I")))
PROC_EXEC = Layout("ev_proc_exec", _HDR + (
    ("ppid", "I"), ("uid", "I"), ("filename_len", "H"), ("args_len", "H"), ("_pad0", "I"),
    ("filename", "256s"), ("args", "512s")))
PROC_EXIT = Layout("ev_proc_exit", _HDR + (("exit_code", "i"), ("_pad0", "I")))
SOCK_STATE = Layout("ev_sock_state", _HDR + (("conn_id", "Q"), ("oldstate", "i"), ("newstate", "i")))
DGRAM = Layout("ev_dgram", _HDR + (
    ("sk", "Q"), ("tid", "I"), ("fd", "i"), ("uid", "I"), ("family", "H"), ("flow", "B"), ("syscall", "B"),
    ("local_port", "H"), ("remote_port", "H"), ("len", "I"), ("orig_len", "I"), ("_pad0", "I"),
    ("local_addr", "16s"), ("remote_addr", "16s"), ("comm", "16s")))  # datagram follows at `data`
SETTINGS = Layout("settings", (
    ("agent_pid", "I"), ("ignore_loopback", "B"), ("direction_mask", "B"),
    ("capture_data", "B"), ("_pad0", "B"), ("max_chunks", "I"), ("budget_rate", "I"),
    ("budget_burst", "Q"), ("agent_pidns_dev", "Q"), ("agent_pidns_ino", "Q"), ("agent_nspid", "I"),
    ("_pad1", "I")))

CONN_KEY = Layout("conn_key", (("tgid", "I"), ("fd", "i")))
CONN = Layout("conn", (
    ("id", "Q"), ("sent", "Q"), ("recv", "Q"), ("tls_sent", "Q"), ("tls_recv", "Q"), ("sk", "Q"),
    ("role", "B"), ("direction", "B"), ("flags", "B"), ("_pad0", "B"), ("ino", "I"), ("lost", "Q")))
ADOPTED_CONN_ID_BASE = 1 << 62

LAYOUTS = (HEADER, CONN_OPEN, CONN_CLOSE, DATA, GAP, PROC_EXEC, PROC_EXIT, SOCK_STATE, DGRAM, SETTINGS, CONN_KEY,
           CONN)
DATA_PAYLOAD_OFFSET = DATA.struct.size
DGRAM_PAYLOAD_OFFSET = DGRAM.struct.size
# Structs that end in a payload array: (offset of `data`, the constant sizing the array).
_PAYLOADS = {"ev_data": (DATA_PAYLOAD_OFFSET, "DATA_CHUNK"), "ev_dgram": (DGRAM_PAYLOAD_OFFSET, "DGRAM_MAX")}


class AbiMismatch(RuntimeError):
    """The Python mirror and the compiled events.h disagree."""


def load_compiled_layout() -> dict:
    return json.loads(resources.files("plaintap.bpf").joinpath("obj/abi.json").read_text())


def _native_problems(compiled: dict) -> list[str]:
    """The native decoder's offsets (plaintap._core) against the compiler's."""
    from .. import _core
    problems = []
    for name, fields in _core.abi_layout().items():
        if not isinstance(fields, dict):
            if compiled.get(name) != fields:
                problems.append(f"native {name} {fields} != {compiled.get(name)}")
            continue
        c = compiled.get(name, {})
        for field, off in fields.items():
            if c.get(field) != off:
                problems.append(f"native {name}.{field} at {off}, compiler says {c.get(field)}")
    return problems


def check_layout(compiled: dict | None = None) -> None:
    """Compare every mirrored struct with the compiler's layout; raise AbiMismatch."""
    compiled = compiled if compiled is not None else load_compiled_layout()
    problems = []
    for lay in LAYOUTS:
        c = compiled.get(lay.name)
        if c is None:
            problems.append(f"{lay.name} missing from abi.json")
            continue
        payload = _PAYLOADS.get(lay.name)
        size = lay.struct.size if payload is None else payload[0] + compiled.get(payload[1], 0)
        if size != c["size"]:
            problems.append(f"{lay.name}: size {size} != {c['size']}")
        offs = lay.offsets()
        for field, off in c.items():
            if field == "size":
                continue
            if field == "data" and payload is not None:
                if off != payload[0]:
                    problems.append(f"{lay.name}.data at {off}, mirror says {payload[0]}")
                continue
            if offs.get(field) != off:
                problems.append(f"{lay.name}.{field} at {off}, mirror says {offs.get(field)}")
    for name, value in (("DATA_CHUNK", DATA_CHUNK), ("CNT__MAX", KERNEL_COUNTER_SLOTS), ("PF_SKIP_ALL", PF_SKIP_ALL),
                        ("PF_SKIP_DATA", PF_SKIP_DATA), ("PF_SKIP_TLS", PF_SKIP_TLS), ("PF_SKIP_DNS", PF_SKIP_DNS),
                        ("DGRAM_MAX", DGRAM_MAX)):
        if compiled.get(name) != value:
            problems.append(f"{name} {compiled.get(name)} != {value}")
    problems += _native_problems(compiled)
    if problems:
        raise AbiMismatch("BPF object and Python mirror disagree (rebuild with `make -C bpf`): "
                          + "; ".join(problems))
