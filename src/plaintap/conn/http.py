"""Feeds each connection's application bytes to an HTTP parser; transactions come out.

Which bytes are "application bytes": the TLS plaintext for a connection that carries TLS
(ciphertext never reaches a parser), the socket bytes otherwise. The parser is created
once the ProtocolClassifier (which runs first) has named the protocol; bytes that arrive
before that are held, bounded by HOLD_LIMIT per side. Parse errors are counted per
protocol and never leave this module; a parser bug costs that one connection its
parsing, never the pipeline.
"""
from __future__ import annotations

import logging
from typing import Callable

from .. import metrics
from ..bpf import abi
from ..capture.filters import SKIP_HTTP
from ..protocols import Side, Transaction, new_parser
from ..protocols.model import ParseError
from .classify import client_flow

log = logging.getLogger("plaintap.http")

HOLD_LIMIT = 256 * 1024
_KEY = "http"


class _State:
    __slots__ = ("parser", "held", "held_bytes", "dead")

    def __init__(self) -> None:
        self.parser = None
        self.held: list[tuple[Side, object, int]] = []
        self.held_bytes = 0
        self.dead = False   # not HTTP, or the parser failed: stop looking


class HttpConsumer:
    def __init__(self, on_transaction: Callable[[object, Transaction], None], body_limit: int) -> None:
        self.on_transaction = on_transaction
        self.body_limit = body_limit

    def on_open(self, conn) -> None:
        if conn.skip & SKIP_HTTP:   # tap.filters: not parsed as HTTP
            return
        conn.state[_KEY] = _State()

    def on_data(self, conn, flow: int, source: int, pieces: list, ts_ns: int) -> None:
        st: _State | None = conn.state.get(_KEY)
        if st is None or st.dead:
            return
        wanted = abi.SRC_TLS if conn.tls_enabled else abi.SRC_SOCKET
        if source != wanted:
            return
        side = Side.CLIENT if flow == client_flow(conn) else Side.SERVER
        if st.parser is None:
            if conn.protocol in ("http1", "http2"):
                try:
                    cls = conn.state.get("classify")
                    st.parser = new_parser(conn.protocol, body_limit=self.body_limit,
                                           midstream=bool(cls and cls.midstream))
                except ValueError:
                    st.dead = True
                    return
                held, st.held = st.held, []
                for s, p, t in held:
                    self._feed(conn, st, s, [p], t)
            elif conn.protocol == "tcp" and (conn.state.get("classify") is None or self._decided(conn)):
                st.dead = True
                st.held = []
                return
            else:
                for p in pieces:
                    st.held.append((side, p, ts_ns))
                    st.held_bytes += p if isinstance(p, int) else len(p)
                if st.held_bytes > HOLD_LIMIT:
                    st.dead = True
                    st.held = []
                return
        self._feed(conn, st, side, pieces, ts_ns)

    @staticmethod
    def _decided(conn) -> bool:
        c = conn.state.get("classify")
        return bool(c and (c.decided_plain if conn.tls_enabled else c.decided_sock))

    def _feed(self, conn, st: _State, side: Side, pieces: list, ts_ns: int) -> None:
        p = st.parser
        try:
            for piece in pieces:
                if isinstance(piece, int):
                    p.feed_gap(side, piece, ts_ns)
                else:
                    p.feed(side, piece, ts_ns)
            self._drain(conn, st)
        except Exception:  # a parser bug must not cost more than this connection
            log.exception("HTTP parser failed on connection %s; parsing stopped for it", conn.id)
            metrics.parse_errors.labels(conn.protocol).inc()
            st.dead = True

    def _drain(self, conn, st: _State) -> None:
        while True:
            ev = st.parser.next_event()
            if ev is None:
                return
            if isinstance(ev, ParseError):
                metrics.parse_errors.labels(conn.protocol).inc()
                log.debug("parse error on %s: %s", conn.id, ev)
                continue
            self.on_transaction(conn, ev)

    def on_close(self, conn) -> None:
        st: _State | None = conn.state.pop(_KEY, None)
        if st is None or st.parser is None or st.dead:
            return
        try:
            st.parser.close(conn.close_ns or 0)
            self._drain(conn, st)
        except Exception:
            log.exception("HTTP parser failed at close of connection %s", conn.id)
            metrics.parse_errors.labels(conn.protocol).inc()
