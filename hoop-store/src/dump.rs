//! Node-level audit dumps: JSON lines of stored records, or CloudTrail-compatible
//! `{"Records":[...]}` documents; optionally gzip-compressed; and rotating files for log
//! shippers, written atomically (temp file + rename).

use crate::console::{Console, LocalConsole};
use crate::filter::Filter;
use crate::index::make_key;
use crate::query;
use crate::store::{Store, StoreError, StoredEvent};
use crate::timefmt::{compact, rfc3339_secs};
use serde_json::{Map, Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, Default)]
pub struct CloudTrailOptions {
    /// `sourceIPAddress`; `hoop` when unset (the real client address is a loopback socket
    /// inside the node, so the node name is more useful).
    pub source: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DumpFormat {
    /// One stored record per line.
    Jsonl,
    /// CloudTrail log file: `{"Records":[...]}`.
    Cloudtrail,
}

/// CloudTrail `userIdentity` from hoop's identity.
pub fn user_identity(id: &hoop_event::Identity) -> Value {
    let arn = id.principal_arn.as_deref();
    let parts: Vec<&str> = arn.map(|a| a.splitn(6, ':').collect()).unwrap_or_default();
    let account = id.account_id.clone().or_else(|| {
        parts
            .get(4)
            .filter(|s| !s.is_empty())
            .map(|s| s.to_string())
    });
    let resource = parts.get(5).copied().unwrap_or("");
    let (kind, principal_id, user_name) = if let Some(rest) = resource.strip_prefix("assumed-role/")
    {
        let mut it = rest.splitn(2, '/');
        let role = it.next().unwrap_or("");
        let session = it.next().unwrap_or("");
        ("AssumedRole", format!("{role}:{session}"), None)
    } else if let Some(user) = resource.strip_prefix("user/") {
        let name = user.rsplit('/').next().unwrap_or(user).to_string();
        (
            "IAMUser",
            id.access_key_id.clone().unwrap_or_else(|| name.clone()),
            Some(name),
        )
    } else if resource == "root" {
        ("Root", account.clone().unwrap_or_default(), None)
    } else {
        (
            "Unknown",
            id.access_key_id.clone().unwrap_or_default(),
            None,
        )
    };
    let mut m = Map::new();
    m.insert("type".into(), json!(kind));
    m.insert("principalId".into(), json!(principal_id));
    if let Some(a) = arn {
        m.insert("arn".into(), json!(a));
    }
    if let Some(a) = &account {
        m.insert("accountId".into(), json!(a));
    }
    if let Some(k) = &id.access_key_id {
        m.insert("accessKeyId".into(), json!(k));
    }
    if let Some(u) = user_name {
        m.insert("userName".into(), json!(u));
    }
    if kind == "AssumedRole"
        && let Some(rest) = resource.strip_prefix("assumed-role/")
    {
        let role = rest.split('/').next().unwrap_or("");
        let mut issuer = json!({"type": "Role", "userName": role});
        if let Some(a) = &account {
            issuer["arn"] = json!(format!("arn:aws:iam::{a}:role/{role}"));
            issuer["accountId"] = json!(a);
        }
        m.insert("sessionContext".into(), json!({"sessionIssuer": issuer}));
    }
    Value::Object(m)
}

/// The namespace for eventIDs: v5 UUIDs of the chain hash, stable across dumps.
const EVENT_NS: uuid::Uuid = uuid::Uuid::from_u128(0x6f3b_1a2e_9c4d_4e5f_8a7b_2c1d_0e9f_a8b7);

/// One CloudTrail record.
pub fn cloudtrail_record(e: &StoredEvent, opts: &CloudTrailOptions) -> Value {
    let r = &e.record;
    let signing = r.aws.signing_service.as_deref().unwrap_or(&r.aws.service);
    // Enforcement events (approvals, endpoint decisions) are hoop's own service events, not
    // calls: named by their effect so a consumer never counts them as the call they concern.
    let event = r.is_event();
    let event_name = if event {
        Some(r.decision.effect.clone())
    } else {
        None
    };
    let event_name = event_name
        .or_else(|| {
            r.aws.operation.clone().or_else(|| {
                r.aws
                    .iam_action
                    .as_ref()
                    .and_then(|a| a.split(':').nth(1))
                    .map(str::to_string)
            })
        })
        .unwrap_or_else(|| format!("{} {}", r.request.method, r.request.path));
    let account = r.identity.account_id.clone().or_else(|| {
        r.identity
            .principal_arn
            .as_deref()
            .and_then(|a| a.split(':').nth(4))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    });
    let resources: Vec<Value> = r
        .aws
        .resources
        .iter()
        .map(|a| {
            let mut m = json!({"ARN": a});
            if let Some(acct) = a.split(':').nth(4).filter(|s| !s.is_empty()) {
                m["accountId"] = json!(acct);
            }
            m
        })
        .collect();
    let resp = r.response.as_ref();
    let mut m = Map::new();
    m.insert("eventVersion".into(), json!("1.09"));
    m.insert("userIdentity".into(), user_identity(&r.identity));
    m.insert("eventTime".into(), json!(rfc3339_secs(r.time_ns)));
    m.insert(
        "eventSource".into(),
        if event {
            json!("hoop.enforcement")
        } else {
            json!(format!("{signing}.amazonaws.com"))
        },
    );
    m.insert("eventName".into(), json!(event_name));
    m.insert(
        "awsRegion".into(),
        json!(r.aws.region.clone().unwrap_or_else(|| "us-east-1".into())),
    );
    m.insert(
        "sourceIPAddress".into(),
        json!(opts.source.clone().unwrap_or_else(|| "hoop".into())),
    );
    m.insert(
        "userAgent".into(),
        json!(r.request.user_agent.clone().unwrap_or_default()),
    );
    if let Some(code) = resp.and_then(|x| x.error_code.clone()) {
        m.insert("errorCode".into(), json!(code));
    }
    m.insert(
        "requestParameters".into(),
        r.request.parameters.clone().unwrap_or(Value::Null),
    );
    m.insert(
        "responseElements".into(),
        resp.and_then(|x| x.elements.clone()).unwrap_or(Value::Null),
    );
    let mut hoop = json!({
        "process": r.process,
        "workload": r.workload,
        "workloadName": r.workload.name(),
        "decision": r.decision,
        "connection": r.connection,
        "request": {"method": r.request.method, "host": r.request.host, "path": r.request.path, "bodyBytes": r.request.body_bytes},
        "seq": e.seq,
        "chainHash": hex::encode(e.hash),
    });
    if let Some(d) = r.duration_ms {
        hoop["durationMs"] = json!(d);
    }
    if let Some(x) = resp {
        hoop["httpStatus"] = json!(x.status);
    }
    m.insert("additionalEventData".into(), json!({"hoop": hoop}));
    if let Some(id) = resp.and_then(|x| x.request_id.clone()) {
        m.insert("requestID".into(), json!(id));
    }
    m.insert(
        "eventID".into(),
        json!(uuid::Uuid::new_v5(&EVENT_NS, &e.hash).to_string()),
    );
    m.insert("readOnly".into(), json!(r.aws.read_only.unwrap_or(false)));
    m.insert("resources".into(), Value::Array(resources));
    if event {
        m.insert("eventType".into(), json!("AwsServiceEvent"));
        m.insert(
            "serviceEventDetails".into(),
            json!({"decision": r.decision, "event": r.event, "call": r.aws}),
        );
    } else {
        m.insert("eventType".into(), json!("AwsApiCall"));
    }
    m.insert("managementEvent".into(), json!(true));
    if let Some(a) = account {
        m.insert("recipientAccountId".into(), json!(a));
    }
    m.insert("eventCategory".into(), json!("Management"));
    Value::Object(m)
}

/// Streams records in either format.
struct Sink<'a> {
    out: &'a mut dyn Write,
    format: DumpFormat,
    opts: &'a CloudTrailOptions,
    n: u64,
}

