//! hoop's eBPF programs.
//!
//! - `ssl_*` uprobes/uretprobes on OpenSSL's `SSL_write`, `SSL_write_ex`, `SSL_read`,
//!   `SSL_read_ex`: the entry probe remembers the arguments per thread, the return probe copies
//!   the plaintext that the call actually moved (positive result only) into `TLS_EVENTS`.
//! - `plain_http_*` cgroup_skb programs copy plain-HTTP credential endpoint traffic (IMDS,
//!   container credentials) into the same ring, see `plain_http.rs`.
//! - `sched_process_exec` / `sched_process_exit` tracepoints feed the agent's process cache and
//!   its discovery of new TLS libraries.
//!
//! Everything is bounded: at most `MAX_CHUNKS` records of `CHUNK_SIZE` bytes per TLS call; a
//! record that does not fit in the ring buffer is counted in `COUNTERS`, never silently lost.
#![no_std]
#![no_main]

mod enforce;
mod go_tls;
mod plain_http;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user},
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use aya_log_ebpf::debug;
use hoop_common::{
    CHUNK_SIZE, ConnId, DIR_READ, DIR_WRITE, FLAG_SKIPPED, MAX_CHUNKS, PROC_EXEC, PROC_EXIT,
    PROC_FILENAME_LEN, ProcEvent, SRC_OPENSSL, TLS_HEADER_LEN, TlsEvent, TracepointOffsets,
    counter,
};

