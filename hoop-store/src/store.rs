//! The sled-backed event store: batching, flushing, indexes, retention, crash repair.

use crate::block::{self, BlockView, Builder, Compressor, EVENT_OVERHEAD, RawEvent, Summary};
use crate::chain::{self, Hash};
use crate::index::{self, FIELDS, Field, KEY_LEN, Key, key_seq, key_time, make_key, to_key};
use fxhash::FxHashMap;
use hoop_event::CallRecord;
use std::fs;
use std::io::Read;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Name of the marker file that makes a directory a hoop store.
pub const MARKER: &str = "HOOP-STORE";
/// On-disk format written by this version.
pub const FORMAT: u32 = 2;
const MARKER_PREFIX: &str = "hoop-store format ";
/// 50 ms apart: how long to wait for a just-closed handle's file lock.
const LOCK_RETRIES: u32 = 20;

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Upper bound on how long an appended event stays only in memory (default 1 s).
    pub flush_interval: Duration,
    /// Pending events that trigger a write into sled before the interval (not an fsync).
    pub max_batch: usize,
    /// Remove events older than this (by ingest-ordered time).
    pub max_age: Option<Duration>,
    /// Keep the stored bytes at or below this: per event, key + chain links + record JSON
    /// before compression (the log is compressed on disk, so it takes less).
    pub max_bytes: Option<u64>,
    /// How often the background thread applies retention.
    pub retention_interval: Duration,
    /// sled page cache size (its resident memory is several times this).
    pub cache_bytes: u64,
    /// Verify the whole chain at open (the unflushed tail is always verified).
    pub verify_on_open: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            flush_interval: Duration::from_secs(1),
            max_batch: 8192,
            max_age: None,
            max_bytes: None,
            retention_interval: Duration::from_secs(60),
            cache_bytes: 8 << 20,
            verify_on_open: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{0}: not a hoop store (no {MARKER} marker, and the directory is not empty); refusing to touch it"
    )]
    Foreign(PathBuf),
    #[error("{0}: no hoop store here")]
    Missing(PathBuf),
    #[error("{path}: store format {found:?}, this hoop reads format {FORMAT}; nothing was changed")]
    Version { path: PathBuf, found: String },
    #[error("{path}: corrupt store: {detail}; its files were left as they are")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "{0}: the store is in use by another process (a running agent?): query it through the agent's local API"
    )]
    Locked(PathBuf),
    #[error("the store is open read-only")]
    ReadOnly,
    #[error("the store is closed")]
    Closed,
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("encoding a record: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Counters for metrics.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    /// Events in the log (after retention).
    pub events: u64,
    /// Uncompressed bytes of the event log (per event: key + chain links + record JSON), the
    /// quantity `max_bytes` bounds.
    pub bytes: u64,
    /// sled's size on disk.
    pub disk_bytes: u64,
    /// Appended but not yet written into sled.
    pub pending: u64,
    /// Appended since open and made durable by a flush.
    pub durable_since_open: u64,
    /// Appended since open.
    pub appended_since_open: u64,
    /// Events removed by retention since open.
    pub retained_away_since_open: u64,
    /// Current chain head (hex).
    pub head: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionStats {
    pub removed_events: u64,
    pub removed_bytes: u64,
    pub removed_index_entries: u64,
}

/// A record as stored, with its position and hash.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub seq: u64,
    pub key_time_ns: u64,
    pub hash: Hash,
    pub record: CallRecord,
}

/// Events appended but not yet written into sled: sealed blocks, the open block, and the
/// posting lists of the index entries they add.
#[derive(Default)]
struct Pending {
    open: Builder,
    sealed: Vec<(Key, Vec<u8>)>,
    /// Per field (in `FIELDS` order): value → event keys.
    postings: Vec<FxHashMap<String, Vec<Key>>>,
    events: u64,
    bytes: u64,
    first: Option<Key>,
    last: Key,
    skew: u64,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            postings: FIELDS.iter().map(|_| FxHashMap::default()).collect(),
            ..Default::default()
        }
    }

    fn add_postings(&mut self, rec: &CallRecord, key: Key) {
        let postings = &mut self.postings;
        index::values(rec, |f, v| {
            let m = &mut postings[f as usize];
            match m.get_mut(v) {
                Some(keys) => keys.push(key),
                None => {
                    m.insert(v.to_string(), vec![key]);
                }
            }
        });
    }
}

struct WState {
    pending: Pending,
    comp: Compressor,
    scratch: Vec<u8>,
    head: Hash,
    seq: u64,
    last_time: u64,
    events: u64,
    bytes: u64,
    max_span: u64,
    max_skew: u64,
    appended: u64,
    written: u64,
    durable: u64,
    retained_away: u64,
    closed: bool,
}

pub(crate) struct Trees {
    pub db: sled::Db,
    pub log: sled::Tree,
    pub meta: sled::Tree,
    pub batches: sled::Tree,
    pub idx: Vec<sled::Tree>,
}

struct Inner {
    trees: Trees,
    cfg: StoreConfig,
    path: PathBuf,
    state: Mutex<WState>,
    stop: Mutex<bool>,
    wake: Condvar,
    read_only: bool,
}

/// The audit store. Cheap to share across threads (`&Store` is `Sync`).
pub struct Store {
    inner: Arc<Inner>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    // Read-only opens work on a private copy; it is deleted when the store is dropped.
    _copy: Option<tempfile::TempDir>,
}

