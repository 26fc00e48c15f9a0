"""The `request` (report_usage) and `issue` (detect_errors) events, as RECORDS.md defines
them. Pure functions of a connection, a transaction and values passed in.

Credentials: `auth_token(raw_tx)` reads the credential from the *parsed* (unredacted)
request — the first of `AUTH_HEADERS` present — and returns only what may be shown: where
it came from, its kind, a mask keeping a short prefix and suffix, and the sha256 of the
credential without its scheme word. The credential itself is never put in a record.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .connection import endpoint_attrs
from .model import SCOPE_EVENTS, Record
from .redact import DEFAULT_REDACTION, Redaction
from .transaction import StoredObject, duration_ms, url_host, url_of

__all__ = ["AUTH_HEADERS", "AuthToken", "auth_token", "issue_record", "mime_category", "usage_record"]

# Where credentials travel, in the order they are looked for (RECORDS.md: first found).
AUTH_HEADERS = ("Authorization", "X-API-Key", "Api-Key", "APIKey", "X-Auth-Token")

_CONNECTION_PREFIXES = ("process.", "container.", "k8s.")


@dataclass(frozen=True, slots=True)
class AuthToken:
    source: str     # the header's name as listed in AUTH_HEADERS
    type: str       # bearer | basic | jwt | api_key | <scheme word, lower-cased>
    mask: str       # e.g. "sk-l…7890"
    hash: str       # sha256 hex of the credential without its scheme word


def _mask(secret: str) -> str:
    """Keep 4 characters each side of a long credential, fewer of a short one, never all."""
    n = len(secret)
    keep = 4 if n >= 16 else (2 if n >= 8 else 0)
    return f"{secret[:keep]}…{secret[-keep:]}" if keep else "…"


def _looks_like_jwt(token: str) -> bool:
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return False
    try:
        head = base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4))
    except (binascii.Error, ValueError):
        return False
    return head.lstrip().startswith(b"{")


def auth_token(raw_tx) -> AuthToken | None:
    """The request's credential facts, or None when it carries none."""
    req = raw_tx.request
    for name in AUTH_HEADERS:
        value = req.header(name)
        if not value or not value.strip():
            continue
        value = value.strip()
        scheme, _, rest = value.partition(" ")
        if name == "Authorization" and rest.strip():
            secret = rest.strip()
            kind = scheme.lower()
            if kind == "bearer" and _looks_like_jwt(secret):
                kind = "jwt"
        else:
            secret = value
            kind = "jwt" if _looks_like_jwt(secret) else "api_key"
        return AuthToken(name, kind, _mask(secret), hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest())
    return None


_CATEGORIES = (
    ("json", ("application/json", "+json", "application/grpc+json")),
    ("grpc", ("application/grpc",)),
    ("html", ("text/html", "application/xhtml")),
    ("xml", ("application/xml", "text/xml", "+xml")),
    ("javascript", ("javascript", "ecmascript")),
    ("css", ("text/css",)),
    ("form", ("application/x-www-form-urlencoded", "multipart/form-data")),
    ("text", ("text/",)),
    ("image", ("image/",)),
    ("audio", ("audio/",)),
    ("video", ("video/",)),
    ("font", ("font/", "application/font")),
    ("binary", ("application/octet-stream", "application/pdf", "application/zip", "application/gzip",
                "application/protobuf", "application/x-protobuf")),
)


def mime_category(content_type: str | None) -> str | None:
    """`json`, `html`, `text`, `image`, `xml`, `binary`, … for a Content-Type; None without one."""
    if not content_type:
        return None
    mime = content_type.split(";", 1)[0].strip().lower()
    for category, needles in _CATEGORIES:
        for needle in needles:
            if (needle.startswith("+") and mime.endswith(needle)) or (not needle.startswith("+") and (
                    mime.startswith(needle) if needle.endswith("/") else needle in mime)):
                return category
    return "other"


def _common(conn, tx, transaction_id: str, event_type: str, redaction: Redaction) -> dict[str, object]:
    req, resp = tx.request, tx.response
    attrs: dict[str, object] = {
        "event.type": event_type,
        "connection.id": conn.id,
        "transaction.id": transaction_id,
        "http.request.method": req.method or "",
        "url.full": url_of(conn, tx),
    }
    if tx.url_path is not None:
        attrs["url.path"] = tx.url_path
    attrs["server.address"] = url_host(conn, tx)
    if resp is not None and resp.status is not None:
        attrs["http.response.status_code"] = resp.status
    attrs["http.duration_ms"] = float(duration_ms(tx))
    user_agent = req.header("user-agent")
    if user_agent:
        attrs["user_agent.original"] = user_agent
    if resp is not None and resp.content_type:
        attrs["http.response.content_type"] = resp.content_type
    for key, value in endpoint_attrs(conn, redaction).items():
        if key == "connection.direction" or key.startswith(_CONNECTION_PREFIXES):
            attrs[key] = value
    return attrs


def usage_record(conn, tx, token: AuthToken | None, wall_ns: Callable[[int], int], transaction_id: str,
                 redaction: Redaction = DEFAULT_REDACTION) -> Record:
    """The `event.type = request` event of one transaction. `tx` is the redacted view;
    `token` comes from `auth_token(raw_tx)`."""
    attrs = _common(conn, tx, transaction_id, "request", redaction)
    resp = tx.response
    category = mime_category(resp.content_type if resp is not None else None)
    if category:
        attrs["http.response.category"] = category
    attrs["connection.bytes_sent"] = int(conn.bytes_sent)
    attrs["connection.bytes_received"] = int(conn.bytes_recv)
    if token is not None:
        attrs["auth.token.source"] = token.source
        attrs["auth.token.type"] = token.type
        attrs["auth.token.mask"] = token.mask
        attrs["auth.token.hash"] = token.hash
    method = tx.request.method or "-"
    status = "-" if resp is None or resp.status is None else resp.status
    return Record(SCOPE_EVENTS, wall_ns(tx.start_ns), f"HTTP {method} ({status}) {attrs['url.full']}", attrs)


def issue_record(conn, tx, rule: str, triggers: list[str], wall_ns: Callable[[int], int], transaction_id: str,
                 artifacts: Mapping[str, StoredObject] | None = None, tags: list[str] | None = None,
                 redaction: Redaction = DEFAULT_REDACTION) -> Record:
    """The `event.type = issue` event of one transaction that fired a detect_errors rule
    (severity ERROR). `artifacts` maps "request"/"response" to where recorded objects went."""
    attrs = _common(conn, tx, transaction_id, "issue", redaction)
    attrs["issue.rule"] = rule
    attrs["issue.triggers"] = list(triggers)
    if tags:
        attrs["issue.tags"] = list(tags)
    for which in ("request", "response"):
        stored = (artifacts or {}).get(which)
        if stored is not None:
            attrs[f"artifact.{which}.digest"] = stored.digest
            if stored.url:
                attrs[f"artifact.{which}.url"] = stored.url
    method = tx.request.method or "-"
    resp = tx.response
    status = "-" if resp is None or resp.status is None else resp.status
    body = f"HTTP Error: {method} ({status}) {attrs['url.full']} :: {rule}"
    return Record(SCOPE_EVENTS, wall_ns(tx.start_ns), body, attrs, severity="ERROR")
