//! The audit trail as the agent keeps it: every record masked, then appended to the sled
//! store in the data directory; and the reviewer commands (`query`, `replay`, `report`,
//! `policy`, `dump`, `verify`), which run on the store directly when no agent holds it, or
//! through the running agent's local API (sled allows one process).

use crate::api::{ApiResponse, Router};
use anyhow::{Context, Result};
use hoop_event::CallRecord;
use hoop_store::{
    DumpArgs, MaskConfig, Masker, PolicyArgs, QueryArgs, ReplayArgs, ReportArgs, Store,
    StoreConfig, VerifyArgs,
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
        Ok(StoreConfig {
            flush_interval: Duration::from_millis(self.flush_interval_ms.max(10)),
            max_age,
            max_bytes,
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

impl Audit {
    pub fn open(data_dir: &Path, section: &StoreSection) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("create data directory {}", data_dir.display()))?;
        let key = Masker::load_or_create_key(&data_dir.join("mask.key"))?;
        let masker = Masker::from_config(
            &MaskConfig {
                rules: section.mask.clone(),
            },
            &key,
        )?;
        let store = Store::open(data_dir.join("store"), section.store_config()?)
            .with_context(|| format!("open audit store in {}", data_dir.display()))?;
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
}

/// Scheduled rotating CloudTrail dumps into `store.dump_dir`, for log shippers: one gzip file
/// per `dump_every` window of ingest time. A window is written only once every event that can
/// still land in it is in the store: `lag` covers the longest wait between a request and its
/// record (the response timeout) plus the store's flush interval.
pub fn spawn_rotating_dumps(
    store: Arc<Store>,
    section: &StoreSection,
    lag: Duration,
) -> Result<()> {
    let Some(dir) = section.dump_dir.clone() else {
        return Ok(());
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
    std::thread::Builder::new()
        .name("hoop-dump".into())
        .spawn(move || {
            let mut dumper = hoop_store::RotatingDumper::new(dir, node, every);
            loop {
                std::thread::sleep(every.min(Duration::from_secs(1)));
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                match dumper.tick(&store, now.saturating_sub(lag.as_nanos() as u64)) {
                    Ok(Some(p)) => {
                        tracing::info!(path = %p.display(), "rotating audit dump written")
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("rotating audit dump: {e}"),
                }
            }
        })
        .context("spawn the rotating dump thread")?;
    Ok(())
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
    pub fn run(&self, store: &Store, out: &mut dyn std::io::Write) -> Result<()> {
        match self {
            AuditCommand::Query(a) => hoop_store::run_query(store, a, out),
            AuditCommand::Replay(a) => hoop_store::run_replay(store, a, out),
            AuditCommand::Report(a) => hoop_store::run_report(store, a, out),
            AuditCommand::Policy(a) => hoop_store::run_policy(store, a, out),
            AuditCommand::Dump(a) => hoop_store::run_dump(store, a, out),
            AuditCommand::Verify(a) => hoop_store::run_verify(store, a, out),
        }
    }
}

/// Parses a command line as the API receives it (arguments after `hoop-agent`).
#[derive(clap::Parser)]
#[command(name = "hoop-agent", no_binary_name = true)]
struct ApiCommandLine {
    #[command(subcommand)]
    command: AuditCommand,
}

/// `POST /v1/audit` with `{"argv": ["query", "--since", "2h"]}` → `{"output": "..."}`.
pub fn routes(store: Arc<Store>) -> Router {
    Router::new().route("POST", "/v1/audit", move |req| {
        #[derive(Deserialize)]
        struct Body {
            argv: Vec<String>,
        }
        let body: Body = match serde_json::from_slice(&req.body) {
            Ok(b) => b,
            Err(e) => return ApiResponse::error(400, format!("bad request body: {e}")),
        };
        let cmd = match <ApiCommandLine as clap::Parser>::try_parse_from(&body.argv) {
            Ok(c) => c.command,
            Err(e) => return ApiResponse::error(400, e.to_string()),
        };
        let mut out = Vec::new();
        match cmd.run(&store, &mut out) {
            Ok(()) => ApiResponse::ok(serde_json::json!({
                "output": String::from_utf8_lossy(&out),
            })),
            Err(e) => ApiResponse {
                status: 422,
                body: serde_json::json!({
                    "output": String::from_utf8_lossy(&out),
                    "error": format!("{e:#}"),
                }),
            },
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
    use std::io::Write;
    if api_socket.exists() {
        match crate::api::call_json(
            api_socket,
            "POST",
            "/v1/audit",
            &serde_json::json!({ "argv": argv }),
        ) {
            Ok((status, body)) => {
                let out = body["output"].as_str().unwrap_or_default();
                std::io::stdout().write_all(out.as_bytes())?;
                if status != 200 {
                    let err = body["error"].as_str().unwrap_or("request failed");
                    anyhow::bail!("{err}");
                }
                return Ok(());
            }
            Err(e) => {
                tracing::debug!("agent API not answering ({e:#}); opening the store directly")
            }
        }
    }
    let store = Store::open_read_only(data_dir.join("store"))
        .with_context(|| format!("open the audit store in {}", data_dir.display()))?;
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    command.run(&store, &mut lock)?;
    lock.flush()?;
    Ok(())
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
