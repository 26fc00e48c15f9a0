"""The record every sink writes: an OTLP-log-shaped value, built by pure functions.

`Record` is deliberately plain (scope, time, severity, body, attributes) so the same value
becomes a JSON line, an OTLP LogRecord or an object-store entry without reinterpretation.
See ../shared/reference/RECORDS.md for the contract.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .. import _core

SCOPE_EVENTS = "plaintap.events"
SCOPE_OBJECTS = "plaintap.objects"


@dataclass(slots=True)
class Record:
    scope: str
    time_ns: int                      # wall clock, ns since the epoch
    body: str
    attributes: dict = field(default_factory=dict)
    severity: str = "INFO"


def rfc3339_ns(time_ns: int) -> str:
    """2026-11-24T15:16:00.123456789Z"""
    secs, ns = divmod(time_ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"


def _json_attrs(attrs: dict) -> dict:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, (bytes, bytearray)):
            try:
                out[k] = bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                out[f"{k}_b64"] = base64.b64encode(v).decode("ascii")
        else:
            out[k] = v
    return out


def to_json_line(rec: Record) -> str:
    """The stdout store's JSON Lines form (RECORDS.md "stdout format"). Encoded by the
    native core (`_core.json_line`, the same bytes) when the record holds only the value
    types it knows; else by `json_line_py`."""
    try:
        line = _core.json_line(rec.scope, rec.time_ns, rec.severity, rec.body, rec.attributes)
    except TypeError:   # not a plain record (e.g. attributes not a dict): Python decides
        line = None
    return line if line is not None else json_line_py(rec)


def json_line_py(rec: Record) -> str:
    """`to_json_line` in Python: the definition the native encoder is tested against."""
    return json.dumps({
        "scope": rec.scope,
        "timestamp": rfc3339_ns(rec.time_ns),
        "severity": rec.severity,
        "body": rec.body,
        "attributes": _json_attrs(rec.attributes),
    }, ensure_ascii=False, separators=(",", ":"))
