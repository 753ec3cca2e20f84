//! `#[repr(C)]` types shared by the eBPF programs (`hoop-ebpf`) and the agent (`hoop-agent`).
//!
//! Everything here crosses the kernel/user boundary byte for byte, so layouts are fixed,
//! explicitly padded and free of pointers.
#![no_std]

/// Bytes of plaintext carried by one ring-buffer record. A TLS call longer than this is split
/// into several records (`offset` says where each starts), up to [`MAX_CHUNKS`] of them.
pub const CHUNK_SIZE: usize = 16 * 1024;

/// Records emitted for one TLS call at most. Of a longer call, the first `MAX_CHUNKS - 1`
/// records carry its head and the last one its final `CHUNK_SIZE` bytes, flagged
/// [`FLAG_SKIPPED`]: the bytes in between were not copied.
pub const MAX_CHUNKS: usize = 8;

/// Length of the kernel's `comm` field.
pub const COMM_LEN: usize = 16;

/// Plaintext handed to the TLS library for encryption (client request, server response).
pub const DIR_WRITE: u8 = 0;
/// Plaintext returned by the TLS library after decryption.
pub const DIR_READ: u8 = 1;

/// Set on a record preceded by bytes of the same call that were deliberately not copied
/// (the middle of a call longer than `MAX_CHUNKS * CHUNK_SIZE`).
pub const FLAG_SKIPPED: u8 = 1;

/// Which probe produced a record.
pub const SRC_OPENSSL: u8 = 0;

/// Indexes into the `COUNTERS` per-CPU array.
pub mod counter {
    /// Records that could not be written to the ring buffer (it was full).
    pub const LOST_RECORDS: u32 = 0;
    /// Bytes of those records.
    pub const LOST_BYTES: u32 = 1;
    /// Process exec/exit events that could not be written.
    pub const LOST_PROC_EVENTS: u32 = 2;
    /// Reads of user memory that failed (record dropped).
    pub const READ_ERRORS: u32 = 3;
    /// Number of counters.
    pub const COUNT: u32 = 4;
}

/// Header of every TLS plaintext record in the `TLS_EVENTS` ring buffer. The payload
/// (`cap_len` bytes) follows it directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsEventHeader {
    /// `bpf_ktime_get_boot_ns()` at the return of the TLS call.
    pub ts_ns: u64,
    /// Connection key: the address of the library's connection object (`SSL *`).
    pub conn: u64,
    /// cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    /// Total bytes the TLS call moved.
    pub full_len: u32,
    /// Offset of this record's first byte within the call.
    pub offset: u32,
    /// Bytes of payload in this record.
    pub cap_len: u32,
    pub comm: [u8; COMM_LEN],
    /// [`DIR_WRITE`] or [`DIR_READ`].
    pub direction: u8,
    /// [`FLAG_SKIPPED`] or 0.
    pub flags: u8,
    /// [`SRC_OPENSSL`].
    pub source: u8,
    pub _pad: [u8; 5],
}

pub const TLS_HEADER_LEN: usize = core::mem::size_of::<TlsEventHeader>();

/// A full record as laid out in the per-CPU scratch buffer before it is copied to the ring.
#[repr(C)]
pub struct TlsEvent {
    pub header: TlsEventHeader,
    pub data: [u8; CHUNK_SIZE],
}

/// Process lifecycle event (ring buffer `PROC_EVENTS`).
pub const PROC_EXEC: u8 = 1;
pub const PROC_EXIT: u8 = 2;

/// Maximum bytes of the exec'd filename carried in a [`ProcEvent`].
pub const PROC_FILENAME_LEN: usize = 256;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcEvent {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    /// Parent tgid at exec time (0 when unknown).
    pub ppid: u32,
    pub uid: u32,
    /// [`PROC_EXEC`] or [`PROC_EXIT`].
    pub kind: u8,
    pub _pad: [u8; 7],
    pub comm: [u8; COMM_LEN],
    /// NUL-terminated, only for [`PROC_EXEC`].
    pub filename: [u8; PROC_FILENAME_LEN],
}

