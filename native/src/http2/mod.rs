//! HTTP/2 observer: both directions of one connection in, one transaction per stream out.
//!
//! How it works
//! ------------
//! Each direction is a frame reader over a `StreamInput` (`crate::input`): the client side first checks the
//! connection preface, then both read 9-byte frame headers. Non-DATA frames are validated
//! once complete (`frames::parse`); DATA payloads are streamed straight into the stream's
//! body (so a 16 MiB frame never sits in memory, and a capture gap inside a DATA frame
//! keeps frame sync: the frame length says where the next frame starts).
//!
//! Header blocks (HEADERS / PUSH_PROMISE plus any CONTINUATION frames — the block is only
//! decoded once END_HEADERS arrives, whatever the split) are decoded with one HPACK
//! `Decoder` per direction, because each end's encoder has its own dynamic table.
//! SETTINGS_HEADER_TABLE_SIZE sent by one end limits the *other* end's encoder, so it
//! bounds the size updates the decoder of the other direction accepts (never below the
//! table's current size: an encoder may use the old size until it emits the size update
//! the new setting requires). Our copy of a table is capped (`hpack::TABLE_CAP`) whatever
//! the peers announce: beyond it the direction decodes partially (`hpack_table_capped`).
//!
//! Streams follow the table in `table` (an observer's view of RFC 9113 §5.1 that also
//! knows whether response headers were seen). An input not in the table is a stream
//! error: a ParseError, the stream is dropped, and no transaction is emitted for it.
//! Frames for a stream that is not tracked (never opened in our view, already finished,
//! or begun before a mid-stream join) are counted in `orphan_frames`, not reported as
//! errors. A transaction is emitted when both ends have ended the stream, on RST_STREAM,
//! for streams refused by GOAWAY, and at close.
//!
//! Mid-stream join (`midstream`) or lost sync (capture gap across frame boundaries, frame
//! error): the direction hunts for a plausible frame boundary — a frame header whose type,
//! flags, length and stream id are consistent, followed by another such header — and its
//! HPACK state becomes unknown: the partial decoder decodes what the static table and
//! entries inserted since allow; such transactions carry `headers_known = false` unless
//! every field resolved. Frames for streams whose start was not seen are counted, not
//! guessed at.
//!
//! gRPC (content-type application/grpc*): service and method come from `:path`, the
//! status from `grpc-status` in the trailers (or a trailers-only response), and message
//! counts and sizes from the length-prefixed framing of each DATA stream (`grpc`).
//!
//! Bounds, each counted in `stats`: at most `MAX_STREAMS` tracked streams (the oldest is
//! finished early), header blocks up to `MAX_HEADER_BLOCK` bytes however many
//! CONTINUATION frames carry them, non-DATA frames buffered up to `MAX_BUFFERED_FRAME`
//! (larger ones are skipped), stored body bytes per connection up to a budget.
use std::collections::VecDeque;

use crate::grpc;
use crate::hpack::{self, Decoder, Field};
use crate::model::{Event, Message, ParseError, Parser, Side, Transaction};

pub mod frames;
pub mod py;
pub mod table;

use crate::input::{Body, StreamInput};
use frames::*;
use table::{Input, State};

/// Largest header block (HEADERS/PUSH_PROMISE + CONTINUATION) collected.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Non-DATA frames are buffered whole up to this size (larger ones are skipped).
pub const MAX_BUFFERED_FRAME: usize = 1 << 20;
/// Frames beyond the peer's SETTINGS_MAX_FRAME_SIZE (at least this) are frame errors.
const MIN_FRAME_LIMIT: usize = 1 << 20;
/// Streams tracked per connection.
pub const MAX_STREAMS: usize = 256;
/// Stored body bytes per connection: this, or twice the body limit if larger.
pub const MIN_BODY_BUDGET: usize = 16 << 20;

/// Counter names, in the order of `Stat`.
pub const STAT_NAMES: [&str; 20] = [
    "parse_errors",
    "stream_errors",
    "frame_errors",
    "hpack_errors",
    "hpack_resets",
    "orphan_frames",
    "abandoned_streams",
    "abandoned_blocks",
    "resyncs",
    "discarded_bytes",
    "tunnel_bytes",
    "gaps",
    "gap_bytes",
    "bytes_after_close",
    "streams_evicted",
    "internal_errors",
    "hpack_table_capped",
    "oversized_header_blocks",
    "oversized_frames",
    "body_bytes_over_budget",
];

#[derive(Clone, Copy)]
enum Stat {
    ParseErrors,
    StreamErrors,
    FrameErrors,
    HpackErrors,
    HpackResets,
    OrphanFrames,
    AbandonedStreams,
    AbandonedBlocks,
    Resyncs,
    DiscardedBytes,
    TunnelBytes,
    Gaps,
    GapBytes,
    BytesAfterClose,
    StreamsEvicted,
    #[allow(dead_code)]
    InternalErrors,
    HpackTableCapped,
    OversizedHeaderBlocks,
    OversizedFrames,
    BodyBytesOverBudget,
}

/// Direction reader states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    Preface,
    Frame,
    DataPadLen,
    Data,
    Skip,
    Hunt,
    Closed,
}

enum Step {
    Progress,
    Need,
}

/// A header block being collected across HEADERS/PUSH_PROMISE + CONTINUATION.
struct HeaderBlock {
    sid: u32,
    push: bool,
    data: Vec<u8>,
    end_stream: bool,
    promised: u32,
    first_ns: u64,
}

struct Stream {
    sid: u32,
    /// Identity (a stream id is never reused, but a dropped stream's frames may still
    /// be in flight in a reader).
    uid: u64,
    state: State,
    request: Option<Message>,
    response: Option<Message>,
    req_body: Option<Body>,
    resp_body: Option<Body>,
    req_known: bool,
    resp_known: bool,
    grpc: bool,
    connect: bool,
    emitted: bool,
    req_ended: bool,
    resp_ended: bool,
    tunnel_ends: u8,
}

