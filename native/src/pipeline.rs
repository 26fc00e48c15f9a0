//! The Python face of the data plane: `DataPlane` (kernel records → transactions and
//! connection reports), `Ring` (a mapped BPF ring buffer), and the pure helpers that tests
//! drive directly (`Stream`, `detect`, `parse_client_hello`, `parse_server_hello`,
//! `decode`).
//!
//! ```text
//! dp = DataPlane(hooks, run_id="ab12", parse_http=True, body_limit=2 << 20)
//! dp.feed([raw, raw, ...])                      # records as bytes (tests, benchmarks)
//! n = dp.drain([ring], 100, 4096, 20_000_000)   # or straight from the kernel
//! dp.tick(now_ns)                               # periodic reports, closes by TCP state
//! for item in dp.take(): ...                    # (kind, conn, ...) tuples, in order
//! ```
//!
//! `hooks` is called per process and connection, never per data record: `on_exec(pid,
//! ts, ppid, uid, filename, argv)`, `on_exit(pid, ts)`, `on_open(pid, fd, comm, uid) ->
//! (process, filter_bits)` and `forget(pid, fd)` (drop the kernel's table entry).
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::classify;
use crate::conn::{self, ConnInfo, ConnView, Gil, Hooks, Output, Settings, Table, TxValue};
use crate::cpu_yield;
use crate::decode::{self, Event};
use crate::gilshare::GilShare;
use crate::py_parser;
use crate::reassembly::{self, Piece};
use crate::ring;
use crate::shard::{self, DnsCounts, Shards};
use crate::summary::{self, Summary};

pub const OUT_REPORT: u8 = 0;
pub const OUT_TRANSACTION: u8 = 1;
pub const OUT_PIECES: u8 = 2;
pub const OUT_CLOSED: u8 = 3;
pub const OUT_SUMMARY: u8 = 4;
pub const OUT_DNS: u8 = 5;
/// The ring of control records (exec, exit, connection open/close), as the loader names it.
const CONTROL_RING: &str = "control";

/// A BPF ring buffer map, mapped into this process.
#[pyclass(module = "plaintap._core", unsendable, name = "Ring")]
pub struct PyRing {
    ring: ring::Ring,
    name: String,
}

#[pymethods]
impl PyRing {
    /// Map ring buffer map `fd` whose data area is `size` bytes (max_entries). OSError on failure.
    #[new]
    #[pyo3(signature = (fd, size, name = String::from("events")))]
    fn new(fd: i32, size: usize, name: String) -> PyResult<PyRing> {
        let ring = ring::Ring::open(fd, size)
            .map_err(|e| PyOSError::new_err(format!("cannot map ring buffer {name}: {e}")))?;
        Ok(PyRing { ring, name })
    }

    /// Bytes waiting to be read.
    #[getter]
    fn backlog(&self) -> u64 {
        self.ring.backlog()
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The map's fd, readable (poll) while records wait.
    #[getter]
    fn fd(&self) -> i32 {
        self.ring.fd()
    }

    /// Records waiting, copied out (for tests and tools; the agent drains with DataPlane.drain).
    #[pyo3(signature = (max_records = 1 << 20))]
    fn read<'py>(&self, py: Python<'py>, max_records: usize) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for _ in 0..max_records {
            let Some((rec, step)) = self.ring.peek() else {
                break;
            };
            out.append(PyBytes::new(py, rec))?;
            self.ring.consume(step);
        }
        Ok(out)
    }
}

#[pyclass(module = "plaintap._core", unsendable)]
pub struct DataPlane {
    /// With one worker, the whole connection table; with more, the control table (process
    /// hooks, UDP DNS and its names) while `shards` hold the connections (see shard.rs).
    table: Table,
    shards: Option<Shards>,
    /// Kernel time of the newest record routed to a shard.
    routed_ts: u64,
    /// `now_ns` of the last tick sent to the workers.
    ticked_ns: u64,
    /// With workers: connections the control table keeps (DNS over TCP, see shard.rs).
    control_conns: std::collections::HashSet<u64>,
    /// The Python view of each connection's current `ConnView` (the same object while the
    /// connection does not change), until its final report.
    views: HashMap<u64, (ConnView, Py<ConnInfo>)>,
    /// Build `artifact_record` summaries natively (set by Python when its plugins would
    /// build nothing else, see summary.rs); None: every transaction goes to Python.
    summary: Option<Summary>,
    /// Summaries built natively (the rest of the transactions went to Python).
    native_summaries: u64,
    /// With `summary`: no event store takes the summaries, so none is built (counted in
    /// native_summaries all the same).
    discard: bool,
    /// Each turn of the loop at idle priority for up to a grace (see cpu_yield.rs).
    yielder: Option<cpu_yield::Yielder>,
    /// Position in the control ring up to which exec records were looked for ahead of
    /// their turn (see `execs_ahead`).
    execs_seen_pos: u64,
    /// Measurement only (bench_live_overhead's consumer round): data-ring records are
    /// consumed unread, so the kernel's side is measured with a consumer that costs nothing.
    discard_data: bool,
}

/// The longest batch wait while control records are waiting (see `drain`).
const SHORT_BATCH_US: u64 = 2_000;

