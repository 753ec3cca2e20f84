//! From ring-buffer records to HTTP exchanges: per-connection reassembly of both directions,
//! request/response pairing, and telling client connections from server ones.

use crate::h2::{H2Conn, Side};
use crate::http::{self, Http1Stream, Kind, Message};
use hoop_common::{
    DIR_READ, DIR_WRITE, FLAG_SKIPPED, SRC_GO, SRC_OPENSSL, TLS_HEADER_LEN, TlsEventHeader,
};
use std::collections::{HashMap, VecDeque};

/// One TLS plaintext record decoded from the ring buffer.
#[derive(Debug)]
pub struct Record<'a> {
    pub header: TlsEventHeader,
    pub data: &'a [u8],
}

/// Why a ring-buffer record was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordError {
    Short,
    BadLength,
    BadDirection,
}

impl<'a> Record<'a> {
    /// Decodes a record; the bytes come from the kernel but are checked anyway.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RecordError> {
        if bytes.len() < TLS_HEADER_LEN {
            return Err(RecordError::Short);
        }
        // SAFETY: TlsEventHeader is plain old data and the length was checked.
        let header: TlsEventHeader =
            unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<TlsEventHeader>()) };
        let cap = header.cap_len as usize;
        if bytes.len() < TLS_HEADER_LEN + cap
            || header.offset as u64 + cap as u64 > header.full_len as u64
        {
            return Err(RecordError::BadLength);
        }
        if header.direction != DIR_READ && header.direction != DIR_WRITE {
            return Err(RecordError::BadDirection);
        }
        Ok(Record {
            header,
            data: &bytes[TLS_HEADER_LEN..TLS_HEADER_LEN + cap],
        })
    }
}

/// A connection is identified by process and library connection object.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnKey {
    pub tgid: u32,
    pub conn: u64,
}

/// Which side of the TLS connection the process is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Unknown,
    Client,
    /// The process serves HTTPS (an emulator, a web server): nothing it does is a call it made.
    Server,
    /// Not HTTP/1.x (HTTP/2, another protocol): ignored.
    Other,
    /// The client side of an HTTP/2 connection (it wrote the preface): parsed by `h2`.
    Http2,
}

/// What the request's sender looked like when the request was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    pub comm: String,
}

impl Origin {
    /// The sender as the kernel saw it in a record header.
    pub fn of(h: &TlsEventHeader) -> Self {
        Origin {
            tgid: h.tgid,
            tid: h.tid,
            uid: h.uid,
            cgroup_id: h.cgroup_id,
            comm: comm_string(&h.comm),
        }
    }
}

/// A request, paired with its response when one was seen.
#[derive(Debug)]
pub struct Exchange {
    pub key: ConnKey,
    pub origin: Origin,
    /// Boot-time ns of the first request byte and of the last response byte.
    pub request_ts: u64,
    pub response_ts: Option<u64>,
    pub request: Message,
    pub response: Option<Message>,
    /// Which probes captured it (`hoop_common::SRC_*`).
    pub source: u8,
    /// Carried over HTTP/2 (else HTTP/1.x).
    pub http2: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CaptureStats {
    pub records: u64,
    pub bytes: u64,
    pub bad_records: u64,
    pub server_records: u64,
    pub non_http_records: u64,
    /// Records missing inside a call (lost in the ring buffer).
    pub gaps: u64,
    /// Payload bytes the kernel skipped in the middle of long calls.
    pub skipped_payload: u64,
    pub unanswered: u64,
    pub garbage_heads: u64,
    pub skipped_bytes: u64,
    pub broken_messages: u64,
    pub connections_evicted: u64,
    /// HTTP/2 connections given up (lost header bytes, bad framing or HPACK).
    pub h2_broken: u64,
    /// Connections ended because their library object's address began a new connection.
    pub reused_addresses: u64,
}

struct Pending {
    source: u8,
    origin: Origin,
    ts: u64,
    msg: Message,
}

struct Conn {
    role: Role,
    requests: Http1Stream,
    responses: Http1Stream,
    pending: VecDeque<Pending>,
    /// Expected offset of the next record of the current call, per direction.
    next_offset: [u32; 2],
    last_ts: u64,
    /// Request bytes of the current call started at this time (first record of a message).
    request_start: Option<(u64, Origin)>,
    counted: crate::http::ParseStats,
    source: u8,
    /// HTTP/2 state once the client preface was seen.
    h2: Option<Box<H2Conn>>,
}

/// Tunables of the reassembler.
#[derive(Clone, Copy, Debug)]
pub struct CaptureConfig {
    /// Body bytes kept per message for classification and parameters.
    pub max_body: usize,
    /// Requests waiting for a response longer than this are emitted without one.
    pub response_timeout_ns: u64,
    /// Connections silent for this long are dropped.
    pub idle_timeout_ns: u64,
    /// Most connections tracked at once (oldest evicted first).
    pub max_connections: usize,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            max_body: 64 * 1024,
            response_timeout_ns: 30_000_000_000,
            idle_timeout_ns: 300_000_000_000,
            max_connections: 65536,
        }
    }
}

