//! End-to-end: the real agent, real eBPF uprobes on real TLS libraries, real AWS SDKs talking
//! TLS to a real AWS emulator. Each SDK call must appear exactly once, attributed to the
//! process that made it, with the right request, signing scope and response.

use hoop_e2e::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// The account moto answers GetCallerIdentity with: once the agent has seen that answer, the
/// ARNs of later calls signed with the same key carry it.
const ACCOUNT: &str = "123456789012";

/// What a user reads in a record about one AWS call.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    method: String,
    path: String,
    service: String,
    operation: String,
    iam_action: String,
    read_only: bool,
    resources: Vec<String>,
}

/// An expected call; `resources` in the order the record lists them.
fn call(
    (method, path): (&str, &str),
    (service, operation): (&str, &str),
    iam_action: &str,
    read_only: bool,
    resources: &[&str],
) -> Call {
    Call {
        method: method.into(),
        path: path.into(),
        service: service.into(),
        operation: operation.into(),
        iam_action: iam_action.into(),
        read_only,
        resources: resources.iter().map(|s| s.to_string()).collect(),
    }
}

fn seen(r: &Value) -> Call {
    let s = |v: &Value| v.as_str().unwrap_or("<missing>").to_string();
    Call {
        method: s(&r["request"]["method"]),
        path: s(&r["request"]["path"]),
        service: s(&r["aws"]["service"]),
        operation: s(&r["aws"]["operation"]),
        iam_action: s(&r["aws"]["iam_action"]),
        read_only: r["aws"]["read_only"] == true,
        resources: r["aws"]["resources"]
            .as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default(),
    }
}

/// The records of one client are exactly the expected calls: one record per call and no
/// other, each with its service, operation, IAM action, read-only flag and resource ARNs, the
/// region, the signing key and a successful response.
fn assert_calls(what: &str, recs: &[Value], expected: Vec<Call>) {
    for r in recs {
        assert_eq!(r["aws"]["region"], REGION, "{what}: region of {r}");
        assert_eq!(
            r["identity"]["access_key_id"], ACCESS_KEY_ID,
            "{what}: access key of {r}"
        );
        let status = r["response"]["status"].as_u64().unwrap_or(0);
        assert!((200..300).contains(&status), "{what}: status of {r}");
        assert!(r["response"]["request_id"].is_string(), "request id in {r}");
    }
    let mut got: Vec<Call> = recs.iter().map(seen).collect();
    let mut want = expected;
    got.sort();
    want.sort();
    let missing: Vec<&Call> = want.iter().filter(|c| !got.contains(c)).collect();
    let unexpected: Vec<&Call> = got.iter().filter(|c| !want.contains(c)).collect();
    assert!(
        got == want,
        "{what}: {} records, {} expected\nexpected but not recorded:\n{missing:#?}\nrecorded but not expected:\n{unexpected:#?}",
        got.len(),
        want.len()
    );
}

fn no_secrets(agent: &Agent) {
    let raw = std::fs::read_to_string(&agent.output).unwrap_or_default();
    assert!(!raw.contains(SECRET_ACCESS_KEY), "secret key in output");
    assert!(!raw.contains("Signature="), "SigV4 signature in output");
}

fn info_str<'a>(info: &'a Value, key: &str) -> &'a str {
    info[key].as_str().unwrap_or("<missing>")
}

