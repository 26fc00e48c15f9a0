//! One direction's unconsumed bytes, and a message body: shared by the HTTP/1 and HTTP/2
//! parsers.
//!
//! `StreamInput` keeps what a parser needs to stay exact whatever the chunking: the kernel
//! timestamp of every chunk (a message's or frame's first and last byte get the timestamp
//! of the chunk that carried them) and the capture gaps in order (a gap is applied exactly
//! at the byte position where bytes went missing, after every byte before it was used).
//! So feeding the same bytes whole, byte by byte or at random split points gives the same
//! events. Positions handed out are indexes into `buf`; `base` is the stream offset of
//! `buf[0]`, so marks and gaps (kept as stream offsets) survive compaction. Memory is
//! bounded by the parsers' own limits on unconsumed bytes plus `MAX_MARKS` timestamps:
//! tiny writes piling up behind one incomplete message cannot grow the marks further.
//!
//! `Body` stores at most `limit` bytes of a body (and, for HTTP/2, no more than the
//! connection's budget allows) and counts the rest; after a capture gap it stops storing,
//! so a stored body never has a hole in it. It optionally walks the gRPC message framing.
use std::collections::VecDeque;

use crate::grpc::GrpcFramer;

/// Consumed bytes are dropped from the front once at least this many accumulated (or at
/// once when everything was consumed), so the buffer never holds much already-used data.
const COMPACT_AT: usize = 64 * 1024;
/// Chunk timestamps kept for the unconsumed bytes; past this, later chunks share the
/// timestamp of the last kept one (only when tiny chunks pile up behind an incomplete
/// message or frame), and no new write boundary is seen among them.
pub const MAX_MARKS: usize = 4096;

#[derive(Debug, Default)]
pub struct StreamInput {
    pub buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    pub base: u64,
    /// Next unconsumed index in `buf`.
    pub pos: usize,
    /// (stream offset of a chunk start, ts), ascending; the first covers `buf[0]`.
    marks: Vec<(u64, u64)>,
    /// (stream offset where the gap sits, lost byte count, ts).
    gaps: VecDeque<(u64, u64, u64)>,
    pub last_ts: u64,
    /// The byte just before `buf[0]` (stream offset `base - 1`) was a LF.
    prev_lf: bool,
}

impl StreamInput {
    pub fn append(&mut self, data: &[u8], ts: u64) {
        if self.marks.last().is_none_or(|m| m.1 != ts) && self.marks.len() < MAX_MARKS {
            self.marks.push((self.base + self.buf.len() as u64, ts));
        }
        self.buf.extend_from_slice(data);
        self.last_ts = ts;
    }

    pub fn add_gap(&mut self, nbytes: u64, ts: u64) {
        self.gaps
            .push_back((self.base + self.buf.len() as u64, nbytes, ts));
        self.last_ts = ts;
    }

    /// Index in `buf` up to which bytes are contiguous (the next gap, or the end).
    pub fn limit(&self) -> usize {
        match self.gaps.front() {
            Some(g) => (g.0.saturating_sub(self.base) as usize).min(self.buf.len()),
            None => self.buf.len(),
        }
    }

    pub fn has_gap(&self) -> bool {
        !self.gaps.is_empty()
    }

    pub fn gap_count(&self) -> usize {
        self.gaps.len()
    }

    /// Chunk timestamps held (at most `MAX_MARKS`).
    pub fn mark_count(&self) -> usize {
        self.marks.len()
    }

    /// Remove the next gap and move the read position to it; (nbytes, ts). Bytes before
    /// the gap that were not consumed (a partial unit) are dropped by the caller's choice.
    pub fn pop_gap(&mut self) -> (u64, u64) {
        match self.gaps.pop_front() {
            Some((off, n, ts)) => {
                self.pos = (off.saturating_sub(self.base) as usize).min(self.buf.len());
                (n, ts)
            }
            None => (0, self.last_ts),
        }
    }

    /// Forget every pending gap (the bytes around them are being dropped anyway).
    pub fn clear_gaps(&mut self) {
        self.gaps.clear();
    }

    /// Timestamp of the chunk that carried stream offset `off`.
    pub fn ts_at_offset(&self, off: u64) -> u64 {
        let marks = &self.marks;
        if marks.is_empty() {
            return self.last_ts;
        }
        // Last mark whose offset is <= off (the first mark covers everything before it).
        let i = marks.partition_point(|m| m.0 <= off);
        marks[i.saturating_sub(1)].1
    }

    /// Timestamp of the chunk that carried `buf[index]`.
    pub fn ts_at(&self, index: usize) -> u64 {
        self.ts_at_offset(self.base + index as u64)
    }

    /// Timestamp of the byte before `buf[index]` (or of `buf[0]`).
    pub fn ts_before(&self, index: usize) -> u64 {
        self.ts_at_offset((self.base + index as u64).saturating_sub(1))
    }

    pub fn has_marks(&self) -> bool {
        !self.marks.is_empty()
    }

    pub fn pending(&self) -> bool {
        self.pos < self.buf.len() || !self.gaps.is_empty()
    }