/// Which of `rings` is the control ring (by the loader's name), if any.
fn control_ring(rings: &[PyRef<'_, PyRing>]) -> Option<usize> {
    rings.iter().position(|r| r.name == CONTROL_RING)
}

fn is_exec(rec: &[u8]) -> bool {
    rec.len() >= 4 && rec[..4] == decode::EV_PROC_EXEC.to_le_bytes()
}

#[pymethods]
impl DataPlane {
    #[new]
    #[pyo3(signature = (hooks, run_id = String::new(), parse_http = true, body_limit = 2 << 20, dump = false,
                        first_report_ns = conn::FIRST_REPORT_NS, interval_ns = conn::REPORT_INTERVAL_NS,
                        byte_budget = conn::DEFAULT_BYTE_BUDGET, max_pending = reassembly::DEFAULT_MAX_PENDING,
                        close_grace_ns = conn::CLOSE_GRACE_NS, workers = 1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        hooks: PyObject,
        run_id: String,
        parse_http: bool,
        body_limit: usize,
        dump: bool,
        first_report_ns: u64,
        interval_ns: u64,
        byte_budget: u64,
        max_pending: u64,
        close_grace_ns: u64,
        workers: usize,
    ) -> PyResult<DataPlane> {
        if workers == 0 || workers > shard::MAX_WORKERS {
            return Err(PyValueError::new_err(format!(
                "workers must be 1 to {}, not {workers}",
                shard::MAX_WORKERS
            )));
        }
        let settings = Settings {
            run_id,
            parse_http,
            body_limit,
            dump,
            first_report_ns,
            interval_ns,
            byte_budget,
            max_pending,
            close_grace_ns,
        };
        let shards =
            if workers > 1 {
                Some(Shards::start(workers, &settings).map_err(|e| {
                    PyOSError::new_err(format!("cannot start {workers} workers: {e}"))
                })?)
            } else {
                None
            };
        Ok(DataPlane {
            table: Table::new(settings, Hooks::Py(hooks)),
            shards,
            routed_ts: 0,
            control_conns: Default::default(),
            ticked_ns: 0,
            views: HashMap::new(),
            summary: None,
            native_summaries: 0,
            discard: false,
            yielder: None,
            discard_data: false,
            execs_seen_pos: 0,
        })
    }

    /// Worker threads parsing connections (1: the calling thread does it all).
    #[getter]
    fn workers(&self) -> usize {
        self.shards.as_ref().map_or(1, |s| s.len())
    }

    /// Wait until the workers handled everything sent to them (their outputs are then
    /// ready for `take`); nothing to wait for with one worker.
    fn sync(&mut self, py: Python<'_>) {
        if let Some(s) = self.shards.as_mut() {
            py.allow_threads(|| s.sync());
        }
    }

    /// Workers hold records not yet handled or outputs not yet taken (a `take` will find
    /// them); always False with one worker.
    #[getter]
    fn busy(&self) -> bool {
        self.shards.as_ref().is_some_and(|s| s.busy())
    }

    /// Handle raw ring-buffer records (each a bytes-like object), in order; with workers,
    /// returns when they have handled them.
    fn feed(&mut self, py: Python<'_>, records: &Bound<'_, PyAny>) -> PyResult<()> {
        for item in records.try_iter()? {
            let item = item?;
            let b = item.downcast::<PyBytes>()?;
            self.dispatch(py, b.as_bytes());
        }
        if let Some(s) = self.shards.as_mut() {
            py.allow_threads(|| s.sync());
        }
        Ok(())
    }

    /// Drain `rings` in time order, waiting up to `timeout_ms` (GIL released) when all
    /// are empty. The merge rule of bpf/loader.py: W = now (CLOCK_MONOTONIC) after the wait;
    /// records of any ring older than W are handled oldest first (the first ring wins ties:
    /// put the control ring first); records at or after W stay in their ring for the next
    /// call. An event caused by another (data after its open, a close after its data) is
    /// stamped after its cause was committed, so everything older than W has its causes
    /// committed and visible now. Stops after `max_records` records or `max_ns` of work, so
    /// the caller's loop stays responsive. Returns the number of records handled.
    ///
    /// `batch_wait_us`: after waking up on empty rings, wait this long more (GIL released)
    /// so that the records of the next moments are handled as one batch: the kernel wakes
    /// the reader at the first record after it caught up, and handling a handful of records
    /// per turn of the agent's loop costs more in the loop than in the records. Under
    /// saturation the rings are never empty and this never applies.
    ///
    /// `until_ns` (0: none) lowers W to that kernel time: the stop drains what was captured
    /// before its signal, not what keeps coming while it drains.
    #[pyo3(signature = (rings, timeout_ms = 100, max_records = 4096, max_ns = 20_000_000, batch_wait_us = 0, until_ns = 0))]
    #[allow(clippy::too_many_arguments)]
    fn drain(
        &mut self,
        py: Python<'_>,
        rings: Vec<PyRef<'_, PyRing>>,
        timeout_ms: i32,
        max_records: usize,
        max_ns: u64,
        batch_wait_us: u64,
        until_ns: u64,
    ) -> usize {
        if let Some(y) = &self.yielder {
            y.leave(); // normal priority while waiting: prompt when records come
        }
        if let Some(s) = self.shards.as_ref() {
            if s.full() {
                // The workers are behind: leave the records in the rings meanwhile.
                let (gauge, most) = (s.gauge(), s.queue_limit());
                let limit = Duration::from_millis(timeout_ms.max(1) as u64);
                py.allow_threads(|| {
                    let t0 = Instant::now();
                    while gauge.bytes() >= most && t0.elapsed() < limit {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                });
                if gauge.bytes() >= most {
                    return 0;
                }
            }
        }
        // Workers with outputs on the way: wait less, so that they are taken soon.
        let timeout_ms = if self.busy() && !(0..=2).contains(&timeout_ms) {
            2
        } else {
            timeout_ms
        };
        if rings.iter().all(|r| r.ring.backlog() == 0) && timeout_ms != 0 {
            if let Some(y) = &self.yielder {
                y.caught_up();
            }
            let fds: Vec<i32> = rings.iter().map(|r| r.ring.fd()).collect();
            py.allow_threads(|| ring::wait(&fds, timeout_ms));
            // an exec is not held back: TLS discovery hooks the new program from it,
            // racing the program's first TLS call (issue 11 item 7)
            let exec_seen = self.execs_ahead(py, &rings) > 0;
            if batch_wait_us > 0 && !exec_seen && rings.iter().any(|r| r.ring.backlog() > 0) {
                // Only data waiting: gather it for up to batch_wait_us, but wake at once for a
                // control record (an exec, an open or close, a DNS datagram), which other
                // work races. Control records already waiting: at most SHORT_BATCH_US.
                let control = control_ring(&rings).map(|c| &rings[c].ring);
                if let Some(control) = control.filter(|c| c.backlog() == 0) {
                    let ms = batch_wait_us.div_ceil(1000).min(i32::MAX as u64) as i32;
                    let fd = control.fd();
                    py.allow_threads(|| ring::wait(&[fd], ms));
                } else {
                    let us = batch_wait_us.min(SHORT_BATCH_US);
                    py.allow_threads(|| std::thread::sleep(Duration::from_micros(us)));
                }
            }
        }
        if let Some(y) = &self.yielder {
            y.enter(); // this turn at idle priority, for up to the grace
        }
        let control = control_ring(&rings);
        let now = ring::monotonic_ns();
        let watermark = if until_ns > 0 { now.min(until_ns) } else { now };
        let start = Instant::now();
        let mut n = 0;
        // TLS discovery, racing a new program's first TLS call, gets the GIL when it needs it
        let mut share = GilShare::default();
        while n < max_records {
            // The ring whose next record is oldest.
            let mut best: Option<(usize, u64)> = None;
            for (i, r) in rings.iter().enumerate() {
                if let Some((rec, _)) = r.ring.peek() {
                    let ts = ring::record_ts(rec);
                    if best.is_none_or(|(_, t)| ts < t) {
                        best = Some((i, ts));
                    }
                }
            }
            let Some((i, ts)) = best else {
                self.caught_up(watermark);
                break;
            };
            if ts >= watermark {
                self.caught_up(watermark);
                break;
            }
            let r = &rings[i].ring;
            if let Some((rec, step)) = r.peek() {
                if self.discard_data && control != Some(i) {
                    r.consume(step); // the control ring is still handled
                    n += 1;
                    continue;
                }
                if let Some(y) = self.yielder.as_ref().filter(|_| is_exec(rec)) {
                    y.leave(); // TLS discovery races the new program: no yielding now
                }
                self.dispatch(py, rec);
                r.consume(step);
            }
            n += 1;
            if n % 16 == 0 {
                share.maybe(py);
                self.execs_ahead(py, &rings);
            }
            if n % 64 == 0 {
                if start.elapsed().as_nanos() as u64 >= max_ns {
                    break;
                }
                if self.shards.as_ref().is_some_and(|s| s.full()) {
                    break;
                }
            }
        }
        if let Some(s) = self.shards.as_mut() {
            s.flush();
        }
        n
    }

    /// Track a connection that was open before the agent started (a mid-stream join).
    #[allow(clippy::too_many_arguments)]
    fn adopt(
        &mut self,
        py: Python<'_>,
        pid: u32,
        ts_ns: u64,
        conn_id: u64,
        fd: i32,
        uid: u32,
        role: u8,
        direction: u8,
        local_addr: String,
        local_port: u16,
        remote_addr: String,
        remote_port: u16,
        comm: String,
    ) {
        let o = conn::adopted(
            conn_id,
            fd,
            uid,
            role,
            direction,
            local_addr,
            local_port,
            remote_addr,
            remote_port,
            comm,
        );
        let g = Gil::Held(py);
        match self.shards.as_mut() {
            None => self.table.on_open(g, pid, ts_ns, o, true),
            Some(s) => {
                let r = self.table.resolve_open(g, pid, ts_ns, &o);
                s.adopt(pid, ts_ns, o, r);
            }
        }
    }

    /// Periodic reports due at kernel time `now_ns`. Workers are waited for, unless
    /// `wait` is false: then they are sent the tick (at most every TICK_EVERY_NS of
    /// `now_ns`) and what it makes is taken by a later `take`.
    #[pyo3(signature = (now_ns, wait = true))]
    fn tick(&mut self, py: Python<'_>, now_ns: u64, wait: bool) {
        let newest = self.table.last_ts.max(self.routed_ts);
        if let Some(s) = self.shards.as_mut() {
            // A hole is given up by the age of the newest record handled by any shard (the
            // reader routes in time order, so each shard has all of its records up to it).
            s.set_caught_up(newest);
            if wait {
                py.allow_threads(|| s.tick(now_ns));
                self.ticked_ns = now_ns;
            } else if now_ns >= self.ticked_ns.saturating_add(shard::TICK_EVERY_NS)
                || now_ns < self.ticked_ns
            {
                s.tick_later(now_ns);
                self.ticked_ns = now_ns;
            }
        }
        self.table.tick(Gil::Held(py), now_ns);
    }

    /// Shutdown: finalise every open connection.
    fn close_all(&mut self, py: Python<'_>, now_ns: u64) {
        if let Some(s) = self.shards.as_mut() {
            py.allow_threads(|| s.close_all(now_ns));
        }
        self.table.close_all(Gil::Held(py), now_ns);
    }

    /// Shutdown in bounded steps: finalise up to `max` connections; returns how many are left.
    #[pyo3(signature = (now_ns, max = 1024))]
    fn close_some(&mut self, py: Python<'_>, now_ns: u64, max: usize) -> usize {
        let left = match self.shards.as_mut() {
            Some(s) => py.allow_threads(|| s.close_some(now_ns, max)),
            None => 0,
        };
        left + self.table.close_some(Gil::Held(py), now_ns, max)
    }

    /// Shutdown past its deadline: final reports for what is left, its held bytes not
    /// parsed (counted: shed_bytes["shutdown"]). Returns the number of connections.
    fn abandon_all(&mut self, py: Python<'_>, now_ns: u64) -> usize {
        let n = match self.shards.as_mut() {
            Some(s) => py.allow_threads(|| s.abandon_all(now_ns)),
            None => 0,
        };
        n + self.table.abandon_all(Gil::Held(py), now_ns)
    }

    /// Everything produced since the last call, in order: (0, conn, part, finalized)
    /// reports, (1, conn, transaction, seq) transactions, and with `dump`, (2, conn,
    /// flow, source, [bytes | gap length, ...]) stream pieces and (3, conn) closes; (5,
    /// {exchange}) DNS exchanges (see `dns_exchange_dict`).
    fn take<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        let mut items = std::mem::take(&mut self.table.out);
        if let Some(s) = self.shards.as_ref() {
            let c = s.collect();
            items.extend(c.out);
            for (pid, fd) in c.forgets {
                self.table.forget(Gil::Held(py), pid, fd);
            }
        }
        for o in items {
            let t = match o {
                Output::Report {
                    conn,
                    part,
                    finalized,
                } => {
                    let view = self.view(py, &conn)?;
                    if finalized {
                        self.views.remove(&conn.kid);
                    }
                    PyTuple::new(
                        py,
                        [
                            OUT_REPORT.into_pyobject(py)?.into_any(),
                            view.into_bound(py).into_any(),
                            part.into_pyobject(py)?.into_any(),
                            pyo3::types::PyBool::new(py, finalized)
                                .to_owned()
                                .into_any(),
                        ],
                    )?
                }
                Output::Transaction { conn, tx, seq } => {
                    let tx = match tx {
                        TxValue::Py(obj) => obj,
                        TxValue::Native(t) => {
                            if self.discard && self.summary.is_some() {
                                self.native_summaries += 1;
                                continue;
                            }
                            if let Some(policy) = &self.summary {
                                // A build error (a bug) leaves the transaction to Python.
                                if let Ok(Some((attrs, body))) =
                                    summary::build(py, &conn, &t, seq, policy)
                                {
                                    let view = self.view(py, &conn)?;
                                    out.append(PyTuple::new(
                                        py,
                                        [
                                            OUT_SUMMARY.into_pyobject(py)?.into_any(),
                                            view.into_bound(py).into_any(),
                                            attrs.into_any(),
                                            body.into_pyobject(py)?.into_any(),
                                            t.start_ns.into_pyobject(py)?.into_any(),
                                        ],
                                    )?)?;
                                    self.native_summaries += 1;
                                    continue;
                                }
                            }
                            match py_parser::transaction_to_py(py, &t) {
                                Ok(obj) => obj,
                                Err(e) => {
                                    // A conversion bug costs this transaction, counted.
                                    e.print_and_set_sys_last_vars(py);
                                    let c = &mut self.table.counters;
                                    *c.parse_errors.entry(t.protocol).or_default() += 1;
                                    c.parser_failures += 1;
                                    continue;
                                }
                            }
                        }
                    };
                    PyTuple::new(
                        py,
                        [
                            OUT_TRANSACTION.into_pyobject(py)?.into_any(),
                            self.view(py, &conn)?.into_bound(py).into_any(),
                            tx.into_bound(py),
                            seq.into_pyobject(py)?.into_any(),
                        ],
                    )?
                }
                Output::Pieces {
                    conn,
                    flow,
                    source,
                    pieces,
                } => {
                    let list = PyList::empty(py);
                    for p in pieces {
                        match p {
                            Ok(b) => list.append(PyBytes::new(py, &b))?,
                            Err(n) => list.append(n)?,
                        }
                    }
                    PyTuple::new(
                        py,
                        [
                            OUT_PIECES.into_pyobject(py)?.into_any(),
                            self.view(py, &conn)?.into_bound(py).into_any(),
                            flow.into_pyobject(py)?.into_any(),
                            source.into_pyobject(py)?.into_any(),
                            list.into_any(),
                        ],
                    )?
                }
                Output::Closed { conn } => PyTuple::new(
                    py,
                    [
                        OUT_CLOSED.into_pyobject(py)?.into_any(),
                        self.view(py, &conn)?.into_bound(py).into_any(),
                    ],
                )?,
                Output::Dns(ex) => PyTuple::new(
                    py,
                    [
                        OUT_DNS.into_pyobject(py)?.into_any(),
                        dns_exchange_dict(py, ex)?.into_any(),
                    ],
                )?,
            };
            out.append(t)?;
        }
        Ok(out)
    }

    /// Work each turn of the loop at idle priority for up to `grace_us` (cpu_yield.rs),
    /// or until a record comes on the control ring `control_fd` (-1: none); 0 turns it
    /// off. Returns whether it is on: False when this process may not return from idle
    /// priority (no CAP_SYS_NICE), so it never goes there.
    #[pyo3(signature = (grace_us, control_fd = -1))]
    fn set_yield(&mut self, grace_us: u64, control_fd: i32) -> bool {
        self.yielder = None; // Drop restores normal priority and stops the watcher
        if grace_us > 0 {
            self.yielder = cpu_yield::Yielder::start(Duration::from_micros(grace_us), control_fd);
        }
        self.yielder.is_some()
    }

    /// The records `drain(until_ns=...)` still has to read: in each ring, those before the
    /// first one stamped at or after `until_ns` (the drain reads no further either):
    /// (records, bytes). What a stop that ran out of time leaves unread is said, not lost
    /// silently. Looks at most 1 << 22 records per ring.
    fn unread_before(&self, rings: Vec<PyRef<'_, PyRing>>, until_ns: u64) -> (u64, u64) {
        let (mut records, mut bytes) = (0u64, 0u64);
        for r in &rings {
            let mut open = true;
            r.ring.look_ahead(0, 1 << 22, |rec| {
                open &= ring::record_ts(rec) < until_ns;
                if open {
                    records += 1;
                    bytes += rec.len() as u64;
                }
            });
        }
        (records, bytes)
    }

    /// Measurement only: consume the data rings' records (every ring but the control ring)
    /// without reading them (see `discard_data`).
    fn set_discard_data(&mut self, on: bool) {
        self.discard_data = on;
    }

    /// Turns that lasted the whole grace (normal priority restored by the watcher).
    #[getter]
    fn yield_boosts(&self) -> u64 {
        self.yielder.as_ref().map_or(0, |y| y.boosts())
    }

    /// Build `artifact_record` summaries natively from now on, with this redaction
    /// (`(enabled, query_params, mask_user_agent, mask_content_type)`, names lower-cased),
    /// or None: hand every transaction to Python. Only for plugin stacks whose whole output
    /// is that summary (dataplane.Pipeline decides). `discard`: no event store would take
    /// them (with a policy only): count the transactions, build nothing.
    #[pyo3(signature = (policy = None, discard = false))]
    fn set_summary(&mut self, policy: Option<(bool, Vec<String>, bool, bool)>, discard: bool) {
        self.discard = discard;
        self.summary = policy.map(
            |(enabled, query_params, mask_user_agent, mask_content_type)| Summary {
                enabled,
                query_params,
                mask_user_agent,
                mask_content_type,
            },
        );
    }

    /// Whether summaries are built natively (see set_summary).
    #[getter]
    fn native_summary(&self) -> bool {
        self.summary.is_some()
    }

    /// The name a DNS answer gave `addr`, if still live at kernel time `now_ns`.
    fn dns_name(&self, addr: &str, now_ns: u64) -> Option<String> {
        self.table.dns.name_for(addr, now_ns)
    }

    /// Parse HTTP on connections opened from now on (a reload changed the stacks).
    #[setter]
    fn set_parse_http(&mut self, on: bool) {
        self.table.set_parse_http(on);
        if let Some(s) = self.shards.as_mut() {
            s.set_parse_http(on);
        }
    }

    #[getter]
    fn parse_http(&self) -> bool {
        self.table.settings.parse_http
    }

    /// Connections currently tracked (with workers: once they handled what they were sent).
    fn __len__(&mut self, py: Python<'_>) -> usize {
        if let Some(s) = self.shards.as_mut() {
            py.allow_threads(|| s.sync());
        }
        self.totals().2
    }

    /// The current view of connection `conn_id` (kernel id), or None.
    fn connection(&mut self, py: Python<'_>, conn_id: u64) -> PyResult<Option<Py<ConnInfo>>> {
        let info = match self.shards.as_mut() {
            Some(s) => py.allow_threads(|| s.info(conn_id)),
            None => self.table.info(conn_id).map(|i| i.snapshot()),
        };
        info.map(|i| Py::new(py, i)).transpose()
    }

    /// Kernel time (ns) of the newest record handled so far (0 before the first). With
    /// workers, a record routed to a worker counts once that worker handled it: while one
    /// is behind, its newest handled record (the pipeline-lag gauge reads this).
    #[getter]
    fn last_ts(&self) -> u64 {
        let newest = self.table.last_ts.max(self.routed_ts);
        match self.shards.as_ref().and_then(|s| s.lagging_ts()) {
            Some(ts) => ts.min(newest),
            None => newest,
        }
    }

    /// Bytes held across connections (reassembly waits, pre-classification holds).
    #[getter]
    fn held_bytes(&self) -> u64 {
        self.totals().3
    }

    /// Named counters: {"events": {type: n}, "unknown_events": n, "orphan_events": n,
    /// "gap_bytes": {reason: n}, "parse_errors": {protocol: n}, "shed_bytes": {reason: n}, ...}.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (c, x, len, held) = self.totals();
        let d = PyDict::new(py);
        let ev = PyDict::new(py);
        for (t, n) in c.events.iter().enumerate() {
            if *n > 0 {
                ev.set_item(t, *n)?;
            }
        }
        d.set_item("events", ev)?;
        d.set_item("unknown_events", c.unknown_events)?;
        d.set_item("orphan_events", c.orphan_events)?;
        d.set_item("orphan_gap_bytes", c.orphan_gap_bytes)?;
        d.set_item("unplaced_gap_bytes", c.unplaced_gap_bytes)?;
        d.set_item("gap_overcount_bytes", c.gap_overcount_bytes)?;
        d.set_item("filtered_connections", c.filtered_connections)?;
        d.set_item("hook_errors", c.hook_errors)?;
        d.set_item("parser_failures", c.parser_failures)?;
        d.set_item("held_dropped_bytes", c.held_dropped)?;
        d.set_item("closed_by_state", c.closed_by_state)?;
        d.set_item("finished_by_exit", c.finished_by_exit)?;
        d.set_item("transactions", c.transactions)?;
        d.set_item("native_summaries", self.native_summaries)?;
        d.set_item("connections_active", len)?;
        d.set_item("held_bytes", held)?;
        let dns = PyDict::new(py);
        dns.set_item("names", x.names)?;
        dns.set_item("name_evictions", x.name_evictions)?;
        dns.set_item("names_expired", x.names_expired)?;
        dns.set_item("names_learned", x.names_learned)?;
        dns.set_item("pending", x.pending)?;
        dns.set_item("queries_given_up", x.queries_given_up)?;
        dns.set_item("queries_unanswered", x.queries_unanswered)?;
        dns.set_item("answers_unmatched", x.answers_unmatched)?;
        dns.set_item("datagrams_cut", x.datagrams_cut)?;
        dns.set_item("datagrams_ignored", x.datagrams_ignored)?;
        dns.set_item("datagrams_filtered", c.filtered_dns)?;
        let errs = PyDict::new(py);
        for (k, v) in &x.parse_errors {
            errs.set_item(*k, *v)?;
        }
        dns.set_item("parse_errors", errs)?;
        d.set_item("dns", dns)?;
        for (name, map) in [
            ("gap_bytes", &c.gap_bytes),
            ("parse_errors", &c.parse_errors),
            ("shed_bytes", &c.shed_bytes),
        ] {
            let m = PyDict::new(py);
            for (k, v) in map {
                m.set_item(*k, *v)?;
            }
            d.set_item(name, m)?;
        }
        Ok(d)
    }
}

