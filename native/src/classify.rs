//! Protocol classification: which parser a connection needs, and its TLS handshake facts.
//!
//! `detect(first_bytes, alpn)` answers from the start of one direction, as soon as it can
//! (None: "need more bytes"); once given, more bytes never change an answer, except that
//! binary data shorter than an HTTP/2 frame header is called tcp at once. Checks in order:
//! ALPN (for TLS plaintext); the HTTP/2 preface; a TLS handshake record; an HTTP/1
//! request line; an HTTP/1 status line (midstream: we joined after the request); two
//! consecutive plausible HTTP/2 frame headers (midstream); else tcp.
//!
//! `parse_client_hello` / `parse_server_hello` read the first handshake message of a
//! stream prefix (it may span records) with bounds checks everywhere: garbage gives None.
//! ClientHello gives SNI, offered ALPN and versions; ServerHello the negotiated version
//! (TLS 1.3 only in `supported_versions`) and, up to TLS 1.2, the selected ALPN.
//!
//! `Classifier` is the per-connection state: it looks at a bounded prefix of each stream
//! (`PREFIX_LIMIT`) and hands typed facts (`Facts`) to the connection that owns it.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
    Tls,
    Tcp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Http1 => "http1",
            Proto::Http2 => "http2",
            Proto::Tls => "tls",
            Proto::Tcp => "tcp",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detected {
    pub protocol: Proto,
    pub midstream: bool,
}

const fn det(protocol: Proto, midstream: bool) -> Option<Detected> {
    Some(Detected {
        protocol,
        midstream,
    })
}

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
// The methods and target bound are HTTP/1's own (one list for detection and parsing).
pub use crate::http1::syntax::{MAX_TARGET, METHODS};
pub const MAX_REQUEST_LINE: usize = 12 + MAX_TARGET + 12;
const MAX_FRAME_PROBE: usize = 64 * 1024;
const MAX_HUNT_FRAME: u32 = 16384;
const MAX_HUNT_STREAM_ID: u32 = 1 << 24;
const DEFINED_FLAGS: [u8; 10] = [0x09, 0x2D, 0x00, 0x00, 0x01, 0x0C, 0x01, 0x00, 0x00, 0x04];
// Some(true): needs a stream id; Some(false): must be on stream 0; None: either.
const NEEDS_STREAM: [Option<bool>; 10] = [
    Some(true),
    Some(true),
    Some(true),
    Some(true),
    Some(false),
    Some(true),
    Some(false),
    Some(false),
    None,
    Some(true),
];
const F_DATA: u8 = 0;
const F_HEADERS: u8 = 1;
const F_SETTINGS: u8 = 4;
const F_PUSH_PROMISE: u8 = 5;
const F_GOAWAY: u8 = 7;
const F_CONTINUATION: u8 = 9;

/// Classify a stream by its first bytes; None when more bytes are needed. Never panics.
pub fn detect(data: &[u8], alpn: Option<&str>) -> Option<Detected> {
    if let Some(a) = alpn {
        let proto = a.trim().to_ascii_lowercase();
        if proto == "h2" {
            return det(Proto::Http2, h2_midstream(data));
        }
        if proto == "http/1.1" || proto == "http/1.0" {
            if data.is_empty() {
                return det(Proto::Http1, false);
            }
            let mid = match http1_head(data) {
                Head::Is(d) => d.midstream,
                _ => true,
            };
            return det(Proto::Http1, mid);
        }
    }
    if data.is_empty() {
        return None;
    }
    let n = data.len().min(PREFACE.len());
    if data[..n] == PREFACE[..n] {
        return if n == PREFACE.len() {
            det(Proto::Http2, false)
        } else {
            None
        };
    }
    if data[0] == 0x16 {
        match tls_record(data) {
            TlsVerdict::Yes => return det(Proto::Tls, false),
            TlsVerdict::More => return None,
            TlsVerdict::No => {}
        }
    }
    match http1_head(data) {
        Head::More => return None,
        Head::Is(d) => return Some(d),
        Head::Not => {}
    }
    let server = frame_chain_verdict(data, true);
    let verdict = if server == Some(true) {
        server
    } else {
        frame_chain_verdict(data, false)
    };
    if verdict == Some(true) {
        return det(Proto::Http2, true);
    }
    if verdict.is_none() && data.len() < MAX_FRAME_PROBE && h2_header_plausible(data) {
        return None;
    }
    det(Proto::Tcp, false)
}