impl Sink<'_> {
    fn begin(&mut self) -> std::io::Result<()> {
        if self.format == DumpFormat::Cloudtrail {
            self.out.write_all(b"{\"Records\":[")?;
        }
        Ok(())
    }

    fn push(&mut self, e: &StoredEvent) -> std::io::Result<()> {
        match self.format {
            DumpFormat::Jsonl => {
                serde_json::to_writer(&mut *self.out, &e.record)?;
                self.out.write_all(b"\n")?;
            }
            DumpFormat::Cloudtrail => {
                if self.n > 0 {
                    self.out.write_all(b",\n")?;
                } else {
                    self.out.write_all(b"\n")?;
                }
                serde_json::to_writer(&mut *self.out, &cloudtrail_record(e, self.opts))?;
            }
        }
        self.n += 1;
        Ok(())
    }

    fn end(&mut self) -> std::io::Result<()> {
        if self.format == DumpFormat::Cloudtrail {
            self.out.write_all(b"\n]}\n")?;
        }
        self.out.flush()
    }
}

/// Dump the records a filter selects, reporting `(done, total)` to `progress` (total: the
/// candidates the filter selects, an upper bound). Returns the number written.
pub fn write_dump(
    store: &Store,
    f: &Filter,
    format: DumpFormat,
    gzip: bool,
    opts: &CloudTrailOptions,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<u64> {
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        let n = write_plain(store, f, format, opts, &mut gz, progress)?;
        gz.try_finish()?;
        Ok(n)
    } else {
        write_plain(store, f, format, opts, out, progress)
    }
}

