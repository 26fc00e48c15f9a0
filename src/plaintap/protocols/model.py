"""The values the protocol parsers hand out: who sent bytes, messages, transactions, errors.

Everything here is plain data (slotted dataclasses) so that the record builders stay pure
functions of a `Transaction`. Header names and values are `str` decoded as Latin-1: that
is lossless (every byte maps to one code point), so `Message.render()` re-encodes them to
exactly the bytes that were on the wire, and a UTF-8 header value stays valid UTF-8 in the
rendered artifact.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from urllib.parse import urlsplit


class Side(enum.IntEnum):
    """Who sent the bytes of a stream: the end that opened the connection, or the other."""

    CLIENT = 0
    SERVER = 1


@dataclass(slots=True)
class GrpcInfo:
    """What a gRPC call looked like: names from the path, status from the trailers.

    Message counts and sizes come from the 5-byte length prefix of each gRPC message
    (1 byte compressed flag, 4 bytes big-endian length); `*_bytes` sum the declared
    payload lengths. `framing_lost` is set when a capture gap broke the prefix walk, so
    the counts are lower bounds.
    """

    service: str | None = None
    method: str | None = None
    status_code: int | None = None
    status_message: str | None = None
    request_messages: int = 0
    response_messages: int = 0
    request_bytes: int = 0
    response_bytes: int = 0
    framing_lost: bool = False


@dataclass(slots=True)
class Message:
    """One HTTP request or response.

    `is_response` tells the two apart. For a request `method`/`target` are set (HTTP/2: from `:method`/`:path`) and
    `authority` comes from `:authority` or `Host`; for a response `status`/`reason`.
    `headers` keep wire order (HTTP/2 pseudo-headers first, as sent). `body` is after
    transfer decoding (chunked framing removed, content-encoding kept) and holds at most
    the parser's body limit; `body_size` is the full decoded size (capture gaps included);
    `body_truncated` says `body` is shorter than `body_size` (limit reached or bytes lost
    in a capture gap). `complete` is False when the message ended early (connection
    closed, stream reset, capture gap) rather than at its framed end.
    """

    headers: list[tuple[str, str]] = field(default_factory=list)
    method: str | None = None
    target: str | None = None
    authority: str | None = None
    status: int | None = None
    reason: str | None = None
    version: str = "1.1"
    trailers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    body_size: int = 0
    body_truncated: bool = False
    first_ns: int = 0
    last_ns: int = 0
    complete: bool = True
    is_response: bool = False

    def header(self, name: str) -> str | None:
        """First value of header `name` (case-insensitive), or None."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in wire order."""
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def content_type(self) -> str | None:
        return self.header("content-type")

    def start_line(self) -> str:
        """`GET /p HTTP/1.1`, `HTTP/1.1 200 OK`; HTTP/2: `GET /p HTTP/2`, `HTTP/2 200`."""
        proto = "HTTP/2" if self.version == "2" else f"HTTP/{self.version}"
        if not self.is_response:
            return f"{self.method or '-'} {self.target or '-'} {proto}"
        status = "-" if self.status is None else self.status
        if self.version == "2" or not self.reason:
            return f"{proto} {status}"
        return f"{proto} {self.status} {self.reason}"

    def render(self, include_body: bool = True) -> bytes:
        """The message as HTTP/1.1-style text: start line, `Name: value` lines, blank line,
        body. HTTP/2 pseudo-headers are rendered as `:method: GET` lines. Trailers are not
        rendered (they are in `trailers`)."""
        parts = [self.start_line()]
        for k, v in self.headers:
            parts.append(f"{k}: {v}")
        text = ("\r\n".join(parts) + "\r\n\r\n").encode("latin-1", "replace")
        if include_body and self.body:
            return text + self.body
        return text


@dataclass(slots=True)
class Transaction:
    """One request/response exchange: an HTTP/1 message pair or one HTTP/2 stream.

    `response` is None when no response was seen (connection closed, stream reset or
    refused, response lost in a capture gap). `start_ns` is the first request byte,
    `end_ns` the last response byte (or the moment the exchange ended without one), both
    kernel monotonic nanoseconds. `headers_known` is False when HPACK state was unknown
    (HTTP/2 mid-stream join or loss) and some header fields could not be decoded.
    `error` says why an exchange ended abnormally (None when it ended normally).
    """

    protocol: str
    version: str
    stream_id: int | None
    request: Message
    response: Message | None
    start_ns: int
    end_ns: int
    headers_known: bool = True
    grpc: GrpcInfo | None = None
    upgraded: bool = False
    error: str | None = None
    # Derived values computed once per exchange by their users (url parts, host): the
    # record builders and the plugin stack selection all ask for them.
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    def _split_target(self) -> tuple[str | None, str | None]:
        split = self.memo.get("target")
        if split is None:
            split = self.memo["target"] = self._compute_split_target()
        return split

    def _compute_split_target(self) -> tuple[str | None, str | None]:
        target = self.request.target
        if not target or self.request.method == "CONNECT":
            return None, None
        if target.startswith("/"):
            path, _, query = target.partition("?")
            path = path.partition("#")[0]
            return path, (query.partition("#")[0] or None) if query else None
        if target == "*":
            return "*", None
        try:
            parts = urlsplit(target)
        except ValueError:
            return None, None
        return parts.path or "/", parts.query or None

    @property
    def url_path(self) -> str | None:
        return self._split_target()[0]

    @property
    def url_query(self) -> str | None:
        return self._split_target()[1]

    @property
    def host(self) -> str | None:
        """`:authority`, else `Host`, else the host of an absolute-form target."""
        if self.request.authority:
            return self.request.authority
        target = self.request.target or ""
        if self.request.method == "CONNECT":
            return target or None
        if "://" in target:
            try:
                return urlsplit(target).netloc or None
            except ValueError:
                return None
        return None


@dataclass(slots=True)
class ParseError:
    """A protocol error the parser saw and recovered from (it never raises).

    `side` sent the offending bytes; `stream_id` is set for HTTP/2 stream errors. The
    parser continues where it can: HTTP/1 stops parsing a client stream after a malformed
    request (a server answers 400 and closes) and resynchronises a server stream at the
    next status line; HTTP/2 drops the stream (or hunts for the next frame boundary).
    """

    side: Side
    reason: str
    ts_ns: int = 0
    stream_id: int | None = None


Event = Transaction | ParseError
