//! Keeps the kernel's uprobe registration path "warm" while programs are being started,
//! so that hooking a new executable does not wait for an RCU grace period.
//!
//! Why: registering a uprobe takes the kernel's global `dup_mmap_sem` (a percpu
//! rw-semaphore) for writing. Its writer side first calls `rcu_sync_enter`, which, when
//! the semaphore has been idle, waits for a full RCU grace period (8–16 ms at HZ=250 on
//! an idle machine, 100 ms and more under load) before the probe can be registered. The
//! `rcu_sync` state machine (kernel/rcu/sync.c) goes back to idle only one grace period
//! after the last writer left; a writer entering before that does not wait. So a write
//! every couple of milliseconds keeps every registration, ours included, from waiting.
//!
//! How: a dispatcher thread hands a "touch" every `period` to a pool of worker threads;
//! a touch is one `bpf(BPF_LINK_CREATE)` of a uprobe_multi link, filtered to this
//! process, on a private memfd page of `int3` instructions that this process maps
//! executable. The kernel takes the semaphore for writing, finds our mapping, refuses
//! to probe a trap instruction (ENOTSUPP) and undoes the registration: nothing is ever
//! attached, no file or name is visible outside the process. The undo waits for the
//! uprobe SRCU/tasks-trace grace periods (~50 ms) without holding any lock, which is why
//! the touches run on a pool (grown on demand up to `max_workers`) and not in a loop.
//! Touches happen only until the deadline `warm_for` sets (the agent extends it at each
//! exec), so an idle host pays nothing.
//!
//! Cost while warm (measured on 2 vCPUs, 2 ms period): ~2% of one CPU for the touches
//! (~500/s, ~50 threads mostly asleep in the kernel) plus 0.3–2% in RCU kernel threads; a fork may wait for a touch's write section (the
//! writer waits for forks in progress), fork p99 rose from 1.2–2.3 ms to ~4 ms with 64 MB
//! processes.

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_TRACE_UPROBE_MULTI: u32 = 48;
const PAGE: usize = 4096;
const ENOTSUPP: i32 = 524; // the kernel's internal "not supported" (a trap instruction)

struct Pool {
    pending: usize,
    idle: usize,
    workers: usize,
}

struct Shared {
    stop: AtomicBool,
    until: Mutex<Option<Instant>>,
    dispatch: Condvar,
    pool: Mutex<Pool>,
    work: Condvar,
    touches: AtomicU64,
    errors: AtomicU64,
    last_errno: AtomicI32,
    prog_fd: i32,
    path: CString,
    pid: u32,
    period: Duration,
    max_workers: usize,
}