impl DataPlane {
    /// One record from the rings: to the table, or with workers routed by connection
    /// (see shard.rs): opens resolved here with Python's hooks, exits to every shard, the
    /// rest that is not about one connection to the control table.
    fn dispatch(&mut self, py: Python<'_>, rec: &[u8]) {
        let g = Gil::Held(py);
        let Some(shards) = self.shards.as_mut() else {
            self.table.handle_raw(g, rec);
            return;
        };
        let Ok(r) = decode::decode(rec) else {
            self.table.handle_raw(g, rec); // counted there
            return;
        };
        match r.event {
            Event::Data { conn_id, .. }
            | Event::Gap { conn_id, .. }
            | Event::ConnClose { conn_id, .. }
            | Event::SockState { conn_id, .. } => {
                if self.control_conns.contains(&conn_id) {
                    if matches!(r.event, Event::ConnClose { .. }) {
                        self.control_conns.remove(&conn_id);
                    }
                    self.table.handle_raw(g, rec);
                    return;
                }
                self.routed_ts = self.routed_ts.max(r.ts_ns);
                shards.batch_for(conn_id).record(rec, None);
            }
            Event::ConnOpen(o) if o.role == decode::ROLE_CLIENT && o.remote_port == 53 => {
                if self.control_conns.len() >= 4096 {
                    // entries of connections finished otherwise (their process's exit)
                    let t = &self.table;
                    self.control_conns.retain(|k| t.info(*k).is_some());
                }
                self.control_conns.insert(o.conn_id);
                self.table.handle_raw(g, rec);
            }
            Event::ConnOpen(o) => {
                self.routed_ts = self.routed_ts.max(r.ts_ns);
                let res = self.table.resolve_open(g, r.pid, r.ts_ns, &o);
                shards.batch_for(o.conn_id).record(rec, Some(res));
            }
            Event::ProcExit { .. } => {
                shards.exit(r.pid, r.ts_ns);
                self.table.handle_raw(g, rec);
            }
            Event::ProcExec { .. } | Event::Dgram(_) => self.table.handle_raw(g, rec),
        }
    }

