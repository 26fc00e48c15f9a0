"""The rule variables plaintap fills for an HTTP transaction, by name.

Rules (`http_capture`, `access_logs`, `detect_errors`, macros) are checked against this
list when the config loads, so a typo (`http.req.hots`) is an error naming it instead of
a variable that is silently always null. `records.transaction.TransactionVars` computes
exactly these (a test keeps the two in step).
"""
from __future__ import annotations

import difflib

# Fixed names, in the order people look for them.
TRANSACTION_VARIABLES: tuple[str, ...] = (
    "http.req.method", "http.req.path", "http.req.query", "http.req.host", "http.req.url", "http.req.scheme",
    "http.req.version", "http.res.status", "http.duration_ms",
    "src.process.binary", "src.process.path", "src.process.pid", "src.process.user.id",
    "src.container.name", "src.container.id", "src.container.image", "src.pod.name", "src.pod.namespace",
    "src.ip", "src.port", "dst.ip", "dst.port", "dst.domain",
    "tls.enabled", "tls.sni", "tls.version", "direction", "protocol",
    "grpc.service", "grpc.method", "grpc.status",
)
# Families: any name under these prefixes (header names are case-insensitive).
VARIABLE_PREFIXES: tuple[str, ...] = ("http.req.headers.", "http.res.headers.", "src.container.labels.")


def is_known(name: str) -> bool:
    return name in TRANSACTION_VARIABLES or any(name.startswith(p) and len(name) > len(p) for p in VARIABLE_PREFIXES)


def unknown_variable_message(name: str) -> str:
    """`'http.req.hots' is not a rule variable (did you mean 'http.req.host'?); variables: …`."""
    guess = difflib.get_close_matches(name, TRANSACTION_VARIABLES, n=1, cutoff=0.7)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    families = ", ".join(p + "<name>" for p in VARIABLE_PREFIXES)
    return (f"{name!r} is not a rule variable{hint}; variables: {', '.join(TRANSACTION_VARIABLES)}, {families}")
