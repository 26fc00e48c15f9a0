//! Native analysis of a libssl build, for the exec lane: what capture/tls_targets.py's
//! analyze_image (in the sandboxed worker) finds in an OpenSSL libssl, for the common case
//! only, so that a container image's own never-seen libssl is hooked at its program's exec,
//! before the loader maps it (well under a millisecond, against 4–30 ms through the worker
//! on a busy host).
//!
//! The common case: an x86-64 little-endian ELF64 with section headers, a `.dynsym` and no
//! `.symtab` (distributions ship libssl stripped; with a `.symtab` the worker may find
//! names there this does not look for), SSL_read and SSL_write defined, and neither
//! BoringSSL's nor Node's marker symbols (other families: the worker's). Anything else
//! answers `None` and the file goes the Python way, unchanged. Every read is a bounded
//! pread of the given descriptor (goelf::Elf); the code is memory-safe Rust, so a hostile
//! file can only make it answer None.
//!
//! What it mirrors, rule for rule (tests/unit/tls_targets/test_exec_lane.py compares the
//! two on real files): elfsyms.ElfImage.find_symbols (defined STT_FUNC symbols with a
//! file offset, globals over locals, default versions over others),
//! tls_targets.find_internal_rw (the one direct callee SSL_read and SSL_read_ex share, and
//! SSL_write and SSL_write_ex), openssl_flavour, `_decodes_at` and the executable-range
//! check, and tls_attach._openssl_links for the links.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};

use crate::goelf::{pread, Elf};

/// tls_targets.OPENSSL_SYMBOLS
pub const SYMBOLS: [&str; 10] = [
    "SSL_read",
    "SSL_read_ex",
    "SSL_write",
    "SSL_write_ex",
    "SSL_get_fd",
    "SSL_do_handshake",
    "SSL_set_fd",
    "SSL_get_rbio",
    "SSL_get_wbio",
    "SSL_free",
];
/// tls_targets.BORINGSSL_MARKER_SYMBOLS and NODE_MARKER_SYMBOLS: other families.
const OTHER_FAMILIES: [&str; 5] = [
    "SSL_CTX_set_grease_enabled",
    "SSL_CTX_set_strict_cipher_list",
    "BORINGSSL_self_test",
    "napi_module_register",
    "node_module_register",
];
/// Looked up for openssl_flavour.
const FLAVOUR_SYMBOLS: [&str; 2] = ["SSL_CTX_new_ex", "OPENSSL_init_ssl"];

const SHT_DYNSYM: u32 = 11;
const SHT_DYNAMIC: u32 = 6;
const DT_SONAME: u64 = 14;
const STT_FUNC: u8 = 2;
const STB_LOCAL: u8 = 0;
const SYM_SIZE: u64 = 24;
/// Bounds of what is read (a libssl's tables are ~25–40 KiB): larger files go to the worker.
const MAX_DYNSYM: u64 = 1 << 20;
const MAX_DYNSTR: u64 = 1 << 20;
const MAX_DYNAMIC: u64 = 64 << 10;
/// tls_targets._direct_calls: the first bytes of a function looked at for its callees.
const CALL_WINDOW: u64 = 160;

/// The exported read/write pairs and the internal function each pair shares.
const INTERNAL: [(&str, &str, &str); 2] = [
    ("SSL_read", "SSL_read_ex", "ssl_read_internal"),
    ("SSL_write", "SSL_write_ex", "ssl_write_internal"),
];

/// Which BPF program a hook goes to (tls_attach: ssl_write_enter, ssl_read_enter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prog {
    WriteEnter,
    ReadEnter,
    Exit,
}

/// tls_attach.OPENSSL_INTERNAL_HOOKS and OPENSSL_HOOKS: (symbol, program, cookie).
const INTERNAL_HOOKS: [(&str, Prog, u64); 2] = [
    ("ssl_write_internal", Prog::WriteEnter, 1),
    ("ssl_read_internal", Prog::ReadEnter, 1),
];
const EXPORTED_HOOKS: [(&str, Prog, u64); 4] = [
    ("SSL_write", Prog::WriteEnter, 0),
    ("SSL_write_ex", Prog::WriteEnter, 1),
    ("SSL_read", Prog::ReadEnter, 0),
    ("SSL_read_ex", Prog::ReadEnter, 1),
];

