//! End-to-end (issue 5): the audit store behind the real agent. Reviewer commands through the
//! running agent's API and directly on a stopped agent's data directory (read-only), clean
//! and abrupt stops during heavy ingest, and planted secrets that never reach the disk.
//!
//! Probes see the whole host and other tests run beside these: every query is scoped to the
//! pid of this test's client (`--pid`), and expected counts come from what the client did.

use hoop_e2e::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// Runs `audit_calls.py` (the fixed mix) to completion.
fn fixed_mix(emu: &Emulator) -> anyhow::Result<(u32, Value)> {
    let mut cmd = python();
    cmd.arg(client_script("audit_calls.py"));
    emu.client_env(&mut cmd);
    let (pid, out) = run_client(cmd)?;
    let info: Value = serde_json::from_str(out.trim())?;
    assert_eq!(info["pid"], pid);
    Ok((pid, info))
}

fn cli_ok(agent: &Agent, args: &[&str]) -> String {
    let (ok, out, err) = agent
        .cli(args)
        .unwrap_or_else(|e| panic!("run {args:?}: {e:#}"));
    assert!(ok, "hoop-agent {args:?} failed: {err}\n{out}");
    out
}

/// `query --pid PID ARGS --format jsonl`.
fn query(agent: &Agent, pid: u32, args: &[&str]) -> Vec<Value> {
    let p = pid.to_string();
    let mut a = vec!["query", "--since", "10m", "--pid", &p, "--format", "jsonl"];
    a.extend_from_slice(args);
    jsonl(&cli_ok(agent, &a))
}

