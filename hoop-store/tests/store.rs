mod common;
use common::*;
use hoop_event::CallRecord;
use hoop_store::block::{self, RawEvent};
use hoop_store::chain::BreakKind;
use hoop_store::filter::glob_match;
use hoop_store::{Filter, Store, StoreError, query};
use std::collections::BTreeSet;
use std::time::Duration;

fn seqs(v: &[hoop_store::StoredEvent]) -> Vec<u64> {
    v.iter().map(|e| e.record.time_ns).collect()
}

fn expect(all: &[CallRecord], pred: impl Fn(&CallRecord) -> bool) -> Vec<u64> {
    all.iter().filter(|r| pred(r)).map(|r| r.time_ns).collect()
}

#[test]
fn queries_by_each_filter() {
    let dir = tempfile::tempdir().expect("tmp");
    let all = records(3000, 86_400, false, 7);
    let s = store_with(dir.path(), &all);
    let r0 = all[1234..]
        .iter()
        .find(|r| r.identity.principal_arn.is_some() && r.identity.access_key_id.is_some())
        .expect("a signed record");
    let id = r0.identity.key().to_string();
    let cases: Vec<(Filter, Vec<u64>)> = vec![
        (
            Filter {
                identity: Some(id.clone()),
                ..Default::default()
            },
            expect(&all, |r| r.identity.key() == id),
        ),
        (
            Filter {
                principal: Some("arn:aws:iam::*:user/*".into()),
                ..Default::default()
            },
            expect(&all, |r| {
                r.identity
                    .principal_arn
                    .as_deref()
                    .is_some_and(|p| p.contains(":user/"))
            }),
        ),
        (
            Filter {
                access_key: r0.identity.access_key_id.clone(),
                ..Default::default()
            },
            expect(&all, |r| {
                r.identity.access_key_id == r0.identity.access_key_id
            }),
        ),
        (
            Filter {
                workload: Some(r0.workload.name()),
                ..Default::default()
            },
            expect(&all, |r| r.workload.name() == r0.workload.name()),
        ),
        (
            Filter {
                pid: Some(r0.process.pid),
                ..Default::default()
            },
            expect(&all, |r| r.process.pid == r0.process.pid),
        ),
        (
            Filter {
                comm: Some("node".into()),
                ..Default::default()
            },
            expect(&all, |r| r.process.comm == "node"),
        ),
        (
            Filter {
                exe: Some("/usr/bin/terraform".into()),
                ..Default::default()
            },
            expect(&all, |r| {
                r.process.exe.as_deref() == Some("/usr/bin/terraform")
            }),
        ),
        (
            Filter {
                session: Some(format!("{}", r0.process.session.as_ref().expect("s").pid)),
                ..Default::default()
            },
            expect(&all, |r| {
                r.process.session.as_ref().map(|s| s.pid)
                    == r0.process.session.as_ref().map(|s| s.pid)
            }),
        ),
        (
            Filter {
                connection: Some(format!("{}:{}", r0.process.pid, r0.connection.id)),
                ..Default::default()
            },
            expect(&all, |r| {
                r.connection.id == r0.connection.id && r.process.pid == r0.process.pid
            }),
        ),
        (
            Filter {
                service: Some("dynamodb".into()),
                ..Default::default()
            },
            expect(&all, |r| r.aws.service == "dynamodb"),
        ),
        (
            Filter {
                action: Some("s3:Get*".into()),
                ..Default::default()
            },
            expect(&all, |r| {
                r.aws
                    .iam_action
                    .as_deref()
                    .is_some_and(|a| a.starts_with("s3:Get"))
            }),
        ),
        (
            Filter {
                action: Some("*:Describe*".into()),
                ..Default::default()
            },
            expect(&all, |r| {
                r.aws
                    .iam_action
                    .as_deref()
                    .is_some_and(|a| a.contains(":Describe"))
            }),
        ),
        (
            Filter {
                resource: Some("arn:aws:s3:::data-2/*".into()),
                ..Default::default()
            },
            expect(&all, |r| {
                r.aws
                    .resources
                    .iter()
                    .any(|x| x.starts_with("arn:aws:s3:::data-2/"))
            }),
        ),
        (
            Filter {
                decision: Some("deny".into()),
                ..Default::default()
            },
            expect(&all, |r| r.decision.effect == "deny"),
        ),
        (
            Filter {
                since: Some(BASE + 80_000 * SEC),
                ..Default::default()
            },
            expect(&all, |r| r.time_ns >= BASE + 80_000 * SEC),
        ),
        (
            Filter {
                since: Some(BASE + 3600 * SEC),
                until: Some(BASE + 7200 * SEC),
                ..Default::default()
            },
            expect(&all, |r| {
                r.time_ns >= BASE + 3600 * SEC && r.time_ns <= BASE + 7200 * SEC
            }),
        ),
        (
            // A glob bounded by a window: each value's posting lists are read from the
            // window's start (a seek), not over the whole retention.
            Filter {
                resource: Some("arn:aws:s3:::data-*".into()),
                since: Some(BASE + 20_000 * SEC),
                until: Some(BASE + 30_000 * SEC),
                ..Default::default()
            },
            expect(&all, |r| {
                r.aws
                    .resources
                    .iter()
                    .any(|a| glob_match("arn:aws:s3:::data-*", a))
                    && r.time_ns >= BASE + 20_000 * SEC
                    && r.time_ns <= BASE + 30_000 * SEC
            }),
        ),
        (
            Filter {
                identity: Some(id.clone()),
                action: Some("s3:*".into()),
                since: Some(BASE + 40_000 * SEC),
                ..Default::default()
            },
            expect(&all, |r| {
                r.identity.key() == id
                    && r.aws
                        .iam_action
                        .as_deref()
                        .is_some_and(|a| glob_match("s3:*", a))
                    && r.time_ns >= BASE + 40_000 * SEC
            }),
        ),
    ];
    for (f, want) in cases {
        assert!(!want.is_empty(), "test data should cover {f:?}");
        let got = query::query(&s, &f).expect("query");
        let got = seqs(&got);
        assert!(
            got == want,
            "filter {f:?}: got {} records, want {}",
            got.len(),
            want.len()
        );
    }
    let limited = query::query(
        &s,
        &Filter {
            limit: Some(5),
            ..Default::default()
        },
    )
    .expect("q");
    assert_eq!(seqs(&limited), expect(&all, |_| true)[..5].to_vec());
    // Same answers from a read-only copy after close.
    drop(s);
    let ro = Store::open_read_only(dir.path()).expect("ro");
    let got = query::query(
        &ro,
        &Filter {
            identity: Some(id.clone()),
            ..Default::default()
        },
    )
    .expect("q");
    assert_eq!(seqs(&got), expect(&all, |r| r.identity.key() == id));
    assert!(matches!(ro.append(&all[0]), Err(StoreError::ReadOnly)));
}