/// Field offsets of the `sched_process_exec` tracepoint record, read from tracefs at start-up
/// by the agent and stored in the `TP_OFFSETS` array (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TracepointOffsets {
    /// Offset of the `__data_loc char[] filename` word in `sched_process_exec`.
    pub exec_filename: u32,
    /// Offset of `pid` in `sched_process_exec`.
    pub exec_pid: u32,
    /// Offset of `group_dead` in `sched_process_exit` (u32::MAX when absent).
    pub exit_group_dead: u32,
    pub _pad: u32,
}

/// A TLS connection of one process (key of `MUTED_CONNS`): the agent mutes the server side
/// of connections it will never report, so the kernel stops copying them; `SSL_free` unmutes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub tgid: u32,
    pub _pad: u32,
    pub conn: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes the kernel could read.
    unsafe impl aya::Pod for super::TracepointOffsets {}
    // SAFETY: as above; `_pad` is always written as 0.
    unsafe impl aya::Pod for super::ConnId {}
}

/// Turns a fixed-size, NUL-padded kernel string into a `&str` (lossy on bad UTF-8 is the
/// caller's job; this stops at the first NUL).
pub fn c_str_bytes(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(n) => &b[..n],
        None => b,
    }
}

/// Record produced by the Go `crypto/tls` probes (`conn` is the `*tls.Conn`).
pub const SRC_GO: u8 = 1;
/// Record produced by the `cgroup_skb` programs from plain-HTTP TCP payload to a credential
/// endpoint (`conn` is the socket cookie; `tgid`/`tid` are 0: packets have no process).
pub const SRC_PLAIN: u8 = 2;

/// A plain-HTTP credential endpoint the `cgroup_skb` programs copy (`PLAIN_ENDPOINTS`):
/// IPv6 or v4-mapped address and TCP port (host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PlainEndpoint {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}

// ---------------------------------------------------------------------------------------------
// Enforcement (issue 6): compiled policy in kernel maps, decisions back to user space.
// ---------------------------------------------------------------------------------------------

/// Enforcement constants shared by `hoop-ebpf/src/enforce.rs` and `hoop-agent/src/enforce.rs`.
pub mod enf {
    /// FNV-1a 64 offset basis and prime: every string the kernel matches is hashed with it.
    pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

    /// Bytes of a write the kernel classifies (head and, for pending bodies, body head).
    pub const SCAN_BYTES: usize = 2048;
    /// Longest resource-name prefix the kernel can match (bucket / table names).
    pub const RES_PREFIX_MAX: usize = 63;
    /// Deepest REST path the kernel distinguishes (deeper paths count as this depth).
    pub const MAX_DEPTH: u32 = 8;
    /// Rules one action key can carry (first match wins, in policy order).
    pub const MAX_CANDS: usize = 16;
    /// Rules in the kernel rule array.
    pub const MAX_RULES: u32 = 1024;
    /// Endpoint rules one destination entry can carry (first match wins, in policy order).
    pub const MAX_EP_CANDS: usize = 16;
    /// Destination ports of one endpoint rule.
    pub const MAX_EP_PORTS: usize = 4;

    /// Request kinds (first word of every action key).
    pub const KIND_JSON: u64 = 1;
    pub const KIND_QUERY: u64 = 2;
    pub const KIND_REST: u64 = 3;
    pub const KIND_CBOR: u64 = 4;
    /// Decision event kind for cgroup connect4/connect6 decisions.
    pub const KIND_CONNECT: u8 = 5;

    /// HTTP method codes.
    pub const M_GET: u64 = 1;
    pub const M_PUT: u64 = 2;
    pub const M_POST: u64 = 3;
    pub const M_DELETE: u64 = 4;
    pub const M_HEAD: u64 = 5;
    pub const M_PATCH: u64 = 6;

