"""`access_logs`: a readable line per HTTP transaction on standard output.

The console format is what a newcomer sees first, so it is written for people:

    ■ curl → POST https://api.example.com/v1/items 201 Created (12.4 ms)

(`→` for a request this host sent, `←` for one it received), then, at mode `details`,
indented META / REQUEST / RESPONSE blocks with the start lines and headers, and at mode
`full` the bodies too: text shown (cut after `max_body_bytes` / `max_body_lines` with a
marker saying how much was shown), anything else summarised as `<binary, N bytes>`.
Captured text is untrusted, so control characters are shown escaped (`\\x1b`) and can
never drive the terminal; every line starts with `■` or spaces, never `{`, so console
output cannot be mistaken for the stdout stores' JSON Lines (RECORDS.md). ANSI colour
is added only when the plugin is built with `color=True`.

The `json` format writes one JSON object per transaction, wrapped as
`{"access_log": {...}}` so it is told apart from the stdout stores' records (which have
`scope` at the top). Fields: `timestamp` (RFC 3339, first request byte), `connection_id`,
`transaction_id`, `direction`, `process` {`name`, `path`, `pid`}, `method`, `url`,
`status` (absent without a response), `duration_ms`, `protocol`, `version`,
`request_body_size`, `response_body_size`, `grpc` {`service`, `method`, `status`} and
`error` when they apply. At `details` add `request` / `response` objects with
`start_line` and `headers` (lower-cased name → value, repeated fields joined with ", "),
plus `trailers` when present; at `full` also `body` (text) or `body_b64` (not UTF-8) and
`body_truncated` when the capture kept less than the whole body.

The mode comes from the plugin's rules (first match wins), else its `mode`.
"""
from __future__ import annotations

import base64
import json
from http import HTTPStatus

from ..config.model import AccessLogsConfig
from ..records.model import rfc3339_ns
from ..records.transaction import duration_ms, header_map, rpc_protocol, server_endpoint, url_of
from .base import TransactionContext

__all__ = ["AccessLogs", "console_lines", "json_line", "GRPC_STATUS_NAMES"]

MAX_BODY_BYTES = 4096
MAX_BODY_LINES = 64
INDENT = "    "

GRPC_STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)

# ANSI SGR codes, used only with color=True.
_RESET = "\x1b[0m"
_BOLD = "\x1b[1m"
_DIM = "\x1b[2m"
_STATUS_COLOURS = {1: "\x1b[36m", 2: "\x1b[32m", 3: "\x1b[36m", 4: "\x1b[33m", 5: "\x1b[31m"}
_NO_RESPONSE_COLOUR = "\x1b[35m"


class AccessLogs:
    name = "access_logs"

    def __init__(self, config: AccessLogsConfig, color: bool = False,
                 max_body_bytes: int = MAX_BODY_BYTES, max_body_lines: int = MAX_BODY_LINES) -> None:
        self.config = config
        self.color = color
        self.max_body_bytes = max_body_bytes
        self.max_body_lines = max_body_lines

    def on_transaction(self, ctx: TransactionContext) -> None:
        mode = self.config.mode_for(ctx.vars)
        if mode == "none":   # qtap's "no line for this transaction"
            return
        if self.config.format == "json":
            ctx.out.access_log_lines.append(json_line(ctx.conn, ctx.tx, mode, ctx.wall_ns, ctx.transaction_id))
        else:
            ctx.out.access_log_lines.extend(console_lines(
                ctx.conn, ctx.tx, mode, transaction_id=ctx.transaction_id, color=self.color,
                max_body_bytes=self.max_body_bytes, max_body_lines=self.max_body_lines))


# ---------------------------------------------------------------------------------------
# text helpers


def _escape_char(ch: str) -> str:
    return f"\\x{ord(ch):02x}"


def _clean(text: str, keep_tabs: bool = False) -> str:
    """Escape C0/C1 control characters (and DEL) so captured text cannot drive a terminal."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if (code < 0x20 and not (keep_tabs and ch == "\t")) or 0x7F <= code <= 0x9F:
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "".join(out)


def _header_text(value: str) -> str:
    """Header values are Latin-1 decoded by the parsers; show UTF-8 ones as UTF-8."""
    try:
        value = value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    return _clean(value)


def _reason(resp) -> str:
    if resp.reason:
        return resp.reason
    try:
        return HTTPStatus(resp.status).phrase
    except (ValueError, TypeError):
        return ""


def _grpc_status(code: int | None) -> str:
    if code is None:
        return "no status"
    if 0 <= code < len(GRPC_STATUS_NAMES):
        return f"{code} {GRPC_STATUS_NAMES[code]}"
    return str(code)


def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _client_endpoint(conn) -> tuple[str, int]:
    if conn.is_client:
        return conn.local_addr, conn.local_port
    return conn.remote_addr, conn.remote_port


def _protocol_text(tx) -> str:
    proto = "HTTP/2" if tx.version == "2" else f"HTTP/{tx.version}"
    return f"gRPC over {proto}" if tx.grpc is not None else proto


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _as_text(body: bytes) -> str | None:
    """The body as text when it is UTF-8 without control characters (tabs and line
    breaks allowed), else None. A multi-byte character cut by the capture limit is
    dropped rather than making the whole body binary."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.reason != "unexpected end of data":
            return None
        text = body[:err.start].decode("utf-8")
    for ch in text:
        if ord(ch) < 0x20 and ch not in "\t\n\r\f":
            return None
    return text