#[test]
fn replay_session_and_connection() {
    let dir = tempfile::tempdir().expect("tmp");
    let all = records(800, 3600, false, 3);
    let s = store_with(dir.path(), &all);
    let r0 = &all[10];
    let root = r0.process.session.as_ref().expect("session");
    let sess = hoop_store::Session::ProcessTree {
        pid: root.pid,
        start_time: root.start_time.clone(),
    };
    let got = query::replay(&s, &sess, None, None).expect("replay");
    assert_eq!(
        seqs(&got),
        expect(&all, |r| r.process.session.as_ref().map(|x| x.pid)
            == Some(root.pid))
    );
    let wrong = hoop_store::Session::ProcessTree {
        pid: root.pid,
        start_time: Some("1999-01-01T00:00:00Z".into()),
    };
    assert!(
        query::replay(&s, &wrong, None, None)
            .expect("replay")
            .is_empty()
    );
    let conn = hoop_store::Session::Connection {
        id: r0.connection.id.clone(),
        pid: Some(r0.process.pid),
    };
    let got = query::replay(&s, &conn, None, None).expect("replay");
    assert_eq!(
        seqs(&got),
        expect(&all, |r| r.connection.id == r0.connection.id
            && r.process.pid == r0.process.pid)
    );
    let mut out = Vec::new();
    let args = hoop_store::ReplayArgs {
        session: Some(root.pid.to_string()),
        ..Default::default()
    };
    hoop_store::run_replay(&s, &args, &mut out).expect("run");
    let text = String::from_utf8(out).expect("utf8");
    assert!(
        text.contains("decision ") && text.contains("  > "),
        "{text}"
    );
}

#[test]
fn chain_survives_restart_and_counts() {
    let dir = tempfile::tempdir().expect("tmp");
    let all = records(1000, 3600, false, 5);
    let s = store_with(dir.path(), &all[..600]);
    assert_eq!(s.stats().events, 600);
    s.close().expect("close");
    let s = Store::open(dir.path(), cfg()).expect("reopen");
    assert_eq!(s.stats().events, 600);
    for r in &all[600..] {
        s.append(r).expect("append");
    }
    let v = s.verify();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.events, 1000);
    let st = s.stats();
    assert_eq!(st.events, 1000);
    assert!(st.bytes > 1000 * 100);
    s.close().expect("close");
}

