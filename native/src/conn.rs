//! The connection table: kernel events in, ordered streams, HTTP transactions and
//! connection reports out.
//!
//! Connections are keyed by the kernel's conn_id, unique per agent run, so an fd reused by
//! a new connection is never confused with the old one. Each connection is one `Session`
//! that owns everything about it: its reassembly streams (per flow and source), its
//! classifier (whose typed `Facts` it applies), its HTTP parser and the bytes held before
//! the protocol is known. Nothing is shared between sessions except the counters and the
//! global byte budget.
//!
//! Reports follow qtap's timing: ~500 ms after open, then every 10 s, then a final one on
//! close (`finalized`); a connection that closes sooner gets only the final one. A
//! connection is finished, and its state dropped, when the kernel untracks it (close(2),
//! dup/dup2/dup3 over its fd, close_range, close-on-exec, process exit, or a stale entry
//! found on use: `ev_conn_close.reason`), by its process's exit, or a grace period after
//! its socket reached TCP_CLOSE (a reset socket whose fd stays open). Data for a
//! finished connection is an orphan, counted. All timing uses kernel timestamps passed in.
//!
//! Python is called only per connection or process (open, exec, exit), never per data
//! event; HTTP parsers are the native ones (`crate::http1`/`crate::http2`), or the Python
//! ones (`plaintap.protocols.new_parser`) while a native one is not built in.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::classify::{Bytes, Classifier, Facts};
use crate::decode::{
    self, ConnOpen, Event, Record, FLOW_RECV, FLOW_SEND, ROLE_CLIENT, SRC_SOCKET, SRC_TLS,
};
use crate::model::{Event as ParserEvent, Parser, Side};
use crate::py_parser;
use crate::reassembly::{Piece, Stream};

pub const FIRST_REPORT_NS: u64 = 500_000_000;
pub const REPORT_INTERVAL_NS: u64 = 10_000_000_000;
pub const CLOSE_GRACE_NS: u64 = 1_000_000_000;
/// Application bytes held per connection while its protocol is not known yet.
pub const HOLD_LIMIT: u64 = 256 * 1024;
pub const DEFAULT_BYTE_BUDGET: u64 = 256 << 20;
/// How long (kernel time, measured by the newest record handled) bytes wait for a hole
/// in their stream before the hole is given up as lost. Records reach the ring in the
/// order their offsets were taken, give or take a few microseconds between CPUs, so a hole
/// this old is a record the kernel could not even report (ring full). Without this, every
/// such hole held up to `max_pending` bytes of the stream, and parsing stalled behind it.
pub const HOLE_WAIT_NS: u64 = 50_000_000;
const TCP_ESTABLISHED: i32 = 1;
const TCP_CLOSE: i32 = 7;
/// Remembered ids of connections tap.filters skipped (their close is not an orphan).
const MAX_SKIPPED: usize = 65536;
/// Gap reasons that are kernel losses (on the kernel's per-connection books).
fn is_loss(reason: &str) -> bool {
    matches!(reason, "ringbuf_full" | "process_budget")
}

/// Connections whose loss books wait for their close event (unknown ones, and known ones
/// finished before it: process exit, TCP_CLOSE grace): past this the map starts afresh.
const MAX_ORPHAN_BOOKS: usize = 65536;

// tap.filters bits (capture/filters.py): kernel ones, then user-space ones.
pub const SKIP_ALL: u32 = 1;
pub const SKIP_DATA: u32 = 2;
pub const SKIP_TLS: u32 = 4;
pub const SKIP_DNS: u32 = 8;
pub const SKIP_HTTP: u32 = 1 << 8;

/// Whether the caller holds the GIL: the Python thread does (`Held`); a worker shard
/// (`--workers N`, see shard.rs) does not, and reaches Python only on rare paths (a
/// Python parser, a hook error), acquiring the GIL then.
#[derive(Clone, Copy)]
pub enum Gil<'py> {
    Held(Python<'py>),
    Free,
}

impl Gil<'_> {
    /// Run `f` with the GIL (the caller's, or acquired for the call).
    pub fn with<R>(self, f: impl for<'a> FnOnce(Python<'a>) -> R) -> R {
        match self {
            Gil::Held(py) => f(py),
            Gil::Free => Python::with_gil(f),
        }
    }
}

/// The Python process object of a connection (`hooks.on_open`'s answer), shared by its
/// views without the GIL.
#[derive(Clone)]
pub struct Process(pub Arc<PyObject>);

impl<'py> IntoPyObject<'py> for &Process {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = std::convert::Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        Ok(self.0.bind(py).clone())
    }
}

/// A connection as outputs carry it: an immutable snapshot, turned into the Python
/// `ConnInfo` by `pipeline::DataPlane::take` (the same object while it is unchanged).
pub type ConnView = Arc<ConnInfo>;

/// What `hooks.on_open` answered for a new connection, with the name a DNS answer gave its
/// server (for a shard, worked out by the reader on the Python thread ahead of the record).
pub struct Resolved {
    pub process: Process,
    pub flags: u32,
    pub dns_name: Option<String>,
}

/// Who the table asks about processes and connections.
pub enum Hooks {
    /// The Python object with on_exec, on_exit, on_open, forget (see dataplane.py).
    Py(PyObject),
    /// A shard on a worker thread: the next open's answer is given ahead of its record
    /// (None inside: the hook failed, counted by the reader); exec and exit hooks are the
    /// reader's; forgets wait for the Python thread.
    Shard {
        next: Option<Option<Resolved>>,
        forgets: Vec<(u32, i32)>,
    },
}

/// What Python sees of a connection: records and plugins read these attributes.
#[pyclass(module = "plaintap._core", get_all, frozen)]
pub struct ConnInfo {
    pub kid: u64,
    pub id: String,
    pub pid: u32,
    pub fd: i32,
    pub role: u8,
    pub is_client: bool,
    pub direction: &'static str,
    pub local_addr: String,
    pub local_port: u16,
    pub remote_addr: String,
    pub remote_port: u16,
    pub open_ns: u64,
    pub close_ns: Option<u64>,
    pub process: Process,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub protocol: &'static str,
    pub domain: String,
    pub tls_enabled: bool,
    pub tls_inspected: bool,
    pub tls_version: String,
    pub tls_sni: String,
    pub tls_alpn: String,
    pub joined: bool,
    pub established: bool,
    pub skip: u32,
    pub parts: u32,
    pub finalized: bool,
}

#[pymethods]
impl ConnInfo {
    fn __repr__(&self) -> String {
        format!(
            "ConnInfo(id={:?}, pid={}, fd={}, {}:{} -> {}:{}, protocol={})",
            self.id,
            self.pid,
            self.fd,
            self.local_addr,
            self.local_port,
            self.remote_addr,
            self.remote_port,
            self.protocol
        )
    }
}

enum HttpParser {
    Native(Box<dyn Parser>),
    Python(PyObject),
}

