//! Go client overhead: the AWS SDK for Go v2 (built from `tests/go/sdkv2` against the
//! Debian-packaged SDK) calling STS GetCallerIdentity sequentially for a fixed time, over
//! HTTP/2 and over HTTP/1.1, without and with the agent, alternating rounds; medians and ratio.
//!
//! The agent binary is `$HOOP_AGENT_BIN` when set, else `target/release/hoop-agent` (built).

use crate::bench::{
    BenchAgent, Killer, agent_bin, client_env, free_port, make_cert, median, start_emulator,
};
use crate::{root, run as sh};
use anyhow::{Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn build_client(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("sdkv2");
    sh(Command::new("go")
        .current_dir(root().join("tests/go/sdkv2"))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .arg("build")
        .arg("-o")
        .arg(&out)
        .arg("."))?;
    Ok(out)
}

/// The agent, running until dropped (SIGTERM: it flushes what it holds); `attached` waits
/// until it probes a client.
struct Agent(BenchAgent);

impl Agent {
    fn start(bin: &Path, output: &Path) -> Result<Self> {
        let args: [&std::ffi::OsStr; 6] = [
            "--log-format".as_ref(),
            "json".as_ref(),
            "run".as_ref(),
            "--no-stdout".as_ref(),
            "--output".as_ref(),
            output.as_os_str(),
        ];
        Ok(Agent(BenchAgent::start(bin, &args)?))
    }

    fn attached(&self, client: &Path) -> Result<()> {
        let _warm = Killer(
            Command::new(client)
                .args(["wait", "30"])
                .stdout(Stdio::null())
                .spawn()?,
        );
        self.0.wait_for(
            &["TLS library attached", &client.display().to_string()],
            Duration::from_secs(60),
        )?;
        Ok(())
    }
}

/// (calls per second, calls made, client pid)
fn rate(client: &Path, env: &[(&str, String)], seconds: f64) -> Result<(f64, u64, u64)> {
    let mut cmd = Command::new(client);
    cmd.args(["bench", &seconds.to_string()])
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{} bench failed: {}", client.display(), out.status);
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let errors = v["errors"].as_u64().unwrap_or(0);
    if errors > 0 {
        eprintln!("  ({errors} failed calls in this run)");
    }
    let calls = v["calls"].as_u64().unwrap_or(0);
    Ok((
        calls as f64 / seconds,
        calls,
        v["pid"].as_u64().unwrap_or(0),
    ))
}

pub fn run(scale: f64) -> Result<()> {
    let agent = agent_bin()?;
    let tmp = std::env::temp_dir().join(format!("hoop-bench-go-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let client = build_client(&tmp)?;
    let (cert, key) = make_cert(&tmp)?;
    let seconds = (3.0 * scale).max(0.5);
    let rounds = 5;
    for (h2, label) in [(true, "HTTP/2"), (false, "HTTP/1.1")] {
        let port = free_port()?;
        let _emu = start_emulator(&cert, &key, port, h2)?;
        let mut env = client_env(port, &cert);
        env.push(("HOOP_CA", cert.display().to_string()));
        rate(&client, &env, 0.5)?; // warm-up, not counted
        let (mut without, mut with) = (Vec::new(), Vec::new());
        let mut recorded = 0usize;
        let mut made = 0u64;
        for round in 0..rounds {
            let (a, _, _) = rate(&client, &env, seconds)?;
            let output = tmp.join(format!("calls-{round}.jsonl"));
            let ag = Agent::start(&agent, &output)?;
            ag.attached(&client)?;
            let (b, n, pid) = rate(&client, &env, seconds)?;
            made += n;
            // The probes see the whole host: count this client's records only.
            let mine = format!("\"pid\":{pid},");
            std::thread::sleep(Duration::from_millis(1500));
            drop(ag);
            recorded += std::fs::read_to_string(&output)
                .map(|t| {
                    t.lines()
                        .filter(|l| l.contains(&mine) && l.contains("GetCallerIdentity"))
                        .count()
                })
                .unwrap_or(0);
            eprintln!("go {label} round {round}: {a:.1} calls/s without agent, {b:.1} with");
            without.push(a);
            with.push(b);
        }
        let (ma, mb) = (median(&mut without), median(&mut with));
        println!(
            "\n== capture: Go (AWS SDK for Go v2, crypto/tls) sequential STS calls over {label}, {seconds} s x {rounds} rounds"
        );
        println!("median without agent : {ma:.1} calls/s");
        println!("median with agent    : {mb:.1} calls/s");
        println!(
            "ratio (with/without) : {:.3}  (overhead {:.1}%)",
            mb / ma,
            (1.0 - mb / ma) * 100.0
        );
        println!("records written      : {recorded} of {made} calls made with the agent");
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
