//! Builds the eBPF programs (`hoop-ebpf`) for the bpf target and places the object in OUT_DIR,
//! where `src/probes.rs` embeds it.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "hoop-ebpf")
        .ok_or_else(|| anyhow!("hoop-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;

    // The eBPF crate is built with the toolchain pinned in rust-toolchain.toml. It is a stable
    // toolchain; RUSTC_BOOTSTRAP=1 lets aya-build use `-Z build-std=core` with it.
    let toolchain_file = metadata.workspace_root.join("rust-toolchain.toml");
    println!("cargo::rerun-if-changed={toolchain_file}");
    let text = std::fs::read_to_string(&toolchain_file).context("read rust-toolchain.toml")?;
    let channel = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|rest| rest.split('"').nth(1))
        .ok_or_else(|| anyhow!("no channel in {toolchain_file}"))?
        .to_string();
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };

    let package = aya_build::Package {
        name: "hoop-ebpf",
        root_dir: root.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&channel))
}
