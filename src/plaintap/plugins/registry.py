"""From a configured stack to the plugin instances that run for each transaction.

`build_stack(stack)` turns one `config.model.Stack` into a `PluginStack`;
`PluginStacks(cfg)` does it once for every stack of a config (build it again after a
reload) and picks the stack for a connection: `tap.endpoints[].domain` overrides
`tap.http.stack` for that domain. Every plugin type the config accepts is implemented
here; an empty stack tells the caller it need not parse HTTP for those connections.

A plugin that raises does not stop the others or the agent: the error is counted in
`plaintap_plugin_errors{plugin}` and logged with its traceback the first time.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter

from .. import metrics
from ..config.model import NO_STACK, Config, Stack
from ..records.redact import DEFAULT_REDACTION, Redaction
from ..records.transaction import url_host
from .access_logs import AccessLogs
from .base import ObjectUrl, Plugin, PluginOutput, TransactionContext
from .http_capture import HttpCapture
from .detect_errors import DetectErrors
from .http_metrics import HttpMetrics
from .report_usage import ReportUsage

__all__ = [
    "PluginStack",
    "PluginStacks",
    "build_stack",
    "stack_for_connection",
    "stack_name_for_connection",
]

log = logging.getLogger("plaintap.plugins")

plugin_errors = Counter("plaintap_plugin_errors", "Transactions a plugin failed on, by plugin",
                        ["plugin"], registry=metrics.REGISTRY)

# type → factory(plugin config section, color) for the plugins that do something.
_FACTORIES: dict[str, Callable[[object, bool], Plugin]] = {
    "http_capture": lambda spec, color: HttpCapture(spec.config),
    "access_logs": lambda spec, color: AccessLogs(spec.config, color=color),
    "http_metrics": lambda spec, color: HttpMetrics(spec.config),
    "report_usage": lambda spec, color: ReportUsage(),
    "detect_errors": lambda spec, color: DetectErrors(spec.config),
}


class PluginStack:
    """The plugins of one stack, in config order. Falsy when it has none."""

    __slots__ = ("name", "plugins", "_failed")

    def __init__(self, name: str, plugins: tuple[Plugin, ...]) -> None:
        self.name = name
        self.plugins = plugins
        self._failed: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.plugins)

    def __repr__(self) -> str:
        return f"PluginStack({self.name!r}, {[p.name for p in self.plugins]})"

    def run(self, ctx: TransactionContext) -> PluginOutput:
        """Give `ctx` to every plugin in order; return `ctx.out`. Never raises."""
        for plugin in self.plugins:
            try:
                plugin.on_transaction(ctx)
            except Exception:
                plugin_errors.labels(plugin.name).inc()
                if plugin.name not in self._failed:
                    self._failed.add(plugin.name)
                    log.exception("plugin %s (stack %s) failed on a transaction; later failures are only counted",
                                  plugin.name, self.name)
        return ctx.out


def build_stack(stack: Stack | None, name: str = "", *, color: bool = False) -> PluginStack:
    """The runnable plugins of a configured stack (None: an empty stack).

    Raises ValueError for a plugin type with no implementation here, which a config that
    passed `config.model` validation cannot contain.
    """
    plugins: list[Plugin] = []
    for spec in (stack.plugins if stack is not None else ()):
        factory = _FACTORIES.get(spec.type)
        if factory is not None:
            plugins.append(factory(spec, color))
        else:  # the config model only admits known types; a new one must be added here
            raise ValueError(f"plugin type {spec.type!r} has no implementation")
    return PluginStack(name, tuple(plugins))


def _candidate_names(conn, host: str | None) -> list[str]:
    names = [conn.domain, conn.tls_sni, host]
    return [n for n in names if n]


def stack_name_for_connection(cfg: Config, conn, host: str | None = None) -> str:
    """The stack name for HTTP traffic on `conn` ("none" for no stack).

    The connection's domain, its TLS SNI and the request's `host` (when given) are tried
    in that order against `tap.endpoints`; the first with an entry decides. Otherwise
    `tap.http.stack`.
    """
    if cfg.tap.endpoints:
        for name in _candidate_names(conn, host):
            wanted = name.lower().rstrip(".")
            for endpoint in cfg.tap.endpoints:
                if endpoint.domain.lower().rstrip(".") == wanted:
                    return endpoint.http.stack
    return cfg.tap.http.stack


def stack_for_connection(cfg: Config, conn, host: str | None = None) -> Stack | None:
    """The configured `Stack` for HTTP traffic on `conn`, or None when none applies."""
    return cfg.stack(stack_name_for_connection(cfg, conn, host))


class PluginStacks:
    """Every stack of a config built once; pick and run one per transaction.

        stacks = PluginStacks(cfg, color=False, redaction=r)   # once per (re)loaded config
        out = stacks.handle(conn, tx, transaction_id, wall_ns, object_url)
        out.events / out.objects / out.access_log_lines
    """

    def __init__(self, cfg: Config, *, color: bool = False, redaction: Redaction = DEFAULT_REDACTION) -> None:
        self.cfg = cfg
        self.redaction = redaction
        self.by_name: dict[str, PluginStack] = {
            name: build_stack(stack, name, color=color) for name, stack in cfg.stacks.items()}
        self._empty = PluginStack(NO_STACK, ())

    @property
    def active(self) -> bool:
        """False when no stack the tap can select has a plugin: HTTP parsing is not needed."""
        names = {self.cfg.tap.http.stack, *(e.http.stack for e in self.cfg.tap.endpoints)}
        return any(self.by_name.get(n) for n in names)

    def for_connection(self, conn, host: str | None = None) -> PluginStack:
        """The stack for `conn` (and optionally a request's host); empty when none applies."""
        return self.by_name.get(stack_name_for_connection(self.cfg, conn, host)) or self._empty

    def for_transaction(self, conn, tx) -> PluginStack:
        return self.for_connection(conn, url_host(conn, tx))

    def handle(self, conn, tx, transaction_id: str, wall_ns: Callable[[int], int],
               object_url: ObjectUrl | None = None) -> PluginOutput:
        """Run the stack for this transaction; the output is empty when no stack applies."""
        stack = self.for_transaction(conn, tx)
        ctx = TransactionContext(conn, tx, transaction_id, wall_ns, object_url, redaction=self.redaction)
        return stack.run(ctx) if stack else ctx.out
