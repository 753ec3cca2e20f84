//! Synthetic requests for every operation of every service in the generated table, built the
//! way an SDK serialises them for the service's protocol (not through classifier internals),
//! classified back to (service, operation).

use std::collections::{BTreeMap, BTreeSet};

use hoop_aws::model::{Operation, Service, model};
use hoop_aws::{HttpRequest, classify, sigv4};

struct Built {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn sample(label: &str, greedy: bool) -> String {
    if greedy {
        format!("{}-x/y%2Fz/obj.txt", label.to_ascii_lowercase())
    } else {
        format!("{}-1", label.to_ascii_lowercase())
    }
}

/// Fills a request-URI template the way botocore's rest serializers do.
fn fill_uri(op: &Operation) -> String {
    let (path, query) = op.uri.split_once('?').unwrap_or((&op.uri, ""));
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').expect("template") + open;
        let label = &rest[open + 1..close];
        let (label, greedy) = match label.strip_suffix('+') {
            Some(l) => (l, true),
            None => (label, false),
        };
        out.push_str(&sample(label, greedy));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    let mut q: Vec<String> = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    for b in op.query.iter().filter(|b| b.required) {
        q.push(format!("{}={}", b.wire, "v1"));
    }
    if !q.is_empty() {
        out.push('?');
        out.push_str(&q.join("&"));
    }
    out
}

fn build(svc: &Service, op: &Operation, protocol: &str, custom_endpoint: bool) -> Built {
    let host = if custom_endpoint {
        "127.0.0.1:47001".to_string()
    } else {
        format!("{}.us-east-1.amazonaws.com", svc.endpoint_prefix)
    };
    let mut headers = vec![("Host".to_string(), host)];
    headers.push((
        "Authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261125/us-east-1/{}/aws4_request, SignedHeaders=host;x-amz-date, Signature=0",
            svc.signing_name
        ),
    ));
    headers.push(("X-Amz-Date".into(), "20261125T000000Z".into()));
    match protocol {
        "json" => {
            headers.push((
                "Content-Type".into(),
                format!("application/x-amz-json-{}", svc.json_version),
            ));
            headers.push((
                "X-Amz-Target".into(),
                format!("{}.{}", svc.target_prefix, op.name),
            ));
            Built {
                method: "POST".into(),
                target: "/".into(),
                headers,
                body: b"{}".to_vec(),
            }
        }
        "query" | "ec2" => {
            headers.push((
                "Content-Type".into(),
                "application/x-www-form-urlencoded; charset=utf-8".into(),
            ));
            Built {
                method: "POST".into(),
                target: "/".into(),
                headers,
                body: format!("Action={}&Version={}", op.name, svc.api_version).into_bytes(),
            }
        }
        "smithy-rpc-v2-cbor" => {
            headers.push(("smithy-protocol".into(), "rpc-v2-cbor".into()));
            headers.push(("Content-Type".into(), "application/cbor".into()));
            Built {
                method: "POST".into(),
                target: format!("/service/{}/operation/{}", svc.target_prefix, op.name),
                headers,
                body: vec![0xbf, 0xff],
            }
        }
        _ => {
            for b in op.headers.iter().filter(|b| b.required) {
                headers.push((b.wire.clone(), "h1".into()));
            }
            Built {
                method: op.method.clone(),
                target: fill_uri(op),
                headers,
                body: Vec::new(),
            }
        }
    }
}

fn classify_built(b: &Built) -> Option<hoop_aws::AwsCall> {
    let headers: Vec<(&str, &[u8])> = b
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let req = HttpRequest {
        method: &b.method,
        target: &b.target,
        headers: &headers,
        body: &b.body,
    };
    let cred = sigv4::parse(&req);
    classify(&req, cred.as_ref(), None, None)
}

