//! Yielding the CPU to the workload: the data plane's thread works at idle priority
//! (SCHED_IDLE) for up to a grace period per turn of its loop, then competes normally.
//!
//! Why (bench_live_overhead, 2 cores saturated by wrk and nginx): each time the agent woke
//! up at normal priority it preempted nginx or wrk; the other one then ran out of work and
//! its CPU went idle (a third of the machine idled in the agent's rounds) while the
//! preempted one waited, too recently run to be moved. At idle priority the agent only
//! takes a CPU nobody else wants, and a waking nginx or wrk takes it back at once.
//!
//! Bounded: a watcher thread (normal priority) restores normal priority when a turn has
//! lasted `grace` — so on a host with no idle CPU the agent waits at most that long before
//! competing as before, records are late by at most that much, and no other thread waits
//! longer than that for the GIL the loop holds. After such a turn the loop is behind: its
//! next turns run at normal priority until it has caught up (found the rings empty and
//! waited), so a saturated host pays the grace once per backlog, not once per turn. The
//! Control records (an exec, a connection's open or close) end an idle turn at once: the
//! watcher waits on the control ring rather than sleeping, so TLS discovery of a new
//! program and process attribution are never held back by yielding.
//! The loop calls `enter()` after its wait (it is running then, so it can demote itself),
//! `leave()` before the next wait (normal priority while it waits, so that the wake-up
//! after new records is prompt) and `caught_up()` when it found nothing left to do.
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

struct Shared {
    /// Odd while a turn is in progress (the loop at idle priority), even between turns.
    seq: AtomicU64,
    /// The thread in its turn.
    tid: AtomicI32,
    /// True while that thread is at idle priority.
    idle: AtomicBool,
    /// A turn outlasted the grace and the loop has not caught up since: no idle turns.
    behind: AtomicBool,
    boosts: AtomicU64,
    stop: AtomicBool,
    wake: (Mutex<()>, Condvar),
    grace: Duration,
    /// The control ring's fd (readable: a control record waits), or -1.
    control_fd: i32,
}

