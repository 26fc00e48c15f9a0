//! HTTP/1 syntax, strict like the servers observed (RFC 9112): start-line recognition for
//! resynchronisation, header sections (parsed by `httparse`, plus the checks it leaves to
//! its caller), chunk-size lines, trailer sections and the body framing rules (§6.3).
use crate::model::Header;

/// Request methods llhttp knows in HTTP mode: only these are recognised when hunting for
/// a request line after a loss (a request head at a known boundary may use any token).
pub const METHODS: [&[u8]; 35] = [
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"SEARCH",
    b"REPORT",
    b"PURGE",
    b"QUERY",
    b"MKCALENDAR",
    b"LINK",
    b"UNLINK",
    b"BIND",
    b"REBIND",
    b"UNBIND",
    b"ACL",
    b"MERGE",
    b"CHECKOUT",
    b"MKACTIVITY",
    b"M-SEARCH",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"SOURCE",
];
pub const MAX_TARGET: usize = 16384;
const MAX_METHOD: usize = 11;
const MAX_REASON: usize = 1024;

/// Result of matching a start line at a position.
#[derive(Debug, PartialEq, Eq)]
pub enum LineMatch {
    /// A whole start line (its length, CRLF included).
    Yes(usize),
    /// Not one, whatever follows.
    No,
    /// A prefix of one: more bytes decide.
    More,
}

fn is_method(m: &[u8]) -> bool {
    METHODS.contains(&m)
}

/// Does `b` continue `lit` as far as it goes: Yes(len of lit) / More / No.
fn literal(b: &[u8], lit: &[u8]) -> LineMatch {
    let n = b.len().min(lit.len());
    if b[..n] != lit[..n] {
        LineMatch::No
    } else if n < lit.len() {
        LineMatch::More
    } else {
        LineMatch::Yes(lit.len())
    }
}

/// `method SP target SP HTTP/1.[01] CRLF` (known method, target of visible ASCII).
pub fn match_request_line(b: &[u8]) -> LineMatch {
    let sp = match b.iter().take(MAX_METHOD + 1).position(|&c| c == b' ') {
        Some(i) => i,
        None => {
            let head = &b[..b.len().min(MAX_METHOD + 1)];
            return if b.len() <= MAX_METHOD && METHODS.iter().any(|m| m.starts_with(head)) {
                LineMatch::More
            } else {
                LineMatch::No
            };
        }
    };
    if !is_method(&b[..sp]) {
        return LineMatch::No;
    }
    let rest = &b[sp + 1..];
    let mut t = 0;
    while t < rest.len() && t <= MAX_TARGET {
        let c = rest[t];
        if c == b' ' {
            break;
        }
        if !(0x21..=0x7e).contains(&c) {
            return LineMatch::No;
        }
        t += 1;
    }
    if t > MAX_TARGET {
        return LineMatch::No;
    }
    if t == rest.len() {
        return LineMatch::More;
    }
    if t == 0 {
        return LineMatch::No;
    }
    let tail = &rest[t + 1..];
    match literal(tail, b"HTTP/1.") {
        LineMatch::Yes(_) => {}
        other => return other,
    }
    let after = &tail[7..];
    match after.first() {
        None => return LineMatch::More,
        Some(b'0' | b'1') => {}
        Some(_) => return LineMatch::No,
    }
    match literal(&after[1..], b"\r\n") {
        LineMatch::Yes(_) => LineMatch::Yes(sp + 1 + t + 1 + 7 + 1 + 2),
        other => other,
    }
}

/// `HTTP/1.[01] SP [1-5]DIGIT DIGIT [SP reason] CRLF` (reason at most 1024 bytes).
pub fn match_status_line(b: &[u8]) -> LineMatch {
    match literal(b, b"HTTP/1.") {
        LineMatch::Yes(_) => {}
        other => return other,
    }
    let mut i = 7;
    let pattern: [fn(u8) -> bool; 5] = [
        |c| c == b'0' || c == b'1',
        |c| c == b' ',
        |c| (b'1'..=b'5').contains(&c),
        |c| c.is_ascii_digit(),
        |c| c.is_ascii_digit(),
    ];
    for ok in pattern {
        match b.get(i) {
            None => return LineMatch::More,
            Some(&c) if ok(c) => i += 1,
            Some(_) => return LineMatch::No,
        }
    }
    match b.get(i) {
        None => return LineMatch::More,
        Some(b'\r') => {}
        Some(b' ') => {
            i += 1;
            let start = i;
            while i < b.len() && b[i] != b'\r' && b[i] != b'\n' {
                if i - start >= MAX_REASON {
                    return LineMatch::No;
                }
                i += 1;
            }
            if i == b.len() {
                return LineMatch::More;
            }
            if b[i] == b'\n' {
                return LineMatch::No;
            }
        }
        Some(_) => return LineMatch::No,
    }
    match literal(&b[i..], b"\r\n") {
        LineMatch::Yes(_) => LineMatch::Yes(i + 2),
        other => other,
    }
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Vec<u8>,
    pub target: Vec<u8>,
    pub version: &'static str,
    pub headers: Vec<Header>,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: Vec<u8>,
    pub version: &'static str,
    pub headers: Vec<Header>,
}

