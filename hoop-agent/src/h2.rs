//! HTTP/2 client connections in user space: frame parsing and HPACK decoding per direction,
//! streams paired into request/response [`Exchange`]s of the same shape HTTP/1.1 produces, so
//! an h2 call becomes an AWS call record exactly like an HTTP/1.1 one.
//!
//! Only the client side is parsed: the process writes the client's frames (preface, SETTINGS,
//! HEADERS, DATA) and reads the server's. HPACK is stateful per direction (the dynamic table
//! spans header blocks), so a lost record inside a header-carrying frame makes the rest of that
//! direction undecodable: the connection is then given up and counted, never guessed at. A gap
//! that falls entirely inside a DATA frame (the kernel skipping the middle of a large write)
//! only marks that body as incomplete.
//!
//! Every byte here comes from a process on the host: nothing panics, every buffer is bounded.

use crate::capture::{ConnKey, Exchange, Origin};
use crate::http::{Head, Kind, Message};
use hoop_common::TlsEventHeader;
use std::collections::HashMap;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Largest non-DATA frame payload buffered (header blocks, settings, ...).
const MAX_CONTROL_PAYLOAD: usize = 1 << 20;
/// Largest header block (HEADERS + CONTINUATIONs) accepted.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Most streams tracked at once per connection.
const MAX_STREAMS: usize = 1024;

/// Counters of an h2 connection's parsing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct H2Stats {
    /// Frames parsed, both directions.
    pub frames: u64,
    /// Connections given up (bad framing, HPACK error, lost header bytes).
    pub broken: u64,
    /// Streams dropped because too many were open.
    pub streams_dropped: u64,
    /// Requests emitted without a response.
    pub unanswered: u64,
}

#[derive(Default)]
struct MsgBuilder {
    head: Head,
    body: Vec<u8>,
    body_len: u64,
    body_gap: bool,
    /// Headers seen (the message has started).
    started: bool,
}

impl MsgBuilder {
    fn finish(self, kind: Kind) -> Message {
        Message {
            kind,
            head: self.head,
            body: self.body,
            body_len: self.body_len,
            body_gap: self.body_gap,
        }
    }
}

struct Stream {
    origin: Origin,
    request_ts: u64,
    request: MsgBuilder,
    response: MsgBuilder,
    response_ts: u64,
}

/// A frame being received.
enum Frame {
    /// Waiting for (the rest of) a frame header.
    Header,
    /// A DATA frame's payload, consumed as it arrives.
    Data {
        stream: u32,
        end_stream: bool,
        padded: bool,
        /// Payload bytes left, padding included.
        left: u32,
        /// Pad length once known.
        pad: Option<u32>,
    },
    /// Any other frame: payload buffered whole.
    Control {
        kind: u8,
        flags: u8,
        stream: u32,
        len: u32,
    },
}

struct Direction {
    /// Bytes of the connection preface still to skip (client direction only).
    preface_left: usize,
    buf: Vec<u8>,
    frame: Frame,
    hpack: loona_hpack::Decoder<'static>,
    /// A header block being collected across CONTINUATION frames:
    /// (stream, end_stream, push_promise, bytes).
    block: Option<(u32, bool, bool, Vec<u8>)>,
}

impl Direction {
    fn new(preface: usize) -> Self {
        Direction {
            preface_left: preface,
            buf: Vec::new(),
            frame: Frame::Header,
            hpack: loona_hpack::Decoder::new(),
            block: None,
        }
    }
}

/// Which side of the connection wrote the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Written by the client (the probed process's writes).
    Client,
    /// Written by the server (the probed process's reads).
    Server,
}

/// One client-side HTTP/2 connection.
pub struct H2Conn {
    key: ConnKey,
    source: u8,
    max_body: usize,
    client: Direction,
    server: Direction,
    streams: HashMap<u32, Stream>,
    dead: bool,
    stats: H2Stats,
}