fn write_plain(
    store: &Store,
    f: &Filter,
    format: DumpFormat,
    opts: &CloudTrailOptions,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<u64> {
    let mut sink = Sink {
        out,
        format,
        opts,
        n: 0,
    };
    sink.begin()?;
    let total = std::cell::Cell::new(0u64);
    let mut err = None;
    let mut sized = |t: u64| total.set(t);
    query::for_each_sized(store, f, Some(&mut sized), |e| {
        if let Err(x) = sink.push(&e) {
            err = Some(x);
            return false;
        }
        if sink.n == 1 || sink.n.is_multiple_of(1024) {
            progress(sink.n, total.get());
        }
        true
    })?;
    if let Some(e) = err {
        return Err(e.into());
    }
    sink.end()?;
    progress(sink.n, sink.n);
    Ok(sink.n)
}

/// File name of a rotating dump: `hoop-<node>-<from>-<to>.json.gz`.
pub fn rotating_name(node: &str, from_ns: u64, to_ns: u64) -> String {
    let safe_node: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "hoop-{safe_node}-{}-{}.json.gz",
        compact(from_ns),
        compact(to_ns)
    )
}

/// Write events ingested in key time `[from_ns, to_ns)` as a gzip CloudTrail document.
/// Key time (ingest order) rather than request time, so consecutive windows hold every
/// event exactly once. Returns the number of events.
pub fn write_window(
    store: &Store,
    node: &str,
    from_ns: u64,
    to_ns: u64,
    out: &mut dyn Write,
) -> Result<u64, StoreError> {
    let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let opts = CloudTrailOptions {
        source: Some(node.to_string()),
    };
    let mut sink = Sink {
        out: &mut gz,
        format: DumpFormat::Cloudtrail,
        opts: &opts,
        n: 0,
    };
    sink.begin()?;
    let lo = make_key(from_ns, 0);
    let hi = make_key(to_ns, 0);
    let mut err = None;
    store.for_each_raw(lo, Some(hi), |e| {
        if let Some(e) = crate::store::decode_event(&e)
            && let Err(x) = sink.push(&e)
        {
            err = Some(x);
            return false;
        }
        true
    });
    if let Some(e) = err {
        return Err(e.into());
    }
    sink.end()?;
    let n = sink.n;
    gz.try_finish()?;
    Ok(n)
}

