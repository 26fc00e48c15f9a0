//! Decode raw ring-buffer records (the structs of `bpf/events.h`) into typed events.
//!
//! `decode(raw)` dispatches on the leading `type` field and borrows the payload from the
//! record (no copy: the ring reader hands a slice of the mmap). A record of an unknown
//! type, or one too short for its type, is an `Err` the caller counts, never a panic.
//!
//! The offsets below are the one Rust view of the wire contract. They are checked against
//! `abi.json` (the C compiler's own view of events.h, written by `make -C bpf`) by the
//! test at the bottom of this file and, at start-up, by `plaintap.bpf.abi.check_layout`
//! through `_core.abi_layout()`.

pub const EV_CONN_OPEN: u32 = 1;
pub const EV_CONN_CLOSE: u32 = 2;
pub const EV_DATA: u32 = 3;
pub const EV_GAP: u32 = 4;
pub const EV_PROC_EXEC: u32 = 5;
pub const EV_PROC_EXIT: u32 = 6;
pub const EV_SOCK_STATE: u32 = 7;
pub const EV_DGRAM: u32 = 8;

pub const ROLE_CLIENT: u8 = 1;
pub const FLOW_SEND: u8 = 0;
pub const FLOW_RECV: u8 = 1;
pub const SRC_SOCKET: u8 = 0;
pub const SRC_TLS: u8 = 1;
pub const DATA_CHUNK: usize = 16384;
pub const DGRAM_MAX: usize = 4096;
const AF_INET: u16 = 2;

/// (struct, field, offset) for every field the decoder reads; `size` is the struct's size.
pub const LAYOUT: &[(&str, &str, usize)] = &[
    ("ev_header", "type", 0),
    ("ev_header", "pid", 4),
    ("ev_header", "ts_ns", 8),
    ("ev_header", "size", 16),
    ("ev_conn_open", "conn_id", 16),
    ("ev_conn_open", "tid", 24),
    ("ev_conn_open", "fd", 28),
    ("ev_conn_open", "uid", 32),
    ("ev_conn_open", "family", 36),
    ("ev_conn_open", "role", 38),
    ("ev_conn_open", "direction", 39),
    ("ev_conn_open", "local_port", 40),
    ("ev_conn_open", "remote_port", 42),
    ("ev_conn_open", "local_addr", 48),
    ("ev_conn_open", "remote_addr", 64),
    ("ev_conn_open", "comm", 80),
    ("ev_conn_open", "size", 96),
    ("ev_conn_close", "conn_id", 16),
    ("ev_conn_close", "bytes_sent", 24),
    ("ev_conn_close", "bytes_recv", 32),
    ("ev_conn_close", "fd", 40),
    ("ev_conn_close", "reason", 44),
    ("ev_conn_close", "tls_sent", 48),
    ("ev_conn_close", "tls_recv", 56),
    ("ev_conn_close", "lost", 64),
    ("ev_conn_close", "size", 72),
    ("ev_data", "conn_id", 16),
    ("ev_data", "offset", 24),
    ("ev_data", "len", 32),
    ("ev_data", "flow", 36),
    ("ev_data", "source", 37),
    ("ev_data", "fd", 40),
    ("ev_data", "data", 48),
    ("ev_data", "size", 48 + DATA_CHUNK),
    ("ev_gap", "conn_id", 16),
    ("ev_gap", "offset", 24),
    ("ev_gap", "len", 32),
    ("ev_gap", "flow", 40),
    ("ev_gap", "source", 41),
    ("ev_gap", "reason", 42),
    ("ev_gap", "size", 48),
    ("ev_proc_exec", "ppid", 16),
    ("ev_proc_exec", "uid", 20),
    ("ev_proc_exec", "filename_len", 24),
    ("ev_proc_exec", "args_len", 26),
    ("ev_proc_exec", "filename", 32),
    ("ev_proc_exec", "args", 288),
    ("ev_proc_exec", "size", 800),
    ("ev_proc_exit", "exit_code", 16),
    ("ev_proc_exit", "size", 24),
    ("ev_sock_state", "conn_id", 16),
    ("ev_sock_state", "oldstate", 24),
    ("ev_sock_state", "newstate", 28),
    ("ev_sock_state", "size", 32),
    ("ev_dgram", "sk", 16),
    ("ev_dgram", "tid", 24),
    ("ev_dgram", "fd", 28),
    ("ev_dgram", "uid", 32),
    ("ev_dgram", "family", 36),
    ("ev_dgram", "flow", 38),
    ("ev_dgram", "syscall", 39),
    ("ev_dgram", "local_port", 40),
    ("ev_dgram", "remote_port", 42),
    ("ev_dgram", "len", 44),
    ("ev_dgram", "orig_len", 48),
    ("ev_dgram", "local_addr", 56),
    ("ev_dgram", "remote_addr", 72),
    ("ev_dgram", "comm", 88),
    ("ev_dgram", "data", 104),
    ("ev_dgram", "size", 104 + DGRAM_MAX),
];