impl Shared {
    fn touch(&self) {
        let r = uprobe_multi_link(self.prog_fd, &self.path, &[0], &[0], false, self.pid);
        self.touches.fetch_add(1, Ordering::Relaxed);
        match r {
            // SAFETY: a link fd this call just created and nobody else knows.
            Ok(fd) => unsafe {
                libc::close(fd);
            },
            Err(e) if e != ENOTSUPP => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.last_errno.store(e, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
}

/// bpf(BPF_LINK_CREATE) of a uprobe_multi link: program `prog_fd` at each of `offsets`
/// (with `cookies`) in file `path` (every process when `pid` is 0; a return probe with
/// `retprobe`). The link fd, or the errno. Shared by the warm-up touches and the exec lane.
pub fn uprobe_multi_link(
    prog_fd: i32,
    path: &CStr,
    offsets: &[u64],
    cookies: &[u64],
    retprobe: bool,
    pid: u32,
) -> Result<i32, i32> {
    let n = offsets.len().min(cookies.len()) as u32;
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&(prog_fd as u32).to_le_bytes());
    attr[8..12].copy_from_slice(&BPF_TRACE_UPROBE_MULTI.to_le_bytes());
    attr[16..24].copy_from_slice(&(path.as_ptr() as u64).to_le_bytes());
    attr[24..32].copy_from_slice(&(offsets.as_ptr() as u64).to_le_bytes());
    attr[40..48].copy_from_slice(&(cookies.as_ptr() as u64).to_le_bytes());
    attr[48..52].copy_from_slice(&n.to_le_bytes());
    attr[52..56].copy_from_slice(&u32::from(retprobe).to_le_bytes()); // BPF_F_UPROBE_MULTI_RETURN
    attr[56..60].copy_from_slice(&pid.to_le_bytes());
    // SAFETY: attr is a valid bpf_attr for BPF_LINK_CREATE; path, offsets and cookies
    // outlive the call, and the kernel reads at most n of each.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            attr.as_ptr(),
            attr.len() as u32,
        )
    };
    if r >= 0 {
        Ok(r as i32)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

fn worker(sh: Arc<Shared>) {
    loop {
        {
            let mut p = sh.pool.lock().unwrap();
            p.idle += 1;
            while p.pending == 0 && !sh.stop.load(Ordering::Relaxed) {
                p = sh.work.wait(p).unwrap();
            }
            p.idle -= 1;
            if sh.stop.load(Ordering::Relaxed) {
                p.workers -= 1;
                return;
            }
            p.pending -= 1;
        }
        sh.touch();
    }
}

fn dispatcher(sh: Arc<Shared>) {
    let mut next = Instant::now();
    while !sh.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        {
            let until = sh.until.lock().unwrap();
            match *until {
                Some(t) if t > now => {}
                _ => {
                    // cold: sleep until warm_for or stop wakes us
                    let _unused = sh
                        .dispatch
                        .wait_timeout(until, Duration::from_secs(1))
                        .unwrap();
                    next = Instant::now();
                    continue;
                }
            }
        }
        {
            let mut p = sh.pool.lock().unwrap();
            if p.idle == 0 && p.workers < sh.max_workers {
                p.workers += 1;
                let s = sh.clone();
                if thread::Builder::new()
                    .name("uprobe-warm".into())
                    .spawn(move || worker(s))
                    .is_err()
                {
                    p.workers -= 1;
                }
            }
            p.pending = (p.pending + 1).min(p.idle.max(1));
            sh.work.notify_one();
        }
        next += sh.period;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// Keeps uprobe registration free of RCU grace-period waits (see the module doc).
#[pyclass(module = "plaintap._core")]
pub struct UprobeWarmer {
    shared: Arc<Shared>,
    memfd: i32,
    map: usize,
    dispatcher: Option<thread::JoinHandle<()>>,
}

fn os_err(what: &str) -> PyErr {
    PyOSError::new_err(format!("{what}: {}", std::io::Error::last_os_error()))
}

#[pymethods]
impl UprobeWarmer {
    /// Load the touch program and map the private trap page; no thread runs until
    /// `warm_for`. Raises OSError (no BPF privilege, no uprobe_multi in this kernel).
    #[new]
    #[pyo3(signature = (period_us = 2000, max_workers = 64))]
    fn new(period_us: u64, max_workers: usize) -> PyResult<Self> {
        let insns: [u8; 16] = [0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_KPROBE.to_le_bytes());
        attr[4..8].copy_from_slice(&2u32.to_le_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_le_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_le_bytes());
        attr[68..72].copy_from_slice(&BPF_TRACE_UPROBE_MULTI.to_le_bytes());
        // SAFETY: a valid BPF_PROG_LOAD bpf_attr; insns and license outlive the call.
        let prog_fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                attr.as_ptr(),
                attr.len() as u32,
            )
        };
        if prog_fd < 0 {
            return Err(os_err("cannot load the uprobe warm-up program"));
        }
        let prog_fd = prog_fd as i32;
        let name = CString::new("plaintap-uprobe-warm").unwrap();
        // SAFETY: plain system calls on a valid C string and buffers we own; every
        // failure path closes what was opened.
        unsafe {
            let memfd = libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC);
            if memfd < 0 {
                let e = os_err("cannot create the uprobe warm-up page");
                libc::close(prog_fd);
                return Err(e);
            }
            let page = [0xccu8; PAGE];
            let map = if libc::write(memfd, page.as_ptr() as *const libc::c_void, PAGE)
                == PAGE as isize
            {
                libc::mmap(
                    std::ptr::null_mut(),
                    PAGE,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE,
                    memfd,
                    0,
                )
            } else {
                libc::MAP_FAILED
            };
            if map == libc::MAP_FAILED {
                let e = os_err("cannot map the uprobe warm-up page");
                libc::close(memfd);
                libc::close(prog_fd);
                return Err(e);
            }
            let shared = Arc::new(Shared {
                stop: AtomicBool::new(false),
                until: Mutex::new(None),
                dispatch: Condvar::new(),
                pool: Mutex::new(Pool {
                    pending: 0,
                    idle: 0,
                    workers: 0,
                }),
                work: Condvar::new(),
                touches: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                last_errno: AtomicI32::new(0),
                prog_fd,
                path: CString::new(format!("/proc/self/fd/{memfd}")).unwrap(),
                pid: libc::getpid() as u32,
                period: Duration::from_micros(period_us.max(100)),
                max_workers: max_workers.clamp(1, 1024),
            });
            Ok(UprobeWarmer {
                shared,
                memfd,
                map: map as usize,
                dispatcher: None,
            })
        }
    }

