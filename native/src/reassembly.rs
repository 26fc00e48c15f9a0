//! Per-direction stream reassembly by byte offset.
//!
//! The kernel stamps every data event with the stream offset of its first byte, so order
//! is never guessed: bytes at the expected offset are delivered at once (borrowed, no
//! copy), bytes ahead of it wait (bounded: `max_pending`), bytes behind it are duplicates
//! and trimmed. Known losses arrive as explicit gap events; holes nobody explained (a
//! ring-buffer record the kernel could not even report) become gaps too when the stream
//! skips over them, and are counted as `holes` so that loss is never silent. The consumer
//! sees a strictly ordered sequence of `Piece::Data` and `Piece::Gap`.
use std::borrow::Cow;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Piece<'a> {
    Data(Cow<'a, [u8]>),
    Gap(u64),
}

impl Piece<'_> {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Data(d) => d.len() as u64,
            Piece::Gap(n) => *n,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
enum Held {
    Data(Vec<u8>),
    Gap(u64),
}

/// One direction (and source) of one connection.
#[derive(Debug, Clone)]
pub struct Stream {
    pub next: u64,
    pending: BTreeMap<u64, Held>,
    pub pending_bytes: u64,
    pub max_pending: u64,
    pub delivered: u64,
    pub gap_bytes: u64,
    /// Gap bytes that no kernel gap event announced (holes skipped over).
    pub hole_bytes: u64,
    pub duplicate_bytes: u64,
    /// Kernel time since which bytes have waited for a hole (0: none waiting). The
    /// connection table gives a hole up once newer records have been handled for a while
    /// (`conn::HOLE_WAIT_NS`), instead of holding up to `max_pending` bytes behind it.
    pub waiting_since: u64,
}

pub const DEFAULT_MAX_PENDING: u64 = 8 << 20;

impl Default for Stream {
    fn default() -> Self {
        Stream::new(DEFAULT_MAX_PENDING)
    }
}

impl Stream {
    pub fn new(max_pending: u64) -> Stream {
        Stream {
            next: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            max_pending,
            delivered: 0,
            gap_bytes: 0,
            hole_bytes: 0,
            duplicate_bytes: 0,
            waiting_since: 0,
        }
    }

    /// One past the last byte known: delivered or waiting.
    pub fn end(&self) -> u64 {
        let last = self.pending.iter().next_back().map_or(0, |(&o, h)| {
            o + match h {
                Held::Data(d) => d.len() as u64,
                Held::Gap(n) => *n,
            }
        });
        self.next.max(last)
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes at `offset`; deliverable pieces are appended to `out`.
    pub fn add<'a>(&mut self, offset: u64, data: &'a [u8], out: &mut Vec<Piece<'a>>) {
        let end = offset + data.len() as u64;
        if end <= self.next {
            self.duplicate_bytes += data.len() as u64;
            return;
        }
        let (offset, data) = if offset < self.next {
            let skip = (self.next - offset) as usize;
            self.duplicate_bytes += skip as u64;
            (self.next, &data[skip..])
        } else {
            (offset, data)
        };
        if offset == self.next {
            out.push(Piece::Data(Cow::Borrowed(data)));
            self.delivered += data.len() as u64;
            self.next = end;
            if !self.pending.is_empty() {
                self.drain(out);
            }
            return;
        }
        if let Some(Held::Data(old)) = self.pending.get(&offset) {
            // A retransmitted record at the same offset: keep the longer one.
            if old.len() >= data.len() {
                self.duplicate_bytes += data.len() as u64;
                return;
            }
            self.pending_bytes -= old.len() as u64;
        }
        self.pending.insert(offset, Held::Data(data.to_vec()));
        self.pending_bytes += data.len() as u64;
        if self.pending_bytes > self.max_pending {
            self.skip_to_pending(out);
        }
    }

