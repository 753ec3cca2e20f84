//! Blocks: the unit of the event log. One sled value holds up to [`BLOCK_EVENTS`] consecutive
//! events, keyed by the log key of its first event:
//!
//! ```text
//! [format 2]
//! [n: u32 LE]
//! n × [log key 16][prev hash 32][hash 32][JSON length u32 LE]   event table
//! [summary length u32 LE][summary]                               report summaries
//! [zstd frame of the n record JSONs, concatenated]
//! ```
//!
//! Each event keeps its own link of the hash chain (`hash = SHA-256(prev || JSON)`, see
//! [`crate::chain`]), so verification still names the exact event. The summary holds, per
//! event, the fields an access-review report needs (time, principal, access key, workload,
//! decision, error code, IAM action, resources) with the block's strings interned once, so
//! reports never decompress or parse JSON. Summaries are derived data: `verify` checks each
//! one against the record it summarises.

use crate::chain::Hash;
use crate::index::{KEY_LEN, Key, get_varint, put_varint, to_key};
use fxhash::FxHashMap;
use hoop_event::CallRecord;
use serde::Deserialize;
use std::borrow::Cow;

pub const BLOCK_FORMAT: u8 = 2;
/// Events per block (a block is sealed earlier at each write into sled).
pub const BLOCK_EVENTS: usize = 64;
/// zstd level: fast enough for ingest, most of the ratio of higher levels on JSON.
pub const ZSTD_LEVEL: i32 = 1;
const ENTRY_LEN: usize = KEY_LEN + 32 + 32 + 4;
const HEAD_LEN: usize = 1 + 4;
/// Per event, the quantity `max_bytes` bounds: the uncompressed size of the record as stored
/// in format 1 (key + chain header + JSON), so limits keep their meaning across formats.
pub const EVENT_OVERHEAD: u64 = (KEY_LEN + 1 + 32 + 32) as u64;

/// The report's view of one event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary<'a> {
    pub time_ns: u64,
    pub principal: Option<Cow<'a, str>>,
    pub access_key: Option<Cow<'a, str>>,
    pub workload: Cow<'a, str>,
    pub effect: Cow<'a, str>,
    pub error_code: Option<Cow<'a, str>>,
    pub action: Option<Cow<'a, str>>,
    pub resources: Vec<Cow<'a, str>>,
}

/// `Workload::name()` from the JSON fields.
fn workload_name(ns: Option<&str>, pod: Option<&str>, container: Option<&str>) -> String {
    match (ns, pod, container) {
        (Some(ns), Some(pod), _) => format!("{ns}/{pod}"),
        (_, _, Some(id)) => format!("container:{}", id.chars().take(12).collect::<String>()),
        _ => "host".to_string(),
    }
}

impl<'a> Summary<'a> {
    pub fn from_record(r: &'a CallRecord) -> Summary<'a> {
        Summary {
            time_ns: r.time_ns,
            principal: r.identity.principal_arn.as_deref().map(Cow::Borrowed),
            access_key: r.identity.access_key_id.as_deref().map(Cow::Borrowed),
            workload: Cow::Owned(workload_name(
                r.workload.namespace.as_deref(),
                r.workload.pod.as_deref(),
                r.workload.container_id.as_deref(),
            )),
            effect: Cow::Borrowed(&r.decision.effect),
            error_code: r
                .response
                .as_ref()
                .and_then(|x| x.error_code.as_deref())
                .map(Cow::Borrowed),
            action: r.aws.iam_action.as_deref().map(Cow::Borrowed),
            resources: r
                .aws
                .resources
                .iter()
                .map(|s| Cow::Borrowed(s.as_str()))
                .collect(),
        }
    }

    /// From stored JSON, parsing only the summarised fields.
    pub fn from_json(body: &'a [u8]) -> Option<Summary<'a>> {
        let v: View<'a> = serde_json::from_slice(body).ok()?;
        Some(v.into_summary())
    }

    /// `Identity::key()`.
    pub fn identity(&self) -> &str {
        self.principal
            .as_deref()
            .or(self.access_key.as_deref())
            .unwrap_or("unsigned")
    }
}

#[derive(Deserialize)]
struct VIdentity<'a> {
    #[serde(borrow, default)]
    access_key_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    principal_arn: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct VWorkload<'a> {
    #[serde(borrow, default)]
    container_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pod: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct VAws<'a> {
    #[serde(borrow, default)]
    iam_action: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resources: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct VResp<'a> {
    #[serde(borrow, default)]
    error_code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct VDecision<'a> {
    #[serde(borrow)]
    effect: Cow<'a, str>,
}

/// The summarised fields of a record, parsed without allocating the rest.
#[derive(Deserialize)]
struct View<'a> {
    time_ns: u64,
    #[serde(borrow)]
    identity: VIdentity<'a>,
    #[serde(borrow)]
    workload: VWorkload<'a>,
    #[serde(borrow)]
    aws: VAws<'a>,
    #[serde(borrow, default)]
    response: Option<VResp<'a>>,
    #[serde(borrow)]
    decision: VDecision<'a>,
}

