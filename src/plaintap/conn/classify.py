"""Per-connection protocol facts from the first bytes of each stream.

Socket bytes (what is on the wire) give the TLS handshake: ClientHello → SNI (the
connection's domain) and offered ALPN; ServerHello → version and, for TLS 1.2, the
selected ALPN. Plaintext (TLS-library bytes, or socket bytes of a connection that is not
TLS) gives the application protocol via `protocols.detect`. TLS 1.3 encrypts the
selected ALPN, so it is inferred from the plaintext when the client offered it (an h2
preface means "h2"; HTTP/1 means "http/1.1"). Ciphertext is never handed to a parser.

Only a bounded prefix of each stream is looked at (`PREFIX_LIMIT`).
"""
from __future__ import annotations

from ..bpf import abi
from ..protocols.detect import detect
from ..protocols.tls import parse_client_hello, parse_server_hello

PREFIX_LIMIT = 16 * 1024
_KEY = "classify"


class _State:
    __slots__ = ("sock", "plain", "client_hello_done", "server_hello_done", "alpn_offers", "decided_sock",
                 "decided_plain", "stopped", "midstream")

    def __init__(self) -> None:
        self.sock = {abi.FLOW_SEND: bytearray(), abi.FLOW_RECV: bytearray()}
        self.plain = bytearray()
        self.client_hello_done = False
        self.server_hello_done = False
        self.alpn_offers: list[str] = []
        self.decided_sock = False     # socket stream classified (tls or a plaintext protocol)
        self.decided_plain = False    # TLS plaintext classified
        self.stopped: set[int] = set()  # socket flows with a gap in their prefix: not looked at
        self.midstream = False           # the application bytes did not start at a message boundary


def client_flow(conn) -> int:
    """The flow that carries what the *client* of this connection sent."""
    return abi.FLOW_SEND if conn.is_client else abi.FLOW_RECV


class ProtocolClassifier:
    """Stream consumer setting conn.protocol, conn.tls_* and conn.domain."""

    def on_open(self, conn) -> None:
        conn.state[_KEY] = _State()

    def on_close(self, conn) -> None:
        conn.state.pop(_KEY, None)

    def on_data(self, conn, flow: int, source: int, pieces: list, ts_ns: int) -> None:
        st: _State | None = conn.state.get(_KEY)
        if st is None:
            return
        if source == abi.SRC_TLS:
            if not st.decided_plain and flow == client_flow(conn):
                self._plaintext(conn, st, pieces)
            return
        buf = st.sock[flow]
        if flow in st.stopped or len(buf) >= PREFIX_LIMIT or (
                st.decided_sock and (not conn.tls_enabled or (st.client_hello_done and st.server_hello_done))):
            return
        for p in pieces:
            if isinstance(p, int):  # a gap this early: this stream's prefix is unusable
                st.stopped.add(flow)
                return
            buf.extend(p[: PREFIX_LIMIT - len(buf)])
        is_client_flow = flow == client_flow(conn)
        if not st.decided_sock and is_client_flow:
            d = detect(bytes(buf))
            if d is None:
                return
            st.decided_sock = True
            if d.protocol == "tls":
                conn.tls_enabled = True
            elif not conn.tls_inspected:
                conn.protocol = d.protocol
                st.midstream = d.midstream
        if not conn.tls_enabled:
            return
        if is_client_flow and not st.client_hello_done:
            ch = parse_client_hello(bytes(buf))
            if ch is not None:
                st.client_hello_done = True
                st.alpn_offers = list(ch.alpn or [])
                if ch.sni:
                    conn.tls_sni = ch.sni
                    conn.domain = conn.domain or ch.sni
        elif not is_client_flow and not st.server_hello_done:
            sh = parse_server_hello(bytes(buf))
            if sh is not None:
                st.server_hello_done = True
                if sh.version:
                    conn.tls_version = sh.version
                if sh.alpn:
                    conn.tls_alpn = sh.alpn

    def _plaintext(self, conn, st: _State, pieces: list) -> None:
        for p in pieces:
            if isinstance(p, int):
                st.decided_plain = True
                return
            st.plain.extend(p[: PREFIX_LIMIT - len(st.plain)])
        d = detect(bytes(st.plain), alpn=conn.tls_alpn or None)
        if d is None and len(st.plain) < PREFIX_LIMIT:
            return
        st.decided_plain = True
        proto = d.protocol if d is not None else "tcp"
        if proto in ("http1", "http2"):
            conn.protocol = proto
            st.midstream = d.midstream
            if not conn.tls_alpn:
                wanted = "h2" if proto == "http2" else "http/1.1"
                if wanted in st.alpn_offers:
                    conn.tls_alpn = wanted
        st.plain = bytearray()
