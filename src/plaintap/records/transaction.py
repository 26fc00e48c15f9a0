"""HTTP transactions as records: the `artifact_record` event, the stored objects, and the
variables rules are evaluated against.

Everything here is a pure function of a `Connection` (conn/tracker.py), a `Transaction`
(protocols/model.py) and values the caller passes in: `wall_ns` maps the parser's kernel
timestamps to wall-clock time, `transaction_id` is chosen by the caller (see
`make_transaction_id`), and where objects were stored is handed in as
`artifact_urls`. No clock, no I/O, no randomness, so the golden-file tests can pin every
byte. Attribute names and types follow shared/reference/RECORDS.md exactly:

* `artifact_record(...)` — one `event.type = artifact_record` per exchange (scope
  plaintap.events); the summary qtap users correlate on.
* `http_objects(...)` — `http_request` / `http_response` objects (scope plaintap.objects)
  holding the message as HTTP/1.1-style text, headers only at level `details`, with the
  body at `full`. The digest (`sha256:<hex>` of `artifact.data`) is also the object key.
* `transaction_vars(...)` — the flat, lazily computed mapping of rulekit variable names
  (`http.req.method`, `dst.ip`, ...) that `HttpCaptureConfig.level_for` and
  `AccessLogsConfig.mode_for` read.

"The server" is the end the request went to: the remote end of a client (egress)
connection, the local end of an accepted (ingress) one — the same choice
`endpoint_attrs` makes for `server.address`.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from .connection import shown_command_line
from .model import SCOPE_EVENTS, SCOPE_OBJECTS, Record
from .redact import DEFAULT_REDACTION, Redaction

__all__ = [
    "DEFAULT_PORTS",
    "HTTP_OBJECT_LEVELS",
    "StoredObject",
    "TransactionVars",
    "artifact_record",
    "duration_ms",
    "http_objects",
    "message_objects",
    "make_transaction_id",
    "object_digest",
    "rpc_protocol",
    "server_endpoint",
    "stored_objects",
    "transaction_connection_attrs",
    "transaction_vars",
    "url_host",
    "url_of",
]

DEFAULT_PORTS = {"http": 80, "https": 443}

# Capture levels that store objects, and whether bodies are included.
HTTP_OBJECT_LEVELS = {"details": False, "headers": False, "full": True}

# Attributes copied from the connection onto every transaction summary (RECORDS.md:
# "`connection.direction`, `process.*`, `container.*`, `k8s.*` as on the connection").
_CONNECTION_PREFIXES = ("process.", "container.", "k8s.")


@dataclass(frozen=True, slots=True)
class StoredObject:
    """Where one object went: its digest (the object key) and, when the store has one,
    a URL to fetch it (`s3://…`, an `access_url`, `otel://…`)."""

    digest: str
    url: str | None = None


def make_transaction_id(connection_id: str, index: int) -> str:
    """A transaction id that is unique per host and stable for the same input:
    the connection id and the exchange's 0-based position on that connection."""
    return f"{connection_id}-{index}"


# ---------------------------------------------------------------------------------------
# URL pieces


def server_endpoint(conn) -> tuple[str, int]:
    """(IP, port) of the end the requests go to."""
    if conn.is_client:
        return conn.remote_addr, conn.remote_port
    return conn.local_addr, conn.local_port


