//! The `run` daemon: kernel events in, AWS call records out.
//!
//! Threads: the tokio runtime drives the event loop (ring buffers → reassembly → records →
//! sinks); a discovery thread owns the loaded programs and attaches TLS probes to files that
//! new processes map.

use crate::audit::Audit;
use crate::capture::{Assembler, CaptureConfig, Exchange};
use crate::discovery::{self, Discovery};
use crate::metrics::Metrics;
use crate::probes::{CounterReader, KernelCounters, Probes};
use crate::record::{self, Clock};
use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use hoop_common::{PROC_EXEC, PROC_EXIT, ProcEvent};
use hoop_event::CallRecord;
use std::collections::BinaryHeap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

/// Options of `hoop-agent run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Also append records to this file (JSON lines).
    pub output: Option<PathBuf>,
    /// Print records to stdout.
    pub stdout: bool,
    /// TLS ring buffer size in bytes (power of two).
    pub ring_bytes: u32,
    pub capture: CaptureConfig,
    /// Process, workload and principal resolution settings.
    pub identity: hoop_identity::IdentityConfig,
    /// Also write every raw TLS record to this file (length-prefixed), for debugging and for
    /// recording test fixtures. The file holds plaintext: use only with test credentials.
    pub record_raw: Option<PathBuf>,
    /// Data directory: the audit store lives in `store/`.
    pub data_dir: PathBuf,
    pub store: crate::audit::StoreSection,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: std::net::SocketAddr,
    pub metrics_identity_cap: usize,
    /// Local API socket (reviewer commands, approvals).
    pub api_socket: PathBuf,
    /// Optional TCP API with TLS and client certificates.
    pub api_tls: Option<crate::config::ApiTlsSection>,
    /// Policy enforcement (issue 6); `None` = capture only.
    pub enforce: Option<crate::enforce::EnforceOptions>,
}

/// Rescans of a new process: at exec (static TLS in the executable), then after the dynamic
/// loader and `dlopen` had time to map libraries.
const RESCAN_DELAYS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(200),
    Duration::from_millis(2000),
];
/// A periodic drain of the rings besides their wake-ups (never on the path of an enforcement
/// decision: those are taken in the kernel).
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// Full rescan of /proc, for libraries mapped long after exec.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(10);
/// Connections of an exited process are closed this long after the exit event, so records
/// still in the TLS ring (a separate buffer) are processed first.
const EXIT_GRACE_NS: u64 = 1_000_000_000;

