//! The audit trail as the agent keeps it: every record masked, then appended to the sled
//! store in the data directory; and the reviewer commands (`query`, `replay`, `report`,
//! `policy`, `dump`, `verify`), which run on the store directly when no agent holds it, or
//! through the running agent's local API (sled allows one process).

use crate::api::Router;
use anyhow::{Context, Result};
use hoop_event::CallRecord;
use hoop_store::{
    Console, DumpArgs, FrameConsole, LocalConsole, MaskConfig, Masker, PolicyArgs, QueryArgs,
    ReplayArgs, ReportArgs, Store, StoreConfig, VerifyArgs,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `store:` section of the configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// Upper bound on how long an event stays only in memory.
    pub flush_interval_ms: u64,
    pub retention: RetentionSection,
    /// Masking rules applied before storage, on top of the built-in ones.
    pub mask: Vec<hoop_store::MaskRule>,
    /// Write a rotating CloudTrail-format dump into this directory (for log shippers).
    pub dump_dir: Option<PathBuf>,
    /// Period of the rotating dump, e.g. `15m`.
    pub dump_every: String,
    /// sled's page cache, e.g. `8MiB`. sled's resident memory is several times this figure and
    /// grows towards it as the store fills, so it bounds the agent's memory; older pages are
    /// read back from the OS page cache.
    pub cache: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSection {
    /// e.g. `30d`, `12h`.
    pub max_age: Option<String>,
    /// e.g. `10GiB`, `500MB`.
    pub max_bytes: Option<String>,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            flush_interval_ms: 1000,
            retention: RetentionSection::default(),
            mask: Vec::new(),
            dump_dir: None,
            dump_every: "15m".into(),
            cache: "8MiB".into(),
        }
    }
}

impl StoreSection {
    pub fn store_config(&self) -> Result<StoreConfig> {
        let max_age = match &self.retention.max_age {
            Some(s) => Some(
                humantime::parse_duration(s)
                    .with_context(|| format!("store.retention.max_age: {s:?}"))?,
            ),
            None => None,
        };
        let max_bytes = match &self.retention.max_bytes {
            Some(s) => Some(
                s.parse::<bytesize::ByteSize>()
                    .map_err(|e| anyhow::anyhow!("store.retention.max_bytes: {s:?}: {e}"))?
                    .as_u64(),
            ),
            None => None,
        };
        let cache_bytes = self
            .cache
            .parse::<bytesize::ByteSize>()
            .map_err(|e| anyhow::anyhow!("store.cache: {:?}: {e}", self.cache))?
            .as_u64();
        Ok(StoreConfig {
            flush_interval: Duration::from_millis(self.flush_interval_ms.max(10)),
            max_age,
            max_bytes,
            cache_bytes,
            ..StoreConfig::default()
        })
    }

    pub fn dump_period(&self) -> Result<Duration> {
        humantime::parse_duration(&self.dump_every)
            .with_context(|| format!("store.dump_every: {:?}", self.dump_every))
    }
}

/// Writer side, owned by the agent.
pub struct Audit {
    pub store: Arc<Store>,
    masker: Masker,
}

/// Entries a data directory may hold besides hoop's own before hoop calls it foreign.
const IGNORABLE: [&str; 1] = ["lost+found"];

/// A data directory is hoop's when it is missing or empty, or holds the store or the mask
/// key. Anything else is refused before a byte is written into it.
fn check_data_dir(data_dir: &Path, section: &StoreSection) -> Result<()> {
    let rd = match std::fs::read_dir(data_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("read {}", data_dir.display())),
    };
    let dump_dir = section
        .dump_dir
        .as_deref()
        .and_then(|d| d.strip_prefix(data_dir).ok())
        .and_then(|d| d.components().next())
        .map(|c| c.as_os_str().to_owned());
    let mut other = Vec::new();
    for e in rd {
        let name = e?.file_name();
        let n = name.to_string_lossy();
        if n == "store" || n == "mask.key" {
            return Ok(());
        }
        if !IGNORABLE.contains(&n.as_ref()) && Some(&name) != dump_dir.as_ref() {
            other.push(n.into_owned());
        }
    }
    if other.is_empty() {
        return Ok(());
    }
    other.sort();
    other.truncate(5);
    anyhow::bail!(
        "data directory {} is not empty and holds no hoop store (found {}): refusing to write into it; use an empty or new --data-dir",
        data_dir.display(),
        other.join(", ")
    )
}

