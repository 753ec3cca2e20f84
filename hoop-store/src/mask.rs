//! Masking before storage. Secret values are replaced by deterministic tokens,
//! `hoop:mask:` + the first 16 hex digits of HMAC-SHA256(node-local key, value), so equal
//! values still correlate across events without being recoverable from the store.
//!
//! Built-in rules always apply (SigV4 signatures, session/security tokens, secret access
//! keys, SecretsManager secret values, SSM parameter values read with decryption, KMS
//! plaintexts, Lambda environment variables, password-like fields, S3 object bodies).
//! Config rules add header names, JSON paths and regexes.

use hmac::{Hmac, Mac};
use hoop_event::CallRecord;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use std::path::Path;

pub const TOKEN_PREFIX: &str = "hoop:mask:";

/// One configured rule; exactly one of `header`, `json_path`, `regex` is set.
///
/// ```yaml
/// - header: X-Custom-Auth            # query-string parameter / JSON field name, any case
/// - json_path: request.parameters.Config.ApiKey
/// - json_path: response.elements.Items[*].token
/// - regex: 'ghp_[A-Za-z0-9]{36}'      # with a capture group, only the group is masked
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// The `mask:` section of the agent config: a list of rules.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    #[serde(default)]
    pub rules: Vec<MaskRule>,
}

impl MaskConfig {
    /// YAML (or JSON, which is YAML): either `rules: [...]` or a bare list of rules.
    pub fn from_yaml(s: &str) -> Result<MaskConfig, MaskError> {
        if let Ok(rules) = serde_yaml::from_str::<Vec<MaskRule>>(s) {
            return Ok(MaskConfig { rules });
        }
        serde_yaml::from_str(s).map_err(|e| MaskError::Config(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("mask config: {0}")]
    Config(String),
    #[error("mask rule {index}: {msg}")]
    Rule { index: usize, msg: String },
    #[error("mask key {path}: {err}")]
    Key { path: String, err: std::io::Error },
}

#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Key(String),
    AnyKey,
    Index(usize),
    AnyIndex,
}

#[derive(Clone, Debug)]
struct JsonPath {
    /// true: request.parameters, false: response.elements
    request: bool,
    segs: Vec<Seg>,
}

fn parse_path(p: &str) -> Result<JsonPath, String> {
    let p = p.trim().trim_start_matches("$.");
    let (request, rest) = if let Some(r) = p.strip_prefix("request.parameters") {
        (true, r)
    } else if let Some(r) = p.strip_prefix("response.elements") {
        (false, r)
    } else {
        return Err(format!(
            "json_path {p:?} must start with request.parameters or response.elements"
        ));
    };
    let mut segs = Vec::new();
    for part in rest.split('.').filter(|s| !s.is_empty()) {
        let (name, mut idx) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            segs.push(if name == "*" {
                Seg::AnyKey
            } else {
                Seg::Key(name.to_string())
            });
        }
        while let Some(close) = idx.find(']') {
            let inner = &idx[1..close];
            segs.push(if inner == "*" {
                Seg::AnyIndex
            } else {
                Seg::Index(
                    inner
                        .parse()
                        .map_err(|_| format!("bad index [{inner}] in {p:?}"))?,
                )
            });
            idx = &idx[close + 1..];
        }
        if !idx.is_empty() {
            return Err(format!("bad segment {part:?} in {p:?}"));
        }
    }
    if segs.is_empty() {
        return Err(format!("json_path {p:?} names no field"));
    }
    Ok(JsonPath { request, segs })
}

/// Masks records in place. Cheap to share; build once from the config.
pub struct Masker {
    key: Vec<u8>,
    headers: Vec<String>,
    paths: Vec<JsonPath>,
    regexes: Vec<Regex>,
    builtin: Regex,
}

// Pagination and idempotency tokens are not secrets; every other `*Token` field is.
const NOT_SECRET_TOKENS: &[&str] = &[
    "nexttoken",
    "continuationtoken",
    "nextcontinuationtoken",
    "startaftertoken",
    "paginationtoken",
    "clienttoken",
    "idempotencytoken",
    "clientrequesttoken",
    "nextpagetoken",
    "marker",
];

fn secret_key_name(k: &str) -> bool {
    let l = k.to_ascii_lowercase();
    let l = l.trim_start_matches("x-amz-");
    matches!(
        l,
        "secretaccesskey"
            | "secret_access_key"
            | "secretkey"
            | "secretstring"
            | "secretbinary"
            | "plaintext"
            | "privatekey"
            | "signature"
            | "clientsecret"
            | "secret"
    ) || l.contains("password")
        || l.contains("passphrase")
        || l.contains("passwd")
        || (l.ends_with("token") && !NOT_SECRET_TOKENS.contains(&l))
}