/// Write the window `[from_ns, to_ns)` as `dir/hoop-<node>-<from>-<to>.json.gz`, atomically
/// (temp file + rename).
pub fn dump_rotating(
    store: &Store,
    dir: &Path,
    node: &str,
    from_ns: u64,
    to_ns: u64,
) -> Result<PathBuf, StoreError> {
    let path = dir.join(rotating_name(node, from_ns, to_ns));
    let mut c = LocalConsole::new(std::io::sink(), false);
    let r: anyhow::Result<()> = (|| {
        c.create(&path, true)?;
        write_window(store, node, from_ns, to_ns, c.file()?)?;
        c.commit()
    })();
    r.map_err(|e| StoreError::Io(std::io::Error::other(format!("{e:#}"))))?;
    Ok(path)
}

/// Scheduled rotating dumps: call [`RotatingDumper::tick`] on an interval and
/// [`RotatingDumper::finish`] at shutdown. The position is the `to` time in the newest file's
/// name (kept to the nanosecond), so a restarted agent continues where the last file ends:
/// nothing is lost or written twice, and there is no other state to keep in step.
pub struct RotatingDumper {
    pub dir: PathBuf,
    pub node: String,
    pub every: Duration,
    /// End of the last window written; the next window starts here.
    pub last_to: Option<u64>,
}

impl RotatingDumper {
    pub fn new(dir: impl Into<PathBuf>, node: impl Into<String>, every: Duration) -> Self {
        RotatingDumper {
            dir: dir.into(),
            node: node.into(),
            every,
            last_to: None,
        }
    }

    /// Continue after the newest dump of this node already in the directory, if any.
    pub fn resume(
        dir: impl Into<PathBuf>,
        node: impl Into<String>,
        every: Duration,
    ) -> std::io::Result<Self> {
        let mut d = RotatingDumper::new(dir, node, every);
        d.last_to = last_window_end(&d.dir, &d.node)?;
        Ok(d)
    }

    /// Write the window ending at `now_ns` (rounded down to the second, for readable names)
    /// if a full interval has passed since the last one.
    pub fn tick(&mut self, store: &Store, now_ns: u64) -> Result<Option<PathBuf>, StoreError> {
        let every = self.every.as_nanos() as u64;
        let from = *self.last_to.get_or_insert(now_ns.saturating_sub(every));
        let to = now_ns - now_ns % 1_000_000_000;
        if to <= from || now_ns.saturating_sub(from) < every {
            return Ok(None);
        }
        let p = dump_rotating(store, &self.dir, &self.node, from, to)?;
        self.last_to = Some(to);
        Ok(Some(p))
    }

    /// At shutdown, after the store's last append: the partial window up to `now_ns`.
    pub fn finish(&mut self, store: &Store, now_ns: u64) -> Result<Option<PathBuf>, StoreError> {
        let Some(from) = self.last_to else {
            return Ok(None);
        };
        if now_ns <= from {
            return Ok(None);
        }
        let p = dump_rotating(store, &self.dir, &self.node, from, now_ns)?;
        self.last_to = Some(now_ns);
        Ok(Some(p))
    }
}

/// The latest `to` among `hoop-<node>-<from>-<to>.json.gz` files in `dir`.
pub fn last_window_end(dir: &Path, node: &str) -> std::io::Result<Option<u64>> {
    let prefix = rotating_name(node, 0, 0);
    let prefix = &prefix[..prefix.len() - "19700101T000000Z-19700101T000000Z.json.gz".len()];
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut last = None;
    for e in rd {
        let name = e?.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix(".json.gz"))
        else {
            continue;
        };
        if let Some(to) = rest
            .split_once('-')
            .and_then(|(_, to)| crate::timefmt::parse_compact(to))
        {
            last = last.max(Some(to));
        }
    }
    Ok(last)
}
