//! Stream and HTTP layers on recorded real traffic.
//!
//! `fixtures/boto3-session.raw` was recorded with `hoop-agent run --record-raw` while
//! `tests/clients/boto3_calls.py` ran against moto under gunicorn (both ends of every
//! connection: the client's and the emulator's TLS calls), signed with the test-only key of the
//! e2e suite. Replaying it re-split one byte at a time, merged into pipelined records, or with
//! garbage in between must give the same exchanges.

use hoop_agent::capture::{Assembler, CaptureConfig, Exchange};
use hoop_common::{TLS_HEADER_LEN, TlsEventHeader};

fn load(name: &str) -> Vec<Vec<u8>> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= data.len() {
        let n = u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]) as usize;
        out.push(data[i + 4..i + 4 + n].to_vec());
        i += 4 + n;
    }
    out
}

fn header(rec: &[u8]) -> TlsEventHeader {
    // SAFETY: the fixture holds whole records written by the agent.
    unsafe { std::ptr::read_unaligned(rec.as_ptr().cast()) }
}

fn with_payload(h: &TlsEventHeader, payload: &[u8], offset: u32, full: u32) -> Vec<u8> {
    let mut h = *h;
    h.offset = offset;
    h.full_len = full;
    h.cap_len = payload.len() as u32;
    // SAFETY: POD header to bytes.
    let hb = unsafe {
        std::slice::from_raw_parts((&h as *const TlsEventHeader).cast::<u8>(), TLS_HEADER_LEN)
    };
    let mut v = hb.to_vec();
    v.extend_from_slice(payload);
    v
}

/// (pid, method, target, status) of each exchange, in order.
fn summary(records: &[Vec<u8>]) -> Vec<(u32, String, String, Option<u16>)> {
    let mut a = Assembler::new(CaptureConfig::default());
    let mut out: Vec<Exchange> = Vec::new();
    for r in records {
        a.push_bytes(r, &mut out);
    }
    a.flush_all(&mut out);
    let mut s: Vec<_> = out
        .iter()
        .map(|e| {
            (
                e.origin.tgid,
                e.request.head.method.clone(),
                e.request.head.target.clone(),
                e.response.as_ref().map(|r| r.head.status),
            )
        })
        .collect();
    s.sort();
    s
}

fn one_byte_records(records: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for r in records {
        let h = header(r);
        let payload = &r[TLS_HEADER_LEN..];
        // Each byte becomes a TLS call of its own (responses read one byte at a time).
        for b in payload.chunks(1) {
            out.push(with_payload(&h, b, 0, 1));
        }
    }
    out
}

/// Consecutive records of the same connection and direction merged into one call.
fn merged_records(records: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut cur: Option<(TlsEventHeader, Vec<u8>)> = None;
    for r in records {
        let h = header(r);
        let payload = &r[TLS_HEADER_LEN..];
        match cur.as_mut() {
            Some((ch, buf))
                if ch.conn == h.conn
                    && ch.tgid == h.tgid
                    && ch.direction == h.direction
                    && buf.len() + payload.len() <= 16384 =>
            {
                buf.extend_from_slice(payload);
            }
            _ => {
                if let Some((ch, buf)) = cur.take() {
                    out.push(with_payload(&ch, &buf, 0, buf.len() as u32));
                }
                cur = Some((h, payload.to_vec()));
            }
        }
    }
    if let Some((ch, buf)) = cur {
        out.push(with_payload(&ch, &buf, 0, buf.len() as u32));
    }
    out
}

#[test]
fn recorded_session_yields_every_call() {
    let recs = load("boto3-session.raw");
    let s = summary(&recs);
    // boto3_calls.py makes 10 calls; the emulator's side is not an exchange of its own.
    assert_eq!(s.len(), 10, "{s:#?}");
    assert!(
        s.iter().all(|(_, _, _, status)| *status == Some(200)),
        "{s:#?}"
    );
    assert!(
        s.iter()
            .any(|(_, m, t, _)| m == "PUT" && t.ends_with("/hello.txt"))
    );
}

#[test]
fn one_byte_at_a_time_gives_the_same_exchanges() {
    let recs = load("boto3-session.raw");
    assert_eq!(summary(&one_byte_records(&recs)), summary(&recs));
}

#[test]
fn pipelined_records_give_the_same_exchanges() {
    let recs = load("boto3-session.raw");
    let merged = merged_records(&recs);
    assert!(merged.len() < recs.len());
    assert_eq!(summary(&merged), summary(&recs));
}

#[test]
fn garbage_between_calls_is_skipped() {
    let recs = load("boto3-session.raw");
    let mut noisy = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        // Garbage on its own connection of the same process, and truncated records.
        let h = header(r);
        let mut g = h;
        g.conn ^= 0xdead_0000;
        noisy.push(with_payload(&g, &[0xff, 0x00, b'\n', 0x17, b'G'], 0, 5));
        if i % 7 == 0 {
            noisy.push(r[..TLS_HEADER_LEN / 2].to_vec());
        }
        noisy.push(r.clone());
    }
    assert_eq!(summary(&noisy), summary(&recs));
    let mut a = Assembler::new(CaptureConfig::default());
    let mut out = Vec::new();
    for r in &noisy {
        a.push_bytes(r, &mut out);
    }
    assert!(a.stats().bad_records > 0);
}