/// Polls the store (through the agent) until it holds `n` records of `pid`.
fn wait_stored(agent: &Agent, pid: u32, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let q = query(agent, pid, &[]);
        if q.len() >= n || start.elapsed() > WAIT {
            return q;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn request_id(r: &Value) -> String {
    r["response"]["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn ops(recs: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in recs {
        *m.entry(r["aws"]["operation"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    m
}

/// Every reviewer command's output for one client, as compared before/after the agent stops.
fn reviewer_outputs(agent: &Agent, pid: u32, info: &Value) -> BTreeMap<&'static str, String> {
    let p = pid.to_string();
    let bucket = info["bucket"].as_str().unwrap_or_default();
    let table = info["table"].as_str().unwrap_or_default();
    let objects = format!("arn:aws:s3:::{bucket}/docs/*");
    let table_glob = format!("arn:aws:dynamodb:*:table/{table}");
    let base = ["--since", "10m", "--pid", &p];
    let mut out = BTreeMap::new();
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        v.extend(extra.iter().take(1).map(|s| s.to_string()));
        v.extend(base.iter().map(|s| s.to_string()));
        v.extend(extra.iter().skip(1).map(|s| s.to_string()));
        v
    };
    for (name, args) in [
        ("query", with(&["query", "--format", "jsonl"])),
        (
            "query_s3",
            with(&["query", "--action", "s3:*", "--format", "jsonl"]),
        ),
        (
            "query_put",
            with(&["query", "--action", "s3:PutObject", "--format", "jsonl"]),
        ),
        (
            "query_objects",
            with(&["query", "--resource", &objects, "--format", "jsonl"]),
        ),
        (
            "query_table",
            with(&["query", "--resource", &table_glob, "--format", "jsonl"]),
        ),
        (
            "query_ddb",
            with(&["query", "--service", "dynamodb", "--format", "jsonl"]),
        ),
        (
            "query_key",
            with(&["query", "--access-key", ACCESS_KEY_ID, "--format", "jsonl"]),
        ),
        ("query_table_fmt", with(&["query"])),
        ("report_md", with(&["report", "--format", "md"])),
        ("report_json", with(&["report", "--format", "json"])),
        ("report_csv", with(&["report", "--format", "csv"])),
        ("report_html", with(&["report", "--format", "html"])),
        ("policy", with(&["policy"])),
        (
            "dump",
            with(&["dump", "--format", "cloudtrail", "--no-progress"]),
        ),
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        out.insert(name, cli_ok(agent, &a));
    }
    out.insert("verify", cli_ok(agent, &["verify", "--json"]));
    // The identity of the client's last call (its key may have been learned on the way).
    let all = jsonl(&out["query"]);
    if let Some(last) = all.iter().max_by_key(|r| r["time_ns"].as_u64()) {
        let key = identity_key(last);
        let q = cli_ok(
            agent,
            &[
                "query",
                "--since",
                "10m",
                "--pid",
                &p,
                "--identity",
                &key,
                "--format",
                "jsonl",
            ],
        );
        out.insert("query_identity", q);
        let conn = last["connection"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let r = cli_ok(
            agent,
            &[
                "replay",
                "--connection",
                &conn,
                "--pid",
                &p,
                "--format",
                "json",
            ],
        );
        out.insert("replay", r);
        let r = cli_ok(agent, &["replay", "--connection", &conn, "--pid", &p]);
        out.insert("replay_text", r);
    }
    out
}

/// `identity.key()`: principal ARN, else access key id.
fn identity_key(r: &Value) -> String {
    r["identity"]["principal_arn"]
        .as_str()
        .or(r["identity"]["access_key_id"].as_str())
        .unwrap_or("unsigned")
        .to_string()
}

/// Checks the reviewer outputs against what the client did.
fn check_outputs(o: &BTreeMap<&'static str, String>, pid: u32, info: &Value, file: &[Value]) {
    let bucket = info["bucket"].as_str().unwrap_or_default();
    let table = info["table"].as_str().unwrap_or_default();
    let all = jsonl(&o["query"]);
    assert_eq!(all.len(), 12, "query --pid {pid}: {:?}", ops(&all));
    let want: BTreeMap<String, usize> = [
        ("CreateBucket", 1),
        ("PutObject", 3),
        ("GetObject", 2),
        ("ListObjectsV2", 1),
        ("CreateTable", 1),
        ("PutItem", 1),
        ("GetCallerIdentity", 1),
        ("CreateSecret", 1),
        ("GetSecretValue", 1),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), *v))
    .collect();
    assert_eq!(ops(&all), want, "operations in the store");
    // The store holds exactly what the agent printed for this client, field for field.
    let ids: BTreeSet<String> = all.iter().map(request_id).collect();
    let file_ids: BTreeSet<String> = file.iter().map(request_id).collect();
    assert_eq!(ids.len(), 12, "distinct request ids");
    assert_eq!(ids, file_ids, "store and output file hold the same calls");
    for r in &all {
        let f = file
            .iter()
            .find(|f| request_id(f) == request_id(r))
            .expect("same call in the file");
        for k in [
            "process", "identity", "workload", "aws", "request", "response", "time_ns",
        ] {
            assert_eq!(
                r[k],
                f[k],
                "{k} of {} differs between store and output",
                request_id(r)
            );
        }
        assert_eq!(r["process"]["pid"], pid);
        assert_eq!(r["identity"]["access_key_id"], ACCESS_KEY_ID);
        assert_eq!(r["response"]["status"], 200, "{r}");
        assert!(
            r["aws"]["iam_action"]
                .as_str()
                .is_some_and(|a| a.contains(':')),
            "{r}"
        );
        assert_eq!(r["aws"]["region"], REGION);
    }
    // Filters narrow to exactly what the client did.
    let s3 = jsonl(&o["query_s3"]);
    assert_eq!(s3.len(), 7, "--action s3:*: {:?}", ops(&s3));
    assert!(s3.iter().all(|r| r["aws"]["service"] == "s3"));
    let put = jsonl(&o["query_put"]);
    assert_eq!(put.len(), 3, "--action s3:PutObject");
    let objects = jsonl(&o["query_objects"]);
    assert_eq!(
        ops(&objects),
        [("GetObject".to_string(), 2), ("PutObject".to_string(), 3)].into(),
        "--resource arn:aws:s3:::{bucket}/docs/*"
    );
    let tbl = jsonl(&o["query_table"]);
    assert_eq!(
        ops(&tbl),
        [("CreateTable".to_string(), 1), ("PutItem".to_string(), 1)].into(),
        "--resource *:table/{table}"
    );
    assert_eq!(jsonl(&o["query_ddb"]).len(), 2, "--service dynamodb");
    assert_eq!(jsonl(&o["query_key"]).len(), 12, "--access-key");
    assert!(
        o["query_table_fmt"].contains("s3:PutObject"),
        "table format"
    );
    // --identity: exactly the calls the agent attributed to that identity.
    let by_id = jsonl(&o["query_identity"]);
    let key = by_id.first().map(identity_key).unwrap_or_default();
    assert!(
        !by_id.is_empty(),
        "--identity finds the last call's identity"
    );
    assert_eq!(
        by_id.len(),
        file.iter().filter(|r| identity_key(r) == key).count(),
        "--identity {key}"
    );
    assert!(by_id.iter().all(|r| identity_key(r) == key));
    // Replay of one connection: its calls in order, as stored.
    let replay: Vec<Value> = serde_json::from_str(&o["replay"]).expect("replay json");
    let conn = replay
        .first()
        .map(|r| r["connection"]["id"].clone())
        .unwrap_or_default();
    let want: Vec<String> = {
        let mut v: Vec<&Value> = file
            .iter()
            .filter(|r| r["connection"]["id"] == conn)
            .collect();
        v.sort_by_key(|r| r["time_ns"].as_u64());
        v.iter().map(|r| request_id(r)).collect()
    };
    assert!(
        !want.is_empty(),
        "replayed connection {conn} is one of the client's"
    );
    assert_eq!(
        replay.iter().map(request_id).collect::<Vec<_>>(),
        want,
        "replay of {conn}"
    );
    let last_op = replay
        .last()
        .and_then(|r| r["aws"]["operation"].as_str())
        .unwrap_or("-");
    assert!(
        o["replay_text"].contains(last_op),
        "text replay names {last_op}"
    );

    // Report: one identity per identity key of this client's calls, counts per action.
    let report: Value = serde_json::from_str(&o["report_json"]).expect("report json");
    assert_eq!(report["total_calls"], 12, "report total");
    let mut puts = 0;
    let mut total = 0;
    for id in report["identities"].as_array().expect("identities") {
        total += id["calls"].as_u64().unwrap_or(0);
        for a in id["actions"].as_array().into_iter().flatten() {
            if a["action"] == "s3:PutObject" {
                puts += a["calls"].as_u64().unwrap_or(0);
                assert!(
                    a["resources"]
                        .to_string()
                        .contains(&format!("arn:aws:s3:::{bucket}/docs/")),
                    "PutObject resources in report: {a}"
                );
            }
        }
        assert_eq!(id["errors"], 0);
        assert_eq!(id["denied"], 0);
        assert!(id["first_seen"].as_str().is_some_and(|s| s.contains('T')));
    }
    assert_eq!((total, puts), (12, 3), "report counts");
    assert!(
        o["report_md"].contains("s3:PutObject") && o["report_md"].starts_with('#'),
        "md"
    );
    assert!(
        o["report_csv"].lines().count() >= 2 && o["report_csv"].contains("s3:PutObject"),
        "csv"
    );
    assert!(
        o["report_html"].contains("<html") && o["report_html"].contains("s3:PutObject"),
        "html"
    );
    // Policy: every action the client used, with the resources it touched.
    let policy: Value = serde_json::from_str(&o["policy"]).expect("policy json");
    let ptext = policy.to_string();
    for a in [
        "s3:PutObject",
        "s3:GetObject",
        "s3:ListBucket",
        "dynamodb:PutItem",
        "secretsmanager:GetSecretValue",
    ] {
        assert!(ptext.contains(a), "{a} in policy {policy:#}");
    }
    assert!(
        ptext.contains(&format!("arn:aws:s3:::{bucket}")),
        "bucket in policy"
    );
    assert!(ptext.contains("\"Statement\""), "policy document");
    // CloudTrail dump: one record per call, field by field.
    let dump: Value = serde_json::from_str(&o["dump"]).expect("cloudtrail json");
    let recs = dump["Records"].as_array().expect("Records");
    assert_eq!(recs.len(), 12, "cloudtrail records");
    for c in recs {
        let f = file
            .iter()
            .find(|f| request_id(f) == c["requestID"].as_str().unwrap_or("-"))
            .unwrap_or_else(|| panic!("cloudtrail record of a call in the file: {c}"));
        let svc = f["aws"]["signing_service"].as_str().unwrap_or_default();
        assert_eq!(c["eventSource"], format!("{svc}.amazonaws.com"));
        assert_eq!(c["eventName"], f["aws"]["operation"]);
        assert_eq!(c["awsRegion"], REGION);
        assert_eq!(c["eventType"], "AwsApiCall");
        assert_eq!(c["eventVersion"], "1.09");
        assert_eq!(c["readOnly"], f["aws"]["read_only"]);
        assert_eq!(c["userIdentity"]["accessKeyId"], ACCESS_KEY_ID);
        if let Some(arn) = f["identity"]["principal_arn"].as_str() {
            assert_eq!(c["userIdentity"]["arn"], arn);
        }
        let arns: Vec<&str> = c["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["ARN"].as_str())
            .collect();
        let want: Vec<&str> = f["aws"]["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(arns, want, "resources of {}", c["eventName"]);
        assert_eq!(c["additionalEventData"]["hoop"]["process"]["pid"], pid);
        assert_eq!(c["requestParameters"], f["request"]["parameters"]);
    }
    let put_ct = recs
        .iter()
        .find(|c| c["eventName"] == "PutItem")
        .expect("PutItem");
    assert_eq!(put_ct["eventSource"], "dynamodb.amazonaws.com");
    assert_eq!(
        put_ct["requestParameters"]["TableName"], table,
        "PutItem parameters"
    );
    let verify: Value = serde_json::from_str(o["verify"].trim()).expect("verify --json");
    assert_eq!(verify["ok"], true, "verify: {verify}");
    assert!(
        verify["events"].as_u64().is_some_and(|n| n >= 12),
        "verify: {verify}"
    );
}

#[test]
fn reviewer_cli_through_the_agent_and_on_the_data_dir() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    let (pid, info) = fixed_mix(&emu)?;
    let file = agent.wait_records(pid, WAIT, |r| r.len() >= 12);
    assert_eq!(file.len(), 12, "output file: {:?}", ops(&file));
    let stored = wait_stored(&agent, pid, 12);
    assert_eq!(
        stored.len(),
        12,
        "store through the API: {:?}",
        ops(&stored)
    );
    let live = reviewer_outputs(&agent, pid, &info);
    check_outputs(&live, pid, &info, &file);

    agent.stop()?;
    // Now without an agent: the same commands open the data directory read-only.
    let before = files_under(&agent.data_dir);
    assert!(!before.is_empty());
    let offline = reviewer_outputs(&agent, pid, &info);
    check_outputs(&offline, pid, &info, &file);
    for k in ["query", "query_s3", "query_objects", "report_csv", "policy"] {
        assert_eq!(live[k], offline[k], "{k}: same answer live and offline");
    }
    let after = files_under(&agent.data_dir);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "files in the data dir"
    );
    for (p, b) in &before {
        assert!(
            after[p] == *b,
            "{} modified by a read-only command",
            p.display()
        );
    }
    // Bad input: a clear error and nothing modified.
    let (ok, _, err) = agent.cli(&["query", "--since", "yesterday-ish"])?;
    assert!(!ok && !err.is_empty(), "bad time is an error");
    let (ok, _, err) = agent.cli(&["query", "--filter", "colour=blue"])?;
    assert!(!ok && !err.is_empty(), "unknown filter is an error");
    assert!(
        files_under(&agent.data_dir) == before,
        "bad commands modified nothing"
    );
    Ok(())
}

#[test]
fn planted_secret_never_reaches_the_disk() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    let (pid, info) = fixed_mix(&emu)?;
    let secret = info["secret_value"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = info["secret_name"].as_str().unwrap_or_default().to_string();
    assert!(secret.starts_with("PLANTED-"));
    let file = agent.wait_records(pid, WAIT, |r| r.len() >= 12);
    assert_eq!(file.len(), 12);
    let live = wait_stored(&agent, pid, 12);
    // The calls are kept with their parameters, the value masked by a deterministic token.
    let create = live
        .iter()
        .find(|r| r["aws"]["operation"] == "CreateSecret")
        .expect("CreateSecret");
    let get = live
        .iter()
        .find(|r| r["aws"]["operation"] == "GetSecretValue")
        .expect("GetSecretValue");
    assert_eq!(
        create["request"]["parameters"]["Name"],
        name.as_str(),
        "{create}"
    );
    let token = create["request"]["parameters"]["SecretString"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        token.starts_with("hoop:mask:"),
        "masked SecretString: {create}"
    );
    assert_eq!(
        get["request"]["parameters"]["SecretId"],
        name.as_str(),
        "{get}"
    );
    assert_eq!(
        get["response"]["elements"]["SecretString"],
        token.as_str(),
        "the value read back carries the same token: {get}"
    );
    agent.stop()?;
    let stored = stored_bytes(&agent.data_dir);
    let output = std::fs::read(&agent.output)?;
    let (ok, all, err) = agent.cli(&["query", "--format", "jsonl"])?;
    assert!(ok, "{err}");
    let (ok, dump, err) = agent.cli(&["dump", "--format", "cloudtrail", "--no-progress"])?;
    assert!(ok, "{err}");
    // The checks can see: the token and the secret's name are there.
    assert!(
        find_bytes(&stored, token.as_bytes()).is_some(),
        "token in the (decompressed) store"
    );
    assert!(
        find_bytes(&stored, name.as_bytes()).is_some(),
        "secret name in the store"
    );
    assert!(
        all.contains(&token) && dump.contains(&token),
        "token in query/dump output"
    );
    for (what, hay) in [
        ("data dir", stored.as_slice()),
        ("output file", output.as_slice()),
        ("query output", all.as_bytes()),
        ("cloudtrail dump", dump.as_bytes()),
    ] {
        assert!(
            find_bytes(hay, secret.as_bytes()).is_none(),
            "planted secret in the {what}"
        );
        assert!(
            find_bytes(hay, &secret.as_bytes()[..20]).is_none(),
            "secret prefix in the {what}"
        );
        assert!(
            find_bytes(hay, SECRET_ACCESS_KEY.as_bytes()).is_none(),
            "long-term secret key in the {what}"
        );
        assert!(
            find_bytes(hay, b"Signature=").is_none() || what == "data dir",
            "signature in the {what}"
        );
    }
    Ok(())
}

/// A client making many calls in the background.
struct Heavy {
    child: Child,
}

impl Heavy {
    fn start(emu: &Emulator, n: usize) -> anyhow::Result<Self> {
        let mut cmd = python();
        cmd.arg(client_script("audit_calls.py"))
            .args(["--many", &n.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        emu.client_env(&mut cmd);
        Ok(Heavy {
            child: cmd.spawn()?,
        })
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Heavy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn by_request_id(recs: &[Value]) -> BTreeMap<String, u64> {
    recs.iter()
        .map(|r| (request_id(r), r["time_ns"].as_u64().unwrap_or(0)))
        .collect()
}

#[test]
fn sigterm_during_heavy_ingest_loses_nothing() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    let heavy = Heavy::start(&emu, 20_000)?;
    let pid = heavy.pid();
    let got = agent.wait_records(pid, Duration::from_secs(60), |r| r.len() >= 400);
    assert!(
        got.len() >= 400,
        "heavy client got going ({} records)",
        got.len()
    );
    agent.stop()?;
    drop(heavy);
    let file = agent.records_of(pid);
    let stored = query(&agent, pid, &[]);
    let f = by_request_id(&file);
    let s = by_request_id(&stored);
    assert_eq!(f.len(), file.len(), "request ids unique in the file");
    assert_eq!(s.len(), stored.len(), "request ids unique in the store");
    eprintln!("SIGTERM: {} in the file, {} stored", f.len(), s.len());
    let missing: Vec<_> = f.keys().filter(|k| !s.contains_key(*k)).collect();
    let extra: Vec<_> = s.keys().filter(|k| !f.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?} extra {extra:?}"
    );
    assert!(
        agent.log_contains("audit store flushed"),
        "clean shutdown logged"
    );
    let v = cli_ok(&agent, &["verify"]);
    eprintln!("verify: {v}");
    Ok(())
}

#[test]
fn sigkill_during_heavy_ingest_keeps_all_but_the_last_flush_interval() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    let heavy = Heavy::start(&emu, 20_000)?;
    let pid = heavy.pid();
    let got = agent.wait_records(pid, Duration::from_secs(60), |r| r.len() >= 600);
    assert!(
        got.len() >= 600,
        "heavy client got going ({} records)",
        got.len()
    );
    agent.kill()?;
    drop(heavy);
    let file = agent.records_of(pid);
    // Restart on the same data directory: it opens and the chain verifies.
    agent.restart(&[])?;
    let v = cli_ok(&agent, &["verify", "--json"]);
    let vj: Value = serde_json::from_str(v.trim())?;
    assert_eq!(vj["ok"], true, "chain after SIGKILL: {vj}");
    let stored = query(&agent, pid, &[]);
    let f = by_request_id(&file);
    let s = by_request_id(&stored);
    assert_eq!(s.len(), stored.len(), "no duplicates after restart");
    let extra: Vec<_> = s.keys().filter(|k| !f.contains_key(*k)).collect();
    assert!(
        extra.is_empty(),
        "stored calls not in the output file: {extra:?}"
    );
    let last = f.values().copied().max().unwrap_or(0);
    let missing: Vec<u64> = f
        .iter()
        .filter(|(k, _)| !s.contains_key(*k))
        .map(|(_, t)| *t)
        .collect();
    eprintln!(
        "SIGKILL: {} in the file, {} stored, {} missing",
        f.len(),
        s.len(),
        missing.len()
    );
    // The output file is flushed per batch; the store at most one flush interval (1 s)
    // behind it, plus a little for the batch being written when the kill landed.
    let slack_ns = 1_500_000_000;
    for t in &missing {
        assert!(
            last.saturating_sub(*t) <= slack_ns,
            "a call {} ms before the last one is missing",
            (last - t) / 1_000_000
        );
    }
    // The missing ones are a suffix: nothing stored after a missing call.
    if let Some(first_missing) = missing.iter().min() {
        assert!(
            s.values().all(|t| t <= first_missing),
            "store has a gap before its last record"
        );
    }
    // The restarted agent keeps recording into the same store.
    let (pid2, _) = fixed_mix(&emu)?;
    let after = wait_stored(&agent, pid2, 12);
    assert_eq!(after.len(), 12, "recording after the restart");
    let v = cli_ok(&agent, &["verify", "--json"]);
    let vj: Value = serde_json::from_str(v.trim())?;
    assert_eq!(vj["ok"], true, "chain after more records: {vj}");
    agent.stop()?;
    Ok(())
}

/// A config file with rotating dumps every `period` into a fresh directory, and a 2 s
/// response timeout: (the temp dir to keep alive, the dump directory, the config path).
fn dump_config(period: &str) -> anyhow::Result<(TempDir, std::path::PathBuf, std::path::PathBuf)> {
    let dir = TempDir::new("dumpcfg")?;
    let dumps = dir.path().join("dumps");
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "store:\n  dump_dir: {}\n  dump_every: {period}\ncapture:\n  response_timeout_secs: 2\n",
            dumps.display()
        ),
    )?;
    Ok((dir, dumps, cfg))
}

#[test]
fn rotating_dumps_hold_every_call_once() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    // Short windows and a short response timeout so a window closes within seconds.
    let (_cfg_dir, dumps, cfg) = dump_config("2s")?;
    let mut agent = Agent::start(&["--config", cfg.to_str().unwrap_or_default()])?;
    let (pid, _) = fixed_mix(&emu)?;
    let file = agent.wait_records(pid, WAIT, |r| r.len() >= 12);
    assert_eq!(file.len(), 12);
    let want: BTreeSet<String> = file.iter().map(request_id).collect();
    let start = Instant::now();
    let mut seen: Vec<String>;
    loop {
        seen = Vec::new();
        for (path, _) in files_under(&dumps) {
            if !path.to_string_lossy().ends_with(".json.gz") {
                continue;
            }
            let out = std::process::Command::new("gzip")
                .arg("-dc")
                .arg(&path)
                .output()?;
            let v: Value = serde_json::from_slice(&out.stdout)?;
            for c in v["Records"].as_array().into_iter().flatten() {
                if c["additionalEventData"]["hoop"]["process"]["pid"] == pid {
                    seen.push(c["requestID"].as_str().unwrap_or_default().to_string());
                }
            }
        }
        if seen.len() >= 12 || start.elapsed() > Duration::from_secs(40) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let set: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), set.len(), "a call in two dump windows");
    assert_eq!(set, want, "rotating dumps hold every call of the client");
    agent.stop()?;
    Ok(())
}

