//! End-to-end: Go programs built here with Debian's Go toolchain and the Debian-packaged AWS
//! SDKs for Go (v1 and v2), probed through `crypto/tls` (no OpenSSL), over HTTP/1.1 and HTTP/2
//! against the emulator; stripped builds (Go symbol table only); many goroutines; and curl
//! negotiating HTTP/2 through OpenSSL.
//!
//! A Go executable is attached when the agent first sees a process run it. Each test first runs
//! the binary in a `wait` mode and waits for the agent to log the attachment, so the measured
//! run is covered from its first call (see docs/http2.md for the exec race).

use hoop_e2e::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

static BUILT: Mutex<Option<HashMap<(String, bool), PathBuf>>> = Mutex::new(None);

/// Builds `tests/go/<name>` offline against the Debian-packaged SDKs (cached per test run).
fn go_bin(name: &str, stripped: bool) -> anyhow::Result<PathBuf> {
    let mut built = BUILT.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let map = built.get_or_insert_with(HashMap::new);
    if let Some(p) = map.get(&(name.to_string(), stripped)) {
        return Ok(p.clone());
    }
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(if stripped {
        format!("{name}-stripped")
    } else {
        name.to_string()
    });
    let mut cmd = Command::new("go");
    cmd.current_dir(repo_root().join("tests/go").join(name))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .arg("build")
        .arg("-o")
        .arg(&out);
    if stripped {
        cmd.arg("-ldflags=-s -w");
    }
    cmd.arg(".");
    let o = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("run go build (cargo xtask setup installs golang-go): {e}"))?;
    anyhow::ensure!(
        o.status.success(),
        "go build {name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    map.insert((name.to_string(), stripped), out.clone());
    Ok(out)
}