/// Looks an offset up in `LAYOUT` at compile time, so the decoder below and the checked
/// table can never disagree.
/// A field's offset, always computed at compile time (a `const fn` called at run time
/// would search LAYOUT on every record).
macro_rules! at {
    ($s:literal, $f:literal) => {{
        const O: usize = off($s, $f);
        O
    }};
}

const fn off(s: &str, f: &str) -> usize {
    let mut i = 0;
    while i < LAYOUT.len() {
        let (ls, lf, o) = LAYOUT[i];
        if const_eq(ls, s) && const_eq(lf, f) {
            return o;
        }
        i += 1;
    }
    panic!("field not in LAYOUT");
}

/// Where a record's endpoint fields are (ev_conn_open and ev_dgram name them alike).
struct EndsAt {
    family: usize,
    local_addr: usize,
    local_port: usize,
    remote_addr: usize,
    remote_port: usize,
    comm: usize,
}

/// A record's endpoints and command name, decoded.
struct Ends {
    local_addr: String,
    local_port: u16,
    remote_addr: String,
    remote_port: u16,
    comm: String,
}

impl EndsAt {
    const fn of(s: &str) -> EndsAt {
        EndsAt {
            family: off(s, "family"),
            local_addr: off(s, "local_addr"),
            local_port: off(s, "local_port"),
            remote_addr: off(s, "remote_addr"),
            remote_port: off(s, "remote_port"),
            comm: off(s, "comm"),
        }
    }

    fn read(&self, raw: &[u8]) -> Ends {
        let fam = u16_at(raw, self.family);
        Ends {
            local_addr: format_addr(fam, &raw[self.local_addr..self.local_addr + 16]),
            local_port: u16_at(raw, self.local_port),
            remote_addr: format_addr(fam, &raw[self.remote_addr..self.remote_addr + 16]),
            remote_port: u16_at(raw, self.remote_port),
            comm: cstr(&raw[self.comm..self.comm + 16]),
        }
    }
}

const OPEN_ENDS: EndsAt = EndsAt::of("ev_conn_open");
const DGRAM_ENDS: EndsAt = EndsAt::of("ev_dgram");

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const OPEN_SIZE: usize = at!("ev_conn_open", "size");
const CLOSE_SIZE: usize = at!("ev_conn_close", "size");
const DATA_HDR: usize = at!("ev_data", "data");
const GAP_SIZE: usize = at!("ev_gap", "size");
const EXEC_SIZE: usize = at!("ev_proc_exec", "size");
const EXIT_SIZE: usize = at!("ev_proc_exit", "size");
const STATE_SIZE: usize = at!("ev_sock_state", "size");
const DGRAM_HDR: usize = at!("ev_dgram", "data");

#[derive(Debug, Clone, PartialEq)]
pub struct ConnOpen {
    pub conn_id: u64,
    pub tid: u32,
    pub fd: i32,
    pub uid: u32,
    pub role: u8,
    pub direction: u8,
    pub local_addr: String,
    pub local_port: u16,
    pub remote_addr: String,
    pub remote_port: u16,
    pub comm: String,
}

/// A UDP datagram to or from port 53 (EV_DGRAM), with both ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Dgram<'a> {
    pub sk: u64,
    pub tid: u32,
    pub fd: i32,
    pub uid: u32,
    pub flow: u8,
    pub local_addr: String,
    pub local_port: u16,
    pub remote_addr: String,
    pub remote_port: u16,
    /// The datagram's length on the wire (`data` may be shorter: cut in the kernel).
    pub orig_len: u32,
    pub comm: String,
    pub data: &'a [u8],
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    ConnOpen(ConnOpen),
    ConnClose {
        conn_id: u64,
        bytes_sent: u64,
        bytes_recv: u64,
        fd: i32,
        /// Where the TLS plaintext streams ended (send, recv).
        tls_end: [u64; 2],
        /// Payload bytes of the connection that reached user space in no data event (the
        /// kernel's books: ring full, process budget, gap events lost).
        lost: u64,
    },
    Data {
        conn_id: u64,
        offset: u64,
        flow: u8,
        source: u8,
        fd: i32,
        data: &'a [u8],
    },
    Gap {
        conn_id: u64,
        offset: u64,
        len: u64,
        flow: u8,
        source: u8,
        reason: u16,
    },
    ProcExec {
        ppid: u32,
        uid: u32,
        filename: String,
        argv: Vec<String>,
    },
    ProcExit {
        exit_code: i32,
    },
    SockState {
        conn_id: u64,
        oldstate: i32,
        newstate: i32,
    },
    Dgram(Dgram<'a>),
}

