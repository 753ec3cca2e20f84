//! Filtered queries that seek the index trees, and session replay.

use crate::block::{BlockView, RawEvent};
use crate::filter::{Filter, glob_match, is_glob, literal_prefix};
use crate::index::{self, Field, Key, key_time, make_key, split_index_key};
use crate::store::{Store, StoreError, StoredEvent, decode_event};
use std::ops::Bound;

/// Above this many candidates, walking the time range beats point lookups.
const MAX_POINT_LOOKUPS: usize = 200_000;

/// Keys from one index for a pattern, limited to batches that can hold key times in
/// `[lo, hi]`.
fn index_keys(store: &Store, field: Field, pat: &str, lo: u64, hi: u64, span: u64) -> Vec<Key> {
    let t = &store.trees().idx[field as usize];
    let mut out = Vec::new();
    let mut take = |val: &[u8]| {
        index::decode_postings(val, |k| {
            let kt = key_time(&k);
            if kt >= lo && kt <= hi {
                out.push(k);
            }
        });
    };
    // Posting lists of one value in the window: index keys are `value 0x00 batch_key`, so
    // the batches of a value are contiguous and time-ordered; a seek skips the older ones.
    let from = make_key(lo.saturating_sub(span), 0);
    let value_in_window = |value: &str, take: &mut dyn FnMut(&[u8])| {
        let start = index::index_key(value, &from);
        let stem = &start[..start.len() - index::KEY_LEN];
        for (k, v) in t.range(start.clone()..).filter_map(|r| r.ok()) {
            match k.strip_prefix(stem) {
                Some(batch) if key_time(batch) <= hi => take(&v),
                _ => break,
            }
        }
    };
    if is_glob(pat) {
        // Visit each distinct value under the glob's literal prefix once, seeking past the
        // rest of its entries, so the cost follows the values and the time window, not the
        // retention period.
        let mut prefix = Vec::new();
        index::escape(literal_prefix(pat), &mut prefix);
        let mut cur = prefix.clone();
        while let Some(Ok((k, _))) = t.range(cur.clone()..).next() {
            if !k.starts_with(&prefix) {
                break;
            }
            let Some((val, _)) = split_index_key(&k) else {
                cur = k.to_vec();
                cur.push(0);
                continue;
            };
            // Past every key of this value: `val 0x00 ff..ff`.
            cur = val.to_vec();
            cur.push(0);
            cur.extend_from_slice(&[0xff; index::KEY_LEN + 1]);
            let value = index::unescape(val);
            if glob_match(pat, &value) {
                value_in_window(&value, &mut take);
            }
        }
    } else {
        value_in_window(pat, &mut take);
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn intersect(a: Vec<Key>, b: &[Key]) -> Vec<Key> {
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// The (field, pattern) pairs of a filter that an index can answer. A glob with no literal
/// prefix would read the whole index, so it is left to the post-filter.
fn indexable(f: &Filter) -> Vec<(Field, String)> {
    let mut v = Vec::new();
    let mut add = |field, p: &Option<String>| {
        if let Some(p) = p
            && !literal_prefix(p).is_empty()
        {
            v.push((field, p.clone()));
        }
    };
    add(Field::Identity, &f.identity);
    add(Field::Principal, &f.principal);
    add(Field::AccessKey, &f.access_key);
    add(Field::Workload, &f.workload);
    add(Field::Comm, &f.comm);
    add(Field::Exe, &f.exe);
    add(Field::Service, &f.service);
    add(Field::Action, &f.action);
    add(Field::Resource, &f.resource);
    add(Field::Decision, &f.decision);
    if let Some(p) = f.pid {
        v.push((Field::Pid, p.to_string()));
    }
    if let Some(s) = &f.session {
        v.push((
            Field::Session,
            s.split('@').next().unwrap_or("").to_string(),
        ));
    }
    if let Some(c) = &f.connection {
        let id = match c.split_once(':') {
            Some((p, id)) if p.parse::<u32>().is_ok() => id,
            _ => c.as_str(),
        };
        v.push((Field::Connection, id.to_string()));
    }
    v
}

/// Run a filtered query: records in chronological (log) order.
pub fn query(store: &Store, f: &Filter) -> Result<Vec<StoredEvent>, StoreError> {
    let mut out = Vec::new();
    for_each(store, f, |e| {
        out.push(e);
        f.limit.is_none_or(|l| out.len() < l)
    })?;
    Ok(out)
}

/// Visit matching records in log order; the callback returns false to stop.
pub fn for_each(
    store: &Store,
    f: &Filter,
    visit: impl FnMut(StoredEvent) -> bool,
) -> Result<(), StoreError> {
    for_each_sized(store, f, None, visit)
}

/// Like [`for_each`], first telling `total` (when given) how many candidates it will check:
/// an upper bound on the matches, for a progress bar.
pub fn for_each_sized(
    store: &Store,
    f: &Filter,
    mut total: Option<&mut dyn FnMut(u64)>,
    mut visit: impl FnMut(StoredEvent) -> bool,
) -> Result<(), StoreError> {
    if f.limit == Some(0) {
        return Ok(());
    }
    let (span, skew, checkpoint) = store.bounds();
    let trees = store.trees();
    let lo = f.since.unwrap_or(0);
    let hi = f.until.map(|u| u.saturating_add(skew)).unwrap_or(u64::MAX);
    let lo_key = make_key(lo, 0);
    let hi_key = make_key(hi, u64::MAX);
    let mut candidates: Option<Vec<Key>> = None;
    for (field, pat) in indexable(f) {
        let keys = index_keys(store, field, &pat, lo, hi, span);
        candidates = Some(match candidates {
            None => keys,
            Some(c) => intersect(c, &keys),
        });
        if candidates.as_ref().is_some_and(|c| c.is_empty()) {
            break;
        }
    }
    let emit = |e: &RawEvent, visit: &mut dyn FnMut(StoredEvent) -> bool| -> bool {
        match decode_event(e) {
            Some(ev) if f.matches(&ev.record) => visit(ev),
            _ => true,
        }
    };
    let hi_bound = if hi == u64::MAX {
        Bound::Unbounded
    } else {
        Bound::Included(hi_key)
    };
    match candidates {
        Some(mut keys) if keys.len() <= MAX_POINT_LOOKUPS => {
            // Events past the last complete batch may be unindexed (an unclean stop seen
            // read-only): check them too.
            let tail_from = checkpoint.map(|c| {
                let mut n = c.to_vec();
                n.push(0);
                n
            });
            let mut tail: Vec<Key> = Vec::new();
            for (_, v) in trees
                .log
                .range(tail_from.unwrap_or_default()..)
                .filter_map(|r| r.ok())
            {
                if let Some(b) = BlockView::parse(&v) {
                    tail.extend(b.entries().map(|e| e.key));
                }
                if tail.len() > MAX_POINT_LOOKUPS {
                    break;
                }
            }
            if tail.len() <= MAX_POINT_LOOKUPS {
                keys.extend(tail.into_iter().filter(|k| *k >= lo_key && *k <= hi_key));
                keys.sort_unstable();
                keys.dedup();
                if let Some(t) = total.as_mut() {
                    t(keys.len() as u64);
                }
                // The decoded block holding the previous key: (first key, last key, events).
                let mut cur: Option<(Key, Key, Vec<RawEvent>)> = None;
                for k in keys {
                    if !cur.as_ref().is_some_and(|(a, b, _)| k >= *a && k <= *b) {
                        cur = None;
                        if let Some((_, v)) = trees.log.range(..=&k[..]).next_back().transpose()?
                            && let Some(evs) = BlockView::parse(&v).and_then(|b| b.events())
                            && let (Some(a), Some(b)) = (evs.first(), evs.last())
                        {
                            cur = Some((a.key, b.key, evs));
                        }
                    }
                    let Some((_, _, evs)) = &cur else { continue };
                    let Ok(i) = evs.binary_search_by(|e| e.key.cmp(&k)) else {
                        continue;
                    };
                    if !emit(&evs[i], &mut visit) {
                        return Ok(());
                    }
                }
                return Ok(());
            }
        }
        _ => {}
    }
    if let Some(t) = total.as_mut() {
        // Counting reads only the blocks' tables, not their compressed records.
        let mut n = 0u64;
        for (_, v) in store.blocks(lo_key, hi_bound) {
            if let Some(b) = BlockView::parse(&v) {
                n += b
                    .entries()
                    .filter(|e| e.key >= lo_key && e.key <= hi_key)
                    .count() as u64;
            }
        }
        t(n);
    }
    for (_, v) in store.blocks(lo_key, hi_bound) {
        let Some(evs) = BlockView::parse(&v).and_then(|b| b.events()) else {
            continue;
        };
        for e in evs.iter().filter(|e| e.key >= lo_key && e.key <= hi_key) {
            if !emit(e, &mut visit) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// What `replay` follows.
#[derive(Clone, Debug, PartialEq)]
pub enum Session {
    /// A process tree: the session root's pid and, to tell pid reuse apart, its start time.
    ProcessTree {
        pid: u32,
        start_time: Option<String>,
    },
    /// One TLS connection (library connection id), optionally within one process.
    Connection { id: String, pid: Option<u32> },
}

/// One session as a chronological list of calls.
pub fn replay(
    store: &Store,
    s: &Session,
    since: Option<u64>,
    until: Option<u64>,
) -> Result<Vec<StoredEvent>, StoreError> {
    let base = Filter {
        since,
        until,
        ..Default::default()
    };
    let mut out = match s {
        Session::ProcessTree { pid, start_time } => {
            let session = match start_time {
                Some(st) => format!("{pid}@{st}"),
                None => pid.to_string(),
            };
            let mut v = query(
                store,
                &Filter {
                    session: Some(session),
                    ..base.clone()
                },
            )?;
            // The root itself, when its records carry no session.
            let root = query(
                store,
                &Filter {
                    pid: Some(*pid),
                    ..base
                },
            )?;
            v.extend(root.into_iter().filter(|e| {
                e.record.process.session.is_none()
                    && start_time
                        .as_ref()
                        .is_none_or(|st| e.record.process.start_time.as_ref() == Some(st))
            }));
            v
        }
        Session::Connection { id, pid } => query(
            store,
            &Filter {
                connection: Some(match pid {
                    Some(p) => format!("{p}:{id}"),
                    None => id.clone(),
                }),
                ..base
            },
        )?,
    };
    out.sort_by_key(|e| (e.record.time_ns, e.seq));
    out.dedup_by_key(|e| e.seq);
    Ok(out)
}
