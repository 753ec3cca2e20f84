//! Go executables: their `crypto/tls.(*Conn).Write` / `.Read` and the RET instructions of
//! `Read`, for the Go probes (see `hoop-ebpf/src/go_tls.rs`).
//!
//! - A Go executable is recognised by its build information: the `.go.buildinfo` section or
//!   the `\xff Go buildinf:` magic. Its Go version decides the calling convention: the probes
//!   read arguments from registers, which Go uses on amd64 since 1.17.
//! - Functions come from `.symtab` when the binary has one, else from Go's own symbol table
//!   `.gopclntab`, which stripped builds (`-ldflags=-s -w`) keep: Go 1.16/1.17 (magic
//!   0xfffffffa), 1.18/1.19 (0xfffffff0) and 1.20+ (0xfffffff1) layouts.
//! - Return probes crash Go programs (the runtime moves goroutine stacks and finds the
//!   trampoline return address), so `Read` is disassembled with iced-x86 and every RET is
//!   probed instead.
//!
//! The results are [`Function`]s named from [`GO_FUNCTIONS`], so a Go executable becomes an
//! ordinary [`crate::discovery::Target`].

use crate::discovery::Function;
use crate::probe_site::go_entry_site;
use iced_x86::Register;
use object::{Object, ObjectSection, ObjectSymbol};
use std::path::Path;

pub const GO_WRITE: &str = "crypto/tls.(*Conn).Write";
pub const GO_READ: &str = "crypto/tls.(*Conn).Read";
/// Name given to each RET instruction of [`GO_READ`].
pub const GO_READ_RET: &str = "crypto/tls.(*Conn).Read@ret";

/// Go functions and the eBPF programs attached to them.
pub const GO_FUNCTIONS: [(&str, &str); 3] = [
    (GO_WRITE, "go_tls_write"),
    (GO_READ, "go_tls_read"),
    (GO_READ_RET, "go_tls_read_ret"),
];

const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
/// Most RET instructions probed in one function (Read has a handful).
const MAX_RETS: usize = 64;
/// Largest function body disassembled.
const MAX_FUNC_LEN: u64 = 1 << 20;

/// Why a Go executable is not probed.
#[derive(Debug, PartialEq, Eq)]
pub enum GoSkip {
    NotGo,
    /// Not amd64.
    Arch,
    /// Go < 1.17: arguments on the stack.
    StackAbi(String),
    /// No crypto/tls in the binary (or its symbols could not be found).
    NoTls,
}

/// What was found in a Go executable.
#[derive(Debug)]
pub struct GoBinary {
    /// `go1.19.8`, when the build information could be read.
    pub version: Option<String>,
    /// Where the symbols came from: `symtab` or `pclntab`.
    pub symbols: &'static str,
    pub functions: Vec<Function>,
}

/// Parses the Go version out of build information (`data` starts at the magic).
/// `read_ptr_str` resolves a pointer to a Go string header (pre-1.18 layout).
fn buildinfo_version(
    data: &[u8],
    read_ptr_str: &dyn Fn(u64, u8, bool) -> Option<String>,
) -> Option<String> {
    if data.len() < 32 || !data.starts_with(BUILDINFO_MAGIC) {
        return None;
    }
    let ptr_size = data[14];
    let flags = data[15];
    let big_endian = flags & 1 != 0;
    if flags & 2 != 0 {
        // Go 1.18+: inline, varint-length-prefixed strings after the 32-byte header.
        let (len, n) = uvarint(data.get(32..)?)?;
        let start = 32 + n;
        let s = data.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
        return Some(String::from_utf8_lossy(s).into_owned());
    }
    // Older: a pointer to the version's string header at offset 16.
    let p = match ptr_size {
        8 => read_u64(data.get(16..24)?, big_endian),
        4 => u64::from(read_u32(data.get(16..20)?, big_endian)),
        _ => return None,
    };
    read_ptr_str(p, ptr_size, big_endian)
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut x = 0u64;
    for (i, &c) in b.iter().enumerate().take(10) {
        x |= u64::from(c & 0x7f) << (7 * i);
        if c & 0x80 == 0 {
            return Some((x, i + 1));
        }
    }
    None
}

