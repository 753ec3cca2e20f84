//! End-to-end enforcement (issue 6): the real agent with a policy, real boto3 clients against
//! the emulator. Rules are scoped to a test-unique access key or a test-owned cgroup, so other
//! processes on the host (other suites) are never affected.

use hoop_e2e::enforce::*;
use hoop_e2e::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn denied_calls_fail_and_leave_the_emulator_unchanged() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let key = test_key(1);
    let mut enf = start(&format!(
        r#"
mode: enforce
rules:
  - name: no-destruction
    effect: deny
    match:
      access_keys: ["{key}"]
      actions: ["s3:DeleteBucket", "dynamodb:DeleteTable", "iam:CreateUser", "s3:PutBucketPolicy"]
"#
    ))?;
    let id = std::process::id();
    let (b, t, u) = (
        format!("hoop-enf-{id}"),
        format!("hoop-enf-t-{id}"),
        format!("hoop-enf-u-{id}"),
    );
    let (_, setup) = calls(
        &emu,
        None,
        None,
        &[format!("create-bucket:{b}"), format!("create-table:{t}")],
    )?;
    assert!(setup.iter().all(|r| r["ok"] == true), "setup: {setup:?}");

    // PutObject first: it and the DeleteBucket after it share one keep-alive connection (the
    // rule is per call, not per connection). The drop ends that TLS connection, so the second
    // PutObject opens a new one.
    let steps = vec![
        format!("put-object:{b}/k0.txt"),
        format!("delete-bucket:{b}"),
        format!("put-object:{b}/k.txt"),
        format!("put-bucket-policy:{b}"),
        format!("delete-table:{t}"),
        format!("describe-table:{t}"),
        format!("create-user:{u}"),
    ];
    let (pid, res) = calls(&emu, Some(&key), None, &steps)?;
    assert!(ok_of(&res, &steps[0]), "PutObject must pass: {res:?}");
    assert!(!ok_of(&res, &steps[1]), "DeleteBucket must fail: {res:?}");
    assert!(
        ms_of(&res, &steps[1]) < 2000.0,
        "DeleteBucket fails at once: {res:?}"
    );
    assert!(
        ok_of(&res, &steps[2]),
        "PutObject (same client) must pass: {res:?}"
    );
    assert!(
        !ok_of(&res, &steps[3]),
        "PutBucketPolicy must fail: {res:?}"
    );
    assert!(!ok_of(&res, &steps[4]), "DeleteTable must fail: {res:?}");
    assert!(ok_of(&res, &steps[5]), "DescribeTable must pass: {res:?}");
    assert!(!ok_of(&res, &steps[6]), "CreateUser must fail: {res:?}");

    // A second, unrestricted process sees the emulator unchanged.
    let check = vec![
        format!("head-bucket:{b}"),
        format!("describe-table:{t}"),
        format!("get-bucket-policy:{b}"),
        format!("get-user:{u}"),
    ];
    let (_, after) = calls(&emu, None, None, &check)?;
    assert!(ok_of(&after, &check[0]), "bucket still exists: {after:?}");
    assert!(ok_of(&after, &check[1]), "table still exists: {after:?}");
    assert!(
        !ok_of(&after, &check[2]),
        "no bucket policy was set: {after:?}"
    );
    assert!(!ok_of(&after, &check[3]), "no user was created: {after:?}");

    let recs = enf.agent.wait_records(pid, WAIT, |r| {
        [
            "DeleteBucket",
            "PutBucketPolicy",
            "DeleteTable",
            "CreateUser",
        ]
        .iter()
        .all(|op| !decision_of(r, op).is_empty())
    });
    for op in [
        "DeleteBucket",
        "PutBucketPolicy",
        "DeleteTable",
        "CreateUser",
    ] {
        let d = decision_of(&recs, op);
        assert!(
            d.iter()
                .any(|d| d["effect"] == "deny" && d["rule"] == "no-destruction"),
            "{op} recorded as denied: {d:?}\n{}",
            serde_json::to_string_pretty(&recs).unwrap_or_default()
        );
    }
    assert!(
        decision_of(&recs, "PutObject")
            .iter()
            .all(|d| d["effect"] == "allow"),
        "PutObject allowed"
    );
    let conn_of = |op: &str, key: Option<&str>| {
        recs.iter()
            .find(|r| {
                r["aws"]["operation"] == op
                    && key.is_none_or(|k| r["aws"]["resources"].to_string().contains(k))
            })
            .map(|r| r["connection"]["id"].clone())
    };
    let (put, del) = (
        conn_of("PutObject", Some("k0.txt")),
        conn_of("DeleteBucket", None),
    );
    assert!(
        put.is_some() && put == del,
        "PutObject and the denied DeleteBucket on one connection: {put:?} {del:?}"
    );
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn cgroup_scoped_rule_leaves_other_processes_alone() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let cg = Cgroup::new("scope")?;
    let mut enf = start(&format!(
        "rules:\n  - name: scoped\n    effect: deny\n    match:\n      cgroup: \"{}\"\n      actions: [\"s3:DeleteBucket\"]\n",
        cg.1
    ))?;
    let id = std::process::id();
    let (b1, b2) = (format!("hoop-cg1-{id}"), format!("hoop-cg2-{id}"));
    let (_, setup) = calls(
        &emu,
        None,
        None,
        &[format!("create-bucket:{b1}"), format!("create-bucket:{b2}")],
    )?;
    assert!(setup.iter().all(|r| r["ok"] == true), "setup: {setup:?}");
    let (_, inside) = calls(&emu, None, Some(&cg.0), &[format!("delete-bucket:{b1}")])?;
    assert!(
        !inside[0]["ok"].as_bool().unwrap_or(true),
        "inside the cgroup: denied {inside:?}"
    );
    let (_, outside) = calls(&emu, None, None, &[format!("delete-bucket:{b2}")])?;
    assert!(
        outside[0]["ok"].as_bool().unwrap_or(false),
        "outside: allowed {outside:?}"
    );
    let (_, after) = calls(&emu, None, None, &[format!("head-bucket:{b1}")])?;
    assert!(after[0]["ok"].as_bool().unwrap_or(false), "b1 still exists");
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn monitor_mode_blocks_nothing_and_records_would_deny() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let key = test_key(2);
    let mut enf = start(&format!(
        "mode: monitor\nrules:\n  - name: watch\n    effect: deny\n    match:\n      access_keys: [\"{key}\"]\n      actions: [\"s3:DeleteBucket\"]\n"
    ))?;
    let b = format!("hoop-mon-{}", std::process::id());
    let (pid, res) = calls(
        &emu,
        Some(&key),
        None,
        &[format!("create-bucket:{b}"), format!("delete-bucket:{b}")],
    )?;
    assert!(
        res.iter().all(|r| r["ok"] == true),
        "monitor blocks nothing: {res:?}"
    );
    let recs = enf
        .agent
        .wait_records(pid, WAIT, |r| !decision_of(r, "DeleteBucket").is_empty());
    let d = decision_of(&recs, "DeleteBucket");
    assert!(
        d.iter()
            .any(|d| d["effect"] == "would-deny" && d["rule"] == "watch"),
        "{d:?}"
    );
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn connect_rules_hold_for_ipv4_and_ipv6() -> anyhow::Result<()> {
    let l4 = std::net::TcpListener::bind("127.0.0.1:0")?;
    let l6 = std::net::TcpListener::bind("[::1]:0")?;
    let (p4, p6) = (l4.local_addr()?.port(), l6.local_addr()?.port());
    let cg = Cgroup::new("imds")?;
    let mut enf = start(&format!(
        r#"
rules:
  - name: no-metadata
    effect: deny
    match:
      cgroup: "{}"
      endpoints: ["127.0.0.1/32", "::1/128"]
      ports: [{p4}, {p6}]
"#,
        cg.1
    ))?;
    let probe = format!(
        r#"
import socket, json
out = {{}}
for name, fam, addr in [("v4", socket.AF_INET, ("127.0.0.1", {p4})), ("v6", socket.AF_INET6, ("::1", {p6})), ("mapped", socket.AF_INET6, ("::ffff:127.0.0.1", {p4}))]:
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(addr); out[name] = "connected"
    except OSError as e:
        out[name] = e.errno
    s.close()
print(json.dumps(out))
"#
    );
    let run = |cgroup: Option<&Path>| -> anyhow::Result<Value> {
        let py = repo_root().join(".venv/bin/python");
        let mut c = match cgroup {
            Some(cgp) => in_cgroup(cgp, &py),
            None => Command::new(&py),
        };
        c.arg("-c").arg(&probe);
        let (_, out) = run_client(c)?;
        Ok(serde_json::from_str(out.trim())?)
    };
    let inside = run(Some(&cg.0))?;
    for k in ["v4", "v6", "mapped"] {
        assert_eq!(inside[k], libc_eperm(), "{k} from the cgroup: {inside}");
    }
    let outside = run(None)?;
    for k in ["v4", "v6", "mapped"] {
        assert_eq!(outside[k], "connected", "{k} from elsewhere: {outside}");
    }
    let start = Instant::now();
    while !enf
        .agent
        .records()
        .iter()
        .any(|r| r["type"] == "endpoint-decision")
        && start.elapsed() < WAIT
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let evs: Vec<Value> = enf
        .agent
        .records()
        .into_iter()
        .filter(|r| r["type"] == "endpoint-decision")
        .collect();
    assert!(
        evs.iter()
            .any(|e| e["rule"] == "no-metadata" && e["destination"] == "::1"),
        "{evs:?}"
    );
    assert!(
        evs.iter().any(|e| e["destination"] == "127.0.0.1"),
        "{evs:?}"
    );
    drop((l4, l6));
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn approval_flow_end_to_end() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let key = test_key(3);
    let mut enf = start(&format!(
        "rules:\n  - name: ask-first\n    effect: approve\n    grant_ttl: 5m\n    match:\n      access_keys: [\"{key}\"]\n      actions: [\"s3:DeleteBucket\"]\n"
    ))?;
    let b = format!("hoop-appr-{}", std::process::id());
    let (_, setup) = calls(&emu, None, None, &[format!("create-bucket:{b}")])?;
    assert!(setup[0]["ok"] == true);
    let (pid1, first) = calls(&emu, Some(&key), None, &[format!("delete-bucket:{b}")])?;
    assert!(first[0]["ok"] == false, "first attempt blocked: {first:?}");
    // The request shows up in the list, with the call.
    let start = Instant::now();
    let id = loop {
        let l = cli(&enf.socket, &["list"])?;
        if let Some(a) = l["approvals"].as_array().and_then(|a| {
            a.iter().find(|a| {
                a["pid"] == pid1 && a["state"] == "pending" && a["operation"] == "s3:DeleteBucket"
            })
        }) {
            break a["id"].as_u64().unwrap_or(0);
        }
        anyhow::ensure!(start.elapsed() < WAIT, "no pending approval: {l}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let a = cli(&enf.socket, &["approve", &id.to_string()])?;
    assert_eq!(a["state"], "approved");
    assert!(
        a["decided_by"]
            .as_str()
            .is_some_and(|s| s.contains("uid=0")),
        "{a}"
    );
    let (pid2, second) = calls(&emu, Some(&key), None, &[format!("delete-bucket:{b}")])?;
    assert!(second[0]["ok"] == true, "retry passes: {second:?}");
    let r1 = enf
        .agent
        .wait_records(pid1, WAIT, |r| !decision_of(r, "DeleteBucket").is_empty());
    assert!(
        decision_of(&r1, "DeleteBucket")
            .iter()
            .any(|d| d["effect"] == "approval-requested"),
        "{r1:?}"
    );
    wait_decided(&enf.agent, pid2, "DeleteBucket", "approved", "ask-first");
    let start = Instant::now();
    loop {
        let lines: Vec<Value> = enf
            .agent
            .records()
            .into_iter()
            .filter(|r| r["type"] == "approval")
            .collect();
        let has = |e: &str| lines.iter().any(|l| l["event"] == e && l["id"] == id);
        if has("requested")
            && has("approved")
            && lines
                .iter()
                .any(|l| l["event"] == "used" && l["pid"] == pid2)
        {
            let req = lines
                .iter()
                .find(|l| l["event"] == "requested")
                .cloned()
                .unwrap_or_default();
            assert_eq!(req["call"]["aws"]["operation"], "DeleteBucket", "{req}");
            break;
        }
        anyhow::ensure!(
            start.elapsed() < WAIT,
            "approval trail incomplete: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn invalid_policy_is_rejected_and_the_previous_one_stays() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let key = test_key(4);
    let mut enf = start(&format!(
        "rules:\n  - name: keep-me\n    effect: deny\n    match:\n      access_keys: [\"{key}\"]\n      actions: [\"s3:DeleteBucket\"]\n"
    ))?;
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(
        &enf.policy,
        "rules:\n  - name: broken\n    effect: deny\n    match:\n      actions: [\"nosuchservice:Thing\"]\n",
    )?;
    let line = enf.agent.wait_log("rejected", WAIT)?;
    assert!(
        line.contains("rule 0 (broken)") && line.contains("`actions`"),
        "{line}"
    );
    let b = format!("hoop-inv-{}", std::process::id());
    let (_, res) = calls(
        &emu,
        Some(&key),
        None,
        &[format!("create-bucket:{b}"), format!("delete-bucket:{b}")],
    )?;
    assert!(
        res[0]["ok"] == true && res[1]["ok"] == false,
        "previous policy still enforced: {res:?}"
    );
    enf.agent.stop()?;
    Ok(())
}

/// A client running in the background: its stdout lines are collected as they come.
struct Bg {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Bg {
    fn start(emu: &Emulator, key: &str, steps: &[String]) -> anyhow::Result<Bg> {
        let mut cmd = Command::new(repo_root().join(".venv/bin/python"));
        cmd.arg(client_script("enforce_calls.py")).args(steps);
        emu.client_env(&mut cmd);
        cmd.env("AWS_ACCESS_KEY_ID", key);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        let mut child = cmd.spawn()?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let (Ok(v), Ok(mut s)) = (serde_json::from_str::<Value>(&l), sink.lock()) {
                    s.push(v);
                }
            }
        });
        Ok(Bg { child, lines })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn results(&self) -> Vec<Value> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn wait_results(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Value>> {
        let start = Instant::now();
        loop {
            let r = self.results();
            if r.len() >= n {
                return Ok(r);
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "client gave {} of {n} results: {r:?}",
                r.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn finish(mut self) -> anyhow::Result<Vec<Value>> {
        let st = self.child.wait()?;
        anyhow::ensure!(st.success(), "client exited with {st}");
        std::thread::sleep(Duration::from_millis(100));
        Ok(self.results())
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        // A stopped child must not outlive the test.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-CONT", &self.child.id().to_string()])
                .stderr(std::process::Stdio::null())
                .status();
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `ss`-free check that a process keeps using one TCP connection: the established sockets
/// (inodes) among its fds.
fn socket_inodes(pid: u32) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| t.to_string_lossy().into_owned())
                .filter(|t| t.starts_with("socket:"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn connections_opened_before_the_agent_are_enforced() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let key = test_key(5);
    let b = format!("hoop-pre-{}", std::process::id());
    let dir = TempDir::new("pre")?;
    let go = dir.path().join("go");
    let (_, setup) = calls(&emu, None, None, &[format!("create-bucket:{b}")])?;
    assert!(setup[0]["ok"] == true, "setup: {setup:?}");
    // The client opens its keep-alive S3 connection (HeadBucket) before any agent runs ...
    let client = Bg::start(
        &emu,
        &key,
        &[
            format!("head-bucket:{b}"),
            format!("wait-file:{}", go.display()),
            format!("delete-bucket:{b}"),
            format!("put-object:{b}/k.txt"),
        ],
    )?;
    let first = client.wait_results(1, WAIT)?;
    assert!(first[0]["ok"] == true, "{first:?}");
    let socks_before = socket_inodes(client.pid());
    assert!(!socks_before.is_empty(), "client holds a connection");
    // ... then the agent starts and must adopt that connection.
    let mut enf = start(&format!(
        "rules:\n  - name: pre\n    effect: deny\n    match:\n      access_keys: [\"{key}\"]\n      actions: [\"s3:DeleteBucket\"]\n"
    ))?;
    let adopted = enf.agent.wait_log("socket enforcement attached", WAIT)?;
    std::fs::write(&go, b"")?;
    let pid = client.pid();
    let socks_during = socket_inodes(pid);
    let res = client.finish()?;
    assert!(
        !ok_of(&res, &format!("delete-bucket:{b}")),
        "DeleteBucket on the old connection must fail: {res:?}\n{adopted}"
    );
    assert!(
        ms_of(&res, &format!("delete-bucket:{b}")) < 2000.0,
        "fails at once: {res:?}"
    );
    assert_eq!(
        socks_before, socks_during,
        "the denied call used the connection opened before the agent"
    );
    let (_, after) = calls(&emu, None, None, &[format!("head-bucket:{b}")])?;
    assert!(after[0]["ok"] == true, "bucket still exists: {after:?}");
    // Without the terminal colours of the log line.
    let mut plain = String::new();
    let mut esc = false;
    for c in adopted.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (false, c) => plain.push(c),
            _ => {}
        }
    }
    let n: u64 = plain
        .split("adopted=")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    assert!(n >= 1, "adopted at least the client's socket: {adopted}");
    wait_decided(&enf.agent, pid, "DeleteBucket", "deny", "pre");
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn hold_pauses_the_caller_until_approved() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let key = test_key(6);
    let mut enf = start(&format!(
        "rules:\n  - name: hold-it\n    effect: approve\n    hold: true\n    hold_timeout: 60s\n    grant_ttl: 5m\n    match:\n      access_keys: [\"{key}\"]\n      actions: [\"s3:DeleteBucket\"]\n"
    ))?;
    let b = format!("hoop-hold-{}", std::process::id());
    let (_, setup) = calls(&emu, None, None, &[format!("create-bucket:{b}")])?;
    assert!(setup[0]["ok"] == true, "setup: {setup:?}");
    let client = Bg::start(&emu, &key, &[format!("delete-bucket:{b}")])?;
    let pid = client.pid();
    // Stopped in the kernel (SIGSTOP from the SSL_write probe): state T.
    wait_stopped(pid)?;
    let id = wait_pending(&enf, pid)?;
    let a = wait_listed(&enf, id, |a| a["held"] == true)?;
    assert_eq!(a["held"], true, "a held approval: {a}");
    // Still paused while nobody decides.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(proc_state(pid), Some('T'), "paused until a decision");
    assert!(client.results().is_empty(), "no result while paused");
    let a = cli(&enf.socket, &["approve", &id.to_string()])?;
    assert_eq!(a["state"], "approved");
    let res = client.finish()?;
    assert!(
        ok_of(&res, &format!("delete-bucket:{b}")),
        "the held call completes after approval: {res:?}"
    );
    let (_, after) = calls(&emu, None, None, &[format!("head-bucket:{b}")])?;
    assert!(
        after[0]["ok"] == false,
        "the bucket was really deleted: {after:?}"
    );
    wait_decided(&enf.agent, pid, "DeleteBucket", "approved", "hold-it");
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn principal_rule_is_enforced_through_its_keys() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let (agent_key, other_key) = (test_key(7), test_key(8));
    let dir = TempDir::new("principals")?;
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "principals:\n  static_keys:\n    {agent_key}: arn:aws:iam::123456789012:role/agent-e2e\n    {other_key}: arn:aws:iam::123456789012:user/human\n"
        ),
    )?;
    let pol = dir.path().join("policy.yaml");
    std::fs::write(
        &pol,
        "rules:\n  - name: agents\n    effect: deny\n    match:\n      principals: [\"arn:aws:iam::*:role/agent-*\"]\n      actions: [\"s3:DeleteBucket\"]\n",
    )?;
    let socket = dir.path().join("hoop.sock");
    let mut agent = Agent::start(&[
        "--config",
        cfg.to_str().unwrap_or_default(),
        "--policy",
        pol.to_str().unwrap_or_default(),
        "--api-socket",
        socket.to_str().unwrap_or_default(),
    ])?;
    let id = std::process::id();
    let (b1, b2) = (format!("hoop-pr1-{id}"), format!("hoop-pr2-{id}"));
    let (_, setup) = calls(
        &emu,
        None,
        None,
        &[format!("create-bucket:{b1}"), format!("create-bucket:{b2}")],
    )?;
    assert!(setup.iter().all(|r| r["ok"] == true), "setup: {setup:?}");
    // The principal map is read from the event loop: give it a moment after start.
    std::thread::sleep(Duration::from_millis(1500));
    let (pid, res) = calls(
        &emu,
        Some(&agent_key),
        None,
        &[format!("delete-bucket:{b1}")],
    )?;
    assert!(
        res[0]["ok"] == false,
        "the agent role's key is denied: {res:?}"
    );
    let (_, res) = calls(
        &emu,
        Some(&other_key),
        None,
        &[format!("delete-bucket:{b2}")],
    )?;
    assert!(res[0]["ok"] == true, "another principal passes: {res:?}");
    wait_decided(&agent, pid, "DeleteBucket", "deny", "agents");
    agent.stop()?;
    Ok(())
}

#[allow(dead_code)]
fn unused(_: &str) -> String {
    s("")
}

// ---------------------------------------------------------------------------------------------
// The approval flow in the audit trail, its timeouts and denials, and the `kill` effect.
// ---------------------------------------------------------------------------------------------

/// Runs a reviewer command (`query`, `verify`, `dump`, `report`) through the enforcing
/// agent's API socket; returns its stdout, failing when the command fails.
fn reviewer(enf: &Enf, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(agent_bin())
        .arg("--data-dir")
        .arg(&enf.agent.data_dir)
        .arg("--api-socket")
        .arg(&enf.socket)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "hoop-agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Entries of the stored trail a `query` selects (JSON lines).
fn stored(enf: &Enf, filters: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut args = vec!["query", "--format", "jsonl"];
    args.extend_from_slice(filters);
    Ok(jsonl(&reviewer(enf, &args)?))
}

/// Waits until the stored trail holds enforcement event `effect` of approval `id`.
fn wait_stored_event(enf: &Enf, effect: &str, id: u64) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        let evs = stored(enf, &["--decision", effect])?;
        if let Some(e) = evs.iter().find(|e| e["decision"]["approval"] == id) {
            return Ok(e.clone());
        }
        anyhow::ensure!(
            start.elapsed() < WAIT,
            "no {effect} of approval {id} in the stored trail: {evs:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for a pending approval request of `pid`; returns its id.
/// Creates bucket `b`, then has `key` try to delete it: the `approve` rule refuses the attempt
/// and opens a request. Returns (the caller's pid, the request id).
fn first_attempt(emu: &Emulator, enf: &Enf, key: &str, b: &str) -> anyhow::Result<(u32, u64)> {
    let (_, setup) = calls(emu, None, None, &[format!("create-bucket:{b}")])?;
    assert!(setup[0]["ok"] == true, "setup: {setup:?}");
    let (pid, first) = calls(emu, Some(key), None, &[format!("delete-bucket:{b}")])?;
    assert!(first[0]["ok"] == false, "first attempt blocked: {first:?}");
    Ok((pid, wait_pending(enf, pid)?))
}

/// Waits until `pid` is stopped (SIGSTOP from the `SSL_write` probe of a `hold` rule).
fn wait_stopped(pid: u32) -> anyhow::Result<()> {
    let start = Instant::now();
    while proc_state(pid) != Some('T') {
        anyhow::ensure!(
            start.elapsed() < WAIT,
            "client never stopped: state {:?}",
            proc_state(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn wait_pending(enf: &Enf, pid: u32) -> anyhow::Result<u64> {
    let start = Instant::now();
    loop {
        let l = cli(&enf.socket, &["list"])?;
        if let Some(a) = l["approvals"].as_array().and_then(|a| {
            a.iter()
                .find(|a| a["pid"] == pid && a["state"] == "pending")
        }) {
            return a["id"]
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("approval without id: {a}"));
        }
        anyhow::ensure!(start.elapsed() < WAIT, "no pending approval of {pid}: {l}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The approval `id` as `approvals list` shows it, once `pred` holds (or the last seen).
fn wait_listed(enf: &Enf, id: u64, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        let l = cli(&enf.socket, &["list"])?;
        let a = l["approvals"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["id"] == id).cloned())
            .unwrap_or_default();
        if pred(&a) || start.elapsed() > WAIT {
            return Ok(a);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /v1/enforce/stats` of the enforcing agent.
fn enforce_stats(enf: &Enf) -> anyhow::Result<Value> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&enf.socket)?;
    s.write_all(b"GET /v1/enforce/stats HTTP/1.1\r\nHost: hoop\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| anyhow::anyhow!("no HTTP body: {out}"))?;
    Ok(serde_json::from_str(body.trim())?)
}

#[test]
fn approval_flow_is_in_the_tamper_evident_trail() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let key = test_key(20);
    let mut enf = start(&format!(
        "rules:\n  - name: ask-first\n    effect: approve\n    grant_ttl: 5m\n    match:\n      access_keys: [\"{key}\"]\n      actions: [\"s3:DeleteBucket\"]\n"
    ))?;
    let b = format!("hoop-trail-{}", std::process::id());
    let (pid1, id) = first_attempt(&emu, &enf, &key, &b)?;
    let a = cli(&enf.socket, &["approve", &id.to_string()])?;
    assert_eq!(a["state"], "approved", "{a}");
    let (pid2, second) = calls(&emu, Some(&key), None, &[format!("delete-bucket:{b}")])?;
    assert!(second[0]["ok"] == true, "retry passes: {second:?}");

    // Who asked: the blocked call's process, user and key, with the masked call.
    let req = wait_stored_event(&enf, "approval:requested", id)?;
    assert_eq!(req["process"]["pid"], pid1, "{req}");
    assert_eq!(req["process"]["uid"], 0, "{req}");
    assert_eq!(req["identity"]["access_key_id"], key.as_str(), "{req}");
    assert_eq!(req["aws"]["operation"], "DeleteBucket", "{req}");
    assert_eq!(req["aws"]["iam_action"], "s3:DeleteBucket", "{req}");
    assert_eq!(req["request"]["method"], "DELETE", "{req}");
    assert_eq!(req["decision"]["rule"], "ask-first", "{req}");
    assert_eq!(req["event"]["held"], false, "{req}");
    assert!(req["event"]["requested_at"].is_string(), "{req}");
    // Who approved, when, until when.
    let ok = wait_stored_event(&enf, "approval:approved", id)?;
    assert!(
        ok["event"]["decided_by"]
            .as_str()
            .is_some_and(|s| s.contains("uid=0")),
        "{ok}"
    );
    assert!(ok["event"]["decided_at"].is_string(), "{ok}");
    assert!(ok["event"]["grant_expires"].is_string(), "{ok}");
    assert_eq!(
        ok["process"]["pid"], pid1,
        "the approval is about pid1's request: {ok}"
    );
    // Which call used the grant.
    let used = wait_stored_event(&enf, "approval:used", id)?;
    assert_eq!(used["process"]["pid"], pid2, "{used}");
    assert_eq!(used["identity"]["access_key_id"], key.as_str(), "{used}");
    // The calls themselves name the request they raised and the grant they passed on.
    let pid1s = pid1.to_string();
    let pid2s = pid2.to_string();
    let c1 = stored(&enf, &["--pid", &pid1s, "--decision", "approval-requested"])?;
    assert!(c1.iter().any(|c| c["decision"]["approval"] == id), "{c1:?}");
    let c2 = stored(&enf, &["--pid", &pid2s, "--decision", "approved"])?;
    assert!(
        c2.iter()
            .any(|c| c["decision"]["approval"] == id && c["response"]["status"] == 204),
        "{c2:?}"
    );
    // Secrets are masked in event entries as everywhere.
    let all = reviewer(&enf, &["dump", "--format", "jsonl", "--no-progress"])?;
    assert!(!all.contains(SECRET_ACCESS_KEY), "no secret key stored");
    assert!(!all.contains("Signature="), "no request signature stored");
    let dumped = jsonl(&all);
    for e in ["approval:requested", "approval:approved", "approval:used"] {
        assert!(
            dumped
                .iter()
                .any(|d| d["decision"]["effect"] == e && d["decision"]["approval"] == id),
            "dump holds {e}"
        );
    }
    // The events are links of the hash chain, and reports still count only calls.
    let v = reviewer(&enf, &["verify"])?;
    assert!(v.contains("chain OK"), "{v}");
    let rep: Value = serde_json::from_str(&reviewer(
        &enf,
        &["report", "--format", "json", "--access-key", &key],
    )?)?;
    let calls_of_key = rep.to_string();
    assert!(
        calls_of_key.contains("\"calls\":2"),
        "two DeleteBucket calls, events not counted: {rep}"
    );
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn approval_deny_is_recorded_and_the_retry_stays_blocked() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let key = test_key(21);
    let mut enf = start(&format!(
        "rules:\n  - name: ask-first\n    effect: approve\n    match:\n      access_keys: [\"{key}\"]\n      actions: [\"s3:DeleteBucket\"]\n"
    ))?;
    let b = format!("hoop-deny-{}", std::process::id());
    let (pid1, id) = first_attempt(&emu, &enf, &key, &b)?;
    let d = cli(&enf.socket, &["deny", &id.to_string()])?;
    assert_eq!(d["state"], "denied", "{d}");
    assert!(
        d["decided_by"]
            .as_str()
            .is_some_and(|s| s.contains("uid=0")),
        "{d}"
    );
    // A denied request cannot be approved afterwards.
    let late = Command::new(agent_bin())
        .args(["approvals", "--api-socket"])
        .arg(&enf.socket)
        .args(["approve", &id.to_string()])
        .output()?;
    assert!(!late.status.success(), "approve after deny must fail");
    let (pid2, second) = calls(&emu, Some(&key), None, &[format!("delete-bucket:{b}")])?;
    assert!(second[0]["ok"] == false, "retry still blocked: {second:?}");
    let id2 = wait_pending(&enf, pid2)?;
    assert_ne!(id2, id, "the retry is a new request");
    let (_, after) = calls(&emu, None, None, &[format!("head-bucket:{b}")])?;
    assert!(after[0]["ok"] == true, "bucket still exists: {after:?}");
    let den = wait_stored_event(&enf, "approval:denied", id)?;
    assert!(
        den["event"]["decided_by"]
            .as_str()
            .is_some_and(|s| s.contains("uid=0")),
        "{den}"
    );
    assert_eq!(den["process"]["pid"], pid1, "{den}");
    assert_eq!(den["aws"]["operation"], "DeleteBucket", "{den}");
    let lines: Vec<Value> = enf
        .agent
        .records()
        .into_iter()
        .filter(|r| r["type"] == "approval" && r["event"] == "denied" && r["id"] == id)
        .collect();
    assert_eq!(lines.len(), 1, "one denied line in the output");
    let r2 = enf
        .agent
        .wait_records(pid2, WAIT, |r| !decision_of(r, "DeleteBucket").is_empty());
    assert!(
        decision_of(&r2, "DeleteBucket")
            .iter()
            .any(|d| d["effect"] == "approval-requested" && d["approval"] == id2),
        "{r2:?}"
    );
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn approval_grant_is_time_bound_and_leaves_the_kernel() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let key = test_key(22);
    let mut enf = start(&format!(
        "rules:\n  - name: brief\n    effect: approve\n    grant_ttl: 2s\n    match:\n      access_keys: [\"{key}\"]\n      actions: [\"s3:DeleteBucket\", \"s3:CreateBucket\"]\n"
    ))?;
    let b = format!("hoop-ttl-{}", std::process::id());
    let (pid1, first) = calls(&emu, Some(&key), None, &[format!("create-bucket:{b}")])?;
    assert!(first[0]["ok"] == false, "first attempt blocked: {first:?}");
    let id = wait_pending(&enf, pid1)?;
    cli(&enf.socket, &["approve", &id.to_string()])?;
    assert_eq!(enforce_stats(&enf)?["grants"], 1, "one grant in the kernel");
    let (_, second) = calls(&emu, Some(&key), None, &[format!("create-bucket:{b}")])?;
    assert!(
        second[0]["ok"] == true,
        "within the TTL the retry passes: {second:?}"
    );
    // Past the TTL: the grant is gone from the kernel map, expired in the list and trail,
    // and the same call is blocked again (a new request).
    let a = wait_listed(&enf, id, |a| a["state"] == "expired")?;
    assert_eq!(a["state"], "expired", "{a}");
    let start_t = Instant::now();
    while enforce_stats(&enf)?["grants"] != 0 {
        anyhow::ensure!(start_t.elapsed() < WAIT, "grant never left ENF_GRANTS");
        std::thread::sleep(Duration::from_millis(100));
    }
    let exp = wait_stored_event(&enf, "approval:expired", id)?;
    assert!(exp["event"]["grant_expires"].is_string(), "{exp}");
    let (pid3, third) = calls(&emu, Some(&key), None, &[format!("delete-bucket:{b}")])?;
    assert!(
        third[0]["ok"] == false,
        "another action was never granted: {third:?}"
    );
    let (pid4, fourth) = calls(&emu, Some(&key), None, &[format!("create-bucket:{b}2")])?;
    let _ = pid3;
    assert!(
        fourth[0]["ok"] == false,
        "after the TTL blocked again: {fourth:?}"
    );
    let id4 = wait_pending(&enf, pid4)?;
    assert!(id4 > id, "a new request");
    assert!(
        enf.agent
            .records()
            .iter()
            .any(|r| r["type"] == "approval" && r["event"] == "expired" && r["id"] == id),
        "expired line in the output"
    );
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn approval_request_expires_without_a_decision() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let key = test_key(23);
    let mut enf = start(&format!(
        "rules:\n  - name: ask-first\n    effect: approve\n    request_timeout: 2s\n    match:\n      access_keys: [\"{key}\"]\n      actions: [\"s3:DeleteBucket\"]\n"
    ))?;
    let b = format!("hoop-reqexp-{}", std::process::id());
    let (pid1, id) = first_attempt(&emu, &enf, &key, &b)?;
    let a = wait_listed(&enf, id, |a| a["state"] != "pending")?;
    assert_eq!(a["state"], "expired", "{a}");
    assert_eq!(a["decided_by"], "timeout", "{a}");
    let late = Command::new(agent_bin())
        .args(["approvals", "--api-socket"])
        .arg(&enf.socket)
        .args(["approve", &id.to_string()])
        .output()?;
    assert!(
        !late.status.success(),
        "an expired request cannot be approved"
    );
    let exp = wait_stored_event(&enf, "approval:expired", id)?;
    assert_eq!(exp["event"]["decided_by"], "timeout", "{exp}");
    assert_eq!(exp["process"]["pid"], pid1, "{exp}");
    let (_, again) = calls(&emu, Some(&key), None, &[format!("delete-bucket:{b}")])?;
    assert!(again[0]["ok"] == false, "still blocked: {again:?}");
    assert_eq!(enforce_stats(&enf)?["grants"], 0, "nothing was granted");
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn approval_hold_times_out_and_the_held_call_fails() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let key = test_key(24);
    let mut enf = start(&format!(
        "rules:\n  - name: hold-brief\n    effect: approve\n    hold: true\n    hold_timeout: 2s\n    match:\n      access_keys: [\"{key}\"]\n      actions: [\"s3:DeleteBucket\"]\n"
    ))?;
    let b = format!("hoop-holdexp-{}", std::process::id());
    let (_, setup) = calls(&emu, None, None, &[format!("create-bucket:{b}")])?;
    assert!(setup[0]["ok"] == true, "setup: {setup:?}");
    let client = Bg::start(&emu, &key, &[format!("delete-bucket:{b}")])?;
    let pid = client.pid();
    let start_t = Instant::now();
    wait_stopped(pid)?;
    let id = wait_pending(&enf, pid)?;
    // Nobody decides: after hold_timeout the caller resumes and its call fails, unsent.
    let res = client.finish()?;
    assert!(
        !ok_of(&res, &format!("delete-bucket:{b}")),
        "the held call fails after the timeout: {res:?}"
    );
    let paused = start_t.elapsed();
    assert!(
        paused < Duration::from_secs(10),
        "resumed after the timeout, not later: {paused:?}"
    );
    let (_, after) = calls(&emu, None, None, &[format!("head-bucket:{b}")])?;
    assert!(after[0]["ok"] == true, "bucket still exists: {after:?}");
    let a = wait_listed(&enf, id, |a| a["state"] == "expired")?;
    assert_eq!(a["state"], "expired", "{a}");
    assert_eq!(a["decided_by"], "timeout", "{a}");
    let exp = wait_stored_event(&enf, "approval:expired", id)?;
    assert_eq!(exp["event"]["held"], true, "{exp}");
    assert_eq!(exp["process"]["pid"], pid, "{exp}");
    let req = wait_stored_event(&enf, "approval:requested", id)?;
    assert_eq!(req["aws"]["operation"], "DeleteBucket", "{req}");
    assert_eq!(req["identity"]["access_key_id"], key.as_str(), "{req}");
    assert_eq!(req["process"]["pid"], pid, "{req}");
    wait_decided(&enf.agent, pid, "DeleteBucket", "deny", "hold-brief");
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn kill_rule_kills_the_caller_before_the_call_leaves() -> anyhow::Result<()> {
    use std::os::unix::process::ExitStatusExt;
    let emu = Emulator::start()?;
    let key = test_key(25);
    let mut enf = start(&format!(
        "rules:\n  - name: no-bucket-deletes\n    effect: kill\n    match:\n      access_keys: [\"{key}\"]\n      actions: [\"s3:DeleteBucket\"]\n  - name: watch-creates\n    effect: audit\n    match:\n      access_keys: [\"{key}\"]\n      actions: [\"s3:CreateBucket\"]\n"
    ))?;
    let b = format!("hoop-kill-{}", std::process::id());
    let mut cmd = Command::new(repo_root().join(".venv/bin/python"));
    cmd.arg(client_script("enforce_calls.py"))
        .arg(format!("create-bucket:{b}"))
        .arg(format!("delete-bucket:{b}"))
        .arg(format!("head-bucket:{b}"));
    emu.client_env(&mut cmd);
    cmd.env("AWS_ACCESS_KEY_ID", &key);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "killed by SIGKILL: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let res = jsonl(&String::from_utf8_lossy(&out.stdout));
    assert!(ok_of(&res, &format!("create-bucket:{b}")), "{res:?}");
    assert!(
        res.iter()
            .all(|r| r["step"] != format!("delete-bucket:{b}").as_str()),
        "the process died inside DeleteBucket: {res:?}"
    );
    let (_, after) = calls(&emu, None, None, &[format!("head-bucket:{b}")])?;
    assert!(after[0]["ok"] == true, "the bucket still exists: {after:?}");
    let recs = enf.agent.wait_records(pid, WAIT, |r| {
        !decision_of(r, "DeleteBucket").is_empty() && !decision_of(r, "CreateBucket").is_empty()
    });
    assert!(
        decision_of(&recs, "DeleteBucket")
            .iter()
            .any(|d| d["effect"] == "kill" && d["rule"] == "no-bucket-deletes"),
        "{recs:?}"
    );
    assert!(
        decision_of(&recs, "CreateBucket")
            .iter()
            .any(|d| d["effect"] == "audit" && d["rule"] == "watch-creates"),
        "{recs:?}"
    );
    let pids = pid.to_string();
    let start_t = Instant::now();
    loop {
        let k = stored(&enf, &["--pid", &pids, "--decision", "kill"])?;
        if k.iter().any(|r| r["aws"]["operation"] == "DeleteBucket") {
            break;
        }
        anyhow::ensure!(start_t.elapsed() < WAIT, "no stored kill decision: {k:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn endpoint_decisions_are_in_the_trail() -> anyhow::Result<()> {
    let l4 = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l4.local_addr()?.port();
    let cg = Cgroup::new("eptrail")?;
    let mut enf = start(&format!(
        "rules:\n  - name: no-listener\n    effect: deny\n    match:\n      cgroup: \"{}\"\n      endpoints: [\"127.0.0.1/32\"]\n      ports: [{port}]\n",
        cg.1
    ))?;
    let probe = format!(
        "import socket\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', {port})); print('connected')\nexcept OSError as e:\n    print(e.errno)\n"
    );
    let mut c = in_cgroup(&cg.0, repo_root().join(".venv/bin/python"));
    c.arg("-c").arg(&probe);
    let (pid, out) = run_client(c)?;
    assert_eq!(out.trim(), "1", "EPERM from the cgroup");
    let start_t = Instant::now();
    let e = loop {
        let evs = stored(
            &enf,
            &["--decision", "endpoint:*", "--pid", &pid.to_string()],
        )?;
        if let Some(e) = evs.into_iter().next() {
            break e;
        }
        anyhow::ensure!(start_t.elapsed() < WAIT, "no stored endpoint decision");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(e["decision"]["effect"], "endpoint:deny", "{e}");
    assert_eq!(e["decision"]["rule"], "no-listener", "{e}");
    assert_eq!(e["event"]["destination"], "127.0.0.1", "{e}");
    assert_eq!(e["event"]["port"], port, "{e}");
    assert_eq!(e["process"]["uid"], 0, "{e}");
    // In monitor mode the connect passes and is recorded as would-deny.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(
        &enf.policy,
        format!(
            "mode: monitor\nrules:\n  - name: watch-listener\n    effect: deny\n    match:\n      cgroup: \"{}\"\n      endpoints: [\"127.0.0.1/32\"]\n      ports: [{port}]\n",
            cg.1
        ),
    )?;
    enf.agent.wait_log("policy reloaded", WAIT)?;
    let mut c = in_cgroup(&cg.0, repo_root().join(".venv/bin/python"));
    c.arg("-c").arg(&probe);
    let (pid2, out) = run_client(c)?;
    assert_eq!(out.trim(), "connected", "monitor mode blocks nothing");
    let start_t = Instant::now();
    let w = loop {
        let evs = stored(
            &enf,
            &["--decision", "endpoint:*", "--pid", &pid2.to_string()],
        )?;
        if let Some(e) = evs.into_iter().next() {
            break e;
        }
        anyhow::ensure!(
            start_t.elapsed() < WAIT,
            "no stored would-deny endpoint decision"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(w["decision"]["effect"], "endpoint:would-deny", "{w}");
    assert_eq!(w["decision"]["rule"], "watch-listener", "{w}");
    let v = reviewer(&enf, &["verify"])?;
    assert!(v.contains("chain OK"), "{v}");
    drop(l4);
    enf.agent.stop()?;
    Ok(())
}

/// The request shapes real clients send besides boto3's path-style S3 and split query bodies:
/// virtual-hosted S3 (the bucket in `Host`, as boto3 and the JS SDK address AWS), presigned
/// URLs (SigV4 and S3's legacy SigV2: the credential in the query, no `Authorization`),
/// query-protocol parameters in the URL, Smithy RPC v2 CBOR (boto3's CloudWatch), and a client
/// that writes head and body in one TLS write (Node). Each denied call must fail and leave the emulator unchanged (the buckets it
/// would delete are empty, so only the policy stops it); calls the rules do not name pass.
#[test]
fn every_request_shape_is_classified_in_the_kernel() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let key = test_key(40);
    let id = std::process::id();
    let b = |tag: &str| format!("hoop-shape-{tag}-{id}");
    let (keep, keep_e, node_e, other, ro) =
        (b("keep"), b("keep-e"), b("keep-node"), b("other"), b("ro"));
    let (user, node_user, table) = (b("u"), b("nu"), b("t"));
    let mut enf = start(&format!(
        r#"
mode: enforce
rules:
  - name: keep-buckets
    effect: deny
    match:
      access_keys: ["{key}"]
      actions: ["s3:DeleteBucket", "s3:PutBucketPolicy"]
      resources: ["arn:aws:s3:::hoop-shape-keep-*"]
  - name: keep-objects
    effect: deny
    match:
      access_keys: ["{key}"]
      actions: ["s3:DeleteObject"]
      resources: ["arn:aws:s3:::hoop-shape-keep-*/*"]
  - name: read-only-bucket
    effect: deny
    match:
      access_keys: ["{key}"]
      actions: ["s3:PutObject"]
      resources: ["arn:aws:s3:::hoop-shape-ro-*/*"]
  - name: no-users
    effect: deny
    match:
      access_keys: ["{key}"]
      actions: ["iam:CreateUser", "dynamodb:DeleteTable"]
  - name: no-metrics
    effect: deny
    match:
      access_keys: ["{key}"]
      actions: ["cloudwatch:PutMetricData"]
"#
    ))?;
    let ns = format!("hoop/shape/{id}");
    let py = || {
        let mut c = Command::new(repo_root().join(".venv/bin/python"));
        c.arg(client_script("enforce_shapes.py"));
        c
    };
    let setup: Vec<String> = [&keep, &keep_e, &node_e, &other, &ro]
        .iter()
        .map(|b| format!("vh-create-bucket:{b}"))
        .collect();
    let (_, res) = run_steps(&emu, py(), None, &setup)?;
    assert!(res.iter().all(|r| r["ok"] == true), "setup: {res:?}");
    let (_, res) = calls(&emu, None, None, &[format!("create-table:{table}")])?;
    assert!(res.iter().all(|r| r["ok"] == true), "setup: {res:?}");

    // boto3: virtual-hosted S3, presigned URLs, a query call with its Action in the URL.
    let steps = [
        (format!("vh-put-object:{keep}/k1"), true),
        (format!("vh-delete-object:{keep}/k1"), false),
        (format!("vh-put-bucket-policy:{keep_e}"), false),
        (format!("vh-delete-bucket:{keep_e}"), false),
        (format!("presigned-delete-bucket:{keep_e}"), false),
        (format!("presigned-v2-delete-bucket:{keep_e}"), false),
        (format!("presigned-put-object:{ro}/k2"), false),
        (format!("presigned-v2-put-object:{ro}/k3"), false),
        (format!("presigned-put-object:{keep}/k4"), true),
        (format!("vh-delete-bucket:{other}"), true),
        (format!("url-create-user:{user}"), false),
        (format!("cw-list-metrics:{ns}"), true),
        (format!("cw-put-metric:{ns}"), false),
    ];
    let names: Vec<String> = steps.iter().map(|(s, _)| s.clone()).collect();
    let (pid, res) = run_steps(&emu, py(), Some(&key), &names)?;
    for (step, ok) in &steps {
        assert_eq!(ok_of(&res, step), *ok, "{step}: {res:?}");
    }
    // The JS SDK v3: head and body in one write.
    let node_steps = [
        (format!("vh-put-object:{keep}/n/k5"), true),
        (format!("vh-delete-bucket:{node_e}"), false),
        (format!("create-user:{node_user}"), false),
        (format!("delete-table:{table}"), false),
    ];
    let names: Vec<String> = node_steps.iter().map(|(s, _)| s.clone()).collect();
    let (node_pid, node_res) =
        run_steps(&emu, node_script("enforce_calls.mjs"), Some(&key), &names)?;
    for (step, ok) in &node_steps {
        assert_eq!(ok_of(&node_res, step), *ok, "{step}: {node_res:?}");
    }

    // An unrestricted process finds unchanged what the denied calls would have changed.
    let check = [
        (format!("head-object:{keep}/k1"), true),
        (format!("get-bucket-policy:{keep_e}"), false),
        (format!("head-bucket:{keep_e}"), true),
        (format!("head-object:{ro}/k2"), false),
        (format!("head-object:{ro}/k3"), false),
        (format!("head-object:{keep}/k4"), true),
        (format!("head-object:{keep}/n/k5"), true),
        (format!("head-bucket:{other}"), false),
        (format!("get-user:{user}"), false),
        (format!("get-user:{node_user}"), false),
        (format!("head-bucket:{node_e}"), true),
        (format!("cw-metric-exists:{ns}"), false),
    ];
    let names: Vec<String> = check.iter().map(|(s, _)| s.clone()).collect();
    let (_, after) = run_steps(&emu, py(), None, &names)?;
    for (step, ok) in &check {
        assert_eq!(ok_of(&after, step), *ok, "{step} afterwards: {after:?}");
    }
    let (_, res) = calls(&emu, None, None, &[format!("describe-table:{table}")])?;
    assert!(
        res.iter().all(|r| r["ok"] == true),
        "table still exists: {res:?}"
    );

    // Each denial is recorded with the rule that took it.
    let denied = [
        ("DeleteObject", "keep-objects"),
        ("PutBucketPolicy", "keep-buckets"),
        ("DeleteBucket", "keep-buckets"),
        ("PutObject", "read-only-bucket"),
        ("CreateUser", "no-users"),
        ("PutMetricData", "no-metrics"),
    ];
    let denied_by = |recs: &[Value], op: &str, rule: &str| {
        decision_of(recs, op)
            .iter()
            .any(|d| d["effect"] == "deny" && d["rule"] == rule)
    };
    let recs = enf.agent.wait_records(pid, WAIT, |r| {
        denied.iter().all(|(op, rule)| denied_by(r, op, rule))
    });
    for (op, rule) in denied {
        assert!(
            denied_by(&recs, op, rule),
            "{op} denied by {rule}: {:?}",
            decision_of(&recs, op)
        );
    }
    let node_denied = [
        ("DeleteBucket", "keep-buckets"),
        ("CreateUser", "no-users"),
        ("DeleteTable", "no-users"),
    ];
    let recs = enf.agent.wait_records(node_pid, WAIT, |r| {
        node_denied.iter().all(|(op, rule)| denied_by(r, op, rule))
    });
    for (op, rule) in node_denied {
        assert!(denied_by(&recs, op, rule), "node {op} denied by {rule}");
    }
    enf.agent.stop()?;
    Ok(())
}