    /// Exec records in the control ring not yet looked at, announced to the hooks
    /// (`on_exec_early(pid, ts)`) ahead of their turn in time order: TLS discovery
    /// starts on a new program at once, even while the drain works through older
    /// records (a backlog of payload, a slice). The exec itself is handled in its turn
    /// as usual. Returns how many were announced.
    fn execs_ahead(&mut self, py: Python<'_>, rings: &[PyRef<'_, PyRing>]) -> usize {
        let Some(r) = control_ring(rings).map(|c| &rings[c]) else {
            return 0;
        };
        let mut execs: Vec<(u32, u64)> = Vec::new();
        self.execs_seen_pos = r.ring.look_ahead(self.execs_seen_pos, 4096, |rec| {
            if is_exec(rec) {
                if let Ok(d) = decode::decode(rec) {
                    execs.push((d.pid, d.ts_ns));
                }
            }
        });
        if execs.is_empty() {
            return 0;
        }
        if let Some(y) = &self.yielder {
            y.leave(); // TLS discovery races the new program: no yielding now
        }
        let Hooks::Py(h) = &self.table.hooks else {
            return execs.len();
        };
        let h = h.clone_ref(py);
        if !h.bind(py).hasattr("on_exec_early").unwrap_or(false) {
            return execs.len();
        }
        for (pid, ts) in &execs {
            if let Err(e) = h.call_method1(py, "on_exec_early", (*pid, *ts)) {
                self.table.hook_error(Gil::Held(py), e);
            }
        }
        execs.len()
    }

    /// Every record older than `ts` is handled (or routed to its shard, which handles it
    /// before anything sent later).
    fn caught_up(&mut self, ts: u64) {
        self.table.caught_up = ts;
        if let Some(s) = self.shards.as_ref() {
            s.set_caught_up(ts);
        }
    }

    /// The Python object for a connection view (the same one while the view is).
    fn view(&mut self, py: Python<'_>, c: &ConnView) -> PyResult<Py<ConnInfo>> {
        if let Some((v, obj)) = self.views.get(&c.kid) {
            if std::sync::Arc::ptr_eq(v, c) {
                return Ok(obj.clone_ref(py));
            }
        }
        let obj = Py::new(py, c.snapshot())?;
        self.views.insert(c.kid, (c.clone(), obj.clone_ref(py)));
        Ok(obj)
    }

    /// Counters, DNS counters, connections and held bytes of all tables.
    fn totals(&self) -> (conn::Counters, DnsCounts, usize, u64) {
        let t = &self.table;
        let mut c = t.counters.clone();
        let mut d = DnsCounts::of(&t.dns);
        let (mut len, mut held) = (t.len(), t.held_total);
        if let Some(s) = self.shards.as_ref() {
            let (c2, d2, l2, h2) = s.totals();
            shard::add_counters(&mut c, &c2);
            d.add(&d2);
            len += l2;
            held += h2;
        }
        (c, d, len, held)
    }
}

