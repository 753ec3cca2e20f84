//! The agent's configuration file (YAML). Every key is optional: the embedded defaults run the
//! agent with no file at all. Flags and `HOOP_*` environment variables override the file.
//! Unknown keys are errors (a typo must not silently keep a default), reported with the line
//! and the field.

use hoop_identity::IdentityConfig;
use hoop_identity::k8s::K8sConfig;
use hoop_identity::principal::PrincipalConfig;
use hoop_identity::process::{ProcessConfig, SessionMatcherSpec};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Default location of the configuration file (used only when it exists).
pub const DEFAULT_CONFIG: &str = "/etc/hoop/config.yaml";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/hoop";
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
pub const DEFAULT_API_SOCKET: &str = "/run/hoop/hoop.sock";

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the audit store lives.
    pub data_dir: PathBuf,
    /// `human` or `json`.
    pub log_format: String,
    /// Also append every record (JSON lines) to this file.
    pub output: Option<PathBuf>,
    pub capture: CaptureSection,
    pub session: SessionSection,
    pub kubernetes: K8sConfig,
    pub principals: PrincipalConfig,
    pub process: ProcessConfig,
    /// cgroup v2 mount, detected when absent.
    pub cgroup2_mount: Option<PathBuf>,
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: String,
    /// Export per-identity call counts for at most this many identities (0: none).
    pub metrics_identity_cap: usize,
    /// The local API (Unix socket, mode 0600).
    pub api_socket: PathBuf,
    /// Optional TCP API with TLS; clients must present a certificate signed by `client_ca`.
    pub api_tls: Option<ApiTlsSection>,
    /// Policy file (enforcement).
    pub policy: Option<PathBuf>,
    pub store: crate::audit::StoreSection,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log_format: "human".into(),
            output: None,
            capture: CaptureSection::default(),
            session: SessionSection::default(),
            kubernetes: K8sConfig::default(),
            principals: PrincipalConfig::default(),
            process: ProcessConfig::default(),
            cgroup2_mount: None,
            metrics_addr: DEFAULT_METRICS_ADDR.into(),
            metrics_identity_cap: 0,
            api_socket: PathBuf::from(DEFAULT_API_SOCKET),
            api_tls: None,
            policy: None,
            store: crate::audit::StoreSection::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureSection {
    /// TLS ring buffer size in bytes (power of two, at least one page).
    pub ring_buffer_bytes: u32,
    /// A request waits this long for its response before it is reported without one.
    pub response_timeout_secs: u64,
    /// Body bytes kept per message for classification and masked parameters.
    pub max_body_bytes: usize,
    /// Most connections tracked at once.
    pub max_connections: usize,
}

impl Default for CaptureSection {
    fn default() -> Self {
        CaptureSection {
            ring_buffer_bytes: 16 * 1024 * 1024,
            response_timeout_secs: 30,
            max_body_bytes: 64 * 1024,
            max_connections: 65536,
        }
    }
}

/// `api_tls:` — the local API over TCP with TLS (for integrations off the node).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsSection {
    /// Address to listen on, e.g. `0.0.0.0:9465`.
    pub listen: String,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA (PEM) that signs the client certificates allowed to call the API.
    pub client_ca: PathBuf,
}

/// Which processes root an "agent session" (see the README).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSection {
    pub selectors: Vec<SessionMatcherSpec>,
}

/// Longest `capture.response_timeout_secs` (a day): a request waits at most this long.
pub const MAX_RESPONSE_TIMEOUT_SECS: u64 = 86_400;

/// A setting given by a flag or an environment variable, and which one (for error messages).
#[derive(Clone, Debug)]
pub struct Given<T> {
    pub value: T,
    /// `--ring-buffer-bytes` or `environment variable HOOP_RING_BUFFER_BYTES`.
    pub origin: String,
}

