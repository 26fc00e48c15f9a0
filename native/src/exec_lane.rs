//! The exec lane: a new program whose content the agent has hooked before (a copy of a
//! Go binary, the same binary after a restart) gets its TLS hooks at its exec, from a
//! native thread of its own: no GIL, no capture loop, no Python on the way.
//!
//! A Go client on loopback makes its first TLS write 2.5–5 ms after its exec; the Python
//! path (capture loop or TLS thread, GIL, /proc scan, cache check, attach) takes 1–3 ms
//! and more whenever the agent is busy. This thread waits on the exec wake-up ring (one
//! ev_header per traced exec, bpf/capture.bpf.c `exec_wake`), and for each exec:
//!
//! 1. opens `/proc/<pid>/exe` once (the very file the kernel exec'd: no name lookup
//!    anybody controls) and requires a regular file;
//! 2. reads its content key (size + linker build ID note, bounded reads, the same string
//!    as tls_cache.content_key) and looks up a *plan* the agent registered for that key:
//!    what to attach (program fds, file offsets, cookies) and the digest the file must
//!    have (tls_cache.site_digest: sha256 over the program header table, the executable
//!    ranges and 16 bytes at every hooked offset), checked here on this file;
//! 3. claims the file's (dev, inode) — the same claim the Python side takes before it
//!    attaches anything, so a file is never hooked twice — and attaches one uprobe_multi
//!    link per plan entry through `/proc/self/fd/N`.
//!
//! 4. while the agent has plans for TLS libraries (libssl builds) or lets the lane analyse
//!    them, walks the program's DT_NEEDED inside its root (needed.rs) and hooks each copy of
//!    a planned build the same way, before the loader maps it; a file on overlayfs under its
//!    layer file's identity. A libssl build nobody planned for (a container image's own) is
//!    analysed here (sslelf.rs) and hooked from that, also before the loader maps it.
//!
//! Every exec is then handed to the TLS thread (`take`, its eventfd written) with the
//! opened file and links when it was hooked here; the TLS thread adopts them (bookkeeping,
//! log, metrics) and still runs the exec's scans for libraries. Anything unusual — no
//! plan, a digest mismatch, an attach error, the live-hook bound — leaves the exec to the
//! Python path, unchanged. The traced process is never stopped or slowed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::CString;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use sha2::{Digest, Sha256};

use crate::needed;
use crate::ring;

const EV_PROC_EXEC: u32 = 5;
const PT_NOTE: u32 = 4;
const MAX_PHNUM: usize = 256;
const MAX_NOTE_BYTES: u64 = 64 << 10;
const MAX_BUILD_ID: usize = 256;
const SITE_BYTES: usize = 16;
/// Hooks made here and not yet released by the agent (each holds an fd and its links).
const MAX_LIVE: usize = 512;
/// Execs waiting for the TLS thread; past this, execs that were not hooked here are
/// dropped (the capture loop reports every exec too), hooked ones are always kept.
const MAX_QUEUED: usize = 4096;
const MAX_PLANS: usize = 256;
/// Overlay views of libraries whose layer file is known (one per container and library).
const MAX_LAYER_IDS: usize = 1024;
const MAX_LINKS_PER_PLAN: usize = 8;
const MAX_OFFSETS: usize = 256;
const LANE_NICE: libc::c_int = -10;
/// O_NOATIME: the lane's reads never update a file's access time (a filesystem write on
/// the lane's path for nothing). Root may set it. (The ~5 ms stalls once blamed on this
/// were the agent's fd table doubling and a huge-page fault: instance.prepare_process.)
const LANE_OPEN_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOATIME;
/// Real-time CPU the lane may use per second before it drops to LANE_NICE.
const RT_BUDGET_NS: u64 = 50_000_000;
const STOP_WAIT: Duration = Duration::from_secs(2);
const ANALYSES_BURST: f64 = 20.0;
const ANALYSES_PER_S: f64 = 20.0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

struct LinkSpec {
    prog_fd: i32,
    offsets: Vec<u64>,
    cookies: Vec<u64>,
    retprobe: bool,
}

struct Plan {
    /// a shared library (libssl): looked for among the DT_NEEDED of every exec
    library: bool,
    digest: String,
    ranges_json: Vec<u8>,
    sites: Vec<u64>,
    links: Vec<LinkSpec>,
}

/// A never-seen Go binary analysed here: (Go version, executable ranges, Read entry,
/// Write entry, Read RETs, Write RETs, the Go offsets slot it was given).
pub type Analysis = (String, Vec<(u64, u64)>, u64, u64, Vec<u64>, Vec<u64>, u32);
/// Where exec -> hooked went, in ns: (all of it, until the lane looked, its checks or
/// analysis, the attach calls).
pub type Timing = (u64, u64, u64, u64);
/// What the TLS thread adopts: (dev, ino, fd, link fds, content key, timing, the analysis
/// of a Go binary when there was no plan, the worker-shaped analysis result (JSON) of a
/// library when there was no plan).
pub type Hooked = (
    u64,
    u64,
    i32,
    Vec<i32>,
    String,
    Timing,
    Option<Analysis>,
    Option<String>,
);

/// What a file is to the lane: the exec's program (Go analysis when no plan) or a library
/// it will load (libssl analysis when no plan).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Program,
    Library,
}

/// One exec handed to the TLS thread, or one library hooked at an exec.
struct Done {
    pid: u32,
    ts: u64,
    hooked: Option<Hooked>,
    /// why a file with a plan was left to the Python path (for its log)
    note: Option<String>,
    /// a library the exec's program will load (its path in the program's root), hooked
    /// before the loader maps it; None: the exec itself
    lib: Option<String>,
}

#[derive(Default)]
struct Counts {
    execs: AtomicU64,
    hooked: AtomicU64,
    no_plan: AtomicU64,
    mismatched: AtomicU64,
    failed: AtomicU64,
    analysed: AtomicU64,
    demoted: AtomicU64,
    libs_hooked: AtomicU64,
}