/// Runs `hoop-agent ARGS` for this agent in `cwd`; returns (success, raw stdout, stderr).
fn cli_in(agent: &Agent, cwd: &std::path::Path, args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = std::process::Command::new(agent_bin())
        .current_dir(cwd)
        .arg("--data-dir")
        .arg(&agent.data_dir)
        .arg("--api-socket")
        .arg(&agent.api_socket)
        .args(args)
        .output()
        .expect("run hoop-agent");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

#[test]
fn dumps_through_the_agent_are_the_reviewers_bytes_and_files() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let agent = Agent::start(&[])?;
    let (pid, _) = fixed_mix(&emu)?;
    assert_eq!(wait_stored(&agent, pid, 12).len(), 12);
    assert!(agent.api_socket.exists(), "the agent's API is up");
    let p = pid.to_string();
    let base = ["--since", "10m", "--pid", &p, "--no-progress"];
    // Binary output on stdout survives the API: a valid gzip of the CloudTrail document.
    let mut a = vec!["dump", "--gzip"];
    a.extend_from_slice(&base);
    let (ok, out, err) = cli_in(&agent, agent.dir.path(), &a);
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_slice(&gunzip(&out))?;
    assert_eq!(doc["Records"].as_array().map(Vec::len), Some(12));
    // -o and --rotate-dir are the reviewer's paths, relative to the reviewer's directory.
    let cwd = TempDir::new("reviewer")?;
    let mut a = vec![
        "dump",
        "--gzip",
        "--format",
        "jsonl",
        "-o",
        "out/trail.jsonl.gz",
    ];
    a.extend_from_slice(&base);
    std::fs::create_dir(cwd.path().join("out"))?;
    let (ok, out, err) = cli_in(&agent, cwd.path(), &a);
    assert!(ok, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        "12 events written to out/trail.jsonl.gz"
    );
    let file = std::fs::read(cwd.path().join("out/trail.jsonl.gz"))?;
    let lines = jsonl(&String::from_utf8(gunzip(&file))?);
    assert_eq!(lines.len(), 12);
    assert!(lines.iter().all(|r| r["process"]["pid"] == pid));
    let mut a = vec!["dump", "--rotate-dir", "rot", "--node", "n1"];
    a.extend_from_slice(&base);
    let (ok, out, err) = cli_in(&agent, cwd.path(), &a);
    assert!(ok, "{err}");
    let name = String::from_utf8_lossy(&out).trim().to_string();
    assert!(name.starts_with("rot/hoop-n1-"), "{name}");
    let doc: Value = serde_json::from_slice(&gunzip(&std::fs::read(cwd.path().join(&name))?))?;
    assert!(doc["Records"].as_array().is_some_and(|r| r.len() >= 12));
    // Nothing of it landed in the agent's directory.
    assert!(!agent.dir.path().join("out").exists() && !agent.dir.path().join("rot").exists());
    // A bad -o is the reviewer's error, and no partial file is left.
    let mut a = vec!["dump", "-o", "missing/dir/x.json"];
    a.extend_from_slice(&base);
    let (ok, _, err) = cli_in(&agent, cwd.path(), &a);
    assert!(!ok && err.contains("missing/dir"), "{err}");
    Ok(())
}