    /// Rule effects ([`super::RuleDef::effect`]).
    pub const EFFECT_AUDIT: u8 = 1;
    pub const EFFECT_DENY: u8 = 2;
    pub const EFFECT_KILL: u8 = 3;
    pub const EFFECT_APPROVE: u8 = 4;

    /// [`super::RuleDef::flags`].
    /// The rule has workload selectors: its bit must be set in the caller's cgroup or tgid mask
    /// (`ENF_SCOPE_CG`, `ENF_SCOPE_PID`).
    pub const RF_WORKLOAD: u8 = 1;
    /// The rule lists access keys: its bit must be set in the signing key's mask (`ENF_AKIDS`).
    pub const RF_AKID: u8 = 2;
    /// `approve` with `hold: true`: SIGSTOP the caller instead of failing the call.
    pub const RF_HOLD: u8 = 4;
    /// S3 resource pattern names objects (`bucket/*`): only object-level paths match.
    pub const RF_OBJECT: u8 = 8;
    /// S3 resource pattern names a bucket only: only bucket-level paths match.
    pub const RF_BUCKET: u8 = 16;
    /// The rule names DynamoDB tables: a JSON request's body must be read before deciding
    /// (set from `res_kind`, for the candidate flags of [`super::Cands`]).
    pub const RF_TABLE: u8 = 32;

    /// [`super::EndpointRef::flags`]: the rule has `exe` selectors: the caller's tgid must have
    /// the rule's bit in `ENF_EP_PID`.
    pub const EPF_PID: u8 = 1;

    /// [`super::RuleDef::res_kind`] and [`super::DecisionEvent::res_kind`].
    pub const RES_NONE: u8 = 0;
    /// S3 bucket, first path segment (path-style addressing).
    pub const RES_BUCKET: u8 = 1;
    /// DynamoDB table, `"TableName"` in the JSON body.
    pub const RES_TABLE: u8 = 2;

    /// [`super::RuleDef::res_mode`].
    pub const RES_ANY: u8 = 0;
    pub const RES_EXACT: u8 = 1;
    pub const RES_PREFIX: u8 = 2;

    /// Decision outcomes ([`super::DecisionEvent::outcome`]).
    pub const OUT_AUDIT: u8 = 1;
    pub const OUT_DENY: u8 = 2;
    pub const OUT_WOULD_DENY: u8 = 3;
    pub const OUT_KILL: u8 = 4;
    pub const OUT_APPROVAL_REQUESTED: u8 = 5;
    pub const OUT_APPROVED: u8 = 6;
    /// Approval requested and the caller stopped (SIGSTOP) until a decision.
    pub const OUT_HELD: u8 = 7;

    /// Indexes of the `ENF_STATS` per-CPU array.
    pub const STAT_DECISIONS: u32 = 0;
    pub const STAT_DECISION_NS: u32 = 1;
    pub const STAT_DROPS: u32 = 2;
    pub const STAT_CLASSIFIED: u32 = 3;
    pub const STAT_LOST_EVENTS: u32 = 4;
    pub const STAT_CONNECT_DENIED: u32 = 5;
    /// Sockets the sock_ops program added to `ENF_SOCKS`.
    pub const STAT_SOCKS_ADDED: u32 = 6;
    /// Sockets it could not add: already attached to another sk_msg program (a second
    /// enforcing agent on the host owns them), or the map is full. Their sends are not enforced.
    pub const STAT_SOCKS_BUSY: u32 = 7;
    /// Timed requests (`--enforce-stats`): classified writes that ended a request, so
    /// `STAT_DECISION_NS / STAT_REQUESTS` is the time per request (a head whose body comes in
    /// a later write is timed but is not a request of its own).
    pub const STAT_REQUESTS: u32 = 8;
    /// Timed requests whose body came in a later write than the head (query protocol from
    /// urllib3, JSON with a table rule), and the time of both their writes.
    pub const STAT_SPLIT_REQUESTS: u32 = 9;
    pub const STAT_SPLIT_NS: u32 = 10;
    pub const STAT_COUNT: u32 = 11;