impl H2Conn {
    pub fn new(key: ConnKey, source: u8, max_body: usize) -> Self {
        H2Conn {
            key,
            source,
            max_body,
            client: Direction::new(PREFACE.len()),
            server: Direction::new(0),
            streams: HashMap::new(),
            dead: false,
            stats: H2Stats::default(),
        }
    }

    pub fn stats(&self) -> H2Stats {
        self.stats
    }

    /// The connection could not be followed any more.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Feeds bytes of one direction; finished exchanges go to `out`.
    pub fn feed(
        &mut self,
        side: Side,
        h: &TlsEventHeader,
        mut data: &[u8],
        out: &mut Vec<Exchange>,
    ) {
        if self.dead {
            return;
        }
        let dir = match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        };
        if dir.preface_left > 0 {
            let done = PREFACE.len() - dir.preface_left;
            let n = dir.preface_left.min(data.len());
            if data[..n] != PREFACE[done..done + n] {
                self.kill(out);
                return;
            }
            dir.preface_left -= n;
            data = &data[n..];
        }
        while !data.is_empty() && !self.dead {
            let dir = match side {
                Side::Client => &mut self.client,
                Side::Server => &mut self.server,
            };
            match dir.frame {
                Frame::Header => {
                    let need = FRAME_HEADER_LEN - dir.buf.len();
                    let n = need.min(data.len());
                    dir.buf.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if dir.buf.len() < FRAME_HEADER_LEN {
                        return;
                    }
                    let b = &dir.buf;
                    let len = u32::from_be_bytes([0, b[0], b[1], b[2]]);
                    let kind = b[3];
                    let flags = b[4];
                    let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
                    dir.buf.clear();
                    self.stats.frames += 1;
                    if kind == DATA {
                        dir.frame = Frame::Data {
                            stream,
                            end_stream: flags & FLAG_END_STREAM != 0,
                            padded: flags & FLAG_PADDED != 0,
                            left: len,
                            pad: None,
                        };
                        if len == 0 {
                            self.end_data(side, h, out);
                        }
                    } else {
                        if len as usize > MAX_CONTROL_PAYLOAD {
                            self.kill(out);
                            return;
                        }
                        dir.frame = Frame::Control {
                            kind,
                            flags,
                            stream,
                            len,
                        };
                        if len == 0 {
                            self.control_frame(side, h, out);
                        }
                    }
                }
                Frame::Data {
                    stream,
                    padded,
                    ref mut left,
                    ref mut pad,
                    ..
                } => {
                    if padded && pad.is_none() {
                        let p = u32::from(data[0]);
                        data = &data[1..];
                        *left -= 1;
                        if p > *left {
                            self.kill(out);
                            return;
                        }
                        *pad = Some(p);
                        if *left == 0 {
                            self.end_data(side, h, out);
                        }
                        continue;
                    }
                    let pad_len = pad.unwrap_or(0);
                    let payload_left = left.saturating_sub(pad_len) as usize;
                    let n = (*left as usize).min(data.len());
                    let payload = &data[..n.min(payload_left)];
                    *left -= n as u32;
                    let finished = *left == 0;
                    data = &data[n..];
                    self.data(side, stream, payload, h.ts_ns);
                    if finished {
                        self.end_data(side, h, out);
                    }
                }
                Frame::Control { len, .. } => {
                    let need = len as usize - dir.buf.len();
                    let n = need.min(data.len());
                    dir.buf.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if dir.buf.len() == len as usize {
                        self.control_frame(side, h, out);
                    }
                }
            }
        }
    }

    /// `len` bytes of one direction were not captured.
    pub fn gap(&mut self, side: Side, len: u64, out: &mut Vec<Exchange>) {
        if self.dead {
            return;
        }
        let dir = match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        };
        // Only the payload of a DATA frame can be skipped without losing the framing.
        if let Frame::Data {
            stream,
            ref mut left,
            pad,
            padded,
            ..
        } = dir.frame
        {
            let pad_known = !padded || pad.is_some();
            if pad_known && len < u64::from(left.saturating_sub(pad.unwrap_or(0))) {
                *left -= len as u32;
                if let Some(s) = self.streams.get_mut(&stream) {
                    let m = match side {
                        Side::Client => &mut s.request,
                        Side::Server => &mut s.response,
                    };
                    m.body_len += len;
                    m.body_gap = true;
                }
                return;
            }
        }
        self.kill(out);
    }

    fn data(&mut self, side: Side, stream: u32, payload: &[u8], ts: u64) {
        let max_body = self.max_body;
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if side == Side::Server {
            s.response_ts = ts;
        }
        let m = match side {
            Side::Client => &mut s.request,
            Side::Server => &mut s.response,
        };
        m.body_len += payload.len() as u64;
        let room = max_body.saturating_sub(m.body.len());
        m.body
            .extend_from_slice(&payload[..room.min(payload.len())]);
    }

    fn end_data(&mut self, side: Side, h: &TlsEventHeader, out: &mut Vec<Exchange>) {
        let dir = match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        };
        let frame = std::mem::replace(&mut dir.frame, Frame::Header);
        if let Frame::Data {
            stream,
            end_stream: true,
            ..
        } = frame
        {
            self.end_stream(side, stream, h, out);
        }
    }

    fn end_stream(&mut self, side: Side, stream: u32, h: &TlsEventHeader, out: &mut Vec<Exchange>) {
        if side == Side::Client {
            return;
        }
        // The response is complete: the exchange is done.
        if let Some(mut s) = self.streams.remove(&stream) {
            s.response_ts = h.ts_ns;
            self.emit(s, out);
        }
    }

    fn emit(&mut self, s: Stream, out: &mut Vec<Exchange>) {
        if !s.request.started {
            return;
        }
        let answered = s.response.started && s.response.head.status >= 200;
        if !answered {
            self.stats.unanswered += 1;
        }
        out.push(Exchange {
            key: self.key,
            origin: s.origin,
            request_ts: s.request_ts,
            response_ts: answered.then_some(s.response_ts),
            request: s.request.finish(Kind::Request),
            response: answered.then(|| s.response.finish(Kind::Response)),
            source: self.source,
            http2: true,
        });
    }

    fn control_frame(&mut self, side: Side, h: &TlsEventHeader, out: &mut Vec<Exchange>) {
        let dir = match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        };
        let Frame::Control {
            kind,
            flags,
            stream,
            ..
        } = std::mem::replace(&mut dir.frame, Frame::Header)
        else {
            return;
        };
        let payload = std::mem::take(&mut dir.buf);
        // A header block must be continued by CONTINUATION frames of the same stream only.
        if dir.block.is_some() && kind != CONTINUATION {
            self.kill(out);
            return;
        }
        match kind {
            HEADERS | PUSH_PROMISE => {
                let Some(fragment) = header_fragment(kind, flags, &payload) else {
                    self.kill(out);
                    return;
                };
                dir.block = Some((
                    stream,
                    flags & FLAG_END_STREAM != 0 && kind == HEADERS,
                    kind == PUSH_PROMISE,
                    fragment.to_vec(),
                ));
                if flags & FLAG_END_HEADERS != 0 {
                    self.header_block(side, h, out);
                }
            }
            CONTINUATION => {
                let Some((s, _, _, block)) = dir.block.as_mut() else {
                    self.kill(out);
                    return;
                };
                if *s != stream || block.len() + payload.len() > MAX_HEADER_BLOCK {
                    self.kill(out);
                    return;
                }
                block.extend_from_slice(&payload);
                if flags & FLAG_END_HEADERS != 0 {
                    self.header_block(side, h, out);
                }
            }
            RST_STREAM => {
                if let Some(mut s) = self.streams.remove(&stream) {
                    s.response_ts = h.ts_ns;
                    self.emit(s, out);
                }
            }
            // SETTINGS, PING, GOAWAY, WINDOW_UPDATE, PRIORITY and unknown types carry no call
            // data. (A SETTINGS_HEADER_TABLE_SIZE only bounds the peer's encoder, whose size
            // updates arrive in-band and are honoured by the decoder.)
            _ => {}
        }
    }

    fn header_block(&mut self, side: Side, h: &TlsEventHeader, out: &mut Vec<Exchange>) {
        let dir = match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        };
        let Some((stream, end_stream, push, block)) = dir.block.take() else {
            return;
        };
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let ok = dir
            .hpack
            .decode_with_cb(&block, |n, v| {
                if fields.len() < 256 {
                    fields.push((n.into_owned(), v.into_owned()));
                }
            })
            .is_ok();
        if !ok {
            self.kill(out);
            return;
        }
        if push {
            return; // server push: decoded for the HPACK state only
        }
        match side {
            Side::Client => {
                if !self.streams.contains_key(&stream) {
                    if self.streams.len() >= MAX_STREAMS {
                        self.stats.streams_dropped += 1;
                        return;
                    }
                    self.streams.insert(
                        stream,
                        Stream {
                            origin: Origin::of(h),
                            request_ts: h.ts_ns,
                            request: MsgBuilder::default(),
                            response: MsgBuilder::default(),
                            response_ts: 0,
                        },
                    );
                }
                let Some(s) = self.streams.get_mut(&stream) else {
                    return;
                };
                if s.request.started {
                    // Trailers.
                    s.request.head.headers.extend(regular(fields));
                } else {
                    s.request.started = true;
                    s.request.head = request_head(fields);
                }
                let _ = end_stream;
            }
            Side::Server => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return;
                };
                s.response_ts = h.ts_ns;
                let status = fields
                    .iter()
                    .find(|(n, _)| n == b":status")
                    .and_then(|(_, v)| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse::<u16>().ok());
                match status {
                    // Interim (1xx) responses are skipped; a final one starts the response.
                    Some(st) if st < 200 => {}
                    Some(st) if !s.response.started => {
                        s.response.started = true;
                        s.response.head = Head {
                            status: st,
                            version: 0,
                            headers: regular(fields),
                            ..Default::default()
                        };
                    }
                    // Trailers.
                    _ => s.response.head.headers.extend(regular(fields)),
                }
                if end_stream && s.response.started {
                    self.end_stream(side, stream, h, out);
                }
            }
        }
    }

    /// The connection cannot be followed: emit what can be and stop.
    fn kill(&mut self, out: &mut Vec<Exchange>) {
        if !self.dead {
            self.dead = true;
            self.stats.broken += 1;
        }
        self.client.buf = Vec::new();
        self.server.buf = Vec::new();
        self.client.block = None;
        self.server.block = None;
        self.close(out);
    }

    /// Emits every stream with a request (answered or not) and forgets them.
    pub fn close(&mut self, out: &mut Vec<Exchange>) {
        let mut ids: Vec<u32> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(s) = self.streams.remove(&id) {
                self.emit(s, out);
            }
        }
    }

    /// Emits requests that waited longer than `timeout_ns` for their response.
    pub fn expire(&mut self, now: u64, timeout_ns: u64, out: &mut Vec<Exchange>) {
        let mut ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.request_ts) > timeout_ns)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(s) = self.streams.remove(&id) {
                self.emit(s, out);
            }
        }
    }

    /// Streams waiting for their response.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload (padding and priority or