const STACK_HEADERS: usize = 64;

/// Line endings must be CRLF: a bare LF or bare CR anywhere in a header section is an
/// error (a strict server rejects it; a lenient one splits lines differently from us).
fn check_line_endings(block: &[u8]) -> Result<(), &'static str> {
    let mut i = 0;
    while let Some(off) = memchr::memchr2(b'\r', b'\n', &block[i..]) {
        let at = i + off;
        if block[at] == b'\n' {
            return Err("bare LF");
        }
        if block.get(at + 1) != Some(&b'\n') {
            return Err("bare CR");
        }
        i = at + 2;
    }
    Ok(())
}

fn version_name(v: Option<u8>) -> Result<&'static str, String> {
    match v {
        Some(0) => Ok("1.0"),
        Some(1) => Ok("1.1"),
        other => Err(format!("unsupported HTTP version {other:?}")),
    }
}

fn count_lines(block: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', block).count()
}

fn collect_headers(hs: &[httparse::Header<'_>]) -> Vec<Header> {
    hs.iter()
        .map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec()))
        .collect()
}

/// Parse a request header section (`block` ends with CRLF CRLF).
pub fn parse_request_head(block: &[u8]) -> Result<RequestHead, String> {
    if let Err(e) = check_line_endings(block) {
        return Err(format!("malformed request head: {e}"));
    }
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap;
    let mut req = httparse::Request::new(&mut stack);
    let mut status = req.parse(block);
    if matches!(status, Err(httparse::Error::TooManyHeaders)) {
        heap = vec![httparse::EMPTY_HEADER; count_lines(block)];
        req = httparse::Request::new(&mut heap);
        status = req.parse(block);
    }
    match status {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err("malformed request head: incomplete".to_string())
        }
        Err(e) => return Err(format!("malformed request head: {e}")),
    }
    // Any token is a method (RFC 9110 §9.1): servers answer an unknown one (405/501) and
    // keep the connection, so it is a request they received. The target is what httparse
    // accepts (visible ASCII, or UTF-8).
    let method = req.method.unwrap_or("").as_bytes();
    let target = req.path.unwrap_or("").as_bytes();
    if method.is_empty() || target.is_empty() || target.len() > MAX_TARGET {
        return Err("malformed request head: invalid request line".to_string());
    }
    Ok(RequestHead {
        method: method.to_vec(),
        target: target.to_vec(),
        version: version_name(req.version)?,
        headers: collect_headers(req.headers),
    })
}

/// Parse a response header section (`block` ends with CRLF CRLF).
pub fn parse_response_head(block: &[u8]) -> Result<ResponseHead, String> {
    if let Err(e) = check_line_endings(block) {
        return Err(format!("malformed response head: {e}"));
    }
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap;
    let mut resp = httparse::Response::new(&mut stack);
    let mut status = resp.parse(block);
    if matches!(status, Err(httparse::Error::TooManyHeaders)) {
        heap = vec![httparse::EMPTY_HEADER; count_lines(block)];
        resp = httparse::Response::new(&mut heap);
        status = resp.parse(block);
    }
    match status {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err("malformed response head: incomplete".to_string())
        }
        Err(e) => return Err(format!("malformed response head: {e}")),
    }
    let code = resp.code.unwrap_or(0);
    if !(100..=599).contains(&code) {
        return Err(format!("malformed response head: status {code}"));
    }
    // The reason phrase as sent (httparse drops one that is not UTF-8).
    let line_end = memchr::memchr(b'\r', block).unwrap_or(block.len());
    let line = &block[..line_end];
    let reason = if line.len() > 13 {
        line[13..].to_vec()
    } else {
        Vec::new()
    };
    Ok(ResponseHead {
        status: code,
        reason,
        version: version_name(resp.version)?,
        headers: collect_headers(resp.headers),
    })
}

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    Eof,
}

fn lower_eq(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|c| *c != b' ' && *c != b'\t')
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|c| *c != b' ' && *c != b'\t')
        .map_or(s, |i| i + 1);
    &v[s..e.max(s)]
}

