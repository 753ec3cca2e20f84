//! Choosing where a uprobe traps cheaply.
//!
//! A uprobe replaces an instruction with `int3`; after the handler the kernel must still run
//! the original instruction. It emulates a few (near `call`/`jmp`/`jcc`, `nop`, `push reg`)
//! and single-steps every other one out of line, which costs a debug exception — under
//! virtualisation a VM exit. Measured on this project's VMs: 1.1–1.7 µs per probed call when
//! the first instruction is emulated, 12–15 µs when it is single-stepped.
//!
//! Distribution builds of libssl without frame pointers start `SSL_write` and friends with
//! `sub $n,%rsp`, which is single-stepped. Each public pair (`SSL_write`/`SSL_write_ex`,
//! `SSL_read`/`SSL_read_ex`) is a thin wrapper around one internal worker
//! (`ssl_write_internal(s, buf, num, size_t *written)`), which starts with `push`. When both
//! wrappers call the same worker and the `_ex` wrapper hands its four arguments through
//! unchanged, probing the worker with the `_ex` programs sees exactly the same calls with the
//! same arguments and results, at a tenth of the cost.

use iced_x86::{
    ConditionCode, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory,
    Mnemonic, OpAccess, OpKind, Register,
};
use std::collections::HashSet;

/// Instructions decoded at most while looking for the forwarding call.
const MAX_PREFIX: usize = 16;

/// Does the kernel emulate `ins` when a uprobe sits on it (no single-step)?
fn emulated(ins: &Instruction) -> bool {
    match ins.mnemonic() {
        Mnemonic::Nop => true,
        Mnemonic::Push => ins.op0_kind() == OpKind::Register,
        Mnemonic::Call | Mnemonic::Jmp => ins.op0_kind() == OpKind::NearBranch64,
        _ => ins.is_jcc_short_or_near(),
    }
}

/// Where a probe on the function at `ip` traps cheaply: the first instruction the kernel
/// emulates, if only instructions that change nothing but flags come before it (`endbr64`,
/// `cmp`/`test`). Registers, memory and the stack are untouched up to there, so entry arguments
/// and the return address are still in place. (Not for Go functions, whose stack check can
/// restart them: see [`go_entry_site`].)
pub fn cheap_site(code: &[u8], ip: u64) -> Option<u64> {
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    for _ in 0..3 {
        if !d.can_decode() {
            return None;
        }
        d.decode_out(&mut ins);
        if ins.is_invalid() {
            return None;
        }
        if emulated(&ins) {
            return Some(ins.ip());
        }
        let flags_only = matches!(
            ins.mnemonic(),
            Mnemonic::Endbr64 | Mnemonic::Cmp | Mnemonic::Test
        );
        if !flags_only {
            return None;
        }
    }
    None
}

/// Target of the first direct call, following straight-line code from `ip`. With
/// `keep_args`, only if nothing before the call writes the first four argument registers
/// (rdi, rsi, rdx, rcx) — the callee then receives the caller's own arguments.
pub fn first_call(code: &[u8], ip: u64, keep_args: bool) -> Option<u64> {
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let args = [Register::RDI, Register::RSI, Register::RDX, Register::RCX];
    let mut ins = Instruction::default();
    for _ in 0..MAX_PREFIX {
        if !d.can_decode() {
            return None;
        }
        d.decode_out(&mut ins);
        if ins.is_invalid() {
            return None;
        }
        if ins.mnemonic() == Mnemonic::Call && ins.op0_kind() == OpKind::NearBranch64 {
            return Some(ins.near_branch_target());
        }
        if keep_args {
            if ins.flow_control() != FlowControl::Next {
                return None;
            }
            let writes = info.info(&ins).used_registers().iter().any(|u| {
                args.contains(&u.register().full_register())
                    && !matches!(u.access(), OpAccess::Read | OpAccess::CondRead)
            });
            if writes {
                return None;
            }
        }
    }
    None
}

/// The probe site in the worker both wrappers of one direction call, when probing it is
/// cheaper and equivalent: `ex` is the `_ex` wrapper's code, `plain` the plain one's (if the file has
/// it), `code_at` reads code at a virtual address.
pub fn shared_worker<'a>(
    ex: (&[u8], u64),
    plain: Option<(&[u8], u64)>,
    code_at: impl Fn(u64) -> Option<&'a [u8]>,
) -> Option<u64> {
    if cheap_site(ex.0, ex.1).is_some() {
        return None; // already cheap where it is
    }
    let worker = first_call(ex.0, ex.1, true)?;
    if let Some((code, ip)) = plain
        && first_call(code, ip, false) != Some(worker)
    {
        return None;
    }
    cheap_site(code_at(worker)?, worker)
}

