//! The TLS libraries a new program will load, found at its exec before the dynamic loader
//! maps them (exec lane, exec_lane.rs): its DT_NEEDED entries, and theirs, resolved inside
//! the program's own root (`/proc/<pid>/root`: a container's filesystem) the way the loader
//! searches — DT_RUNPATH (or DT_RPATH) directories, then the system directories.
//!
//! Everything here reads files that an unprivileged user or a container's image shapes:
//! names are looked up with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) from the
//! root's fd (a symlink in the image resolves inside the image, never into the host), opened
//! O_NONBLOCK (a FIFO planted at a library's name cannot hold the lane) and must be regular
//! files; every read, name, list and walk is bounded (`MAX_*`). What it cannot resolve it
//! leaves to the agent's scan of the process's maps, which finds every library once mapped.
//!
//! Not modelled: `ld.so.cache` (a library only the cache points to, outside the usual
//! directories, is left to the scan), `$ORIGIN` and other tokens in run paths, and
//! `LD_LIBRARY_PATH` (the environment of another process is not read).
//!
//! A library on overlayfs (a container image) is identified by its *layer* file, as the
//! agent does (tls_targets.py: the kernel puts a uprobe on the layer's inode, shared by
//! every container of that image): the overlay's layers come from the process's
//! mountinfo, and the layer file must have the overlay file's inode number and size.

use crate::exec_lane::{pread_exact, rd_u32, rd_u64, Phdrs};

const PT_LOAD: u64 = 1;
const PT_DYNAMIC: u64 = 2;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
const MAX_DYNAMIC: u64 = 64 << 10;
const MAX_NAME: usize = 255;
const MAX_NEEDED: usize = 64;
const MAX_RUNPATH: usize = 8;
const MAX_RUNPATH_BYTES: usize = 4096;
/// Files opened per exec while walking (programs, libraries): the exec's budget.
pub const MAX_OPENS: usize = 32;
/// Levels below the program: curl → libcurl → libssl is two.
const MAX_DEPTH: usize = 2;
const MAX_MOUNTINFO: usize = 1 << 20;
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;
/// Where the agent itself sees the host's paths (an agent on the host; one in a container
/// with the host's pids), as tls_targets.HOST_ROOTS.
const HOST_ROOTS: [&str; 2] = ["", "/proc/1/root"];

