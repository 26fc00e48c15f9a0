"""`http_capture`: the transaction summary event and, by level, the stored objects.

The level comes from the plugin's rules (first match wins), else its `level`:

* `none`    — nothing;
* `summary` — one `artifact_record` event;
* `details` / `headers` — plus `http_request` / `http_response` objects with the start
  line and headers;
* `full`    — the objects carry the bodies too.

Objects are only built when an object store is configured (`ctx.object_url` is not
None); the summary then links them by digest and, when the store has one, by URL. The
`format` setting (qtap: json | text) is accepted; plaintap's object form is fixed by
RECORDS.md (HTTP/1.1-style text in `artifact.data`), so it changes nothing.
"""
from __future__ import annotations

from ..config.model import HttpCaptureConfig
from ..records.transaction import artifact_record, http_objects, stored_objects
from .base import TransactionContext

__all__ = ["HttpCapture"]


class HttpCapture:
    name = "http_capture"

    def __init__(self, config: HttpCaptureConfig) -> None:
        self.config = config

    def level_for(self, ctx: TransactionContext) -> str:
        """`none` | `summary` | `details` | `full` for this transaction."""
        return self.config.level_for(ctx.vars)

    def on_transaction(self, ctx: TransactionContext) -> None:
        level = self.level_for(ctx)
        if level == "none":
            return
        objects = []
        if level != "summary" and ctx.object_url is not None:
            objects = http_objects(ctx.conn, ctx.tx, level, ctx.wall_ns, ctx.transaction_id)
        links = stored_objects(objects, ctx.object_url)
        ctx.out.events.append(artifact_record(ctx.conn, ctx.tx, ctx.wall_ns, ctx.transaction_id, links,
                                             redaction=ctx.redaction))
        ctx.out.objects.extend(objects)
