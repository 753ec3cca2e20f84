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
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};

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
/// emulates, if only instructions that change nothing but flags come before it (`endbr64`, and
/// `cmp`/`test` such as Go's stack-bound check before its `jbe`). Registers, memory and the
/// stack are untouched up to there, so entry arguments and the return address are still in
/// place.
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
}