#[cfg(target_arch = "x86_64")]
const SYSTEM_DIRS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
];
#[cfg(target_arch = "aarch64")]
const SYSTEM_DIRS: [&str; 6] = [
    "/usr/lib/aarch64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYSTEM_DIRS: [&str; 4] = ["/usr/lib64", "/lib64", "/usr/lib", "/lib"];

/// Libraries every program loads and that never load a TLS library: not walked into.
const NEVER_TLS: [&str; 9] = [
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
    "libz.so.1",
];

/// What a dynamic ELF file asks the loader for.
#[derive(Debug, Default, PartialEq)]
pub struct Dynamic {
    pub needed: Vec<String>,
    /// DT_RUNPATH, else DT_RPATH: absolute directories only
    pub runpath: Vec<String>,
}

/// The DT_NEEDED names and run path of ELF file `fd` (program headers `ph`); None for a
/// static file or one whose dynamic section does not hold together.
pub(crate) fn dynamic(fd: i32, size: u64, ph: &Phdrs) -> Option<Dynamic> {
    let le = ph.le;
    let entry = |i: usize| &ph.table[i * ph.entsize..(i + 1) * ph.entsize];
    // (type, offset, vaddr, filesz)
    let fields = |e: &[u8]| -> (u64, u64, u64, u64) {
        if ph.is64 {
            (
                rd_u32(e, 0, le),
                rd_u64(e, 8, le),
                rd_u64(e, 16, le),
                rd_u64(e, 32, le),
            )
        } else {
            (
                rd_u32(e, 0, le),
                rd_u32(e, 4, le),
                rd_u32(e, 8, le),
                rd_u32(e, 16, le),
            )
        }
    };
    let (_, dyn_off, _, dyn_size) = (0..ph.count)
        .map(|i| fields(entry(i)))
        .find(|f| f.0 == PT_DYNAMIC)?;
    if dyn_size == 0 || dyn_size > MAX_DYNAMIC || dyn_off.checked_add(dyn_size)? > size {
        return None;
    }
    let table = pread_exact(fd, dyn_size as usize, dyn_off)?;
    let width: usize = if ph.is64 { 8 } else { 4 };
    let read = |b: &[u8], at: usize| {
        if ph.is64 {
            rd_u64(b, at, le)
        } else {
            rd_u32(b, at, le)
        }
    };
    let (mut needed, mut strtab, mut strsz, mut rpath, mut runpath) =
        (Vec::new(), None, None, None, None);
    for e in table.chunks_exact(2 * width) {
        let (tag, val) = (read(e, 0), read(e, width));
        match tag {
            0 => break,
            DT_NEEDED if needed.len() < MAX_NEEDED => needed.push(val),
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_RPATH => rpath = Some(val),
            DT_RUNPATH => runpath = Some(val),
            _ => {}
        }
    }
    let (strtab, strsz) = (strtab?, strsz?);
    // DT_STRTAB is an address: the file offset is where a PT_LOAD segment puts it
    let str_off = (0..ph.count).map(|i| fields(entry(i))).find_map(|f| {
        (f.0 == PT_LOAD && strtab >= f.2 && strtab - f.2 < f.3).then(|| strtab - f.2 + f.1)
    })?;
    if strsz == 0 || str_off.checked_add(strsz)? > size {
        return None;
    }
    // each name read on its own (a library's string table can be megabytes)
    let string_at = |off: u64, max: usize| -> Option<String> {
        if off >= strsz {
            return None;
        }
        let want = (max as u64 + 1).min(strsz - off) as usize;
        let bytes = pread_exact(fd, want, str_off + off)?;
        let end = bytes.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&bytes[..end]).ok().map(str::to_owned)
    };
    let runpath = runpath
        .or(rpath)
        .and_then(|off| string_at(off, MAX_RUNPATH_BYTES))
        .map(|p| {
            p.split(':')
                .filter(|d| d.starts_with('/') && !d.contains('$'))
                .take(MAX_RUNPATH)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let needed = needed
        .into_iter()
        .filter_map(|off| string_at(off, MAX_NAME))
        .filter(|n| !n.is_empty() && !n.contains('/') && n != "." && n != "..")
        .collect();
    Some(Dynamic { needed, runpath })
}

/// Open `path` (absolute, in the root of directory fd `root`) for reading, resolved inside
/// that root; a regular file only. Returns (fd, stat).
pub fn open_in_root(root: i32, path: &str) -> Option<(i32, libc::stat)> {
    let c = std::ffi::CString::new(path.trim_start_matches('/')).ok()?;
    // struct open_how { u64 flags; u64 mode; u64 resolve; }
    let how: [u64; 3] = [
        (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOATIME | libc::O_NONBLOCK | libc::O_NOCTTY)
            as u64,
        0,
        RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    ];
    // SAFETY: c is a valid C string and how a valid open_how for the duration of the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            c.as_ptr(),
            how.as_ptr(),
            std::mem::size_of_val(&how),
        )
    } as i32;
    if fd < 0 {
        return None;
    }
    match regular_file(fd) {
        Some(st) => Some((fd, st)),
        None => {
            // SAFETY: fd was opened above and is ours.
            unsafe { libc::close(fd) };
            None
        }
    }
}

/// The stat of open file `fd` when it is a non-empty regular file.
pub(crate) fn regular_file(fd: i32) -> Option<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be overwritten by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open, st valid for writes.
    let ok = unsafe { libc::fstat(fd, &mut st) } == 0
        && st.st_mode & libc::S_IFMT == libc::S_IFREG
        && st.st_size > 0;
    ok.then_some(st)
}

