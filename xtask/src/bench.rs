//! `cargo xtask bench <what>`: side-by-side measurements on this (shared, noisy) machine.
//! Every ratio compares runs made alternately in one invocation, and reports medians.

use crate::{cargo, root, run, setup};
use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bench(what: &str, scale: f64) -> Result<()> {
    match what {
        // The capture benchmark covers OpenSSL clients (boto3, raw TLS writes) and Go.
        "capture" => {
            capture(scale)?;
            crate::bench_go::run(scale)
        }
        "go" => crate::bench_go::run(scale),
        "enforce" => crate::bench_enforce::run(scale),
        "soak" => crate::bench_soak::run(scale),
        "classify" => classify(),
        "store" => {
            let events = ((1_000_000.0 * scale) as u64).max(1000).to_string();
            run(cargo().args([
                "run",
                "--release",
                "-p",
                "hoop-store",
                "--example",
                "bench_store",
                "--",
                "--events",
                &events,
            ]))
        }
        "all" => {
            capture(scale)?;
            bench("classify", scale)?;
            bench("store", scale)
        }
        other => {
            bail!("unknown benchmark {other:?}: capture, go, enforce, soak, classify, store, all")
        }
    }
}

/// The classifier's criterion benchmark. The bench prints the median per request and the
/// pass/fail line against the 2 µs target; this adds criterion's figure for the whole mix.
fn classify() -> Result<()> {
    run(cargo().args(["bench", "-p", "hoop-aws", "--bench", "classify"]))?;
    let dir = crate::target_dir().join("criterion/classify/recorded_sdk_mix/new");
    let read = |f: &str| -> Result<Value> {
        let p = dir.join(f);
        let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    let mix_ns = read("estimates.json")?["median"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| anyhow!("no median in criterion's estimates.json"))?;
    let n = read("benchmark.json")?["throughput"]["Elements"]
        .as_u64()
        .filter(|&n| n > 0)
        .ok_or_else(|| anyhow!("no element count in criterion's benchmark.json"))?;
    println!(
        "classify: criterion median {:.1} us per pass over the {n}-request mix = {:.0} ns per request on average",
        mix_ns / 1000.0,
        mix_ns / n as f64
    );
    Ok(())
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The client runs on CPU 0 and the emulator on CPU 1 (when there are two): left to the
/// scheduler, their placement alone moved a boto3 call rate by ±25% between runs here.
const CLIENT_CPU: usize = 0;
const EMULATOR_CPU: usize = 1;

/// `program` pinned to `cpu` with taskset when the machine has more than one CPU.
pub(crate) fn pinned(cpu: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let taskset = Path::new("/usr/bin/taskset");
    if cpus > cpu && cpus > 1 && taskset.exists() {
        let mut c = Command::new(taskset);
        c.arg("-a").arg("-c").arg(cpu.to_string()).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Busy time of the whole host so far, in clock ticks (user, nice, system, irq, softirq,
/// steal): the CPU a workload costs, whichever process or kernel path spends it.
pub(crate) fn host_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum()
}

/// utime + stime of a process, in clock ticks (0 once it is gone).
pub(crate) fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum()
}

/// Environment of an SDK client talking to the emulator on `port` with the test
/// certificate and a benchmark key (no shared config, credentials file or metadata service).
pub(crate) fn client_env(port: u16, cert: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("HOOP_ENDPOINT", format!("https://127.0.0.1:{port}")),
        ("AWS_CA_BUNDLE", cert.display().to_string()),
        ("AWS_ACCESS_KEY_ID", "AKIAHOOPBENCH0000001".to_string()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "benchsecretbenchsecretbenchsecret0000000".to_string(),
        ),
        ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_CONFIG_FILE", "/dev/null".to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]
}

/// One timed boto3 run: calls per second and host CPU milliseconds per call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rate {
    pub rate: f64,
    pub cpu_ms: f64,
}

/// Runs `tests/bench/boto3_rate.py CALLS` pinned to the client CPU.
pub(crate) fn boto3_rate(calls: u64, env: &[(&str, String)]) -> Result<Rate> {
    let script = root().join("tests/bench/boto3_rate.py");
    let mut cmd = pinned(CLIENT_CPU, root().join(".venv/bin/python"));
    cmd.arg(&script)
        .arg(calls.to_string())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t0 = host_busy_ticks();
    let out = cmd.output().context("run boto3_rate.py")?;
    let ticks = host_busy_ticks().saturating_sub(t0);
    if !out.status.success() {
        bail!("boto3_rate.py failed");
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let hz = 100.0; // USER_HZ on Linux
    Ok(Rate {
        rate: v["rate"]
            .as_f64()
            .ok_or_else(|| anyhow!("no rate in {v}"))?,
        cpu_ms: ticks as f64 / hz * 1000.0 / calls as f64,
    })
}

/// Paired rounds of a baseline and a variant: medians and the median per-round ratio.
pub(crate) fn print_paired(base_name: &str, var_name: &str, base: &[Rate], var: &[Rate]) {
    let mut ratios: Vec<f64> = base.iter().zip(var).map(|(a, b)| b.rate / a.rate).collect();
    let med =
        |f: &dyn Fn(&Rate) -> f64, v: &[Rate]| median(&mut v.iter().map(f).collect::<Vec<_>>());
    let (ra, rb) = (med(&|r| r.rate, base), med(&|r| r.rate, var));
    let (ca, cb) = (med(&|r| r.cpu_ms, base), med(&|r| r.cpu_ms, var));
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(0.0, f64::max);
    let mr = median(&mut ratios);
    println!("median {base_name:<24}: {ra:.1} calls/s, {ca:.2} ms host CPU per call");
    println!("median {var_name:<24}: {rb:.1} calls/s, {cb:.2} ms host CPU per call");
    println!(
        "median per-round ratio        : {mr:.3}  (overhead {:.1}%; rounds ranged {lo:.3} to {hi:.3})",
        (1.0 - mr) * 100.0
    );
    println!(
        "host CPU per call             : {:+.1}% ({:+.3} ms)",
        (cb / ca - 1.0) * 100.0,
        cb - ca
    );
}

pub(crate) struct Killer(pub(crate) Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn make_cert(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null()))?;
    Ok((cert, key))
}

/// moto under gunicorn with TLS and keep-alive; `h2` also offers HTTP/2.
pub(crate) fn start_emulator(cert: &Path, key: &Path, port: u16, h2: bool) -> Result<Killer> {
    let mut cmd = pinned(EMULATOR_CPU, root().join(".venv/bin/gunicorn"));
    cmd.current_dir(root().join("tests/clients"))
        .args([
            "-k",
            "gthread",
            "--threads",
            "4",
            "-w",
            "1",
            "--keep-alive",
            "60",
        ])
        .arg("--certfile")
        .arg(cert)
        .arg("--keyfile")
        .arg(key);
    if h2 {
        cmd.args(["--http-protocols", "h2,h1"]);
    }
    let child = cmd
        .args(["-b", &format!("127.0.0.1:{port}"), "moto_app:app"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start gunicorn (cargo xtask setup)")?;
    let k = Killer(child);
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("emulator did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(k)
}

/// `$HOOP_AGENT_BIN`, else the release agent, built.
pub(crate) fn agent_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HOOP_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    run(cargo().args(["build", "--release", "-p", "hoop-agent"]))?;
    Ok(crate::target_dir().join("release/hoop-agent"))
}

/// A hoop agent run by a benchmark: started with `args`, waited for until ready, stopped
/// with SIGTERM (it flushes what it holds) when dropped or by `stop`.
pub(crate) struct BenchAgent {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl BenchAgent {
    pub(crate) fn start<S: AsRef<std::ffi::OsStr>>(bin: &Path, args: &[S]) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start hoop-agent")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let a = BenchAgent { child, lines: rx };
        a.wait_for(&["hoop-agent ready"], Duration::from_secs(60))?;
        Ok(a)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next log line containing every one of `needles`; error lines are echoed.
    pub(crate) fn wait_for(&self, needles: &[&str], timeout: Duration) -> Result<String> {
        let end = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(l) if needles.iter().all(|n| l.contains(n)) => return Ok(l),
                Ok(l) if l.contains("\"ERROR\"") => eprintln!("agent: {l}"),
                Ok(_) => {}
                Err(_) => bail!("agent did not log {needles:?}"),
            }
        }
    }

    fn terminate(&self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc_kill(self.child.id() as i32, 15) };
    }

    /// SIGTERM, then the fields of the `capture summary` line.
    pub(crate) fn stop(mut self) -> Result<Value> {
        self.terminate();
        let line = self.wait_for(&["capture summary"], Duration::from_secs(30))?;
        let _ = self.child.wait();
        let v: Value = serde_json::from_str(&line)?;
        Ok(v["fields"].clone())
    }
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.terminate();
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// The release agent writing records to `output`.
fn capture_agent(output: &Path) -> Result<BenchAgent> {
    let bin = crate::target_dir().join("release/hoop-agent");
    let args = ["--log-format", "json", "run", "--no-stdout", "--output"];
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.push(output.as_os_str());
    BenchAgent::start(&bin, &all)
}

fn python_json(args: &[&str], env: &[(&str, String)]) -> Result<Value> {
    let mut cmd = Command::new(root().join(".venv/bin/python"));
    cmd.args(args).stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{args:?} failed");
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Agent overhead on a boto3 workload, and loss at 10,000 TLS writes per second.
fn capture(scale: f64) -> Result<()> {
    setup::setup()?;
    run(cargo().args(["build", "--release", "-p", "hoop-agent"]))?;
    let tmp = std::env::temp_dir().join(format!("hoop-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let (cert, key) = make_cert(&tmp)?;
    let port = free_port()?;
    let _emu = start_emulator(&cert, &key, port, false)?;
    let env = client_env(port, &cert);
    let calls = ((400.0 * scale) as u64).max(20);
    let rounds = ((10.0 * scale).round() as usize).clamp(4, 20);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let output = tmp.join("calls.jsonl");
    let mut recorded = 0u64;
    let mut lost = 0u64;
    let mut agent_ticks = 0u64;
    // Warm-up run (imports, emulator caches), not counted.
    boto3_rate(20, &env)?;
    for round in 0..rounds {
        // Alternate which configuration goes first, so drift does not favour one.
        let (mut a, mut b) = (None, None);
        for agent_on in [round % 2 == 1, round % 2 == 0] {
            if !agent_on {
                a = Some(boto3_rate(calls, &env)?);
                continue;
            }
            let _ = std::fs::remove_file(&output);
            let agent = capture_agent(&output)?;
            let t0 = process_ticks(agent.pid());
            b = Some(boto3_rate(calls, &env)?);
            agent_ticks += process_ticks(agent.pid()).saturating_sub(t0);
            let summary = agent.stop()?;
            lost += summary["lost_records"].as_u64().unwrap_or(0);
            recorded += std::fs::read_to_string(&output)
                .map(|t| t.lines().count() as u64)
                .unwrap_or(0);
        }
        let (a, b) = (a.context("baseline run")?, b.context("agent run")?);
        eprintln!(
            "round {round}: {:.1} calls/s without agent, {:.1} with ({:.3})",
            a.rate,
            b.rate,
            b.rate / a.rate
        );
        without.push(a);
        with.push(b);
    }
    println!(
        "\n== capture: boto3 sequential calls (STS + DynamoDB, keep-alive TLS), {calls} calls x {rounds} rounds, alternating; client pinned to CPU 0, emulator to CPU 1"
    );
    print_paired("without agent", "with agent", &without, &with);
    let agent_ms = agent_ticks as f64 * 10.0 / (calls * rounds as u64) as f64;
    println!(
        "agent process CPU per call    : {agent_ms:.3} ms ({:.1}% of the host CPU a call costs without it; includes its start-up transients)",
        agent_ms / median(&mut without.iter().map(|r| r.cpu_ms).collect::<Vec<_>>()) * 100.0
    );
    println!(
        "records written               : {recorded} (expected >= {})",
        rounds as u64 * (calls + 2)
    );
    println!("lost records                  : {lost}");

    // 10,000 TLS writes per second (plus the sink's reads) for a few seconds.
    let tls = root()
        .join("tests/bench/tls_writes.py")
        .display()
        .to_string();
    let seconds = format!("{}", (5.0 * scale).max(1.0));
    let paced = || {
        python_json(
            &[
                &tls,
                &cert.display().to_string(),
                &key.display().to_string(),
                "10000",
                &seconds,
            ],
            &[],
        )
    };
    let base = paced()?;
    let agent = capture_agent(&tmp.join("tls.jsonl"))?;
    let r = paced()?;
    let summary = agent.stop()?;
    println!(
        "\n== capture: paced TLS writes (200 B each) at 10,000/s for {seconds} s, client and sink in one process"
    );
    println!(
        "achieved rate without agent : {:.0} writes/s",
        base["rate"].as_f64().unwrap_or(0.0)
    );
    println!(
        "achieved rate with agent    : {:.0} writes/s",
        r["rate"].as_f64().unwrap_or(0.0)
    );
    println!(
        "TLS calls made              : {} writes + {} reads",
        r["writes"], r["reads"]
    );
    println!("records received by agent   : {}", summary["records"]);
    println!("lost records (kernel count) : {}", summary["lost_records"]);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
