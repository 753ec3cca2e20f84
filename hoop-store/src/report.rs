//! Access-review reports per identity (Markdown, HTML with an inline-SVG timeline, CSV,
//! JSON) and least-privilege IAM policies from what identities actually used.

use crate::block::{BlockView, Summary};
use crate::filter::Filter;
use crate::index::{Key, key_time, make_key, to_key};
use crate::query;
use crate::store::{Store, StoreError};
use crate::timefmt::rfc3339;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::ops::Bound;

/// Buckets in each identity's activity timeline.
pub const TIMELINE_BUCKETS: usize = 48;

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ActionStat {
    pub action: String,
    pub calls: u64,
    pub errors: u64,
    pub denied: u64,
    /// Resources touched by this action (empty when the call names none).
    pub resources: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct IdentityReport {
    pub identity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal_arn: Option<String>,
    pub access_key_ids: Vec<String>,
    pub workloads: Vec<String>,
    pub calls: u64,
    /// Calls AWS answered with an error code.
    pub errors: u64,
    /// Calls hoop blocked (`deny`, `kill`).
    pub denied: u64,
    /// Calls a human approved (`approved`).
    pub approved: u64,
    pub approval_requested: u64,
    pub would_deny: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub actions: Vec<ActionStat>,
    /// Resource ARN → calls.
    pub resources: BTreeMap<String, u64>,
    pub error_codes: BTreeMap<String, u64>,
    /// Calls per bucket across the report's time span.
    pub timeline: Vec<u64>,
    /// Blocked calls per bucket.
    pub timeline_denied: Vec<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub generated: String,
    pub from: String,
    pub to: String,
    pub total_calls: u64,
    pub identities: Vec<IdentityReport>,
}

#[derive(Default)]
struct ActAcc {
    calls: u64,
    errors: u64,
    denied: u64,
    resources: BTreeSet<String>,
}

#[derive(Default)]
struct Acc {
    principal: Option<String>,
    keys: BTreeSet<String>,
    workloads: BTreeSet<String>,
    calls: u64,
    errors: u64,
    denied: u64,
    approved: u64,
    approval_requested: u64,
    would_deny: u64,
    first: u64,
    last: u64,
    actions: HashMap<String, ActAcc>,
    resources: HashMap<String, u64>,
    error_codes: BTreeMap<String, u64>,
    times: Vec<(u64, bool)>,
}

fn is_blocked(effect: &str) -> bool {
    effect == "deny" || effect == "kill"
}

impl Acc {
    fn add(&mut self, v: &Summary<'_>) {
        let t = v.time_ns;
        if self.calls == 0 || t < self.first {
            self.first = t;
        }
        self.last = self.last.max(t);
        self.calls += 1;
        if self.principal.is_none()
            && let Some(p) = &v.principal
        {
            self.principal = Some(p.to_string());
        }
        if let Some(k) = &v.access_key
            && !self.keys.contains(k.as_ref())
        {
            self.keys.insert(k.to_string());
        }
        if !self.workloads.contains(v.workload.as_ref()) {
            self.workloads.insert(v.workload.to_string());
        }
        let effect = v.effect.as_ref();
        let blocked = is_blocked(effect);
        match effect {
            "approved" => self.approved += 1,
            "approval-requested" => self.approval_requested += 1,
            "would-deny" => self.would_deny += 1,
            _ => {}
        }
        if blocked {
            self.denied += 1;
        }
        let err = v.error_code.as_deref();
        if let Some(code) = err {
            self.errors += 1;
            *self.error_codes.entry(code.to_string()).or_default() += 1;
        }
        let action = v.action.as_deref().unwrap_or("(unknown)");
        let a = match self.actions.get_mut(action) {
            Some(a) => a,
            None => self.actions.entry(action.to_string()).or_default(),
        };
        a.calls += 1;
        a.errors += u64::from(err.is_some());
        a.denied += u64::from(blocked);
        for r in &v.resources {
            if !a.resources.contains(r.as_ref()) {
                a.resources.insert(r.to_string());
            }
            match self.resources.get_mut(r.as_ref()) {
                Some(n) => *n += 1,
                None => {
                    self.resources.insert(r.to_string(), 1);
                }
            }
        }
        self.times.push((t, blocked));
    }
}

fn add_view(accs: &mut HashMap<String, Acc>, v: &Summary<'_>) {
    // Enforcement events (approvals, endpoint decisions) are in the trail but are not calls.
    if hoop_event::is_event_effect(&v.effect) {
        return;
    }
    let key: &str = v.identity();
    match accs.get_mut(key) {
        Some(a) => a.add(v),
        None => accs.entry(key.to_string()).or_default().add(v),
    }
}

impl Acc {
    fn merge(&mut self, o: Acc) {
        if o.calls == 0 {
            return;
        }
        if self.calls == 0 || o.first < self.first {
            self.first = o.first;
        }
        self.last = self.last.max(o.last);
        self.calls += o.calls;
        self.errors += o.errors;
        self.denied += o.denied;
        self.approved += o.approved;
        self.approval_requested += o.approval_requested;
        self.would_deny += o.would_deny;
        if self.principal.is_none() {
            self.principal = o.principal;
        }
        self.keys.extend(o.keys);
        self.workloads.extend(o.workloads);
        for (k, a) in o.actions {
            let m = self.actions.entry(k).or_default();
            m.calls += a.calls;
            m.errors += a.errors;
            m.denied += a.denied;
            m.resources.extend(a.resources);
        }
        for (k, n) in o.resources {
            *self.resources.entry(k).or_default() += n;
        }
        for (k, n) in o.error_codes {
            *self.error_codes.entry(k).or_default() += n;
        }
        self.times.extend(o.times);
    }
}

/// Accumulate events with key in `[lo, hi]` from the blocks keyed in `blocks` (from the
/// block summaries: no decompression, no JSON).
fn scan_part(
    store: &Store,
    blocks: (Bound<Key>, Bound<Key>),
    lo: Key,
    hi: Key,
    f: &Filter,
) -> HashMap<String, Acc> {
    let mut accs = HashMap::new();
    let t = store.trees();
    let range = (blocks.0.map(|k| k.to_vec()), blocks.1.map(|k| k.to_vec()));
    for (_, v) in t.log.range::<Vec<u8>, _>(range).filter_map(|r| r.ok()) {
        let Some(b) = BlockView::parse(&v) else {
            continue;
        };
        let whole = b.key(0).is_some_and(|k| k >= lo) && b.last_key().is_some_and(|k| k <= hi);
        b.for_each_summary(|i, s| {
            if !whole && b.key(i).is_none_or(|k| k < lo || k > hi) {
                return;
            }
            if f.since.is_some_and(|x| s.time_ns < x) || f.until.is_some_and(|u| s.time_ns > u) {
                return;
            }
            add_view(&mut accs, s);
        });
    }
    accs
}

/// Build the report over the records a filter selects.
pub fn build(store: &Store, f: &Filter) -> Result<Report, StoreError> {
    let only_time = Filter {
        since: f.since,
        until: f.until,
        ..Default::default()
    } == *f;
    let mut accs: HashMap<String, Acc> = HashMap::new();
    if only_time {
        // Whole-range reports split the log's blocks in two halves by key time, one thread
        // each.
        let (_, skew, _) = store.bounds();
        let t = store.trees();
        let first = t.log.first().ok().flatten().map(|(k, _)| key_time(&k));
        let last = t
            .log
            .last()
            .ok()
            .flatten()
            .and_then(|(_, v)| BlockView::parse(&v).and_then(|b| b.last_key()))
            .map(|k| key_time(&k));
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(finish(accs));
        };
        let lo = f.since.unwrap_or(0).max(first);
        let hi = f
            .until
            .map(|u| u.saturating_add(skew))
            .unwrap_or(u64::MAX)
            .min(last);
        if lo <= hi {
            let (lo_key, hi_key) = (make_key(lo, 0), make_key(hi, u64::MAX));
            // The block holding `lo_key` may be keyed before it.
            let start = t
                .log
                .range(..=&lo_key[..])
                .next_back()
                .and_then(|r| r.ok())
                .and_then(|(k, _)| to_key(&k))
                .unwrap_or(lo_key);
            let mid = make_key(lo + (hi - lo) / 2, u64::MAX);
            let (a, b) = std::thread::scope(|sc| {
                let h = sc.spawn(|| {
                    scan_part(
                        store,
                        (Bound::Included(start), Bound::Included(mid)),
                        lo_key,
                        hi_key,
                        f,
                    )
                });
                let b = scan_part(
                    store,
                    (Bound::Excluded(mid), Bound::Included(hi_key)),
                    lo_key,
                    hi_key,
                    f,
                );
                (h.join().unwrap_or_default(), b)
            });
            accs = a;
            for (k, v) in b {
                accs.entry(k).or_default().merge(v);
            }
        }
    } else {
        query::for_each(store, f, |e| {
            add_view(&mut accs, &Summary::from_record(&e.record));
            true
        })?;
    }
    Ok(finish(accs))
}