enum TlsVerdict {
    Yes,
    More,
    No,
}

fn tls_record(data: &[u8]) -> TlsVerdict {
    if data.len() >= 2 && data[1] != 0x03 {
        return TlsVerdict::No;
    }
    if data.len() >= 3 && data[2] > 0x04 {
        return TlsVerdict::No;
    }
    if data.len() < 6 {
        return TlsVerdict::More;
    }
    let length = ((data[3] as usize) << 8) | data[4] as usize;
    if !(1..=16384 + 2048).contains(&length) {
        return TlsVerdict::No;
    }
    if data[5] != 1 && data[5] != 2 {
        return TlsVerdict::No;
    }
    TlsVerdict::Yes
}

enum Head {
    Is(Detected),
    More,
    Not,
}

/// `METHOD SP target SP HTTP/1.x CRLF` at the start of `data` (target: 1..MAX_TARGET
/// visible ASCII characters).
pub fn is_request_line(data: &[u8]) -> bool {
    let Some(sp) = data.iter().position(|&c| c == b' ') else {
        return false;
    };
    if !METHODS.contains(&&data[..sp]) {
        return false;
    }
    let rest = &data[sp + 1..];
    let t = rest
        .iter()
        .take(MAX_TARGET + 1)
        .position(|&c| !(0x21..=0x7e).contains(&c))
        .unwrap_or(rest.len().min(MAX_TARGET + 1));
    if t == 0 || t > MAX_TARGET {
        return false;
    }
    let v = &rest[t..];
    v.len() >= 11
        && v.starts_with(b" HTTP/1.")
        && (v[8] == b'0' || v[8] == b'1')
        && &v[9..11] == b"\r\n"
}

/// `HTTP/1.x NNN[ reason]CRLF` at the start of `data`.
pub fn is_status_line(data: &[u8]) -> bool {
    if data.len() < 14 || !data.starts_with(b"HTTP/1.") || !(data[7] == b'0' || data[7] == b'1') {
        return false;
    }
    if data[8] != b' '
        || !(b'1'..=b'5').contains(&data[9])
        || !data[10].is_ascii_digit()
        || !data[11].is_ascii_digit()
    {
        return false;
    }
    let rest = &data[12..];
    if rest.starts_with(b"\r\n") {
        return true;
    }
    if rest.first() != Some(&b' ') {
        return false;
    }
    let reason = &rest[1..];
    let n = reason
        .iter()
        .take(1025)
        .position(|&c| c == b'\r' || c == b'\n')
        .unwrap_or(usize::MAX);
    n <= 1024 && reason[n..].starts_with(b"\r\n")
}

fn http1_head(data: &[u8]) -> Head {
    if is_request_line(data) {
        return Head::Is(Detected {
            protocol: Proto::Http1,
            midstream: false,
        });
    }
    if is_status_line(data) {
        return Head::Is(Detected {
            protocol: Proto::Http1,
            midstream: true,
        });
    }
    let probe = &data[..data.len().min(MAX_REQUEST_LINE)];
    if probe.contains(&b'\n') || data.len() > MAX_REQUEST_LINE {
        return Head::Not;
    }
    if could_be_request_line(data) || could_be_status_line(data) {
        return Head::More;
    }
    Head::Not
}

fn could_be_request_line(data: &[u8]) -> bool {
    let Some(sp) = data.iter().position(|&c| c == b' ') else {
        return METHODS.iter().any(|m| m.starts_with(data));
    };
    if !METHODS.contains(&&data[..sp]) {
        return false;
    }
    let rest = &data[sp + 1..];
    let (target, version) = match rest.iter().position(|&c| c == b' ') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if target.iter().any(|&c| !(0x21..=0x7e).contains(&c)) {
        return false;
    }
    let Some(version) = version else {
        return true;
    };
    let want: &[u8] = b"HTTP/1.";
    if version.len() <= want.len() {
        return want.starts_with(version);
    }
    if !version.starts_with(want) || !(version[7] == b'0' || version[7] == b'1') {
        return false;
    }
    b"\r\n".starts_with(&version[8..])
}

fn could_be_status_line(data: &[u8]) -> bool {
    let want: &[u8] = b"HTTP/1.";
    if data.len() <= want.len() {
        return want.starts_with(data);
    }
    if !data.starts_with(want) || !(data[7] == b'0' || data[7] == b'1') {
        return false;
    }
    let rest = &data[8..];
    if rest.is_empty() {
        return true;
    }
    if rest[0] != b' ' {
        return false;
    }
    rest[1..rest.len().min(4)]
        .iter()
        .all(|c| c.is_ascii_digit())
}