/// Reassembles every tracked connection.
pub struct Assembler {
    cfg: CaptureConfig,
    conns: HashMap<ConnKey, Conn>,
    stats: CaptureStats,
    /// Server-side connections found since the last [`Assembler::take_to_mute`].
    to_mute: Vec<ConnKey>,
}

fn comm_string(c: &[u8]) -> String {
    String::from_utf8_lossy(hoop_common::c_str_bytes(c)).into_owned()
}

impl Assembler {
    pub fn new(cfg: CaptureConfig) -> Self {
        Assembler {
            cfg,
            conns: HashMap::new(),
            stats: CaptureStats::default(),
            to_mute: Vec::new(),
        }
    }

    /// Connections the kernel may stop copying (server side, never reported).
    pub fn take_to_mute(&mut self) -> Vec<ConnKey> {
        std::mem::take(&mut self.to_mute)
    }

    pub fn stats(&self) -> CaptureStats {
        self.stats
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Feeds one raw ring-buffer record; finished exchanges are pushed to `out`.
    pub fn push_bytes(&mut self, bytes: &[u8], out: &mut Vec<Exchange>) {
        match Record::parse(bytes) {
            Ok(r) => self.push(&r, out),
            Err(_) => self.stats.bad_records += 1,
        }
    }

    pub fn push(&mut self, r: &Record<'_>, out: &mut Vec<Exchange>) {
        let h = &r.header;
        self.stats.records += 1;
        self.stats.bytes += r.data.len() as u64;
        let key = ConnKey {
            tgid: h.tgid,
            conn: h.conn,
        };
        // The library object's address now carries a new connection: the old one is over.
        if h.direction == DIR_WRITE
            && h.offset == 0
            && self
                .conns
                .get(&key)
                .is_some_and(|c| starts_new_connection(c, h.source, r.data))
        {
            self.stats.reused_addresses += 1;
            self.close_conn(key, out);
        }
        if !self.conns.contains_key(&key) && self.conns.len() >= self.cfg.max_connections {
            self.evict_oldest(out);
        }
        let max_body = self.cfg.max_body;
        let conn = self.conns.entry(key).or_insert_with(|| Conn {
            role: Role::Unknown,
            requests: Http1Stream::new(Kind::Request, max_body),
            responses: Http1Stream::new(Kind::Response, max_body),
            pending: VecDeque::new(),
            next_offset: [0, 0],
            last_ts: h.ts_ns,
            request_start: None,
            counted: Default::default(),
            source: h.source,
            h2: None,
        });
        conn.last_ts = h.ts_ns;
        let dir = h.direction as usize & 1;

        if conn.role == Role::Unknown && h.offset == 0 {
            conn.role = detect_role(h.direction, r.data);
            // The kernel can stop copying this connection: only OpenSSL objects, whose
            // `SSL_free` unmutes a reused address (Go has no such hook).
            if conn.role == Role::Server && h.source == SRC_OPENSSL {
                self.to_mute.push(key);
            }
        }
        match conn.role {
            Role::Server => {
                self.stats.server_records += 1;
                return;
            }
            Role::Other => {
                self.stats.non_http_records += 1;
                return;
            }
            Role::Http2 => {
                let h2 = conn
                    .h2
                    .get_or_insert_with(|| Box::new(H2Conn::new(key, h.source, max_body)));
                let side = if h.direction == DIR_WRITE {
                    Side::Client
                } else {
                    Side::Server
                };
                if h.offset != conn.next_offset[dir] && h.offset > 0 {
                    let missing = h.offset.saturating_sub(conn.next_offset[dir]);
                    if h.flags & FLAG_SKIPPED != 0 {
                        self.stats.skipped_payload += missing as u64;
                    } else {
                        self.stats.gaps += 1;
                    }
                    h2.gap(side, missing.max(1) as u64, out);
                }
                let was_dead = h2.is_dead();
                h2.feed(side, h, r.data, out);
                if !was_dead && h2.is_dead() {
                    self.stats.h2_broken += 1;
                }
                let end = h.offset + h.cap_len;
                conn.next_offset[dir] = if end >= h.full_len { 0 } else { end };
                return;
            }
            _ => {}
        }

        let mut msgs = Vec::new();
        let stream = if h.direction == DIR_WRITE {
            &mut conn.requests
        } else {
            &mut conn.responses
        };
        // A record that does not continue the current call: either the kernel skipped the
        // middle of a long call on purpose, or records were lost.
        if h.offset != conn.next_offset[dir] && h.offset > 0 {
            let missing = h.offset.saturating_sub(conn.next_offset[dir]);
            if h.flags & FLAG_SKIPPED != 0 {
                self.stats.skipped_payload += missing as u64;
            } else {
                self.stats.gaps += 1;
            }
            stream.gap(missing.max(1) as u64, &mut msgs);
        }
        if h.direction == DIR_WRITE && conn.requests.idle() && conn.request_start.is_none() {
            conn.request_start = Some((h.ts_ns, Origin::of(h)));
        }
        let stream = if h.direction == DIR_WRITE {
            &mut conn.requests
        } else {
            &mut conn.responses
        };
        stream.feed(r.data, &mut msgs);
        let end = h.offset + h.cap_len;
        conn.next_offset[dir] = if end >= h.full_len { 0 } else { end };

        for msg in msgs {
            match msg.kind {
                Kind::Request => {
                    let (ts, origin) = conn
                        .request_start
                        .take()
                        .unwrap_or_else(|| (h.ts_ns, Origin::of(h)));
                    conn.responses
                        .expect_response(msg.head.method.eq_ignore_ascii_case("HEAD"));
                    conn.pending.push_back(Pending {
                        source: conn.source,
                        origin,
                        ts,
                        msg,
                    });
                    if conn.role == Role::Unknown {
                        conn.role = Role::Client;
                    }
                }
                Kind::Response => {
                    if msg.head.status < 200 {
                        continue; // 100 Continue and other interim responses
                    }
                    if let Some(p) = conn.pending.pop_front() {
                        out.push(Exchange {
                            key,
                            origin: p.origin,
                            request_ts: p.ts,
                            response_ts: Some(h.ts_ns),
                            request: p.msg,
                            response: Some(msg),
                            source: p.source,
                            http2: false,
                        });
                    }
                }
            }
        }
        // A request is complete but its head started the next one: remember when.
        if h.direction == DIR_WRITE && !conn.requests.idle() && conn.request_start.is_none() {
            conn.request_start = Some((h.ts_ns, Origin::of(h)));
        }
        Self::account(&mut self.stats, conn);
    }

    fn account(stats: &mut CaptureStats, conn: &mut Conn) {
        let now = add(conn.requests.stats(), conn.responses.stats());
        stats.garbage_heads += now.garbage_heads - conn.counted.garbage_heads;
        stats.skipped_bytes += now.skipped_bytes - conn.counted.skipped_bytes;
        stats.broken_messages += now.broken_messages - conn.counted.broken_messages;
        conn.counted = now;
    }

    /// Emits requests that waited too long for a response and drops idle connections.
    /// `now` is boot-time ns.
    pub fn expire(&mut self, now: u64, out: &mut Vec<Exchange>) {
        let cfg = self.cfg;
        let mut dead = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            while conn
                .pending
                .front()
                .is_some_and(|p| now.saturating_sub(p.ts) > cfg.response_timeout_ns)
            {
                let Some(p) = conn.pending.pop_front() else {
                    break;
                };
                // A response whose body the application never finished reading still says
                // how the call ended.
                match conn
                    .responses
                    .take_partial()
                    .filter(|m| m.head.status >= 200)
                {
                    Some(msg) => out.push(Exchange {
                        key: *key,
                        origin: p.origin,
                        request_ts: p.ts,
                        response_ts: Some(conn.last_ts),
                        request: p.msg,
                        response: Some(msg),
                        source: p.source,
                        http2: false,
                    }),
                    None => {
                        self.stats.unanswered += 1;
                        out.push(unanswered(*key, p));
                    }
                }
            }
            if let Some(h2) = conn.h2.as_mut() {
                h2.expire(now, cfg.response_timeout_ns, out);
            }
            if now.saturating_sub(conn.last_ts) > cfg.idle_timeout_ns {
                dead.push(*key);
            }
        }
        for key in dead {
            self.close_conn(key, out);
        }
    }

