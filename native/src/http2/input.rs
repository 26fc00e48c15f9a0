//! One direction's unconsumed bytes, and a stream's body.
//!
//! `Inbox` keeps what the parser needs to stay exact whatever the chunking: the kernel
//! timestamp of every chunk (a frame's first and last byte get the timestamp of the chunk
//! that carried them) and the capture gaps in order (a gap is applied exactly at the byte
//! position where bytes went missing, after every byte before it was used). Feeding the
//! same bytes whole, byte by byte or at random split points therefore gives the same
//! events.
//!
//! `Body` keeps at most `limit` bytes of a body (and no more than the connection's budget
//! allows) and counts the rest; after a capture gap it stops storing, so a stored body
//! never has a hole in it. It optionally walks the gRPC message framing.
use std::collections::VecDeque;

use crate::grpc::GrpcFramer;

/// Consumed bytes are dropped from the front once this many accumulate (or all are used).
const COMPACT_AT: usize = 64 * 1024;
/// Chunk timestamps kept for the unconsumed bytes; past this, neighbouring chunks share
/// the older timestamp (only possible when tiny chunks pile up behind an incomplete frame).
const MAX_MARKS: usize = 4096;

#[derive(Default)]
pub struct Inbox {
    pub buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    pub base: u64,
    /// Next unconsumed index in `buf`.
    pub pos: usize,
    /// (stream offset of a chunk start, ts); ascending; the first covers `buf[0]`.
    marks: Vec<(u64, u64)>,
    /// (stream offset where the gap sits, lost byte count, ts).
    pub gaps: VecDeque<(u64, u64, u64)>,
    last_ts: u64,
}

impl Inbox {
    pub fn append(&mut self, data: &[u8], ts: u64) {
        if self.marks.last().map(|m| m.1) != Some(ts) && self.marks.len() < MAX_MARKS {
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
            Some(&(off, _, _)) => (off - self.base) as usize,
            None => self.buf.len(),
        }
    }

    /// Removes the next gap and moves the read position to it: (nbytes, ts). Bytes
    /// before the gap that were not consumed (a partial unit) are dropped.
    pub fn pop_gap(&mut self) -> (u64, u64) {
        match self.gaps.pop_front() {
            Some((off, n, ts)) => {
                self.pos = (off - self.base) as usize;
                (n, ts)
            }
            None => (0, self.last_ts),
        }
    }

    /// Timestamp of the chunk that carried `buf[index]`.
    pub fn ts_at(&self, index: usize) -> u64 {
        let off = self.base + index as u64;
        if self.marks.is_empty() {
            return self.last_ts;
        }
        let j = self.marks.partition_point(|m| m.0 <= off);
        self.marks[j.saturating_sub(1)].1
    }

    pub fn compact(&mut self) {
        let pos = self.pos;
        if pos == 0 {
            return;
        }
        if pos >= self.buf.len() {
            self.base += self.buf.len() as u64;
            self.buf.clear();
            self.pos = 0;
        } else if pos >= COMPACT_AT {
            self.buf.drain(..pos);
            self.base += pos as u64;
            self.pos = 0;
        } else {
            return;
        }
        if self.marks.len() > 1 {
            let base = self.base;
            let j = self.marks.partition_point(|m| m.0 <= base);
            if j > 1 {
                self.marks.drain(..j - 1);
            }
        }
    }
}

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

    /// Adds body bytes; `used`/`budget` are the connection's stored-body bytes and its
    /// cap. Returns how many bytes the budget (not the body limit) kept from being stored.
    pub fn add(&mut self, piece: &[u8], used: &mut usize, budget: usize) -> u64 {
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
        let mut i = Inbox::default();
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
    fn body_limit_budget_and_loss() {
        let mut used = 0;
        let mut b = Body::new(4, false);
        assert_eq!(b.add(b"abc", &mut used, 100), 0);
        assert_eq!(b.add(b"def", &mut used, 100), 0);
        assert_eq!(
            (b.data.as_slice(), b.size, b.truncated, used),
            (&b"abcd"[..], 6, true, 4)
        );
        let mut c = Body::new(10, false);
        assert_eq!(c.add(b"xyz", &mut used, 5), 2);
        assert_eq!(c.data, b"x");
        c.lost(3);
        assert_eq!(c.add(b"q", &mut used, 100), 0);
        assert_eq!((c.data.as_slice(), c.size), (&b"x"[..], 7));
    }
}