impl Stream {
    fn new(sid: u32, uid: u64) -> Stream {
        Stream {
            sid,
            uid,
            state: State::Idle,
            request: None,
            response: None,
            req_body: None,
            resp_body: None,
            req_known: true,
            resp_known: true,
            grpc: false,
            connect: false,
            emitted: false,
            req_ended: false,
            resp_ended: false,
            tunnel_ends: 0,
        }
    }

    fn stored(&self) -> usize {
        self.req_body.as_ref().map_or(0, |b| b.data.len())
            + self.resp_body.as_ref().map_or(0, |b| b.data.len())
    }
}

struct Dir {
    side: Side,
    is_client: bool,
    inp: StreamInput,
    state: Reader,
    dec: Decoder,
    /// SETTINGS_HEADER_TABLE_SIZE the other end announced (limits this side's encoder).
    table_limit: Option<usize>,
    /// Largest non-DATA frame accepted.
    frame_limit: usize,
    block: Option<HeaderBlock>,
    /// A header block given up as too large: the rest of its CONTINUATION frames (stream
    /// id) are skipped quietly.
    discarding: Option<u32>,
    f_flags: u8,
    f_len: usize,
    f_first_ns: u64,
    /// The stream the current DATA frame belongs to: (sid, uid).
    f_stream: Option<(u32, u64)>,
    data_remaining: u64,
    pad_remaining: u64,
    skip_remaining: u64,
    skip_data_end: bool,
    preface_checked: bool,
}

impl Dir {
    fn new(side: Side, midstream: bool) -> Dir {
        Dir {
            side,
            is_client: side == Side::Client,
            inp: StreamInput::default(),
            state: match (midstream, side) {
                (true, _) => Reader::Hunt,
                (false, Side::Client) => Reader::Preface,
                (false, Side::Server) => Reader::Frame,
            },
            dec: Decoder::new(!midstream),
            table_limit: None,
            frame_limit: MIN_FRAME_LIMIT,
            block: None,
            discarding: None,
            f_flags: 0,
            f_len: 0,
            f_first_ns: 0,
            f_stream: None,
            data_remaining: 0,
            pad_remaining: 0,
            skip_remaining: 0,
            skip_data_end: false,
            preface_checked: false,
        }
    }
}

/// Sans-IO HTTP/2 observer for one connection. See the module docs.
pub struct Http2Parser {
    body_limit: usize,
    max_streams: usize,
    budget: usize,
    used: usize,
    dirs: [Dir; 2],
    /// Tracked streams, oldest first.
    streams: Vec<Stream>,
    next_uid: u64,
    max_client_sid: u32,
    max_push_sid: u32,
    events: VecDeque<Event>,
    closed: bool,
    stats: [u64; STAT_NAMES.len()],
}

/// A new http2 parser.
pub fn new_parser(body_limit: usize, midstream: bool) -> Option<Box<dyn Parser>> {
    Some(Box::new(Http2Parser::new(body_limit, midstream)))
}

fn request_message(fields: Vec<Field>, first_ns: u64, last_ns: u64) -> Message {
    let mut method = None;
    let mut path = None;
    let mut authority = None;
    let mut host = None;
    for (name, value) in &fields {
        if name.first() == Some(&b':') {
            match name.as_slice() {
                b":method" => method = Some(value.clone()),
                b":path" => path = Some(value.clone()),
                b":authority" => authority = Some(value.clone()),
                _ => {}
            }
        } else if name.as_slice() == b"host" && host.is_none() {
            host = Some(value.clone());
        }
    }
    let authority = match authority {
        Some(a) if !a.is_empty() => Some(a),
        _ => host,
    };
    Message {
        headers: fields,
        method,
        target: path,
        authority,
        version: "2",
        first_ns,
        last_ns,
        complete: true,
        ..Default::default()
    }
}

fn status_of(fields: &[Field]) -> Option<u16> {
    let (_, v) = fields.iter().find(|(n, _)| n.as_slice() == b":status")?;
    if v.len() == 3 && v.iter().all(u8::is_ascii_digit) {
        Some(v.iter().fold(0u16, |a, &c| a * 10 + (c - b'0') as u16))
    } else {
        None
    }
}

fn finish_body(msg: &mut Message, body: Option<Body>, ended: bool) {
    if let Some(b) = body {
        msg.body = b.data;
        msg.body_size = b.size;
        msg.body_truncated = b.truncated;
    }
    msg.complete = ended;
}

impl Http2Parser {
    pub fn new(body_limit: usize, midstream: bool) -> Http2Parser {
        Http2Parser::with_max_streams(body_limit, midstream, MAX_STREAMS)
    }

    pub fn with_max_streams(body_limit: usize, midstream: bool, max_streams: usize) -> Self {
        Http2Parser {
            body_limit,
            max_streams: max_streams.max(1),
            budget: MIN_BODY_BUDGET.max(body_limit.saturating_mul(2)),
            used: 0,
            dirs: [
                Dir::new(Side::Client, midstream),
                Dir::new(Side::Server, midstream),
            ],
            streams: Vec::new(),
            next_uid: 0,
            max_client_sid: 0,
            max_push_sid: 0,
            events: VecDeque::new(),
            closed: false,
            stats: [0; STAT_NAMES.len()],
        }
    }

