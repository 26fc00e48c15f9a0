//! Native analysis of a Go binary's crypto/tls, for the exec lane: what
//! capture/gotls.py's analyze_go_binary (in the sandboxed worker) finds, for the common
//! case only, fast enough to hook a never-seen program before its first TLS call
//! (~1 ms for a 10 MB binary, against 4–9 ms through the worker).
//!
//! The common case: an x86-64 little-endian ELF with section headers, a go1.18+ build
//! info blob (.go.buildinfo, version as an inline string), a go1.18+/1.20+ .gopclntab,
//! crypto/tls.(*Conn).Read and Write in it, and no OpenSSL symbol names at all (so the
//! worker's answer would hold no OpenSSL target). Anything else answers `None` and the
//! file goes the Python way, which knows every layout. Every read is a bounded pread of
//! the given descriptor; nothing here trusts a size or offset it did not check.

use std::cell::RefCell;

use iced_x86::{Decoder, DecoderOptions, Mnemonic};

const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const SHT_NOBITS: u32 = 8;
const MAX_SHNUM: usize = 4096;
const MAX_SHSTRTAB: u64 = 1 << 20;
const MAX_STRTAB: u64 = 64 << 20;
const MAX_PCLNTAB: u64 = 256 << 20;
const MAX_GO_FUNCTIONS: u64 = 1_000_000;
const MAX_FUNCTION_BYTES: u64 = 64 * 1024;
const MAX_RETURNS: usize = 64;
const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
const PCLN_GO118: u32 = 0xFFFF_FFF0;
const PCLN_GO120: u32 = 0xFFFF_FFF1;
const TLS_READ: &[u8] = b"crypto/tls.(*Conn).Read";
const TLS_WRITE: &[u8] = b"crypto/tls.(*Conn).Write";
const STRTAB_CHUNK: u64 = 256 << 10;
const WARM_TABLE_BYTES: usize = 4 << 20;

thread_local! {
    /// Read buffers kept per thread (the lane's): a new program's analysis reuses memory
    /// already faulted in instead of touching megabytes of fresh pages each time.
    static SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// What the lane needs to hook one Go binary (file offsets), and what the agent caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoTls {
    pub go_version: String,
    pub minor: u32,
    pub exec_ranges: Vec<(u64, u64)>,
    pub read_entry: u64,
    pub write_entry: u64,
    pub read_returns: Vec<u64>,
    pub write_returns: Vec<u64>,
}

pub(crate) fn pread(fd: i32, n: u64, off: u64) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    pread_into(fd, &mut buf, n, off)?;
    Some(buf)
}

/// Read exactly `n` bytes at `off` into `buf` (its memory reused).
fn pread_into(fd: i32, buf: &mut Vec<u8>, n: u64, off: u64) -> Option<()> {
    buf.clear();
    buf.resize(usize::try_from(n).ok()?, 0);
    let mut got = 0usize;
    while got < buf.len() {
        // SAFETY: the destination lies inside buf.
        let r = unsafe {
            libc::pread(
                fd,
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
                (off + got as u64) as libc::off_t,
            )
        };
        if r <= 0 {
            return None;
        }
        got += r as usize;
    }
    Some(())
}