mod meta {
    pub const FORMAT: &[u8] = b"format";
    pub const CHECKPOINT: &[u8] = b"checkpoint";
    pub const HEAD: &[u8] = b"head";
    pub const ANCHOR: &[u8] = b"anchor";
    pub const SEQ: &[u8] = b"seq";
    pub const LAST_TIME: &[u8] = b"last_time";
    pub const EVENTS: &[u8] = b"events";
    pub const BYTES: &[u8] = b"bytes";
    pub const MAX_SPAN: &[u8] = b"max_span";
    pub const MAX_SKEW: &[u8] = b"max_skew";
    pub const CLEAN: &[u8] = b"clean";
    pub const PREDECESSOR: &[u8] = b"predecessor";
}

/// The chain head after the last flush, outside sled: what a replacement store continues
/// from when sled cannot open this one.
const HEAD_FILE: &str = "HEAD";

/// A damaged store that this one replaced.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Predecessor {
    /// Where the damaged store was moved.
    pub path: String,
    pub reason: String,
    /// Its last recorded chain head (hex), where this store's chain starts.
    pub head: Option<String>,
    /// Its next sequence number.
    pub seq: Option<u64>,
}

fn parse_head_file(s: &str) -> Option<(u64, Hash)> {
    let mut it = s.split_whitespace();
    let seq = it.next()?.parse().ok()?;
    let h = hex::decode(it.next()?).ok()?;
    Some((seq, h.try_into().ok()?))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data; keep going rather than poison the agent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn get_u64(t: &sled::Tree, k: &[u8]) -> Result<u64> {
    Ok(t.get(k)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

fn get_hash(t: &sled::Tree, k: &[u8]) -> Result<Hash> {
    Ok(t.get(k)?
        .and_then(|v| <Hash>::try_from(v.as_ref()).ok())
        .unwrap_or([0u8; 32]))
}

fn dir_is_empty(p: &Path) -> std::io::Result<bool> {
    Ok(fs::read_dir(p)?.next().is_none())
}

/// Check the marker. Ok(true) = a hoop store, Ok(false) = absent or empty directory.
fn check_marker(dir: &Path) -> Result<bool> {
    let marker = dir.join(MARKER);
    match fs::File::open(&marker) {
        Ok(mut f) => {
            let mut s = String::new();
            f.by_ref()
                .take(256)
                .read_to_string(&mut s)
                .map_err(|_| StoreError::Version {
                    path: dir.to_path_buf(),
                    found: "unreadable marker".into(),
                })?;
            let found = s.trim().strip_prefix(MARKER_PREFIX).unwrap_or(s.trim());
            if found != FORMAT.to_string() {
                return Err(StoreError::Version {
                    path: dir.to_path_buf(),
                    found: found.chars().take(40).collect(),
                });
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !dir.exists() || dir_is_empty(dir)? {
                Ok(false)
            } else {
                Err(StoreError::Foreign(dir.to_path_buf()))
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn map_open_err(dir: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) if io.to_string().contains("lock") => {
            StoreError::Locked(dir.to_path_buf())
        }
        sled::Error::Io(io) => StoreError::Io(io),
        other => StoreError::Corrupt {
            path: dir.to_path_buf(),
            detail: format!("sled cannot open it: {other}"),
        },
    }
}

fn open_sled(dir: &Path, sled_dir: &Path, cfg: &StoreConfig) -> Result<Trees> {
    let conf = sled::Config::new()
        .path(sled_dir)
        .cache_capacity(cfg.cache_bytes)
        // We flush on our own interval; sled's background flusher has had bugs (sled#1160).
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput);
    // sled panics on some malformed files instead of returning an error.
    let open = || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conf.open()));
    let mut opened = open();
    // sled's background threads release the previous handle's file lock a moment after the
    // last Db is dropped: a quick restart (or reopen in tests) waits for it briefly.
    for _ in 0..LOCK_RETRIES {
        match &opened {
            Ok(Err(e)) if matches!(map_open_err(dir, e.clone()), StoreError::Locked(_)) => {
                std::thread::sleep(Duration::from_millis(50));
                opened = open();
            }
            _ => break,
        }
    }
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => return Err(map_open_err(dir, e)),
        Err(_) => {
            return Err(StoreError::Corrupt {
                path: dir.to_path_buf(),
                detail: "sled panicked while opening it".into(),
            });
        }
    };
    let log = db.open_tree("log")?;
    let meta = db.open_tree("meta")?;
    let batches = db.open_tree("batches")?;
    let mut idx = Vec::with_capacity(FIELDS.len());
    for f in FIELDS {
        idx.push(db.open_tree(f.tree_name())?);
    }
    Ok(Trees {
        db,
        log,
        meta,
        batches,
        idx,
    })
}

/// Snapshot files (`snap.<lsn>` and unfinished `snap.<lsn>.generating`) in a sled directory.
fn snapshot_files(sled_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(sled_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("snap."))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Move a file into `<store>/quarantine/` (kept for inspection, out of sled's sight).
fn quarantine(dir: &Path, file: &Path) -> Result<()> {
    let q = dir.join("quarantine");
    fs::create_dir_all(&q)?;
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let to = q.join(format!(
        "{}.{name}",
        crate::timefmt::compact(crate::timefmt::now_ns())
    ));
    fs::rename(file, &to)?;
    tracing::warn!(file = %file.display(), moved_to = %to.display(), "sled snapshot quarantined");
    Ok(())
}

/// Open sled for writing, working around sled 0.34's known failure after an abrupt stop: a
/// snapshot file cut short (a `snap.*.generating` that was never renamed, which sled still
/// picks as the newest snapshot, or an empty/corrupt `snap.*`) makes every later open fail
/// with `Corruption` (spacejam/sled#1527, #1533, #1166). Snapshots are only a shortcut over
/// the log: without them sled replays its log segments. So unfinished snapshots are set
/// aside before opening, and on a corruption error the newest snapshot is set aside and the
/// open retried; the caller then checks hoop's own records.
fn open_sled_guarded(dir: &Path, sled_dir: &Path, cfg: &StoreConfig) -> Result<Trees> {
    for f in snapshot_files(sled_dir) {
        if f.to_string_lossy().ends_with(".generating") {
            quarantine(dir, &f)?;
        }
    }
    loop {
        match open_sled(dir, sled_dir, cfg) {
            Err(StoreError::Corrupt { detail, .. }) => {
                let Some(newest) = snapshot_files(sled_dir).pop() else {
                    return Err(StoreError::Corrupt {
                        path: dir.to_path_buf(),
                        detail,
                    });
                };
                tracing::warn!(path = %dir.display(), "sled cannot open the store ({detail}); retrying without its newest snapshot");
                quarantine(dir, &newest)?;
            }
            other => return other,
        }
    }
}

fn check_format(dir: &Path, t: &Trees) -> Result<()> {
    match t.meta.get(meta::FORMAT)? {
        Some(v) if v.as_ref() == FORMAT.to_string().as_bytes() => Ok(()),
        Some(v) => Err(StoreError::Version {
            path: dir.to_path_buf(),
            found: String::from_utf8_lossy(&v).chars().take(40).collect(),
        }),
        None => Err(StoreError::Corrupt {
            path: dir.to_path_buf(),
            detail: "the database has no hoop format record".into(),
        }),
    }
}

/// Copy a directory tree (reflink where the filesystem can, else bytes).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let ft = e.file_type()?;
        let dst = to.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &dst)?;
        } else if ft.is_file() {
            fs::copy(e.path(), dst)?;
        }
    }
    Ok(())
}

