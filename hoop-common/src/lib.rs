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

/// Record produced by the Go `crypto/tls` probes (`conn` is the `*tls.Conn`).
pub const SRC_GO: u8 = 1;

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

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding holes the kernel could read.
    unsafe impl aya::Pod for super::TracepointOffsets {}
}

/// Turns a fixed-size, NUL-padded kernel string into a `&str` (lossy on bad UTF-8 is the
/// caller's job; this stops at the first NUL).
pub fn c_str_bytes(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(n) => &b[..n],
        None => b,
    }
}