/// A finished DNS exchange as the dict `take()` hands over (kind OUT_DNS).
fn dns_exchange_dict(py: Python<'_>, ex: crate::dns::Exchange) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let e = &ex.ends;
    d.set_item("pid", e.pid)?;
    d.set_item("fd", e.fd)?;
    d.set_item("uid", e.uid)?;
    d.set_item("comm", &e.comm)?;
    d.set_item("local_addr", &e.local_addr)?;
    d.set_item("local_port", e.local_port)?;
    d.set_item("remote_addr", &e.remote_addr)?;
    d.set_item("remote_port", e.remote_port)?;
    d.set_item("ts_ns", ex.ts_ns)?;
    d.set_item("answer_ts_ns", ex.answer_ts_ns)?;
    d.set_item("id", ex.id)?;
    d.set_item(
        "question_name",
        ex.question.as_ref().map(|q| q.name.clone()),
    )?;
    d.set_item(
        "question_type",
        ex.question.as_ref().map(|q| crate::dns::type_name(q.qtype)),
    )?;
    d.set_item("response_code", ex.rcode.map(crate::dns::rcode_name))?;
    d.set_item("answers", ex.answers)?;
    d.set_item("bytes_sent", ex.bytes_sent)?;
    d.set_item("bytes_recv", ex.bytes_recv)?;
    d.set_item("transport", ex.transport)?;
    Ok(d)
}

