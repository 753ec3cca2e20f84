//! Finds the ELF files whose TLS functions hoop probes: every executable mapping of every
//! process is looked at once (by device and inode); a file that exports OpenSSL's
//! `SSL_write`/`SSL_read` family — the system libssl, a private copy in a venv or container,
//! or a binary with OpenSSL linked in statically such as node — becomes a target.

use object::{Object, ObjectSection, ObjectSymbol};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The OpenSSL functions hoop probes, with the eBPF programs for entry and (if any) return.
pub const OPENSSL_FUNCTIONS: [(&str, &str, Option<&str>); 5] = [
    ("SSL_write", "ssl_write", Some("ssl_write_ret")),
    ("SSL_write_ex", "ssl_write_ex", Some("ssl_write_ex_ret")),
    ("SSL_read", "ssl_read", Some("ssl_read_ret")),
    ("SSL_read_ex", "ssl_read_ex", Some("ssl_read_ex_ret")),
    // Unmutes a freed connection object (see `hoop_common::ConnId`).
    ("SSL_free", "ssl_free", None),
];

/// A file to attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// A path that opens this exact file from the agent's mount namespace
    /// (`/proc/PID/root/...` for files seen in other processes).
    pub open_path: PathBuf,
    /// The path as the process sees it.
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    /// The OpenSSL functions this file defines.
    pub functions: Vec<Function>,
}

/// A probed function in a file: resolved once here, so attaching never re-reads the file
/// (node is a 100 MB executable and must be attached before its first request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    pub name: &'static str,
    /// Symbol value (virtual address).
    pub address: u64,
    /// Virtual address and file offset of the section holding it.
    pub section_address: u64,
    pub section_offset: u64,
    /// Probed at the internal worker both wrappers of `name`'s direction call.
    pub worker: bool,
}

/// One line of /proc/PID/maps that maps an executable file.
#[derive(Debug, PartialEq, Eq)]
pub struct Mapping {
    pub dev: u64,
    pub ino: u64,
    pub path: String,
}

/// Parses /proc/PID/maps, keeping executable file mappings.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(_range), Some(perms), Some(_off), Some(dev), Some(ino)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let path = f.collect::<Vec<_>>().join(" ");
        if !perms.contains('x') || !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let Some((maj, min)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min), Ok(ino)) = (
            u64::from_str_radix(maj, 16),
            u64::from_str_radix(min, 16),
            ino.parse::<u64>(),
        ) else {
            continue;
        };
        if ino == 0 {
            continue;
        }
        out.push(Mapping {
            dev: (maj << 32) | min,
            ino,
            path,
        });
    }
    out
}

/// The OpenSSL functions an ELF file defines (exported dynamic symbols or its symbol table).
pub fn openssl_functions(path: &Path) -> std::io::Result<Vec<Function>> {
    let file = fs::File::open(path)?;
    // SAFETY: read-only private mapping; a concurrent truncation could fault, which is why
    // only files that are mapped executable by a live process (hence not rewritten in place)
    // are looked at.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let Ok(obj) = object::File::parse(&*map) else {
        return Ok(Vec::new());
    };
    let mut found: Vec<Function> = Vec::new();
    let check = |found: &mut Vec<Function>, sym: &object::Symbol<'_, '_>| {
        let Ok(name) = sym.name_bytes() else {
            return;
        };
        if !sym.is_definition() {
            return;
        }
        let Some(name) = OPENSSL_FUNCTIONS
            .iter()
            .map(|(f, _, _)| *f)
            .find(|f| name == f.as_bytes())
        else {
            return;
        };
        let Some(section) = sym
            .section_index()
            .and_then(|i| obj.section_by_index(i).ok())
        else {
            return;
        };
        let Some((section_offset, _)) = section.file_range() else {
            return;
        };
        if !found.iter().any(|f| f.name == name) {
            found.push(Function {
                name,
                address: sym.address(),
                section_address: section.address(),
                section_offset,
                worker: false,
            });
        }
    };
    for s in obj.dynamic_symbols() {
        check(&mut found, &s);
    }
    if found.is_empty() {
        for s in obj.symbols() {
            check(&mut found, &s);
        }
    }
    // Both directions are needed for anything useful.
    let writes = found.iter().any(|f| f.name.starts_with("SSL_write"));
    let reads = found.iter().any(|f| f.name.starts_with("SSL_read"));
    if !(writes && reads) {
        found.clear();
    }
    move_to_workers(&obj, &mut found);
    Ok(found)
}

