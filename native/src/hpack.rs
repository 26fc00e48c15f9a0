//! HPACK (RFC 7541) decoding for an observer, one `Decoder` per direction.
//!
//! Two modes share one table:
//!
//! * **exact** — the observer saw the connection from its start, so its copy of the
//!   dynamic table is the encoder's: indexes past the table, size updates above what the
//!   peer allowed, malformed blocks are errors (the caller reports them and switches the
//!   direction to partial mode).
//! * **partial** — after a mid-stream join, or once bytes of a header block were lost,
//!   the real table holds entries this observer never saw. What stays certain: the static
//!   table (indexes 1..61) never changes; every entry inserted since is known, and because
//!   HPACK numbers dynamic entries newest-first, the k entries we saw inserted are exactly
//!   indexes 62..62+k-1 (evictions only remove the oldest entries, and an encoder never
//!   references an entry it evicted); a size update to 0 empties the table, after which
//!   everything is known again. A field referencing an older entry is skipped and the
//!   block marked incomplete; a literal whose name is unknown still occupies a table slot,
//!   so later indexes stay right. A malformed block forgets every learned entry.
//!
//! Memory is bounded whatever the peer announces: our copy of the table holds at most
//! `TABLE_CAP` bytes (RFC 7541 §4.1 sizes). An exact decoder whose encoder grows its table
//! beyond that turns partial (`Decoded::capped`): entries older than our copy are then
//! unknown. A decoded header list is bounded by `MAX_HEADER_LIST` (a 1-byte reference can
//! expand to a whole table entry).
use std::collections::VecDeque;

/// Largest dynamic table we mirror (bytes, as RFC 7541 counts them: 32 + name + value).
pub const TABLE_CAP: usize = 64 * 1024;
/// Largest decoded header list (same accounting) accepted from one block.
pub const MAX_HEADER_LIST: usize = 1 << 20;
/// The initial SETTINGS_HEADER_TABLE_SIZE.
pub const DEFAULT_TABLE_SIZE: usize = 4096;

pub type Field = (Vec<u8>, Vec<u8>);

/// RFC 7541 Appendix A.
pub static STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Code length in bits of each symbol (0..=255, 256 = EOS) of the RFC 7541 Appendix B
/// Huffman code. The code is canonical (codes assigned in order of length, then symbol),
/// so the lengths alone define it.
static HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const MAX_CODE_LEN: usize = 30;
const EOS: u16 = 256;

/// Canonical-code decoding tables: for each length, the first code of that length, how
/// many codes have it, and where its symbols start in `symbols`.
struct Huffman {
    first_code: [u32; MAX_CODE_LEN + 1],
    count: [u32; MAX_CODE_LEN + 1],
    offset: [u32; MAX_CODE_LEN + 1],
    symbols: [u16; 257],
    /// For every 8-bit prefix whose first symbol is at most 8 bits long: (symbol, length).
    fast: [(u16, u8); 256],
}

fn build_huffman() -> Huffman {
    let mut h = Huffman {
        first_code: [0; MAX_CODE_LEN + 1],
        count: [0; MAX_CODE_LEN + 1],
        offset: [0; MAX_CODE_LEN + 1],
        symbols: [0; 257],
        fast: [(0, 0); 256],
    };
    for &l in HUFFMAN_LENGTHS.iter() {
        h.count[l as usize] += 1;
    }
    let mut code: u32 = 0;
    let mut off: u32 = 0;
    for len in 1..=MAX_CODE_LEN {
        code = (code + if len > 1 { h.count[len - 1] } else { 0 }) << 1;
        if len == 1 {
            code = 0;
        }
        h.first_code[len] = code;
        h.offset[len] = off;
        off += h.count[len];
    }
    // Symbols in canonical order: by length, then by value.
    let mut next = h.offset;
    for (sym, &l) in HUFFMAN_LENGTHS.iter().enumerate() {
        let l = l as usize;
        h.symbols[next[l] as usize] = sym as u16;
        next[l] += 1;
    }
    for prefix in 0..256u32 {
        for len in 1..=8usize {
            let c = prefix >> (8 - len);
            let d = c.wrapping_sub(h.first_code[len]);
            if d < h.count[len] {
                let sym = h.symbols[(h.offset[len] + d) as usize];
                h.fast[prefix as usize] = (sym, len as u8);
                break;
            }
        }
    }
    h
}

