//! The pod watcher against recorded Kubernetes API responses served over real TLS on loopback:
//! paged list, watch with ADDED/MODIFIED/DELETED/BOOKMARK and a 410 ERROR event, re-list.

use hoop_identity::k8s::{K8sConfig, PodWatcher};
use hoop_identity::{IdentityConfig, Resolver};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const NODE: &str = "ip-10-0-12-34.ec2.internal";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.test-sa-token";
const POD_A: &str = "8f3c2a1e-5b6d-4e7f-9a0b-1c2d3e4f5a6b";
const POD_B: &str = "1b2c3d4e-5f60-4718-8a9b-0c1d2e3f4a5b";
const POD_C: &str = "3d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f6a";
const POD_D: &str = "4e5f6a7b-8c9d-4e0f-9a1b-2c3d4e5f6a7b";
/// containerd id of pod A's `agent` container in the fixtures.
const A_AGENT: &str = "85f1d6d322ed92977a37f2957b094ae2f7fa78f7c4c8bf5f326bf9296162a7f2";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIX}/{name}")).expect("fixture")
}

/// How the fake API server answers.
#[derive(Clone, Copy, PartialEq)]
enum Script {
    /// list (2 pages) → watch-1 (ends in 410) → list 2 → quiet watch.
    Normal,
    /// Every list is 403 Forbidden.
    Forbidden,
}

