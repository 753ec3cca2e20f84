//! Pod metadata of this node from the Kubernetes API: list, then watch
//! `/api/v1/pods?fieldSelector=spec.nodeName=<node>` from the list's resourceVersion, re-list on
//! 410 Gone, back off on errors. One background thread with a blocking rustls client; the
//! cache is keyed by pod UID and by container id.
//!
//! Only the fields we need are deserialised: a pod spec's env values and the like are skipped
//! by serde without being copied.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Kubernetes settings (`identity.kubernetes` in the agent config).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct K8sConfig {
    /// `None`: on when `KUBERNETES_SERVICE_HOST` is set or `api_url` is given.
    pub enabled: Option<bool>,
    /// API base URL; default `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub api_url: Option<String>,
    pub token_path: PathBuf,
    pub ca_path: PathBuf,
    /// This node's name; default `$NODE_NAME` (downward API). Without one, all pods are
    /// watched.
    pub node_name: Option<String>,
    /// Server-side watch timeout; the watch is renewed from the last resourceVersion.
    pub watch_timeout_secs: u64,
    pub max_backoff_secs: u64,
    /// Pods per list page.
    pub page_size: u32,
    /// Deleted pods stay resolvable this long (their last calls are still being parsed).
    pub deleted_grace_secs: u64,
}

impl Default for K8sConfig {
    fn default() -> Self {
        K8sConfig {
            enabled: None,
            api_url: None,
            token_path: PathBuf::from(SA_DIR).join("token"),
            ca_path: PathBuf::from(SA_DIR).join("ca.crt"),
            node_name: None,
            watch_timeout_secs: 290,
            max_backoff_secs: 60,
            page_size: 500,
            deleted_grace_secs: 300,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("kubernetes: cannot read CA file {0}: {1}")]
    Ca(PathBuf, std::io::Error),
    #[error("kubernetes: no certificate in CA file {0}")]
    NoCa(PathBuf),
    #[error("kubernetes: {0}")]
    Http(String),
    #[error("kubernetes: resource version too old")]
    Gone,
    #[error("kubernetes: bad response: {0}")]
    Parse(String),
}

/// What we keep about one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Container ids without the `containerd://` scheme.
    pub container_ids: Vec<String>,
}

#[derive(Debug)]
struct PodEntry {
    pod: Arc<PodMeta>,
    deleted: Option<Instant>,
}

#[derive(Debug, Default)]
struct PodState {
    by_uid: HashMap<String, PodEntry>,
    by_container: HashMap<String, String>,
}

/// Pods of this node by UID and container id.
#[derive(Debug)]
pub struct PodCache {
    state: RwLock<PodState>,
    deleted_grace: Duration,
    synced: AtomicBool,
    relists: AtomicU64,
    errors: AtomicU64,
}

impl Default for PodCache {
    fn default() -> Self {
        PodCache::new(Duration::from_secs(300))
    }
}

