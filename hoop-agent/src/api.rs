//! The agent's local API: HTTP/1.1 over a Unix socket (`--api-socket`, mode 0600), and
//! optionally over TCP with TLS (`api_tls` in the config).
//!
//! Who may call: on the Unix socket, root only — the socket file is root-owned with mode 0600
//! and the server also checks the caller's uid (SO_PEERCRED), so loosened file permissions do
//! not open it up. Over TCP, only clients presenting a certificate signed by `client_ca`: the
//! handshake lets other clients in so that they get a clear 401 instead of a TLS alert.
//!
//! Stream routes (`router.stream(path, sender)`) answer a GET with JSON lines, one per message
//! on a broadcast channel, until the client goes away (`hoop-agent tail`).
//!
//! Routes are registered on a [`Router`]: `router.route("GET", "/v1/things/{id}", handler)`.
//! A handler gets the [`ApiRequest`] (method, path parameters, body, the caller's uid/pid from
//! SO_PEERCRED) and returns an [`ApiResponse`] (status + JSON). Other modules add their routes
//! by building on [`Router`] and passing it to [`serve`].

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

#[derive(Debug, Default, Clone)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub params: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// Caller's credentials (SO_PEERCRED).
    pub peer_uid: Option<u32>,
    pub peer_pid: Option<i32>,
    /// Over TLS: the SHA-256 fingerprint of the verified client certificate.
    pub peer_cert: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Value,
}

impl ApiResponse {
    pub fn ok(body: Value) -> Self {
        ApiResponse { status: 200, body }
    }
    pub fn error(status: u16, msg: impl std::fmt::Display) -> Self {
        ApiResponse {
            status,
            body: json!({ "error": msg.to_string() }),
        }
    }
}

pub type Handler = Arc<dyn Fn(&ApiRequest) -> ApiResponse + Send + Sync>;

/// A handler that writes its answer as it goes (status 200, `application/octet-stream`),
/// on a blocking thread; the writer applies back-pressure and fails once the client is gone.
pub type RawHandler = Arc<dyn Fn(&ApiRequest, Box<dyn Write + Send>) + Send + Sync>;

/// Method + path pattern (`{name}` segments capture) → handler.
/// A stream of JSON lines (without the newline).
pub type Lines = tokio::sync::broadcast::Sender<Arc<str>>;

#[derive(Default, Clone)]
pub struct Router {
    routes: Vec<(String, Vec<String>, Handler)>,
    streams: Vec<(String, Lines)>,
    raw: Vec<(String, String, RawHandler)>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn route(
        mut self,
        method: &str,
        pattern: &str,
        h: impl Fn(&ApiRequest) -> ApiResponse + Send + Sync + 'static,
    ) -> Self {
        let segs = pattern
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        self.routes.push((method.to_string(), segs, Arc::new(h)));
        self
    }

    /// `GET path` streams every line sent on `lines` from then on.
    pub fn stream(mut self, path: &str, lines: Lines) -> Self {
        self.streams.push((path.to_string(), lines));
        self
    }

    /// `method path` answers with whatever `h` writes (see [`RawHandler`]).
    pub fn raw(
        mut self,
        method: &str,
        path: &str,
        h: impl Fn(&ApiRequest, Box<dyn Write + Send>) + Send + Sync + 'static,
    ) -> Self {
        self.raw
            .push((method.to_string(), path.to_string(), Arc::new(h)));
        self
    }

    /// Adds every route of another router.
    pub fn merge(mut self, other: Router) -> Self {
        self.routes.extend(other.routes);
        self.streams.extend(other.streams);
        self.raw.extend(other.raw);
        self
    }

    fn raw_for(&self, req: &ApiRequest) -> Option<RawHandler> {
        let path = req.path.split('?').next().unwrap_or("");
        self.raw
            .iter()
            .find(|(m, p, _)| *m == req.method && p == path)
            .map(|(_, _, h)| h.clone())
    }

