//! Incremental HTTP/1.1 parsing of one direction of a connection.
//!
//! Bytes arrive in whatever pieces the TLS library moved them: a header split over several
//! writes, a body one byte at a time, several pipelined messages in one read, gaps where the
//! kernel could not copy everything. `Http1Stream` turns that into whole messages: head parsed
//! with `httparse`, body framed by `Content-Length` or chunked transfer coding (which may wrap
//! `aws-chunked` content), the first `max_body` bytes of the body kept for classification.
//!
//! Garbage never panics: it is counted and skipped until something that looks like the start of
//! a message appears again.

use std::fmt;

/// Largest head (request/status line + headers) accepted before the bytes count as garbage.
const MAX_HEAD: usize = 64 * 1024;
/// Headers per message that `httparse` is given room for.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line accepted in chunked coding.
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
}

/// A parsed message head.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// Request method (requests only).
    pub method: String,
    /// Request target (requests only).
    pub target: String,
    /// Status code (responses only).
    pub status: u16,
    /// Minor HTTP version (1 for HTTP/1.1).
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// Headers as borrowed pairs, the shape `hoop_aws` takes.
    pub fn header_refs(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect()
    }
}

/// A whole message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub head: Head,
    /// First bytes of the body (after transfer decoding), at most `max_body`.
    pub body: Vec<u8>,
    /// Body length after transfer decoding, including bytes not kept or not captured.
    pub body_len: u64,
    /// Some body bytes were not captured (kernel truncation or loss).
    pub body_gap: bool,
}

/// Counters of what could not be parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Heads that were not HTTP (bytes skipped until a plausible message start).
    pub garbage_heads: u64,
    /// Bytes skipped while resynchronising.
    pub skipped_bytes: u64,
    /// Messages cut short by a gap in the head or in chunk framing.
    pub broken_messages: u64,
}

#[derive(Debug)]
enum Body {
    /// `n` bytes left.
    Length(u64),
    /// Chunked: waiting for a chunk-size line.
    ChunkSize,
    /// Chunked: `n` data bytes left in the current chunk, then CRLF.
    ChunkData(u64),
    /// Chunked: CRLF after chunk data.
    ChunkDataEnd,
    /// Chunked: trailer section until an empty line.
    Trailers,
    /// Until the connection closes (responses without framing).
    UntilClose,
}

#[derive(Debug)]
enum State {
    Head,
    Body(Body),
}

/// One direction of an HTTP/1.1 connection.
pub struct Http1Stream {
    kind: Kind,
    max_body: usize,
    buf: Vec<u8>,
    state: State,
    current: Option<Message>,
    stats: ParseStats,
    /// Response streams: for each request sent and not yet answered, whether it was a HEAD
    /// (whose response has no body whatever its headers say).
    head_requests: std::collections::VecDeque<bool>,
}

impl fmt::Debug for Http1Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1Stream")
            .field("kind", &self.kind)
            .field("buffered", &self.buf.len())
            .field("state", &self.state)
            .finish()
    }
}

/// Methods that can start a request: used to recognise a request and to resynchronise.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"PUT ",
    b"POST ",
    b"HEAD ",
    b"DELETE ",
    b"PATCH ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
];

/// Does `b` start like a request (or could it, given more bytes)?
pub fn looks_like_request(b: &[u8]) -> bool {
    METHODS.iter().any(|m| prefix_match(b, m))
}

/// Does `b` start like a response (or could it, given more bytes)?
pub fn looks_like_response(b: &[u8]) -> bool {
    prefix_match(b, b"HTTP/1.")
}

fn prefix_match(b: &[u8], p: &[u8]) -> bool {
    let n = b.len().min(p.len());
    n > 0 && b[..n] == p[..n]
}

impl Http1Stream {
    pub fn new(kind: Kind, max_body: usize) -> Self {
        Http1Stream {
            kind,
            max_body,
            buf: Vec::new(),
            state: State::Head,
            current: None,
            stats: ParseStats::default(),
            head_requests: std::collections::VecDeque::new(),
        }
    }

    /// Response streams: a request was sent on this connection (`head` = it was a HEAD).
    pub fn expect_response(&mut self, head: bool) {
        const MAX_OUTSTANDING: usize = 1024;
        if self.head_requests.len() < MAX_OUTSTANDING {
            self.head_requests.push_back(head);
        }
    }

    pub fn stats(&self) -> ParseStats {
        self.stats
    }