impl Audit {
    /// Validates the data directory, the mask key and the store before writing anything;
    /// a damaged store is moved aside and replaced (see [`Store::open_or_recover`]).
    pub fn open(data_dir: &Path, section: &StoreSection) -> Result<Self> {
        check_data_dir(data_dir, section)?;
        let key_path = data_dir.join("mask.key");
        if key_path.exists() {
            Masker::load_or_create_key(&key_path)?;
        }
        let cfg = section.store_config()?;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("create data directory {}", data_dir.display()))?;
        let (store, replaced) = Store::open_or_recover(data_dir.join("store"), cfg)
            .with_context(|| format!("open audit store in {}", data_dir.display()))?;
        if let Some(p) = replaced {
            tracing::error!(
                damaged = %p.path,
                "the audit store could not be opened and was replaced; `hoop-agent verify` shows the link to the old chain"
            );
        }
        let key = Masker::load_or_create_key(&key_path)?;
        let masker = Masker::from_config(
            &MaskConfig {
                rules: section.mask.clone(),
            },
            &key,
        )?;
        Ok(Audit {
            store: Arc::new(store),
            masker,
        })
    }

    /// Masks the record (in place: what is printed is what is stored) and appends it.
    /// Returns the append latency.
    pub fn record(&self, rec: &mut CallRecord) -> Result<Duration> {
        self.masker.apply(rec);
        let t = Instant::now();
        self.store.append(rec)?;
        Ok(t.elapsed())
    }

    /// Clean shutdown: everything flushed and the store marked closed cleanly.
    pub fn close(&self) -> Result<()> {
        self.store.shutdown().context("close the audit store")
    }
}

/// The rotating-dump thread; [`RotatingDumps::finish`] writes the last window at shutdown.
pub struct RotatingDumps {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: std::thread::JoinHandle<hoop_store::RotatingDumper>,
    store: Arc<Store>,
}

impl RotatingDumps {
    /// Call after the last record is stored: writes the window up to now.
    pub fn finish(self) {
        *self.stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop.1.notify_all();
        let Ok(mut dumper) = self.thread.join() else {
            tracing::warn!("rotating dump thread panicked; no final window");
            return;
        };
        match dumper.finish(&self.store, hoop_store::timefmt::now_ns()) {
            Ok(Some(p)) => tracing::info!(path = %p.display(), "final rotating audit dump written"),
            Ok(None) => {}
            Err(e) => tracing::warn!("final rotating audit dump: {e}"),
        }
    }
}

/// Scheduled rotating CloudTrail dumps into `store.dump_dir`, for log shippers: one gzip file
/// per `dump_every` window of ingest time. A window is written only once every event that can
/// still land in it is in the store: `lag` covers the longest wait between a request and its
/// record (the response timeout) plus the store's flush interval. After a restart the windows
/// continue from the end of the newest file; a new directory starts now.
pub fn spawn_rotating_dumps(
    store: Arc<Store>,
    section: &StoreSection,
    lag: Duration,
) -> Result<Option<RotatingDumps>> {
    let Some(dir) = section.dump_dir.clone() else {
        return Ok(None);
    };
    let every = section.dump_period()?;
    let lag = lag + Duration::from_millis(section.flush_interval_ms.max(10)) * 2;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("create dump directory {}", dir.display()))?;
    let node = std::env::var("NODE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "node".into());
    let mut dumper = hoop_store::RotatingDumper::resume(&dir, node, every)
        .with_context(|| format!("read dump directory {}", dir.display()))?;
    match dumper.last_to {
        Some(t) => tracing::info!(
            from = %hoop_store::timefmt::rfc3339(t),
            "rotating dumps continue after the newest file"
        ),
        None => dumper.last_to = Some(hoop_store::timefmt::now_ns()),
    }
    let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let thread = {
        let stop = stop.clone();
        let store = store.clone();
        std::thread::Builder::new()
            .name("hoop-dump".into())
            .spawn(move || {
                loop {
                    {
                        let g = stop.0.lock().unwrap_or_else(|e| e.into_inner());
                        let (g, _) = stop
                            .1
                            .wait_timeout(g, every.min(Duration::from_secs(1)))
                            .unwrap_or_else(|e| e.into_inner());
                        if *g {
                            return dumper;
                        }
                    }
                    let now = hoop_store::timefmt::now_ns();
                    match dumper.tick(&store, now.saturating_sub(lag.as_nanos() as u64)) {
                        Ok(Some(p)) => {
                            tracing::info!(path = %p.display(), "rotating audit dump written")
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!("rotating audit dump: {e}"),
                    }
                }
            })
            .context("spawn the rotating dump thread")?
    };
    Ok(Some(RotatingDumps {
        stop,
        thread,
        store,
    }))
}

/// Reviewer commands, shared by the CLI and the local API.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum AuditCommand {
    /// Query recorded calls (filters: identity, principal, workload, process, service,
    /// IAM action glob, resource glob, decision, time range).
    Query(QueryArgs),
    /// One session (process tree or connection) as a chronological transcript.
    Replay(ReplayArgs),
    /// Access review per identity: actions, resources, counts, errors, decisions.
    Report(ReportArgs),
    /// Least-privilege IAM policy per identity from what it actually used.
    Policy(PolicyArgs),
    /// Node-level audit dump (JSON lines or CloudTrail records).
    Dump(DumpArgs),
    /// Check the hash chain; names the first broken link.
    Verify(VerifyArgs),
}

impl AuditCommand {
    pub fn run(&self, store: &Store, console: &mut dyn Console) -> Result<()> {
        match self {
            AuditCommand::Query(a) => hoop_store::run_query(store, a, console.out()),
            AuditCommand::Replay(a) => hoop_store::run_replay(store, a, console.out()),
            AuditCommand::Report(a) => hoop_store::run_report(store, a, console.out()),
            AuditCommand::Policy(a) => hoop_store::run_policy(store, a, console.out()),
            AuditCommand::Dump(a) => hoop_store::run_dump(store, a, console),
            AuditCommand::Verify(a) => hoop_store::run_verify(store, a, console.out()),
        }
    }