/// What the lane needs to hook a libssl build it analyses itself (no plan yet).
struct SslHooks {
    /// program fds: ssl_write_enter, ssl_read_enter, ssl_exit_probe
    progs: (i32, i32, i32),
    /// analyses allowed now (token bucket: ANALYSES_BURST, ANALYSES_PER_S)
    bucket: Mutex<(f64, Instant)>,
    /// content keys the analysis left to the worker: not tried again at every exec
    refused: Mutex<HashSet<String>>,
}

/// Content keys remembered as refused by the libssl analysis, at most.
const MAX_REFUSED: usize = 1024;

/// Take one analysis from token bucket `b` (ANALYSES_BURST, ANALYSES_PER_S); false: over it.
fn take_token(b: &Mutex<(f64, Instant)>) -> bool {
    let mut b = b.lock().unwrap();
    let now = Instant::now();
    b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * ANALYSES_PER_S).min(ANALYSES_BURST);
    b.1 = now;
    if b.0 < 1.0 {
        return false;
    }
    b.0 -= 1.0;
    true
}

/// What the lane needs to hook a Go binary it analyses itself (no plan yet).
struct GoHooks {
    offsets_map_fd: i32,
    /// program fds: Write entry, Read entry, Read RETs
    progs: (i32, i32, i32),
    /// Go 1.x minor -> (conn_data, fd_ptr, sysfd), from the agent's measured table
    layouts: HashMap<u32, (u32, u32, u32)>,
    /// Go offsets slots the agent handed over for such binaries
    slots: Mutex<Vec<u32>>,
    /// analyses allowed now (token bucket: ANALYSES_BURST, ANALYSES_PER_S)
    bucket: Mutex<(f64, Instant)>,
}

struct Shared {
    plans: Mutex<HashMap<String, Arc<Plan>>>,
    /// plans for libraries: execs' DT_NEEDED are walked only while there are some
    lib_plans: AtomicU64,
    /// overlay view (dev, ino) of a library -> its layer file's (needed::layer_identity)
    layer_ids: Mutex<HashMap<(u64, u64), (u64, u64)>>,
    claimed: Mutex<HashSet<(u64, u64)>>,
    live: Mutex<usize>,
    done: Mutex<VecDeque<Done>>,
    stop: AtomicBool,
    stop_fd: i32,
    wake_fd: i32,
    counts: Counts,
    go: Option<GoHooks>,
    ssl: Option<SslHooks>,
    /// which container a program that is gone before the agent reads /proc ran in (a
    /// container's first program can be done in milliseconds)
    cgroups: Mutex<ExecCgroups>,
}

/// pid -> its /proc/<pid>/cgroup as read at its latest exec, oldest first out past
/// MAX_CGROUPS. Only ever the latest exec's: a pid reused by a process whose cgroup could
/// not be read (gone already) has no entry, never its predecessor's.
#[derive(Default)]
struct ExecCgroups {
    map: HashMap<u32, String>,
    order: VecDeque<u32>,
}

impl ExecCgroups {
    /// `pid` exec'd; `text`: its cgroup then, None when it could not be read.
    fn put(&mut self, pid: u32, text: Option<String>) {
        let Some(text) = text else {
            self.take(pid);
            return;
        };
        if self.map.insert(pid, text).is_none() {
            self.order.push_back(pid);
        }
        while self.map.len() > MAX_CGROUPS {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    fn take(&mut self, pid: u32) -> Option<String> {
        let text = self.map.remove(&pid)?;
        self.order.retain(|p| *p != pid);
        Some(text)
    }
}

const MAX_CGROUPS: usize = 4096;
const MAX_CGROUP_TEXT: usize = 4096;

/// The text of small file `path` (at most `max` bytes), or None.
fn read_small(path: &str, max: usize) -> Option<String> {
    let c = CString::new(path).ok()?;
    // SAFETY: a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut buf = vec![0u8; max];
    // SAFETY: buf is valid for max bytes of writes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), max) };
    close(fd);
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    String::from_utf8(buf).ok()
}

pub(crate) fn pread_exact(fd: i32, n: usize, off: u64) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    // SAFETY: buf is valid for n bytes of writes during the call.
    let r = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), n, off as libc::off_t) };
    (r >= 0 && r as usize == n).then_some(buf)
}

fn pread_some(fd: i32, n: usize, off: u64) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    // SAFETY: as above.
    let r = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), n, off as libc::off_t) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

/// An ELF file's program header table: (little-endian, 64-bit, raw table, entry size, count).
pub(crate) struct Phdrs {
    pub(crate) le: bool,
    pub(crate) is64: bool,
    pub(crate) table: Vec<u8>,
    pub(crate) entsize: usize,
    pub(crate) count: usize,
}

/// The `n`-byte unsigned integer at `at` (little- or big-endian).
fn rd(b: &[u8], at: usize, n: usize, le: bool) -> u64 {
    let bytes = &b[at..at + n];
    let fold = |v: u64, &x: &u8| (v << 8) | x as u64;
    if le {
        bytes.iter().rev().fold(0, fold)
    } else {
        bytes.iter().fold(0, fold)
    }
}
fn rd_u16(b: &[u8], at: usize, le: bool) -> u64 {
    rd(b, at, 2, le)
}
pub(crate) fn rd_u32(b: &[u8], at: usize, le: bool) -> u64 {
    rd(b, at, 4, le)
}
pub(crate) fn rd_u64(b: &[u8], at: usize, le: bool) -> u64 {
    rd(b, at, 8, le)
}