const BUILTIN_RE: &str = concat!(
    // SigV4 signature in a header, query string or presigned URL.
    r"(?:Signature=|X-Amz-Signature=|Signature%3D)([0-9a-fA-F]{64})",
    // STS session tokens (v1 and v2 prefixes of the base64 blob), possibly URL-encoded.
    r"|((?:FwoGZXIvYXdz|FQoGZXIvYXdz|IQoJb3JpZ2lu|IQoGb3JpZ2lu)[A-Za-z0-9/+=%]{20,})",
    // A secret access key next to its name in free text.
    r#"|(?i:aws_?secret_?access_?key|secretaccesskey)["'\s]*[:=]\s*["']?([A-Za-z0-9/+]{40})"#,
);

impl Masker {
    pub fn new(rules: &[MaskRule], key: &[u8]) -> Result<Masker, MaskError> {
        let mut m = Masker {
            key: key.to_vec(),
            headers: Vec::new(),
            paths: Vec::new(),
            regexes: Vec::new(),
            builtin: Regex::new(BUILTIN_RE).map_err(|e| MaskError::Config(e.to_string()))?,
        };
        for (index, r) in rules.iter().enumerate() {
            let set = [r.header.is_some(), r.json_path.is_some(), r.regex.is_some()];
            if set.iter().filter(|x| **x).count() != 1 {
                return Err(MaskError::Rule {
                    index,
                    msg: "set exactly one of header, json_path, regex".into(),
                });
            }
            if let Some(h) = &r.header {
                m.headers.push(h.to_ascii_lowercase());
            }
            if let Some(p) = &r.json_path {
                m.paths
                    .push(parse_path(p).map_err(|msg| MaskError::Rule { index, msg })?);
            }
            if let Some(re) = &r.regex {
                m.regexes.push(Regex::new(re).map_err(|e| MaskError::Rule {
                    index,
                    msg: e.to_string(),
                })?);
            }
        }
        Ok(m)
    }

    pub fn from_config(cfg: &MaskConfig, key: &[u8]) -> Result<Masker, MaskError> {
        Masker::new(&cfg.rules, key)
    }