/// Refuse to copy a database another process holds open for writing: sled takes an exclusive
/// `flock` on its `db` file, so a shared one fails while an agent runs.
fn probe_lock(dir: &Path, sled_dir: &Path) -> Result<Option<fs::File>> {
    use std::os::fd::AsRawFd;
    let f = match fs::File::open(sled_dir.join("db")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    for _ in 0..LOCK_RETRIES {
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(f));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(StoreError::Locked(dir.to_path_buf()))
}

fn validated_copy(
    dir: &Path,
    sled_dir: &Path,
    cfg: &StoreConfig,
) -> Result<(tempfile::TempDir, Trees)> {
    let _lock = probe_lock(dir, sled_dir)?;
    let tmp = tempfile::Builder::new()
        .prefix("hoop-store-ro-")
        .tempdir()?;
    let copy = tmp.path().join("sled");
    copy_tree(sled_dir, &copy)?;
    drop(_lock);
    let trees = open_sled(dir, &copy, cfg)?;
    check_format(dir, &trees)?;
    Ok((tmp, trees))
}

impl Store {
    /// Open (or create) the store in `dir` for writing and start the background flusher.
    pub fn open(dir: impl AsRef<Path>, cfg: StoreConfig) -> Result<Store> {
        let dir = dir.as_ref();
        let existing = check_marker(dir)?;
        let sled_dir = dir.join("sled");
        if !existing {
            fs::create_dir_all(dir)?;
            fs::write(dir.join(MARKER), format!("{MARKER_PREFIX}{FORMAT}\n"))?;
        }
        // A store whose database existed must already carry hoop's format record (sled
        // creates an empty database over empty files).
        let had_db = fs::metadata(sled_dir.join("db")).is_ok();
        let trees = open_sled_guarded(dir, &sled_dir, &cfg)?;
        if !had_db && trees.meta.get(meta::FORMAT)?.is_none() && trees.log.is_empty() {
            trees
                .meta
                .insert(meta::FORMAT, FORMAT.to_string().as_bytes())?;
        }
        check_format(dir, &trees)?;
        let clean = trees.meta.get(meta::CLEAN)?.is_some();
        if existing && !clean {
            tracing::warn!(path = %dir.display(), "store was not closed cleanly; checking the unflushed tail");
        }
        let state = load_state(&trees)?;
        let inner = Arc::new(Inner {
            trees,
            cfg: cfg.clone(),
            path: dir.to_path_buf(),
            state: Mutex::new(state),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            read_only: false,
        });
        inner.repair_tail()?;
        inner.trees.meta.remove(meta::CLEAN)?;
        inner.trees.db.flush()?;
        if cfg.verify_on_open {
            let r = inner.verify();
            if let Some(e) = r.first_broken {
                tracing::warn!(path = %dir.display(), "audit chain broken: {e}");
            }
        }
        let flusher = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("hoop-store-flush".into())
                .spawn(move || inner.flush_loop())?
        };
        Ok(Store {
            inner,
            flusher: Mutex::new(Some(flusher)),
            _copy: None,
        })
    }

    /// Like [`Store::open`], but a store that cannot be opened (sled reports corruption, or
    /// hoop's own records do not hold together) does not stop auditing: it is moved aside to
    /// `<dir>.damaged-<time>` as evidence and a new store starts whose chain continues from
    /// the old store's last recorded head (the `HEAD` file, written after every flush).
    /// A foreign directory or another format is still an error, and nothing is touched.
    pub fn open_or_recover(
        dir: impl AsRef<Path>,
        cfg: StoreConfig,
    ) -> Result<(Store, Option<Predecessor>)> {
        let dir = dir.as_ref();
        let detail = match Store::open(dir, cfg.clone()) {
            Ok(s) => return Ok((s, None)),
            Err(StoreError::Corrupt { detail, .. }) => detail,
            Err(e) => return Err(e),
        };
        let head = fs::read_to_string(dir.join(HEAD_FILE)).ok();
        let (seq, head) = head
            .as_deref()
            .and_then(parse_head_file)
            .map_or((None, None), |(s, h)| (Some(s), Some(h)));
        let aside = PathBuf::from(format!(
            "{}.damaged-{}",
            dir.display(),
            crate::timefmt::compact(crate::timefmt::now_ns())
        ));
        fs::rename(dir, &aside)?;
        let pred = Predecessor {
            path: aside.display().to_string(),
            reason: detail,
            head: head.map(hex::encode),
            seq,
        };
        tracing::error!(
            damaged = %pred.path,
            reason = %pred.reason,
            old_head = pred.head.as_deref().unwrap_or("unknown"),
            "AUDIT STORE DAMAGED: moved aside; a new store continues its chain from the old head. Keep the damaged copy as evidence."
        );
        let store = Store::open(dir, cfg)?;
        {
            let t = &store.inner.trees;
            let mut b = sled::Batch::default();
            if let Some(h) = head {
                b.insert(meta::HEAD, &h[..]);
                b.insert(meta::ANCHOR, &h[..]);
            }
            if let Some(sq) = seq {
                b.insert(meta::SEQ, &sq.to_be_bytes()[..]);
            }
            b.insert(meta::PREDECESSOR, serde_json::to_vec(&pred)?);
            t.meta.apply_batch(b)?;
            t.db.flush()?;
            let mut st = lock(&store.inner.state);
            if let Some(h) = head {
                st.head = h;
            }
            if let Some(sq) = seq {
                st.seq = sq;
            }
        }
        store.inner.write_head_file();
        Ok((store, Some(pred)))
    }

    /// Open for reading without writing a byte to `dir`: sled rewrites files whenever it
    /// opens a database, so this opens a private copy. Fails while an agent holds the store.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Store> {
        let dir = dir.as_ref();
        if !check_marker(dir)? {
            return Err(StoreError::Missing(dir.to_path_buf()));
        }
        let sled_dir = dir.join("sled");
        if !sled_dir.exists() {
            return Err(StoreError::Corrupt {
                path: dir.to_path_buf(),
                detail: "the marker is there but the sled database is missing".into(),
            });
        }
        let cfg = StoreConfig::default();
        let (tmp, trees) = validated_copy(dir, &sled_dir, &cfg)?;
        let state = load_state(&trees)?;
        Ok(Store {
            inner: Arc::new(Inner {
                trees,
                cfg,
                path: dir.to_path_buf(),
                state: Mutex::new(state),
                stop: Mutex::new(true),
                wake: Condvar::new(),
                read_only: true,
            }),
            flusher: Mutex::new(None),
            _copy: Some(tmp),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    /// Append one (already masked) record. It is durable after the next flush, at most
    /// `flush_interval` later.
    pub fn append(&self, rec: &CallRecord) -> Result<()> {
        if self.inner.read_only {
            return Err(StoreError::ReadOnly);
        }
        let summary = Summary::from_record(rec);
        let mut guard = lock(&self.inner.state);
        let st = &mut *guard;
        if st.closed {
            return Err(StoreError::Closed);
        }
        // One reused buffer: a fresh >1 KiB allocation per event costs more than the copy.
        let mut body = std::mem::take(&mut st.scratch);
        body.clear();
        serde_json::to_writer(&mut body, rec)?;
        // Keys are time-ordered but never go backwards, so log order = chain order.
        let kt = rec.time_ns.max(st.last_time);
        let key = make_key(kt, st.seq);
        let prev = st.head;
        let h = chain::hash(&prev, &body);
        st.head = h;
        st.seq += 1;
        st.last_time = kt;
        st.appended += 1;
        let p = &mut st.pending;
        p.open.push(&key, &prev, &h, &body, &summary);
        p.add_postings(rec, key);
        p.events += 1;
        p.bytes += EVENT_OVERHEAD + body.len() as u64;
        p.first.get_or_insert(key);
        p.last = key;
        p.skew = p.skew.max(kt.saturating_sub(rec.time_ns));
        if p.open.len() >= block::BLOCK_EVENTS
            && let Some(b) = p.open.seal(&mut st.comp)
        {
            p.sealed.push(b);
        }
        st.scratch = body;
        if p.events >= self.inner.cfg.max_batch as u64 {
            self.inner.write_pending(st)?;
        }
        Ok(())
    }

    /// Write pending events and fsync. Returns the number of events appended since open that
    /// are now durable.
    pub fn flush(&self) -> Result<u64> {
        if self.inner.read_only {
            return Ok(0);
        }
        self.inner.flush()
    }

    /// Flush everything, mark the store clean and stop the flusher.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    /// [`Store::close`] for a shared store (the agent's API and dump thread hold it too):
    /// later appends fail with [`StoreError::Closed`]; reads still work.
    pub fn shutdown(&self) -> Result<()> {
        if self.inner.read_only {
            return Ok(());
        }
        *lock(&self.inner.stop) = true;
        self.inner.wake.notify_all();
        if let Some(h) = lock(&self.flusher).take() {
            let _ = h.join();
        }
        let already = {
            let mut st = lock(&self.inner.state);
            std::mem::replace(&mut st.closed, true)
        };
        if already {
            return Ok(());
        }
        {
            let mut st = lock(&self.inner.state);
            self.inner.write_pending(&mut st)?;
        }
        self.inner.trees.meta.insert(meta::CLEAN, &[1u8][..])?;
        self.inner.trees.db.flush()?;
        Ok(())
    }

    /// Events appended since open that a completed flush made durable (cheap; for acks).
    pub fn durable_since_open(&self) -> u64 {
        lock(&self.inner.state).durable
    }

    pub fn stats(&self) -> Stats {
        let st = lock(&self.inner.state);
        Stats {
            events: st.events + st.pending.events,
            bytes: st.bytes + st.pending.bytes,
            disk_bytes: self.inner.trees.db.size_on_disk().unwrap_or(0),
            pending: st.pending.events,
            durable_since_open: st.durable,
            appended_since_open: st.appended,
            retained_away_since_open: st.retained_away,
            head: hex::encode(st.head),
        }
    }

    /// Apply the configured retention now.
    pub fn apply_retention(&self, now_ns: u64) -> Result<RetentionStats> {
        self.retain(self.inner.cfg.max_age, self.inner.cfg.max_bytes, now_ns)
    }

    /// Remove events with key time before `now - max_age`, then the oldest events until the
    /// log holds at most `max_bytes`; their index entries go with them.
    pub fn retain(
        &self,
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
        now_ns: u64,
    ) -> Result<RetentionStats> {
        if self.inner.read_only {
            return Err(StoreError::ReadOnly);
        }
        self.inner.retain(max_age, max_bytes, now_ns)
    }

    /// Walk the whole chain.
    pub fn verify(&self) -> chain::VerifyReport {
        self.inner.sync_pending();
        let mut r = self.inner.verify();
        r.predecessor = self.predecessor();
        r
    }

    /// The damaged store this one replaced, if any (see [`Store::open_or_recover`]).
    pub fn predecessor(&self) -> Option<Predecessor> {
        let v = self.inner.trees.meta.get(meta::PREDECESSOR).ok()??;
        serde_json::from_slice(&v).ok()
    }

    pub(crate) fn trees(&self) -> &Trees {
        self.inner.sync_pending();
        &self.inner.trees
    }

    /// (max batch span, max key-vs-record time skew, checkpoint) for range bounds in queries.
    pub(crate) fn bounds(&self) -> (u64, u64, Option<Key>) {
        let st = lock(&self.inner.state);
        let cp = self
            .inner
            .trees
            .meta
            .get(meta::CHECKPOINT)
            .ok()
            .flatten()
            .and_then(|v| to_key(&v));
        (st.max_span, st.max_skew, cp)
    }

    /// All events with key time in `[from, to]`, in log order.
    pub fn scan(
        &self,
        from_ns: Option<u64>,
        to_ns: Option<u64>,
    ) -> impl Iterator<Item = StoredEvent> + '_ {
        let lo = make_key(from_ns.unwrap_or(0), 0);
        let hi = make_key(to_ns.unwrap_or(u64::MAX), u64::MAX);
        self.blocks(lo, Bound::Included(hi))
            .flat_map(move |(_, v)| {
                BlockView::parse(&v)
                    .and_then(|b| b.events())
                    .unwrap_or_default()
            })
            .filter(move |e| e.key >= lo && e.key <= hi)
            .filter_map(|e| decode_event(&e))
    }

    /// Blocks that can hold event keys in `[lo, hi]`, in log order: the block holding `lo`
    /// (keyed at or before it) and every block keyed after it up to `hi`.
    pub(crate) fn blocks(
        &self,
        lo: Key,
        hi: Bound<Key>,
    ) -> impl Iterator<Item = (sled::IVec, sled::IVec)> + '_ {
        let t = self.trees();
        let start = t
            .log
            .range(..=&lo[..])
            .next_back()
            .and_then(|r| r.ok())
            .map(|(k, _)| k.to_vec())
            .unwrap_or_else(|| lo.to_vec());
        let hi = match hi {
            Bound::Included(k) => Bound::Included(k.to_vec()),
            Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        t.log
            .range((Bound::Included(start), hi))
            .filter_map(|r| r.ok())
    }

    /// Every event with key in `[lo, hi)` (`hi` None: to the end), in log order; `visit`
    /// returns false to stop.
    pub(crate) fn for_each_raw(
        &self,
        lo: Key,
        hi: Option<Key>,
        mut visit: impl FnMut(RawEvent) -> bool,
    ) {
        let bound = hi.map_or(Bound::Unbounded, Bound::Excluded);
        for (_, v) in self.blocks(lo, bound) {
            let Some(evs) = BlockView::parse(&v).and_then(|b| b.events()) else {
                continue;
            };
            for e in evs {
                if e.key < lo {
                    continue;
                }
                if hi.is_some_and(|h| e.key >= h) || !visit(e) {
                    return;
                }
            }
        }
    }
}

/// The record of a stored event.
pub(crate) fn decode_event(e: &RawEvent) -> Option<StoredEvent> {
    let record = serde_json::from_slice(&e.body).ok()?;
    Some(StoredEvent {
        seq: key_seq(&e.key),
        key_time_ns: key_time(&e.key),
        hash: e.hash,
        record,
    })
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("closing the store: {e}");
        }
    }
}

