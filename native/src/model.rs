//! The values the protocol parsers hand out (mirror of `plaintap/protocols/model.py`).
//!
//! The parsers (`http1`, `http2`) are sans-IO: bytes of both directions in, `Event`s out,
//! never panicking and never returning errors (protocol errors become `Event::Error`).
//! `py.rs`-style wrappers turn these into the Python dataclasses of `protocols.model`, so
//! records and plugins stay unchanged. Header names/values are kept as raw bytes and
//! handed to Python decoded as Latin-1 (lossless), exactly like the Python parsers.

/// Who sent the bytes of a stream: the end that opened the connection, or the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Client = 0,
    Server = 1,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
    pub fn from_int(v: i64) -> Option<Side> {
        match v {
            0 => Some(Side::Client),
            1 => Some(Side::Server),
            _ => None,
        }
    }
}

pub type Header = (Vec<u8>, Vec<u8>);

/// One HTTP request or response (see `Message` in model.py for every field's meaning).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    pub headers: Vec<Header>,
    pub method: Option<Vec<u8>>,
    pub target: Option<Vec<u8>>,
    pub authority: Option<Vec<u8>>,
    pub status: Option<u16>,
    pub reason: Option<Vec<u8>>,
    /// "1.0", "1.1" or "2"
    pub version: &'static str,
    pub trailers: Vec<Header>,
    pub body: Vec<u8>,
    pub body_size: u64,
    pub body_truncated: bool,
    pub first_ns: u64,
    pub last_ns: u64,
    pub complete: bool,
    pub is_response: bool,
}

impl Message {
    /// First value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// What a gRPC call looked like (see `GrpcInfo` in model.py).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GrpcInfo {
    pub service: Option<String>,
    pub method: Option<String>,
    pub status_code: Option<i64>,
    pub status_message: Option<String>,
    pub request_messages: u64,
    pub response_messages: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub framing_lost: bool,
}

/// One request/response exchange (see `Transaction` in model.py).
#[derive(Clone, Debug, PartialEq)]
pub struct Transaction {
    /// "http1" or "http2"
    pub protocol: &'static str,
    pub version: &'static str,
    pub stream_id: Option<u32>,
    pub request: Message,
    pub response: Option<Message>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub headers_known: bool,
    pub grpc: Option<GrpcInfo>,
    pub upgraded: bool,
    pub error: Option<String>,
}

/// A protocol error the parser saw and recovered from.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    pub side: Side,
    pub reason: String,
    pub ts_ns: u64,
    pub stream_id: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Transaction(Box<Transaction>),
    Error(ParseError),
}

/// The sans-IO parser interface both HTTP parsers implement; the connection layer drives
/// it from Rust, and the Python wrappers expose the same calls as `protocols.new_parser`.
pub trait Parser: Send {
    /// Bytes `side` sent, in order.
    fn feed(&mut self, side: Side, data: &[u8], ts_ns: u64);
    /// `len` bytes of `side`'s stream were lost by the capture.
    fn feed_gap(&mut self, side: Side, len: u64, ts_ns: u64);
    /// The connection closed: finish what can be finished.
    fn close(&mut self, ts_ns: u64);
    /// The next finished transaction or error, or None when more bytes are needed.
    fn next_event(&mut self) -> Option<Event>;
    /// True once the connection switched protocols (101 / CONNECT 2xx).
    fn upgraded(&self) -> bool {
        false
    }
    /// Named counters (parse errors, abandoned messages, discarded bytes, ...), as the
    /// Python parser's `stats` dict.
    fn stats(&self) -> Vec<(&'static str, u64)>;
    /// The framing state of `side`'s direction by name, where the parser has per-direction
    /// states (HTTP/1), for the state-table walks in the tests.
    fn side_state(&self, _side: Side) -> Option<&'static str> {
        None
    }
    /// Bytes `side` sent that the parser holds (buffered, not yet consumed or dropped).
    fn buffered(&self, _side: Side) -> usize {
        0
    }
    /// The state of HTTP/2 stream `stream_id` while the parser tracks it (for tests that
    /// walk the stream state table); None when untracked or not HTTP/2.
    fn stream_state(&self, _stream_id: u32) -> Option<&'static str> {
        None
    }
}