/// Instructions looked at, from a Go function's entry, for its stack-bound check.
const GO_CHECK_WINDOW: usize = 6;
/// Instructions looked at after the check for an emulated one.
const GO_PROLOGUE_WINDOW: usize = 32;
/// Instructions decoded at most in one function (branch targets).
const MAX_FUNC_INSNS: usize = 1 << 16;

/// Where a Go function's entry probe goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoEntry {
    pub site: u64,
    /// The kernel emulates the instruction there (else it is single-stepped).
    pub emulated: bool,
}

/// Does `ins` write any of `regs` (any width)?
fn writes_any(info: &mut InstructionInfoFactory, ins: &Instruction, regs: &[Register]) -> bool {
    info.info(ins).used_registers().iter().any(|u| {
        regs.contains(&u.register().full_register())
            && !matches!(u.access(), OpAccess::Read | OpAccess::CondRead)
    })
}

/// Is `ins` Go's stack-bound comparison `cmp 0x10(%r14),reg` (g.stackguard0; the register ABI
/// keeps `g` in r14)?
fn is_stackguard_cmp(ins: &Instruction) -> bool {
    ins.mnemonic() == Mnemonic::Cmp
        && (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory)
        && ins.memory_base() == Register::R14
        && ins.memory_index() == Register::None
        && ins.memory_displacement64() == 0x10
}