/// What flags and environment variables set: they override the file, which overrides the
/// defaults (precedence: flag > environment > file > default; clap resolves flag vs
/// environment).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data_dir: Option<Given<PathBuf>>,
    pub log_format: Option<Given<String>>,
    pub output: Option<Given<PathBuf>>,
    pub metrics_addr: Option<Given<String>>,
    pub metrics_identity_cap: Option<Given<usize>>,
    pub api_socket: Option<Given<PathBuf>>,
    pub policy: Option<Given<PathBuf>>,
    pub ring_buffer_bytes: Option<Given<u32>>,
    pub response_timeout_secs: Option<Given<u64>>,
}

impl Overrides {
    /// Which flag or variable set config key `key`, if any did.
    pub fn origin(&self, key: &str) -> Option<&str> {
        fn o<T>(g: &Option<Given<T>>) -> Option<&str> {
            g.as_ref().map(|g| g.origin.as_str())
        }
        match key {
            "data_dir" => o(&self.data_dir),
            "log_format" => o(&self.log_format),
            "output" => o(&self.output),
            "metrics_addr" => o(&self.metrics_addr),
            "metrics_identity_cap" => o(&self.metrics_identity_cap),
            "api_socket" => o(&self.api_socket),
            "policy" => o(&self.policy),
            "capture.ring_buffer_bytes" => o(&self.ring_buffer_bytes),
            "capture.response_timeout_secs" => o(&self.response_timeout_secs),
            _ => None,
        }
    }

    /// `(config key, origin)` of every setting given.
    pub fn origins(&self) -> Vec<(&'static str, &str)> {
        [
            "data_dir",
            "log_format",
            "output",
            "metrics_addr",
            "metrics_identity_cap",
            "api_socket",
            "policy",
            "capture.ring_buffer_bytes",
            "capture.response_timeout_secs",
        ]
        .into_iter()
        .filter_map(|k| Some((k, self.origin(k)?)))
        .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// The file [`Config::load`] reads: `path`, else the default location when it exists.
    pub fn file(path: Option<&Path>) -> Option<PathBuf> {
        match path {
            Some(p) => Some(p.to_path_buf()),
            None if Path::new(DEFAULT_CONFIG).exists() => Some(PathBuf::from(DEFAULT_CONFIG)),
            None => None,
        }
    }

    /// Loads `path`, or the default location when it exists, or the embedded defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = Self::file(path) else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid { path, message })
    }