fn load_state(t: &Trees) -> Result<WState> {
    Ok(WState {
        pending: Pending::new(),
        comp: Compressor::default(),
        scratch: Vec::with_capacity(4096),
        head: get_hash(&t.meta, meta::HEAD)?,
        seq: get_u64(&t.meta, meta::SEQ)?,
        last_time: get_u64(&t.meta, meta::LAST_TIME)?,
        events: get_u64(&t.meta, meta::EVENTS)?,
        bytes: get_u64(&t.meta, meta::BYTES)?,
        max_span: get_u64(&t.meta, meta::MAX_SPAN)?,
        max_skew: get_u64(&t.meta, meta::MAX_SKEW)?,
        appended: 0,
        written: 0,
        durable: 0,
        retained_away: 0,
        closed: false,
    })
}

/// (index tree, index key) of one posting list a batch wrote.
type IndexEntry = (Field, Vec<u8>);

/// Posting lists of one batch: per field, value → keys.
type Postings = [FxHashMap<String, Vec<Key>>];

impl Inner {
    fn flush_loop(&self) {
        let mut last_retention = Instant::now();
        loop {
            {
                let stop = lock(&self.stop);
                if *stop {
                    return;
                }
                let (stop, _) = self
                    .wake
                    .wait_timeout(stop, self.cfg.flush_interval)
                    .unwrap_or_else(|e| e.into_inner());
                if *stop {
                    return;
                }
            }
            if let Err(e) = self.flush() {
                tracing::warn!("store flush failed: {e}");
            }
            if (self.cfg.max_age.is_some() || self.cfg.max_bytes.is_some())
                && last_retention.elapsed() >= self.cfg.retention_interval
            {
                last_retention = Instant::now();
                if let Err(e) = self.retain(
                    self.cfg.max_age,
                    self.cfg.max_bytes,
                    crate::timefmt::now_ns(),
                ) {
                    tracing::warn!("store retention failed: {e}");
                }
            }
        }
    }