/// One library found: its path in the program's root, the open fd (the caller's) and stat.
pub struct Found {
    pub path: String,
    pub fd: i32,
    pub st: libc::stat,
}

/// The libraries program `exe` (its dynamic section) will load whose names `wanted`
/// accepts, found under root fd `root`, at most MAX_DEPTH levels down; `program_headers`
/// reads a library's headers for the walk below it. Level by level, the wanted names of a
/// level are looked up before any other library of it is opened, and the walk ends with
/// the first level that had one (curl: libcurl.so.4 read, then libssl.so.3 found: two
/// opens). Opens at most MAX_OPENS files.
pub(crate) fn libraries(
    root: i32,
    exe: &Dynamic,
    wanted: impl Fn(&str) -> bool,
    program_headers: impl Fn(i32, u64) -> Option<Phdrs>,
) -> Vec<Found> {
    let mut found = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut opens = 0usize;
    // the next level's names, each with the run path of the file that needs it
    let mut level: Vec<(String, Vec<String>)> = exe
        .needed
        .iter()
        .map(|n| (n.clone(), exe.runpath.clone()))
        .collect();
    for depth in 0..=MAX_DEPTH {
        level.retain(|(n, _)| {
            let new = !seen.contains(n) && !NEVER_TLS.contains(&n.as_str());
            if new {
                seen.push(n.clone());
            }
            new
        });
        let (want, rest): (Vec<_>, Vec<_>) = level.into_iter().partition(|(n, _)| wanted(n));
        for (name, runpath) in &want {
            match lookup(root, name, runpath, &mut opens) {
                Some((path, fd, st)) => found.push(Found { path, fd, st }),
                None if opens >= MAX_OPENS => return found,
                None => {}
            }
        }
        if !found.is_empty() || depth == MAX_DEPTH {
            break;
        }
        let mut next = Vec::new();
        for (name, runpath) in &rest {
            let Some((_, fd, st)) = lookup(root, name, runpath, &mut opens) else {
                if opens >= MAX_OPENS {
                    return found;
                }
                continue;
            };
            let below = program_headers(fd, st.st_size as u64)
                .and_then(|ph| dynamic(fd, st.st_size as u64, &ph));
            // SAFETY: fd was opened by open_in_root and is ours.
            unsafe { libc::close(fd) };
            if let Some(d) = below {
                next.extend(d.needed.into_iter().map(|n| (n, d.runpath.clone())));
            }
        }
        level = next;
    }
    found
}

/// `name` looked up as the loader would: the run path's directories, then the system's;
/// each attempt counts against `opens` (none once it reaches MAX_OPENS).
fn lookup(
    root: i32,
    name: &str,
    runpath: &[String],
    opens: &mut usize,
) -> Option<(String, i32, libc::stat)> {
    for dir in runpath.iter().map(String::as_str).chain(SYSTEM_DIRS) {
        if *opens >= MAX_OPENS {
            return None;
        }
        *opens += 1;
        let path = format!("{}/{name}", dir.trim_end_matches('/'));
        if let Some((fd, st)) = open_in_root(root, &path) {
            return Some((path, fd, st));
        }
    }
    None
}

/// True when `fd` is a file on overlayfs.
pub fn on_overlay(fd: i32) -> bool {
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open, s valid for writes.
    unsafe { libc::fstatfs(fd, &mut s) == 0 && s.f_type as i64 == OVERLAYFS_SUPER_MAGIC }
}

/// An overlay mount of mountinfo: (st_dev of the overlay, mount point, root inside the
/// overlay, layer directories: upperdir first, then lowerdirs, in lookup order).
#[derive(Debug, PartialEq)]
pub struct Overlay {
    pub dev: u64,
    pub mount_point: String,
    pub root: String,
    pub layers: Vec<String>,
}

