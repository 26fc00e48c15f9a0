//! Draining BPF ring buffers (BPF_MAP_TYPE_RINGBUF) straight from their mmap.
//!
//! The kernel's ring protocol (the one libbpf's ring_buffer__poll implements): page 0 of
//! the map holds the consumer position (ours to write); page 1 the producer position (the
//! kernel's), followed by the data area, mapped twice in a row so that a record that wraps
//! around the end can be read as one slice. Each record starts with an 8-byte header:
//! `len` (bit 31 BUSY: still being written; bit 30 DISCARD: skip it) and a page offset;
//! records are 8-byte aligned. We read the producer position with acquire ordering,
//! process every committed record in place (no copy, no Python call), and publish the new
//! consumer position with release ordering so the kernel may reuse the space.
//!
//! This is the only module with `unsafe`: memory shared with the kernel.
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HDR_SZ: u64 = 8;

/// One mapped ring buffer.
pub struct Ring {
    fd: i32,
    mask: u64,
    page: usize,
    size: usize,
    consumer: *mut libc::c_void,
    producer: *mut libc::c_void,
}

// SAFETY: the mappings are owned by this value and only touched through &self / &mut self;
// the kernel side synchronises through the atomic positions.
unsafe impl Send for Ring {}

impl Ring {
    /// Map the ring buffer map `fd` of `size` data bytes (its max_entries, a power of two).
    pub fn open(fd: i32, size: usize) -> std::io::Result<Ring> {
        if size == 0 || !size.is_power_of_two() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "ring size must be a power of two",
            ));
        }
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // SAFETY: a fresh shared mapping of the map's consumer page; checked for MAP_FAILED.
        let consumer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if consumer == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the producer page plus the data area mapped twice (the kernel provides the
        // double mapping for this length); read-only; checked for MAP_FAILED.
        let producer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page + 2 * size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                page as libc::off_t,
            )
        };
        if producer == libc::MAP_FAILED {
            let err = std::io::Error::last_os_error();
            // SAFETY: unmapping exactly what was mapped above.
            unsafe { libc::munmap(consumer, page) };
            return Err(err);
        }
        Ok(Ring {
            fd,
            mask: size as u64 - 1,
            page,
            size,
            consumer,
            producer,
        })
    }

    pub fn fd(&self) -> i32 {
        self.fd
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer page is mapped for our lifetime and 8-byte aligned (page aligned).
        unsafe { &*(self.consumer as *const AtomicU64) }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: the producer page is mapped for our lifetime; its first word is the position.
        unsafe { &*(self.producer as *const AtomicU64) }
    }

    /// The header word of the record at position `pos`.
    fn len_word(&self, pos: u64) -> &AtomicU32 {
        let off = self.page + (pos & self.mask) as usize;
        // SAFETY: off < page + size, inside the mapping, 8-byte aligned (records are).
        unsafe { &*((self.producer as *const u8).add(off) as *const AtomicU32) }
    }

    /// Bytes committed and not yet consumed (0: nothing to read).
    pub fn backlog(&self) -> u64 {
        let cons = self.consumer_pos().load(Ordering::Acquire);
        let prod = self.producer_pos().load(Ordering::Acquire);
        prod.saturating_sub(cons)
    }

    /// The next committed record, without consuming it: (slice, its rounded length), or
    /// None when the ring is empty or the next record is still being written.
    /// Discarded records are skipped (consumed) here.
    pub fn peek(&self) -> Option<(&[u8], u64)> {
        loop {
            let cons = self.consumer_pos().load(Ordering::Acquire);
            let prod = self.producer_pos().load(Ordering::Acquire);
            if cons >= prod {
                return None;
            }
            let len = self.len_word(cons).load(Ordering::Acquire);
            if len & BUSY_BIT != 0 {
                return None;
            }
            let n = (len & !(BUSY_BIT | DISCARD_BIT)) as u64;
            let step = (n + HDR_SZ + 7) & !7;
            if len & DISCARD_BIT != 0 {
                self.consumer_pos().store(cons + step, Ordering::Release);
                continue;
            }
            if n as usize > self.size {
                // Cannot happen with a sane kernel; never read past the mapping.
                self.consumer_pos().store(cons + step, Ordering::Release);
                continue;
            }
            let start = self.page + (cons & self.mask) as usize + HDR_SZ as usize;
            // SAFETY: start + n <= page + 2*size (the data area is mapped twice, so a record
            // that wraps is contiguous); the kernel does not reuse these bytes until we
            // advance the consumer position past them (in `consume`).
            let data = unsafe {
                std::slice::from_raw_parts((self.producer as *const u8).add(start), n as usize)
            };
            return Some((data, step));
        }
    }

    /// Look at the committed records from position `from` on (at least the consumer's
    /// position) without consuming them: `f(record)` for each, at most `max`; returns the
    /// position after the last one looked at (stops at a record still being written).
    /// Only the consumer may call it: the records stay put until it consumes them.
    pub fn look_ahead(&self, from: u64, max: usize, mut f: impl FnMut(&[u8])) -> u64 {
        let cons = self.consumer_pos().load(Ordering::Acquire);
        let prod = self.producer_pos().load(Ordering::Acquire);
        let mut pos = from.max(cons);
        let mut n = 0;
        while pos < prod && n < max {
            let len = self.len_word(pos).load(Ordering::Acquire);
            if len & BUSY_BIT != 0 {
                break;
            }
            let size = (len & !(BUSY_BIT | DISCARD_BIT)) as u64;
            if len & DISCARD_BIT == 0 && size as usize <= self.size {
                let start = self.page + (pos & self.mask) as usize + HDR_SZ as usize;
                // SAFETY: as in `peek`: inside the doubly mapped data area, and the kernel
                // does not reuse these bytes before the consumer position passes them,
                // which only this (the consumer's) thread moves.
                let data = unsafe {
                    std::slice::from_raw_parts(
                        (self.producer as *const u8).add(start),
                        size as usize,
                    )
                };
                f(data);
            }
            pos += (size + HDR_SZ + 7) & !7;
            n += 1;
        }
        pos
    }

    /// Release the record `peek` returned.
    pub fn consume(&self, step: u64) {
        let cons = self.consumer_pos().load(Ordering::Relaxed);
        self.consumer_pos().store(cons + step, Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the two mappings made in `open`, once.
        unsafe {
            libc::munmap(self.consumer, self.page);
            libc::munmap(self.producer, self.page + 2 * self.size);
        }
    }
}

/// Wait until one of `fds` is readable or `timeout_ms` passed (EINTR counts as a wake-up).
pub fn wait(fds: &[i32], timeout_ms: i32) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: pfds is a valid array of pollfd for its length during the call.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
}

/// The timestamp of a record (ev_header.ts_ns), for merging several rings in time order.
pub fn record_ts(rec: &[u8]) -> u64 {
    if rec.len() < 16 {
        return 0;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&rec[8..16]);
    u64::from_le_bytes(a)
}

/// CLOCK_MONOTONIC now, in ns: the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid pointer given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