    fn stream_for(&self, req: &ApiRequest) -> Option<&Lines> {
        let path = req.path.split('?').next().unwrap_or("");
        if req.method != "GET" {
            return None;
        }
        self.streams.iter().find(|(p, _)| p == path).map(|(_, l)| l)
    }

    pub fn handle(&self, mut req: ApiRequest) -> ApiResponse {
        let path = req.path.split('?').next().unwrap_or("").to_string();
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut path_matched = false;
        for (m, pat, h) in &self.routes {
            if pat.len() != segs.len() {
                continue;
            }
            let mut params = BTreeMap::new();
            let ok = pat.iter().zip(&segs).all(|(p, s)| {
                match p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    Some(name) => {
                        params.insert(name.to_string(), (*s).to_string());
                        true
                    }
                    None => p == s,
                }
            });
            if !ok {
                continue;
            }
            path_matched = true;
            if m != &req.method {
                continue;
            }
            req.params = params;
            return h(&req);
        }
        if path_matched {
            ApiResponse::error(405, "method not allowed")
        } else {
            ApiResponse::error(404, format!("no route for {}", req.path))
        }
    }
}

fn peer_cred(fd: i32) -> (Option<u32>, Option<i32>) {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid out-pointers for SO_PEERCRED.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r == 0 {
        (Some(c.uid), Some(c.pid))
    } else {
        (None, None)
    }
}

const MAX_REQUEST: usize = 1 << 20;

/// Parses one HTTP/1.x request from bytes read so far; `None` = need more.
fn parse_request(buf: &[u8]) -> Option<Result<ApiRequest, ()>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Request::new(&mut headers);
    match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let len = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or(0);
            if len > MAX_REQUEST {
                return Some(Err(()));
            }
            if buf.len() < n + len {
                return None;
            }
            Some(Ok(ApiRequest {
                method: r.method.unwrap_or("GET").to_string(),
                path: r.path.unwrap_or("/").to_string(),
                body: buf[n..n + len].to_vec(),
                ..Default::default()
            }))
        }
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Err(())),
    }
}

/// Who may use a listener.
#[derive(Clone, Copy, Debug)]
enum Auth {
    /// Unix socket: the peer's uid (SO_PEERCRED) must be 0.
    Root,
    /// TLS: the peer must have presented a certificate that chains to the client CA.
    ClientCert,
}

impl Auth {
    fn refuse(self, req: &ApiRequest) -> Option<ApiResponse> {
        match self {
            Auth::Root if req.peer_uid != Some(0) => Some(ApiResponse::error(
                403,
                format!(
                    "uid {} may not use the hoop API: it accepts only root",
                    req.peer_uid
                        .map(|u| u.to_string())
                        .unwrap_or_else(|| "unknown".into())
                ),
            )),
            Auth::ClientCert if req.peer_cert.is_none() => Some(ApiResponse::error(
                401,
                "a client certificate signed by the API's client CA is required",
            )),
            _ => None,
        }
    }
}