    fn flush(&self) -> Result<u64> {
        let written = {
            let mut st = lock(&self.state);
            self.write_pending(&mut st)?;
            st.written
        };
        self.trees.db.flush()?;
        let durable = {
            let mut st = lock(&self.state);
            st.durable = st.durable.max(written);
            st.durable
        };
        self.write_head_file();
        Ok(durable)
    }

    /// Record the durable chain head outside sled (see [`HEAD_FILE`]); best effort.
    fn write_head_file(&self) {
        let (seq, head) = match self.trees.meta.get(meta::HEAD) {
            Ok(Some(h)) => (get_u64(&self.trees.meta, meta::SEQ).unwrap_or(0), h),
            _ => return,
        };
        let text = format!("{seq} {}\n", hex::encode(&head));
        let path = self.path.join(HEAD_FILE);
        if fs::read_to_string(&path).is_ok_and(|t| t == text) {
            return;
        }
        let tmp = self.path.join(format!(".{HEAD_FILE}.tmp"));
        if let Err(e) = fs::write(&tmp, &text).and_then(|_| fs::rename(&tmp, &path)) {
            tracing::warn!("writing {}: {e}", path.display());
        }
    }

    /// Make pending events visible to readers in this process (no fsync).
    fn sync_pending(&self) {
        if self.read_only {
            return;
        }
        let mut st = lock(&self.state);
        if let Err(e) = self.write_pending(&mut st) {
            tracing::warn!("store write failed: {e}");
        }
    }

