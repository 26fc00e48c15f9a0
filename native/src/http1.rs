//! HTTP/1.x observer: both directions of one connection in, transactions out (sans-IO).
//!
//! How it works
//! ------------
//! Each direction has a small framing state machine ([`table`], walked by tests) over a
//! [`StreamInput`]. The parser finds message boundaries itself: a header section ends at
//! the first CRLF CRLF, and the body is framed by RFC 9112 §6 — which for a response
//! depends on the *request* (HEAD, CONNECT) and the status (1xx, 204, 304), so the
//! response side learns the method from the client side. `httparse` parses each header
//! section (start line and fields), with the checks it leaves to us (CRLF only, known
//! method, visible-ASCII target); bodies (Content-Length, chunked with trailers,
//! read-until-close) are framed here, so every position is known: the parser stops
//! exactly after a HEAD response's headers and keeps framing through a capture gap that
//! falls inside a body of known length.
//!
//! Strict like the servers it observes (records are evidence): a request whose head or
//! body framing is malformed is a counted ParseError and the client stream is not parsed
//! any further (a server answers 400 and closes; hunting for the next request line would
//! report requests no server received). A CONNECT request never has a body. Chunk-size
//! lines follow RFC 9112 §7.1 exactly (CRLF only, whitespace only around `;` and `=`,
//! well-formed extensions). Resynchronisation is kept for what the observer itself
//! loses — capture gaps, mid-stream joins, its own header-size limit — and for the server
//! side; it looks for a start line only at the start of a line (or right at the gap).
//!
//! Pairing responses to requests is FIFO, with a timing rule that makes wrong pairings
//! impossible in practice: a response can only answer a request whose first byte was
//! seen no later than the response's first byte (kernel timestamps, one clock). A
//! response that violates it — an unsolicited 408, or the answer to a request lost in a
//! gap or before a mid-stream join — is dropped (counted) and the server side hunts for
//! the next status line. While both sides are in sync the rule allows `clock_slack_ns`
//! (1 ms: a client writing and reading on different threads can have its answer stamped
//! first); the first request after a resynchronisation and a hunting server side get no
//! slack. Server bytes that arrive before any request is pending are held (bounded).
//!
//! A server-side loss gives up on every pending request sent before the loss (emitted
//! with `response = None`). When bytes are lost on a connection that has pipelined, the
//! parser stops pairing (`pairing_lost`): pending requests keep their answers if the
//! server side is still in sync, later ones are reported without responses.
//!
//! After a 101 (Upgrade) or a 2xx answer to CONNECT the transaction ends at the switch and
//! later bytes on both sides are counted, not parsed. The client side holds bytes sent
//! after an Upgrade/CONNECT request until the response decides.
//!
//! Memory per connection is bounded and every limit is counted: header sections beyond
//! `max_header_bytes` are a ParseError, bodies are stored up to `body_limit`, held bytes
//! up to `max_held_bytes`, and at most `max_pending` exchanges (and `max_queued_bytes` of
//! their stored messages) wait for answers; beyond, pairing is given up
//! (`pipeline_overflows`) rather than memory grown.
#![forbid(unsafe_code)]

pub mod syntax;
pub mod table;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::input::{Body, StreamInput};
use crate::model::{Event, Message, ParseError, Parser, Side, Transaction};
use syntax::{Framing, LineMatch};
pub use table::{next_state, Input, State};

/// Limits of one connection's parser.
#[derive(Clone, Debug)]
pub struct Config {
    pub body_limit: usize,
    pub max_header_bytes: usize,
    pub max_held_bytes: usize,
    pub clock_slack_ns: u64,
    /// Exchanges waiting to be emitted (pipelined requests) before pairing is given up.
    pub max_pending: usize,
    /// Stored bytes of those exchanges before pairing is given up.
    pub max_queued_bytes: usize,
    /// Capture gaps queued on a side that waits for the other before they are dropped.
    pub max_pending_gaps: usize,
}

impl Config {
    pub fn new(body_limit: usize) -> Self {
        Config {
            body_limit,
            max_header_bytes: 64 * 1024,
            max_held_bytes: 256 * 1024,
            clock_slack_ns: 1_000_000,
            max_pending: 1024,
            max_queued_bytes: (16 << 20).max(body_limit.saturating_mul(4)),
            max_pending_gaps: 1024,
        }
    }
}

/// A new HTTP/1 parser.
pub fn new_parser(body_limit: usize, midstream: bool) -> Option<Box<dyn Parser>> {
    Some(Box::new(Http1Parser::new(
        Config::new(body_limit),
        midstream,
    )))
}

const PAIRING_LOST: &str = "response pairing lost after capture loss";

/// Named counters, in the order `stats()` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
enum Stat {
    ParseErrors,
    AbandonedRequests,
    AbandonedResponses,
    UnpairedResponses,
    ResponsesLost,
    DiscardedBytes,
    UpgradedBytesClient,
    UpgradedBytesServer,
    InformationalResponses,
    HeldBytesDropped,
    BytesAfterClose,
    Gaps,
    GapBytes,
    PairingLost,
    InternalErrors,
    RejectedRequests,
    PipelineOverflows,
}

const STAT_NAMES: [&str; 17] = [
    "parse_errors",
    "abandoned_requests",
    "abandoned_responses",
    "unpaired_responses",
    "responses_lost",
    "discarded_bytes",
    "upgraded_bytes_client",
    "upgraded_bytes_server",
    "informational_responses",
    "held_bytes_dropped",
    "bytes_after_close",
    "gaps",
    "gap_bytes",
    "pairing_lost",
    "internal_errors",
    "rejected_requests",
    "pipeline_overflows",
];

/// Handler results of the per-side state machines.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    /// Consumed input or changed state: run again.
    Progress,
    /// Needs more bytes (a pending gap may now be applied).
    Need,
    /// Blocked on the other side: do not apply gaps yet.
    Wait,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MethodKind {
    Head,
    Connect,
    Other,
}