/// One decoded record: the header's pid and timestamp, and the event.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<'a> {
    pub kind: u32,
    pub pid: u32,
    pub ts_ns: u64,
    pub event: Event<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A `type` this build does not know.
    UnknownType(u32),
    /// Shorter than its type's struct (or than its own `len` for data).
    Short(u32),
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn i32_at(b: &[u8], o: usize) -> i32 {
    u32_at(b, o) as i32
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Text of a NUL-terminated C string field (lossy UTF-8).
fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Text form of a kernel address; IPv4-mapped IPv6 is shown as plain IPv4.
pub fn format_addr(family: u16, raw: &[u8]) -> String {
    if family == AF_INET {
        return std::net::Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]).to_string();
    }
    let mut a = [0u8; 16];
    a.copy_from_slice(&raw[..16]);
    let v6 = std::net::Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => v6.to_string(),
    }
}

/// One ring-buffer record → event. Never panics, whatever the bytes.
pub fn decode(raw: &[u8]) -> Result<Record<'_>, DecodeError> {
    if raw.len() < 4 {
        return Err(DecodeError::Short(0));
    }
    let kind = u32_at(raw, 0);
    let need = match kind {
        EV_CONN_OPEN => OPEN_SIZE,
        EV_CONN_CLOSE => CLOSE_SIZE,
        EV_DATA => DATA_HDR,
        EV_GAP => GAP_SIZE,
        EV_PROC_EXEC => EXEC_SIZE,
        EV_PROC_EXIT => EXIT_SIZE,
        EV_SOCK_STATE => STATE_SIZE,
        EV_DGRAM => DGRAM_HDR,
        other => return Err(DecodeError::UnknownType(other)),
    };
    if raw.len() < need {
        return Err(DecodeError::Short(kind));
    }
    let pid = u32_at(raw, 4);
    let ts_ns = u64_at(raw, 8);
    let event = match kind {
        EV_DATA => {
            let n = u32_at(raw, at!("ev_data", "len")) as usize;
            if raw.len() < DATA_HDR + n {
                return Err(DecodeError::Short(kind));
            }
            Event::Data {
                conn_id: u64_at(raw, at!("ev_data", "conn_id")),
                offset: u64_at(raw, at!("ev_data", "offset")),
                flow: raw[at!("ev_data", "flow")],
                source: raw[at!("ev_data", "source")],
                fd: i32_at(raw, at!("ev_data", "fd")),
                data: &raw[DATA_HDR..DATA_HDR + n],
            }
        }
        EV_CONN_OPEN => {
            let e = OPEN_ENDS.read(raw);
            Event::ConnOpen(ConnOpen {
                conn_id: u64_at(raw, at!("ev_conn_open", "conn_id")),
                tid: u32_at(raw, at!("ev_conn_open", "tid")),
                fd: i32_at(raw, at!("ev_conn_open", "fd")),
                uid: u32_at(raw, at!("ev_conn_open", "uid")),
                role: raw[at!("ev_conn_open", "role")],
                direction: raw[at!("ev_conn_open", "direction")],
                local_addr: e.local_addr,
                local_port: e.local_port,
                remote_addr: e.remote_addr,
                remote_port: e.remote_port,
                comm: e.comm,
            })
        }
        EV_CONN_CLOSE => Event::ConnClose {
            conn_id: u64_at(raw, at!("ev_conn_close", "conn_id")),
            bytes_sent: u64_at(raw, at!("ev_conn_close", "bytes_sent")),
            bytes_recv: u64_at(raw, at!("ev_conn_close", "bytes_recv")),
            fd: i32_at(raw, at!("ev_conn_close", "fd")),
            tls_end: [
                u64_at(raw, at!("ev_conn_close", "tls_sent")),
                u64_at(raw, at!("ev_conn_close", "tls_recv")),
            ],
            lost: u64_at(raw, at!("ev_conn_close", "lost")),
        },
        EV_GAP => Event::Gap {
            conn_id: u64_at(raw, at!("ev_gap", "conn_id")),
            offset: u64_at(raw, at!("ev_gap", "offset")),
            len: u64_at(raw, at!("ev_gap", "len")),
            flow: raw[at!("ev_gap", "flow")],
            source: raw[at!("ev_gap", "source")],
            reason: u16_at(raw, at!("ev_gap", "reason")),
        },
        EV_PROC_EXEC => {
            let fo = at!("ev_proc_exec", "filename");
            let ao = at!("ev_proc_exec", "args");
            let flen = (u16_at(raw, at!("ev_proc_exec", "filename_len")) as usize).min(ao - fo);
            let alen = (u16_at(raw, at!("ev_proc_exec", "args_len")) as usize).min(EXEC_SIZE - ao);
            let mut args = &raw[ao..ao + alen];
            while let [rest @ .., 0] = args {
                args = rest;
            }
            let argv = if args.is_empty() {
                Vec::new()
            } else {
                args.split(|&c| c == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            };
            Event::ProcExec {
                ppid: u32_at(raw, at!("ev_proc_exec", "ppid")),
                uid: u32_at(raw, at!("ev_proc_exec", "uid")),
                filename: String::from_utf8_lossy(&raw[fo..fo + flen]).into_owned(),
                argv,
            }
        }
        EV_PROC_EXIT => Event::ProcExit {
            exit_code: i32_at(raw, at!("ev_proc_exit", "exit_code")),
        },
        EV_SOCK_STATE => Event::SockState {
            conn_id: u64_at(raw, at!("ev_sock_state", "conn_id")),
            oldstate: i32_at(raw, at!("ev_sock_state", "oldstate")),
            newstate: i32_at(raw, at!("ev_sock_state", "newstate")),
        },
        EV_DGRAM => {
            let n = u32_at(raw, at!("ev_dgram", "len")) as usize;
            if n > DGRAM_MAX || raw.len() < DGRAM_HDR + n {
                return Err(DecodeError::Short(kind));
            }
            let e = DGRAM_ENDS.read(raw);
            Event::Dgram(Dgram {
                sk: u64_at(raw, at!("ev_dgram", "sk")),
                tid: u32_at(raw, at!("ev_dgram", "tid")),
                fd: i32_at(raw, at!("ev_dgram", "fd")),
                uid: u32_at(raw, at!("ev_dgram", "uid")),
                flow: raw[at!("ev_dgram", "flow")],
                local_addr: e.local_addr,
                local_port: e.local_port,
                remote_addr: e.remote_addr,
                remote_port: e.remote_port,
                orig_len: u32_at(raw, at!("ev_dgram", "orig_len")),
                comm: e.comm,
                data: &raw[DGRAM_HDR..DGRAM_HDR + n],
            })
        }
        _ => unreachable!("checked above"),
    };
    Ok(Record {
        kind,
        pid,
        ts_ns,
        event,
    })
}

