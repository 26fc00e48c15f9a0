"""Redaction: credentials never leave the agent unless the user turns redaction off.

What is masked, by default (RECORDS.md "Objects", SECURITY.md):

* **header values** whose name is on the header list (case-insensitive), in requests,
  responses and trailers: the whole value becomes `MASK`, except that an
  `Authorization`/`Proxy-Authorization` value keeps its scheme word
  (`Bearer [REDACTED]`), which says what kind of credential it was and nothing more;
* **query parameters** whose name is on the query list (case-insensitive, after
  percent-decoding the name): the value becomes `MASK`, the name and every other
  parameter stay as they were. This applies to the request target (HTTP/1 start line,
  HTTP/2 `:path`), hence to `url.full`, `url.query`, `artifact.summary.url`, record
  bodies and access logs, and to URL-valued headers (`Location`, `Referer`,
  `Content-Location`), where presigned links travel too; a password in a URL's
  user-info (`https://user:secret@host/`) is masked as well;
* **`process.command_line`**: see `Redaction.command_line` (truncated to
  `MAX_COMMAND_LINE` characters always; `--password=…`-style arguments masked).

Bodies are not inspected: at capture level `full` a body is stored as it was sent.

How it is applied: at output time, never on the parsed `Transaction`. `transaction(tx)`
returns a *view* — a shallow copy holding redacted copies of the messages — or `tx`
itself when nothing in it needs masking (the common case costs one set lookup per
header). The plugin context hands that view to plugins as `ctx.tx` and keeps the parsed
transaction as `ctx.raw_tx` for plugins that must see a credential to hash it (never to
output it). Digests are computed over the redacted rendering, so an object's key is the
hash of what is stored.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from urllib.parse import unquote

__all__ = [
    "DEFAULT_HEADERS",
    "DEFAULT_QUERY_PARAMS",
    "MASK",
    "MAX_COMMAND_LINE",
    "NO_REDACTION",
    "DEFAULT_REDACTION",
    "Redaction",
]

MASK = "[REDACTED]"

# Request/response header names whose values are credentials.
DEFAULT_HEADERS = (
    "Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie",
    "X-API-Key", "Api-Key", "APIKey", "X-Auth-Token", "X-Amz-Security-Token",
)

# Query parameters that carry signatures, session tokens or keys: AWS SigV4/V2 and
# CloudFront presigned URLs, GCS V4/V2 signed URLs, Azure SAS (`sig`; `se`, `sv`, `sp`
# are expiry/version/permissions and stay), OAuth and common API-key parameters.
DEFAULT_QUERY_PARAMS = (
    "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "Signature", "AWSAccessKeyId",
    "X-Goog-Signature", "X-Goog-Credential", "GoogleAccessId",
    "sig",
    "access_token", "refresh_token", "id_token", "client_secret", "api_key", "apikey", "key", "token",
    "password",
)

# Headers whose value is a URL: their query parameters (and user-info password) are masked.
URL_HEADERS = frozenset({"location", "referer", "content-location", ":path"})
_SCHEME_KEEPING = frozenset({"authorization", "proxy-authorization"})

# process.command_line is cut here (characters) whatever the redaction setting: argv can
# be megabytes and is repeated on every connection event.
MAX_COMMAND_LINE = 4096
TRUNCATED_MARK = " …[truncated]"

# `--password=x`, `--api-key x`, `--db_token=x`: an option name with one of these words
# (split on - and _) has its value masked.
_SECRET_WORDS = frozenset({
    "password", "passwd", "passphrase", "pass", "pwd", "secret", "token", "apikey", "auth",
    "authorization", "credential", "credentials", "cookie",
})
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("secret", "key"), ("private", "key"),
                           ("client", "secret")})
# Options whose next argument is an HTTP header (curl -H, wget --header, httpie is
# positional `Name:value`, handled as a header-looking argument below).
_HEADER_OPTIONS = frozenset({"-H", "--header", "--proxy-header"})
# Options whose next argument is `user:password` (curl -u/-U, --user, --proxy-user).
_USERPASS_OPTIONS = frozenset({"-u", "-U", "--user", "--proxy-user"})
_ENV_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)
# Linear on hostile input: the user part cannot hold ':', so there is one way to match.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#@:]*):([^/?#@]*)@")
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_URL_END = frozenset(" \t\r\n'\"")


def _is_secret_name(name: str) -> bool:
    words = [w for w in re.split(r"[-_.]+", name.lower()) if w]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in zip(words, words[1:]))


def _lower_set(names: Iterable[str]) -> frozenset[str]:
    return frozenset(n.strip().lower() for n in names if n and n.strip())


@dataclasses.dataclass(frozen=True, slots=True)
class Redaction:
    """A redaction policy. Immutable; build it once per (re)loaded config.

    `enabled=False` turns every mask off (`--no-redact`, `redaction.enabled: false`);
    `process.command_line` is still truncated. `command_line=False` keeps argument
    values in `process.command_line` (still truncated).
    """

    headers: frozenset[str] = _lower_set(DEFAULT_HEADERS)
    query_params: frozenset[str] = _lower_set(DEFAULT_QUERY_PARAMS)
    enabled: bool = True
    mask_command_line: bool = True

    @classmethod
    def build(cls, *, enabled: bool = True, extra_headers: Iterable[str] = (),
              extra_query_params: Iterable[str] = (), command_line: bool = True) -> Redaction:
        """The default lists plus `extra_*` (names, any case)."""
        return cls(headers=_lower_set((*DEFAULT_HEADERS, *extra_headers)),
                   query_params=_lower_set((*DEFAULT_QUERY_PARAMS, *extra_query_params)),
                   enabled=enabled, mask_command_line=command_line)

    # ---- URLs and query strings ----

    def query(self, query: str) -> str:
        """`a=1&X-Amz-Signature=abc` → `a=1&X-Amz-Signature=[REDACTED]`; other text kept as is."""
        if not self.enabled or not query:
            return query
        changed = False
        parts = query.split("&")
        for i, part in enumerate(parts):
            name, eq, value = part.partition("=")
            if eq and value and unquote(name).strip().lower() in self.query_params:
                parts[i] = f"{name}={MASK}"
                changed = True
        return "&".join(parts) if changed else query

    def url(self, url: str) -> str:
        """A URL or request target with masked query parameters and user-info password."""
        if not self.enabled or not url:
            return url
        out = url
        if "@" in out:
            m = _USERINFO.match(out)
            if m is not None and m[3]:
                out = f"{m[1]}{m[2]}:{MASK}@" + out[m.end():]
        q = out.find("?")
        if q != -1:
            end = out.find("#", q)
            query = out[q + 1:] if end == -1 else out[q + 1:end]
            masked = self.query(query)
            if masked is not query:
                out = out[:q + 1] + masked + ("" if end == -1 else out[end:])
        return out  # `url` itself when nothing was masked

    # ---- headers ----

    def header_value(self, name: str, value: str) -> str:
        """The value to show for header `name` (returns `value` itself when kept)."""
        key = name.lower()
        if key in self.headers:
            if key in _SCHEME_KEEPING:
                scheme, sep, rest = value.strip().partition(" ")
                if sep and rest and scheme.isalpha():
                    return f"{scheme} {MASK}"
            return MASK if value else value
        if key in URL_HEADERS:
            return self.url(value)
        return value

    def header_list(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Masked copy of a header list, or the same list object when nothing changed."""
        if not self.enabled:
            return headers
        out = None
        for i, (name, value) in enumerate(headers):
            shown = self.header_value(name, value)
            if shown is not value:
                if out is None:
                    out = list(headers)
                out[i] = (name, shown)
        return headers if out is None else out

    # ---- messages and transactions ----

    def message(self, msg):
        """A redacted copy of a `protocols.model.Message`, or `msg` itself when nothing changes."""
        if msg is None or not self.enabled:
            return msg
        headers = self.header_list(msg.headers)
        trailers = self.header_list(msg.trailers)
        target = self.url(msg.target) if msg.target else msg.target
        if headers is msg.headers and trailers is msg.trailers and target is msg.target:
            return msg
        return dataclasses.replace(msg, headers=headers, trailers=trailers, target=target)

    def transaction(self, tx):
        """The transaction as outputs may show it: a view with redacted messages (the
        parsed `tx` is never changed), or `tx` itself when nothing needs masking."""
        if not self.enabled:
            return tx
        req = self.message(tx.request)
        resp = self.message(tx.response)
        if req is tx.request and resp is tx.response:
            return tx
        memo = {}
        if "host_port" in tx.memo:  # the host is not redacted: keep what was computed
            memo["host_port"] = tx.memo["host_port"]
        return dataclasses.replace(tx, request=req, response=resp, memo=memo)

    # ---- process command lines ----

    def command_line(self, argv: list[str] | tuple[str, ...] | None, cmdline: str = "") -> str:
        """`process.command_line` as records show it.

        Arguments masked (when enabled and `mask_command_line`):
        `--NAME=VALUE` and `--NAME VALUE` where NAME has a secret word (password,
        passwd, pass, pwd, secret, token, auth, apikey, credential(s), cookie, or the
        pairs api-key, access-key, secret-key, private-key, client-secret); `-p VALUE`
        unless VALUE is a number (a port); the header after `-H`/`--header` when it
        names a masked header; the password in `-u user:password` / `--user`;
        `NAME=VALUE` environment-style arguments with a secret word in NAME; URLs'
        masked query parameters and user-info passwords anywhere. Then the line is cut
        at MAX_COMMAND_LINE characters (marked `…[truncated]`), always.
        """
        args = list(argv) if argv else (cmdline.split(" ") if cmdline else [])
        # Only what can be shown is looked at: masking work is bounded by MAX_COMMAND_LINE.
        budget, total, kept = MAX_COMMAND_LINE + 1, 0, []
        for a in args:
            if total >= budget:
                break
            kept.append(a[:budget - total])
            total += len(a) + 1
        if self.enabled and self.mask_command_line and kept:
            kept = self._mask_args(kept)
        text = " ".join(a for a in kept if a)
        if len(text) > MAX_COMMAND_LINE or total > budget:
            text = text[:MAX_COMMAND_LINE - len(TRUNCATED_MARK)] + TRUNCATED_MARK
        return text

    def _mask_args(self, args: list[str]) -> list[str]:
        out: list[str] = []
        mask_next: str | None = None      # how to mask the next argument
        for arg in args:
            if mask_next is not None:
                kind, mask_next = mask_next, None
                if kind == "value":
                    out.append(MASK)
                elif kind == "port-or-value":
                    out.append(arg if arg.isdigit() else MASK)
                elif kind == "header":
                    out.append(self._header_arg(arg))
                elif kind == "userpass":
                    out.append(self._userpass(arg))
                continue
            if arg.startswith("--") and len(arg) > 2:
                name, eq, value = arg[2:].partition("=")
                if _is_secret_name(name):
                    if eq:
                        out.append(f"--{name}={MASK}" if value else arg)
                    else:
                        out.append(arg)
                        mask_next = "value"
                    continue
                if eq and f"--{name}" in _HEADER_OPTIONS:
                    out.append(f"--{name}={self._header_arg(value)}")
                    continue
                if eq and f"--{name}" in _USERPASS_OPTIONS:
                    out.append(f"--{name}={self._userpass(value)}")
                    continue
            if arg in _HEADER_OPTIONS:
                out.append(arg)
                mask_next = "header"
                continue
            if arg in _USERPASS_OPTIONS:
                out.append(arg)
                mask_next = "userpass"
                continue
            if arg == "-p":
                out.append(arg)
                mask_next = "port-or-value"
                continue
            if arg.startswith("-H") and len(arg) > 2:
                out.append("-H" + self._header_arg(arg[2:]))
                continue
            env = _ENV_ASSIGNMENT.fullmatch(arg) if not arg.startswith("-") else None
            if env is not None and env[2] and _is_secret_name(env[1]):
                out.append(f"{env[1]}={MASK}")
                continue
            out.append(self._header_arg(arg) if ":" in arg else arg)
        return out

    def _header_arg(self, arg: str) -> str:
        """`Authorization: Bearer x` (an argument that is a header line) → masked;
        anything else only gets its URLs masked."""
        name, colon, value = arg.partition(":")
        if colon and name.strip().lower() in self.headers and "//" not in arg[:len(name) + 3]:
            shown = self.header_value(name.strip(), value.strip())
            return f"{name}: {shown}" if shown else f"{name}:"
        if "://" in arg:
            return self._urls_in(arg)
        return arg

    def _urls_in(self, text: str) -> str:
        """Every `scheme://…` in `text` (up to whitespace or a quote) through `url()`; linear."""
        out, i = [], 0
        while True:
            j = text.find("://", i)
            if j < 0:
                break
            start = j
            while start > i and text[start - 1] in _SCHEME_CHARS:
                start -= 1
            end = j + 3
            while end < len(text) and text[end] not in _URL_END:
                end += 1
            out.append(text[i:start])
            out.append(self.url(text[start:end]) if start < j else text[start:end])
            i = end
        out.append(text[i:])
        return "".join(out)

    def _userpass(self, arg: str) -> str:
        user, colon, password = arg.partition(":")
        return f"{user}:{MASK}" if colon and password else arg


DEFAULT_REDACTION = Redaction()
NO_REDACTION = Redaction(enabled=False)