/// HTTP feeding state of one connection (what conn/http.py did).
struct Http {
    parser: Option<HttpParser>,
    held: Vec<(Side, Option<Vec<u8>>, u64, u64)>, // side, bytes (None: gap of len), len, ts
    held_bytes: u64,
    /// Not HTTP, or the parser failed: stop looking.
    dead: bool,
}

/// One connection: identity, facts, streams, classifier and parser.
pub struct Session {
    info: ConnInfo,
    view: Option<ConnView>,
    dirty: bool,
    streams: Vec<((u8, u8), Stream)>,
    classifier: Option<Classifier>,
    facts: Facts,
    http: Option<Http>,
    tx_seq: u64,
    /// Bytes this session holds that count against the global budget.
    held: u64,
    /// TCP_CLOSE seen at this time: finish after the grace period unless close(2) comes.
    closed_at: Option<u64>,
    /// `info.domain` came from a DNS answer: SNI or Host, when seen, replace it.
    dns_domain: bool,
    /// DNS over TCP (a client connection to port 53): its messages' framing.
    dns_tcp: Option<Box<crate::dns::TcpFraming>>,
    /// Kernel losses placed on this connection's streams so far: gap events of the ring
    /// and budget reasons, holes, shed waits. Reconciled at close with the kernel's books.
    charged: u64,
    /// The kernel's books (ev_conn_close.lost), once the close event came.
    kernel_lost: Option<u64>,
}

impl Session {
    fn client_flow(&self) -> u8 {
        if self.info.is_client {
            FLOW_SEND
        } else {
            FLOW_RECV
        }
    }

    fn stream(&mut self, flow: u8, source: u8, max_pending: u64) -> &mut Stream {
        let i = match self.streams.iter().position(|(k, _)| *k == (flow, source)) {
            Some(i) => i,
            None => {
                self.streams
                    .push(((flow, source), Stream::new(max_pending)));
                self.streams.len() - 1
            }
        };
        &mut self.streams[i].1
    }

    fn mem(&self) -> u64 {
        let streams: u64 = self.streams.iter().map(|(_, s)| s.pending_bytes).sum();
        let cls = self
            .classifier
            .as_ref()
            .map_or(0, |c| c.held_bytes() as u64);
        let http = self.http.as_ref().map_or(0, |h| h.held_bytes);
        streams + cls + http
    }

    /// The current view, brought up to date.
    fn view(&mut self) -> ConnView {
        if self.dirty || self.view.is_none() {
            self.view = Some(Arc::new(self.info.snapshot()));
            self.dirty = false;
        }
        self.view.as_ref().expect("set above").clone()
    }

    fn apply_facts(&mut self) {
        let f = &self.facts;
        let i = &mut self.info;
        if let Some(p) = f.protocol {
            let name = p.name();
            if i.protocol != name && i.protocol != "grpc" && i.protocol != "dns" {
                i.protocol = name;
                self.dirty = true;
            }
        }
        if f.tls_enabled && !i.tls_enabled {
            i.tls_enabled = true;
            self.dirty = true;
        }
        for (have, new) in [
            (&mut i.tls_version, &f.tls_version),
            (&mut i.tls_sni, &f.tls_sni),
            (&mut i.tls_alpn, &f.tls_alpn),
        ] {
            if let Some(v) = new {
                if have != v {
                    *have = v.clone();
                    self.dirty = true;
                }
            }
        }
        if (i.domain.is_empty() || self.dns_domain) && !i.tls_sni.is_empty() {
            i.domain = i.tls_sni.clone();
            self.dns_domain = false;
            self.dirty = true;
        }
    }
}

impl ConnInfo {
    /// A copy (a snapshot for a report, or the refreshed view).
    pub fn snapshot(&self) -> ConnInfo {
        ConnInfo {
            kid: self.kid,
            id: self.id.clone(),
            pid: self.pid,
            fd: self.fd,
            role: self.role,
            is_client: self.is_client,
            direction: self.direction,
            local_addr: self.local_addr.clone(),
            local_port: self.local_port,
            remote_addr: self.remote_addr.clone(),
            remote_port: self.remote_port,
            open_ns: self.open_ns,
            close_ns: self.close_ns,
            process: self.process.clone(),
            bytes_sent: self.bytes_sent,
            bytes_recv: self.bytes_recv,
            protocol: self.protocol,
            domain: self.domain.clone(),
            tls_enabled: self.tls_enabled,
            tls_inspected: self.tls_inspected,
            tls_version: self.tls_version.clone(),
            tls_sni: self.tls_sni.clone(),
            tls_alpn: self.tls_alpn.clone(),
            joined: self.joined,
            established: self.established,
            skip: self.skip,
            parts: self.parts,
            finalized: self.finalized,
        }
    }
}

/// What arrived for one stream of a connection: bytes, or a capture gap and its reason.
#[derive(Clone, Copy)]
enum Incoming<'d> {
    Data(&'d [u8]),
    Gap { len: u64, reason: &'static str },
}

/// What the table hands to Python, in order.
pub enum Output {
    Report {
        conn: ConnView,
        part: u32,
        finalized: bool,
    },
    Transaction {
        conn: ConnView,
        tx: TxValue,
        seq: u64,
    },
    /// `--dump-streams`: ordered pieces of one stream (bytes, or a gap length).
    Pieces {
        conn: ConnView,
        flow: u8,
        source: u8,
        pieces: Vec<Result<Vec<u8>, u64>>,
    },
    /// `--dump-streams`: the connection finished (final facts).
    Closed { conn: ConnView },
    /// A DNS exchange (query and answer, either possibly missing).
    Dns(crate::dns::Exchange),
}

/// Named counters (every drop and shed has one).
#[derive(Default, Debug, Clone)]
pub struct Counters {
    pub events: [u64; 16],
    pub unknown_events: u64,
    pub orphan_events: u64,
    /// Bytes the kernel lost on connections the table does not know (their gap events, and
    /// at their close what the kernel's books say beyond those): lost, on no stream.
    pub orphan_gap_bytes: u64,
    /// Bytes the kernel lost on a known connection that no gap event or hole placed on one of
    /// its streams (a record and its gap event both lost at a ciphertext stream's end, where the
    /// kernel stops copying once TLS plaintext flows): from the close event's books.
    pub unplaced_gap_bytes: u64,
    /// Placed losses beyond the kernel's books at close (should stay 0: a hole that was no
    /// loss, e.g. a record that came after its hole was given up).
    pub gap_overcount_bytes: u64,
    pub gap_bytes: HashMap<&'static str, u64>,
    pub parse_errors: HashMap<&'static str, u64>,
    pub parser_failures: u64,
    pub filtered_connections: u64,
    /// DNS datagrams of processes whose DNS tap.filters skip (seen in user space).
    pub filtered_dns: u64,
    pub hook_errors: u64,
    pub shed_bytes: HashMap<&'static str, u64>,
    pub held_dropped: u64,
    pub closed_by_state: u64,
    pub finished_by_exit: u64,
    pub transactions: u64,
}

#[derive(Clone)]
pub struct Settings {
    pub run_id: String,
    pub parse_http: bool,
    pub body_limit: usize,
    pub dump: bool,
    pub first_report_ns: u64,
    pub interval_ns: u64,
    pub byte_budget: u64,
    pub max_pending: u64,
    pub close_grace_ns: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            run_id: String::new(),
            parse_http: true,
            body_limit: 2 << 20,
            dump: false,
            first_report_ns: FIRST_REPORT_NS,
            interval_ns: REPORT_INTERVAL_NS,
            byte_budget: DEFAULT_BYTE_BUDGET,
            max_pending: crate::reassembly::DEFAULT_MAX_PENDING,
            close_grace_ns: CLOSE_GRACE_NS,
        }
    }
}