    /// Parses YAML text; the error names the line, column and field.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let cfg: Config = serde_yaml::from_str(text).map_err(|e| match e.location() {
            Some(l) => format!("line {} column {}: {e}", l.line(), l.column()),
            None => e.to_string(),
        })?;
        cfg.validate()
            .map_err(|(key, problem)| format!("{key}: {problem}"))?;
        Ok(cfg)
    }

    /// Checks values serde cannot: `Err((key, problem))`, `key` being the dotted config key.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let ring = self.capture.ring_buffer_bytes;
        if ring < 4096 || !ring.is_power_of_two() {
            return Err((
                "capture.ring_buffer_bytes",
                format!("{ring} is not a power of two of at least 4096"),
            ));
        }
        let t = self.capture.response_timeout_secs;
        if !(1..=MAX_RESPONSE_TIMEOUT_SECS).contains(&t) {
            return Err((
                "capture.response_timeout_secs",
                format!("{t} is not between 1 and {MAX_RESPONSE_TIMEOUT_SECS} seconds"),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(("data_dir", "is empty".into()));
        }
        if self.api_socket.as_os_str().is_empty() {
            return Err(("api_socket", "is empty".into()));
        }
        self.store
            .store_config()
            .map_err(|e| ("store", format!("{e:#}")))?;
        self.store
            .dump_period()
            .map_err(|e| ("store", format!("{e:#}")))?;
        if self.metrics_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "metrics_addr",
                format!(
                    "{:?} is not an address like 127.0.0.1:9464",
                    self.metrics_addr
                ),
            ));
        }
        if let Some(t) = &self.api_tls
            && t.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err((
                "api_tls.listen",
                format!("{:?} is not an address like 0.0.0.0:9465", t.listen),
            ));
        }
        if !matches!(self.log_format.as_str(), "human" | "json") {
            return Err((
                "log_format",
                format!("{:?} is neither \"human\" nor \"json\"", self.log_format),
            ));
        }
        Ok(())
    }

    /// Applies the settings given by flags and environment variables over the file's (or the
    /// defaults), then validates the result. An invalid value is reported with the flag or
    /// variable that set it, or with the config key when it came from the file.
    pub fn apply(&mut self, o: &Overrides) -> Result<(), String> {
        fn set<T: Clone>(slot: &mut T, g: &Option<Given<T>>) {
            if let Some(g) = g {
                *slot = g.value.clone();
            }
        }
        fn set_some<T: Clone>(slot: &mut Option<T>, g: &Option<Given<T>>) {
            if let Some(g) = g {
                *slot = Some(g.value.clone());
            }
        }
        set(&mut self.data_dir, &o.data_dir);
        set(&mut self.log_format, &o.log_format);
        set_some(&mut self.output, &o.output);
        set(&mut self.metrics_addr, &o.metrics_addr);
        set(&mut self.metrics_identity_cap, &o.metrics_identity_cap);
        set(&mut self.api_socket, &o.api_socket);
        set_some(&mut self.policy, &o.policy);
        set(&mut self.capture.ring_buffer_bytes, &o.ring_buffer_bytes);
        set(
            &mut self.capture.response_timeout_secs,
            &o.response_timeout_secs,
        );
        self.validate()
            .map_err(|(key, problem)| match o.origin(key) {
                Some(origin) => format!("{origin}: {problem} (it sets {key})"),
                None => format!("{key}: {problem}"),
            })
    }

    /// The settings flags and environment variables can change, with their effective values
    /// (`hoop-agent run --check-config`).
    pub fn overridable_settings(&self) -> serde_json::Value {
        serde_json::json!({
            "data_dir": self.data_dir,
            "log_format": self.log_format,
            "output": self.output,
            "metrics_addr": self.metrics_addr,
            "metrics_identity_cap": self.metrics_identity_cap,
            "api_socket": self.api_socket,
            "policy": self.policy,
            "capture.ring_buffer_bytes": self.capture.ring_buffer_bytes,
            "capture.response_timeout_secs": self.capture.response_timeout_secs,
        })
    }

    /// The identity library's settings.
    pub fn identity(&self) -> IdentityConfig {
        let mut process = self.process.clone();
        if !self.session.selectors.is_empty() {
            process.session = self.session.selectors.clone();
        }
        IdentityConfig {
            process,
            kubernetes: self.kubernetes.clone(),
            principals: self.principals.clone(),
            cgroup2_mount: self.cgroup2_mount.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_example_is_a_valid_config() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("## Configuration")
            .nth(1)
            .expect("README has a Configuration section");
        let yaml = section
            .split("```yaml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("a yaml block");
        let c = Config::parse(yaml).unwrap_or_else(|e| panic!("README config: {e}"));
        assert_eq!(c.store.mask.len(), 1);
        assert!(c.api_tls.is_some());
    }

    #[test]
    fn deploy_configs_are_valid() {
        let cm: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../deploy/kubernetes/configmap.yaml"))
                .expect("configmap yaml");
        let text = cm["data"]["config.yaml"].as_str().expect("config.yaml key");
        let c = Config::parse(text).unwrap_or_else(|e| panic!("ConfigMap config.yaml: {e}"));
        // The DaemonSet mounts the host's /proc there.
        assert_eq!(c.identity().process.proc_root, PathBuf::from("/host/proc"));
        Config::parse(include_str!("../../deploy/systemd/config.yaml"))
            .unwrap_or_else(|e| panic!("systemd config.yaml: {e}"));
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = Config::parse("").expect("defaults");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.capture.ring_buffer_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn reads_sections() {
        let c = Config::parse(
            "data_dir: /tmp/h\ncapture:\n  ring_buffer_bytes: 65536\nsession:\n  selectors:\n    - exe: \"*/python3*\"\n    - container\nprincipals:\n  static_keys:\n    AKIA1: arn:aws:iam::1:user/a\n",
        )
        .expect("config");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/h"));
        assert_eq!(c.capture.ring_buffer_bytes, 65536);
        assert_eq!(c.identity().process.session.len(), 2);
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = Config::parse("data_dir: /x\ncapture:\n  ring_bufer_bytes: 1\n").expect_err("typo");
        assert!(
            e.contains("line 3") && e.contains("ring_bufer_bytes"),
            "{e}"
        );
        let e = Config::parse("capture:\n  ring_buffer_bytes: 1000\n").expect_err("not pow2");
        assert!(e.contains("capture.ring_buffer_bytes"), "{e}");
        let e =
            Config::parse("api_tls:\n  listen: nowhere\n  cert: /c\n  key: /k\n  client_ca: /ca\n")
                .expect_err("api_tls");
        assert!(e.contains("api_tls.listen"), "{e}");
        let e = Config::parse("log_format: xml\n").expect_err("format");
        assert!(e.contains("log_format"), "{e}");
        let e = Config::parse("capture:\n  response_timeout_secs: 0\n").expect_err("timeout");
        assert!(e.contains("capture.response_timeout_secs"), "{e}");
    }

    fn given<T>(value: T, origin: &str) -> Option<Given<T>> {
        Some(Given {
            value,
            origin: origin.into(),
        })
    }

    #[test]
    fn overrides_beat_the_file_which_beats_the_defaults() {
        let mut c = Config::parse(
            "metrics_addr: 127.0.0.1:1111\ncapture:\n  ring_buffer_bytes: 65536\n  response_timeout_secs: 5\n",
        )
        .expect("config");
        assert_eq!(c.metrics_addr, "127.0.0.1:1111", "file over default");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR), "default");
        let o = Overrides {
            metrics_addr: given("127.0.0.1:2222".into(), "--metrics-addr"),
            ring_buffer_bytes: given(8192, "environment variable HOOP_RING_BUFFER_BYTES"),
            output: given(PathBuf::from("/tmp/out.jsonl"), "--output"),
            ..Default::default()
        };
        c.apply(&o).expect("valid");
        assert_eq!(c.metrics_addr, "127.0.0.1:2222");
        assert_eq!(c.capture.ring_buffer_bytes, 8192);
        assert_eq!(c.output, Some(PathBuf::from("/tmp/out.jsonl")));
        assert_eq!(c.capture.response_timeout_secs, 5, "file value kept");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR), "default kept");
        assert_eq!(
            c.overridable_settings()["capture.ring_buffer_bytes"],
            8192,
            "reported"
        );
        assert_eq!(o.origins().len(), 3);
    }

    #[test]
    fn invalid_overrides_name_the_flag_or_variable() {
        let mut c = Config::default();
        let e = c
            .apply(&Overrides {
                ring_buffer_bytes: given(1000, "--ring-buffer-bytes"),
                ..Default::default()
            })
            .expect_err("not a power of two");
        assert!(
            e.starts_with("--ring-buffer-bytes: 1000 is not a power of two")
                && e.contains("capture.ring_buffer_bytes"),
            "{e}"
        );
        let mut c = Config::default();
        let e = c
            .apply(&Overrides {
                metrics_addr: given("nowhere".into(), "environment variable HOOP_METRICS_ADDR"),
                ..Default::default()
            })
            .expect_err("not an address");
        assert!(
            e.starts_with("environment variable HOOP_METRICS_ADDR: \"nowhere\""),
            "{e}"
        );
        let mut c = Config::default();
        let e = c
            .apply(&Overrides {
                response_timeout_secs: given(u64::MAX, "--response-timeout"),
                ..Default::default()
            })
            .expect_err("too long");
        assert!(e.starts_with("--response-timeout: "), "{e}");
        // A bad value from the file keeps naming the key.
        let mut c = Config {
            metrics_addr: "x".into(),
            ..Config::default()
        };
        let e = c.apply(&Overrides::default()).expect_err("file value");
        assert!(e.starts_with("metrics_addr: "), "{e}");
    }
}
