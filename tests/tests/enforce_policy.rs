//! End-to-end policy compilation (issue 6): the selectors and effects of call and endpoint
//! rules as the kernel applies them (uid, exe, audit), and hot reload in both directions.
//! Every rule is scoped to something only this test has (a test key, a test-owned listener
//! port, a copied interpreter, the `nobody` uid on a test key), so other processes are never
//! affected.

use hoop_e2e::enforce::*;
use hoop_e2e::*;
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The unprivileged uid clients switch to (`nobody`).
const NOBODY: u32 = 65534;

/// How a client process is started.
enum As<'a> {
    /// The venv interpreter, as root.
    Root,
    /// The venv interpreter as uid/gid `nobody` (setpriv execs it: same pid).
    Nobody,
    /// Another executable file holding the same interpreter.
    Exe(&'a Path),
}

/// Runs enforce_calls.py with `steps`; returns (pid, results by step).
fn run(
    emu: &Emulator,
    key: Option<&str>,
    who: As,
    steps: &[String],
) -> anyhow::Result<(u32, Vec<Value>)> {
    let venv_py = repo_root().join(".venv/bin/python");
    let mut cmd = match who {
        As::Root => Command::new(&venv_py),
        As::Nobody => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
            ])
            .arg(&venv_py);
            c
        }
        As::Exe(exe) => {
            let mut c = Command::new(exe);
            c.env("PYTHONPATH", site_packages()?);
            c
        }
    };
    cmd.arg(client_script("enforce_calls.py")).args(steps);
    emu.client_env(&mut cmd);
    if let Some(k) = key {
        cmd.env("AWS_ACCESS_KEY_ID", k);
    }
    let (pid, out) = run_client(cmd)?;
    let res: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    anyhow::ensure!(res.len() == steps.len(), "results of {steps:?}: {out}");
    Ok((pid, res))
}

/// The venv's site-packages (boto3), for an interpreter started from another path.
fn site_packages() -> anyhow::Result<String> {
    let (_, out) = run_client({
        let mut c = python();
        c.args([
            "-c",
            "import os, boto3; print(os.path.dirname(os.path.dirname(boto3.__file__)))",
        ]);
        c
    })?;
    Ok(out.trim().to_string())
}

/// A copy of the venv's interpreter under `dir`: the same program, another executable path.
fn copied_interpreter(dir: &Path) -> anyhow::Result<PathBuf> {
    let real = std::fs::canonicalize(repo_root().join(".venv/bin/python"))?;
    let copy = dir.join("python-hoop-exe-test");
    std::fs::copy(&real, &copy)?;
    Ok(copy)
}

