//! Heavy ingest into a store until killed, printing what is acknowledged durable:
//! `cargo run -p hoop-store --example ingest -- DIR [FLUSH_MS]`. Used by hand to try
//! SIGKILL recovery (`tests/crash.rs` does the same by re-executing itself).

use hoop_store::testgen::Gen;
use hoop_store::{Store, StoreConfig};
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: ingest DIR [FLUSH_MS]"))?;
    let ms = args.next().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let store = Store::open(
        &dir,
        StoreConfig {
            flush_interval: Duration::from_millis(ms),
            ..Default::default()
        },
    )?;
    let start = store.stats().events;
    println!("opened with {start} events");
    let mut g = Gen::new(start, 25);
    let t0 = hoop_store::timefmt::now_ns();
    let mut durable = 0;
    // Runs until killed.
    let mut i = 0u64;
    loop {
        store.append(&g.record(t0 + i * 1000, false))?;
        i += 1;
        let d = store.durable_since_open();
        if d != durable {
            durable = d;
            println!("durable {d}");
        }
    }
}
