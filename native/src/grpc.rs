//! gRPC over HTTP/2: message framing counts and the call's names and status.
//!
//! `GrpcFramer` walks the 5-byte length prefix (1 byte compressed flag, 4 bytes big-endian
//! length) of each message in one direction, incrementally, so counts and sizes are right
//! whatever the DATA frame and capture chunk boundaries, and past the body limit. A capture
//! gap that cannot be skipped exactly (it covers a prefix) puts it out of sync: the counts
//! are then lower bounds (`GrpcInfo::framing_lost`).
//!
//! `grpc_info` names the call from `:path` (`/package.Service/Method`) and takes the status
//! from `grpc-status` / `grpc-message` (percent-decoded) in the trailers, or in the
//! response headers of a trailers-only response.
use crate::model::{GrpcInfo, Message};

#[derive(Clone, Debug, Default)]
pub struct GrpcFramer {
    pub messages: u64,
    pub nbytes: u64,
    /// Payload bytes left in the current message.
    remaining: u64,
    /// Partial 5-byte prefix.
    head: [u8; 5],
    head_len: u8,
    pub out_of_sync: bool,
}

impl GrpcFramer {
    pub fn in_sync(&self) -> bool {
        !self.out_of_sync
    }

    pub fn feed(&mut self, data: &[u8]) {
        if self.out_of_sync {
            return;
        }
        let mut i = 0;
        let n = data.len();
        while i < n {
            if self.remaining > 0 {
                let take = self.remaining.min((n - i) as u64);
                self.remaining -= take;
                i += take as usize;
                continue;
            }
            let need = 5 - self.head_len as usize;
            let take = need.min(n - i);
            let h = self.head_len as usize;
            self.head[h..h + take].copy_from_slice(&data[i..i + take]);
            self.head_len += take as u8;
            i += take;
            if self.head_len == 5 {
                let len =
                    u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]]);
                self.head_len = 0;
                self.messages += 1;
                self.nbytes += len as u64;
                self.remaining = len as u64;
            }
        }
    }

    /// `n` bytes of this direction were lost: skip them if they fall inside a message's
    /// payload, else lose sync.
    pub fn lost(&mut self, n: u64) {
        if !self.out_of_sync && self.head_len == 0 && n <= self.remaining {
            self.remaining -= n;
        } else {
            self.out_of_sync = true;
        }
    }
}

/// `content-type: application/grpc*` (case-insensitive).
pub fn is_grpc(content_type: Option<&[u8]>) -> bool {
    const P: &[u8] = b"application/grpc";
    matches!(content_type, Some(ct) if ct.len() >= P.len() && ct[..P.len()].eq_ignore_ascii_case(P))
}

/// Latin-1 bytes to a String (every byte the code point of the same value).
fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-decoding as Python's `urllib.parse.unquote` does it on a Latin-1 string: runs
/// of ASCII are percent-decoded to bytes and read as UTF-8 (invalid sequences replaced);
/// other characters are kept as they are.
pub fn unquote(v: &[u8]) -> String {
    let mut out = String::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if !v[i].is_ascii() {
            out.push(v[i] as char);
            i += 1;
            continue;
        }
        let start = i;
        while i < v.len() && v[i].is_ascii() {
            i += 1;
        }
        let run = &v[start..i];
        if !run.contains(&b'%') {
            out.push_str(std::str::from_utf8(run).unwrap_or_default());
            continue;
        }
        let mut bytes = Vec::with_capacity(run.len());
        let mut j = 0;
        while j < run.len() {
            if run[j] == b'%' && j + 2 < run.len() {
                if let (Some(a), Some(b)) = (hexval(run[j + 1]), hexval(run[j + 2])) {
                    bytes.push(a << 4 | b);
                    j += 3;
                    continue;
                }
            }
            bytes.push(run[j]);
            j += 1;
        }
        out.push_str(&String::from_utf8_lossy(&bytes));
    }
    out
}

