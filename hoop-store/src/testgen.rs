//! Deterministic generator of realistic call records, for tests, the crash test and the
//! benchmark. Not part of the stable API.

use hoop_event::*;
use serde_json::json;

/// Secrets the generator plants in traffic (before masking) so tests can grep for them.
pub const SECRET_STRING: &str = "PLANTED-SecretString-Tr0ub4dor&3";
pub const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMIK7MDENGbPxRfiCYPLANTEDKEY01";
pub const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEPLANTEDsessionTOKENvalue0123456789abcdefABCDEF";
pub const SIGNATURE: &str = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
pub const SSM_VALUE: &str = "PLANTED-ssm-decrypted-value";
/// A KMS Decrypt plaintext (base64, as the API returns it).
pub const KMS_PLAINTEXT: &str = "UExBTlRFRC1rbXMtcGxhaW50ZXh0LWRhdGEta2V5";
pub const LAMBDA_ENV_VALUE: &str = "PLANTED-lambda-env-DB_PASSWORD-hunter2";
pub const OBJECT_BODY: &str = "PLANTED-object-body-quarterly-numbers";

/// (service, operation, action, read_only, resource template; `{n}` = small number)
pub const CALLS: &[(&str, &str, &str, bool, &str)] = &[
    (
        "s3",
        "GetObject",
        "s3:GetObject",
        true,
        "arn:aws:s3:::data-{n}/reports/{m}.csv",
    ),
    (
        "s3",
        "PutObject",
        "s3:PutObject",
        false,
        "arn:aws:s3:::data-{n}/uploads/{m}.bin",
    ),
    (
        "s3",
        "ListObjectsV2",
        "s3:ListBucket",
        true,
        "arn:aws:s3:::data-{n}",
    ),
    ("s3", "ListBuckets", "s3:ListAllMyBuckets", true, ""),
    (
        "dynamodb",
        "GetItem",
        "dynamodb:GetItem",
        true,
        "arn:aws:dynamodb:us-east-1:111122223333:table/orders-{n}",
    ),
    (
        "dynamodb",
        "PutItem",
        "dynamodb:PutItem",
        false,
        "arn:aws:dynamodb:us-east-1:111122223333:table/orders-{n}",
    ),
    (
        "dynamodb",
        "Query",
        "dynamodb:Query",
        true,
        "arn:aws:dynamodb:us-east-1:111122223333:table/orders-{n}",
    ),
    (
        "sts",
        "GetCallerIdentity",
        "sts:GetCallerIdentity",
        true,
        "",
    ),
    (
        "sts",
        "AssumeRole",
        "sts:AssumeRole",
        false,
        "arn:aws:iam::111122223333:role/deploy-{n}",
    ),
    (
        "secretsmanager",
        "GetSecretValue",
        "secretsmanager:GetSecretValue",
        true,
        "arn:aws:secretsmanager:us-east-1:111122223333:secret:db-{n}",
    ),
    (
        "ssm",
        "GetParameter",
        "ssm:GetParameter",
        true,
        "arn:aws:ssm:us-east-1:111122223333:parameter/app/{n}",
    ),
    ("iam", "ListRoles", "iam:ListRoles", true, ""),
    (
        "iam",
        "CreateUser",
        "iam:CreateUser",
        false,
        "arn:aws:iam::111122223333:user/u-{n}",
    ),
    (
        "ec2",
        "DescribeInstances",
        "ec2:DescribeInstances",
        true,
        "",
    ),
    (
        "ec2",
        "TerminateInstances",
        "ec2:TerminateInstances",
        false,
        "arn:aws:ec2:us-east-1:111122223333:instance/i-0{n}",
    ),
    (
        "kms",
        "Decrypt",
        "kms:Decrypt",
        true,
        "arn:aws:kms:us-east-1:111122223333:key/k-{n}",
    ),
    (
        "lambda",
        "GetFunction",
        "lambda:GetFunction",
        true,
        "arn:aws:lambda:us-east-1:111122223333:function:fn-{n}",
    ),
];

pub struct Gen {
    state: u64,
    pub identities: usize,
}