/// Edit the stored events directly in sled, as someone with write access to the files
/// could: decode every block, let `f` change the event list, and write the log back as
/// blocks of the same format (re-deriving the report summaries from the edited JSON).
fn tamper(dir: &std::path::Path, f: impl FnOnce(&mut Vec<RawEvent>)) {
    let db = sled::open(dir.join("sled")).expect("sled");
    let log = db.open_tree("log").expect("log");
    let mut events: Vec<RawEvent> = log
        .iter()
        .flat_map(|r| {
            let (_, v) = r.expect("kv");
            block::decode_events(&v).expect("a hoop block")
        })
        .collect();
    f(&mut events);
    log.clear().expect("clear");
    let mut comp = block::Compressor::default();
    for chunk in events.chunks(block::BLOCK_EVENTS) {
        let (k, v) = block::encode_events(chunk, &mut comp).expect("encode");
        log.insert(k, v).expect("insert");
    }
    db.flush().expect("flush");
}

/// Swap two stored events' contents (chain links and record), leaving the keys in place.
fn swap_contents(events: &mut [RawEvent], a: usize, b: usize) {
    let (ka, kb) = (events[a].key, events[b].key);
    events.swap(a, b);
    events[a].key = ka;
    events[b].key = kb;
}

#[test]
fn verify_detects_modified_deleted_reordered() {
    let all = records(300, 3600, false, 9);
    let setup = || {
        let dir = tempfile::tempdir().expect("tmp");
        store_with(dir.path(), &all).close().expect("close");
        dir
    };
    let check = |dir: &tempfile::TempDir, kind: BreakKind, pos: u64| {
        let s = Store::open_read_only(dir.path()).expect("ro");
        let r = s.verify();
        assert!(!r.ok);
        let e = r.first_broken.expect("broken");
        assert_eq!((e.kind, e.position), (kind, pos), "{e}");
        let mut out = Vec::new();
        let err = hoop_store::run_verify(&s, &Default::default(), &mut out)
            .expect_err("broken chain is an error");
        assert!(err.to_string().contains("chain broken"), "{err}");
    };
    // Modified: flip the decision inside the stored JSON of event 100.
    let dir = setup();
    tamper(dir.path(), |evs| {
        let s = String::from_utf8(evs[100].body.clone()).expect("json");
        let changed = s.replacen("\"effect\":\"", "\"effect\":\"x", 1);
        assert_ne!(s, changed);
        evs[100].body = changed.into_bytes();
    });
    check(&dir, BreakKind::Modified, 100);
    // Deleted: remove event 50; event 51 (now at position 50) names a missing predecessor.
    let dir = setup();
    tamper(dir.path(), |evs| {
        evs.remove(50);
    });
    check(&dir, BreakKind::Deleted, 50);
    // Reordered: swap the values of events 20 and 21.
    let dir = setup();
    tamper(dir.path(), |evs| swap_contents(evs, 20, 21));
    check(&dir, BreakKind::Reordered, 20);
    // Removed at the end: the recorded head no longer matches.
    let dir = setup();
    tamper(dir.path(), |evs| {
        evs.pop();
    });
    check(&dir, BreakKind::Truncated, 299);
    // A report summary changed without its record (a report would lie): named too.
    let dir = setup();
    {
        let db = sled::open(dir.path().join("sled")).expect("sled");
        let log = db.open_tree("log").expect("log");
        let (k, v) = log.iter().nth(2).expect("third block").expect("kv");
        let evs = block::decode_events(&v).expect("block");
        let mut b = block::Builder::default();
        for (i, e) in evs.iter().enumerate() {
            let mut s = block::Summary::from_json(&e.body).expect("summary");
            if i == 5 {
                s.effect = "tampered".into();
            }
            b.push(&e.key, &e.prev, &e.hash, &e.body, &s);
        }
        let (nk, nv) = b.seal(&mut block::Compressor::default()).expect("seal");
        assert_eq!(&nk[..], &k[..]);
        log.insert(k, nv).expect("insert");
        db.flush().expect("flush");
    }
    check(
        &dir,
        BreakKind::Modified,
        2 * block::BLOCK_EVENTS as u64 + 5,
    );
    // Untouched store verifies.
    let dir = setup();
    let s = Store::open_read_only(dir.path()).expect("ro");
    assert!(s.verify().ok);
}