pub struct Yielder {
    shared: Arc<Shared>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

fn in_turn(seq: u64) -> bool {
    seq & 1 == 1
}

fn set_policy(tid: i32, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param` only; tid is a thread of this process.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Whether this process may go to idle priority and come back (back to SCHED_OTHER from
/// SCHED_IDLE needs CAP_SYS_NICE or a RLIMIT_NICE allowance). Tried on a throwaway thread,
/// so that a refusal never leaves a thread that matters stuck at idle priority.
pub fn can_yield() -> bool {
    std::thread::spawn(|| {
        let tid = gettid();
        set_policy(tid, libc::SCHED_IDLE) && set_policy(tid, libc::SCHED_OTHER)
    })
    .join()
    .unwrap_or(false)
}

impl Yielder {
    /// None when the process may not come back from idle priority (see `can_yield`).
    /// `control_fd`: the control ring (a record there ends an idle turn), or -1.
    pub fn start(grace: Duration, control_fd: i32) -> Option<Yielder> {
        if !can_yield() {
            return None;
        }
        let shared = Arc::new(Shared {
            seq: AtomicU64::new(0),
            tid: AtomicI32::new(0),
            idle: AtomicBool::new(false),
            behind: AtomicBool::new(false),
            boosts: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
            grace,
            control_fd,
        });
        let s = shared.clone();
        let watcher = std::thread::Builder::new()
            .name("plaintap-yield".into())
            .spawn(move || watch(&s))
            .ok()?;
        Some(Yielder {
            shared,
            watcher: Some(watcher),
        })
    }

    /// A turn begins on the calling thread: idle priority until `leave` or the grace
    /// (unless the loop is behind: then normal priority).
    pub fn enter(&self) {
        let s = &self.shared;
        if in_turn(s.seq.load(Ordering::Acquire)) || s.behind.load(Ordering::Acquire) {
            return;
        }
        let tid = gettid();
        s.tid.store(tid, Ordering::Release);
        if set_policy(tid, libc::SCHED_IDLE) {
            s.idle.store(true, Ordering::Release);
        }
        let _g = s.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        s.seq.fetch_add(1, Ordering::AcqRel);
        s.wake.1.notify_one();
    }

    /// The turn ends: normal priority again (if the watcher did not restore it already).
    pub fn leave(&self) {
        let s = &self.shared;
        if !in_turn(s.seq.load(Ordering::Acquire)) {
            return;
        }
        {
            let _g = s.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            s.seq.fetch_add(1, Ordering::AcqRel);
        }
        if s.idle.swap(false, Ordering::AcqRel) {
            set_policy(s.tid.load(Ordering::Acquire), libc::SCHED_OTHER);
        }
    }

    /// The loop found the rings empty: idle turns again from the next one.
    pub fn caught_up(&self) {
        self.shared.behind.store(false, Ordering::Release);
    }

    /// Turns the watcher ended early because they lasted the whole grace.
    pub fn boosts(&self) -> u64 {
        self.shared.boosts.load(Ordering::Relaxed)
    }
}

impl Drop for Yielder {
    fn drop(&mut self) {
        self.leave();
        {
            let _g = self.shared.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.stop.store(true, Ordering::Release);
            self.shared.wake.1.notify_one();
        }
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}

/// Whether `fd` became readable within `grace` (without an fd: sleeps, false).
fn readable_within(fd: i32, grace: Duration) -> bool {
    if fd < 0 {
        std::thread::sleep(grace);
        return false;
    }
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = grace.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// The watcher: parked between turns; during a turn, wakes once after the grace and, if
/// that same turn is still at idle priority, restores normal priority.
fn watch(s: &Shared) {
    let (lock, cv) = &s.wake;
    loop {
        let turn = {
            let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !in_turn(s.seq.load(Ordering::Acquire)) && !s.stop.load(Ordering::Acquire) {
                g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            s.seq.load(Ordering::Acquire)
        };
        let record = readable_within(s.control_fd, s.grace);
        if s.seq.load(Ordering::Acquire) == turn && s.idle.swap(false, Ordering::AcqRel) {
            if !record {
                s.behind.store(true, Ordering::Release);
                s.boosts.fetch_add(1, Ordering::Relaxed);
            }
            set_policy(s.tid.load(Ordering::Acquire), libc::SCHED_OTHER);
        }
        // wait for this turn to end before watching the next
        let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
        while s.seq.load(Ordering::Acquire) == turn && !s.stop.load(Ordering::Acquire) {
            g = cv
                .wait_timeout(g, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> libc::c_int {
        // SAFETY: no preconditions.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn a_turn_runs_at_idle_priority_and_ends_at_normal_priority() {
        let Some(y) = Yielder::start(Duration::from_secs(5), -1) else {
            return; // not permitted here (no CAP_SYS_NICE): nothing to test
        };
        y.enter();
        assert_eq!(policy(), libc::SCHED_IDLE);
        y.leave();
        assert_eq!(policy(), libc::SCHED_OTHER);
        assert_eq!(y.boosts(), 0);
    }

    #[test]
    fn a_readable_control_fd_ends_an_idle_turn_at_once() {
        let mut fds = [0i32; 2];
        // SAFETY: a pipe into a valid array of two fds.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let Some(y) = Yielder::start(Duration::from_secs(30), fds[0]) else {
            return;
        };
        y.enter();
        assert_eq!(policy(), libc::SCHED_IDLE);
        // SAFETY: writing one byte from a valid buffer to the pipe's write end.
        assert_eq!(unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) }, 1);
        let t0 = std::time::Instant::now();
        while policy() == libc::SCHED_IDLE && t0.elapsed() < Duration::from_secs(5) {
            std::hint::spin_loop();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "not ended by the record"
        );
        assert_eq!(y.boosts(), 0); // not a starved turn: the loop is not behind
        y.leave();
        drop(y);
        // SAFETY: closing the two fds made above.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn a_turn_longer_than_the_grace_is_restored_by_the_watcher() {
        let Some(y) = Yielder::start(Duration::from_millis(5), -1) else {
            return;
        };
        y.enter();
        let t0 = std::time::Instant::now();
        while policy() == libc::SCHED_IDLE && t0.elapsed() < Duration::from_secs(5) {
            std::hint::spin_loop();
        }
        assert_eq!(policy(), libc::SCHED_OTHER);
        assert_eq!(y.boosts(), 1);
        y.leave();
        assert_eq!(policy(), libc::SCHED_OTHER);
        // behind: the next turn competes at once
        y.enter();
        assert_eq!(policy(), libc::SCHED_OTHER);
        y.leave();
        // caught up: idle turns again, watched again
        y.caught_up();
        y.enter();
        assert_eq!(policy(), libc::SCHED_IDLE);
        drop(y);
        assert_eq!(policy(), libc::SCHED_OTHER);
    }
}