def _split_host_port(authority: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]:port` → (host without brackets, port or None)."""
    authority = authority.strip()
    if "@" in authority:  # userinfo in an absolute-form target
        authority = authority.rpartition("@")[2]
    if authority.startswith("["):
        end = authority.find("]")
        if end != -1:
            host, rest = authority[1:end], authority[end + 1:]
            port = rest[1:] if rest.startswith(":") else ""
            return host, int(port) if port.isdigit() else None
    if authority.count(":") == 1:
        host, _, port = authority.partition(":")
        if port.isdigit():
            return host, int(port)
        if not port:
            return host, None
    return authority, None


def _scheme(conn) -> str:
    return "https" if conn.tls_enabled else "http"


def _host_and_port(conn, tx) -> tuple[str, int | None]:
    """The URL's host and its explicit port (None means the scheme's default).

    Host/`:authority` (or an absolute-form target) first; without one, the TLS SNI or
    the server IP with the connection's server port. Computed once per transaction.
    """
    hp = tx.memo.get("host_port")
    if hp is None:
        hp = tx.memo["host_port"] = _compute_host_and_port(conn, tx)
    return hp


def _compute_host_and_port(conn, tx) -> tuple[str, int | None]:
    authority = tx.host
    if authority:
        host, port = _split_host_port(authority)
        if host:
            return host.lower(), port
    _, server_port = server_endpoint(conn)
    if conn.tls_sni:
        return conn.tls_sni.lower(), server_port
    return server_endpoint(conn)[0], server_port


def url_host(conn, tx) -> str:
    """The URL's host name (no port, no brackets): what `server.address` and
    `http.req.host` carry."""
    return _host_and_port(conn, tx)[0]


def url_of(conn, tx) -> str:
    """`scheme://host[:port]/path?query` for the request.

    Scheme https when the connection carried TLS, else http. The port is written only
    when it is not the scheme's default. CONNECT (no path) gives `scheme://host:port`.
    """
    scheme = _scheme(conn)
    host, port = _host_and_port(conn, tx)
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    url = f"{scheme}://{netloc}"
    path = tx.url_path
    if path and path.startswith("/"):
        url += path
    query = tx.url_query
    if query:
        url += "?" + query
    return url


# ---------------------------------------------------------------------------------------
# small shared helpers


def duration_ms(tx) -> float:
    """First request byte → last response byte, from kernel timestamps, in ms (µs precision)."""
    return round(tx.duration_ns / 1_000_000, 3)


def rpc_protocol(tx) -> str:
    """`grpc` for a gRPC call, else the parser's protocol name (`http1`, `http2`)."""
    return "grpc" if tx.grpc is not None else tx.protocol


