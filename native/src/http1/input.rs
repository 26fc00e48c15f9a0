//! One direction's unconsumed bytes, and a bounded body store.
//!
//! `StreamInput` keeps what the parser needs to stay exact whatever the chunking: the
//! kernel timestamp of every chunk (a message's first and last byte get the timestamp of
//! the chunk that carried them) and the capture gaps in order (a gap is applied exactly at
//! the byte position where bytes went missing, after every byte before it was used). So
//! feeding the same bytes whole, byte by byte or at random split points gives the same
//! events. Positions handed out are indexes into `buf`; `base` is the stream offset of
//! `buf[0]`, so marks and gaps (kept as stream offsets) survive compaction.
use std::collections::VecDeque;

/// Consumed bytes are dropped from the front once at least this many accumulated (or at
/// once when everything was consumed), so the buffer never holds much already-used data.
const COMPACT_AT: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct StreamInput {
    pub buf: Vec<u8>,
    pub base: u64,
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
        if self.marks.last().is_none_or(|m| m.1 != ts) {
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

/// Stores up to `limit` body bytes and counts all of them; after a capture gap it stops
/// storing, so a stored body never has a hole in it.
#[derive(Debug, Default)]
pub struct BodyBuffer {
    pub data: Vec<u8>,
    pub size: u64,
    limit: usize,
    pub truncated: bool,
}

impl BodyBuffer {
    pub fn new(limit: usize) -> Self {
        BodyBuffer {
            data: Vec::new(),
            size: 0,
            limit,
            truncated: false,
        }
    }

    pub fn add(&mut self, data: &[u8]) {
        let n = data.len();
        if n == 0 {
            return;
        }
        self.size += n as u64;
        let room = self.limit.saturating_sub(self.data.len());
        if room >= n {
            self.data.extend_from_slice(data);
        } else {
            self.truncated = true;
            self.data.extend_from_slice(&data[..room]);
        }
    }

    /// `n` body bytes were lost in a capture gap: count them, store nothing more.
    pub fn lost(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        self.size += n;
        self.truncated = true;
        self.limit = self.data.len();
    }
}