    /// One FNV-1a step.
    #[inline(always)]
    pub const fn fnv_byte(h: u64, b: u8) -> u64 {
        (h ^ b as u64).wrapping_mul(FNV_PRIME)
    }

    /// FNV-1a of a byte string.
    pub const fn fnv(bytes: &[u8]) -> u64 {
        let mut h = FNV_OFFSET;
        let mut i = 0;
        while i < bytes.len() {
            h = fnv_byte(h, bytes[i]);
            i += 1;
        }
        h
    }

    /// How long a denied write's record may still be sent (`ENF_VERDICT` deadlines).
    pub const VERDICT_TTL_NS: u64 = 500_000_000;

    /// Length of every AWS access key id (`AKIA`/`ASIA` + 16).
    pub const AKID_LEN: usize = 20;

    /// Little-endian word of `n` bytes of `b` at `off`.
    const fn le_word(b: &[u8], off: usize, n: usize) -> u64 {
        let mut v = 0u64;
        let mut j = 0;
        while j < n {
            v |= (b[off + j] as u64) << (8 * j);
            j += 1;
        }
        v
    }

    /// Hash of an access key id as the kernel computes it: a 20-byte id (every AWS key id) from
    /// three word loads, other ids (or ids with bytes below `'0'` or a `':'`, which the kernel
    /// takes for separators) FNV-1a byte by byte.
    pub const fn akid_hash(id: &[u8]) -> u64 {
        if id.len() != AKID_LEN {
            return fnv(id);
        }
        let mut i = 0;
        while i < AKID_LEN {
            if id[i] < b'0' || id[i] == b':' {
                return fnv(id);
            }
            i += 1;
        }
        akid_words(le_word(id, 0, 8), le_word(id, 8, 8), le_word(id, 16, 4))
    }

    /// [`akid_hash`] of a 20-byte id from its words (the last one holds 4 bytes).
    #[inline(always)]
    pub const fn akid_words(w0: u64, w1: u64, w2: u64) -> u64 {
        mix(mix(mix(FNV_OFFSET, w0), w1), w2)
    }

    /// Folds one 64-bit word into a key.
    #[inline(always)]
    pub const fn mix(h: u64, w: u64) -> u64 {
        (h.rotate_left(23) ^ w).wrapping_mul(FNV_PRIME)
    }

    /// `X-Amz-Target: Prefix.Op`.
    #[inline(always)]
    pub const fn key_json(target: u64) -> u64 {
        mix(mix(FNV_OFFSET, KIND_JSON), target)
    }
    /// Query protocol: signing service + `Action=` value.
    #[inline(always)]
    pub const fn key_query(svc: u64, action: u64) -> u64 {
        mix(mix(mix(FNV_OFFSET, KIND_QUERY), svc), action)
    }
    /// REST: signing service, method, path depth, first segment (0 = any) and first query
    /// key (0 = any).
    #[inline(always)]
    pub const fn key_rest(svc: u64, method: u64, depth: u64, seg0: u64, qkey: u64) -> u64 {
        mix(
            mix(
                mix(mix(mix(mix(FNV_OFFSET, KIND_REST), svc), method), depth),
                seg0,
            ),
            qkey,
        )
    }
    /// rpc-v2-cbor: signing service + last path segment (`/service/S/operation/Op`).
    #[inline(always)]
    pub const fn key_cbor(svc: u64, op: u64) -> u64 {
        mix(mix(mix(FNV_OFFSET, KIND_CBOR), svc), op)
    }
}