/// Body framing from the header fields; `Err` says why the body cannot be framed.
/// Requests with both Transfer-Encoding and Content-Length are refused (a smuggling
/// pattern); in a response Transfer-Encoding wins, as a client reads it.
pub fn body_framing(headers: &[Header], response: bool) -> Result<Framing, String> {
    let mut te: Vec<&[u8]> = Vec::new();
    let mut lengths: Vec<&[u8]> = Vec::new();
    for (k, v) in headers {
        if lower_eq(k, b"transfer-encoding") {
            te.push(v);
        } else if lower_eq(k, b"content-length") {
            lengths.push(v);
        }
    }
    if !te.is_empty() {
        if !response && !lengths.is_empty() {
            return Err("transfer-encoding with content-length".to_string());
        }
        let last = te
            .iter()
            .flat_map(|v| v.split(|c| *c == b','))
            .map(trim)
            .rfind(|c| !c.is_empty());
        if last.is_some_and(|c| lower_eq(c, b"chunked")) {
            return Ok(Framing::Chunked);
        }
        if response {
            return Ok(Framing::Eof);
        }
        let joined: Vec<u8> = te.join(&b", "[..]);
        return Err(format!(
            "transfer-encoding {:?}",
            String::from_utf8_lossy(&joined)
        ));
    }
    if !lengths.is_empty() {
        let mut value: Option<&[u8]> = None;
        for v in lengths.iter().flat_map(|v| v.split(|c| *c == b',')) {
            let v = trim(v);
            if value.is_some_and(|x| x != v) {
                value = None;
                break;
            }
            value = Some(v);
        }
        let joined: Vec<u8> = lengths.join(&b", "[..]);
        let bad = || {
            format!(
                "content-length {:?}",
                String::from_utf8_lossy(&joined).into_owned()
            )
        };
        let v = value.ok_or_else(bad)?;
        if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let size = v.iter().fold(0u64, |a, c| a * 10 + u64::from(c - b'0'));
        return Ok(if size > 0 {
            Framing::Length(size)
        } else {
            Framing::None
        });
    }
    Ok(if response {
        Framing::Eof
    } else {
        Framing::None
    })
}

/// Does the request ask to switch protocols (`Upgrade` plus `Connection: upgrade`)?
pub fn wants_upgrade(headers: &[Header]) -> bool {
    let mut upgrade = false;
    let mut conn_upgrade = false;
    for (k, v) in headers {
        if lower_eq(k, b"upgrade") {
            upgrade = true;
        } else if lower_eq(k, b"connection") {
            conn_upgrade |= v
                .split(|c| *c == b',')
                .any(|t| lower_eq(trim(t), b"upgrade"));
        }
    }
    upgrade && conn_upgrade
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// A chunk-size line's content (CRLF excluded), RFC 9112 §7.1:
/// `1*HEXDIG *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`.
/// Whitespace is allowed only around `;` and `=`; the size fits in 16 hex digits.
pub fn parse_chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("invalid chunk size");
    }
    let size = line[..digits].iter().fold(0u64, |a, c| {
        let d = (*c as char).to_digit(16).unwrap_or(0);
        (a << 4) | u64::from(d)
    });
    let mut i = digits;
    let n = line.len();
    while i < n {
        // BWS ";" BWS
        while i < n && is_ws(line[i]) {
            i += 1;
        }
        if i == n {
            return Err("whitespace after chunk size");
        }
        if line[i] != b';' {
            return Err("invalid chunk size");
        }
        i += 1;
        while i < n && is_ws(line[i]) {
            i += 1;
        }
        let name = line[i..].iter().take_while(|c| is_tchar(**c)).count();
        if name == 0 {
            return Err("invalid chunk extension");
        }
        i += name;
        let mut j = i;
        while j < n && is_ws(line[j]) {
            j += 1;
        }
        if j < n && line[j] == b'=' {
            i = j + 1;
            while i < n && is_ws(line[i]) {
                i += 1;
            }
            if i < n && line[i] == b'"' {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err("invalid chunk extension"),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => match line.get(i + 1) {
                            Some(&c) if c == b'\t' || c == b' ' || c >= 0x21 && c != 0x7f => i += 2,
                            _ => return Err("invalid chunk extension"),
                        },
                        Some(&c) if c == b'\t' || c == b' ' || c >= 0x21 && c != 0x7f => i += 1,
                        Some(_) => return Err("invalid chunk extension"),
                    }
                }
            } else {
                let value = line[i..].iter().take_while(|c| is_tchar(**c)).count();
                if value == 0 {
                    return Err("invalid chunk extension");
                }
                i += value;
            }
        }
    }
    Ok(size)
}

/// A trailer section's fields (`block` is the lines without the final empty line, each
/// line without its CRLF, joined by CRLF); `Err` for a malformed field.
pub fn parse_trailers(block: &[u8]) -> Result<Vec<Header>, &'static str> {
    let mut out = Vec::new();
    for line in block.split(|c| *c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line
            .iter()
            .position(|c| *c == b':')
            .ok_or("malformed trailer field")?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|c| is_tchar(*c)) {
            return Err("malformed trailer field");
        }
        let value = &line[colon + 1..];
        if value.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f) {
            return Err("malformed trailer field");
        }
        out.push((name.to_vec(), trim(value).to_vec()));
    }
    Ok(out)
}
