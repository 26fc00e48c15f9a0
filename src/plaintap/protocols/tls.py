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
"""
from __future__ import annotations

from dataclasses import dataclass, field

CONTENT_HANDSHAKE = 22
HS_CLIENT_HELLO = 1
HS_SERVER_HELLO = 2
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
MAX_RECORD = 16384 + 2048
MAX_HELLO = 1 << 17

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


class _Reader:
    """Bounds-checked big-endian reads; any overrun raises _Short."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def u8(self) -> int:
        if self.pos + 1 > self.end:
            raise _Short
        v = self.data[self.pos]
        self.pos += 1
        return v

    def u16(self) -> int:
        if self.pos + 2 > self.end:
            raise _Short
        v = (self.data[self.pos] << 8) | self.data[self.pos + 1]
        self.pos += 2
        return v

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise _Short
        v = self.data[self.pos:self.pos + n]
        self.pos += n
        return v

    def sub(self, n: int) -> "_Reader":
        if self.pos + n > self.end:
            raise _Short
        r = _Reader(self.data, self.pos, self.pos + n)
        self.pos += n
        return r

    def left(self) -> int:
        return self.end - self.pos


class _Short(Exception):
    pass


def _handshake_message(data: bytes, want: int) -> bytes | None | bool:
    """Body of the first handshake message if complete (bytes); None if more bytes are
    needed; False if this is not a handshake of type `want`."""
    payload = bytearray()
    pos = 0
    n = len(data)
    while True:
        if len(payload) >= 4:
            if payload[0] != want:
                return False
            length = (payload[1] << 16) | (payload[2] << 8) | payload[3]
            if length > MAX_HELLO:
                return False
            if len(payload) >= 4 + length:
                return bytes(payload[4:4 + length])
        if n - pos < 5:
            if n - pos >= 1 and data[pos] != CONTENT_HANDSHAKE:
                return False
            if n - pos >= 2 and data[pos + 1] != 0x03:
                return False
            return None
        ctype, major, minor = data[pos], data[pos + 1], data[pos + 2]
        rlen = (data[pos + 3] << 8) | data[pos + 4]
        if ctype != CONTENT_HANDSHAKE or major != 0x03 or minor > 0x04 or not rlen \
                or rlen > MAX_RECORD:
            return False
        if not payload and data[pos + 5:pos + 6] not in (b"", bytes([want])):
            return False
        if n - pos - 5 < rlen:
            payload += data[pos + 5:n]
            # A partial record still tells us the message type early.
            if len(payload) >= 1 and payload[0] != want:
                return False
            return None
        payload += data[pos + 5:pos + 5 + rlen]
        pos += 5 + rlen


def hello_incomplete(data: bytes) -> bool:
    """True when `data` is a valid prefix of a Client/ServerHello that is not complete."""
    try:
        data = bytes(data)
        return (_handshake_message(data, HS_CLIENT_HELLO) is None
                or _handshake_message(data, HS_SERVER_HELLO) is None)
    except Exception:
        return False


def parse_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello at the start of `data`, or None (incomplete or not a ClientHello)."""
    try:
        body = _handshake_message(bytes(data), HS_CLIENT_HELLO)
        if not isinstance(body, bytes):
            return None
        return _client_hello(_Reader(body))
    except Exception:
        return None


def parse_server_hello(data: bytes) -> ServerHello | None:
    """The ServerHello at the start of `data`, or None (incomplete or not a ServerHello)."""
    try:
        body = _handshake_message(bytes(data), HS_SERVER_HELLO)
        if not isinstance(body, bytes):
            return None
        return _server_hello(_Reader(body))
    except Exception:
        return None


def _extensions(r: _Reader):
    if not r.left():
        return
    ext = r.sub(r.u16())
    while ext.left():
        etype = ext.u16()
        yield etype, ext.sub(ext.u16())


def _client_hello(r: _Reader) -> ClientHello:
    legacy = r.u16()
    r.take(32)                       # random
    r.take(r.u8())                   # legacy session id
    suites_r = r.sub(r.u16())
    suites = []
    while suites_r.left() >= 2:
        suite = suites_r.u16()
        if not is_grease(suite):
            suites.append(suite)
    r.take(r.u8())                   # compression methods
    sni = None
    alpn: list[str] = []
    versions: list[str] = []
    for etype, ext in _extensions(r):
        if etype == EXT_SERVER_NAME:
            names = ext.sub(ext.u16())
            while names.left():
                kind = names.u8()
                name = names.take(names.u16())
                if kind == 0 and sni is None:
                    sni = name.decode("ascii", "replace")
        elif etype == EXT_ALPN:
            protos = ext.sub(ext.u16())
            while protos.left():
                alpn.append(protos.take(protos.u8()).decode("ascii", "replace"))
        elif etype == EXT_SUPPORTED_VERSIONS:
            vs = ext.sub(ext.u8())
            while vs.left() >= 2:
                v = vs.u16()
                if not is_grease(v):
                    versions.append(version_name(v))
    return ClientHello(legacy_version=version_name(legacy), sni=sni, alpn=tuple(alpn),
                       supported_versions=tuple(versions), cipher_suites=tuple(suites))


def _server_hello(r: _Reader) -> ServerHello:
    legacy = r.u16()
    random = r.take(32)
    r.take(r.u8())                   # legacy session id echo
    suite = r.u16()
    r.u8()                           # compression method
    selected = None
    alpn = None
    for etype, ext in _extensions(r):
        if etype == EXT_SUPPORTED_VERSIONS:
            selected = ext.u16()
        elif etype == EXT_ALPN:
            protos = ext.sub(ext.u16())
            if protos.left():
                alpn = protos.take(protos.u8()).decode("ascii", "replace")
    version = version_name(selected if selected is not None else legacy)
    return ServerHello(legacy_version=version_name(legacy), version=version,
                       cipher_suite=suite, alpn=alpn,
                       hello_retry_request=random == HRR_RANDOM)
