//! The `run` daemon: kernel events in, AWS call records out.
//!
//! Threads: the tokio runtime drives the event loop (ring buffers → reassembly → records →
//! sinks); a discovery thread owns the loaded programs and attaches TLS probes to files that
//! new processes map.

use crate::capture::{Assembler, CaptureConfig, Exchange};
use crate::discovery::{self, Discovery};
use crate::probes::{CounterReader, KernelCounters, Probes};
use crate::procs::ProcTable;
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
    /// Also write every raw TLS record to this file (length-prefixed), for debugging and for
    /// recording test fixtures. The file holds plaintext: use only with test credentials.
    pub record_raw: Option<PathBuf>,
}

/// Rescans of a new process: at exec (static TLS in the executable), then after the dynamic
/// loader and `dlopen` had time to map libraries.
const RESCAN_DELAYS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(200),
    Duration::from_millis(2000),
];
/// Full rescan of /proc, for libraries mapped long after exec.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(10);
/// Connections of an exited process are closed this long after the exit event, so records
/// still in the TLS ring (a separate buffer) are processed first.
const EXIT_GRACE_NS: u64 = 1_000_000_000;

pub async fn run(opts: RunOptions) -> Result<()> {
    let mut probes = Probes::load(opts.ring_bytes)?;
    if let Some(logger) = probes.start_kernel_log() {
        spawn_kernel_log(logger)?;
    }
    probes.load_uprobes()?;
    probes.attach_process_tracepoints()?;
    let tls_ring = probes.take_ring("TLS_EVENTS")?;
    let proc_ring = probes.take_ring("PROC_EVENTS")?;
    let counters = probes.take_counters()?;

    let mut disc = Discovery::new();
    let me = std::process::id();
    let mut targets = disc.scan_paths(&discovery::system_libssl_candidates());
    targets.extend(disc.scan_all(me));
    for t in &targets {
        if let Err(e) = probes.attach_tls(t) {
            warn!(file = %t.path, "attach failed: {e:#}");
        }
    }
    info!(
        files = probes.files_attached(),
        probes = probes.uprobes_attached(),
        scanned = disc.files_seen(),
        "hoop-agent ready"
    );
    let (scan_tx, scan_rx) = mpsc::channel::<u32>();
    std::thread::Builder::new()
        .name("hoop-discovery".into())
        .spawn(move || discovery_loop(probes, disc, scan_rx, me))
        .context("spawn discovery thread")?;

    let mut sink = Sink::open(&opts)?;
    let mut ev = EventLoop {
        assembler: Assembler::new(opts.capture),
        clock: Clock::new(),
        procs: ProcTable::new(),
        exits: Vec::new(),
        exchanges: Vec::new(),
        scan_tx,
        counters,
        last_counters: KernelCounters::default(),
        raw: match &opts.record_raw {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
            )),
            None => None,
        },
    };
    ev.procs.scan_existing();

    let mut tls = poll(tls_ring)?;
    let mut proc = poll(proc_ring)?;
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
    procs: ProcTable,
    /// (boot ns when due, tgid) of exited processes whose connections are to be closed.
    exits: Vec<(u64, u32)>,
    exchanges: Vec<Exchange>,
    scan_tx: mpsc::Sender<u32>,
    counters: CounterReader,
    last_counters: KernelCounters,
    raw: Option<std::io::BufWriter<std::fs::File>>,
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
                    self.procs.on_exec(ev.tgid);
                    let _ = self.scan_tx.send(ev.tgid);
                }
                PROC_EXIT => {
                    self.procs.on_exit(ev.tgid);
                    self.exits.push((ev.ts_ns + EXIT_GRACE_NS, ev.tgid));
                }
                _ => {}
            }
        }
    }

    fn tick(&mut self) {
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
        self.procs.prune();
        let c = self.counters.read();
        if c.lost_records > self.last_counters.lost_records {
            warn!(
                lost = c.lost_records - self.last_counters.lost_records,
                total = c.lost_records,
                "TLS records lost: ring buffer full"
            );
        }
        self.last_counters = c;
    }

    fn emit(&mut self, sink: &mut Sink) -> Result<()> {
        for ex in self.exchanges.drain(..) {
            let Some(mut rec) = record::build(&ex, &self.clock) else {
                continue;
            };
            rec.process = self.procs.describe(&ex.origin);
            sink.write(&rec)?;
        }
        if let Some(w) = self.raw.as_mut() {
            w.flush()?;
        }
        sink.flush()
    }
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
            stdout: opts.stdout.then(|| std::io::BufWriter::new(std::io::stdout())),
            file,
        })
    }

    fn write(&mut self, rec: &CallRecord) -> Result<()> {
        let line = serde_json::to_string(rec)?;
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
fn discovery_loop(mut probes: Probes, mut disc: Discovery, rx: mpsc::Receiver<u32>, me: u32) {
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
        for t in &targets {
            if let Err(e) = probes.attach_tls(t) {
                warn!(file = %t.path, "attach failed: {e:#}");
            }
        }
    }
}
