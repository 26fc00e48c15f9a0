"""The agent's counters, exported at GET /metrics in Prometheus format.

Every drop has a named counter here (CONVENTIONS.md 9). Kernel-side counters live in a
BPF map; `KernelCounters` copies them in at scrape time so there is one place to look.

Made to alert on: every series that counts a loss or an error is present at 0 from
start (`preset_labels`; an alert on `increase(x[5m]) > 0` needs the 0 to exist), labels
are names (never a bare event-type number), and there are no `_created` twins.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               disable_created_metrics)
from prometheus_client.core import CounterMetricFamily

from .bpf import abi

disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)   # process_resident_memory_bytes, process_cpu_seconds_total, …

kernel_events = Counter("plaintap_kernel_events", "Ring-buffer records decoded, by type", ["type"], registry=REGISTRY)
unknown_events = Counter("plaintap_unknown_kernel_events", "Ring-buffer records of an unknown type or size",
                         registry=REGISTRY)
orphan_events = Counter("plaintap_orphan_events", "Data events for a connection the agent does not know",
                        registry=REGISTRY)
orphan_gap_bytes = Counter("plaintap_orphan_gap_bytes", "Bytes of kernel gap events (losses) for a connection the "
                           "agent does not know: lost, but on no stream", registry=REGISTRY)
unplaced_gap_bytes = Counter("plaintap_unplaced_gap_bytes", "Bytes the kernel lost on a connection that no gap "
                             "event or hole placed on a stream (from the kernel's per-connection books at close)",
                             registry=REGISTRY)
gap_overcount_bytes = Counter("plaintap_gap_overcount_bytes", "Gap bytes placed on a connection's streams beyond "
                              "what the kernel's books say it lost (expected 0)", registry=REGISTRY)
gap_bytes = Counter("plaintap_stream_gap_bytes", "Bytes missing from reassembled streams, by reason",
                    ["reason"], registry=REGISTRY)
records = Counter("plaintap_records", "Records produced, by scope", ["scope"], registry=REGISTRY)
sink_exported = Counter("plaintap_sink_exported_records", "Records a sink delivered", ["sink"], registry=REGISTRY)
sink_accepted = Counter("plaintap_sink_accepted_records", "Records handed to a sink (accepted = delivered + dropped "
                        "+ held)", ["sink"], registry=REGISTRY)
sink_recovered = Counter("plaintap_sink_recovered_records", "Records found in a sink's spool at start, left by an "
                         "earlier run", ["sink"], registry=REGISTRY)
sink_dropped = Counter("plaintap_sink_dropped_records", "Records a sink dropped, by reason",
                       ["sink", "reason"], registry=REGISTRY)
filtered_connections = Counter("plaintap_filtered_connections", "Connections not reported because tap.filters skip "
                               "their process (seen in user space)", registry=REGISTRY)
config_reloads = Counter("plaintap_config_reloads", "SIGHUP config reloads, by result", ["result"],
                         registry=REGISTRY)
container_lookups = Counter("plaintap_container_lookups", "Container metadata lookups from runtime APIs, by "
                            "result (ok, miss: no runtime answered, dropped: lookup queue full)", ["result"],
                            registry=REGISTRY)
connections_active = Gauge("plaintap_connections_active", "Connections currently tracked", registry=REGISTRY)
shed_bytes = Counter("plaintap_shed_bytes", "Bytes the data plane gave up on to stay within its memory budget, by "
                     "reason (reassembly_wait: a hole skipped early; held_unclassified: bytes held before the "
                     "protocol was known; shutdown: bytes connections held when finalising at stop ran out of "
                     "time, not parsed)", ["reason"], registry=REGISTRY)
held_bytes = Gauge("plaintap_held_bytes", "Bytes the data plane holds across connections (reassembly waits, "
                   "pre-classification holds; bounded by its budget)", registry=REGISTRY)
parse_errors = Counter("plaintap_parse_errors", "Protocol parse errors, by protocol", ["protocol"],
                       registry=REGISTRY)
dataplane = Counter("plaintap_dataplane", "Native data plane counters, by name (DATAPLANE_COUNTERS)",
                    ["counter"], registry=REGISTRY)
tls_refusals = Counter("plaintap_tls_refusals", "Files not hooked for TLS (or not now), by reason "
                       "(TLS_REFUSAL_REASONS)", ["reason"], registry=REGISTRY)
tls_scans_dropped = Counter("plaintap_tls_scans_dropped", "Exec-triggered TLS scans dropped because too many "
                            "processes were waiting for one", registry=REGISTRY)
tls_hooked_files = Gauge("plaintap_tls_hooked_files", "Files with TLS uprobes attached", registry=REGISTRY)
tls_exec_to_hooked = Histogram(
    "plaintap_tls_exec_to_hooked_seconds", "From a program's exec (kernel timestamp) to TLS hooks attached on a "
    "file first found for it (its executable, or a TLS library of its root)", registry=REGISTRY,
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0))
tls_analysis_cache_hits = Counter("plaintap_tls_analysis_cache_hits", "Files hooked from an analysis of the same "
                                  "content (build ID and hooked bytes equal) instead of analysing them",
                                  registry=REGISTRY)
tls_go_slots_used = Gauge("plaintap_tls_go_slots_used", "Go binaries holding one of the 256 Go hook slots",
                          registry=REGISTRY)
dns_events = Counter("plaintap_dns", "DNS in the data plane, by counter (DNS_COUNTERS): names learned, expired and "
                     "evicted from the address → name map, queries given up (too many waiting) or unanswered, "
                     "answers without their query, datagrams cut in the kernel, datagrams neither a query sent "
                     "nor an answer received, datagrams of processes tap.filters skip DNS for", ["counter"],
                     registry=REGISTRY)
dns_names = Gauge("plaintap_dns_names", "Addresses in the DNS address → name map (bounded; evictions counted in "
                  "plaintap_dns_total{counter=\"name_evictions\"})", registry=REGISTRY)
dns_parse_errors = Counter("plaintap_dns_parse_errors", "DNS messages that did not parse, by reason "
                           "(DNS_PARSE_ERRORS; also counted in plaintap_parse_errors_total{protocol=\"dns\"})",
                           ["reason"], registry=REGISTRY)

PARSE_PROTOCOLS = ("http1", "http2", "grpc", "dns")
# DataPlane.stats() names exported as plaintap_dataplane_total{counter}: transactions
# finished; summaries built natively; errors from the per-process Python hooks; parsers
# that failed (a bug; that connection's parsing stops); bytes dropped while a connection's
# protocol was unknown; connections finished by TCP_CLOSE without close(2), or by their
# process's exit.
DATAPLANE_COUNTERS = ("transactions", "native_summaries", "hook_errors", "parser_failures", "held_dropped_bytes",
                      "closed_by_state", "finished_by_exit")
DNS_PARSE_ERRORS = ("truncated", "name_loop", "name_too_long", "bad_label", "too_many_questions", "bad_rdata")
DNS_COUNTERS = ("names_learned", "names_expired", "name_evictions", "queries_given_up", "queries_unanswered",
                "answers_unmatched", "datagrams_cut", "datagrams_ignored", "datagrams_filtered")
SHED_REASONS = ("reassembly_wait", "held_unclassified", "shutdown")
SINK_DROP_REASONS = ("queue_full", "spool_full", "export_error", "shutdown", "interrupted", "spool_corrupt")
TLS_REFUSAL_REASONS = ("symlink", "not_regular_file", "identity_mismatch", "too_large", "truncated",
                       "too_many_functions", "function_too_long", "too_many_returns", "malformed", "bad_offsets",
                       "read_failed", "timeout", "cpu_limit", "memory_limit", "crashed", "attach_failed",
                       "rate_limited", "queue_full", "worker_unavailable", "unknown_go_layout")


def preset_labels() -> None:
    """Create every known series at 0, so /metrics holds them from start."""
    for name in abi.EVENT_NAMES.values():
        kernel_events.labels(name)
    for reason in abi.GAP_REASONS.values():
        gap_bytes.labels(reason)
    for scope in ("plaintap.events", "plaintap.objects"):
        records.labels(scope)
    for result in ("ok", "failed"):
        config_reloads.labels(result)
    for protocol in PARSE_PROTOCOLS:
        parse_errors.labels(protocol)
    for reason in TLS_REFUSAL_REASONS:
        tls_refusals.labels(reason)
    for reason in SHED_REASONS:
        shed_bytes.labels(reason)
    for name in DATAPLANE_COUNTERS:
        dataplane.labels(name)
    for name in DNS_COUNTERS:
        dns_events.labels(name)
    for reason in DNS_PARSE_ERRORS:
        dns_parse_errors.labels(reason)


def preset_sink(name: str) -> None:
    """A sink's series at 0 (called when the sink is made)."""
    sink_exported.labels(name)
    sink_accepted.labels(name)
    sink_recovered.labels(name)
    for reason in SINK_DROP_REASONS:
        sink_dropped.labels(name, reason)


class KernelCounters:
    """Collector that reads the BPF `counters` map at scrape time; every counter is
    reported (0 before the kernel side is loaded)."""

    def __init__(self) -> None:
        self._read: Callable[[], dict[str, int]] | None = None

    def attach(self, read: Callable[[], dict[str, int]]) -> None:
        self._read = read

    def collect(self):
        values: dict[str, int] = {}
        if self._read is not None:
            try:
                values = self._read()
            except Exception:
                values = {}
        fam = CounterMetricFamily("plaintap_kernel", "Kernel-side counters (drops, filters)", labels=["counter"])
        for name in abi.KERNEL_COUNTERS.values():
            fam.add_metric([name], values.get(name, 0))
        for name, v in values.items():
            if name not in abi.KERNEL_COUNTERS.values():
                fam.add_metric([name], v)
        yield fam


KERNEL_COUNTERS = KernelCounters()
REGISTRY.register(KERNEL_COUNTERS)
preset_labels()


def register_kernel_counters(read: Callable[[], dict[str, int]]) -> KernelCounters:
    """Read the kernel's counters from `read` from now on."""
    KERNEL_COUNTERS.attach(read)
    return KERNEL_COUNTERS
