//! Benchmarks (filled in below).
use anyhow::{Result, bail};

pub fn bench(what: &str, _scale: f64) -> Result<()> {
    bail!("unknown benchmark {what}")
}
