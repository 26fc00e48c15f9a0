"""Is the agent working? The capture loop's heartbeat, the backlog/outage/lag gauges, and the
facts `/status` shows people.

`Health.beat()` is called by the capture loop every time it finishes a bounded slice of
work (an idle loop still beats every poll timeout). `/healthz` fails once no beat came for
`stall_after` seconds: a loop that spins inside one batch, or blocks, is reported, not
hidden. `/readyz` is "capturing": set once the BPF programs are attached and what the rings
gathered meanwhile is handled (at most 1 s of it), cleared when the agent starts stopping.

The gauges are read at scrape time from the live sinks (sinks/base.py `LIVE_SINKS`), so
each is present from the first scrape, with zeros before any traffic:

    plaintap_sink_queue_bytes{sink}             memory held by the sink's queue (estimate)
    plaintap_sink_queue_records{sink}           records in memory (queued or in flight)
    plaintap_sink_oldest_record_age_seconds{sink}   age of the oldest record not delivered (memory or spool)
    plaintap_sink_spool_bytes{sink}, plaintap_sink_spool_records{sink}
    plaintap_sink_retrying{sink}                1 while the backend is failing
    plaintap_sink_outage_seconds{sink}          how long it has been failing
    plaintap_sink_queue_limit_bytes{kind}       the memory budget of events / objects queues
    plaintap_spool_limit_bytes                  --spool-size (0: no spool)
    plaintap_loop_last_progress_seconds         since the capture loop last made progress
    plaintap_pipeline_lag_seconds               now − kernel time of the newest event processed
    plaintap_ring_fill_ratio                    ring buffer fill (when the reader can tell; else -1)
    plaintap_healthy                            what /healthz answers (1 = 200)

(The agent's RSS is `process_resident_memory_bytes`, from the process collector.)
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

from prometheus_client.core import GaugeMetricFamily

from .sinks.base import LIVE_SINKS

DEFAULT_STALL_AFTER = 15.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class Health:
    """The capture loop's heartbeat and the agent-wide facts for /healthz, /status, gauges."""

    def __init__(self, stall_after: float = DEFAULT_STALL_AFTER, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after = stall_after
        self.clock = clock
        self.started = clock()
        self.last_beat: float | None = None      # None until the loop's first turn: nothing to judge yet
        self.lag_seconds = 0.0
        self.beats = 0
        self.ready = threading.Event()
        self.stopping = False
        self.memory_limit = 0
        self.budget = None          # sinks.base.MemoryBudget
        self.spool_limit = 0
        self.ring_fill: Callable[[], float] | None = None
        self.notes: dict[str, str] = {}

    def beat(self, newest_event_ns: int | None = None) -> None:
        """The capture loop made progress. `newest_event_ns`: CLOCK_MONOTONIC ns (the kernel's
        bpf_ktime_get_ns) of the newest event just processed, None when the ring was empty."""
        self.last_beat = self.clock()
        self.beats += 1
        if newest_event_ns is None:
            self.lag_seconds = 0.0
        else:
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            self.lag_seconds = max(0.0, (now - newest_event_ns) / 1e9)

    def touch(self) -> None:
        """The capture loop made a turn (no lag information)."""
        self.last_beat = self.clock()

    def since_progress(self) -> float:
        last = self.last_beat
        return 0.0 if last is None else max(0.0, self.clock() - last)

    def healthy(self) -> tuple[bool, str]:
        stalled = self.since_progress()
        if stalled > self.stall_after:
            return False, f"the capture loop made no progress for {stalled:.0f}s (limit {self.stall_after:.0f}s)"
        return True, "ok"

    def ring_fill_ratio(self) -> float:
        if self.ring_fill is None:
            return -1.0
        try:
            return float(self.ring_fill())
        except Exception:
            return -1.0

    def status(self) -> dict:
        """Everything a person asks first, as one JSON-able dict (GET /status)."""
        ok, why = self.healthy()
        sinks = [s.state() for s in list(LIVE_SINKS)]
        problems = []
        for s in sinks:
            if s["retrying"]:
                problems.append(f"{s['name']}: backend failing for {s['outage_seconds']:.0f}s "
                                f"({s['last_error'] or 'no answer'}); holding {s['queue_records']} records in "
                                f"memory and {s['spool_records']} on disk")
            dropped = sum(s["dropped"].values())
            if dropped:
                problems.append(f"{s['name']}: {dropped} records dropped so far "
                                + ", ".join(f"{k}={v}" for k, v in sorted(s["dropped"].items())))
        if not ok:
            problems.insert(0, why)
        return {
            "ready": self.ready.is_set() and not self.stopping,
            "healthy": ok,
            "health": why,
            "stopping": self.stopping,
            "uptime_seconds": round(self.clock() - self.started, 1),
            "loop": {"last_progress_seconds": round(self.since_progress(), 3),
                     "pipeline_lag_seconds": round(self.lag_seconds, 3), "beats": self.beats,
                     "ring_fill_ratio": self.ring_fill_ratio()},
            "memory": {"resident_bytes": resident_bytes(), "limit_bytes": self.memory_limit,
                       "sink_queue_limit_bytes": self.budget.limit if self.budget else 0,
                       "sink_queue_bytes": self.budget.used() if self.budget else 0},
            "spool": {"limit_bytes": self.spool_limit},
            "sinks": sinks,
            "problems": problems,
            **({"notes": dict(self.notes)} if self.notes else {}),
        }


class HealthCollector:
    """Prometheus collector: the gauges listed in the module doc, computed at scrape time."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self):
        h = self.health
        per_sink: dict[str, dict] = {}
        for sink in list(LIVE_SINKS):
            st = sink.state()
            agg = per_sink.setdefault(st["name"], {"queue_bytes": 0, "queue_records": 0, "age": 0.0, "spool_bytes": 0,
                                                   "spool_records": 0, "retrying": 0, "outage": 0.0})
            agg["queue_bytes"] += st["queue_bytes"]
            agg["queue_records"] += st["queue_records"]
            agg["age"] = max(agg["age"], st["oldest_record_age_seconds"])
            agg["spool_bytes"] += st["spool_bytes"]
            agg["spool_records"] += st["spool_records"]
            agg["retrying"] = max(agg["retrying"], int(st["retrying"]))
            agg["outage"] = max(agg["outage"], st["outage_seconds"])
        specs = [
            ("plaintap_sink_queue_bytes", "Memory held by a sink's queue (estimate, bytes)", "queue_bytes"),
            ("plaintap_sink_queue_records", "Records a sink holds in memory (queued or in flight)", "queue_records"),
            ("plaintap_sink_oldest_record_age_seconds", "Age of the oldest record a sink has not delivered", "age"),
            ("plaintap_sink_spool_bytes", "Bytes in a sink's disk spool", "spool_bytes"),
            ("plaintap_sink_spool_records", "Records in a sink's disk spool", "spool_records"),
            ("plaintap_sink_retrying", "1 while a sink's backend is failing and deliveries are retried", "retrying"),
            ("plaintap_sink_outage_seconds", "How long a sink's backend has been failing", "outage"),
        ]
        for name, doc, key in specs:
            fam = GaugeMetricFamily(name, doc, labels=["sink"])
            for sink_name, agg in sorted(per_sink.items()):
                fam.add_metric([sink_name], agg[key])
            yield fam
        fam = GaugeMetricFamily("plaintap_sink_queue_limit_bytes", "Memory budget of the sink queues, by kind",
                                labels=["kind"])
        if h.budget is not None:
            fam.add_metric(["events"], h.budget.limit)
            fam.add_metric(["objects"], h.budget.objects_cap)
        yield fam
        yield GaugeMetricFamily("plaintap_spool_limit_bytes", "Disk budget of the spools (--spool-size)",
                                value=h.spool_limit)
        yield GaugeMetricFamily("plaintap_loop_last_progress_seconds", "Seconds since the capture loop last made "
                                "progress", value=h.since_progress())
        yield GaugeMetricFamily("plaintap_pipeline_lag_seconds", "Now minus the kernel time of the newest event "
                                "processed", value=h.lag_seconds)
        yield GaugeMetricFamily("plaintap_ring_fill_ratio", "Kernel ring buffer fill, 0..1 (-1: unknown)",
                                value=h.ring_fill_ratio())
        yield GaugeMetricFamily("plaintap_healthy", "1 when /healthz answers 200", value=int(h.healthy()[0]))
