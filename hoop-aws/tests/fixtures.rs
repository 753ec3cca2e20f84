//! Real requests recorded from boto3, the AWS CLI and the JavaScript SDK v3 against moto
//! (`tests/record/`), classified back to the service and operation the SDK called.

use std::collections::BTreeSet;

use base64::Engine as _;
use hoop_aws::{HttpRequest, classify, sigv4};
use serde_json::Value;

struct Recorded {
    sdk: String,
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    service: String,
    operation: String,
}

fn load() -> Vec<Recorded> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(&f).expect("read").lines() {
            let v: Value = serde_json::from_str(line).expect("json line");
            let s = |k: &str| v[k].as_str().expect(k).to_string();
            out.push(Recorded {
                sdk: s("sdk"),
                method: s("method"),
                target: s("target"),
                headers: v["headers"]
                    .as_array()
                    .expect("headers")
                    .iter()
                    .map(|h| {
                        (
                            h[0].as_str().expect("name").to_string(),
                            h[1].as_str().expect("value").as_bytes().to_vec(),
                        )
                    })
                    .collect(),
                body: base64::engine::general_purpose::STANDARD
                    .decode(s("body_b64"))
                    .expect("base64"),
                service: s("service"),
                operation: s("operation"),
            });
        }
    }
    out
}

#[test]
fn recorded_sdk_requests() {
    let all = load();
    assert!(all.len() >= 150, "{} fixtures", all.len());
    let mut ops = BTreeSet::new();
    let mut sdks = BTreeSet::new();
    let mut failures = Vec::new();
    for r in &all {
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let req = HttpRequest {
            method: &r.method,
            target: &r.target,
            headers: &headers,
            body: &r.body,
        };
        let cred = sigv4::parse(&req);
        match classify(&req, cred.as_ref(), None, Some("123456789012")) {
            Some(c) if c.service == r.service && c.operation == r.operation => {
                println!(
                    "{:6} {:14} {:28} {:40} {:?}",
                    r.sdk, c.service, c.operation, c.iam_action, c.resources
                );
                ops.insert((c.service.clone(), c.operation.clone()));
                sdks.insert(r.sdk.clone());
            }
            other => failures.push(format!(
                "{} {}.{}: {} {} -> {:?}",
                r.sdk, r.service, r.operation, r.method, r.target, other
            )),
        }
    }
    for f in &failures {
        eprintln!("FAIL {f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} misclassified",
        failures.len(),
        all.len()
    );
    eprintln!(
        "{} requests, {} distinct operations, sdks {sdks:?}",
        all.len(),
        ops.len()
    );
    assert_eq!(sdks.len(), 3);
}