/// Name of a kernel gap reason (GAP_* in events.h).
pub fn gap_reason(code: u16) -> &'static str {
    match code {
        1 => "ringbuf_full",
        2 => "chunk_budget",
        3 => "sendfile",
        4 => "read_fault",
        5 => "process_budget",
        6 => "sendmmsg",
        7 => "recvmmsg",
        8 => "splice",
        9 => "io_uring",
        _ => "unknown",
    }
}

/// Name of a direction class (DIR_* in events.h).
pub fn direction_name(d: u8) -> &'static str {
    match d {
        1 => "ingress",
        2 => "egress-internal",
        _ => "egress-external",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abi_json() -> String {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../src/plaintap/bpf/obj/abi.json"
        );
        std::fs::read_to_string(p).unwrap_or_else(|e| {
            panic!(
                "{p}: {e}; build the BPF side first (`make -C bpf`, done by scripts/bootstrap.sh)"
            )
        })
    }

    /// The value of `"field": N` inside the `"strct": {...}` object of abi.json (a flat,
    /// machine-written file: a tiny scanner is enough and keeps the crate free of serde).
    fn lookup(json: &str, strct: &str, field: &str) -> Option<usize> {
        let start = json.find(&format!("\"{strct}\": {{"))?;
        let body = &json[start..start + json[start..].find('}')?];
        let key = format!("\"{field}\": ");
        let at = body.find(&key)? + key.len();
        let digits: String = body[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    }

    #[test]
    fn layout_matches_the_compiled_header() {
        let json = abi_json();
        for (s, f, o) in LAYOUT {
            if *s == "ev_header" && *f == "size" {
                assert_eq!(lookup(&json, s, "size"), Some(*o));
                continue;
            }
            assert_eq!(lookup(&json, s, f), Some(*o), "{s}.{f}");
        }
        let chunk = json.find("\"DATA_CHUNK\": ").unwrap() + 14;
        assert!(json[chunk..].starts_with(&DATA_CHUNK.to_string()));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_u64;
        for n in 0..2000usize {
            let mut b = vec![0u8; n % 900];
            for x in b.iter_mut() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                *x = (seed >> 33) as u8;
            }
            if b.len() >= 4 {
                b[0] = (n % 10) as u8;
                b[1] = 0;
                b[2] = 0;
                b[3] = 0;
            }
            let _ = decode(&b);
        }
    }

    #[test]
    fn addresses() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(format_addr(2, &v4), "127.0.0.1");
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(format_addr(10, &mapped), "10.1.2.3");
        let mut one = [0u8; 16];
        one[15] = 1;
        assert_eq!(format_addr(10, &one), "::1");
    }
}
