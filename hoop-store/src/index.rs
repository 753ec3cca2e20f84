//! Index trees. Each indexed field has a tree `idx:<field>` whose keys are
//! `escape(value) 0x00 batch_first_key(16)` and whose values are posting lists: the log keys
//! of that batch's events with that value, delta-encoded ([`encode_postings`]). One entry per (value, batch) instead of
//! one per event keeps ingest cheap; escaping keeps literal prefixes seekable for globs.

use hoop_event::CallRecord;

/// Length of a log key: big-endian key time (ns) + big-endian sequence.
pub const KEY_LEN: usize = 16;
pub type Key = [u8; KEY_LEN];

/// Indexed fields, in tree order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Identity = 0,
    Principal,
    AccessKey,
    Workload,
    Pid,
    Comm,
    Exe,
    Session,
    Connection,
    Service,
    Action,
    Resource,
    Decision,
}

pub const FIELDS: [Field; 13] = [
    Field::Identity,
    Field::Principal,
    Field::AccessKey,
    Field::Workload,
    Field::Pid,
    Field::Comm,
    Field::Exe,
    Field::Session,
    Field::Connection,
    Field::Service,
    Field::Action,
    Field::Resource,
    Field::Decision,
];

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Identity => "identity",
            Field::Principal => "principal",
            Field::AccessKey => "access_key",
            Field::Workload => "workload",
            Field::Pid => "pid",
            Field::Comm => "comm",
            Field::Exe => "exe",
            Field::Session => "session",
            Field::Connection => "connection",
            Field::Service => "service",
            Field::Action => "action",
            Field::Resource => "resource",
            Field::Decision => "decision",
        }
    }

    pub fn tree_name(self) -> String {
        format!("idx:{}", self.name())
    }

    pub fn from_u8(b: u8) -> Option<Field> {
        FIELDS.get(usize::from(b)).copied()
    }
}

pub fn make_key(time: u64, seq: u64) -> Key {
    let mut k = [0u8; KEY_LEN];
    k[..8].copy_from_slice(&time.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn key_time(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if k.len() >= 8 {
        b.copy_from_slice(&k[..8]);
    }
    u64::from_be_bytes(b)
}

pub fn key_seq(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if k.len() >= 16 {
        b.copy_from_slice(&k[8..16]);
    }
    u64::from_be_bytes(b)
}

pub fn to_key(b: &[u8]) -> Option<Key> {
    b.try_into().ok()
}

/// Escape so that 0x00 terminates the value: 0x00 → 01 01, 0x01 → 01 02.
pub fn escape(v: &str, out: &mut Vec<u8>) {
    for &b in v.as_bytes() {
        match b {
            0 => out.extend_from_slice(&[1, 1]),
            1 => out.extend_from_slice(&[1, 2]),
            _ => out.push(b),
        }
    }
}

pub fn unescape(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == 1 && i + 1 < b.len() {
            out.push(if b[i + 1] == 1 { 0 } else { 1 });
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Index key for an exact value and a batch.
pub fn index_key(value: &str, batch: &Key) -> Vec<u8> {
    let mut k = Vec::with_capacity(value.len() + 1 + KEY_LEN);
    escape(value, &mut k);
    k.push(0);
    k.extend_from_slice(batch);
    k
}

/// Split an index key into (escaped value, batch key).
pub fn split_index_key(k: &[u8]) -> Option<(&[u8], &[u8])> {
    if k.len() < KEY_LEN + 1 {
        return None;
    }
    let (v, rest) = k.split_at(k.len() - KEY_LEN - 1);
    if rest[0] != 0 {
        return None;
    }
    Some((v, &rest[1..]))
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn get_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let x = *b.get(*i)?;
        *i += 1;
        v |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A posting list: log keys in order, each as varint deltas of (key time, seq) from the
/// previous one (the first from zero): ~5 bytes a key instead of 16.
pub fn encode_postings<'a>(keys: impl IntoIterator<Item = &'a Key>, out: &mut Vec<u8>) {
    let (mut pt, mut ps) = (0u64, 0u64);
    for k in keys {
        let (t, s) = (key_time(k), key_seq(k));
        put_varint(out, t.wrapping_sub(pt));
        put_varint(out, s.wrapping_sub(ps));
        (pt, ps) = (t, s);
    }
}

/// Decode a posting list (stops at the first malformed byte).
pub fn decode_postings(v: &[u8], mut f: impl FnMut(Key)) {
    let (mut t, mut s) = (0u64, 0u64);
    let mut i = 0;
    while i < v.len() {
        let (Some(dt), Some(ds)) = (get_varint(v, &mut i), get_varint(v, &mut i)) else {
            return;
        };
        t = t.wrapping_add(dt);
        s = s.wrapping_add(ds);
        f(make_key(t, s));
    }
}

/// The values a record contributes to each index.
pub fn values(rec: &CallRecord, mut f: impl FnMut(Field, &str)) {
    f(Field::Identity, rec.identity.key());
    if let Some(p) = &rec.identity.principal_arn {
        f(Field::Principal, p);
    }
    if let Some(a) = &rec.identity.access_key_id {
        f(Field::AccessKey, a);
    }
    f(Field::Workload, &rec.workload.name());
    f(Field::Pid, &rec.process.pid.to_string());
    f(Field::Comm, &rec.process.comm);
    if let Some(e) = &rec.process.exe {
        f(Field::Exe, e);
    }
    if let Some(s) = &rec.process.session {
        f(Field::Session, &s.pid.to_string());
    }
    if !rec.connection.id.is_empty() {
        f(Field::Connection, &rec.connection.id);
    }
    f(Field::Service, &rec.aws.service);
    if let Some(a) = &rec.aws.iam_action {
        f(Field::Action, a);
    }
    for r in &rec.aws.resources {
        f(Field::Resource, r);
    }
    f(Field::Decision, &rec.decision.effect);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_round_trip() {
        let s = "a\u{0}b\u{1}c";
        let mut v = Vec::new();
        escape(s, &mut v);
        assert!(!v.contains(&0));
        assert_eq!(unescape(&v), s);
        let k = index_key(s, &make_key(5, 6));
        let (val, batch) = split_index_key(&k).expect("split");
        assert_eq!(unescape(val), s);
        assert_eq!(key_time(batch), 5);
        assert_eq!(key_seq(batch), 6);
    }

    #[test]
    fn postings_round_trip() {
        let keys = [
            make_key(5, 1),
            make_key(5, 2),
            make_key(90_000_000_000, 7),
            make_key(u64::MAX, u64::MAX),
        ];
        let mut v = Vec::new();
        encode_postings(&keys, &mut v);
        assert!(v.len() < 16 * keys.len());
        let mut got = Vec::new();
        decode_postings(&v, |k| got.push(k));
        assert_eq!(got, keys);
        got.clear();
        decode_postings(&v[..v.len() - 1], |k| got.push(k));
        assert_eq!(got, keys[..3]);
    }
}
