//! The stdout store's JSON line of a record (`records.model.to_json_line`), built natively:
//! exactly the text `json.dumps(..., ensure_ascii=False, separators=(",", ":"))` gives for
//! `{"scope", "timestamp", "severity", "body", "attributes"}`, with `rfc3339_ns` for the
//! timestamp and `_json_attrs` for bytes values (UTF-8 text, else `<key>_b64`).
//!
//! Only the value types records carry are handled here — str, int, float, bool, None and
//! bytes (floats through `float.__repr__`); anything else (a list, a dict, a string Python
//! holds with lone surrogates, an int beyond 64 bits, NaN, a time outside years
//! 1970–9999) returns None and Python encodes
//! that record. Unit tests compare both on the same records.
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyString};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A JSON string as Python's encoder writes it with ensure_ascii=False.
fn push_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                out.push_str("\\u00");
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Days since 1970-01-01 → (year, month, day) (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `rfc3339_ns`: 2026-11-24T15:16:00.123456789Z, or None outside years 1970–9999.
pub fn rfc3339_ns(time_ns: i128) -> Option<String> {
    if time_ns < 0 {
        return None;
    }
    let secs = (time_ns / 1_000_000_000) as i64;
    let ns = (time_ns % 1_000_000_000) as u32;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    if y > 9999 {
        return None;
    }
    let s = secs.rem_euclid(86_400);
    Some(format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ns:09}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    ))
}

/// One attribute value; false when Python must encode the record.
fn push_value(out: &mut String, v: &Bound<'_, PyAny>) -> PyResult<bool> {
    if v.is_none() {
        out.push_str("null");
    } else if let Ok(s) = v.downcast::<PyString>() {
        match s.to_str() {
            Ok(s) => push_str(out, s),
            Err(_) => return Ok(false),
        }
    } else if let Ok(b) = v.downcast::<PyBool>() {
        out.push_str(if b.is_true() { "true" } else { "false" });
    } else if let Ok(i) = v.downcast::<PyInt>() {
        if !i.is_exact_instance_of::<PyInt>() {
            return Ok(false); // an int subclass (an enum) has its own repr
        }
        match i.extract::<i64>() {
            Ok(n) => out.push_str(&n.to_string()),
            Err(_) => return Ok(false),
        }
    } else if let Ok(f) = v.downcast::<PyFloat>() {
        if !f.is_exact_instance_of::<PyFloat>() {
            return Ok(false);
        }
        if !f.value().is_finite() {
            return Ok(false); // json.dumps writes NaN / Infinity
        }
        // float.__repr__ itself: Rust's shortest digits do not always pick Python's.
        out.push_str(f.repr()?.to_str()?);
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// The JSON line of one record (no newline), or None when Python must encode it.
#[pyfunction]
pub fn json_line(
    scope: &str,
    time_ns: i128,
    severity: &str,
    body: &Bound<'_, PyAny>,
    attributes: &Bound<'_, PyDict>,
) -> PyResult<Option<String>> {
    use base64_like::b64;
    let Some(ts) = rfc3339_ns(time_ns) else {
        return Ok(None);
    };
    let Ok(body) = body.downcast::<PyString>() else {
        return Ok(None);
    };
    let Ok(body) = body.to_str() else {
        return Ok(None);
    };
    let mut out = String::with_capacity(256 + body.len() + attributes.len() * 48);
    out.push_str("{\"scope\":");
    push_str(&mut out, scope);
    out.push_str(",\"timestamp\":\"");
    out.push_str(&ts);
    out.push_str("\",\"severity\":");
    push_str(&mut out, severity);
    out.push_str(",\"body\":");
    push_str(&mut out, body);
    out.push_str(",\"attributes\":{");
    let mut first = true;
    for (k, v) in attributes.iter() {
        let Ok(k) = k.downcast::<PyString>() else {
            return Ok(None);
        };
        let Ok(k) = k.to_str() else {
            return Ok(None);
        };
        if !first {
            out.push(',');
        }
        first = false;
        let raw: Option<Vec<u8>> = if let Ok(b) = v.downcast::<PyBytes>() {
            Some(b.as_bytes().to_vec())
        } else if let Ok(b) = v.downcast::<PyByteArray>() {
            Some(b.to_vec())
        } else {
            None
        };
        if let Some(raw) = raw {
            match std::str::from_utf8(&raw) {
                Ok(s) => {
                    push_str(&mut out, k);
                    out.push(':');
                    push_str(&mut out, s);
                }
                Err(_) => {
                    let renamed = format!("{k}_b64");
                    // _json_attrs writes `k_b64`; should the record also have that key,
                    // Python's dict decides the order: leave it to Python.
                    if attributes.contains(&renamed)? {
                        return Ok(None);
                    }
                    push_str(&mut out, &renamed);
                    out.push(':');
                    out.push('"');
                    out.push_str(&b64(&raw));
                    out.push('"');
                }
            }
            continue;
        }
        push_str(&mut out, k);
        out.push(':');
        if !push_value(&mut out, &v)? {
            return Ok(None);
        }
    }
    out.push_str("}}");
    Ok(Some(out))
}

mod base64_like {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Standard base64 with padding (`base64.b64encode`).
    pub fn b64(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_ns(0).unwrap(), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_ns(1_764_000_960_123_456_789).unwrap(),
            "2025-11-24T16:16:00.123456789Z"
        );
    }

    #[test]
    fn base64() {
        assert_eq!(base64_like::b64(b""), "");
        assert_eq!(base64_like::b64(b"\xff"), "/w==");
        assert_eq!(base64_like::b64(b"\xff\xfe"), "//4=");
        assert_eq!(base64_like::b64(b"\xff\xfe\xfd"), "//79");
    }
}
