use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use hoop_agent::config::{Config, Given, Overrides};
use hoop_agent::{agent, audit::AuditCommand, capture::CaptureConfig};
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
    #[arg(long, env = "HOOP_OUTPUT")]
    output: Option<PathBuf>,
    /// Do not print records to stdout (HOOP_NO_STDOUT=true|false).
    #[arg(long, env = "HOOP_NO_STDOUT")]
    no_stdout: bool,
    /// Size of the TLS ring buffer in bytes (a power of two). Overrides
    /// `capture.ring_buffer_bytes`.
    #[arg(long, env = "HOOP_RING_BUFFER_BYTES")]
    ring_buffer_bytes: Option<u32>,
    /// Seconds a request waits for its response before it is reported without one.
    /// Overrides `capture.response_timeout_secs`.
    #[arg(long, env = "HOOP_RESPONSE_TIMEOUT")]
    response_timeout: Option<u64>,
    /// Per-identity call counts for at most this many identities (0: none). Overrides
    /// `metrics_identity_cap`.
    #[arg(long, env = "HOOP_METRICS_IDENTITY_CAP")]
    metrics_identity_cap: Option<usize>,
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
    /// Do not load the enforcement programs (capture only; HOOP_NO_ENFORCE=true|false).
    #[arg(long, env = "HOOP_NO_ENFORCE")]
    no_enforce: bool,
    /// Measure in-kernel decision time (per-CPU counters; small overhead).
    #[arg(long, env = "HOOP_ENFORCE_STATS")]
    enforce_stats: bool,
    /// Validate the configuration (file, environment, flags), print the effective settings
    /// and which flag or variable set each, and exit without loading anything.
    #[arg(long)]
    check_config: bool,
}

/// Where `id`'s value came from: `--flag` or `environment variable NAME` (from clap's own
/// definition of the argument, so messages cannot drift from the flags).
fn origin(cmd: &clap::Command, m: &ArgMatches, id: &str) -> String {
    let Some(arg) = cmd.get_arguments().find(|a| a.get_id() == id) else {
        return id.to_string();
    };
    match (m.value_source(id), arg.get_env()) {
        (Some(ValueSource::EnvVariable), Some(env)) => {
            format!("environment variable {}", env.to_string_lossy())
        }
        _ => format!("--{}", arg.get_long().unwrap_or(id)),
    }
}

/// Exits with clap's error; when the bad value came from an environment variable (clap names
/// only the flag), says which variable.
fn exit_naming_env(e: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) && let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg)
    {
        // "--ring-buffer-bytes <RING_BUFFER_BYTES>"
        let long = arg.split_whitespace().next().unwrap_or_default();
        let on_command_line =
            std::env::args().any(|a| a == long || a.starts_with(&format!("{long}=")));
        let cmd = Cli::command();
        let env = std::iter::once(&cmd)
            .chain(cmd.get_subcommands())
            .flat_map(|c| c.get_arguments())
            .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == long))
            .and_then(|a| a.get_env())
            .filter(|v| std::env::var_os(v).is_some());
        if let (false, Some(env)) = (on_command_line, env) {
            eprintln!(
                "hoop-agent: the value below comes from environment variable {}",
                env.to_string_lossy()
            );
        }
    }
    e.exit()
}

/// The settings `run` got from flags and environment variables, each with its origin.
fn overrides(cli: &Cli, a: &RunArgs, top: &ArgMatches) -> Overrides {
    let cmd = Cli::command();
    let run_cmd = cmd.find_subcommand("run").cloned().unwrap_or_default();
    let run_m = top.subcommand_matches("run").cloned().unwrap_or_default();
    let global = |id: &str| origin(&cmd, top, id);
    let local = |id: &str| origin(&run_cmd, &run_m, id);
    fn g<T: Clone>(v: &Option<T>, origin: impl FnOnce() -> String) -> Option<Given<T>> {
        v.as_ref().map(|value| Given {
            value: value.clone(),
            origin: origin(),
        })
    }
    Overrides {
        data_dir: g(&cli.data_dir, || global("data_dir")),
        log_format: g(&cli.log_format, || global("log_format")),
        api_socket: g(&cli.api_socket, || global("api_socket")),
        output: g(&a.output, || local("output")),
        metrics_addr: g(&a.metrics_addr, || local("metrics_addr")),
        metrics_identity_cap: g(&a.metrics_identity_cap, || local("metrics_identity_cap")),
        policy: g(&a.policy, || local("policy")),
        ring_buffer_bytes: g(&a.ring_buffer_bytes, || local("ring_buffer_bytes")),
        response_timeout_secs: g(&a.response_timeout, || local("response_timeout")),
    }
}

/// The file (or defaults) with flags and environment applied, validated as a whole.
fn run_config(a: &RunArgs, o: &Overrides) -> Result<Config> {
    let mut cfg = Config::load(a.config.as_deref())?;
    cfg.apply(o)
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    Ok(cfg)
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

/// At most two malloc arenas. glibc gives busy threads arenas of their own (up to 8 per CPU);
/// the agent's threads (event loop, discovery, sled's flusher, API, metrics) then each keep a
/// high-water mark of freed memory. Measured with `./x bench soak` (7.5 min, about 250
/// calls/s, one run each): second-half RSS growth 1.73 MiB/min with the default arenas, 0.77
/// and 1.05 with two.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|e| exit_naming_env(e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `run` settles its configuration first: its `log_format` applies unless a flag/env says.
    let run_cfg = match &cli.command {
        Command::Run(a) => {
            let o = overrides(&cli, a, &matches);
            Some(run_config(a, &o).map(|c| (c, o)))
        }
        _ => None,
    };
    let format = cli.log_format.clone().unwrap_or_else(|| match &run_cfg {
        Some(Ok((c, _))) => c.log_format.clone(),
        _ => "human".into(),
    });
    init_logging(&format);
    let result = match run_cfg {
        Some(cfg) => cfg.and_then(|c| real_main(&cli, Some(c))),
        None => real_main(&cli, None),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if format == "json" {
                tracing::error!(error = %format!("{e:#}"), "hoop-agent failed");
            } else {
                // The cause chain on one line (no backtrace: these are operator errors).
                eprintln!("Error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main(cli: &Cli, run_cfg: Option<(Config, Overrides)>) -> Result<()> {
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
            let Some((cfg, o)) = run_cfg else {
                anyhow::bail!("run without a configuration");
            };
            if a.check_config {
                let overridden: serde_json::Map<String, serde_json::Value> = o
                    .origins()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.into()))
                    .collect();
                let report = serde_json::json!({
                    "config_file": Config::file(a.config.as_deref()),
                    "settings": cfg.overridable_settings(),
                    "overridden": overridden,
                });
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
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
                metrics_addr: cfg.metrics_addr.parse().context("metrics_addr")?,
                metrics_identity_cap: cfg.metrics_identity_cap,
                api_socket: cfg.api_socket.clone(),
                api_tls: cfg.api_tls.clone(),
                enforce: (!a.no_enforce).then(|| hoop_agent::enforce::EnforceOptions {
                    policy: cfg.policy.clone(),
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
