//! `cargo xtask bench soak`: the release agent under steady boto3 load for 18 min x scale
//! (the agent warms up for several minutes before its memory levels off, so the second half
//! of a shorter run still reads as growth), its resident memory sampled from
//! /proc/PID/status. Prints the series, the maximum and the slope (least squares, whole run
//! and second half, in MiB per minute).
//! Target: flat, under 128 MiB. Exits non-zero when the maximum reaches 128 MiB or the
//! second-half slope exceeds [`MAX_SLOPE_MIB_PER_MIN`].

use crate::bench::{free_port, make_cert, start_emulator};
use crate::{cargo, root, setup};
use anyhow::{Context, Result, anyhow, bail};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TARGET_MIB: f64 = 128.0;
/// Largest second-half RSS growth accepted as flat. At 1 MiB/min the agent would take two
/// hours to grow by the 128 MiB budget; a leak per call or per process grows far faster at this
/// load (about 100 calls/s and a new process every few seconds).
const MAX_SLOPE_MIB_PER_MIN: f64 = 1.0;
/// Concurrent boto3 processes; each makes CALLS_PER_CLIENT calls, then a new one starts (new
/// processes keep the process cache, exec events and probe discovery busy too).
const WORKERS: usize = 3;
const CALLS_PER_CLIENT: u32 = 300;

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Least-squares slope of (x, y).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

pub fn run(scale: f64) -> Result<()> {
    setup::setup()?;
    crate::run(cargo().args(["build", "--release", "-p", "hoop-agent"]))?;
    let duration = Duration::from_secs_f64((1080.0 * scale).max(30.0));
    let every = Duration::from_secs(5);
    let tmp = std::env::temp_dir().join(format!("hoop-soak-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let (cert, key) = make_cert(&tmp)?;
    let port = free_port()?;
    let _emu = start_emulator(&cert, &key, port, false)?;

    let metrics_port = free_port()?;
    let output = tmp.join("calls.jsonl");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let mut child = Command::new(target.join("release/hoop-agent"))
        .arg("--log-format")
        .arg("json")
        .arg("--data-dir")
        .arg(tmp.join("data"))
        .arg("--api-socket")
        .arg(tmp.join("api.sock"))
        .args(["run", "--no-stdout", "--output"])
        .arg(&output)
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start hoop-agent")?;
    let agent_pid = child.id();
    let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let _agent = crate::bench::Killer(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let wait_for = |needle: &str, timeout: Duration| -> Result<String> {
        let end = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(l) if l.contains(needle) => return Ok(l),
                Ok(_) => {}
                Err(_) => bail!("agent did not log {needle:?}"),
            }
        }
    };
    wait_for("hoop-agent ready", Duration::from_secs(60))?;

    // Steady load until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let script = root().join("tests/bench/boto3_rate.py");
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (stop, calls, failures) = (stop.clone(), calls.clone(), failures.clone());
        let (script, cert) = (script.clone(), cert.clone());
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = Command::new(root().join(".venv/bin/python"))
                    .arg(&script)
                    .arg(CALLS_PER_CLIENT.to_string())
                    .env("HOOP_ENDPOINT", format!("https://127.0.0.1:{port}"))
                    .env("AWS_CA_BUNDLE", &cert)
                    .env("AWS_ACCESS_KEY_ID", "AKIAHOOPSOAK00000001")
                    .env(
                        "AWS_SECRET_ACCESS_KEY",
                        "soaksecretsoaksecretsoaksecret0000000000",
                    )
                    .env("AWS_DEFAULT_REGION", "us-east-1")
                    .env("AWS_CONFIG_FILE", "/dev/null")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    calls.fetch_add(CALLS_PER_CLIENT as u64 + 2, Ordering::Relaxed);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    println!(
        "\n== soak: release agent, {WORKERS} boto3 workers (new process every {CALLS_PER_CLIENT} calls), {:.0} s, RSS every {} s",
        duration.as_secs_f64(),
        every.as_secs()
    );
    println!(
        "{:>7}  {:>9}  {:>9}  {:>8}",
        "t (s)", "RSS (MiB)", "calls", "calls/s"
    );
    let start = Instant::now();
    let mut series: Vec<(f64, f64)> = Vec::new();
    let mut last_calls = 0u64;
    let mut last_t = 0.0;
    loop {
        let t = start.elapsed().as_secs_f64();
        let rss = rss_kib(agent_pid).ok_or_else(|| anyhow!("agent (pid {agent_pid}) is gone"))?
            as f64
            / 1024.0;
        let c = calls.load(Ordering::Relaxed);
        let rate = if t > last_t {
            (c - last_calls) as f64 / (t - last_t)
        } else {
            0.0
        };
        println!("{t:>7.0}  {rss:>9.1}  {c:>9}  {rate:>8.0}");
        series.push((t, rss));
        (last_calls, last_t) = (c, t);
        if start.elapsed() >= duration {
            break;
        }
        std::thread::sleep(
            every
                .min(duration.saturating_sub(start.elapsed()))
                .max(Duration::from_millis(100)),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let total_calls = calls.load(Ordering::Relaxed);
    // SAFETY: kill(2) on our own child.
    unsafe { libc_kill(agent_pid as i32, 15) };
    let summary = wait_for("capture summary", Duration::from_secs(60)).unwrap_or_default();
    let records = std::fs::read_to_string(&output)
        .map(|t| t.lines().count() as u64)
        .unwrap_or(0);

    let max = series.iter().map(|p| p.1).fold(0.0, f64::max);
    let per_min = |pts: &[(f64, f64)]| slope(pts) * 60.0;
    let half = &series[series.len() / 2..];
    let first = series.first().map(|p| p.1).unwrap_or(0.0);
    let last = series.last().map(|p| p.1).unwrap_or(0.0);
    println!(
        "\nRSS first / last / max : {first:.1} / {last:.1} / {max:.1} MiB (target < {TARGET_MIB} MiB)"
    );
    println!("slope, whole run       : {:+.3} MiB/min", per_min(&series));
    println!("slope, second half     : {:+.3} MiB/min", per_min(half));
    println!(
        "calls made             : {total_calls} ({:.0}/s), client failures {}",
        total_calls as f64 / duration.as_secs_f64(),
        failures.load(Ordering::Relaxed)
    );
    println!("records written        : {records}");
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&summary) {
        let f = &v["fields"];
        println!(
            "agent summary          : records {} lost {} bad {} gaps {}",
            f["records"], f["lost_records"], f["bad_records"], f["gaps"]
        );
    }
    let half_slope = per_min(half);
    // Only growth fails: memory given back (a negative slope) is fine.
    let flat = half_slope <= MAX_SLOPE_MIB_PER_MIN;
    let under = max < TARGET_MIB;
    println!(
        "verdict                : {} and {}",
        if under {
            "under 128 MiB"
        } else {
            "OVER 128 MiB"
        },
        if flat {
            format!("flat (second-half slope <= {MAX_SLOPE_MIB_PER_MIN} MiB/min)")
        } else {
            format!("GROWING (second-half slope > {MAX_SLOPE_MIB_PER_MIN} MiB/min)")
        }
    );
    let _ = std::fs::remove_dir_all(&tmp);
    if records == 0 || total_calls == 0 {
        bail!("soak: no load reached the agent ({total_calls} calls, {records} records)");
    }
    if !under {
        bail!("soak: agent RSS reached {max:.1} MiB (limit {TARGET_MIB} MiB)");
    }
    if !flat {
        bail!(
            "soak: agent RSS grows {half_slope:+.3} MiB/min in the second half (limit {MAX_SLOPE_MIB_PER_MIN} MiB/min)"
        );
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