    /// Write the pending batch: registry entry first (so a torn batch can be undone), then
    /// the index trees, the log blocks, and the meta record that makes it complete.
    fn write_pending(&self, st: &mut WState) -> Result<()> {
        let mut p = std::mem::replace(&mut st.pending, Pending::new());
        let Some(first) = p.first else {
            return Ok(());
        };
        if let Some(b) = p.open.seal(&mut st.comp) {
            p.sealed.push(b);
        }
        let last = p.last;
        self.write_postings(&first, &last, &p.postings)?;
        let mut log_batch = sled::Batch::default();
        for (k, v) in p.sealed {
            log_batch.insert(&k[..], v);
        }
        self.trees.log.apply_batch(log_batch)?;
        st.events += p.events;
        st.bytes += p.bytes;
        st.max_skew = st.max_skew.max(p.skew);
        st.max_span = st.max_span.max(key_time(&last) - key_time(&first));
        st.written += p.events;
        self.write_meta(st, &last)?;
        Ok(())
    }

    fn write_postings(&self, first: &Key, last: &Key, postings: &Postings) -> Result<()> {
        let mut registry = Vec::with_capacity(KEY_LEN + 4096);
        registry.extend_from_slice(last);
        let mut per_tree: Vec<sled::Batch> =
            FIELDS.iter().map(|_| sled::Batch::default()).collect();
        for (f, m) in FIELDS.iter().zip(postings) {
            for (v, keys) in m {
                let ik = index::index_key(v, first);
                registry.push(*f as u8);
                registry.extend_from_slice(&(ik.len() as u32).to_be_bytes());
                registry.extend_from_slice(&ik);
                let mut val = Vec::with_capacity(keys.len() * 5);
                index::encode_postings(keys, &mut val);
                per_tree[*f as usize].insert(ik, val);
            }
        }
        self.trees.batches.insert(&first[..], registry)?;
        for (tree, batch) in self.trees.idx.iter().zip(per_tree) {
            tree.apply_batch(batch)?;
        }
        Ok(())
    }

    fn write_meta(&self, st: &WState, checkpoint: &Key) -> Result<()> {
        let mut b = sled::Batch::default();
        b.insert(meta::CHECKPOINT, &checkpoint[..]);
        b.insert(meta::HEAD, &st.head[..]);
        b.insert(meta::SEQ, &st.seq.to_be_bytes()[..]);
        b.insert(meta::LAST_TIME, &st.last_time.to_be_bytes()[..]);
        b.insert(meta::EVENTS, &st.events.to_be_bytes()[..]);
        b.insert(meta::BYTES, &st.bytes.to_be_bytes()[..]);
        b.insert(meta::MAX_SPAN, &st.max_span.to_be_bytes()[..]);
        b.insert(meta::MAX_SKEW, &st.max_skew.to_be_bytes()[..]);
        self.trees.meta.apply_batch(b)?;
        Ok(())
    }

