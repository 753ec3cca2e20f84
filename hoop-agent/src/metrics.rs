//! Prometheus metrics (`/metrics`) and health endpoints (`/healthz`, `/readyz`).
//!
//! Label sets are bounded: services and IAM actions come from the AWS model (a fixed set) and
//! are capped anyway; per-identity series exist only when configured, up to a cap, with the
//! rest folded into `identity="other"`.

use anyhow::{Context, Result};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tracing::info;

/// Distinct (service, action, decision) label sets kept before folding into `other`.
const MAX_ACTION_SERIES: usize = 5000;

pub struct Metrics {
    registry: Registry,
    calls: IntCounterVec,
    action_series: Mutex<HashSet<(String, String, String)>>,
    identity_calls: Option<(IntCounterVec, usize)>,
    identity_series: Mutex<HashSet<String>>,
    pub records: IntCounter,
    pub record_bytes: IntCounter,
    pub records_lost: IntCounter,
    pub record_bytes_lost: IntCounter,
    pub proc_events_lost: IntCounter,
    pub parse_errors: IntCounterVec,
    pub unclassified: IntCounter,
    pub tls_libraries: IntGauge,
    /// TLS files found, by [`library_kind`]; attached or not.
    pub tls_discovered: IntGaugeVec,
    pub attach_failures: IntCounter,
    pub uprobes: IntGauge,
    pub connections: IntGauge,
    pub connections_muted: IntCounter,
    pub connections_reused: IntCounter,
    pub process_cache: IntGauge,
    pub principals: IntGauge,
    pub store_events: IntCounter,
    pub store_bytes: IntGauge,
    pub store_write_seconds: Histogram,
    pub approvals_pending: IntGauge,
    pub approval_oldest_pending: IntGauge,
    pub ready_gauge: IntGauge,
    ready: AtomicBool,
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    /// `identity_cap`: export per-identity call counts for at most this many identities
    /// (0 = no identity labels).
    pub fn new(identity_cap: usize) -> Result<Arc<Self>> {
        let r = Registry::new_custom(Some("hoop".into()), None)?;
        let calls = IntCounterVec::new(
            Opts::new(
                "aws_calls_total",
                "AWS API calls seen, by service, IAM action and decision",
            ),
            &["service", "action", "decision"],
        )?;
        r.register(Box::new(calls.clone()))?;
        let identity_calls = if identity_cap > 0 {
            let v = IntCounterVec::new(
                Opts::new(
                    "identity_calls_total",
                    "AWS API calls by identity (principal ARN or access key id), capped",
                ),
                &["identity"],
            )?;
            r.register(Box::new(v.clone()))?;
            Some((v, identity_cap))
        } else {
            None
        };
        let parse_errors = IntCounterVec::new(
            Opts::new(
                "parse_errors_total",
                "Plaintext that could not be parsed, by kind",
            ),
            &["kind"],
        )?;
        r.register(Box::new(parse_errors.clone()))?;
        let tls_discovered = IntGaugeVec::new(
            Opts::new(
                "tls_libraries_discovered",
                "Files with TLS functions hoop probes, by kind (libssl, openssl_static, go)",
            ),
            &["kind"],
        )?;
        r.register(Box::new(tls_discovered.clone()))?;
        // Every kind from the start, so a zero is visible (and alertable) before any is found.
        for kind in LIBRARY_KINDS {
            tls_discovered.with_label_values(&[kind]).set(0);
        }
        let store_write_seconds = Histogram::with_opts(
            HistogramOpts::new("store_write_seconds", "Latency of audit store appends")
                .buckets(prometheus::exponential_buckets(0.000_01, 4.0, 10)?),
        )?;
        r.register(Box::new(store_write_seconds.clone()))?;
        let build = IntGaugeVec::new(
            Opts::new("build_info", "Agent build information (always 1)"),
            &["version"],
        )?;
        r.register(Box::new(build.clone()))?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Ok(Arc::new(Metrics {
            calls,
            action_series: Mutex::new(HashSet::new()),
            identity_calls,
            identity_series: Mutex::new(HashSet::new()),
            records: counter(
                &r,
                "records_total",
                "TLS plaintext records received from the kernel",
            )?,
            record_bytes: counter(
                &r,
                "record_bytes_total",
                "Plaintext bytes received from the kernel",
            )?,
            records_lost: counter(
                &r,
                "records_lost_total",
                "TLS records the kernel could not write to the ring buffer (it was full)",
            )?,
            record_bytes_lost: counter(
                &r,
                "record_bytes_lost_total",
                "Plaintext bytes of lost records",
            )?,
            proc_events_lost: counter(&r, "process_events_lost_total", "Exec/exit events lost")?,
            parse_errors,
            unclassified: counter(
                &r,
                "aws_unclassified_total",
                "AWS calls whose operation could not be determined",
            )?,
            tls_libraries: gauge(
                &r,
                "tls_libraries_attached",
                "TLS library files with probes attached",
            )?,
            tls_discovered,
            attach_failures: counter(
                &r,
                "tls_attach_failures_total",
                "TLS probes that failed to attach (a file that failed as a whole counts one)",
            )?,
            uprobes: gauge(&r, "uprobes_attached", "Uprobes attached")?,
            connections: gauge(
                &r,
                "connections_tracked",
                "TLS connections being reassembled",
            )?,
            connections_muted: counter(
                &r,
                "server_connections_muted_total",
                "Server-side TLS connections the kernel was told to stop copying",
            )?,
            connections_reused: counter(
                &r,
                "connection_address_reuses_total",
                "New connections found at the address of an old one (Go *tls.Conn reuse)",
            )?,
            process_cache: gauge(
                &r,
                "process_cache_entries",
                "Processes in the process cache",
            )?,
            principals: gauge(&r, "principals_known", "Access keys with a known principal")?,
            store_events: counter(
                &r,
                "store_events_total",
                "Events appended to the audit store",
            )?,
            store_bytes: gauge(&r, "store_bytes", "Bytes the audit store occupies on disk")?,
            store_write_seconds,
            approvals_pending: gauge(
                &r,
                "approvals_pending",
                "Approval requests awaiting a decision",
            )?,
            approval_oldest_pending: gauge(
                &r,
                "approval_oldest_pending_timestamp_seconds",
                "Unix time of the oldest pending approval request (0 when none)",
            )?,
            ready_gauge: gauge(
                &r,
                "ready",
                "1 once the start-up scan is done and probes are attached to what it found",
            )?,
            ready: AtomicBool::new(false),
            registry: r,
        }))
    }

