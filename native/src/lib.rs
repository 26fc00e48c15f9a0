//! plaintap's native data plane, exposed to Python as `plaintap._core`.
//!
//! Modules are named like the Python stages they replace (`ring`, `decode`, `conn`,
//! `reassembly`, `http1`, `http2`, `grpc`). Nothing panics across the Python boundary:
//! malformed input becomes a counted event.
use pyo3::prelude::*;

/// The data plane allocates and frees many small buffers per record (header lists,
/// message bodies); glibc's malloc took a third of the agent's CPU at saturation
/// (bench_live_overhead, perf). mimalloc's thread-local free lists do the same work for
/// a fraction of it. Only the Rust side uses it: Python keeps its own allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod classify;
pub mod conn;
pub mod cpu_yield;
pub mod decode;
pub mod dns;
pub mod exec_lane;
pub mod gilshare;
pub mod goelf;
pub mod grpc;
pub mod hpack;
pub mod http1;
pub mod http2;
pub mod input;
pub mod jsonline;
pub mod model;
pub mod needed;
pub mod pipeline;
pub mod py_parser;
pub mod reassembly;
pub mod ring;
pub mod shard;
pub mod sslelf;
pub mod summary;
pub mod uprobe_warm;

/// The version of the native core, for `plaintap doctor` and bug reports.
#[pyfunction]
fn core_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(core_version, m)?)?;
    m.add_function(wrap_pyfunction!(py_parser::new_parser, m)?)?;
    m.add_class::<py_parser::NativeParser>()?;
    m.add_function(wrap_pyfunction!(py_parser::http1_table, m)?)?;
    m.add_class::<py_parser::RecordedStream>()?;
    http2::py::register(m)?;
    m.add_class::<pipeline::DataPlane>()?;
    m.add_class::<pipeline::PyRing>()?;
    m.add_class::<pipeline::PyStream>()?;
    m.add_class::<conn::ConnInfo>()?;
    m.add_class::<uprobe_warm::UprobeWarmer>()?;
    m.add_class::<exec_lane::ExecLane>()?;
    m.add_function(wrap_pyfunction!(exec_lane::go_analyze, m)?)?;
    m.add_function(wrap_pyfunction!(exec_lane::openssl_analyze, m)?)?;
    m.add_function(wrap_pyfunction!(gilshare::wait_readable, m)?)?;
    m.add_function(wrap_pyfunction!(gilshare::gil_urgent, m)?)?;
    m.add_function(wrap_pyfunction!(gilshare::gil_urgent_count, m)?)?;
    m.add_function(wrap_pyfunction!(gilshare::gil_wait_stats, m)?)?;
    m.add_function(wrap_pyfunction!(pipeline::detect, m)?)?;
    m.add_function(wrap_pyfunction!(pipeline::parse_client_hello, m)?)?;
    m.add_function(wrap_pyfunction!(pipeline::parse_server_hello, m)?)?;
    m.add_function(wrap_pyfunction!(pipeline::hello_incomplete, m)?)?;
    m.add_function(wrap_pyfunction!(pipeline::decode_record, m)?)?;
    m.add_function(wrap_pyfunction!(pipeline::abi_layout, m)?)?;
    m.add_function(wrap_pyfunction!(pipeline::summary_duration, m)?)?;
    m.add_function(wrap_pyfunction!(jsonline::json_line, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_set() {
        assert!(!super::core_version().is_empty());
    }
}