#[test]
fn boto3_calls_are_captured_once_each() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    let mut cmd = python();
    cmd.arg(client_script("boto3_calls.py"));
    emu.client_env(&mut cmd);
    let (pid, out) = run_client(cmd)?;
    let info: Value = serde_json::from_str(out.trim())?;
    assert_eq!(info["pid"], pid);
    assert_eq!(info["account"], ACCOUNT, "the emulator's account");
    let i = |k: &str| info_str(&info, k);
    let (bucket, table, secret) = (i("bucket"), i("table"), i("secret"));
    let (a, r) = (ACCOUNT, REGION);
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let object = format!("/{bucket}/hello.txt");
    let object_arn = format!("arn:aws:s3:::{bucket}/hello.txt");
    let table_arn = |acct: &str| format!("arn:aws:dynamodb:{r}:{acct}:table/{table}");
    let secret_arn = format!("arn:aws:secretsmanager:{r}:{a}:secret:{secret}");
    let role_arn = format!(
        "arn:aws:iam::{a}:role/{}",
        i("role_arn").rsplit('/').next().unwrap_or("-")
    );
    assert_eq!(role_arn, i("role_arn"), "the role ARN moto made");
    let queue_arn = format!("arn:aws:sqs:{r}:{a}:{}", i("queue"));
    let param_arn = format!("arn:aws:ssm:{r}:{a}:parameter{}", i("parameter"));
    #[rustfmt::skip]
    let expected = vec![
        // Before GetCallerIdentity the account is unknown: a wildcard.
        call(("PUT", &format!("/{bucket}")), ("s3", "CreateBucket"), "s3:CreateBucket", false, &[&bucket_arn]),
        call(("POST", "/"), ("dynamodb", "CreateTable"), "dynamodb:CreateTable", false, &[&table_arn("*")]),
        call(("POST", "/"), ("sts", "GetCallerIdentity"), "sts:GetCallerIdentity", true, &[]),
        // After it, the account the emulator's STS named.
        call(("PUT", &object), ("s3", "PutObject"), "s3:PutObject", false, &[&object_arn]),
        call(("HEAD", &object), ("s3", "HeadObject"), "s3:GetObject", true, &[&object_arn]),
        call(("GET", &object), ("s3", "GetObject"), "s3:GetObject", true, &[&object_arn]),
        call(("GET", &object), ("s3", "GetObjectAcl"), "s3:GetObjectAcl", true, &[&object_arn]),
        call(("GET", &format!("/{bucket}")), ("s3", "ListObjectsV2"), "s3:ListBucket", true, &[&bucket_arn]),
        call(("POST", "/"), ("dynamodb", "PutItem"), "dynamodb:PutItem", false, &[&table_arn(a)]),
        call(("POST", "/"), ("iam", "ListUsers"), "iam:ListUsers", true, &[]),
        call(("POST", "/"), ("iam", "CreateRole"), "iam:CreateRole", false, &[&role_arn]),
        call(("POST", "/"), ("sts", "AssumeRole"), "sts:AssumeRole", true, &[&role_arn]),
        call(("POST", "/"), ("secretsmanager", "CreateSecret"), "secretsmanager:CreateSecret", false, &[&secret_arn]),
        call(("POST", "/"), ("secretsmanager", "GetSecretValue"), "secretsmanager:GetSecretValue", true, &[&secret_arn]),
        call(("POST", "/"), ("sqs", "CreateQueue"), "sqs:CreateQueue", false, &[&queue_arn]),
        call(("POST", "/"), ("sqs", "SendMessage"), "sqs:SendMessage", false, &[&queue_arn]),
        call(("POST", "/"), ("ssm", "PutParameter"), "ssm:PutParameter", false, &[&param_arn]),
        call(("POST", "/"), ("ssm", "GetParameter"), "ssm:GetParameter", true, &[&param_arn]),
        call(("POST", "/"), ("kms", "CreateKey"), "kms:CreateKey", false, &[]),
        call(("POST", "/"), ("kms", "DescribeKey"), "kms:DescribeKey", true, &[&format!("arn:aws:kms:{r}:{a}:key/{}", i("key_id"))]),
        call(
            ("POST", "/"),
            ("logs", "CreateLogGroup"),
            "logs:CreateLogGroup",
            false,
            &[&format!(
                "arn:aws:logs:{r}:{a}:log-group:{}",
                i("log_group")
            )],
        ),
        call(("POST", "/"), ("ecs", "CreateCluster"), "ecs:CreateCluster", false, &[&format!("arn:aws:ecs:{r}:{a}:cluster/{}", i("cluster"))]),
        call(("POST", "/"), ("ec2", "RunInstances"), "ec2:RunInstances", false, &[&format!("arn:aws:ec2:{r}::image/ami-12345678")]),
        call(("POST", "/"), ("ec2", "TerminateInstances"), "ec2:TerminateInstances", false, &[&format!("arn:aws:ec2:{r}:{a}:instance/{}", i("instance"))]),
        call(("POST", "/"), ("sns", "CreateTopic"), "sns:CreateTopic", false, &[&format!("arn:aws:sns:{r}:{a}:{}", i("topic"))]),
        call(("POST", "/"), ("events", "DescribeEventBus"), "events:DescribeEventBus", true, &[&format!("arn:aws:events:{r}:{a}:event-bus/default")]),
        call(("GET", "/2015-03-31/functions"), ("lambda", "ListFunctions"), "lambda:ListFunctions", true, &[]),
    ];
    let n = expected.len();
    let recs = agent.wait_records(pid, WAIT, |r| r.len() >= n);
    assert_calls("boto3", &recs, expected);
    for r in &recs {
        assert_eq!(r["process"]["pid"], pid);
        assert!(
            r["process"]["comm"]
                .as_str()
                .is_some_and(|c| c.starts_with("python")),
            "comm of {r}"
        );
        assert_eq!(
            r["process"]["exe"].as_str().map(|e| e.contains("python")),
            Some(true)
        );
    }
    // The SigV4 signing name is recorded as sent.
    let create = matching(&recs, |r| r["aws"]["operation"] == "CreateBucket");
    assert_eq!(create[0]["aws"]["signing_service"], "s3");
    // The emulator serves TLS with the same libssl: nothing it did is reported as a call.
    assert!(
        agent.records_of(emu.pid()).is_empty(),
        "server side reported"
    );
    agent.stop()?;
    no_secrets(&agent);
    let raw = std::fs::read_to_string(&agent.output)?;
    assert!(!raw.contains(i("secret_value")), "secret value in output");
    Ok(())
}

