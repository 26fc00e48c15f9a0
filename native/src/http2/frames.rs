//! HTTP/2 frame headers and bodies (RFC 9113 §4, §6): validation of a complete non-DATA
//! frame, and the plausibility checks used to find a frame boundary after a mid-stream
//! join or a loss of sync.
use crate::model::Side;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const PRIORITY: u8 = 2;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PUSH_PROMISE: u8 = 5;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;
pub const ALTSVC: u8 = 10;

pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

/// When hunting for a frame boundary, a header claiming a frame longer than the default
/// SETTINGS_MAX_FRAME_SIZE, or a stream id no real connection reaches, is not believed.
pub const MAX_HUNT_FRAME: usize = 16384;
pub const MAX_HUNT_STREAM_ID: u32 = 1 << 24;

const DEFINED_FLAGS: [u8; 10] = [0x09, 0x2D, 0x00, 0x00, 0x01, 0x0C, 0x01, 0x00, 0x00, 0x04];

/// A 9-byte frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub length: usize,
    pub ftype: u8,
    pub flags: u8,
    pub sid: u32,
}

/// The frame header at `buf[p..p + 9]` (the caller checked there are 9 bytes).
pub fn head(buf: &[u8], p: usize) -> Head {
    Head {
        length: (buf[p] as usize) << 16 | (buf[p + 1] as usize) << 8 | buf[p + 2] as usize,
        ftype: buf[p + 3],
        flags: buf[p + 4],
        sid: u32::from_be_bytes([buf[p + 5] & 0x7F, buf[p + 6], buf[p + 7], buf[p + 8]]),
    }
}

pub fn error_name(code: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    match NAMES.get(code as usize) {
        Some(n) => (*n).to_string(),
        None => format!("{code:#x}"),
    }
}

/// Is the header at `buf[p..]` one `side` could really send? Strict: every field must be
/// consistent (type known, only defined flags, stream id where the type needs one, fixed
/// lengths, SETTINGS multiple of 6, ...). None when it is not, or fewer than 9 bytes.
pub fn plausible_frame_header(buf: &[u8], p: usize, side: Side) -> Option<Head> {
    if buf.len() < p.checked_add(9)? {
        return None;
    }
    let h = head(buf, p);
    if buf[p + 5] & 0x80 != 0 || h.ftype > CONTINUATION || h.length > MAX_HUNT_FRAME {
        return None;
    }
    if h.flags & !DEFINED_FLAGS[h.ftype as usize] != 0 {
        return None;
    }
    if h.sid >= MAX_HUNT_STREAM_ID {
        return None;
    }
    let needs_stream = match h.ftype {
        SETTINGS | PING | GOAWAY => Some(false),
        WINDOW_UPDATE => None,
        _ => Some(true),
    };
    match needs_stream {
        Some(true) if h.sid == 0 => return None,
        Some(false) if h.sid != 0 => return None,
        _ => {}
    }
    let fixed = match h.ftype {
        PRIORITY => Some(5),
        RST_STREAM | WINDOW_UPDATE => Some(4),
        PING => Some(8),
        _ => None,
    };
    if fixed.is_some_and(|f| h.length != f) {
        return None;
    }
    if h.ftype == SETTINGS
        && (!h.length.is_multiple_of(6) || (h.flags & FLAG_ACK != 0 && h.length != 0))
    {
        return None;
    }
    if h.ftype == GOAWAY && h.length < 8 {
        return None;
    }
    if h.ftype == HEADERS && side == Side::Client && h.sid & 1 == 0 {
        return None;
    }
    if h.ftype == PUSH_PROMISE && (side == Side::Client || h.length < 4) {
        return None;
    }
    if h.ftype == DATA && h.flags & FLAG_PADDED != 0 && h.length == 0 {
        return None;
    }
    Some(h)
}

