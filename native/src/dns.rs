//! DNS (RFC 1035) from captured UDP datagrams: the message parser, the host-wide
//! address → name map, and the pairing of queries with their answers.
//!
//! `parse(bytes, cut)` is sans-IO and bounded: a name is at most 255 bytes of at most 63-byte
//! labels, compression pointers must point backwards and at most `MAX_JUMPS` are
//! followed, at most `MAX_QUESTIONS` questions and `MAX_ANSWERS` answers are kept (the
//! rest are skipped, their count ignored when the bytes run out first), so the work per
//! message is linear in its length (≤ DGRAM_MAX). Anything malformed is an `Err` naming
//! why; the caller counts it. Only the header, the question and the answer section are
//! read (authority and additional records carry nothing a connection is named by).
//!
//! `NameMap` answers "which name did a DNS answer give this address?" for connections
//! without SNI or Host (qtap's domain rule: SNI, then Host/:authority, then DNS). It holds
//! at most `cap` addresses; each entry lives for its record's TTL (clamped to
//! [`MIN_TTL_S`, `MAX_TTL_S`]: a connection follows its lookup within seconds, and a
//! TTL of 0 would otherwise name nothing); when full, expired entries go first, then the
//! entry closest to expiry, each such eviction counted. Time is the caller's (kernel ns).
//!
//! `Exchanges` pairs a query with its answer by (pid, socket, DNS id): at most
//! `MAX_PENDING` queries wait (the oldest is given up when full, counted), each for at
//! most `QUERY_TIMEOUT_NS`; an unanswered query becomes an exchange without a response.
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_MX: u16 = 15;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_SVCB: u16 = 64;
pub const TYPE_HTTPS: u16 = 65;
const CLASS_IN: u16 = 1;

pub const MAX_NAME: usize = 255;
pub const MAX_JUMPS: usize = 32;
pub const MAX_QUESTIONS: usize = 4;
pub const MAX_ANSWERS: usize = 64;
/// SvcParams read from one HTTPS/SVCB record at most.
const MAX_SVC_PARAMS: usize = 32;
/// Text kept of one answer (TXT can be long).
const MAX_ANSWER_TEXT: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The message ends before its header, a question or a record does.
    Truncated,
    /// A compression pointer that does not point backwards, or too many of them.
    NameLoop,
    /// A name longer than 255 bytes.
    NameTooLong,
    /// A label type other than a plain label or a pointer (0x40/0x80 prefixes).
    BadLabel,
    /// More questions than a query has (qdcount > MAX_QUESTIONS).
    TooManyQuestions,
    /// Record data that does not fit its type (an A record of 5 bytes, …).
    BadRdata,
}

