//! Real requests recorded from boto3, the AWS CLI and the JavaScript SDK v3 against moto
//! (`tests/record/`), classified back to the service and operation the SDK called, with the IAM
//! action it needs.

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

/// Resource ARNs the recorded requests must yield (account from the principal).
const EXPECTED_RESOURCES: &[(&str, &str, &str, &str)] = &[
    (
        "boto3",
        "s3",
        "GetObject",
        "arn:aws:s3:::rec-bucket/dir/a b.txt",
    ),
    ("boto3", "s3", "GetObject", "arn:aws:s3:::vh-bucket/k/1.txt"),
    ("boto3", "s3", "ListObjectsV2", "arn:aws:s3:::rec-bucket"),
    (
        "boto3",
        "s3",
        "CopyObject",
        "arn:aws:s3:::rec-bucket/dir/a b.txt",
    ),
    (
        "js-v3",
        "s3",
        "GetObject",
        "arn:aws:s3:::js-vh-bucket/k/1.txt",
    ),
    ("js-v3", "s3", "UploadPart", "arn:aws:s3:::js-bucket/m.bin"),
    (
        "boto3",
        "dynamodb",
        "GetItem",
        "arn:aws:dynamodb:us-east-1:123456789012:table/rec-table",
    ),
    (
        "boto3",
        "dynamodb",
        "BatchGetItem",
        "arn:aws:dynamodb:us-east-1:123456789012:table/rec-table",
    ),
    (
        "js-v3",
        "dynamodb",
        "BatchWriteItem",
        "arn:aws:dynamodb:us-east-1:123456789012:table/js-table",
    ),
    (
        "boto3",
        "lambda",
        "Invoke",
        "arn:aws:lambda:us-east-1:123456789012:function:rec-fn",
    ),
    (
        "boto3",
        "secretsmanager",
        "GetSecretValue",
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:rec/secret",
    ),
    (
        "boto3",
        "ssm",
        "GetParameter",
        "arn:aws:ssm:us-east-1:123456789012:parameter/rec/param",
    ),
    (
        "boto3",
        "ssm",
        "GetParameters",
        "arn:aws:ssm:us-east-1:123456789012:parameter/other",
    ),
    (
        "boto3",
        "sqs",
        "SendMessage",
        "arn:aws:sqs:us-east-1:123456789012:rec-queue",
    ),
    (
        "js-v3",
        "sqs",
        "SendMessage",
        "arn:aws:sqs:us-east-1:123456789012:js-queue",
    ),
    (
        "boto3",
        "sns",
        "Publish",
        "arn:aws:sns:us-east-1:123456789012:rec-topic",
    ),
    (
        "boto3",
        "kms",
        "DescribeKey",
        "arn:aws:kms:us-east-1:123456789012:alias/rec",
    ),
    (
        "boto3",
        "iam",
        "CreateUser",
        "arn:aws:iam::123456789012:user/rec-user",
    ),
    (
        "boto3",
        "iam",
        "AttachRolePolicy",
        "arn:aws:iam::123456789012:policy/rec-policy",
    ),
    (
        "js-v3",
        "iam",
        "CreateRole",
        "arn:aws:iam::123456789012:role/js-role",
    ),
    (
        "boto3",
        "sts",
        "AssumeRole",
        "arn:aws:iam::123456789012:role/rec-role",
    ),
    (
        "js-v3",
        "sts",
        "AssumeRole",
        "arn:aws:iam::123456789012:role/js-role",
    ),
    (
        "boto3",
        "ec2",
        "TerminateInstances",
        "arn:aws:ec2:us-east-1:123456789012:instance/i-b4f82b827a0eec3f7",
    ),
    (
        "boto3",
        "ecs",
        "CreateCluster",
        "arn:aws:ecs:us-east-1:123456789012:cluster/rec-cluster",
    ),
    (
        "boto3",
        "ecr",
        "CreateRepository",
        "arn:aws:ecr:us-east-1:123456789012:repository/rec-repo",
    ),
    (
        "boto3",
        "logs",
        "CreateLogGroup",
        "arn:aws:logs:us-east-1:123456789012:log-group:/rec/group",
    ),
    (
        "boto3",
        "kinesis",
        "DescribeStream",
        "arn:aws:kinesis:us-east-1:123456789012:stream/rec-stream",
    ),
    (
        "boto3",
        "cloudformation",
        "DescribeStacks",
        "arn:aws:cloudformation:us-east-1:123456789012:stack/rec-stack/*",
    ),
    (
        "boto3",
        "ecs",
        "DescribeServices",
        "arn:aws:ecs:us-east-1:123456789012:service/rec-cluster/rec-svc",
    ),
    (
        "boto3",
        "eks",
        "DescribeCluster",
        "arn:aws:eks:us-east-1:123456789012:cluster/rec-eks",
    ),
    (
        "boto3",
        "rds",
        "DescribeDBInstances",
        "arn:aws:rds:us-east-1:123456789012:db:rec-db",
    ),
    (
        "boto3",
        "stepfunctions",
        "DescribeStateMachine",
        "arn:aws:states:us-east-1:123456789012:stateMachine:rec",
    ),
    (
        "boto3",
        "events",
        "DescribeEventBus",
        "arn:aws:events:us-east-1:123456789012:event-bus/default",
    ),
];

