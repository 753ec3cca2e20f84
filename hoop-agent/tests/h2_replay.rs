//! HTTP/2 parsing on recorded real traffic: raw ring-buffer records (the agent's hidden
//! `--record-raw` format: u32 length, then the record) of curl `--http2` and of the AWS SDK for
//! Go v2 over h2, captured by hoop's own probes against the emulator.

use hoop_agent::capture::{Assembler, CaptureConfig, Exchange, Record};
use hoop_common::{SRC_GO, SRC_OPENSSL};

fn records(name: &str) -> Vec<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let data = std::fs::read(&path).expect("fixture");
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= data.len() {
        let n = u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]) as usize;
        out.push(data[i + 4..i + 4 + n].to_vec());
        i += 4 + n;
    }
    out
}

fn replay(recs: &[Vec<u8>]) -> (Vec<Exchange>, Assembler) {
    let mut a = Assembler::new(CaptureConfig::default());
    let mut out = Vec::new();
    for r in recs {
        a.push_bytes(r, &mut out);
    }
    a.flush_all(&mut out);
    (out, a)
}

#[test]
fn curl_http2_sts_call() {
    let (out, a) = replay(&records("curl_http2_sts.bin"));
    assert_eq!(out.len(), 2, "two curl processes, one call each");
    for e in &out {
        assert!(e.http2);
        assert_eq!(e.source, SRC_OPENSSL);
        assert_eq!(e.request.head.method, "POST");
        assert_eq!(e.request.head.target, "/");
        assert!(
            e.request
                .head
                .header_str("host")
                .is_some_and(|h| h.starts_with("127.0.0.1:"))
        );
        assert!(
            e.request
                .head
                .header_str("authorization")
                .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256"))
        );
        assert_eq!(
            e.request.body,
            b"Action=GetCallerIdentity&Version=2011-06-15"
        );
        let r = e.response.as_ref().expect("response");
        assert_eq!(r.head.status, 200);
        assert!(r.body.starts_with(b"<GetCallerIdentityResponse"));
        assert!(e.response_ts.is_some_and(|t| t > e.request_ts));
    }
    assert_eq!(a.stats().h2_broken, 0);
}

#[test]
fn go_sdk_v2_http2_calls() {
    let (out, a) = replay(&records("go_sdkv2_http2.bin"));
    let calls: Vec<(String, String, u16)> = out
        .iter()
        .map(|e| {
            assert!(e.http2);
            assert_eq!(e.source, SRC_GO);
            let path = e
                .request
                .head
                .target
                .split('?')
                .next()
                .unwrap_or("")
                .to_string();
            (
                e.request.head.method.clone(),
                path,
                e.response.as_ref().map_or(0, |r| r.head.status),
            )
        })
        .collect();
    assert_eq!(calls.len(), 7, "{calls:?}");
    assert!(calls.iter().all(|c| c.2 == 200), "{calls:?}");
    let methods: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        methods,
        ["POST", "PUT", "PUT", "GET", "GET", "POST", "POST"]
    );
    let get = &out[3];
    assert_eq!(
        get.response.as_ref().map(|r| r.body.as_slice()),
        Some(&b"hello from go v2"[..])
    );
    let put_item = &out[6];
    assert_eq!(
        put_item.request.head.header_str("x-amz-target"),
        Some("DynamoDB_20120810.PutItem")
    );
    assert_eq!(a.stats().h2_broken, 0);
}

/// Lost, duplicated, truncated and corrupted records never panic the assembler, and a lost
/// record inside a header block gives the connection up instead of inventing calls.
#[test]
fn damaged_recordings_never_panic() {
    for name in ["curl_http2_sts.bin", "go_sdkv2_http2.bin"] {
        let recs = records(name);
        for skip in 0..recs.len() {
            let mut v = recs.clone();
            v.remove(skip);
            let _ = replay(&v);
            let mut d = recs.clone();
            d.insert(skip, recs[skip].clone());
            let _ = replay(&d);
            let mut c = recs.clone();
            let n = c[skip].len();
            for (k, b) in c[skip].iter_mut().enumerate().skip(72) {
                *b ^= (k as u8).wrapping_mul(31) | 1;
            }
            let _ = replay(&c);
            let mut t = recs.clone();
            t[skip].truncate(n / 2);
            let _ = replay(&t);
        }
    }
}

/// The recorded Go HTTP/2 connection, then the same recording again as a second connection
/// whose `*tls.Conn` got the first one's address (Go frees and reuses them; there is no close
/// hook): the second preface starts a new connection, and both give all their calls.
#[test]
fn go_http2_connection_at_a_reused_address() {
    let recs = records("go_sdkv2_http2.bin");
    let keys: std::collections::BTreeSet<(u32, u64)> = recs
        .iter()
        .filter_map(|r| Record::parse(r).ok())
        .map(|r| (r.header.tgid, r.header.conn))
        .collect();
    assert_eq!(keys.len(), 1, "one connection recorded");
    let last_ts = recs
        .iter()
        .filter_map(|r| Record::parse(r).ok())
        .map(|r| r.header.ts_ns)
        .max()
        .unwrap_or(0);
    let mut twice = recs.clone();
    for r in &recs {
        let mut r = r.clone();
        // Later in time, same process and address.
        let ts = u64::from_le_bytes(r[..8].try_into().expect("ts")) + last_ts;
        r[..8].copy_from_slice(&ts.to_le_bytes());
        twice.push(r);
    }
    let (out, a) = replay(&twice);
    assert_eq!(out.len(), 14, "7 calls on each connection");
    assert!(
        out.iter()
            .all(|e| e.http2 && e.response.as_ref().is_some_and(|r| r.head.status == 200))
    );
    assert_eq!(a.stats().reused_addresses, 1);
    assert_eq!(a.stats().h2_broken, 0);
}
