"""Plugins: what happens to each HTTP transaction, chosen per stack in the config.

A stack (`stacks.<name>.plugins`) is built once per config into `PluginStack`s of plugin
instances with one interface, `on_transaction(ctx)`. Per transaction the pipeline picks
the stack (`tap.http.stack`, overridden per domain by `tap.endpoints`), runs it, and
sends what comes out: `ctx.out.events` to the event store, `ctx.out.objects` to the object
store, `ctx.out.access_log_lines` to standard output. Plugins are pure: no I/O, no clock.

Implemented: `http_capture` (summary event + objects by level), `access_logs` (console
or JSON lines by mode), `http_metrics` (Prometheus counters), `report_usage` (`request`
events with credential facts, never the credential), `detect_errors` (`issue` events).
"""
from __future__ import annotations

from .access_logs import AccessLogs, console_lines, json_line
from .base import ObjectUrl, Plugin, PluginOutput, TransactionContext
from .http_capture import HttpCapture
from .http_metrics import HttpMetrics
from .registry import (PluginStack, PluginStacks, build_stack, stack_for_connection,
                       stack_name_for_connection)

__all__ = [
    "AccessLogs",
    "HttpCapture",
    "HttpMetrics",
    "ObjectUrl",
    "Plugin",
    "PluginOutput",
    "PluginStack",
    "PluginStacks",
    "TransactionContext",
    "build_stack",
    "console_lines",
    "json_line",
    "stack_for_connection",
    "stack_name_for_connection",
]