fn read_u32(b: &[u8], be: bool) -> u32 {
    let a = [b[0], b[1], b[2], b[3]];
    if be {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

fn read_u64(b: &[u8], be: bool) -> u64 {
    let a = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
    if be {
        u64::from_be_bytes(a)
    } else {
        u64::from_le_bytes(a)
    }
}

/// `go1.16.5` → (1, 16). Development versions (`devel go1.23-abc`) parse too.
pub fn go_minor(version: &str) -> Option<(u32, u32)> {
    let v = version.split("go").nth(1)?;
    let mut it = v.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// One function of Go's pclntab: name, entry address and end (next function's entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcFunc {
    pub name: String,
    pub entry: u64,
    pub end: u64,
}

/// Looks up functions by name in a `.gopclntab` section. `text_fallback` is the start of the
/// text section, used by the Go 1.16/1.17 layout only for sanity. Returns the functions found
/// (each name at most once) and the table's magic.
pub fn pclntab_lookup(tab: &[u8], names: &[&str]) -> Option<(u32, Vec<PcFunc>)> {
    if tab.len() < 16 {
        return None;
    }
    let magic = u32::from_le_bytes([tab[0], tab[1], tab[2], tab[3]]);
    if tab[4] != 0 || tab[5] != 0 {
        return None;
    }
    let ptr = tab[7] as usize;
    if ptr != 8 && ptr != 4 {
        return None;
    }
    let word = |i: usize| -> Option<u64> {
        let off = 8usize.checked_add(i.checked_mul(ptr)?)?;
        let b = tab.get(off..off.checked_add(ptr)?)?;
        Some(if ptr == 8 {
            read_u64(b, false)
        } else {
            u64::from(read_u32(b, false))
        })
    };
    let to_usize = |v: u64| usize::try_from(v).ok();
    let nfunc = to_usize(word(0)?)?;
    // Header words after nfunc, nfiles.
    let (text_start, funcname_off, pcln_off, new_layout) = match magic {
        0xffff_fff0 | 0xffff_fff1 => (word(2)?, to_usize(word(3)?)?, to_usize(word(7)?)?, true),
        0xffff_fffa => (0, to_usize(word(2)?)?, to_usize(word(6)?)?, false),
        _ => return None,
    };
    let funcnames = tab.get(funcname_off..)?;
    let functab = tab.get(pcln_off..)?;
    // functab entries: (entry, funcoff) as u32 pairs (1.18+) or ptr-size pairs (1.16).
    let esize = if new_layout { 8 } else { 2 * ptr };
    if nfunc.checked_add(1)?.checked_mul(esize)? > functab.len() {
        return None;
    }
    let entry_at = |i: usize| -> Option<(u64, usize)> {
        let b = functab.get(i * esize..(i + 1) * esize)?;
        if new_layout {
            Some((
                text_start.checked_add(u64::from(read_u32(&b[..4], false)))?,
                read_u32(&b[4..8], false) as usize,
            ))
        } else if ptr == 8 {
            Some((
                read_u64(&b[..8], false),
                to_usize(read_u64(&b[8..16], false))?,
            ))
        } else {
            Some((
                u64::from(read_u32(&b[..4], false)),
                read_u32(&b[4..8], false) as usize,
            ))
        }
    };
    let mut found: Vec<PcFunc> = Vec::new();
    for i in 0..nfunc {
        let (entry, funcoff) = entry_at(i)?;
        // _func: entry (u32 offset in 1.18+, uintptr in 1.16), then nameOff int32.
        let name_field = funcoff.checked_add(if new_layout { 4 } else { ptr })?;
        let Some(nb) = functab.get(name_field..name_field + 4) else {
            continue;
        };
        let name_off = read_u32(nb, false) as usize;
        let Some(name_bytes) = funcnames.get(name_off..) else {
            continue;
        };
        let end = name_bytes
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(name_bytes.len());
        let name = &name_bytes[..end];
        if let Some(want) = names.iter().find(|n| n.as_bytes() == name)
            && !found.iter().any(|f| f.name == *want)
        {
            let next = entry_at(i + 1).map(|(e, _)| e).unwrap_or(entry);
            found.push(PcFunc {
                name: (*want).to_string(),
                entry,
                end: next.max(entry),
            });
            if found.len() == names.len() {
                break;
            }
        }
    }
    Some((magic, found))
}

/// Addresses of the RET instructions in `code`, which starts at virtual address `ip`.
pub fn find_rets(code: &[u8], ip: u64) -> Vec<u64> {
    use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic};
    let mut out = Vec::new();
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    while d.can_decode() {
        d.decode_out(&mut ins);
        if ins.is_invalid() {
            continue;
        }
        if ins.mnemonic() == Mnemonic::Ret {
            out.push(ins.ip());
            if out.len() >= MAX_RETS {
                break;
            }
        }
    }
    out
}

/// Finds the Go TLS functions of an ELF file, if it is a Go executable for amd64 with the
/// register ABI.
pub fn go_functions(path: &Path) -> std::io::Result<Result<GoBinary, GoSkip>> {
    let file = std::fs::File::open(path)?;
    // SAFETY: read-only private mapping of a file mapped executable by a live process.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    Ok(go_functions_in(&map))
}

/// [`go_functions`] on the bytes of a file.
pub fn go_functions_in(data: &[u8]) -> Result<GoBinary, GoSkip> {
    let Ok(obj) = object::File::parse(data) else {
        return Err(GoSkip::NotGo);
    };
    let buildinfo = obj
        .section_by_name(".go.buildinfo")
        .and_then(|s| s.data().ok())
        .filter(|d| d.starts_with(BUILDINFO_MAGIC))
        .or_else(|| {
            // Section headers gone: look for the magic itself.
            if obj.sections().count() > 1 {
                return None;
            }
            memfind(data, BUILDINFO_MAGIC).map(|i| &data[i..])
        });
    let Some(buildinfo) = buildinfo else {
        return Err(GoSkip::NotGo);
    };
    if obj.architecture() != object::Architecture::X86_64 {
        return Err(GoSkip::Arch);
    }
    let read_ptr_str = |addr: u64, ptr: u8, be: bool| -> Option<String> {
        let hdr = read_at(&obj, addr, 2 * ptr as u64)?;
        let (p, n) = if ptr == 8 {
            (read_u64(&hdr[..8], be), read_u64(&hdr[8..16], be))
        } else {
            (
                u64::from(read_u32(&hdr[..4], be)),
                u64::from(read_u32(&hdr[4..8], be)),
            )
        };
        if n > 256 {
            return None;
        }
        let s = read_at(&obj, p, n)?;
        Some(String::from_utf8_lossy(s).into_owned())
    };
    let version = buildinfo_version(buildinfo, &read_ptr_str);

    let names = [GO_WRITE, GO_READ];
    let mut funcs: Vec<PcFunc> = Vec::new();
    let mut symbols = "symtab";
    for s in obj.symbols() {
        let Ok(n) = s.name() else { continue };
        if let Some(want) = names.iter().find(|w| **w == n)
            && s.is_definition()
            && !funcs.iter().any(|f| f.name == *want)
        {
            funcs.push(PcFunc {
                name: (*want).to_string(),
                entry: s.address(),
                end: s.address() + s.size(),
            });
        }
    }
    let mut magic = None;
    if funcs.len() < names.len() {
        symbols = "pclntab";
        funcs.clear();
        let tab = obj
            .section_by_name(".gopclntab")
            .and_then(|s| s.data().ok())
            .ok_or(GoSkip::NoTls)?;
        let (m, f) = pclntab_lookup(tab, &names).ok_or(GoSkip::NoTls)?;
        magic = Some(m);
        funcs = f;
    }
    // The register ABI: Go 1.17+ on amd64. Without a readable version, the 1.18+ pclntab
    // layouts imply it; the 1.16/1.17 layout alone does not.
    let register_abi = match version.as_deref().and_then(go_minor) {
        Some((major, minor)) => major > 1 || minor >= 17,
        None => matches!(magic, Some(0xffff_fff0 | 0xffff_fff1)) || magic.is_none(),
    };
    if !register_abi {
        return Err(GoSkip::StackAbi(version.unwrap_or_default()));
    }
    let (Some(write), Some(read)) = (
        funcs.iter().find(|f| f.name == GO_WRITE),
        funcs.iter().find(|f| f.name == GO_READ),
    ) else {
        return Err(GoSkip::NoTls);
    };
    let Some(text) = section_of(&obj, read.entry) else {
        return Err(GoSkip::NoTls);
    };
    let len = read.end.saturating_sub(read.entry).min(MAX_FUNC_LEN);
    let code = read_at(&obj, read.entry, len).ok_or(GoSkip::NoTls)?;
    let rets = find_rets(code, read.entry);
    if rets.is_empty() {
        return Err(GoSkip::NoTls);
    }
    let func = |name: &'static str, address: u64| Function {
        name,
        address,
        section_address: text.0,
        section_offset: text.1,
        worker: false,
    };
    // Entry probes past the stack-bound check: an instruction up to its branch runs again
    // when the stack grows (see probe_site::go_entry_site). Without a recognised check the
    // entry itself runs once per call.
    let entry = |f: &PcFunc, keep: &[Register]| {
        let len = f.end.saturating_sub(f.entry).min(MAX_FUNC_LEN);
        read_at(&obj, f.entry, len)
            .and_then(|c| go_entry_site(c, f.entry, keep))
            .map_or(f.entry, |e| e.site)
    };
    // Write reads rax, rbx, rcx (conn, buffer, length); Read rax, rbx and r14 (g).
    let write_site = entry(write, &[Register::RAX, Register::RBX, Register::RCX]);
    let read_site = entry(read, &[Register::RAX, Register::RBX, Register::R14]);
    let mut functions = vec![func(GO_WRITE, write_site), func(GO_READ, read_site)];
    functions.extend(rets.into_iter().map(|a| func(GO_READ_RET, a)));
    Ok(GoBinary {
        version,
        symbols,
        functions,
    })
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// (virtual address, file offset) of the section holding `addr`.
fn section_of(obj: &object::File<'_>, addr: u64) -> Option<(u64, u64)> {
    obj.sections().find_map(|s| {
        let (off, size) = s.file_range()?;
        (addr >= s.address() && addr < s.address() + size).then_some((s.address(), off))
    })
}

/// `len` bytes at virtual address `addr`, from whichever section holds them.
fn read_at<'d>(obj: &object::File<'d>, addr: u64, len: u64) -> Option<&'d [u8]> {
    for s in obj.sections() {
        let Some((_, size)) = s.file_range() else {
            continue;
        };
        if addr >= s.address() && addr.checked_add(len)? <= s.address() + size {
            let data = s.data().ok()?;
            let start = usize::try_from(addr - s.address()).ok()?;
            return data.get(start..start + usize::try_from(len).ok()?);
        }
    }
    None
}

