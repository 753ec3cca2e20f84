//! Go `crypto/tls` probes (amd64, register ABI: Go >= 1.17).
//!
//! - `go_tls_write` near the entry of `crypto/tls.(*Conn).Write`, past its stack-growth check
//!   (the agent picks an instruction that runs once per call and keeps the argument registers):
//!   the plaintext is ready there (rax = `*Conn`, rbx = buffer, rcx = length), so it is emitted
//!   at once.
//! - `go_tls_read`, placed the same way in `crypto/tls.(*Conn).Read`, remembers (`*Conn`, buffer) per
//!   goroutine: the `g` pointer, which the register ABI keeps in r14. A goroutine may block in
//!   Read and resume on another thread, so the thread id would not do.
//! - `go_tls_read_ret` on every RET instruction of Read (found by the agent's disassembler;
//!   return probes would crash Go, whose runtime moves goroutine stacks): rax = bytes read.
//!
//! Records carry `source: SRC_GO` and `conn` = the `*tls.Conn`.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};
use hoop_common::{DIR_READ, DIR_WRITE, SRC_GO};

/// A Read in flight, keyed by (process, goroutine).
#[repr(C)]
#[derive(Clone, Copy)]
struct GoRead {
    conn: u64,
    buf: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct GoroutineKey {
    tgid: u64,
    g: u64,
}

/// LRU: a Read that never returns (its process died) is eventually forgotten.
#[map]
static GO_READ_ARGS: LruHashMap<GoroutineKey, GoRead> = LruHashMap::with_max_entries(65536, 0);

#[inline(always)]
fn regs(ctx: &ProbeContext) -> Option<&aya_ebpf::bindings::pt_regs> {
    // SAFETY: the context of a uprobe is the task's saved user registers.
    unsafe { ctx.regs.as_ref() }
}

#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    let Some(r) = regs(&ctx) else {
        return 0;
    };
    let (conn, buf, len) = (r.rax, r.rbx, r.rcx);
    // A Go slice length is an int: never negative, never absurd.
    if len == 0 || len > 0x7fff_ffff || buf == 0 {
        return 0;
    }
    crate::emit_from(
        &ctx,
        conn,
        buf,
        len,
        DIR_WRITE,
        bpf_get_current_pid_tgid(),
        SRC_GO,
    );
    0
}

#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    let Some(r) = regs(&ctx) else {
        return 0;
    };
    let key = GoroutineKey {
        tgid: bpf_get_current_pid_tgid() >> 32,
        g: r.r14,
    };
    let args = GoRead {
        conn: r.rax,
        buf: r.rbx,
    };
    let _ = GO_READ_ARGS.insert(&key, &args, 0);
    0
}

#[uprobe]
pub fn go_tls_read_ret(ctx: ProbeContext) -> u32 {
    let Some(r) = regs(&ctx) else {
        return 0;
    };
    let id = bpf_get_current_pid_tgid();
    let key = GoroutineKey {
        tgid: id >> 32,
        g: r.r14,
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(args) = (unsafe { GO_READ_ARGS.get(&key) }).copied() else {
        return 0;
    };
    let _ = GO_READ_ARGS.remove(&key);
    let n = r.rax as i64;
    if n <= 0 || n > 0x7fff_ffff {
        return 0;
    }
    crate::emit_from(&ctx, args.conn, args.buf, n as u64, DIR_READ, id, SRC_GO);
    0
}