fn unescape_octal(s: &str) -> String {
    // mountinfo writes space, tab, newline and backslash as \ooo
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(((b[i + 1] - b'0') << 6) | ((b[i + 2] - b'0') << 3) | (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Split at `sep` not preceded by a backslash.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut prev) = (0, '\0');
    for (i, c) in s.char_indices() {
        if c == sep && prev != '\\' {
            out.push(&s[start..i]);
            start = i + 1;
        }
        prev = c;
    }
    out.push(&s[start..]);
    out
}

/// The overlay mounts in mountinfo `text` (as tls_targets.parse_overlay_mounts).
pub fn overlay_mounts(text: &str) -> Vec<Overlay> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let (lf, rf): (Vec<&str>, Vec<&str>) = (
            left.split_whitespace().collect(),
            right.split_whitespace().collect(),
        );
        if lf.len() < 5 || rf.len() < 3 || rf[0] != "overlay" {
            continue;
        }
        let Some((Ok(major), Ok(minor))) = lf[2]
            .split_once(':')
            .map(|(a, b)| (a.parse::<u32>(), b.parse::<u32>()))
        else {
            continue;
        };
        let (mut upper, mut lower) = (Vec::new(), Vec::new());
        for opt in split_unescaped(rf[2], ',') {
            let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
            match key {
                "upperdir" => upper.push(value),
                // ":"-separated, a literal ":" is "\:"; "::" marks data-only layers
                "lowerdir" => lower.extend(
                    split_unescaped(value, ':')
                        .into_iter()
                        .filter(|p| !p.is_empty()),
                ),
                "lowerdir+" => lower.push(value),
                _ => {}
            }
        }
        let layers: Vec<String> = upper
            .into_iter()
            .chain(lower)
            .map(|p| unescape_octal(p).replace("\\:", ":").replace("\\,", ","))
            .collect();
        if !layers.is_empty() {
            out.push(Overlay {
                dev: libc::makedev(major, minor),
                mount_point: unescape_octal(lf[4]),
                root: unescape_octal(lf[3]),
                layers,
            });
        }
    }
    out
}

/// (dev, ino) of the layer file behind overlay file `st`, found at `path` in the view of
/// process `pid` (as tls_targets._layer_identity): the layer file must have its inode
/// number and size. None when not found (the caller leaves the file to the scan).
pub fn layer_identity(pid: u32, path: &str, st: &libc::stat) -> Option<(u64, u64)> {
    let text = read_bounded(&format!("/proc/{pid}/mountinfo"), MAX_MOUNTINFO)?;
    let mut mounts: Vec<Overlay> = overlay_mounts(&text)
        .into_iter()
        .filter(|m| m.dev == st.st_dev)
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.mount_point.len()));
    for m in mounts {
        let mp = m.mount_point.trim_end_matches('/');
        let Some(rest) = path.strip_prefix(mp) else {
            continue;
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            continue;
        }
        let rel = format!(
            "{}/{}",
            m.root.trim_end_matches('/'),
            rest.trim_start_matches('/')
        );
        let rel = rel.trim_start_matches('/');
        for layer in &m.layers {
            for host in HOST_ROOTS {
                let candidate = format!("{host}{}/{rel}", layer.trim_end_matches('/'));
                let Ok(c) = std::ffi::CString::new(candidate) else {
                    continue;
                };
                // SAFETY: an all-zero stat is a valid value to be overwritten.
                let mut lst: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: c is a valid C string, lst valid for writes.
                if unsafe { libc::stat(c.as_ptr(), &mut lst) } == 0
                    && lst.st_ino == st.st_ino
                    && lst.st_size == st.st_size
                {
                    return Some((lst.st_dev, lst.st_ino));
                }
            }
        }
    }
    None
}