impl ParseError {
    /// The label of `plaintap_dns_parse_errors_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            ParseError::Truncated => "truncated",
            ParseError::NameLoop => "name_loop",
            ParseError::NameTooLong => "name_too_long",
            ParseError::BadLabel => "bad_label",
            ParseError::TooManyQuestions => "too_many_questions",
            ParseError::BadRdata => "bad_rdata",
        }
    }

    pub const ALL: [ParseError; 6] = [
        ParseError::Truncated,
        ParseError::NameLoop,
        ParseError::NameTooLong,
        ParseError::BadLabel,
        ParseError::TooManyQuestions,
        ParseError::BadRdata,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// CNAME, NS, PTR: a name.
    Name(String),
    Mx(u16, String),
    Txt(String),
    Srv(u16, u16, u16, String),
    /// HTTPS/SVCB: priority, target, parameters in presentation form.
    Svc(u16, String, String),
    /// Any other type: its length.
    Other(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub data: RData,
}

impl Answer {
    /// The record's data as one string (presentation form, names without the final dot).
    pub fn text(&self) -> String {
        let mut s = match &self.data {
            RData::A(a) => a.to_string(),
            RData::Aaaa(a) => a.to_string(),
            RData::Name(n) => n.clone(),
            RData::Mx(p, n) => format!("{p} {n}"),
            RData::Txt(t) => t.clone(),
            RData::Srv(p, w, port, n) => format!("{p} {w} {port} {n}"),
            RData::Svc(p, t, params) if params.is_empty() => format!("{p} {}", dot(t)),
            RData::Svc(p, t, params) => format!("{p} {} {params}", dot(t)),
            RData::Other(n) => format!("\\# {n}"),
        };
        if s.len() > MAX_ANSWER_TEXT {
            let mut end = MAX_ANSWER_TEXT;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
        s
    }
}

fn dot(name: &str) -> &str {
    if name.is_empty() {
        "."
    } else {
        name
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub id: u16,
    pub is_response: bool,
    pub opcode: u8,
    pub rcode: u8,
    /// The TC bit: the server cut the answer (the client retries over TCP).
    pub tc: bool,
    pub questions: Vec<Question>,
    pub answers: Vec<Answer>,
    /// The answer section was cut short (the kernel copied only part of the datagram).
    pub partial: bool,
}

/// Name of a record type, as `dns.question.type` shows it.
pub fn type_name(t: u16) -> String {
    let s = match t {
        TYPE_A => "A",
        TYPE_NS => "NS",
        TYPE_CNAME => "CNAME",
        6 => "SOA",
        TYPE_PTR => "PTR",
        TYPE_MX => "MX",
        TYPE_TXT => "TXT",
        TYPE_AAAA => "AAAA",
        TYPE_SRV => "SRV",
        35 => "NAPTR",
        41 => "OPT",
        43 => "DS",
        48 => "DNSKEY",
        TYPE_SVCB => "SVCB",
        TYPE_HTTPS => "HTTPS",
        255 => "ANY",
        257 => "CAA",
        other => return format!("TYPE{other}"),
    };
    s.to_string()
}

/// Name of a response code, as `dns.response_code` shows it.
pub fn rcode_name(r: u8) -> String {
    let s = match r {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        other => return format!("RCODE{other}"),
    };
    s.to_string()
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, ParseError> {
        let v = *self.b.get(self.pos).ok_or(ParseError::Truncated)?;
        self.pos += 1;
        Ok(v)
    }
    fn u16(&mut self) -> Result<u16, ParseError> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Result<u32, ParseError> {
        Ok(((self.u16()? as u32) << 16) | self.u16()? as u32)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let end = self.pos.checked_add(n).ok_or(ParseError::Truncated)?;
        let s = self.b.get(self.pos..end).ok_or(ParseError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    /// A (possibly compressed) name at the current position; the position moves past it.
    fn name(&mut self) -> Result<String, ParseError> {
        let (name, next) = read_name(self.b, self.pos)?;
        self.pos = next;
        Ok(name)
    }
}

/// The name at `start` in `msg`, and the position after it (after its first pointer, if
/// compressed). Labels are joined with '.', without the root's final dot; bytes outside
/// printable ASCII, '.' and '\' inside a label are escaped as `\DDD`.
pub fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), ParseError> {
    let mut out = String::new();
    let mut pos = start;
    let mut after: Option<usize> = None;
    let mut jumps = 0;
    // The root label's byte counts too.
    let mut wire_len = 1;
    // Pointers must point strictly before the label that holds them: with a moving lower
    // bound, no loop is possible, and MAX_JUMPS bounds the work besides.
    let mut limit = start;
    loop {
        let len = *msg.get(pos).ok_or(ParseError::Truncated)? as usize;
        match len & 0xC0 {
            0x00 => {
                if len == 0 {
                    return Ok((out, after.unwrap_or(pos + 1)));
                }
                let label = msg
                    .get(pos + 1..pos + 1 + len)
                    .ok_or(ParseError::Truncated)?;
                wire_len += len + 1;
                if wire_len > MAX_NAME {
                    return Err(ParseError::NameTooLong);
                }
                if !out.is_empty() {
                    out.push('.');
                }
                for &c in label {
                    if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                        out.push(c as char);
                    } else {
                        out.push_str(&format!("\\{c:03}"));
                    }
                }
                pos += 1 + len;
            }
            0xC0 => {
                let lo = *msg.get(pos + 1).ok_or(ParseError::Truncated)? as usize;
                let target = ((len & 0x3F) << 8) | lo;
                jumps += 1;
                if target >= limit || jumps > MAX_JUMPS {
                    return Err(ParseError::NameLoop);
                }
                if after.is_none() {
                    after = Some(pos + 2);
                }
                limit = target;
                pos = target;
            }
            _ => return Err(ParseError::BadLabel),
        }
    }
}

fn svc_params(r: &mut Reader<'_>, end: usize) -> Result<String, ParseError> {
    let mut parts: Vec<String> = Vec::new();
    while r.pos < end {
        if parts.len() >= MAX_SVC_PARAMS {
            break;
        }
        let key = r.u16()?;
        let len = r.u16()? as usize;
        if r.pos + len > end {
            return Err(ParseError::BadRdata);
        }
        let v = r.take(len)?;
        let text = match key {
            1 => {
                // alpn: length-prefixed protocol ids
                let mut ids = Vec::new();
                let mut i = 0;
                while i < v.len() {
                    let n = v[i] as usize;
                    let id = v.get(i + 1..i + 1 + n).ok_or(ParseError::BadRdata)?;
                    ids.push(String::from_utf8_lossy(id).into_owned());
                    i += 1 + n;
                }
                format!("alpn={}", ids.join(","))
            }
            2 => "no-default-alpn".to_string(),
            3 if v.len() == 2 => format!("port={}", u16::from_be_bytes([v[0], v[1]])),
            4 if v.len() % 4 == 0 => {
                let a: Vec<String> = v
                    .chunks(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]).to_string())
                    .collect();
                format!("ipv4hint={}", a.join(","))
            }
            6 if v.len() % 16 == 0 => {
                let a: Vec<String> = v
                    .chunks(16)
                    .map(|c| {
                        let mut x = [0u8; 16];
                        x.copy_from_slice(c);
                        Ipv6Addr::from(x).to_string()
                    })
                    .collect();
                format!("ipv6hint={}", a.join(","))
            }
            3 | 4 | 6 => return Err(ParseError::BadRdata),
            5 => "ech=…".to_string(),
            k => format!("key{k}"),
        };
        parts.push(text);
    }
    Ok(parts.join(" "))
}

fn rdata(msg: &[u8], rtype: u16, start: usize, len: usize) -> Result<RData, ParseError> {
    let d = &msg[start..start + len];
    let end = start + len;
    let name_in = |at: usize| -> Result<String, ParseError> {
        let (n, next) = read_name(msg, at)?;
        if next > end {
            return Err(ParseError::BadRdata);
        }
        Ok(n)
    };
    Ok(match rtype {
        TYPE_A => {
            if len != 4 {
                return Err(ParseError::BadRdata);
            }
            RData::A(Ipv4Addr::new(d[0], d[1], d[2], d[3]))
        }
        TYPE_AAAA => {
            if len != 16 {
                return Err(ParseError::BadRdata);
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(d);
            RData::Aaaa(Ipv6Addr::from(a))
        }
        TYPE_CNAME | TYPE_NS | TYPE_PTR => RData::Name(name_in(start)?),
        TYPE_MX => {
            if len < 3 {
                return Err(ParseError::BadRdata);
            }
            RData::Mx(u16::from_be_bytes([d[0], d[1]]), name_in(start + 2)?)
        }
        TYPE_SRV => {
            if len < 7 {
                return Err(ParseError::BadRdata);
            }
            RData::Srv(
                u16::from_be_bytes([d[0], d[1]]),
                u16::from_be_bytes([d[2], d[3]]),
                u16::from_be_bytes([d[4], d[5]]),
                name_in(start + 6)?,
            )
        }
        TYPE_TXT => {
            let mut parts = Vec::new();
            let mut i = 0;
            while i < d.len() && parts.len() < 16 {
                let n = d[i] as usize;
                let s = d.get(i + 1..i + 1 + n).ok_or(ParseError::BadRdata)?;
                parts.push(format!("\"{}\"", String::from_utf8_lossy(s)));
                i += 1 + n;
            }
            RData::Txt(parts.join(" "))
        }
        TYPE_HTTPS | TYPE_SVCB => {
            if len < 3 {
                return Err(ParseError::BadRdata);
            }
            let prio = u16::from_be_bytes([d[0], d[1]]);
            // RFC 9460 forbids compressing the target; a backward pointer is read anyway
            // (harmless, and bounded like any name), but never past the record's end.
            let (target, next) = read_name(&msg[..end], start + 2)?;
            let mut r = Reader {
                b: &msg[..end],
                pos: next,
            };
            RData::Svc(prio, target, svc_params(&mut r, end)?)
        }
        _ => RData::Other(len),
    })
}

/// Parse one DNS message. `cut`: the datagram was longer than `buf` (the kernel copied only
/// part of it) — an answer section that runs out is then kept as far as it goes
/// (`partial`), instead of being an error.
pub fn parse(buf: &[u8], cut: bool) -> Result<Message, ParseError> {
    let mut r = Reader { b: buf, pos: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    let qd = r.u16()? as usize;
    let an = r.u16()? as usize;
    let _ns = r.u16()?;
    let _ar = r.u16()?;
    if qd > MAX_QUESTIONS {
        return Err(ParseError::TooManyQuestions);
    }
    let mut m = Message {
        id,
        is_response: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0xF) as u8,
        tc: flags & 0x0200 != 0,
        rcode: (flags & 0xF) as u8,
        ..Message::default()
    };
    for _ in 0..qd {
        let name = r.name()?;
        let qtype = r.u16()?;
        let qclass = r.u16()?;
        m.questions.push(Question {
            name,
            qtype,
            qclass,
        });
    }
    // Each record takes at least 11 bytes: a count past what the bytes can hold ends with
    // Truncated after at most len/11 records, never a long loop.
    for _ in 0..an {
        let one = (|| -> Result<Option<Answer>, ParseError> {
            let name = r.name()?;
            let rtype = r.u16()?;
            let class = r.u16()?;
            let ttl = r.u32()?;
            let len = r.u16()? as usize;
            let start = r.pos;
            r.take(len)?;
            if m.answers.len() >= MAX_ANSWERS {
                return Ok(None);
            }
            Ok(Some(Answer {
                name,
                rtype,
                class,
                ttl,
                data: rdata(buf, rtype, start, len)?,
            }))
        })();
        match one {
            Ok(Some(a)) => m.answers.push(a),
            Ok(None) => {}
            Err(ParseError::Truncated) if cut => {
                m.partial = true;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(m)
}

/// What a response teaches: (address, TTL) pairs for the name the client asked
/// (`questions[0]`), from the A and AAAA records of a NOERROR answer to an IN question.
pub fn learned(m: &Message) -> Vec<(String, u32)> {
    let Some(q) = m.questions.first() else {
        return Vec::new();
    };
    if !m.is_response || m.rcode != 0 || q.qclass != CLASS_IN || q.name.is_empty() {
        return Vec::new();
    }
    m.answers
        .iter()
        .filter(|a| a.class == CLASS_IN)
        .filter_map(|a| match a.data {
            RData::A(ip) => Some((ip.to_string(), a.ttl)),
            RData::Aaaa(ip) => Some((
                ip.to_ipv4_mapped()
                    .map_or_else(|| ip.to_string(), |v4| v4.to_string()),
                a.ttl,
            )),
            _ => None,
        })
        .take(32)
        .collect()
}

pub const MIN_TTL_S: u64 = 10;
pub const MAX_TTL_S: u64 = 86_400;
pub const DEFAULT_NAME_MAP_CAP: usize = 16_384;

/// Host-wide address → name map (see the module comment).
pub struct NameMap {
    cap: usize,
    entries: HashMap<String, (String, u64)>, // addr → (name, expires_ns)
    by_expiry: BTreeSet<(u64, String)>,
    pub evictions: u64,
    pub expired: u64,
}

impl NameMap {
    pub fn new(cap: usize) -> NameMap {
        NameMap {
            cap: cap.max(1),
            entries: HashMap::new(),
            by_expiry: BTreeSet::new(),
            evictions: 0,
            expired: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `addr` resolves to `name` for `ttl_s` seconds from `now_ns`.
    pub fn learn(&mut self, addr: &str, name: &str, ttl_s: u32, now_ns: u64) {
        let ttl = (ttl_s as u64).clamp(MIN_TTL_S, MAX_TTL_S);
        let expires = now_ns.saturating_add(ttl * 1_000_000_000);
        if let Some((_, old)) = self.entries.remove(addr) {
            self.by_expiry.remove(&(old, addr.to_string()));
        } else if self.entries.len() >= self.cap {
            self.expire(now_ns);
            if self.entries.len() >= self.cap {
                if let Some((t, a)) = self.by_expiry.pop_first() {
                    self.entries.remove(&a);
                    let _ = t;
                    self.evictions += 1;
                }
            }
        }
        self.entries
            .insert(addr.to_string(), (name.to_string(), expires));
        self.by_expiry.insert((expires, addr.to_string()));
    }

    /// The name a live answer gave `addr`.
    pub fn lookup(&self, addr: &str, now_ns: u64) -> Option<&str> {
        match self.entries.get(addr) {
            Some((name, exp)) if *exp > now_ns => Some(name),
            _ => None,
        }
    }

    /// Drop entries whose TTL has passed.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some((t, _)) = self.by_expiry.first() {
            if *t > now_ns {
                break;
            }
            let (_, a) = self.by_expiry.pop_first().expect("checked");
            self.entries.remove(&a);
            self.expired += 1;
        }
    }
}

pub const MAX_PENDING: usize = 4096;
pub const QUERY_TIMEOUT_NS: u64 = 5_000_000_000;

/// Identity of one end of an exchange, as the kernel saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoints {
    pub pid: u32,
    pub fd: i32,
    pub uid: u32,
    pub comm: String,
    pub local_addr: String,
    pub local_port: u16,
    pub remote_addr: String,
    pub remote_port: u16,
}

/// One DNS exchange: a query and its answer (either may be missing).
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    pub ends: Endpoints,
    pub ts_ns: u64,
    pub answer_ts_ns: Option<u64>,
    pub id: u16,
    pub question: Option<Question>,
    /// rcode, answers (text), when the answer came.
    pub rcode: Option<u8>,
    pub answers: Vec<String>,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    /// "udp", or "tcp" for DNS over a TCP connection to port 53.
    pub transport: &'static str,
}

type Key = (u32, u64, u16); // pid, socket, DNS id

/// Queries waiting for their answers (see the module comment).
#[derive(Default)]
pub struct Exchanges {
    pending: HashMap<Key, Exchange>,
    order: VecDeque<(u64, Key)>, // (query ts, key), oldest first
    pub given_up: u64,
    pub unanswered: u64,
    pub unmatched_answers: u64,
}

impl Exchanges {
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// A query was sent. Returns an exchange given up to make room (report it).
    pub fn query(
        &mut self,
        sk: u64,
        m: &Message,
        ends: Endpoints,
        ts: u64,
        len: u64,
        transport: &'static str,
    ) -> Option<Exchange> {
        let key = (ends.pid, sk, m.id);
        let ex = Exchange {
            ends,
            ts_ns: ts,
            answer_ts_ns: None,
            id: m.id,
            question: m.questions.first().cloned(),
            rcode: None,
            answers: Vec::new(),
            bytes_sent: len,
            bytes_recv: 0,
            transport,
        };
        if let Some(prev) = self.pending.get_mut(&key) {
            // A retransmission with the same id: one exchange.
            prev.bytes_sent += len;
            return None;
        }
        let mut out = None;
        while self.pending.len() >= MAX_PENDING {
            let Some((_, k)) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.pending.remove(&k) {
                self.given_up += 1;
                out = Some(old);
            }
        }
        self.pending.insert(key, ex);
        self.order.push_back((ts, key));
        out
    }

    /// An answer arrived: the finished exchange (matched: true), or one made of the answer
    /// alone when no query was seen (its query predates the agent, or was not copied).
    pub fn answer(
        &mut self,
        sk: u64,
        m: &Message,
        ends: Endpoints,
        ts: u64,
        len: u64,
        transport: &'static str,
    ) -> (Exchange, bool) {
        let key = (ends.pid, sk, m.id);
        let q = m.questions.first();
        let matched = match self.pending.get(&key) {
            // The same question (a reply to another query with a reused id is not ours).
            Some(p) => {
                p.question.as_ref().map(|x| (&x.name, x.qtype)) == q.map(|x| (&x.name, x.qtype))
            }
            None => false,
        };
        let mut ex = if matched {
            self.pending.remove(&key).expect("checked")
        } else {
            self.unmatched_answers += 1;
            Exchange {
                ends,
                ts_ns: ts,
                answer_ts_ns: None,
                id: m.id,
                question: q.cloned(),
                rcode: None,
                answers: Vec::new(),
                bytes_sent: 0,
                bytes_recv: 0,
                transport,
            }
        };
        ex.answer_ts_ns = Some(ts);
        ex.rcode = Some(m.rcode);
        ex.answers = m.answers.iter().map(Answer::text).collect();
        ex.bytes_recv += len;
        (ex, matched)
    }

    /// Queries unanswered for QUERY_TIMEOUT_NS by `now`.
    pub fn expire(&mut self, now: u64) -> Vec<Exchange> {
        let mut out = Vec::new();
        while let Some(&(ts, k)) = self.order.front() {
            if now < ts.saturating_add(QUERY_TIMEOUT_NS) {
                break;
            }
            self.order.pop_front();
            if let Some(ex) = self.pending.remove(&k) {
                if ex.ts_ns == ts {
                    self.unanswered += 1;
                    out.push(ex);
                } else {
                    self.pending.insert(k, ex);
                }
            }
        }
        // Keys answered earlier leave stale entries in `order`; bound it.
        if self.order.len() > 4 * MAX_PENDING {
            let live: &HashMap<Key, Exchange> = &self.pending;
            self.order
                .retain(|(ts, k)| live.get(k).is_some_and(|e| e.ts_ns == *ts));
        }
        out
    }

    /// Every waiting query (shutdown).
    pub fn drain(&mut self) -> Vec<Exchange> {
        self.order.clear();
        let mut v: Vec<Exchange> = self.pending.drain().map(|(_, e)| e).collect();
        v.sort_by_key(|e| e.ts_ns);
        v
    }
}

/// One DNS message as captured: the socket it went through (struct sock *, or the
/// connection id for TCP), its direction, its bytes (`cut`: the kernel copied only part).
pub struct Msg<'a> {
    pub sock: u64,
    pub flow: u8,
    pub data: &'a [u8],
    pub cut: bool,
    pub len: u64,
    pub transport: &'static str,
}

/// DNS over TCP (RFC 1035 4.2.2): each message prefixed by its 2-byte length. One per
/// direction of a connection to port 53. Holds at most one message (≤ 64 KiB + 2); a
/// capture gap loses the framing, and that direction is not parsed further (counted).
#[derive(Default)]
pub struct TcpFraming {
    buf: [Vec<u8>; 2],
    dead: [bool; 2],
}

impl TcpFraming {
    /// Bytes of direction `flow`; complete messages are handed to `each`.
    pub fn feed(&mut self, flow: u8, data: &[u8], mut each: impl FnMut(&[u8])) {
        let i = (flow as usize).min(1);
        if self.dead[i] {
            return;
        }
        let b = &mut self.buf[i];
        b.extend_from_slice(data);
        let mut at = 0;
        while b.len() >= at + 2 {
            let n = u16::from_be_bytes([b[at], b[at + 1]]) as usize;
            if b.len() < at + 2 + n {
                break;
            }
            each(&b[at + 2..at + 2 + n]);
            at += 2 + n;
        }
        b.drain(..at);
    }

    /// Bytes of direction `flow` are missing: its framing is lost.
    pub fn gap(&mut self, flow: u8) {
        let i = (flow as usize).min(1);
        self.dead[i] = true;
        self.buf[i] = Vec::new();
    }

    pub fn held_bytes(&self) -> usize {
        self.buf[0].len() + self.buf[1].len()
    }
}

/// The data plane's DNS state: datagrams in, finished exchanges out, names learned.
pub struct Dns {
    pub names: NameMap,
    pub exchanges: Exchanges,
    /// Datagrams that were neither a query sent nor a response received (ignored).
    pub ignored: u64,
    /// Datagrams the kernel cut (longer than DGRAM_MAX, or spread over several buffers).
    pub cut: u64,
    /// Addresses learned (answers matched with their query).
    pub learned: u64,
    /// Messages that did not parse, by reason (ParseError::label).
    pub errors: HashMap<&'static str, u64>,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            names: NameMap::new(DEFAULT_NAME_MAP_CAP),
            exchanges: Exchanges::default(),
            ignored: 0,
            cut: 0,
            learned: 0,
            errors: HashMap::new(),
        }
    }
}