/// Runs `bin wait` until the agent has attached its probes to `bin`.
fn attach(agent: &Agent, bin: &Path) -> anyhow::Result<()> {
    let _warm = Guard(
        Command::new(bin)
            .args(["wait", "20"])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let path = bin.display().to_string();
    let start = Instant::now();
    loop {
        let done = agent.stderr.lock().is_ok_and(|l| {
            l.iter()
                .any(|l| l.contains("TLS library attached") && l.contains(&path))
        });
        if done {
            return Ok(());
        }
        anyhow::ensure!(start.elapsed() < WAIT, "agent did not attach to {path}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn go_client(bin: &Path, emu: &Emulator, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.args(args);
    emu.client_env(&mut c);
    c.env("HOOP_CA", &emu.cert);
    c
}

/// Exactly one record of `operation`, captured from Go's TLS over `http`.
fn one<'a>(recs: &'a [Value], what: &str, operation: &str, http: &str) -> &'a Value {
    let m = matching(recs, |r| r["aws"]["operation"] == operation);
    assert_eq!(
        m.len(),
        1,
        "{what}: expected exactly one {operation} record, got {}:\n{}",
        m.len(),
        serde_json::to_string_pretty(&recs).unwrap_or_default()
    );
    let r = m[0];
    assert_eq!(r["connection"]["tls"], "go", "{what}: {r}");
    assert_eq!(r["connection"]["http"], http, "{what}: {r}");
    assert_eq!(r["response"]["status"], 200, "{what}: {r}");
    assert_eq!(r["identity"]["access_key_id"], ACCESS_KEY_ID, "{what}");
    assert_eq!(r["aws"]["region"], REGION, "{what}");
    r
}

fn check_calls(agent: &Agent, pid: u32, info: &Value, ops: &[&str], http: &str, what: &str) {
    let recs = agent.wait_records(pid, WAIT, |r| r.len() >= ops.len());
    // Let stragglers (duplicates) arrive before counting.
    std::thread::sleep(Duration::from_millis(500));
    let recs = {
        let again = agent.records_of(pid);
        if again.len() > recs.len() {
            again
        } else {
            recs
        }
    };
    for op in ops {
        one(&recs, what, op, http);
    }
    assert_eq!(recs.len(), ops.len(), "{what}: extra records");
    let bucket = info["bucket"].as_str().unwrap_or_default();
    let r = one(&recs, what, "CreateBucket", http);
    assert!(is_call(r, "PUT", &format!("/{bucket}")), "{what}: {r}");
    assert_eq!(r["aws"]["service"], "s3");
    assert_eq!(r["process"]["pid"], pid);
    let p = one(&recs, what, "PutItem", http);
    assert_eq!(p["aws"]["service"], "dynamodb");
    assert!(target_is(p, "DynamoDB_20120810.PutItem"));
    let s = one(&recs, what, "GetCallerIdentity", http);
    assert_eq!(s["aws"]["iam_action"], "sts:GetCallerIdentity");
}

const V2_OPS: [&str; 7] = [
    "GetCallerIdentity",
    "CreateBucket",
    "PutObject",
    "GetObject",
    "ListObjectsV2",
    "CreateTable",
    "PutItem",
];
const V1_OPS: [&str; 6] = [
    "GetCallerIdentity",
    "CreateBucket",
    "PutObject",
    "ListObjectsV2",
    "CreateTable",
    "PutItem",
];

/// Successful calls of `operation` a Go client made over `http` (`HTTP/1.1` or `HTTP/2`).
fn go_calls(recs: &[Value], operation: &str, http: &str) -> usize {
    recs.iter()
        .filter(|r| {
            r["aws"]["operation"] == operation
                && r["connection"]["http"] == http
                && r["connection"]["tls"] == "go"
                && r["response"]["status"] == 200
        })
        .count()
}
#[test]
fn go_sdk_v2_over_http1_is_captured_once_each() -> anyhow::Result<()> {
    let bin = go_bin("sdkv2", false)?;
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    attach(&agent, &bin)?;
    let (pid, out) = run_client(go_client(&bin, &emu, &["calls"]))?;
    let info: Value = serde_json::from_str(out.trim())?;
    assert_eq!(info["pid"], pid);
    check_calls(&agent, pid, &info, &V2_OPS, "HTTP/1.1", "go v2 h1");
    agent.stop()
}

#[test]
fn go_sdk_v2_stripped_over_http2_is_captured_once_each() -> anyhow::Result<()> {
    let bin = go_bin("sdkv2", true)?;
    let emu = Emulator::start_h2()?;
    let mut agent = Agent::start(&[])?;
    attach(&agent, &bin)?;
    let (pid, out) = run_client(go_client(&bin, &emu, &["calls"]))?;
    let info: Value = serde_json::from_str(out.trim())?;
    check_calls(&agent, pid, &info, &V2_OPS, "HTTP/2", "go v2 stripped h2");
    assert!(
        agent.log_contains("pclntab"),
        "stripped build resolved through the Go symbol table"
    );
    agent.stop()
}

#[test]
fn go_sdk_v1_over_http2_and_http1_is_captured_once_each() -> anyhow::Result<()> {
    let bin = go_bin("sdkv1", false)?;
    let emu2 = Emulator::start_h2()?;
    let emu1 = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    attach(&agent, &bin)?;
    for (emu, http) in [(&emu2, "HTTP/2"), (&emu1, "HTTP/1.1")] {
        let (pid, out) = run_client(go_client(&bin, emu, &["calls"]))?;
        let info: Value = serde_json::from_str(out.trim())?;
        check_calls(&agent, pid, &info, &V1_OPS, http, &format!("go v1 {http}"));
    }
    agent.stop()
}

/// 50 goroutines x 40 calls on one client (HTTP/2: multiplexed streams on one connection),
/// then 20 x 20 over HTTP/1.1 (a connection per goroutine): the program exits 0 and every
/// call is recorded once.
#[test]
fn go_many_goroutines_never_crash_and_every_call_is_recorded() -> anyhow::Result<()> {
    let bin = go_bin("sdkv2", true)?;
    let emu2 = Emulator::start_h2()?;
    let emu1 = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    attach(&agent, &bin)?;
    for (emu, g, n, http) in [(&emu2, 50, 40, "HTTP/2"), (&emu1, 20, 20, "HTTP/1.1")] {
        let (pid, out) = run_client(go_client(
            &bin,
            emu,
            &["stress", &g.to_string(), &n.to_string()],
        ))?;
        let info: Value = serde_json::from_str(out.trim())?;
        assert_eq!(info["errors"], 0);
        let want = g * n;
        agent.wait_records(pid, Duration::from_secs(60), |r| r.len() >= want);
        std::thread::sleep(Duration::from_millis(500));
        let recs = agent.records_of(pid);
        let ok = go_calls(&recs, "GetCallerIdentity", http);
        assert_eq!(
            (ok, recs.len()),
            (want, want),
            "{http}: {g} goroutines x {n} calls"
        );
    }
    agent.stop()
}

#[test]
fn curl_http2_is_parsed_as_http2() -> anyhow::Result<()> {
    let emu = Emulator::start_h2()?;
    let mut agent = Agent::start(&[])?;
    // The credentials go through a curl config file, not the command line the agent records.
    let cfg = emu.dir.path().join("curl.cfg");
    std::fs::write(
        &cfg,
        format!("user = \"{ACCESS_KEY_ID}:{SECRET_ACCESS_KEY}\"\n"),
    )?;
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--http2", "-K"])
        .arg(&cfg)
        .arg("--cacert")
        .arg(&emu.cert)
        .args([
            "--aws-sigv4",
            &format!("aws:amz:{REGION}:sts"),
            "--data",
            "Action=GetCallerIdentity&Version=2011-06-15",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
        ])
        .arg(format!("{}/", emu.endpoint()));
    let (pid, out) = run_client(cmd)?;
    assert_eq!(out.trim(), "2", "curl negotiated HTTP/2");
    let recs = agent.wait_records(pid, WAIT, |r| !r.is_empty());
    assert_eq!(recs.len(), 1, "{recs:?}");
    let r = &recs[0];
    assert_eq!(r["connection"]["http"], "HTTP/2");
    assert_eq!(r["connection"]["tls"], "openssl");
    assert_eq!(r["aws"]["operation"], "GetCallerIdentity");
    assert_eq!(r["aws"]["service"], "sts");
    assert_eq!(r["request"]["method"], "POST");
    assert_eq!(r["response"]["status"], 200);
    assert!(r["response"]["request_id"].is_string(), "{r}");
    assert!(r["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{r}");
    let raw = std::fs::read_to_string(&agent.output).unwrap_or_default();
    assert!(!raw.contains(SECRET_ACCESS_KEY));
    agent.stop()
}

/// Every TLS write of these calls starts on a fresh goroutine at a different stack depth, so
/// some of them grow the goroutine's stack in `crypto/tls.(*Conn).Write`'s own prologue; the
/// runtime then restarts Write from its first instruction. A probe placed before the stack
/// check would see those writes twice (a duplicated HTTP/1.1 request, a desynchronised HPACK
/// table on HTTP/2). Each call must be recorded exactly once, over both protocols.
#[test]
fn go_write_restarted_by_stack_growth_is_captured_once() -> anyhow::Result<()> {
    let bin = go_bin("sdkv2", false)?;
    let emu = Emulator::start_h2()?;
    let mut agent = Agent::start(&[])?;
    attach(&agent, &bin)?;
    const CALLS: usize = 600;
    for (proto, http) in [("h1", "HTTP/1.1"), ("h2", "HTTP/2")] {
        let (pid, out) = run_client(go_client(&bin, &emu, &["grow", proto, &CALLS.to_string()]))?;
        let info: Value = serde_json::from_str(out.trim())?;
        assert_eq!(info["calls"], CALLS, "{out}");
        agent.wait_records(pid, Duration::from_secs(60), |r| r.len() >= CALLS);
        std::thread::sleep(Duration::from_millis(500));
        let recs = agent.records_of(pid);
        let ok = go_calls(&recs, "ListBuckets", http);
        assert_eq!(
            (ok, recs.len()),
            (CALLS, CALLS),
            "{http}: {CALLS} calls whose writes grow the stack ({} writes); first record: {}",
            info["writes"],
            recs.first().cloned().unwrap_or_default()
        );
    }
    agent.stop()
}

/// A minute of connection churn: 16 goroutines, every call on a new client and so a new TLS
/// connection (the runtime frees `*tls.Conn`s and reuses their addresses), HTTP/2 and HTTP/1.1
/// alternating, every tenth call after a deep recursion (stacks grow, and shrink at GC). The
/// program exits 0 and every call is recorded exactly once, over the protocol it used.
#[test]
fn go_connection_churn_for_a_minute_is_recorded_exactly() -> anyhow::Result<()> {
    let bin = go_bin("sdkv2", true)?;
    let emu = Emulator::start_h2()?;
    let mut agent = Agent::start(&[])?;
    attach(&agent, &bin)?;
    let (pid, out) = run_client(go_client(&bin, &emu, &["churn", "60", "16"]))?;
    let info: Value = serde_json::from_str(out.trim())?;
    assert_eq!(info["errors"], 0, "{out}");
    let calls = info["calls"].as_u64().unwrap_or(0) as usize;
    assert!(calls > 500, "{out}");
    agent.wait_records(pid, Duration::from_secs(60), |r| r.len() >= calls);
    std::thread::sleep(Duration::from_millis(500));
    let recs = agent.records_of(pid);
    let ok = |http: &str| go_calls(&recs, "GetCallerIdentity", http);
    let (h2, h1) = (ok("HTTP/2"), ok("HTTP/1.1"));
    // One connection per call, keyed by its *tls.Conn address: fewer addresses than calls
    // means new connections did land on freed ones.
    let addresses: std::collections::HashSet<String> = recs
        .iter()
        .map(|r| r["connection"]["id"].to_string())
        .collect();
    eprintln!(
        "{calls} calls: {h2} over HTTP/2, {h1} over HTTP/1.1, on {} *tls.Conn addresses",
        addresses.len()
    );
    assert!(addresses.len() < calls, "no address was reused");
    assert!(h2 > 0 && h1 > 0, "both protocols: {h2} h2, {h1} h1");
    assert_eq!((h2 + h1, recs.len()), (calls, calls), "{calls} calls");
    agent.stop()
}

/// A cgroup of this test only (removed on drop).
struct Cgroup(PathBuf, String);

impl Cgroup {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let root = cgroup2_mount().ok_or_else(|| anyhow::anyhow!("no cgroup2 mount"))?;
        let name = format!("hoop-e2e-{tag}-{}", std::process::id());
        let p = root.join(&name);
        std::fs::create_dir_all(&p)?;
        Ok(Cgroup(p, format!("/{name}")))
    }

    /// `cmd` run as the first process of this cgroup.
    fn wrap(&self, cmd: &Command) -> Command {
        let mut c = hoop_e2e::enforce::in_cgroup(&self.0, cmd.get_program());
        c.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// What policy does hold for Go and HTTP/2 clients: an endpoint rule (cgroup connect4/6)
/// refuses the TCP connection itself, whatever the TLS library or protocol. Scoped to this
/// test's cgroup and the emulator's port: the Go client inside the cgroup fails with EPERM
/// before a byte is sent and the agent reports the endpoint decision; the same client outside
/// the cgroup is unaffected and recorded as usual.
#[test]
fn endpoint_rule_denies_a_go_http2_client() -> anyhow::Result<()> {
    let bin = go_bin("sdkv2", false)?;
    let emu = Emulator::start_h2()?;
    let cg = Cgroup::new("go-endpoint")?;
    let dir = TempDir::new("go-policy")?;
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            r#"
mode: enforce
rules:
  - name: no-emulator-from-go
    effect: deny
    match:
      cgroup: "{}"
      endpoints: ["127.0.0.1/32", "::1/128"]
      ports: [{}]
"#,
            cg.1, emu.port
        ),
    )?;
    let _turn = hoop_e2e::enforce::take_turn()?;
    let mut agent = Agent::start(&["--policy", policy.to_str().unwrap_or_default()])?;
    attach(&agent, &bin)?;

    let child = cg
        .wrap(&go_client(&bin, &emu, &["calls"]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let denied_pid = child.id();
    let denied = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(!denied.status.success(), "denied client succeeded: {err}");
    assert!(err.contains("operation not permitted"), "{err}");

    let (pid, out) = run_client(go_client(&bin, &emu, &["calls"]))?;
    let info: Value = serde_json::from_str(out.trim())?;
    check_calls(
        &agent,
        pid,
        &info,
        &V2_OPS,
        "HTTP/2",
        "go v2 outside the cgroup",
    );

    let start = Instant::now();
    let decisions = loop {
        let d: Vec<Value> = agent
            .records()
            .into_iter()
            .filter(|r| r["type"] == "endpoint-decision")
            .collect();
        if !d.is_empty() || start.elapsed() > WAIT {
            break d;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        decisions.iter().any(|d| d["rule"] == "no-emulator-from-go"
            && d["destination"] == "127.0.0.1"
            && d["port"] == emu.port
            && d["pid"] == denied_pid),
        "{decisions:?}"
    );
    // Not a byte of the denied client reached TLS, so nothing of it was recorded.
    assert!(agent.records_of(denied_pid).is_empty());
    agent.stop()
}
