"""`report_usage`: one `event.type = request` event per HTTP transaction (RECORDS.md),
with the response's MIME category, the connection's byte counters and, when the request
carries a credential, its source, kind, mask and sha256 — never the credential itself
(it is read from the parsed request, `ctx.raw_tx`, and only its hash and mask leave)."""
from __future__ import annotations

from ..records.usage import auth_token, usage_record
from .base import TransactionContext

__all__ = ["ReportUsage"]


class ReportUsage:
    name = "report_usage"

    def on_transaction(self, ctx: TransactionContext) -> None:
        token = auth_token(ctx.raw_tx)
        ctx.out.events.append(usage_record(ctx.conn, ctx.tx, token, ctx.wall_ns, ctx.transaction_id,
                                           redaction=ctx.redaction))
