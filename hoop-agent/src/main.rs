use anyhow::Result;
use clap::{Parser, Subcommand};
use hoop_agent::{agent, audit::AuditCommand, capture::CaptureConfig, config::Config};
use std::path::PathBuf;

/// hoop: see, attribute and control every AWS API call made on this host.
#[derive(Parser)]
#[command(name = "hoop-agent", version)]
struct Cli {
    /// Log format: human or json (default: `log_format` of the config file for `run`, else
    /// human). In json mode every line on stderr is one JSON object, including the messages
    /// of the eBPF programs and of libraries that log through the `log` crate.
    #[arg(long, global = true, env = "HOOP_LOG_FORMAT", value_parser = ["human", "json"])]
    log_format: Option<String>,
    /// Data directory (audit store); default /var/lib/hoop. For `run` it overrides `data_dir`.
    #[arg(long, global = true, env = "HOOP_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The agent's local API socket; default /run/hoop/hoop.sock. Reviewer commands go
    /// through it when the agent answers, else they open the store read-only.
    #[arg(long, global = true, env = "HOOP_API_SOCKET")]
    api_socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the agent: attach probes and print one JSON record per AWS call.
    Run(RunArgs),
    /// Just-in-time approvals of the running agent: list, approve ID, deny ID.
    Approvals(ApprovalsArgs),
    /// Print the running agent's records as they are made (JSON lines), optionally filtered.
    Tail(TailArgs),
    #[command(flatten)]
    Audit(AuditCommand),
}

#[derive(clap::Args)]
struct TailArgs {
    /// Keep records whose field matches: FIELD=VALUE, FIELD!=VALUE or FIELD~TEXT, with FIELD a
    /// dotted path into the record (aws.service, process.pid, ...) or one of service,
    /// operation, action, region, pid, comm, decision, principal. Repeat to AND them.
    #[arg(long, short)]
    filter: Vec<hoop_agent::tail::Filter>,
    /// Exit after this many records.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Pretty-print each record.
    #[arg(long)]
    pretty: bool,
}

#[derive(clap::Args)]
struct ApprovalsArgs {
    #[command(subcommand)]
    action: ApprovalAction,
}

#[derive(Subcommand)]
enum ApprovalAction {
    /// List approval requests (pending and decided).
    List,
    /// Grant the time-bound exception an approval request asks for.
    Approve { id: u64 },
    /// Refuse it.
    Deny { id: u64 },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Configuration file (YAML). Default: /etc/hoop/config.yaml when it exists, else the
    /// embedded defaults.
    #[arg(long, env = "HOOP_CONFIG")]
    config: Option<PathBuf>,
    /// Also append records (JSON lines) to this file. Overrides `output`.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Do not print records to stdout.
    #[arg(long)]
    no_stdout: bool,
    /// Size of the TLS ring buffer in bytes (a power of two). Overrides
    /// `capture.ring_buffer_bytes`.
    #[arg(long)]
    ring_buffer_bytes: Option<u32>,
    /// Seconds a request waits for its response before it is reported without one.
    #[arg(long)]
    response_timeout: Option<u64>,
    /// Write every raw TLS plaintext record to this file (debugging, test fixtures). It holds
    /// unmasked plaintext: never use it with real credentials.
    #[arg(long, hide = true)]
    record_raw: Option<PathBuf>,
    /// Policy file (YAML, hot-reloaded). Default: /etc/hoop/policy.yaml when it exists.
    #[arg(long, env = "HOOP_POLICY")]
    policy: Option<PathBuf>,
    /// Address for /metrics, /healthz and /readyz. Overrides `metrics_addr`.
    #[arg(long, env = "HOOP_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// Do not load the enforcement programs (capture only).
    #[arg(long)]
    no_enforce: bool,
    /// Measure in-kernel decision time (per-CPU counters; small overhead).
    #[arg(long)]
    enforce_stats: bool,
}

fn api_socket(cli: &Cli) -> PathBuf {
    cli.api_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(hoop_agent::config::DEFAULT_API_SOCKET))
}

/// The command line without the binary and the global options, as the agent's API parses it.
fn audit_argv() -> Vec<String> {
    const GLOBAL: [&str; 3] = ["--log-format", "--data-dir", "--api-socket"];
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if GLOBAL.contains(&a.as_str()) {
            args.next();
        } else if !GLOBAL.iter().any(|g| a.starts_with(&format!("{g}="))) {
            out.push(a);
        }
    }
    out
}

