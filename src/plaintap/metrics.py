"""The agent's counters, exported at GET /metrics in Prometheus format.

Every drop has a named counter here (CONVENTIONS.md 9). Kernel-side counters live in a
BPF map; `KernelCounters` copies them in at scrape time so there is one place to look.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)

kernel_events = Counter("plaintap_kernel_events", "Ring-buffer records decoded, by type", ["type"], registry=REGISTRY)
unknown_events = Counter("plaintap_unknown_kernel_events", "Ring-buffer records of an unknown type or size",
                         registry=REGISTRY)
orphan_events = Counter("plaintap_orphan_events", "Data events for a connection the agent does not know",
                        registry=REGISTRY)
gap_bytes = Counter("plaintap_stream_gap_bytes", "Bytes missing from reassembled streams, by reason",
                    ["reason"], registry=REGISTRY)
records = Counter("plaintap_records", "Records produced, by scope", ["scope"], registry=REGISTRY)
sink_exported = Counter("plaintap_sink_exported_records", "Records a sink delivered", ["sink"], registry=REGISTRY)
sink_dropped = Counter("plaintap_sink_dropped_records", "Records a sink dropped, by reason",
                       ["sink", "reason"], registry=REGISTRY)
filtered_connections = Counter("plaintap_filtered_connections", "Connections not reported because tap.filters skip "
                               "their process (seen in user space)", registry=REGISTRY)
config_reloads = Counter("plaintap_config_reloads", "SIGHUP config reloads, by result", ["result"],
                         registry=REGISTRY)
connections_active = Gauge("plaintap_connections_active", "Connections currently tracked", registry=REGISTRY)
parse_errors = Counter("plaintap_parse_errors", "Protocol parse errors, by protocol", ["protocol"],
                       registry=REGISTRY)


class KernelCounters:
    """Collector that reads the BPF `counters` map at scrape time."""

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self._read = read

    def collect(self):
        try:
            values = self._read()
        except Exception:
            values = {}
        fam = CounterMetricFamily("plaintap_kernel", "Kernel-side counters (drops, filters)", labels=["counter"])
        for name, v in values.items():
            fam.add_metric([name], v)
        yield fam


def register_kernel_counters(read: Callable[[], dict[str, int]]) -> KernelCounters:
    c = KernelCounters(read)
    REGISTRY.register(c)
    return c