fn h2_midstream(data: &[u8]) -> bool {
    if data.is_empty() {
        return false;
    }
    let n = data.len().min(PREFACE.len());
    if data[..n] == PREFACE[..n] {
        return false;
    }
    // The server's first frame is its SETTINGS.
    !(data.len() >= 9 && data[3] == 0x04 && data[4] == 0 && data[5..9] == [0, 0, 0, 0])
}

/// (length, type, flags, stream id) if the 9 bytes at `p` look like a frame header that
/// the server (`server`) or the client could send.
fn plausible_frame_header(b: &[u8], p: usize, server: bool) -> Option<(u32, u8, u8, u32)> {
    let length = ((b[p] as u32) << 16) | ((b[p + 1] as u32) << 8) | b[p + 2] as u32;
    let ftype = b[p + 3];
    let flags = b[p + 4];
    if b[p + 5] & 0x80 != 0 || ftype > F_CONTINUATION || length > MAX_HUNT_FRAME {
        return None;
    }
    if flags & !DEFINED_FLAGS[ftype as usize] != 0 {
        return None;
    }
    let sid = (((b[p + 5] & 0x7f) as u32) << 24)
        | ((b[p + 6] as u32) << 16)
        | ((b[p + 7] as u32) << 8)
        | b[p + 8] as u32;
    if sid >= MAX_HUNT_STREAM_ID {
        return None;
    }
    match NEEDS_STREAM[ftype as usize] {
        Some(true) if sid == 0 => return None,
        Some(false) if sid != 0 => return None,
        _ => {}
    }
    let fixed = match ftype {
        2 => Some(5),
        3 => Some(4),
        6 => Some(8),
        8 => Some(4),
        _ => None,
    };
    if fixed.is_some_and(|f| f != length) {
        return None;
    }
    if ftype == F_SETTINGS && (!length.is_multiple_of(6) || (flags & 1 != 0 && length != 0)) {
        return None;
    }
    if ftype == F_GOAWAY && length < 8 {
        return None;
    }
    if ftype == F_HEADERS && !server && sid & 1 == 0 {
        return None;
    }
    if ftype == F_PUSH_PROMISE && (!server || length < 4) {
        return None;
    }
    if ftype == F_DATA && flags & 0x8 != 0 && length == 0 {
        return None;
    }
    Some((length, ftype, flags, sid))
}

/// Is offset 0 a frame boundary? Some(true/false), or None when more bytes are needed.
fn frame_chain_verdict(b: &[u8], server: bool) -> Option<bool> {
    if b.len() < 9 {
        return None;
    }
    let Some(first) = plausible_frame_header(b, 0, server) else {
        return Some(false);
    };
    if first.1 == F_CONTINUATION {
        return Some(false);
    }
    let q = 9 + first.0 as usize;
    if b.len() < q + 9 {
        return None;
    }
    let Some(second) = plausible_frame_header(b, q, server) else {
        return Some(false);
    };
    if (first.1 == F_HEADERS || first.1 == F_PUSH_PROMISE) && first.2 & 0x4 == 0 {
        return Some(second.1 == F_CONTINUATION && second.3 == first.3);
    }
    Some(second.1 != F_CONTINUATION)
}

fn h2_header_plausible(b: &[u8]) -> bool {
    b.len() >= 9
        && (plausible_frame_header(b, 0, true).is_some()
            || plausible_frame_header(b, 0, false).is_some())
}

// ---- TLS hellos ----

const CONTENT_HANDSHAKE: u8 = 22;
const HS_CLIENT_HELLO: u8 = 1;
const HS_SERVER_HELLO: u8 = 2;
const MAX_RECORD: usize = 16384 + 2048;
const MAX_HELLO: usize = 1 << 17;
const HRR_RANDOM: [u8; 32] = [
    0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
    0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
];

/// 0x0303 → "1.2", 0x0304 → "1.3"; unknown values as hex (drafts, GREASE).
pub fn version_name(v: u16) -> String {
    match v {
        0x0300 => "ssl3".into(),
        0x0301 => "1.0".into(),
        0x0302 => "1.1".into(),
        0x0303 => "1.2".into(),
        0x0304 => "1.3".into(),
        _ => format!("0x{v:04x}"),
    }
}