    /// The process exited: its connections are over, flush what is pending.
    pub fn process_exited(&mut self, tgid: u32, out: &mut Vec<Exchange>) {
        let keys: Vec<ConnKey> = self
            .conns
            .keys()
            .filter(|k| k.tgid == tgid)
            .copied()
            .collect();
        for key in keys {
            self.close_conn(key, out);
        }
    }

    /// Emits everything still pending (agent shutdown).
    pub fn flush_all(&mut self, out: &mut Vec<Exchange>) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.close_conn(key, out);
        }
    }

    fn close_conn(&mut self, key: ConnKey, out: &mut Vec<Exchange>) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        if let Some(h2) = conn.h2.as_mut() {
            h2.close(out);
        }
        let mut msgs = Vec::new();
        conn.responses.close(&mut msgs);
        if msgs.is_empty() {
            msgs.extend(conn.responses.take_partial());
        }
        for msg in msgs {
            if msg.head.status >= 200
                && let Some(p) = conn.pending.pop_front()
            {
                out.push(Exchange {
                    key,
                    origin: p.origin,
                    request_ts: p.ts,
                    response_ts: Some(conn.last_ts),
                    request: p.msg,
                    response: Some(msg),
                    source: p.source,
                    http2: false,
                });
            }
        }
        for p in conn.pending.drain(..) {
            self.stats.unanswered += 1;
            out.push(unanswered(key, p));
        }
        // A request whose body never came still says what was called: its head was refused
        // in the kernel (the body would have followed in a later write), or the client gave up.
        if let Some(msg) = conn.requests.take_partial()
            && let Some((ts, origin)) = conn.request_start.take()
        {
            self.stats.unanswered += 1;
            out.push(unanswered(
                key,
                Pending {
                    source: conn.source,
                    origin,
                    ts,
                    msg,
                },
            ));
        }
    }

    fn evict_oldest(&mut self, out: &mut Vec<Exchange>) {
        if let Some(key) = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.last_ts)
            .map(|(k, _)| *k)
        {
            self.stats.connections_evicted += 1;
            self.close_conn(key, out);
        }
    }
}