impl Dns {
    /// One captured datagram at kernel time `ts`. A finished (or given-up) exchange is
    /// pushed to `out`; a malformed message counts under its reason in `self.errors` and
    /// under "dns" in `parse_errors` (the data plane's per-protocol count).
    pub fn on_dgram(
        &mut self,
        pid: u32,
        ts: u64,
        d: &crate::decode::Dgram<'_>,
        parse_errors: &mut HashMap<&'static str, u64>,
        out: &mut Vec<Exchange>,
    ) {
        let cut = (d.orig_len as usize) > d.data.len();
        if cut {
            self.cut += 1;
        }
        let ends = Endpoints {
            pid,
            fd: d.fd,
            uid: d.uid,
            comm: d.comm.clone(),
            local_addr: d.local_addr.clone(),
            local_port: d.local_port,
            remote_addr: d.remote_addr.clone(),
            remote_port: d.remote_port,
        };
        let msg = Msg {
            sock: d.sk,
            flow: d.flow,
            data: d.data,
            cut,
            len: d.orig_len as u64,
            transport: "udp",
        };
        self.on_message(ts, msg, ends, parse_errors, out);
    }

    /// One DNS message (a datagram, or one length-prefixed message of a TCP stream).
    /// Returns whether it parsed.
    pub fn on_message(
        &mut self,
        ts: u64,
        msg: Msg<'_>,
        ends: Endpoints,
        parse_errors: &mut HashMap<&'static str, u64>,
        out: &mut Vec<Exchange>,
    ) -> bool {
        let m = match parse(msg.data, msg.cut) {
            Ok(m) => m,
            Err(e) => {
                *self.errors.entry(e.label()).or_default() += 1;
                *parse_errors.entry("dns").or_default() += 1;
                return false;
            }
        };
        match (msg.flow, m.is_response) {
            (crate::decode::FLOW_SEND, false) if m.opcode == 0 => {
                if let Some(old) =
                    self.exchanges
                        .query(msg.sock, &m, ends, ts, msg.len, msg.transport)
                {
                    out.push(old);
                }
            }
            (crate::decode::FLOW_RECV, true) if m.opcode == 0 => {
                let (ex, matched) =
                    self.exchanges
                        .answer(msg.sock, &m, ends, ts, msg.len, msg.transport);
                if matched {
                    let name = ex
                        .question
                        .as_ref()
                        .map(|q| q.name.clone())
                        .unwrap_or_default();
                    for (addr, ttl) in learned(&m) {
                        self.names.learn(&addr, &name, ttl, ts);
                        self.learned += 1;
                    }
                }
                out.push(ex);
            }
            _ => self.ignored += 1,
        }
        true
    }