pub struct Table {
    pub settings: Settings,
    pub hooks: Hooks,
    conns: HashMap<u64, Session>,
    by_pid: HashMap<u32, HashSet<u64>>,
    due: BinaryHeap<Reverse<(u64, u64)>>,
    skipped: HashSet<u64>,
    /// conn id -> (losses placed so far, a known connection finished before its close
    /// event): reconciled with the close event's books (see `reconcile`).
    unsettled: HashMap<u64, (u64, bool)>,
    pub held_total: u64,
    /// Connections with a stream whose bytes wait for a hole (see HOLE_WAIT_NS).
    waiting: HashSet<u64>,
    /// Kernel time of the newest record handled (for the pipeline-lag gauge).
    pub last_ts: u64,
    /// Kernel time up to which the rings were found empty (every record older is handled).
    pub caught_up: u64,
    pub counters: Counters,
    pub out: Vec<Output>,
    /// DNS: exchanges in flight and the host-wide address → name map.
    pub dns: crate::dns::Dns,
    /// tap.filters bits per process, asked once per process for its DNS datagrams (the
    /// kernel skips them too once it knows; this closes the window after exec).
    dns_flags: HashMap<u32, u32>,
}

/// Track whether a stream has bytes waiting for a hole, and since when; true if it has.
fn note_wait(st: &mut Stream, ts: u64) -> bool {
    if !st.has_pending() {
        st.waiting_since = 0;
        return false;
    }
    if st.waiting_since == 0 {
        st.waiting_since = ts.max(1);
    }
    true
}

fn owned(out: Vec<Piece<'_>>) -> Vec<Piece<'static>> {
    out.into_iter()
        .map(|p| match p {
            Piece::Data(d) => Piece::Data(std::borrow::Cow::Owned(d.into_owned())),
            Piece::Gap(n) => Piece::Gap(n),
        })
        .collect()
}

fn pieces_as_bytes<'a>(pieces: &'a [Piece<'a>]) -> impl Iterator<Item = Bytes<'a>> + 'a {
    pieces.iter().map(|p| match p {
        Piece::Data(d) => Bytes::Data(d),
        Piece::Gap(_) => Bytes::Gap,
    })
}

/// Host without port or IPv6 brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    if host.matches(':').count() == 1 {
        return host.rsplit_once(':').map_or(host, |(h, _)| h);
    }
    host
}

fn is_ip(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
}

/// `:authority`/Host, else the target of CONNECT, else the host of an absolute-form target.
fn native_host(tx: &crate::model::Transaction) -> Option<String> {
    let r = &tx.request;
    if let Some(a) = r.authority.as_ref().filter(|a| !a.is_empty()) {
        return Some(latin1(a));
    }
    let target = r.target.as_deref().unwrap_or(b"");
    if r.method.as_deref() == Some(b"CONNECT") {
        return (!target.is_empty()).then(|| latin1(target));
    }
    let t = latin1(target);
    let (_, rest) = t.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let netloc = &rest[..end];
    (!netloc.is_empty()).then(|| netloc.to_string())
}

fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