#[test]
fn aws_cli_calls_are_captured() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    let suffix = std::process::id();
    let bucket = format!("hoop-cli-{suffix}");
    let role = format!("hoop-cli-role-{suffix}");
    let queue = format!("hoop-cli-queue-{suffix}");
    let parameter = format!("/hoop-cli/{suffix}");
    let (a, r) = (ACCOUNT, REGION);
    let role_arn = format!("arn:aws:iam::{a}:role/{role}");
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let object = format!("/{bucket}/k.txt");
    let object_arn = format!("arn:aws:s3:::{bucket}/k.txt");
    let param_arn = format!("arn:aws:ssm:{r}:{a}:parameter{parameter}");
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    // One process per command; GetCallerIdentity first, so the agent knows the account.
    #[rustfmt::skip]
    let commands: Vec<(Vec<&str>, Call)> = vec![
        (
            vec!["sts", "get-caller-identity"],
            call(("POST", "/"), ("sts", "GetCallerIdentity"), "sts:GetCallerIdentity", true, &[]),
        ),
        (
            vec![
                "s3api",
                "create-bucket",
                "--bucket",
                &bucket,
                "--create-bucket-configuration",
                "LocationConstraint=eu-west-1",
            ],
            call(("PUT", &format!("/{bucket}")), ("s3", "CreateBucket"), "s3:CreateBucket", false, &[&bucket_arn]),
        ),
        (
            vec!["s3api", "put-object", "--bucket", &bucket, "--key", "k.txt"],
            call(("PUT", &object), ("s3", "PutObject"), "s3:PutObject", false, &[&object_arn]),
        ),
        (
            vec![
                "s3api",
                "head-object",
                "--bucket",
                &bucket,
                "--key",
                "k.txt",
            ],
            call(("HEAD", &object), ("s3", "HeadObject"), "s3:GetObject", true, &[&object_arn]),
        ),
        (
            vec![
                "s3api",
                "get-object-acl",
                "--bucket",
                &bucket,
                "--key",
                "k.txt",
            ],
            call(("GET", &object), ("s3", "GetObjectAcl"), "s3:GetObjectAcl", true, &[&object_arn]),
        ),
        (
            vec!["s3api", "list-objects-v2", "--bucket", &bucket],
            call(("GET", &format!("/{bucket}")), ("s3", "ListObjectsV2"), "s3:ListBucket", true, &[&bucket_arn]),
        ),
        (
            vec!["dynamodb", "list-tables"],
            call(("POST", "/"), ("dynamodb", "ListTables"), "dynamodb:ListTables", true, &[]),
        ),
        (
            vec!["sqs", "create-queue", "--queue-name", &queue],
            call(("POST", "/"), ("sqs", "CreateQueue"), "sqs:CreateQueue", false, &[&format!("arn:aws:sqs:{r}:{a}:{queue}")]),
        ),
        (
            vec![
                "ssm",
                "put-parameter",
                "--name",
                &parameter,
                "--value",
                "v",
                "--type",
                "String",
            ],
            call(("POST", "/"), ("ssm", "PutParameter"), "ssm:PutParameter", false, &[&param_arn]),
        ),
        (
            vec!["ssm", "get-parameter", "--name", &parameter],
            call(("POST", "/"), ("ssm", "GetParameter"), "ssm:GetParameter", true, &[&param_arn]),
        ),
        (
            vec![
                "iam",
                "create-role",
                "--role-name",
                &role,
                "--assume-role-policy-document",
                trust,
            ],
            call(("POST", "/"), ("iam", "CreateRole"), "iam:CreateRole", false, &[&role_arn]),
        ),
        (
            vec![
                "sts",
                "assume-role",
                "--role-arn",
                &role_arn,
                "--role-session-name",
                "hoop-cli",
            ],
            call(("POST", "/"), ("sts", "AssumeRole"), "sts:AssumeRole", true, &[&role_arn]),
        ),
    ];
    let mut runs = Vec::new();
    for (args, expected) in commands {
        let mut cmd = aws_cli();
        cmd.args(["--endpoint-url", &emu.endpoint()]).args(&args);
        emu.client_env(&mut cmd);
        let (pid, out) = run_client(cmd)?;
        if args[..2] == ["sts", "get-caller-identity"] {
            let id: Value = serde_json::from_str(&out)?;
            assert_eq!(id["Account"], ACCOUNT, "the emulator's account");
        }
        runs.push((pid, args.join(" "), expected));
    }
    for (pid, what, expected) in runs {
        let recs = agent.wait_records(pid, WAIT, |r| !r.is_empty());
        assert_calls(&format!("aws {what}"), &recs, vec![expected]);
        for r in &recs {
            assert_eq!(r["process"]["pid"], pid);
            // A short-lived process is still attributed with its executable and command line.
            let cmdline = r["process"]["cmdline"].as_str().unwrap_or_default();
            assert!(
                cmdline.contains("aws") && cmdline.contains("--endpoint-url"),
                "cmdline {cmdline}"
            );
        }
    }
    agent.stop()?;
    no_secrets(&agent);
    Ok(())
}