    /// Queries unanswered by kernel time `now`, and expired names.
    pub fn tick(&mut self, now: u64, out: &mut Vec<Exchange>) {
        out.extend(self.exchanges.expire(now));
        self.names.expire(now);
    }

    /// The name an answer gave `addr` (a connection with no SNI or Host yet), if live.
    pub fn name_for(&self, addr: &str, now: u64) -> Option<String> {
        self.names.lookup(addr, now).map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Vec<u8> {
        let mut v = Vec::new();
        for l in n.split('.').filter(|l| !l.is_empty()) {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.push(0);
        v
    }

    fn header(id: u16, flags: u16, qd: u16, an: u16) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [id, flags, qd, an, 0, 0] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v
    }

    fn query(id: u16, n: &str, t: u16) -> Vec<u8> {
        let mut v = header(id, 0x0100, 1, 0);
        v.extend(name(n));
        v.extend_from_slice(&t.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        v
    }

    fn rr(v: &mut Vec<u8>, owner: &[u8], t: u16, ttl: u32, data: &[u8]) {
        v.extend_from_slice(owner);
        v.extend_from_slice(&t.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        v.extend_from_slice(&ttl.to_be_bytes());
        v.extend_from_slice(&(data.len() as u16).to_be_bytes());
        v.extend_from_slice(data);
    }

    /// www.example.com CNAME edge.example.net; edge A 127.0.0.9; AAAA ::9; HTTPS 1 . alpn=h2
    fn answer() -> Vec<u8> {
        let mut v = header(7, 0x8180, 1, 4);
        v.extend(name("www.example.com"));
        v.extend_from_slice(&[0, 1, 0, 1]);
        // CNAME owner: pointer to the question name at 12
        let mut target = name("edge");
        target.truncate(target.len() - 1);
        target.extend_from_slice(&[0xC0, 16]); // "example.com" inside the question
        rr(&mut v, &[0xC0, 12], TYPE_CNAME, 300, &target);
        rr(&mut v, &[0xC0, 12], TYPE_A, 60, &[127, 0, 0, 9]);
        let mut six = [0u8; 16];
        six[15] = 9;
        rr(&mut v, &[0xC0, 12], TYPE_AAAA, 60, &six);
        let mut https = vec![0, 1, 0]; // priority 1, target "."
        https.extend_from_slice(&[0, 1, 0, 3, 2, b'h', b'2']);
        https.extend_from_slice(&[0, 4, 0, 4, 127, 0, 0, 9]);
        rr(&mut v, &[0xC0, 12], TYPE_HTTPS, 60, &https);
        v
    }

    #[test]
    fn query_and_answer() {
        let q = parse(&query(7, "www.example.com", TYPE_A), false).unwrap();
        assert!(!q.is_response);
        assert_eq!(q.questions[0].name, "www.example.com");
        assert_eq!(type_name(q.questions[0].qtype), "A");
        let a = parse(&answer(), false).unwrap();
        assert!(a.is_response);
        assert_eq!(rcode_name(a.rcode), "NOERROR");
        let texts: Vec<String> = a.answers.iter().map(Answer::text).collect();
        assert_eq!(
            texts,
            [
                "edge.example.com",
                "127.0.0.9",
                "::9",
                "1 . alpn=h2 ipv4hint=127.0.0.9"
            ]
        );
        assert_eq!(
            learned(&a),
            vec![("127.0.0.9".to_string(), 60), ("::9".to_string(), 60)]
        );
    }

    #[test]
    fn every_prefix_is_an_error_or_partial_never_a_panic() {
        let a = answer();
        for n in 0..a.len() {
            match parse(&a[..n], false) {
                Err(_) => {}
                Ok(m) => panic!("prefix {n} parsed: {m:?}"),
            }
            if let Ok(m) = parse(&a[..n], true) {
                assert!(m.partial && m.answers.len() < 4);
            }
        }
    }

    /// A message: `header` then `body`.
    fn msg(mut header: Vec<u8>, body: &[u8]) -> Vec<u8> {
        header.extend_from_slice(body);
        header
    }

    #[test]
    fn compression_loops_are_refused() {
        for v in [
            // pointer to itself
            msg(header(1, 0, 1, 0), &[0xC0, 12, 0, 1, 0, 1]),
            // two pointers pointing at each other: "a" then a pointer forward, and back
            msg(
                header(1, 0x8000, 1, 1),
                &[1, b'a', 0xC0, 14, 0, 1, 0, 1, 0xC0, 12],
            ),
            // forward pointer
            msg(header(1, 0, 1, 0), &[0xC0, 200, 0, 1, 0, 1]),
        ] {
            assert_eq!(parse(&v, false), Err(ParseError::NameLoop));
        }
    }

    #[test]
    fn long_names_and_bad_labels() {
        let mut v = header(1, 0, 1, 0);
        for _ in 0..5 {
            v.push(63);
            v.extend(std::iter::repeat_n(b'a', 63));
        }
        v.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse(&v, false), Err(ParseError::NameTooLong));
        let v = msg(header(1, 0, 1, 0), &[0x40, 0, 0, 1, 0, 1]);
        assert_eq!(parse(&v, false), Err(ParseError::BadLabel));
    }

    #[test]
    fn huge_counts_end_quickly() {
        let mut v = header(1, 0x8180, 1, 65535);
        v.extend(name("a.b"));
        v.extend_from_slice(&[0, 1, 0, 1]);
        assert_eq!(parse(&v, false), Err(ParseError::Truncated));
        assert_eq!(
            parse(&header(1, 0, 65535, 0), false),
            Err(ParseError::TooManyQuestions)
        );
        // 2000 answers of which MAX_ANSWERS are kept
        let mut v = header(1, 0x8180, 1, 2000);
        v.extend(name("a.b"));
        v.extend_from_slice(&[0, 1, 0, 1]);
        for i in 0..2000u32 {
            rr(&mut v, &[0xC0, 12], TYPE_A, 5, &i.to_be_bytes());
        }
        let m = parse(&v, false).unwrap();
        assert_eq!(m.answers.len(), MAX_ANSWERS);
    }

    #[test]
    fn bad_rdata() {
        let mut v = header(1, 0x8180, 1, 1);
        v.extend(name("a.b"));
        v.extend_from_slice(&[0, 1, 0, 1]);
        rr(&mut v, &[0xC0, 12], TYPE_A, 5, &[1, 2, 3]);
        assert_eq!(parse(&v, false), Err(ParseError::BadRdata));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9e37_79b9_u64;
        let base = answer();
        for n in 0..5000usize {
            let mut b = base.clone();
            for _ in 0..(n % 7 + 1) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let i = (seed >> 33) as usize % b.len();
                b[i] = (seed >> 17) as u8;
            }
            b.truncate(b.len() - n % 13);
            let _ = parse(&b, n % 2 == 0).map(|m| m.answers.iter().map(Answer::text).count());
        }
    }

    #[test]
    fn name_map_ttl_and_cap() {
        let s = 1_000_000_000u64;
        let mut m = NameMap::new(2);
        m.learn("10.0.0.1", "a.example", 60, 0);
        assert_eq!(m.lookup("10.0.0.1", 59 * s), Some("a.example"));
        assert_eq!(m.lookup("10.0.0.1", 60 * s), None);
        // a TTL of 0 still names the connection that follows within MIN_TTL_S
        m.learn("10.0.0.2", "b.example", 0, 0);
        assert_eq!(m.lookup("10.0.0.2", (MIN_TTL_S - 1) * s), Some("b.example"));
        assert_eq!(m.lookup("10.0.0.2", MIN_TTL_S * s), None);
        // full: the entry closest to expiry goes, counted
        m.learn("10.0.0.3", "c.example", 100, s);
        assert_eq!(m.len(), 2);
        assert_eq!(m.evictions, 1);
        assert_eq!(m.lookup("10.0.0.2", s), None);
        assert_eq!(m.lookup("10.0.0.1", s), Some("a.example"));
        // expired entries go before live ones, not counted as evictions
        m.learn("10.0.0.4", "d.example", 100, 61 * s);
        assert_eq!(m.evictions, 1);
        assert_eq!(m.expired, 1);
        assert_eq!(m.lookup("10.0.0.3", 61 * s), Some("c.example"));
        assert_eq!(m.lookup("10.0.0.4", 61 * s), Some("d.example"));
        // re-learning replaces the name and the expiry
        m.learn("10.0.0.4", "e.example", 1000, 62 * s);
        assert_eq!(m.lookup("10.0.0.4", 500 * s), Some("e.example"));
        assert_eq!(m.len(), 2);
    }

    fn ends(pid: u32) -> Endpoints {
        Endpoints {
            pid,
            fd: 3,
            uid: 0,
            comm: "x".into(),
            local_addr: "127.0.0.1".into(),
            local_port: 4000,
            remote_addr: "127.0.0.2".into(),
            remote_port: 53,
        }
    }

    #[test]
    fn exchanges_pair_by_socket_and_id() {
        let mut x = Exchanges::default();
        let q = parse(&query(7, "www.example.com", TYPE_A), false).unwrap();
        assert!(x.query(1, &q, ends(5), 100, 33, "udp").is_none());
        let a = parse(&answer(), false).unwrap();
        // another process's answer with the same id does not match
        let (_, matched) = x.answer(1, &a, ends(6), 150, 120, "udp");
        assert!(!matched);
        let (ex, matched) = x.answer(1, &a, ends(5), 200, 120, "udp");
        assert!(matched);
        assert_eq!(ex.ts_ns, 100);
        assert_eq!(ex.answer_ts_ns, Some(200));
        assert_eq!(ex.bytes_sent, 33);
        assert_eq!(ex.bytes_recv, 120);
        assert_eq!(ex.rcode, Some(0));
        assert!(x.is_empty());
        // unanswered
        x.query(1, &q, ends(5), 1000, 33, "udp");
        assert!(x.expire(1000 + QUERY_TIMEOUT_NS - 1).is_empty());
        let gone = x.expire(1000 + QUERY_TIMEOUT_NS);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].rcode, None);
        assert_eq!(x.unanswered, 1);
    }

    #[test]
    fn tcp_framing_splits_messages_across_reads() {
        let mut f = TcpFraming::default();
        let q = query(1, "a.b", TYPE_A);
        let mut wire = Vec::new();
        for _ in 0..3 {
            wire.extend_from_slice(&(q.len() as u16).to_be_bytes());
            wire.extend_from_slice(&q);
        }
        let mut got = Vec::new();
        for chunk in wire.chunks(5) {
            f.feed(0, chunk, |m| got.push(m.to_vec()));
        }
        assert_eq!(got, vec![q.clone(), q.clone(), q.clone()]);
        assert_eq!(f.held_bytes(), 0);
        f.gap(0);
        f.feed(0, &wire, |_| panic!("parsed after a gap"));
        assert_eq!(f.held_bytes(), 0);
    }

    #[test]
    fn pending_is_bounded() {
        let mut x = Exchanges::default();
        let mut given_up = 0;
        for i in 0..(MAX_PENDING + 10) {
            let q = parse(&query(i as u16, "a.b", TYPE_A), false).unwrap();
            if x.query(i as u64, &q, ends(5), i as u64, 20, "udp")
                .is_some()
            {
                given_up += 1;
            }
        }
        assert_eq!(x.len(), MAX_PENDING);
        assert_eq!(given_up, 10);
        assert_eq!(x.given_up, 10);
    }
}