/// RFC 8701 GREASE values (0x0a0a, 0x1a1a, ... 0xfafa).
pub fn is_grease(v: u16) -> bool {
    (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff)
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientHello {
    pub legacy_version: String,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub supported_versions: Vec<String>,
    pub cipher_suites: Vec<u16>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerHello {
    pub legacy_version: String,
    pub version: String,
    pub cipher_suite: u16,
    pub alpn: Option<String>,
    pub hello_retry_request: bool,
}

enum Msg {
    Body(Vec<u8>),
    More,
    Not,
}

/// The first handshake message of type `want`, collected across records.
fn handshake_message(data: &[u8], want: u8) -> Msg {
    let mut payload: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    let n = data.len();
    loop {
        if payload.len() >= 4 {
            if payload[0] != want {
                return Msg::Not;
            }
            let length =
                ((payload[1] as usize) << 16) | ((payload[2] as usize) << 8) | payload[3] as usize;
            if length > MAX_HELLO {
                return Msg::Not;
            }
            if payload.len() >= 4 + length {
                return Msg::Body(payload[4..4 + length].to_vec());
            }
        }
        if n - pos < 5 {
            if n - pos >= 1 && data[pos] != CONTENT_HANDSHAKE {
                return Msg::Not;
            }
            if n - pos >= 2 && data[pos + 1] != 0x03 {
                return Msg::Not;
            }
            return Msg::More;
        }
        let (ctype, major, minor) = (data[pos], data[pos + 1], data[pos + 2]);
        let rlen = ((data[pos + 3] as usize) << 8) | data[pos + 4] as usize;
        if ctype != CONTENT_HANDSHAKE
            || major != 0x03
            || minor > 0x04
            || rlen == 0
            || rlen > MAX_RECORD
        {
            return Msg::Not;
        }
        if payload.is_empty() && n > pos + 5 && data[pos + 5] != want {
            return Msg::Not;
        }
        if n - pos - 5 < rlen {
            payload.extend_from_slice(&data[pos + 5..n]);
            if !payload.is_empty() && payload[0] != want {
                return Msg::Not;
            }
            return Msg::More;
        }
        payload.extend_from_slice(&data[pos + 5..pos + 5 + rlen]);
        pos += 5 + rlen;
    }
}

/// True when `data` is a valid prefix of a Client/ServerHello that is not complete.
pub fn hello_incomplete(data: &[u8]) -> bool {
    matches!(handshake_message(data, HS_CLIENT_HELLO), Msg::More)
        || matches!(handshake_message(data, HS_SERVER_HELLO), Msg::More)
}

struct Reader<'a> {
    d: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.d.len() - self.pos
    }
    fn u8(&mut self) -> Option<u8> {
        let v = *self.d.get(self.pos)?;
        self.pos += 1;
        Some(v)
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(((b[0] as u16) << 8) | b[1] as u16)
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.left() < n {
            return None;
        }
        let v = &self.d[self.pos..self.pos + n];
        self.pos += n;
        Some(v)
    }
    fn sub(&mut self, n: usize) -> Option<Reader<'a>> {
        Some(Reader {
            d: self.take(n)?,
            pos: 0,
        })
    }
}

fn ascii(b: &[u8]) -> String {
    b.iter()
        .map(|&c| if c < 0x80 { c as char } else { '\u{fffd}' })
        .collect()
}