pub async fn run(opts: RunOptions) -> Result<()> {
    let metrics = Metrics::new(opts.metrics_identity_cap)?;
    crate::metrics::serve(opts.metrics_addr, metrics.clone()).await?;
    let audit = Audit::open(&opts.data_dir, &opts.store)?;
    let dumps = crate::audit::spawn_rotating_dumps(
        audit.store.clone(),
        &opts.store,
        Duration::from_nanos(opts.capture.response_timeout_ns) + Duration::from_secs(5),
    )?;
    let mut probes = Probes::load(opts.ring_bytes)?;
    if let Some(logger) = probes.start_kernel_log() {
        spawn_kernel_log(logger)?;
    }
    probes.load_uprobes()?;
    probes.attach_process_tracepoints()?;
    if let Err(e) = probes.attach_plain_http() {
        // Without it only keys learned over TLS (STS) and from the config are named.
        warn!("credential endpoint capture (IMDS, container credentials) not attached: {e:#}");
    }
    let tls_ring = probes.take_ring("TLS_EVENTS")?;
    let proc_ring = probes.take_ring("PROC_EVENTS")?;
    let counters = probes.take_counters()?;
    let muted = probes.take_muted()?;
    // --- enforcement start-up (issue 6) ---
    let enforcer = match &opts.enforce {
        Some(o) => Some(crate::enforce::start(probes.ebpf_mut(), o)?),
        None => None,
    };
    // --- end enforcement start-up ---

    let mut disc = Discovery::new();
    let me = std::process::id();
    let mut targets = disc.scan_paths(&discovery::system_libssl_candidates());
    targets.extend(disc.scan_all(me));
    attach_targets(&mut probes, &targets, &metrics);
    // Live records for `hoop-agent tail` (JSON lines; slow readers skip ahead).
    let (events, _) = tokio::sync::broadcast::channel::<std::sync::Arc<str>>(4096);
    let mut router =
        crate::audit::routes(audit.store.clone()).merge(crate::tail::routes(events.clone()));
    if let Some(e) = &enforcer {
        router = router.merge(crate::api::approval_routes(e.state.clone()));
    }
    crate::api::serve(&opts.api_socket, router.clone())?;
    if let Some(t) = &opts.api_tls {
        crate::api::serve_tls(t, router)?;
    }
    // Ready (see `ready_after_scan`); else /readyz stays 503 until discovery attaches one.
    if crate::metrics::ready_after_scan(targets.len(), probes.uprobes_attached()) {
        metrics.set_ready();
        if targets.is_empty() {
            warn!("no TLS library found yet: probes follow as processes map libraries");
        }
        info!(
            files = probes.files_attached(),
            probes = probes.uprobes_attached(),
            scanned = disc.files_seen(),
            "hoop-agent ready"
        );
    } else {
        warn!(
            found = targets.len(),
            "hoop-agent not ready: no TLS probe could be attached (see the failures above)"
        );
    }
    let (scan_tx, scan_rx) = mpsc::channel::<u32>();
    std::thread::Builder::new()
        .name("hoop-discovery".into())
        .spawn({
            let metrics = metrics.clone();
            move || discovery_loop(probes, disc, scan_rx, me, &metrics)
        })
        .context("spawn discovery thread")?;

    let identity =
        hoop_identity::Resolver::new(opts.identity.clone()).context("start identity resolution")?;
    let mut sink = Sink::open(&opts)?;
    let mut ev = EventLoop {
        assembler: Assembler::new(opts.capture),
        clock: Clock::new(),
        identity,
        last_sweep: Instant::now(),
        exits: Vec::new(),
        exchanges: Vec::new(),
        scan_tx,
        counters,
        last_counters: KernelCounters::default(),
        metrics,
        audit,
        last_parse: Default::default(),
        raw: match &opts.record_raw {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
            )),
            None => None,
        },
        enforcer,
        events,
        muted,
        instance_doc: Some(spawn_instance_identity_fetch()?),
    };

    if let Some(e) = ev.enforcer.as_mut() {
        e.sync_identity(&ev.identity);
    }
    let mut tls = poll(tls_ring)?;
    let mut proc = poll(proc_ring)?;
    // Decisions wake the loop (the kernel marks routine audit outcomes no-wakeup); every ring
    // is also drained on `drain`.
    let decisions = match &ev.enforcer {
        Some(e) => Some(poll(e.ring_fd()?)?),
        None => None,
    };
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            g = tls.readable_mut() => {
                let mut g = g?;
                ev.drain_tls(g.get_inner_mut());
                g.clear_ready();
                // Process events first so a new process is known before its records.
                ev.drain_proc(proc.get_mut());
                ev.drain_tls(tls.get_mut());
            }
            g = proc.readable_mut() => {
                let mut g = g?;
                ev.drain_proc(g.get_inner_mut());
                g.clear_ready();
            }
            g = async { decisions.as_ref()?.readable().await.ok() }, if decisions.is_some() => {
                if let Some(mut g) = g {
                    g.clear_ready();
                }
                ev.drain_proc(proc.get_mut());
                ev.drain_tls(tls.get_mut());
            }
            _ = drain.tick() => {
                ev.drain_proc(proc.get_mut());
                ev.drain_tls(tls.get_mut());
            }
            _ = tick.tick() => ev.tick(),
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        ev.emit(&mut sink)?;
    }
    info!("shutting down");
    ev.drain_proc(proc.get_mut());
    ev.drain_tls(tls.get_mut());
    ev.assembler.flush_all(&mut ev.exchanges);
    ev.emit(&mut sink)?;
    sink.flush()?;
    let durable = ev.audit.store.flush().context("flush the audit store")?;
    info!(durable, "audit store flushed");
    if let Some(d) = dumps {
        d.finish();
    }
    ev.audit.close()?;
    let c = ev.counters.read();
    let st = ev.assembler.stats();
    info!(
        records = st.records,
        bytes = st.bytes,
        lost_records = c.lost_records,
        lost_bytes = c.lost_bytes,
        lost_proc_events = c.lost_proc_events,
        bad_records = st.bad_records,
        gaps = st.gaps,
        garbage_heads = st.garbage_heads,
        "capture summary"
    );
    Ok(())
}