/// Global enforcement switches (`ENF_CONFIG[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EnforceConfig {
    /// 0: no classification at all.
    pub enabled: u32,
    /// 1: record would-deny, block nothing.
    pub monitor: u32,
    /// 1: accumulate decision time in `ENF_STATS`.
    pub stats: u32,
    /// 1: some rule has no workload selector (classify every process).
    pub global: u32,
    /// Always 0 (the kernel uses it as a value the verifier cannot constant-fold).
    pub zero: u32,
    pub _pad: u32,
}

/// One compiled rule (`ENF_RULES[index]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RuleDef {
    /// `enf::EFFECT_*`; 0 = empty slot.
    pub effect: u8,
    /// `enf::RF_*`.
    pub flags: u8,
    pub res_kind: u8,
    pub res_mode: u8,
    /// Length of the resource name (exact) or prefix, <= `RES_PREFIX_MAX`.
    pub res_len: u32,
    /// uid the caller must have, `u32::MAX` = any.
    pub uid: u32,
    pub _pad: u32,
    /// FNV-1a of the resource name or prefix.
    pub res_hash: u64,
}

/// Rules an action key can trigger, in policy order (`ENF_ACTIONS[key]`). `n == 0` marks a key
/// that is known (an operation without rules) and stops the less specific lookups.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Cands {
    pub n: u32,
    /// `enf::RF_*` of the candidates, or-ed: the kernel fetches the workload and access-key
    /// masks only when some candidate needs them.
    pub flags: u32,
    pub idx: [u16; enf::MAX_CANDS],
    /// `enf::RF_*` of each candidate: the kernel rules out a candidate by the masks it already
    /// holds, without reading the rule (a cold cache line per rule under real workloads).
    pub cflags: [u8; enf::MAX_CANDS],
    /// `enf::RF_*` every candidate has (and-ed): when all need an access key and the signing
    /// key is in no rule (or all need a workload the caller is not in), none can match.
    pub all: u32,
    pub _pad: u32,
}

/// A set of rule indexes (bit `i` = `ENF_RULES[i]`): the rules whose workload selectors
/// include a cgroup or tgid, or whose access keys include a key. One lookup per request
/// answers for every candidate rule, instead of one (id, rule) lookup per candidate.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleMask {
    pub bits: [u64; enf::MAX_RULES as usize / 64],
}

impl Default for RuleMask {
    fn default() -> Self {
        RuleMask {
            bits: [0; enf::MAX_RULES as usize / 64],
        }
    }
}

impl RuleMask {
    pub fn set(&mut self, rule: u32) {
        let i = (rule & (enf::MAX_RULES - 1)) as usize;
        self.bits[i / 64] |= 1 << (i % 64);
    }

    pub fn has(&self, rule: u32) -> bool {
        let i = (rule & (enf::MAX_RULES - 1)) as usize;
        self.bits[i / 64] >> (i % 64) & 1 != 0
    }
}

/// A just-in-time approval grant (`ENF_GRANTS[key] = expiry, boot ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrantKey {
    pub akid: u64,
    pub action: u64,
    /// FNV-1a of the full resource name, 0 when the rule has no resource.
    pub res: u64,
}

/// Request state kept between the head write and the body write of one connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingReq {
    pub akid: u64,
    pub svc: u64,
    /// Action key already known (json), 0 for query bodies.
    pub action: u64,
    pub kind: u32,
    /// Time the head write took in the kernel (`--enforce-stats`), added to the body's.
    pub head_ns: u32,
}

/// One policy decision (`ENF_EVENTS` ring buffer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DecisionEvent {
    pub ts_ns: u64,
    /// `SSL *` of the connection (0 for connect decisions).
    pub conn: u64,
    pub cgroup_id: u64,
    pub action: u64,
    pub akid: u64,
    /// FNV-1a of the full resource name (0 = none).
    pub res: u64,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub rule: u32,
    /// `enf::OUT_*`.
    pub outcome: u8,
    /// `enf::KIND_*` of the request.
    pub kind: u8,
    pub res_kind: u8,
    pub _pad: u8,
    /// Kernel time spent deciding (0 unless stats are on).
    pub decide_ns: u32,
    /// Connect decisions: destination (v4 as v4-mapped v6) and port (host order).
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad2: [u8; 6],
}

