//! Hostile and malformed input never panics the classifier.

use hoop_aws::{HttpRequest, classify, sigv4};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic, no dependency.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const PIECES: &[&str] = &[
    "/",
    "//",
    "{",
    "}",
    "?",
    "&",
    "=",
    "%",
    "%2",
    "%zz",
    "%2F",
    "+",
    "..",
    "service",
    "operation",
    "bucket",
    "Key+",
    "x-id=GetObject",
    "list-type=2",
    "tagging",
    "uploads",
    "Action=",
    "Version=",
    "arn:",
    "arn:aws:s3:::b",
    "\u{00e9}",
    "\u{1F600}",
    "2015-03-31",
    "functions",
    "#",
    "://",
    "X-Amz-Credential=a%2F20261125%2Fus-east-1%2Fs3%2Faws4_request",
    "X-Amz-Algorithm=AWS4-HMAC-SHA256",
];
const HOSTS: &[&str] = &[
    "",
    ":",
    ".",
    "..amazonaws.com",
    "amazonaws.com",
    ".amazonaws.com",
    "s3.amazonaws.com",
    "-.s3-accesspoint.us-east-1.amazonaws.com",
    "a-123456789012.s3-accesspoint.x.amazonaws.com",
    "dualstack.us-east-1.amazonaws.com",
    "fips.amazonaws.com",
    "s3-.amazonaws.com",
    "s3-us-east-1.amazonaws.com",
    "us-east-1.amazonaws.com",
    "[::1]:443",
    "127.0.0.1:99999999999",
    "b.s3.dualstack.fips.us-east-1.amazonaws.com",
    "s3express-.amazonaws.com",
    "\u{00e9}.amazonaws.com",
    "sqs.us-east-1.api.aws",
    "x.y.z.streams.dynamodb.eu-west-1.amazonaws.com.cn",
];
const TARGETS: &[&str] = &[
    "",
    ".",
    "DynamoDB_20120810.",
    ".GetItem",
    "DynamoDB_20120810.GetItem",
    "AmazonSQS.SendMessage",
    "a.b.c.d",
    "TrentService.\u{00e9}",
];
const SCOPES: &[&str] = &[
    "us-east-1/s3",
    "us-east-1/dynamodb",
    "*/s3",
    "x/monitoring",
    "us-east-1/nope",
    "us-east-1/execute-api",
];

#[test]
fn random_requests_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..20_000 {
        let mut target = String::new();
        for _ in 0..(rng.next() % 8) {
            target.push_str(rng.pick(PIECES));
        }
        let method = rng.pick(&[
            "GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "", "get", "\u{0}",
        ]);
        let host = rng.pick(HOSTS);
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKID/20261125/{}/aws4_request, Signature=0",
            rng.pick(SCOPES)
        );
        let xt = rng.pick(TARGETS);
        let len = (rng.next() % 64) as usize;
        let garbage = rng.bytes(len);
        let body: Vec<u8> = match i % 5 {
            0 => garbage.clone(),
            1 => {
                let mut b = br#"{"TableName":"t","Names":["a",1,{"x":[}"#.to_vec();
                b.extend_from_slice(&garbage);
                b
            }
            2 => format!(
                "Action={}&Version=2&InstanceId.1=i-1&%zz=%",
                rng.pick(&["GetItem", "DescribeInstances", "", "AssumeRole"])
            )
            .into_bytes(),
            3 => b"{\"a\":\"\\".to_vec(),
            _ => Vec::new(),
        };
        let headers: Vec<(&str, &[u8])> = vec![
            ("Host", host.as_bytes()),
            ("Authorization", auth.as_bytes()),
            ("X-Amz-Target", xt.as_bytes()),
            ("Content-Type", b"application/x-www-form-urlencoded"),
            ("x-amz-copy-source", &garbage),
        ];
        let n = (rng.next() % (headers.len() as u64 + 1)) as usize;
        let req = HttpRequest {
            method,
            target: &target,
            headers: &headers[..n],
            body: &body,
        };
        let cred = sigv4::parse(&req);
        let _ = classify(&req, cred.as_ref(), None, None);
        let _ = classify(&req, cred.as_ref(), Some(host), Some(""));
    }
}

#[test]
fn truncated_real_requests_never_panic() {
    let body =
        br#"{"TableName":"users","Key":{"id":{"S":"1"}},"RequestItems":{"t":[1,2]},"Names":["x"]}"#;
    let target = "/bucket/a%2Fb/c?tagging&versionId=%41&x-id=GetObject";
    let auth = b"AWS4-HMAC-SHA256 Credential=AKID/20261125/us-east-1/s3/aws4_request, Signature=0";
    for cut in 0..=body.len() {
        for t in (0..=target.len()).filter(|&i| target.is_char_boundary(i)) {
            let headers: &[(&str, &[u8])] = &[
                ("Host", b"bkt.s3.us-east-1.amazonaws.com"),
                ("Authorization", auth),
                ("x-amz-copy-source", b"%2"),
            ];
            let req = HttpRequest {
                method: "PUT",
                target: &target[..t],
                headers,
                body: &body[..cut],
            };
            let cred = sigv4::parse(&req);
            let _ = classify(&req, cred.as_ref(), None, Some("1"));
        }
    }
}

#[test]
fn unsigned_unknown_host_is_not_classified() {
    let req = HttpRequest {
        method: "GET",
        target: "/index.html",
        headers: &[("Host", b"example.com")],
        body: b"",
    };
    assert!(classify(&req, None, None, None).is_none());
}