/// Registers an fd owner with tokio's reactor for readability.
fn poll<T: std::os::fd::AsRawFd>(inner: T) -> Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its fd and moves into the AsyncFd, which deregisters before
    // dropping it, so the fd stays open for as long as it is registered.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|_| anyhow::anyhow!("register fd with the tokio reactor"))
}

fn spawn_kernel_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) -> Result<()> {
    let mut fd = poll(logger)?;
    tokio::spawn(async move {
        loop {
            let Ok(mut g) = fd.readable_mut().await else {
                return;
            };
            g.get_inner_mut().flush();
            g.clear_ready();
        }
    });
    Ok(())
}

struct EventLoop {
    assembler: Assembler,
    clock: Clock,
    identity: hoop_identity::Resolver,
    last_sweep: Instant,
    /// (boot ns when due, tgid) of exited processes whose connections are to be closed.
    exits: Vec<(u64, u32)>,
    exchanges: Vec<Exchange>,
    scan_tx: mpsc::Sender<u32>,
    counters: CounterReader,
    last_counters: KernelCounters,
    metrics: std::sync::Arc<Metrics>,
    audit: Audit,
    /// Assembler counters already exported to metrics.
    last_parse: crate::capture::CaptureStats,
    raw: Option<std::io::BufWriter<std::fs::File>>,
    enforcer: Option<crate::enforce::Enforcer>,
    /// Every delivered record, for API stream subscribers.
    events: tokio::sync::broadcast::Sender<std::sync::Arc<str>>,
    /// Server-side connections the kernel stops copying.
    muted: aya::maps::HashMap<MapData, hoop_common::ConnId, u8>,
    /// The node's instance identity document, fetched once in the background.
    instance_doc: Option<mpsc::Receiver<Vec<u8>>>,
}