impl Gen {
    pub fn new(seed: u64, identities: usize) -> Gen {
        Gen {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            identities: identities.max(1),
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic and dependency-free.
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// The principal for identity number `i`.
    pub fn identity(i: usize) -> Identity {
        match i % 5 {
            4 if i % 10 == 9 => Identity::default(),
            3 => Identity {
                access_key_id: Some(format!("AKIAGEN{i:013}")),
                ..Default::default()
            },
            2 => Identity {
                access_key_id: Some(format!("AKIAUSR{i:013}")),
                principal_arn: Some(format!("arn:aws:iam::111122223333:user/user-{i}")),
                account_id: Some("111122223333".into()),
                source: Some("config".into()),
                ..Default::default()
            },
            _ => Identity {
                access_key_id: Some(format!("ASIAROL{i:013}")),
                principal_arn: Some(format!(
                    "arn:aws:sts::111122223333:assumed-role/agent-role-{i}/session-{i}"
                )),
                account_id: Some("111122223333".into()),
                source: Some("sts".into()),
                ..Default::default()
            },
        }
    }

    /// One record at `time_ns`. `plant` adds secrets to the traffic (masked later).
    pub fn record(&mut self, time_ns: u64, plant: bool) -> CallRecord {
        let who = self.below(self.identities as u64) as usize;
        let (service, op, action, ro, res) = CALLS[self.below(CALLS.len() as u64) as usize];
        let n = self.below(4);
        let m = self.below(50);
        let resources = if res.is_empty() {
            vec![]
        } else {
            vec![
                res.replace("{n}", &n.to_string())
                    .replace("{m}", &m.to_string()),
            ]
        };
        let effect = match self.below(100) {
            0..=84 => "allow",
            85..=89 => "audit",
            90..=93 => "deny",
            94..=96 => "would-deny",
            97 => "approval-requested",
            _ => "approved",
        };
        let status_err = self.below(100);
        let (status, error_code) = if effect == "deny" {
            (0, None)
        } else if status_err < 4 {
            (403, Some("AccessDenied".to_string()))
        } else if status_err < 6 {
            (400, Some("ThrottlingException".to_string()))
        } else {
            (200, None)
        };
        let pid = 1000 + (who as u32) * 10 + self.below(3) as u32;
        let workload = match who % 3 {
            0 => Workload {
                kind: "pod".into(),
                namespace: Some(format!("team-{}", who % 4)),
                pod: Some(format!("agent-{who}-7f9c")),
                container_id: Some(format!("{:064x}", who)),
                service_account: Some(format!("sa-{who}")),
                ..Default::default()
            },
            1 => Workload {
                kind: "container".into(),
                container_id: Some(format!("c0ffee{who:058x}")),
                runtime: Some("containerd".into()),
                ..Default::default()
            },
            _ => Workload {
                kind: "host".into(),
                ..Default::default()
            },
        };
        let comm = ["python3", "aws", "node", "terraform"][who % 4];
        let mut params = json!({"Bucket": format!("data-{n}"), "Key": format!("k{m}")});
        let mut elements = json!({"ok": true});
        let mut query = None;
        if plant {
            match service {
                "secretsmanager" => {
                    elements = json!({"Name": format!("db-{n}"), "SecretString": SECRET_STRING})
                }
                "sts" => {
                    elements = json!({"Credentials": {"AccessKeyId": "ASIAPLANTED", "SecretAccessKey": SECRET_ACCESS_KEY, "SessionToken": SESSION_TOKEN}})
                }
                "kms" => {
                    elements = json!({"KeyId": format!("k-{n}"), "Plaintext": KMS_PLAINTEXT, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
                }
                "lambda" => {
                    elements = json!({"Configuration": {"FunctionName": format!("fn-{n}"), "Environment": {"Variables": {"DB_PASSWORD": LAMBDA_ENV_VALUE}}}})
                }
                "s3" => {
                    params = json!({"Bucket": format!("data-{n}"), "Key": format!("k{m}"), "Body": OBJECT_BODY});
                }
                "ssm" => {
                    params = json!({"Name": format!("/app/{n}"), "WithDecryption": true});
                    elements = json!({"Parameter": {"Name": format!("/app/{n}"), "Type": "SecureString", "Value": SSM_VALUE}});
                }
                _ => {
                    query = Some(format!(
                        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIA%2F20261125&X-Amz-Security-Token={SESSION_TOKEN}&X-Amz-Signature={SIGNATURE}"
                    ))
                }
            }
        }
        CallRecord {
            version: RECORD_VERSION,
            time: crate::timefmt::rfc3339(time_ns),
            time_ns,
            duration_ms: Some((self.below(5000) as f64) / 100.0),
            process: Process {
                pid,
                tid: pid,
                comm: comm.into(),
                exe: Some(format!("/usr/bin/{comm}")),
                cmdline: Some(format!("{comm} run task-{who}")),
                uid: 1000,
                ppid: Some(1),
                start_time: Some("2026-11-25T17:00:00Z".into()),
                session: Some(Ancestor {
                    pid: 900 + who as u32,
                    comm: "bash".into(),
                    exe: Some("/usr/bin/bash".into()),
                    start_time: Some("2026-11-25T16:00:00Z".into()),
                }),
                cgroup_id: 4242 + who as u64,
                ..Default::default()
            },
            workload,
            identity: Gen::identity(who),
            connection: Connection {
                id: format!("{:x}", 0x5555_0000u64 + (pid as u64) * 16 + self.below(2)),
                tls: "openssl".into(),
                http: "HTTP/1.1".into(),
            },
            request: Request {
                method: if ro { "GET" } else { "POST" }.into(),
                host: Some(format!("{service}.us-east-1.amazonaws.com")),
                path: "/".into(),
                query,
                content_type: Some("application/x-amz-json-1.0".into()),
                body_bytes: 100 + self.below(1000),
                parameters: Some(params),
                user_agent: Some("Boto3/1.35.0 md/Botocore#1.35.0".into()),
            },
            response: if effect == "deny" {
                None
            } else {
                Some(Response {
                    status,
                    request_id: Some(format!("req-{:016x}", self.next())),
                    error_code,
                    body_bytes: self.below(4000),
                    elements: Some(elements),
                })
            },
            aws: Aws {
                service: service.into(),
                signing_service: Some(service.into()),
                region: Some("us-east-1".into()),
                operation: Some(op.into()),
                iam_action: Some(action.into()),
                read_only: Some(ro),
                resources,
                target: None,
                signature: Some("header".into()),
            },
            decision: Decision {
                effect: effect.into(),
                rule: if effect == "allow" {
                    None
                } else {
                    Some(format!("rule-{}", who % 3))
                },
                approval: None,
            },
            event: None,
        }
    }
}