impl PodCache {
    pub fn new(deleted_grace: Duration) -> Self {
        PodCache {
            state: RwLock::new(PodState::default()),
            deleted_grace,
            synced: AtomicBool::new(false),
            relists: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, PodState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, PodState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn by_uid(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.read().by_uid.get(uid).map(|e| e.pod.clone())
    }

    pub fn by_container(&self, id: &str) -> Option<Arc<PodMeta>> {
        let st = self.read();
        let uid = st.by_container.get(id)?;
        st.by_uid.get(uid).map(|e| e.pod.clone())
    }

    /// Pods known and not deleted.
    pub fn len(&self) -> usize {
        self.read()
            .by_uid
            .values()
            .filter(|e| e.deleted.is_none())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once a first list has been loaded.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Full re-lists done (the first list included).
    pub fn relists(&self) -> u64 {
        self.relists.load(Ordering::Relaxed)
    }

    /// API errors seen (each followed by a backoff).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn upsert(&self, pod: PodMeta) {
        let mut st = self.write();
        if let Some(old) = st.by_uid.get(&pod.uid).map(|e| e.pod.clone()) {
            for c in &old.container_ids {
                st.by_container.remove(c);
            }
        }
        for c in &pod.container_ids {
            st.by_container.insert(c.clone(), pod.uid.clone());
        }
        st.by_uid.insert(
            pod.uid.clone(),
            PodEntry {
                pod: Arc::new(pod),
                deleted: None,
            },
        );
        self.expire(&mut st);
    }

    /// Marks a pod deleted; it is dropped after the grace period.
    pub fn remove(&self, uid: &str) {
        let mut st = self.write();
        if let Some(e) = st.by_uid.get_mut(uid) {
            e.deleted.get_or_insert_with(Instant::now);
        }
        self.expire(&mut st);
    }

    /// A fresh list: pods absent from it count as deleted.
    fn replace_all(&self, pods: Vec<PodMeta>) {
        let listed: std::collections::HashSet<String> =
            pods.iter().map(|p| p.uid.clone()).collect();
        {
            let mut st = self.write();
            for (uid, e) in st.by_uid.iter_mut() {
                if !listed.contains(uid) {
                    e.deleted.get_or_insert_with(Instant::now);
                }
            }
        }
        for p in pods {
            self.upsert(p);
        }
        self.relists.fetch_add(1, Ordering::Relaxed);
        self.synced.store(true, Ordering::Relaxed);
    }

    fn expire(&self, st: &mut PodState) {
        let grace = self.deleted_grace;
        let gone: Vec<String> = st
            .by_uid
            .iter()
            .filter(|(_, e)| e.deleted.is_some_and(|t| t.elapsed() >= grace))
            .map(|(k, _)| k.clone())
            .collect();
        for uid in gone {
            if let Some(e) = st.by_uid.remove(&uid) {
                for c in &e.pod.container_ids {
                    if st.by_container.get(c) == Some(&uid) {
                        st.by_container.remove(c);
                    }
                }
            }
        }
    }
}

// ---- API shapes (only the fields we use) ----

#[derive(Deserialize)]
struct ObjectMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct PodSpec {
    #[serde(default, rename = "serviceAccountName")]
    service_account_name: Option<String>,
}

#[derive(Deserialize)]
struct ContainerStatus {
    #[serde(default, rename = "containerID")]
    container_id: Option<String>,
}

#[derive(Deserialize, Default)]
struct PodStatus {
    #[serde(default, rename = "containerStatuses")]
    container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default, rename = "initContainerStatuses")]
    init_container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default, rename = "ephemeralContainerStatuses")]
    ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<PodSpec>,
    #[serde(default)]
    status: Option<PodStatus>,
}

#[derive(Deserialize)]
struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(default, rename = "continue")]
    continue_token: Option<String>,
}

#[derive(Deserialize)]
struct PodList {
    metadata: ListMeta,
    #[serde(default)]
    items: Option<Vec<Pod>>,
}

#[derive(Deserialize)]
struct WatchEvent<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    object: &'a RawValue,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct Bookmark {
    metadata: ObjectMeta,
}