/// The call's facts from the request's `:path`, the response's status fields and both
/// directions' framers.
pub fn grpc_info(
    req: &Message,
    resp: Option<&Message>,
    req_f: &GrpcFramer,
    resp_f: &GrpcFramer,
) -> GrpcInfo {
    let mut service = None;
    let mut method = None;
    let path = req.target.as_deref().unwrap_or(b"");
    if path.first() == Some(&b'/') && path.iter().filter(|&&c| c == b'/').count() == 2 {
        let rest = &path[1..];
        if let Some(k) = rest.iter().position(|&c| c == b'/') {
            if k > 0 {
                service = Some(latin1(&rest[..k]));
            }
            if k + 1 < rest.len() {
                method = Some(latin1(&rest[k + 1..]));
            }
        }
    }
    let mut code = None;
    let mut message = None;
    if let Some(resp) = resp {
        for fields in [&resp.trailers, &resp.headers] {
            // The last grpc-status / grpc-message of a block wins.
            for (k, v) in fields.iter() {
                if k.as_slice() == b"grpc-status" {
                    code = parse_code(v);
                } else if k.as_slice() == b"grpc-message" {
                    message = Some(unquote(v));
                }
            }
            if code.is_some() {
                break;
            }
        }
    }
    GrpcInfo {
        service,
        method,
        status_code: code,
        status_message: message,
        request_messages: req_f.messages,
        response_messages: resp_f.messages,
        request_bytes: req_f.nbytes,
        response_bytes: resp_f.nbytes,
        framing_lost: !(req_f.in_sync() && resp_f.in_sync()),
    }
}

/// `int(value) if value.isdigit() else None` (ASCII digits; too large: None).
fn parse_code(v: &[u8]) -> Option<i64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(prefix_len: u32, payload: usize) -> Vec<u8> {
        let mut m = vec![0];
        m.extend(prefix_len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, payload));
        m
    }

    #[test]
    fn framer_counts_across_any_split() {
        let mut all = msg(3, 3);
        all.extend(msg(0, 0));
        all.extend(msg(10, 10));
        for cut in 0..all.len() {
            let mut f = GrpcFramer::default();
            f.feed(&all[..cut]);
            f.feed(&all[cut..]);
            assert_eq!((f.messages, f.nbytes), (3, 13));
        }
    }

    #[test]
    fn framer_gap_inside_payload_keeps_sync_else_loses_it() {
        let mut f = GrpcFramer::default();
        f.feed(&msg(100, 10));
        f.lost(50);
        assert!(f.in_sync());
        f.lost(41);
        assert!(!f.in_sync());
    }

    #[test]
    fn unquote_like_python() {
        assert_eq!(unquote(b"unavailable%20now"), "unavailable now");
        assert_eq!(unquote(b"%E2%9C%93 ok"), "\u{2713} ok");
        assert_eq!(unquote(b"bad%zz%4"), "bad%zz%4");
        assert_eq!(unquote(b"%ff"), "\u{fffd}");
        assert_eq!(unquote(b"caf\xe9%21"), "caf\u{e9}!");
    }

    #[test]
    fn names_and_status() {
        let req = Message {
            target: Some(b"/pkg.S/M".to_vec()),
            ..Default::default()
        };
        let resp = Message {
            headers: vec![(b"grpc-status".to_vec(), b"12".to_vec())],
            ..Default::default()
        };
        let f = GrpcFramer::default();
        let g = grpc_info(&req, Some(&resp), &f, &f);
        assert_eq!(g.service.as_deref(), Some("pkg.S"));
        assert_eq!(g.method.as_deref(), Some("M"));
        assert_eq!(g.status_code, Some(12));
        let req = Message {
            target: Some(b"/a/b/c".to_vec()),
            ..Default::default()
        };
        let g = grpc_info(&req, None, &f, &f);
        assert_eq!((g.service, g.method, g.status_code), (None, None, None));
    }
}