fn read_bounded(path: &str, max: usize) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(max as u64).read_to_end(&mut buf).ok()?;
    String::from_utf8(buf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec_lane::program_headers;

    fn open(path: &str) -> Option<(i32, u64)> {
        let c = std::ffi::CString::new(path).unwrap();
        // SAFETY: valid C string.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let size = std::fs::metadata(path).ok()?.len();
        Some((fd, size))
    }

    #[test]
    fn curl_needs_libcurl_which_needs_libssl() {
        let Some((fd, size)) = open("/usr/bin/curl") else {
            return; // no curl on this machine: nothing to read
        };
        let ph = program_headers(fd, size).unwrap();
        let d = dynamic(fd, size, &ph).unwrap();
        assert!(d.needed.iter().any(|n| n == "libcurl.so.4"), "{d:?}");
        let root = {
            // SAFETY: valid C string.
            unsafe {
                libc::open(
                    c"/".as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            }
        };
        let found = libraries(root, &d, |n| n.starts_with("libssl.so"), program_headers);
        assert_eq!(found.len(), 1);
        let want = std::fs::metadata(
            std::fs::canonicalize("/usr/lib/x86_64-linux-gnu/libssl.so.3").unwrap(),
        )
        .unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (found[0].st.st_dev, found[0].st.st_ino),
            (want.dev(), want.ino())
        );
        for f in found {
            // SAFETY: ours.
            unsafe { libc::close(f.fd) };
        }
        // SAFETY: ours.
        unsafe {
            libc::close(root);
            libc::close(fd);
        }
    }

    #[test]
    fn a_static_file_has_no_dynamic_section() {
        let mut f = vec![0u8; 64 + 56];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        f[64..68].copy_from_slice(&(PT_LOAD as u32).to_le_bytes());
        let mut t = tempfile();
        std::io::Write::write_all(&mut t.0, &f).unwrap();
        let ph = program_headers(t.1, f.len() as u64).unwrap();
        assert_eq!(dynamic(t.1, f.len() as u64, &ph), None);
    }

    fn tempfile() -> (std::fs::File, i32) {
        use std::os::fd::AsRawFd;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("needed-test-{}-{n}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        let fd = f.as_raw_fd();
        (f, fd)
    }

    /// An ELF64 file: a PT_LOAD over the whole file at address 0x400000, a PT_DYNAMIC with
    /// `tags` (a DT_STRTAB/DT_STRSZ for `strings` added), the strings at the end.
    fn dynamic_elf(tags: &[(u64, u64)], strings: &[u8]) -> Vec<u8> {
        let base = 0x40_0000u64;
        let dyn_at = 64 + 2 * 56;
        let entries = tags.len() + 3;
        let str_at = dyn_at + entries * 16;
        let total = str_at + strings.len();
        let mut f = vec![0u8; total];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let ph = |f: &mut Vec<u8>, at: usize, ty: u32, off: u64, vaddr: u64, size: u64| {
            f[at..at + 4].copy_from_slice(&ty.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            f[at + 16..at + 24].copy_from_slice(&vaddr.to_le_bytes());
            f[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
        };
        ph(&mut f, 64, PT_LOAD as u32, 0, base, total as u64);
        ph(
            &mut f,
            120,
            PT_DYNAMIC as u32,
            dyn_at as u64,
            base + dyn_at as u64,
            (entries * 16) as u64,
        );
        let all: Vec<(u64, u64)> = tags
            .iter()
            .copied()
            .chain([
                (DT_STRTAB, base + str_at as u64),
                (DT_STRSZ, strings.len() as u64),
                (0, 0),
            ])
            .collect();
        for (i, (t, v)) in all.iter().enumerate() {
            f[dyn_at + i * 16..dyn_at + i * 16 + 8].copy_from_slice(&t.to_le_bytes());
            f[dyn_at + i * 16 + 8..dyn_at + i * 16 + 16].copy_from_slice(&v.to_le_bytes());
        }
        f[str_at..].copy_from_slice(strings);
        f
    }

    #[test]
    fn needed_names_and_the_run_path_are_read() {
        // strings: "\0libssl.so.3\0libc.so.6\0/opt/app/lib:$ORIGIN/../lib:rel\0../evil.so\0"
        let strings = b"\0libssl.so.3\0libc.so.6\0/opt/app/lib:$ORIGIN/../lib:rel\0../evil.so\0";
        let tags = [
            (DT_NEEDED, 1),
            (DT_NEEDED, 13),
            (DT_RPATH, 999),
            (DT_RUNPATH, 23),
            (DT_NEEDED, 55),
            (DT_NEEDED, 4000),
        ];
        let f = dynamic_elf(&tags, strings);
        let mut t = tempfile();
        std::io::Write::write_all(&mut t.0, &f).unwrap();
        let ph = program_headers(t.1, f.len() as u64).unwrap();
        let d = dynamic(t.1, f.len() as u64, &ph).unwrap();
        // a name with a slash and one past the table are dropped; RUNPATH wins over RPATH,
        // and only its absolute, token-free directories are kept
        assert_eq!(
            d.needed,
            vec!["libssl.so.3".to_string(), "libc.so.6".to_string()]
        );
        assert_eq!(d.runpath, vec!["/opt/app/lib".to_string()]);
        // cut short: the string table past the file's end
        let mut t2 = tempfile();
        std::io::Write::write_all(&mut t2.0, &f[..f.len() - 10]).unwrap();
        let ph2 = program_headers(t2.1, (f.len() - 10) as u64).unwrap();
        assert_eq!(dynamic(t2.1, (f.len() - 10) as u64, &ph2), None);
    }

    #[test]
    fn overlay_mounts_are_read_with_their_escapes() {
        let text = "1 0 8:1 / / rw - ext4 /dev/vda rw\n\
            612 598 0:77 / / rw,relatime - overlay overlay rw,lowerdir=/s/l/A:/s/l/B\\:x::/s/data,upperdir=/s/o/up\\040dir/diff,workdir=/s/o/w\n\
            613 598 0:78 /sub /mnt rw - overlay overlay rw,lowerdir+=/s/l/C,lowerdir+=/s/l/D\n";
        let m = overlay_mounts(text);
        assert_eq!(
            m,
            vec![
                Overlay {
                    dev: libc::makedev(0, 77),
                    mount_point: "/".into(),
                    root: "/".into(),
                    layers: vec![
                        "/s/o/up dir/diff".into(),
                        "/s/l/A".into(),
                        "/s/l/B:x".into(),
                        "/s/data".into()
                    ],
                },
                Overlay {
                    dev: libc::makedev(0, 78),
                    mount_point: "/mnt".into(),
                    root: "/sub".into(),
                    layers: vec!["/s/l/C".into(), "/s/l/D".into()],
                },
            ]
        );
    }

    #[test]
    fn a_fifo_or_a_name_outside_the_root_is_not_opened() {
        let dir = std::env::temp_dir().join(format!("needed-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("lib/libssl.so.3").to_str().unwrap()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::os::unix::fs::symlink("/etc/hostname", dir.join("lib/libcrypto.so.3")).unwrap();
        std::fs::write(dir.join("lib/libz.so.1"), b"x").unwrap();
        let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        // SAFETY: valid C string.
        let root = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        assert!(open_in_root(root, "/lib/libssl.so.3").is_none()); // a FIFO: not opened, not waited on
        assert!(open_in_root(root, "/lib/libcrypto.so.3").is_none()); // /etc/hostname inside the root: absent
        assert!(open_in_root(root, "/../../../../etc/hostname").is_none());
        let (fd, _) = open_in_root(root, "/lib/libz.so.1").unwrap();
        // SAFETY: ours.
        unsafe {
            libc::close(fd);
            libc::close(root);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
