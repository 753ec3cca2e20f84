//! End-to-end: the real agent, real eBPF uprobes on real TLS libraries, real AWS SDKs talking
//! TLS to a real AWS emulator. Each SDK call must appear exactly once, attributed to the
//! process that made it, with the right request, signing scope and response.

use hoop_e2e::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// Asserts one record (exactly) matches, and checks the common fields of an AWS call.
fn one<'a>(
    recs: &'a [Value],
    what: &str,
    service: &str,
    operation: &str,
    pred: impl Fn(&Value) -> bool,
) -> &'a Value {
    let m = matching(recs, |r| r["aws"]["operation"] == operation && pred(r));
    assert_eq!(
        m.len(),
        1,
        "{what}: expected exactly one {service}:{operation} record, got {}:\n{}",
        m.len(),
        serde_json::to_string_pretty(&recs).unwrap_or_default()
    );
    let r = m[0];
    assert_eq!(r["aws"]["service"], service, "{what}: service");
    assert_eq!(r["aws"]["region"], REGION, "{what}: region");
    assert_eq!(
        r["identity"]["access_key_id"], ACCESS_KEY_ID,
        "{what}: access key"
    );
    assert_eq!(r["response"]["status"], 200, "{what}: status");
    assert!(
        r["aws"]["iam_action"]
            .as_str()
            .is_some_and(|a| a.contains(':')),
        "{what}: IAM action in {r}"
    );
    r
}

/// The record names this resource ARN (exactly, or ending with `suffix` when it starts with
/// `*`).
fn has_resource(r: &Value, arn: &str) {
    let list = r["aws"]["resources"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let found = list
        .iter()
        .filter_map(|v| v.as_str())
        .any(|a| match arn.strip_prefix('*') {
            Some(suffix) => a.ends_with(suffix),
            None => a == arn,
        });
    assert!(found, "resource {arn} not in {r}");
}

fn no_secrets(agent: &Agent) {
    let raw = std::fs::read_to_string(&agent.output).unwrap_or_default();
    assert!(!raw.contains(SECRET_ACCESS_KEY), "secret key in output");
    assert!(!raw.contains("Signature="), "SigV4 signature in output");
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
    let bucket = info["bucket"].as_str().unwrap_or_default().to_string();
    let table = info["table"].as_str().unwrap_or_default().to_string();

    let recs = agent.wait_records(pid, WAIT, |r| {
        r.iter().any(|r| r["aws"]["operation"] == "GetSecretValue")
    });
    let key_path = format!("/{bucket}/hello.txt");
    let r = one(&recs, "boto3 create bucket", "s3", "CreateBucket", |r| {
        is_call(r, "PUT", &format!("/{bucket}"))
    });
    assert_eq!(r["aws"]["signing_service"], "s3");
    assert_eq!(r["aws"]["read_only"], false);
    has_resource(r, &format!("arn:aws:s3:::{bucket}"));
    assert_eq!(r["process"]["pid"], pid);
    assert!(
        r["process"]["comm"]
            .as_str()
            .is_some_and(|c| c.starts_with("python"))
    );
    let put = one(&recs, "boto3 put object", "s3", "PutObject", |r| {
        is_call(r, "PUT", &key_path)
    });
    has_resource(put, &format!("arn:aws:s3:::{bucket}/hello.txt"));
    let get = one(&recs, "boto3 get object", "s3", "GetObject", |r| {
        is_call(r, "GET", &key_path)
    });
    has_resource(get, &format!("arn:aws:s3:::{bucket}/hello.txt"));
    assert_eq!(get["aws"]["read_only"], true);
    let l = one(&recs, "boto3 list objects", "s3", "ListObjectsV2", |r| {
        is_call(r, "GET", &format!("/{bucket}"))
    });
    assert_eq!(l["aws"]["iam_action"], "s3:ListBucket");
    has_resource(l, &format!("arn:aws:s3:::{bucket}"));
    let p = one(&recs, "boto3 PutItem", "dynamodb", "PutItem", |r| {
        is_call(r, "POST", "/") && target_is(r, "DynamoDB_20120810.PutItem")
    });
    assert_eq!(p["aws"]["signing_service"], "dynamodb");
    assert!(
        p["aws"]["resources"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x
                .as_str()
                .is_some_and(|s| s.ends_with(&format!(":table/{table}"))))),
        "table ARN in {p}"
    );
    let s = one(
        &recs,
        "boto3 GetCallerIdentity",
        "sts",
        "GetCallerIdentity",
        |r| is_call(r, "POST", "/"),
    );
    assert_eq!(s["aws"]["signing_service"], "sts");
    one(&recs, "boto3 ListUsers", "iam", "ListUsers", |r| {
        is_call(r, "POST", "/")
    });
    let sv = one(
        &recs,
        "boto3 GetSecretValue",
        "secretsmanager",
        "GetSecretValue",
        |r| target_is(r, "secretsmanager.GetSecretValue"),
    );
    has_resource(
        sv,
        &format!("*:secret:{}", info["secret"].as_str().unwrap_or("-")),
    );
    assert_eq!(sv["aws"]["iam_action"], "secretsmanager:GetSecretValue");
    // Every record of this process is an AWS call it made, each with a request id.
    for r in &recs {
        assert!(r["response"]["request_id"].is_string(), "request id in {r}");
        assert_eq!(
            r["process"]["exe"].as_str().map(|e| e.contains("python")),
            Some(true)
        );
    }
    // The emulator serves TLS with the same libssl: nothing it did is reported as a call.
    assert!(
        agent.records_of(emu.pid()).is_empty(),
        "server side reported"
    );
    agent.stop()?;
    no_secrets(&agent);
    let raw = std::fs::read_to_string(&agent.output)?;
    assert!(
        !raw.contains(info["secret_value"].as_str().unwrap_or("-")),
        "secret value in output"
    );
    Ok(())
}