impl Table {
    pub fn new(settings: Settings, hooks: Hooks) -> Table {
        Table {
            settings,
            hooks,
            conns: HashMap::new(),
            by_pid: HashMap::new(),
            due: BinaryHeap::new(),
            skipped: HashSet::new(),
            unsettled: HashMap::new(),
            held_total: 0,
            waiting: HashSet::new(),
            last_ts: 0,
            caught_up: 0,
            counters: Counters::default(),
            out: Vec::new(),
            dns: crate::dns::Dns::default(),
            dns_flags: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn info(&self, kid: u64) -> Option<&ConnInfo> {
        self.conns.get(&kid).map(|s| &s.info)
    }

    /// One raw ring-buffer record.
    pub fn handle_raw(&mut self, py: Gil<'_>, raw: &[u8]) {
        match decode::decode(raw) {
            Ok(rec) => {
                self.counters.events[(rec.kind as usize).min(15)] += 1;
                self.last_ts = self.last_ts.max(rec.ts_ns);
                self.handle(py, rec);
            }
            Err(_) => self.counters.unknown_events += 1,
        }
    }

    pub fn handle(&mut self, py: Gil<'_>, rec: Record<'_>) {
        let (pid, ts) = (rec.pid, rec.ts_ns);
        match rec.event {
            Event::Data {
                conn_id,
                offset,
                flow,
                source,
                data,
                ..
            } => self.on_stream(py, conn_id, offset, flow, source, Incoming::Data(data), ts),
            Event::Gap {
                conn_id,
                offset,
                len,
                flow,
                source,
                reason,
            } => {
                let reason = decode::gap_reason(reason);
                let gap = Incoming::Gap { len, reason };
                self.on_stream(py, conn_id, offset, flow, source, gap, ts)
            }
            Event::ConnOpen(o) => self.on_open(py, pid, ts, o, false),
            Event::ConnClose {
                conn_id,
                bytes_sent,
                bytes_recv,
                tls_end,
                lost,
                ..
            } => match self.conns.get_mut(&conn_id) {
                None => {
                    self.skipped.remove(&conn_id);
                    // Finished already (its losses beyond those placed are unplaced), or
                    // unknown (skipped, or its open event lost: its losses are orphans).
                    match self.unsettled.remove(&conn_id) {
                        Some((charged, true)) => self.settle(lost, charged),
                        Some((charged, false)) => {
                            self.counters.orphan_gap_bytes += lost.saturating_sub(charged)
                        }
                        None => self.counters.orphan_gap_bytes += lost,
                    }
                }
                Some(s) => {
                    s.kernel_lost = Some(lost);
                    s.info.bytes_sent = s.info.bytes_sent.max(bytes_sent);
                    s.info.bytes_recv = s.info.bytes_recv.max(bytes_recv);
                    self.holes_at_close(py, conn_id, [bytes_sent, bytes_recv], tls_end, ts);
                    self.finish(py, conn_id, ts);
                }
            },
            Event::ProcExec {
                ppid,
                uid,
                filename,
                argv,
            } => {
                self.dns_flags.remove(&pid);
                if let Hooks::Py(h) = &self.hooks {
                    if let Err(e) = py.with(|py| {
                        h.call_method1(py, "on_exec", (pid, ts, ppid, uid, filename, argv))
                            .map(drop)
                    }) {
                        self.hook_error(py, e);
                    }
                }
            }
            Event::ProcExit { .. } => {
                self.dns_flags.remove(&pid);
                self.finish_pid(py, pid, ts);
                if let Hooks::Py(h) = &self.hooks {
                    if let Err(e) = py.with(|py| h.call_method1(py, "on_exit", (pid, ts)).map(drop))
                    {
                        self.hook_error(py, e);
                    }
                }
            }
            Event::Dgram(d) => {
                if self.dns_skipped(py, pid, &d) {
                    self.counters.filtered_dns += 1;
                    return;
                }
                let mut done = Vec::new();
                self.dns
                    .on_dgram(pid, ts, &d, &mut self.counters.parse_errors, &mut done);
                self.out.extend(done.into_iter().map(Output::Dns));
            }
            Event::SockState {
                conn_id, newstate, ..
            } => {
                if let Some(s) = self.conns.get_mut(&conn_id) {
                    if newstate == TCP_ESTABLISHED {
                        s.info.established = true;
                    } else if newstate == TCP_CLOSE && s.closed_at.is_none() {
                        s.closed_at = Some(ts);
                        self.due
                            .push(Reverse((ts + self.settings.close_grace_ns, conn_id)));
                    }
                }
            }
        }
    }

    /// Process `pid` exited: finish its connections (and forget their kernel entries).
    pub fn finish_pid(&mut self, py: Gil<'_>, pid: u32, ts: u64) {
        let kids: Vec<u64> = self
            .by_pid
            .get(&pid)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for kid in kids {
            if let Some(s) = self.conns.get(&kid) {
                let (p, fd) = (s.info.pid, s.info.fd);
                self.forget(py, p, fd);
                self.counters.finished_by_exit += 1;
                self.finish(py, kid, ts);
            }
        }
    }

    /// True when tap.filters skip this process's DNS (or the process entirely).
    fn dns_skipped(&mut self, py: Gil<'_>, pid: u32, d: &crate::decode::Dgram<'_>) -> bool {
        let flags = match self.dns_flags.get(&pid) {
            Some(f) => *f,
            None => {
                let f = match self.ask_open(py, pid, d.fd, &d.comm, d.uid) {
                    Ok((_, f)) => f,
                    Err(e) => {
                        self.hook_error(py, e);
                        0
                    }
                };
                if self.dns_flags.len() >= MAX_SKIPPED {
                    self.dns_flags.clear();
                }
                self.dns_flags.insert(pid, f);
                f
            }
        };
        flags & (SKIP_ALL | SKIP_DNS) != 0
    }

    pub fn hook_error(&mut self, py: Gil<'_>, e: PyErr) {
        self.counters.hook_errors += 1;
        // Logged by Python's logger once per error (rare: a bug in our own hooks).
        py.with(|py| e.print_and_set_sys_last_vars(py));
    }

    /// `hooks.on_open(pid, fd, comm, uid)`: (process, tap.filters bits). A shard has no
    /// Python hooks to ask (its opens come resolved, it gets no datagrams): no process,
    /// no bits.
    fn ask_open(
        &mut self,
        py: Gil<'_>,
        pid: u32,
        fd: i32,
        comm: &str,
        uid: u32,
    ) -> PyResult<(Option<PyObject>, u32)> {
        match &self.hooks {
            Hooks::Py(h) => py.with(|py| {
                h.call_method1(py, "on_open", (pid, fd, comm, uid))
                    .and_then(|r| r.extract::<(PyObject, u32)>(py))
                    .map(|(p, f)| (Some(p), f))
            }),
            Hooks::Shard { .. } => Ok((None, 0)),
        }
    }

    /// What a new connection's open needs from Python and from the DNS names: asked here
    /// (one table), or given ahead by the reader (a shard). None: the hook failed (counted).
    pub fn resolve_open(
        &mut self,
        py: Gil<'_>,
        pid: u32,
        ts: u64,
        o: &ConnOpen,
    ) -> Option<Resolved> {
        if let Hooks::Shard { next, .. } = &mut self.hooks {
            return next.take().flatten();
        }
        match self.ask_open(py, pid, o.fd, &o.comm, o.uid) {
            Ok((process, flags)) => {
                // qtap's domain rule: SNI, else Host/:authority, else the name a DNS answer
                // gave the server's address (replaced by either of the first two when they come).
                let dns_name = if o.role == ROLE_CLIENT {
                    self.dns.name_for(&o.remote_addr, ts)
                } else {
                    None
                };
                let process = process.unwrap_or_else(|| py.with(|py| py.None()));
                Some(Resolved {
                    process: Process(Arc::new(process)),
                    flags,
                    dns_name,
                })
            }
            Err(e) => {
                self.hook_error(py, e);
                None
            }
        }
    }

    /// `hooks.forget(pid, fd)`: drop the kernel's table entry (a shard queues it for the
    /// Python thread).
    pub fn forget(&mut self, py: Gil<'_>, pid: u32, fd: i32) {
        match &mut self.hooks {
            Hooks::Py(h) => {
                if let Err(e) = py.with(|py| h.call_method1(py, "forget", (pid, fd)).map(drop)) {
                    self.hook_error(py, e);
                }
            }
            Hooks::Shard { forgets, .. } => forgets.push((pid, fd)),
        }
    }

    /// A connection opened (or, `joined`, was open before the agent started).
    pub fn on_open(&mut self, py: Gil<'_>, pid: u32, ts: u64, o: ConnOpen, joined: bool) {
        if self.conns.contains_key(&o.conn_id) {
            // Cannot happen with unique ids; never mix two connections.
            self.finish(py, o.conn_id, ts);
        }
        let Some(Resolved {
            process,
            flags,
            dns_name,
        }) = self.resolve_open(py, pid, ts, &o)
        else {
            return;
        };
        if flags & SKIP_ALL != 0 {
            // The kernel skips it too once it knows; this closes the window after exec.
            self.counters.filtered_connections += 1;
            if self.skipped.len() >= MAX_SKIPPED {
                self.skipped.clear();
            }
            self.skipped.insert(o.conn_id);
            self.forget(py, pid, o.fd);
            return;
        }
        let dns_domain = dns_name.is_some();
        let info = ConnInfo {
            kid: o.conn_id,
            id: format!("{}{:x}", self.settings.run_id, o.conn_id),
            pid,
            fd: o.fd,
            role: o.role,
            is_client: o.role == ROLE_CLIENT,
            direction: decode::direction_name(o.direction),
            local_addr: o.local_addr,
            local_port: o.local_port,
            remote_addr: o.remote_addr,
            remote_port: o.remote_port,
            open_ns: ts,
            close_ns: None,
            process,
            bytes_sent: 0,
            bytes_recv: 0,
            protocol: "tcp",
            domain: dns_name.unwrap_or_default(),
            tls_enabled: false,
            tls_inspected: false,
            tls_version: String::new(),
            tls_sni: String::new(),
            tls_alpn: String::new(),
            joined,
            established: true,
            skip: flags,
            parts: 0,
            finalized: false,
        };
        let http = (self.settings.parse_http && flags & SKIP_HTTP == 0).then(|| Http {
            parser: None,
            held: Vec::new(),
            held_bytes: 0,
            dead: false,
        });
        self.conns.insert(
            o.conn_id,
            Session {
                info,
                view: None,
                dirty: true,
                streams: Vec::new(),
                classifier: Some(Classifier::default()),
                facts: Facts::default(),
                http,
                tx_seq: 0,
                held: 0,
                closed_at: None,
                dns_domain,
                dns_tcp: (o.role == ROLE_CLIENT && o.remote_port == 53).then(Box::default),
                charged: 0,
                kernel_lost: None,
            },
        );
        self.by_pid.entry(pid).or_default().insert(o.conn_id);
        self.due
            .push(Reverse((ts + self.settings.first_report_ns, o.conn_id)));
    }

    fn orphan(&mut self, conn_id: u64) {
        if !self.skipped.contains(&conn_id) {
            self.counters.orphan_events += 1;
        }
    }

    /// Bytes or a capture gap for one stream of a connection (the kernel's EV_DATA and
    /// EV_GAP): counted, checked against the connection's filters, reassembled by offset,
    /// and whatever became contiguous handed to the classifier and parser.
    #[allow(clippy::too_many_arguments)]
    fn on_stream(
        &mut self,
        py: Gil<'_>,
        conn_id: u64,
        offset: u64,
        flow: u8,
        source: u8,
        what: Incoming<'_>,
        ts: u64,
    ) {
        if flow > 1 || source > 1 {
            self.counters.unknown_events += 1;
            return;
        }
        let max_pending = self.settings.max_pending;
        let Some(s) = self.conns.get_mut(&conn_id) else {
            if let Incoming::Gap { len, reason } = what {
                if is_loss(reason) {
                    self.counters.orphan_gap_bytes += len;
                    self.book(conn_id, len, false);
                }
            }
            self.orphan(conn_id);
            return;
        };
        let len = match what {
            Incoming::Data(data) => data.len() as u64,
            Incoming::Gap { len, reason } => {
                *self.counters.gap_bytes.entry(reason).or_default() += len;
                if is_loss(reason) {
                    s.charged += len;
                }
                len
            }
        };
        let end = offset + len;
        if source == SRC_SOCKET {
            if flow == FLOW_SEND {
                s.info.bytes_sent = s.info.bytes_sent.max(end);
            } else {
                s.info.bytes_recv = s.info.bytes_recv.max(end);
            }
        }
        if s.info.skip & filtered_by(source) != 0 {
            return;
        }
        let is_data = matches!(what, Incoming::Data(_));
        if is_data && source == SRC_TLS && !(s.info.tls_inspected && s.info.tls_enabled) {
            s.info.tls_inspected = true;
            s.info.tls_enabled = true;
            s.facts.tls_enabled = true;
            s.dirty = true;
        }
        let mut pieces = Vec::new();
        let st = s.stream(flow, source, max_pending);
        match what {
            Incoming::Data(data) => st.add(offset, data, &mut pieces),
            Incoming::Gap { len, .. } => st.add_gap(offset, len, &mut pieces),
        }
        let holes = std::mem::take(&mut st.hole_bytes);
        if note_wait(st, ts) {
            self.waiting.insert(conn_id);
        }
        self.count_holes(conn_id, holes);
        if !pieces.is_empty() {
            self.consume(py, conn_id, flow, source, &pieces, ts);
        }
        self.account(py, conn_id);
    }

    fn count_holes(&mut self, kid: u64, holes: u64) {
        if holes > 0 {
            // A hole no gap event announced: a record the kernel could not even report
            // (its ring buffer was full), so it counts with the ring-buffer losses.
            *self.counters.gap_bytes.entry("ringbuf_full").or_default() += holes;
            if let Some(s) = self.conns.get_mut(&kid) {
                s.charged += holes;
            }
        }
    }

    /// The close event's books against what was placed on the connection's streams: the
    /// kernel's losses no event placed are counted as unplaced gap bytes, so that every
    /// byte the kernel dropped is a counted gap.
    fn reconcile(&mut self, s: &Session) {
        match s.kernel_lost {
            Some(lost) => self.settle(lost, s.charged),
            // finished before its close event (exit, TCP_CLOSE grace): settled when it comes
            None => self.book(s.info.kid, s.charged, true),
        }
    }

    fn settle(&mut self, lost: u64, charged: u64) {
        if lost > charged {
            self.counters.unplaced_gap_bytes += lost - charged;
        } else {
            self.counters.gap_overcount_bytes += charged - lost;
        }
    }

    /// Losses placed on a connection whose close event is still to come.
    fn book(&mut self, kid: u64, bytes: u64, known: bool) {
        if !self.unsettled.contains_key(&kid) && self.unsettled.len() >= MAX_ORPHAN_BOOKS {
            self.unsettled.clear();
        }
        let e = self.unsettled.entry(kid).or_insert((0, known));
        e.0 += bytes;
        e.1 |= known;
    }

    /// Keep the global byte budget: recompute what this session holds; past the budget,
    /// shed this session's waiting bytes (pending reassembly becomes gaps, held
    /// pre-classification bytes are dropped), counted.
    fn account(&mut self, py: Gil<'_>, kid: u64) {
        let Some(s) = self.conns.get_mut(&kid) else {
            return;
        };
        let now = s.mem();
        self.held_total = self.held_total + now - s.held;
        s.held = now;
        if self.held_total <= self.settings.byte_budget {
            return;
        }
        // Shed: the stream holes are given up (their pending bytes are delivered behind a gap).
        let mut flushed: Vec<(u8, u8, Vec<Piece<'static>>)> = Vec::new();
        for ((flow, source), st) in s.streams.iter_mut() {
            if st.has_pending() {
                let mut out = Vec::new();
                st.shed(&mut out);
                let holes = st.hole_bytes;
                st.hole_bytes = 0;
                s.charged += holes;
                *self
                    .counters
                    .shed_bytes
                    .entry("reassembly_wait")
                    .or_default() += holes;
                flushed.push((*flow, *source, owned(out)));
            }
        }
        if let Some(h) = s.http.as_mut() {
            if h.parser.is_none() && h.held_bytes > 0 {
                *self
                    .counters
                    .shed_bytes
                    .entry("held_unclassified")
                    .or_default() += h.held_bytes;
                h.held.clear();
                h.held_bytes = 0;
                h.dead = true;
            }
        }
        for (flow, source, pieces) in flushed {
            self.consume(py, kid, flow, source, &pieces, 0);
        }
        if let Some(s) = self.conns.get_mut(&kid) {
            let now = s.mem();
            self.held_total = self.held_total + now - s.held;
            s.held = now;
        }
    }

    /// Ordered pieces of one stream to the session's consumers: classifier, HTTP, dump.
    fn consume(
        &mut self,
        py: Gil<'_>,
        kid: u64,
        flow: u8,
        source: u8,
        pieces: &[Piece<'_>],
        ts: u64,
    ) {
        let dump = self.settings.dump;
        let body_limit = self.settings.body_limit;
        let Some(s) = self.conns.get_mut(&kid) else {
            return;
        };
        let client = flow == s.client_flow();
        // 1. classification
        if let Some(c) = s.classifier.as_mut() {
            if source == SRC_TLS {
                if client {
                    c.on_plaintext(pieces_as_bytes(pieces), &mut s.facts);
                }
            } else {
                let tls_inspected = s.info.tls_inspected;
                c.on_socket(
                    flow as usize,
                    client,
                    pieces_as_bytes(pieces),
                    &mut s.facts,
                    tls_inspected,
                );
            }
            s.apply_facts();
        }
        // 1b. DNS over TCP: each length-prefixed message handled like a datagram.
        if let (SRC_SOCKET, Some(f)) = (source, s.dns_tcp.as_mut()) {
            let mut msgs: Vec<Vec<u8>> = Vec::new();
            for p in pieces {
                match p {
                    Piece::Data(d) => f.feed(flow, d, |m| msgs.push(m.to_vec())),
                    Piece::Gap(_) => f.gap(flow),
                }
            }
            let mut parsed = false;
            let mut done = Vec::new();
            for m in &msgs {
                let i = &s.info;
                let ends = crate::dns::Endpoints {
                    pid: i.pid,
                    fd: i.fd,
                    uid: 0,
                    comm: String::new(),
                    local_addr: i.local_addr.clone(),
                    local_port: i.local_port,
                    remote_addr: i.remote_addr.clone(),
                    remote_port: i.remote_port,
                };
                let msg = crate::dns::Msg {
                    sock: kid,
                    flow,
                    data: m,
                    cut: false,
                    len: m.len() as u64 + 2,
                    transport: "tcp",
                };
                parsed |=
                    self.dns
                        .on_message(ts, msg, ends, &mut self.counters.parse_errors, &mut done);
            }
            if parsed && s.info.protocol != "dns" {
                s.info.protocol = "dns";
                s.dirty = true;
            }
            self.out.extend(done.into_iter().map(Output::Dns));
        }
        // 2. HTTP
        let mut events = Vec::new();
        if s.http.as_ref().is_some_and(|h| !h.dead) {
            let wanted = if s.info.tls_enabled {
                SRC_TLS
            } else {
                SRC_SOCKET
            };
            if source == wanted {
                let side = if client { Side::Client } else { Side::Server };
                let decided = s.classifier.as_ref().is_none_or(|c| {
                    if s.info.tls_enabled {
                        c.decided_plain
                    } else {
                        c.decided_sock
                    }
                });
                let midstream = s.classifier.as_ref().is_some_and(|c| c.midstream);
                let proto = s.info.protocol;
                let h = s.http.as_mut().expect("checked");
                if h.parser.is_none() {
                    if proto == "http1" || proto == "http2" {
                        match new_http_parser(py, proto, body_limit, midstream) {
                            Some(p) => {
                                h.parser = Some(p);
                                let held = std::mem::take(&mut h.held);
                                h.held_bytes = 0;
                                for (hs, bytes, n, t) in held {
                                    match bytes {
                                        Some(b) => feed(py, h, hs, Feed::Data(&b), t),
                                        None => feed(py, h, hs, Feed::Gap(n), t),
                                    }
                                }
                            }
                            None => h.dead = true,
                        }
                    } else if proto == "tcp" && decided {
                        h.dead = true;
                        h.held.clear();
                        h.held_bytes = 0;
                    } else {
                        for p in pieces {
                            match p {
                                Piece::Data(d) => {
                                    h.held.push((side, Some(d.to_vec()), d.len() as u64, ts))
                                }
                                Piece::Gap(n) => h.held.push((side, None, *n, ts)),
                            }
                            h.held_bytes += p.len();
                        }
                        if h.held_bytes > HOLD_LIMIT {
                            self.counters.held_dropped += h.held_bytes;
                            h.dead = true;
                            h.held.clear();
                            h.held_bytes = 0;
                        }
                    }
                    if h.parser.is_some() {
                        drain(py, h, &mut events);
                    }
                }
                if h.parser.is_some() && !h.dead {
                    for p in pieces {
                        match p {
                            Piece::Data(d) => feed(py, h, side, Feed::Data(d), ts),
                            Piece::Gap(n) => feed(py, h, side, Feed::Gap(*n), ts),
                        }
                    }
                    drain(py, h, &mut events);
                }
            }
        }
        let proto_label = s.info.protocol;
        for ev in events {
            self.emit_http(kid, ev, proto_label);
        }
        // 3. stream dump
        if dump {
            if let Some(s) = self.conns.get_mut(&kid) {
                {
                    let conn = s.view();
                    let pieces = pieces
                        .iter()
                        .map(|p| match p {
                            Piece::Data(d) => Ok(d.to_vec()),
                            Piece::Gap(n) => Err(*n),
                        })
                        .collect();
                    self.out.push(Output::Pieces {
                        conn,
                        flow,
                        source,
                        pieces,
                    });
                }
            }
        }
    }

    fn emit_http(&mut self, kid: u64, ev: HttpEvent, proto_label: &'static str) {
        match ev {
            HttpEvent::ParseError => {
                *self.counters.parse_errors.entry(proto_label).or_default() += 1;
            }
            HttpEvent::Failed => {
                *self.counters.parse_errors.entry(proto_label).or_default() += 1;
                self.counters.parser_failures += 1;
            }
            HttpEvent::Transaction { tx, grpc, host } => {
                let Some(s) = self.conns.get_mut(&kid) else {
                    return;
                };
                // Connection facts learned from HTTP: gRPC, and the domain when no SNI named it.
                if grpc && s.info.protocol != "grpc" {
                    s.info.protocol = "grpc";
                    s.dirty = true;
                }
                if s.info.domain.is_empty() || s.dns_domain {
                    if let Some(h) = host {
                        let name = host_name(&h);
                        if !name.is_empty() && !is_ip(name) {
                            s.info.domain = name.to_string();
                            s.dns_domain = false;
                            s.dirty = true;
                        }
                    }
                }
                let seq = s.tx_seq;
                s.tx_seq += 1;
                self.counters.transactions += 1;
                let conn = s.view();
                self.out.push(Output::Transaction { conn, tx, seq });
            }
        }
    }

    /// Finish a connection: flush its streams, close its parser, final report.
    pub fn finish(&mut self, py: Gil<'_>, kid: u64, ts: u64) {
        let Some(s) = self.conns.get_mut(&kid) else {
            return;
        };
        s.info.close_ns = Some(ts);
        s.dirty = true;
        let mut flushed: Vec<(u8, u8, Vec<Piece<'static>>)> = Vec::new();
        let mut holes = 0;
        for ((flow, source), st) in s.streams.iter_mut() {
            let mut out = Vec::new();
            st.flush(&mut out);
            holes += st.hole_bytes;
            st.hole_bytes = 0;
            if !out.is_empty() {
                flushed.push((*flow, *source, owned(out)));
            }
        }
        self.count_holes(kid, holes);
        for (flow, source, pieces) in flushed {
            self.consume(py, kid, flow, source, &pieces, ts);
        }
        let Some(mut s) = self.conns.remove(&kid) else {
            return;
        };
        self.reconcile(&s);
        self.waiting.remove(&kid);
        self.held_total -= s.held.min(self.held_total);
        if let Some(h) = s.http.as_mut() {
            if !h.dead {
                if let Some(p) = h.parser.as_mut() {
                    let mut events = Vec::new();
                    match p {
                        HttpParser::Native(p) => p.close(ts),
                        HttpParser::Python(p) => {
                            if py.with(|py| p.call_method1(py, "close", (ts,)).is_err()) {
                                events.push(HttpEvent::Failed);
                                h.dead = true;
                            }
                        }
                    }
                    if !h.dead {
                        drain(py, h, &mut events);
                    }
                    let label = s.info.protocol;
                    // Re-insert briefly so emit_http can update facts and sequence numbers.
                    self.conns.insert(kid, s);
                    for ev in events {
                        self.emit_http(kid, ev, label);
                    }
                    s = self.conns.remove(&kid).expect("just inserted");
                }
            }
        }
        s.info.finalized = true;
        s.dirty = true;
        let part = s.info.parts;
        let snapshot = Arc::new(s.info.snapshot());
        if self.settings.dump {
            self.out.push(Output::Closed {
                conn: snapshot.clone(),
            });
        }
        self.out.push(Output::Report {
            conn: snapshot,
            part,
            finalized: true,
        });
        if let Some(pids) = self.by_pid.get_mut(&s.info.pid) {
            pids.remove(&kid);
            if pids.is_empty() {
                self.by_pid.remove(&s.info.pid);
            }
        }
    }

    /// Emit the periodic reports due at kernel time `now`, and finish connections whose
    /// socket closed (TCP_CLOSE) longer than the grace period ago without a close(2).
    pub fn tick(&mut self, py: Gil<'_>, now: u64) {
        let mut done = Vec::new();
        self.dns.tick(now, &mut done);
        self.out.extend(done.into_iter().map(Output::Dns));
        self.give_up_holes(py);
        while let Some(&Reverse((due, kid))) = self.due.peek() {
            if due > now {
                break;
            }
            self.due.pop();
            let grace = self.settings.close_grace_ns;
            let Some(s) = self.conns.get_mut(&kid) else {
                continue;
            };
            if let Some(at) = s.closed_at {
                if at + grace <= now {
                    self.counters.closed_by_state += 1;
                    self.finish(py, kid, now);
                    continue;
                }
            }
            let part = s.info.parts;
            s.info.parts += 1;
            s.dirty = true;
            self.out.push(Output::Report {
                conn: Arc::new(s.info.snapshot()),
                part,
                finalized: false,
            });
            self.due
                .push(Reverse((now + self.settings.interval_ns, kid)));
        }
    }

    /// The close event says where the kernel's streams ended. A stream that ended short of
    /// that (or never arrived at all) lost its last bytes with no gap event and no later data
    /// to reveal them (the ring was too full even for the gap event): a hole too. The TLS
    /// plaintext streams always; the socket streams only of a connection without TLS
    /// (the kernel stops copying ciphertext once a TLS call is seen on the socket).
    fn holes_at_close(
        &mut self,
        py: Gil<'_>,
        kid: u64,
        sock_end: [u64; 2],
        tls_end: [u64; 2],
        ts: u64,
    ) {
        let max_pending = self.settings.max_pending;
        let Some(s) = self.conns.get_mut(&kid) else {
            return;
        };
        // (a TLS handshake seen on the wire counts too: a call that read only a session
        // ticket stops the ciphertext without any plaintext)
        let no_tls = tls_end == [0, 0] && !s.info.tls_enabled;
        let mut tail = 0;
        let mut pieces: Vec<(u8, u8, Vec<Piece<'static>>)> = Vec::new();
        for source in [SRC_SOCKET, SRC_TLS] {
            if s.info.skip & filtered_by(source) != 0 || (source == SRC_SOCKET && !no_tls) {
                continue;
            }
            for flow in [FLOW_SEND, FLOW_RECV] {
                let end = if source == SRC_TLS { tls_end } else { sock_end }[flow as usize];
                let known = s
                    .streams
                    .iter()
                    .find(|(k, _)| *k == (flow, source))
                    .map_or(0, |(_, st)| st.end());
                if end <= known {
                    continue;
                }
                let st = s.stream(flow, source, max_pending);
                let mut out = Vec::new();
                st.add_gap(known, end - known, &mut out);
                tail += end - known;
                pieces.push((flow, source, owned(out)));
            }
        }
        self.count_holes(kid, tail);
        for (flow, source, p) in pieces {
            if !p.is_empty() {
                self.consume(py, kid, flow, source, &p, ts);
            }
        }
    }

    /// Give up holes that bytes have waited behind for HOLE_WAIT_NS of kernel time (newer
    /// records handled meanwhile): the hole becomes a gap counted with the ring-buffer
    /// losses, and what waited behind it is delivered.
    pub fn give_up_holes(&mut self, py: Gil<'_>) {
        if self.waiting.is_empty() {
            return;
        }
        // Handled records newer than the wait, or rings found empty that much later.
        let newest = self.last_ts.max(self.caught_up);
        let horizon = newest.saturating_sub(HOLE_WAIT_NS);
        let kids: Vec<u64> = self.waiting.iter().copied().collect();
        for kid in kids {
            let Some(s) = self.conns.get_mut(&kid) else {
                self.waiting.remove(&kid);
                continue;
            };
            let mut flushed: Vec<(u8, u8, Vec<Piece<'static>>)> = Vec::new();
            let (mut holes, mut still) = (0, false);
            for ((flow, source), st) in s.streams.iter_mut() {
                if !st.has_pending() {
                    st.waiting_since = 0;
                    continue;
                }
                if st.waiting_since > horizon {
                    still = true;
                    continue;
                }
                // Every hole of the stream at once: under a full ring they come every few
                // KiB, and giving up one per HOLE_WAIT_NS let the bytes behind pile up.
                let mut out = Vec::new();
                st.flush(&mut out);
                holes += st.hole_bytes;
                st.hole_bytes = 0;
                st.waiting_since = 0;
                flushed.push((*flow, *source, owned(out)));
            }
            if !still {
                self.waiting.remove(&kid);
            }
            self.count_holes(kid, holes);
            for (flow, source, pieces) in flushed {
                self.consume(py, kid, flow, source, &pieces, newest);
            }
            self.account(py, kid);
        }
    }

    /// Shutdown, in bounded steps: finalise up to `max` open connections (lowest ids
    /// first); returns how many are left.
    pub fn close_some(&mut self, py: Gil<'_>, now: u64, max: usize) -> usize {
        let mut kids: Vec<u64> = self.conns.keys().copied().collect();
        if kids.len() > max {
            kids.select_nth_unstable(max);
            kids.truncate(max);
        }
        kids.sort_unstable();
        for kid in kids {
            self.finish(py, kid, now);
        }
        self.conns.len()
    }

    /// Shutdown past its finalising deadline: finish what is left without parsing what it
    /// holds (those bytes are counted as shed, reason "shutdown"): final reports only.
    /// Returns the number of connections finished so.
    pub fn abandon_all(&mut self, py: Gil<'_>, now: u64) -> usize {
        let mut kids: Vec<u64> = self.conns.keys().copied().collect();
        kids.sort_unstable();
        let n = kids.len();
        for kid in kids {
            if let Some(s) = self.conns.get_mut(&kid) {
                let held = s.mem();
                s.streams.clear();
                s.classifier = None;
                if let Some(h) = s.http.as_mut() {
                    h.held.clear();
                    h.held_bytes = 0;
                    h.dead = true;
                }
                if held > 0 {
                    *self.counters.shed_bytes.entry("shutdown").or_default() += held;
                }
            }
            self.finish(py, kid, now);
        }
        n
    }

    /// Shutdown: finalise every open connection.
    pub fn close_all(&mut self, py: Gil<'_>, now: u64) {
        let mut kids: Vec<u64> = self.conns.keys().copied().collect();
        kids.sort_unstable();
        for kid in kids {
            self.finish(py, kid, now);
        }
        let waiting = self.dns.exchanges.drain();
        self.out.extend(waiting.into_iter().map(Output::Dns));
    }

    /// Parse HTTP on connections opened from now on (a reload turned a stack on).
    pub fn set_parse_http(&mut self, on: bool) {
        self.settings.parse_http = on;
    }
}

fn filtered_by(source: u8) -> u32 {
    // The tap.filters bits that keep a stream's bytes from the consumers (counts kept).
    if source == SRC_SOCKET {
        SKIP_DATA
    } else {
        SKIP_DATA | SKIP_TLS
    }
}

/// A finished transaction: the native parser's value (turned into Python objects, or
/// into a record, only when `pipeline::DataPlane::take` hands it out), or the Python
/// parser's object.
pub enum TxValue {
    Native(Box<crate::model::Transaction>),
    Py(PyObject),
}

enum HttpEvent {
    Transaction {
        tx: TxValue,
        grpc: bool,
        host: Option<String>,
    },
    ParseError,
    /// The parser raised (a bug): parsing stops for this connection.
    Failed,
}

fn new_http_parser(
    py: Gil<'_>,
    proto: &str,
    body_limit: usize,
    midstream: bool,
) -> Option<HttpParser> {
    let native = match proto {
        "http1" => crate::http1::new_parser(body_limit, midstream),
        "http2" => crate::http2::new_parser(body_limit, midstream),
        _ => None,
    };
    if let Some(p) = native {
        return Some(HttpParser::Native(p));
    }
    // Not built in natively yet: the Python parser, through the same sans-IO calls.
    py.with(|py| {
        let m = py.import("plaintap.protocols").ok()?;
        let kw = pyo3::types::PyDict::new(py);
        kw.set_item("body_limit", body_limit).ok()?;
        kw.set_item("midstream", midstream).ok()?;
        m.getattr("new_parser")
            .ok()?
            .call((proto,), Some(&kw))
            .ok()
            .map(|p| HttpParser::Python(p.unbind()))
    })
}

enum Feed<'a> {
    Data(&'a [u8]),
    Gap(u64),
}

fn feed(py: Gil<'_>, h: &mut Http, side: Side, what: Feed<'_>, ts: u64) {
    if h.dead {
        return;
    }
    let Some(p) = h.parser.as_mut() else {
        return;
    };
    match p {
        HttpParser::Native(p) => match what {
            Feed::Data(d) => p.feed(side, d, ts),
            Feed::Gap(n) => p.feed_gap(side, n, ts),
        },
        HttpParser::Python(p) => {
            let failed = py.with(|py| {
                let r = match what {
                    Feed::Data(d) => {
                        p.call_method1(py, "feed", (side as i64, PyBytes::new(py, d), ts))
                    }
                    Feed::Gap(n) => p.call_method1(py, "feed_gap", (side as i64, n, ts)),
                };
                r.map_err(|e| e.print_and_set_sys_last_vars(py)).is_err()
            });
            if failed {
                h.dead = true;
            }
        }
    }
}

fn drain(py: Gil<'_>, h: &mut Http, events: &mut Vec<HttpEvent>) {
    let Some(p) = h.parser.as_mut() else {
        return;
    };
    loop {
        match p {
            HttpParser::Native(p) => match p.next_event() {
                None => return,
                Some(ParserEvent::Error(_)) => events.push(HttpEvent::ParseError),
                Some(ParserEvent::Transaction(tx)) => {
                    let grpc = tx.grpc.is_some();
                    let host = native_host(&tx);
                    events.push(HttpEvent::Transaction {
                        tx: TxValue::Native(tx),
                        grpc,
                        host,
                    });
                }
            },
            HttpParser::Python(p) => match py.with(|py| py_next_event(py, p)) {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => return,
                Err(()) => {
                    events.push(HttpEvent::Failed);
                    h.dead = true;
                    return;
                }
            },
        }
    }
}

/// The Python parser's next event (None: nothing ready; Err: it raised, printed).
fn py_next_event(py: Python<'_>, p: &PyObject) -> Result<Option<HttpEvent>, ()> {
    let ev = p
        .call_method0(py, "next_event")
        .map_err(|e| e.print_and_set_sys_last_vars(py))?;
    if ev.is_none(py) {
        return Ok(None);
    }
    let b = ev.bind(py);
    let is_error = py_parser::model_types(py)
        .map(|t| b.is_instance(t.parse_error.bind(py)).unwrap_or(false))
        .unwrap_or(false);
    if is_error {
        return Ok(Some(HttpEvent::ParseError));
    }
    let grpc = b.getattr("grpc").map(|g| !g.is_none()).unwrap_or(false);
    let host = b
        .getattr("host")
        .ok()
        .and_then(|h| h.extract::<Option<String>>().ok())
        .flatten();
    Ok(Some(HttpEvent::Transaction {
        tx: TxValue::Py(ev),
        grpc,
        host,
    }))
}

/// Build a ConnOpen for a connection adopted at start-up.
#[allow(clippy::too_many_arguments)]
pub fn adopted(
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
) -> ConnOpen {
    ConnOpen {
        conn_id,
        tid: 0,
        fd,
        uid,
        role,
        direction,
        local_addr,
        local_port,
        remote_addr,
        remote_port,
        comm,
    }
}