/// The ClientHello at the start of `data`, or None (incomplete or not a ClientHello).
pub fn parse_client_hello(data: &[u8]) -> Option<ClientHello> {
    let Msg::Body(body) = handshake_message(data, HS_CLIENT_HELLO) else {
        return None;
    };
    let mut r = Reader { d: &body, pos: 0 };
    let legacy = r.u16()?;
    r.take(32)?;
    let sid = r.u8()? as usize;
    r.take(sid)?;
    let n = r.u16()? as usize;
    let mut suites_r = r.sub(n)?;
    let mut suites = Vec::new();
    while suites_r.left() >= 2 {
        let s = suites_r.u16()?;
        if !is_grease(s) {
            suites.push(s);
        }
    }
    let comp = r.u8()? as usize;
    r.take(comp)?;
    let mut ch = ClientHello {
        legacy_version: version_name(legacy),
        cipher_suites: suites,
        ..Default::default()
    };
    if r.left() > 0 {
        let n = r.u16()? as usize;
        let mut ext = r.sub(n)?;
        while ext.left() > 0 {
            let etype = ext.u16()?;
            let n = ext.u16()? as usize;
            let mut e = ext.sub(n)?;
            match etype {
                0 => {
                    let n = e.u16()? as usize;
                    let mut names = e.sub(n)?;
                    while names.left() > 0 {
                        let kind = names.u8()?;
                        let n = names.u16()? as usize;
                        let name = names.take(n)?;
                        if kind == 0 && ch.sni.is_none() {
                            ch.sni = Some(ascii(name));
                        }
                    }
                }
                16 => {
                    let n = e.u16()? as usize;
                    let mut protos = e.sub(n)?;
                    while protos.left() > 0 {
                        let n = protos.u8()? as usize;
                        ch.alpn.push(ascii(protos.take(n)?));
                    }
                }
                43 => {
                    let n = e.u8()? as usize;
                    let mut vs = e.sub(n)?;
                    while vs.left() >= 2 {
                        let v = vs.u16()?;
                        if !is_grease(v) {
                            ch.supported_versions.push(version_name(v));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Some(ch)
}

/// The ServerHello at the start of `data`, or None (incomplete or not a ServerHello).
pub fn parse_server_hello(data: &[u8]) -> Option<ServerHello> {
    let Msg::Body(body) = handshake_message(data, HS_SERVER_HELLO) else {
        return None;
    };
    let mut r = Reader { d: &body, pos: 0 };
    let legacy = r.u16()?;
    let random = r.take(32)?;
    let sid = r.u8()? as usize;
    r.take(sid)?;
    let suite = r.u16()?;
    r.u8()?;
    let mut selected = None;
    let mut alpn = None;
    if r.left() > 0 {
        let n = r.u16()? as usize;
        let mut ext = r.sub(n)?;
        while ext.left() > 0 {
            let etype = ext.u16()?;
            let n = ext.u16()? as usize;
            let mut e = ext.sub(n)?;
            match etype {
                43 => selected = Some(e.u16()?),
                16 => {
                    let n = e.u16()? as usize;
                    let mut protos = e.sub(n)?;
                    if protos.left() > 0 {
                        let n = protos.u8()? as usize;
                        alpn = Some(ascii(protos.take(n)?));
                    }
                }
                _ => {}
            }
        }
    }
    Some(ServerHello {
        legacy_version: version_name(legacy),
        version: version_name(selected.unwrap_or(legacy)),
        cipher_suite: suite,
        alpn,
        hello_retry_request: random == HRR_RANDOM,
    })
}

// ---- per-connection classifier ----

pub const PREFIX_LIMIT: usize = 16 * 1024;

/// What a connection learned from its first bytes (owned by the connection's session;
/// the classifier only ever sets facts, never clears them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    pub protocol: Option<Proto>,
    pub tls_enabled: bool,
    pub tls_version: Option<String>,
    pub tls_sni: Option<String>,
    pub tls_alpn: Option<String>,
}

/// Classification state of one connection.
#[derive(Debug, Default)]
pub struct Classifier {
    sock: [Vec<u8>; 2],
    plain: Vec<u8>,
    client_hello_done: bool,
    server_hello_done: bool,
    alpn_offers: Vec<String>,
    /// The socket stream was classified (TLS or a plaintext protocol).
    pub decided_sock: bool,
    /// The TLS plaintext was classified.
    pub decided_plain: bool,
    stopped: [bool; 2],
    /// The application bytes did not start at a message boundary.
    pub midstream: bool,
}

/// One ordered piece as the classifier sees it: bytes, or a gap.
pub enum Bytes<'a> {
    Data(&'a [u8]),
    Gap,
}

impl Classifier {
    /// Bytes on the socket (flow index 0/1; `client` says this flow is what the client sent).
    /// `facts` is the connection's current knowledge, updated in place.
    pub fn on_socket<'a>(
        &mut self,
        flow: usize,
        client: bool,
        pieces: impl Iterator<Item = Bytes<'a>>,
        facts: &mut Facts,
        tls_inspected: bool,
    ) {
        if self.stopped[flow]
            || self.sock[flow].len() >= PREFIX_LIMIT
            || (self.decided_sock
                && (!facts.tls_enabled || (self.client_hello_done && self.server_hello_done)))
        {
            return;
        }
        for p in pieces {
            match p {
                Bytes::Gap => {
                    // A gap this early: this stream's prefix is unusable.
                    self.stopped[flow] = true;
                    return;
                }
                Bytes::Data(d) => {
                    let room = PREFIX_LIMIT - self.sock[flow].len();
                    self.sock[flow].extend_from_slice(&d[..d.len().min(room)]);
                }
            }
        }
        let buf = &self.sock[flow];
        if !self.decided_sock && client {
            let Some(d) = detect(buf, None) else {
                return;
            };
            self.decided_sock = true;
            if d.protocol == Proto::Tls {
                facts.tls_enabled = true;
            } else if !tls_inspected {
                facts.protocol = Some(d.protocol);
                self.midstream = d.midstream;
            }
        }
        if !facts.tls_enabled {
            return;
        }
        if client && !self.client_hello_done {
            if let Some(ch) = parse_client_hello(buf) {
                self.client_hello_done = true;
                self.alpn_offers = ch.alpn;
                if let Some(sni) = ch.sni.filter(|s| !s.is_empty()) {
                    facts.tls_sni = Some(sni);
                }
            }
        } else if !client && !self.server_hello_done {
            if let Some(sh) = parse_server_hello(buf) {
                self.server_hello_done = true;
                if !sh.version.is_empty() {
                    facts.tls_version = Some(sh.version);
                }
                if let Some(a) = sh.alpn.filter(|a| !a.is_empty()) {
                    facts.tls_alpn = Some(a);
                }
            }
        }
        if self.decided_sock
            && (!facts.tls_enabled || (self.client_hello_done && self.server_hello_done))
        {
            self.sock = [Vec::new(), Vec::new()];
        }
    }

    /// TLS plaintext the client sent (only the client's flow is looked at).
    pub fn on_plaintext<'a>(&mut self, pieces: impl Iterator<Item = Bytes<'a>>, facts: &mut Facts) {
        if self.decided_plain {
            return;
        }
        for p in pieces {
            match p {
                Bytes::Gap => {
                    self.decided_plain = true;
                    return;
                }
                Bytes::Data(d) => {
                    let room = PREFIX_LIMIT - self.plain.len();
                    self.plain.extend_from_slice(&d[..d.len().min(room)]);
                }
            }
        }
        let d = detect(&self.plain, facts.tls_alpn.as_deref());
        if d.is_none() && self.plain.len() < PREFIX_LIMIT {
            return;
        }
        self.decided_plain = true;
        if let Some(d) = d {
            if d.protocol == Proto::Http1 || d.protocol == Proto::Http2 {
                facts.protocol = Some(d.protocol);
                self.midstream = d.midstream;
                if facts.tls_alpn.is_none() {
                    let wanted = if d.protocol == Proto::Http2 {
                        "h2"
                    } else {
                        "http/1.1"
                    };
                    if self.alpn_offers.iter().any(|a| a == wanted) {
                        facts.tls_alpn = Some(wanted.to_string());
                    }
                }
            }
        }
        self.plain = Vec::new();
    }

    /// Bytes this classifier holds (bounded by PREFIX_LIMIT per buffer).
    pub fn held_bytes(&self) -> usize {
        self.sock[0].capacity() + self.sock[1].capacity() + self.plain.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects() {
        assert_eq!(
            detect(b"GET / HTTP/1.1\r\n", None),
            det(Proto::Http1, false)
        );
        assert_eq!(
            detect(b"HTTP/1.1 200 OK\r\n", None),
            det(Proto::Http1, true)
        );
        assert_eq!(detect(b"GE", None), None);
        assert_eq!(detect(b"GET /x HT", None), None);
        assert_eq!(detect(PREFACE, None), det(Proto::Http2, false));
        assert_eq!(detect(&PREFACE[..5], None), None);
        assert_eq!(
            detect(b"\x16\x03\x01\x00\x10\x01", None),
            det(Proto::Tls, false)
        );
        assert_eq!(detect(b"SSH-2.0-x\r\n", None), det(Proto::Tcp, false));
        assert_eq!(detect(b"", Some("h2")), det(Proto::Http2, false));
        assert_eq!(detect(b"x", Some("http/1.1")), det(Proto::Http1, true));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 7u64;
        for n in 0..3000usize {
            let mut b = vec![0u8; n % 300];
            for x in b.iter_mut() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *x = (seed >> 33) as u8;
            }
            if n % 3 == 0 && b.len() > 6 {
                b[0] = 0x16;
                b[1] = 3;
                b[2] = 1;
            }
            let _ = detect(&b, None);
            let _ = parse_client_hello(&b);
            let _ = parse_server_hello(&b);
            let _ = hello_incomplete(&b);
        }
    }
}