/// What the worker's result holds for a libssl ("exec_ranges" and "openssl").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSsl {
    pub exec_ranges: Vec<(u64, u64)>,
    /// (name, file offset): the exports found, then the internal functions when found
    pub symbols: Vec<(&'static str, u64)>,
    pub flavour: &'static str,
}

impl OpenSsl {
    /// The worker-shaped analysis result (tls_targets.analyze_image), as JSON.
    pub fn result_json(&self) -> String {
        let ranges: Vec<String> = self
            .exec_ranges
            .iter()
            .map(|(a, b)| format!("[{a},{b}]"))
            .collect();
        let syms: Vec<String> = self
            .symbols
            .iter()
            .map(|(n, o)| format!("\"{n}\":{o}"))
            .collect();
        format!(
            "{{\"exec_ranges\":[{}],\"openssl\":{{\"symbols\":{{{}}},\"flavour\":\"{}\",\"node_exports\":false}},\"go\":null,\"go_error\":null}}",
            ranges.join(","),
            syms.join(","),
            self.flavour
        )
    }

    fn offset(&self, name: &str) -> Option<u64> {
        self.symbols.iter().find(|(n, _)| *n == name).map(|s| s.1)
    }

    /// tls_attach._openssl_links: (program, offsets, cookies, return probe) — the internal
    /// functions when both are known, else the exported pairs; entries grouped by program
    /// in order of first use, then one return probe over all of them.
    pub fn links(&self) -> Vec<(Prog, Vec<u64>, Vec<u64>, bool)> {
        let internal = INTERNAL_HOOKS
            .iter()
            .all(|(s, _, _)| self.offset(s).is_some());
        let hooks: &[(&str, Prog, u64)] = if internal {
            &INTERNAL_HOOKS
        } else {
            &EXPORTED_HOOKS
        };
        let mut out: Vec<(Prog, Vec<u64>, Vec<u64>, bool)> = Vec::new();
        let (mut exit_offs, mut exit_cookies) = (Vec::new(), Vec::new());
        for &(sym, prog, cookie) in hooks {
            let Some(off) = self.offset(sym) else {
                continue;
            };
            match out.iter_mut().find(|l| l.0 == prog) {
                Some(l) => {
                    l.1.push(off);
                    l.2.push(cookie);
                }
                None => out.push((prog, vec![off], vec![cookie], false)),
            }
            exit_offs.push(off);
            exit_cookies.push(cookie);
        }
        if exit_offs.is_empty() {
            return Vec::new();
        }
        out.push((Prog::Exit, exit_offs, exit_cookies, true));
        out
    }
}

/// A defined function symbol: (rank, vaddr, file offset, string position, table index).
type Found = (u8, u64, u64, usize, usize);

fn cstr(buf: &[u8], at: usize) -> Option<&[u8]> {
    let s = buf.get(at..)?;
    Some(&s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())])
}

/// elfsyms._lookup_in_table over .dynsym: for each wanted name, its best definition.
fn lookup(elf: &Elf, symtab: &[u8], strtab: &[u8], wanted: &[&str]) -> Vec<Option<Found>> {
    let mut best: Vec<Option<Found>> = vec![None; wanted.len()];
    for (idx, e) in symtab.chunks_exact(SYM_SIZE as usize).enumerate() {
        let st_name = u32::from_le_bytes(e[0..4].try_into().unwrap()) as usize;
        let info = e[4];
        let shndx = u16::from_le_bytes(e[6..8].try_into().unwrap());
        let value = u64::from_le_bytes(e[8..16].try_into().unwrap());
        if info & 0xf != STT_FUNC || shndx == 0 || value == 0 {
            continue;
        }
        let Some(full) = cstr(strtab, st_name) else {
            continue;
        };
        let base = full.split(|&c| c == b'@').next().unwrap_or(full);
        let Some(w) = wanted.iter().position(|n| n.as_bytes() == base) else {
            continue;
        };
        let Some(off) = elf.offset_of(value) else {
            continue;
        };
        let versioned = full.contains(&b'@');
        let default_version = full.windows(2).any(|p| p == b"@@");
        let rank =
            if info >> 4 == STB_LOCAL { 2 } else { 0 } + u8::from(versioned && !default_version);
        let cand = (rank, value, off, st_name, idx);
        let better = match best[w] {
            None => true,
            Some(b) => (rank, st_name, idx) < (b.0, b.3, b.4),
        };
        if better {
            best[w] = Some(cand);
        }
    }
    best
}

