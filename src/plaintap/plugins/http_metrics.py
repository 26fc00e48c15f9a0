"""`http_metrics`: Prometheus metrics of HTTP transactions, served at GET /metrics.

Two families, defined here next to the only code that updates them (on
`plaintap.metrics.REGISTRY`):

* qtap's label set — `method`, `host`, `status_code`, `protocol` — on the same seven
  series qtap's plugin exports, named `plaintap_http_<qtap name>` (README: mapping):
  `requests_total`, `requests_duration_ms`, `requests_size_bytes`, `responses_total`,
  `responses_duration_ms`, `responses_size_bytes` and the unlabelled `duration_ms`.
  Request duration is first → last request byte, response duration first → last
  response byte, `duration_ms` the whole exchange; sizes are body bytes. `host` is the
  request's host without port; at most `MAX_HOSTS` distinct hosts get their own series,
  later ones are counted under `host="other"` (the metrics of a busy node must not grow
  without bound);
* a low-cardinality summary: transactions by protocol, direction and status class
  (`1xx` … `5xx`, `none` without a response), and the exchange duration in seconds.

The plugin's `config` is accepted and not read.
"""
from __future__ import annotations

from prometheus_client import Counter, Histogram

from .. import metrics
from ..records.transaction import rpc_protocol, url_host
from .base import TransactionContext

__all__ = ["HttpMetrics", "status_class", "http_transactions", "http_duration", "MAX_HOSTS"]

MAX_HOSTS = 1000
_QTAP_LABELS = ["method", "host", "status_code", "protocol"]
_MS_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000,
               300000, 600000)
_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
                 1000000, 2500000, 5000000, 10000000, 50000000)


def _qtap_family(kind: str, what: str):
    return (
        Counter(f"plaintap_http_{kind}", f"HTTP {kind} seen by an http_metrics plugin (qtap's {kind}_total)",
                _QTAP_LABELS, registry=metrics.REGISTRY),
        Histogram(f"plaintap_http_{kind}_duration_ms", f"First to last byte of the {what}, milliseconds",
                  _QTAP_LABELS, registry=metrics.REGISTRY, buckets=_MS_BUCKETS),
        Histogram(f"plaintap_http_{kind}_size_bytes", f"Body bytes of the {what}", _QTAP_LABELS,
                  registry=metrics.REGISTRY, buckets=_SIZE_BUCKETS),
    )


requests_total, requests_duration, requests_size = _qtap_family("requests", "request")
responses_total, responses_duration, responses_size = _qtap_family("responses", "response")
exchange_duration = Histogram("plaintap_http_duration_ms", "First request byte to last response byte, milliseconds",
                              registry=metrics.REGISTRY, buckets=_MS_BUCKETS)

http_transactions = Counter(
    "plaintap_http_transactions", "HTTP transactions seen by an http_metrics plugin",
    ["protocol", "direction", "status_class"], registry=metrics.REGISTRY)
http_duration = Histogram(
    "plaintap_http_duration_seconds", "First request byte to last response byte (kernel clock)",
    ["protocol"], registry=metrics.REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))


def status_class(tx) -> str:
    resp = tx.response
    if resp is None or resp.status is None or not 100 <= resp.status <= 599:
        return "none"
    return f"{resp.status // 100}xx"


_hosts: set[str] = set()


def _host_label(host: str | None) -> str:
    """The host as a label value, or "other" once MAX_HOSTS distinct hosts have series."""
    host = host or "unknown"
    if host in _hosts:
        return host
    if len(_hosts) >= MAX_HOSTS:
        return "other"
    _hosts.add(host)
    return host


def _span_ms(msg) -> float:
    return max(0, msg.last_ns - msg.first_ns) / 1e6 if msg.first_ns and msg.last_ns else 0.0


class HttpMetrics:
    name = "http_metrics"

    def __init__(self, config: dict | None = None) -> None:
        self.config = config or {}

    def on_transaction(self, ctx: TransactionContext) -> None:
        tx = ctx.raw_tx  # only counts leave this plugin: no need for the redacted view
        protocol = rpc_protocol(tx)
        http_transactions.labels(protocol, ctx.conn.direction, status_class(tx)).inc()
        http_duration.labels(protocol).observe(tx.duration_ns / 1e9)
        resp = tx.response
        status = str(resp.status) if resp is not None and resp.status is not None else "none"
        labels = (tx.request.method or "unknown", _host_label(url_host(ctx.conn, tx)), status, protocol)
        requests_total.labels(*labels).inc()
        requests_duration.labels(*labels).observe(_span_ms(tx.request))
        requests_size.labels(*labels).observe(tx.request.body_size)
        if resp is not None:
            responses_total.labels(*labels).inc()
            responses_duration.labels(*labels).observe(_span_ms(resp))
            responses_size.labels(*labels).observe(resp.body_size)
        exchange_duration.observe(tx.duration_ns / 1e6)