def object_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _text_or_bytes(data: bytes) -> str | bytes:
    """RECORDS.md: `artifact.data` is a string when valid UTF-8, else bytes."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _process_exe(conn) -> str:
    p = conn.process
    return p.exe or p.exe_name or ""


# ---------------------------------------------------------------------------------------
# the transaction summary event


def transaction_connection_attrs(conn, redaction: Redaction = DEFAULT_REDACTION) -> dict:
    """The attributes a transaction summary copies from its connection, in
    `endpoint_attrs` order: `connection.direction`, `process.*`, `container.*`, `k8s.*`
    (what `endpoint_attrs` gives under those names, without building the rest)."""
    p = conn.process
    attrs = {
        "connection.direction": conn.direction,
        "process.pid": conn.pid,
        "process.executable.path": p.exe,
        "process.executable.name": p.exe_name,
        "process.command_line": shown_command_line(p, redaction),
    }
    if p.uid is not None:
        attrs["process.user.id"] = p.uid
    for key, value in p.container_attributes().items():
        if key == "connection.direction" or key.startswith(_CONNECTION_PREFIXES):
            attrs[key] = value
    return attrs


def artifact_record(conn, tx, wall_ns: Callable[[int], int], transaction_id: str,
                    artifact_urls: Mapping[str, StoredObject] | None = None,
                    redaction: Redaction = DEFAULT_REDACTION) -> Record:
    """The `event.type = artifact_record` summary of one exchange (RECORDS.md).

    `tx` is shown as given: pass the redacted view (`redaction.transaction(tx)`, which
    the plugin context does) for masked URLs; `redaction` masks the command line.

    `artifact_urls` maps "request" / "response" to the `StoredObject` where that object
    went; pass nothing when no objects were stored. The record's time is the first
    request byte. Never raises for a well-formed Transaction (missing response, missing
    status, missing headers are all allowed).
    """
    req, resp = tx.request, tx.response
    url = url_of(conn, tx)
    ms = duration_ms(tx)
    attrs: dict[str, object] = {
        "event.type": "artifact_record",
        "connection.id": conn.id,
        "transaction.id": transaction_id,
        "http.request.method": req.method or "",
        "url.full": url,
        "url.scheme": _scheme(conn),
    }
    path = tx.url_path
    if path is not None:
        attrs["url.path"] = path
    query = tx.url_query
    if query:
        attrs["url.query"] = query
    attrs["server.address"] = url_host(conn, tx)
    if resp is not None and resp.status is not None:
        attrs["http.response.status_code"] = resp.status
    user_agent = req.header("user-agent")
    if user_agent:
        attrs["user_agent.original"] = user_agent
    if req.content_type:
        attrs["http.request.content_type"] = req.content_type
    if resp is not None and resp.content_type:
        attrs["http.response.content_type"] = resp.content_type
    attrs["http.duration_ms"] = float(ms)
    attrs["network.protocol.version"] = tx.version
    attrs["http.request.body.size"] = int(req.body_size)
    if req.body_truncated:
        attrs["http.request.body.truncated"] = True
    if resp is not None:
        attrs["http.response.body.size"] = int(resp.body_size)
        if resp.body_truncated:
            attrs["http.response.body.truncated"] = True
    grpc = tx.grpc
    if grpc is not None:
        attrs["rpc.system"] = "grpc"
        if grpc.service:
            attrs["rpc.service"] = grpc.service
        if grpc.method:
            attrs["rpc.method"] = grpc.method
        if grpc.status_code is not None:
            attrs["rpc.grpc.status_code"] = grpc.status_code
    attrs.update(transaction_connection_attrs(conn, redaction))
    for which in ("request", "response"):
        stored = (artifact_urls or {}).get(which)
        if stored is not None:
            attrs[f"artifact.{which}.digest"] = stored.digest
            if stored.url:
                attrs[f"artifact.{which}.url"] = stored.url

    method = req.method or "-"
    if resp is None:
        body = f"HTTP {method} no response {url} ({ms:.1f} ms)"
    else:
        status = "-" if resp.status is None else resp.status
        body = f"HTTP {method} {status} {url} ({ms:.1f} ms)"
    return Record(SCOPE_EVENTS, wall_ns(tx.start_ns), body, attrs)


# ---------------------------------------------------------------------------------------
# objects


def _object(conn, tx, msg, kind: str, include_body: bool, time_ns: int, transaction_id: str,
            url: str, host: str, ms: float) -> Record:
    data = msg.render(include_body=include_body)
    content_type = msg.content_type
    attrs: dict[str, object] = {
        "artifact.type": kind,
        "artifact.data": _text_or_bytes(data),
    }
    if content_type:
        attrs["artifact.content_type"] = content_type
    attrs["artifact.size_bytes"] = len(data)
    attrs["artifact.digest"] = object_digest(data)
    attrs["connection.id"] = conn.id
    attrs["transaction.id"] = transaction_id
    attrs["artifact.summary.method"] = tx.request.method or ""
    attrs["artifact.summary.url"] = url
    attrs["artifact.summary.host"] = host
    if tx.response is not None and tx.response.status is not None:
        attrs["artifact.summary.status"] = tx.response.status
    attrs["artifact.summary.duration_ms"] = float(ms)
    attrs["artifact.summary.process_exe"] = _process_exe(conn)
    attrs.update(conn.process.container_attributes())   # the process's container and pod
    described = f"{content_type}, {len(data)} bytes" if content_type else f"{len(data)} bytes"
    return Record(SCOPE_OBJECTS, time_ns, f"Artifact: {kind} ({described})", attrs)


def http_objects(conn, tx, level: str, wall_ns: Callable[[int], int], transaction_id: str) -> list[Record]:
    """The stored objects for one exchange at capture `level`.

    `details`/`headers`: start line + headers + blank line; `full`: the body too (as
    decoded from transfer framing, content-encoding kept, at most the parser's body
    limit). Any other level (`none`, `summary`) gives no objects. The request object is
    timed at its first byte, the response object at the response's first byte.
    """
    return message_objects(conn, tx, wall_ns, transaction_id, request=level, response=level)


def message_objects(conn, tx, wall_ns: Callable[[int], int], transaction_id: str,
                    request: str | None, response: str | None) -> list[Record]:
    """Objects for the request and the response each at its own level (`details`,
    `headers` or `full`; anything else, or None, stores nothing for that side)."""
    url, host, ms = url_of(conn, tx), url_host(conn, tx), duration_ms(tx)
    req, resp = tx.request, tx.response
    out = []
    include_body = HTTP_OBJECT_LEVELS.get(request or "")
    if include_body is not None:
        out.append(_object(conn, tx, req, "http_request", include_body, wall_ns(req.first_ns or tx.start_ns),
                           transaction_id, url, host, ms))
    include_body = HTTP_OBJECT_LEVELS.get(response or "")
    if resp is not None and include_body is not None:
        out.append(_object(conn, tx, resp, "http_response", include_body,
                           wall_ns(resp.first_ns or tx.end_ns), transaction_id, url, host, ms))
    return out


def stored_objects(objects: list[Record], object_url: Callable[[str], str | None] | None = None
                   ) -> dict[str, StoredObject]:
    """`artifact_urls` for `artifact_record`, from the objects `http_objects` built:
    "request"/"response" → digest and the store's URL for it (`object_url(digest)`)."""
    out: dict[str, StoredObject] = {}
    for obj in objects:
        digest = obj.attributes["artifact.digest"]
        which = "request" if obj.attributes["artifact.type"] == "http_request" else "response"
        out[which] = StoredObject(digest, object_url(digest) if object_url is not None else None)
    return out