/// The section holding virtual address `addr`: its code from `addr` on, its address and
/// file offset.
fn code_at<'d>(obj: &object::File<'d>, addr: u64) -> Option<(&'d [u8], u64, u64)> {
    let s = obj
        .sections()
        .find(|s| s.address() <= addr && addr < s.address() + s.size())?;
    let data = s.data().ok()?;
    let (offset, _) = s.file_range()?;
    Some((
        data.get((addr - s.address()) as usize..)?,
        s.address(),
        offset,
    ))
}

/// Where a wrapper pair shares a cheaper-to-probe worker (see `probe_site`), probes the
/// worker with the `_ex` programs instead of both wrappers.
fn move_to_workers(obj: &object::File<'_>, found: &mut Vec<Function>) {
    // Past a leading endbr64 where that is what makes the difference.
    for f in found.iter_mut() {
        if let Some(site) = code_at(obj, f.address)
            .and_then(|(code, _, _)| crate::probe_site::cheap_site(code, f.address))
        {
            f.address = site;
        }
    }
    for (plain, ex) in [("SSL_write", "SSL_write_ex"), ("SSL_read", "SSL_read_ex")] {
        let Some(e) = found.iter().find(|f| f.name == ex).copied() else {
            continue;
        };
        let Some((ex_code, _, _)) = code_at(obj, e.address) else {
            continue;
        };
        let p = found
            .iter()
            .find(|f| f.name == plain)
            .and_then(|p| Some((code_at(obj, p.address)?.0, p.address)));
        let worker = crate::probe_site::shared_worker((ex_code, e.address), p, |a| {
            code_at(obj, a).map(|c| c.0)
        });
        let Some((w, (_, section_address, section_offset))) =
            worker.and_then(|w| Some((w, code_at(obj, w)?)))
        else {
            continue;
        };
        found.retain(|f| f.name != plain && f.name != ex);
        found.push(Function {
            name: ex,
            address: w,
            section_address,
            section_offset,
            worker: true,
        });
    }
}

/// Remembers every file looked at, so each is parsed once.
#[derive(Default)]
pub struct Discovery {
    seen: HashMap<(u64, u64), bool>,
}

impl Discovery {
    pub fn new() -> Self {
        Self::default()
    }

    /// Files looked at so far.
    pub fn files_seen(&self) -> usize {
        self.seen.len()
    }

    /// New targets mapped by one process (nothing if the process is gone).
    pub fn scan_pid(&mut self, pid: u32) -> Vec<Target> {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in parse_maps(&text) {
            if self.seen.contains_key(&(m.dev, m.ino)) {
                continue;
            }
            let open_path = PathBuf::from(format!("/proc/{pid}/root{}", m.path));
            // A failed open (process gone) is retried next time the file is seen.
            let Ok(functions) = crate::go_discovery::tls_functions(&open_path) else {
                continue;
            };
            self.seen.insert((m.dev, m.ino), !functions.is_empty());
            if !functions.is_empty() {
                out.push(Target {
                    open_path,
                    path: m.path,
                    dev: m.dev,
                    ino: m.ino,
                    functions,
                });
            }
        }
        out
    }

    /// New targets mapped by any running process.
    pub fn scan_all(&mut self, skip_pid: u32) -> Vec<Target> {
        let mut out = Vec::new();
        let Ok(dir) = fs::read_dir("/proc") else {
            return out;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == skip_pid {
                continue;
            }
            out.extend(self.scan_pid(pid));
        }
        out
    }