    /// A progress bar is wanted (drawn only on a terminal).
    fn progress(&self) -> bool {
        matches!(self, AuditCommand::Dump(a) if !a.no_progress)
    }
}

/// Parses a command line as the API receives it (arguments after `hoop-agent`).
#[derive(clap::Parser)]
#[command(name = "hoop-agent", no_binary_name = true)]
struct ApiCommandLine {
    #[command(subcommand)]
    command: AuditCommand,
}

const AUDIT_PATH: &str = "/v1/audit";

/// `POST /v1/audit` with `{"argv": ["query", "--since", "2h"]}` runs the command in the agent
/// and streams its output, files and progress as frames (see [`hoop_store::console`]): the
/// client writes them in its own directory and terminal.
pub fn routes(store: Arc<Store>) -> Router {
    Router::new().raw("POST", AUDIT_PATH, move |req, sock| {
        #[derive(Deserialize)]
        struct Body {
            argv: Vec<String>,
        }
        let mut console = FrameConsole::new(sock);
        let result = serde_json::from_slice::<Body>(&req.body)
            .map_err(|e| anyhow::anyhow!("bad request body: {e}"))
            .and_then(|b| {
                <ApiCommandLine as clap::Parser>::try_parse_from(&b.argv)
                    .map_err(|e| anyhow::anyhow!("{e}"))
            })
            .and_then(|c| c.command.run(&store, &mut console));
        if let Err(e) = console.end(&result) {
            tracing::debug!("audit API client went away: {e}");
        }
    })
}

/// Runs a reviewer command: through the agent when it is running (its socket answers),
/// else directly on the data directory, read-only.
pub fn run_cli(
    command: &AuditCommand,
    argv: &[String],
    data_dir: &Path,
    api_socket: &Path,
) -> Result<()> {
    let stdout = std::io::stdout();
    let mut console = LocalConsole::new(stdout.lock(), command.progress());
    if api_socket.exists() {
        match std::os::unix::net::UnixStream::connect(api_socket) {
            Ok(sock) => {
                // The agent answers: its answer (or refusal) is final.
                let answer = send_command(sock, argv)?;
                let r = hoop_store::apply_frames(answer, &mut console);
                console.finish()?;
                return r;
            }
            Err(e) => {
                tracing::debug!("agent API not answering ({e}); opening the store directly")
            }
        }
    }
    let store = Store::open_read_only(data_dir.join("store"))
        .with_context(|| format!("open the audit store in {}", data_dir.display()))?;
    let r = command.run(&store, &mut console);
    console.finish()?;
    r
}

/// Sends the command to the agent; returns the body of a 200 answer as a reader.
fn send_command(
    mut s: std::os::unix::net::UnixStream,
    argv: &[String],
) -> Result<impl std::io::Read> {
    use std::io::{BufRead, Write};
    let body = serde_json::json!({ "argv": argv }).to_string();
    write!(
        s,
        "POST {AUDIT_PATH} HTTP/1.1\r\nHost: hoop\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = std::io::BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status)?;
    let code = status.split_whitespace().nth(1).unwrap_or("");
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    if code != "200" {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut r, &mut rest)?;
        let err: serde_json::Value = serde_json::from_str(&rest).unwrap_or_default();
        anyhow::bail!(
            "the agent refused the command ({}): {}",
            status.trim(),
            err["error"].as_str().unwrap_or(rest.trim())
        );
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_section_parses_units() {
        let s: StoreSection = serde_yaml::from_str(
            "flush_interval_ms: 500\nretention:\n  max_age: 30d\n  max_bytes: 10GiB\n",
        )
        .expect("section");
        let c = s.store_config().expect("config");
        assert_eq!(c.flush_interval, Duration::from_millis(500));
        assert_eq!(c.max_age, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(c.max_bytes, Some(10 * 1024 * 1024 * 1024));
        assert_eq!(c.cache_bytes, 8 << 20, "default page cache");
        let big: StoreSection = serde_yaml::from_str("cache: 64MiB\n").expect("yaml");
        assert_eq!(big.store_config().expect("config").cache_bytes, 64 << 20);
        let junk: StoreSection = serde_yaml::from_str("cache: lots\n").expect("yaml");
        let e = junk.store_config().expect_err("bad size");
        assert!(e.to_string().contains("store.cache"), "{e}");
        let bad: StoreSection =
            serde_yaml::from_str("retention:\n  max_age: forever\n").expect("yaml");
        assert!(bad.store_config().is_err());
    }

    #[test]
    fn api_command_line_parses_like_the_cli() {
        let c = <ApiCommandLine as clap::Parser>::try_parse_from(["query", "--since", "2h"]);
        assert!(c.is_ok());
        assert!(<ApiCommandLine as clap::Parser>::try_parse_from(["query", "--bogus"]).is_err());
    }
}