impl EventLoop {
    fn drain_tls(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            if let Some(w) = self.raw.as_mut() {
                let _ = w
                    .write_all(&(item.len() as u32).to_le_bytes())
                    .and_then(|_| w.write_all(&item));
            }
            self.assembler.push_bytes(&item, &mut self.exchanges);
        }
        for k in self.assembler.take_to_mute() {
            let id = hoop_common::ConnId {
                tgid: k.tgid,
                _pad: 0,
                conn: k.conn,
            };
            // A full LRU map evicts its oldest entry: muting is an optimisation only.
            if self.muted.insert(&id, &1, 0).is_ok() {
                self.metrics.connections_muted.inc();
            }
        }
    }

    fn drain_proc(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<ProcEvent>() {
                continue;
            }
            // SAFETY: POD read of a length-checked buffer.
            let ev: ProcEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            match ev.kind {
                PROC_EXEC => {
                    let name = hoop_common::c_str_bytes(&ev.filename);
                    self.identity
                        .on_exec(ev.tgid, ev.ppid, &String::from_utf8_lossy(name));
                    if let Some(e) = &self.enforcer {
                        e.on_exec(ev.tgid);
                    }
                    let _ = self.scan_tx.send(ev.tgid);
                }
                PROC_EXIT => {
                    self.identity.on_exit(ev.tgid);
                    self.exits.push((ev.ts_ns + EXIT_GRACE_NS, ev.tgid));
                }
                _ => {}
            }
        }
    }

    fn tick(&mut self) {
        if let Some(rx) = &self.instance_doc {
            match rx.try_recv() {
                Ok(doc) => {
                    let p = self.identity.principals();
                    p.learn_imds(hoop_identity::imds::DOCUMENT_PATH, &doc);
                    let id = p.instance_identity();
                    info!(account = ?id.account_id, instance = ?id.instance_id, region = ?id.region, "instance identity");
                    self.instance_doc = None;
                }
                Err(mpsc::TryRecvError::Disconnected) => self.instance_doc = None,
                Err(mpsc::TryRecvError::Empty) => {}
            }
        }
        let now = self.clock.boot_now();
        let mut due = Vec::new();
        self.exits.retain(|&(t, pid)| {
            if t <= now {
                due.push(pid);
                false
            } else {
                true
            }
        });
        for pid in due {
            self.assembler.process_exited(pid, &mut self.exchanges);
        }
        self.assembler.expire(now, &mut self.exchanges);
        if self.last_sweep.elapsed() >= Duration::from_secs(10) {
            self.identity.sweep();
            self.last_sweep = Instant::now();
        }
        let c = self.counters.read();
        self.export_counters(&c);
        if c.lost_records > self.last_counters.lost_records {
            warn!(
                lost = c.lost_records - self.last_counters.lost_records,
                total = c.lost_records,
                "TLS records lost: ring buffer full"
            );
        }
        self.last_counters = c;
    }

    fn export_counters(&mut self, c: &KernelCounters) {
        let m = &self.metrics;
        let l = &self.last_counters;
        m.records_lost
            .inc_by(c.lost_records.saturating_sub(l.lost_records));
        m.record_bytes_lost
            .inc_by(c.lost_bytes.saturating_sub(l.lost_bytes));
        m.proc_events_lost
            .inc_by(c.lost_proc_events.saturating_sub(l.lost_proc_events));
        let s = self.assembler.stats();
        let p = &self.last_parse;
        m.records.inc_by(s.records - p.records);
        m.record_bytes.inc_by(s.bytes - p.bytes);
        for (kind, now, before) in [
            ("bad_record", s.bad_records, p.bad_records),
            ("garbage", s.garbage_heads, p.garbage_heads),
            ("broken_message", s.broken_messages, p.broken_messages),
            ("lost_in_connection", s.gaps, p.gaps),
            ("h2_broken", s.h2_broken, p.h2_broken),
        ] {
            m.parse_errors
                .with_label_values(&[kind])
                .inc_by(now.saturating_sub(before));
        }
        m.connections_reused
            .inc_by(s.reused_addresses.saturating_sub(p.reused_addresses));
        self.last_parse = s;
        m.connections.set(self.assembler.connections() as i64);
        m.process_cache.set(self.identity.processes().len() as i64);
        m.principals.set(self.identity.principals().len() as i64);
        let st = self.audit.store.stats();
        m.store_bytes.set(st.disk_bytes as i64);
        if let Some(e) = &self.enforcer
            && let Ok(s) = e.state.lock()
        {
            let pending = s
                .approvals
                .iter()
                .filter(|a| a.state == crate::enforce::ApprovalState::Pending);
            let (n, oldest) = pending.fold((0i64, u64::MAX), |(n, o), a| {
                (n + 1, o.min(a.requested_boot_ns))
            });
            m.approvals_pending.set(n);
            m.approval_oldest_pending.set(if n == 0 {
                0
            } else {
                (self.clock.unix_ns(oldest) / 1_000_000_000) as i64
            });
        }
    }

    /// Masks (in place), stores, counts and prints one record.
    /// [`Self::deliver`], then tells the enforcer which approval the stored record raised or
    /// used.
    fn deliver_noted(
        &mut self,
        rec: &mut CallRecord,
        note: Option<crate::enforce::Note>,
        sink: &mut Sink,
    ) -> Result<()> {
        self.deliver(rec, sink)?;
        if let (Some(n), Some(e)) = (note, self.enforcer.as_mut()) {
            e.recorded(n, rec);
        }
        Ok(())
    }

    fn deliver(&mut self, rec: &mut CallRecord, sink: &mut Sink) -> Result<()> {
        self.store(rec);
        self.metrics.call(
            &rec.aws.service,
            rec.aws.iam_action.as_deref(),
            &rec.decision.effect,
            rec.identity.key(),
        );
        let line = serde_json::to_string(&rec)?;
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(std::sync::Arc::from(line.as_str()));
        }
        sink.write_line(&line)
    }

    /// An enforcement event (approval, endpoint decision): masked and stored in the trail
    /// like a call, streamed to `tail` as stored, printed as its `type` line.
    fn deliver_event(&mut self, ev: crate::enforce::TrailEvent, sink: &mut Sink) -> Result<()> {
        let mut rec = ev.rec;
        if ev.bare {
            self.resolve_bare(&mut rec);
        }
        self.store(&mut rec);
        if self.events.receiver_count() > 0 {
            let line = serde_json::to_string(&rec)?;
            let _ = self.events.send(std::sync::Arc::from(line.as_str()));
        }
        sink.write_value(&crate::enforce::output_line(&rec))
    }

    /// Masks a record in place and appends it to the audit store.
    fn store(&mut self, rec: &mut CallRecord) {
        match self.audit.record(rec) {
            Ok(latency) => {
                self.metrics.store_events.inc();
                self.metrics
                    .store_write_seconds
                    .observe(latency.as_secs_f64());
            }
            Err(e) => warn!("audit store append failed: {e:#}"),
        }
    }

    /// Process, workload and identity of a record built from a kernel decision alone.
    fn resolve_bare(&self, rec: &mut CallRecord) {
        let akid = rec.identity.access_key_id.clone();
        let p = &rec.process;
        let (mut process, workload, mut identity) =
            self.identity
                .resolve(p.pid, p.tid, p.cgroup_id, akid.as_deref());
        if process.comm.is_empty() {
            process.comm = std::mem::take(&mut rec.process.comm);
        }
        process.uid = rec.process.uid;
        if identity.access_key_id.is_none() {
            identity.access_key_id = akid;
        }
        rec.process = process;
        rec.workload = workload;
        rec.identity = identity;
    }

    /// A plain-HTTP credential endpoint exchange (instance metadata, container credentials):
    /// not an AWS call, but it says which principal the keys it handed out belong to.
    fn learn_plain(&self, ex: &Exchange) {
        let Some(resp) = ex.response.as_ref() else {
            return;
        };
        let learned = self.identity.principals().learn_from_exchange(&learnable(
            ex,
            resp,
            ex.request.head.header_str("host"),
            None,
        ));
        if let Some(l) = learned {
            info!(
                access_key_id = %l.access_key_id,
                principal = l.arn.as_deref().unwrap_or("(account only)"),
                source = l.source.as_str(),
                cgroup = ex.origin.cgroup_id,
                "credentials handed out by a plain-HTTP endpoint"
            );
        }
    }

    /// Fills process, workload and principal. Credential responses (STS, IMDS, container
    /// endpoints) teach the principal map first, so the call that revealed a principal is
    /// attributed to it too.
    fn attribute(&self, ex: &Exchange, rec: &mut CallRecord) {
        let akid = rec.identity.access_key_id.clone();
        // Signed calls teach principals only through STS; unsigned ones may be the
        // instance-metadata or container credential endpoints.
        let may_teach = akid.is_none() || rec.aws.service == "sts";
        if let Some(resp) = ex.response.as_ref().filter(|_| may_teach) {
            let _ = self.identity.principals().learn_from_exchange(&learnable(
                ex,
                resp,
                rec.request.host.as_deref(),
                akid.as_deref(),
            ));
        }
        let o = &ex.origin;
        let (mut process, workload, mut identity) =
            self.identity
                .resolve(o.tgid, o.tid, o.cgroup_id, akid.as_deref());
        if process.comm.is_empty() {
            process.comm = o.comm.clone();
        }
        process.uid = o.uid;
        if identity.access_key_id.is_none() {
            identity.access_key_id = akid;
        }
        rec.process = process;
        rec.workload = workload;
        rec.identity = identity;
    }

    fn emit(&mut self, sink: &mut Sink) -> Result<()> {
        if let Some(e) = self.enforcer.as_mut() {
            e.sync_identity(&self.identity);
            e.poll();
        }
        for ex in std::mem::take(&mut self.exchanges) {
            if ex.source == hoop_common::SRC_PLAIN {
                self.learn_plain(&ex);
                continue;
            }
            let principals = self.identity.principals();
            let Some(mut rec) = record::build(&ex, &self.clock, &|akid: &str| {
                principals.lookup(akid).and_then(|p| p.account_id.clone())
            }) else {
                continue;
            };
            self.attribute(&ex, &mut rec);
            let note = self.enforcer.as_mut().and_then(|e| {
                e.annotate(
                    &mut rec,
                    ex.key.tgid,
                    ex.key.conn,
                    ex.request_ts,
                    ex.response_ts,
                )
            });
            self.deliver_noted(&mut rec, note, sink)?;
        }
        // Blocked requests that never got an exchange are calls too: masked and stored
        // like every other record (the access review counts denied calls).
        let expired = self
            .enforcer
            .as_mut()
            .map(|e| e.expire())
            .unwrap_or_default();
        for (mut rec, note) in expired {
            self.resolve_bare(&mut rec);
            self.deliver_noted(&mut rec, note, sink)?;
        }
        let events = self
            .enforcer
            .as_mut()
            .map(|e| e.take_events())
            .unwrap_or_default();
        for ev in events {
            self.deliver_event(ev, sink)?;
        }
        if let Some(w) = self.raw.as_mut() {
            w.flush()?;
        }
        sink.flush()
    }
}