/// As tls_cache._program_headers.
pub(crate) fn program_headers(fd: i32, size: u64) -> Option<Phdrs> {
    if size < 64 {
        return None;
    }
    let id = pread_exact(fd, 64, 0)?;
    if &id[..4] != b"\x7fELF" || !(1..=2).contains(&id[4]) || !(1..=2).contains(&id[5]) {
        return None;
    }
    let le = id[5] == 1;
    let is64 = id[4] == 2;
    let (phoff, phentsize, phnum, want) = if is64 {
        (
            rd_u64(&id, 32, le),
            rd_u16(&id, 54, le),
            rd_u16(&id, 56, le),
            56,
        )
    } else {
        (
            rd_u32(&id, 28, le),
            rd_u16(&id, 42, le),
            rd_u16(&id, 44, le),
            32,
        )
    };
    if phentsize != want || phnum == 0 || phnum as usize > MAX_PHNUM {
        return None;
    }
    let len = phentsize * phnum;
    if phoff.checked_add(len)? > size {
        return None;
    }
    let table = pread_exact(fd, len as usize, phoff)?;
    Some(Phdrs {
        le,
        is64,
        table,
        entsize: phentsize as usize,
        count: phnum as usize,
    })
}

/// As tls_cache.content_key: "<size>:<gnu|go>:<hex build id>".
fn content_key(fd: i32, size: u64, ph: &Phdrs) -> Option<String> {
    let le = ph.le;
    for i in 0..ph.count {
        let e = &ph.table[i * ph.entsize..(i + 1) * ph.entsize];
        if rd_u32(e, 0, le) != PT_NOTE as u64 {
            continue;
        }
        let (off, filesz) = if ph.is64 {
            (rd_u64(e, 8, le), rd_u64(e, 32, le))
        } else {
            (rd_u32(e, 4, le), rd_u32(e, 16, le))
        };
        if filesz > MAX_NOTE_BYTES || off.checked_add(filesz).is_none_or(|end| end > size) {
            continue;
        }
        let notes = pread_exact(fd, filesz as usize, off)?;
        let mut pos = 0usize;
        while pos + 12 <= notes.len() {
            let namesz = rd_u32(&notes, pos, le) as usize;
            let descsz = rd_u32(&notes, pos + 4, le) as usize;
            let ntype = rd_u32(&notes, pos + 8, le);
            let name_at = pos + 12;
            let desc_at = name_at + ((namesz + 3) & !3);
            let end = desc_at + ((descsz + 3) & !3);
            if end > notes.len() || descsz > MAX_BUILD_ID {
                break;
            }
            let mut name = &notes[name_at..name_at + namesz];
            while let [rest @ .., 0] = name {
                name = rest;
            }
            let desc = &notes[desc_at..desc_at + descsz];
            let kind = match (name, ntype) {
                (b"GNU", 3) => "gnu",
                (b"Go", 4) => "go",
                _ => "",
            };
            if !kind.is_empty() && !desc.is_empty() {
                let mut key = format!("{size}:{kind}:");
                for b in desc {
                    let _ = write!(key, "{b:02x}");
                }
                return Some(key);
            }
            pos = end;
        }
    }
    None
}

/// As tls_cache.site_digest.
fn site_digest(fd: i32, ph: &Phdrs, plan: &Plan) -> Option<String> {
    let mut h = Sha256::new();
    h.update(&ph.table);
    h.update(&plan.ranges_json);
    for &off in &plan.sites {
        h.update(off.to_le_bytes());
        h.update(pread_some(fd, SITE_BYTES, off)?);
    }
    let mut hex = String::with_capacity(64);
    for b in h.finalize() {
        let _ = write!(hex, "{b:02x}");
    }
    Some(hex)
}

fn link_create(spec: &LinkSpec, path: &CString) -> Result<i32, i32> {
    crate::uprobe_warm::uprobe_multi_link(
        spec.prog_fd,
        path,
        &spec.offsets,
        &spec.cookies,
        spec.retprobe,
        0,
    )
}

fn map_update(map_fd: i32, key: u32, val: &[u8; 16]) -> bool {
    let mut attr = [0u8; 32];
    attr[0..4].copy_from_slice(&(map_fd as u32).to_le_bytes());
    attr[8..16].copy_from_slice(&(&key as *const u32 as u64).to_le_bytes());
    attr[16..24].copy_from_slice(&(val.as_ptr() as u64).to_le_bytes());
    // SAFETY: attr is a valid bpf_attr for BPF_MAP_UPDATE_ELEM; key and val outlive it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            attr.as_ptr(),
            attr.len() as u32,
        )
    };
    r == 0
}

/// Names of the libraries plans are made for (openssl family: libssl.so.3, .so.1.1, …).
fn is_tls_library(name: &str) -> bool {
    name.starts_with("libssl.so")
}

fn close(fd: i32) {
    // SAFETY: fd is one this module opened and still owns.
    unsafe { libc::close(fd) };
}

impl Shared {
    /// Try to hook `pid`'s executable from a plan (or the lane's own Go analysis), then the
    /// TLS libraries it will load that have plans (needed.rs); never blocks on anything but
    /// the files' own reads and the attach calls. The exec's entry comes first.
    fn on_exec(&self, pid: u32, ts: u64) -> Vec<Done> {
        let seen = ring::monotonic_ns();
        let mut out = vec![Done {
            pid,
            ts,
            hooked: None,
            note: None,
            lib: None,
        }];
        let can_analyse = self
            .go
            .as_ref()
            .is_some_and(|g| !g.slots.lock().unwrap().is_empty());
        if (!can_analyse && self.ssl.is_none() && self.plans.lock().unwrap().is_empty())
            || *self.live.lock().unwrap() >= MAX_LIVE
        {
            return out;
        }
        let Ok(path) = CString::new(format!("/proc/{pid}/exe")) else {
            return out;
        };
        // SAFETY: path is a valid C string.
        let fd = unsafe { libc::open(path.as_ptr(), LANE_OPEN_FLAGS) };
        if fd < 0 {
            return out;
        }
        let Some(st) = needed::regular_file(fd) else {
            close(fd);
            return out;
        };
        let size = st.st_size as u64;
        let ph = program_headers(fd, size);
        let wants_libs = self.lib_plans.load(Ordering::Relaxed) > 0 || self.ssl.is_some();
        let dynamic = ph
            .as_ref()
            .filter(|_| wants_libs)
            .and_then(|ph| needed::dynamic(fd, size, ph));
        let (hooked, note) = self.hook_file(
            fd,
            (st.st_dev, st.st_ino),
            size,
            ph,
            ts,
            seen,
            Kind::Program,
        );
        out[0].hooked = hooked;
        out[0].note = note;
        if let Some(d) = dynamic.filter(|d| !d.needed.is_empty()) {
            out.extend(self.hook_libraries(pid, ts, seen, &d));
        }
        out
    }