/// tls_targets._direct_calls: targets of the direct call/jmp instructions at the start
/// of the function at `vaddr`, up to its first RET (or CALL_WINDOW bytes).
fn direct_calls(elf: &Elf, vaddr: u64) -> Vec<u64> {
    let Some(code) = elf.read_vaddr(vaddr, CALL_WINDOW) else {
        return Vec::new();
    };
    let mut dec = Decoder::with_ip(64, &code, vaddr, DecoderOptions::NONE);
    let mut out = Vec::new();
    while dec.can_decode() {
        let ins = dec.decode();
        if ins.is_invalid() {
            break;
        }
        match ins.mnemonic() {
            Mnemonic::Call | Mnemonic::Jmp
                if matches!(
                    ins.op0_kind(),
                    OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16
                ) =>
            {
                out.push(ins.near_branch_target())
            }
            Mnemonic::Ret => break,
            _ => {}
        }
    }
    out
}

/// tls_targets._decodes_at: an instruction decodes at file offset `off`.
fn decodes_at(elf: &Elf, off: u64) -> bool {
    let n = 16.min(elf.size.saturating_sub(off));
    let Some(code) = pread(elf.fd, n, off) else {
        return false;
    };
    let mut dec = Decoder::with_ip(64, &code, 0, DecoderOptions::NONE);
    dec.can_decode() && !dec.decode().is_invalid()
}

/// The soname (DT_SONAME) from the .dynamic section, read through its string table.
fn soname(elf: &Elf) -> Option<Vec<u8>> {
    let d = elf
        .secs
        .iter()
        .find(|s| s.typ == SHT_DYNAMIC && s.name == b".dynamic")?;
    if d.size > MAX_DYNAMIC || d.offset.checked_add(d.size)? > elf.size {
        return None;
    }
    let dynamic = pread(elf.fd, d.size, d.offset)?;
    let strs = elf.secs.get(d.link as usize)?;
    if strs.size > MAX_DYNSTR || strs.offset.checked_add(strs.size)? > elf.size {
        return None;
    }
    for e in dynamic.chunks_exact(16) {
        let tag = u64::from_le_bytes(e[0..8].try_into().unwrap());
        if tag == 0 {
            break;
        }
        if tag == DT_SONAME {
            let at = u64::from_le_bytes(e[8..16].try_into().unwrap());
            if at >= strs.size {
                return None;
            }
            let rest = pread(elf.fd, (strs.size - at).min(256), strs.offset + at)?;
            return cstr(&rest, 0).map(|s| s.to_vec());
        }
    }
    None
}