/// One request and (once seen) its response, in request order.
#[derive(Debug)]
struct Exchange {
    request: Message,
    response: Option<Message>,
    req_done: bool,
    resp_done: bool,
    method: MethodKind,
    wants_switch: bool,
    upgraded: bool,
    error: Option<String>,
    response_lost: bool,
    /// When it ended without a response (close, capture loss).
    end_ns: u64,
    /// First request after a resync: no clock slack in pairing.
    strict: bool,
    /// Bytes of this exchange counted in `queued_bytes`.
    weight: usize,
}

/// Framing state of one direction.
#[derive(Debug)]
struct SideState {
    side: Side,
    is_req: bool,
    inp: StreamInput,
    state: State,
    /// Id of the exchange whose message body is being read (None between messages).
    exch: Option<u64>,
    body: Body,
    /// Body / chunk bytes left.
    remaining: u64,
    /// Stream offset to resume the CRLF CRLF search from.
    scan_abs: u64,
    /// In HUNT because sync was lost (not a mid-stream join).
    lost: bool,
    /// Found a start line by hunting.
    resynced: bool,
    /// Stream offset where the last gap (or dropped run of bytes) ended: a start line may
    /// begin there even though no LF precedes it.
    origin: Option<u64>,
}

impl SideState {
    fn new(side: Side, state: State) -> Self {
        SideState {
            side,
            is_req: side == Side::Client,
            inp: StreamInput::default(),
            state,
            exch: None,
            body: Body::new(0, false),
            remaining: 0,
            scan_abs: 0,
            lost: false,
            resynced: false,
            origin: None,
        }
    }
}

/// The framing core. Every method may assume its own invariants; the public wrapper
/// [`Http1Parser`] turns a bug (a panic) into a counted internal error.
struct Core {
    cfg: Config,
    sides: [SideState; 2],
    events: VecDeque<Event>,
    /// Exchanges not yet emitted, in request order; `order[0]` has id `order_base`.
    order: VecDeque<Exchange>,
    order_base: u64,
    /// Ids of exchanges whose final response has not started yet.
    awaiting: VecDeque<u64>,
    queued_bytes: usize,
    /// A request was seen while an earlier one was unanswered.
    pipelined: bool,
    pairing_lost: bool,
    upgraded: bool,
    stats: [u64; STAT_NAMES.len()],
}

/// Sans-IO HTTP/1.x observer for one connection. See the module documentation.
pub struct Http1Parser {
    core: Core,
    closed: bool,
    broken: bool,
}

impl Http1Parser {
    pub fn new(cfg: Config, midstream: bool) -> Self {
        let start = if midstream { State::Hunt } else { State::Idle };
        Http1Parser {
            core: Core {
                cfg,
                sides: [
                    SideState::new(Side::Client, start),
                    SideState::new(Side::Server, start),
                ],
                events: VecDeque::new(),
                order: VecDeque::new(),
                order_base: 0,
                awaiting: VecDeque::new(),
                queued_bytes: 0,
                pipelined: false,
                pairing_lost: false,
                upgraded: false,
                stats: [0; STAT_NAMES.len()],
            },
            closed: false,
            broken: false,
        }
    }

    /// The framing state of `side` (for tests and the Python table walk).
    pub fn state(&self, side: Side) -> State {
        self.core.sides[side as usize].state
    }

    fn guarded(&mut self, side: Side, ts: u64, f: impl FnOnce(&mut Core)) {
        let core = &mut self.core;
        if catch_unwind(AssertUnwindSafe(|| f(core))).is_err() {
            // A bug must not take the agent down: count it, go quiet for this connection.
            self.broken = true;
            let core = &mut self.core;
            core.stats[Stat::InternalErrors as usize] += 1;
            core.events.push_back(Event::Error(ParseError {
                side,
                reason: "internal error: parser bug (panic)".to_string(),
                ts_ns: ts,
                stream_id: None,
            }));
        }
    }
}

impl Parser for Http1Parser {
    fn feed(&mut self, side: Side, data: &[u8], ts_ns: u64) {
        if data.is_empty() {
            return;
        }
        if self.closed || self.broken {
            self.core.stats[Stat::BytesAfterClose as usize] += data.len() as u64;
            return;
        }
        self.guarded(side, ts_ns, |c| {
            c.sides[side as usize].inp.append(data, ts_ns);
            c.run(side as usize);
        });
    }

    fn feed_gap(&mut self, side: Side, len: u64, ts_ns: u64) {
        if len == 0 || self.closed || self.broken {
            return;
        }
        self.guarded(side, ts_ns, |c| {
            c.stats[Stat::Gaps as usize] += 1;
            c.stats[Stat::GapBytes as usize] += len;
            c.sides[side as usize].inp.add_gap(len, ts_ns);
            c.run(side as usize);
        });
    }

    fn close(&mut self, ts_ns: u64) {
        if self.closed {
            return;
        }
        if !self.broken {
            self.guarded(Side::Server, ts_ns, |c| c.close(ts_ns));
        }
        self.closed = true;
    }

    fn next_event(&mut self) -> Option<Event> {
        self.core.events.pop_front()
    }

    fn upgraded(&self) -> bool {
        self.core.upgraded
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        STAT_NAMES
            .iter()
            .zip(self.core.stats.iter())
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    fn side_state(&self, side: Side) -> Option<&'static str> {
        Some(self.state(side).name())
    }

    fn buffered(&self, side: Side) -> usize {
        self.core.sides[side as usize].inp.buf.len()
    }
}

