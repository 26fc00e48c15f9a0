//! `--workers N`: the connection table split into N shards, each on its own thread,
//! working without the GIL.
//!
//! The reader (the Python thread, in `DataPlane.drain` or `feed`) reads the rings in time
//! order exactly as with one table and routes each record by its connection id (`conn_id`,
//! unique per agent run) to shard `shard_of(conn_id, N)`: all of one connection's records
//! stay in their order on one thread. What needs Python stays with the reader: a
//! connection's open asks `hooks.on_open` there (and looks up the DNS names), and the
//! answer travels with the record; exec, exit and DNS datagrams are handled by the reader's
//! own table (the control table: process hooks, UDP DNS, the address → name map), and so
//! are DNS-over-TCP connections (a client's to port 53: the names their answers teach must
//! be known to the next open, as with one table); a process exit is also sent to every shard,
//! which finishes that process's connections. What a shard produces (transactions, reports,
//! `forget` calls for the kernel) waits in its mailbox until `DataPlane.take` collects it on
//! the Python thread.
//!
//! Bounds: the record bytes in flight to the shards are at most `queue_limit` — half the
//! global byte budget, so 1/16 of `--memory-limit` (32 MiB at the default), at least
//! MIN_QUEUE_BYTES — past which the reader stops reading, leaving the records in the
//! kernel's ring, until the shards catch up; each shard's table keeps 1/N of the global
//! byte budget.
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::conn::{ConnInfo, Counters, Gil, Hooks, Output, Resolved, Settings, Table};
use crate::decode::ConnOpen;

/// The largest `--workers`.
pub const MAX_WORKERS: usize = 64;
/// The agent's loop ticks every turn; the shards at most this often (kernel time), unwaited.
pub const TICK_EVERY_NS: u64 = 10_000_000;
/// The least record bytes in flight from the reader to all shards together (see
/// `Shards::queue_limit`).
pub const MIN_QUEUE_BYTES: usize = 4 << 20;