/// What the principal map reads of an exchange and its response.
fn learnable<'a>(
    ex: &'a Exchange,
    resp: &'a crate::http::Message,
    host: Option<&'a str>,
    signing_access_key_id: Option<&'a str>,
) -> hoop_identity::principal::HttpExchange<'a> {
    hoop_identity::principal::HttpExchange {
        host,
        method: &ex.request.head.method,
        target: &ex.request.head.target,
        signing_access_key_id,
        status: resp.head.status,
        response_body: &resp.body,
    }
}

/// Fetches the node's instance identity document off the event loop (off EC2 this fails
/// within the timeout and the channel closes).
fn spawn_instance_identity_fetch() -> Result<mpsc::Receiver<Vec<u8>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("hoop-imds".into())
        .spawn(move || {
            match hoop_identity::imds::fetch_identity_document(
                hoop_identity::imds::IMDS_BASE,
                Duration::from_secs(2),
            ) {
                Ok(doc) => {
                    let _ = tx.send(doc);
                }
                Err(e) => {
                    tracing::debug!("no instance metadata ({e}): not on EC2, or IMDS is blocked")
                }
            }
        })
        .context("spawn instance identity fetch")?;
    Ok(rx)
}

/// Where records go.
struct Sink {
    stdout: Option<std::io::BufWriter<std::io::Stdout>>,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl Sink {
    fn open(opts: &RunOptions) -> Result<Self> {
        let file = match &opts.output {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("open output file {}", p.display()))?,
            )),
            None => None,
        };
        Ok(Sink {
            stdout: opts
                .stdout
                .then(|| std::io::BufWriter::new(std::io::stdout())),
            file,
        })
    }

    /// A non-record line (approval events, endpoint decisions).
    fn write_value(&mut self, v: &serde_json::Value) -> Result<()> {
        self.write_line(&v.to_string())
    }

    fn write_line(&mut self, line: &str) -> Result<()> {
        if let Some(w) = self.stdout.as_mut() {
            writeln!(w, "{line}")?;
        }
        if let Some(w) = self.file.as_mut() {
            writeln!(w, "{line}")?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if let Some(w) = self.stdout.as_mut() {
            w.flush()?;
        }
        if let Some(w) = self.file.as_mut() {
            w.flush()?;
        }
        Ok(())
    }
}

