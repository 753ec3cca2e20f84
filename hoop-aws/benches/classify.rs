//! Classification cost over a realistic mix: every request recorded from boto3, the AWS CLI and
//! the JS SDK v3 (tests/fixtures), SigV4 scope parsing included, as the agent does per call.

use std::hint::black_box;
use std::time::Instant;

use base64::Engine as _;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hoop_aws::{HttpRequest, classify, sigv4};

struct Owned {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

fn load() -> Vec<Owned> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        for line in std::fs::read_to_string(f).expect("read").lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            out.push(Owned {
                method: v["method"].as_str().expect("method").to_string(),
                target: v["target"].as_str().expect("target").to_string(),
                headers: v["headers"]
                    .as_array()
                    .expect("headers")
                    .iter()
                    .map(|h| {
                        let n = h[0].as_str().expect("n").to_string();
                        (n, h[1].as_str().expect("v").as_bytes().to_vec())
                    })
                    .collect(),
                body: base64::engine::general_purpose::STANDARD
                    .decode(v["body_b64"].as_str().expect("body"))
                    .expect("b64"),
            });
        }
    }
    out
}

fn one(o: &Owned, headers: &[(&str, &[u8])]) -> bool {
    let req = HttpRequest {
        method: &o.method,
        target: &o.target,
        headers,
        body: &o.body,
    };
    let cred = sigv4::parse(&req);
    classify(&req, cred.as_ref(), None, Some("123456789012")).is_some()
}

fn bench(c: &mut Criterion) {
    let reqs = load();
    let headers: Vec<Vec<(&str, &[u8])>> = reqs
        .iter()
        .map(|o| {
            o.headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect()
        })
        .collect();
    // Load the model outside the measurement.
    assert!(one(&reqs[0], &headers[0]));

    // Median of per-request times over the mix, printed for `cargo xtask bench`.
    let mut samples = Vec::new();
    for _ in 0..50 {
        for (o, h) in reqs.iter().zip(&headers) {
            let t = Instant::now();
            black_box(one(black_box(o), h));
            samples.push(t.elapsed().as_nanos());
        }
    }
    samples.sort_unstable();
    println!(
        "classify: {} requests in the mix, median {} ns per request, p90 {} ns",
        reqs.len(),
        samples[samples.len() / 2],
        samples[samples.len() * 9 / 10]
    );

    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(reqs.len() as u64));
    g.bench_function("recorded_sdk_mix", |b| {
        b.iter(|| {
            let mut n = 0;
            for (o, h) in reqs.iter().zip(&headers) {
                n += usize::from(one(black_box(o), h));
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
