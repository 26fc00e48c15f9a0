"""Disk spool throughput: how fast a sink's spool takes records in (append, fsync'ed per
batch) and gives them back (peek + commit, the cursor fsync'ed per batch), on this disk,
with records shaped like connection events (~400 bytes of attributes each). It tells
whether the spool or the backend limits replay after an outage: a backend that takes fewer
records per second than `peek+commit` is the limit.

    .venv/bin/python bench/bench_spool.py [--batches 200] [--batch 512]

Checks that every record comes back, in order, before printing rates.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from plaintap.records.model import SCOPE_EVENTS, Record  # noqa: E402
from plaintap.sinks.spool import Spool, SpoolBudget  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch", type=int, default=512, help="records per append and per peek (the sinks' batch)")
    a = ap.parse_args()
    total = a.batches * a.batch
    with tempfile.TemporaryDirectory(prefix="plaintap-spool-bench-") as d:
        spool = Spool(d, "events", SpoolBudget(4 << 30)).open()
        t0 = time.perf_counter()
        for b in range(a.batches):
            batch = [Record(SCOPE_EVENTS, time.time_ns(), "connection",
                            {"seq": b * a.batch + i, "server.address": "api.example.com", "pad": "x" * 300})
                     for i in range(a.batch)]
            assert spool.append(batch) == a.batch
        appended = time.perf_counter() - t0
        size = spool.bytes
        t0 = time.perf_counter()
        seen = 0
        while spool.records:
            peeked = spool.peek(a.batch)
            for rec in peeked.records:
                assert rec.attributes["seq"] == seen, (rec.attributes["seq"], seen)
                seen += 1
            spool.commit(peeked)
        replayed = time.perf_counter() - t0
        spool.close()
    assert seen == total, (seen, total)
    print(f"{total} records, {size / total:.0f} bytes each on disk, batches of {a.batch}")
    print(f"append (fsync per batch):       {total / appended:10.0f} records/s")
    print(f"peek + commit (fsync per batch): {total / replayed:10.0f} records/s")


if __name__ == "__main__":
    main()