fn huffman() -> &'static Huffman {
    static H: std::sync::OnceLock<Huffman> = std::sync::OnceLock::new();
    H.get_or_init(build_huffman)
}

/// Decodes a Huffman-coded string literal (RFC 7541 §5.2): padding must be under 8 bits
/// of the EOS prefix (all ones), and EOS itself must not appear.
pub fn decode_huffman(data: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    let h = huffman();
    let mut acc: u64 = 0;
    let mut nbits: usize = 0;
    let mut i = 0;
    loop {
        while nbits <= 56 && i < data.len() {
            acc = (acc << 8) | data[i] as u64;
            nbits += 8;
            i += 1;
        }
        if nbits == 0 {
            return Ok(());
        }
        if nbits >= 8 {
            let prefix = ((acc >> (nbits - 8)) & 0xFF) as usize;
            let (sym, len) = h.fast[prefix];
            if len != 0 {
                out.push(sym as u8);
                nbits -= len as usize;
                acc &= (1u64 << nbits) - 1;
                continue;
            }
        }
        let mut matched = false;
        for len in 5..=MAX_CODE_LEN.min(nbits) {
            let c = (acc >> (nbits - len)) as u32;
            let d = c.wrapping_sub(h.first_code[len]);
            if d < h.count[len] {
                let sym = h.symbols[(h.offset[len] + d) as usize];
                if sym == EOS {
                    return Err("EOS in a Huffman string");
                }
                out.push(sym as u8);
                nbits -= len;
                acc &= (1u64 << nbits) - 1;
                matched = true;
                break;
            }
        }
        if matched {
            continue;
        }
        // No symbol fits the bits left: that is only fine at the end, as padding.
        if i < data.len() || nbits >= MAX_CODE_LEN {
            return Err("invalid Huffman code");
        }
        if nbits > 7 {
            return Err("Huffman padding longer than 7 bits");
        }
        if acc != (1u64 << nbits) - 1 {
            return Err("Huffman padding is not the EOS prefix");
        }
        return Ok(());
    }
}

/// RFC 7541 §5.1 integer at `data[*i]` with an N-bit prefix; advances `*i`.
fn integer(data: &[u8], i: &mut usize, prefix: u32) -> Result<usize, &'static str> {
    let Some(&first) = data.get(*i) else {
        return Err("truncated integer");
    };
    let mask = (1usize << prefix) - 1;
    let mut value = first as usize & mask;
    *i += 1;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let Some(&b) = data.get(*i) else {
            return Err("truncated integer");
        };
        *i += 1;
        value += ((b & 0x7F) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        if shift > 28 {
            return Err("integer too large");
        }
    }
}

/// RFC 7541 §5.2 string literal at `data[*i]`; advances `*i`.
fn string(data: &[u8], i: &mut usize) -> Result<Vec<u8>, &'static str> {
    let Some(&first) = data.get(*i) else {
        return Err("truncated string");
    };
    let len = integer(data, i, 7)?;
    let end = i.checked_add(len).ok_or("truncated string")?;
    if end > data.len() {
        return Err("truncated string");
    }
    let raw = &data[*i..end];
    *i = end;
    if first & 0x80 != 0 {
        let mut out = Vec::with_capacity(raw.len() + raw.len() / 2);
        decode_huffman(raw, &mut out)?;
        Ok(out)
    } else {
        Ok(raw.to_vec())
    }
}

fn entry_size(name: &[u8], value: &[u8]) -> usize {
    32 + name.len() + value.len()
}

/// A table entry; `name` None when a partial decoder inserted a literal whose name
/// referenced an unknown entry.
struct Entry {
    name: Option<Vec<u8>>,
    value: Vec<u8>,
}

impl Entry {
    fn size(&self) -> usize {
        entry_size(self.name.as_deref().unwrap_or(b""), &self.value)
    }
}

/// The result of one header block.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    /// Fields that could be resolved, in wire order.
    pub fields: Vec<Field>,
    /// Every field resolved.
    pub complete: bool,
    /// The encoder's table grew beyond `TABLE_CAP` in this block: the decoder is partial
    /// from here on.
    pub capped: bool,
}