fn finish(accs: HashMap<String, Acc>) -> Report {
    let from = accs.values().map(|a| a.first).min().unwrap_or(0);
    let to = accs.values().map(|a| a.last).max().unwrap_or(0);
    let width = (to - from) / TIMELINE_BUCKETS as u64 + 1;
    let mut ids: Vec<IdentityReport> = accs
        .into_iter()
        .map(|(identity, a)| {
            let mut timeline = vec![0u64; TIMELINE_BUCKETS];
            let mut timeline_denied = vec![0u64; TIMELINE_BUCKETS];
            for (t, blocked) in &a.times {
                let b = (((t - from) / width) as usize).min(TIMELINE_BUCKETS - 1);
                timeline[b] += 1;
                timeline_denied[b] += u64::from(*blocked);
            }
            let mut actions: Vec<ActionStat> = a
                .actions
                .into_iter()
                .map(|(action, s)| ActionStat {
                    action,
                    calls: s.calls,
                    errors: s.errors,
                    denied: s.denied,
                    resources: s.resources.into_iter().collect(),
                })
                .collect();
            actions.sort_by(|x, y| y.calls.cmp(&x.calls).then_with(|| x.action.cmp(&y.action)));
            IdentityReport {
                identity,
                principal_arn: a.principal,
                access_key_ids: a.keys.into_iter().collect(),
                workloads: a.workloads.into_iter().collect(),
                calls: a.calls,
                errors: a.errors,
                denied: a.denied,
                approved: a.approved,
                approval_requested: a.approval_requested,
                would_deny: a.would_deny,
                first_seen: rfc3339(a.first),
                last_seen: rfc3339(a.last),
                actions,
                resources: a.resources.into_iter().collect(),
                error_codes: a.error_codes,
                timeline,
                timeline_denied,
            }
        })
        .collect();
    ids.sort_by(|x, y| {
        y.calls
            .cmp(&x.calls)
            .then_with(|| x.identity.cmp(&y.identity))
    });
    Report {
        generated: rfc3339(crate::timefmt::now_ns()),
        from: if ids.is_empty() {
            String::new()
        } else {
            rfc3339(from)
        },
        to: if ids.is_empty() {
            String::new()
        } else {
            rfc3339(to)
        },
        total_calls: ids.iter().map(|i| i.calls).sum(),
        identities: ids,
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn render_markdown(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# hoop access review\n");
    let _ = writeln!(
        o,
        "Generated {}. Calls from {} to {}: {} calls by {} identities.\n",
        r.generated,
        r.from,
        r.to,
        r.total_calls,
        r.identities.len()
    );
    let _ = writeln!(
        o,
        "| Identity | Calls | Errors | Denied | Approved | First seen | Last seen |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---|---|");
    for i in &r.identities {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            md_escape(&i.identity),
            i.calls,
            i.errors,
            i.denied,
            i.approved,
            i.first_seen,
            i.last_seen
        );
    }
    for i in &r.identities {
        let _ = writeln!(o, "\n## {}\n", md_escape(&i.identity));
        let _ = writeln!(
            o,
            "- Access keys: {}\n- Workloads: {}\n- Calls: {} (errors {}, denied {}, approved {}, approval requested {}, would deny {})\n- First seen: {}\n- Last seen: {}",
            i.access_key_ids.join(", "),
            i.workloads.join(", "),
            i.calls,
            i.errors,
            i.denied,
            i.approved,
            i.approval_requested,
            i.would_deny,
            i.first_seen,
            i.last_seen
        );
        if !i.error_codes.is_empty() {
            let codes: Vec<String> = i
                .error_codes
                .iter()
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect();
            let _ = writeln!(o, "- Error codes: {}", codes.join(", "));
        }
        let _ = writeln!(o, "\n| Action | Calls | Errors | Denied | Resources |");
        let _ = writeln!(o, "|---|---:|---:|---:|---|");
        for a in &i.actions {
            let res = if a.resources.is_empty() {
                "*".to_string()
            } else {
                a.resources.join("<br>")
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                md_escape(&a.action),
                a.calls,
                a.errors,
                a.denied,
                md_escape(&res)
            );
        }
    }
    o
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Inline SVG bar chart of one identity's calls over the report span (blocked in red).
pub fn timeline_svg(i: &IdentityReport, from: &str, to: &str) -> String {
    let (w, h, pad) = (720.0f64, 90.0f64, 18.0f64);
    let max = i.timeline.iter().copied().max().unwrap_or(0).max(1) as f64;
    let n = i.timeline.len().max(1) as f64;
    let bw = w / n;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"timeline\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\" role=\"img\" aria-label=\"activity timeline\">",
        h + pad,
        h + pad
    );
    for (k, (&c, &d)) in i.timeline.iter().zip(&i.timeline_denied).enumerate() {
        let x = k as f64 * bw;
        let bh = c as f64 / max * h;
        let dh = d as f64 / max * h;
        let _ = write!(
            s,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#4a7bd0\"><title>{c} calls</title></rect>",
            h - bh,
            (bw - 1.0).max(1.0)
        );
        if d > 0 {
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{dh:.1}\" fill=\"#d04a4a\"><title>{d} blocked</title></rect>",
                h - dh,
                (bw - 1.0).max(1.0)
            );
        }
    }
    let _ = write!(
        s,
        "<line x1=\"0\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" stroke=\"#888\"/><text x=\"0\" y=\"{}\" font-size=\"11\">{}</text><text x=\"{w}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text></svg>",
        h + 14.0,
        html_escape(from),
        h + 14.0,
        html_escape(to)
    );
    s
}

