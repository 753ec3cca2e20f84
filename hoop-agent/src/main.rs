use anyhow::Result;
use clap::{Parser, Subcommand};
use hoop_agent::{agent, capture::CaptureConfig};
use std::path::PathBuf;

/// hoop: see, attribute and control every AWS API call made on this host.
#[derive(Parser)]
#[command(name = "hoop-agent", version)]
struct Cli {
    /// Log format: human or json.
    #[arg(long, global = true, env = "HOOP_LOG_FORMAT", default_value = "human")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: attach probes and print one JSON record per AWS call.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Also append records (JSON lines) to this file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Do not print records to stdout.
    #[arg(long)]
    no_stdout: bool,
    /// Size of the TLS ring buffer in bytes (a power of two).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    ring_buffer_bytes: u32,
    /// Seconds a request waits for its response before it is reported without one.
    #[arg(long, default_value_t = 30)]
    response_timeout: u64,
    /// Write every raw TLS plaintext record to this file (debugging, test fixtures). It holds
    /// unmasked plaintext: never use it with real credentials.
    #[arg(long, hide = true)]
    record_raw: Option<PathBuf>,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HOOP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match cli.command {
        Command::Run(a) => {
            let opts = agent::RunOptions {
                output: a.output,
                stdout: !a.no_stdout,
                ring_bytes: a.ring_buffer_bytes,
                capture: CaptureConfig {
                    response_timeout_ns: a.response_timeout * 1_000_000_000,
                    ..Default::default()
                },
                record_raw: a.record_raw,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(agent::run(opts))
        }
    }
}