/// The libssl analysis of file `fd` (`size` bytes), or None when it is not the common
/// case (see the module doc): the worker answers those.
pub fn analyze(fd: i32, size: u64) -> Option<OpenSsl> {
    let elf = Elf::open(fd, size)?;
    if elf.section(b".symtab").is_some() {
        return None;
    }
    let ds = elf
        .secs
        .iter()
        .find(|s| s.typ == SHT_DYNSYM && s.name == b".dynsym")?;
    let strs = elf.secs.get(ds.link as usize)?;
    if ds.entsize != SYM_SIZE || ds.size > MAX_DYNSYM || strs.size > MAX_DYNSTR {
        return None;
    }
    let (mut symtab, mut strtab) = (Vec::new(), Vec::new());
    elf.read_section_into(ds, MAX_DYNSYM, &mut symtab)?;
    elf.read_section_into(strs, MAX_DYNSTR, &mut strtab)?;

    let wanted: Vec<&str> = SYMBOLS
        .iter()
        .chain(OTHER_FAMILIES.iter())
        .chain(FLAVOUR_SYMBOLS.iter())
        .copied()
        .collect();
    let found = lookup(&elf, &symtab, &strtab, &wanted);
    let has = |name: &str| {
        wanted
            .iter()
            .position(|w| *w == name)
            .and_then(|i| found[i])
    };
    if OTHER_FAMILIES.iter().any(|n| has(n).is_some()) {
        return None;
    }
    if has("SSL_read").is_none() || has("SSL_write").is_none() {
        return None;
    }

    // openssl_flavour (BoringSSL's markers were refused above)
    let so = soname(&elf).unwrap_or_default();
    let dynstr_has = |needle: &[u8]| memchr::memmem::find(&strtab, needle).is_some();
    let flavour = if so.starts_with(b"libssl.so.3")
        || dynstr_has(b"OPENSSL_3.0.0")
        || has("SSL_CTX_new_ex").is_some()
    {
        "openssl-3"
    } else if so.starts_with(b"libssl.so.1.1")
        || dynstr_has(b"OPENSSL_1_1_0")
        || (has("OPENSSL_init_ssl").is_some() && has("SSL_read_ex").is_some())
    {
        "openssl-1.1"
    } else {
        "unknown"
    };

    // find_internal_rw
    let exports: Vec<u64> = SYMBOLS.iter().filter_map(|n| has(n)).map(|f| f.1).collect();
    let mut internal: Vec<(&'static str, u64)> = Vec::new();
    for (plain, ex, key) in INTERNAL {
        let (Some(p), Some(x)) = (has(plain), has(ex)) else {
            internal.clear();
            break;
        };
        let from_ex = direct_calls(&elf, x.1);
        let mut common: Vec<u64> = direct_calls(&elf, p.1)
            .into_iter()
            .filter(|t| from_ex.contains(t) && elf.executable_vaddr(*t) && !exports.contains(t))
            .collect();
        common.sort_unstable();
        common.dedup();
        match (common.len(), common.first().and_then(|&t| elf.offset_of(t))) {
            (1, Some(off)) => internal.push((key, off)),
            _ => {
                internal.clear();
                break;
            }
        }
    }
    if internal.len() == 2 && internal[0].1 == internal[1].1 {
        internal.clear();
    }

    let exec_ranges = elf.exec_ranges();
    let ok =
        |off: u64| exec_ranges.iter().any(|&(a, b)| a <= off && off < b) && decodes_at(&elf, off);
    let symbols: Vec<(&'static str, u64)> = SYMBOLS
        .iter()
        .filter_map(|n| has(n).map(|f| (*n, f.2)))
        .chain(internal)
        .filter(|&(_, off)| ok(off))
        .collect();
    let out = OpenSsl {
        exec_ranges,
        symbols,
        flavour,
    };
    (out.offset("SSL_read").is_some() && out.offset("SSL_write").is_some()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

    #[test]
    fn the_system_libssl_is_analysed() {
        let Ok(f) = std::fs::File::open(LIBSSL) else {
            return; // not on this machine: the Python comparison covers real files
        };
        let size = f.metadata().unwrap().len();
        let a = analyze(f.as_raw_fd(), size).expect("libssl.so.3 analysed");
        assert_eq!(a.flavour, "openssl-3");
        assert!(
            a.offset("ssl_read_internal").is_some() && a.offset("ssl_write_internal").is_some()
        );
        let links = a.links();
        assert_eq!(links.len(), 3);
        assert_eq!(links[0].0, Prog::WriteEnter);
        assert_eq!(
            links[2],
            (
                Prog::Exit,
                vec![links[0].1[0], links[1].1[0]],
                vec![1, 1],
                true
            )
        );
        assert!(a.result_json().starts_with("{\"exec_ranges\":[["));
    }

    #[test]
    fn garbage_and_other_files_are_not_analysed() {
        let dir = std::env::temp_dir().join(format!("sslelf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("junk");
        std::fs::write(&p, b"\x7fELF\x02\x01\x01 this is not a library at all").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        assert!(analyze(f.as_raw_fd(), 40).is_none());
        if let Ok(libc) = std::fs::File::open("/usr/lib/x86_64-linux-gnu/libc.so.6") {
            let size = libc.metadata().unwrap().len();
            assert!(
                analyze(libc.as_raw_fd(), size).is_none(),
                "libc has no SSL_read"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_fall_back_to_the_exports() {
        let a = OpenSsl {
            exec_ranges: vec![(0, 100)],
            symbols: vec![("SSL_read", 10), ("SSL_write", 20), ("SSL_write_ex", 30)],
            flavour: "unknown",
        };
        assert_eq!(
            a.links(),
            vec![
                (Prog::WriteEnter, vec![20, 30], vec![0, 1], false),
                (Prog::ReadEnter, vec![10], vec![0], false),
                (Prog::Exit, vec![20, 30, 10], vec![0, 1, 0], true),
            ]
        );
    }
}