/// LPM key data of the endpoint trie: cgroup id (0 = every cgroup) then the IPv6 (or
/// v4-mapped) address. Prefix length = 64 + address prefix bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EndpointKey {
    pub cgroup: [u8; 8],
    pub addr: [u8; 16],
}

/// One endpoint rule as the connect hooks check it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointRef {
    /// Rule id reported in the decision event.
    pub rule: u32,
    /// Index of the endpoint rule (policy order; bit in `ENF_EP_PID`).
    pub index: u32,
    /// uid the caller must have, `u32::MAX` = any.
    pub uid: u32,
    /// Destination ports, all 0 = any port; unused slots are 0.
    pub ports: [u16; enf::MAX_EP_PORTS],
    /// `enf::EFFECT_AUDIT` or `enf::EFFECT_DENY`.
    pub effect: u8,
    /// `enf::EPF_*`.
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// The endpoint rules that cover one trie entry, in policy order: those of the entry's own
/// prefix and of every shorter prefix (of the same cgroup key) that contains it, since the
/// trie returns the longest match only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointVal {
    pub n: u32,
    pub _pad: u32,
    pub refs: [EndpointRef; enf::MAX_EP_CANDS],
}

#[cfg(feature = "user")]
mod user_enforce {
    // SAFETY: plain-old-data, `#[repr(C)]`, explicitly padded.
    unsafe impl aya::Pod for super::EnforceConfig {}
    unsafe impl aya::Pod for super::RuleDef {}
    unsafe impl aya::Pod for super::Cands {}
    unsafe impl aya::Pod for super::RuleMask {}
    unsafe impl aya::Pod for super::PlainEndpoint {}
    unsafe impl aya::Pod for super::GrantKey {}
    unsafe impl aya::Pod for super::PendingReq {}
    unsafe impl aya::Pod for super::EndpointKey {}
    unsafe impl aya::Pod for super::EndpointVal {}
    unsafe impl aya::Pod for super::EndpointRef {}
}

#[cfg(test)]
mod tests {
    use super::{RuleMask, enf};

    #[test]
    fn akid_hash_of_a_key_id_is_what_the_kernel_reads_from_the_credential() {
        // The kernel loads three little-endian words at the key id in the copied head and keeps
        // the low 4 bytes of the third (the 4 after it belong to the `/` and the date).
        let cred = b"AKIAHOOPTEST00000001/20260101/eu-west-1/sts/aws4_request";
        let word = |o: usize| u64::from_le_bytes(cred[o..o + 8].try_into().unwrap_or_default());
        let kernel = enf::akid_words(word(0), word(8), word(16) & 0xffff_ffff);
        assert_eq!(enf::akid_hash(&cred[..enf::AKID_LEN]), kernel);
        assert_ne!(
            enf::akid_hash(b"AKIAHOOPTEST00000001"),
            enf::akid_hash(b"AKIAHOOPTEST00000002")
        );
        // Other lengths (not issued by AWS today) are hashed byte by byte, as the kernel's scan does.
        assert_eq!(enf::akid_hash(b"AKIASHORT"), enf::fnv(b"AKIASHORT"));
    }

    #[test]
    fn rule_mask_holds_each_rule_index_on_its_own() {
        let rules = [0, 1, 63, 64, 511, enf::MAX_RULES - 1];
        let mut m = RuleMask::default();
        for r in rules {
            m.set(r);
        }
        for r in 0..enf::MAX_RULES {
            assert_eq!(m.has(r), rules.contains(&r), "rule {r}");
        }
    }
}