#[test]
fn planted_kms_lambda_and_object_body_never_reach_the_disk() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    let mut cmd = python();
    cmd.arg(client_script("audit_calls.py")).arg("--secrets");
    emu.client_env(&mut cmd);
    let (pid, out) = run_client(cmd)?;
    let info: Value = serde_json::from_str(out.trim())?;
    let recs = agent.wait_records(pid, WAIT, |r| {
        ["Decrypt", "GetFunctionConfiguration", "GetObject"]
            .iter()
            .all(|op| r.iter().any(|x| x["aws"]["operation"] == *op))
    });
    let stored = wait_stored(&agent, pid, recs.len());
    eprintln!("{} calls stored: {:?}", stored.len(), ops(&stored));
    for op in [
        "Decrypt",
        "CreateFunction",
        "GetFunctionConfiguration",
        "PutObject",
        "GetObject",
    ] {
        assert!(
            stored.iter().any(|r| r["aws"]["operation"] == op),
            "{op} is stored: {:?}",
            ops(&stored)
        );
    }
    agent.stop()?;
    let bytes = stored_bytes(&agent.data_dir);
    for k in [
        "kms_plaintext",
        "kms_plaintext_b64",
        "lambda_env",
        "object_body",
    ] {
        let v = info[k].as_str().unwrap_or_default();
        assert!(v.len() > 10, "{k}");
        assert!(
            find_bytes(&bytes, v.as_bytes()).is_none(),
            "planted {k} found in the data directory"
        );
    }
    Ok(())
}