    /// The state of tracked stream `sid` (None when not tracked), for the table walk.
    pub fn stream_state(&self, sid: u32) -> Option<&'static str> {
        self.find(sid).map(|k| self.streams[k].state.name())
    }

    fn bump(&mut self, s: Stat, n: u64) {
        self.stats[s as usize] += n;
    }

    fn find(&self, sid: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.sid == sid)
    }

    fn find_uid(&self, sid: u32, uid: u64) -> Option<usize> {
        self.streams
            .iter()
            .position(|s| s.sid == sid && s.uid == uid)
    }

    fn new_stream(&mut self, sid: u32) -> Stream {
        self.next_uid += 1;
        Stream::new(sid, self.next_uid)
    }

    fn remove(&mut self, k: usize) -> Stream {
        let st = self.streams.remove(k);
        self.used = self.used.saturating_sub(st.stored());
        st
    }

    // -- reader ------------------------------------------------------------------------

    fn pump(&mut self, d: usize) {
        loop {
            let limit = self.dirs[d].inp.limit();
            let step = match self.dirs[d].state {
                Reader::Preface => self.preface(d, limit),
                Reader::Frame => self.frame(d, limit),
                Reader::DataPadLen => self.data_padlen(d, limit),
                Reader::Data => self.data(d, limit),
                Reader::Skip => self.skip(d, limit),
                Reader::Hunt => self.hunt(d, limit),
                Reader::Closed => self.closed_state(d, limit),
            };
            match step {
                Step::Progress => continue,
                Step::Need if self.dirs[d].inp.has_gap() => {
                    self.gap(d, limit);
                    continue;
                }
                Step::Need => break,
            }
        }
        self.dirs[d].inp.compact();
    }

    fn preface(&mut self, d: usize, limit: usize) -> Step {
        let inp = &self.dirs[d].inp;
        let pos = inp.pos;
        let n = (limit - pos).min(PREFACE.len());
        if inp.buf[pos..pos + n] != PREFACE[..n] {
            let ts = inp.ts_at(pos);
            self.error(d, "missing HTTP/2 client preface".into(), ts, None);
            self.lose_sync(d);
            return Step::Progress;
        }
        if n < PREFACE.len() {
            return Step::Need;
        }
        self.dirs[d].inp.pos = pos + PREFACE.len();
        self.dirs[d].state = Reader::Frame;
        Step::Progress
    }

    fn skip_frame(&mut self, d: usize, pos: usize, length: usize) {
        let dir = &mut self.dirs[d];
        dir.inp.pos = pos + 9;
        dir.skip_remaining = length as u64;
        dir.skip_data_end = false;
        dir.state = if length > 0 {
            Reader::Skip
        } else {
            Reader::Frame
        };
    }

    fn frame(&mut self, d: usize, limit: usize) -> Step {
        let pos = self.dirs[d].inp.pos;
        if limit - pos < 9 {
            return Step::Need;
        }
        let h = head(&self.dirs[d].inp.buf, pos);
        let ts0 = self.dirs[d].inp.ts_at(pos);
        if let Some(sid) = self.dirs[d].discarding.take() {
            if h.ftype == CONTINUATION && h.sid == sid && h.length <= self.dirs[d].frame_limit {
                if h.flags & FLAG_END_HEADERS == 0 {
                    self.dirs[d].discarding = Some(sid);
                }
                self.bump(Stat::DiscardedBytes, 9 + h.length as u64);
                self.skip_frame(d, pos, h.length);
                return Step::Progress;
            }
        }
        if let Some(block) = &self.dirs[d].block {
            if h.ftype != CONTINUATION || h.sid != block.sid {
                let bsid = block.sid;
                self.error(
                    d,
                    format!(
                        "header block of stream {bsid} interrupted by frame type {}",
                        h.ftype
                    ),
                    ts0,
                    Some(bsid),
                );
                self.abandon_block(d);
            }
        }
        if h.ftype == DATA {
            if h.sid == 0 {
                self.frame_error(d, "DATA frame on stream 0".into(), ts0);
                return Step::Progress;
            }
            let dir = &mut self.dirs[d];
            dir.f_flags = h.flags;
            dir.f_len = h.length;
            dir.f_first_ns = ts0;
            dir.inp.pos = pos + 9;
            let f_stream = self.data_begin(d, h.sid, h.flags);
            let dir = &mut self.dirs[d];
            dir.f_stream = f_stream;
            if h.flags & FLAG_PADDED != 0 {
                dir.state = Reader::DataPadLen;
            } else {
                dir.data_remaining = h.length as u64;
                dir.pad_remaining = 0;
                dir.state = Reader::Data;
            }
            return Step::Progress;
        }
        if h.length > self.dirs[d].frame_limit {
            self.frame_error(
                d,
                format!("frame of {} bytes exceeds the limit", h.length),
                ts0,
            );
            return Step::Progress;
        }
        let header_frame = matches!(h.ftype, HEADERS | PUSH_PROMISE | CONTINUATION);
        if header_frame && h.sid != 0 {
            let so_far = self.dirs[d].block.as_ref().map_or(0, |b| b.data.len());
            if so_far + h.length > MAX_HEADER_BLOCK {
                // A CONTINUATION flood or a huge block: skip it and the rest of the
                // block, the stream is lost.
                self.header_too_large(d, h, ts0);
                if h.flags & FLAG_END_HEADERS == 0 {
                    self.dirs[d].discarding = Some(h.sid);
                }
                self.skip_frame(d, pos, h.length);
                return Step::Progress;
            }
        } else if h.ftype > ALTSVC
            || (h.length > MAX_BUFFERED_FRAME && matches!(h.ftype, SETTINGS | GOAWAY | ALTSVC))
        {
            // Extension frames carry nothing we report; oversized control frames are
            // not kept in memory.
            if h.ftype <= ALTSVC {
                self.bump(Stat::OversizedFrames, 1);
            }
            self.skip_frame(d, pos, h.length);
            return Step::Progress;
        }
        if h.length > MAX_BUFFERED_FRAME {
            // Only frames that cannot be valid are left (fixed-length types, stream 0).
            self.frame_error(
                d,
                format!("invalid frame type {}: {} bytes", h.ftype, h.length),
                ts0,
            );
            return Step::Progress;
        }
        let end = pos + 9 + h.length;
        if end > limit {
            return Step::Need;
        }
        let buf = std::mem::take(&mut self.dirs[d].inp.buf);
        let parsed = parse(h, &buf[pos + 9..end]);
        match parsed {
            Err(e) => {
                self.dirs[d].inp.buf = buf;
                self.frame_error(d, format!("invalid frame type {}: {e}", h.ftype), ts0);
            }
            Ok(body) => {
                let last_ns = self.dirs[d].inp.ts_at(end - 1);
                self.dirs[d].inp.pos = end;
                self.on_frame(d, h, body, &buf[pos + 9..end], ts0, last_ns);
                self.dirs[d].inp.buf = buf;
            }
        }
        Step::Progress
    }

    fn data_padlen(&mut self, d: usize, limit: usize) -> Step {
        let dir = &mut self.dirs[d];
        if limit <= dir.inp.pos {
            return Step::Need;
        }
        let pad = dir.inp.buf[dir.inp.pos] as usize;
        dir.inp.pos += 1;
        if pad >= dir.f_len {
            let ts = dir.inp.ts_at(dir.inp.pos - 1);
            self.frame_error(d, "DATA padding exceeds the frame".into(), ts);
            return Step::Progress;
        }
        dir.data_remaining = (dir.f_len - 1 - pad) as u64;
        dir.pad_remaining = pad as u64;
        dir.state = Reader::Data;
        Step::Progress
    }

    fn data(&mut self, d: usize, limit: usize) -> Step {
        let dir = &mut self.dirs[d];
        let mut pos = dir.inp.pos;
        let mut avail = (limit - pos) as u64;
        if dir.data_remaining > 0 {
            if avail == 0 {
                return Step::Need;
            }
            let n = dir.data_remaining.min(avail);
            if let Some((sid, uid)) = dir.f_stream {
                let piece = &dir.inp.buf[pos..pos + n as usize];
                if let Some(st) = self
                    .streams
                    .iter_mut()
                    .find(|s| s.sid == sid && s.uid == uid)
                {
                    if st.state == State::Tunnel {
                        self.stats[Stat::TunnelBytes as usize] += n;
                    } else {
                        let body = if dir.is_client {
                            &mut st.req_body
                        } else {
                            &mut st.resp_body
                        };
                        if let Some(b) = body {
                            let over = b.add_within(piece, &mut self.used, self.budget);
                            self.stats[Stat::BodyBytesOverBudget as usize] += over;
                        }
                    }
                }
            }
            pos += n as usize;
            avail -= n;
            dir.data_remaining -= n;
        }
        if dir.pad_remaining > 0 {
            let n = dir.pad_remaining.min(avail);
            pos += n as usize;
            dir.pad_remaining -= n;
        }
        dir.inp.pos = pos;
        if dir.data_remaining > 0 || dir.pad_remaining > 0 {
            return if pos >= limit {
                Step::Need
            } else {
                Step::Progress
            };
        }
        let last_ns = dir.inp.ts_at(pos.saturating_sub(1));
        dir.state = Reader::Frame;
        self.data_end(d, last_ns);
        Step::Progress
    }

    fn skip(&mut self, d: usize, limit: usize) -> Step {
        let dir = &mut self.dirs[d];
        let avail = (limit - dir.inp.pos) as u64;
        if avail == 0 {
            return Step::Need;
        }
        let n = avail.min(dir.skip_remaining);
        dir.inp.pos += n as usize;
        dir.skip_remaining -= n;
        if dir.skip_remaining == 0 {
            dir.state = Reader::Frame;
            if dir.skip_data_end {
                dir.skip_data_end = false;
                let ts = dir.inp.ts_at(dir.inp.pos - 1);
                self.data_end(d, ts);
            }
        }
        Step::Progress
    }

    fn hunt(&mut self, d: usize, limit: usize) -> Step {
        let dir = &mut self.dirs[d];
        let mut pos = dir.inp.pos;
        if pos >= limit {
            return Step::Need;
        }
        if dir.is_client && !dir.preface_checked {
            if dir.inp.base + pos as u64 == 0 {
                // The stream is seen from its first byte: it may start with the preface.
                let n = (limit - pos).min(PREFACE.len());
                if dir.inp.buf[pos..pos + n] == PREFACE[..n] {
                    if n < PREFACE.len() {
                        return Step::Need;
                    }
                    dir.inp.pos = pos + PREFACE.len();
                    dir.preface_checked = true;
                    dir.state = Reader::Frame;
                    return Step::Progress;
                }
            }
            dir.preface_checked = true;
        }
        let side = dir.side;
        let start = dir.inp.pos;
        loop {
            let buf = &dir.inp.buf[..limit];
            // A frame header could start where: length <= 16 KiB, type 0..9, stream id
            // below 2**24 (its first byte 0).
            let cand = if limit >= 6 && pos + 6 <= limit {
                buf[pos..limit - 5].iter().enumerate().position(|(k, &b)| {
                    let p = pos + k;
                    b == 0 && buf[p + 1] <= 0x40 && buf[p + 3] <= 9 && buf[p + 5] == 0
                })
            } else {
                None
            };
            let Some(k) = cand else {
                let keep = pos.max(limit.saturating_sub(8));
                dir.inp.pos = keep;
                self.stats[Stat::DiscardedBytes as usize] += (keep - start) as u64;
                return Step::Need;
            };
            let p = pos + k;
            match frame_chain_verdict(buf, p, limit, side) {
                None => {
                    dir.inp.pos = p;
                    self.stats[Stat::DiscardedBytes as usize] += (p - start) as u64;
                    return Step::Need;
                }
                Some(true) => {
                    dir.inp.pos = p;
                    dir.state = Reader::Frame;
                    self.stats[Stat::DiscardedBytes as usize] += (p - start) as u64;
                    self.stats[Stat::Resyncs as usize] += 1;
                    return Step::Progress;
                }
                Some(false) => pos = p + 1,
            }
        }
    }

    fn closed_state(&mut self, d: usize, limit: usize) -> Step {
        let inp = &mut self.dirs[d].inp;
        if limit > inp.pos {
            let n = (limit - inp.pos) as u64;
            inp.pos = limit;
            self.bump(Stat::BytesAfterClose, n);
        }
        Step::Need
    }

    // -- gaps and sync loss --------------------------------------------------------------

    fn gap(&mut self, d: usize, limit: usize) {
        let dir = &mut self.dirs[d];
        let partial = limit.saturating_sub(dir.inp.pos);
        let st = dir.state;
        // Bytes of the current (buffered, non-DATA) frame still expected after the partial.
        let mut frame_rest: Option<(u64, Head)> = None;
        if st == Reader::Frame && partial >= 9 {
            let h = head(&dir.inp.buf, dir.inp.pos);
            frame_rest = Some(((9 + h.length).saturating_sub(partial) as u64, h));
        }
        let (nbytes, ts) = dir.inp.pop_gap();
        match st {
            Reader::Data => {
                let rest = dir.data_remaining + dir.pad_remaining;
                let lost = nbytes.min(dir.data_remaining);
                if lost > 0 {
                    if let Some(fs) = dir.f_stream {
                        self.stream_lost(d, fs, lost);
                    }
                }
                let dir = &mut self.dirs[d];
                if nbytes <= rest {
                    dir.data_remaining -= lost;
                    dir.pad_remaining -= nbytes - lost;
                    if dir.data_remaining == 0 && dir.pad_remaining == 0 {
                        dir.state = Reader::Frame;
                        self.data_end(d, ts);
                    }
                    return;
                }
                // The DATA frame ended inside the gap: its flags still apply.
                dir.data_remaining = 0;
                dir.pad_remaining = 0;
                dir.state = Reader::Frame;
                self.data_end(d, ts);
            }
            Reader::Skip if nbytes <= dir.skip_remaining => {
                dir.skip_remaining -= nbytes;
                if dir.skip_remaining == 0 {
                    dir.state = Reader::Frame;
                    if dir.skip_data_end {
                        dir.skip_data_end = false;
                        self.data_end(d, ts);
                    }
                }
                return;
            }
            Reader::DataPadLen => {
                if nbytes < dir.f_len as u64 {
                    // Data/padding split unknown; count the loss as body bytes.
                    dir.skip_remaining = dir.f_len as u64 - nbytes;
                    dir.skip_data_end = true;
                    dir.state = Reader::Skip;
                    if let Some(fs) = dir.f_stream {
                        self.stream_lost(d, fs, nbytes);
                    }
                    return;
                }
                dir.state = Reader::Frame;
                self.data_end(d, ts);
            }
            Reader::Frame if matches!(frame_rest, Some((r, _)) if nbytes <= r) => {
                // A whole non-DATA frame was cut: skip the rest of it, frame sync holds.
                let Some((rest, h)) = frame_rest else {
                    return;
                };
                if matches!(h.ftype, HEADERS | PUSH_PROMISE | CONTINUATION) {
                    self.hpack_lost(d);
                    if self.dirs[d].block.is_some() {
                        self.abandon_block(d);
                    }
                    if let Some(k) = self.find(h.sid) {
                        if d == 0 {
                            self.streams[k].req_known = false;
                        } else {
                            self.streams[k].resp_known = false;
                        }
                    }
                }
                if rest > nbytes {
                    let dir = &mut self.dirs[d];
                    dir.skip_remaining = rest - nbytes;
                    dir.skip_data_end = false;
                    dir.state = Reader::Skip;
                }
                return;
            }
            Reader::Hunt => {
                self.hpack_lost(d);
                return;
            }
            Reader::Closed => return,
            _ => {}
        }
        self.lose_sync(d);
    }

    /// Frame boundaries are unknown from here: hunt, and forget HPACK state (blocks may
    /// have been lost). Streams this side was still sending may have lost frames.
    fn lose_sync(&mut self, d: usize) {
        let dir = &mut self.dirs[d];
        if dir.state == Reader::Closed {
            return;
        }
        dir.state = Reader::Hunt;
        dir.preface_checked = true;
        dir.f_stream = None;
        dir.discarding = None;
        if dir.block.is_some() {
            self.abandon_block(d);
        }
        self.hpack_lost(d);
        for st in self.streams.iter_mut() {
            if d == 0 {
                if !st.req_ended {
                    st.req_known = false;
                    if let Some(b) = &mut st.req_body {
                        b.mark_lost();
                    }
                }
            } else if !st.resp_ended {
                st.resp_known = false;
                if let Some(b) = &mut st.resp_body {
                    b.mark_lost();
                }
            }
        }
    }

    fn hpack_lost(&mut self, d: usize) {
        self.bump(Stat::HpackResets, 1);
        self.dirs[d].dec.forget();
    }

    /// A header block that will never complete: its stream cannot be reported right.
    fn abandon_block(&mut self, d: usize) {
        let Some(block) = self.dirs[d].block.take() else {
            return;
        };
        self.bump(Stat::AbandonedBlocks, 1);
        self.hpack_lost(d);
        if !block.push {
            if let Some(k) = self.find(block.sid) {
                self.drop_stream(k);
            }
        }
    }

    /// A header block beyond `MAX_HEADER_BLOCK`: reported, its stream given up, HPACK
    /// state lost (the block may have changed the table).
    fn header_too_large(&mut self, d: usize, h: Head, ts: u64) {
        self.bump(Stat::OversizedHeaderBlocks, 1);
        let (sid, push) = match &self.dirs[d].block {
            Some(b) => (b.sid, b.push),
            None => (h.sid, h.ftype == PUSH_PROMISE),
        };
        self.error(
            d,
            format!("header block of stream {sid} too large"),
            ts,
            Some(sid),
        );
        if self.dirs[d].block.is_some() {
            self.abandon_block(d);
            return;
        }
        self.hpack_lost(d);
        if push || h.ftype == CONTINUATION {
            return;
        }
        match self.find(sid) {
            Some(k) => self.drop_stream(k),
            None if d == 0 && sid & 1 == 1 && sid > self.max_client_sid => {
                self.max_client_sid = sid;
                self.bump(Stat::AbandonedStreams, 1);
            }
            None => {}
        }
    }

    // -- frames --------------------------------------------------------------------------

    fn on_frame(
        &mut self,
        d: usize,
        h: Head,
        body: Payload,
        payload: &[u8],
        first: u64,
        last: u64,
    ) {
        match body {
            Payload::Fragment(a, b) if h.ftype == HEADERS => {
                self.fragment(d, h.sid, false, &payload[a..b], h.flags, 0, first, last);
            }
            Payload::Fragment(a, b) => {
                // CONTINUATION
                let Some(block) = &mut self.dirs[d].block else {
                    self.error(
                        d,
                        format!("CONTINUATION without a header block on stream {}", h.sid),
                        first,
                        Some(h.sid),
                    );
                    return;
                };
                block.data.extend_from_slice(&payload[a..b]);
                if h.flags & FLAG_END_HEADERS != 0 {
                    if let Some(block) = self.dirs[d].block.take() {
                        self.header_block(
                            d,
                            block.sid,
                            block.push,
                            &block.data,
                            block.end_stream,
                            block.promised,
                            block.first_ns,
                            last,
                        );
                    }
                }
            }
            Payload::PushPromise {
                start,
                end,
                promised,
            } => {
                if d == 0 {
                    self.error(
                        d,
                        "PUSH_PROMISE sent by the client".into(),
                        first,
                        Some(h.sid),
                    );
                    self.hpack_lost(d);
                    return;
                }
                self.fragment(
                    d,
                    h.sid,
                    true,
                    &payload[start..end],
                    h.flags & !FLAG_END_STREAM,
                    promised,
                    first,
                    last,
                );
            }
            Payload::Rst(code) => {
                let Some(k) = self.find(h.sid) else {
                    return;
                };
                if self.advance(d, k, Input::Rst, first) {
                    let who = if d == 0 { "client" } else { "server" };
                    let reason = format!("stream reset by {who}: {}", error_name(code));
                    self.finalize(k, Some(reason), last);
                }
            }
            Payload::Settings => self.settings(d, payload),
            Payload::GoAway {
                last: last_sid,
                code,
            } => {
                if d == 1 {
                    let reason = format!("refused by GOAWAY ({})", error_name(code));
                    let mut refused: Vec<u32> = self
                        .streams
                        .iter()
                        .filter(|s| s.sid > last_sid && s.sid & 1 == 1)
                        .map(|s| s.sid)
                        .collect();
                    refused.sort_unstable();
                    for sid in refused {
                        if let Some(k) = self.find(sid) {
                            self.finalize(k, Some(reason.clone()), last);
                        }
                    }
                }
            }
            // PRIORITY, PING, WINDOW_UPDATE and extension frames carry nothing we report.
            Payload::Nothing => {}
        }
    }

    fn settings(&mut self, d: usize, payload: &[u8]) {
        let mut table_size = None;
        let mut frame_size = None;
        for e in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([e[0], e[1]]);
            let value = u32::from_be_bytes([e[2], e[3], e[4], e[5]]) as usize;
            match id {
                1 => table_size = Some(value),
                5 => frame_size = Some(value),
                _ => {}
            }
        }
        let other = &mut self.dirs[1 - d];
        if let Some(v) = table_size {
            // HEADER_TABLE_SIZE: limits the other end's encoder.
            other.table_limit = Some(v);
            let current = other.dec.table_size();
            other.dec.set_max_allowed(v.max(current));
        }
        if let Some(v) = frame_size {
            // MAX_FRAME_SIZE: the other end may send frames this large.
            other.frame_limit = other.frame_limit.max(v.min((1 << 24) - 1));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fragment(
        &mut self,
        d: usize,
        sid: u32,
        push: bool,
        data: &[u8],
        flags: u8,
        promised: u32,
        first_ns: u64,
        last_ns: u64,
    ) {
        let end_stream = flags & FLAG_END_STREAM != 0;
        if flags & FLAG_END_HEADERS != 0 {
            self.header_block(d, sid, push, data, end_stream, promised, first_ns, last_ns);
        } else {
            self.dirs[d].block = Some(HeaderBlock {
                sid,
                push,
                data: data.to_vec(),
                end_stream,
                promised,
                first_ns,
            });
        }
    }

    /// Decode with this direction's HPACK state: (fields or None, all fields known).
    fn decode(&mut self, d: usize, block: &[u8], sid: u32, ts: u64) -> (Option<Vec<Field>>, bool) {
        let exact = self.dirs[d].dec.is_exact();
        match self.dirs[d].dec.decode(block) {
            Err(e) => {
                self.bump(Stat::HpackErrors, 1);
                if exact {
                    self.error(
                        d,
                        format!("HPACK decoding failed on stream {sid}: {e}"),
                        ts,
                        Some(sid),
                    );
                    self.hpack_lost(d);
                }
                // Else expected now and then when decoding without full state: not a
                // peer's fault, not reported.
                (None, false)
            }
            Ok(r) => {
                if r.capped {
                    self.bump(Stat::HpackTableCapped, 1);
                }
                let dir = &mut self.dirs[d];
                if dir.dec.is_exact() {
                    let limit = dir.table_limit.unwrap_or(hpack::DEFAULT_TABLE_SIZE);
                    let current = dir.dec.table_size();
                    dir.dec.set_max_allowed(limit.max(current));
                }
                (Some(r.fields), r.complete)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn header_block(
        &mut self,
        d: usize,
        sid: u32,
        push: bool,
        block: &[u8],
        end_stream: bool,
        promised: u32,
        first_ns: u64,
        last_ns: u64,
    ) {
        let (fields, known) = self.decode(d, block, sid, first_ns);
        if push {
            let Some(fields) = fields else {
                return;
            };
            if promised == 0 || promised & 1 == 1 {
                self.error(
                    d,
                    format!("invalid PUSH_PROMISE of stream {promised}"),
                    first_ns,
                    Some(sid),
                );
                return;
            }
            let assoc_known = self.find(sid).map(|k| self.streams[k].req_known);
            if let Some(k) = self.find(promised) {
                // An id already in use: not a valid push in this state.
                self.advance(d, k, Input::Push, first_ns);
                return;
            }
            if promised <= self.max_push_sid {
                self.bump(Stat::OrphanFrames, 1); // an id already used and finished
                return;
            }
            self.max_push_sid = promised;
            let mut st = self.new_stream(promised);
            st.state = State::ReqDone;
            let req = request_message(fields, first_ns, last_ns);
            st.connect = req.method.as_deref() == Some(b"CONNECT");
            st.request = Some(req);
            st.req_known = known && assoc_known.unwrap_or(true);
            st.req_ended = true;
            st.req_body = Some(Body::new(self.body_limit, false));
            self.track(st);
            return;
        }
        let found = self.find(sid);
        if d == 0 {
            let Some(k) = found else {
                if sid <= self.max_client_sid || sid & 1 == 0 {
                    self.bump(Stat::OrphanFrames, 1);
                    return;
                }
                self.max_client_sid = sid;
                let Some(fields) = fields else {
                    self.bump(Stat::AbandonedStreams, 1);
                    return;
                };
                let mut st = self.new_stream(sid);
                st.state = if end_stream {
                    State::ReqDone
                } else {
                    State::Open
                };
                let req = request_message(fields, first_ns, last_ns);
                st.grpc = grpc::is_grpc(req.header(b"content-type"));
                st.connect = req.method.as_deref() == Some(b"CONNECT");
                st.request = Some(req);
                st.req_known = known;
                st.req_body = Some(Body::new(self.body_limit, st.grpc));
                st.req_ended = end_stream;
                self.track(st);
                return;
            };
            let Some(fields) = fields else {
                self.drop_stream(k);
                return;
            };
            let input = if end_stream {
                Input::CHeadersEs
            } else {
                Input::CHeaders
            };
            if !self.advance(d, k, input, first_ns) {
                return;
            }
            let st = &mut self.streams[k];
            if let Some(req) = &mut st.request {
                req.trailers = fields;
                req.last_ns = last_ns;
            }
            st.req_known = st.req_known && known;
            st.req_ended = true;
            self.maybe_closed(k, last_ns);
            return;
        }
        // server
        let Some(k) = found else {
            self.bump(Stat::OrphanFrames, 1);
            return;
        };
        let Some(fields) = fields else {
            self.drop_stream(k);
            return;
        };
        if self.streams[k].response.is_none() {
            let status = status_of(&fields);
            let input = match status {
                Some(s) if (100..200).contains(&s) => {
                    if end_stream {
                        self.error(
                            d,
                            format!("informational response ends stream {sid}"),
                            first_ns,
                            Some(sid),
                        );
                        self.drop_stream(k);
                        return;
                    }
                    Input::SInfo
                }
                Some(s) if self.streams[k].connect && (200..300).contains(&s) && !end_stream => {
                    Input::STunnel
                }
                _ if end_stream => Input::SHeadersEs,
                _ => Input::SHeaders,
            };
            if !self.advance(d, k, input, first_ns) {
                return;
            }
            if input == Input::SInfo {
                return;
            }
            let st = &mut self.streams[k];
            st.response = Some(Message {
                headers: fields,
                status,
                version: "2",
                first_ns,
                last_ns,
                complete: true,
                is_response: true,
                ..Default::default()
            });
            st.resp_known = known;
            st.resp_body = Some(Body::new(self.body_limit, st.grpc));
            st.resp_ended = end_stream;
            if input == Input::STunnel {
                // The stream stays tracked (its DATA is counted as tunnelled bytes); its
                // bodies end here.
                self.used = self.used.saturating_sub(st.stored());
                let tx = build_tx(st, None, last_ns, true);
                self.events.push_back(Event::Transaction(Box::new(tx)));
                return;
            }
            self.maybe_closed(k, last_ns);
            return;
        }
        let input = if end_stream {
            Input::SHeadersEs
        } else {
            Input::SHeaders
        };
        if !self.advance(d, k, input, first_ns) {
            return;
        }
        let st = &mut self.streams[k];
        if let Some(resp) = &mut st.response {
            resp.trailers = fields;
            resp.last_ns = last_ns;
        }
        st.resp_known = st.resp_known && known;
        st.resp_ended = true;
        self.maybe_closed(k, last_ns);
    }

    // -- DATA ----------------------------------------------------------------------------

    fn data_begin(&mut self, d: usize, sid: u32, flags: u8) -> Option<(u32, u64)> {
        let Some(k) = self.find(sid) else {
            self.bump(Stat::OrphanFrames, 1);
            return None;
        };
        let input = Input::data(d == 0, flags & FLAG_END_STREAM != 0);
        if table::next(self.streams[k].state, input).is_none() {
            let ts = self.dirs[d].f_first_ns;
            self.stream_error(d, k, input, ts);
            return None;
        }
        Some((sid, self.streams[k].uid))
    }

    fn stream_lost(&mut self, d: usize, (sid, uid): (u32, u64), n: u64) {
        let Some(k) = self.find_uid(sid, uid) else {
            return;
        };
        let st = &mut self.streams[k];
        if st.state == State::Tunnel {
            self.bump(Stat::TunnelBytes, n);
            return;
        }
        let body = if d == 0 {
            &mut st.req_body
        } else {
            &mut st.resp_body
        };
        if let Some(b) = body {
            b.lost(n);
        }
    }

    fn data_end(&mut self, d: usize, last_ns: u64) {
        let Some((sid, uid)) = self.dirs[d].f_stream.take() else {
            return;
        };
        let Some(k) = self.find_uid(sid, uid) else {
            return;
        };
        let end = self.dirs[d].f_flags & FLAG_END_STREAM != 0;
        let input = Input::data(d == 0, end);
        let ts = self.dirs[d].f_first_ns;
        if !self.advance(d, k, input, ts) {
            return;
        }
        let st = &mut self.streams[k];
        if st.state == State::Tunnel {
            if end {
                st.tunnel_ends |= 1 << d;
                if st.tunnel_ends == 3 {
                    self.remove(k);
                }
            }
            return;
        }
        let msg = if d == 0 {
            &mut st.request
        } else {
            &mut st.response
        };
        if let Some(m) = msg {
            m.last_ns = last_ns;
        }
        if end {
            if d == 0 {
                st.req_ended = true;
            } else {
                st.resp_ended = true;
            }
            self.maybe_closed(k, last_ns);
        }
    }

    // -- stream lifecycle ------------------------------------------------------------------

    fn advance(&mut self, d: usize, k: usize, input: Input, ts: u64) -> bool {
        match table::next(self.streams[k].state, input) {
            Some(n) => {
                self.streams[k].state = n;
                true
            }
            None => {
                self.stream_error(d, k, input, ts);
                false
            }
        }
    }

    fn stream_error(&mut self, d: usize, k: usize, input: Input, ts: u64) {
        self.bump(Stat::StreamErrors, 1);
        let st = &self.streams[k];
        let (sid, state) = (st.sid, st.state);
        self.error(
            d,
            format!("stream {sid}: {} in state {}", input.name(), state.name()),
            ts,
            Some(sid),
        );
        self.drop_stream(k);
    }

    /// Start tracking a stream; past `max_streams` the oldest is given up (counted).
    fn track(&mut self, st: Stream) {
        if self.streams.len() >= self.max_streams {
            self.bump(Stat::StreamsEvicted, 1);
            let ts = self.streams[0].request.as_ref().map_or(0, |r| r.last_ns);
            self.finalize(0, Some("too many open streams".into()), ts);
        }
        self.streams.push(st);
    }

    /// Forget a stream without a transaction: what we saw of it cannot be trusted.
    fn drop_stream(&mut self, k: usize) {
        let st = self.remove(k);
        if !st.emitted {
            self.bump(Stat::AbandonedStreams, 1);
        }
    }

    fn maybe_closed(&mut self, k: usize, ts: u64) {
        if self.streams[k].state == State::Closed {
            self.finalize(k, None, ts);
        }
    }

    fn finalize(&mut self, k: usize, error: Option<String>, ts: u64) {
        let mut st = self.remove(k);
        if st.emitted || st.request.is_none() {
            return;
        }
        let tx = build_tx(&mut st, error, ts, false);
        self.events.push_back(Event::Transaction(Box::new(tx)));
    }

    // -- errors ----------------------------------------------------------------------------

    fn error(&mut self, d: usize, reason: String, ts: u64, sid: Option<u32>) {
        self.bump(Stat::ParseErrors, 1);
        self.events.push_back(Event::Error(ParseError {
            side: self.dirs[d].side,
            reason,
            ts_ns: ts,
            stream_id: sid,
        }));
    }

    fn frame_error(&mut self, d: usize, reason: String, ts: u64) {
        self.bump(Stat::FrameErrors, 1);
        self.error(d, reason, ts, None);
        let inp = &mut self.dirs[d].inp;
        inp.pos = (inp.pos + 1).min(inp.limit());
        self.lose_sync(d);
    }
}

/// The transaction of a stream. A stream that stays tracked (a CONNECT tunnel) keeps its
/// messages (cloned); otherwise they are moved out.
fn build_tx(st: &mut Stream, error: Option<String>, ts: u64, upgraded: bool) -> Transaction {
    st.emitted = true;
    let (mut req, mut resp) = if upgraded {
        (st.request.clone().unwrap_or_default(), st.response.clone())
    } else {
        (st.request.take().unwrap_or_default(), st.response.take())
    };
    let req_body = st.req_body.take();
    let resp_body = st.resp_body.take();
    let req_f = req_body
        .as_ref()
        .and_then(|b| b.grpc.clone())
        .unwrap_or_default();
    let resp_f = resp_body
        .as_ref()
        .and_then(|b| b.grpc.clone())
        .unwrap_or_default();
    finish_body(&mut req, req_body, st.req_ended || upgraded);
    let end_ns = match &mut resp {
        Some(r) => {
            finish_body(r, resp_body, st.resp_ended || upgraded);
            r.last_ns
        }
        None => ts.max(req.last_ns),
    };
    let grpc = st
        .grpc
        .then(|| grpc::grpc_info(&req, resp.as_ref(), &req_f, &resp_f));
    Transaction {
        protocol: "http2",
        version: "2",
        stream_id: Some(st.sid),
        start_ns: req.first_ns,
        end_ns,
        headers_known: st.req_known && (resp.is_none() || st.resp_known),
        request: req,
        response: resp,
        grpc,
        upgraded,
        error,
    }
}

impl Parser for Http2Parser {
    fn feed(&mut self, side: Side, data: &[u8], ts_ns: u64) {
        if data.is_empty() {
            return;
        }
        if self.closed {
            self.bump(Stat::BytesAfterClose, data.len() as u64);
            return;
        }
        let d = side as usize;
        self.dirs[d].inp.append(data, ts_ns);
        self.pump(d);
    }

    fn feed_gap(&mut self, side: Side, len: u64, ts_ns: u64) {
        if len == 0 || self.closed {
            return;
        }
        self.bump(Stat::Gaps, 1);
        self.bump(Stat::GapBytes, len);
        let d = side as usize;
        self.dirs[d].inp.add_gap(len, ts_ns);
        self.pump(d);
    }

    fn close(&mut self, ts_ns: u64) {
        if self.closed {
            return;
        }
        for d in 0..2 {
            if self.dirs[d].block.take().is_some() {
                self.bump(Stat::AbandonedBlocks, 1);
            }
            self.dirs[d].state = Reader::Closed;
        }
        let mut sids: Vec<u32> = self.streams.iter().map(|s| s.sid).collect();
        sids.sort_unstable();
        for sid in sids {
            if let Some(k) = self.find(sid) {
                self.finalize(k, Some("connection closed".into()), ts_ns);
            }
        }
        self.closed = true;
    }

    fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn stats(&self) -> Vec<(&'static str, u64)> {
        STAT_NAMES.iter().copied().zip(self.stats).collect()
    }

    fn stream_state(&self, stream_id: u32) -> Option<&'static str> {
        Http2Parser::stream_state(self, stream_id)
    }
}

#[cfg(test)]
mod tests;
