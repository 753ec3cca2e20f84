//! In-kernel policy enforcement (issue 6).
//!
//! The `SSL_write*` entry probes call [`on_write`] while the plaintext is still in the caller's
//! buffer. When a rule could apply to the caller (global rules, or its cgroup / tgid is in
//! scope), the head of the write is copied to a per-CPU scratch buffer and classified with
//! bounded `bpf_loop` scans:
//! - request line: method, path depth, first segment (S3 bucket), last segment, first query key;
//! - `X-Amz-Target:` (json), `Authorization: AWS4-HMAC-SHA256 Credential=AKID/date/region/SVC/`;
//! - query-protocol bodies (`Action=`) and the JSON `"TableName"` may come in a later write:
//!   the head leaves a [`PendingReq`] keyed by the `SSL *`, the body write decides.
//!
//! The resulting action keys (see `hoop_common::enf::key_*`) are looked up in `ENF_ACTIONS`
//! (most specific first), candidate rules are checked in policy order against the workload
//! (cgroup / tgid membership maps), the access key, the uid and the resource name. A deny
//! marks the thread in `ENF_VERDICT`; the `sk_msg` program drops that thread's sends until the
//! write returns. Every decision is a [`DecisionEvent`] in `ENF_EVENTS`.
//!
//! Endpoint rules: `cgroup/connect4` and `cgroup/connect6` look the destination up in an LPM
//! trie keyed by (cgroup id or 0, v6 / v4-mapped address).

use crate::{CallArgs, emit};
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_RB_NO_WAKEUP, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock_ops},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns,
        generated::{bpf_get_socket_cookie, bpf_loop, bpf_probe_read_user, bpf_send_signal},
    },
    macros::{cgroup_sock_addr, map, sk_msg, sock_ops},
    maps::{
        Array, HashMap, LruHashMap, PerCpuArray, RingBuf, SockHash,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProbeContext, SkMsgContext, SockAddrContext, SockOpsContext},
};
use hoop_common::DIR_WRITE;
use hoop_common::{
    Cands, DecisionEvent, EndpointKey, EndpointRef, EndpointVal, EnforceConfig, GrantKey,
    PendingReq, RuleDef, RuleMask,
    enf::{self, FNV_OFFSET, SCAN_BYTES, fnv_byte},
};

#[map]
static ENF_CONFIG: Array<EnforceConfig> = Array::with_max_entries(1, 0);
#[map]
static ENF_ACTIONS: HashMap<u64, Cands> = HashMap::with_max_entries(65536, 0);
#[map]
static ENF_RULES: Array<RuleDef> = Array::with_max_entries(enf::MAX_RULES, 0);
/// cgroup id -> the workload-scoped rules whose selectors include it.
#[map]
static ENF_SCOPE_CG: HashMap<u64, RuleMask> = HashMap::with_max_entries(65536, 0);
/// tgid -> the workload-scoped rules whose selectors include it (exe selectors; uid is in
/// `RuleDef`).
#[map]
static ENF_SCOPE_PID: HashMap<u32, RuleMask> = HashMap::with_max_entries(65536, 0);
/// access key hash -> the rules that list it (directly or through a principal).
#[map]
static ENF_AKIDS: HashMap<u64, RuleMask> = HashMap::with_max_entries(16384, 0);
#[map]
static ENF_GRANTS: HashMap<GrantKey, u64> = HashMap::with_max_entries(4096, 0);
#[map]
static ENF_PENDING: LruHashMap<u64, PendingReq> = LruHashMap::with_max_entries(16384, 0);
/// pid_tgid -> a denied write's send is to be dropped: the boot-time deadline by which the
/// thread sends it (inside the SSL_write, or after it returns for a memory BIO, as in Node).
/// The first send dropped consumes the entry; one left by a killed thread expires, so a reused
/// thread id is not affected (the agent sweeps expired entries).
#[map]
static ENF_VERDICT: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);
#[map]
static ENF_SOCKS: SockHash<u64> = SockHash::with_max_entries(65536, 0);
#[map]
static ENF_EVENTS: RingBuf = RingBuf::with_byte_size(512 * 1024, 0);
#[map]
static ENF_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(enf::STAT_COUNT, 0);
#[map]
static ENF_ENDPOINTS: LpmTrie<EndpointKey, EndpointVal> = LpmTrie::with_max_entries(4096, 0);

const BUF_LEN: usize = SCAN_BYTES + 128;
const MASK: u64 = (SCAN_BYTES - 1) as u64;

#[repr(C)]
struct Scratch {
    buf: [u8; BUF_LEN],
    /// pfx[k] = FNV-1a of the first k bytes of the resource name (k < 128).
    pfx: [u64; 128],
    /// Positions found by the scans. Kept in the map, not in the loop context: values read
    /// back from a map are opaque to the verifier, so the loop states converge.
    target: u64,
    auth: u64,
    /// 1 when `auth` / `found` point at a SigV2 access key (`AWS AKID:sig`, `AWSAccessKeyId=`).
    v2: u64,
    host: u64,
    body: u64,
    /// Start of the second line (the request line ends just before it).
    line1: u64,
    /// Next word the header scan reads.
    lpos: u64,
    found: u64,
    /// Decision state for the candidate loop (see `cand_cb`).
    req: Req,
    who: Caller,
    cands: Cands,
    hit: u64,
    /// Rules whose workload includes the caller / whose keys include the signing key.
    wl: RuleMask,
    ak: RuleMask,
    /// 1 when `wl` / `ak` hold a mask for this request (else no rule's bit is set).
    wl_set: u64,
    ak_set: u64,
    /// Request-line scan state: in the map, so every loop iteration looks alike to the
    /// verifier (its phases and flags would multiply the states it explores).
    ps: PathScan,
    /// Method code and request-line offset of the path, read back from the map: as constants
    /// they would have the verifier walk the whole classifier once per method.
    method: u64,
    path_at: u64,
    /// See [`opaque`].
    tmp: u64,
    /// 1 when the write was a head whose body comes in a later write (`ENF_PENDING`).
    deferred: u64,
    /// 1 when the write was the body of such a head, whose time is `head_ns`.
    split: u64,
    head_ns: u64,
}

#[map]
static ENF_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const SIGKILL: u32 = 9;
const SIGSTOP: u32 = 19;

#[inline(always)]
fn stat(index: u32, n: u64) {
    if let Some(c) = ENF_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot.
        unsafe { *c += n };
    }
}

/// A zero the verifier cannot see as a constant (user space always writes 0 there): loop
/// contexts that start from it converge instead of being re-verified per value.
#[inline(always)]
fn opaque_zero() -> u64 {
    match ENF_CONFIG.get_ptr(0) {
        // SAFETY: `zero` and `_pad` are adjacent u32s at an 8-aligned offset of the value;
        // reading them as one u64 gives the verifier a value with no known bits.
        Some(c) => unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!((*c).zero) as *const u64)
        },
        None => 0,
    }
}

/// `v` as a value the verifier knows nothing about (written to the map and read back). Scan
/// results pass through it: a loop's context leaves it in one of several states (a field
/// count, a found / not-found flag), and each would have the verifier walk everything after
/// the loop again; the code checks the values it needs anyway.
#[inline(always)]
fn opaque(v: u64) -> u64 {
    match ENF_SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU scratch; volatile so the compiler keeps the round trip.
        Some(s) => unsafe {
            let t = core::ptr::addr_of_mut!((*s).tmp);
            core::ptr::write_volatile(t, v);
            core::ptr::read_volatile(t)
        },
        None => v,
    }
}