    /// Parse a registry value into (last key, [(field, index key)]).
    fn parse_registry(v: &[u8]) -> Option<(Key, Vec<IndexEntry>)> {
        let last = to_key(v.get(..KEY_LEN)?)?;
        let mut out = Vec::new();
        let mut i = KEY_LEN;
        while i < v.len() {
            let f = Field::from_u8(*v.get(i)?)?;
            let len = u32::from_be_bytes(v.get(i + 1..i + 5)?.try_into().ok()?) as usize;
            let k = v.get(i + 5..i + 5 + len)?.to_vec();
            out.push((f, k));
            i += 5 + len;
        }
        Some((last, out))
    }

    /// After an unclean stop: undo index writes of incomplete batches, drop a torn tail
    /// (events whose chain link does not verify), and index the surviving tail again.
    fn repair_tail(&self) -> Result<()> {
        let t = &self.trees;
        let cp = t.meta.get(meta::CHECKPOINT)?.and_then(|v| to_key(&v));
        let lo: Vec<u8> = match cp {
            Some(k) => {
                let mut n = k.to_vec();
                n.push(0); // strictly after the checkpoint key
                n
            }
            None => Vec::new(),
        };
        let mut undone = 0u64;
        for r in t.batches.range(lo.clone()..) {
            let (k, v) = r?;
            if let Some((_, entries)) = Self::parse_registry(&v) {
                for (f, ik) in entries {
                    t.idx[f as usize].remove(ik)?;
                    undone += 1;
                }
            }
            t.batches.remove(k)?;
        }
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        // Blocks never span batches, so the blocks keyed after the checkpoint hold exactly
        // the events of incomplete batches.
        let mut good: Vec<RawEvent> = Vec::new();
        let mut dropped = 0usize;
        let mut running = st.head;
        let mut broken = false;
        for r in t.log.range(lo..) {
            let (k, v) = r?;
            let evs = if broken {
                None
            } else {
                BlockView::parse(&v).and_then(|b| b.events())
            };
            let Some(evs) = evs else {
                broken = true;
                dropped += BlockView::parse(&v).map_or(1, |b| b.len());
                t.log.remove(k)?;
                continue;
            };
            let n = evs.len();
            let mut kept = Vec::with_capacity(n);
            for e in evs {
                if !broken && e.prev == running && chain::hash(&e.prev, &e.body) == e.hash {
                    running = e.hash;
                    kept.push(e);
                } else {
                    broken = true;
                }
            }
            if kept.len() < n {
                dropped += n - kept.len();
                t.log.remove(&k)?;
                if let Some((nk, nv)) = block::encode_events(&kept, &mut st.comp) {
                    t.log.insert(&nk[..], nv)?;
                }
            }
            good.extend(kept);
        }
        if dropped > 0 {
            tracing::warn!(
                path = %self.path.display(),
                dropped,
                kept = good.len(),
                "torn tail after an unclean stop: dropping events past the last good chain link"
            );
        }
        if undone > 0 || !good.is_empty() {
            tracing::info!(reindexed = good.len(), undone, "recovered unflushed tail");
        }
        if let (Some(first), Some(last)) = (good.first(), good.last()) {
            let (first, last) = (first.key, last.key);
            st.head = running;
            st.seq = key_seq(&last) + 1;
            st.last_time = st.last_time.max(key_time(&last));
            // The tail is already in the log: index it and count it, without rewriting it.
            let mut p = Pending::new();
            for e in &good {
                let time_ns = match serde_json::from_slice::<CallRecord>(&e.body) {
                    Ok(rec) => {
                        p.add_postings(&rec, e.key);
                        rec.time_ns
                    }
                    Err(_) => serde_json::from_slice::<TimeOnly>(&e.body)
                        .map(|x| x.time_ns)
                        .unwrap_or(key_time(&e.key)),
                };
                st.events += 1;
                st.bytes += EVENT_OVERHEAD + e.body.len() as u64;
                st.max_skew = st.max_skew.max(key_time(&e.key).saturating_sub(time_ns));
            }
            st.max_span = st.max_span.max(key_time(&last) - key_time(&first));
            self.write_postings(&first, &last, &p.postings)?;
            self.write_meta(st, &last)?;
        }
        Ok(())
    }

    fn verify(&self) -> chain::VerifyReport {
        let anchor = get_hash(&self.trees.meta, meta::ANCHOR).unwrap_or([0u8; 32]);
        let head = get_hash(&self.trees.meta, meta::HEAD).ok();
        let it = self
            .trees
            .log
            .iter()
            .filter_map(|r| r.ok())
            .flat_map(|(k, v)| block_links(&k, &v));
        chain::verify(it, anchor, head.filter(|h| *h != [0u8; 32]))
    }