/// `containerd://<id>` → `<id>`.
fn strip_scheme(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

fn pod_meta(p: Pod) -> Option<PodMeta> {
    let uid = p.metadata.uid.filter(|u| !u.is_empty())?;
    let status = p.status.unwrap_or_default();
    let container_ids = [
        status.container_statuses,
        status.init_container_statuses,
        status.ephemeral_container_statuses,
    ]
    .into_iter()
    .flatten()
    .flatten()
    .filter_map(|c| c.container_id)
    .map(|c| strip_scheme(&c).to_string())
    .filter(|c| !c.is_empty())
    .collect();
    Some(PodMeta {
        uid,
        namespace: p.metadata.namespace.unwrap_or_default(),
        name: p.metadata.name.unwrap_or_default(),
        service_account: p.spec.and_then(|s| s.service_account_name),
        labels: p.metadata.labels.unwrap_or_default(),
        container_ids,
    })
}

/// Percent-encodes a query value (RFC 3986 unreserved bytes pass).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The blocking API client.
struct Client {
    agent: ureq::Agent,
    base: String,
    token_path: PathBuf,
    selector: Option<String>,
    cfg: K8sConfig,
}

/// The CA bundle to trust: the configured file (the service account's cluster CA), or, when
/// the default service-account CA does not exist (an API server outside the cluster, a custom
/// `api_url`), the system's CA bundle as openssl-probe finds it (`SSL_CERT_FILE`, then the
/// distribution's usual paths). A CA file that was configured explicitly and is missing is an
/// error: trusting the system roots instead would widen what the operator asked for.
fn read_ca(configured: &std::path::Path) -> Result<(PathBuf, Vec<u8>), K8sError> {
    let is_default = configured == std::path::Path::new(SA_DIR).join("ca.crt");
    match std::fs::read(configured) {
        Ok(pem) => Ok((configured.to_path_buf(), pem)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && is_default => {
            let probe = openssl_probe::probe();
            let Some(file) = probe.cert_file else {
                return Err(K8sError::Ca(configured.to_path_buf(), e));
            };
            tracing::info!(
                ca = %file.display(),
                "kubernetes: {} not found; trusting the system CA bundle",
                configured.display()
            );
            let pem = std::fs::read(&file).map_err(|e| K8sError::Ca(file.clone(), e))?;
            Ok((file, pem))
        }
        Err(e) => Err(K8sError::Ca(configured.to_path_buf(), e)),
    }
}

/// How a watch ended.
enum WatchEnd {
    /// Server closed (timeout): re-watch from this version.
    Closed(String),
    /// 410: re-list.
    Gone,
}

const MAX_LINE: u64 = 64 << 20;

impl Client {
    fn new(cfg: &K8sConfig, base: String) -> Result<Self, K8sError> {
        let (ca_path, pem) = read_ca(&cfg.ca_path)?;
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(K8sError::NoCa(ca_path));
        }
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A watch is quiet between events; bookmarks arrive about every minute.
            .timeout_per_read(Some(Duration::from_secs(cfg.watch_timeout_secs + 60)))
            .user_agent("hoop-agent")
            .build()
            .into();
        let node = cfg
            .node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty());
        if node.is_none() {
            tracing::warn!("kubernetes: no node name (NODE_NAME); watching all pods");
        }
        Ok(Client {
            agent,
            base: base.trim_end_matches('/').to_string(),
            token_path: cfg.token_path.clone(),
            selector: node.map(|n| format!("spec.nodeName={n}")),
            cfg: cfg.clone(),
        })
    }

    fn get(&self, query: &str) -> Result<ureq::http::Response<ureq::Body>, K8sError> {
        let url = format!("{}/api/v1/pods?{query}", self.base);
        let mut req = self.agent.get(&url).header("Accept", "application/json");
        // Re-read every time: projected service account tokens rotate.
        if let Ok(t) = std::fs::read_to_string(&self.token_path) {
            let t = t.trim();
            if !t.is_empty() {
                req = req.header("Authorization", &format!("Bearer {t}"));
            }
        }
        let resp = req.call().map_err(|e| K8sError::Http(e.to_string()))?;
        match resp.status().as_u16() {
            200 => Ok(resp),
            410 => Err(K8sError::Gone),
            s => Err(K8sError::Http(format!("GET /api/v1/pods: status {s}"))),
        }
    }

    fn selector_q(&self) -> String {
        self.selector
            .as_deref()
            .map(|s| format!("fieldSelector={}&", enc(s)))
            .unwrap_or_default()
    }

    /// Lists all pages; returns pods and the list's resourceVersion.
    fn list(&self) -> Result<(Vec<PodMeta>, String), K8sError> {
        let mut pods = Vec::new();
        let mut cont: Option<String> = None;
        loop {
            let mut q = format!("{}limit={}", self.selector_q(), self.cfg.page_size.max(1));
            if let Some(c) = &cont {
                q.push_str(&format!("&continue={}", enc(c)));
            }
            let mut resp = self.get(&q)?;
            let body = resp
                .body_mut()
                .with_config()
                .limit(MAX_LINE)
                .read_to_vec()
                .map_err(|e| K8sError::Http(e.to_string()))?;
            let list: PodList =
                serde_json::from_slice(&body).map_err(|e| K8sError::Parse(e.to_string()))?;
            pods.extend(list.items.into_iter().flatten().filter_map(pod_meta));
            match list.metadata.continue_token.filter(|c| !c.is_empty()) {
                Some(c) => cont = Some(c),
                None => {
                    let rv = list.metadata.resource_version.unwrap_or_default();
                    return Ok((pods, rv));
                }
            }
        }
    }

    /// Watches from `rv`, applying events to `cache` until the server closes or `stop`.
    fn watch(&self, rv: &str, cache: &PodCache, stop: &AtomicBool) -> Result<WatchEnd, K8sError> {
        let q = format!(
            "{}watch=1&allowWatchBookmarks=true&timeoutSeconds={}&resourceVersion={}",
            self.selector_q(),
            self.cfg.watch_timeout_secs,
            enc(rv)
        );
        let resp = self.get(&q)?;
        let mut reader = BufReader::new(resp.into_body().into_reader());
        let mut rv = rv.to_string();
        let mut line = Vec::new();
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(WatchEnd::Closed(rv));
            }
            line.clear();
            let n = (&mut reader)
                .take(MAX_LINE)
                .read_until(b'\n', &mut line)
                .map_err(|e| K8sError::Http(e.to_string()))?;
            if n == 0 {
                return Ok(WatchEnd::Closed(rv));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let ev: WatchEvent<'_> =
                serde_json::from_slice(&line).map_err(|e| K8sError::Parse(e.to_string()))?;
            match ev.kind.as_str() {
                "ADDED" | "MODIFIED" | "DELETED" => {
                    let pod: Pod = serde_json::from_str(ev.object.get())
                        .map_err(|e| K8sError::Parse(e.to_string()))?;
                    if let Some(v) = pod.metadata.resource_version.clone() {
                        rv = v;
                    }
                    let deleted = ev.kind == "DELETED";
                    if let Some(meta) = pod_meta(pod) {
                        if deleted {
                            cache.remove(&meta.uid);
                        } else {
                            cache.upsert(meta);
                        }
                    }
                }
                "BOOKMARK" => {
                    if let Ok(b) = serde_json::from_str::<Bookmark>(ev.object.get())
                        && let Some(v) = b.metadata.resource_version
                    {
                        rv = v;
                    }
                }
                "ERROR" => {
                    let st: Status = serde_json::from_str(ev.object.get())
                        .map_err(|e| K8sError::Parse(e.to_string()))?;
                    if st.code == Some(410) || st.reason.as_deref() == Some("Expired") {
                        return Ok(WatchEnd::Gone);
                    }
                    return Err(K8sError::Http(format!(
                        "watch error {:?}: {}",
                        st.code,
                        st.message.unwrap_or_default()
                    )));
                }
                other => tracing::debug!(kind = other, "kubernetes: unknown watch event"),
            }
        }
    }
}

