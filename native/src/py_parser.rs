//! The Python face of the native parsers: `plaintap._core.new_parser(protocol, body_limit,
//! midstream)` returns a `NativeParser` with the sans-IO calls of `protocols.new_parser`
//! (`feed`, `feed_gap`, `close`, `next_event`, `stats`, `upgraded`), and events come out as
//! the dataclasses of `plaintap.protocols.model`, so records and plugins are unchanged.
//!
//! Conversion is done once per finished event; bytes stay in Rust until then.
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::model::{Event, GrpcInfo, Header, Message, ParseError, Parser, Side, Transaction};

/// The Python classes events are converted into (looked up once per process).
pub struct ModelTypes {
    pub transaction: Py<PyAny>,
    pub message: Py<PyAny>,
    pub grpc_info: Py<PyAny>,
    pub parse_error: Py<PyAny>,
    pub side: Py<PyAny>,
}

static MODEL: pyo3::sync::GILOnceCell<ModelTypes> = pyo3::sync::GILOnceCell::new();

pub fn model_types(py: Python<'_>) -> PyResult<&ModelTypes> {
    MODEL.get_or_try_init(py, || {
        let m = py.import("plaintap.protocols.model")?;
        Ok(ModelTypes {
            transaction: m.getattr("Transaction")?.unbind(),
            message: m.getattr("Message")?.unbind(),
            grpc_info: m.getattr("GrpcInfo")?.unbind(),
            parse_error: m.getattr("ParseError")?.unbind(),
            side: m.getattr("Side")?.unbind(),
        })
    })
}

/// Latin-1 decoding: every byte becomes the code point of the same value (lossless).
pub fn latin1<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    if b.is_ascii() {
        // ASCII is valid UTF-8 and maps to the same code points.
        return PyString::new(py, std::str::from_utf8(b).unwrap_or(""));
    }
    let s: String = b.iter().map(|&c| c as char).collect();
    PyString::new(py, &s)
}

fn opt_latin1<'py>(py: Python<'py>, b: &Option<Vec<u8>>) -> Option<Bound<'py, PyString>> {
    b.as_deref().map(|v| latin1(py, v))
}

fn headers_list<'py>(py: Python<'py>, hs: &[Header]) -> PyResult<Bound<'py, PyList>> {
    let items: Vec<Bound<'py, PyTuple>> = hs
        .iter()
        .map(|(k, v)| PyTuple::new(py, [latin1(py, k), latin1(py, v)]))
        .collect::<PyResult<_>>()?;
    PyList::new(py, items)
}

pub fn message_to_py(py: Python<'_>, m: &Message) -> PyResult<PyObject> {
    let t = model_types(py)?;
    // Positional, in the dataclass's field order (about 3x cheaper than keywords).
    let args = PyTuple::new(
        py,
        [
            headers_list(py, &m.headers)?.into_any(),
            opt_latin1(py, &m.method).into_bound_py_any(py)?,
            opt_latin1(py, &m.target).into_bound_py_any(py)?,
            opt_latin1(py, &m.authority).into_bound_py_any(py)?,
            m.status.into_bound_py_any(py)?,
            opt_latin1(py, &m.reason).into_bound_py_any(py)?,
            m.version.into_bound_py_any(py)?,
            headers_list(py, &m.trailers)?.into_any(),
            PyBytes::new(py, &m.body).into_any(),
            m.body_size.into_bound_py_any(py)?,
            m.body_truncated.into_bound_py_any(py)?,
            m.first_ns.into_bound_py_any(py)?,
            m.last_ns.into_bound_py_any(py)?,
            m.complete.into_bound_py_any(py)?,
            m.is_response.into_bound_py_any(py)?,
        ],
    )?;
    t.message.call1(py, args)
}

fn grpc_to_py(py: Python<'_>, g: &GrpcInfo) -> PyResult<PyObject> {
    let t = model_types(py)?;
    let kw = PyDict::new(py);
    kw.set_item("service", g.service.as_deref())?;
    kw.set_item("method", g.method.as_deref())?;
    kw.set_item("status_code", g.status_code)?;
    kw.set_item("status_message", g.status_message.as_deref())?;
    kw.set_item("request_messages", g.request_messages)?;
    kw.set_item("response_messages", g.response_messages)?;
    kw.set_item("request_bytes", g.request_bytes)?;
    kw.set_item("response_bytes", g.response_bytes)?;
    kw.set_item("framing_lost", g.framing_lost)?;
    t.grpc_info.call(py, (), Some(&kw))
}

