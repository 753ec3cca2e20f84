//! Shared harness of the enforcement e2e suites (issue 6): an agent with a policy file and an
//! API socket, boto3 step scripts, test-owned cgroups. Rules are scoped to a test-unique access
//! key or cgroup, so other processes on the host are never affected.

use crate::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(15);

pub fn test_key(tag: u8) -> String {
    format!("AKIAHOOPENF{:07}{tag:02}", std::process::id() % 10_000_000)
}

pub struct Enf {
    pub agent: Agent,
    pub policy: PathBuf,
    pub socket: PathBuf,
    _dir: TempDir,
    /// Held until the agent has stopped (fields drop in order): two agents with socket
    /// policies on one host steal each other's sockets, so enforcement suites that run at the
    /// same time (other test binaries, other checkouts) take turns.
    _turn: std::fs::File,
}

/// Waits until no other enforcing agent of the e2e suites runs on this host; the turn lasts
/// until the returned file is dropped (drop it after the agent has stopped).
pub fn take_turn() -> anyhow::Result<std::fs::File> {
    let turn = std::fs::File::create("/tmp/hoop-e2e-enforce.lock")?;
    turn.lock()?;
    Ok(turn)
}

pub fn start(policy: &str) -> anyhow::Result<Enf> {
    let turn = take_turn()?;
    let dir = TempDir::new("policy")?;
    let p = dir.path().join("policy.yaml");
    std::fs::write(&p, policy)?;
    let socket = dir.path().join("hoop.sock");
    let agent = Agent::start(&[
        "--policy",
        p.to_str().unwrap_or_default(),
        "--api-socket",
        socket.to_str().unwrap_or_default(),
    ])?;
    Ok(Enf {
        agent,
        policy: p,
        socket,
        _dir: dir,
        _turn: turn,
    })
}

/// Runs enforce_calls.py with `steps`; returns (pid, results by step).
pub fn calls(
    emu: &Emulator,
    key: Option<&str>,
    cgroup: Option<&Path>,
    steps: &[String],
) -> anyhow::Result<(u32, Vec<Value>)> {
    let script = client_script("enforce_calls.py");
    let py = repo_root().join(".venv/bin/python");
    let cmd = match cgroup {
        Some(cg) => {
            let mut c = in_cgroup(cg, &py);
            c.arg(&script);
            c
        }
        None => {
            let mut c = Command::new(&py);
            c.arg(&script);
            c
        }
    };
    run_steps(emu, cmd, key, steps)
}

/// Runs a step client (`cmd`: a script that prints one JSON line per step) against the
/// emulator, signing with `key` when given; returns (pid, results by step).
pub fn run_steps(
    emu: &Emulator,
    mut cmd: Command,
    key: Option<&str>,
    steps: &[String],
) -> anyhow::Result<(u32, Vec<Value>)> {
    cmd.args(steps);
    emu.client_env(&mut cmd);
    if let Some(k) = key {
        cmd.env("AWS_ACCESS_KEY_ID", k);
    }
    let (pid, out) = run_client(cmd)?;
    let res = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok((pid, res))
}

pub fn ok_of(res: &[Value], step: &str) -> bool {
    res.iter()
        .find(|r| r["step"] == step)
        .and_then(|r| r["ok"].as_bool())
        .unwrap_or_else(|| panic!("no result for {step} in {res:?}"))
}

pub fn ms_of(res: &[Value], step: &str) -> f64 {
    res.iter()
        .find(|r| r["step"] == step)
        .and_then(|r| r["ms"].as_f64())
        .unwrap_or(f64::MAX)
}

pub fn s(x: impl Into<String>) -> String {
    x.into()
}

pub fn decision_of<'a>(recs: &'a [Value], op: &str) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["aws"]["operation"] == op)
        .map(|r| &r["decision"])
        .collect()
}

pub fn cgroup2() -> PathBuf {
    cgroup2_mount().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// A child cgroup under the cgroup2 root, removed on drop.
pub struct Cgroup(pub PathBuf, pub String);

impl Cgroup {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let name = format!("hoop-e2e-{tag}-{}", std::process::id());
        let p = cgroup2().join(&name);
        std::fs::create_dir_all(&p)?;
        Ok(Cgroup(p, format!("/{name}")))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

pub fn libc_eperm() -> Value {
    Value::from(1)
}

pub fn cli(socket: &Path, args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new(agent_bin())
        .arg("approvals")
        .arg("--api-socket")
        .arg(socket)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "approvals {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

pub fn proc_state(pid: u32) -> Option<char> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) STATE ...: comm may hold spaces and parens, the state follows the last ')'.
    st.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits for `pid`'s record of `op` and checks that one was decided `effect` by `rule`;
/// returns the process's records.
pub fn wait_decided(agent: &Agent, pid: u32, op: &str, effect: &str, rule: &str) -> Vec<Value> {
    let recs = agent.wait_records(pid, WAIT, |r| !decision_of(r, op).is_empty());
    let d = decision_of(&recs, op);
    assert!(
        d.iter().any(|d| d["effect"] == effect && d["rule"] == rule),
        "{op} decided {effect} by {rule}: {d:?}"
    );
    recs
}

/// `program` run in the cgroup at `cgroup` (a shell joins it, then execs the program; the caller
/// adds the arguments).
pub fn in_cgroup(cgroup: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
            cgroup.display()
        ))
        .arg(program);
    c
}