/// Owns the loaded programs; attaches TLS probes to files that processes map.
fn discovery_loop(
    mut probes: Probes,
    mut disc: Discovery,
    rx: mpsc::Receiver<u32>,
    me: u32,
    metrics: &Metrics,
) {
    // Min-heap of (due, pid) rescans.
    let mut due: BinaryHeap<std::cmp::Reverse<(Instant, u32)>> = BinaryHeap::new();
    let mut next_full = Instant::now() + FULL_SCAN_EVERY;
    loop {
        let now = Instant::now();
        let wake = due
            .peek()
            .map(|r| r.0.0)
            .unwrap_or(next_full)
            .min(next_full);
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(pid) => {
                for d in RESCAN_DELAYS {
                    due.push(std::cmp::Reverse((Instant::now() + d, pid)));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let mut targets = Vec::new();
        while due.peek().is_some_and(|r| r.0.0 <= now) {
            if let Some(std::cmp::Reverse((_, pid))) = due.pop() {
                targets.extend(disc.scan_pid(pid));
            }
        }
        if now >= next_full {
            targets.extend(disc.scan_all(me));
            next_full = now + FULL_SCAN_EVERY;
        }
        attach_targets(&mut probes, &targets, metrics);
        if !metrics.is_ready() && probes.uprobes_attached() > 0 {
            metrics.set_ready();
            info!("TLS probes attached: ready");
        }
    }
}

/// Attaches probes to newly discovered TLS files and updates the discovery and attach series.
fn attach_targets(probes: &mut Probes, targets: &[discovery::Target], metrics: &Metrics) {
    for t in targets {
        metrics.library_discovered(t);
        if let Err(e) = probes.attach_tls(t) {
            warn!(file = %t.path, "attach failed: {e:#}");
            metrics.attach_failures.inc();
        }
    }
    metrics
        .attach_failures
        .inc_by(probes.take_attach_failures() as u64);
    metrics.tls_libraries.set(probes.files_attached() as i64);
    metrics.uprobes.set(probes.uprobes_attached() as i64);
}
