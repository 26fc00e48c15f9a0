"""TLS ClientHello / ServerHello from the first bytes of a connection (no keys needed).

The caller passes the reassembled prefix of one direction (record boundaries need not
match its reads). Handshake records (content type 22) are concatenated until the first
handshake message is complete — a ClientHello may span several records — and its fields
are read with bounds checks everywhere: garbage gives None, never an exception.

What can be learned in clear:

* ClientHello: SNI, the offered ALPN protocols, the offered versions
  (`supported_versions`, GREASE values removed) and the legacy version.
* ServerHello: the negotiated version — TLS 1.3 is only visible in the
  `supported_versions` extension (the legacy field stays 1.2) — the cipher suite, and in
  TLS ≤ 1.2 the selected ALPN protocol. In TLS 1.3 the server's ALPN choice travels in
  EncryptedExtensions, which is encrypted: the caller must combine the ClientHello offer
  with protocol detection on the plaintext (uprobes) instead. A HelloRetryRequest is a
  ServerHello with a fixed random; it is flagged, and the real ServerHello follows.

`hello_incomplete(data)` tells "wait for more bytes" apart from "not a hello".

The parsing is the native core's (`native/src/classify.rs`), the one the data plane uses;
this is its Python face.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import _core

HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")

_VERSION_NAMES = {0x0300: "ssl3", 0x0301: "1.0", 0x0302: "1.1", 0x0303: "1.2", 0x0304: "1.3"}


def version_name(value: int) -> str:
    """0x0303 → "1.2", 0x0304 → "1.3"; unknown values as hex (drafts, GREASE)."""
    return _VERSION_NAMES.get(value, f"0x{value:04x}")


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values (0x0a0a, 0x1a1a, ... 0xfafa)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass(slots=True, frozen=True)
class ClientHello:
    legacy_version: str
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    supported_versions: tuple[str, ...] = ()
    cipher_suites: tuple[int, ...] = field(default=(), repr=False)

    @property
    def max_version(self) -> str:
        """Highest version offered (supported_versions if present, else legacy)."""
        order = ("ssl3", "1.0", "1.1", "1.2", "1.3")
        offered = [v for v in self.supported_versions if v in order] or [self.legacy_version]
        return max(offered, key=lambda v: order.index(v) if v in order else -1)


@dataclass(slots=True, frozen=True)
class ServerHello:
    legacy_version: str
    version: str                      # negotiated: supported_versions if present
    cipher_suite: int
    alpn: str | None = None           # only in TLS <= 1.2 (1.3: encrypted)
    hello_retry_request: bool = False


def hello_incomplete(data: bytes) -> bool:
    """True when `data` is a valid prefix of a Client/ServerHello that is not complete."""
    return _core.hello_incomplete(bytes(data))


def parse_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello at the start of `data`, or None (incomplete or not a ClientHello)."""
    d = _core.parse_client_hello(bytes(data))
    return None if d is None else ClientHello(**d)


def parse_server_hello(data: bytes) -> ServerHello | None:
    """The ServerHello at the start of `data`, or None (incomplete or not a ServerHello)."""
    d = _core.parse_server_hello(bytes(data))
    return None if d is None else ServerHello(**d)