/// Binds the socket (mode 0600, parent directory created) and serves `router` on the current
/// tokio runtime.
pub fn serve(path: &Path, router: Router) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("bind API socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %path.display(), "local API listening");
    let router = Arc::new(router);
    tokio::spawn(async move {
        loop {
            let s = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!("API accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            use std::os::fd::AsRawFd;
            let (uid, pid) = peer_cred(s.as_raw_fd());
            let peer = ApiRequest {
                peer_uid: uid,
                peer_pid: pid,
                ..Default::default()
            };
            tokio::spawn(connection(s, router.clone(), peer, Auth::Root));
        }
    });
    Ok(())
}

/// The `api_tls` listener: HTTPS with client-certificate authentication.
pub fn serve_tls(cfg: &crate::config::ApiTlsSection, router: Router) -> Result<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let addr: std::net::SocketAddr = cfg
        .listen
        .parse()
        .with_context(|| format!("api_tls.listen: {:?} is not an address", cfg.listen))?;
    let certs = CertificateDer::pem_file_iter(&cfg.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("api_tls.cert {}: {e}", cfg.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .map_err(|e| anyhow::anyhow!("api_tls.key {}: {e}", cfg.key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&cfg.client_ca)
        .map_err(|e| anyhow::anyhow!("api_tls.client_ca {}: {e}", cfg.client_ca.display()))?
    {
        let c =
            c.map_err(|e| anyhow::anyhow!("api_tls.client_ca {}: {e}", cfg.client_ca.display()))?;
        roots
            .add(c)
            .with_context(|| format!("api_tls.client_ca {}", cfg.client_ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .context("api_tls.client_ca")?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("api_tls.cert/key")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let std_listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("listen for the TLS API on {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    info!(%addr, "TLS API listening (client certificates required)");
    let router = Arc::new(router);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!("TLS API accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    acceptor.accept(tcp),
                )
                .await
                {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        warn!(%remote, "TLS API handshake: {e}");
                        return;
                    }
                    Err(_) => return,
                };
                let peer_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| fingerprint(c.as_ref()));
                let peer = ApiRequest {
                    peer_cert,
                    ..Default::default()
                };
                connection(tls, router, peer, Auth::ClientCert).await;
            });
        }
    });
    Ok(())
}

/// `sha256:` + hex of a DER certificate.
fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(der);
    let mut s = String::from("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// One request on one connection: read, authorize, answer (or stream), close.
async fn connection<S>(mut s: S, router: Arc<Router>, peer: ApiRequest, auth: Auth)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let req = loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > MAX_REQUEST + 8192 {
            return;
        }
        if let Some(r) = parse_request(&buf) {
            break r;
        }
    };
    let resp = match req {
        Ok(mut r) => {
            r.peer_uid = peer.peer_uid;
            r.peer_pid = peer.peer_pid;
            r.peer_cert = peer.peer_cert;
            if let Some(refusal) = auth.refuse(&r) {
                warn!(
                    uid = ?r.peer_uid,
                    pid = ?r.peer_pid,
                    path = %r.path,
                    "API request refused: {}",
                    refusal.body["error"].as_str().unwrap_or_default()
                );
                refusal
            } else if let Some(lines) = router.stream_for(&r) {
                let rx = lines.subscribe();
                stream_lines(s, rx).await;
                return;
            } else if let Some(h) = router.raw_for(&r) {
                stream_raw(s, r, h).await;
                return;
            } else {
                let router = router.clone();
                tokio::task::spawn_blocking(move || router.handle(r))
                    .await
                    .unwrap_or_else(|_| ApiResponse::error(500, "handler panicked"))
            }
        }
        Err(()) => ApiResponse::error(400, "bad request"),
    };
    let body = resp.body.to_string();
    let head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        body.len()
    );
    if s.write_all(head.as_bytes()).await.is_err()
        || s.write_all(body.as_bytes()).await.is_err()
        || s.flush().await.is_err()
    {
        warn!("API client went away");
        return;
    }
    let _ = s.shutdown().await;
}