/// IAM actions of the recorded calls that are not `<IAM prefix>:<Operation>` (Service
/// Authorization Reference), and IAM prefixes that are not the service name.
const IAM_EXCEPTIONS: &[(&str, &str, &str)] = &[
    ("s3", "CompleteMultipartUpload", "s3:PutObject"),
    ("s3", "CopyObject", "s3:PutObject"),
    ("s3", "CreateMultipartUpload", "s3:PutObject"),
    ("s3", "UploadPart", "s3:PutObject"),
    ("s3", "DeleteBucketTagging", "s3:PutBucketTagging"),
    ("s3", "DeleteObjects", "s3:DeleteObject"),
    ("s3", "GetBucketEncryption", "s3:GetEncryptionConfiguration"),
    ("s3", "HeadBucket", "s3:ListBucket"),
    ("s3", "ListObjects", "s3:ListBucket"),
    ("s3", "ListObjectsV2", "s3:ListBucket"),
    ("s3", "HeadObject", "s3:GetObject"),
    ("s3", "ListBuckets", "s3:ListAllMyBuckets"),
    (
        "s3",
        "ListMultipartUploads",
        "s3:ListBucketMultipartUploads",
    ),
    ("s3", "ListObjectVersions", "s3:ListBucketVersions"),
    ("s3", "ListParts", "s3:ListMultipartUploadParts"),
    ("lambda", "Invoke", "lambda:InvokeFunction"),
];
const IAM_PREFIXES: &[(&str, &str)] = &[("stepfunctions", "states")];

fn expected_iam_action(service: &str, operation: &str) -> String {
    if let Some((_, _, a)) = IAM_EXCEPTIONS
        .iter()
        .find(|(s, o, _)| *s == service && *o == operation)
    {
        return a.to_string();
    }
    let prefix = IAM_PREFIXES
        .iter()
        .find(|(s, _)| *s == service)
        .map_or(service, |(_, p)| p);
    format!("{prefix}:{operation}")
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
            Some(c)
                if c.service == r.service
                    && c.operation == r.operation
                    && c.iam_action == expected_iam_action(&r.service, &r.operation) =>
            {
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
    for (sdk, svc, op, arn) in EXPECTED_RESOURCES {
        let hit = all.iter().any(|r| {
            if r.sdk != *sdk || r.service != *svc || r.operation != *op {
                return false;
            }
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
            classify(&req, cred.as_ref(), None, Some("123456789012"))
                .is_some_and(|c| c.resources.iter().any(|a| a == arn))
        });
        assert!(hit, "{sdk} {svc}.{op}: no request names {arn}");
    }
    eprintln!(
        "{} requests, {} distinct operations, sdks {sdks:?}",
        all.len(),
        ops.len()
    );
    assert_eq!(sdks.len(), 3);
}