impl<'a> View<'a> {
    fn into_summary(self) -> Summary<'a> {
        Summary {
            time_ns: self.time_ns,
            workload: Cow::Owned(workload_name(
                self.workload.namespace.as_deref(),
                self.workload.pod.as_deref(),
                self.workload.container_id.as_deref(),
            )),
            principal: self.identity.principal_arn,
            access_key: self.identity.access_key_id,
            effect: self.decision.effect,
            error_code: self.response.and_then(|r| r.error_code),
            action: self.aws.iam_action,
            resources: self.aws.resources,
        }
    }
}

/// Accumulates events into the next block.
#[derive(Default)]
pub struct Builder {
    table: Vec<u8>,
    bodies: Vec<u8>,
    dict: FxHashMap<String, u64>,
    dict_bytes: Vec<u8>,
    sums: Vec<u8>,
    n: usize,
    first: Option<Key>,
}

impl Builder {
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn intern(&mut self, s: &str) -> u64 {
        if let Some(&i) = self.dict.get(s) {
            return i;
        }
        let i = self.dict.len() as u64;
        put_varint(&mut self.dict_bytes, s.len() as u64);
        self.dict_bytes.extend_from_slice(s.as_bytes());
        self.dict.insert(s.to_string(), i);
        i
    }

    fn opt(&mut self, s: Option<&str>) -> u64 {
        s.map_or(0, |s| self.intern(s) + 1)
    }

    pub fn push(&mut self, key: &Key, prev: &Hash, hash: &Hash, body: &[u8], s: &Summary<'_>) {
        self.first.get_or_insert(*key);
        self.table.extend_from_slice(key);
        self.table.extend_from_slice(prev);
        self.table.extend_from_slice(hash);
        self.table
            .extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.bodies.extend_from_slice(body);
        let fields = [
            self.opt(s.principal.as_deref()),
            self.opt(s.access_key.as_deref()),
            self.intern(&s.workload),
            self.intern(&s.effect),
            self.opt(s.error_code.as_deref()),
            self.opt(s.action.as_deref()),
        ];
        self.sums.extend_from_slice(&s.time_ns.to_le_bytes());
        for x in fields {
            put_varint(&mut self.sums, x);
        }
        put_varint(&mut self.sums, s.resources.len() as u64);
        for r in &s.resources {
            let x = self.intern(r);
            put_varint(&mut self.sums, x);
        }
        self.n += 1;
    }

    /// Encode the block and start a new one. None when empty.
    pub fn seal(&mut self, comp: &mut Compressor) -> Option<(Key, Vec<u8>)> {
        let first = self.first.take()?;
        let packed = comp.compress(&self.bodies);
        let mut summary = Vec::with_capacity(self.dict_bytes.len() + self.sums.len() + 5);
        put_varint(&mut summary, self.dict.len() as u64);
        summary.extend_from_slice(&self.dict_bytes);
        summary.extend_from_slice(&self.sums);
        let mut v =
            Vec::with_capacity(HEAD_LEN + self.table.len() + 4 + summary.len() + packed.len());
        v.push(BLOCK_FORMAT);
        v.extend_from_slice(&(self.n as u32).to_le_bytes());
        v.extend_from_slice(&self.table);
        v.extend_from_slice(&(summary.len() as u32).to_le_bytes());
        v.extend_from_slice(&summary);
        v.extend_from_slice(&packed);
        self.table.clear();
        self.bodies.clear();
        self.dict.clear();
        self.dict_bytes.clear();
        self.sums.clear();
        self.n = 0;
        Some((first, v))
    }
}