#[test]
fn restart_closes_cleanly_and_rotating_dumps_continue_exactly() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    // Windows longer than the test, so only the final window at shutdown writes a file.
    let (_cfg_dir, dumps, cfg) = dump_config("1h")?;
    let args = ["--config", cfg.to_str().unwrap_or_default()];
    let mut agent = Agent::start(&args)?;
    let (pid1, _) = fixed_mix(&emu)?;
    assert_eq!(wait_stored(&agent, pid1, 12).len(), 12);
    agent.stop()?;
    assert!(
        agent.log_contains("final rotating audit dump written"),
        "the last window is written at shutdown"
    );
    agent.restart(&args)?;
    assert!(
        !agent.log_contains("not closed cleanly"),
        "a SIGTERM stop closes the store cleanly"
    );
    assert!(agent.log_contains("rotating dumps continue after the newest file"));
    let (pid2, _) = fixed_mix(&emu)?;
    assert_eq!(wait_stored(&agent, pid2, 12).len(), 12);
    agent.stop()?;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut files = 0;
    for (path, bytes) in files_under(&dumps) {
        if !path.to_string_lossy().ends_with(".json.gz") {
            continue;
        }
        files += 1;
        let v: Value = serde_json::from_slice(&gunzip(&bytes))?;
        for c in v["Records"].as_array().into_iter().flatten() {
            let p = &c["additionalEventData"]["hoop"]["process"]["pid"];
            if *p == pid1 || *p == pid2 {
                *seen
                    .entry(c["requestID"].as_str().unwrap_or_default().into())
                    .or_default() += 1;
            }
        }
    }
    assert_eq!(files, 2, "one final window per run");
    assert_eq!(seen.len(), 24, "every call of both runs is dumped");
    assert!(seen.values().all(|n| *n == 1), "no call in two windows");
    Ok(())
}