    /// Keep registration warm for the next `ms` milliseconds (extends, never shortens).
    fn warm_for(&mut self, ms: u64) {
        let t = Instant::now() + Duration::from_millis(ms);
        {
            let mut until = self.shared.until.lock().unwrap();
            if until.is_some_and(|u| u >= t) {
                return;
            }
            *until = Some(t);
        }
        if self.dispatcher.is_none() {
            let s = self.shared.clone();
            self.dispatcher = thread::Builder::new()
                .name("uprobe-warm".into())
                .spawn(move || dispatcher(s))
                .ok();
        }
        self.shared.dispatch.notify_one();
    }

    /// (touches, unexpected errors, last unexpected errno, worker threads)
    fn stats(&self) -> (u64, u64, i32, usize) {
        let sh = &self.shared;
        let workers = sh.pool.lock().unwrap().workers;
        (
            sh.touches.load(Ordering::Relaxed),
            sh.errors.load(Ordering::Relaxed),
            sh.last_errno.load(Ordering::Relaxed),
            workers,
        )
    }

    /// Stop every thread (workers finish their touch first, ~50 ms). Idempotent.
    fn stop(&mut self, py: Python<'_>) {
        let sh = self.shared.clone();
        let handle = self.dispatcher.take();
        py.allow_threads(move || {
            sh.stop.store(true, Ordering::Relaxed);
            sh.dispatch.notify_all();
            sh.work.notify_all();
            if let Some(h) = handle {
                let _ = h.join();
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while sh.pool.lock().unwrap().workers > 0 && Instant::now() < deadline {
                sh.work.notify_all();
                thread::sleep(Duration::from_millis(5));
            }
        });
    }
}

impl Drop for UprobeWarmer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.dispatch.notify_all();
        self.shared.work.notify_all();
        if let Some(h) = self.dispatcher.take() {
            let _ = h.join();
        }
        // Workers may still be inside a touch using prog_fd and the path: they hold the
        // Arc, so the program fd is closed only here if none is left; otherwise it is
        // left to the process's exit (a handful of fds, once).
        if Arc::strong_count(&self.shared) == 1 {
            // SAFETY: fds and the mapping were created in `new` and are used by nobody now.
            unsafe {
                libc::munmap(self.map as *mut libc::c_void, PAGE);
                libc::close(self.memfd);
                libc::close(self.shared.prog_fd);
            }
        }
    }
}