fn error_of(res: &[Value], step: &str) -> String {
    res.iter()
        .find(|r| r["step"] == step)
        .and_then(|r| r["error"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Waits for the agent's endpoint decision lines that satisfy `pred`.
fn endpoint_decisions(enf: &Enf, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let evs: Vec<Value> = enf
            .agent
            .records()
            .into_iter()
            .filter(|r| r["type"] == "endpoint-decision" && pred(r))
            .collect();
        if !evs.is_empty() || start.elapsed() > WAIT {
            return evs;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback listener only this test connects to (connections wait in its backlog).
fn listener() -> anyhow::Result<(TcpListener, u16)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let p = l.local_addr()?.port();
    Ok((l, p))
}

#[test]
fn uid_scoped_endpoint_rule_blocks_that_uid_only() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let (_l, port) = listener()?;
    let mut enf = start(&format!(
        "rules:\n  - name: nobody-no-port\n    effect: deny\n    match:\n      endpoints: [\"127.0.0.1/32\"]\n      ports: [{port}]\n      uid: {NOBODY}\n"
    ))?;
    let step = format!("connect:127.0.0.1:{port}");
    let (pid, as_nobody) = run(&emu, None, As::Nobody, std::slice::from_ref(&step))?;
    assert!(
        !ok_of(&as_nobody, &step) && error_of(&as_nobody, &step).contains("Errno 1"),
        "uid {NOBODY}: EPERM {as_nobody:?}"
    );
    let (_, as_root) = run(&emu, None, As::Root, std::slice::from_ref(&step))?;
    assert!(ok_of(&as_root, &step), "uid 0 connects: {as_root:?}");
    let evs = endpoint_decisions(&enf, |e| e["port"] == port);
    assert!(
        evs.iter().any(|e| e["effect"] == "deny"
            && e["rule"] == "nobody-no-port"
            && e["uid"] == NOBODY
            && e["pid"] == pid),
        "{evs:?}"
    );
    assert!(evs.iter().all(|e| e["uid"] == NOBODY), "{evs:?}");
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn exe_scoped_endpoint_rule_blocks_that_executable_only() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let dir = TempDir::new("exe")?;
    let copy = copied_interpreter(dir.path())?;
    let (_l, port) = listener()?;
    let mut enf = start(&format!(
        "endpoints:\n  - name: copy-no-port\n    cidrs: [\"127.0.0.1\", \"::ffff:127.0.0.1\"]\n    ports: [{port}]\n    match: {{exe: \"{}\"}}\n",
        copy.display()
    ))?;
    // The first step is the connect: the process is covered from its exec on.
    let steps = [
        format!("connect:127.0.0.1:{port}"),
        format!("connect:[::ffff:127.0.0.1]:{port}"),
    ];
    let (pid, copied) = run(&emu, None, As::Exe(&copy), &steps)?;
    for s in &steps {
        assert!(
            !ok_of(&copied, s) && error_of(&copied, s).contains("Errno 1"),
            "{}: EPERM {copied:?}",
            copy.display()
        );
    }
    let (_, venv) = run(&emu, None, As::Root, &steps)?;
    for s in &steps {
        assert!(ok_of(&venv, s), "the venv interpreter connects: {venv:?}");
    }
    let evs = endpoint_decisions(&enf, |e| e["port"] == port);
    assert!(
        evs.iter()
            .any(|e| e["effect"] == "deny" && e["rule"] == "copy-no-port" && e["pid"] == pid),
        "{evs:?}"
    );
    assert!(evs.iter().all(|e| e["pid"] == pid), "{evs:?}");
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn audit_endpoint_rule_lets_the_connection_through_and_records_it() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let (_l, port) = listener()?;
    let mut enf = start(&format!(
        "rules:\n  - name: watch-port\n    effect: audit\n    match:\n      endpoints: [\"127.0.0.0/8\"]\n      ports: [{port}]\n"
    ))?;
    let step = format!("connect:127.0.0.1:{port}");
    let (pid, res) = run(&emu, None, As::Root, std::slice::from_ref(&step))?;
    assert!(ok_of(&res, &step), "audit lets it connect: {res:?}");
    let evs = endpoint_decisions(&enf, |e| e["port"] == port);
    assert!(
        evs.iter().any(|e| e["effect"] == "audit"
            && e["rule"] == "watch-port"
            && e["pid"] == pid
            && e["destination"] == "127.0.0.1"),
        "{evs:?}"
    );
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn exe_scoped_call_rule_blocks_that_executable_only() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let dir = TempDir::new("exe")?;
    let copy = copied_interpreter(dir.path())?;
    let mut enf = start(&format!(
        "rules:\n  - name: copy-no-delete\n    effect: deny\n    match:\n      exe: \"{}\"\n      actions: [\"s3:DeleteBucket\"]\n",
        copy.display()
    ))?;
    let id = std::process::id();
    let (b1, b2) = (format!("hoop-exe1-{id}"), format!("hoop-exe2-{id}"));
    let (_, setup) = run(
        &emu,
        None,
        As::Root,
        &[format!("create-bucket:{b1}"), format!("create-bucket:{b2}")],
    )?;
    assert!(setup.iter().all(|r| r["ok"] == true), "setup: {setup:?}");
    let (pid, copied) = run(&emu, None, As::Exe(&copy), &[format!("delete-bucket:{b1}")])?;
    assert!(
        copied[0]["ok"] == false,
        "copied interpreter: denied {copied:?}"
    );
    let (_, venv) = run(&emu, None, As::Root, &[format!("delete-bucket:{b2}")])?;
    assert!(venv[0]["ok"] == true, "venv interpreter: allowed {venv:?}");
    let (_, after) = run(
        &emu,
        None,
        As::Root,
        &[format!("head-bucket:{b1}"), format!("head-bucket:{b2}")],
    )?;
    assert!(
        after[0]["ok"] == true && after[1]["ok"] == false,
        "{b1} kept, {b2} deleted: {after:?}"
    );
    wait_decided(&enf.agent, pid, "DeleteBucket", "deny", "copy-no-delete");
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn uid_scoped_call_rule_blocks_that_uid_only() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let key = test_key(41);
    let mut enf = start(&format!(
        "rules:\n  - name: nobody-no-delete\n    effect: deny\n    match:\n      uid: {NOBODY}\n      access_keys: [\"{key}\"]\n      actions: [\"s3:DeleteBucket\"]\n"
    ))?;
    let id = std::process::id();
    let (b1, b2) = (format!("hoop-uid1-{id}"), format!("hoop-uid2-{id}"));
    let (_, setup) = run(
        &emu,
        None,
        As::Root,
        &[format!("create-bucket:{b1}"), format!("create-bucket:{b2}")],
    )?;
    assert!(setup.iter().all(|r| r["ok"] == true), "setup: {setup:?}");
    // Same access key, different uids.
    let (pid, nobody) = run(
        &emu,
        Some(&key),
        As::Nobody,
        &[format!("delete-bucket:{b1}")],
    )?;
    assert!(nobody[0]["ok"] == false, "uid {NOBODY}: denied {nobody:?}");
    let (_, root) = run(&emu, Some(&key), As::Root, &[format!("delete-bucket:{b2}")])?;
    assert!(root[0]["ok"] == true, "uid 0: allowed {root:?}");
    let (_, after) = run(
        &emu,
        None,
        As::Root,
        &[format!("head-bucket:{b1}"), format!("head-bucket:{b2}")],
    )?;
    assert!(
        after[0]["ok"] == true && after[1]["ok"] == false,
        "{b1} kept, {b2} deleted: {after:?}"
    );
    let recs = enf
        .agent
        .wait_records(pid, WAIT, |r| !decision_of(r, "DeleteBucket").is_empty());
    assert!(
        recs.iter().any(|r| r["aws"]["operation"] == "DeleteBucket"
            && r["decision"]["effect"] == "deny"
            && r["decision"]["rule"] == "nobody-no-delete"
            && r["process"]["uid"] == NOBODY),
        "{recs:?}"
    );
    enf.agent.stop()?;
    Ok(())
}

#[test]
fn hot_reload_adds_then_removes_a_rule() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let key = test_key(42);
    let other = test_key(43);
    // A rule for another key only: nothing this test's client does matches.
    let without = format!(
        "rules:\n  - name: other-key\n    effect: deny\n    match:\n      access_keys: [\"{other}\"]\n      actions: [\"dynamodb:DescribeTable\"]\n"
    );
    let with = format!(
        "{without}  - name: added-later\n    effect: deny\n    match:\n      access_keys: [\"{key}\"]\n      actions: [\"dynamodb:DescribeTable\"]\n"
    );
    let mut enf = start(&without)?;
    let t = format!("hoop-reload-{}", std::process::id());
    let (_, setup) = run(&emu, None, As::Root, &[format!("create-table:{t}")])?;
    assert!(setup[0]["ok"] == true, "setup: {setup:?}");
    let step = format!("describe-table:{t}");
    let describe = |who: &str| -> anyhow::Result<bool> {
        let (_, r) = run(&emu, Some(&key), As::Root, std::slice::from_ref(&step))?;
        eprintln!("{who}: {r:?}");
        Ok(ok_of(&r, &step))
    };
    assert!(describe("before")?, "no matching rule yet: passes");

    // Until the new file is read: passes; then blocked, within a few seconds.
    let deadline = Duration::from_secs(5);
    let t0 = Instant::now();
    std::fs::write(&enf.policy, &with)?;
    while describe("after adding")? {
        anyhow::ensure!(
            t0.elapsed() < deadline,
            "still allowed {:?} after the rule was written",
            t0.elapsed()
        );
    }
    eprintln!("blocked {:?} after the write", t0.elapsed());
    enf.agent.wait_log("policy reloaded", WAIT)?;

    let t1 = Instant::now();
    std::fs::write(&enf.policy, &without)?;
    while !describe("after removing")? {
        anyhow::ensure!(
            t1.elapsed() < deadline,
            "still blocked {:?} after the rule was removed",
            t1.elapsed()
        );
    }
    eprintln!("allowed again {:?} after the write", t1.elapsed());
    enf.agent.stop()?;
    Ok(())
}

/// The issue's own example, "pods cannot take the node's role": an endpoint rule denies the
/// instance metadata service (169.254.169.254 and fd00:ec2::254, served here on `lo` with
/// AWS's response shapes) to one cgroup. boto3's credential chain in that cgroup finds no
/// credentials, over IPv4 or IPv6; the same script outside it gets the node role's keys.
#[test]
fn imds_denied_to_a_cgroup_keeps_the_node_role_from_it() -> anyhow::Result<()> {
    let _ll = LinkLocal::add()?;
    let id = std::process::id();
    let spec = credential_endpoint_spec(id);
    let _server = serve_credential_endpoints(&spec)?;
    let cg = Cgroup::new("imds-deny")?;
    let _enf = start(&format!(
        "rules:\n  - name: no-imds\n    effect: deny\n    match:\n      cgroup: \"{}\"\n      endpoints: [\"169.254.169.254/32\", \"fd00:ec2::254/128\"]\n      ports: [80]\n",
        cg.1
    ))?;
    let script = "import boto3\nc = boto3.session.Session().get_credentials()\nprint(c.method if c else 'none')\n";
    let py = repo_root().join(".venv/bin/python");
    for mode in ["IPv4", "IPv6"] {
        let credentials = |inside: bool| -> anyhow::Result<String> {
            let mut c = if inside {
                in_cgroup(&cg.0, &py)
            } else {
                Command::new(&py)
            };
            c.arg("-c")
                .arg(script)
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env_remove("AWS_SESSION_TOKEN")
                .env_remove("AWS_EC2_METADATA_DISABLED")
                .env_remove("AWS_PROFILE")
                .env("AWS_CONFIG_FILE", "/dev/null")
                .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
                .env("AWS_DEFAULT_REGION", REGION)
                .env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", mode);
            Ok(run_client(c)?.1.trim().to_string())
        };
        assert_eq!(
            credentials(true)?,
            "none",
            "{mode}: the cgroup gets no role"
        );
        assert_eq!(
            credentials(false)?,
            "iam-role",
            "{mode}: outside the cgroup the node role is there"
        );
    }
    Ok(())
}