/// Copies `T` as 8-byte words. LLVM turns plain struct copies and runs of zero stores into
/// calls to a byte-at-a-time memcpy / memset subprogram (hundreds of instructions for a
/// 128-byte mask); volatile word accesses stay 8-byte moves. `T` is 8-aligned, its size a
/// multiple of 8.
#[inline(always)]
fn copy_words<T>(dst: &mut T, src: &T) {
    let (d, s) = (dst as *mut T as *mut u64, src as *const T as *const u64);
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: both point at a whole, 8-aligned T.
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// Zeroes a u64 field without letting LLVM merge it with its neighbours into a memset call
/// (see [`copy_words`]).
#[inline(always)]
fn clear(f: &mut u64) {
    // SAFETY: a plain store through a valid reference.
    unsafe { core::ptr::write_volatile(f, 0) };
}

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU scratch, exclusively ours while the program runs.
    ENF_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn byte(s: &Scratch, p: u64) -> u8 {
    // SAFETY: every caller passes p < BUF_LEN (masked positions plus small constants).
    unsafe { *s.buf.as_ptr().add(p as usize) }
}

/// Case-insensitive compare of `pat` (lower case, every byte with bit 0x20 set) at `p`, 8 bytes
/// at a time: a fraction of the code of a byte-wise compare, and code size is what a scan costs
/// when the caches are cold (the patterns fold to constants).
#[inline(always)]
fn eq_ci(s: &Scratch, p: u64, pat: &[u8]) -> bool {
    let mut k = 0;
    while k < pat.len() {
        let (mut want, mut mask) = (0u64, 0u64);
        let mut j = 0;
        while j < 8 && k + j < pat.len() {
            want |= (pat[k + j] as u64) << (8 * j);
            mask |= 0xff << (8 * j);
            j += 1;
        }
        // SAFETY: every caller passes p + pattern length + 7 < BUF_LEN. The load may be
        // unaligned: the BPF ISA and x86 allow it (it is one `ldxdw` either way).
        let w =
            unsafe { core::ptr::read(s.buf.as_ptr().add((p + k as u64) as usize) as *const u64) };
        if (w | 0x2020_2020_2020_2020) & mask != want {
            return false;
        }
        k += 8;
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Header scan: one callback per 8-byte word, line starts checked only where a '\n' is.
// ---------------------------------------------------------------------------------------------

#[repr(C)]
struct LineScan {
    len: u64,
}

const AUTH_PAT: &[u8] = b"authorization: aws4-hmac-sha256 credential=";
const AUTH4A_PAT: &[u8] = b"authorization: aws4-ecdsa-p256-sha256 credential=";
/// SigV2 (S3's legacy signature): `Authorization: AWS AKID:signature`.
const AUTH2_PAT: &[u8] = b"authorization: aws ";
const TARGET_PAT: &[u8] = b"x-amz-target:";
const HOST_PAT: &[u8] = b"host:";

/// Not inlined: the header scan calls it from each of a word's 8 byte positions, and one copy
/// of its pattern compares keeps the cold-cache cost of a scan down.
#[inline(never)]
fn check_line(s: &mut Scratch, c: &LineScan, p: u64) {
    if p >= c.len {
        return;
    }
    if s.line1 == 0 {
        s.line1 = p;
    }
    let b = byte(s, p);
    if b == b'\r' {
        if s.body == 0 {
            s.body = p + 2;
        }
    } else if b | 0x20 == b'x' {
        if s.target == 0 && eq_ci(s, p, TARGET_PAT) {
            s.target = p + TARGET_PAT.len() as u64;
        }
    } else if b | 0x20 == b'h' {
        if s.host == 0 && eq_ci(s, p, HOST_PAT) {
            s.host = p + HOST_PAT.len() as u64;
        }
    } else if b | 0x20 == b'a' && s.auth == 0 {
        if eq_ci(s, p, AUTH_PAT) {
            s.auth = p + AUTH_PAT.len() as u64;
        } else if eq_ci(s, p, AUTH4A_PAT) {
            s.auth = p + AUTH4A_PAT.len() as u64;
        } else if eq_ci(s, p, AUTH2_PAT) {
            s.auth = p + AUTH2_PAT.len() as u64;
            s.v2 = 1;
        }
    }
}

/// Skips up to 8 words without a '\n' (most of a head), then checks the line starts of the
/// first word with one and stops there: one callback per header line, not per word. The next
/// word to read is `lpos`, in the map (opaque to the verifier, so the loop states converge).
extern "C" fn line_cb(_i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop passes back the context pointer we gave it.
    let c = unsafe { &*(ctx as *const LineScan) };
    let Some(s) = scratch() else { return 1 };
    const WORDS: u64 = MASK & !7;
    let mut off = s.lpos & WORDS;
    let mut k = 0;
    let mut w = 0u64;
    while k < 8 {
        if off >= c.len {
            return 1;
        }
        // SAFETY: off is 8-aligned and < SCAN_BYTES; the buffer is 8-aligned in the map value.
        w = unsafe { core::ptr::read(s.buf.as_ptr().add(off as usize) as *const u64) };
        let x = w ^ 0x0a0a_0a0a_0a0a_0a0a;
        if (x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080) != 0 {
            break;
        }
        if off >= WORDS {
            return 1;
        }
        off = (off + 8) & WORDS;
        k += 1;
    }
    if k == 8 {
        s.lpos = off;
        return 0;
    }
    // `w` at `off` holds a '\n' (one copy of this loop: the scan's code stays small).
    let mut j = 0u64;
    while j < 8 {
        if (w >> (j * 8)) as u8 == b'\n' {
            check_line(s, c, off + j + 1);
        }
        j += 1;
    }
    s.lpos = off + 8;
    if s.body != 0 { 1 } else { 0 }
}

// ---------------------------------------------------------------------------------------------
// Credential scope: AKID/date/region/service/
// ---------------------------------------------------------------------------------------------

/// `AKID/date/region/service/aws4_request` (SigV4) or `AKID/date/service/aws4_request`
/// (SigV4a), from a header (`/`) or a presigned URL's query (`%2F`).
#[repr(C)]
struct CredScan {
    base: u64,
    len: u64,
    /// Fields ended so far; 5 once the scope ended before a fourth separator.
    field: u64,
    /// Bytes of a `%2F` still to skip.
    skip: u64,
    akid: u64,
    /// Hashes of fields 2 and 3: the service is field 3 (SigV4) or field 2 (SigV4a).
    f2: u64,
    f3: u64,
}

/// Scans bytes 4i..4i+3 (fewer callbacks: each costs more than a byte's work).
extern "C" fn cred_cb(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: see line_cb.
    let c = unsafe { &mut *(ctx as *mut CredScan) };
    let Some(s) = scratch() else { return 1 };
    let mut k = 0;
    while k < 4 {
        if cred_byte(c, s, ((i & 31) << 2) + k) != 0 {
            return 1;
        }
        k += 1;
    }
    0
}

#[inline(always)]
fn cred_byte(c: &mut CredScan, s: &Scratch, i: u64) -> i64 {
    // Saturated: the verifier must see finitely many values of `field` and `skip`.
    if c.field >= 4 {
        return 1;
    }
    if c.skip != 0 {
        c.skip = if c.skip >= 2 { 1 } else { 0 };
        return 0;
    }
    let p = (c.base & MASK) + (i & 127);
    if p >= c.len {
        c.field = 5;
        return 1;
    }
    let b = byte(s, p);
    if b == b'/' || b == b'%' {
        if b == b'%' {
            c.skip = 2;
        }
        c.field += 1;
        return if c.field >= 4 { 1 } else { 0 };
    }
    // ':' ends a SigV2 access key; '&' a query parameter.
    if b == b',' || b == b' ' || b == b'\r' || b == b'&' || b == b':' {
        c.field += 5;
        return 1;
    }
    if c.field == 0 {
        c.akid = fnv_byte(c.akid, b);
    } else if c.field == 2 {
        c.f2 = fnv_byte(c.f2, b);
    } else if c.field == 3 {
        c.f3 = fnv_byte(c.f3, b);
    }
    0
}

/// (access key hash, signing service hash) of the credential scope at `base`, or (0, 0).
/// `v2`: a SigV2 access key (S3 only: SigV2 has no scope).
#[inline(always)]
fn credential(base: u64, len: u64, v2: u64) -> (u64, u64) {
    let Some(s) = scratch() else { return (0, 0) };
    let b = base & MASK;
    // Every AWS key id is 20 bytes: hashed from three word loads (`enf::akid_hash`). In the
    // header form the date that follows is 8 bytes too: the byte scan starts at the region.
    // SAFETY: b + 24 < BUF_LEN; unaligned word loads are one `ldxdw` (see `eq_ci`).
    let w = |o: u64| unsafe { core::ptr::read(s.buf.as_ptr().add((b + o) as usize) as *const u64) };
    let (w0, w1, w2) = (w(0), w(8), (w(16) & 0xffff_ffff) | 0x4141_4141_0000_0000);
    // A 20-byte id: no separator (every one is below '0', or ':') among its bytes, one after.
    let id_byte = |x: u64| {
        const ONES: u64 = 0x0101_0101_0101_0101;
        let below_0 = x.wrapping_sub(ONES * 0x30) & !x & (ONES * 0x80);
        let colon = (x ^ (ONES * 0x3a)).wrapping_sub(ONES) & !(x ^ (ONES * 0x3a)) & (ONES * 0x80);
        below_0 | colon == 0
    };
    let akid_end = byte(s, b + enf::AKID_LEN as u64);
    // The separators `cred_byte` ends the id at.
    let ends_id = matches!(akid_end, b'/' | b'%' | b'&' | b':' | b',' | b' ' | b'\r');
    let short = ends_id && id_byte(w0) && id_byte(w1) && id_byte(w2) && b + 30 < len;
    let words = if short {
        enf::akid_words(w0, w1, w2 & 0xffff_ffff)
    } else {
        0
    };
    let skip_date = short && akid_end == b'/' && byte(s, b + 29) == b'/' && v2 == 0;
    let mut c = CredScan {
        base: if skip_date { b + 30 } else { b },
        len,
        field: if skip_date { 2 } else { 0 },
        skip: 0,
        akid: FNV_OFFSET,
        f2: FNV_OFFSET,
        f3: FNV_OFFSET,
    };
    // SAFETY: bounded helper loop over a stack context.
    unsafe { bpf_loop(32, cred_cb as *mut _, (&mut c as *mut CredScan).cast(), 0) };
    if short {
        c.akid = words;
    }
    let (akid, svc) = if v2 != 0 {
        if c.field == 5 {
            (c.akid, enf::fnv(b"s3"))
        } else {
            (0, 0)
        }
    } else if c.field == 4 {
        (c.akid, c.f3)
    } else if c.field == 8 && c.f3 == enf::fnv(b"aws4_request") {
        // SigV4a: the scope ended after its third separator.
        (c.akid, c.f2)
    } else {
        (0, 0)
    };
    (opaque(akid), opaque(svc))
}

// ---------------------------------------------------------------------------------------------
// Value hashing (target, Action value, TableName value), optionally recording prefixes.
// ---------------------------------------------------------------------------------------------

#[repr(C)]
struct HashScan {
    base: u64,
    len: u64,
    h: u64,
    /// Bytes hashed (set from the loop index, never counted: the verifier must converge).
    n: u64,
    /// Terminator byte.
    term: u64,
    /// 1: record prefix hashes in `pfx`.
    pfx: u64,
}

/// Hashes bytes 4i..4i+3 (see `cred_cb`).
extern "C" fn hash_cb(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: see line_cb.
    let c = unsafe { &mut *(ctx as *mut HashScan) };
    let Some(s) = scratch() else { return 1 };
    let mut k = 0;
    while k < 4 {
        if hash_byte(c, s, ((i & 31) << 2) + k) != 0 {
            return 1;
        }
        k += 1;
    }
    0
}

#[inline(always)]
fn hash_byte(c: &mut HashScan, s: &mut Scratch, i: u64) -> i64 {
    let i = i & 127;
    let p = (c.base & MASK) + i;
    if p >= c.len {
        return 1;
    }
    let b = byte(s, p);
    if b as u64 == c.term || b == b'\r' || b == b'\n' {
        return 1;
    }
    c.h = fnv_byte(c.h, b);
    c.n = i + 1;
    if c.pfx != 0 {
        // Masked, not range-checked: LLVM would drop the mask and the verifier needs it.
        s.pfx[((i + 1) & 127) as usize] = c.h;
    }
    0
}

/// Skips up to three bytes of ' ', ':', '"' at `p`.
#[inline(always)]
fn skip_sep(p: u64) -> u64 {
    let Some(s) = scratch() else { return p };
    let mut q = p & MASK;
    let mut k = 0;
    while k < 3 {
        let b = byte(s, q);
        if b == b' ' || b == b':' || b == b'"' {
            q += 1;
        }
        k += 1;
    }
    q
}

#[inline(always)]
fn hash_value(base: u64, len: u64, term: u8, pfx: u64) -> (u64, u64) {
    let mut c = HashScan {
        base: skip_sep(base),
        len,
        h: FNV_OFFSET,
        n: 0,
        term: term as u64,
        pfx,
    };
    if pfx != 0
        && let Some(s) = scratch()
    {
        s.pfx[0] = FNV_OFFSET;
    }
    // SAFETY: bounded helper loop over a stack context.
    unsafe { bpf_loop(32, hash_cb as *mut _, (&mut c as *mut HashScan).cast(), 0) };
    (opaque(c.h), opaque(c.n) & 127)
}

// ---------------------------------------------------------------------------------------------
// Finding a field in a body: `Action=` (form) or `"TableName"` (JSON).
// ---------------------------------------------------------------------------------------------

#[repr(C)]
struct FindScan {
    base: u64,
    len: u64,
    /// FIND_ACTION, FIND_TABLE or FIND_CREDENTIAL.
    what: u64,
}

const ACTION_PAT: &[u8] = b"action=";
const TABLE_PAT: &[u8] = b"\"tablename\"";
const CREDENTIAL_PAT: &[u8] = b"x-amz-credential=";
const V2_KEY_PAT: &[u8] = b"awsaccesskeyid=";
/// `Action=` as a form / query parameter.
const FIND_ACTION: u64 = 0;
/// `"TableName"` as a JSON key.
const FIND_TABLE: u64 = 1;
/// `X-Amz-Credential=` (SigV4) or `AWSAccessKeyId=` (SigV2, sets `v2`) as a query parameter
/// (presigned URL).
const FIND_CREDENTIAL: u64 = 2;

extern "C" fn find_cb(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: see line_cb.
    let c = unsafe { &mut *(ctx as *mut FindScan) };
    let Some(s) = scratch() else { return 1 };
    let p = (c.base & MASK) + (i & 1023);
    if p >= c.len {
        return 1;
    }
    let b = byte(s, p);
    // Parameters start the scanned range or follow '&' (form, query) or '?' (query).
    let param_start = || {
        p == (c.base & MASK) || {
            let prev = byte(s, p.wrapping_sub(1) & MASK);
            prev == b'&' || prev == b'?'
        }
    };
    if c.what == FIND_ACTION {
        if b == b'A' && param_start() && eq_ci(s, p, ACTION_PAT) {
            s.found = p + ACTION_PAT.len() as u64;
            return 1;
        }
    } else if c.what == FIND_CREDENTIAL {
        if b | 0x20 == b'x' && param_start() && eq_ci(s, p, CREDENTIAL_PAT) {
            s.found = p + CREDENTIAL_PAT.len() as u64;
            return 1;
        }
        if b == b'A' && param_start() && eq_ci(s, p, V2_KEY_PAT) {
            s.found = p + V2_KEY_PAT.len() as u64;
            s.v2 = 1;
            return 1;
        }
    } else if b == b'"' && eq_ci(s, p, b"\"tablename") && byte(s, p + 10) == b'"' {
        s.found = p + TABLE_PAT.len() as u64;
        return 1;
    }
    0
}

#[inline(always)]
fn find(base: u64, len: u64, what: u64) -> u64 {
    let mut c = FindScan { base, len, what };
    if let Some(s) = scratch() {
        s.found = 0;
    }
    // SAFETY: bounded helper loop over a stack context.
    unsafe { bpf_loop(1024, find_cb as *mut _, (&mut c as *mut FindScan).cast(), 0) };
    scratch().map_or(0, |s| s.found & MASK)
}

// ---------------------------------------------------------------------------------------------
// S3 virtual-hosted addressing: the bucket is the Host up to `.s3.` / `.s3-`.
// ---------------------------------------------------------------------------------------------

#[repr(C)]
struct HostScan {
    base: u64,
    len: u64,
    h: u64,
    /// Bucket length once `.s3.` / `.s3-` was found, else 0.
    n: u64,
}

extern "C" fn host_cb(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: see line_cb.
    let c = unsafe { &mut *(ctx as *mut HostScan) };
    let Some(s) = scratch() else { return 1 };
    let i = i & 127;
    let p = (c.base & MASK) + i;
    if p >= c.len {
        return 1;
    }
    let b = byte(s, p);
    if b == b'.' && i > 0 && byte(s, p + 1) == b's' && byte(s, p + 2) == b'3' {
        let t = byte(s, p + 3);
        if t == b'.' || t == b'-' {
            c.n = i;
            return 1;
        }
    }
    if b == b':' || b == b'\r' || b == b' ' {
        return 1;
    }
    c.h = fnv_byte(c.h, b);
    s.pfx[((i + 1) & 127) as usize] = c.h;
    0
}

/// (bucket hash, bucket length) when the Host at `base` names an S3 bucket, else (0, 0).
/// Writes the bucket's prefix hashes to `pfx` (garbage when no bucket is found: the path scan
/// then writes the first segment's).
#[inline(always)]
fn host_bucket(base: u64, len: u64) -> (u64, u64) {
    let mut c = HostScan {
        base: skip_sep(base),
        len,
        h: FNV_OFFSET,
        n: 0,
    };
    if let Some(s) = scratch() {
        s.pfx[0] = FNV_OFFSET;
    }
    // SAFETY: bounded helper loop over a stack context; bucket names are at most 63 bytes.
    unsafe { bpf_loop(64, host_cb as *mut _, (&mut c as *mut HostScan).cast(), 0) };
    if c.n == 0 {
        (0, 0)
    } else {
        (opaque(c.h), opaque(c.n) & 127)
    }
}

// ---------------------------------------------------------------------------------------------
// Request line: method and path shape.
// ---------------------------------------------------------------------------------------------

/// Fields that start at 0 alternate with ones that do not: LLVM turns a run of zero stores
/// into a call to a byte-at-a-time memset (see `copy_words`), once per request head.
#[repr(C)]
struct PathScan {
    base: u64,
    phase: u64,
    len: u64,
    /// 1 once the first segment ended.
    seg0_done: u64,
    /// Shift register of ended segments (starts opaque so the verifier's states converge).
    segs: u64,
    /// 1 while the current segment has bytes. Flags, never positions compared with the index:
    /// the verifier must see a small, finite set of loop states.
    nonempty: u64,
    seg_h: u64,
    seg0_h: u64,
    /// Hash of the first query key (REST operations such as `?policy` are told apart by it).
    q_h: u64,
    seg0_len: u64,
    /// Hash of the query key being read.
    k_h: u64,
    last_h: u64,
    /// Hash of the `Action` parameter's value, and 1 once it ended (query protocol in a URL).
    a_h: u64,
    /// 1 once the first query key ended.
    q_done: u64,
    /// 1: record the first segment's prefix hashes in `pfx` (0 when the Host named the bucket).
    pfx: u64,
    act: u64,
}

#[inline(always)]
fn end_segment(c: &mut PathScan, i: u64) {
    if c.nonempty != 0 {
        if c.seg0_done == 0 {
            c.seg0_h = c.seg_h;
            // The path starts with '/' at index 0: the first segment spans 1..i.
            c.seg0_len = i.wrapping_sub(1) & 511;
            c.seg0_done = 1;
        }
        c.last_h = c.seg_h;
        c.segs = (c.segs << 1) | 1;
    }
    c.nonempty = 0;
    c.seg_h = FNV_OFFSET;
}

extern "C" fn path_cb(i: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(s) = scratch() else { return 1 };
    let i = i & 511;
    let p = (s.ps.base & 15) + i;
    if p >= s.ps.len {
        return 1;
    }
    let b = byte(s, p);
    let c = &mut s.ps;
    if b == b' ' || b == b'\r' {
        if c.phase == 0 {
            end_segment(c, i);
        } else if c.phase == 3 {
            c.act = 1;
        }
        return 1;
    }
    if c.phase == 0 {
        if b == b'/' {
            end_segment(c, i);
        } else if b == b'?' {
            end_segment(c, i);
            c.phase = 1;
        } else {
            c.seg_h = fnv_byte(c.seg_h, b);
            c.nonempty = 1;
            if c.seg0_done == 0 && c.pfx != 0 {
                // Prefix of length i of the first segment ends here.
                s.pfx[(i & 127) as usize] = c.seg_h;
            }
        }
    } else if c.phase == 1 {
        // A query key.
        if b == b'=' || b == b'&' {
            c.q_done = 1;
            c.phase = if b == b'&' {
                c.k_h = FNV_OFFSET;
                1
            } else if c.k_h == enf::fnv(b"Action") && c.act == 0 {
                3
            } else {
                2
            };
        } else {
            c.k_h = fnv_byte(c.k_h, b);
            if c.q_done == 0 {
                c.q_h = fnv_byte(c.q_h, b);
            }
        }
    } else if b == b'&' {
        // The end of a value (phase 2) or of the Action value (phase 3).
        if c.phase == 3 {
            c.act = 1;
        }
        c.phase = 1;
        c.k_h = FNV_OFFSET;
    } else if c.phase == 3 {
        c.a_h = fnv_byte(c.a_h, b);
    }
    0
}

/// Method code and length of "METHOD " at the start of the buffer, or (0, 0).
#[inline(always)]
fn method(s: &Scratch) -> (u64, u64) {
    let b0 = byte(s, 0);
    match b0 {
        b'G' if byte(s, 1) == b'E' && byte(s, 2) == b'T' && byte(s, 3) == b' ' => (enf::M_GET, 4),
        b'P' if byte(s, 1) == b'U' && byte(s, 2) == b'T' && byte(s, 3) == b' ' => (enf::M_PUT, 4),
        b'P' if byte(s, 1) == b'O'
            && byte(s, 2) == b'S'
            && byte(s, 3) == b'T'
            && byte(s, 4) == b' ' =>
        {
            (enf::M_POST, 5)
        }
        b'D' if byte(s, 1) == b'E'
            && byte(s, 2) == b'L'
            && byte(s, 5) == b'E'
            && byte(s, 6) == b' ' =>
        {
            (enf::M_DELETE, 7)
        }
        b'H' if byte(s, 1) == b'E'
            && byte(s, 2) == b'A'
            && byte(s, 3) == b'D'
            && byte(s, 4) == b' ' =>
        {
            (enf::M_HEAD, 5)
        }
        b'P' if byte(s, 1) == b'A' && byte(s, 2) == b'T' && byte(s, 5) == b' ' => (enf::M_PATCH, 6),
        _ => (0, 0),
    }
}

// ---------------------------------------------------------------------------------------------
// Decision.
// ---------------------------------------------------------------------------------------------

/// What the classifier learned about one request.
#[repr(C)]
#[derive(Clone, Copy)]
struct Req {
    akid: u64,
    keys: [u64; 4],
    nkeys: u64,
    kind: u64,
    depth: u64,
    res_kind: u8,
    res_len: u64,
    res_full: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Caller {
    id: u64,
    cg: u64,
    uid: u32,
    ssl: u64,
    buf: u64,
    len: u64,
    t0: u64,
}

#[inline(always)]
fn rule_matches(r: &RuleDef, req: &Req, who: &Caller) -> bool {
    if r.effect == 0 {
        return false;
    }
    if r.uid != u32::MAX && r.uid != who.uid {
        return false;
    }
    let Some(s) = scratch() else { return false };
    if r.flags & enf::RF_OBJECT != 0 && req.depth < 2 {
        return false;
    }
    if r.flags & enf::RF_BUCKET != 0 && req.depth != 1 {
        return false;
    }
    if r.res_mode != enf::RES_ANY {
        if r.res_kind != req.res_kind {
            return false;
        }
        let l = r.res_len as u64;
        if r.res_mode == enf::RES_EXACT && req.res_len != l {
            return false;
        }
        if req.res_len < l || l > 63 {
            return false;
        }
        if s.pfx[(l & 127) as usize] != r.res_hash {
            return false;
        }
    }
    true
}

#[inline(always)]
fn event(req: &Req, who: &Caller, rule: u32, key: u64, outcome: u8) {
    let t = unsafe { bpf_ktime_get_boot_ns() };
    let Some(mut e) = ENF_EVENTS.reserve::<DecisionEvent>(0) else {
        stat(enf::STAT_LOST_EVENTS, 1);
        return;
    };
    // SAFETY: writing a fully initialised value into the reserved slot.
    unsafe {
        e.as_mut_ptr().write(DecisionEvent {
            ts_ns: t,
            conn: who.ssl,
            cgroup_id: who.cg,
            action: key,
            akid: req.akid,
            res: req.res_full,
            tgid: (who.id >> 32) as u32,
            tid: who.id as u32,
            uid: who.uid,
            rule,
            outcome,
            kind: req.kind as u8,
            res_kind: req.res_kind,
            _pad: 0,
            decide_ns: if who.t0 != 0 { (t - who.t0) as u32 } else { 0 },
            addr: [0; 16],
            port: 0,
            _pad2: [0; 6],
        })
    };
    // Audit outcomes can wait for the agent's next drain; anything that blocks, stops or asks
    // for approval wakes it now.
    e.submit(if outcome == enf::OUT_AUDIT {
        BPF_RB_NO_WAKEUP as u64
    } else {
        0
    });
}

#[inline(always)]
fn block(ctx: &ProbeContext, who: &Caller) {
    let deadline = unsafe { bpf_ktime_get_boot_ns() } + enf::VERDICT_TTL_NS;
    let _ = ENF_VERDICT.insert(&who.id, &deadline, 0);
    // The send fails, so the return probe emits nothing: record the request here.
    let args = CallArgs {
        ssl: who.ssl,
        buf: who.buf,
        len_out: 0,
    };
    emit(ctx, &args, who.len, DIR_WRITE, who.id);
}

/// One candidate rule per iteration; the request and caller are in the scratch map.
extern "C" fn cand_cb(i: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(s) = scratch() else { return 1 };
    let j = (i & (enf::MAX_CANDS as u64 - 1)) as usize;
    if j as u32 >= s.cands.n {
        return 1;
    }
    let ri = s.cands.idx[j] as u32;
    // The workload and access-key masks rule most candidates out before their rule is read.
    let cf = s.cands.cflags[j];
    if cf & enf::RF_WORKLOAD != 0 && (s.wl_set == 0 || !s.wl.has(ri))
        || cf & enf::RF_AKID != 0 && (s.ak_set == 0 || !s.ak.has(ri))
    {
        return 0;
    }
    let Some(r) = ENF_RULES.get(ri) else { return 0 };
    let req = s.req;
    let who = s.who;
    if rule_matches(r, &req, &who) {
        s.hit = ri as u64;
        return 1;
    }
    0
}

/// Decides the request in `s.req`. Read back from the map, its fields are opaque to the
/// verifier: every classification path reaches this code in one state instead of one each.
#[inline(always)]
fn decide(ctx: &ProbeContext, cfg: &EnforceConfig, who: &Caller) {
    let mut key = 0u64;
    let mut found = false;
    let Some(s) = scratch() else { return };
    let req: &Req = &{ s.req };
    let mut k = 0;
    while k < 4 {
        if (k as u64) < req.nkeys {
            let kk = req.keys[k];
            // SAFETY: value copied out.
            if let Some(c) = unsafe { ENF_ACTIONS.get(&kk) } {
                key = kk;
                copy_words(&mut s.cands, c);
                found = true;
                break;
            }
        }
        k += 1;
    }
    if !found {
        return;
    }
    s.who = *who;
    s.hit = u64::MAX;
    // One lookup per mask for all candidates (the maps are only read when a candidate needs
    // them: each cold hash lookup costs hundreds of ns under a real workload).
    clear(&mut s.wl_set);
    clear(&mut s.ak_set);
    if s.cands.flags & enf::RF_WORKLOAD as u32 != 0 {
        // SAFETY: values copied out.
        if let Some(m) = unsafe { ENF_SCOPE_CG.get(&who.cg) } {
            copy_words(&mut s.wl, m);
            s.wl_set = 1;
        }
        if let Some(p) = unsafe { ENF_SCOPE_PID.get(&((who.id >> 32) as u32)) } {
            if s.wl_set == 0 {
                copy_words(&mut s.wl, p);
            } else {
                let mut i = 0;
                while i < s.wl.bits.len() {
                    s.wl.bits[i] |= p.bits[i];
                    i += 1;
                }
            }
            s.wl_set = 1;
        }
    }
    if s.cands.flags & enf::RF_AKID as u32 != 0
        // SAFETY: value read in place.
        && let Some(m) = unsafe { ENF_AKIDS.get(&req.akid) }
    {
        copy_words(&mut s.ak, m);
        s.ak_set = 1;
    }
    // Rules scoped to keys or workloads (most are) cannot match a caller outside them: no
    // candidate needs to be looked at.
    if s.cands.all & enf::RF_AKID as u32 != 0 && s.ak_set == 0
        || s.cands.all & enf::RF_WORKLOAD as u32 != 0 && s.wl_set == 0
    {
        return;
    }
    let mut dummy = 0u64;
    // SAFETY: bounded helper loop.
    unsafe {
        bpf_loop(
            enf::MAX_CANDS as u32,
            cand_cb as *mut _,
            (&mut dummy as *mut u64).cast(),
            0,
        )
    };
    let hit = s.hit;
    if hit == u64::MAX {
        return;
    }
    let ri = (hit as u32) & (enf::MAX_RULES - 1);
    if let Some(r) = ENF_RULES.get(ri) {
        let r = *r;
        act(ctx, cfg, &r, ri, key, req, who);
    }
}

#[inline(always)]
fn act(
    ctx: &ProbeContext,
    cfg: &EnforceConfig,
    r: &RuleDef,
    ri: u32,
    key: u64,
    req: &Req,
    who: &Caller,
) {
    let monitor = cfg.monitor != 0;
    let outcome = match r.effect {
        enf::EFFECT_AUDIT => enf::OUT_AUDIT,
        enf::EFFECT_DENY if monitor => enf::OUT_WOULD_DENY,
        enf::EFFECT_DENY => {
            block(ctx, who);
            enf::OUT_DENY
        }
        enf::EFFECT_KILL if monitor => enf::OUT_WOULD_DENY,
        enf::EFFECT_KILL => {
            // SAFETY: signals the current process.
            unsafe { bpf_send_signal(SIGKILL) };
            block(ctx, who);
            enf::OUT_KILL
        }
        enf::EFFECT_APPROVE => {
            let g = GrantKey {
                akid: req.akid,
                action: key,
                res: req.res_full,
            };
            let now = unsafe { bpf_ktime_get_boot_ns() };
            // SAFETY: value copied out.
            let granted = unsafe { ENF_GRANTS.get(&g) }.is_some_and(|&exp| exp > now);
            if granted {
                enf::OUT_APPROVED
            } else if monitor {
                enf::OUT_WOULD_DENY
            } else if r.flags & enf::RF_HOLD != 0 {
                // SAFETY: stops the current process until the agent sends SIGCONT.
                unsafe { bpf_send_signal(SIGSTOP) };
                enf::OUT_HELD
            } else {
                block(ctx, who);
                enf::OUT_APPROVAL_REQUESTED
            }
        }
        _ => return,
    };
    event(req, who, ri, key, outcome);
}

/// Called from the `SSL_write` / `SSL_write_ex` entry probes.
#[inline(always)]
pub fn on_write(ctx: &ProbeContext) {
    let Some(cfg) = ENF_CONFIG.get(0) else { return };
    if cfg.enabled == 0 {
        return;
    }
    let (Some(ssl), Some(buf), Some(len)) =
        (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    else {
        return;
    };
    // SSL_write takes an int: keep the low 32 bits, reject negatives.
    let len = len & 0xffff_ffff;
    if len == 0 || len > 0x7fff_ffff {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    let cg = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: value copied out.
    let pending = unsafe { ENF_PENDING.get(&ssl) }.copied();
    if cfg.global == 0
        && pending.is_none()
        && unsafe { ENF_SCOPE_CG.get(&cg) }.is_none()
        && unsafe { ENF_SCOPE_PID.get(&((id >> 32) as u32)) }.is_none()
    {
        return;
    }
    // Most writes are neither a request head nor an awaited body (bodies, responses of
    // servers on this host): a 4-byte peek avoids copying and scanning them.
    if pending.is_none() && !starts_like_request(buf, len) {
        return;
    }
    let t0 = if cfg.stats != 0 {
        unsafe { bpf_ktime_get_boot_ns() }
    } else {
        0
    };
    let who = Caller {
        id,
        cg,
        uid: bpf_get_current_uid_gid() as u32,
        ssl,
        buf,
        len,
        t0,
    };
    if let Some(s) = scratch() {
        clear(&mut s.deferred);
        clear(&mut s.split);
    }
    if let Some(req) = classify(&who, pending)
        && let Some(s) = scratch()
    {
        s.req = req;
        decide(ctx, cfg, &who);
    }
    stat(enf::STAT_CLASSIFIED, 1);
    if t0 != 0 {
        if scratch().is_some_and(|s| s.deferred == 0) {
            stat(enf::STAT_REQUESTS, 1);
        }
        let dt = unsafe { bpf_ktime_get_boot_ns() } - t0;
        stat(enf::STAT_DECISIONS, 1);
        stat(enf::STAT_DECISION_NS, dt);
        if let Some(s) = scratch()
            && s.split != 0
        {
            stat(enf::STAT_SPLIT_REQUESTS, 1);
            stat(enf::STAT_SPLIT_NS, s.head_ns + dt);
        }
    }
}

/// Do the first bytes at `buf` look like an HTTP/1.x request method?
#[inline(always)]
fn starts_like_request(buf: u64, len: u64) -> bool {
    if len < 4 {
        return false;
    }
    let mut head = [0u8; 4];
    // SAFETY: reading 4 bytes of user memory through the helper, len >= 4.
    let r = unsafe {
        bpf_probe_read_user(head.as_mut_ptr().cast(), 4, buf as *const core::ffi::c_void)
    };
    r == 0
        && matches!(
            &head,
            b"GET " | b"PUT " | b"POST" | b"DELE" | b"HEAD" | b"PATC"
        )
}

#[inline(always)]
fn classify(who: &Caller, pending: Option<PendingReq>) -> Option<Req> {
    let s = scratch()?;
    let mut n = who.len;
    if n > SCAN_BYTES as u64 {
        n = SCAN_BYTES as u64;
    }
    // SAFETY: reading user memory through the helper, n <= SCAN_BYTES <= buffer size.
    let r = unsafe {
        bpf_probe_read_user(
            s.buf.as_mut_ptr().cast(),
            n as u32,
            who.buf as *const core::ffi::c_void,
        )
    };
    if r != 0 {
        return None;
    }
    let (m, mlen) = method(s);
    s.method = m;
    s.path_at = mlen;
    let (m, mlen) = (
        // SAFETY: plain reads of the per-CPU scratch just written.
        unsafe { core::ptr::read_volatile(&s.method) },
        unsafe { core::ptr::read_volatile(&s.path_at) } & 15,
    );
    if m == 0 {
        let p = pending?;
        let _ = ENF_PENDING.remove(&who.ssl);
        s.split = 1;
        s.head_ns = p.head_ns as u64;
        return body(&p, 0, n);
    }
    if pending.is_some() {
        let _ = ENF_PENDING.remove(&who.ssl);
    }
    let mut ls = LineScan { len: n };
    clear(&mut s.target);
    clear(&mut s.auth);
    clear(&mut s.v2);
    clear(&mut s.host);
    clear(&mut s.body);
    clear(&mut s.line1);
    clear(&mut s.lpos);
    // SAFETY: bounded helper loops over stack contexts.
    unsafe {
        bpf_loop(
            (SCAN_BYTES / 8) as u32,
            line_cb as *mut _,
            (&mut ls as *mut LineScan).cast(),
            0,
        )
    };
    let (ls_target, ls_auth, ls_host, ls_body) = (
        s.target & MASK,
        s.auth & MASK,
        s.host & MASK,
        s.body & (2 * MASK + 1),
    );
    // JSON protocol: the operation is the target. Most operations have no rule: then there is
    // nothing to decide, and the credential is not even read.
    let (json_key, json_flags) = if ls_target != 0 {
        let (t, tn) = hash_value(ls_target, n, b'\r', 0);
        if tn == 0 {
            return None;
        }
        let key = enf::key_json(t);
        // SAFETY: value copied out.
        (key, unsafe { ENF_ACTIONS.get(&key) }?.flags)
    } else {
        (0, 0)
    };
    let (json_key, json_flags) = (opaque(json_key), opaque(json_flags as u64));
    // The request line ends where the second line starts.
    let line_end = if s.line1 != 0 { s.line1 & MASK } else { n };
    // The signing credential: the Authorization header, else a presigned URL's query.
    let (cred_at, cred_end) = if ls_auth != 0 {
        (ls_auth, n)
    } else {
        (find(mlen, line_end, FIND_CREDENTIAL), line_end)
    };
    let (akid, svc) = if cred_at != 0 {
        credential(cred_at, cred_end, s.v2)
    } else {
        (0, 0)
    };
    let mut req = Req {
        akid,
        keys: [0; 4],
        nkeys: 0,
        kind: 0,
        depth: 0,
        res_kind: enf::RES_NONE,
        res_len: 0,
        res_full: 0,
    };
    let body_in_write = ls_body != 0 && ls_body < n;
    if json_key != 0 {
        req.kind = enf::KIND_JSON;
        req.keys[0] = json_key;
        req.nkeys = 1;
        if json_flags & enf::RF_TABLE as u64 == 0 {
            return Some(req);
        }
        if body_in_write {
            table(&mut req, ls_body, n);
        } else {
            let p = PendingReq {
                akid,
                svc,
                action: req.keys[0],
                kind: enf::KIND_JSON as u32,
                head_ns: 0,
            };
            defer(s, who, p);
            return None;
        }
        return Some(req);
    }
    // S3 virtual-hosted addressing: the bucket is in the Host, the path holds only the key.
    let (bucket_h, bucket_n) = if svc == enf::fnv(b"s3") && ls_host != 0 {
        host_bucket(ls_host, n)
    } else {
        (0, 0)
    };
    s.ps = PathScan {
        base: mlen + opaque_zero(),
        len: n,
        phase: 0,
        segs: opaque_zero(),
        seg0_done: 0,
        nonempty: 0,
        seg_h: FNV_OFFSET,
        seg0_h: 0,
        seg0_len: 0,
        last_h: 0,
        q_h: FNV_OFFSET,
        q_done: 0,
        k_h: FNV_OFFSET,
        a_h: FNV_OFFSET,
        act: 0,
        pfx: if bucket_n == 0 { 1 } else { 0 },
    };
    if bucket_n == 0 {
        s.pfx[0] = FNV_OFFSET;
    }
    let mut dummy = 0u64;
    unsafe { bpf_loop(512, path_cb as *mut _, (&mut dummy as *mut u64).cast(), 0) };
    let ps = &s.ps;
    let qkey = if ps.phase != 0 { ps.q_h } else { 0 };
    // Segments ended are 1-bits shifted in: depth = popcount, saturating at 8.
    let depth_all = (ps.segs & 0xff).count_ones() as u64;
    if depth_all == 0 && bucket_n == 0 && svc != 0 && ps.act != 0 {
        // Query protocol with its parameters in the URL (`/?Action=...`, GET or POST).
        req.kind = enf::KIND_QUERY;
        req.keys[0] = enf::key_query(svc, ps.a_h);
        req.nkeys = 1;
        return Some(req);
    }
    if m == enf::M_POST && depth_all == 0 && qkey == 0 && bucket_n == 0 {
        // Query protocol: the operation is the body's Action.
        let p = PendingReq {
            akid,
            svc,
            action: 0,
            kind: enf::KIND_QUERY as u32,
            head_ns: 0,
        };
        if body_in_write {
            return body(&p, ls_body, n);
        } else if svc != 0 {
            defer(s, who, p);
        }
        return None;
    }
    if svc == 0 {
        return None;
    }
    if m == enf::M_POST && depth_all == 4 && ps.seg0_h == enf::fnv(b"service") {
        req.kind = enf::KIND_CBOR;
        req.keys[0] = enf::key_cbor(svc, ps.last_h);
        req.nkeys = 1;
    } else {
        req.kind = enf::KIND_REST;
        let (depth, seg0) = if bucket_n != 0 {
            // The Host's bucket is the path-style first segment.
            let d = depth_all + 1;
            (d.min(enf::MAX_DEPTH as u64), bucket_h)
        } else if depth_all > 0 {
            (depth_all, ps.seg0_h)
        } else {
            (0, 0)
        };
        req.depth = depth;
        req.keys[0] = enf::key_rest(svc, m, depth, seg0, qkey);
        req.keys[1] = enf::key_rest(svc, m, depth, seg0, 0);
        req.keys[2] = enf::key_rest(svc, m, depth, 0, qkey);
        req.keys[3] = enf::key_rest(svc, m, depth, 0, 0);
        req.nkeys = 4;
        if bucket_n != 0 {
            req.res_kind = enf::RES_BUCKET;
            req.res_len = bucket_n;
            req.res_full = bucket_h;
        } else if depth_all > 0 {
            req.res_kind = enf::RES_BUCKET;
            req.res_len = ps.seg0_len;
            req.res_full = ps.seg0_h;
        }
    }
    Some(req)
}

/// Keeps what the head of `who`'s request told for the write that brings its body.
#[inline(always)]
fn defer(s: &mut Scratch, who: &Caller, mut p: PendingReq) {
    if who.t0 != 0 {
        p.head_ns = (unsafe { bpf_ktime_get_boot_ns() } - who.t0) as u32;
    }
    let _ = ENF_PENDING.insert(&who.ssl, &p, 0);
    s.deferred = 1;
}

#[inline(always)]
fn table(req: &mut Req, base: u64, len: u64) {
    let at = find(base, len, FIND_TABLE);
    if at != 0 {
        let (h, n) = hash_value(at, len, b'"', 1);
        if n != 0 {
            req.res_kind = enf::RES_TABLE;
            req.res_len = n;
            req.res_full = h;
        }
    }
}

/// A body: the write that follows a pending head, or the body part of a head write.
#[inline(always)]
fn body(p: &PendingReq, base: u64, len: u64) -> Option<Req> {
    let mut req = Req {
        akid: p.akid,
        keys: [0; 4],
        nkeys: 1,
        kind: p.kind as u64,
        depth: 0,
        res_kind: enf::RES_NONE,
        res_len: 0,
        res_full: 0,
    };
    if p.kind == enf::KIND_QUERY as u32 {
        let at = find(base, len, FIND_ACTION);
        if at == 0 {
            return None;
        }
        let (a, an) = hash_value(at, len, b'&', 0);
        if an == 0 {
            return None;
        }
        req.keys[0] = enf::key_query(p.svc, a);
    } else {
        req.keys[0] = p.action;
        table(&mut req, base, len);
    }
    Some(req)
}

/// Called from the `SSL_write*` return probes. Returns true when the write was denied but
/// nothing was sent yet: the TLS library wrote the record to a memory BIO (Node) and sends it
/// after returning. The thread's next send is then dropped (within `enf::VERDICT_TTL_NS`), and
/// the write must not be recorded again (`block` recorded it).
#[inline(always)]
pub fn on_write_return() -> bool {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: plain lookup. Still there: the write sent nothing (a send would have consumed
    // it); its record goes out after the return, within a fresh deadline.
    if unsafe { ENF_VERDICT.get(&id) }.is_none() {
        return false;
    }
    let deadline = unsafe { bpf_ktime_get_boot_ns() } + enf::VERDICT_TTL_NS;
    let _ = ENF_VERDICT.insert(&id, &deadline, 0);
    true
}

// ---------------------------------------------------------------------------------------------
// Socket programs.
// ---------------------------------------------------------------------------------------------

/// Adds every established client TCP socket to `ENF_SOCKS`, so `hoop_sk_msg` sees its sends.
#[sock_ops]
pub fn hoop_sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        // SAFETY: the context is a valid bpf_sock_ops for the duration of the program.
        let ops: &mut bpf_sock_ops = unsafe { &mut *ctx.ops };
        let mut cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
        // Fails with EBUSY when the socket is already attached to another sk_msg program
        // (a second agent that attached first): counted, so the agent can say so.
        if ENF_SOCKS.update(&mut cookie, ops, BPF_ANY as u64).is_ok() {
            stat(enf::STAT_SOCKS_ADDED, 1);
        } else {
            stat(enf::STAT_SOCKS_BUSY, 1);
        }
    }
    1
}

/// Drops the first send made by a thread whose SSL_write was denied: the send inside the write
/// (socket BIO), or the one right after it (memory BIO). Dropping the record that carries the
/// request head is enough: the TLS stream cannot go on without it (the next record's sequence
/// number fails the peer's integrity check), so the client gets an error and the call is over.
#[sk_msg]
pub fn hoop_sk_msg(_ctx: SkMsgContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: value copied out.
    let Some(v) = (unsafe { ENF_VERDICT.get(&id) }).copied() else {
        return 1; // SK_PASS
    };
    let _ = ENF_VERDICT.remove(&id);
    if unsafe { bpf_ktime_get_boot_ns() } > v {
        return 1;
    }
    stat(enf::STAT_DROPS, 1);
    0 // SK_DROP
}

/// tgid -> the endpoint rules (bit = endpoint index) whose `exe` selectors include it.
#[map]
static ENF_EP_PID: HashMap<u32, RuleMask> = HashMap::with_max_entries(16384, 0);

/// Does endpoint rule `r` apply to this connect (port, caller uid, caller tgid)?
#[inline(always)]
fn ep_applies(r: &EndpointRef, port: u16, uid: u32, tgid: u32) -> bool {
    let p = r.ports;
    if p[0] != 0 && p[0] != port && p[1] != port && p[2] != port && p[3] != port {
        return false;
    }
    if r.uid != u32::MAX && r.uid != uid {
        return false;
    }
    if r.flags & enf::EPF_PID != 0 {
        // SAFETY: plain lookup, read in place.
        match unsafe { ENF_EP_PID.get(&tgid) } {
            Some(m) if m.has(r.index) => {}
            _ => return false,
        }
    }
    true
}

/// The first rule of a trie entry (policy order) that applies; `index == u32::MAX` = none.
/// A plain value, not an `Option`: a `None` would carry uninitialised bytes the verifier
/// refuses to see copied.
#[inline(always)]
fn ep_first(v: Option<&EndpointVal>, port: u16, uid: u32, tgid: u32) -> EndpointRef {
    let none = EndpointRef {
        index: u32::MAX,
        ..Default::default()
    };
    let Some(v) = v else { return none };
    let mut j = 0;
    while j < enf::MAX_EP_CANDS {
        if j as u32 >= v.n {
            break;
        }
        let r = v.refs[j];
        if ep_applies(&r, port, uid, tgid) {
            return r;
        }
        j += 1;
    }
    none
}

/// Endpoint rules: the rules of the caller's cgroup entry and of the every-cgroup entry are
/// checked; the first applicable one in policy order decides (`deny` or `audit`).
#[inline(always)]
fn connect_check(addr: [u8; 16], port: u16) -> i32 {
    let Some(cfg) = ENF_CONFIG.get(0) else {
        return 1;
    };
    if cfg.enabled == 0 {
        return 1;
    }
    let cg = unsafe { bpf_get_current_cgroup_id() };
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let uid = bpf_get_current_uid_gid() as u32;
    let mut key = Key::new(
        64 + 128,
        EndpointKey {
            cgroup: cg.to_ne_bytes(),
            addr,
        },
    );
    let scoped = ep_first(ENF_ENDPOINTS.get(&key), port, uid, tgid);
    key.data.cgroup = [0; 8];
    let global = ep_first(ENF_ENDPOINTS.get(&key), port, uid, tgid);
    let r = if scoped.index <= global.index {
        scoped
    } else {
        global
    };
    if r.index == u32::MAX {
        return 1;
    }
    let (outcome, allow) = match r.effect {
        enf::EFFECT_AUDIT => (enf::OUT_AUDIT, true),
        _ if cfg.monitor != 0 => (enf::OUT_WOULD_DENY, true),
        _ => (enf::OUT_DENY, false),
    };
    if !allow {
        stat(enf::STAT_CONNECT_DENIED, 1);
    }
    if let Some(mut e) = ENF_EVENTS.reserve::<DecisionEvent>(0) {
        // SAFETY: writing a fully initialised value into the reserved slot.
        unsafe {
            e.as_mut_ptr().write(DecisionEvent {
                ts_ns: bpf_ktime_get_boot_ns(),
                conn: 0,
                cgroup_id: cg,
                action: 0,
                akid: 0,
                res: 0,
                tgid,
                tid: id as u32,
                uid,
                rule: r.rule,
                outcome,
                kind: enf::KIND_CONNECT,
                res_kind: 0,
                _pad: 0,
                decide_ns: 0,
                addr,
                port,
                _pad2: [0; 6],
            })
        };
        // Audit outcomes wait for the agent's next drain, as for calls.
        e.submit(if outcome == enf::OUT_AUDIT {
            BPF_RB_NO_WAKEUP as u64
        } else {
            0
        });
    } else {
        stat(enf::STAT_LOST_EVENTS, 1);
    }
    if allow { 1 } else { 0 }
}

#[cgroup_sock_addr(connect4)]
pub fn hoop_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: valid context for the program's duration.
    let sa = unsafe { &*ctx.sock_addr };
    let ip = sa.user_ip4.to_ne_bytes();
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12] = ip[0];
    addr[13] = ip[1];
    addr[14] = ip[2];
    addr[15] = ip[3];
    connect_check(addr, u16::from_be(sa.user_port as u16))
}

#[cgroup_sock_addr(connect6)]
pub fn hoop_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: valid context for the program's duration.
    let sa = unsafe { &*ctx.sock_addr };
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let w = sa.user_ip6[i].to_ne_bytes();
        addr[i * 4] = w[0];
        addr[i * 4 + 1] = w[1];
        addr[i * 4 + 2] = w[2];
        addr[i * 4 + 3] = w[3];
        i += 1;
    }
    connect_check(addr, u16::from_be(sa.user_port as u16))
}
