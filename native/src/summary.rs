//! The `artifact_record` summary of a transaction, built natively (RECORDS.md), for the
//! common case only: the attributes `records.transaction.artifact_record` would give the
//! redacted view of the transaction, in the same order, with the same types.
//!
//! Python decides when this path may be used (`dataplane.Pipeline`: the only plugin is
//! `http_capture` at a fixed level that stores no objects) and gives the redaction policy
//! (`Summary`). Anything unusual is declined (`None`), and that transaction goes through
//! the Python plugins as before: a request target that is not origin-form (`/…`), CONNECT,
//! non-ASCII bytes where Python's Unicode rules (lower-casing, stripping, `isdigit`) would
//! matter, a percent-encoded query parameter name. So the Python builders stay the
//! definition, and this is only a faster way to the same bytes, checked by unit tests
//! that compare both on the same transactions.
//!
//! What Python adds afterwards (per transaction, cheap): the connection's `process.*`,
//! `container.*`, `k8s.*` attributes and the wall-clock time.
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::conn::ConnInfo;
use crate::model::{Message, Transaction};
use crate::py_parser::latin1;

pub const MASK: &str = "[REDACTED]";

/// The redaction policy as far as the summary needs it (records/redact.py `Redaction`).
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Masking on (`Redaction.enabled`).
    pub enabled: bool,
    /// Lower-cased query parameter names whose values are masked.
    pub query_params: Vec<String>,
    /// `user-agent` / `content-type` are on the header list (their values are masked).
    pub mask_user_agent: bool,
    pub mask_content_type: bool,
}

/// Python's `str.strip()` whitespace, as far as ASCII goes.
fn py_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f)
}

fn py_strip(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&c| !py_space(c)).unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|&c| !py_space(c))
        .map_or(start, |i| i + 1);
    &b[start..end]
}

impl Summary {
    /// `Redaction.query`: masked query text, or None to decline (a name Python would
    /// percent-decode or lower-case by Unicode rules).
    fn query(&self, q: &[u8]) -> Option<Vec<u8>> {
        if !self.enabled || q.is_empty() {
            return Some(q.to_vec());
        }
        let mut out = Vec::with_capacity(q.len() + 16);
        for (i, part) in q.split(|&c| c == b'&').enumerate() {
            if i > 0 {
                out.push(b'&');
            }
            match part.iter().position(|&c| c == b'=') {
                Some(eq) if eq + 1 < part.len() => {
                    let name = &part[..eq];
                    if name.contains(&b'%') || !name.is_ascii() {
                        return None;
                    }
                    let norm = py_strip(name).to_ascii_lowercase();
                    if self
                        .query_params
                        .iter()
                        .any(|p| p.as_bytes() == norm.as_slice())
                    {
                        out.extend_from_slice(name);
                        out.push(b'=');
                        out.extend_from_slice(MASK.as_bytes());
                    } else {
                        out.extend_from_slice(part);
                    }
                }
                _ => out.extend_from_slice(part),
            }
        }
        Some(out)
    }
}

/// `_split_host_port`: (host, port) of an ASCII authority, or None to decline.
fn split_host_port(authority: &[u8]) -> Option<(Vec<u8>, Option<u64>)> {
    if !authority.is_ascii() {
        return None;
    }
    let mut a = py_strip(authority);
    if let Some(at) = a.iter().rposition(|&c| c == b'@') {
        a = &a[at + 1..];
    }
    let port_of = |p: &[u8]| -> Option<Option<u64>> {
        if !p.is_empty() && p.iter().all(u8::is_ascii_digit) {
            if p.len() > 18 {
                return None; // Python's int is unbounded: leave it to Python
            }
            return Some(std::str::from_utf8(p).ok()?.parse::<u64>().ok());
        }
        Some(None)
    };
    if a.first() == Some(&b'[') {
        if let Some(end) = a.iter().position(|&c| c == b']') {
            let host = &a[1..end];
            let rest = &a[end + 1..];
            let port: &[u8] = if rest.first() == Some(&b':') {
                &rest[1..]
            } else {
                b""
            };
            return Some((host.to_vec(), port_of(port)?));
        }
    }
    if a.iter().filter(|&&c| c == b':').count() == 1 {
        let colon = a.iter().position(|&c| c == b':').expect("counted");
        let (host, port) = (&a[..colon], &a[colon + 1..]);
        if !port.is_empty() && port.iter().all(u8::is_ascii_digit) {
            return Some((host.to_vec(), port_of(port)?));
        }
        if port.is_empty() {
            return Some((host.to_vec(), None));
        }
    }
    Some((a.to_vec(), None))
}

