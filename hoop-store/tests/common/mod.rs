#![allow(dead_code)]
use hoop_event::CallRecord;
use hoop_store::testgen::Gen;
use hoop_store::{Masker, Store, StoreConfig};
use std::path::Path;

pub const BASE: u64 = 1_795_564_800 * 1_000_000_000; // 2026-11-25T00:00:00Z
pub const SEC: u64 = 1_000_000_000;
pub const KEY: &[u8] = b"test-node-mask-key-0123456789abc";

pub fn cfg() -> StoreConfig {
    StoreConfig {
        max_batch: 500,
        ..Default::default()
    }
}

/// `n` masked records spread over `span_s` seconds from BASE, in time order.
pub fn records(n: usize, span_s: u64, plant: bool, seed: u64) -> Vec<CallRecord> {
    let mut g = Gen::new(seed, 25);
    let m = Masker::new(&[], KEY).expect("masker");
    (0..n)
        .map(|i| {
            let t = BASE + (i as u64) * span_s * SEC / n as u64;
            let mut r = g.record(t, plant);
            m.apply(&mut r);
            r
        })
        .collect()
}

pub fn store_with(dir: &Path, recs: &[CallRecord]) -> Store {
    let s = Store::open(dir, cfg()).expect("open");
    for r in recs {
        s.append(r).expect("append");
    }
    s.flush().expect("flush");
    s
}

/// Every file under `dir` with its bytes, sorted by path.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(p: &Path, v: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(p).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            if p.is_dir() {
                walk(&p, v)
            } else {
                v.push((p.display().to_string(), std::fs::read(&p).expect("read")));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, &mut v);
    v.sort();
    v
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