#[test]
fn foreign_data_dir_is_refused_untouched_and_a_damaged_store_is_replaced() -> anyhow::Result<()> {
    // A foreign directory: refused, nothing written (no mask.key, no store/).
    let foreign = TempDir::new("foreign")?;
    std::fs::write(foreign.path().join("notes.txt"), b"someone else's")?;
    let before = files_under(foreign.path());
    let out = std::process::Command::new(agent_bin())
        .arg("--data-dir")
        .arg(foreign.path())
        .arg("--api-socket")
        .arg(foreign.path().join("api.sock"))
        .args(["run", "--no-stdout", "--metrics-addr", "127.0.0.1:0"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "run refuses a foreign data dir");
    assert!(err.contains("holds no hoop store"), "{err}");
    assert_eq!(files_under(foreign.path()), before, "nothing written");
    assert!(std::fs::read_dir(foreign.path())?.count() == 1);
    // The reviewer commands on it (no agent): a clear error, nothing written either.
    let out = std::process::Command::new(agent_bin())
        .arg("--data-dir")
        .arg(foreign.path())
        .arg("--api-socket")
        .arg(foreign.path().join("api.sock"))
        .args(["query", "--since", "1h"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no hoop store"),
        "{err}"
    );
    assert_eq!(files_under(foreign.path()), before, "query wrote nothing");

    // A store sled cannot open: moved aside, a new store continues the chain, loudly.
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    let (pid, _) = fixed_mix(&emu)?;
    assert_eq!(wait_stored(&agent, pid, 12).len(), 12);
    agent.stop()?;
    let v: Value = serde_json::from_str(cli_ok(&agent, &["verify", "--json"]).trim())?;
    let old_head = v["head"].as_str().unwrap_or_default().to_string();
    let db = agent.data_dir.join("store/sled/db");
    let len = std::fs::metadata(&db)?.len() as usize;
    std::fs::write(&db, vec![0xA5u8; len])?;
    agent.restart(&[])?;
    assert!(agent.log_contains("AUDIT STORE DAMAGED"), "said loudly");
    let (pid2, _) = fixed_mix(&emu)?;
    assert_eq!(wait_stored(&agent, pid2, 12).len(), 12, "auditing goes on");
    let v: Value = serde_json::from_str(cli_ok(&agent, &["verify", "--json"]).trim())?;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["predecessor"]["head"], old_head.as_str(), "{v}");
    let damaged = v["predecessor"]["path"].as_str().unwrap_or_default();
    assert!(
        std::path::Path::new(damaged).join("sled/db").exists(),
        "{damaged} kept"
    );
    agent.stop()?;
    // A corrupt mask key: refused before the store is opened, nothing written.
    std::fs::write(agent.data_dir.join("mask.key"), b"short")?;
    let before = files_under(&agent.data_dir);
    assert!(
        agent.restart(&[]).is_err(),
        "run refuses a corrupt mask.key"
    );
    let start = Instant::now();
    while !agent.log_contains("mask.key") && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        agent.log_contains("mask.key"),
        "the error names the key file"
    );
    assert!(files_under(&agent.data_dir) == before, "nothing written");
    Ok(())
}