/// A reusable zstd compression context.
pub struct Compressor(Option<zstd::bulk::Compressor<'static>>);

impl Default for Compressor {
    fn default() -> Self {
        Compressor(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok())
    }
}

impl Compressor {
    pub fn compress(&mut self, data: &[u8]) -> Vec<u8> {
        if let Some(c) = &mut self.0
            && let Ok(v) = c.compress(data)
        {
            return v;
        }
        // A fresh context (or, failing that, level-0 framing) rather than losing events.
        zstd::bulk::compress(data, ZSTD_LEVEL)
            .or_else(|_| zstd::bulk::compress(data, 0))
            .unwrap_or_default()
    }
}

/// One event of a block, as stored in its table.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub key: Key,
    pub prev: Hash,
    pub hash: Hash,
    pub len: usize,
}

/// A parsed block value (no decompression until [`BlockView::bodies`]).
pub struct BlockView<'a> {
    table: &'a [u8],
    summary: &'a [u8],
    packed: &'a [u8],
    n: usize,
}

impl<'a> BlockView<'a> {
    pub fn parse(v: &'a [u8]) -> Option<BlockView<'a>> {
        if *v.first()? != BLOCK_FORMAT {
            return None;
        }
        let n = u32::from_le_bytes(v.get(1..5)?.try_into().ok()?) as usize;
        if n == 0 {
            return None;
        }
        let tend = HEAD_LEN.checked_add(n.checked_mul(ENTRY_LEN)?)?;
        let table = v.get(HEAD_LEN..tend)?;
        let slen = u32::from_le_bytes(v.get(tend..tend + 4)?.try_into().ok()?) as usize;
        let summary = v.get(tend + 4..(tend + 4).checked_add(slen)?)?;
        let packed = v.get(tend + 4 + slen..)?;
        Some(BlockView {
            table,
            summary,
            packed,
            n,
        })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn entry(&self, i: usize) -> Option<Entry> {
        let e = self.table.get(i * ENTRY_LEN..(i + 1) * ENTRY_LEN)?;
        Some(Entry {
            key: to_key(&e[..KEY_LEN])?,
            prev: e[KEY_LEN..KEY_LEN + 32].try_into().ok()?,
            hash: e[KEY_LEN + 32..KEY_LEN + 64].try_into().ok()?,
            len: u32::from_le_bytes(e[KEY_LEN + 64..].try_into().ok()?) as usize,
        })
    }

    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        (0..self.n).filter_map(|i| self.entry(i))
    }

    pub fn key(&self, i: usize) -> Option<Key> {
        to_key(self.table.get(i * ENTRY_LEN..i * ENTRY_LEN + KEY_LEN)?)
    }

    pub fn last_key(&self) -> Option<Key> {
        self.key(self.n.checked_sub(1)?)
    }

    /// The concatenated JSON bodies, checked against the table's lengths.
    pub fn bodies(&self) -> Option<Vec<u8>> {
        let total: usize = self.entries().map(|e| e.len).sum();
        let out = zstd::bulk::decompress(self.packed, total).ok()?;
        (out.len() == total).then_some(out)
    }

    /// Every event with its JSON.
    pub fn events(&self) -> Option<Vec<RawEvent>> {
        let bodies = self.bodies()?;
        let mut at = 0;
        let mut out = Vec::with_capacity(self.n);
        for e in self.entries() {
            out.push(RawEvent {
                key: e.key,
                prev: e.prev,
                hash: e.hash,
                body: bodies.get(at..at + e.len)?.to_vec(),
            });
            at += e.len;
        }
        (out.len() == self.n).then_some(out)
    }

    /// Decode the summaries, calling `f(i, summary)` for each event in order. False when the
    /// summary section is malformed (the callback may have seen a prefix).
    pub fn for_each_summary(&self, mut f: impl FnMut(usize, &Summary<'a>)) -> bool {
        let b = self.summary;
        let mut i = 0usize;
        let Some(ndict) = get_varint(b, &mut i) else {
            return false;
        };
        let mut dict: Vec<&'a str> = Vec::with_capacity(ndict.min(4096) as usize);
        for _ in 0..ndict {
            let Some(len) = get_varint(b, &mut i) else {
                return false;
            };
            let Some(s) = b
                .get(i..i.saturating_add(len as usize))
                .and_then(|s| std::str::from_utf8(s).ok())
            else {
                return false;
            };
            dict.push(s);
            i += len as usize;
        }
        let get = |x: u64| dict.get(x as usize).map(|s| Cow::Borrowed(*s));
        let mut s = Summary::default();
        for n in 0..self.n {
            let Some(t) = b.get(i..i + 8).and_then(|t| t.try_into().ok()) else {
                return false;
            };
            i += 8;
            s.time_ns = u64::from_le_bytes(t);
            let mut f6 = [0u64; 6];
            for x in &mut f6 {
                let Some(v) = get_varint(b, &mut i) else {
                    return false;
                };
                *x = v;
            }
            let opt = |x: u64| {
                if x == 0 {
                    Some(None)
                } else {
                    get(x - 1).map(Some)
                }
            };
            let (Some(p), Some(a), Some(w), Some(d), Some(e), Some(act)) = (
                opt(f6[0]),
                opt(f6[1]),
                get(f6[2]),
                get(f6[3]),
                opt(f6[4]),
                opt(f6[5]),
            ) else {
                return false;
            };
            s.principal = p;
            s.access_key = a;
            s.workload = w;
            s.effect = d;
            s.error_code = e;
            s.action = act;
            s.resources.clear();
            let Some(nr) = get_varint(b, &mut i) else {
                return false;
            };
            for _ in 0..nr {
                let Some(r) = get_varint(b, &mut i).and_then(get) else {
                    return false;
                };
                s.resources.push(r);
            }
            f(n, &s);
        }
        i == b.len()
    }
}

/// An event with its JSON, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvent {
    pub key: Key,
    pub prev: Hash,
    pub hash: Hash,
    pub body: Vec<u8>,
}

/// Decode every event of a block value.
pub fn decode_events(v: &[u8]) -> Option<Vec<RawEvent>> {
    BlockView::parse(v)?.events()
}

/// Encode events into one block value keyed by the first event's key, deriving each summary
/// from the stored JSON (used by crash repair and retention when they rewrite a block).
pub fn encode_events(events: &[RawEvent], comp: &mut Compressor) -> Option<(Key, Vec<u8>)> {
    let mut b = Builder::default();
    for e in events {
        let s = Summary::from_json(&e.body).unwrap_or_default();
        b.push(&e.key, &e.prev, &e.hash, &e.body, &s);
    }
    b.seal(comp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::make_key;

    #[test]
    fn round_trip_and_summaries_match_records() {
        let mut g = crate::testgen::Gen::new(3, 10);
        let recs: Vec<CallRecord> = (0..100).map(|i| g.record(1_000 + i, false)).collect();
        let mut b = Builder::default();
        let mut comp = Compressor::default();
        let mut prev = [0u8; 32];
        for (i, r) in recs.iter().enumerate() {
            let body = serde_json::to_vec(r).expect("json");
            let h = crate::chain::hash(&prev, &body);
            let s = Summary::from_record(r);
            assert_eq!(Summary::from_json(&body).as_ref(), Some(&s));
            assert_eq!(s.identity(), r.identity.key());
            assert_eq!(s.workload, r.workload.name());
            b.push(&make_key(r.time_ns, i as u64), &prev, &h, &body, &s);
            prev = h;
        }
        let (k, v) = b.seal(&mut comp).expect("block");
        assert!(b.is_empty());
        assert_eq!(k, make_key(recs[0].time_ns, 0));
        let view = BlockView::parse(&v).expect("parse");
        assert_eq!(view.len(), 100);
        let evs = view.events().expect("events");
        let mut n = 0;
        assert!(view.for_each_summary(|i, s| {
            let body = &evs[i].body;
            assert_eq!(Some(s), Summary::from_json(body).as_ref());
            n += 1;
        }));
        assert_eq!(n, 100);
        let (k2, v2) = encode_events(&evs, &mut comp).expect("re-encode");
        assert_eq!((k2, &v2), (k, &v));
        assert!(
            BlockView::parse(&v[..v.len() - 3])
                .and_then(|b| b.events())
                .is_none()
        );
        assert!(BlockView::parse(b"\x01abc").is_none());
    }
}