    fn retain(
        &self,
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
        now_ns: u64,
    ) -> Result<RetentionStats> {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        self.write_pending(st)?;
        let t = &self.trees;
        let mut cutoff: Option<Key> =
            max_age.map(|a| make_key(now_ns.saturating_sub(a.as_nanos() as u64), 0));
        if let Some(limit) = max_bytes
            && st.bytes > limit
        {
            let mut excess = st.bytes - limit;
            'blocks: for r in t.log.iter() {
                let (_, v) = r?;
                let Some(b) = BlockView::parse(&v) else {
                    continue;
                };
                for e in b.entries() {
                    let size = EVENT_OVERHEAD + e.len as u64;
                    // Cut after this event.
                    let mut next = e.key;
                    let seq = key_seq(&e.key).saturating_add(1);
                    next[8..].copy_from_slice(&seq.to_be_bytes());
                    if cutoff.is_none_or(|c| next > c) {
                        cutoff = Some(next);
                    }
                    if size >= excess {
                        break 'blocks;
                    }
                    excess -= size;
                }
            }
        }
        let Some(cutoff) = cutoff else {
            return Ok(RetentionStats::default());
        };
        let mut stats = RetentionStats::default();
        let mut last_removed: Option<Hash> = None;
        loop {
            let chunk: Vec<(sled::IVec, sled::IVec)> = t
                .log
                .range(..&cutoff[..])
                .take(1_000)
                .filter_map(|r| r.ok())
                .collect();
            if chunk.is_empty() {
                break;
            }
            let mut b = sled::Batch::default();
            for (k, v) in chunk {
                let Some(view) = BlockView::parse(&v) else {
                    // Not ours to interpret: drop it with the rest before the cutoff.
                    stats.removed_bytes += (KEY_LEN + v.len()) as u64;
                    b.remove(k);
                    continue;
                };
                if view.last_key().is_some_and(|l| l < cutoff) {
                    for e in view.entries() {
                        stats.removed_events += 1;
                        stats.removed_bytes += EVENT_OVERHEAD + e.len as u64;
                        last_removed = Some(e.hash);
                    }
                    b.remove(k);
                    continue;
                }
                // The block straddles the cutoff: keep its tail, keyed by its new first event.
                let Some(evs) = view.events() else {
                    // Undecodable: it goes whole rather than stall retention.
                    for e in view.entries() {
                        stats.removed_events += 1;
                        stats.removed_bytes += EVENT_OVERHEAD + e.len as u64;
                    }
                    b.remove(k);
                    continue;
                };
                let (gone, kept): (Vec<RawEvent>, Vec<RawEvent>) =
                    evs.into_iter().partition(|e| e.key < cutoff);
                for e in &gone {
                    stats.removed_events += 1;
                    stats.removed_bytes += EVENT_OVERHEAD + e.body.len() as u64;
                    last_removed = Some(e.hash);
                }
                b.remove(k);
                if let Some((nk, nv)) = block::encode_events(&kept, &mut st.comp) {
                    b.insert(&nk[..], nv);
                }
            }
            t.log.apply_batch(b)?;
        }
        // Index entries: every batch that started before the cutoff.
        for r in t.batches.range(..&cutoff[..]) {
            let (bk, v) = r?;
            let Some((last, entries)) = Self::parse_registry(&v) else {
                t.batches.remove(bk)?;
                continue;
            };
            let whole = last < cutoff;
            for (f, ik) in entries {
                let tree = &t.idx[f as usize];
                if whole {
                    if tree.remove(&ik)?.is_some() {
                        stats.removed_index_entries += 1;
                    }
                    continue;
                }
                if let Some(val) = tree.get(&ik)? {
                    let (mut all, mut kept) = (0usize, Vec::new());
                    index::decode_postings(&val, |k| {
                        all += 1;
                        if k >= cutoff {
                            kept.push(k);
                        }
                    });
                    if kept.is_empty() {
                        tree.remove(&ik)?;
                        stats.removed_index_entries += 1;
                    } else if kept.len() != all {
                        let mut v = Vec::with_capacity(kept.len() * 5);
                        index::encode_postings(&kept, &mut v);
                        tree.insert(&ik, v)?;
                    }
                }
            }
            if whole {
                t.batches.remove(bk)?;
            }
        }
        st.events = st.events.saturating_sub(stats.removed_events);
        st.bytes = st.bytes.saturating_sub(stats.removed_bytes);
        st.retained_away += stats.removed_events;
        let mut b = sled::Batch::default();
        if let Some(h) = last_removed {
            b.insert(meta::ANCHOR, &h[..]);
        }
        b.insert(meta::EVENTS, &st.events.to_be_bytes()[..]);
        b.insert(meta::BYTES, &st.bytes.to_be_bytes()[..]);
        t.meta.apply_batch(b)?;
        drop(guard);
        if stats.removed_events > 0 {
            tracing::info!(
                removed = stats.removed_events,
                bytes = stats.removed_bytes,
                "retention"
            );
        }
        Ok(stats)
    }
}

/// The chain links of one stored block, each with whether its report summary matches.
fn block_links(k: &[u8], v: &[u8]) -> Vec<chain::Link> {
    let malformed = || vec![chain::Link::Malformed(to_key(k).unwrap_or_default())];
    let Some(view) = BlockView::parse(v) else {
        return malformed();
    };
    let Some(evs) = view.events() else {
        return malformed();
    };
    let mut ok = vec![false; evs.len()];
    let complete = view.for_each_summary(|i, s| {
        if let Some(slot) = ok.get_mut(i) {
            *slot = Summary::from_json(&evs[i].body).as_ref() == Some(s);
        }
    });
    if !complete {
        ok.iter_mut().for_each(|x| *x = false);
    }
    evs.into_iter()
        .zip(ok)
        .map(|(e, summary_ok)| chain::Link::Event {
            key: e.key,
            prev: e.prev,
            hash: e.hash,
            body: e.body,
            summary_ok,
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct TimeOnly {
    time_ns: u64,
}