    /// Well-known library files that may not be mapped by any process yet (the system
    /// libssl), so processes started later are covered from their first call.
    pub fn scan_paths(&mut self, paths: &[PathBuf]) -> Vec<Target> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        for p in paths {
            let Ok(real) = fs::canonicalize(p) else {
                continue;
            };
            let Ok(meta) = fs::metadata(&real) else {
                continue;
            };
            // Same encoding as /proc/PID/maps: major << 32 | minor.
            let dev = (libc::major(meta.dev()) as u64) << 32 | libc::minor(meta.dev()) as u64;
            let key = (dev, meta.ino());
            if self.seen.contains_key(&key) {
                continue;
            }
            let functions = openssl_functions(&real).unwrap_or_default();
            self.seen.insert(key, !functions.is_empty());
            if !functions.is_empty() {
                out.push(Target {
                    path: real.display().to_string(),
                    open_path: real,
                    dev,
                    ino: meta.ino(),
                    functions,
                });
            }
        }
        out
    }
}

/// Where distributions put the system libssl.
pub fn system_libssl_candidates() -> Vec<PathBuf> {
    let dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/lib64",
        "/usr/lib",
        "/usr/local/lib",
        "/usr/local/lib64",
    ];
    let mut out = Vec::new();
    for d in dirs {
        let Ok(entries) = fs::read_dir(d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("libssl.so") {
                out.push(e.path());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let text = "\
7f0000000000-7f0000001000 r--p 00000000 fd:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000002000 r-xp 00001000 fd:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000003000-7f0000004000 r-xp 00000000 00:00 0 [vdso]
7f0000005000-7f0000006000 r-xp 00000000 08:02 99 /tmp/my lib.so
7f0000007000-7f0000008000 r-xp 00000000 08:02 98 /tmp/gone.so (deleted)
garbage line";
        let m = parse_maps(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].dev, (0xfd << 32) | 1);
        assert_eq!(m[0].ino, 1234);
        assert_eq!(m[1].path, "/tmp/my lib.so");
    }

    #[test]
    fn finds_system_libssl_functions() {
        let libs = system_libssl_candidates();
        let found: Vec<_> = libs
            .iter()
            .filter_map(|p| openssl_functions(p).ok())
            .filter(|f| !f.is_empty())
            .collect();
        assert!(
            !found.is_empty(),
            "no libssl with SSL_write/SSL_read in {libs:?}"
        );
        assert!(
            found[0]
                .iter()
                .any(|f| f.name == "SSL_write_ex" && f.address > 0)
        );
    }

    /// Every read/write probe of this machine's libssl (and node, if installed) sits on an
    /// instruction the kernel emulates: no single-step per TLS call (see `probe_site`).
    #[test]
    fn system_tls_probes_sit_on_emulated_instructions() {
        let mut files: Vec<PathBuf> = system_libssl_candidates()
            .into_iter()
            .filter(|p| openssl_functions(p).is_ok_and(|f| !f.is_empty()))
            .take(1)
            .collect();
        files.extend(
            ["/usr/bin/node", "/usr/local/bin/node"]
                .map(PathBuf::from)
                .into_iter()
                .filter(|p| p.exists()),
        );
        assert!(!files.is_empty());
        for path in files {
            let funcs = openssl_functions(&path).expect("read");
            let data = fs::read(&path).expect("read file");
            let obj = object::File::parse(&*data).expect("elf");
            for f in funcs.iter().filter(|f| f.name != "SSL_free") {
                let (code, _, _) = code_at(&obj, f.address).expect("code");
                assert_eq!(
                    crate::probe_site::cheap_site(code, f.address),
                    Some(f.address),
                    "{} in {} at {:#x} (worker: {})",
                    f.name,
                    path.display(),
                    f.address,
                    f.worker
                );
            }
            let probed: Vec<_> = funcs.iter().map(|f| f.name).collect();
            assert!(
                probed.iter().any(|n| n.starts_with("SSL_write")),
                "{probed:?}"
            );
            assert!(
                probed.iter().any(|n| n.starts_with("SSL_read")),
                "{probed:?}"
            );
        }
    }

    #[test]
    fn non_elf_has_no_functions() {
        let f = std::env::temp_dir().join(format!("hoop-not-elf-{}", std::process::id()));
        std::fs::write(&f, b"#!/bin/sh\necho hi\n").expect("write");
        assert!(openssl_functions(&f).expect("open").is_empty());
        let _ = std::fs::remove_file(&f);
    }
}