/// The TLS functions of a file: OpenSSL's if it exports them, else Go's.
pub fn tls_functions(path: &Path) -> std::io::Result<Vec<Function>> {
    let found = crate::discovery::openssl_functions(path)?;
    if !found.is_empty() {
        return Ok(found);
    }
    match go_functions(path)? {
        Ok(go) => {
            tracing::info!(
                file = %path.display(),
                version = go.version.as_deref().unwrap_or("?"),
                symbols = go.symbols,
                rets = go.functions.iter().filter(|f| f.name == GO_READ_RET).count(),
                "Go crypto/tls found"
            );
            Ok(go.functions)
        }
        Err(GoSkip::StackAbi(v)) => {
            tracing::warn!(file = %path.display(), version = %v, "Go before 1.17 (stack ABI): not probed");
            Ok(Vec::new())
        }
        Err(_) => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rets_only() {
        // mov rax,1; ret; nop; ret 8; c3 inside an immediate (mov eax,0xc3c3c3c3); ret
        let code = [
            0x48, 0xc7, 0xc0, 0x01, 0x00, 0x00, 0x00, // mov rax, 1
            0xc3, // ret
            0x90, // nop
            0xc2, 0x08, 0x00, // ret 8
            0xb8, 0xc3, 0xc3, 0xc3, 0xc3, // mov eax, 0xc3c3c3c3
            0xc3, // ret
        ];
        assert_eq!(find_rets(&code, 0x1000), vec![0x1007, 0x1009, 0x1011]);
        assert!(find_rets(&[], 0).is_empty());
        // Garbage decodes without panicking.
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let _ = find_rets(&junk, 0x400000);
    }

    /// Builds a Go 1.20-layout pclntab with the given functions.
    fn synthetic_pclntab(magic: u32, funcs: &[(&str, u32)], text_start: u64) -> Vec<u8> {
        let ptr = 8usize;
        let header_words = 8;
        let header_len = 8 + header_words * ptr;
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (n, _) in funcs {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        let funcname_off = header_len;
        let pcln_off = funcname_off + names.len();
        let nfunc = funcs.len();
        let functab_len = (nfunc + 1) * 8;
        let mut tab = Vec::new();
        tab.extend_from_slice(&magic.to_le_bytes());
        tab.extend_from_slice(&[0, 0, 1, ptr as u8]);
        for w in [
            nfunc as u64,
            0,
            text_start,
            funcname_off as u64,
            0,
            0,
            0,
            pcln_off as u64,
        ] {
            tab.extend_from_slice(&w.to_le_bytes());
        }
        tab.extend_from_slice(&names);
        let mut func_structs = Vec::new();
        let mut functab = Vec::new();
        for (i, (_, entry)) in funcs.iter().enumerate() {
            let funcoff = functab_len + func_structs.len();
            functab.extend_from_slice(&entry.to_le_bytes());
            functab.extend_from_slice(&(funcoff as u32).to_le_bytes());
            func_structs.extend_from_slice(&entry.to_le_bytes());
            func_structs.extend_from_slice(&name_offs[i].to_le_bytes());
        }
        let last = funcs.last().map(|f| f.1 + 0x100).unwrap_or(0);
        functab.extend_from_slice(&last.to_le_bytes());
        functab.extend_from_slice(&0u32.to_le_bytes());
        tab.extend_from_slice(&functab);
        tab.extend_from_slice(&func_structs);
        tab
    }

    #[test]
    fn parses_synthetic_pclntab() {
        let tab = synthetic_pclntab(
            0xffff_fff1,
            &[("main.main", 0x0), (GO_READ, 0x40), (GO_WRITE, 0x90)],
            0x401000,
        );
        let (magic, f) = pclntab_lookup(&tab, &[GO_WRITE, GO_READ]).expect("parse");
        assert_eq!(magic, 0xffff_fff1);
        let read = f.iter().find(|f| f.name == GO_READ).expect("read");
        assert_eq!((read.entry, read.end), (0x401040, 0x401090));
        let write = f.iter().find(|f| f.name == GO_WRITE).expect("write");
        assert_eq!((write.entry, write.end), (0x401090, 0x401190));
        // Truncations and corruptions never panic.
        for cut in 0..tab.len() {
            let _ = pclntab_lookup(&tab[..cut], &[GO_WRITE, GO_READ]);
        }
        let mut bad = tab.clone();
        for i in 8..bad.len() {
            bad[i] ^= 0xa5;
            let _ = pclntab_lookup(&bad, &[GO_WRITE, GO_READ]);
        }
        assert!(
            pclntab_lookup(b"\x01\x02\x03\x04\0\0\x01\x08aaaaaaaaaaaaaaaa", &[GO_READ]).is_none()
        );
    }

    #[test]
    fn parses_versions() {
        assert_eq!(go_minor("go1.19.8"), Some((1, 19)));
        assert_eq!(go_minor("go1.16"), Some((1, 16)));
        assert_eq!(go_minor("devel go1.23-abcdef"), Some((1, 23)));
        assert_eq!(go_minor("garbage"), None);
        let mut bi = BUILDINFO_MAGIC.to_vec();
        bi.extend_from_slice(&[8, 2]);
        bi.resize(32, 0);
        bi.push(8);
        bi.extend_from_slice(b"go1.21.3");
        assert_eq!(
            buildinfo_version(&bi, &|_, _, _| None).as_deref(),
            Some("go1.21.3")
        );
        assert_eq!(buildinfo_version(&bi[..34], &|_, _, _| None), None);
    }

    #[test]
    fn non_go_files_are_skipped() {
        let libs = crate::discovery::system_libssl_candidates();
        if let Some(p) = libs.first() {
            assert!(matches!(go_functions(p).expect("open"), Err(GoSkip::NotGo)));
        }
        assert!(matches!(go_functions_in(b"not an elf"), Err(GoSkip::NotGo)));
    }

    /// With a Go toolchain on the machine: builds a small TLS client normally and stripped;
    /// the pclntab of the stripped build must give the same functions as the symbol table of
    /// the normal one, and Read must have RETs.
    #[test]
    fn real_go_binary_symtab_and_pclntab_agree() {
        let Ok(out) = std::process::Command::new("go").arg("version").output() else {
            eprintln!("no Go toolchain: skipped");
            return;
        };
        assert!(out.status.success());
        let dir = std::env::temp_dir().join(format!("hoop-go-disc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("main.go"),
            "package main\nimport (\"crypto/tls\"; \"os\")\nfunc main() {\n c, err := tls.Dial(\"tcp\", os.Args[1], nil)\n if err == nil { c.Write([]byte(\"x\")); b := make([]byte, 8); c.Read(b) }\n}\n",
        )
        .expect("write");
        let build = |out: &str, strip: bool| {
            let mut c = std::process::Command::new("go");
            c.current_dir(&dir)
                .env("GO111MODULE", "off")
                .env("GOPROXY", "off")
                .env("GOCACHE", dir.join("cache"))
                .args(["build", "-o", out]);
            if strip {
                c.args(["-ldflags=-s -w"]);
            }
            c.arg("main.go");
            let s = c.status().expect("go build");
            assert!(s.success());
            dir.join(out)
        };
        let full = go_functions(&build("full", false))
            .expect("open")
            .expect("go tls");
        let stripped = go_functions(&build("stripped", true))
            .expect("open")
            .expect("go tls");
        assert_eq!(full.symbols, "symtab");
        assert_eq!(stripped.symbols, "pclntab");
        assert!(
            full.version
                .as_deref()
                .is_some_and(|v| v.starts_with("go1."))
        );
        assert_eq!(full.version, stripped.version);
        let key = |b: &GoBinary| {
            b.functions
                .iter()
                .map(|f| (f.name, f.address))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&full), key(&stripped));
        assert!(
            full.functions
                .iter()
                .filter(|f| f.name == GO_READ_RET)
                .count()
                >= 1
        );
        entry_probes_run_once_per_call(&std::fs::read(dir.join("full")).expect("read"), &full);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Write and Read of a real binary: the entry probe lies past the stack check's branch to
    /// morestack (which restarts the function from its entry), on an instruction the kernel
    /// emulates, with the argument registers untouched on the way.
    fn entry_probes_run_once_per_call(data: &[u8], found: &GoBinary) {
        use iced_x86::{
            Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpAccess,
        };
        let obj = object::File::parse(data).expect("elf");
        for (name, keep) in [
            (GO_WRITE, [Register::RAX, Register::RBX, Register::RCX]),
            (GO_READ, [Register::RAX, Register::RBX, Register::R14]),
        ] {
            let sym = obj
                .symbols()
                .find(|s| s.name() == Ok(name))
                .expect("symbol");
            let (entry, size) = (sym.address(), sym.size());
            let site = found
                .functions
                .iter()
                .find(|f| f.name == name)
                .expect("probed")
                .address;
            let code = read_at(&obj, entry, size).expect("code");
            let mut d = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
            let insns: Vec<_> = std::iter::from_fn(|| d.can_decode().then(|| d.decode())).collect();
            let check = insns
                .iter()
                .position(|i| i.is_jcc_short_or_near())
                .expect("stack check");
            assert!(
                site > insns[check].ip(),
                "{name}: probe at {site:#x} before the check"
            );
            // The check's branch goes to code that jumps back to the entry.
            let stub = insns[check].near_branch_target();
            assert!(
                insns
                    .iter()
                    .skip_while(|i| i.ip() != stub)
                    .any(|i| i.mnemonic() == Mnemonic::Jmp && i.near_branch_target() == entry),
                "{name}: morestack stub"
            );
            let at = insns.iter().position(|i| i.ip() == site).expect("site");
            let s = &insns[at];
            assert!(
                matches!(s.mnemonic(), Mnemonic::Nop | Mnemonic::Push | Mnemonic::Jmp)
                    || s.is_jcc_short_or_near(),
                "{name}: {:?} is single-stepped",
                s.mnemonic()
            );
            let mut info = InstructionInfoFactory::new();
            for i in &insns[check + 1..at] {
                assert_eq!(i.flow_control(), FlowControl::Next, "{name}: {:#x}", i.ip());
                let clobbers = info.info(i).used_registers().iter().any(|u| {
                    keep.contains(&u.register().full_register()) && u.access() != OpAccess::Read
                });
                assert!(!clobbers, "{name}: {:#x} writes an argument", i.ip());
                assert!(
                    !insns.iter().any(|b| b.flow_control() != FlowControl::Call
                        && b.near_branch_target() == i.ip()),
                    "{name}: {:#x} is a branch target",
                    i.ip()
                );
            }
            eprintln!(
                "{name}: entry {entry:#x}, probe at {site:#x} ({:?})",
                s.mnemonic()
            );
        }
    }
}