    /// Read the node-local key at `path`, creating a random one (mode 0600) if absent.
    pub fn load_or_create_key(path: &Path) -> Result<Vec<u8>, MaskError> {
        let err = |err| MaskError::Key {
            path: path.display().to_string(),
            err,
        };
        match std::fs::read(path) {
            Ok(k) if k.len() >= 16 => return Ok(k),
            Ok(_) => {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "key file shorter than 16 bytes",
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let mut key = vec![0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| err(std::io::Error::other(e.to_string())))?;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        f.write_all(&key).map_err(err)?;
        f.sync_all().map_err(err)?;
        Ok(key)
    }

    /// The token that stands for `value`.
    pub fn token(&self, value: &str) -> String {
        if value.starts_with(TOKEN_PREFIX) {
            return value.to_string();
        }
        // HMAC accepts keys of any length.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => return format!("{TOKEN_PREFIX}0000000000000000"),
        };
        mac.update(value.as_bytes());
        let out = mac.finalize().into_bytes();
        format!("{TOKEN_PREFIX}{}", &hex::encode(out)[..16])
    }

    fn token_value(&self, v: &Value) -> Value {
        match v {
            Value::Null => Value::Null,
            Value::String(s) => Value::String(self.token(s)),
            other => Value::String(self.token(&other.to_string())),
        }
    }

    /// Mask a free-text string with the built-in and configured regexes.
    pub fn mask_text(&self, s: &str) -> String {
        let mut out = self.replace(&self.builtin, s);
        for re in &self.regexes {
            out = self.replace(re, &out);
        }
        out
    }

    fn replace(&self, re: &Regex, s: &str) -> String {
        if !re.is_match(s) {
            return s.to_string();
        }
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        for caps in re.captures_iter(s) {
            let Some(whole) = caps.get(0) else { continue };
            // Mask the first group that took part in the match, else the whole match.
            let target = (1..caps.len()).find_map(|i| caps.get(i)).unwrap_or(whole);
            out.push_str(&s[last..target.start()]);
            out.push_str(&self.token(target.as_str()));
            last = target.end();
        }
        out.push_str(&s[last..]);
        out
    }

    fn header_rule(&self, name: &str) -> bool {
        let l = name.to_ascii_lowercase();
        self.headers.contains(&l)
    }

    /// Walk a JSON value: mask secret-named fields whole, Lambda environment variables,
    /// and free-text secrets in every string.
    fn walk(&self, v: &mut Value, service: &str) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    if secret_key_name(k) || self.header_rule(k) || (service == "s3" && k == "Body")
                    {
                        *child = self.token_value(child);
                    } else if k == "Environment"
                        && let Some(Value::Object(vars)) = child.get_mut("Variables")
                    {
                        for val in vars.values_mut() {
                            *val = self.token_value(val);
                        }
                    } else {
                        self.walk(child, service);
                    }
                }
            }
            Value::Array(items) => {
                for i in items {
                    self.walk(i, service);
                }
            }
            Value::String(s) if !s.starts_with(TOKEN_PREFIX) => {
                let m = self.mask_text(s);
                if m != *s {
                    *s = m;
                }
            }
            _ => {}
        }
    }

    fn apply_path(&self, v: &mut Value, segs: &[Seg]) {
        let Some((first, rest)) = segs.split_first() else {
            *v = self.token_value(v);
            return;
        };
        match (first, v) {
            (Seg::Key(k), Value::Object(m)) => {
                if let Some(c) = m.get_mut(k) {
                    self.apply_path(c, rest);
                }
            }
            (Seg::AnyKey, Value::Object(m)) => {
                for c in m.values_mut() {
                    self.apply_path(c, rest);
                }
            }
            (Seg::Index(i), Value::Array(a)) => {
                if let Some(c) = a.get_mut(*i) {
                    self.apply_path(c, rest);
                }
            }
            (Seg::AnyIndex, Value::Array(a)) => {
                for c in a.iter_mut() {
                    self.apply_path(c, rest);
                }
            }
            _ => {}
        }
    }

    /// Mask every `Value` field in SSM responses read with decryption, and SecureString
    /// values anywhere in SSM traffic.
    fn ssm(&self, v: &mut Value, decrypted: bool) {
        match v {
            Value::Object(m) => {
                let secure = m.get("Type").and_then(Value::as_str) == Some("SecureString");
                for (k, c) in m.iter_mut() {
                    if k == "Value" && (decrypted || secure) {
                        *c = self.token_value(c);
                    } else {
                        self.ssm(c, decrypted);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|c| self.ssm(c, decrypted)),
            _ => {}
        }
    }

    fn mask_query(&self, q: &str) -> String {
        let parts: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, v)) if !v.is_empty() && (secret_key_name(k) || self.header_rule(k)) => {
                    format!("{k}={}", self.token(v))
                }
                _ => p.to_string(),
            })
            .collect();
        self.mask_text(&parts.join("&"))
    }

    /// Mask a record in place before it is stored or emitted.
    pub fn apply(&self, rec: &mut CallRecord) {
        let service = rec.aws.service.clone();
        if let Some(q) = rec.request.query.take() {
            rec.request.query = Some(self.mask_query(&q));
        }
        rec.request.path = self.mask_text(&rec.request.path);
        if let Some(ua) = rec.request.user_agent.take() {
            rec.request.user_agent = Some(self.mask_text(&ua));
        }
        if let Some(c) = rec.process.cmdline.take() {
            rec.process.cmdline = Some(self.mask_text(&c));
        }
        let decrypted = rec
            .request
            .parameters
            .as_ref()
            .and_then(|p| p.get("WithDecryption"))
            .is_some_and(|v| v == &Value::Bool(true) || v.as_str() == Some("true"));
        let is_ssm = service == "ssm" || rec.aws.signing_service.as_deref() == Some("ssm");
        if let Some(p) = rec.request.parameters.as_mut() {
            if is_ssm {
                self.ssm(p, false);
            }
            self.walk(p, &service);
            for path in self.paths.iter().filter(|p| p.request) {
                self.apply_path(p, &path.segs);
            }
        }
        if let Some(resp) = rec.response.as_mut() {
            if let Some(e) = resp.elements.as_mut() {
                if is_ssm {
                    self.ssm(e, decrypted);
                }
                self.walk(e, &service);
                for path in self.paths.iter().filter(|p| !p.request) {
                    self.apply_path(e, &path.segs);
                }
            }
            if let Some(code) = resp.error_code.take() {
                resp.error_code = Some(self.mask_text(&code));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn masker(rules: &[MaskRule]) -> Masker {
        Masker::new(rules, b"0123456789abcdef0123456789abcdef").expect("masker")
    }

    #[test]
    fn tokens_are_deterministic() {
        let m = masker(&[]);
        let a = m.token("hunter2");
        assert_eq!(a, m.token("hunter2"));
        assert_ne!(a, m.token("hunter3"));
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 16);
        assert_eq!(m.token(&a), a, "masking is idempotent");
    }

    #[test]
    fn builtins() {
        let m = masker(&[]);
        let sig = "a".repeat(64);
        let mut r = CallRecord::default();
        r.aws.service = "secretsmanager".into();
        r.request.query = Some(format!(
            "X-Amz-Signature={sig}&X-Amz-Security-Token=IQoJb3JpZ2luXYZ&NextToken=abc"
        ));
        r.request.parameters = Some(json!({"SecretId": "db", "SecretString": "s3cr3t",
            "Nested": {"DbPassword": "pw", "Items": [{"SessionToken": "tok"}]},
            "Environment": {"Variables": {"API_KEY": "k1"}},
            "Note": format!("Credential=x, SignedHeaders=host, Signature={sig}")}));
        r.response = Some(hoop_event::Response {
            elements: Some(
                json!({"Credentials": {"AccessKeyId": "ASIA1", "SecretAccessKey": "wJalr", "SessionToken": "FwoGZXIvYXdzEXAMPLETOKENVALUEVALUEVALUE"}, "NextToken": "page2"}),
            ),
            ..Default::default()
        });
        m.apply(&mut r);
        let s = serde_json::to_string(&r).expect("json");
        for secret in [
            sig.as_str(),
            "IQoJb3JpZ2luXYZ",
            "s3cr3t",
            "\"pw\"",
            "\"tok\"",
            "k1",
            "wJalr",
            "FwoGZXIvYXdz",
        ] {
            assert!(!s.contains(secret), "{secret} leaked: {s}");
        }
        for kept in ["\"db\"", "ASIA1", "page2", "NextToken=abc", "API_KEY"] {
            assert!(s.contains(kept), "{kept} lost: {s}");
        }
    }

    #[test]
    fn ssm_with_decryption_and_kms() {
        let m = masker(&[]);
        let mut r = CallRecord::default();
        r.aws.service = "ssm".into();
        r.request.parameters = Some(json!({"Names": ["a", "b"], "WithDecryption": true}));
        r.response = Some(hoop_event::Response {
            elements: Some(
                json!({"Parameters": [{"Name": "a", "Type": "String", "Value": "plainval"}]}),
            ),
            ..Default::default()
        });
        m.apply(&mut r);
        let s = serde_json::to_string(&r).expect("json");
        assert!(!s.contains("plainval"), "{s}");
        let mut k = CallRecord::default();
        k.aws.service = "kms".into();
        k.response = Some(hoop_event::Response {
            elements: Some(json!({"Plaintext": "AAAA", "KeyId": "k"})),
            ..Default::default()
        });
        m.apply(&mut k);
        assert!(!serde_json::to_string(&k).expect("json").contains("AAAA"));
    }

    #[test]
    fn config_rules() {
        let cfg = MaskConfig::from_yaml(
            "rules:\n  - header: X-Custom\n  - json_path: request.parameters.Config.ApiKey\n  - json_path: response.elements.Items[*].v\n  - regex: 'ghp_[A-Za-z0-9]{8}'\n",
        )
        .expect("yaml");
        assert_eq!(cfg.rules.len(), 4);
        let m = Masker::from_config(&cfg, b"k").expect("masker");
        let mut r = CallRecord::default();
        r.request.query = Some("X-Custom=abc&x=1".into());
        r.request.parameters =
            Some(json!({"Config": {"ApiKey": "zzz", "Other": "ghp_abcdefgh here"}}));
        r.response = Some(hoop_event::Response {
            elements: Some(json!({"Items": [{"v": 1}, {"v": "two"}]})),
            ..Default::default()
        });
        m.apply(&mut r);
        let s = serde_json::to_string(&r).expect("json");
        assert!(
            !s.contains("abc&") && !s.contains("zzz") && !s.contains("ghp_") && !s.contains("two"),
            "{s}"
        );
        assert!(s.contains(" here"));
        assert!(MaskConfig::from_yaml("- colour: red").is_err());
        assert!(Masker::new(&[MaskRule::default()], b"k").is_err());
        assert!(
            Masker::new(
                &[MaskRule {
                    regex: Some("(".into()),
                    ..Default::default()
                }],
                b"k"
            )
            .is_err()
        );
        assert!(
            Masker::new(
                &[MaskRule {
                    json_path: Some("foo.bar".into()),
                    ..Default::default()
                }],
                b"k"
            )
            .is_err()
        );
    }
}