fn u16le(b: &[u8], at: usize) -> Option<u64> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as u64)
}
fn u32le(b: &[u8], at: usize) -> Option<u64> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as u64)
}
fn u64le(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

pub(crate) struct Seg {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub flags: u32,
}

pub(crate) struct Sec {
    pub name: Vec<u8>,
    pub typ: u32,
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    /// sh_link: the index of the section it refers to (a symbol table's strings)
    pub link: u32,
    pub entsize: u64,
}

/// An x86-64 little-endian ELF64 with section headers, read through bounded preads.
pub(crate) struct Elf {
    pub fd: i32,
    pub size: u64,
    pub segs: Vec<Seg>,
    pub secs: Vec<Sec>,
}

impl Elf {
    pub(crate) fn open(fd: i32, size: u64) -> Option<Elf> {
        let h = pread(fd, 64, 0)?;
        if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 || u16le(&h, 18)? as u16 != EM_X86_64 {
            return None;
        }
        let (phoff, phentsize, phnum) = (u64le(&h, 32)?, u16le(&h, 54)?, u16le(&h, 56)?);
        let (shoff, shentsize, shnum, shstrndx) = (
            u64le(&h, 40)?,
            u16le(&h, 58)?,
            u16le(&h, 60)?,
            u16le(&h, 62)?,
        );
        if phentsize != 56 || phnum == 0 || phnum > 256 || phoff.checked_add(56 * phnum)? > size {
            return None;
        }
        let pt = pread(fd, 56 * phnum, phoff)?;
        let mut segs = Vec::new();
        for e in pt.chunks_exact(56) {
            if u32le(e, 0)? == PT_LOAD as u64 {
                segs.push(Seg {
                    flags: u32le(e, 4)? as u32,
                    offset: u64le(e, 8)?,
                    vaddr: u64le(e, 16)?,
                    filesz: u64le(e, 32)?,
                });
            }
        }
        if shentsize != 64
            || shnum == 0
            || shnum as usize > MAX_SHNUM
            || shstrndx >= shnum
            || shoff.checked_add(64 * shnum)? > size
        {
            return None; // no section headers: the worker searches the segments instead
        }
        let st = pread(fd, 64 * shnum, shoff)?;
        let strs = &st[shstrndx as usize * 64..shstrndx as usize * 64 + 64];
        let (str_off, str_size) = (u64le(strs, 24)?, u64le(strs, 32)?);
        if str_size > MAX_SHSTRTAB || str_off.checked_add(str_size)? > size {
            return None;
        }
        let names = pread(fd, str_size, str_off)?;
        let mut secs = Vec::new();
        for e in st.chunks_exact(64) {
            let n = u32le(e, 0)? as usize;
            let name = names.get(n..)?;
            let name = &name[..name.iter().position(|&c| c == 0)?];
            secs.push(Sec {
                name: name.to_vec(),
                typ: u32le(e, 4)? as u32,
                addr: u64le(e, 16)?,
                offset: u64le(e, 24)?,
                size: u64le(e, 32)?,
                link: u32le(e, 40)? as u32,
                entsize: u64le(e, 56)?,
            });
        }
        Some(Elf {
            fd,
            size,
            segs,
            secs,
        })
    }

    pub(crate) fn section(&self, name: &[u8]) -> Option<&Sec> {
        self.secs
            .iter()
            .find(|s| s.name == name && s.typ != SHT_NOBITS)
    }

    pub(crate) fn read_section_into(&self, s: &Sec, max: u64, buf: &mut Vec<u8>) -> Option<()> {
        if s.size > max || s.offset.checked_add(s.size)? > self.size {
            return None;
        }
        pread_into(self.fd, buf, s.size, s.offset)
    }

    /// Whether section `s` contains any of `needles` (each shorter than 64 bytes), read in
    /// chunks into `buf`.
    fn section_has(&self, s: &Sec, max: u64, needles: &[&[u8]], buf: &mut Vec<u8>) -> Option<bool> {
        if s.size > max || s.offset.checked_add(s.size)? > self.size {
            return None;
        }
        let mut at = 0u64;
        while at < s.size {
            let n = STRTAB_CHUNK.min(s.size - at);
            pread_into(self.fd, buf, n, s.offset + at)?;
            if needles.iter().any(|nd| contains(buf, nd)) {
                return Some(true);
            }
            if at + n >= s.size {
                break;
            }
            at += n - 64; // overlap: a name across the chunk boundary is still seen
        }
        Some(false)
    }

    /// As ElfImage.executable_ranges: [start, end) file offsets of the executable PT_LOAD
    /// segments with file bytes.
    pub(crate) fn exec_ranges(&self) -> Vec<(u64, u64)> {
        self.segs
            .iter()
            .filter(|s| s.flags & PF_X != 0 && s.filesz > 0)
            .map(|s| (s.offset, s.offset + s.filesz))
            .collect()
    }

    /// As ElfImage.vaddr_to_offset: only file-backed bytes of a PT_LOAD segment.
    pub(crate) fn offset_of(&self, vaddr: u64) -> Option<u64> {
        self.segs
            .iter()
            .find(|s| s.vaddr <= vaddr && vaddr < s.vaddr.saturating_add(s.filesz))
            .map(|s| vaddr - s.vaddr + s.offset)
    }

    pub(crate) fn executable_vaddr(&self, vaddr: u64) -> bool {
        self.segs.iter().any(|s| {
            s.flags & PF_X != 0 && s.vaddr <= vaddr && vaddr < s.vaddr.saturating_add(s.filesz)
        })
    }

    /// Bytes [vaddr, vaddr + len) when one segment backs them all with file bytes.
    pub(crate) fn read_vaddr(&self, vaddr: u64, len: u64) -> Option<Vec<u8>> {
        let s = self.segs.iter().find(|s| {
            s.vaddr <= vaddr
                && vaddr
                    .checked_add(len)
                    .is_some_and(|e| e <= s.vaddr + s.filesz)
        })?;
        pread(self.fd, len, vaddr - s.vaddr + s.offset)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

fn uvarint(b: &[u8], mut pos: usize) -> Option<(u64, usize)> {
    let (mut v, mut shift) = (0u64, 0u32);
    loop {
        let c = *b.get(pos)?;
        pos += 1;
        if shift > 63 {
            return None;
        }
        v |= ((c & 0x7f) as u64) << shift;
        if c < 0x80 {
            return Some((v, pos));
        }
        shift += 7;
    }
}

/// "go1.19.8" → 19; None unless it names a Go 1 release.
fn go_minor(version: &str) -> Option<u32> {
    let at = version.find("go1.")?;
    let digits: String = version[at + 4..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// RET sites in [entry, end) of a function, as the worker's capstone pass finds them;
/// None when the bytes do not decode as a whole or there is no RET.
fn return_sites(elf: &Elf, entry: u64, end: u64) -> Option<Vec<u64>> {
    let len = end.checked_sub(entry)?;
    if len == 0 || len > MAX_FUNCTION_BYTES {
        return None;
    }
    let code = elf.read_vaddr(entry, len)?;
    let mut dec = Decoder::with_ip(64, &code, entry, DecoderOptions::NONE);
    let mut rets = Vec::new();
    let mut to = entry;
    while dec.can_decode() {
        let ins = dec.decode();
        if ins.is_invalid() {
            return None;
        }
        if ins.mnemonic() == Mnemonic::Ret {
            rets.push(ins.ip());
            if rets.len() > MAX_RETURNS {
                return None;
            }
        }
        to = ins.next_ip();
    }
    (to == end && !rets.is_empty()).then_some(rets)
}

/// Entry and end (virtual addresses) of the functions named `want` in .gopclntab
/// (go1.18+ layouts).
fn pclntab_functions(elf: &Elf, want: &[&[u8]], buf: &mut Vec<u8>) -> Option<Vec<(u64, u64)>> {
    let sec = elf
        .section(b".gopclntab")
        .or_else(|| elf.section(b".data.rel.ro.gopclntab"))?;
    elf.read_section_into(sec, MAX_PCLNTAB, buf)?;
    let buf = &buf[..];
    let magic = u32le(buf, 0)? as u32;
    if (magic != PCLN_GO118 && magic != PCLN_GO120) || *buf.get(7)? != 8 {
        return None;
    }
    let word = |i: usize| u64le(buf, 8 + i * 8);
    let nfunc = word(0)?;
    let mut text_start = word(2)?;
    let (funcname_off, pcln_off) = (word(3)?, word(7)?);
    if text_start == 0 || !elf.executable_vaddr(text_start) {
        text_start = elf.section(b".text")?.addr; // PIE: relocated at load time
    }
    if nfunc == 0 || nfunc > MAX_GO_FUNCTIONS {
        return None;
    }
    let names = buf.get(usize::try_from(funcname_off).ok()?..)?;
    let tab = usize::try_from(pcln_off).ok()?;
    let n = nfunc as usize;
    if tab.checked_add((n + 1) * 8)? > buf.len() {
        return None;
    }
    let mut out: Vec<Option<(u64, u64)>> = vec![None; want.len()];
    for i in 0..n {
        let funcoff = u32le(buf, tab + i * 8 + 4)? as usize;
        let Some(nameoff) = tab
            .checked_add(funcoff)
            .and_then(|f| buf.get(f + 4..f + 8))
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        else {
            continue;
        };
        let Some(name) = usize::try_from(nameoff).ok().and_then(|o| names.get(o..)) else {
            continue;
        };
        for (k, w) in want.iter().enumerate() {
            if out[k].is_none() && name.starts_with(w) && name.get(w.len()) == Some(&0) {
                let entry = text_start + u32le(buf, tab + i * 8)?;
                let end = text_start + u32le(buf, tab + (i + 1) * 8)?;
                if entry >= end {
                    return None;
                }
                out[k] = Some((entry, end));
            }
        }
        if out.iter().all(Option::is_some) {
            break;
        }
    }
    out.into_iter().collect()
}

/// Prepare the calling thread (the lane's, at its start) so that its first analysis costs
/// what later ones do: its read buffers faulted in (WARM_TABLE_BYTES: the function table
/// of a ~15 MB binary) and the decoder used once.
pub fn warm_up() {
    SCRATCH.with(|cell| {
        if let Ok(mut bufs) = cell.try_borrow_mut() {
            bufs.0.resize(WARM_TABLE_BYTES, 0);
            bufs.1.resize(STRTAB_CHUNK as usize, 0);
        }
    });
    let mut d = Decoder::with_ip(64, &[0xc3], 0, DecoderOptions::NONE);
    let _ = d.decode().mnemonic();
}

/// The crypto/tls hooks of Go binary `fd` (`size` bytes), or None (not the common case:
/// the worker analyses it).
pub fn analyze(fd: i32, size: u64) -> Option<GoTls> {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (a, b) = &mut *bufs;
            analyze_with(fd, size, a, b)
        }
        Err(_) => analyze_with(fd, size, &mut Vec::new(), &mut Vec::new()),
    })
}

fn analyze_with(fd: i32, size: u64, table: &mut Vec<u8>, chunk: &mut Vec<u8>) -> Option<GoTls> {
    let elf = Elf::open(fd, size)?;
    // A file naming any OpenSSL entry point may hold an OpenSSL target too: the worker's.
    for name in [&b".dynstr"[..], b".strtab"] {
        if let Some(s) = elf.section(name) {
            if elf.section_has(s, MAX_STRTAB, &[b"SSL_read", b"SSL_write"], chunk)? {
                return None;
            }
        }
    }
    let bi = elf.section(b".go.buildinfo")?;
    let blob = pread(fd, bi.size.clamp(32, 64 << 10), bi.offset)?;
    if !blob.starts_with(BUILDINFO_MAGIC) || blob[15] & 2 == 0 {
        return None; // pre-1.18 layout (pointers to strings): the worker reads it
    }
    let (vlen, pos) = uvarint(&blob, 32)?;
    let version =
        String::from_utf8(blob.get(pos..pos.checked_add(vlen as usize)?)?.to_vec()).ok()?;
    let minor = go_minor(&version)?;
    if minor < 17 {
        return None; // stack ABI: refused by the agent, with its reason, the worker's way
    }
    let f = pclntab_functions(&elf, &[TLS_READ, TLS_WRITE], table)?;
    let ((r0, r1), (w0, w1)) = (f[0], f[1]);
    let ranges = elf.exec_ranges();
    let off = |v: u64| elf.offset_of(v);
    let read_returns = return_sites(&elf, r0, r1)?
        .into_iter()
        .map(off)
        .collect::<Option<Vec<u64>>>()?;
    let write_returns = return_sites(&elf, w0, w1)?
        .into_iter()
        .map(off)
        .collect::<Option<Vec<u64>>>()?;
    let out = GoTls {
        go_version: version,
        minor,
        read_entry: off(r0)?,
        write_entry: off(w0)?,
        read_returns,
        write_returns,
        exec_ranges: ranges,
    };
    let inside = |o: u64| {
        out.exec_ranges
            .iter()
            .any(|&(a, b)| a <= o && o < b && b <= size)
    };
    let all = [out.read_entry, out.write_entry]
        .into_iter()
        .chain(out.read_returns.iter().copied())
        .chain(out.write_returns.iter().copied());
    let ok = all.into_iter().all(inside);
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(go_minor("go1.19.8"), Some(19));
        assert_eq!(go_minor("go1.21rc2"), Some(21));
        assert_eq!(go_minor("devel go1.22-abc"), Some(22));
        assert_eq!(go_minor("gccgo"), None);
    }

    #[test]
    fn rets_found_and_partial_decodes_refused() {
        // push rbp; ret; int3; int3  /  mov eax,1; ret 8
        let code = [0x55u8, 0xc3, 0xcc, 0xcc];
        let mut d = Decoder::with_ip(64, &code, 0x1000, DecoderOptions::NONE);
        let mut rets = vec![];
        while d.can_decode() {
            let i = d.decode();
            if i.mnemonic() == Mnemonic::Ret {
                rets.push(i.ip());
            }
        }
        assert_eq!(rets, vec![0x1001]);
        let bad = [0x0fu8, 0xff];
        let mut d = Decoder::with_ip(64, &bad, 0, DecoderOptions::NONE);
        assert!(d.decode().is_invalid());
    }

    #[test]
    fn garbage_is_not_analysed() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let p = std::env::temp_dir().join(format!("goelf-test-{}", std::process::id()));
        let mut f = std::fs::File::create(&p).unwrap();
        let mut junk = b"\x7fELF\x02\x01\x01".to_vec();
        junk.resize(8192, 0xff);
        f.write_all(&junk).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert!(analyze(f.as_raw_fd(), 8192).is_none());
    }
}
