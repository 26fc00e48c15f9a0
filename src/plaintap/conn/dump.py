"""`--dump-streams DIR`: write every connection's reassembled byte streams to files.

For each connection id: `<id>.send` and `<id>.recv` hold the socket bytes the local
process wrote and read (`.tls.send` / `.tls.recv` for TLS plaintext), `<id>.gaps` lists
missing ranges (`flow source offset length` per line, no file when nothing is missing),
and `<id>.json` the connection's metadata, written at close. Like tcpflow, for
debugging and for tests that compare captured bytes with what was really sent.
"""
from __future__ import annotations

import json
import os

from ..bpf import abi

_FLOW = {abi.FLOW_SEND: "send", abi.FLOW_RECV: "recv"}


class StreamDumper:
    def __init__(self, directory: str) -> None:
        self.dir = directory
        os.makedirs(directory, exist_ok=True)

    def _file(self, conn, flow: int, source: int):
        files = conn.state.setdefault("dump", {})
        key = (flow, source)
        f = files.get(key)
        if f is None:
            suffix = ("tls." if source == abi.SRC_TLS else "") + _FLOW[flow]
            f = files[key] = open(os.path.join(self.dir, f"{conn.id}.{suffix}"), "ab")
        return f

    def on_open(self, conn) -> None:
        conn.state["dump_offsets"] = {}

    def on_data(self, conn, flow: int, source: int, pieces: list, ts_ns: int) -> None:
        f = self._file(conn, flow, source)
        offs = conn.state.setdefault("dump_offsets", {})
        pos = offs.get((flow, source), 0)
        for p in pieces:
            if isinstance(p, int):
                with open(os.path.join(self.dir, f"{conn.id}.gaps"), "a") as g:
                    g.write(f"{_FLOW[flow]} {source} {pos} {p}\n")
                pos += p
            else:
                f.write(p)
                pos += len(p)
        offs[(flow, source)] = pos

    def on_close(self, conn) -> None:
        for f in conn.state.pop("dump", {}).values():
            f.close()
        meta = {
            "connection.id": conn.id, "pid": conn.pid, "fd": conn.fd, "exe": conn.process.exe,
            "direction": conn.direction, "local": [conn.local_addr, conn.local_port],
            "remote": [conn.remote_addr, conn.remote_port], "bytes_sent": conn.bytes_sent,
            "bytes_received": conn.bytes_recv,
        }
        with open(os.path.join(self.dir, f"{conn.id}.json"), "w") as f:
            json.dump(meta, f)