/// promised-stream fields removed).
fn header_fragment(kind: u8, flags: u8, p: &[u8]) -> Option<&[u8]> {
    let mut start = 0usize;
    let mut end = p.len();
    if flags & FLAG_PADDED != 0 {
        let pad = *p.first()? as usize;
        start = 1;
        end = end.checked_sub(pad)?;
    }
    if kind == HEADERS && flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    if kind == PUSH_PROMISE {
        start += 4;
    }
    p.get(start..end)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Regular (non-pseudo) header fields.
fn regular(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    fields
        .into_iter()
        .filter(|(n, _)| !n.starts_with(b":"))
        .map(|(n, v)| (lossy(&n), v))
        .collect()
}

/// A request head from HTTP/2 fields: `:method`, `:path`, and `:authority` as `host` when the
/// request carries no `host` field itself (SigV4 signs `host` over h2 too).
fn request_head(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Head {
    let mut head = Head {
        version: 0,
        ..Default::default()
    };
    let mut authority = None;
    for (n, v) in &fields {
        match n.as_slice() {
            b":method" => head.method = lossy(v),
            b":path" => head.target = lossy(v),
            b":authority" => authority = Some(v.clone()),
            _ => {}
        }
    }
    head.headers = regular(fields);
    if let Some(a) = authority
        && !head
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
    {
        head.headers.insert(0, ("host".to_string(), a));
    }
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(ts: u64) -> TlsEventHeader {
        TlsEventHeader {
            ts_ns: ts,
            tgid: 7,
            tid: 8,
            ..Default::default()
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn encode(fields: &[(&[u8], &[u8])], enc: &mut loona_hpack::Encoder<'_>) -> Vec<u8> {
        enc.encode(fields.iter().map(|(n, v)| (*n, *v)))
    }

    fn key() -> ConnKey {
        ConnKey { tgid: 7, conn: 1 }
    }

    /// A client that sends two requests (HPACK state shared), the server answers both.
    fn conversation() -> (Vec<u8>, Vec<u8>) {
        let mut ce = loona_hpack::Encoder::new();
        let mut se = loona_hpack::Encoder::new();
        let mut client = PREFACE.to_vec();
        client.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        let mut server = frame(0x4, 0, 0, &[]);
        for (i, stream) in [1u32, 3].into_iter().enumerate() {
            let body = format!("Action=GetCallerIdentity&Version=2011-06-15&n={i}");
            let block = encode(
                &[
                    (b":method", b"POST"),
                    (b":path", b"/"),
                    (b":scheme", b"https"),
                    (b":authority", b"127.0.0.1:4566"),
                    (b"content-type", b"application/x-www-form-urlencoded"),
                    (b"authorization", b"AWS4-HMAC-SHA256 Credential=AKID/20250101/eu-west-1/sts/aws4_request, SignedHeaders=host, Signature=00"),
                ],
                &mut ce,
            );
            // Split the header block over HEADERS + CONTINUATION.
            let (a, b) = block.split_at(block.len() / 2);
            client.extend(frame(HEADERS, 0, stream, a));
            client.extend(frame(CONTINUATION, FLAG_END_HEADERS, stream, b));
            client.extend(frame(DATA, FLAG_END_STREAM, stream, body.as_bytes()));
            let rblock = encode(
                &[(b":status", b"200"), (b"x-amzn-requestid", b"req-1")],
                &mut se,
            );
            server.extend(frame(HEADERS, FLAG_END_HEADERS, stream, &rblock));
            // Padded DATA.
            let mut padded = vec![3u8];
            padded.extend_from_slice(b"<GetCallerIdentityResponse/>");
            padded.extend_from_slice(&[0, 0, 0]);
            server.extend(frame(DATA, FLAG_PADDED | FLAG_END_STREAM, stream, &padded));
        }
        (client, server)
    }

    #[test]
    fn pairs_streams_across_split_records() {
        let (client, server) = conversation();
        for split in [1usize, 2, 7, 9, 10, 64, 100_000] {
            let mut c = H2Conn::new(key(), 0, 1024);
            let mut out = Vec::new();
            for ch in client.chunks(split) {
                c.feed(Side::Client, &hdr(1), ch, &mut out);
            }
            for ch in server.chunks(split) {
                c.feed(Side::Server, &hdr(2), ch, &mut out);
            }
            assert_eq!(out.len(), 2, "split {split}");
            assert!(!c.is_dead());
            let e = &out[0];
            assert_eq!(e.request.head.method, "POST");
            assert_eq!(e.request.head.target, "/");
            assert_eq!(e.request.head.header_str("host"), Some("127.0.0.1:4566"));
            assert!(e.request.body.starts_with(b"Action=GetCallerIdentity"));
            let r = e.response.as_ref().expect("response");
            assert_eq!(r.head.status, 200);
            assert_eq!(r.body, b"<GetCallerIdentityResponse/>");
            assert!(e.http2);
            assert_eq!(
                out[1].request.head.header_str("content-type"),
                Some("application/x-www-form-urlencoded")
            );
        }
    }

    #[test]
    fn lost_header_bytes_give_up_the_connection() {
        let (client, _) = conversation();
        let mut c = H2Conn::new(key(), 0, 1024);
        let mut out = Vec::new();
        c.feed(Side::Client, &hdr(1), &client[..40], &mut out);
        c.gap(Side::Client, 5, &mut out);
        assert!(c.is_dead());
        assert_eq!(c.stats().broken, 1);
    }

    #[test]
    fn gap_inside_data_keeps_framing() {
        let mut ce = loona_hpack::Encoder::new();
        let mut c = H2Conn::new(key(), 0, 16);
        let mut out = Vec::new();
        let mut client = PREFACE.to_vec();
        client.extend(frame(
            HEADERS,
            FLAG_END_HEADERS,
            1,
            &encode(&[(b":method", b"PUT"), (b":path", b"/b/k")], &mut ce),
        ));
        client.extend(
            frame(DATA, FLAG_END_STREAM, 1, &[b'x'; 100])[..9 + 10]
                .iter()
                .copied(),
        );
        c.feed(Side::Client, &hdr(1), &client, &mut out);
        c.gap(Side::Client, 80, &mut out);
        c.feed(Side::Client, &hdr(1), &[b'x'; 10], &mut out);
        assert!(!c.is_dead());
        let mut se = loona_hpack::Encoder::new();
        let resp = frame(
            HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &encode(&[(b":status", b"200")], &mut se),
        );
        c.feed(Side::Server, &hdr(2), &resp, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].request.body_len, 100);
        assert!(out[0].request.body_gap);
        assert_eq!(out[0].request.body.len(), 16);
    }

    #[test]
    fn garbage_never_panics() {
        let (client, server) = conversation();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..3000 {
            let mut c = H2Conn::new(key(), 0, 64);
            let mut out = Vec::new();
            let mut cb = client.clone();
            let mut sb = server.clone();
            // Flip, insert or truncate a few bytes.
            for _ in 0..(1 + next() % 4) {
                let v = if next() % 2 == 0 { &mut cb } else { &mut sb };
                if v.is_empty() {
                    continue;
                }
                let i = (next() % v.len() as u64) as usize;
                match next() % 3 {
                    0 => v[i] = next() as u8,
                    1 => v.insert(i, next() as u8),
                    _ => v.truncate(i),
                }
            }
            if round % 10 == 0 {
                cb = PREFACE.to_vec();
                cb.extend((0..(next() % 300)).map(|_| next() as u8));
                sb = (0..(next() % 300)).map(|_| next() as u8).collect();
            }
            let step = 1 + (next() % 50) as usize;
            for ch in cb.chunks(step) {
                c.feed(Side::Client, &hdr(1), ch, &mut out);
            }
            if next() % 4 == 0 {
                c.gap(Side::Server, next() % 100, &mut out);
            }
            for ch in sb.chunks(step) {
                c.feed(Side::Server, &hdr(2), ch, &mut out);
            }
            c.expire(u64::MAX, 0, &mut out);
            c.close(&mut out);
        }
    }
}