fn unanswered(key: ConnKey, p: Pending) -> Exchange {
    Exchange {
        key,
        origin: p.origin,
        request_ts: p.ts,
        response_ts: None,
        request: p.msg,
        response: None,
        source: p.source,
        http2: false,
    }
}

fn add(a: http::ParseStats, b: http::ParseStats) -> http::ParseStats {
    http::ParseStats {
        garbage_heads: a.garbage_heads + b.garbage_heads,
        skipped_bytes: a.skipped_bytes + b.skipped_bytes,
        broken_messages: a.broken_messages + b.broken_messages,
    }
}

/// Does a write (at the start of a call) on an already tracked connection begin a new one?
///
/// Connections are keyed by the library's connection object (`SSL *`, `*tls.Conn`), whose
/// address is reused once the old object is freed; Go has no hook for that (and OpenSSL's
/// `SSL_free` probe only unmutes server connections in the kernel). A new connection shows
/// itself by its first write:
/// - the HTTP/2 client preface, which is only ever the first bytes of a connection;
/// - a request line where the old connection did not speak HTTP/1.x (HTTP/2, a server, another
///   protocol);
/// - from Go, a request line while the previous request is still unanswered: Go's HTTP/1.1
///   client never pipelines, so that request's connection ended without a response. (Other
///   clients may pipeline: for them the old connection goes on.)
fn starts_new_connection(conn: &Conn, source: u8, data: &[u8]) -> bool {
    if data.starts_with(crate::h2::PREFACE) {
        return conn.role != Role::Unknown;
    }
    // A whole method token and more: an h2 frame cannot begin like that (its 3-byte length
    // would exceed any frame size a client allows).
    if data.len() < 8 || !http::looks_like_request(data) {
        return false;
    }
    match conn.role {
        Role::Unknown => false,
        Role::Http2 | Role::Server | Role::Other => true,
        Role::Client => {
            source == SRC_GO
                && !conn.pending.is_empty()
                && conn.requests.idle()
                && conn.request_start.is_none()
        }
    }
}