/// One direction's HPACK decoder. See the module docs.
pub struct Decoder {
    /// Newest first.
    table: VecDeque<Entry>,
    size: usize,
    exact: bool,
    /// Exact mode: the table's maximum size (the last size update, else 4096).
    max_size: usize,
    /// Exact mode: the largest size update accepted (SETTINGS_HEADER_TABLE_SIZE the
    /// decoding end announced, never below the current maximum).
    max_allowed: usize,
    /// Partial mode: there are no unknown entries past our copy (a size update to 0 was
    /// seen, or the decoder was exact until it was capped).
    cleared: bool,
}

enum Lookup<'a> {
    Known(&'a [u8], &'a [u8]),
    /// A partial decoder's entry whose name is unknown but value known.
    NameUnknown,
    Unknown,
}

impl Decoder {
    pub fn new(exact: bool) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            exact,
            max_size: DEFAULT_TABLE_SIZE,
            max_allowed: DEFAULT_TABLE_SIZE,
            cleared: false,
        }
    }

    pub fn is_exact(&self) -> bool {
        self.exact
    }

    /// The table's current maximum size (exact mode).
    pub fn table_size(&self) -> usize {
        self.max_size
    }

    /// The largest size update the encoder may send next (exact mode only).
    pub fn set_max_allowed(&mut self, n: usize) {
        self.max_allowed = n;
    }

    /// Forget everything learned: the direction's HPACK state is unknown from here on.
    pub fn forget(&mut self) {
        self.table.clear();
        self.size = 0;
        self.exact = false;
        self.cleared = false;
    }

    /// Bytes held by our copy of the table (RFC 7541 accounting).
    pub fn held(&self) -> usize {
        self.size
    }

    fn lookup(&self, index: usize) -> Result<Lookup<'_>, &'static str> {
        if index == 0 {
            return Err("index 0");
        }
        if index <= STATIC_TABLE.len() {
            let (n, v) = STATIC_TABLE[index - 1];
            return Ok(Lookup::Known(n, v));
        }
        let d = index - STATIC_TABLE.len() - 1;
        if let Some(e) = self.table.get(d) {
            return Ok(match &e.name {
                Some(n) => Lookup::Known(n, &e.value),
                None => Lookup::NameUnknown,
            });
        }
        if self.exact || self.cleared {
            return Err("index beyond the dynamic table");
        }
        Ok(Lookup::Unknown)
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.table.pop_back() {
                Some(e) => self.size -= e.size(),
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }

    fn insert(&mut self, name: Option<Vec<u8>>, value: Vec<u8>) {
        let e = Entry { name, value };
        let sz = e.size();
        if self.exact {
            // RFC 7541 §4.4: an entry larger than the table empties it and is not added.
            if sz > self.max_size {
                self.table.clear();
                self.size = 0;
                return;
            }
            self.evict_to(self.max_size - sz);
            self.table.push_front(e);
            self.size += sz;
            return;
        }
        self.table.push_front(e);
        self.size += sz;
        if self.size > TABLE_CAP {
            self.evict_to(TABLE_CAP);
            // Entries past our copy are unknown again.
            self.cleared = false;
        }
    }

    /// Decode one complete header block. An error leaves the decoder partial and empty
    /// (its state can no longer be trusted); the caller reports it.
    pub fn decode(&mut self, block: &[u8]) -> Result<Decoded, String> {
        let mut out = Decoded {
            fields: Vec::with_capacity(8),
            complete: true,
            capped: false,
        };
        match self.decode_into(block, &mut out) {
            Ok(()) => Ok(out),
            Err(e) => {
                self.forget();
                Err(e.to_string())
            }
        }
    }

    fn decode_into(&mut self, data: &[u8], out: &mut Decoded) -> Result<(), &'static str> {
        let mut i = 0;
        let mut list_size = 0usize;
        while i < data.len() {
            let b = data[i];
            if b & 0x80 != 0 {
                let index = integer(data, &mut i, 7)?;
                match self.lookup(index)? {
                    Lookup::Known(n, v) => {
                        list_size += entry_size(n, v);
                        if list_size > MAX_HEADER_LIST {
                            return Err("header list too large");
                        }
                        out.fields.push((n.to_vec(), v.to_vec()));
                    }
                    _ => out.complete = false,
                }
            } else if b & 0x40 != 0 {
                let (name, value) = self.literal(data, &mut i, 6)?;
                if let Some(n) = &name {
                    list_size += entry_size(n, &value);
                    if list_size > MAX_HEADER_LIST {
                        return Err("header list too large");
                    }
                    out.fields.push((n.clone(), value.clone()));
                } else {
                    out.complete = false;
                }
                self.insert(name, value);
            } else if b & 0x20 != 0 {
                if self.exact && !out.fields.is_empty() {
                    return Err("table size update not at the start of the block");
                }
                let size = integer(data, &mut i, 5)?;
                self.size_update(size, out)?;
            } else {
                let (name, value) = self.literal(data, &mut i, 4)?;
                match name {
                    Some(n) => {
                        list_size += entry_size(&n, &value);
                        if list_size > MAX_HEADER_LIST {
                            return Err("header list too large");
                        }
                        out.fields.push((n, value));
                    }
                    None => out.complete = false,
                }
            }
        }
        Ok(())
    }

    fn size_update(&mut self, size: usize, out: &mut Decoded) -> Result<(), &'static str> {
        if !self.exact {
            if size == 0 {
                self.table.clear();
                self.size = 0;
                self.cleared = true;
            }
            return Ok(());
        }
        if size > self.max_allowed {
            return Err("table size update beyond the size the peer allowed");
        }
        if size > TABLE_CAP {
            // Everything so far is known; entries beyond our copy will not be.
            self.exact = false;
            self.cleared = true;
            out.capped = true;
            return Ok(());
        }
        self.max_size = size;
        self.evict_to(size);
        Ok(())
    }

    fn literal(
        &self,
        data: &[u8],
        i: &mut usize,
        prefix: u32,
    ) -> Result<(Option<Vec<u8>>, Vec<u8>), &'static str> {
        let index = integer(data, i, prefix)?;
        let name = if index != 0 {
            match self.lookup(index)? {
                Lookup::Known(n, _) => Some(n.to_vec()),
                _ => None,
            }
        } else {
            Some(string(data, i)?)
        };
        let value = string(data, i)?;
        Ok((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: &str, v: &str) -> Field {
        (n.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        let mut d = Decoder::new(true);
        let r1 = d
            .decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
            .unwrap();
        assert_eq!(
            r1.fields,
            vec![
                f(":method", "GET"),
                f(":scheme", "http"),
                f(":path", "/"),
                f(":authority", "www.example.com")
            ]
        );
        let r2 = d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(r2.fields[3], f(":authority", "www.example.com"));
        assert_eq!(r2.fields[4], f("cache-control", "no-cache"));
        let r3 = d
            .decode(&hex(
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ))
            .unwrap();
        assert_eq!(r3.fields[4], f("custom-key", "custom-value"));
        assert!(r3.complete);
        assert_eq!(d.held(), 164);
    }

    #[test]
    fn rfc7541_c6_responses_with_eviction() {
        let mut d = Decoder::new(true);
        d.set_max_allowed(256);
        // The encoder's table is 256 bytes: first a size update.
        let mut block = vec![0x3f, 0xe1, 0x01]; // size update to 256
        block.extend(hex(
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        ));
        let r1 = d.decode(&block).unwrap();
        assert_eq!(r1.fields[0], f(":status", "302"));
        assert_eq!(r1.fields[3], f("location", "https://www.example.com"));
        let r2 = d.decode(&hex("4883 640e ffc1 c0bf")).unwrap();
        assert_eq!(r2.fields[0], f(":status", "307"));
        assert_eq!(r2.fields[1], f("cache-control", "private"));
        assert_eq!(d.held(), 222);
    }

    #[test]
    fn size_update_beyond_allowed_is_an_error_and_forgets() {
        let mut d = Decoder::new(true);
        let err = d.decode(&[0x3f, 0xe1, 0xff, 0x03]).unwrap_err();
        assert!(err.contains("size"));
        assert!(!d.is_exact());
    }

    #[test]
    fn huge_allowed_table_is_capped_and_partial() {
        let mut d = Decoder::new(true);
        d.set_max_allowed(1 << 30);
        // size update to 1 MiB (0x3f, then 1048576 - 31 in 7-bit groups)
        let mut block = vec![0x3f];
        let mut v = (1usize << 20) - 31;
        while v >= 128 {
            block.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        block.push(v as u8);
        block.extend([0x40, 1, b'a', 1, b'b']); // literal a: b, indexed
        let r = d.decode(&block).unwrap();
        assert!(r.capped && r.complete && !d.is_exact());
        assert_eq!(r.fields, vec![f("a", "b")]);
        // Fill beyond our copy: 3000 entries of ~100 bytes.
        for k in 0..3000u32 {
            let name = format!("n{k:05}");
            let mut b = vec![0x40, name.len() as u8];
            b.extend(name.as_bytes());
            b.push(60);
            b.extend([b'v'; 60]);
            d.decode(&b).unwrap();
        }
        assert!(d.held() <= TABLE_CAP);
        // The newest entry (62) is known; one long gone is unknown, not an error.
        let r = d.decode(&[0x80 | 62]).unwrap();
        assert!(r.complete);
        let r = d.decode(&[0xff, 0x80, 0x17]).unwrap(); // index 127 + 2944
        assert!(!r.complete && r.fields.is_empty());
    }

    #[test]
    fn partial_skips_unknown_references_and_keeps_slots() {
        let mut d = Decoder::new(false);
        // literal with indexing, name = unknown dynamic index 62
        let r = d.decode(&[0x40 | 62, 1, b'x', 0x82]).unwrap();
        assert!(!r.complete);
        assert_eq!(r.fields, vec![f(":method", "GET")]);
        // index 62 is now that entry: name unknown
        let r = d.decode(&[0x80 | 62]).unwrap();
        assert!(!r.complete && r.fields.is_empty());
        // size update to 0 clears: later references past the table are errors
        let r = d.decode(&[0x20, 0x82]).unwrap();
        assert!(r.complete);
        assert!(d.decode(&[0x80 | 62]).is_err());
    }

    #[test]
    fn header_list_amplification_is_bounded() {
        let mut d = Decoder::new(false);
        let mut b = vec![0x40, 1, b'a', 0x7f, 0x81, 0x7f]; // value of 127+16257 bytes
        b.extend(std::iter::repeat_n(b'z', 127 + 16257));
        b.extend(std::iter::repeat_n(0x80 | 62, 100));
        assert!(d.decode(&b).unwrap_err().contains("too large"));
    }

    #[test]
    fn huffman_rejects_eos_and_bad_padding() {
        let mut out = Vec::new();
        assert!(decode_huffman(&[0xff, 0xff, 0xff, 0xff], &mut out).is_err());
        out.clear();
        // "a" = 00011 then padding 111 -> 0x1f
        decode_huffman(&[0x1f], &mut out).unwrap();
        assert_eq!(out, b"a");
        out.clear();
        assert!(decode_huffman(&[0x18], &mut out).is_err()); // padding zeros
        out.clear();
        assert!(decode_huffman(&[0x1f, 0xff], &mut out).is_err()); // 11 bits of padding
    }

    #[test]
    fn huffman_round_trip_every_symbol() {
        // Encode every byte value with the canonical code and decode it back.
        let h = huffman();
        let mut codes = [(0u32, 0u8); 257];
        for len in 1..=MAX_CODE_LEN {
            for k in 0..h.count[len] {
                let sym = h.symbols[(h.offset[len] + k) as usize];
                codes[sym as usize] = (h.first_code[len] + k, len as u8);
            }
        }
        let input: Vec<u8> = (0..=255u8).chain(b"hello, world".iter().copied()).collect();
        let mut bits: Vec<bool> = Vec::new();
        for &c in &input {
            let (code, len) = codes[c as usize];
            for j in (0..len).rev() {
                bits.push(code >> j & 1 == 1);
            }
        }
        while !bits.len().is_multiple_of(8) {
            bits.push(true);
        }
        let bytes: Vec<u8> = bits
            .chunks(8)
            .map(|ch| ch.iter().fold(0u8, |a, &b| a << 1 | b as u8))
            .collect();
        let mut out = Vec::new();
        decode_huffman(&bytes, &mut out).unwrap();
        assert_eq!(out, input);
    }
}