/// The first value of header `name` (ASCII case-insensitive, as Python's `str.lower`
/// comparison is on Latin-1 text).
fn header<'a>(m: &'a Message, name: &[u8]) -> Option<&'a [u8]> {
    m.header(name)
}

/// A header value as the redacted view shows it.
fn shown(value: &[u8], masked: bool) -> &[u8] {
    if masked && !value.is_empty() {
        MASK.as_bytes()
    } else {
        value
    }
}

/// Python's `round(x, 3)`: the correctly rounded decimal with 3 digits, read back.
pub fn round3(x: f64) -> f64 {
    format!("{x:.3}").parse().unwrap_or(x)
}

/// (attributes, body) of the summary record without the connection's process and
/// container attributes, or None when Python must build it.
pub fn build<'py>(
    py: Python<'py>,
    conn: &ConnInfo,
    tx: &Transaction,
    seq: u64,
    policy: &Summary,
) -> PyResult<Option<(Bound<'py, PyDict>, String)>> {
    let req = &tx.request;
    if req.method.as_deref() == Some(b"CONNECT") {
        return Ok(None);
    }
    let Some(target) = req.target.as_deref().filter(|t| t.first() == Some(&b'/')) else {
        return Ok(None);
    };
    // url.path / url.query of the redacted target (Transaction._compute_split_target).
    let qpos = target.iter().position(|&c| c == b'?');
    let before_q = &target[..qpos.unwrap_or(target.len())];
    let path = &before_q[..before_q
        .iter()
        .position(|&c| c == b'#')
        .unwrap_or(before_q.len())];
    let query: Option<Vec<u8>> = match qpos {
        Some(q) => {
            let rest = &target[q + 1..];
            let raw = &rest[..rest.iter().position(|&c| c == b'#').unwrap_or(rest.len())];
            if raw.is_empty() {
                None
            } else {
                match policy.query(raw) {
                    Some(m) => Some(m),
                    None => return Ok(None),
                }
            }
        }
        None => None,
    };
    // Host and explicit port (_compute_host_and_port).
    let tls = conn.tls_enabled;
    let scheme = if tls { "https" } else { "http" };
    let server_port = if conn.is_client {
        conn.remote_port
    } else {
        conn.local_port
    };
    let mut hp: Option<(Vec<u8>, Option<u64>)> = None;
    if let Some(a) = req.authority.as_deref().filter(|a| !a.is_empty()) {
        match split_host_port(a) {
            Some((h, p)) if !h.is_empty() => hp = Some((h.to_ascii_lowercase(), p)),
            Some(_) => {}
            None => return Ok(None),
        }
    }
    let (host, port) = match hp {
        Some(x) => x,
        None if !conn.tls_sni.is_empty() => {
            if !conn.tls_sni.is_ascii() {
                return Ok(None);
            }
            (
                conn.tls_sni.to_ascii_lowercase().into_bytes(),
                Some(server_port as u64),
            )
        }
        None => {
            let ip = if conn.is_client {
                &conn.remote_addr
            } else {
                &conn.local_addr
            };
            (ip.clone().into_bytes(), Some(server_port as u64))
        }
    };
    let host = latin1(py, &host);
    let host_s: String = host.extract()?;
    let mut url = String::with_capacity(64 + target.len());
    url.push_str(scheme);
    url.push_str("://");
    if host_s.contains(':') {
        url.push('[');
        url.push_str(&host_s);
        url.push(']');
    } else {
        url.push_str(&host_s);
    }
    let default_port = if tls { 443 } else { 80 };
    if let Some(p) = port.filter(|&p| p != default_port) {
        url.push(':');
        url.push_str(&p.to_string());
    }
    let path_s: String = latin1(py, path).extract()?;
    url.push_str(&path_s);
    let query_s: Option<String> = match &query {
        Some(q) => Some(latin1(py, q).extract()?),
        None => None,
    };
    if let Some(q) = &query_s {
        url.push('?');
        url.push_str(q);
    }

    let ms = round3(tx.end_ns.saturating_sub(tx.start_ns) as f64 / 1_000_000.0);
    let method = req.method.as_deref().map(|m| latin1(py, m));
    let a = PyDict::new(py);
    a.set_item(intern!(py, "event.type"), intern!(py, "artifact_record"))?;
    a.set_item(intern!(py, "connection.id"), &conn.id)?;
    a.set_item(
        intern!(py, "transaction.id"),
        format!("{}-{}", conn.id, seq),
    )?;
    match &method {
        Some(m) => a.set_item(intern!(py, "http.request.method"), m)?,
        None => a.set_item(intern!(py, "http.request.method"), "")?,
    }
    a.set_item(intern!(py, "url.full"), &url)?;
    a.set_item(
        intern!(py, "url.scheme"),
        if tls {
            intern!(py, "https")
        } else {
            intern!(py, "http")
        },
    )?;
    a.set_item(intern!(py, "url.path"), &path_s)?;
    if let Some(q) = &query_s {
        a.set_item(intern!(py, "url.query"), q)?;
    }
    a.set_item(intern!(py, "server.address"), &host)?;
    let resp = tx.response.as_ref();
    if let Some(s) = resp.and_then(|r| r.status) {
        a.set_item(intern!(py, "http.response.status_code"), s)?;
    }
    if let Some(ua) = header(req, b"user-agent") {
        let v = shown(ua, policy.enabled && policy.mask_user_agent);
        if !v.is_empty() {
            a.set_item(intern!(py, "user_agent.original"), latin1(py, v))?;
        }
    }
    let ct_masked = policy.enabled && policy.mask_content_type;
    if let Some(ct) = header(req, b"content-type") {
        let v = shown(ct, ct_masked);
        if !v.is_empty() {
            a.set_item(intern!(py, "http.request.content_type"), latin1(py, v))?;
        }
    }
    if let Some(ct) = resp.and_then(|r| header(r, b"content-type")) {
        let v = shown(ct, ct_masked);
        if !v.is_empty() {
            a.set_item(intern!(py, "http.response.content_type"), latin1(py, v))?;
        }
    }
    a.set_item(intern!(py, "http.duration_ms"), ms)?;
    a.set_item(intern!(py, "network.protocol.version"), tx.version)?;
    a.set_item(intern!(py, "http.request.body.size"), req.body_size)?;
    if req.body_truncated {
        a.set_item(intern!(py, "http.request.body.truncated"), true)?;
    }
    if let Some(r) = resp {
        a.set_item(intern!(py, "http.response.body.size"), r.body_size)?;
        if r.body_truncated {
            a.set_item(intern!(py, "http.response.body.truncated"), true)?;
        }
    }
    if let Some(g) = &tx.grpc {
        a.set_item(intern!(py, "rpc.system"), intern!(py, "grpc"))?;
        if let Some(s) = g.service.as_deref().filter(|s| !s.is_empty()) {
            a.set_item(intern!(py, "rpc.service"), s)?;
        }
        if let Some(m) = g.method.as_deref().filter(|s| !s.is_empty()) {
            a.set_item(intern!(py, "rpc.method"), m)?;
        }
        if let Some(c) = g.status_code {
            a.set_item(intern!(py, "rpc.grpc.status_code"), c)?;
        }
    }
    let method_s: String = match req.method.as_deref() {
        Some(m) if !m.is_empty() => m.iter().map(|&c| c as char).collect(),
        _ => "-".to_string(),
    };
    let body = match resp {
        None => format!("HTTP {method_s} no response {url} ({ms:.1} ms)"),
        Some(r) => match r.status {
            Some(s) => format!("HTTP {method_s} {s} {url} ({ms:.1} ms)"),
            None => format!("HTTP {method_s} - {url} ({ms:.1} ms)"),
        },
    };
    Ok(Some((a, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_like_python() {
        assert_eq!(
            split_host_port(b"a.test:8080"),
            Some((b"a.test".to_vec(), Some(8080)))
        );
        assert_eq!(
            split_host_port(b" a.test "),
            Some((b"a.test".to_vec(), None))
        );
        assert_eq!(
            split_host_port(b"a.test:"),
            Some((b"a.test".to_vec(), None))
        );
        assert_eq!(
            split_host_port(b"a.test:x"),
            Some((b"a.test:x".to_vec(), None))
        );
        assert_eq!(
            split_host_port(b"[::1]:9"),
            Some((b"::1".to_vec(), Some(9)))
        );
        assert_eq!(split_host_port(b"[::1]"), Some((b"::1".to_vec(), None)));
        assert_eq!(split_host_port(b"u:p@h:1"), Some((b"h".to_vec(), Some(1))));
        assert_eq!(split_host_port("é".as_bytes()), None);
    }

    #[test]
    fn query_masking() {
        let s = Summary {
            enabled: true,
            query_params: vec!["token".into(), "sig".into()],
            ..Summary::default()
        };
        assert_eq!(
            s.query(b"a=1&Token=x&sig=&b").unwrap(),
            b"a=1&Token=[REDACTED]&sig=&b"
        );
        assert_eq!(s.query(b" sig =v").unwrap(), b" sig =[REDACTED]");
        assert!(s.query(b"t%6fken=x").is_none());
    }
}
