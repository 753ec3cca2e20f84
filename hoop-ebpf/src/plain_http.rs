//! Plain-HTTP credential endpoints: the instance metadata service (169.254.169.254,
//! fd00:ec2::254), the ECS task-role endpoint (169.254.170.2) and EKS Pod Identity
//! (169.254.170.23, fd00:ec2::23) hand out AWS keys over unencrypted HTTP, so the TLS probes
//! never see them. `cgroup_skb` ingress/egress programs on the cgroup2 root copy the TCP
//! payload of connections to the endpoints in `PLAIN_ENDPOINTS` into `TLS_EVENTS` (source
//! `SRC_PLAIN`); the agent reassembles the HTTP exchange and learns which principal the keys
//! belong to. The programs never drop a packet.

use crate::{TLS_EVENTS, count};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_ktime_get_boot_ns,
        generated::{bpf_get_socket_cookie, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    },
    macros::{cgroup_skb, map},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::SkBuffContext,
};
use hoop_common::{
    CHUNK_SIZE, DIR_READ, DIR_WRITE, PlainEndpoint, SRC_PLAIN, TLS_HEADER_LEN, TlsEvent, counter,
};

/// Endpoints to copy, written by the agent.
#[map]
static PLAIN_ENDPOINTS: HashMap<PlainEndpoint, u8> = HashMap::with_max_entries(64, 0);

/// Next expected TCP sequence number per (socket cookie, direction): retransmitted bytes are
/// not copied twice.
#[map]
static PLAIN_SEQ: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

#[map]
static PLAIN_SCRATCH: PerCpuArray<TlsEvent> = PerCpuArray::with_max_entries(1, 0);

const TCP: u8 = 6;
const SYN: u8 = 0x02;
const ALLOW: i32 = 1;

#[cgroup_skb]
pub fn plain_http_egress(ctx: SkBuffContext) -> i32 {
    let _ = copy(&ctx, DIR_WRITE);
    ALLOW
}

#[cgroup_skb]
pub fn plain_http_ingress(ctx: SkBuffContext) -> i32 {
    let _ = copy(&ctx, DIR_READ);
    ALLOW
}

/// Copies the payload of one TCP segment when its peer is a watched endpoint (the
/// destination of a write, the source of a read). `None` = not ours or unreadable.
#[inline(always)]
fn copy(ctx: &SkBuffContext, dir: u8) -> Option<()> {
    // cgroup_skb sees the packet from its network header.
    let v: u8 = ctx.load(0).ok()?;
    let mut peer = PlainEndpoint::default();
    let (l4, total, peer_off): (usize, usize, usize) = match v >> 4 {
        4 => {
            if ctx.load::<u8>(9).ok()? != TCP {
                return None;
            }
            let ihl = ((v & 0x0f) as usize) * 4;
            let total = u16::from_be(ctx.load::<u16>(2).ok()?) as usize;
            peer.addr[10] = 0xff;
            peer.addr[11] = 0xff;
            (ihl, total, if dir == DIR_WRITE { 16 } else { 12 })
        }
        6 => {
            // Extension headers are not followed: the endpoints do not use them.
            if ctx.load::<u8>(6).ok()? != TCP {
                return None;
            }
            let plen = u16::from_be(ctx.load::<u16>(4).ok()?) as usize;
            (40, 40 + plen, if dir == DIR_WRITE { 24 } else { 8 })
        }
        _ => return None,
    };
    if v >> 4 == 4 {
        let a: [u8; 4] = ctx.load(peer_off).ok()?;
        peer.addr[12..16].copy_from_slice(&a);
    } else {
        peer.addr = ctx.load(peer_off).ok()?;
    }
    let l4 = l4 & 0xff;
    let ports: [u8; 4] = ctx.load(l4).ok()?;
    peer.port = if dir == DIR_WRITE {
        u16::from_be_bytes([ports[2], ports[3]])
    } else {
        u16::from_be_bytes([ports[0], ports[1]])
    };
    // SAFETY: presence check only.
    unsafe { PLAIN_ENDPOINTS.get(&peer) }?;

    let seq = u32::from_be(ctx.load::<u32>(l4 + 4).ok()?);
    let doff_flags: [u8; 2] = ctx.load(l4 + 12).ok()?;
    // SAFETY: the context is the socket buffer the helper expects.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr().cast()) };
    let key = (cookie << 1) | dir as u64;
    if doff_flags[1] & SYN != 0 {
        let _ = PLAIN_SEQ.insert(&key, &seq.wrapping_add(1), 0);
        return None;
    }
    let mut off = l4 + ((doff_flags[0] >> 4) as usize) * 4;
    if total <= off {
        return None;
    }
    let mut len = (total - off) as u32;
    let mut seq = seq;
    // SAFETY: value copied out.
    if let Some(&next) = unsafe { PLAIN_SEQ.get(&key) } {
        let behind = next.wrapping_sub(seq) as i32;
        if behind > 0 {
            // Retransmission: skip what was already copied.
            if behind as u32 >= len {
                return None;
            }
            off += behind as usize;
            len -= behind as u32;
            seq = next;
        } else if behind < 0 {
            // A gap (segments lost before the hook): the stream is broken, the agent's parser
            // will count it.
            count(counter::LOST_RECORDS, 1);
        }
    }
    let _ = PLAIN_SEQ.insert(&key, &seq.wrapping_add(len), 0);
    emit(ctx, cookie, dir, off as u32, len)
}

#[inline(always)]
fn emit(ctx: &SkBuffContext, cookie: u64, dir: u8, off: u32, full: u32) -> Option<()> {
    let ev = PLAIN_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, exclusively ours for the duration of this program.
    let ev = unsafe { &mut *ev };
    let mut len = full as u64;
    if len > CHUNK_SIZE as u64 {
        len = CHUNK_SIZE as u64;
    }
    // Keep the verifier's view of `len` in [1, CHUNK_SIZE].
    len &= (2 * CHUNK_SIZE - 1) as u64;
    if len == 0 || len > CHUNK_SIZE as u64 {
        return None;
    }
    // SAFETY: `len` <= the scratch buffer; the helper checks the packet bounds.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr().cast(),
            off,
            ev.data.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if r != 0 {
        count(counter::READ_ERRORS, 1);
        return None;
    }
    let h = &mut ev.header;
    h.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    h.conn = cookie;
    // SAFETY: helper on the socket buffer.
    h.cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.as_ptr().cast()) };
    h.tgid = 0;
    h.tid = 0;
    h.uid = ctx.get_socket_uid();
    h.full_len = len as u32;
    h.offset = 0;
    h.cap_len = len as u32;
    h.comm = [0; 16];
    h.direction = dir;
    h.flags = 0;
    h.source = SRC_PLAIN;
    let size = TLS_HEADER_LEN + len as usize;
    // SAFETY: `size` <= size_of::<TlsEvent>() since len <= CHUNK_SIZE.
    let bytes = unsafe { core::slice::from_raw_parts((ev as *const TlsEvent).cast::<u8>(), size) };
    if TLS_EVENTS.output(bytes, 0).is_err() {
        count(counter::LOST_RECORDS, 1);
        count(counter::LOST_BYTES, len);
    }
    Some(())
}
