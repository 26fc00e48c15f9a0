"""`http_metrics`: Prometheus counts of HTTP transactions, served at GET /metrics.

qtap's plugin of this name exports request metrics; plaintap keeps it small: a counter
of transactions by protocol (`http1` | `http2` | `grpc`), direction and status class
(`1xx` … `5xx`, `none` without a response or status), and a duration histogram by
protocol. The metrics live on `plaintap.metrics.REGISTRY` but are defined here, next to
the only code that updates them. The plugin's `config` is accepted and not read.
"""
from __future__ import annotations

from prometheus_client import Counter, Histogram

from .. import metrics
from ..records.transaction import rpc_protocol
from .base import TransactionContext

__all__ = ["HttpMetrics", "status_class", "http_transactions", "http_duration"]

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


class HttpMetrics:
    name = "http_metrics"

    def __init__(self, config: dict | None = None) -> None:
        self.config = config or {}

    def on_transaction(self, ctx: TransactionContext) -> None:
        tx = ctx.raw_tx  # only counts leave this plugin: no need for the redacted view
        protocol = rpc_protocol(tx)
        http_transactions.labels(protocol, ctx.conn.direction, status_class(tx)).inc()
        http_duration.labels(protocol).observe(tx.duration_ns / 1e9)