# ---------------------------------------------------------------------------------------
# rule variables


def header_map(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased name → value; repeated fields joined with ", " (RFC 9110 5.3)."""
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


class TransactionVars(Mapping):
    """Rule variables for one transaction, each computed on first use.

    Fixed names (missing when unknown, which rules treat as null):

    * `http.req.method` `http.req.path` `http.req.query` `http.req.host` (no port,
      lower-cased) `http.req.url` (`url.full`) `http.req.scheme` `http.req.version`
      `http.req.headers.<name>` (name lower-cased; repeated fields joined with ", ")
    * `http.res.status` (int) `http.res.headers.<name>` `http.duration_ms` (float)
    * `src.process.binary` (executable name) `src.process.path` `src.process.pid`
      `src.process.user.id` `src.container.name` `src.container.id` `src.container.image`
      `src.container.labels.<key>` `src.pod.name` `src.pod.namespace` (container facts
      are known once the runtime answered, see capture/containers.py)
      `src.ip` `src.port` (the client end)
    * `dst.ip` `dst.port` (the server end) `dst.domain` (connection domain, else SNI,
      else URL host)
    * `tls.enabled` (bool) `tls.sni` `tls.version`
    * `direction` (`ingress` | `egress-internal` | `egress-external`)
    * `protocol` (`http1` | `http2` | `grpc`)
    * `grpc.service` `grpc.method` `grpc.status` for gRPC calls
    """

    __slots__ = ("_conn", "_tx", "_cache", "_req_headers", "_res_headers")

    _REQ_PREFIX = "http.req.headers."
    _RES_PREFIX = "http.res.headers."
    _LABEL_PREFIX = "src.container.labels."

    def __init__(self, conn, tx) -> None:
        self._conn = conn
        self._tx = tx
        self._cache: dict[str, object] = {}
        self._req_headers: dict[str, str] | None = None
        self._res_headers: dict[str, str] | None = None

    # -- lazily built pieces --

    def _request_headers(self) -> dict[str, str]:
        if self._req_headers is None:
            self._req_headers = header_map(self._tx.request.headers)
        return self._req_headers

    def _response_headers(self) -> dict[str, str]:
        if self._res_headers is None:
            resp = self._tx.response
            self._res_headers = header_map(resp.headers) if resp is not None else {}
        return self._res_headers

    def _compute(self, name: str) -> object:
        conn, tx = self._conn, self._tx
        compute = _FIXED.get(name)
        if compute is not None:
            return compute(conn, tx)
        if name.startswith(self._REQ_PREFIX):
            return self._request_headers().get(name[len(self._REQ_PREFIX):].lower())
        if name.startswith(self._RES_PREFIX):
            return self._response_headers().get(name[len(self._RES_PREFIX):].lower())
        if name.startswith(self._LABEL_PREFIX):
            return _container_label(conn, name[len(self._LABEL_PREFIX):])
        return None

    # -- Mapping --

    def __getitem__(self, name: str) -> object:
        try:
            value = self._cache[name]
        except KeyError:
            value = self._cache[name] = self._compute(name)
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        for name in _FIXED:
            if self.get(name) is not None:
                yield name
        for key in self._request_headers():
            yield self._REQ_PREFIX + key
        for key in self._response_headers():
            yield self._RES_PREFIX + key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"TransactionVars({dict(self)!r})"


def _nonempty(value):
    return value if value not in ("", None) else None


def _container_attr(conn, key: str):
    return _nonempty(conn.process.container_attributes().get(key))


def _container_label(conn, key: str):
    container = conn.process.container
    meta = container.meta if container is not None else None
    return _nonempty(meta.labels.get(key)) if meta is not None else None


def _status(conn, tx):
    return tx.response.status if tx.response is not None else None


def _grpc(field: str):
    def get(conn, tx):
        return getattr(tx.grpc, field) if tx.grpc is not None else None
    return get


def _client_end(conn) -> tuple[str, int]:
    if conn.is_client:
        return conn.local_addr, conn.local_port
    return conn.remote_addr, conn.remote_port


_FIXED: dict[str, Callable[[object, object], object]] = {
    "http.req.method": lambda c, t: t.request.method,
    "http.req.path": lambda c, t: t.url_path,
    "http.req.query": lambda c, t: t.url_query,
    "http.req.host": url_host,
    "http.req.url": url_of,
    "http.req.scheme": lambda c, t: _scheme(c),
    "http.req.version": lambda c, t: t.version,
    "http.res.status": _status,
    "http.duration_ms": lambda c, t: duration_ms(t),
    "src.process.binary": lambda c, t: _nonempty(c.process.exe_name),
    "src.process.path": lambda c, t: _nonempty(c.process.exe),
    "src.process.pid": lambda c, t: c.pid,
    "src.process.user.id": lambda c, t: c.process.uid,
    "src.container.name": lambda c, t: _container_attr(c, "container.name"),
    "src.container.id": lambda c, t: _nonempty(c.process.container_id),
    "src.container.image": lambda c, t: _container_attr(c, "container.image.name"),
    "src.pod.name": lambda c, t: _container_attr(c, "k8s.pod.name"),
    "src.pod.namespace": lambda c, t: _container_attr(c, "k8s.namespace.name"),
    "src.ip": lambda c, t: _client_end(c)[0],
    "src.port": lambda c, t: _client_end(c)[1],
    "dst.ip": lambda c, t: server_endpoint(c)[0],
    "dst.port": lambda c, t: server_endpoint(c)[1],
    "dst.domain": lambda c, t: c.domain or c.tls_sni or url_host(c, t),
    "tls.enabled": lambda c, t: bool(c.tls_enabled),
    "tls.sni": lambda c, t: _nonempty(c.tls_sni),
    "tls.version": lambda c, t: _nonempty(c.tls_version),
    "direction": lambda c, t: c.direction,
    "protocol": lambda c, t: rpc_protocol(t),
    "grpc.service": _grpc("service"),
    "grpc.method": _grpc("method"),
    "grpc.status": _grpc("status_code"),
}


def transaction_vars(conn, tx) -> TransactionVars:
    """The rule-variable view of one transaction (see `TransactionVars` for the names)."""
    return TransactionVars(conn, tx)