#[test]
fn raw_files_never_hold_planted_secrets() {
    use hoop_store::testgen::*;
    let dir = tempfile::tempdir().expect("tmp");
    // Unmasked, the generator really plants them.
    let mut g = Gen::new(1, 25);
    let raw: String = (0..400)
        .map(|i| serde_json::to_string(&g.record(BASE + i, true)).expect("j"))
        .collect();
    for s in [
        SECRET_STRING,
        SECRET_ACCESS_KEY,
        SESSION_TOKEN,
        SIGNATURE,
        SSM_VALUE,
        KMS_PLAINTEXT,
        LAMBDA_ENV_VALUE,
        OBJECT_BODY,
    ] {
        assert!(raw.contains(s), "generator plants {s}");
    }
    let recs = records(2000, 600, true, 1);
    let s = store_with(dir.path(), &recs);
    s.close().expect("close");
    let mut files = snapshot(dir.path());
    assert!(files.len() >= 3);
    // The log is compressed on disk: search the decompressed records as well as the raw
    // files (the raw bytes were taken before opening sled again).
    {
        let db = sled::open(dir.path().join("sled")).expect("sled");
        let log = db.open_tree("log").expect("log");
        let mut n = 0;
        for r in log.iter() {
            let (k, v) = r.expect("kv");
            for e in block::decode_events(&v).expect("a hoop block") {
                files.push((format!("decompressed event {k:?}/{n}"), e.body));
                n += 1;
            }
        }
        assert_eq!(n, 2000);
    }
    for (name, bytes) in &files {
        for secret in [
            SECRET_STRING,
            SECRET_ACCESS_KEY,
            SESSION_TOKEN,
            SIGNATURE,
            SSM_VALUE,
            KMS_PLAINTEXT,
            LAMBDA_ENV_VALUE,
            OBJECT_BODY,
        ] {
            assert!(
                !contains(bytes, secret.as_bytes()),
                "{secret} found in {name}"
            );
        }
    }
    // The masked token is there instead, and correlates.
    let m = hoop_store::Masker::new(&[], KEY).expect("m");
    let tok = m.token(SECRET_STRING);
    assert!(files.iter().any(|(_, b)| contains(b, tok.as_bytes())));
}

#[test]
fn retention_removes_exactly_what_is_due() {
    let dir = tempfile::tempdir().expect("tmp");
    let all = records(2000, 2000, false, 11); // one event per second
    let s = store_with(dir.path(), &all);
    let total_bytes = s.stats().bytes;
    // By age: now = BASE+2000s, max age 1500 s → events before BASE+500s go.
    let st = s
        .retain(Some(Duration::from_secs(1500)), None, BASE + 2000 * SEC)
        .expect("retain");
    let due = all.iter().filter(|r| r.time_ns < BASE + 500 * SEC).count() as u64;
    assert_eq!(st.removed_events, due);
    assert_eq!(s.stats().events, 2000 - due);
    let left = query::query(&s, &Filter::default()).expect("q");
    assert_eq!(
        left.first().map(|e| e.record.time_ns),
        Some(BASE + 500 * SEC)
    );
    // Index entries went too: an index query sees only remaining events.
    let id = all[0].identity.key().to_string();
    let got = query::query(
        &s,
        &Filter {
            identity: Some(id.clone()),
            ..Default::default()
        },
    )
    .expect("q");
    assert_eq!(
        seqs(&got),
        expect(&all, |r| r.identity.key() == id
            && r.time_ns >= BASE + 500 * SEC)
    );
    assert!(s.verify().ok, "chain still verifies from the new anchor");
    // By size: keep at most half the original bytes; exactly the oldest needed go.
    let before = s.stats();
    let limit = total_bytes / 2;
    let st2 = s
        .retain(None, Some(limit), BASE + 2000 * SEC)
        .expect("retain");
    let after = s.stats();
    assert!(after.bytes <= limit, "{} > {limit}", after.bytes);
    assert_eq!(before.bytes - st2.removed_bytes, after.bytes);
    let remaining = query::query(&s, &Filter::default()).expect("q");
    assert_eq!(remaining.len() as u64, after.events);
    // One event fewer removed would have been over the limit.
    let first_removed_size = {
        let gone: Vec<_> = all[due as usize..(due + st2.removed_events) as usize].to_vec();
        let last = gone.last().expect("some removed");
        16 + 65 + serde_json::to_vec(last).expect("j").len() as u64
    };
    assert!(after.bytes + first_removed_size > limit);
    assert!(s.verify().ok);
    s.close().expect("close");
    let s = Store::open(dir.path(), cfg()).expect("reopen");
    assert_eq!(s.stats().events, after.events);
    assert!(s.verify().ok);
}