    /// Unconsumed bytes held, gaps aside.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos.min(self.buf.len())
    }

    /// Does a line start at `buf[index]`: stream start, or right after a LF.
    pub fn line_start(&self, index: usize) -> bool {
        if index > 0 {
            return self.buf.get(index - 1) == Some(&b'\n');
        }
        self.base == 0 || self.prev_lf
    }

    /// Does a chunk fed with a new timestamp (a new write, in capture terms) start at
    /// `buf[index]`?
    pub fn chunk_start(&self, index: usize) -> bool {
        let off = self.abs(index);
        self.marks.binary_search_by_key(&off, |m| m.0).is_ok()
    }

    /// The first index in `from..limit` where a chunk with a new timestamp starts.
    pub fn next_chunk_start(&self, from: usize, limit: usize) -> Option<usize> {
        let lo = self.abs(from);
        let i = self.marks.partition_point(|m| m.0 < lo);
        let m = self.marks.get(i)?;
        let idx = (m.0 - self.base) as usize;
        (idx < limit).then_some(idx)
    }

    pub fn abs(&self, index: usize) -> u64 {
        self.base + index as u64
    }

    pub fn compact(&mut self) {
        let pos = self.pos.min(self.buf.len());
        if pos == 0 {
            return;
        }
        if pos >= self.buf.len() {
            self.prev_lf = self.buf[pos - 1] == b'\n';
            self.base += self.buf.len() as u64;
            self.buf.clear();
            self.pos = 0;
        } else if pos >= COMPACT_AT {
            self.prev_lf = self.buf[pos - 1] == b'\n';
            self.buf.drain(..pos);
            self.base += pos as u64;
            self.pos = 0;
        } else {
            return;
        }
        if self.marks.len() > 1 {
            let base = self.base;
            let keep_from = self
                .marks
                .partition_point(|m| m.0 <= base)
                .saturating_sub(1);
            if keep_from > 0 {
                self.marks.drain(..keep_from);
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Body {
    pub data: Vec<u8>,
    pub size: u64,
    limit: usize,
    pub truncated: bool,
    pub grpc: Option<GrpcFramer>,
}

impl Body {
    pub fn new(limit: usize, grpc: bool) -> Body {
        Body {
            data: Vec::new(),
            size: 0,
            limit,
            truncated: false,
            grpc: grpc.then(GrpcFramer::default),
        }
    }

    /// Adds body bytes, stored up to the body's limit.
    pub fn add(&mut self, piece: &[u8]) {
        let mut used = 0;
        self.add_within(piece, &mut used, usize::MAX);
    }

    /// Adds body bytes; `used`/`budget` are the connection's stored-body bytes and its
    /// cap. Returns how many bytes the budget (not the body limit) kept from being stored.
    pub fn add_within(&mut self, piece: &[u8], used: &mut usize, budget: usize) -> u64 {
        let n = piece.len();
        if n == 0 {
            return 0;
        }
        self.size += n as u64;
        if let Some(g) = &mut self.grpc {
            g.feed(piece);
        }
        let room = self.limit.saturating_sub(self.data.len());
        let want = n.min(room);
        let take = want.min(budget.saturating_sub(*used));
        if take < n {
            self.truncated = true;
        }
        self.data.extend_from_slice(&piece[..take]);
        *used += take;
        (want - take) as u64
    }

    /// `n` body bytes were lost in a capture gap: count them, store nothing more.
    pub fn lost(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.size += n;
        self.truncated = true;
        self.limit = self.data.len();
        if let Some(g) = &mut self.grpc {
            g.lost(n);
        }
    }

    /// An unknown number of body bytes may have been lost: store nothing more.
    pub fn mark_lost(&mut self) {
        self.truncated = true;
        self.limit = self.data.len();
        if let Some(g) = &mut self.grpc {
            g.out_of_sync = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_follow_chunks_through_compaction() {
        let mut i = StreamInput::default();
        i.append(b"abc", 1);
        i.append(b"de", 2);
        assert_eq!(
            (i.ts_at(0), i.ts_at(2), i.ts_at(3), i.ts_at(4)),
            (1, 1, 2, 2)
        );
        i.pos = 5;
        i.compact();
        i.append(b"f", 3);
        assert_eq!(i.ts_at(0), 3);
        i.add_gap(10, 4);
        assert_eq!(i.limit(), 1);
        i.append(b"g", 5);
        assert_eq!(i.pop_gap(), (10, 4));
        assert_eq!(i.pos, 1);
        assert_eq!(i.ts_at(1), 5);
    }

    #[test]
    fn marks_are_capped_when_tiny_chunks_pile_up_unconsumed() {
        let mut i = StreamInput::default();
        for ts in 0..(3 * MAX_MARKS as u64) {
            i.append(b"x", ts);
        }
        assert_eq!(i.mark_count(), MAX_MARKS);
        // Bytes past the cap share the last kept timestamp; earlier ones keep their own.
        assert_eq!(i.ts_at(10), 10);
        assert_eq!(i.ts_at(3 * MAX_MARKS - 1), MAX_MARKS as u64 - 1);
        // Once consumed, the marks go with the bytes and new chunks are timed again.
        i.pos = i.buf.len();
        i.compact();
        i.append(b"y", 99_999);
        assert_eq!((i.mark_count(), i.ts_at(0)), (2, 99_999));
    }

    #[test]
    fn body_limit_budget_and_loss() {
        let mut used = 0;
        let mut b = Body::new(4, false);
        assert_eq!(b.add_within(b"abc", &mut used, 100), 0);
        assert_eq!(b.add_within(b"def", &mut used, 100), 0);
        assert_eq!(
            (b.data.as_slice(), b.size, b.truncated, used),
            (&b"abcd"[..], 6, true, 4)
        );
        let mut c = Body::new(10, false);
        assert_eq!(c.add_within(b"xyz", &mut used, 5), 2);
        assert_eq!(c.data, b"x");
        c.lost(3);
        assert_eq!(c.add_within(b"q", &mut used, 100), 0);
        assert_eq!((c.data.as_slice(), c.size), (&b"x"[..], 7));
        let mut d = Body::new(3, false);
        d.add(b"ab");
        d.add(b"cd");
        assert_eq!(
            (d.data.as_slice(), d.size, d.truncated),
            (&b"abc"[..], 4, true)
        );
    }
}