/// `(round(ns / 1e6, 3), f"{that:.1f}")` as the native summary computes them (for tests
/// that compare them with Python's).
#[pyfunction]
pub fn summary_duration(ns: u64) -> (f64, String) {
    let ms = summary::round3(ns as f64 / 1_000_000.0);
    (ms, format!("{ms:.1}"))
}

/// One direction of a stream, reassembled by offset (for tests of reassembly itself).
#[pyclass(module = "plaintap._core", unsendable, name = "Stream")]
pub struct PyStream {
    s: reassembly::Stream,
}

fn pieces_to_py<'py>(py: Python<'py>, out: Vec<Piece<'_>>) -> PyResult<Bound<'py, PyList>> {
    let l = PyList::empty(py);
    for p in out {
        match p {
            Piece::Data(Cow::Borrowed(d)) => l.append(PyBytes::new(py, d))?,
            Piece::Data(Cow::Owned(d)) => l.append(PyBytes::new(py, &d))?,
            Piece::Gap(n) => l.append(n)?,
        }
    }
    Ok(l)
}

#[pymethods]
impl PyStream {
    #[new]
    #[pyo3(signature = (max_pending_bytes = reassembly::DEFAULT_MAX_PENDING))]
    fn new(max_pending_bytes: u64) -> PyStream {
        PyStream {
            s: reassembly::Stream::new(max_pending_bytes),
        }
    }
    /// Bytes at `offset`; returns the pieces now deliverable (bytes, or int gap lengths).
    fn add<'py>(
        &mut self,
        py: Python<'py>,
        offset: u64,
        data: &[u8],
    ) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::new();
        self.s.add(offset, data, &mut out);
        pieces_to_py(py, out)
    }
    fn add_gap<'py>(
        &mut self,
        py: Python<'py>,
        offset: u64,
        length: u64,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::new();
        self.s.add_gap(offset, length, &mut out);
        pieces_to_py(py, out)
    }
    fn flush<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::new();
        self.s.flush(&mut out);
        pieces_to_py(py, out)
    }
    #[getter]
    fn next(&self) -> u64 {
        self.s.next
    }
    #[getter]
    fn delivered(&self) -> u64 {
        self.s.delivered
    }
    #[getter]
    fn gap_bytes(&self) -> u64 {
        self.s.gap_bytes
    }
    #[getter]
    fn hole_bytes(&self) -> u64 {
        self.s.hole_bytes
    }
    #[getter]
    fn duplicate_bytes(&self) -> u64 {
        self.s.duplicate_bytes
    }
    #[getter]
    fn pending_bytes(&self) -> u64 {
        self.s.pending_bytes
    }
}