pub fn render_html(r: &Report) -> String {
    let mut o = String::new();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>hoop access review</title><style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}td.n{text-align:right}h2{margin-top:2em;word-break:break-all}.denied{color:#b00}</style></head><body>\n");
    let _ = writeln!(
        o,
        "<h1>hoop access review</h1><p>Generated {}. Calls from {} to {}: {} calls by {} identities.</p>",
        html_escape(&r.generated),
        html_escape(&r.from),
        html_escape(&r.to),
        r.total_calls,
        r.identities.len()
    );
    o.push_str("<table><tr><th>Identity</th><th>Calls</th><th>Errors</th><th>Denied</th><th>Approved</th><th>First seen</th><th>Last seen</th></tr>\n");
    for i in &r.identities {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n denied\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            html_escape(&i.identity),
            i.calls,
            i.errors,
            i.denied,
            i.approved,
            html_escape(&i.first_seen),
            html_escape(&i.last_seen)
        );
    }
    o.push_str("</table>\n");
    for i in &r.identities {
        let _ = writeln!(
            o,
            "<section class=\"identity\"><h2>{}</h2>",
            html_escape(&i.identity)
        );
        o.push_str(&timeline_svg(i, &r.from, &r.to));
        let _ = writeln!(
            o,
            "<p>Access keys: {}<br>Workloads: {}<br>Calls {}, errors {}, denied {}, approved {}, approval requested {}, would deny {}.</p>",
            html_escape(&i.access_key_ids.join(", ")),
            html_escape(&i.workloads.join(", ")),
            i.calls,
            i.errors,
            i.denied,
            i.approved,
            i.approval_requested,
            i.would_deny
        );
        o.push_str("<table><tr><th>Action</th><th>Calls</th><th>Errors</th><th>Denied</th><th>Resources</th></tr>\n");
        for a in &i.actions {
            let res = if a.resources.is_empty() {
                "*".to_string()
            } else {
                a.resources
                    .iter()
                    .map(|x| html_escape(x))
                    .collect::<Vec<_>>()
                    .join("<br>")
            };
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n denied\">{}</td><td>{}</td></tr>",
                html_escape(&a.action),
                a.calls,
                a.errors,
                a.denied,
                res
            );
        }
        o.push_str("</table></section>\n");
    }
    o.push_str("</body></html>\n");
    o
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One row per (identity, action).
pub fn render_csv(r: &Report) -> String {
    let mut o = String::from(
        "identity,principal_arn,action,calls,errors,denied,resources,identity_calls,identity_errors,identity_denied,identity_approved,first_seen,last_seen\n",
    );
    for i in &r.identities {
        for a in &i.actions {
            let row = [
                csv_field(&i.identity),
                csv_field(i.principal_arn.as_deref().unwrap_or("")),
                csv_field(&a.action),
                a.calls.to_string(),
                a.errors.to_string(),
                a.denied.to_string(),
                csv_field(&a.resources.join(" ")),
                i.calls.to_string(),
                i.errors.to_string(),
                i.denied.to_string(),
                i.approved.to_string(),
                csv_field(&i.first_seen),
                csv_field(&i.last_seen),
            ];
            o.push_str(&row.join(","));
            o.push('\n');
        }
    }
    o
}