pub fn transaction_to_py(py: Python<'_>, tx: &Transaction) -> PyResult<PyObject> {
    let t = model_types(py)?;
    let response = match &tx.response {
        Some(r) => message_to_py(py, r)?,
        None => py.None(),
    };
    let grpc = match &tx.grpc {
        Some(g) => grpc_to_py(py, g)?,
        None => py.None(),
    };
    // Positional, in the dataclass's field order.
    let args = (
        tx.protocol,
        tx.version,
        tx.stream_id,
        message_to_py(py, &tx.request)?,
        response,
        tx.start_ns,
        tx.end_ns,
        tx.headers_known,
        grpc,
        tx.upgraded,
        tx.error.as_deref(),
    );
    t.transaction.call1(py, args)
}

pub fn side_to_py(py: Python<'_>, s: Side) -> PyResult<PyObject> {
    model_types(py)?.side.call1(py, (s as i64,))
}

pub fn parse_error_to_py(py: Python<'_>, e: &ParseError) -> PyResult<PyObject> {
    let t = model_types(py)?;
    let kw = PyDict::new(py);
    kw.set_item("side", side_to_py(py, e.side)?)?;
    kw.set_item("reason", &e.reason)?;
    kw.set_item("ts_ns", e.ts_ns)?;
    kw.set_item("stream_id", e.stream_id)?;
    t.parse_error.call(py, (), Some(&kw))
}

pub fn event_to_py(py: Python<'_>, ev: &Event) -> PyResult<PyObject> {
    match ev {
        Event::Transaction(tx) => transaction_to_py(py, tx),
        Event::Error(e) => parse_error_to_py(py, e),
    }
}

fn side_arg(side: &Bound<'_, PyAny>) -> PyResult<Side> {
    let v: i64 = side.extract()?;
    Side::from_int(v).ok_or_else(|| {
        PyValueError::new_err(format!("side must be 0 (client) or 1 (server), not {v}"))
    })
}

/// A native HTTP parser behind the Python sans-IO interface.
#[pyclass(module = "plaintap._core", unsendable)]
pub struct NativeParser {
    inner: Box<dyn Parser>,
    protocol: &'static str,
}

#[pymethods]
impl NativeParser {
    /// Bytes `side` (protocols.Side) sent, in order. Never raises for protocol errors.
    fn feed(&mut self, side: &Bound<'_, PyAny>, data: &[u8], ts_ns: u64) -> PyResult<()> {
        let s = side_arg(side)?;
        self.inner.feed(s, data, ts_ns);
        Ok(())
    }

    /// `nbytes` of `side`'s stream were lost by the capture.
    fn feed_gap(&mut self, side: &Bound<'_, PyAny>, nbytes: u64, ts_ns: u64) -> PyResult<()> {
        let s = side_arg(side)?;
        self.inner.feed_gap(s, nbytes, ts_ns);
        Ok(())
    }

    fn close(&mut self, ts_ns: u64) {
        self.inner.close(ts_ns);
    }

    /// The next Transaction or ParseError, or None when more bytes are needed.
    fn next_event(&mut self, py: Python<'_>) -> PyResult<Option<PyObject>> {
        match self.inner.next_event() {
            Some(ev) => Ok(Some(event_to_py(py, &ev)?)),
            None => Ok(None),
        }
    }

    /// "http1" or "http2".
    #[getter]
    fn protocol(&self) -> &'static str {
        self.protocol
    }

    /// The state name of HTTP/2 stream `stream_id` while it is tracked, else None (for
    /// tests that walk the stream state table).
    fn stream_state(&self, stream_id: u32) -> Option<&'static str> {
        self.inner.stream_state(stream_id)
    }

    #[getter]
    fn upgraded(&self) -> bool {
        self.inner.upgraded()
    }

    /// Protocol-switched bytes counted on both sides (HTTP/1 after 101 / CONNECT 2xx).
    #[getter]
    fn upgraded_bytes(&self) -> u64 {
        self.inner
            .stats()
            .iter()
            .filter(|(k, _)| *k == "upgraded_bytes_client" || *k == "upgraded_bytes_server")
            .map(|(_, v)| v)
            .sum()
    }

    /// The framing state of `side`'s direction by name (HTTP/1), else None; for the
    /// state-table walks in the tests.
    fn state(&self, side: &Bound<'_, PyAny>) -> PyResult<Option<&'static str>> {
        Ok(self.inner.side_state(side_arg(side)?))
    }

    /// Bytes of `side`'s stream the parser holds now (memory-bound tests).
    fn buffered(&self, side: &Bound<'_, PyAny>) -> PyResult<usize> {
        Ok(self.inner.buffered(side_arg(side)?))
    }

    /// Named counters, as a new dict each call.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.inner.stats() {
            d.set_item(k, v)?;
        }
        Ok(d)
    }
}