/// `(protocol, midstream)` for the first bytes of a stream, or None when more are needed.
#[pyfunction]
#[pyo3(signature = (data, alpn = None))]
pub fn detect(data: &[u8], alpn: Option<&str>) -> Option<(&'static str, bool)> {
    classify::detect(data, alpn).map(|d| (d.protocol.name(), d.midstream))
}

/// The ClientHello at the start of `data` as a dict, or None.
#[pyfunction]
pub fn parse_client_hello<'py>(
    py: Python<'py>,
    data: &[u8],
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let Some(ch) = classify::parse_client_hello(data) else {
        return Ok(None);
    };
    let d = PyDict::new(py);
    d.set_item("legacy_version", ch.legacy_version)?;
    d.set_item("sni", ch.sni)?;
    d.set_item("alpn", PyTuple::new(py, ch.alpn)?)?;
    d.set_item(
        "supported_versions",
        PyTuple::new(py, ch.supported_versions)?,
    )?;
    d.set_item("cipher_suites", PyTuple::new(py, ch.cipher_suites)?)?;
    Ok(Some(d))
}

/// The ServerHello at the start of `data` as a dict, or None.
#[pyfunction]
pub fn parse_server_hello<'py>(
    py: Python<'py>,
    data: &[u8],
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let Some(sh) = classify::parse_server_hello(data) else {
        return Ok(None);
    };
    let d = PyDict::new(py);
    d.set_item("legacy_version", sh.legacy_version)?;
    d.set_item("version", sh.version)?;
    d.set_item("cipher_suite", sh.cipher_suite)?;
    d.set_item("alpn", sh.alpn)?;
    d.set_item("hello_retry_request", sh.hello_retry_request)?;
    Ok(Some(d))
}