#[test]
fn javascript_sdk_calls_are_captured() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    let mut cmd = node_script("calls.mjs");
    emu.client_env(&mut cmd);
    let (pid, out) = run_client(cmd)?;
    let info: Value = serde_json::from_str(out.trim())?;
    assert_eq!(info["account"], ACCOUNT, "the emulator's account");
    let i = |k: &str| info_str(&info, k);
    let (bucket, table, secret) = (i("bucket"), i("table"), i("secret"));
    let (a, r) = (ACCOUNT, REGION);
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let object = format!("/{bucket}/n.txt");
    let object_arn = format!("arn:aws:s3:::{bucket}/n.txt");
    let table_arn = format!("arn:aws:dynamodb:{r}:{a}:table/{table}");
    let role_arn = i("role_arn");
    let secret_arn = format!("arn:aws:secretsmanager:{r}:{a}:secret:{secret}");
    // The JavaScript SDK writes bucket paths with a trailing slash.
    let bucket_path = format!("/{bucket}/");
    #[rustfmt::skip]
    let expected = vec![
        call(("POST", "/"), ("sts", "GetCallerIdentity"), "sts:GetCallerIdentity", true, &[]),
        call(("PUT", &bucket_path), ("s3", "CreateBucket"), "s3:CreateBucket", false, &[&bucket_arn]),
        call(("PUT", &object), ("s3", "PutObject"), "s3:PutObject", false, &[&object_arn]),
        call(("HEAD", &object), ("s3", "HeadObject"), "s3:GetObject", true, &[&object_arn]),
        call(("GET", &object), ("s3", "GetObject"), "s3:GetObject", true, &[&object_arn]),
        call(("GET", &object), ("s3", "GetObjectAcl"), "s3:GetObjectAcl", true, &[&object_arn]),
        call(("GET", &bucket_path), ("s3", "ListObjectsV2"), "s3:ListBucket", true, &[&bucket_arn]),
        call(("POST", "/"), ("dynamodb", "CreateTable"), "dynamodb:CreateTable", false, &[&table_arn]),
        call(("POST", "/"), ("dynamodb", "PutItem"), "dynamodb:PutItem", false, &[&table_arn]),
        call(("POST", "/"), ("dynamodb", "ListTables"), "dynamodb:ListTables", true, &[]),
        call(
            ("POST", "/"),
            ("iam", "CreateRole"),
            "iam:CreateRole",
            false,
            &[&format!(
                "arn:aws:iam::{a}:role/{}",
                role_arn.rsplit('/').next().unwrap_or("-")
            )],
        ),
        call(("POST", "/"), ("sts", "AssumeRole"), "sts:AssumeRole", true, &[role_arn]),
        call(("POST", "/"), ("secretsmanager", "CreateSecret"), "secretsmanager:CreateSecret", false, &[&secret_arn]),
        call(("POST", "/"), ("secretsmanager", "GetSecretValue"), "secretsmanager:GetSecretValue", true, &[&secret_arn]),
    ];
    let n = expected.len();
    let recs = agent.wait_records(pid, WAIT, |r| r.len() >= n);
    assert_calls("node", &recs, expected);
    assert!(recs.iter().all(|r| r["process"]["comm"] == "node"));
    agent.stop()?;
    no_secrets(&agent);
    Ok(())
}