# ---------------------------------------------------------------------------------------
# console


def _paint(text: str, code: str, color: bool) -> str:
    return f"{code}{text}{_RESET}" if color else text


def _summary_line(conn, tx, color: bool) -> str:
    req, resp = tx.request, tx.response
    exe = _clean(conn.process.exe_name or "?")
    arrow = "→" if conn.is_client else "←"
    method = _clean(req.method or "-")
    url = _clean(url_of(conn, tx))
    if resp is None:
        status, colour = "no response", _NO_RESPONSE_COLOUR
    elif resp.status is None:
        status, colour = "no status", _NO_RESPONSE_COLOUR
    else:
        reason = _clean(_reason(resp))
        status = f"{resp.status} {reason}" if reason else str(resp.status)
        colour = _STATUS_COLOURS.get(resp.status // 100, "")
    extra = ""
    if tx.grpc is not None:
        extra += f" · grpc {_grpc_status(tx.grpc.status_code)}"
    if tx.error:
        extra += f" · {_clean(tx.error)}"
    square = _paint("■", colour, color) if colour else "■"
    status = _paint(status, colour, color) if colour else status
    timing = _paint(f"({duration_ms(tx):.1f} ms)", _DIM, color)
    return f"{square} {exe} {arrow} {_paint(method, _BOLD, color)} {url} {status}{extra} {timing}"


def _heading(text: str, color: bool) -> str:
    return "  " + _paint(text, _BOLD, color)


def _meta_lines(conn, tx, transaction_id: str | None) -> list[str]:
    p = conn.process
    rows: list[tuple[str, str]] = []
    who = _clean(p.exe_name or "?") + f" (pid {conn.pid}"
    if p.exe:
        who += f", {_clean(p.exe)}"
    rows.append(("process", who + ")"))
    cattrs = p.container_attributes()
    container = cattrs.get("container.name") or (p.container_id[:12] if p.container_id else "")
    if container:
        rows.append(("container", _clean(container)))
    pod = cattrs.get("k8s.pod.name")
    if pod:
        ns = cattrs.get("k8s.namespace.name")
        rows.append(("pod", _clean(f"{ns}/{pod}" if ns else pod)))
    rows.append(("direction", conn.direction))
    ids = _clean(conn.id)
    if transaction_id:
        ids += f", transaction {_clean(transaction_id)}"
    rows.append(("connection", ids))
    rows.append(("client", _addr(*_client_endpoint(conn))))
    rows.append(("server", _addr(*server_endpoint(conn))))
    if conn.tls_enabled:
        tls = [conn.tls_version or "version unknown"]
        if conn.tls_sni:
            tls.append(f"sni {_clean(conn.tls_sni)}")
        if conn.tls_alpn:
            tls.append(f"alpn {_clean(conn.tls_alpn)}")
        if not conn.tls_inspected:
            tls.append("not inspected")
        rows.append(("tls", ", ".join(tls)))
    rows.append(("protocol", _protocol_text(tx)))
    if tx.grpc is not None:
        g = tx.grpc
        call = _clean(f"{g.service or '?'}/{g.method or '?'}")
        text = (f"{call} → {_grpc_status(g.status_code)}, "
                f"{_plural(g.request_messages, 'request message')} / {_plural(g.response_messages, 'response message')}")
        if g.status_message:
            text += f', message "{_clean(g.status_message)}"'
        rows.append(("grpc", text))
    notes = []
    if tx.error:
        notes.append(_clean(tx.error))
    if not tx.headers_known:
        notes.append("some header fields could not be decoded")
    if tx.upgraded:
        notes.append("connection upgraded after this exchange")
    if notes:
        rows.append(("note", "; ".join(notes)))
    return [f"{INDENT}{label:<11} {value}" for label, value in rows]


def _field_line(name: str, value: str) -> str:
    value = _header_text(value)
    return f"{INDENT}{_clean(name)}: {value}" if value else f"{INDENT}{_clean(name)}:"


def _message_lines(msg) -> list[str]:
    return [INDENT + _clean(msg.start_line())] + [_field_line(name, value) for name, value in msg.headers]


def _body_lines(msg, max_bytes: int, max_lines: int) -> list[str]:
    body, total = msg.body, max(msg.body_size, len(msg.body))
    if total == 0:
        return []
    if not body:
        return ["", f"{INDENT}<body not captured, {total} bytes>"]
    text = _as_text(body)
    if text is None:
        desc = f"binary, {total} bytes"
        encoding = msg.header("content-encoding")
        if encoding:
            desc += f", {_header_text(encoding)}"
        return ["", f"{INDENT}<{desc}>"]
    usable = len(text.encode("utf-8"))  # less than len(body) when a character was cut at the end
    if len(body) > max_bytes:
        text = body[:max_bytes].decode("utf-8", "ignore")
    pieces = text.split("\n")
    if pieces and pieces[-1] == "":
        pieces.pop()
    if len(pieces) > max_lines:
        pieces = pieces[:max_lines]
        shown = sum(len(piece.encode("utf-8")) + 1 for piece in pieces)
    else:
        shown = len(text.encode("utf-8"))
    shown = min(shown, usable)
    out = [""] + [INDENT + _clean(piece.removesuffix("\r"), keep_tabs=True) for piece in pieces]
    if shown < usable:
        marker = f"{INDENT}… [{shown} of {total} bytes shown"
        if msg.body_truncated:
            marker += f"; the capture kept {len(body)}"
        out.append(marker + "]")
    elif shown < total:
        out.append(f"{INDENT}… [the capture kept {len(body)} of {total} bytes]")
    return out


def console_lines(conn, tx, mode: str, *, transaction_id: str | None = None, color: bool = False,
                  max_body_bytes: int = MAX_BODY_BYTES, max_body_lines: int = MAX_BODY_LINES) -> list[str]:
    """The console access log for one transaction at `mode` (summary | details | full),
    as lines without newlines. Pure; never raises for a well-formed Transaction."""
    lines = [_summary_line(conn, tx, color)]
    if mode == "summary":
        return lines
    full = mode == "full"
    lines.append(_heading("META", color))
    lines += _meta_lines(conn, tx, transaction_id)
    for heading, msg in (("REQUEST", tx.request), ("RESPONSE", tx.response)):
        if msg is None:
            lines.append(_heading(heading, color))
            lines.append(f"{INDENT}(none)")
            continue
        lines.append(_heading(heading, color))
        lines += _message_lines(msg)
        if full:
            lines += _body_lines(msg, max_body_bytes, max_body_lines)
        if msg.trailers:
            lines.append(_heading(f"{heading} TRAILERS", color))
            lines += [_field_line(name, value) for name, value in msg.trailers]
    return lines


# ---------------------------------------------------------------------------------------
# json


def _json_message(msg, full: bool) -> dict:
    out: dict[str, object] = {"start_line": msg.start_line(), "headers": header_map(msg.headers)}
    if msg.trailers:
        out["trailers"] = header_map(msg.trailers)
    if full:
        try:
            out["body"] = msg.body.decode("utf-8")
        except UnicodeDecodeError:
            out["body_b64"] = base64.b64encode(msg.body).decode("ascii")
        if msg.body_truncated:
            out["body_truncated"] = True
    return out


def json_line(conn, tx, mode: str, wall_ns, transaction_id: str) -> str:
    """The JSON access log for one transaction: `{"access_log": {...}}` on one line."""
    req, resp = tx.request, tx.response
    p = conn.process
    entry: dict[str, object] = {
        "timestamp": rfc3339_ns(wall_ns(tx.start_ns)),
        "connection_id": conn.id,
        "transaction_id": transaction_id,
        "direction": conn.direction,
        "process": {"name": p.exe_name, "path": p.exe, "pid": conn.pid},
    }
    container = p.container_attributes()
    if container:   # RECORDS.md names (container.id, k8s.pod.name, ...)
        entry["container"] = container
    entry |= {
        "method": req.method,
        "url": url_of(conn, tx),
    }
    if resp is not None and resp.status is not None:
        entry["status"] = resp.status
    entry["duration_ms"] = duration_ms(tx)
    entry["protocol"] = rpc_protocol(tx)
    entry["version"] = tx.version
    entry["request_body_size"] = req.body_size
    if resp is not None:
        entry["response_body_size"] = resp.body_size
    if tx.grpc is not None:
        entry["grpc"] = {"service": tx.grpc.service, "method": tx.grpc.method, "status": tx.grpc.status_code}
    if tx.error:
        entry["error"] = tx.error
    if mode in ("details", "full"):
        full = mode == "full"
        entry["request"] = _json_message(req, full)
        if resp is not None:
            entry["response"] = _json_message(resp, full)
    return json.dumps({"access_log": entry}, ensure_ascii=False, separators=(",", ":"))