#[pyfunction]
pub fn hello_incomplete(data: &[u8]) -> bool {
    classify::hello_incomplete(data)
}

/// One record decoded, as (type, pid, ts_ns, {fields}) — for tests and tools; ValueError
/// for an unknown type or a short record.
#[pyfunction]
#[pyo3(name = "decode")]
pub fn decode_record<'py>(
    py: Python<'py>,
    raw: &[u8],
) -> PyResult<(u32, u32, u64, Bound<'py, PyDict>)> {
    let rec = decode::decode(raw).map_err(|e| PyValueError::new_err(format!("{e:?}")))?;
    let d = PyDict::new(py);
    match rec.event {
        decode::Event::ConnOpen(o) => {
            d.set_item("conn_id", o.conn_id)?;
            d.set_item("tid", o.tid)?;
            d.set_item("fd", o.fd)?;
            d.set_item("uid", o.uid)?;
            d.set_item("role", o.role)?;
            d.set_item("direction", decode::direction_name(o.direction))?;
            d.set_item("local_addr", o.local_addr)?;
            d.set_item("local_port", o.local_port)?;
            d.set_item("remote_addr", o.remote_addr)?;
            d.set_item("remote_port", o.remote_port)?;
            d.set_item("comm", o.comm)?;
        }
        decode::Event::ConnClose {
            conn_id,
            bytes_sent,
            bytes_recv,
            fd,
            tls_end,
            lost,
        } => {
            d.set_item("conn_id", conn_id)?;
            d.set_item("bytes_sent", bytes_sent)?;
            d.set_item("bytes_recv", bytes_recv)?;
            d.set_item("fd", fd)?;
            d.set_item("tls_sent", tls_end[0])?;
            d.set_item("tls_recv", tls_end[1])?;
            d.set_item("lost", lost)?;
        }
        decode::Event::Data {
            conn_id,
            offset,
            flow,
            source,
            fd,
            data,
        } => {
            d.set_item("conn_id", conn_id)?;
            d.set_item("offset", offset)?;
            d.set_item("flow", flow)?;
            d.set_item("source", source)?;
            d.set_item("fd", fd)?;
            d.set_item("data", PyBytes::new(py, data))?;
        }
        decode::Event::Gap {
            conn_id,
            offset,
            len,
            flow,
            source,
            reason,
        } => {
            d.set_item("conn_id", conn_id)?;
            d.set_item("offset", offset)?;
            d.set_item("length", len)?;
            d.set_item("flow", flow)?;
            d.set_item("source", source)?;
            d.set_item("reason", decode::gap_reason(reason))?;
        }
        decode::Event::ProcExec {
            ppid,
            uid,
            filename,
            argv,
        } => {
            d.set_item("ppid", ppid)?;
            d.set_item("uid", uid)?;
            d.set_item("filename", filename)?;
            d.set_item("argv", argv)?;
        }
        decode::Event::ProcExit { exit_code } => {
            d.set_item("exit_code", exit_code)?;
        }
        decode::Event::SockState {
            conn_id,
            oldstate,
            newstate,
        } => {
            d.set_item("conn_id", conn_id)?;
            d.set_item("oldstate", oldstate)?;
            d.set_item("newstate", newstate)?;
        }
        decode::Event::Dgram(g) => {
            d.set_item("sk", g.sk)?;
            d.set_item("tid", g.tid)?;
            d.set_item("fd", g.fd)?;
            d.set_item("uid", g.uid)?;
            d.set_item("flow", g.flow)?;
            d.set_item("local_addr", g.local_addr)?;
            d.set_item("local_port", g.local_port)?;
            d.set_item("remote_addr", g.remote_addr)?;
            d.set_item("remote_port", g.remote_port)?;
            d.set_item("orig_len", g.orig_len)?;
            d.set_item("comm", g.comm)?;
            d.set_item("data", PyBytes::new(py, g.data))?;
        }
    }
    Ok((rec.kind, rec.pid, rec.ts_ns, d))
}

/// The Rust decoder's view of events.h: {struct: {field: offset, "size": n}}, checked by
/// plaintap.bpf.abi.check_layout against the compiler's abi.json at start-up.
#[pyfunction]
pub fn abi_layout<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (s, f, o) in decode::LAYOUT {
        let inner = match d.get_item(s)? {
            Some(x) => x.downcast_into::<PyDict>()?,
            None => {
                let x = PyDict::new(py);
                d.set_item(s, &x)?;
                x
            }
        };
        inner.set_item(f, o)?;
    }
    d.set_item("DATA_CHUNK", decode::DATA_CHUNK)?;
    d.set_item("DGRAM_MAX", decode::DGRAM_MAX)?;
    Ok(d)
}