#[test]
fn process_started_after_agent_with_new_tls_library_is_attached() -> anyhow::Result<()> {
    // node carries its own statically linked OpenSSL: nothing maps it when the agent starts,
    // so it is found through the exec tracepoint.
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    assert!(
        !agent.log_contains("/usr/bin/node"),
        "node attached before it ran"
    );
    let mut cmd = node_script("calls.mjs");
    emu.client_env(&mut cmd);
    let (pid, _) = run_client(cmd)?;
    agent.wait_log("/usr/bin/node", Duration::from_secs(5))?;
    let recs = agent.wait_records(pid, WAIT, |r| r.len() >= 5);
    assert!(recs.len() >= 5, "node calls after exec: {recs:?}");
    agent.stop()?;
    Ok(())
}

#[test]
fn curl_to_non_aws_server_is_not_an_aws_call() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    // A plain HTTPS request (no SigV4) is not reported...
    let cert = emu.cert.display().to_string();
    let mut plain = Command::new("curl");
    plain.args([
        "-s",
        "-o",
        "/dev/null",
        "--cacert",
        &cert,
        &format!("{}/moto-api/", emu.endpoint()),
    ]);
    let (plain_pid, _) = run_client(plain)?;
    // ...while the same curl binary signing with SigV4 is (so the probes did see curl).
    let mut signed = Command::new("curl");
    signed
        .args(["-s", "-o", "/dev/null", "--cacert", &cert])
        .args(["--aws-sigv4", "aws:amz:eu-west-1:sts"])
        .args(["--user", &format!("{ACCESS_KEY_ID}:{SECRET_ACCESS_KEY}")])
        .args(["-H", "Content-Type: application/x-www-form-urlencoded"])
        .args(["--data", "Action=GetCallerIdentity&Version=2011-06-15"])
        .arg(format!("{}/", emu.endpoint()));
    let (signed_pid, _) = run_client(signed)?;
    let recs = agent.wait_records(signed_pid, WAIT, |r| !r.is_empty());
    assert_calls(
        "curl sigv4",
        &recs,
        vec![call(
            ("POST", "/"),
            ("sts", "GetCallerIdentity"),
            "sts:GetCallerIdentity",
            true,
            &[],
        )],
    );
    assert_eq!(recs[0]["process"]["comm"], "curl");
    assert!(
        agent.records_of(plain_pid).is_empty(),
        "non-AWS HTTPS reported as AWS call"
    );
    agent.stop()?;
    Ok(())
}

#[test]
fn large_put_object_does_not_break_the_stream() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    let mut cmd = python();
    cmd.arg(client_script("boto3_calls.py")).arg("--big");
    emu.client_env(&mut cmd);
    let (pid, out) = run_client(cmd)?;
    let info: Value = serde_json::from_str(out.trim())?;
    let bucket = info["bucket"].as_str().unwrap_or_default().to_string();
    let recs = agent.wait_records(pid, WAIT, |r| r.len() >= 4);
    let key = format!("/{bucket}/big.bin");
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let key_arn = format!("arn:aws:s3:::{bucket}/big.bin");
    // The calls after the big transfer are still parsed.
    #[rustfmt::skip]
    let expected = vec![
        call(("PUT", &format!("/{bucket}")), ("s3", "CreateBucket"), "s3:CreateBucket", false, &[&bucket_arn]),
        call(("PUT", &key), ("s3", "PutObject"), "s3:PutObject", false, &[&key_arn]),
        call(("GET", &key), ("s3", "GetObject"), "s3:GetObject", true, &[&key_arn]),
        call(("GET", &format!("/{bucket}")), ("s3", "ListObjectsV2"), "s3:ListBucket", true, &[&bucket_arn]),
    ];
    assert_calls("boto3 --big", &recs, expected);
    let put = matching(&recs, |r| is_call(r, "PUT", &key));
    assert_eq!(
        put[0]["request"]["body_bytes"],
        1024 * 1024,
        "decoded body length"
    );
    let get = matching(&recs, |r| is_call(r, "GET", &key));
    assert_eq!(get[0]["response"]["body_bytes"], 1024 * 1024);
    agent.stop()?;
    Ok(())
}