    /// Bytes held while waiting for the rest of a head or chunk line.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Is the stream between messages (nothing half-parsed)?
    pub fn idle(&self) -> bool {
        matches!(self.state, State::Head) && self.buf.is_empty()
    }

    /// Feeds captured bytes; complete messages are pushed to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<Message>) {
        while !data.is_empty() {
            match &mut self.state {
                State::Body(Body::Length(left)) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    self.take_body(&data[..n]);
                    data = &data[n..];
                    if let State::Body(Body::Length(left)) = &mut self.state {
                        *left -= n as u64;
                        if *left == 0 {
                            self.finish(out);
                        }
                    }
                }
                State::Body(Body::ChunkData(left)) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    let done = *left == n as u64;
                    *left -= n as u64;
                    self.take_body(&data[..n]);
                    data = &data[n..];
                    if done {
                        self.state = State::Body(Body::ChunkDataEnd);
                    }
                }
                State::Body(Body::UntilClose) => {
                    self.take_body(data);
                    data = &[];
                }
                _ => {
                    // Line- or head-oriented states work on the buffer.
                    self.buf.extend_from_slice(data);
                    data = &[];
                    let rest = self.drain_buffer(out);
                    // Body bytes that followed a head are fed through the loop again.
                    if !rest.is_empty() {
                        self.feed(&rest, out);
                    }
                }
            }
        }
    }

    /// Some bytes of this direction were not captured. Inside a body of known length they are
    /// simply skipped; anywhere else the current message is lost and parsing resynchronises.
    pub fn gap(&mut self, len: u64, out: &mut Vec<Message>) {
        if len == 0 {
            return;
        }
        match &mut self.state {
            State::Body(Body::Length(left)) => {
                let n = (*left).min(len);
                *left -= n;
                if let Some(m) = self.current.as_mut() {
                    m.body_len += n;
                    m.body_gap = true;
                }
                if *left == 0 {
                    self.finish(out);
                }
                // Bytes past the body belonged to a following message we cannot parse.
                if len > n {
                    self.resync();
                }
            }
            State::Body(Body::ChunkData(left)) if *left >= len => {
                *left -= len;
                if let Some(m) = self.current.as_mut() {
                    m.body_len += len;
                    m.body_gap = true;
                }
                if *left == 0 {
                    self.state = State::Body(Body::ChunkDataEnd);
                }
            }
            State::Body(Body::UntilClose) => {
                if let Some(m) = self.current.as_mut() {
                    m.body_len += len;
                    m.body_gap = true;
                }
            }
            _ => {
                if self.current.is_some() || !self.buf.is_empty() {
                    self.stats.broken_messages += 1;
                }
                self.resync();
            }
        }
    }

    /// Takes out a message whose head was parsed but whose body never completed (the
    /// application stopped reading, the connection ended or went idle). The stream starts over.
    pub fn take_partial(&mut self) -> Option<Message> {
        if matches!(self.state, State::Head) {
            return None;
        }
        self.state = State::Head;
        self.buf.clear();
        self.current.take().map(|mut m| {
            m.body_gap = true;
            m
        })
    }

    /// The connection closed: a response delimited by close is complete now.
    pub fn close(&mut self, out: &mut Vec<Message>) {
        if matches!(self.state, State::Body(Body::UntilClose)) {
            self.finish(out);
        }
    }

    fn resync(&mut self) {
        self.current = None;
        self.state = State::Head;
        self.stats.skipped_bytes += self.buf.len() as u64;
        self.buf.clear();
    }

    fn take_body(&mut self, data: &[u8]) {
        if let Some(m) = self.current.as_mut() {
            m.body_len += data.len() as u64;
            let room = self.max_body.saturating_sub(m.body.len());
            m.body.extend_from_slice(&data[..room.min(data.len())]);
        }
    }

    fn finish(&mut self, out: &mut Vec<Message>) {
        self.state = State::Head;
        if let Some(m) = self.current.take() {
            out.push(m);
        }
    }

    /// Processes buffered head/line states. Returns bytes that belong to a body state that
    /// consumes raw data (they are moved out of the buffer).
    fn drain_buffer(&mut self, out: &mut Vec<Message>) -> Vec<u8> {
        loop {
            match &self.state {
                State::Head => {
                    if self.buf.is_empty() {
                        return Vec::new();
                    }
                    if !self.skip_to_message_start() {
                        return Vec::new();
                    }
                    match self.parse_head() {
                        HeadResult::Partial => {
                            if self.buf.len() > MAX_HEAD {
                                self.garbage();
                                continue;
                            }
                            return Vec::new();
                        }
                        HeadResult::Invalid => {
                            self.garbage();
                            continue;
                        }
                        HeadResult::Complete(len, msg, body) => {
                            self.buf.drain(..len);
                            self.current = Some(msg);
                            match body {
                                None => self.finish(out),
                                Some(b) => self.state = State::Body(b),
                            }
                            if matches!(self.state, State::Body(Body::Length(_) | Body::UntilClose))
                            {
                                return std::mem::take(&mut self.buf);
                            }
                        }
                    }
                }
                State::Body(Body::ChunkSize) => {
                    let Some(line_end) = find_crlf(&self.buf) else {
                        if self.buf.len() > MAX_CHUNK_LINE {
                            self.broken();
                        }
                        return Vec::new();
                    };
                    let size = parse_chunk_size(&self.buf[..line_end]);
                    self.buf.drain(..line_end + 2);
                    match size {
                        Some(0) => self.state = State::Body(Body::Trailers),
                        Some(n) => {
                            self.state = State::Body(Body::ChunkData(n));
                            return std::mem::take(&mut self.buf);
                        }
                        None => self.broken(),
                    }
                }
                State::Body(Body::ChunkDataEnd) => {
                    if self.buf.len() < 2 {
                        return Vec::new();
                    }
                    if &self.buf[..2] == b"\r\n" {
                        self.buf.drain(..2);
                        self.state = State::Body(Body::ChunkSize);
                    } else {
                        self.broken();
                    }
                }
                State::Body(Body::Trailers) => {
                    let Some(line_end) = find_crlf(&self.buf) else {
                        if self.buf.len() > MAX_HEAD {
                            self.broken();
                        }
                        return Vec::new();
                    };
                    let empty = line_end == 0;
                    if !empty && let Some(m) = self.current.as_mut() {
                        let line = &self.buf[..line_end];
                        if let Some(colon) = line.iter().position(|&c| c == b':') {
                            let name = String::from_utf8_lossy(&line[..colon]).trim().to_string();
                            let value = trim(&line[colon + 1..]).to_vec();
                            m.head.headers.push((name, value));
                        }
                    }
                    self.buf.drain(..line_end + 2);
                    if empty {
                        self.finish(out);
                    }
                }
                State::Body(_) => return std::mem::take(&mut self.buf),
            }
        }
    }

    /// Drops bytes until the buffer starts like a message of this direction. Returns whether
    /// a possible start remains.
    fn skip_to_message_start(&mut self) -> bool {
        let looks = |b: &[u8]| match self.kind {
            Kind::Request => looks_like_request(b),
            Kind::Response => looks_like_response(b),
        };
        if looks(&self.buf) {
            return true;
        }
        // Find the next line start that could begin a message.
        let mut i = 0;
        let found = loop {
            match self.buf[i..].iter().position(|&c| c == b'\n') {
                Some(p) => {
                    i += p + 1;
                    if i < self.buf.len() && looks(&self.buf[i..]) {
                        break Some(i);
                    }
                }
                None => break None,
            }
        };
        self.stats.garbage_heads += 1;
        let skip = found.unwrap_or(self.buf.len());
        self.stats.skipped_bytes += skip as u64;
        self.buf.drain(..skip);
        found.is_some()
    }

    fn garbage(&mut self) {
        // Skip the first byte so skip_to_message_start looks for the next start.
        self.stats.garbage_heads += 1;
        self.stats.skipped_bytes += 1;
        self.buf.drain(..1);
        self.state = State::Head;
    }

    fn broken(&mut self) {
        self.stats.broken_messages += 1;
        self.resync();
    }

    fn parse_head(&mut self) -> HeadResult {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match self.kind {
            Kind::Request => {
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let head = Head {
                            method: req.method.unwrap_or_default().to_string(),
                            target: req.path.unwrap_or_default().to_string(),
                            status: 0,
                            version: req.version.unwrap_or(1),
                            headers: own_headers(req.headers),
                        };
                        let body = request_body(&head);
                        HeadResult::Complete(len, message(Kind::Request, head), body)
                    }
                    Ok(httparse::Status::Partial) => HeadResult::Partial,
                    Err(_) => HeadResult::Invalid,
                }
            }
            Kind::Response => {
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let head = Head {
                            method: String::new(),
                            target: String::new(),
                            status: resp.code.unwrap_or(0),
                            version: resp.version.unwrap_or(1),
                            headers: own_headers(resp.headers),
                        };
                        let mut body = response_body(&head);
                        if head.status >= 200 && self.head_requests.pop_front() == Some(true) {
                            body = None;
                        }
                        HeadResult::Complete(len, message(Kind::Response, head), body)
                    }
                    Ok(httparse::Status::Partial) => HeadResult::Partial,
                    Err(_) => HeadResult::Invalid,
                }
            }
        }
    }
}