/// The entry probe site of a Go (register ABI) function whose whole code is `code` at `ip`.
///
/// A Go function starts by comparing the stack pointer (or `lea -N(%rsp),%r12` for larger
/// frames) with `g.stackguard0` and branches (`jbe`) to a stub that calls `runtime.morestack`
/// and jumps back to the function's first instruction. A probe on any instruction up to that
/// branch therefore fires twice for one call whenever the stack grows. The site returned is
/// past the branch, on straight-line code that only runs once per call:
/// - the first instruction the kernel emulates (Go >= 1.21: `push %rbp`; Go 1.19: the `jmp` or
///   `nop` a few instructions later), provided nothing on the way writes a register of `keep`
///   (the arguments the probe reads; moves to the stack and frame setup are fine) and no
///   branch of the function lands on the way (the site must not be inside a loop);
/// - else the instruction right after the branch (single-stepped, but still once per call).
///
/// `None` when the prologue is not that shape (no stack check: `NOSPLIT` functions run their
/// entry once per call) or the branch does not lead back to the entry.
pub fn go_entry_site(code: &[u8], ip: u64, keep: &[Register]) -> Option<GoEntry> {
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut insns = Vec::new();
    while d.can_decode() && insns.len() < MAX_FUNC_INSNS {
        let ins = d.decode();
        if ins.is_invalid() {
            break;
        }
        insns.push(ins);
    }
    let check = insns
        .iter()
        .take(GO_CHECK_WINDOW)
        .position(|i| i.is_jcc_short_or_near() && i.condition_code() == ConditionCode::be)?;
    if check == 0 || !is_stackguard_cmp(&insns[check - 1]) {
        return None;
    }
    // The branch goes to the morestack stub, which ends in a jump back to the entry.
    let stub = insns[check].near_branch_target();
    let at = insns.iter().position(|i| i.ip() == stub)?;
    let back_to_entry = insns[at..].iter().take(GO_PROLOGUE_WINDOW).any(|i| {
        i.mnemonic() == Mnemonic::Jmp
            && i.op0_kind() == OpKind::NearBranch64
            && i.near_branch_target() == ip
    });
    if !back_to_entry {
        return None;
    }
    let targets: HashSet<u64> = insns
        .iter()
        .filter(|i| {
            matches!(
                i.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            ) && i.flow_control() != FlowControl::Call
        })
        .map(|i| i.near_branch_target())
        .collect();
    let after = insns.get(check + 1)?;
    if targets.contains(&after.ip()) {
        return None;
    }
    let fallback = GoEntry {
        site: after.ip(),
        emulated: emulated(after),
    };
    let mut info = InstructionInfoFactory::new();
    for (n, ins) in insns[check + 1..]
        .iter()
        .take(GO_PROLOGUE_WINDOW)
        .enumerate()
    {
        if n > 0 && targets.contains(&ins.ip()) {
            break;
        }
        if emulated(ins) {
            return Some(GoEntry {
                site: ins.ip(),
                emulated: true,
            });
        }
        if ins.flow_control() != FlowControl::Next || writes_any(&mut info, ins, keep) {
            break;
        }
    }
    Some(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Debian 12's libssl.so.3 (OpenSSL 3.0): SSL_read_ex, SSL_read, and the worker.
    const READ_EX: &[u8] = &[
        0x48, 0x83, 0xec, 0x08, // sub $8,%rsp
        0xe8, 0xc7, 0xfd, 0xff, 0xff, // call 0x35290
        0x31, 0xd2, // xor %edx,%edx
    ];
    const READ_EX_IP: u64 = 0x354c0;
    const READ: &[u8] = &[
        0x48, 0x83, 0xec, 0x18, // sub $0x18,%rsp
        0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0, // mov %fs:0x28,%rax
        0x48, 0x89, 0x44, 0x24, 0x08, // mov %rax,8(%rsp)
        0x31, 0xc0, // xor %eax,%eax
        0x85, 0xd2, // test %edx,%edx
        0x78, 0x2f, // js
        0x48, 0x89, 0xe1, // mov %rsp,%rcx
        0x48, 0x63, 0xd2, // movslq %edx,%rdx
        0xe8, 0x3d, 0xfe, 0xff, 0xff, // call 0x35290
    ];
    const READ_IP: u64 = 0x35430;
    const WORKER: &[u8] = &[0x41, 0x55, 0x41, 0x54, 0x55, 0x53]; // push r13, r12, rbp, rbx

    #[test]
    fn debian_libssl_read_pair_moves_to_its_worker() {
        assert_eq!(
            cheap_site(READ_EX, READ_EX_IP),
            None,
            "sub is single-stepped"
        );
        assert_eq!(first_call(READ_EX, READ_EX_IP, true), Some(0x35290));
        // SSL_read rewrites rcx and rdx first: it still calls the worker, but not as a
        // pass-through.
        assert_eq!(first_call(READ, READ_IP, true), None);
        assert_eq!(first_call(READ, READ_IP, false), Some(0x35290));
        let code_at = |a: u64| (a == 0x35290).then_some(WORKER);
        assert_eq!(
            shared_worker((READ_EX, READ_EX_IP), Some((READ, READ_IP)), code_at),
            Some(0x35290)
        );
    }

    #[test]
    fn cheap_or_mismatched_wrappers_stay_where_they_are() {
        // node's static OpenSSL starts with push %rbp: already emulated.
        let pushes = [0x55, 0x48, 0x89, 0xe5];
        assert_eq!(cheap_site(&pushes, 0x1000), Some(0x1000));
        // CET builds: endbr64 is single-stepped, the push after it is not.
        let cet = [0xf3, 0x0f, 0x1e, 0xfa, 0x55];
        assert_eq!(cheap_site(&cet, 0x1000), Some(0x1004));
        assert_eq!(
            cheap_site(&[0xf3, 0x0f, 0x1e, 0xfa, 0x31, 0xc0], 0x1000),
            None
        );
        // Go: cmp 0x10(%r14),%rsp; jbe morestack: the jbe is emulated.
        let go = [0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x10, 0, 0, 0];
        assert_eq!(cheap_site(&go, 0x4000), Some(0x4004));
        // A leading register write is not skipped.
        assert_eq!(cheap_site(&[0x48, 0x89, 0xe5, 0x55], 0x1000), None);
        let code_at = |_| Some(WORKER);
        assert_eq!(shared_worker((&pushes, 0x1000), None, code_at), None);
        // The plain wrapper calls something else: no shared worker.
        let other = [0xe8, 0x00, 0x00, 0x00, 0x00]; // call next instruction
        assert_eq!(
            shared_worker((READ_EX, READ_EX_IP), Some((&other, 0x2000)), code_at),
            None
        );
        // A worker that is itself single-stepped gains nothing.
        let sub_first = |_| Some(READ_EX);
        assert_eq!(shared_worker((READ_EX, READ_EX_IP), None, sub_first), None);
        // Writing an argument register before the call breaks the pass-through.
        let clobber = [0x31, 0xf6, 0xe8, 0, 0, 0, 0]; // xor %esi,%esi; call
        assert_eq!(first_call(&clobber, 0x3000, true), None);
    }

    const WRITE_ARGS: [Register; 3] = [Register::RAX, Register::RBX, Register::RCX];

    /// Assembles a Go function: `prologue` (starting with the stack check, whose jbe rel32 is
    /// patched to reach the stub), `body`, then the morestack stub `call rel32; jmp entry`.
    fn go_func(check: &[u8], body: &[u8]) -> Vec<u8> {
        let mut f = check.to_vec();
        f.extend_from_slice(&[0x0f, 0x86, 0, 0, 0, 0]); // jbe stub
        let jbe_end = f.len();
        f.extend_from_slice(body);
        let stub = f.len();
        let rel = (stub - jbe_end) as i32;
        f[jbe_end - 4..jbe_end].copy_from_slice(&rel.to_le_bytes());
        f.extend_from_slice(&[0xe8, 0, 0, 0, 0]); // call morestack
        let back = -((f.len() + 5) as i32);
        f.push(0xe9); // jmp entry
        f.extend_from_slice(&back.to_le_bytes());
        f
    }

    const CMP_RSP: &[u8] = &[0x49, 0x3b, 0x66, 0x10]; // cmp 0x10(%r14),%rsp
    // lea -0x68(%rsp),%r12; cmp 0x10(%r14),%r12
    const LEA_CMP: &[u8] = &[0x4c, 0x8d, 0x64, 0x24, 0x98, 0x4d, 0x3b, 0x66, 0x10];

    #[test]
    fn go_entry_probe_is_past_the_stack_check() {
        // Go >= 1.21: push %rbp right after the check.
        let f = go_func(CMP_RSP, &[0x55, 0x48, 0x89, 0xe5, 0xc3]);
        assert_eq!(
            go_entry_site(&f, 0x1000, &WRITE_ARGS),
            Some(GoEntry {
                site: 0x100a,
                emulated: true
            })
        );
        // Go 1.19, crypto/tls.(*Conn).Write: sub, frame setup and spills, then a jmp.
        let body = [
            0x48, 0x81, 0xec, 0xe8, 0, 0, 0, // sub $0xe8,%rsp
            0x48, 0x89, 0xac, 0x24, 0xe0, 0, 0, 0, // mov %rbp,0xe0(%rsp)
            0x48, 0x8d, 0xac, 0x24, 0xe0, 0, 0, 0, // lea 0xe0(%rsp),%rbp
            0x48, 0x89, 0x9c, 0x24, 0xf8, 0, 0, 0, // mov %rbx,0xf8(%rsp)
            0xeb, 0x00, // jmp next
            0xc3,
        ];
        let f = go_func(LEA_CMP, &body);
        let jmp = 0x1000 + (LEA_CMP.len() + 6 + 31) as u64;
        assert_eq!(
            go_entry_site(&f, 0x1000, &WRITE_ARGS),
            Some(GoEntry {
                site: jmp,
                emulated: true
            })
        );
        // An argument register written before any emulated instruction: the probe stays on
        // the first instruction after the check, single-stepped but once per call.
        let clobber = [0x48, 0x83, 0xec, 0x68, 0x31, 0xc9, 0x90, 0xc3]; // sub; xor %ecx,%ecx; nop
        let after = 0x1000 + (CMP_RSP.len() + 6) as u64;
        assert_eq!(
            go_entry_site(&go_func(CMP_RSP, &clobber), 0x1000, &WRITE_ARGS),
            Some(GoEntry {
                site: after,
                emulated: false
            })
        );
        // The same write does not matter for a probe that reads other registers.
        assert_eq!(
            go_entry_site(&go_func(CMP_RSP, &clobber), 0x1000, &[Register::RAX]),
            Some(GoEntry {
                site: after + 6,
                emulated: true
            })
        );
        // A branch lands between the check and the nop (a loop): not past it.
        let looped = [0x48, 0x83, 0xec, 0x68, 0x90, 0xeb, 0xfd, 0xc3]; // sub; nop; jmp nop
        let f = go_func(CMP_RSP, &looped);
        assert_eq!(
            go_entry_site(&f, 0x1000, &WRITE_ARGS),
            Some(GoEntry {
                site: after,
                emulated: false
            })
        );
        // No stack check (NOSPLIT), or a jbe that is not one: not recognised.
        assert_eq!(go_entry_site(&[0x55, 0xc3], 0x1000, &WRITE_ARGS), None);
        let not_g = [0x48, 0x39, 0xc3, 0x0f, 0x86, 0, 0, 0, 0, 0xc3]; // cmp %rax,%rbx; jbe
        assert_eq!(go_entry_site(&not_g, 0x1000, &WRITE_ARGS), None);
        // A stub that does not jump back to the entry.
        let mut f = go_func(CMP_RSP, &[0x55, 0xc3]);
        let n = f.len();
        f[n - 4..].copy_from_slice(&0i32.to_le_bytes());
        assert_eq!(go_entry_site(&f, 0x1000, &WRITE_ARGS), None);
        // Truncated code never panics.
        let f = go_func(LEA_CMP, &body);
        for cut in 0..f.len() {
            let _ = go_entry_site(&f[..cut], 0x1000, &WRITE_ARGS);
        }
    }
}
