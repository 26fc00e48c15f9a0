//! Sharing the GIL with a latency-critical Python thread (TLS discovery, issue 11 item 7).
//!
//! The capture loop's `DataPlane.drain` works in native code with the GIL held for up to
//! a slice (20 ms). CPython hands the GIL to a waiting thread only when its holder
//! releases it, and a thread that asks for it waits a switch interval (5 ms) before it
//! even asks the holder to drop it; native code never sees that request. So the TLS
//! thread, which needs the GIL between each of its syscalls (reading maps, opening a
//! file, the attach calls, a worker's reply), waited behind the drain up to 20 ms per
//! step while a new program ran unhooked towards its first TLS call.
//!
//! Here a thread says it is busy with urgent work: `wait_readable` (its idle wait) marks
//! it urgent from the moment it wakes until it waits again. The drain checks the mark
//! every few records (one atomic load) and, while it is set, gives the GIL away: it
//! releases the GIL until the urgent thread is idle again or `YIELD_MAX` passed, then
//! works at least `WORK_MIN` before it yields again, so the data plane keeps at least
//! half of the time even if the urgent thread stayed busy (an exec storm).
use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::ring;

/// Threads marked urgent now.
static URGENT: AtomicU32 = AtomicU32::new(0);

/// After `wait_readable` woke: how often, and how long its thread then waited for the GIL
/// (total and longest, ns).
static WAKES: AtomicU64 = AtomicU64::new(0);
static GIL_WAIT_NS: AtomicU64 = AtomicU64::new(0);
static GIL_WAIT_MAX_NS: AtomicU64 = AtomicU64::new(0);

/// Longest the drain waits, GIL released, for an urgent thread to finish its step.
pub const YIELD_MAX: Duration = Duration::from_millis(1);
/// Least work the drain does between two yields.
pub const WORK_MIN: Duration = Duration::from_millis(1);

/// This thread's mark; a thread that ends marked is unmarked then.
struct Mark(Cell<bool>);

impl Drop for Mark {
    fn drop(&mut self) {
        if self.0.get() {
            URGENT.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

thread_local! {
    static MARKED: Mark = const { Mark(Cell::new(false)) };
}

/// Mark (or unmark) the calling thread urgent; idempotent per thread.
pub fn set_urgent(on: bool) {
    // (during thread teardown the mark is gone: nothing to change then)
    let _ = MARKED.try_with(|m| {
        if m.0.get() != on {
            m.0.set(on);
            if on {
                URGENT.fetch_add(1, Ordering::AcqRel);
            } else {
                URGENT.fetch_sub(1, Ordering::AcqRel);
            }
        }
    });
}

/// Some thread is busy with urgent work.
pub fn urgent() -> bool {
    URGENT.load(Ordering::Relaxed) > 0
}

/// When to yield next; `GilShare::maybe` is called by a GIL holder every few records.
pub struct GilShare {
    next: Instant,
    /// times the GIL was given away (for tests and the drain's own bookkeeping)
    pub yields: u32,
}

impl Default for GilShare {
    fn default() -> Self {
        GilShare {
            next: Instant::now(),
            yields: 0,
        }
    }
}

impl GilShare {
    /// If a thread is urgent and this holder has worked `WORK_MIN` since its last yield,
    /// release the GIL until that thread is idle again (at most `YIELD_MAX`).
    pub fn maybe(&mut self, py: Python<'_>) {
        if !urgent() {
            return;
        }
        let now = Instant::now();
        if now < self.next {
            return;
        }
        py.allow_threads(|| {
            let t0 = Instant::now();
            while urgent() && t0.elapsed() < YIELD_MAX {
                std::thread::sleep(Duration::from_micros(20));
            }
        });
        self.yields += 1;
        self.next = Instant::now() + WORK_MIN;
    }
}

/// Wait, without the GIL, until one of `fds` is readable or `timeout_ms` passed (-1:
/// forever); the calling thread is unmarked meanwhile and marked urgent again before it
/// takes the GIL back, so the data plane yields to it until it next waits here.
#[pyfunction]
#[pyo3(signature = (fds, timeout_ms, urgent = true))]
pub fn wait_readable(py: Python<'_>, fds: Vec<i32>, timeout_ms: i32, urgent: bool) {
    set_urgent(false);
    let woke = py.allow_threads(|| {
        ring::wait(&fds, timeout_ms);
        if urgent {
            set_urgent(true);
        }
        Instant::now()
    });
    let waited = woke.elapsed().as_nanos() as u64;
    WAKES.fetch_add(1, Ordering::Relaxed);
    GIL_WAIT_NS.fetch_add(waited, Ordering::Relaxed);
    GIL_WAIT_MAX_NS.fetch_max(waited, Ordering::Relaxed);
}

/// (wake-ups of `wait_readable`, ns its threads then waited for the GIL in total, the
/// longest such wait in ns): what the GIL costs TLS discovery (logged at stop).
#[pyfunction]
pub fn gil_wait_stats() -> (u64, u64, u64) {
    (
        WAKES.load(Ordering::Relaxed),
        GIL_WAIT_NS.load(Ordering::Relaxed),
        GIL_WAIT_MAX_NS.load(Ordering::Relaxed),
    )
}

/// Mark or unmark the calling thread urgent by hand (a thread ending, tests).
#[pyfunction]
pub fn gil_urgent(on: bool) {
    set_urgent(on);
}

/// How many threads are marked urgent (tests).
#[pyfunction]
pub fn gil_urgent_count() -> u32 {
    URGENT.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marking_is_per_thread_and_idempotent() {
        let base = URGENT.load(Ordering::Relaxed);
        set_urgent(true);
        set_urgent(true);
        assert_eq!(URGENT.load(Ordering::Relaxed), base + 1);
        std::thread::spawn(|| {
            set_urgent(false); // not marked on this thread: no change
            set_urgent(true);
            set_urgent(false);
            set_urgent(true); // ends marked: unmarked as it ends
        })
        .join()
        .unwrap();
        assert_eq!(URGENT.load(Ordering::Relaxed), base + 1);
        set_urgent(false);
        assert_eq!(URGENT.load(Ordering::Relaxed), base);
    }
}