/// tracing to stderr; `init` also routes the `log` crate (aya, aya-log's eBPF messages,
/// rustls) into tracing, so json mode covers them.
fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HOOP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().flatten_event(false).init();
        // Panics as JSON too.
        std::panic::set_hook(Box::new(|info| {
            tracing::error!(panic = %info, "hoop-agent panicked");
        }));
    } else {
        b.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // `run` reads the config file first: its `log_format` applies unless a flag/env says.
    let run_cfg = match &cli.command {
        Command::Run(a) => Some(Config::load(a.config.as_deref())),
        _ => None,
    };
    let format = cli.log_format.clone().unwrap_or_else(|| match &run_cfg {
        Some(Ok(c)) => c.log_format.clone(),
        _ => "human".into(),
    });
    init_logging(&format);
    let result = match run_cfg {
        Some(cfg) => cfg
            .map_err(anyhow::Error::from)
            .and_then(|c| real_main(&cli, Some(c))),
        None => real_main(&cli, None),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if format == "json" {
                tracing::error!(error = %format!("{e:#}"), "hoop-agent failed");
            } else {
                eprintln!("Error: {e:?}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main(cli: &Cli, run_cfg: Option<Config>) -> Result<()> {
    match &cli.command {
        Command::Tail(t) => hoop_agent::tail::run(&api_socket(cli), &t.filter, t.count, t.pretty),
        Command::Approvals(a) => {
            let (method, path) = match a.action {
                ApprovalAction::List => ("GET", "/v1/approvals".to_string()),
                ApprovalAction::Approve { id } => ("POST", format!("/v1/approvals/{id}/approve")),
                ApprovalAction::Deny { id } => ("POST", format!("/v1/approvals/{id}/deny")),
            };
            let (status, body) = hoop_agent::api::call(&api_socket(cli), method, &path)?;
            println!("{}", serde_json::to_string_pretty(&body)?);
            if status != 200 {
                anyhow::bail!("agent answered {status}");
            }
            Ok(())
        }
        Command::Audit(cmd) => {
            let data_dir = cli
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(hoop_agent::config::DEFAULT_DATA_DIR));
            hoop_agent::audit::run_cli(cmd, &audit_argv(), &data_dir, &api_socket(cli))
        }
        Command::Run(a) => {
            let mut cfg = match run_cfg {
                Some(c) => c,
                None => Config::load(a.config.as_deref())?,
            };
            if let Some(d) = cli.data_dir.clone() {
                cfg.data_dir = d;
            }
            if let Some(o) = a.output.clone() {
                cfg.output = Some(o);
            }
            if let Some(r) = a.ring_buffer_bytes {
                cfg.capture.ring_buffer_bytes = r;
            }
            if let Some(m) = a.metrics_addr.clone() {
                cfg.metrics_addr = m;
            }
            if let Some(p) = cli.api_socket.clone() {
                cfg.api_socket = p;
            }
            if let Some(t) = a.response_timeout {
                cfg.capture.response_timeout_secs = t;
            }
            let opts = agent::RunOptions {
                output: cfg.output.clone(),
                stdout: !a.no_stdout,
                ring_bytes: cfg.capture.ring_buffer_bytes,
                capture: CaptureConfig {
                    response_timeout_ns: cfg.capture.response_timeout_secs * 1_000_000_000,
                    max_body: cfg.capture.max_body_bytes,
                    max_connections: cfg.capture.max_connections,
                    ..Default::default()
                },
                identity: cfg.identity(),
                record_raw: a.record_raw.clone(),
                data_dir: cfg.data_dir.clone(),
                store: cfg.store.clone(),
                metrics_addr: cfg.metrics_addr.parse()?,
                metrics_identity_cap: cfg.metrics_identity_cap,
                api_socket: cfg.api_socket.clone(),
                api_tls: cfg.api_tls.clone(),
                enforce: (!a.no_enforce).then(|| hoop_agent::enforce::EnforceOptions {
                    policy: a.policy.clone().or(cfg.policy.clone()),
                    api_socket: cfg.api_socket.clone(),
                    stats: a.enforce_stats,
                }),
            };
            // One thread runs the event loop, timers and I/O, so a ring drain never needs a
            // cross-thread wake-up; API handlers do their store work on the blocking pool.
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(agent::run(opts))
        }
    }
}
