//! Python functions of the HTTP/2 module: the stream state table (walked by the Python
//! tests) and the frame-boundary checks protocol detection uses, so there is one
//! implementation of each.
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyModule;

use super::frames;
use super::table;
use crate::model::Side;

fn side_arg(v: i64) -> PyResult<Side> {
    Side::from_int(v).ok_or_else(|| {
        PyValueError::new_err(format!("side must be 0 (client) or 1 (server), not {v}"))
    })
}

/// Every (state, input, next state) of the HTTP/2 stream table.
#[pyfunction]
fn h2_stream_table() -> Vec<(&'static str, &'static str, &'static str)> {
    table::entries()
}

/// (states, inputs) of the HTTP/2 stream table, in declaration order.
#[pyfunction]
fn h2_stream_names() -> (Vec<&'static str>, Vec<&'static str>) {
    (
        table::STATES.iter().map(|s| s.name()).collect(),
        table::INPUTS.iter().map(|i| i.name()).collect(),
    )
}

/// (length, type, flags, stream id) if the 9 bytes at `p` look like a frame header that
/// `side` could send, else None.
#[pyfunction]
fn h2_plausible_frame_header(
    buf: &[u8],
    p: usize,
    side: i64,
) -> PyResult<Option<(usize, u8, u8, u32)>> {
    let side = side_arg(side)?;
    Ok(frames::plausible_frame_header(buf, p, side).map(|h| (h.length, h.ftype, h.flags, h.sid)))
}

/// Is `p` a frame boundary? True / False, or None when more bytes (before `limit`) are
/// needed.
#[pyfunction]
fn h2_frame_chain_verdict(buf: &[u8], p: usize, limit: usize, side: i64) -> PyResult<Option<bool>> {
    let side = side_arg(side)?;
    Ok(frames::frame_chain_verdict(buf, p, limit, side))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(h2_stream_table, m)?)?;
    m.add_function(wrap_pyfunction!(h2_stream_names, m)?)?;
    m.add_function(wrap_pyfunction!(h2_plausible_frame_header, m)?)?;
    m.add_function(wrap_pyfunction!(h2_frame_chain_verdict, m)?)?;
    m.add(
        "H2_PREFACE",
        pyo3::types::PyBytes::new(m.py(), frames::PREFACE),
    )?;
    Ok(())
}
