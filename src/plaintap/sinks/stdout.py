"""The `stdout` event/object store: JSON Lines on standard output (RECORDS.md).

One record per line; the agent's own log goes to standard error, so stdout stays
machine-readable (human `access_logs` console lines never start with `{`).
"""
from __future__ import annotations

import sys
import threading
from typing import Sequence, TextIO

from ..records.model import Record, to_json_line

# Shared by every stdout writer (both stores, access logs) so lines never interleave.
STDOUT_LOCK = threading.Lock()


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
