//! Harness for hoop's end-to-end tests: a real AWS emulator (moto under gunicorn) serving TLS
//! on loopback, the real agent loading real eBPF programs, and real SDK processes.
//!
//! Everything runs as root on the host. Probes see the whole host, so tests run one at a time
//! (`--test-threads=1`, set by `cargo xtask test`) and filter records by the pids they started.

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod enforce;

/// Dummy long-term credentials the clients sign with (the emulator accepts any).
pub const ACCESS_KEY_ID: &str = "AKIAHOOPTEST00000001";
pub const SECRET_ACCESS_KEY: &str = "hoopTestSecretKeyDoNotStore/0123456789abcd";
pub const REGION: &str = "eu-west-1";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!(
            "hoop-e2e-{tag}-{}-{}",
            std::process::id(),
            rand_u64()
        ));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    u64::from_le_bytes(b)
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn venv_bin(name: &str) -> PathBuf {
    repo_root().join(".venv/bin").join(name)
}

/// Kills a child process (and waits) on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A self-signed certificate for 127.0.0.1, localhost and S3's regional host names in
/// [`REGION`] (clients that address buckets as AWS hosts them map those names to 127.0.0.1).
pub fn make_cert(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=127.0.0.1"])
        .args([
            "-addext",
            &format!(
                "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost,DNS:s3.{REGION}.amazonaws.com,DNS:*.s3.{REGION}.amazonaws.com"
            ),
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("run openssl to make a test certificate")?;
    if !out.status.success() {
        bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((cert, key))
}

fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}")
}

/// moto's WSGI app under gunicorn with TLS and keep-alive.
pub struct Emulator {
    pub port: u16,
    pub cert: PathBuf,
    pub dir: TempDir,
    proc: Guard,
}

impl Emulator {
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// The same emulator offering HTTP/2 over ALPN (`h2`, then `http/1.1`).
    pub fn start_h2() -> Result<Self> {
        Self::start_with(&["--http-protocols", "h2,h1"])
    }

    /// [`Emulator::start`] with extra gunicorn arguments.
    pub fn start_with(extra: &[&str]) -> Result<Self> {
        let dir = TempDir::new("emu")?;
        let (cert, key) = make_cert(dir.path())?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("emulator.log"))?;
        let child = Command::new(venv_bin("gunicorn"))
            .current_dir(repo_root().join("tests/clients"))
            .args([
                "-k",
                "gthread",
                "--threads",
                "8",
                "-w",
                "1",
                "--keep-alive",
                "30",
            ])
            .arg("--certfile")
            .arg(&cert)
            .arg("--keyfile")
            .arg(&key)
            .args(extra)
            .args(["-b", &format!("127.0.0.1:{port}"), "moto_app:app"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start gunicorn (run `cargo xtask setup`)")?;
        let proc = Guard(child);
        wait_for_port(port, Duration::from_secs(30))?;
        Ok(Emulator {
            port,
            cert,
            dir,
            proc,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Environment for a client process: credentials, region, CA, endpoint.
    pub fn client_env(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
            .env_remove("AWS_SESSION_TOKEN")
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_REGION", REGION)
            .env("AWS_CA_BUNDLE", &self.cert)
            .env("NODE_EXTRA_CA_CERTS", &self.cert)
            .env("AWS_ENDPOINT_URL", self.endpoint())
            .env("HOOP_ENDPOINT", self.endpoint())
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }
}

/// `GET path` on a plain-HTTP endpoint (the agent's metrics and health server): status and body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: hoop\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// The real agent, started with `hoop-agent run`.
pub struct Agent {
    pub output: PathBuf,
    /// `--data-dir` (the audit store is in `store/`).
    pub data_dir: PathBuf,
    /// `--api-socket`.
    pub api_socket: PathBuf,
    /// `/metrics`, `/healthz`, `/readyz` of this agent.
    pub metrics_addr: String,
    pub dir: TempDir,
    pub stderr: Arc<Mutex<Vec<String>>>,
    proc: Option<Guard>,
}

pub fn agent_bin() -> PathBuf {
    std::env::var_os("HOOP_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/hoop-agent"))
}

impl Agent {
    pub fn start(extra: &[&str]) -> Result<Self> {
        let dir = TempDir::new("agent")?;
        let output = dir.path().join("calls.jsonl");
        let data_dir = dir.path().join("data");
        let api_socket = dir.path().join("api.sock");
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        // Each agent gets its own store, socket and metrics port, so agents of different
        // tests (or a production agent) never collide.
        let mut agent = Agent {
            output,
            data_dir,
            api_socket,
            metrics_addr,
            dir,
            stderr: Arc::new(Mutex::new(Vec::new())),
            proc: None,
        };
        agent.spawn(extra)?;
        Ok(agent)
    }

    /// Starts `hoop-agent run` with this agent's paths and waits until it is ready.
    fn spawn(&mut self, extra: &[&str]) -> Result<()> {
        let mut child = Command::new(agent_bin())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--api-socket")
            .arg(&self.api_socket)
            .arg("run")
            .arg("--no-stdout")
            .arg("--output")
            .arg(&self.output)
            .args(["--metrics-addr", &self.metrics_addr])
            .args(extra)
            .env("HOOP_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", agent_bin().display()))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        self.stderr = lines;
        self.proc = Some(Guard(child));
        self.wait_log("hoop-agent ready", Duration::from_secs(60))?;
        Ok(())
    }

    /// SIGKILL (no shutdown at all) and wait; the data directory and output file stay.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut g) = self.proc.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc_kill(g.0.id() as i32, 9) };
            g.0.wait()?;
            std::mem::forget(g);
        }
        Ok(())
    }

    /// Starts the agent again on the same data directory, socket, metrics port and output
    /// file (after [`Agent::stop`] or [`Agent::kill`]). Its log replaces the previous one.
    pub fn restart(&mut self, extra: &[&str]) -> Result<()> {
        if self.proc.is_some() {
            bail!("agent still running");
        }
        self.spawn(extra)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|g| g.0.id())
    }

    /// Runs `hoop-agent ARGS` (a reviewer command) against this agent's socket and data
    /// directory; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = Command::new(agent_bin())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--api-socket")
            .arg(&self.api_socket)
            .args(args)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// GET a path of the agent's metrics endpoint; returns (status, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(&self.metrics_addr, path)
    }

    /// Waits until the agent logged a line containing `needle`.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .ok()
                .and_then(|l| l.iter().find(|l| l.contains(needle)).cloned())
            {
                return Ok(l);
            }
            if let Some(g) = self.proc.as_mut()
                && let Ok(Some(status)) = g.0.try_wait()
            {
                bail!("agent exited ({status}) before logging {needle:?}");
            }
            if start.elapsed() > timeout {
                bail!("agent did not log {needle:?} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.stderr
            .lock()
            .map(|l| l.iter().any(|l| l.contains(needle)))
            .unwrap_or(false)
    }

    /// Every record written so far.
    pub fn records(&self) -> Vec<Value> {
        let Ok(text) = std::fs::read_to_string(&self.output) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Records of one process.
    pub fn records_of(&self, pid: u32) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["process"]["pid"].as_u64() == Some(pid as u64))
            .collect()
    }

    /// Waits until `pred` holds over the records of `pid` (or times out and returns them).
    pub fn wait_records(
        &self,
        pid: u32,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let r = self.records_of(pid);
            if pred(&r) || start.elapsed() > timeout {
                return r;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut g) = self.proc.take() {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc_kill(g.0.id() as i32, 15) };
            let start = Instant::now();
            loop {
                if let Some(status) = g.0.try_wait()? {
                    if !status.success() {
                        bail!("agent exited with {status}");
                    }
                    break;
                }
                if start.elapsed() > Duration::from_secs(20) {
                    bail!("agent did not stop within 20 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            std::mem::forget(g);
        }
        Ok(())
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Runs a client to completion; returns its pid and stdout. Fails if it fails.
pub fn run_client(mut cmd: Command) -> Result<(u32, String)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((pid, String::from_utf8_lossy(&out.stdout).into_owned()))
}

pub fn python() -> Command {
    Command::new(venv_bin("python"))
}

pub fn aws_cli() -> Command {
    Command::new(venv_bin("aws"))
}

pub fn node_script(script: &str) -> Command {
    let mut c = Command::new("node");
    c.current_dir(repo_root().join("tests/node")).arg(script);
    c
}

pub fn client_script(name: &str) -> PathBuf {
    repo_root().join("tests/clients").join(name)
}

/// Finds the records matching `pred`.
pub fn matching(records: &[Value], pred: impl Fn(&Value) -> bool) -> Vec<&Value> {
    records.iter().filter(|r| pred(r)).collect()
}

/// `record.request.method == m && record.request.path == p`
pub fn is_call(r: &Value, method: &str, path: &str) -> bool {
    r["request"]["method"] == method && r["request"]["path"] == path
}

/// The X-Amz-Target of a json-protocol call.
pub fn target_is(r: &Value, target: &str) -> bool {
    r["aws"]["target"] == target
}

/// Every regular file under `dir` (recursively) with its bytes.
pub fn files_under(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => {
                    if let Ok(b) = std::fs::read(&p) {
                        out.insert(p, b);
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Every byte stored under `dir`: the raw files, followed by the decompressed content of every
/// zstd frame found in them (the audit store compresses its blocks), so a search for a
/// planted value can fail.
pub fn stored_bytes(dir: &Path) -> Vec<u8> {
    use std::io::Read;
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut all = Vec::new();
    let mut frames = 0usize;
    for (_, b) in files_under(dir) {
        all.extend_from_slice(&b);
        all.push(0);
        let mut i = 0;
        while let Some(off) = find_bytes(&b[i..], &ZSTD_MAGIC) {
            let at = i + off;
            if let Ok(dec) = zstd::stream::read::Decoder::new(&b[at..]) {
                let mut dec = dec.single_frame();
                let mut buf = [0u8; 8192];
                let mut got = Vec::new();
                // Keep what decodes even if the frame is cut short.
                while let Ok(n) = dec.read(&mut buf) {
                    if n == 0 || got.len() > 64 << 20 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                if !got.is_empty() {
                    frames += 1;
                    all.extend_from_slice(&got);
                    all.push(0);
                }
            }
            i = at + 1;
        }
    }
    eprintln!(
        "stored_bytes({}): {} bytes, {frames} zstd frames decoded",
        dir.display(),
        all.len()
    );
    all
}

/// Offset of `needle` in `hay`.
pub fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses JSON lines, skipping lines that are not JSON objects.
pub fn jsonl(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect()
}

/// The first cgroup2 mount point in /proc/self/mountinfo.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The link-local credential endpoints' addresses on `lo` for the length of a test.
pub struct LinkLocal(Vec<(&'static str, &'static str)>);

impl LinkLocal {
    pub fn add() -> Result<Self> {
        let mut added = LinkLocal(Vec::new());
        for (fam, cidr) in [
            ("-4", "169.254.169.254/32"),
            ("-4", "169.254.170.2/32"),
            ("-4", "169.254.170.23/32"),
            ("-6", "fd00:ec2::254/128"),
        ] {
            let mut cmd = Command::new("ip");
            cmd.args([fam, "addr", "add", cidr, "dev", "lo"]);
            if fam == "-6" {
                cmd.arg("nodad");
            }
            let out = cmd.output()?;
            ensure!(
                out.status.success(),
                "ip addr add {cidr}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            added.0.push((fam, cidr));
        }
        Ok(added)
    }
}

impl Drop for LinkLocal {
    fn drop(&mut self) {
        for (fam, cidr) in &self.0 {
            let _ = Command::new("ip")
                .args([fam, "addr", "del", cidr, "dev", "lo"])
                .status();
        }
    }
}

/// What the credential endpoints serve for a test (`tests/clients/credential_endpoints.py`):
/// the node's role and instance, the ECS task role, the Pod Identity token, and one set of
/// temporary keys per endpoint (`imds`, `imds6`, `ecs`, `pod`), unique to `id`.
pub fn credential_endpoint_spec(id: u32) -> Value {
    let n = |tag: &str| format!("{tag}{:016X}", (id as u64) * 2_654_435_761 % (1 << 60));
    serde_json::json!({
        "role": format!("hoop-node-role-{id}"),
        "account": "210987654321",
        "instance": format!("i-0{:016x}", id),
        "ecs_path": format!("/v2/credentials/hoop-{id}"),
        "ecs_role_arn": format!("arn:aws:iam::210987654321:role/hoop-task-{id}"),
        "pod_token": format!("pod-identity-token-{id}"),
        "imds": {"key": n("ASIAIMDS"), "secret": format!("imdsSECRET{id}xxxxxxxxxxxxxxxxxxxx"), "token": format!("IQoJimdsTOKEN{id}")},
        "imds6": {"key": n("ASIAIMD6"), "secret": format!("imd6SECRET{id}xxxxxxxxxxxxxxxxxxxx"), "token": format!("IQoJimd6TOKEN{id}")},
        "ecs": {"key": n("ASIAECSS"), "secret": format!("ecssSECRET{id}xxxxxxxxxxxxxxxxxxxx"), "token": format!("IQoJecssTOKEN{id}")},
        "pod": {"key": n("ASIAPODI"), "secret": format!("podiSECRET{id}xxxxxxxxxxxxxxxxxxxx"), "token": format!("IQoJpodiTOKEN{id}")},
    })
}

/// Serves the plain-HTTP credential endpoints (`tests/clients/credential_endpoints.py`: IMDS on
/// IPv4 and IPv6, ECS, Pod Identity) with the keys in `spec`, on the addresses [`LinkLocal`]
/// adds; stopped when the guard drops.
pub fn serve_credential_endpoints(spec: &Value) -> Result<Guard> {
    let mut server = Command::new(repo_root().join(".venv/bin/python"))
        .arg(client_script("credential_endpoints.py"))
        .arg(spec.to_string())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let out = server.stdout.take().context("endpoint server stdout")?;
    let guard = Guard(server);
    BufReader::new(out).read_line(&mut line)?;
    ensure!(line.trim() == "ready", "endpoint server: {line:?}");
    Ok(guard)
}