/// (request target, Authorization header) of each request served.
type Requests = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct Server {
    port: u16,
    ca_pem: String,
    requests: Requests,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn tls_material() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    (
        ca_cert.pem(),
        leaf.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
}

fn chunk(w: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    write!(w, "{:x}\r\n", data.len())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")?;
    w.flush()
}

fn respond(
    stream: &mut impl Write,
    target: &str,
    script: Script,
    lists: &Mutex<u32>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let json = |s: &mut dyn Write, status: &str, body: &str| {
        write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    if script == Script::Forbidden {
        return json(stream, "403 Forbidden", &fixture("forbidden.json"));
    }
    if target.contains("watch=1") {
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )?;
        if target.contains("resourceVersion=104857") {
            for line in fixture("watch-1.jsonl").lines() {
                chunk(stream, format!("{line}\n").as_bytes())?;
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            // A quiet watch: held open until the test ends (the real server's timeout).
            let t = Instant::now();
            while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        return stream.write_all(b"0\r\n\r\n");
    }
    // A list: the first is served as two pages, later ones from the second recording.
    let mut n = lists.lock().expect("lock");
    let body = if target.contains("continue=") {
        let mut v: serde_json::Value = serde_json::from_str(&fixture("podlist.json")).expect("j");
        v["items"] = serde_json::Value::Array(vec![v["items"][1].clone()]);
        v.to_string()
    } else if *n == 0 {
        *n += 1;
        let mut v: serde_json::Value = serde_json::from_str(&fixture("podlist.json")).expect("j");
        v["items"] = serde_json::Value::Array(vec![v["items"][0].clone()]);
        v["metadata"]["continue"] = "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MTA0ODU3fQ".into();
        v.to_string()
    } else {
        *n += 1;
        fixture("podlist-2.json")
    };
    json(stream, "200 OK", &body)
}

fn serve(script: Script) -> Server {
    let (ca_pem, cert, key) = tls_material();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server config");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let lists = Arc::new(Mutex::new(0u32));
    let (reqs, st) = (requests.clone(), stop.clone());
    std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            let sock = match listener.accept() {
                Ok((s, _)) => s,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            sock.set_nonblocking(false).expect("blocking");
            let (config, reqs, st, lists) =
                (config.clone(), reqs.clone(), st.clone(), lists.clone());
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).expect("conn");
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let mut head = Vec::new();
                {
                    let mut r = BufReader::new(&mut tls);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return; // handshake failure or closed
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push(line.trim_end().to_string());
                    }
                }
                let target = head
                    .first()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .unwrap_or("")
                    .to_string();
                let auth = head
                    .iter()
                    .find_map(|h| {
                        h.strip_prefix("authorization: ")
                            .or(h.strip_prefix("Authorization: "))
                    })
                    .map(str::to_string);
                reqs.lock().expect("lock").push((target.clone(), auth));
                let _ = respond(&mut tls, &target, script, &lists, &st);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    Server {
        port,
        ca_pem,
        requests,
        stop,
    }
}

fn config_for(server: &Server, tag: &str) -> K8sConfig {
    let dir = std::env::temp_dir().join(format!("hoop-k8s-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca: PathBuf = dir.join("ca.crt");
    std::fs::write(&ca, &server.ca_pem).expect("ca");
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    K8sConfig {
        enabled: Some(true),
        api_url: Some(format!("https://127.0.0.1:{}", server.port)),
        token_path: token,
        ca_path: ca,
        node_name: Some(NODE.into()),
        page_size: 1,
        deleted_grace_secs: 0,
        max_backoff_secs: 1,
        ..Default::default()
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn list_watch_410_relist_over_tls() {
    let server = serve(Script::Normal);
    let cfg = config_for(&server, "normal");
    let resolver = Resolver::new(IdentityConfig {
        kubernetes: cfg,
        ..Default::default()
    })
    .expect("resolver");
    assert!(resolver.kubernetes_enabled());
    let pods = resolver.pods().clone();
    wait_for("re-list after 410", || {
        pods.relists() >= 2 && pods.by_uid(POD_D).is_some()
    });

    // After the watch: A modified, B deleted, C added; after the re-list: D added.
    let a = pods.by_uid(POD_A).expect("pod A");
    assert_eq!(a.name, "claude-agent-7d9f8b6c5d-x2k9q");
    assert_eq!(a.namespace, "agents");
    assert_eq!(a.service_account.as_deref(), Some("claude-agent"));
    assert_eq!(a.labels.get("phase").map(String::as_str), Some("canary"));
    assert!(a.container_ids.iter().any(|c| c == A_AGENT));
    assert!(pods.by_uid(POD_B).is_none(), "deleted pod gone (grace 0)");
    let c = pods.by_uid(POD_C).expect("pod C");
    assert_eq!(c.container_ids.len(), 2);
    assert_eq!(pods.len(), 3);
    assert_eq!(
        pods.by_container(A_AGENT).map(|p| p.uid.clone()).as_deref(),
        Some(POD_A)
    );
    assert_eq!(pods.errors(), 0);

    // The workload the agent reports for a process in pod A's container.
    let path = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{A_AGENT}.scope",
        POD_A.replace('-', "_")
    );
    let w = resolver.workload(Some(&path));
    assert_eq!(w.kind, "pod");
    assert_eq!(w.name(), "agents/claude-agent-7d9f8b6c5d-x2k9q");
    assert_eq!(w.service_account.as_deref(), Some("claude-agent"));
    assert_eq!(w.runtime.as_deref(), Some("containerd"));
    assert_eq!(w.labels.get("team").map(String::as_str), Some("platform"));
    // Spec values (env) are never kept.
    assert!(!format!("{a:?}").contains("literal-secret-in-spec"));

    // Wait for the second watch to be issued, then check what the client sent.
    wait_for("second watch", || {
        server
            .requests
            .lock()
            .expect("lock")
            .iter()
            .any(|(t, _)| t.contains("resourceVersion=105010"))
    });
    let reqs = server.requests.lock().expect("lock").clone();
    let targets: Vec<&str> = reqs.iter().map(|(t, _)| t.as_str()).collect();
    assert!(
        reqs.iter()
            .all(|(_, a)| a.as_deref() == Some(&format!("Bearer {TOKEN}") as &str)),
        "{reqs:?}"
    );
    let sel = "fieldSelector=spec.nodeName%3Dip-10-0-12-34.ec2.internal";
    assert!(
        targets
            .iter()
            .all(|t| t.starts_with("/api/v1/pods?") && t.contains(sel)),
        "{targets:?}"
    );
    assert!(
        !targets[0].contains("watch") && targets[0].contains("limit=1"),
        "{targets:?}"
    );
    assert!(
        targets[1].contains("continue=eyJ2Ijoi"),
        "second page: {targets:?}"
    );
    assert!(
        targets[2].contains("watch=1") && targets[2].contains("resourceVersion=104857"),
        "{targets:?}"
    );
    assert!(
        !targets[3].contains("watch=1"),
        "re-list after 410: {targets:?}"
    );
}

/// In a pod: no `api_url`, no `enabled`; the kubelet's service variables name the API
/// server, and the service-account token and CA are read from their files.
#[test]
fn in_cluster_environment_finds_the_api_server() {
    let server = serve(Script::Normal);
    let mut cfg = config_for(&server, "in-cluster");
    cfg.enabled = None;
    cfg.api_url = None;
    let default = K8sConfig::default();
    assert_eq!(
        default.token_path,
        PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
    );
    assert_eq!(
        default.ca_path,
        PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
    );
    // Outside a cluster nothing starts.
    assert!(
        PodWatcher::start_with_env(&cfg, &|_| None)
            .expect("no cluster")
            .is_none()
    );
    let port = server.port.to_string();
    let env = move |k: &str| match k {
        "KUBERNETES_SERVICE_HOST" => Some("127.0.0.1".to_string()),
        "KUBERNETES_SERVICE_PORT" => Some(port.clone()),
        _ => None,
    };
    let w = PodWatcher::start_with_env(&cfg, &env)
        .expect("start")
        .expect("in a cluster");
    let pods = w.cache();
    wait_for("pods of this node", || pods.by_uid(POD_A).is_some());
    let reqs = server.requests.lock().expect("lock").clone();
    assert!(
        reqs.iter()
            .all(|(_, a)| a.as_deref() == Some(&format!("Bearer {TOKEN}") as &str)),
        "{reqs:?}"
    );
}

#[test]
fn forbidden_backs_off_and_wrong_ca_fails_closed() {
    let server = serve(Script::Forbidden);
    let w = PodWatcher::start(&config_for(&server, "forbidden"))
        .expect("start")
        .expect("enabled");
    let pods = w.cache();
    wait_for("two errors", || pods.errors() >= 2);
    assert!(!pods.synced());
    assert!(pods.is_empty());
    // Backoff: not hammering the server (0.5 s, then 1 s).
    let n = server.requests.lock().expect("lock").len();
    assert!(n <= 4, "{n} requests");
    w.stop();

    // A server whose certificate the configured CA did not sign: TLS fails, nothing loads.
    let other = serve(Script::Normal);
    let mut cfg = config_for(&other, "wrongca");
    std::fs::write(&cfg.ca_path, &server.ca_pem).expect("ca");
    cfg.api_url = Some(format!("https://127.0.0.1:{}", other.port));
    let w = PodWatcher::start(&cfg).expect("start").expect("enabled");
    let pods = w.cache();
    wait_for("TLS error", || pods.errors() >= 1);
    assert!(!pods.synced());
    assert!(
        other.requests.lock().expect("lock").is_empty(),
        "no request got through"
    );
}

#[test]
fn bad_ca_file_is_an_error() {
    let cfg = K8sConfig {
        enabled: Some(true),
        api_url: Some("https://127.0.0.1:1".into()),
        ca_path: PathBuf::from("/nonexistent/ca.crt"),
        ..Default::default()
    };
    assert!(PodWatcher::start(&cfg).is_err());
}