/// The native parser for "http1" or "http2"; ValueError for any other name, or for one
/// whose native implementation is not built in yet.
#[pyfunction]
#[pyo3(signature = (protocol, body_limit = 2 * 1024 * 1024, midstream = false))]
pub fn new_parser(protocol: &str, body_limit: usize, midstream: bool) -> PyResult<NativeParser> {
    let (inner, name) = match protocol {
        "http1" => (crate::http1::new_parser(body_limit, midstream), "http1"),
        "http2" => (crate::http2::new_parser(body_limit, midstream), "http2"),
        _ => (None, ""),
    };
    inner
        .map(|inner| NativeParser {
            inner,
            protocol: name,
        })
        .ok_or_else(|| PyValueError::new_err(format!("no native parser for protocol {protocol:?}")))
}

/// The HTTP/1 per-direction framing table: (states, inputs, {(state, input): next}), by
/// name, exactly as the native parser applies it.
#[pyfunction]
pub fn http1_table(
    py: Python<'_>,
) -> PyResult<(Vec<&'static str>, Vec<&'static str>, Bound<'_, PyDict>)> {
    use crate::http1::table;
    let d = PyDict::new(py);
    for (s, i, n) in table::table() {
        d.set_item((s, i), n)?;
    }
    Ok((
        table::STATES.iter().map(|s| s.name()).collect(),
        table::INPUTS.iter().map(|i| i.name()).collect(),
        d,
    ))
}

/// A recorded connection (both directions, in capture order) held in native memory, so a
/// benchmark can replay it through the native parsers without Python in the loop: what
/// the native data plane does when it feeds a parser straight from reassembly.
#[pyclass(module = "plaintap._core", frozen)]
pub struct RecordedStream {
    chunks: Vec<(Side, Vec<u8>, u64)>,
}

#[pymethods]
impl RecordedStream {
    /// `chunks`: (side, bytes, ts_ns) in capture order.
    #[new]
    fn new(chunks: Vec<(i64, Vec<u8>, u64)>) -> PyResult<Self> {
        let chunks = chunks
            .into_iter()
            .map(|(s, b, t)| {
                Side::from_int(s)
                    .map(|s| (s, b, t))
                    .ok_or_else(|| PyValueError::new_err("side must be 0 or 1"))
            })
            .collect::<PyResult<_>>()?;
        Ok(RecordedStream { chunks })
    }

    /// Feed the chunks through fresh `protocol` parsers, `connections` of them in turn
    /// (each gets an equal run of chunks), then close each; (transactions, parse errors).
    #[pyo3(signature = (protocol, connections = 1, body_limit = 2 * 1024 * 1024))]
    fn replay(
        &self,
        py: Python<'_>,
        protocol: &str,
        connections: usize,
        body_limit: usize,
    ) -> PyResult<(u64, u64)> {
        let make = || match protocol {
            "http1" => crate::http1::new_parser(body_limit, false),
            "http2" => crate::http2::new_parser(body_limit, false),
            _ => None,
        };
        if make().is_none() {
            return Err(PyValueError::new_err(format!(
                "no native parser for protocol {protocol:?}"
            )));
        }
        let chunks = &self.chunks;
        Ok(py.allow_threads(|| {
            let (mut txs, mut errs) = (0u64, 0u64);
            let per = (chunks.len() / connections.max(1)).max(1);
            let last_ts = chunks.last().map_or(0, |c| c.2);
            for run in chunks.chunks(per) {
                let Some(mut p) = make() else { break };
                let mut count = |p: &mut Box<dyn Parser>| {
                    while let Some(ev) = p.next_event() {
                        match ev {
                            Event::Transaction(_) => txs += 1,
                            Event::Error(_) => errs += 1,
                        }
                    }
                };
                for (side, data, ts) in run {
                    p.feed(*side, data, *ts);
                    count(&mut p);
                }
                p.close(last_ts + 1);
                count(&mut p);
            }
            (txs, errs)
        }))
    }
}
