"""What every plugin receives and returns: one context per HTTP transaction.

A plugin is any object with a `name` and `on_transaction(ctx) -> None`. It reads the
connection, the transaction and the (lazily computed, shared) rule variables from the
context and appends what it produces to `ctx.out`: records for the event store, objects
for the object store, access-log lines for standard output. What a plugin outputs comes
from `ctx.tx`, the redacted view; `ctx.raw_tx` is for reading, never for output. Plugins never write
anywhere themselves and never read a clock — time comes in as `ctx.wall_ns` — so a stack
run is a pure function of its inputs and tests can assert on the exact output.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..records.model import Record
from ..records.redact import DEFAULT_REDACTION, Redaction
from ..records.transaction import transaction_vars

__all__ = ["ObjectUrl", "Plugin", "PluginOutput", "TransactionContext"]

# digest → where the object store will keep that object (None: stored, but no URL to give).
ObjectUrl = Callable[[str], "str | None"]


@dataclass(slots=True)
class PluginOutput:
    """Everything a stack produced for one or more transactions, in order."""

    events: list[Record] = field(default_factory=list)          # → event store (plaintap.events)
    objects: list[Record] = field(default_factory=list)         # → object store (plaintap.objects)
    access_log_lines: list[str] = field(default_factory=list)   # → stdout, one line each, no newline

    def __bool__(self) -> bool:
        return bool(self.events or self.objects or self.access_log_lines)


class TransactionContext:
    """One transaction as the plugins see it.

    `conn` is the tracker's `Connection`. `tx` is the transaction *as outputs may show
    it*: the parser's `Transaction` seen through `redaction` (records/redact.py; masked
    credential headers and query parameters), computed on first use. `raw_tx` is the
    transaction as parsed, unredacted: for plugins that must read a credential to hash
    or classify it, never to output it; rules (`vars`) also read it.
    `transaction_id` is chosen by the caller (`records.transaction.make_transaction_id`).
    `wall_ns` maps kernel monotonic ns to wall-clock ns. `object_url` is None when no
    object store is configured (then no objects are built at all); otherwise it gives
    the URL the store will serve an object's digest under, or None when it has none
    (the record then links the object by digest only). `vars` is computed on first use
    and shared by every plugin's rules.
    """

    __slots__ = ("conn", "raw_tx", "transaction_id", "wall_ns", "object_url", "out", "redaction", "_vars", "_tx")

    def __init__(self, conn, tx, transaction_id: str, wall_ns: Callable[[int], int],
                 object_url: ObjectUrl | None = None, out: PluginOutput | None = None,
                 redaction: Redaction = DEFAULT_REDACTION) -> None:
        self.conn = conn
        self.raw_tx = tx
        self.transaction_id = transaction_id
        self.wall_ns = wall_ns
        self.object_url = object_url
        self.out = out if out is not None else PluginOutput()
        self.redaction = redaction
        self._vars: Mapping[str, object] | None = None
        self._tx = None

    @property
    def tx(self):
        """The redacted view of the transaction (the parsed one when nothing is masked)."""
        if self._tx is None:
            self._tx = self.redaction.transaction(self.raw_tx)
        return self._tx

    @property
    def vars(self) -> Mapping[str, object]:
        if self._vars is None:
            self._vars = transaction_vars(self.conn, self.raw_tx)
        return self._vars


class Plugin(Protocol):
    name: str

    def on_transaction(self, ctx: TransactionContext) -> None:
        """Append this plugin's output for one transaction to `ctx.out`."""