/// Plaintext records. The agent may resize it at load time (`--ring-buffer-bytes`).
#[map]
pub(crate) static TLS_EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Process exec/exit events.
#[map]
static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Per-CPU loss and error counters, see `hoop_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Scratch space to assemble one record (too big for the 512-byte BPF stack).
#[map]
static SCRATCH: PerCpuArray<TlsEvent> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for a process event.
#[map]
static PROC_SCRATCH: PerCpuArray<ProcEvent> = PerCpuArray::with_max_entries(1, 0);

/// Tracepoint field offsets, written by the agent from tracefs before attaching.
#[map]
static TP_OFFSETS: Array<TracepointOffsets> = Array::with_max_entries(1, 0);

/// Arguments of an in-flight TLS call, keyed by pid_tgid.
#[repr(C)]
#[derive(Clone, Copy)]
struct CallArgs {
    ssl: u64,
    buf: u64,
    /// `size_t *` out-parameter of the `_ex` variants, 0 for the plain ones.
    len_out: u64,
}

/// Connections the agent will never report (server side of HTTPS on this host): their
/// plaintext is not copied. Filled by the agent, cleared by the `SSL_free` probe.
#[map]
static MUTED_CONNS: LruHashMap<ConnId, u8> = LruHashMap::with_max_entries(65536, 0);

#[map]
static WRITE_ARGS: HashMap<u64, CallArgs> = HashMap::with_max_entries(16384, 0);

#[map]
static READ_ARGS: HashMap<u64, CallArgs> = HashMap::with_max_entries(16384, 0);

#[inline(always)]
pub(crate) fn count(index: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *c += n };
    }
}

#[inline(always)]
fn stash(ctx: &ProbeContext, map: &HashMap<u64, CallArgs>, ex: bool) {
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    let len_out = if ex {
        ctx.arg::<u64>(3).unwrap_or(0)
    } else {
        0
    };
    let args = CallArgs { ssl, buf, len_out };
    let _ = map.insert(&bpf_get_current_pid_tgid(), &args, 0);
}

/// Return probe body: look up the stashed arguments and emit what the call moved.
#[inline(always)]
fn finish(ctx: &RetProbeContext, map: &HashMap<u64, CallArgs>, ex: bool, direction: u8) {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(args) = (unsafe { map.get(&id) }).copied() else {
        return;
    };
    let _ = map.remove(&id);
    let muted = ConnId {
        tgid: (id >> 32) as u32,
        _pad: 0,
        conn: args.ssl,
    };
    // SAFETY: presence check only.
    if unsafe { MUTED_CONNS.get(&muted) }.is_some() {
        return;
    }
    let ret: i64 = ctx.ret::<i64>();
    let moved: u64 = if ex {
        // SSL_*_ex: 1 on success, bytes in *len_out (the internal worker these programs may
        // be attached to instead returns > 0).
        if ret as i32 <= 0 || args.len_out == 0 {
            return;
        }
        // SAFETY: reading user memory through the helper, which checks the address.
        match unsafe { read_user_u64(args.len_out) } {
            Some(n) => n,
            None => return,
        }
    } else {
        // SSL_write/SSL_read return an int: positive = bytes moved.
        let r = ret as i32;
        if r <= 0 {
            return;
        }
        r as u64
    };
    if moved == 0 {
        return;
    }
    emit(ctx, &args, moved, direction, id);
}

#[inline(always)]
unsafe fn read_user_u64(addr: u64) -> Option<u64> {
    let mut v: u64 = 0;
    let r = unsafe {
        bpf_probe_read_user(
            (&mut v as *mut u64).cast(),
            8,
            addr as *const core::ffi::c_void,
        )
    };
    (r == 0).then_some(v)
}

#[inline(always)]
fn emit<C: EbpfContext>(ctx: &C, args: &CallArgs, moved: u64, direction: u8, id: u64) {
    emit_from(ctx, args.ssl, args.buf, moved, direction, id, SRC_OPENSSL);
}

/// Copies `moved` bytes at `buf` into `TLS_EVENTS` records for connection `conn` (shared by the
/// OpenSSL and Go probes).
#[inline(always)]
pub(crate) fn emit_from<C: EbpfContext>(
    ctx: &C,
    conn: u64,
    buf: u64,
    moved: u64,
    direction: u8,
    id: u64,
    source: u8,
) {
    let Some(ev) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, exclusively ours for the duration of this program.
    let ev = unsafe { &mut *ev };
    let uid_gid = bpf_get_current_uid_gid();
    let h = &mut ev.header;
    h.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    h.conn = conn;
    h.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    h.tgid = (id >> 32) as u32;
    h.tid = id as u32;
    h.uid = uid_gid as u32;
    h.full_len = if moved > u32::MAX as u64 {
        u32::MAX
    } else {
        moved as u32
    };
    h.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    h.direction = direction;
    h.source = source;

    let total = moved;
    // A call longer than all records together keeps its head and its tail: framing (HTTP
    // heads, chunk sizes, trailers) lives at the edges, the middle is payload.
    let skip_middle = total > (MAX_CHUNKS * CHUNK_SIZE) as u64;
    for i in 0..MAX_CHUNKS {
        let tail = skip_middle && i == MAX_CHUNKS - 1;
        let offset = if tail {
            total - CHUNK_SIZE as u64
        } else {
            (i * CHUNK_SIZE) as u64
        };
        if offset >= total {
            break;
        }
        let rest = total - offset;
        let mut len = if rest > CHUNK_SIZE as u64 {
            CHUNK_SIZE as u64
        } else {
            rest
        };
        // Keep the verifier's view of `len` in [0, CHUNK_SIZE].
        len &= (2 * CHUNK_SIZE - 1) as u64;
        if len > CHUNK_SIZE as u64 {
            len = CHUNK_SIZE as u64;
        }
        ev.header.offset = offset as u32;
        ev.header.cap_len = len as u32;
        ev.header.flags = if tail { FLAG_SKIPPED } else { 0 };
        let r = unsafe {
            bpf_probe_read_user(
                ev.data.as_mut_ptr().cast(),
                len as u32,
                (buf + offset) as *const core::ffi::c_void,
            )
        };
        if r != 0 {
            count(counter::READ_ERRORS, 1);
            debug!(ctx, "hoop: user buffer read failed: {}", r);
            return;
        }
        let size = TLS_HEADER_LEN + len as usize;
        // SAFETY: `size` <= size_of::<TlsEvent>() since len <= CHUNK_SIZE.
        let bytes =
            unsafe { core::slice::from_raw_parts((ev as *const TlsEvent).cast::<u8>(), size) };
        if TLS_EVENTS.output(bytes, 0).is_err() {
            count(counter::LOST_RECORDS, 1);
            count(counter::LOST_BYTES, len);
        }
    }
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    stash(&ctx, &WRITE_ARGS, false);
    enforce::on_write(&ctx);
    0
}

/// The end of an `SSL_write*`: the write is recorded, unless enforcement denied it (then
/// `block` recorded it; with a memory BIO its record goes out after the return).
#[inline(always)]
fn write_return(ctx: &RetProbeContext, ex: bool) {
    if enforce::on_write_return() {
        let _ = WRITE_ARGS.remove(&bpf_get_current_pid_tgid());
    } else {
        finish(ctx, &WRITE_ARGS, ex, DIR_WRITE);
    }
}

#[uretprobe]
pub fn ssl_write_ret(ctx: RetProbeContext) -> u32 {
    write_return(&ctx, false);
    0
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    stash(&ctx, &WRITE_ARGS, true);
    enforce::on_write(&ctx);
    0
}

#[uretprobe]
pub fn ssl_write_ex_ret(ctx: RetProbeContext) -> u32 {
    write_return(&ctx, true);
    0
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    stash(&ctx, &READ_ARGS, false);
    0
}

#[uretprobe]
pub fn ssl_read_ret(ctx: RetProbeContext) -> u32 {
    finish(&ctx, &READ_ARGS, false, DIR_READ);
    0
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    stash(&ctx, &READ_ARGS, true);
    0
}

#[uretprobe]
pub fn ssl_read_ex_ret(ctx: RetProbeContext) -> u32 {
    finish(&ctx, &READ_ARGS, true, DIR_READ);
    0
}

/// `SSL_free(ssl)`: the object's address may be reused for a new connection.
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    if let Some(ssl) = ctx.arg::<u64>(0) {
        let key = ConnId {
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            _pad: 0,
            conn: ssl,
        };
        let _ = MUTED_CONNS.remove(&key);
    }
    0
}

#[inline(always)]
fn proc_event(kind: u8) -> Option<&'static mut ProcEvent> {
    let ev = PROC_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, exclusively ours for the duration of this program.
    let ev = unsafe { &mut *ev };
    let id = bpf_get_current_pid_tgid();
    ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.tgid = (id >> 32) as u32;
    ev.tid = id as u32;
    ev.ppid = 0;
    ev.uid = bpf_get_current_uid_gid() as u32;
    ev.kind = kind;
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.filename[0] = 0;
    Some(ev)
}

#[inline(always)]
fn send_proc_event(ev: &ProcEvent) {
    if PROC_EVENTS.output(ev, 0).is_err() {
        count(counter::LOST_PROC_EVENTS, 1);
    }
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let Some(offsets) = TP_OFFSETS.get(0) else {
        return 0;
    };
    let Some(ev) = proc_event(PROC_EXEC) else {
        return 0;
    };
    // `__data_loc`: low 16 bits = offset of the string from the record start.
    let loc: u32 = unsafe { ctx.read_at(offsets.exec_filename as usize) }.unwrap_or(0);
    let off = (loc & 0xffff) as usize;
    if off != 0 {
        let src = unsafe { (ctx.as_ptr() as *const u8).add(off) };
        unsafe {
            bpf_probe_read_kernel_str(
                ev.filename.as_mut_ptr().cast(),
                PROC_FILENAME_LEN as u32,
                src.cast(),
            )
        };
    }
    send_proc_event(ev);
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let Some(offsets) = TP_OFFSETS.get(0) else {
        return 0;
    };
    // Thread exits are not process exits; kernels without `group_dead` compare tid to tgid.
    let id = bpf_get_current_pid_tgid();
    if offsets.exit_group_dead != u32::MAX {
        let dead: u8 = unsafe { ctx.read_at(offsets.exit_group_dead as usize) }.unwrap_or(0);
        if dead == 0 {
            return 0;
        }
    } else if (id >> 32) as u32 != id as u32 {
        return 0;
    }
    if let Some(ev) = proc_event(PROC_EXIT) {
        send_proc_event(ev);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