    /// `len` bytes at `offset` are known to be missing.
    pub fn add_gap(&mut self, offset: u64, len: u64, out: &mut Vec<Piece<'_>>) {
        if len == 0 || offset + len <= self.next {
            return;
        }
        let (offset, len) = if offset < self.next {
            (self.next, len - (self.next - offset))
        } else {
            (offset, len)
        };
        if offset == self.next {
            self.deliver_gap(len, out);
            if !self.pending.is_empty() {
                self.drain(out);
            }
            return;
        }
        self.pending.entry(offset).or_insert(Held::Gap(len));
    }

    /// End of stream: deliver everything pending, with gaps for the holes.
    pub fn flush(&mut self, out: &mut Vec<Piece<'_>>) {
        while !self.pending.is_empty() {
            self.skip_to_pending(out);
        }
    }

    /// Give up waiting for the hole before the first pending piece (memory pressure).
    pub fn shed(&mut self, out: &mut Vec<Piece<'_>>) {
        if !self.pending.is_empty() {
            self.skip_to_pending(out);
        }
    }

    fn deliver_gap(&mut self, len: u64, out: &mut Vec<Piece<'_>>) {
        out.push(Piece::Gap(len));
        self.gap_bytes += len;
        self.next += len;
    }

    fn drain(&mut self, out: &mut Vec<Piece<'_>>) {
        loop {
            let Some((&first, _)) = self.pending.iter().next() else {
                return;
            };
            if first > self.next {
                return;
            }
            let item = self.pending.remove(&first).expect("first key exists");
            match item {
                Held::Data(d) => {
                    self.pending_bytes -= d.len() as u64;
                    let end = first + d.len() as u64;
                    if end <= self.next {
                        self.duplicate_bytes += d.len() as u64;
                        continue;
                    }
                    let skip = (self.next - first) as usize;
                    self.duplicate_bytes += skip as u64;
                    let d = if skip > 0 { d[skip..].to_vec() } else { d };
                    self.delivered += d.len() as u64;
                    self.next = end;
                    out.push(Piece::Data(Cow::Owned(d)));
                }
                Held::Gap(n) => {
                    let end = first + n;
                    if end > self.next {
                        let n = end - self.next;
                        self.deliver_gap(n, out);
                    }
                }
            }
        }
    }

    fn skip_to_pending(&mut self, out: &mut Vec<Piece<'_>>) {
        let Some((&first, _)) = self.pending.iter().next() else {
            return;
        };
        if first > self.next {
            let hole = first - self.next;
            self.hole_bytes += hole;
            self.deliver_gap(hole, out);
        }
        self.drain(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(out: &[Piece<'_>]) -> Vec<Result<Vec<u8>, u64>> {
        out.iter()
            .map(|p| match p {
                Piece::Data(d) => Ok(d.to_vec()),
                Piece::Gap(n) => Err(*n),
            })
            .collect()
    }

    #[test]
    fn in_order_out_of_order_duplicates_and_holes() {
        let mut s = Stream::default();
        let mut out = Vec::new();
        s.add(0, b"abc", &mut out);
        s.add(6, b"ghi", &mut out);
        assert_eq!(flat(&out), vec![Ok(b"abc".to_vec())]);
        s.add(2, b"cdef", &mut out);
        assert_eq!(
            flat(&out),
            vec![
                Ok(b"abc".to_vec()),
                Ok(b"def".to_vec()),
                Ok(b"ghi".to_vec())
            ]
        );
        assert_eq!(s.duplicate_bytes, 1);
        let mut out = Vec::new();
        s.add(20, b"z", &mut out);
        s.flush(&mut out);
        assert_eq!(flat(&out), vec![Err(11), Ok(b"z".to_vec())]);
        assert_eq!(s.hole_bytes, 11);
        assert_eq!(s.pending_bytes, 0);
    }

    #[test]
    fn bounded_pending_skips_the_hole() {
        let mut s = Stream::new(4);
        let mut out = Vec::new();
        s.add(10, b"abc", &mut out);
        assert!(out.is_empty());
        s.add(13, b"de", &mut out);
        assert_eq!(
            flat(&out),
            vec![Err(10), Ok(b"abc".to_vec()), Ok(b"de".to_vec())]
        );
        assert_eq!(s.pending_bytes, 0);
    }
}