/// Least-privilege policies: identity → IAM policy document. Calls hoop blocked never
/// reached AWS and grant nothing; an action seen without a resource gets `*`.
pub fn policies(store: &Store, f: &Filter) -> Result<BTreeMap<String, Value>, StoreError> {
    let mut used: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    query::for_each(store, f, |e| {
        let r = &e.record;
        if r.is_event()
            || is_blocked(&r.decision.effect)
            || r.decision.effect == "approval-requested"
        {
            return true;
        }
        let Some(action) = r.aws.iam_action.clone() else {
            return true;
        };
        let set = used
            .entry(r.identity.key().to_string())
            .or_default()
            .entry(action)
            .or_default();
        if r.aws.resources.is_empty() {
            set.insert("*".into());
        } else {
            set.extend(r.aws.resources.iter().cloned());
        }
        true
    })?;
    Ok(used
        .into_iter()
        .map(|(id, actions)| (id, policy_document(&actions)))
        .collect())
}

/// Group actions that share a resource set into one statement.
pub fn policy_document(actions: &BTreeMap<String, BTreeSet<String>>) -> Value {
    let mut groups: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    for (action, res) in actions {
        let res: Vec<String> = if res.contains("*") {
            vec!["*".into()]
        } else {
            res.iter().cloned().collect()
        };
        groups.entry(res).or_default().push(action.clone());
    }
    let statements: Vec<Value> = groups
        .into_iter()
        .enumerate()
        .map(|(n, (res, acts))| {
            json!({
                "Sid": format!("HoopObserved{}", n + 1),
                "Effect": "Allow",
                "Action": acts,
                "Resource": res,
            })
        })
        .collect();
    json!({"Version": "2012-10-17", "Statement": statements})
}