enum HeadResult {
    Partial,
    Invalid,
    Complete(usize, Message, Option<Body>),
}

fn message(kind: Kind, head: Head) -> Message {
    Message {
        kind,
        head,
        body: Vec::new(),
        body_len: 0,
        body_gap: false,
    }
}

fn own_headers(h: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    h.iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect()
}

fn is_chunked(head: &Head) -> bool {
    head.header_str("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
}

fn content_length(head: &Head) -> Option<u64> {
    head.header_str("content-length")?.parse().ok()
}

fn request_body(head: &Head) -> Option<Body> {
    if is_chunked(head) {
        return Some(Body::ChunkSize);
    }
    match content_length(head) {
        Some(0) | None => None,
        Some(n) => Some(Body::Length(n)),
    }
}

/// Body framing of a response (a response to HEAD is handled by the caller).
fn response_body(head: &Head) -> Option<Body> {
    if head.status < 200 || head.status == 204 || head.status == 304 {
        return None;
    }
    if is_chunked(head) {
        return Some(Body::ChunkSize);
    }
    match content_length(head) {
        Some(0) => None,
        Some(n) => Some(Body::Length(n)),
        None => Some(Body::UntilClose),
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &b[s..e]
}

/// `1a3f;chunk-signature=...` → 0x1a3f. Extensions (aws-chunked signatures) are ignored.
pub fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let hex = line.split(|&c| c == b';').next()?;
    let hex = trim(hex);
    if hex.is_empty() || hex.len() > 15 {
        return None;
    }
    let s = std::str::from_utf8(hex).ok()?;
    u64::from_str_radix(s, 16).ok()
}

/// Trailer fields of a chunked body, in order.
pub type Trailers = Vec<(String, String)>;

/// Decodes an `aws-chunked` body (SigV4 streaming: `size;chunk-signature=..\r\ndata\r\n`, then
/// a zero chunk and optional trailers). Returns the decoded payload and the trailers, or `None`
/// when the body does not have that shape (or was cut).
pub fn decode_aws_chunked(body: &[u8]) -> Option<(Vec<u8>, Trailers)> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let end = find_crlf(rest)?;
        let size = parse_chunk_size(&rest[..end])? as usize;
        rest = &rest[end + 2..];
        if size == 0 {
            break;
        }
        if rest.len() < size + 2 || &rest[size..size + 2] != b"\r\n" {
            return None;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    let mut trailers = Vec::new();
    for line in rest.split(|&c| c == b'\n') {
        let line = trim(line);
        if let Some(colon) = line.iter().position(|&c| c == b':') {
            let name = String::from_utf8_lossy(&line[..colon]).trim().to_string();
            let value = String::from_utf8_lossy(trim(&line[colon + 1..])).to_string();
            trailers.push((name, value));
        }
    }
    Some((out, trailers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(s: &mut Http1Stream, pieces: &[&[u8]]) -> Vec<Message> {
        let mut out = Vec::new();
        for p in pieces {
            s.feed(p, &mut out);
        }
        out
    }

    const REQ: &[u8] = b"POST / HTTP/1.1\r\nHost: sts.amazonaws.com\r\nContent-Length: 43\r\n\r\nAction=GetCallerIdentity&Version=2011-06-15";

    #[test]
    fn whole_request() {
        let mut s = Http1Stream::new(Kind::Request, 1024);
        let out = feed_all(&mut s, &[REQ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].head.method, "POST");
        assert_eq!(out[0].body, b"Action=GetCallerIdentity&Version=2011-06-15");
        assert!(s.idle());
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut s = Http1Stream::new(Kind::Request, 1024);
        let pieces: Vec<&[u8]> = REQ.chunks(1).collect();
        let out = feed_all(&mut s, &pieces);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].body_len, 43);
    }

    #[test]
    fn pipelined_and_split() {
        let mut all = REQ.to_vec();
        all.extend_from_slice(REQ);
        all.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
        for split in [1, 7, 50, 100, all.len()] {
            let mut s = Http1Stream::new(Kind::Request, 1024);
            let pieces: Vec<&[u8]> = all.chunks(split).collect();
            let out = feed_all(&mut s, &pieces);
            assert_eq!(out.len(), 3, "split {split}");
            assert_eq!(out[2].head.target, "/x");
        }
    }

    #[test]
    fn chunked_with_trailers_and_aws_chunked() {
        let inner = b"5;chunk-signature=abc\r\nhello\r\n0;chunk-signature=def\r\nx-amz-checksum-crc32:AAAA\r\n\r\n";
        let mut body = format!("{:x}\r\n", inner.len()).into_bytes();
        body.extend_from_slice(inner);
        body.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut msg = b"PUT /b/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Encoding: aws-chunked\r\n\r\n".to_vec();
        msg.extend_from_slice(&body);
        for split in [1, 3, msg.len()] {
            let mut s = Http1Stream::new(Kind::Request, 4096);
            let pieces: Vec<&[u8]> = msg.chunks(split).collect();
            let out = feed_all(&mut s, &pieces);
            assert_eq!(out.len(), 1, "split {split}");
            assert_eq!(out[0].body, inner);
            let (data, trailers) = decode_aws_chunked(&out[0].body).expect("aws-chunked");
            assert_eq!(data, b"hello");
            assert_eq!(
                trailers,
                vec![("x-amz-checksum-crc32".into(), "AAAA".into())]
            );
            assert!(s.idle());
        }
    }

    #[test]
    fn response_continue_then_final() {
        let mut s = Http1Stream::new(Kind::Response, 1024);
        let out = feed_all(
            &mut s,
            &[
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            ],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].head.status, 100);
        assert_eq!(out[1].head.status, 200);
        assert_eq!(out[1].body, b"ok");
    }

    #[test]
    fn head_response_has_no_body() {
        let mut s = Http1Stream::new(Kind::Response, 1024);
        s.expect_response(true);
        s.expect_response(false);
        let out = feed_all(
            &mut s,
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].body_len, 0);
        assert_eq!(out[1].body, b"ok");
    }

    #[test]
    fn garbage_is_counted_and_skipped() {
        let mut s = Http1Stream::new(Kind::Request, 1024);
        let mut data = vec![0xffu8, 0x00, 0x13, b'\n', b'x'];
        data.extend_from_slice(b"\nzzz\r\n");
        data.extend_from_slice(REQ);
        let out = feed_all(&mut s, &[&data]);
        assert_eq!(out.len(), 1);
        assert!(s.stats().garbage_heads >= 1);
        assert!(s.stats().skipped_bytes >= 5);
    }

    #[test]
    fn invalid_head_resyncs() {
        let mut s = Http1Stream::new(Kind::Request, 1024);
        let mut data = b"GET /\x01bad HTTP/1.1\r\n\r\n".to_vec();
        data.extend_from_slice(REQ);
        let out = feed_all(&mut s, &[&data]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].head.method, "POST");
    }

    #[test]
    fn gap_in_body_is_skipped() {
        let mut s = Http1Stream::new(Kind::Request, 16);
        let mut out = Vec::new();
        s.feed(
            b"PUT /b/k HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789",
            &mut out,
        );
        s.gap(80, &mut out);
        s.feed(b"0123456789", &mut out);
        s.feed(REQ, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].body_len, 100);
        assert!(out[0].body_gap);
        assert_eq!(out[0].body.len(), 16);
        assert_eq!(out[1].head.method, "POST");
    }

    #[test]
    fn gap_in_head_resyncs() {
        let mut s = Http1Stream::new(Kind::Request, 16);
        let mut out = Vec::new();
        s.feed(b"PUT /b/k HTTP/1.1\r\nHost: x", &mut out);
        s.gap(10, &mut out);
        s.feed(b"rest of header\r\n\r\n", &mut out);
        s.feed(REQ, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].head.method, "POST");
        assert_eq!(s.stats().broken_messages, 1);
    }

    #[test]
    fn random_bytes_never_panic() {
        // Deterministic xorshift so the test is repeatable.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for kind in [Kind::Request, Kind::Response] {
            let mut s = Http1Stream::new(kind, 64);
            let mut out = Vec::new();
            for _ in 0..2000 {
                let mut chunk = Vec::new();
                for _ in 0..(x % 64) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    chunk.push(b"GET HTTP/1.1 \r\n:0a;-"[(x % 20) as usize]);
                }
                s.feed(&chunk, &mut out);
                if x.is_multiple_of(17) {
                    s.gap(x % 100, &mut out);
                }
            }
        }
    }
}
