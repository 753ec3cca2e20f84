//! `cargo xtask <command>`: the one entry point for preparing the toolchain and test
//! dependencies, building, testing and benchmarking hoop.

mod aws_model;
mod bench;
mod bench_enforce;
mod bench_go;
mod bench_soak;
mod setup;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: rust-src, bpf-linker (built against the toolchain's LLVM), the
    /// Python clients and AWS emulator (.venv/), the JavaScript SDK (tests/node/node_modules).
    Setup,
    /// Build the agent (release).
    Build,
    /// Build and run the agent as `hoop-agent run` (extra arguments are passed on).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test: unit tests, end-to-end tests with real eBPF and real AWS
    /// SDKs against the emulator, and the deployment checks.
    Test {
        /// Only this test filter (passed to cargo test).
        filter: Option<String>,
    },
    /// Benchmarks: `capture` (agent overhead on TLS clients), `classify` (criterion),
    /// `store` (ingest and query over 1M events), `all`.
    Bench {
        #[arg(default_value = "all")]
        what: String,
        /// Scale factor for workload sizes (1.0 = the documented targets).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// Regenerate hoop-aws/data from the pinned botocore service models.
    GenAwsModel,
    /// rustfmt check, clippy -D warnings on the host crates and on the eBPF crate (bpf target).
    Lint,
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory (`CARGO_TARGET_DIR` when set).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Runs a command, failing with its name if it does not succeed.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Build => run(cargo().args(["build", "--release", "-p", "hoop-agent"])),
        Cmd::Run { args } => {
            setup::bpf_linker()?;
            run(cargo().args(["build", "--release", "-p", "hoop-agent"]))?;
            run(Command::new(target_dir().join("release/hoop-agent"))
                .arg("run")
                .args(args))
        }
        Cmd::Test { filter } => test(filter),
        Cmd::Bench { what, scale } => bench::bench(&what, scale),
        Cmd::Lint => {
            run(cargo().args(["fmt", "--all", "--", "--check"]))?;
            run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
            // The eBPF crate only builds for the bpf target (its panic handler clashes with
            // std on the host); RUSTC_BOOTSTRAP lets the stable toolchain build `core` for it.
            run(cargo().env("RUSTC_BOOTSTRAP", "1").args([
                "clippy",
                "-p",
                "hoop-ebpf",
                "--bins",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ]))
        }
        Cmd::GenAwsModel => {
            let data = setup::botocore_data_dir()?;
            aws_model::generate(&data, &root().join("hoop-aws/data/aws-model.tsv.gz"))
        }
    }
}

fn test(filter: Option<String>) -> Result<()> {
    setup::setup()?;
    let venv_bin = root().join(".venv/bin");
    let path = format!(
        "{}:{}",
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // One `cargo test` over the default members (every crate but the eBPF one, which is
    // built for the bpf target by hoop-agent's build script) builds the agent binary the
    // end-to-end tests start, with the same features as the tests, so the eBPF object is
    // built once.
    let mut t = cargo();
    t.env("PATH", &path)
        .env("HOOP_AGENT_BIN", target_dir().join("debug/hoop-agent"))
        .args(["test", "--no-fail-fast"]);
    if let Some(f) = &filter {
        t.arg(f);
    }
    // End-to-end tests share one host-wide view of TLS traffic: run them one at a time.
    t.args(["--", "--test-threads=1"]);
    run(&mut t)?;
    if filter.is_none() {
        run(Command::new("bash")
            .arg("deploy/check.sh")
            .current_dir(root())
            .env("PATH", &path))?;
    }
    Ok(())
}
