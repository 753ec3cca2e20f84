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
    /// Loads `path`, or the default location when it exists, or the embedded defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_CONFIG).exists() => PathBuf::from(DEFAULT_CONFIG),
            None => return Ok(Config::default()),
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
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        let ring = self.capture.ring_buffer_bytes;
        if ring < 4096 || !ring.is_power_of_two() {
            return Err(format!(
                "capture.ring_buffer_bytes: {ring} is not a power of two of at least 4096"
            ));
        }
        self.store.store_config().map_err(|e| format!("{e:#}"))?;
        self.store.dump_period().map_err(|e| format!("{e:#}"))?;
        if self.metrics_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "metrics_addr: {:?} is not an address like 127.0.0.1:9464",
                self.metrics_addr
            ));
        }
        if let Some(t) = &self.api_tls
            && t.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(format!(
                "api_tls.listen: {:?} is not an address like 0.0.0.0:9465",
                t.listen
            ));
        }
        if !matches!(self.log_format.as_str(), "human" | "json") {
            return Err(format!(
                "log_format: {:?} is neither \"human\" nor \"json\"",
                self.log_format
            ));
        }
        Ok(())
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
    }
}
