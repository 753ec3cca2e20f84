//! Store benchmark: `cargo run --release -p hoop-store --example bench_store -- --events 1000000`
//! Ingests generated events (masking + append, as the agent stores them), then times filtered
//! queries, a full report and an offline (read-only) open, and prints each figure against
//! its target.

use hoop_store::testgen::Gen;
use hoop_store::{Filter, Masker, Store, StoreConfig, query, report};
use std::time::Instant;

fn du(p: &std::path::Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let p = e.path();
            n += if p.is_dir() {
                du(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    n
}

/// CPU seconds used by this process so far (all threads: the store's flusher and sled's
/// threads count), so numbers from a loaded shared machine can be compared.
fn cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

fn main() -> anyhow::Result<()> {
    let mut events: u64 = 1_000_000;
    let mut dir_arg = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--events" => events = args.next().and_then(|v| v.parse().ok()).unwrap_or(events),
            "--dir" => dir_arg = args.next(),
            other => anyhow::bail!("unknown argument {other:?} (use --events N [--dir D])"),
        }
    }
    let tmp = tempfile::tempdir()?;
    let dir = dir_arg
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("store"));
    let now = hoop_store::timefmt::now_ns();
    let span = 24 * 3600 * 1_000_000_000u64;
    let start = now - span;
    let store = Store::open(&dir, StoreConfig::default())?;
    let masker = Masker::new(&[], b"bench-node-key-0123456789abcdef!")?;
    let mut generator = Gen::new(42, 50);
    let chunk = 20_000u64;
    let (mut t_gen, mut t_ingest, mut cpu_ingest) = (0f64, 0f64, 0f64);
    let mut i = 0u64;
    while i < events {
        let n = chunk.min(events - i);
        let t0 = Instant::now();
        let mut recs: Vec<_> = (i..i + n)
            .map(|k| generator.record(start + k * (span / events), k % 7 == 0))
            .collect();
        t_gen += t0.elapsed().as_secs_f64();
        let (t1, c1) = (Instant::now(), cpu_s());
        for r in &mut recs {
            masker.apply(r);
            store.append(r)?;
        }
        t_ingest += t1.elapsed().as_secs_f64();
        cpu_ingest += cpu_s() - c1;
        i += n;
    }
    let (t1, c1) = (Instant::now(), cpu_s());
    store.flush()?;
    t_ingest += t1.elapsed().as_secs_f64();
    cpu_ingest += cpu_s() - c1;
    println!("events:            {events}");
    println!(
        "generate:          {:.0} events/s (test data; not part of ingest)",
        events as f64 / t_gen
    );
    let rate = events as f64 / t_ingest;
    println!(
        "ingest:            {rate:.0} events/s (mask + append, {t_ingest:.2} s incl. final flush; {cpu_ingest:.2} CPU s, {:.0} events per CPU second)  target >= 50000: {}",
        events as f64 / cpu_ingest,
        verdict(rate >= 50_000.0)
    );

    let id = Gen::identity(0).principal_arn.unwrap_or_default();
    let f = Filter {
        identity: Some(id.clone()),
        action: Some("s3:GetObject".into()),
        since: Some(now - 3600 * 1_000_000_000),
        ..Default::default()
    };
    let _ = query::query(&store, &f)?; // warm the cache once, as a running agent would be
    let (t, c) = (Instant::now(), cpu_s());
    let got = query::query(&store, &f)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "filtered query:    {ms:.1} ms ({:.1} CPU ms; {} records; identity + action, last hour)  target <= 100 ms: {}",
        (cpu_s() - c) * 1e3,
        got.len(),
        verdict(ms <= 100.0)
    );
    let f2 = Filter {
        action: Some("s3:Get*".into()),
        decision: Some("deny".into()),
        since: Some(now - 6 * 3600 * 1_000_000_000),
        ..Default::default()
    };
    let _ = query::query(&store, &f2)?;
    let (t, c) = (Instant::now(), cpu_s());
    let got = query::query(&store, &f2)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "filtered query 2:  {ms:.1} ms ({:.1} CPU ms; {} records; action glob + decision, last 6 h)  target <= 100 ms: {}",
        (cpu_s() - c) * 1e3,
        got.len(),
        verdict(ms <= 100.0)
    );
    let (t, c) = (Instant::now(), cpu_s());
    let r = report::build(&store, &Filter::default())?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "full report:       {secs:.2} s ({:.2} CPU s; {} identities, {} calls)  target <= 5 s: {}",
        cpu_s() - c,
        r.identities.len(),
        r.total_calls,
        verdict(secs <= 5.0)
    );
    let t = Instant::now();
    let md = report::render_html(&r);
    println!(
        "render html:       {:.1} ms ({} bytes)",
        t.elapsed().as_secs_f64() * 1e3,
        md.len()
    );
    let stats = store.stats();
    store.close()?;
    let disk = du(&dir);
    println!(
        "bytes on disk:     {disk} ({:.0} bytes/event; log payload {:.0} bytes/event)",
        disk as f64 / events as f64,
        stats.bytes as f64 / events as f64
    );
    // Offline reviewer commands open a private copy (sled writes when it opens a database);
    // the agent's own start no longer copies.
    let t = Instant::now();
    let ro = Store::open_read_only(&dir)?;
    println!(
        "read-only open:    {:.2} s (copies {disk} bytes to $TMPDIR; reviewer commands while the agent runs go through its API instead)",
        t.elapsed().as_secs_f64()
    );
    drop(ro);
    let t = Instant::now();
    Store::open(&dir, StoreConfig::default())?.close()?;
    println!(
        "agent open+close:  {:.2} s (no copy)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