/// The next position after `c` (up to `limit`) that follows a LF or starts a new write.
fn next_candidate(inp: &StreamInput, c: usize, limit: usize) -> Option<usize> {
    if c >= limit {
        return None;
    }
    let lf = memchr::memchr(b'\n', &inp.buf[c..limit]).map(|i| c + i + 1);
    let chunk = inp.next_chunk_start(c + 1, limit);
    match (lf, chunk) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

const CLIENT: usize = 0;
const SERVER: usize = 1;

impl Core {
    fn stat(&mut self, s: Stat, n: u64) {
        self.stats[s as usize] += n;
    }

    fn ex(&mut self, id: u64) -> &mut Exchange {
        let i = (id - self.order_base) as usize;
        &mut self.order[i]
    }

    fn ex_ref(&self, id: u64) -> &Exchange {
        &self.order[(id - self.order_base) as usize]
    }

    fn error_event(&mut self, side: Side, reason: String, ts: u64) {
        self.events.push_back(Event::Error(ParseError {
            side,
            reason,
            ts_ns: ts,
            stream_id: None,
        }));
    }

    // -- driving --------------------------------------------------------------------------

    fn run(&mut self, first: usize) {
        let other = 1 - first;
        self.pump(first);
        // Progress on one side can unblock the other (a new request lets held server bytes
        // be framed; an answer to Upgrade/CONNECT releases held client bytes).
        while self.sides[other].inp.pending()
            && self.pump(other)
            && self.sides[first].inp.pending()
            && self.pump(first)
        {}
    }

    fn pump(&mut self, si: usize) -> bool {
        let mut progressed = false;
        loop {
            let limit = self.sides[si].inp.limit();
            let r = self.handle(si, limit);
            match r {
                Step::Progress => {
                    progressed = true;
                    continue;
                }
                Step::Need if self.sides[si].inp.has_gap() => {
                    let (n, ts) = if self.sides[si].inp.pos >= limit {
                        self.sides[si].inp.pop_gap()
                    } else {
                        self.drop_partial(si, limit)
                    };
                    self.gap(si, n, ts);
                    progressed = true;
                    continue;
                }
                Step::Wait => {
                    let s = &self.sides[si];
                    if s.inp.buffered() > self.cfg.max_held_bytes + self.cfg.max_header_bytes
                        || s.inp.gap_count() > self.cfg.max_pending_gaps
                    {
                        self.overflow_all(si);
                        progressed = true;
                        continue;
                    }
                }
                Step::Need => {}
            }
            break;
        }
        self.sides[si].inp.compact();
        progressed
    }

    fn handle(&mut self, si: usize, limit: usize) -> Step {
        match self.sides[si].state {
            State::Hunt => self.hunt(si, limit),
            State::Idle => self.idle(si, limit),
            State::BodyLength => self.body_length(si, limit),
            State::ChunkSize => self.chunk_size(si, limit),
            State::ChunkData => self.chunk_data(si, limit),
            State::ChunkEnd => self.chunk_end(si, limit),
            State::Trailers => self.trailers(si, limit),
            State::BodyEof => self.body_eof(si, limit),
            State::Blocked => self.blocked(si, limit),
            State::Switched => self.switched(si, limit),
            State::Ignore | State::Rejected => self.discard(si, limit),
            State::Closed => self.closed_state(si, limit),
        }
    }

    /// Bytes before a gap that do not form a whole unit: the unit is lost.
    fn drop_partial(&mut self, si: usize, limit: usize) -> (u64, u64) {
        let s = &self.sides[si];
        let n = (limit - s.inp.pos) as u64;
        if s.state == State::Idle && s.inp.pos < limit {
            let st = if s.is_req {
                Stat::AbandonedRequests
            } else {
                Stat::AbandonedResponses
            };
            self.stat(st, 1);
        }
        self.stat(Stat::DiscardedBytes, n);
        self.sides[si].inp.pop_gap()
    }

    /// A side that waits for the other holds more than it may (bytes, or queued gaps):
    /// everything it holds is dropped and counted, and it hunts from there.
    fn overflow_all(&mut self, si: usize) {
        let s = &mut self.sides[si];
        let n = s.inp.buffered();
        s.inp.pos = s.inp.buf.len();
        s.inp.clear_gaps();
        let ts = s.inp.last_ts;
        s.origin = Some(s.inp.abs(s.inp.pos));
        self.stat(Stat::HeldBytesDropped, n as u64);
        self.go(si, Input::Overflow);
        self.lost_sync(si, ts);
    }

    fn go(&mut self, si: usize, input: Input) {
        let s = &mut self.sides[si];
        let old = s.state;
        match next_state(old, input) {
            Some(n) => s.state = n,
            None => panic!("{input:?} in state {old:?}"),
        }
        if s.state == State::Hunt && old != State::Hunt {
            s.lost = true;
        }
    }

    // -- handlers -------------------------------------------------------------------------

    fn hunt(&mut self, si: usize, limit: usize) -> Step {
        let pos = self.sides[si].inp.pos;
        if pos >= limit {
            return Step::Need;
        }
        if si == SERVER {
            if self.awaiting.is_empty() && self.pairing_lost {
                self.go(si, Input::PairingLost);
                return Step::Progress;
            }
            if self.awaiting.is_empty() {
                // A status line cannot be judged before a request is pending: hold it.
                let held = limit - pos;
                if held > self.cfg.max_held_bytes {
                    let drop = held - self.cfg.max_held_bytes;
                    let s = &mut self.sides[si];
                    s.inp.pos = pos + drop;
                    s.origin = Some(s.inp.abs(s.inp.pos));
                    self.stat(Stat::HeldBytesDropped, drop as u64);
                    self.go(si, Input::Overflow);
                    return Step::Progress;
                }
                return Step::Wait;
            }
        }
        let first_ns = match self.awaiting.front() {
            Some(&id) if si == SERVER => self.ex_ref(id).request.first_ns,
            _ => 0,
        };
        let s = &self.sides[si];
        let buf = &s.inp.buf[..limit];
        // Candidates: where a line starts, where a gap ended, where a new write starts —
        // never the middle of a line of one write.
        let first_ok =
            s.inp.line_start(pos) || s.origin == Some(s.inp.abs(pos)) || s.inp.chunk_start(pos);
        let mut cand = if first_ok {
            Some(pos)
        } else {
            next_candidate(&s.inp, pos, limit)
        };
        let mut found: Option<usize> = None;
        let mut wait_at: Option<usize> = None;
        while let Some(c) = cand {
            if c >= limit {
                wait_at = Some(c);
                break;
            }
            let m = if s.is_req {
                syntax::match_request_line(&buf[c..])
            } else {
                syntax::match_status_line(&buf[c..])
            };
            match m {
                LineMatch::Yes(_) => {
                    if s.is_req || s.inp.ts_at(c) >= first_ns {
                        found = Some(c);
                        break;
                    }
                }
                LineMatch::More => {
                    wait_at = Some(c);
                    break;
                }
                LineMatch::No => {}
            }
            cand = next_candidate(&s.inp, c, limit);
        }
        if let Some(c) = found {
            self.stat(Stat::DiscardedBytes, (c - pos) as u64);
            let s = &mut self.sides[si];
            s.inp.pos = c;
            s.scan_abs = s.inp.abs(c);
            s.origin = None;
            self.go(si, Input::Sync);
            if si == CLIENT {
                let s = &mut self.sides[si];
                s.resynced = true;
                if s.lost {
                    s.lost = false;
                    // Requests were lost. Their answers are told apart from this request's
                    // only by time, which fails if the client does not wait for answers.
                    if self.pipelined || self.outstanding() {
                        let ts = self.sides[si].inp.ts_at(c);
                        self.lose_pairing("client bytes lost on a pipelining connection", true, ts);
                    }
                }
            }
            return Step::Progress;
        }
        let new_pos = wait_at.unwrap_or(limit);
        if new_pos > pos {
            self.stat(Stat::DiscardedBytes, (new_pos - pos) as u64);
            self.sides[si].inp.pos = new_pos;
        }
        Step::Need
    }

    fn idle(&mut self, si: usize, limit: usize) -> Step {
        let s = &mut self.sides[si];
        let mut pos = s.inp.pos;
        if pos >= limit {
            return Step::Need;
        }
        let c = s.inp.buf[pos];
        if c == b'\r' || c == b'\n' {
            // Empty lines (CRLF or LF) between messages are tolerated (RFC 9112 §2.2); a
            // bare CR is not a line end.
            let start = pos;
            let mut bare_cr = false;
            while pos < limit {
                match s.inp.buf[pos] {
                    b'\n' => pos += 1,
                    b'\r' if pos + 1 >= limit => break,
                    b'\r' if s.inp.buf[pos + 1] == b'\n' => pos += 2,
                    b'\r' => {
                        bare_cr = true;
                        break;
                    }
                    _ => break,
                }
            }
            let s = &mut self.sides[si];
            s.inp.pos = pos;
            s.scan_abs = s.inp.abs(pos);
            if bare_cr {
                let ts = s.inp.ts_at(pos);
                let why = "bare CR before a start line".to_string();
                return if si == CLIENT {
                    self.reject(si, why, pos, ts)
                } else {
                    self.error(si, why, pos + 1, ts)
                };
            }
            return if pos > start {
                Step::Progress
            } else {
                Step::Need
            };
        }
        if !s.is_req && self.awaiting.is_empty() {
            if self.pairing_lost {
                self.go(si, Input::PairingLost);
                return Step::Progress;
            }
            if limit - pos > self.cfg.max_held_bytes {
                let s = &mut self.sides[si];
                let ts = s.inp.ts_at(limit - 1);
                s.inp.pos = limit;
                s.origin = Some(s.inp.abs(limit));
                self.stat(Stat::HeldBytesDropped, (limit - pos) as u64);
                self.go(si, Input::Overflow);
                self.lost_sync(si, ts);
                return Step::Progress;
            }
            return Step::Wait;
        }
        let s = &mut self.sides[si];
        let start = (s.scan_abs.saturating_sub(s.inp.base) as usize).clamp(pos, limit);
        let found = memchr::memmem::find(&s.inp.buf[start..limit], b"\r\n\r\n");
        let max = self.cfg.max_header_bytes;
        let end = match found {
            Some(i) => start + i,
            None => {
                if limit - pos > max {
                    return self.too_large(si, pos, limit);
                }
                let s = &mut self.sides[si];
                s.scan_abs = s.inp.abs(pos.max(limit.saturating_sub(3)));
                return Step::Need;
            }
        };
        let block_end = end + 4;
        if block_end - pos > max {
            return self.too_large(si, pos, limit);
        }
        let first_ns = self.sides[si].inp.ts_at(pos);
        if si == CLIENT {
            self.request_head(si, pos, block_end, first_ns)
        } else {
            self.response_head(si, pos, block_end, first_ns)
        }
    }

    /// A header section beyond our own limit: an error, then hunt (the server may have a
    /// larger limit, so what follows can be a request it served).
    fn too_large(&mut self, si: usize, pos: usize, _limit: usize) -> Step {
        let ts = self.sides[si].inp.ts_at(pos);
        self.error(si, "header section too large".to_string(), pos + 1, ts)
    }

    fn request_head(&mut self, si: usize, pos: usize, block_end: usize, first_ns: u64) -> Step {
        let parsed = syntax::parse_request_head(&self.sides[si].inp.buf[pos..block_end]);
        let head = match parsed {
            Ok(h) => h,
            Err(e) => return self.reject(si, e, pos, first_ns),
        };
        let method = match head.method.as_slice() {
            b"HEAD" => MethodKind::Head,
            b"CONNECT" => MethodKind::Connect,
            _ => MethodKind::Other,
        };
        let framing = if method == MethodKind::Connect {
            // RFC 9110 §9.3.6: a CONNECT request has no content, whatever it declares.
            Ok(Framing::None)
        } else {
            syntax::body_framing(&head.headers, false)
        };
        let framing = match framing {
            Ok(f) => f,
            Err(e) => {
                return self.reject(
                    si,
                    format!("cannot frame request body ({e})"),
                    pos,
                    first_ns,
                )
            }
        };
        if self.order.len() >= self.cfg.max_pending || self.queued_bytes > self.cfg.max_queued_bytes
        {
            // Too many exchanges wait for answers: give up pairing (they are emitted now)
            // rather than grow without bound.
            self.stat(Stat::PipelineOverflows, 1);
            self.lose_pairing("too many outstanding requests", false, first_ns);
        }
        if !self.pipelined && self.outstanding() {
            self.pipelined = true;
        }
        let wants_switch = method == MethodKind::Connect || syntax::wants_upgrade(&head.headers);
        let authority = head
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(b"host"))
            .map(|(_, v)| v.clone());
        let weight = block_end - pos;
        let msg = Message {
            headers: head.headers,
            method: Some(head.method),
            target: Some(head.target),
            authority,
            version: head.version,
            first_ns,
            complete: true,
            ..Default::default()
        };
        let resynced = std::mem::take(&mut self.sides[si].resynced);
        let mut ex = Exchange {
            request: msg,
            response: None,
            req_done: false,
            resp_done: false,
            method,
            wants_switch,
            upgraded: false,
            error: None,
            response_lost: false,
            end_ns: 0,
            strict: resynced,
            weight,
        };
        let id = self.order_base + self.order.len() as u64;
        if self.pairing_lost {
            ex.response_lost = true;
            ex.wants_switch = false;
            ex.error = Some(PAIRING_LOST.to_string());
        } else {
            self.awaiting.push_back(id);
        }
        self.queued_bytes += weight;
        self.order.push_back(ex);
        let s = &mut self.sides[si];
        s.inp.pos = block_end;
        s.scan_abs = s.inp.abs(block_end);
        s.exch = Some(id);
        match framing {
            Framing::None | Framing::Eof => {
                self.go(si, Input::HeadNoBody);
                let ts = self.sides[si].inp.ts_at(block_end - 1);
                self.ex(id).request.last_ns = ts;
                self.request_done(si, id);
            }
            Framing::Length(n) => {
                let s = &mut self.sides[si];
                s.body = Body::new(self.cfg.body_limit, false);
                s.remaining = n;
                self.go(si, Input::HeadLength);
            }
            Framing::Chunked => {
                self.sides[si].body = Body::new(self.cfg.body_limit, false);
                self.go(si, Input::HeadChunked);
            }
        }
        Step::Progress
    }

    fn response_head(&mut self, si: usize, pos: usize, block_end: usize, first_ns: u64) -> Step {
        let Some(&id) = self.awaiting.front() else {
            return Step::Wait;
        };
        let (req_first, strict, method) = {
            let ex = self.ex_ref(id);
            (ex.request.first_ns, ex.strict, ex.method)
        };
        let slack = if strict { 0 } else { self.cfg.clock_slack_ns };
        if first_ns.saturating_add(slack) < req_first {
            // Began before the oldest pending request did: it answers something we did
            // not see (or nothing). Drop it and find a response that can be paired.
            self.stat(Stat::UnpairedResponses, 1);
            self.stat(Stat::DiscardedBytes, (block_end - pos) as u64);
            self.sides[si].inp.pos = block_end;
            self.go(si, Input::Unpaired);
            return Step::Progress;
        }
        let parsed = syntax::parse_response_head(&self.sides[si].inp.buf[pos..block_end]);
        let head = match parsed {
            Ok(h) => h,
            Err(e) => return self.error(si, e, pos + 1, first_ns),
        };
        let status = head.status;
        {
            let s = &mut self.sides[si];
            s.inp.pos = block_end;
            s.scan_abs = s.inp.abs(block_end);
        }
        if status < 200 && status != 101 {
            // 100 Continue, 103 Early Hints...: not the final response.
            self.stat(Stat::InformationalResponses, 1);
            self.go(si, Input::HeadNoBody);
            return Step::Progress;
        }
        let last_ns = self.sides[si].inp.ts_at(block_end - 1);
        let framing =
            if status == 101 || (method == MethodKind::Connect && (200..300).contains(&status)) {
                None
            } else if method == MethodKind::Head || status == 204 || status == 304 {
                Some(Ok(Framing::None))
            } else {
                Some(syntax::body_framing(&head.headers, true))
            };
        let msg = Message {
            headers: head.headers,
            status: Some(status),
            reason: Some(head.reason),
            version: head.version,
            first_ns,
            last_ns,
            complete: true,
            is_response: true,
            ..Default::default()
        };
        self.awaiting.pop_front();
        let framing = match framing {
            None => {
                let ex = self.ex(id);
                ex.response = Some(msg);
                ex.resp_done = true;
                ex.upgraded = true;
                self.upgraded = true;
                self.go(si, Input::HeadSwitch);
                self.switch_client();
                self.flush();
                return Step::Progress;
            }
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                // Unframeable response: the exchange cannot be completed honestly.
                let ex = self.ex(id);
                ex.response_lost = true;
                ex.error = Some(format!("unframeable response ({e})"));
                self.flush();
                return self.error(
                    si,
                    format!("cannot frame response body ({e})"),
                    block_end,
                    first_ns,
                );
            }
        };
        self.ex(id).response = Some(msg);
        self.sides[si].exch = Some(id);
        match framing {
            Framing::None => {
                self.go(si, Input::HeadNoBody);
                self.response_done(si, id);
            }
            Framing::Length(n) => {
                let s = &mut self.sides[si];
                s.body = Body::new(self.cfg.body_limit, false);
                s.remaining = n;
                self.go(si, Input::HeadLength);
            }
            Framing::Chunked => {
                self.sides[si].body = Body::new(self.cfg.body_limit, false);
                self.go(si, Input::HeadChunked);
            }
            Framing::Eof => {
                self.sides[si].body = Body::new(self.cfg.body_limit, false);
                self.go(si, Input::HeadEof);
            }
        }
        Step::Progress
    }

    /// Move up to `remaining` buffered body bytes (below `limit`) into the body; false
    /// when there was nothing to take.
    fn take_body(&mut self, si: usize, limit: usize) -> bool {
        let s = &mut self.sides[si];
        let pos = s.inp.pos;
        if limit <= pos {
            return false;
        }
        let n = ((limit - pos) as u64).min(s.remaining) as usize;
        s.body.add(&s.inp.buf[pos..pos + n]);
        s.inp.pos = pos + n;
        s.remaining -= n as u64;
        true
    }

    fn msg_mut(&mut self, si: usize) -> Option<&mut Message> {
        let id = self.sides[si].exch?;
        let ex = self.ex(id);
        if si == CLIENT {
            Some(&mut ex.request)
        } else {
            ex.response.as_mut()
        }
    }

    fn set_last_ns(&mut self, si: usize, ts: u64) {
        if let Some(m) = self.msg_mut(si) {
            m.last_ns = ts;
        }
    }

    fn body_length(&mut self, si: usize, limit: usize) -> Step {
        if !self.take_body(si, limit) {
            return Step::Need;
        }
        if self.sides[si].remaining == 0 {
            let ts = self.sides[si].inp.ts_before(self.sides[si].inp.pos);
            self.set_last_ns(si, ts);
            self.go(si, Input::BodyDone);
            self.message_done(si);
        }
        Step::Progress
    }

    fn chunk_size(&mut self, si: usize, limit: usize) -> Step {
        let s = &self.sides[si];
        let pos = s.inp.pos;
        let buf = &s.inp.buf[pos..limit];
        let Some(i) = memchr::memchr2(b'\r', b'\n', buf) else {
            if buf.len() > 4096 {
                return self.body_error(si, "chunk-size line too long");
            }
            return Step::Need;
        };
        if buf[i] == b'\n' {
            return self.body_error(si, "bare LF in chunk-size line");
        }
        match buf.get(i + 1) {
            None => return Step::Need,
            Some(b'\n') => {}
            Some(_) => return self.body_error(si, "bare CR in chunk-size line"),
        }
        let size = match syntax::parse_chunk_size(&buf[..i]) {
            Ok(n) => n,
            Err(e) => return self.body_error(si, e),
        };
        let s = &mut self.sides[si];
        s.inp.pos = pos + i + 2;
        if size > 0 {
            s.remaining = size;
            self.go(si, Input::ChunkSizeLine);
        } else {
            s.scan_abs = s.inp.abs(s.inp.pos);
            self.go(si, Input::LastChunk);
        }
        Step::Progress
    }

    fn chunk_data(&mut self, si: usize, limit: usize) -> Step {
        if !self.take_body(si, limit) {
            return Step::Need;
        }
        if self.sides[si].remaining == 0 {
            self.go(si, Input::ChunkDataDone);
        }
        Step::Progress
    }

    fn chunk_end(&mut self, si: usize, limit: usize) -> Step {
        let s = &self.sides[si];
        let pos = s.inp.pos;
        let buf = &s.inp.buf;
        if limit - pos < 2 {
            if limit > pos && buf[pos] != b'\r' {
                return self.body_error(si, "missing CRLF after chunk data");
            }
            return Step::Need;
        }
        if buf[pos] != b'\r' || buf[pos + 1] != b'\n' {
            return self.body_error(si, "missing CRLF after chunk data");
        }
        self.sides[si].inp.pos = pos + 2;
        self.go(si, Input::ChunkEndLine);
        Step::Progress
    }

    fn trailers(&mut self, si: usize, limit: usize) -> Step {
        // Walk whole lines from the first one not checked yet: a bare CR or LF is an error
        // as soon as it is seen, the empty line ends the section.
        let s = &self.sides[si];
        let pos = s.inp.pos;
        let buf = &s.inp.buf;
        let mut i = (s.scan_abs.saturating_sub(s.inp.base) as usize).clamp(pos, limit);
        let end = loop {
            let Some(off) = memchr::memchr2(b'\r', b'\n', &buf[i..limit]) else {
                if limit - pos > self.cfg.max_header_bytes {
                    return self.body_error(si, "trailer section too large");
                }
                let s = &mut self.sides[si];
                s.scan_abs = s.inp.abs(i);
                return Step::Need;
            };
            let at = i + off;
            if buf[at] == b'\n' {
                return self.body_error(si, "malformed trailer section");
            }
            if at + 1 >= limit {
                let s = &mut self.sides[si];
                s.scan_abs = s.inp.abs(i);
                return Step::Need;
            }
            if buf[at + 1] != b'\n' {
                return self.body_error(si, "malformed trailer section");
            }
            if at == i {
                break at + 2;
            }
            i = at + 2;
        };
        let trailers = if end - pos > 2 {
            match syntax::parse_trailers(&buf[pos..end - 4]) {
                Ok(t) => t,
                Err(e) => return self.body_error(si, e),
            }
        } else {
            Vec::new()
        };
        let s = &mut self.sides[si];
        s.inp.pos = end;
        s.scan_abs = s.inp.abs(end);
        let ts = s.inp.ts_at(end - 1);
        if let Some(m) = self.msg_mut(si) {
            m.trailers = trailers;
            m.last_ns = ts;
        }
        self.go(si, Input::TrailersDone);
        self.message_done(si);
        Step::Progress
    }

    fn body_eof(&mut self, si: usize, limit: usize) -> Step {
        let s = &mut self.sides[si];
        let pos = s.inp.pos;
        if limit <= pos {
            return Step::Need;
        }
        s.body.add(&s.inp.buf[pos..limit]);
        let ts = s.inp.ts_at(limit - 1);
        s.inp.pos = limit;
        self.set_last_ns(si, ts);
        Step::Progress
    }

    fn blocked(&mut self, si: usize, limit: usize) -> Step {
        let s = &mut self.sides[si];
        let held = limit - s.inp.pos;
        if held > self.cfg.max_held_bytes {
            s.inp.pos = limit;
            s.origin = Some(s.inp.abs(limit));
            self.stat(Stat::HeldBytesDropped, held as u64);
            self.go(si, Input::Overflow);
            return Step::Progress;
        }
        Step::Wait
    }

    fn switched(&mut self, si: usize, limit: usize) -> Step {
        let s = &mut self.sides[si];
        if limit <= s.inp.pos {
            return Step::Need;
        }
        let n = (limit - s.inp.pos) as u64;
        s.inp.pos = limit;
        let st = if si == CLIENT {
            Stat::UpgradedBytesClient
        } else {
            Stat::UpgradedBytesServer
        };
        self.stat(st, n);
        Step::Progress
    }

    fn discard(&mut self, si: usize, limit: usize) -> Step {
        let s = &mut self.sides[si];
        if limit <= s.inp.pos {
            return Step::Need;
        }
        let n = (limit - s.inp.pos) as u64;
        s.inp.pos = limit;
        self.stat(Stat::DiscardedBytes, n);
        Step::Progress
    }

    fn closed_state(&mut self, si: usize, limit: usize) -> Step {
        let s = &mut self.sides[si];
        if limit > s.inp.pos {
            let n = (limit - s.inp.pos) as u64;
            s.inp.pos = limit;
            self.stat(Stat::BytesAfterClose, n);
        }
        Step::Need
    }

    // -- message and exchange bookkeeping -------------------------------------------------

    fn take_body_into_msg(&mut self, si: usize, complete: bool) {
        let body = std::mem::take(&mut self.sides[si].body);
        if let Some(m) = self.msg_mut(si) {
            m.body_size = body.size;
            m.body_truncated = body.truncated;
            m.body = body.data;
            if !complete {
                m.complete = false;
            }
        }
    }

    fn message_done(&mut self, si: usize) {
        self.take_body_into_msg(si, true);
        let Some(id) = self.sides[si].exch else {
            return;
        };
        if si == CLIENT {
            self.request_done(si, id);
        } else {
            self.response_done(si, id);
        }
    }

    fn request_done(&mut self, si: usize, id: u64) {
        let ex = self.ex(id);
        ex.req_done = true;
        let stored = ex.request.body.len();
        let block = ex.wants_switch && !ex.resp_done;
        ex.weight += stored;
        self.queued_bytes += stored;
        self.sides[si].exch = None;
        if block {
            // Bytes after an Upgrade/CONNECT request wait for the answer.
            self.go(si, Input::Block);
        }
        self.flush();
    }

    fn response_done(&mut self, si: usize, id: u64) {
        let ex = self.ex(id);
        ex.resp_done = true;
        let wants_switch = ex.wants_switch;
        self.sides[si].exch = None;
        if self.sides[CLIENT].state == State::Blocked && wants_switch {
            self.go(CLIENT, Input::Resume);
        }
        self.flush();
    }

    fn switch_client(&mut self) {
        let st = self.sides[CLIENT].state;
        if matches!(st, State::Switched | State::Closed | State::Rejected) {
            return;
        }
        if self.sides[CLIENT].exch.is_some() {
            // A request that was still being read is cut here.
            self.finish_partial(CLIENT, "protocol switched");
        }
        self.go(CLIENT, Input::Switch);
    }

    /// End the message being read early (close, gap, switch): keep what was read.
    fn finish_partial(&mut self, si: usize, why: &str) {
        let Some(id) = self.sides[si].exch else {
            return;
        };
        self.take_body_into_msg(si, false);
        let inp = &self.sides[si].inp;
        let fallback = if inp.has_marks() {
            inp.ts_before(inp.pos)
        } else {
            0
        };
        if let Some(m) = self.msg_mut(si) {
            if m.last_ns == 0 {
                m.last_ns = m.first_ns.max(fallback);
            }
        }
        self.sides[si].exch = None;
        let ex = self.ex(id);
        if si == CLIENT {
            ex.req_done = true;
            let stored = ex.request.body.len();
            ex.weight += stored;
            self.queued_bytes += stored;
        } else {
            ex.resp_done = true;
            if ex.error.is_none() {
                ex.error = Some(why.to_string());
            }
        }
        self.flush();
    }

    fn flush(&mut self) {
        while let Some(ex) = self.order.front() {
            if !ex.req_done || !(ex.resp_done || ex.response_lost) {
                return;
            }
            if let Some(ex) = self.order.pop_front() {
                self.order_base += 1;
                self.queued_bytes = self.queued_bytes.saturating_sub(ex.weight);
                self.emit(ex);
            }
        }
    }

    fn emit(&mut self, ex: Exchange) {
        let req = ex.request;
        let resp = if ex.response_lost { None } else { ex.response };
        let end_ns = match &resp {
            Some(r) => r.last_ns,
            None => req.last_ns.max(ex.end_ns),
        };
        self.events
            .push_back(Event::Transaction(Box::new(Transaction {
                protocol: "http1",
                version: req.version,
                stream_id: None,
                start_ns: req.first_ns,
                end_ns,
                request: req,
                response: resp,
                headers_known: true,
                grpc: None,
                upgraded: ex.upgraded,
                error: ex.error,
            })));
    }

    // -- errors, gaps, close --------------------------------------------------------------

    /// Malformed input at a message start (server side) or past our own header limit:
    /// report, then hunt from `resume_at`.
    fn error(&mut self, si: usize, reason: String, resume_at: usize, ts: u64) -> Step {
        self.stat(Stat::ParseErrors, 1);
        let side = self.sides[si].side;
        self.error_event(side, reason, ts);
        let s = &mut self.sides[si];
        let resume_at = resume_at.min(s.inp.limit()).max(s.inp.pos);
        let n = (resume_at - s.inp.pos) as u64;
        s.inp.pos = resume_at;
        self.stat(Stat::DiscardedBytes, n);
        self.go(si, Input::Error);
        if si == SERVER {
            self.lost_sync(si, ts);
        }
        Step::Progress
    }

    /// A request the server cannot have accepted: a counted parse error, and nothing after
    /// it on the client stream is parsed — unless its start line was found by hunting
    /// after a loss, in which case it was a false start and hunting goes on.
    fn reject(&mut self, si: usize, reason: String, pos: usize, ts: u64) -> Step {
        if std::mem::take(&mut self.sides[si].resynced) {
            return self.error(si, reason, pos + 1, ts);
        }
        self.stat(Stat::ParseErrors, 1);
        self.stat(Stat::RejectedRequests, 1);
        self.error_event(Side::Client, reason, ts);
        self.go(si, Input::Reject);
        Step::Progress
    }

    /// Malformed body framing: the message ends here. The server side then hunts; a
    /// client stream is rejected (see `reject`).
    fn body_error(&mut self, si: usize, reason: &str) -> Step {
        let s = &self.sides[si];
        let ts = if s.inp.buf.is_empty() {
            s.inp.last_ts
        } else {
            s.inp.ts_at(s.inp.pos.min(s.inp.buf.len() - 1))
        };
        let side = s.side;
        self.stat(Stat::ParseErrors, 1);
        self.error_event(side, reason.to_string(), ts);
        self.finish_partial(si, &format!("malformed body: {reason}"));
        if si == CLIENT {
            self.stat(Stat::RejectedRequests, 1);
            self.go(si, Input::Reject);
            return Step::Progress;
        }
        let s = &mut self.sides[si];
        s.inp.pos = (s.inp.pos + 1).min(s.inp.limit());
        self.go(si, Input::Error);
        self.lost_sync(si, ts);
        Step::Progress
    }

    /// Is an earlier request still waiting for (the end of) its answer?
    fn outstanding(&self) -> bool {
        self.order
            .iter()
            .any(|ex| !ex.resp_done && !ex.response_lost)
    }

    /// Pairing can no longer be proven right: requests from now on are reported without
    /// responses and the server side is discarded (never a wrong pairing). With `drain`,
    /// the server side is still in sync and the requests already pending come before
    /// anything that was lost, so their answers are still paired first.
    fn lose_pairing(&mut self, why: &str, drain: bool, ts: u64) {
        if self.pairing_lost {
            return;
        }
        self.pairing_lost = true;
        self.stat(Stat::PairingLost, 1);
        self.error_event(Side::Server, format!("response pairing lost: {why}"), ts);
        let sst = self.sides[SERVER].state;
        if drain && !matches!(sst, State::Hunt | State::Ignore | State::Closed) {
            return; // the server side moves to IGNORE once the pending ones are answered
        }
        if self.sides[SERVER].exch.is_some() {
            self.finish_partial(SERVER, PAIRING_LOST);
        }
        for id in std::mem::take(&mut self.awaiting) {
            let ex = self.ex(id);
            ex.response_lost = true;
            ex.error = Some(PAIRING_LOST.to_string());
        }
        if !matches!(
            self.sides[SERVER].state,
            State::Switched | State::Closed | State::Ignore
        ) {
            self.go(SERVER, Input::PairingLost);
        }
        if self.sides[CLIENT].state == State::Blocked {
            self.go(CLIENT, Input::Resume);
        }
        self.flush();
    }

    /// The server side lost track of message boundaries at `ts`: any pending request sent
    /// by then may have had its answer in the lost bytes, so it cannot be paired.
    fn lost_sync(&mut self, si: usize, ts: u64) {
        if si == CLIENT {
            return;
        }
        if self.pipelined {
            self.lose_pairing("server bytes lost on a pipelining connection", false, ts);
            return;
        }
        let mut lost = false;
        while let Some(&id) = self.awaiting.front() {
            if self.ex_ref(id).request.first_ns > ts {
                break;
            }
            self.awaiting.pop_front();
            let ex = self.ex(id);
            ex.response_lost = true;
            ex.end_ns = ts;
            ex.error = Some("response not captured".to_string());
            self.stat(Stat::ResponsesLost, 1);
            lost = true;
        }
        if lost {
            if self.sides[CLIENT].state == State::Blocked {
                self.go(CLIENT, Input::Resume);
            }
            self.flush();
        }
    }

    /// Apply a capture gap at the current position (partial units already dropped).
    fn gap(&mut self, si: usize, nbytes: u64, ts: u64) {
        let st = self.sides[si].state;
        {
            let s = &mut self.sides[si];
            s.origin = Some(s.inp.abs(s.inp.pos));
        }
        match st {
            State::BodyLength | State::ChunkData => {
                let s = &mut self.sides[si];
                if nbytes <= s.remaining {
                    s.body.lost(nbytes);
                    s.remaining -= nbytes;
                    self.go(si, Input::GapKept);
                    if self.sides[si].remaining == 0 {
                        if st == State::BodyLength {
                            self.set_last_ns(si, ts);
                            self.go(si, Input::BodyDone);
                            self.message_done(si);
                        } else {
                            self.go(si, Input::ChunkDataDone);
                        }
                    }
                    return;
                }
                let rem = s.remaining;
                s.body.lost(rem);
                self.set_last_ns(si, ts);
                self.go(si, Input::GapLost);
                if st == State::BodyLength {
                    // The body ended inside the gap; whatever followed it is lost.
                    self.message_done(si);
                } else {
                    self.finish_partial(si, "response not fully captured");
                }
                self.lost_sync(si, ts);
            }
            State::BodyEof => {
                self.sides[si].body.lost(nbytes);
                self.set_last_ns(si, ts);
                self.go(si, Input::GapKept);
            }
            State::Switched => {
                let stat = if si == CLIENT {
                    Stat::UpgradedBytesClient
                } else {
                    Stat::UpgradedBytesServer
                };
                self.stat(stat, nbytes);
                self.go(si, Input::GapKept);
            }
            State::Ignore | State::Rejected => self.go(si, Input::GapKept),
            State::Closed => {}
            State::Hunt => {
                self.go(si, Input::GapKept);
                self.lost_sync(si, ts);
            }
            State::Blocked => {
                // Held bytes before the gap were dropped with it; the held request tail
                // is lost, so hunting starts after the gap.
                self.go(si, Input::Overflow);
                self.lost_sync(si, ts);
            }
            State::ChunkSize | State::ChunkEnd | State::Trailers | State::Idle => {
                if st != State::Idle {
                    self.sides[si].body.lost(nbytes);
                    self.set_last_ns(si, ts);
                    self.finish_partial(si, "response not fully captured");
                }
                // A partial head was already dropped, or chunk framing: boundaries are lost.
                self.go(si, Input::GapLost);
                self.lost_sync(si, ts);
            }
        }
    }

    fn close(&mut self, ts: u64) {
        let sst = self.sides[SERVER].state;
        if sst == State::BodyEof {
            self.message_done_eof();
        } else if self.sides[SERVER].exch.is_some() {
            self.finish_partial(SERVER, "connection closed during response");
        } else if sst == State::Idle
            && self.sides[SERVER].inp.pos < self.sides[SERVER].inp.limit()
            && !self.awaiting.is_empty()
        {
            self.stat(Stat::AbandonedResponses, 1);
        }
        if self.sides[CLIENT].exch.is_some() {
            self.finish_partial(CLIENT, "connection closed during request");
        } else if self.sides[CLIENT].state == State::Idle
            && self.sides[CLIENT].inp.pos < self.sides[CLIENT].inp.limit()
        {
            self.stat(Stat::AbandonedRequests, 1);
        }
        for id in std::mem::take(&mut self.awaiting) {
            let ex = self.ex(id);
            ex.response_lost = true;
            ex.end_ns = ts;
            if ex.error.is_none() {
                ex.error = Some("connection closed before response".to_string());
            }
        }
        for ex in self.order.iter_mut() {
            ex.req_done = true;
        }
        self.flush();
        for si in [CLIENT, SERVER] {
            self.go(si, Input::Close);
        }
    }

    /// The close ends a close-delimited response body: the response is complete.
    fn message_done_eof(&mut self) {
        if let Some(m) = self.msg_mut(SERVER) {
            if m.last_ns == 0 {
                m.last_ns = m.first_ns;
            }
        }
        self.message_done(SERVER);
    }
}
