//! Tamper evidence. Every stored event carries `[prev hash 32][hash 32]` beside its record
//! JSON (in its block's table, see [`crate::block`]) with `hash = SHA-256(prev || JSON)`: the JSON bytes as stored are the canonical bytes, so
//! verification never depends on re-serialising. The first event after retention is anchored
//! by the `anchor` hash kept in the meta tree; the last by the recorded head.

use crate::index::{Key, key_seq, key_time};
use crate::timefmt::rfc3339;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn hash(prev: &Hash, body: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

/// How a link broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakKind {
    /// The record bytes no longer hash to the stored hash.
    Modified,
    /// The predecessor this event names is nowhere in the log: deleted (or rewritten).
    Deleted,
    /// The predecessor this event names, or the expected successor, appears elsewhere.
    Reordered,
    /// The stored value is not in hoop's format.
    Malformed,
    /// The log ends before the recorded head: events at the end were removed.
    Truncated,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("chain broken at event #{position} (seq {seq}, {time}): {kind:?}: {detail}")]
pub struct VerifyError {
    /// 0-based position in the log (after retention).
    pub position: u64,
    pub seq: u64,
    pub time: String,
    pub kind: BreakKind,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub events: u64,
    pub head: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_broken: Option<VerifyError>,
    /// The damaged store whose last head this chain starts from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predecessor: Option<crate::store::Predecessor>,
}

/// One event as verification sees it.
pub enum Link {
    Event {
        key: Key,
        prev: Hash,
        hash: Hash,
        body: Vec<u8>,
        /// The block's report summary of this event matches its record.
        summary_ok: bool,
    },
    /// A stored block that is not in hoop's format (its first key).
    Malformed(Key),
}

/// Walk events in log order starting from `anchor`. `expected_head` is the hash recorded as
/// the chain head (to detect removal at the end).
pub fn verify<I>(iter: I, anchor: Hash, expected_head: Option<Hash>) -> VerifyReport
where
    I: Iterator<Item = Link>,
{
    let mut running = anchor;
    let mut n = 0u64;
    let mut iter = iter;
    while let Some(link) = iter.next() {
        let k = match &link {
            Link::Event { key, .. } | Link::Malformed(key) => *key,
        };
        let at = |kind, detail: String| VerifyError {
            position: n,
            seq: key_seq(&k),
            time: rfc3339(key_time(&k)),
            kind,
            detail,
        };
        let Link::Event {
            prev,
            hash: stored,
            body,
            summary_ok,
            ..
        } = link
        else {
            return broken(
                n,
                running,
                at(BreakKind::Malformed, "not a hoop event block".into()),
            );
        };
        if prev != running {
            // Look ahead: if the missing predecessor or the expected successor exists later,
            // events were moved; otherwise the predecessor is gone.
            let wanted_prev = prev;
            let mut kind = BreakKind::Deleted;
            for l in iter.by_ref() {
                if let Link::Event {
                    prev: p2, hash: h2, ..
                } = l
                    && (h2 == wanted_prev || p2 == running)
                {
                    kind = BreakKind::Reordered;
                    break;
                }
            }
            let detail = match kind {
                BreakKind::Reordered => {
                    "its predecessor link points at an event stored elsewhere: events were reordered"
                }
                _ => {
                    "the event it links to is missing: an event before it was deleted or rewritten"
                }
            };
            return broken(n, running, at(kind, detail.into()));
        }
        if hash(&prev, &body) != stored {
            return broken(
                n,
                running,
                at(
                    BreakKind::Modified,
                    "record bytes do not match their hash: the event was modified".into(),
                ),
            );
        }
        if !summary_ok {
            return broken(
                n,
                running,
                at(
                    BreakKind::Modified,
                    "the block's report summary of this event does not match the record: the summary was modified".into(),
                ),
            );
        }
        running = stored;
        n += 1;
    }
    if let Some(h) = expected_head
        && h != running
        && n > 0
    {
        return VerifyReport {
            events: n,
            head: hex::encode(running),
            ok: false,
            first_broken: Some(VerifyError {
                position: n,
                seq: 0,
                time: String::new(),
                kind: BreakKind::Truncated,
                detail: format!(
                    "the log ends at hash {} but the recorded head is {}: events at the end were removed",
                    hex::encode(running),
                    hex::encode(h)
                ),
            }),
            predecessor: None,
        };
    }
    VerifyReport {
        events: n,
        head: hex::encode(running),
        ok: true,
        first_broken: None,
        predecessor: None,
    }
}

fn broken(n: u64, running: Hash, e: VerifyError) -> VerifyReport {
    VerifyReport {
        events: n,
        head: hex::encode(running),
        ok: false,
        first_broken: Some(e),
        predecessor: None,
    }
}
