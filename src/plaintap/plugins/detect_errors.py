"""`detect_errors`: qtap's error-detection rules → `event.type = issue` events (RECORDS.md).

Each rule (in order) applies to a transaction whose URL passes `onlyUrls`/`excludeUrls`
(exact, prefix, or `*` glob on `url.full`) and whose response category passes
`onlyCategories`; it *fires* when any of its triggers holds — `triggerStatusCodes`
(exact `"503"` or class `"5xx"`), `triggerEmptyBody` (a response with no body),
`triggerDuration` (first request byte → last response byte at least that long),
`triggerContains` (the text in the response body). Every trigger that held is listed in
`issue.triggers` as `<condition>:<value>` with the observed value (`status:503`,
`duration:2.5s`, `empty_body:true`, `contains:<text>`). A fired rule records the parts it
asks for (`record{Req,Res}{Headers,Body}`) through the object store and links them on the
issue; `reportAsIssue: false` records without an event; `continue: true` lets later rules
run too (otherwise the first fired rule ends the walk).
"""
from __future__ import annotations

import fnmatch

from ..config.model import DetectErrorsConfig, DetectErrorsRule
from ..records.transaction import duration_ms, message_objects, stored_objects, url_of
from ..records.usage import issue_record, mime_category
from .base import TransactionContext

__all__ = ["DetectErrors", "fired_triggers"]


def _url_matches(url: str, pattern: str) -> bool:
    if "*" in pattern:
        return fnmatch.fnmatchcase(url, pattern)
    return url == pattern or url.startswith(pattern)


def _seconds(ms: float) -> str:
    text = f"{ms / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


def fired_triggers(rule: DetectErrorsRule, tx) -> list[str]:
    """The `<condition>:<value>` of every trigger of `rule` that holds for `tx` (raw)."""
    resp = tx.response
    fired = []
    status = resp.status if resp is not None else None
    if status is not None:
        for code in rule.triggerStatusCodes:
            if code == str(status) or (code.endswith("xx") and code[0] == str(status)[0]):
                fired.append(f"status:{status}")
                break
    if rule.triggerEmptyBody and resp is not None and resp.body_size == 0:
        fired.append("empty_body:true")
    if rule.triggerDuration is not None:
        ms = duration_ms(tx)
        if ms >= rule.triggerDuration * 1000:
            fired.append(f"duration:{_seconds(ms)}")
    if rule.triggerContains and resp is not None and resp.body:
        if rule.triggerContains.encode("utf-8") in resp.body:
            fired.append(f"contains:{rule.triggerContains}")
    return fired


def _level(headers: bool, body: bool) -> str | None:
    return "full" if body else ("details" if headers else None)


class DetectErrors:
    name = "detect_errors"

    def __init__(self, config: DetectErrorsConfig) -> None:
        self.config = config

    def _applies(self, rule: DetectErrorsRule, url: str, category: str | None) -> bool:
        if rule.onlyUrls and not any(_url_matches(url, p) for p in rule.onlyUrls):
            return False
        if any(_url_matches(url, p) for p in rule.excludeUrls):
            return False
        if rule.onlyCategories and category not in rule.onlyCategories:
            return False
        return True

    def on_transaction(self, ctx: TransactionContext) -> None:
        if not self.config.rules:
            return
        raw, tx = ctx.raw_tx, ctx.tx
        url = url_of(ctx.conn, tx)
        resp = raw.response
        category = mime_category(resp.content_type if resp is not None else None)
        for rule in self.config.rules:
            if not self._applies(rule, url, category):
                continue
            triggers = fired_triggers(rule, raw)
            if not triggers:
                continue
            objects = []
            if ctx.object_url is not None:
                objects = message_objects(ctx.conn, tx, ctx.wall_ns, ctx.transaction_id,
                                          request=_level(rule.recordReqHeaders, rule.recordReqBody),
                                          response=_level(rule.recordResHeaders, rule.recordResBody))
            ctx.out.objects.extend(objects)
            if rule.reportAsIssue:
                ctx.out.events.append(issue_record(
                    ctx.conn, tx, rule.name, triggers, ctx.wall_ns, ctx.transaction_id,
                    stored_objects(objects, ctx.object_url), tags=rule.withTags, redaction=ctx.redaction))
            if not rule.continue_:
                return