    /// Counts one AWS call.
    pub fn call(&self, service: &str, action: Option<&str>, decision: &str, identity: &str) {
        let action = action.unwrap_or("unknown");
        if action == "unknown" {
            self.unclassified.inc();
        }
        let key = (
            service.to_string(),
            action.to_string(),
            decision.to_string(),
        );
        let known = match self.action_series.lock() {
            Ok(mut s) => s.contains(&key) || (s.len() < MAX_ACTION_SERIES && s.insert(key.clone())),
            Err(_) => false,
        };
        let (svc, act) = if known {
            (service, action)
        } else {
            ("other", "other")
        };
        self.calls.with_label_values(&[svc, act, decision]).inc();
        if let Some((v, cap)) = &self.identity_calls {
            let known = match self.identity_series.lock() {
                Ok(mut s) => {
                    s.contains(identity) || (s.len() < *cap && s.insert(identity.to_string()))
                }
                Err(_) => false,
            };
            v.with_label_values(&[if known { identity } else { "other" }])
                .inc();
        }
    }

    /// Counts a TLS file discovery found.
    pub fn library_discovered(&self, t: &crate::discovery::Target) {
        self.tls_discovered
            .with_label_values(&[library_kind(t)])
            .inc();
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
        self.ready_gauge.set(1);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The `kind` label values of `tls_libraries_discovered`.
pub const LIBRARY_KINDS: [&str; 3] = ["libssl", "openssl_static", "go"];

/// What a discovered TLS file is: Go's crypto/tls, a shared OpenSSL library, or an executable
/// with OpenSSL linked in (node).
pub fn library_kind(t: &crate::discovery::Target) -> &'static str {
    let go = crate::go_discovery::GO_FUNCTIONS
        .iter()
        .any(|(name, _)| t.functions.iter().any(|f| f.name == *name));
    let file = t.path.rsplit('/').next().unwrap_or_default();
    if go {
        "go"
    } else if file.contains(".so") {
        "libssl"
    } else {
        "openssl_static"
    }
}

/// Readiness: the start-up scan is done and, if it found TLS files, probes are attached to at
/// least one of them. A node with no TLS library yet is ready (later processes are attached
/// as they map theirs); one whose libraries all failed to attach is not.
pub fn ready_after_scan(discovered: usize, uprobes_attached: usize) -> bool {
    discovered == 0 || uprobes_attached > 0
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the runtime stops.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    use axum::{Router, http::StatusCode, routing::get};
    let m = metrics.clone();
    let r = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move {
                    if r.is_ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "probes not attached yet")
                    }
                }
            }),
        );
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("listen for metrics on {addr}"))?;
    listener.set_nonblocking(true)?;
    info!(%addr, "metrics and health endpoints listening");
    // A thread and runtime of its own: the agent's start-up (eBPF load, /proc scan) blocks
    // the main runtime for seconds, and /healthz and /readyz (503) must answer meanwhile.
    std::thread::Builder::new()
        .name("hoop-metrics".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("metrics server runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let served = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => axum::serve(l, app).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = served {
                    tracing::error!("metrics server stopped: {e}");
                }
            });
        })
        .context("spawn the metrics thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_caps_identities() {
        let m = Metrics::new(2).expect("metrics");
        m.call("s3", Some("s3:PutObject"), "allow", "arn:a");
        m.call("s3", Some("s3:PutObject"), "allow", "arn:b");
        m.call("s3", Some("s3:PutObject"), "allow", "arn:c");
        m.call("sts", None, "allow", "arn:a");
        let text = m.render();
        assert!(text.contains(
            "hoop_aws_calls_total{action=\"s3:PutObject\",decision=\"allow\",service=\"s3\"} 3"
        ));
        assert!(
            text.contains("hoop_identity_calls_total{identity=\"other\"} 1"),
            "{text}"
        );
        assert!(text.contains("hoop_aws_unclassified_total 1"));
        assert!(text.contains("hoop_build_info{version="));
        assert!(
            text.contains("hoop_tls_libraries_discovered{kind=\"go\"} 0"),
            "{text}"
        );
        assert!(text.contains("hoop_tls_attach_failures_total 0"));
    }

    fn target(path: &str, func: &'static str) -> crate::discovery::Target {
        crate::discovery::Target {
            open_path: path.into(),
            path: path.into(),
            dev: 1,
            ino: 2,
            functions: vec![crate::discovery::Function {
                name: func,
                address: 0,
                section_address: 0,
                section_offset: 0,
                worker: false,
            }],
        }
    }

    #[test]
    fn library_kinds() {
        let m = Metrics::new(0).expect("metrics");
        for t in [
            target("/usr/lib/x86_64-linux-gnu/libssl.so.3", "SSL_write"),
            target("/usr/bin/node", "SSL_write"),
            target("/usr/local/bin/terraform", crate::go_discovery::GO_WRITE),
            target("/opt/venv/lib/libssl-abc.so.1.1", "SSL_read_ex"),
        ] {
            m.library_discovered(&t);
        }
        let text = m.render();
        for line in [
            "hoop_tls_libraries_discovered{kind=\"libssl\"} 2",
            "hoop_tls_libraries_discovered{kind=\"openssl_static\"} 1",
            "hoop_tls_libraries_discovered{kind=\"go\"} 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(ready_after_scan(0, 0), "nothing to attach to");
        assert!(ready_after_scan(3, 5));
        assert!(!ready_after_scan(3, 0), "found libraries, attached none");
    }

    #[test]
    fn action_series_are_capped() {
        let m = Metrics::new(0).expect("metrics");
        for i in 0..MAX_ACTION_SERIES + 10 {
            m.call("s3", Some(&format!("s3:Op{i}")), "allow", "");
        }
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("hoop_aws_calls_total{"))
            .count();
        assert_eq!(series, MAX_ACTION_SERIES + 1, "capped, plus the fold");
        assert!(
            text.contains(
                "hoop_aws_calls_total{action=\"other\",decision=\"allow\",service=\"other\"} 10"
            ),
            "overflow folds into other"
        );
    }
}
