//! Crash safety: a child process ingests as fast as it can and reports what the store has
//! acknowledged as durable; the parent SIGKILLs it mid-ingest, reopens the store, and checks
//! that the chain verifies and nothing acknowledged is missing.

mod common;
use common::*;
use hoop_store::testgen::Gen;
use hoop_store::{Filter, Store, StoreConfig, query};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ENV: &str = "HOOP_STORE_CRASH_CHILD";
const INTERVAL: Duration = Duration::from_millis(250);

fn crash_cfg() -> StoreConfig {
    StoreConfig {
        flush_interval: INTERVAL,
        ..Default::default()
    }
}

/// The child half: runs only when re-executed by the parent test.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(ENV) else { return };
    let s = Store::open(&dir, crash_cfg()).expect("open");
    let mut g = Gen::new(99, 25);
    let mut durable = 0;
    // Runs until the parent kills it.
    let mut i = 0u64;
    loop {
        s.append(&g.record(BASE + i * 1000, false)).expect("append");
        if i % 1000 == 999 {
            println!("appended {}", i + 1);
        }
        i += 1;
        let d = s.durable_since_open();
        if d != durable {
            durable = d;
            println!("durable {d}");
        }
    }
}

#[test]
fn sigkill_during_ingest_loses_at_most_the_unflushed_interval() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut prev_total = 0u64;
    for round in 0..2 {
        let exe = std::env::current_exe().expect("exe");
        let mut child = Command::new(exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let (mut durable, mut appended, mut flushes) = (0u64, 0u64, 0);
        let start = Instant::now();
        while let Some(Ok(l)) = lines.next() {
            if let Some(n) = l.strip_prefix("durable ") {
                durable = n.parse().expect("n");
                flushes += 1;
            } else if let Some(n) = l.strip_prefix("appended ") {
                appended = n.parse().expect("n");
            }
            // Kill mid-ingest, some time after a flush, with plenty unflushed.
            if flushes >= 4 && appended > durable {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "child too slow");
        }
        // SAFETY: signalling our own child by its pid.
        let rc = unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        assert_eq!(rc, 0);
        let _ = child.wait();
        let before = {
            let s = Store::open_read_only(dir.path()).expect("read-only open after crash");
            s.stats().events
        };
        let s = Store::open(dir.path(), crash_cfg()).expect("reopen after SIGKILL");
        let v = s.verify();
        assert!(v.ok, "round {round}: chain after crash: {v:?}");
        let n = s.stats().events;
        assert_eq!(n, v.events);
        assert!(n >= before, "repair keeps what was readable");
        // Everything acknowledged durable in this round survived (the earlier rounds' events
        // are there too).
        let all = query::query(&s, &Filter::default()).expect("q");
        assert_eq!(all.len() as u64, n);
        let this_round = n - prev_total;
        assert!(
            this_round >= durable,
            "round {round}: {this_round} events recovered, {durable} acknowledged"
        );
        // The recovered events are exactly the child's first `this_round` records, in order.
        let mut g = Gen::new(99, 25);
        for (i, e) in all[prev_total as usize..].iter().enumerate() {
            assert_eq!(
                e.record,
                g.record(BASE + i as u64 * 1000, false),
                "event {i} of round {round}"
            );
        }
        eprintln!(
            "round {round}: acknowledged {durable}, printed appended {appended}, recovered {this_round} (lost at most {} unflushed)",
            (appended + 1000).saturating_sub(this_round)
        );
        // Indexes were repaired for the recovered tail: an index query sees every event.
        let by_decision: usize = [
            "allow",
            "audit",
            "deny",
            "would-deny",
            "approval-requested",
            "approved",
        ]
        .iter()
        .map(|d| {
            query::query(
                &s,
                &Filter {
                    decision: Some((*d).into()),
                    ..Default::default()
                },
            )
            .expect("q")
            .len()
        })
        .sum();
        assert_eq!(by_decision as u64, n, "index covers the recovered tail");
        // The chain continues after restart.
        s.append(&Gen::new(5, 3).record(BASE, false))
            .expect("append");
        assert!(s.verify().ok);
        s.close().expect("close");
        prev_total = n + 1;
    }
}
