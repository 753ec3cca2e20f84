//! sled 0.34 after an abrupt stop: a snapshot file cut short makes every later open fail
//! (spacejam/sled#1527, #1533). The store sets such snapshots aside; a store sled cannot
//! open at all is moved aside and replaced by one whose chain continues from the old head.

mod common;
use common::*;
use hoop_store::{Filter, Store, StoreError, query};
use std::path::Path;

fn sled_files(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("sled"))
        .expect("rd")
        .map(|e| e.expect("e").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn cut_short_snapshots_are_set_aside() {
    for case in ["generating", "corrupt-newest"] {
        let dir = tempfile::tempdir().expect("tmp");
        let recs = records(2_000, 100, false, 7);
        let s = store_with(dir.path(), &recs);
        let head = s.stats().head;
        s.close().expect("close");
        // What an abrupt stop while sled writes a snapshot leaves behind: a partial newest
        // snapshot, which sled itself then reads and rejects with `Corruption`.
        let name = match case {
            "generating" => "snap.7FFFFFFFFFFFFFFF.generating",
            _ => "snap.7FFFFFFFFFFFFFFF",
        };
        std::fs::write(dir.path().join("sled").join(name), vec![0x5Au8; 1000]).expect("w");
        let s = Store::open(dir.path(), cfg()).expect("opens despite the cut-short snapshot");
        assert_eq!(s.stats().head, head, "{case}");
        assert_eq!(
            query::query(&s, &Filter::default()).expect("q").len(),
            recs.len(),
            "{case}: every event is there"
        );
        assert!(s.verify().ok, "{case}");
        s.close().expect("close");
        assert!(
            sled_files(dir.path(), name).is_empty(),
            "{case}: the bad snapshot is out of sled's way"
        );
        let q: Vec<_> = std::fs::read_dir(dir.path().join("quarantine"))
            .expect("quarantine dir")
            .collect();
        assert_eq!(q.len(), 1, "{case}: kept for inspection");
    }
}

#[test]
fn unopenable_store_is_moved_aside_and_the_chain_continues() {
    let root = tempfile::tempdir().expect("tmp");
    let dir = root.path().join("store");
    let recs = records(500, 100, false, 8);
    let s = store_with(&dir, &recs);
    let old_head = s.stats().head;
    s.close().expect("close");
    // Destroy the database file itself.
    let db = dir.join("sled/db");
    let len = std::fs::metadata(&db).expect("m").len() as usize;
    std::fs::write(&db, vec![0xA5u8; len]).expect("w");
    assert!(matches!(
        Store::open(&dir, cfg()),
        Err(StoreError::Corrupt { .. })
    ));
    let (s, pred) = Store::open_or_recover(&dir, cfg()).expect("recovers");
    let pred = pred.expect("replaced");
    assert_eq!(pred.head.as_deref(), Some(old_head.as_str()));
    assert!(
        Path::new(&pred.path).join("sled/db").exists(),
        "damaged store kept"
    );
    assert!(pred.path.contains("store.damaged-"), "{}", pred.path);
    // New events chain on from the old head.
    let more = records(50, 10, false, 9);
    for r in &more {
        s.append(r).expect("append");
    }
    s.close().expect("close");
    let s = Store::open(&dir, cfg()).expect("reopen");
    let v = s.verify();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.events, 50);
    assert_eq!(
        v.predecessor.as_ref().and_then(|p| p.head.clone()),
        Some(old_head.clone()),
        "verify names the old head"
    );
    let mut out = Vec::new();
    hoop_store::run_verify(&s, &Default::default(), &mut out).expect("verify");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains(&old_head) && text.contains("damaged"),
        "{text}"
    );
    // A foreign directory is never "recovered".
    let foreign = root.path().join("foreign");
    std::fs::create_dir(&foreign).expect("d");
    std::fs::write(foreign.join("x"), b"mine").expect("w");
    assert!(matches!(
        Store::open_or_recover(&foreign, cfg()),
        Err(StoreError::Foreign(_))
    ));
    assert!(foreign.join("x").exists());
}