#[test]
fn aws_cli_calls_are_captured() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    let bucket = format!("hoop-cli-{}", std::process::id());
    let mut pids = Vec::new();
    for args in [
        vec![
            "s3api",
            "create-bucket",
            "--bucket",
            &bucket,
            "--create-bucket-configuration",
            "LocationConstraint=eu-west-1",
        ],
        vec!["sts", "get-caller-identity"],
        vec!["dynamodb", "list-tables"],
    ] {
        let mut cmd = aws_cli();
        cmd.args(["--endpoint-url", &emu.endpoint()]).args(&args);
        emu.client_env(&mut cmd);
        pids.push(run_client(cmd)?.0);
    }
    let expect = [
        ("s3", "CreateBucket", "PUT", format!("/{bucket}")),
        ("sts", "GetCallerIdentity", "POST", "/".to_string()),
        ("dynamodb", "ListTables", "POST", "/".to_string()),
    ];
    for (pid, (service, op, method, path)) in pids.iter().zip(expect.iter()) {
        let recs = agent.wait_records(*pid, WAIT, |r| {
            r.iter().any(|r| r["aws"]["operation"] == *op)
        });
        let r = one(&recs, &format!("aws cli {op}"), service, op, |r| {
            is_call(r, method, path)
        });
        assert_eq!(r["process"]["pid"], *pid);
        // A short-lived process is still attributed with its executable and command line.
        let cmdline = r["process"]["cmdline"].as_str().unwrap_or_default();
        assert!(
            cmdline.contains("aws") && cmdline.contains("--endpoint-url"),
            "cmdline {cmdline}"
        );
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
    let bucket = info["bucket"].as_str().unwrap_or_default().to_string();
    let recs = agent.wait_records(pid, WAIT, |r| {
        r.iter().any(|r| r["aws"]["operation"] == "ListTables")
    });
    // The JavaScript SDK writes bucket paths with a trailing slash.
    one(&recs, "node create bucket", "s3", "CreateBucket", |r| {
        is_call(r, "PUT", &format!("/{bucket}/"))
    });
    one(&recs, "node put object", "s3", "PutObject", |r| {
        is_call(r, "PUT", &format!("/{bucket}/n.txt"))
    });
    one(&recs, "node list objects", "s3", "ListObjectsV2", |r| {
        is_call(r, "GET", &format!("/{bucket}/"))
    });
    one(
        &recs,
        "node GetCallerIdentity",
        "sts",
        "GetCallerIdentity",
        |r| is_call(r, "POST", "/"),
    );
    one(&recs, "node ListTables", "dynamodb", "ListTables", |r| {
        target_is(r, "DynamoDB_20120810.ListTables")
    });
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
    one(&recs, "curl sigv4", "sts", "GetCallerIdentity", |r| {
        r["process"]["comm"] == "curl"
    });
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
    let recs = agent.wait_records(pid, WAIT, |r| {
        r.iter().any(|r| r["aws"]["operation"] == "ListObjectsV2")
    });
    let key = format!("/{bucket}/big.bin");
    let put = one(&recs, "1 MiB put", "s3", "PutObject", |r| {
        is_call(r, "PUT", &key)
    });
    assert_eq!(
        put["request"]["body_bytes"],
        1024 * 1024,
        "decoded body length"
    );
    let get = one(&recs, "1 MiB get", "s3", "GetObject", |r| {
        is_call(r, "GET", &key)
    });
    assert_eq!(get["response"]["body_bytes"], 1024 * 1024);
    // The calls after the big transfer are still parsed.
    one(&recs, "list after big put", "s3", "ListObjectsV2", |r| {
        is_call(r, "GET", &format!("/{bucket}"))
    });
    agent.stop()?;
    Ok(())
}