/// What an SDK puts on the wire to name an operation; two operations with the same key cannot
/// be told apart by any classifier.
fn wire_key(svc: &Service, op: &Operation, protocol: &str, custom_endpoint: bool) -> String {
    let who = if custom_endpoint {
        svc.signing_name.clone()
    } else {
        svc.endpoint_prefix.clone()
    };
    match protocol {
        "json" => format!("json {}.{}", svc.target_prefix, op.name),
        "query" | "ec2" => format!("{protocol} {who} {} {}", svc.api_version, op.name),
        "smithy-rpc-v2-cbor" => format!("cbor {}.{}", svc.target_prefix, op.name),
        _ => {
            let req: BTreeSet<String> = op
                .query
                .iter()
                .chain(&op.headers)
                .filter(|b| b.required)
                .map(|b| b.wire.clone())
                .collect();
            let shape: String = op
                .uri
                .split('/')
                .map(|s| if s.starts_with('{') { "{}" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            format!("rest {who} {} {shape} {req:?}", op.method)
        }
    }
}

/// Protocols an SDK may use for the service: the model's preferred one and the JSON fallback
/// of services that list several.
fn protocols(svc: &Service) -> Vec<&str> {
    let mut p = vec![svc.protocol.as_str()];
    for extra in &svc.protocols {
        if !p.contains(&extra.as_str()) && (extra == "json" || extra == "query") {
            p.push(extra);
        }
    }
    p
}

#[derive(Default)]
struct Tally {
    exact: usize,
    alias: usize,
    wrong: Vec<String>,
    by_protocol: BTreeMap<String, usize>,
    services_exact: BTreeSet<String>,
    ops_exact: BTreeSet<(String, String)>,
    /// Service -> the services its wire-identical requests were classified as.
    classified_as: BTreeMap<String, BTreeSet<String>>,
}

fn run(custom_endpoint: bool) -> Tally {
    let m = model();
    let mut keys: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for svc in &m.services {
        for p in protocols(svc) {
            for op in &svc.operations {
                keys.entry(wire_key(svc, op, p, custom_endpoint))
                    .or_default()
                    .push((svc.name.clone(), op.name.clone()));
            }
        }
    }
    let mut t = Tally::default();
    for svc in &m.services {
        for p in protocols(svc) {
            for op in &svc.operations {
                let b = build(svc, op, p, custom_endpoint);
                let got = classify_built(&b);
                let got_pair = got
                    .as_ref()
                    .map(|c| (c.service.clone(), c.operation.clone()));
                let want = (svc.name.clone(), op.name.clone());
                if got_pair.as_ref() == Some(&want) {
                    t.exact += 1;
                    *t.by_protocol.entry(p.to_string()).or_default() += 1;
                    t.services_exact.insert(svc.name.clone());
                    t.ops_exact.insert(want);
                } else if let Some(pair) = &got_pair
                    && keys[&wire_key(svc, op, p, custom_endpoint)].contains(pair)
                {
                    t.alias += 1;
                    t.classified_as
                        .entry(svc.name.clone())
                        .or_default()
                        .insert(pair.0.clone());
                } else {
                    t.wrong.push(format!(
                        "{}.{} ({p}) {} {} -> {:?}",
                        svc.name, op.name, b.method, b.target, got_pair
                    ));
                }
            }
        }
    }
    t
}

/// Services every one of whose operations is, on the wire, also an operation of another
/// service (DocumentDB and Neptune speak RDS's API at RDS's endpoint; Pinpoint SMS Voice is
/// published twice). Classification names the canonical one.
fn indistinguishable(custom_endpoint: bool) -> BTreeSet<String> {
    let m = model();
    let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for svc in &m.services {
        for op in &svc.operations {
            owners
                .entry(wire_key(svc, op, &svc.protocol, custom_endpoint))
                .or_default()
                .insert(svc.name.clone());
        }
    }
    m.services
        .iter()
        .filter(|svc| {
            svc.operations
                .iter()
                .all(|op| owners[&wire_key(svc, op, &svc.protocol, custom_endpoint)].len() > 1)
        })
        .map(|s| s.name.clone())
        .collect()
}

/// The services no request of which can name them, and the service they are classified as
/// instead. Fixed here so that a botocore update changing the list fails this test.
/// - docdb, neptune: DocumentDB's and Neptune's management APIs are RDS's query API (same
///   endpoint `rds`, signing name `rds`, API version 2014-10-31, action names). IAM
///   authorises them as `rds:` actions, so the IAM action recorded is right.
/// - pinpoint-sms-voice: the same API as `sms-voice` (same endpoint prefix, signing name and
///   request URIs), published under two names.
/// - signer-data, with a custom endpoint only: signs as `signer` and its operations have
///   `signer`'s request URIs; the `data-signer` host tells them apart otherwise.
fn expected_aliases(custom_endpoint: bool) -> BTreeMap<String, BTreeSet<String>> {
    let mut a = vec![
        ("docdb", "rds"),
        ("neptune", "rds"),
        ("pinpoint-sms-voice", "sms-voice"),
    ];
    if custom_endpoint {
        a.push(("signer-data", "signer"));
    }
    a.into_iter()
        .map(|(s, to)| (s.to_string(), BTreeSet::from([to.to_string()])))
        .collect()
}

fn check(custom_endpoint: bool) {
    let m = model();
    let t = run(custom_endpoint);
    let shared = indistinguishable(custom_endpoint);
    let missing: Vec<&String> = m
        .services
        .iter()
        .map(|s| &s.name)
        .filter(|s| !t.services_exact.contains(*s))
        .collect();
    eprintln!(
        "custom_endpoint={custom_endpoint}: services {}, with an exact hit {}, requests exact {}, \
         distinct operations exact {}, wire-identical aliases {}, wrong {}; by protocol {:?}",
        m.services.len(),
        t.services_exact.len(),
        t.exact,
        t.ops_exact.len(),
        t.alias,
        t.wrong.len(),
        t.by_protocol
    );
    eprintln!("services without an exact hit: {missing:?}");
    for w in t.wrong.iter().take(40) {
        eprintln!("WRONG {w}");
    }
    assert!(t.wrong.is_empty(), "{} misclassified", t.wrong.len());
    assert!(t.ops_exact.len() >= 300);
    // Every service has an operation classified as itself, except the documented aliases,
    // each of which is wire-identical to, and classified as, the one service listed.
    let expected = expected_aliases(custom_endpoint);
    let got: BTreeMap<String, BTreeSet<String>> = missing
        .iter()
        .map(|s| {
            let to = t.classified_as.get(*s).cloned().unwrap_or_default();
            ((*s).clone(), to)
        })
        .collect();
    assert_eq!(
        got, expected,
        "services without an operation classified as themselves -> what they are classified as"
    );
    for s in expected.keys() {
        assert!(shared.contains(s), "{s} is distinguishable on the wire");
    }
    for p in [
        "json",
        "query",
        "ec2",
        "rest-json",
        "rest-xml",
        "smithy-rpc-v2-cbor",
    ] {
        assert!(t.by_protocol.get(p).is_some_and(|&n| n > 0), "{p}");
    }
}

#[test]
fn every_operation_of_every_service_by_host() {
    check(false);
}

#[test]
fn every_operation_of_every_service_custom_endpoint() {
    check(true);
}