/// The background list/watch thread and its cache.
#[derive(Debug)]
pub struct PodWatcher {
    cache: Arc<PodCache>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Sleeps up to `d`, waking early on stop.
fn nap(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

fn run(client: Client, cache: Arc<PodCache>, stop: Arc<AtomicBool>) {
    let max_backoff = Duration::from_secs(client.cfg.max_backoff_secs.max(1));
    let mut backoff = Duration::from_millis(500);
    let fail = |e: &K8sError, backoff: &mut Duration| {
        cache.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, retry_in = ?*backoff, "kubernetes: pod list/watch failed");
        nap(*backoff, &stop);
        *backoff = (*backoff * 2).min(max_backoff);
    };
    'relist: while !stop.load(Ordering::Relaxed) {
        let mut rv = match client.list() {
            Ok((pods, rv)) => {
                tracing::info!(pods = pods.len(), "kubernetes: pods listed");
                cache.replace_all(pods);
                rv
            }
            Err(e) => {
                fail(&e, &mut backoff);
                continue;
            }
        };
        backoff = Duration::from_millis(500);
        while !stop.load(Ordering::Relaxed) {
            match client.watch(&rv, &cache, &stop) {
                Ok(WatchEnd::Closed(v)) => rv = v,
                Ok(WatchEnd::Gone) | Err(K8sError::Gone) => {
                    tracing::info!("kubernetes: watch expired; re-listing");
                    continue 'relist;
                }
                Err(e) => {
                    fail(&e, &mut backoff);
                    // Resume from where we were; a 410 then brings us to a re-list.
                }
            }
        }
    }
}