/// Bridges a [`RawHandler`]'s blocking writer to the socket through a small bounded channel.
async fn stream_raw<S>(mut s: S, req: ApiRequest, h: RawHandler)
where
    S: tokio::io::AsyncWrite + Unpin,
{
    struct ChannelWriter(tokio::sync::mpsc::Sender<Vec<u8>>);
    impl Write for ChannelWriter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .blocking_send(b.to_vec())
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n";
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let task = tokio::task::spawn_blocking(move || h(&req, Box::new(ChannelWriter(tx))));
    while let Some(chunk) = rx.recv().await {
        if s.write_all(&chunk).await.is_err() {
            // Dropping the receiver makes the handler's next write fail.
            break;
        }
    }
    drop(rx);
    let _ = task.await;
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

/// Writes JSON lines from `rx` until the client closes its side or the channel closes.
async fn stream_lines<S>(s: S, mut rx: tokio::sync::broadcast::Receiver<Arc<str>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::sync::broadcast::error::RecvError;
    let (mut r, mut w) = tokio::io::split(s);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    if w.write_all(head.as_bytes()).await.is_err() || w.flush().await.is_err() {
        return;
    }
    let mut sink = [0u8; 512];
    loop {
        let line: Arc<str> = tokio::select! {
            n = r.read(&mut sink) => match n {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            m = rx.recv() => match m {
                Ok(l) => l,
                Err(RecvError::Lagged(n)) => Arc::from(json!({ "lagged": n }).to_string()),
                Err(RecvError::Closed) => return,
            },
        };
        if w.write_all(line.as_bytes()).await.is_err()
            || w.write_all(b"\n").await.is_err()
            || w.flush().await.is_err()
        {
            return;
        }
    }
}

/// Approval routes: list, approve, deny.
pub fn approval_routes(state: crate::enforce::Shared) -> Router {
    let s1 = state.clone();
    let s2 = state.clone();
    let s3 = state.clone();
    let s4 = state;
    let who = |r: &ApiRequest| -> String {
        if let Some(cert) = &r.peer_cert {
            return format!("tls-client cert={cert}");
        }
        let comm = r
            .peer_pid
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        format!(
            "uid={} pid={} comm={comm}",
            r.peer_uid.unwrap_or(u32::MAX),
            r.peer_pid.unwrap_or(-1)
        )
    };
    let decide = move |st: &crate::enforce::Shared, r: &ApiRequest, approve: bool| -> ApiResponse {
        let Some(id) = r.params.get("id").and_then(|i| i.parse::<u64>().ok()) else {
            return ApiResponse::error(400, "bad approval id");
        };
        let by = who(r);
        match st.lock() {
            Ok(mut s) => match s.decide(id, approve, &by, false) {
                Ok(v) => ApiResponse::ok(v),
                Err(e) => ApiResponse::error(409, e),
            },
            Err(_) => ApiResponse::error(500, "state poisoned"),
        }
    };
    let d2 = decide;
    Router::new()
        .route("GET", "/v1/approvals", move |_| {
            ApiResponse::ok(crate::enforce::approvals_json(&s1))
        })
        .route("POST", "/v1/approvals/{id}/approve", move |r| {
            decide(&s2, r, true)
        })
        .route("POST", "/v1/approvals/{id}/deny", move |r| {
            d2(&s3, r, false)
        })
        .route("GET", "/v1/enforce/stats", move |_| {
            ApiResponse::ok(crate::enforce::stats_json(&s4))
        })
}

/// Blocking client for the CLI: one request, returns (status, JSON body).
pub fn call(socket: &Path, method: &str, path: &str) -> Result<(u16, Value)> {
    call_with_body(socket, method, path, b"")
}

/// Like [`call`], with a JSON request body.
pub fn call_json(socket: &Path, method: &str, path: &str, body: &Value) -> Result<(u16, Value)> {
    call_with_body(socket, method, path, body.to_string().as_bytes())
}

fn call_with_body(socket: &Path, method: &str, path: &str, body: &[u8]) -> Result<(u16, Value)> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connect to the agent at {}", socket.display()))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: hoop\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_with_params() {
        let r = Router::new()
            .route("GET", "/v1/a/{id}", |r| {
                ApiResponse::ok(json!(r.params.get("id")))
            })
            .route("POST", "/v1/a", |_| ApiResponse::ok(json!("post")));
        let req = |m: &str, p: &str| ApiRequest {
            method: m.into(),
            path: p.into(),
            ..Default::default()
        };
        assert_eq!(r.handle(req("GET", "/v1/a/7")).body, json!("7"));
        assert_eq!(r.handle(req("GET", "/v1/a")).status, 405);
        assert_eq!(r.handle(req("GET", "/nope")).status, 404);
        assert!(parse_request(b"GET /x HTTP/1.1\r\nContent-Length: 2\r\n\r\na").is_none());
        assert!(matches!(
            parse_request(b"GET /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nab"),
            Some(Ok(_))
        ));
    }
}
