//! Installs what building and testing hoop needs, idempotently: rust-src, bpf-linker linked
//! against the pinned toolchain's own LLVM, the Python test clients and emulator in `.venv/`,
//! and the JavaScript SDK in `tests/node/node_modules`.

use crate::{root, run};
use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn setup() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    python_env()?;
    node_env()?;
    go_env()?;
    Ok(())
}

/// Debian packages of the Go toolchain and the AWS SDKs for Go (v1, v2) that the Go/HTTP/2
/// end-to-end tests build their clients from, offline (`GO111MODULE=off GOPATH=/usr/share/gocode`).
const GO_PACKAGES: [&str; 3] = [
    "golang-go",
    "golang-github-aws-aws-sdk-go-v2-dev",
    "golang-github-aws-aws-sdk-go-dev",
];

fn go_env() -> Result<()> {
    let installed = GO_PACKAGES.iter().all(|p| {
        Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", p])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
    });
    if installed {
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq"])
        .args(GO_PACKAGES))
}

fn channel() -> Result<String> {
    let text = std::fs::read_to_string(root().join("rust-toolchain.toml"))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|rest| rest.split('"').nth(1))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no channel in rust-toolchain.toml"))
}

fn rust_src() -> Result<()> {
    let ch = channel()?;
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &ch]))
}

fn sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .current_dir(root())
        .args(["--print", "sysroot"])
        .output()
        .context("rustc --print sysroot")?;
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// bpf-linker must use the same LLVM major as rustc: build it against the toolchain's
/// libLLVM through a directory of two symlinks (the link name and the soname).
pub fn bpf_linker() -> Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    let ch = channel()?;
    let lib_dir = sysroot()?.join("lib");
    let libllvm = std::fs::read_dir(&lib_dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .ok_or_else(|| anyhow!("no libLLVM.so.* in {}", lib_dir.display()))?;
    // libLLVM.so.22.1-rust-1.98.0-stable → 22
    let major = libllvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let prefix = PathBuf::from(home).join(format!(".local/share/hoop/llvm-{ch}"));
    let dst = prefix.join("lib");
    std::fs::create_dir_all(&dst)?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = dst.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib_dir.join(&libllvm), &link)
            .with_context(|| format!("symlink {}", link.display()))?;
    }
    eprintln!("xtask: building bpf-linker against LLVM {major} ({libllvm})");
    run(Command::new("cargo")
        .current_dir(root())
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            "bpf-linker",
            "--version",
            "0.13.0",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ]))?;
    if !bpf_linker_works() {
        bail!("bpf-linker installed but does not run: is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

/// Content stamp: reinstall when the requirements change.
fn stamp_matches(stamp: &Path, content: &str) -> bool {
    std::fs::read_to_string(stamp).is_ok_and(|s| s == content)
}

fn python_env() -> Result<()> {
    let venv = root().join(".venv");
    let req = root().join("tests/requirements.txt");
    let content = std::fs::read_to_string(&req)?;
    let stamp = venv.join(".hoop-requirements");
    if stamp_matches(&stamp, &content) {
        return Ok(());
    }
    if !venv.join("bin/python").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&req))?;
    std::fs::write(stamp, content)?;
    Ok(())
}

fn node_env() -> Result<()> {
    let dir = root().join("tests/node");
    let lock = std::fs::read_to_string(dir.join("package-lock.json"))
        .or_else(|_| std::fs::read_to_string(dir.join("package.json")))?;
    let stamp = dir.join("node_modules/.hoop-lock");
    if stamp_matches(&stamp, &lock) {
        return Ok(());
    }
    let has_lock = dir.join("package-lock.json").exists();
    run(Command::new("npm").current_dir(&dir).args([
        if has_lock { "ci" } else { "install" },
        "--no-audit",
        "--no-fund",
    ]))?;
    std::fs::write(stamp, lock)?;
    Ok(())
}

/// The botocore service models of the pinned botocore in `.venv`.
pub fn botocore_data_dir() -> Result<PathBuf> {
    python_env()?;
    let out = Command::new(root().join(".venv/bin/python"))
        .args([
            "-c",
            "import botocore, os; print(os.path.join(os.path.dirname(botocore.__file__), 'data'))",
        ])
        .output()?;
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}
