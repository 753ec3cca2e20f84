//! Filtered queries that seek the index trees, and session replay.

use crate::filter::{Filter, glob_match, is_glob, literal_prefix};
use crate::index::{self, Field, KEY_LEN, Key, key_time, make_key, split_index_key, to_key};
use crate::store::{Store, StoreError, StoredEvent};

/// Above this many candidates, walking the time range beats point lookups.
const MAX_POINT_LOOKUPS: usize = 200_000;

/// Keys from one index for a pattern, limited to batches that can hold key times in
/// `[lo, hi]`.
fn index_keys(store: &Store, field: Field, pat: &str, lo: u64, hi: u64, span: u64) -> Vec<Key> {
    let t = &store.trees().idx[field as usize];
    let mut out = Vec::new();
    let mut take = |val: &[u8]| {
        for k in val.as_chunks::<KEY_LEN>().0 {
            let kt = key_time(k);
            if kt >= lo
                && kt <= hi
                && let Some(k) = to_key(k)
            {
                out.push(k);
            }
        }
    };
    if is_glob(pat) {
        let mut prefix = Vec::new();
        index::escape(literal_prefix(pat), &mut prefix);
        for (k, v) in t.scan_prefix(&prefix).filter_map(|r| r.ok()) {
            let Some((val, batch)) = split_index_key(&k) else {
                continue;
            };
            if key_time(batch) > hi || !glob_match(pat, &index::unescape(val)) {
                continue;
            }
            take(&v);
        }
    } else {
        let start = index::index_key(pat, &make_key(lo.saturating_sub(span), 0));
        let end = index::index_key(pat, &make_key(hi, u64::MAX));
        for (_, v) in t.range(start..=end).filter_map(|r| r.ok()) {
            take(&v);
        }
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
    let scan_range = |visit: &mut dyn FnMut(StoredEvent) -> bool| {
        for (k, v) in trees.log.range(lo_key..=hi_key).filter_map(|r| r.ok()) {
            if let Some(e) = Store::decode_event(&k, &v)
                && f.matches(&e.record)
                && !visit(e)
            {
                return;
            }
        }
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
            let tail: Vec<Key> = match tail_from {
                Some(t) => trees
                    .log
                    .range(t..)
                    .keys()
                    .filter_map(|k| k.ok().and_then(|k| to_key(&k)))
                    .collect(),
                None => trees
                    .log
                    .iter()
                    .keys()
                    .filter_map(|k| k.ok().and_then(|k| to_key(&k)))
                    .collect(),
            };
            if tail.len() <= MAX_POINT_LOOKUPS {
                keys.extend(tail);
                keys.sort_unstable();
                keys.dedup();
                for k in keys {
                    let Some(v) = trees.log.get(k)? else { continue };
                    if let Some(e) = Store::decode_event(&k, &v)
                        && f.matches(&e.record)
                        && !visit(e)
                    {
                        return Ok(());
                    }
                }
            } else {
                scan_range(&mut visit);
            }
        }
        _ => scan_range(&mut visit),
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