#[test]
fn foreign_and_corrupt_directories_are_left_alone() {
    // Foreign: a directory with someone else's files.
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("notes.txt"), b"mine").expect("w");
    std::fs::create_dir(dir.path().join("db")).expect("d");
    std::fs::write(dir.path().join("db/conf"), b"other").expect("w");
    let before = snapshot(dir.path());
    let e = Store::open(dir.path(), cfg()).err().expect("refused");
    assert!(matches!(e, StoreError::Foreign(_)), "{e}");
    assert!(e.to_string().contains("not a hoop store"), "{e}");
    assert!(matches!(
        Store::open_read_only(dir.path()),
        Err(StoreError::Foreign(_))
    ));
    assert_eq!(snapshot(dir.path()), before);

    // Newer format marker.
    let dir = tempfile::tempdir().expect("tmp");
    store_with(dir.path(), &records(10, 10, false, 1))
        .close()
        .expect("close");
    std::fs::write(dir.path().join("HOOP-STORE"), b"hoop-store format 9\n").expect("w");
    let before = snapshot(dir.path());
    let e = Store::open(dir.path(), cfg()).err().expect("refused");
    assert!(e.to_string().contains("format \"9\""), "{e}");
    assert_eq!(snapshot(dir.path()), before);

    // Corrupt: the sled files overwritten with garbage.
    for how in ["garbage", "truncate"] {
        let dir = tempfile::tempdir().expect("tmp");
        store_with(dir.path(), &records(500, 100, false, 2))
            .close()
            .expect("close");
        for entry in std::fs::read_dir(dir.path().join("sled")).expect("rd") {
            let p = entry.expect("e").path();
            if p.is_file() {
                let len = std::fs::metadata(&p).expect("m").len() as usize;
                match how {
                    "garbage" => std::fs::write(&p, vec![0xA5u8; len]).expect("w"),
                    _ => std::fs::write(&p, b"").expect("w"),
                }
            }
        }
        let before = snapshot(dir.path());
        let e = Store::open_read_only(dir.path()).err().expect("refused");
        assert!(matches!(e, StoreError::Corrupt { .. }), "{how}: {e}");
        assert_eq!(snapshot(dir.path()), before, "{how}: files unchanged");
        // The writer may set sled snapshots aside while trying (see recovery.rs), but a
        // store it cannot read stays an error for Store::open.
        let e = Store::open(dir.path(), cfg()).err().expect("refused");
        assert!(matches!(e, StoreError::Corrupt { .. }), "{how}: {e}");
        assert!(e.to_string().contains("corrupt store"), "{e}");
    }

    // Missing directory, read-only: no store, nothing created.
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("nope");
    assert!(matches!(
        Store::open_read_only(&missing),
        Err(StoreError::Missing(_))
    ));
    assert!(!missing.exists());
}

#[test]
fn read_only_open_writes_nothing_and_locked_store_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store_with(dir.path(), &records(300, 100, false, 4));
    // While the writer holds it, a reader is told to use the agent.
    let e = Store::open_read_only(dir.path()).err().expect("locked");
    assert!(matches!(e, StoreError::Locked(_)), "{e}");
    s.close().expect("close");
    let before = snapshot(dir.path());
    let ro = Store::open_read_only(dir.path()).expect("ro");
    assert_eq!(query::query(&ro, &Filter::default()).expect("q").len(), 300);
    assert!(ro.verify().ok);
    drop(ro);
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn unknown_filter_and_bad_time_are_clear_errors() {
    let args = hoop_store::QueryArgs {
        filter: hoop_store::cli::FilterArgs {
            filter: vec!["colour=red".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let dir = tempfile::tempdir().expect("tmp");
    let s = store_with(dir.path(), &records(10, 10, false, 1));
    let e = hoop_store::run_query(&s, &args, &mut Vec::new()).expect_err("unknown");
    assert!(e.to_string().contains("unknown filter \"colour\""), "{e}");
    let args = hoop_store::QueryArgs {
        filter: hoop_store::cli::FilterArgs {
            since: Some("last tuesday".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let e = hoop_store::run_query(&s, &args, &mut Vec::new()).expect_err("bad time");
    assert!(e.to_string().contains("bad time"), "{e}");
    for format in [
        hoop_store::cli::QueryFormat::Table,
        hoop_store::cli::QueryFormat::Json,
        hoop_store::cli::QueryFormat::Jsonl,
    ] {
        let mut out = Vec::new();
        let args = hoop_store::QueryArgs {
            format,
            ..Default::default()
        };
        hoop_store::run_query(&s, &args, &mut out).expect("query");
        assert!(!out.is_empty());
    }
    let ids: BTreeSet<String> = query::query(&s, &Filter::default())
        .expect("q")
        .iter()
        .map(|e| e.record.identity.key().to_string())
        .collect();
    assert!(!ids.is_empty());
}