/// The shard that owns connection `conn_id` among `n`.
pub fn shard_of(conn_id: u64, n: usize) -> usize {
    // Fibonacci hashing: neighbouring ids spread evenly whatever their low bits.
    ((conn_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % n as u64) as usize
}

enum Item {
    /// A record (bytes `start..end` of the batch); for an open, the reader's answer
    /// (None inside: the hook failed).
    Rec {
        start: usize,
        end: usize,
        open: Option<Option<Resolved>>,
    },
    /// Process `pid` exited at `ts`.
    Exit { pid: u32, ts: u64 },
}

/// Records for one shard, copied out of the ring in their order.
#[derive(Default)]
pub struct Batch {
    buf: Vec<u8>,
    items: Vec<Item>,
}

impl Batch {
    pub fn record(&mut self, raw: &[u8], open: Option<Option<Resolved>>) {
        let start = self.buf.len();
        self.buf.extend_from_slice(raw);
        self.items.push(Item::Rec {
            start,
            end: self.buf.len(),
            open,
        });
    }

    pub fn exit(&mut self, pid: u32, ts: u64) {
        self.items.push(Item::Exit { pid, ts });
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

enum Msg {
    Batch(Batch),
    Adopt {
        pid: u32,
        ts: u64,
        open: ConnOpen,
        resolved: Option<Resolved>,
    },
    Tick(u64),
    TickLater(u64),
    CloseSome(u64, usize),
    CloseAll(u64),
    AbandonAll(u64),
    SetParseHttp(bool),
    Info(u64),
    Sync,
    /// Panics in the worker (tests of the panic guard).
    #[cfg(test)]
    Panic,
}

enum Reply {
    N(usize),
    Info(Option<Box<ConnInfo>>),
}

/// The DNS counters `DataPlane.stats` reports, summed over tables.
#[derive(Default, Clone)]
pub struct DnsCounts {
    pub names: u64,
    pub name_evictions: u64,
    pub names_expired: u64,
    pub names_learned: u64,
    pub pending: u64,
    pub queries_given_up: u64,
    pub queries_unanswered: u64,
    pub answers_unmatched: u64,
    pub datagrams_cut: u64,
    pub datagrams_ignored: u64,
    pub parse_errors: HashMap<&'static str, u64>,
}

impl DnsCounts {
    pub fn of(x: &crate::dns::Dns) -> DnsCounts {
        DnsCounts {
            names: x.names.len() as u64,
            name_evictions: x.names.evictions,
            names_expired: x.names.expired,
            names_learned: x.learned,
            pending: x.exchanges.len() as u64,
            queries_given_up: x.exchanges.given_up,
            queries_unanswered: x.exchanges.unanswered,
            answers_unmatched: x.exchanges.unmatched_answers,
            datagrams_cut: x.cut,
            datagrams_ignored: x.ignored,
            parse_errors: x.errors.clone(),
        }
    }

    pub fn add(&mut self, o: &DnsCounts) {
        self.names += o.names;
        self.name_evictions += o.name_evictions;
        self.names_expired += o.names_expired;
        self.names_learned += o.names_learned;
        self.pending += o.pending;
        self.queries_given_up += o.queries_given_up;
        self.queries_unanswered += o.queries_unanswered;
        self.answers_unmatched += o.answers_unmatched;
        self.datagrams_cut += o.datagrams_cut;
        self.datagrams_ignored += o.datagrams_ignored;
        add_map(&mut self.parse_errors, &o.parse_errors);
    }
}

fn add_map(a: &mut HashMap<&'static str, u64>, b: &HashMap<&'static str, u64>) {
    for (k, v) in b {
        *a.entry(k).or_default() += v;
    }
}

/// `a += b`, counter by counter (every field named: a new counter must be added here).
pub fn add_counters(a: &mut Counters, b: &Counters) {
    let Counters {
        events,
        unknown_events,
        orphan_events,
        orphan_gap_bytes,
        unplaced_gap_bytes,
        gap_overcount_bytes,
        gap_bytes,
        parse_errors,
        parser_failures,
        filtered_connections,
        filtered_dns,
        hook_errors,
        shed_bytes,
        held_dropped,
        closed_by_state,
        finished_by_exit,
        transactions,
    } = b;
    for (x, y) in a.events.iter_mut().zip(events.iter()) {
        *x += y;
    }
    a.unknown_events += unknown_events;
    a.orphan_events += orphan_events;
    a.orphan_gap_bytes += orphan_gap_bytes;
    a.unplaced_gap_bytes += unplaced_gap_bytes;
    a.gap_overcount_bytes += gap_overcount_bytes;
    add_map(&mut a.gap_bytes, gap_bytes);
    add_map(&mut a.parse_errors, parse_errors);
    a.parser_failures += parser_failures;
    a.filtered_connections += filtered_connections;
    a.filtered_dns += filtered_dns;
    a.hook_errors += hook_errors;
    add_map(&mut a.shed_bytes, shed_bytes);
    a.held_dropped += held_dropped;
    a.closed_by_state += closed_by_state;
    a.finished_by_exit += finished_by_exit;
    a.transactions += transactions;
}

/// What a shard hands to the Python thread, and its latest figures.
#[derive(Default)]
pub struct Mailbox {
    pub out: Vec<Output>,
    pub forgets: Vec<(u32, i32)>,
    pub counters: Counters,
    pub dns: DnsCounts,
    pub len: usize,
    pub held: u64,
    /// Kernel time of the newest record this shard handled.
    pub last_ts: u64,
}

struct Shared {
    mailbox: Mutex<Mailbox>,
    /// Record bytes sent to this shard and not yet handled (outputs published).
    queued: AtomicUsize,
}

impl Shared {
    fn mailbox(&self) -> std::sync::MutexGuard<'_, Mailbox> {
        // A shard that panicked mid-publish left consistent data (plain moves): keep going.
        self.mailbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Shard {
    tx: Sender<Msg>,
    reply: Receiver<Reply>,
    shared: Arc<Shared>,
    /// Records routed here by the reader, not yet sent.
    batch: Batch,
}

/// What `Shards::collect` hands over.
#[derive(Default)]
pub struct Collected {
    pub out: Vec<Output>,
    pub forgets: Vec<(u32, i32)>,
}

/// Record bytes sent to the shards and not yet handled.
pub struct QueueGauge(Vec<Arc<Shared>>);

impl QueueGauge {
    pub fn bytes(&self) -> usize {
        self.0
            .iter()
            .map(|s| s.queued.load(Ordering::Acquire))
            .sum()
    }
}

/// N connection-table shards on their own threads.
pub struct Shards {
    shards: Vec<Shard>,
    /// Record bytes in flight to all shards together, at most.
    queue_limit: usize,
    /// Kernel time up to which the rings were found empty (the reader's; see Table.caught_up).
    caught_up: Arc<AtomicU64>,
}

impl Shards {
    /// Start `n` shards, each with `settings` and 1/n of its byte budget.
    pub fn start(n: usize, settings: &Settings) -> std::io::Result<Shards> {
        let caught_up = Arc::new(AtomicU64::new(0));
        let mut shards = Vec::with_capacity(n);
        for i in 0..n {
            let mut s = settings.clone();
            s.byte_budget = (settings.byte_budget / n as u64).max(1);
            let table = Table::new(
                s,
                Hooks::Shard {
                    next: None,
                    forgets: Vec::new(),
                },
            );
            let (tx, rx) = channel();
            let (reply_tx, reply) = channel();
            let shared = Arc::new(Shared {
                mailbox: Mutex::new(Mailbox::default()),
                queued: AtomicUsize::new(0),
            });
            let (sh, cu) = (shared.clone(), caught_up.clone());
            std::thread::Builder::new()
                .name(format!("plaintap-worker-{i}"))
                .spawn(move || run(table, rx, reply_tx, sh, cu))?;
            shards.push(Shard {
                tx,
                reply,
                shared,
                batch: Batch::default(),
            });
        }
        let queue_limit = usize::try_from(settings.byte_budget / 2)
            .unwrap_or(usize::MAX)
            .max(MIN_QUEUE_BYTES);
        Ok(Shards {
            shards,
            queue_limit,
            caught_up,
        })
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The batch being built for connection `conn_id`'s shard.
    pub fn batch_for(&mut self, conn_id: u64) -> &mut Batch {
        let i = shard_of(conn_id, self.shards.len());
        &mut self.shards[i].batch
    }

    /// Process `pid` exited: every shard finishes its connections (in record order).
    pub fn exit(&mut self, pid: u32, ts: u64) {
        for s in &mut self.shards {
            s.batch.exit(pid, ts);
        }
    }

    /// Record bytes in flight: sent and not handled, or routed and not sent.
    pub fn queued_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.shared.queued.load(Ordering::Acquire) + s.batch.buf.len())
            .sum()
    }

    /// Whether the bytes in flight reached the limit: the reader leaves records in the ring.
    pub fn full(&self) -> bool {
        self.queued_bytes() >= self.queue_limit
    }

    pub fn queue_limit(&self) -> usize {
        self.queue_limit
    }

    /// The newest record time handled by the shard furthest behind, among the shards that
    /// still have records to handle; None when every shard handled all it was sent.
    pub fn lagging_ts(&self) -> Option<u64> {
        self.shards
            .iter()
            .filter(|s| s.shared.queued.load(Ordering::Acquire) > 0 || !s.batch.is_empty())
            .map(|s| s.shared.mailbox().last_ts)
            .filter(|&ts| ts > 0) // nothing handled yet: no time to tell
            .min()
    }

    /// The bytes sent and not yet handled, readable without the GIL.
    pub fn gauge(&self) -> QueueGauge {
        QueueGauge(self.shards.iter().map(|s| s.shared.clone()).collect())
    }

    /// Send the batches built so far.
    pub fn flush(&mut self) {
        for s in &mut self.shards {
            if s.batch.is_empty() {
                continue;
            }
            let b = std::mem::take(&mut s.batch);
            let n = b.buf.len();
            s.shared.queued.fetch_add(n, Ordering::AcqRel);
            if s.tx.send(Msg::Batch(b)).is_err() {
                // The shard's thread is gone (a bug): nothing will handle these bytes.
                s.shared.queued.fetch_sub(n, Ordering::AcqRel);
            }
        }
    }

    pub fn set_caught_up(&self, ts: u64) {
        self.caught_up.fetch_max(ts, Ordering::AcqRel);
    }

    /// Send `make(i)` to every shard (after what was routed so far) and wait for the
    /// answers. A shard whose thread is gone answers nothing (skipped).
    fn call(&mut self, make: impl Fn(usize) -> Msg) -> Vec<Reply> {
        self.flush();
        let mut sent = Vec::with_capacity(self.shards.len());
        for (i, s) in self.shards.iter().enumerate() {
            sent.push(s.tx.send(make(i)).is_ok());
        }
        let mut out = Vec::with_capacity(self.shards.len());
        for (s, ok) in self.shards.iter().zip(sent) {
            if ok {
                if let Ok(r) = s.reply.recv() {
                    out.push(r);
                }
            }
        }
        out
    }

    fn sum(&mut self, make: impl Fn(usize) -> Msg) -> usize {
        self.call(make)
            .into_iter()
            .map(|r| match r {
                Reply::N(n) => n,
                Reply::Info(_) => 0,
            })
            .sum()
    }

    /// Wait until every shard handled what was routed to it.
    pub fn sync(&mut self) {
        self.call(|_| Msg::Sync);
    }

    pub fn tick(&mut self, now: u64) {
        self.call(|_| Msg::Tick(now));
    }

    /// Tick without waiting: the reports come with a later `collect`.
    pub fn tick_later(&mut self, now: u64) {
        self.flush();
        for s in &self.shards {
            if s.tx.send(Msg::TickLater(now)).is_ok() {
                // counted as in flight, so that `busy` says a take will find something
                s.shared.queued.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Finalise up to `max` connections in all (`max` split between the shards); returns
    /// how many are left.
    pub fn close_some(&mut self, now: u64, max: usize) -> usize {
        let n = self.shards.len();
        let each = max.div_ceil(n).max(1);
        self.sum(|_| Msg::CloseSome(now, each))
    }

    pub fn close_all(&mut self, now: u64) {
        self.call(|_| Msg::CloseAll(now));
    }

    pub fn abandon_all(&mut self, now: u64) -> usize {
        self.sum(|_| Msg::AbandonAll(now))
    }

    pub fn set_parse_http(&mut self, on: bool) {
        self.flush();
        for s in &self.shards {
            let _ = s.tx.send(Msg::SetParseHttp(on));
        }
    }

    /// A connection open before the agent started, resolved by the reader.
    pub fn adopt(&mut self, pid: u32, ts: u64, open: ConnOpen, resolved: Option<Resolved>) {
        self.flush();
        let i = shard_of(open.conn_id, self.shards.len());
        let _ = self.shards[i].tx.send(Msg::Adopt {
            pid,
            ts,
            open,
            resolved,
        });
    }

    /// The current view of connection `conn_id`, from its shard.
    pub fn info(&mut self, conn_id: u64) -> Option<ConnInfo> {
        let i = shard_of(conn_id, self.shards.len());
        self.flush();
        let s = &self.shards[i];
        s.tx.send(Msg::Info(conn_id)).ok()?;
        match s.reply.recv() {
            Ok(Reply::Info(x)) => x.map(|b| *b),
            _ => None,
        }
    }

    /// Everything the shards produced since the last call (shard by shard, each in its
    /// order), and the kernel entries they asked to forget.
    pub fn collect(&self) -> Collected {
        let mut c = Collected::default();
        for s in &self.shards {
            let mut m = s.shared.mailbox();
            c.out.append(&mut m.out);
            c.forgets.append(&mut m.forgets);
        }
        c
    }

    /// Records in flight or outputs waiting: a `take` would (soon) find something.
    pub fn busy(&self) -> bool {
        self.shards.iter().any(|s| {
            s.shared.queued.load(Ordering::Acquire) > 0 || !s.shared.mailbox().out.is_empty()
        })
    }

    /// Counters, DNS counters, connections and held bytes, summed over the shards.
    pub fn totals(&self) -> (Counters, DnsCounts, usize, u64) {
        let mut c = Counters::default();
        let mut d = DnsCounts::default();
        let (mut len, mut held) = (0, 0);
        for s in &self.shards {
            let m = s.shared.mailbox();
            add_counters(&mut c, &m.counters);
            d.add(&m.dns);
            len += m.len;
            held += m.held;
        }
        (c, d, len, held)
    }
}

/// One shard's thread: handle messages in order, publish after each. A panic (a bug)
/// while handling one message is counted in `parser_failures` and costs that message
/// only: the thread goes on with the next, and a caller waiting for an answer gets an
/// empty one rather than waiting for a thread that is gone.
fn run(
    mut t: Table,
    rx: Receiver<Msg>,
    reply: Sender<Reply>,
    shared: Arc<Shared>,
    caught_up: Arc<AtomicU64>,
) {
    while let Ok(msg) = rx.recv() {
        let handled = match &msg {
            Msg::Batch(b) => b.buf.len(),
            Msg::TickLater(_) => 1,
            _ => 0,
        };
        let empty = match &msg {
            Msg::Info(_) => Some(Reply::Info(None)),
            Msg::Tick(_)
            | Msg::CloseSome(..)
            | Msg::CloseAll(_)
            | Msg::AbandonAll(_)
            | Msg::Sync => Some(Reply::N(0)),
            _ => None,
        };
        let answer = match catch_unwind(AssertUnwindSafe(|| handle(&mut t, msg, &caught_up))) {
            Ok(answer) => answer,
            Err(_) => {
                t.counters.parser_failures += 1;
                empty
            }
        };
        publish(&mut t, &shared);
        if handled > 0 {
            shared.queued.fetch_sub(handled, Ordering::AcqRel);
        }
        if let Some(a) = answer {
            let _ = reply.send(a);
        }
    }
}

/// Handle one message; returns the answer its sender waits for, if it waits.
fn handle(t: &mut Table, msg: Msg, caught_up: &AtomicU64) -> Option<Reply> {
    let py = Gil::Free;
    match msg {
        Msg::Batch(b) => {
            for item in b.items {
                match item {
                    Item::Rec { start, end, open } => {
                        if let (Some(r), Hooks::Shard { next, .. }) = (open, &mut t.hooks) {
                            *next = Some(r);
                        }
                        t.handle_raw(py, &b.buf[start..end]);
                    }
                    Item::Exit { pid, ts } => t.finish_pid(py, pid, ts),
                }
            }
            None
        }
        Msg::Adopt {
            pid,
            ts,
            open,
            resolved,
        } => {
            if let Hooks::Shard { next, .. } = &mut t.hooks {
                *next = Some(resolved);
            }
            t.on_open(py, pid, ts, open, true);
            None
        }
        Msg::Tick(now) => {
            t.caught_up = t.caught_up.max(caught_up.load(Ordering::Acquire));
            t.tick(py, now);
            Some(Reply::N(0))
        }
        Msg::TickLater(now) => {
            t.caught_up = t.caught_up.max(caught_up.load(Ordering::Acquire));
            t.tick(py, now);
            None
        }
        Msg::CloseSome(now, max) => Some(Reply::N(t.close_some(py, now, max))),
        Msg::CloseAll(now) => {
            t.close_all(py, now);
            Some(Reply::N(0))
        }
        Msg::AbandonAll(now) => Some(Reply::N(t.abandon_all(py, now))),
        Msg::SetParseHttp(on) => {
            t.set_parse_http(on);
            None
        }
        Msg::Info(kid) => Some(Reply::Info(t.info(kid).map(|i| Box::new(i.snapshot())))),
        Msg::Sync => Some(Reply::N(0)),
        #[cfg(test)]
        Msg::Panic => panic!("test: a bug in a worker"),
    }
}

fn publish(t: &mut Table, shared: &Shared) {
    let forgets = match &mut t.hooks {
        Hooks::Shard { forgets, .. } => std::mem::take(forgets),
        Hooks::Py(_) => Vec::new(),
    };
    let mut m = shared.mailbox();
    m.out.append(&mut t.out);
    m.forgets.extend(forgets);
    m.counters.clone_from(&t.counters);
    m.dns = DnsCounts::of(&t.dns);
    m.len = t.len();
    m.held = t.held_total;
    m.last_ts = t.last_ts;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_stable_and_in_range() {
        for n in 1..=8 {
            for id in 0..1000u64 {
                let s = shard_of(id, n);
                assert!(s < n);
                assert_eq!(s, shard_of(id, n));
            }
        }
        assert!((0..1000u64).all(|id| shard_of(id, 1) == 0));
    }

    #[test]
    fn shard_of_spreads_sequential_ids() {
        for n in [2usize, 3, 4, 8] {
            let mut count = vec![0usize; n];
            for id in 1..=10_000u64 {
                count[shard_of(id, n)] += 1;
            }
            let even = 10_000 / n;
            for c in count {
                assert!(
                    c > even * 8 / 10 && c < even * 12 / 10,
                    "{n}: {c} vs {even}"
                );
            }
        }
    }

    fn settings(byte_budget: u64) -> Settings {
        Settings {
            run_id: "t".into(),
            parse_http: true,
            body_limit: 1 << 20,
            dump: false,
            first_report_ns: crate::conn::FIRST_REPORT_NS,
            interval_ns: crate::conn::REPORT_INTERVAL_NS,
            byte_budget,
            max_pending: crate::reassembly::DEFAULT_MAX_PENDING,
            close_grace_ns: crate::conn::CLOSE_GRACE_NS,
        }
    }

    #[test]
    fn the_bytes_in_flight_follow_the_memory_budget() {
        // --memory-limit 512mb: a byte budget of 64 MiB, 32 MiB in flight
        assert_eq!(
            Shards::start(2, &settings(64 << 20)).unwrap().queue_limit(),
            32 << 20
        );
        assert_eq!(
            Shards::start(2, &settings(1 << 30)).unwrap().queue_limit(),
            512 << 20
        );
        assert_eq!(
            Shards::start(2, &settings(1 << 20)).unwrap().queue_limit(),
            MIN_QUEUE_BYTES
        );
    }

    #[test]
    fn a_panic_in_a_worker_costs_one_message_counted_and_the_worker_goes_on() {
        let settings = settings(crate::conn::DEFAULT_BYTE_BUDGET);
        let mut shards = Shards::start(2, &settings).unwrap();
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {})); // the expected panic need not be printed
        for s in &shards.shards {
            s.tx.send(Msg::Panic).unwrap();
            s.tx.send(Msg::Panic).unwrap();
        }
        shards.sync(); // answered: both workers are still there
        std::panic::set_hook(hook);
        assert_eq!(shards.close_some(0, 10), 0);
        assert_eq!(shards.totals().0.parser_failures, 4);
    }

    #[test]
    fn counters_add_up() {
        let mut a = Counters::default();
        let mut b = Counters::default();
        b.events[2] = 5;
        b.transactions = 3;
        b.gap_bytes.insert("ringbuf_full", 7);
        add_counters(&mut a, &b);
        add_counters(&mut a, &b);
        assert_eq!(a.events[2], 10);
        assert_eq!(a.transactions, 6);
        assert_eq!(a.gap_bytes["ringbuf_full"], 14);
    }
}