impl PodWatcher {
    /// Starts the watcher when enabled (in a cluster, or `api_url` configured); `Ok(None)`
    /// when there is no cluster.
    pub fn start(cfg: &K8sConfig) -> Result<Option<PodWatcher>, K8sError> {
        Self::start_with_env(cfg, &|k| std::env::var(k).ok())
    }

    /// [`PodWatcher::start`] with the process environment given (the in-cluster service
    /// variables the kubelet sets in every container).
    pub fn start_with_env(
        cfg: &K8sConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<PodWatcher>, K8sError> {
        let env_base = || {
            let host = env("KUBERNETES_SERVICE_HOST")?;
            let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            Some(format!("https://{host}:{port}"))
        };
        let base = cfg.api_url.clone().or_else(env_base);
        let base = match (cfg.enabled, base) {
            (Some(false), _) | (None, None) => return Ok(None),
            (Some(true), None) => {
                return Err(K8sError::Http(
                    "enabled but no api_url and KUBERNETES_SERVICE_HOST unset".into(),
                ));
            }
            (_, Some(b)) => b,
        };
        let client = Client::new(cfg, base)?;
        let cache = Arc::new(PodCache::new(Duration::from_secs(cfg.deleted_grace_secs)));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (cache.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("hoop-k8s-pods".into())
            .spawn(move || run(client, c, s))
            .map_err(|e| K8sError::Http(format!("spawn: {e}")))?;
        Ok(Some(PodWatcher {
            cache,
            stop,
            thread: Some(thread),
        }))
    }

    pub fn cache(&self) -> Arc<PodCache> {
        self.cache.clone()
    }

    /// Asks the thread to stop; it ends at its next event, timeout or backoff tick. Does not
    /// wait for a quiet watch to end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for PodWatcher {
    fn drop(&mut self) {
        self.stop();
        // Detach: joining could wait for a quiet watch up to its timeout.
        drop(self.thread.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_meta_from_fixture_shapes() {
        let list: PodList =
            serde_json::from_str(include_str!("../tests/fixtures/podlist.json")).expect("list");
        assert_eq!(list.metadata.resource_version.as_deref(), Some("104857"));
        let pods: Vec<PodMeta> = list
            .items
            .into_iter()
            .flatten()
            .filter_map(pod_meta)
            .collect();
        assert_eq!(pods.len(), 2);
        let p = &pods[0];
        assert_eq!(p.namespace, "agents");
        assert_eq!(p.service_account.as_deref(), Some("claude-agent"));
        assert_eq!(
            p.labels.get("app").map(String::as_str),
            Some("claude-agent")
        );
        assert!(p.container_ids.iter().all(|c| !c.contains("://")));
        assert_eq!(p.container_ids.len(), 2, "init + main");
    }

    #[test]
    fn no_cluster_is_a_no_op() {
        let cfg = K8sConfig {
            enabled: Some(false),
            ..Default::default()
        };
        assert!(PodWatcher::start(&cfg).expect("ok").is_none());
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            assert!(
                PodWatcher::start(&K8sConfig::default())
                    .expect("ok")
                    .is_none()
            );
            assert!(
                PodWatcher::start(&K8sConfig {
                    enabled: Some(true),
                    ..Default::default()
                })
                .is_err()
            );
        }
    }

    #[test]
    fn cache_indexes_and_deleted_grace() {
        let c = PodCache::new(Duration::from_secs(0));
        c.upsert(PodMeta {
            uid: "u1".into(),
            container_ids: vec!["a".into()],
            ..Default::default()
        });
        assert!(c.by_container("a").is_some());
        c.upsert(PodMeta {
            uid: "u1".into(),
            container_ids: vec!["b".into()],
            ..Default::default()
        });
        assert!(
            c.by_container("a").is_none(),
            "restarted container id replaced"
        );
        assert!(c.by_container("b").is_some());
        c.remove("u1");
        c.upsert(PodMeta {
            uid: "u2".into(),
            ..Default::default()
        });
        assert!(c.by_uid("u1").is_none());
        assert!(c.by_container("b").is_none());
        assert_eq!(
            enc("spec.nodeName=ip-10-0-0-1.ec2.internal"),
            "spec.nodeName%3Dip-10-0-0-1.ec2.internal"
        );
    }
}
