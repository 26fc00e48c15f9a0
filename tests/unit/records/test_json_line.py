"""The native JSON line encoder (`_core.json_line`, used by `to_json_line`) gives exactly
the bytes of the Python definition (`json_line_py`), and declines what it does not know."""
from __future__ import annotations

import math
import random

import pytest

from plaintap import _core
from plaintap.records.model import Record, json_line_py, to_json_line

from .samples import SAMPLES

STRINGS = ["", "plain", 'quote " back \\ slash', "ctl \x00\x01\x08\x0c\x1f\x7f\n\r\t", "é ü → 漢字 🙂",
           "\u2028\u2029", "[REDACTED]", "x" * 300]
FLOATS = [0.0, -0.0, 2.0, 0.062, 1e16, 1e15, 9999999999999998.0, 0.0001, 0.00001, 1e-7, 123.456, 5e-324,
          1.7976931348623157e308, 1 / 3, 2.5, 1e22, 12345678.9]


def _compare(rec: Record, native_expected: bool = True) -> None:
    native = _core.json_line(rec.scope, rec.time_ns, rec.severity, rec.body, rec.attributes)
    assert (native is not None) is native_expected
    if native is not None:
        assert native == json_line_py(rec)
    assert to_json_line(rec) == json_line_py(rec)


def test_values_of_every_kind():
    attrs = {"s" + str(i): v for i, v in enumerate(STRINGS)}
    attrs.update({"f" + str(i): v for i, v in enumerate(FLOATS)})
    attrs.update({"i": 0, "neg": -5, "big": 2**63 - 1, "t": True, "no": False, "none": None,
                  "b_text": b"caf\xc3\xa9", "b_bin": b"\xff\xfe\x00", "ba": bytearray(b"\x80"), "k\n\"": "v"})
    _compare(Record("plaintap.events", 1_764_000_960_123_456_789, "body \"x\"\n", attrs, "WARN"))


def test_random_floats_and_strings_match():
    rng = random.Random(7)
    for _ in range(300):
        attrs = {}
        for j in range(8):
            x = rng.choice([rng.random() * 10 ** rng.randint(-12, 25), rng.uniform(-1e6, 1e6),
                            round(rng.random() * 100, 3), float(rng.randint(-10**17, 10**17)),
                            struct_float(rng)])
            attrs[f"f{j}"] = x
            attrs[f"s{j}"] = "".join(chr(rng.choice([rng.randint(0, 0x7f), rng.randint(0x80, 0x2fff),
                                                     rng.randint(0x10000, 0x1ffff)])) for _ in range(rng.randint(0, 12)))
        _compare(Record("plaintap.objects", rng.randint(0, 253_402_300_799 * 10**9), "b", attrs))


def struct_float(rng: random.Random) -> float:
    import struct
    while True:
        x = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(x):
            return x


def test_golden_sample_records_match():
    from plaintap.records.connection import connection_record
    from plaintap.records.transaction import artifact_record, http_objects, make_transaction_id

    from .samples import wall_ns
    n = 0
    for make in SAMPLES.values():
        conn, tx = make()
        recs = [artifact_record(conn, tx, wall_ns, make_transaction_id(conn.id, 0)),
                connection_record(conn, 1, True, wall_ns)]
        recs += http_objects(conn, tx, "full", wall_ns, "t-0")
        for r in recs:
            _compare(r)
            n += 1
    assert n >= len(SAMPLES) * 2


@pytest.mark.parametrize("attrs,time_ns", [
    ({"list": [1, 2]}, 0), ({"d": {}}, 0), ({"nan": math.nan}, 0), ({"inf": math.inf}, 0),
    ({"huge": 2**64}, 0), ({"lone": "\ud800"}, 0), ({"x": b"\xff", "x_b64": "earlier"}, 0),
    ({"x_b64": "earlier", "x": b"\xff"}, 0), ({"a": 1}, -1),
])
def test_declined_records_are_encoded_by_python(attrs, time_ns):
    rec = Record("plaintap.events", time_ns, "b", attrs)
    assert _core.json_line(rec.scope, rec.time_ns, rec.severity, rec.body, rec.attributes) is None
    if not (time_ns < 0):
        assert to_json_line(rec) == json_line_py(rec)