    /// The libraries with plans among what `pid`'s program will load (`exe`: its
    /// dynamic section), each hooked through its own fd before the loader maps it.
    fn hook_libraries(&self, pid: u32, ts: u64, seen: u64, exe: &needed::Dynamic) -> Vec<Done> {
        let Ok(root_path) = CString::new(format!("/proc/{pid}/root")) else {
            return Vec::new();
        };
        // SAFETY: a valid C string; O_PATH opens nothing but the directory reference.
        let root = unsafe {
            libc::open(
                root_path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if root < 0 {
            return Vec::new();
        }
        let found = needed::libraries(root, exe, is_tls_library, program_headers);
        close(root);
        let mut out = Vec::new();
        for f in found {
            let identity = if needed::on_overlay(f.fd) {
                let view = (f.st.st_dev, f.st.st_ino);
                let known = self.layer_ids.lock().unwrap().get(&view).copied();
                known.or_else(|| {
                    let id = needed::layer_identity(pid, &f.path, &f.st)?;
                    let mut ids = self.layer_ids.lock().unwrap();
                    if ids.len() >= MAX_LAYER_IDS {
                        ids.clear();
                    }
                    ids.insert(view, id);
                    Some(id)
                })
            } else {
                Some((f.st.st_dev, f.st.st_ino))
            };
            let Some(identity) = identity else {
                close(f.fd); // an overlay whose layer file is not found: the scan's
                continue;
            };
            let size = f.st.st_size as u64;
            let ph = program_headers(f.fd, size);
            let (hooked, note) = self.hook_file(f.fd, identity, size, ph, ts, seen, Kind::Library);
            if hooked.is_some() {
                self.counts.libs_hooked.fetch_add(1, Ordering::Relaxed);
            }
            if hooked.is_some() || note.is_some() {
                out.push(Done {
                    pid,
                    ts,
                    hooked,
                    note,
                    lib: Some(f.path),
                });
            }
        }
        out
    }

    /// Hook file `fd` (identity `ident`: the inode uprobes land on) from its plan, or from
    /// the lane's own analysis: Go for a program, libssl for a library. Takes `fd`: closed
    /// unless hooked (then it is in the result, the caller's).
    #[allow(clippy::too_many_arguments)]
    fn hook_file(
        &self,
        fd: i32,
        ident: (u64, u64),
        size: u64,
        ph: Option<Phdrs>,
        ts: u64,
        seen: u64,
        kind: Kind,
    ) -> (Option<Hooked>, Option<String>) {
        let (dev, ino) = ident;
        if *self.live.lock().unwrap() >= MAX_LIVE || self.claimed.lock().unwrap().contains(&ident) {
            close(fd); // over the bound, or hooked already (the system libssl, at most execs)
            return (None, None);
        }
        let found = ph.and_then(|ph| {
            let key = content_key(fd, size, &ph)?;
            let plan = self.plans.lock().unwrap().get(&key).cloned();
            Some((ph, key, plan))
        });
        let can_analyse = match kind {
            Kind::Program => true,
            Kind::Library => self.ssl.is_some(),
        };
        let Some((ph, key, plan)) = found.filter(|f| can_analyse || f.2.is_some()) else {
            if kind == Kind::Program {
                self.counts.no_plan.fetch_add(1, Ordering::Relaxed);
            }
            close(fd);
            return (None, None);
        };
        if !self.claimed.lock().unwrap().insert((dev, ino)) {
            close(fd); // hooked already, or the Python path has it
            return (None, None);
        }
        let unclaim = |fd: i32| {
            self.claimed.lock().unwrap().remove(&(dev, ino));
            close(fd);
        };
        let mut analysis = None;
        let mut lib_result = None;
        let plan = match plan {
            Some(plan) => {
                if site_digest(fd, &ph, &plan).as_deref() != Some(plan.digest.as_str()) {
                    self.counts.mismatched.fetch_add(1, Ordering::Relaxed);
                    unclaim(fd);
                    return (None, None);
                }
                plan
            }
            None => {
                let own = match kind {
                    Kind::Library => self.analyse_library(fd, size, &key).map(|(plan, json)| {
                        lib_result = Some(json);
                        plan
                    }),
                    Kind::Program => self.analyse(fd, size, &key).map(|(plan, a)| {
                        analysis = Some(a);
                        plan
                    }),
                };
                let Some(plan) = own else {
                    self.counts.no_plan.fetch_add(1, Ordering::Relaxed);
                    unclaim(fd);
                    return (None, None);
                };
                Arc::new(plan)
            }
        };
        let Ok(via) = CString::new(format!("/proc/self/fd/{fd}")) else {
            unclaim(fd);
            return (None, None);
        };
        let checked = ring::monotonic_ns();
        let mut links = Vec::with_capacity(plan.links.len());
        for spec in &plan.links {
            match link_create(spec, &via) {
                Ok(l) => links.push(l),
                Err(e) => {
                    for l in links {
                        close(l);
                    }
                    if let (Some(a), Some(go)) = (&analysis, self.go.as_ref()) {
                        go.slots.lock().unwrap().push(a.6);
                    }
                    unclaim(fd);
                    self.counts.failed.fetch_add(1, Ordering::Relaxed);
                    let note = format!(
                        "attaching at its exec failed ({}); hooked by the scan instead",
                        std::io::Error::from_raw_os_error(e)
                    );
                    return (None, Some(note));
                }
            }
        }
        *self.live.lock().unwrap() += 1;
        self.counts.hooked.fetch_add(1, Ordering::Relaxed);
        let now = ring::monotonic_ns();
        let timing = (
            now.saturating_sub(ts),
            seen.saturating_sub(ts),
            checked - seen,
            now - checked,
        );
        (
            Some((dev, ino, fd, links, key, timing, analysis, lib_result)),
            None,
        )
    }

    /// A plan for a libssl build nobody planned for: analysed here (sslelf), with the
    /// links tls_attach._openssl_links makes, and the worker-shaped result for the agent's
    /// cache. None: not the common case (remembered, not tried again), or over the
    /// analysis budget.
    fn analyse_library(&self, fd: i32, size: u64, key: &str) -> Option<(Plan, String)> {
        let ssl = self.ssl.as_ref()?;
        if ssl.refused.lock().unwrap().contains(key) || !take_token(&ssl.bucket) {
            return None;
        }
        let Some(a) = crate::sslelf::analyze(fd, size) else {
            let mut refused = ssl.refused.lock().unwrap();
            if refused.len() >= MAX_REFUSED {
                refused.clear();
            }
            refused.insert(key.to_string());
            return None;
        };
        self.counts.analysed.fetch_add(1, Ordering::Relaxed);
        let (write, read, exit) = ssl.progs;
        let links = a
            .links()
            .into_iter()
            .map(|(prog, offsets, cookies, retprobe)| LinkSpec {
                prog_fd: match prog {
                    crate::sslelf::Prog::WriteEnter => write,
                    crate::sslelf::Prog::ReadEnter => read,
                    crate::sslelf::Prog::Exit => exit,
                },
                offsets,
                cookies,
                retprobe,
            })
            .collect::<Vec<_>>();
        if links.is_empty() {
            return None;
        }
        let plan = Plan {
            library: true,
            digest: String::new(),
            ranges_json: Vec::new(),
            sites: Vec::new(),
            links,
        };
        Some((plan, a.result_json()))
    }

    /// A plan for a Go binary nobody planned for: analysed here (goelf), given one of the
    /// agent's spare slots with its struct offsets written. None: not the common case, no
    /// layout known for its version, no spare slot, or over the analysis budget.
    fn analyse(&self, fd: i32, size: u64, key: &str) -> Option<(Plan, Analysis)> {
        let go = self.go.as_ref()?;
        if !key.contains(":go:") || go.slots.lock().unwrap().is_empty() {
            return None; // not a Go binary by its build ID, or no slot to give it
        }
        if !take_token(&go.bucket) {
            return None;
        }
        let t = crate::goelf::analyze(fd, size)?;
        let &(conn_data, fd_ptr, sysfd) = go.layouts.get(&t.minor)?;
        let slot = go.slots.lock().unwrap().pop()?;
        let mut val = [0u8; 16];
        val[0..4].copy_from_slice(&conn_data.to_le_bytes());
        val[4..8].copy_from_slice(&fd_ptr.to_le_bytes());
        val[8..12].copy_from_slice(&sysfd.to_le_bytes());
        if !map_update(go.offsets_map_fd, slot, &val) {
            go.slots.lock().unwrap().push(slot);
            return None;
        }
        self.counts.analysed.fetch_add(1, Ordering::Relaxed);
        let s = slot as u64;
        let links = vec![
            LinkSpec {
                prog_fd: go.progs.0,
                offsets: vec![t.write_entry],
                cookies: vec![s],
                retprobe: false,
            },
            LinkSpec {
                prog_fd: go.progs.1,
                offsets: vec![t.read_entry],
                cookies: vec![s],
                retprobe: false,
            },
            LinkSpec {
                prog_fd: go.progs.2,
                offsets: t.read_returns.clone(),
                cookies: vec![s; t.read_returns.len()],
                retprobe: false,
            },
        ];
        let plan = Plan {
            library: false,
            digest: String::new(),
            ranges_json: Vec::new(),
            sites: Vec::new(),
            links,
        };
        let a = (
            t.go_version,
            t.exec_ranges,
            t.read_entry,
            t.write_entry,
            t.read_returns,
            t.write_returns,
            slot,
        );
        Some((plan, a))
    }

    /// Keep `pid`'s cgroup as it is at its exec (see `cgroups`).
    fn note_cgroup(&self, pid: u32) {
        let text = read_small(&format!("/proc/{pid}/cgroup"), MAX_CGROUP_TEXT);
        self.cgroups.lock().unwrap().put(pid, text);
    }

    fn push(&self, d: Done) {
        let mut q = self.done.lock().unwrap();
        if q.len() >= MAX_QUEUED && d.hooked.is_none() {
            return;
        }
        q.push_back(d);
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to an eventfd.
        unsafe { libc::write(self.wake_fd, (&one as *const u64).cast(), 8) };
    }
}

fn run(sh: Arc<Shared>, ring: ring::Ring) {
    // Best effort (needs CAP_SYS_NICE): the lane runs at the lowest real-time priority, so
    // a woken lane preempts what runs on its CPU at once and the hooks beat the program's
    // first TLS call on a busy machine too (at nice -10 it was now and then descheduled
    // for 5-6 ms mid-exec). Bounded: past RT_BUDGET of CPU in a second (an exec storm) it
    // drops to nice -10 for the rest of that second; without the capability, nice -10.
    // SAFETY: plain system calls on this thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, LANE_NICE);
    }
    let rt_ok = set_realtime(true);
    let mut rt_on = rt_ok;
    let mut window = (Instant::now(), thread_cpu_ns());
    if sh.go.is_some() {
        crate::goelf::warm_up();
    }
    while !sh.stop.load(Ordering::Relaxed) {
        ring::wait(&[ring.fd(), sh.stop_fd], 1000);
        if rt_ok {
            if window.0.elapsed() >= Duration::from_secs(1) {
                window = (Instant::now(), thread_cpu_ns());
                if !rt_on {
                    rt_on = set_realtime(true);
                }
            } else if rt_on && thread_cpu_ns().saturating_sub(window.1) > RT_BUDGET_NS {
                rt_on = !set_realtime(false);
                sh.counts.demoted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut any = false;
        while let Some((rec, step)) = ring.peek() {
            let parsed = (rec.len() >= 16).then(|| {
                (
                    u32::from_le_bytes(rec[0..4].try_into().unwrap()),
                    u32::from_le_bytes(rec[4..8].try_into().unwrap()),
                    u64::from_le_bytes(rec[8..16].try_into().unwrap()),
                )
            });
            ring.consume(step);
            if let Some((EV_PROC_EXEC, pid, ts)) = parsed {
                sh.counts.execs.fetch_add(1, Ordering::Relaxed);
                let mut hooked = false;
                for d in sh.on_exec(pid, ts) {
                    hooked |= d.hooked.is_some();
                    sh.push(d);
                }
                any = true;
                if hooked {
                    sh.wake(); // at once: the TLS thread logs it and runs the exec's scans
                    any = false;
                }
                sh.note_cgroup(pid);
            }
        }
        if any {
            sh.wake();
        }
    }
}

/// SCHED_FIFO at priority 1 (`on`), or back to SCHED_OTHER; true when it took effect.
fn set_realtime(on: bool) -> bool {
    let p = libc::sched_param {
        sched_priority: i32::from(on),
    };
    let policy = if on {
        libc::SCHED_FIFO
    } else {
        libc::SCHED_OTHER
    };
    // SAFETY: p is a valid sched_param; 0 is the calling thread.
    unsafe { libc::sched_setscheduler(0, policy, &p) == 0 }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid for writes.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn os_err(what: &str) -> PyErr {
    PyOSError::new_err(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// The size of open file `fd`, when fstat works and it is not empty (the test entry points).
fn nonempty_size(fd: i32) -> Option<u64> {
    // SAFETY: an all-zero stat is a valid value to be overwritten by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is valid for writes.
    (unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_size > 0).then_some(st.st_size as u64)
}

/// The lane's own analysis of Go binary `fd` (goelf::analyze), for tests that hold it
/// against the worker's: (Go version, executable ranges, Read entry, Write entry, Read
/// RETs, Write RETs), or None when it leaves the file to the worker.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn go_analyze(fd: i32) -> Option<(String, Vec<(u64, u64)>, u64, u64, Vec<u64>, Vec<u64>)> {
    let t = crate::goelf::analyze(fd, nonempty_size(fd)?)?;
    Some((
        t.go_version,
        t.exec_ranges,
        t.read_entry,
        t.write_entry,
        t.read_returns,
        t.write_returns,
    ))
}

/// The lane's own analysis of libssl `fd` (sslelf::analyze), for tests that hold it
/// against the worker's: (the worker-shaped result as JSON, the links as (program name,
/// offsets, cookies, return probe)), or None when it leaves the file to the worker.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn openssl_analyze(fd: i32) -> Option<(String, Vec<(&'static str, Vec<u64>, Vec<u64>, bool)>)> {
    let a = crate::sslelf::analyze(fd, nonempty_size(fd)?)?;
    let links = a
        .links()
        .into_iter()
        .map(|(p, o, c, r)| {
            let name = match p {
                crate::sslelf::Prog::WriteEnter => "ssl_write_enter",
                crate::sslelf::Prog::ReadEnter => "ssl_read_enter",
                crate::sslelf::Prog::Exit => "ssl_exit_probe",
            };
            (name, o, c, r)
        })
        .collect();
    Some((a.result_json(), links))
}

/// The exec lane (see the module doc). Python side: capture/tls_attach.py.
#[pyclass(module = "plaintap._core")]
pub struct ExecLane {
    sh: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[pymethods]
impl ExecLane {
    /// Map exec wake-up ring `ring_fd` (data area `ring_size` bytes) and start the lane's
    /// thread; it writes eventfd `wake_fd` (the TLS thread's, kept open by the caller
    /// until `stop`) when execs wait in `take`.
    ///
    /// `go`: (go_offsets map fd, (Write entry, Read entry, Read RET) program fds, [(Go 1.x
    /// minor, conn_data, fd_ptr, sysfd)]) lets the lane analyse and hook never-seen Go
    /// binaries too, with slots given by `give_slots`; None: plans only.
    ///
    /// `openssl`: (ssl_write_enter, ssl_read_enter, ssl_exit_probe) program fds lets the lane
    /// analyse and hook never-seen libssl builds among what new programs load (sslelf.rs).
    #[new]
    #[pyo3(signature = (ring_fd, ring_size, wake_fd, go = None, openssl = None))]
    #[allow(clippy::type_complexity)]
    fn new(
        ring_fd: i32,
        ring_size: usize,
        wake_fd: i32,
        go: Option<(i32, (i32, i32, i32), Vec<(u32, u32, u32, u32)>)>,
        openssl: Option<(i32, i32, i32)>,
    ) -> PyResult<Self> {
        let ring = ring::Ring::open(ring_fd, ring_size)
            .map_err(|e| PyOSError::new_err(format!("cannot map the exec wake-up ring: {e}")))?;
        // SAFETY: plain eventfd creation.
        let stop_fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop_fd < 0 {
            return Err(os_err("eventfd"));
        }
        let sh = Arc::new(Shared {
            plans: Mutex::new(HashMap::new()),
            lib_plans: AtomicU64::new(0),
            layer_ids: Mutex::new(HashMap::new()),
            claimed: Mutex::new(HashSet::new()),
            live: Mutex::new(0),
            done: Mutex::new(VecDeque::new()),
            stop: AtomicBool::new(false),
            stop_fd,
            wake_fd,
            counts: Counts::default(),
            go: go.map(|(offsets_map_fd, progs, layouts)| GoHooks {
                offsets_map_fd,
                progs,
                layouts: layouts
                    .into_iter()
                    .map(|(m, a, b, c)| (m, (a, b, c)))
                    .collect(),
                slots: Mutex::new(Vec::new()),
                bucket: Mutex::new((ANALYSES_BURST, Instant::now())),
            }),
            ssl: openssl.map(|progs| SslHooks {
                progs,
                bucket: Mutex::new((ANALYSES_BURST, Instant::now())),
                refused: Mutex::new(HashSet::new()),
            }),
            cgroups: Mutex::new(ExecCgroups::default()),
        });
        let s2 = sh.clone();
        let thread = std::thread::Builder::new()
            .name("exec-lane".into())
            .spawn(move || run(s2, ring))
            .map_err(|e| PyOSError::new_err(format!("cannot start the exec lane: {e}")))?;
        Ok(ExecLane {
            sh,
            thread: Some(thread),
        })
    }

    /// Register what to attach for files of content key `key`: `links` is a list of
    /// (program fd, offsets, cookies, retprobe); `digest` the file's site digest computed
    /// over `ranges_json` and `sites` (tls_cache.site_digest). Replaces an earlier plan.
    /// `library`: a TLS library (libssl), looked for among every exec's DT_NEEDED.
    #[pyo3(signature = (key, digest, ranges_json, sites, links, library = false))]
    fn add_plan(
        &self,
        key: String,
        digest: String,
        ranges_json: Vec<u8>,
        sites: Vec<u64>,
        links: Vec<(i32, Vec<u64>, Vec<u64>, bool)>,
        library: bool,
    ) -> PyResult<()> {
        if links.is_empty()
            || links.len() > MAX_LINKS_PER_PLAN
            || sites.len() > MAX_OFFSETS
            || links
                .iter()
                .any(|l| l.1.is_empty() || l.1.len() != l.2.len() || l.1.len() > MAX_OFFSETS)
        {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "unusable exec-lane plan",
            ));
        }
        let plan = Plan {
            library,
            digest,
            ranges_json,
            sites,
            links: links
                .into_iter()
                .map(|(prog_fd, offsets, cookies, retprobe)| LinkSpec {
                    prog_fd,
                    offsets,
                    cookies,
                    retprobe,
                })
                .collect(),
        };
        let mut plans = self.sh.plans.lock().unwrap();
        if plans.len() >= MAX_PLANS && !plans.contains_key(&key) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "too many exec-lane plans",
            ));
        }
        if let Some(old) = plans.insert(key, Arc::new(plan)) {
            if old.library {
                self.sh.lib_plans.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if library {
            self.sh.lib_plans.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Hand Go offsets slots to the lane, for binaries it analyses itself; the slot of
    /// each such binary comes back with its hooks (`take`), owned by the caller again.
    fn give_slots(&self, slots: Vec<u32>) {
        if let Some(go) = &self.sh.go {
            go.slots.lock().unwrap().extend(slots);
        }
    }

    /// Slots given and not used yet.
    #[getter]
    fn spare_slots(&self) -> usize {
        self.sh
            .go
            .as_ref()
            .map_or(0, |g| g.slots.lock().unwrap().len())
    }

    /// Take the spare slots back (at stop).
    fn take_slots(&self) -> Vec<u32> {
        self.sh
            .go
            .as_ref()
            .map_or_else(Vec::new, |g| std::mem::take(&mut *g.slots.lock().unwrap()))
    }

    /// `pid`'s /proc/<pid>/cgroup as the lane read it at its latest exec, taken (None: not
    /// read, or taken already): the container of a program gone before the agent read /proc.
    fn cgroup_at_exec(&self, pid: u32) -> Option<String> {
        self.sh.cgroups.lock().unwrap().take(pid)
    }

    fn remove_plan(&self, key: &str) {
        if let Some(old) = self.sh.plans.lock().unwrap().remove(key) {
            if old.library {
                self.sh.lib_plans.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    #[getter]
    fn plans(&self) -> usize {
        self.sh.plans.lock().unwrap().len()
    }

    /// Claim file (dev, ino) for hooking; False when it is claimed already (by the lane:
    /// its hooks come through `take`).
    fn claim(&self, dev: u64, ino: u64) -> bool {
        self.sh.claimed.lock().unwrap().insert((dev, ino))
    }

    /// The file's hooks are gone (detached): it may be claimed again. `lane_hooked`: it
    /// was hooked by the lane (frees a place under the live-hook bound).
    #[pyo3(signature = (dev, ino, lane_hooked = false))]
    fn release(&self, dev: u64, ino: u64, lane_hooked: bool) {
        self.sh.claimed.lock().unwrap().remove(&(dev, ino));
        if lane_hooked {
            let mut live = self.sh.live.lock().unwrap();
            *live = live.saturating_sub(1);
        }
    }

    /// The execs seen since the last call: (pid, exec ts, hooked, note, library) where hooked is
    /// (dev, ino, fd, link fds, content key, timing (ns: exec -> hooked, -> seen by the
    /// lane, checks or analysis, attach), analysis, library result) or None,
    /// analysis being (Go version, executable ranges, Read entry, Write entry, Read RETs,
    /// Write RETs, slot) for a binary analysed here, library result the worker-shaped
    /// analysis result (JSON) of a libssl build analysed here. The caller owns the fds and slots it
    /// receives. `library` is None for the exec itself; an entry with a library's path (in
    /// the program's root) follows its exec's for each TLS library hooked at that exec.
    #[allow(clippy::type_complexity)]
    fn take(&self) -> Vec<(u32, u64, Option<Hooked>, Option<String>, Option<String>)> {
        let mut q = self.sh.done.lock().unwrap();
        q.drain(..)
            .map(|d| (d.pid, d.ts, d.hooked, d.note, d.lib))
            .collect()
    }

    /// (execs seen, hooked here, of those analysed here, no plan for the file, digest
    /// mismatches, attach failures, seconds it left real-time priority over its budget,
    /// libraries hooked at their program's exec (counted in "hooked" too))
    fn stats(&self) -> (u64, u64, u64, u64, u64, u64, u64, u64) {
        let c = &self.sh.counts;
        (
            c.execs.load(Ordering::Relaxed),
            c.hooked.load(Ordering::Relaxed),
            c.analysed.load(Ordering::Relaxed),
            c.no_plan.load(Ordering::Relaxed),
            c.mismatched.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            c.demoted.load(Ordering::Relaxed),
            c.libs_hooked.load(Ordering::Relaxed),
        )
    }

    /// Stop the thread; hooks it made and that were not taken are undone.
    fn stop(&mut self, py: Python<'_>) {
        self.sh.stop.store(true, Ordering::Relaxed);
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our own eventfd.
        unsafe { libc::write(self.sh.stop_fd, (&one as *const u64).cast(), 8) };
        if let Some(t) = self.thread.take() {
            // A read of a file on a stalled filesystem (FUSE) could hold the thread: wait
            // for it at most STOP_WAIT, then leave it (the agent is exiting).
            py.allow_threads(|| {
                let t0 = Instant::now();
                while !t.is_finished() && t0.elapsed() < STOP_WAIT {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if t.is_finished() {
                    let _ = t.join();
                }
            });
        }
        for d in self.sh.done.lock().unwrap().drain(..) {
            if let Some((_, _, fd, links, _, _, _, _)) = d.hooked {
                for l in links {
                    close(l);
                }
                close(fd);
            }
        }
    }
}

impl Drop for ExecLane {
    fn drop(&mut self) {
        // Not joined here: the thread sees the stop at once and ends; the last of it and
        // this object to go closes the stop eventfd (Shared's drop).
        self.sh.stop.store(true, Ordering::Relaxed);
        let one: u64 = 1;
        // SAFETY: as in stop; the eventfd lives as long as Shared.
        unsafe { libc::write(self.sh.stop_fd, (&one as *const u64).cast(), 8) };
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        close(self.stop_fd);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cgroup_is_only_ever_the_latest_exec_s_and_bounded() {
        let mut c = super::ExecCgroups::default();
        c.put(7, Some("0::/a\n".into()));
        // pid 7 reused by a process gone before the lane read it: not the old one's text
        c.put(7, None);
        assert_eq!(c.take(7), None);
        c.put(8, Some("0::/b\n".into()));
        c.put(8, Some("0::/c\n".into()));
        assert_eq!(c.take(8).as_deref(), Some("0::/c\n"));
        assert_eq!(c.take(8), None, "taken once");
        for pid in 0..(super::MAX_CGROUPS as u32 + 10) {
            c.put(pid, Some(format!("0::/{pid}\n")));
        }
        assert_eq!(c.map.len(), super::MAX_CGROUPS);
        assert_eq!(c.order.len(), super::MAX_CGROUPS);
        assert_eq!(c.take(0), None, "the oldest went first");
        assert!(c.take(super::MAX_CGROUPS as u32 + 9).is_some());
    }

    use super::*;
    use std::io::Write;

    fn elf_with_note(name: &[u8], ntype: u32, desc: &[u8]) -> Vec<u8> {
        // ELF64 LE header, one PT_NOTE program header, the note right after.
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        f[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let mut note = Vec::new();
        note.extend_from_slice(&(name.len() as u32).to_le_bytes());
        note.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        note.extend_from_slice(&ntype.to_le_bytes());
        note.extend_from_slice(name);
        note.resize(note.len().div_ceil(4) * 4, 0);
        note.extend_from_slice(desc);
        note.resize(note.len().div_ceil(4) * 4, 0);
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&PT_NOTE.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes());
        ph[32..40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        f.extend_from_slice(&ph);
        f.extend_from_slice(&note);
        f.resize(4096, 0xcc);
        f
    }

    fn file_with(bytes: &[u8]) -> (std::fs::File, i32) {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("exec-lane-test-{}-{n}", std::process::id()));
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(bytes).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd();
        (f, fd)
    }

    #[test]
    fn content_key_reads_go_and_gnu_build_ids() {
        let bytes = elf_with_note(b"Go\0", 4, b"abc/def");
        let (_f, fd) = file_with(&bytes);
        let ph = program_headers(fd, bytes.len() as u64).unwrap();
        assert_eq!(
            content_key(fd, bytes.len() as u64, &ph).unwrap(),
            format!("{}:go:{}", bytes.len(), "6162632f646566")
        );
        let bytes = elf_with_note(b"GNU\0", 3, &[0xde, 0xad, 0xbe, 0xef]);
        let (_g, fd) = file_with(&bytes);
        let ph = program_headers(fd, bytes.len() as u64).unwrap();
        assert_eq!(
            content_key(fd, bytes.len() as u64, &ph).unwrap(),
            "4096:gnu:deadbeef"
        );
    }

    #[test]
    fn damaged_headers_give_no_key() {
        let mut bytes = elf_with_note(b"Go\0", 4, b"x");
        bytes[56] = 0; // e_phnum 0
        let (_f, fd) = file_with(&bytes);
        assert!(program_headers(fd, bytes.len() as u64).is_none());
        let mut bytes = elf_with_note(b"Go\0", 4, b"x");
        bytes[64 + 32..64 + 40].copy_from_slice(&(1u64 << 40).to_le_bytes()); // note past the end
        let (_g, fd) = file_with(&bytes);
        let ph = program_headers(fd, bytes.len() as u64).unwrap();
        assert!(content_key(fd, bytes.len() as u64, &ph).is_none());
        let (_h, fd) =
            file_with(b"not an ELF file at all, but long enough to read 64 bytes from it..");
        assert!(program_headers(fd, 66).is_none());
    }

    #[test]
    fn site_digest_covers_the_hooked_bytes() {
        let bytes = elf_with_note(b"Go\0", 4, b"id");
        let (_f, fd) = file_with(&bytes);
        let ph = program_headers(fd, bytes.len() as u64).unwrap();
        let plan = |sites: Vec<u64>| Plan {
            library: false,
            digest: String::new(),
            ranges_json: b"[[0,4096]]".to_vec(),
            sites,
            links: vec![],
        };
        let a = site_digest(fd, &ph, &plan(vec![1000, 2000])).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(a, site_digest(fd, &ph, &plan(vec![1000, 2000])).unwrap());
        assert_ne!(a, site_digest(fd, &ph, &plan(vec![1000, 2001])).unwrap());
        let mut other = bytes.clone();
        other[2005] ^= 1;
        let (_g, fd2) = file_with(&other);
        assert_ne!(a, site_digest(fd2, &ph, &plan(vec![1000, 2000])).unwrap());
    }
}
