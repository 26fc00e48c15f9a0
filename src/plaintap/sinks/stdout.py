"""The `stdout` event/object store: JSON Lines on standard output (RECORDS.md).

One record per line; the agent's own log goes to standard error. Standard output carries
one format only: when a store writes records there, the `access_logs` lines (human
console lines or their JSON form) go to standard error instead (`access_log_stream`), so
`plaintap | jq` always parses, on a terminal or a pipe alike.
"""
from __future__ import annotations

import sys
import threading
from typing import Sequence, TextIO

from ..records.model import Record, to_json_line

# Shared by every stdout writer (both stores, access logs) so lines never interleave.
STDOUT_LOCK = threading.Lock()


def stores_write_stdout(cfg) -> bool:
    """True when an event or object store of `cfg` writes its records to standard output
    (type `stdout`, or `otel` with `protocol: stdout`)."""
    for store in (cfg.services.event_store, cfg.services.object_store):
        if store.type == "stdout" or (store.type == "otel" and getattr(store, "protocol", None) == "stdout"):
            return True
    return False


def access_log_stream(cfg) -> TextIO:
    """Where `access_logs` lines go: standard output when no store writes records there,
    else standard error (one format per stream)."""
    return sys.stderr if stores_write_stdout(cfg) else sys.stdout


class JsonLinesSink:
    def __init__(self, name: str = "stdout", stream: TextIO | None = None) -> None:
        self.name = name
        self._stream = stream

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def export(self, batch: Sequence[Record]) -> None:
        text = "".join(to_json_line(r) + "\n" for r in batch)
        with STDOUT_LOCK:
            self.stream.write(text)
            self.stream.flush()

    def force_flush(self, timeout: float = 5.0) -> bool:
        with STDOUT_LOCK:
            self.stream.flush()
        return True

    def shutdown(self) -> None:
        try:
            self.force_flush()
        except (OSError, ValueError):
            pass