/// Is `p` a frame boundary? Some(true/false), or None when more bytes (before `limit`)
/// are needed. Two consecutive plausible headers are required; a CONTINUATION cannot
/// start a chain (its HEADERS is missing), and a HEADERS without END_HEADERS must be
/// followed by a CONTINUATION of the same stream.
pub fn frame_chain_verdict(buf: &[u8], p: usize, limit: usize, side: Side) -> Option<bool> {
    let limit = limit.min(buf.len());
    if limit < p || limit - p < 9 {
        return None;
    }
    let Some(first) = plausible_frame_header(&buf[..limit], p, side) else {
        return Some(false);
    };
    if first.ftype == CONTINUATION {
        return Some(false);
    }
    let q = p + 9 + first.length;
    if limit < q || limit - q < 9 {
        return None;
    }
    let Some(second) = plausible_frame_header(&buf[..limit], q, side) else {
        return Some(false);
    };
    if (first.ftype == HEADERS || first.ftype == PUSH_PROMISE)
        && first.flags & FLAG_END_HEADERS == 0
    {
        return Some(second.ftype == CONTINUATION && second.sid == first.sid);
    }
    Some(second.ftype != CONTINUATION)
}

/// What a complete, valid non-DATA frame carries (ranges index the frame's payload).
#[derive(Debug, PartialEq, Eq)]
pub enum Payload {
    /// HEADERS / CONTINUATION: the header block fragment.
    Fragment(usize, usize),
    PushPromise {
        start: usize,
        end: usize,
        promised: u32,
    },
    Rst(u32),
    /// Not an ACK: (identifier, value) pairs.
    Settings,
    GoAway {
        last: u32,
        code: u32,
    },
    /// PRIORITY, PING, WINDOW_UPDATE, ALTSVC, SETTINGS ACK, extension frames.
    Nothing,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Validates a complete non-DATA frame as a strict reader would (stream association,
/// lengths, padding); Err says what is wrong.
pub fn parse(h: Head, payload: &[u8]) -> Result<Payload, String> {
    let n = payload.len();
    let name = match h.ftype {
        HEADERS => "HEADERS",
        PRIORITY => "PRIORITY",
        RST_STREAM => "RST_STREAM",
        SETTINGS => "SETTINGS",
        PUSH_PROMISE => "PUSH_PROMISE",
        PING => "PING",
        GOAWAY => "GOAWAY",
        WINDOW_UPDATE => "WINDOW_UPDATE",
        CONTINUATION => "CONTINUATION",
        ALTSVC => "ALTSVC",
        _ => "extension",
    };
    match h.ftype {
        HEADERS | PRIORITY | RST_STREAM | PUSH_PROMISE | CONTINUATION if h.sid == 0 => {
            return Err(format!("{name} frame on stream 0"));
        }
        SETTINGS | PING | GOAWAY if h.sid != 0 => {
            return Err(format!("{name} frame on stream {} (must be 0)", h.sid));
        }
        _ => {}
    }
    let padded = h.flags & FLAG_PADDED != 0;
    match h.ftype {
        HEADERS => {
            let (skip, pad) = if padded {
                match payload.first() {
                    Some(&p) => (1, p as usize),
                    None => return Err("invalid padding".into()),
                }
            } else {
                (0, 0)
            };
            let body_len = n - skip;
            let prio = if h.flags & FLAG_PRIORITY != 0 {
                if body_len < 5 {
                    return Err("invalid priority data".into());
                }
                5
            } else {
                0
            };
            if pad != 0 && pad >= body_len {
                return Err("padding is too long".into());
            }
            let start = skip + prio;
            let end = (n - pad).max(start);
            Ok(Payload::Fragment(start, end))
        }
        CONTINUATION => Ok(Payload::Fragment(0, n)),
        PRIORITY if n != 5 => Err(format!("PRIORITY frame of {n} bytes (must be 5)")),
        RST_STREAM if n != 4 => Err(format!("RST_STREAM frame of {n} bytes (must be 4)")),
        RST_STREAM => Ok(Payload::Rst(be32(payload))),
        SETTINGS if h.flags & FLAG_ACK != 0 && n > 0 => {
            Err(format!("SETTINGS ack frame with a {n}-byte payload"))
        }
        SETTINGS if !n.is_multiple_of(6) => Err(format!("SETTINGS frame of {n} bytes")),
        SETTINGS if h.flags & FLAG_ACK != 0 => Ok(Payload::Nothing),
        SETTINGS => Ok(Payload::Settings),
        PUSH_PROMISE => {
            let (skip, pad) = if padded {
                match payload.first() {
                    Some(&p) => (1, p as usize),
                    None => return Err("invalid padding".into()),
                }
            } else {
                (0, 0)
            };
            if n < skip + 4 {
                return Err("PUSH_PROMISE frame too short".into());
            }
            let promised = be32(&payload[skip..]);
            if promised == 0 || !promised.is_multiple_of(2) {
                return Err(format!(
                    "invalid PUSH_PROMISE promised stream id: {promised}"
                ));
            }
            if pad != 0 && pad >= n {
                return Err("padding is too long".into());
            }
            let start = skip + 4;
            let end = (n - pad).max(start);
            Ok(Payload::PushPromise {
                start,
                end,
                promised,
            })
        }
        PING if n != 8 => Err(format!("PING frame of {n} bytes (must be 8)")),
        GOAWAY if n < 8 => Err(format!("GOAWAY frame of {n} bytes")),
        GOAWAY => Ok(Payload::GoAway {
            last: be32(payload),
            code: be32(&payload[4..]),
        }),
        WINDOW_UPDATE if n != 4 => Err(format!("WINDOW_UPDATE frame of {n} bytes (must be 4)")),
        WINDOW_UPDATE => {
            let inc = be32(payload);
            if !(1..=0x7FFF_FFFF).contains(&inc) {
                return Err(format!("WINDOW_UPDATE increment {inc}"));
            }
            Ok(Payload::Nothing)
        }
        ALTSVC => {
            if n < 2 || 2 + ((payload[0] as usize) << 8 | payload[1] as usize) > n {
                return Err("invalid ALTSVC frame body".into());
            }
            Ok(Payload::Nothing)
        }
        _ => Ok(Payload::Nothing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize, t: u8, flags: u8, sid: u32) -> Vec<u8> {
        let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, t, flags];
        v.extend(sid.to_be_bytes());
        v.extend(std::iter::repeat_n(0u8, len));
        v
    }

    #[test]
    fn chain_needs_two_plausible_headers() {
        let mut b = frame(8, PING, 0, 0);
        assert_eq!(frame_chain_verdict(&b, 0, b.len(), Side::Server), None);
        b.extend(frame(4, WINDOW_UPDATE, 0, 1));
        assert_eq!(
            frame_chain_verdict(&b, 0, b.len(), Side::Server),
            Some(true)
        );
        let c = frame(8, PING, 0, 3);
        assert_eq!(
            frame_chain_verdict(&c, 0, c.len(), Side::Server),
            Some(false)
        );
        let mut h = frame(3, HEADERS, 0, 1);
        h.extend(frame(1, DATA, 0, 1));
        assert_eq!(
            frame_chain_verdict(&h, 0, h.len(), Side::Client),
            Some(false)
        );
        assert_eq!(frame_chain_verdict(&h, 5, 2, Side::Client), None);
    }

    #[test]
    fn parse_checks_like_a_strict_reader() {
        let h = |len, t, flags, sid| Head {
            length: len,
            ftype: t,
            flags,
            sid,
        };
        assert!(parse(h(0, HEADERS, 0, 0), &[]).is_err());
        assert!(parse(h(8, PING, 0, 1), &[0; 8]).is_err());
        assert_eq!(
            parse(h(3, HEADERS, FLAG_PADDED, 1), &[1, 7, 0]),
            Ok(Payload::Fragment(1, 2))
        );
        assert!(parse(h(2, HEADERS, FLAG_PADDED, 1), &[1, 7]).is_err());
        assert!(parse(h(4, WINDOW_UPDATE, 0, 0), &[0, 0, 0, 0]).is_err());
        assert!(parse(h(5, PUSH_PROMISE, 0, 1), &[0, 0, 0, 3, 9]).is_err());
        assert_eq!(
            parse(h(8, GOAWAY, 0, 0), &[0, 0, 0, 5, 0, 0, 0, 8]),
            Ok(Payload::GoAway { last: 5, code: 8 })
        );
        assert_eq!(error_name(8), "CANCEL");
        assert_eq!(error_name(255), "0xff");
    }
}