/// The first bytes of a connection tell its role: a client writes requests and reads
/// responses; a server reads requests and writes responses. HTTP/2 starts with its preface.
fn detect_role(direction: u8, data: &[u8]) -> Role {
    if data.starts_with(b"PRI * HTTP/2") {
        // Written: this process is an h2 client. Read: it serves h2.
        return if direction == DIR_WRITE {
            Role::Http2
        } else {
            Role::Server
        };
    }
    match direction {
        DIR_WRITE if http::looks_like_request(data) => Role::Client,
        DIR_WRITE if http::looks_like_response(data) => Role::Server,
        DIR_READ if http::looks_like_request(data) => Role::Server,
        DIR_READ if http::looks_like_response(data) => Role::Client,
        _ => Role::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoop_common::COMM_LEN;

    fn record(tgid: u32, conn: u64, dir: u8, ts: u64, data: &[u8]) -> Vec<u8> {
        record_part(tgid, conn, dir, ts, data, 0, data.len() as u32, 0)
    }

    #[allow(clippy::too_many_arguments)]
    fn record_part(
        tgid: u32,
        conn: u64,
        dir: u8,
        ts: u64,
        data: &[u8],
        offset: u32,
        full: u32,
        flags: u8,
    ) -> Vec<u8> {
        let mut comm = [0u8; COMM_LEN];
        comm[..6].copy_from_slice(b"python");
        let h = TlsEventHeader {
            ts_ns: ts,
            conn,
            cgroup_id: 7,
            tgid,
            tid: tgid + 1,
            uid: 0,
            full_len: full,
            offset,
            cap_len: data.len() as u32,
            comm,
            direction: dir,
            flags,
            source: 0,
            _pad: [0; 5],
        };
        // SAFETY: POD header to bytes.
        let hb = unsafe {
            std::slice::from_raw_parts((&h as *const TlsEventHeader).cast::<u8>(), TLS_HEADER_LEN)
        };
        let mut v = hb.to_vec();
        v.extend_from_slice(data);
        v
    }

    const REQ: &[u8] = b"GET /bucket?list-type=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n<a/>";

    #[test]
    fn pairs_keep_alive_exchanges() {
        let mut a = Assembler::new(CaptureConfig::default());
        let mut out = Vec::new();
        for i in 0..3 {
            a.push_bytes(&record(10, 0xabc, DIR_WRITE, 100 + i, REQ), &mut out);
            for b in RESP.chunks(1) {
                a.push_bytes(&record(10, 0xabc, DIR_READ, 110 + i, b), &mut out);
            }
        }
        assert_eq!(out.len(), 3);
        assert!(
            out.iter()
                .all(|e| e.response.as_ref().is_some_and(|r| r.head.status == 200))
        );
        assert_eq!(out[0].origin.comm, "python");
        assert_eq!(out[0].request_ts, 100);
    }

    #[test]
    fn server_side_is_ignored() {
        let mut a = Assembler::new(CaptureConfig::default());
        let mut out = Vec::new();
        a.push_bytes(&record(20, 1, DIR_READ, 1, REQ), &mut out);
        a.push_bytes(&record(20, 1, DIR_WRITE, 2, RESP), &mut out);
        a.flush_all(&mut out);
        assert!(out.is_empty());
        assert_eq!(a.stats().server_records, 2);
    }

    #[test]
    fn truncated_body_keeps_stream() {
        let mut a = Assembler::new(CaptureConfig::default());
        let mut out = Vec::new();
        let head = b"PUT /b/big HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n";
        a.push_bytes(&record(30, 2, DIR_WRITE, 1, head), &mut out);
        // The kernel copied the head and the tail of a 1 MiB write, skipping the middle.
        let chunk = vec![b'x'; 16384];
        a.push_bytes(
            &record_part(30, 2, DIR_WRITE, 2, &chunk, 0, 1 << 20, 0),
            &mut out,
        );
        a.push_bytes(
            &record_part(
                30,
                2,
                DIR_WRITE,
                2,
                &chunk,
                (1 << 20) - 16384,
                1 << 20,
                FLAG_SKIPPED,
            ),
            &mut out,
        );
        a.push_bytes(&record(30, 2, DIR_READ, 3, RESP), &mut out);
        a.push_bytes(&record(30, 2, DIR_WRITE, 4, REQ), &mut out);
        a.push_bytes(&record(30, 2, DIR_READ, 5, RESP), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].request.body_len, 1 << 20);
        assert!(out[0].request.body_gap);
        assert_eq!(out[1].request.head.target, "/bucket?list-type=2");
        assert_eq!(a.stats().skipped_payload, (1 << 20) - 2 * 16384);
        assert_eq!(a.stats().gaps, 0);
    }

    #[test]
    fn chunked_body_with_skipped_middle_keeps_framing() {
        // Python sends each HTTP chunk of a big upload as one write: size line, data, CRLF.
        let mut a = Assembler::new(CaptureConfig::default());
        let mut out = Vec::new();
        let head = b"PUT /b/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        a.push_bytes(&record(31, 2, DIR_WRITE, 1, head), &mut out);
        let data = vec![b'y'; 200_000];
        let mut write = format!("{:x}\r\n", data.len()).into_bytes();
        write.extend_from_slice(&data);
        write.extend_from_slice(b"\r\n");
        let full = write.len() as u32;
        for i in 0..7u32 {
            let o = (i * 16384) as usize;
            a.push_bytes(
                &record_part(31, 2, DIR_WRITE, 2, &write[o..o + 16384], o as u32, full, 0),
                &mut out,
            );
        }
        let tail = full as usize - 16384;
        a.push_bytes(
            &record_part(
                31,
                2,
                DIR_WRITE,
                2,
                &write[tail..],
                tail as u32,
                full,
                FLAG_SKIPPED,
            ),
            &mut out,
        );
        a.push_bytes(&record(31, 2, DIR_WRITE, 3, b"0\r\n\r\n"), &mut out);
        a.push_bytes(&record(31, 2, DIR_READ, 4, RESP), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].request.body_len, 200_000);
        assert_eq!(a.stats().broken_messages, 0);
    }

    #[test]
    fn request_head_without_its_body_is_emitted_when_the_connection_ends() {
        // A presigned PUT whose head the kernel refused: the body write never happens.
        let head = b"PUT /ro/k2?X-Amz-Credential=AKIAX%2F20260101%2Feu-west-1%2Fs3%2Faws4_request HTTP/1.1\r\nHost: s3.eu-west-1.amazonaws.com\r\nContent-Length: 21\r\n\r\n";
        let mut a = Assembler::new(CaptureConfig::default());
        let mut out = Vec::new();
        a.push_bytes(&record(40, 3, DIR_WRITE, 1, head), &mut out);
        assert!(out.is_empty());
        a.process_exited(40, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].request.head.method, "PUT");
        assert!(out[0].request.head.target.starts_with("/ro/k2?"));
        assert!(out[0].response.is_none());
        assert_eq!(out[0].request_ts, 1);
    }

    #[test]
    fn unanswered_requests_expire() {
        let mut a = Assembler::new(CaptureConfig {
            response_timeout_ns: 10,
            ..Default::default()
        });
        let mut out = Vec::new();
        a.push_bytes(&record(40, 3, DIR_WRITE, 1, REQ), &mut out);
        a.expire(5, &mut out);
        assert!(out.is_empty());
        a.expire(100, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].response.is_none());
    }

    #[test]
    fn response_body_never_read_still_pairs() {
        let mut a = Assembler::new(CaptureConfig {
            response_timeout_ns: 10,
            ..Default::default()
        });
        let mut out = Vec::new();
        a.push_bytes(&record(41, 3, DIR_WRITE, 1, REQ), &mut out);
        // Head and 2 of 1000 body bytes read, then the application stops reading.
        a.push_bytes(
            &record(
                41,
                3,
                DIR_READ,
                2,
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nab",
            ),
            &mut out,
        );
        a.expire(100, &mut out);
        assert_eq!(out.len(), 1);
        let resp = out[0].response.as_ref().expect("partial response kept");
        assert_eq!(resp.head.status, 200);
        assert!(resp.body_gap);
        assert_eq!(a.stats().unanswered, 0);
    }

    #[test]
    fn bad_records_are_counted() {
        let mut a = Assembler::new(CaptureConfig::default());
        let mut out = Vec::new();
        a.push_bytes(&[1, 2, 3], &mut out);
        let mut r = record(1, 1, DIR_WRITE, 1, REQ);
        r.truncate(TLS_HEADER_LEN + 3);
        a.push_bytes(&r, &mut out);
        assert_eq!(a.stats().bad_records, 2);
    }

    #[test]
    fn http2_is_not_parsed_as_http1() {
        let mut a = Assembler::new(CaptureConfig::default());
        let mut out = Vec::new();
        a.push_bytes(
            &record(50, 9, DIR_WRITE, 1, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            &mut out,
        );
        // HTTP/1 text inside the h2 connection (not at the start of a write).
        a.push_bytes(
            &record_part(50, 9, DIR_WRITE, 2, REQ, 7, REQ.len() as u32 + 7, 0),
            &mut out,
        );
        a.flush_all(&mut out);
        assert!(out.is_empty());
    }

    fn go_record(conn: u64, dir: u8, ts: u64, data: &[u8]) -> Vec<u8> {
        let mut r = record(60, conn, dir, ts, data);
        r[std::mem::offset_of!(TlsEventHeader, source)] = SRC_GO;
        r
    }

    /// A Go HTTP/1.1 request whose connection died unanswered, then a new connection at the
    /// same `*tls.Conn` address: the new response belongs to the new request.
    #[test]
    fn go_reused_conn_address_starts_a_new_connection() {
        let mut a = Assembler::new(CaptureConfig::default());
        let mut out = Vec::new();
        let first = b"POST /first HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        a.push_bytes(&go_record(0xc000, DIR_WRITE, 1, first), &mut out);
        a.push_bytes(&go_record(0xc000, DIR_WRITE, 2, REQ), &mut out);
        a.push_bytes(&go_record(0xc000, DIR_READ, 3, RESP), &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].request.head.target, "/first");
        assert!(out[0].response.is_none());
        assert_eq!(out[1].request.head.target, "/bucket?list-type=2");
        assert_eq!(out[1].response.as_ref().map(|r| r.head.status), Some(200));
        assert_eq!(a.stats().reused_addresses, 1);

        // HTTP/1.1 after HTTP/2 at the same address, and HTTP/2 after HTTP/1.1.
        let mut a = Assembler::new(CaptureConfig::default());
        let mut out = Vec::new();
        a.push_bytes(
            &go_record(0xd000, DIR_WRITE, 1, crate::h2::PREFACE),
            &mut out,
        );
        a.push_bytes(&go_record(0xd000, DIR_WRITE, 2, REQ), &mut out);
        a.push_bytes(&go_record(0xd000, DIR_READ, 3, RESP), &mut out);
        assert_eq!(out.len(), 1);
        assert!(!out[0].http2);
        a.push_bytes(
            &go_record(0xd000, DIR_WRITE, 4, crate::h2::PREFACE),
            &mut out,
        );
        a.flush_all(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(a.stats().reused_addresses, 2);
        assert_eq!(a.stats().h2_broken, 0);
    }

    /// Keep-alive and pipelined requests on one live connection are not mistaken for new
    /// connections.
    #[test]
    fn keep_alive_and_pipelining_stay_one_connection() {
        let mut a = Assembler::new(CaptureConfig::default());
        let mut out = Vec::new();
        for i in 0..3 {
            a.push_bytes(&go_record(0xe000, DIR_WRITE, 10 * i, REQ), &mut out);
            a.push_bytes(&go_record(0xe000, DIR_READ, 10 * i + 1, RESP), &mut out);
        }
        // An OpenSSL client pipelining two requests.
        a.push_bytes(&record(61, 0xf000, DIR_WRITE, 1, REQ), &mut out);
        a.push_bytes(&record(61, 0xf000, DIR_WRITE, 2, REQ), &mut out);
        a.push_bytes(&record(61, 0xf000, DIR_READ, 3, RESP), &mut out);
        a.push_bytes(&record(61, 0xf000, DIR_READ, 4, RESP), &mut out);
        assert_eq!(out.len(), 5);
        assert!(out.iter().all(|e| e.response.is_some()));
        assert_eq!(a.stats().reused_addresses, 0);
    }
}
