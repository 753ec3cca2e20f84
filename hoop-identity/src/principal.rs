//! Access key id → principal ARN, learned from what the host sees.
//!
//! Sources: STS responses (query-protocol XML, or the JSON form query APIs return for
//! `Accept: application/json`), the instance metadata service's role credentials, the ECS /
//! EKS Pod Identity container credential endpoints, IRSA variables in a process environment,
//! and a static map from config.
//!
//! Secrets: responses carry `SecretAccessKey` and `SessionToken`/`Token`. Parsers here read
//! only the fields they need: the XML reader skips other elements without copying their text,
//! and the JSON structs have no field for secrets, so serde skips them without allocating.
//! Nothing in this module holds, logs or returns a secret.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::sync::RwLock;

/// How a principal was learned (the `Identity.source` strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Sts,
    Imds,
    ContainerCredentials,
    Irsa,
    Config,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Sts => "sts",
            Source::Imds => "imds",
            Source::ContainerCredentials => "container-credentials",
            Source::Irsa => "irsa",
            Source::Config => "config",
        }
    }
}

/// What is known about one access key id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrincipalInfo {
    pub access_key_id: String,
    /// Principal ARN; absent when only the account is known (EKS Pod Identity).
    pub arn: Option<String>,
    pub account_id: Option<String>,
    pub source: Source,
    /// Expiry of temporary credentials, Unix seconds.
    pub expires: Option<i64>,
}

impl PrincipalInfo {
    /// Expiry as RFC 3339.
    pub fn expires_rfc3339(&self) -> Option<String> {
        self.expires.and_then(crate::rfc3339_secs)
    }

    pub fn to_identity(&self) -> hoop_event::Identity {
        hoop_event::Identity {
            access_key_id: Some(self.access_key_id.clone()),
            principal_arn: self.arn.clone(),
            account_id: self
                .account_id
                .clone()
                .or_else(|| self.arn.as_deref().and_then(account_of_arn)),
            source: Some(self.source.as_str().to_string()),
            expires: self.expires_rfc3339(),
        }
    }
}

/// The account field of an ARN (`arn:partition:service:region:ACCOUNT:resource`).
pub fn account_of_arn(arn: &str) -> Option<String> {
    let acct = arn.split(':').nth(4)?;
    (acct.len() == 12 && acct.bytes().all(|b| b.is_ascii_digit())).then(|| acct.to_string())
}

/// Principal settings (`identity.principals` in the agent config).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct PrincipalConfig {
    /// Long-term keys: access key id → principal ARN.
    pub static_keys: HashMap<String, String>,
    /// Temporary keys stay this long past their expiry (a call signed just before expiry is
    /// parsed a little later).
    pub expiry_grace_secs: u64,
    /// Bound on learned keys.
    pub max_entries: usize,
}

impl Default for PrincipalConfig {
    fn default() -> Self {
        PrincipalConfig {
            static_keys: HashMap::new(),
            expiry_grace_secs: 300,
            max_entries: 100_000,
        }
    }
}

/// What an instance identity document told us.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InstanceIdentity {
    pub account_id: Option<String>,
    pub instance_id: Option<String>,
    pub region: Option<String>,
}

impl InstanceIdentity {
    fn partition(&self) -> &'static str {
        match self.region.as_deref() {
            Some(r) if r.starts_with("cn-") => "aws-cn",
            Some(r) if r.starts_with("us-gov-") => "aws-us-gov",
            _ => "aws",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Principal {
    Arn(String),
    /// IMDS role credentials: the ARN needs the account and instance id, which may be learned
    /// later from the identity document.
    ImdsRole(String),
    /// GetSessionToken: same principal as the key that signed the request.
    SameAs(String),
    /// Only the account is known.
    AccountOnly,
}

#[derive(Clone, Debug)]
struct Entry {
    principal: Principal,
    account_id: Option<String>,
    source: Source,
    expires: Option<i64>,
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<String, Entry>,
    instance: InstanceIdentity,
    conflicts: u64,
}

/// The access key id → principal map. Holds key ids, ARNs, accounts and expiry only.
#[derive(Debug)]
pub struct PrincipalMap {
    cfg: PrincipalConfig,
    inner: RwLock<Inner>,
}

/// What one learning call added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    pub access_key_id: String,
    pub arn: Option<String>,
    pub source: Source,
}

/// One parsed plaintext HTTP exchange, as the agent has it. Bodies are de-chunked (possibly
/// partial). Only the fields needed for learning are here.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpExchange<'a> {
    /// `Host` header (or authority), without scheme; the port may be present.
    pub host: Option<&'a str>,
    pub method: &'a str,
    /// Request target (path and query).
    pub target: &'a str,
    /// The access key id from the request's SigV4 credential scope, if signed.
    pub signing_access_key_id: Option<&'a str>,
    pub status: u16,
    pub response_body: &'a [u8],
}

/// Bodies larger than this are not credential responses.
const MAX_BODY: usize = 1 << 20;

fn valid_key_id(k: &str) -> bool {
    (16..=128).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn valid_arn(a: &str) -> bool {
    a.starts_with("arn:") && a.len() <= 2048 && !a.chars().any(char::is_control)
}

impl PrincipalMap {
    pub fn new(cfg: PrincipalConfig) -> Self {
        let mut inner = Inner::default();
        for (k, arn) in &cfg.static_keys {
            inner.keys.insert(
                k.clone(),
                Entry {
                    account_id: account_of_arn(arn),
                    principal: Principal::Arn(arn.clone()),
                    source: Source::Config,
                    expires: None,
                },
            );
        }
        PrincipalMap {
            cfg,
            inner: RwLock::new(inner),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn resolve_arn(inner: &Inner, key: &str, depth: u8) -> Option<String> {
        let e = inner.keys.get(key)?;
        match &e.principal {
            Principal::Arn(a) => Some(a.clone()),
            Principal::ImdsRole(role) => {
                let i = &inner.instance;
                Some(format!(
                    "arn:{}:sts::{}:assumed-role/{}/{}",
                    i.partition(),
                    i.account_id.as_deref().unwrap_or("*"),
                    role,
                    i.instance_id.as_deref().unwrap_or("*")
                ))
            }
            Principal::SameAs(other) if depth < 4 => Self::resolve_arn(inner, other, depth + 1),
            Principal::SameAs(_) | Principal::AccountOnly => None,
        }
    }

    /// What is known about a key. Expired keys are kept (and returned) until the sweep drops
    /// them after the grace period: a call signed before expiry keeps its attribution.
    pub fn lookup(&self, access_key_id: &str) -> Option<PrincipalInfo> {
        let inner = self.read();
        let e = inner.keys.get(access_key_id)?;
        let arn = Self::resolve_arn(&inner, access_key_id, 0);
        let account_id = e
            .account_id
            .clone()
            .or_else(|| match &e.principal {
                Principal::ImdsRole(_) => inner.instance.account_id.clone(),
                Principal::SameAs(o) => inner.keys.get(o).and_then(|p| p.account_id.clone()),
                _ => None,
            })
            .or_else(|| arn.as_deref().and_then(account_of_arn));
        Some(PrincipalInfo {
            access_key_id: access_key_id.to_string(),
            arn,
            account_id,
            source: e.source,
            expires: e.expires,
        })
    }

    /// Every key whose principal ARN is known, with that ARN (policy `principals` selectors
    /// are enforced through the keys of the matching principals).
    pub fn keys_with_arns(&self) -> Vec<(String, String)> {
        let inner = self.read();
        inner
            .keys
            .keys()
            .filter_map(|k| Some((k.clone(), Self::resolve_arn(&inner, k, 0)?)))
            .collect()
    }

    /// Number of keys known.
    pub fn len(&self) -> usize {
        self.read().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Times a learned mapping disagreed with a live one and was refused.
    pub fn conflicts(&self) -> u64 {
        self.read().conflicts
    }

    /// Records the instance identity (from the document seen on the wire, or fetched by the
    /// agent itself at start-up on EC2).
    pub fn set_instance_identity(&self, id: InstanceIdentity) {
        let mut inner = self.write();
        let cur = &mut inner.instance;
        cur.account_id = id.account_id.or(cur.account_id.take());
        cur.instance_id = id.instance_id.or(cur.instance_id.take());
        cur.region = id.region.or(cur.region.take());
    }

    pub fn instance_identity(&self) -> InstanceIdentity {
        self.read().instance.clone()
    }

    fn learn(
        &self,
        key: &str,
        principal: Principal,
        account_id: Option<String>,
        source: Source,
        expires: Option<i64>,
    ) -> Option<Learned> {
        if !valid_key_id(key) {
            return None;
        }
        if let Principal::Arn(a) | Principal::SameAs(a) = &principal
            && !(valid_arn(a) || valid_key_id(a))
        {
            return None;
        }
        let mut inner = self.write();
        if let Some(old) = inner.keys.get(key) {
            // Config wins; a live mapping to another principal is not overwritten (a process
            // faking an STS response must not re-attribute someone else's key).
            let live = old.expires.is_none_or(|t| t > crate::now_unix());
            let same = old.principal == principal
                || matches!(old.principal, Principal::SameAs(_) | Principal::AccountOnly);
            if old.source == Source::Config || (live && !same) {
                inner.conflicts += 1;
                tracing::debug!(
                    access_key_id = key,
                    "principal: conflicting mapping ignored"
                );
                return None;
            }
        }
        if inner.keys.len() >= self.cfg.max_entries.max(16) {
            Self::evict(&mut inner, self.cfg.max_entries.max(16));
        }
        inner.keys.insert(
            key.to_string(),
            Entry {
                principal,
                account_id,
                source,
                expires,
            },
        );
        let arn = Self::resolve_arn(&inner, key, 0);
        Some(Learned {
            access_key_id: key.to_string(),
            arn,
            source,
        })
    }

    fn evict(inner: &mut Inner, max: usize) {
        // Drop the soonest-expiring temporary keys first; config keys never.
        let mut temp: Vec<(i64, String)> = inner
            .keys
            .iter()
            .filter(|(_, e)| e.source != Source::Config)
            .map(|(k, e)| (e.expires.unwrap_or(i64::MAX), k.clone()))
            .collect();
        temp.sort_unstable();
        let n = (inner.keys.len() + max / 8).saturating_sub(max).max(1);
        for (_, k) in temp.into_iter().take(n) {
            inner.keys.remove(&k);
        }
    }

    /// Drops temporary keys expired for longer than the grace period. `now` in Unix seconds.
    pub fn sweep(&self, now: i64) {
        let grace = i64::try_from(self.cfg.expiry_grace_secs).unwrap_or(i64::MAX);
        self.write()
            .keys
            .retain(|_, e| e.expires.is_none_or(|t| t.saturating_add(grace) > now));
    }

    /// Learns from any exchange: STS (recognised by the response), IMDS and container
    /// credential endpoints (recognised by host and path). Returns what it learned.
    pub fn learn_from_exchange(&self, ex: &HttpExchange<'_>) -> Option<Learned> {
        if ex.status != 200 || ex.response_body.len() > MAX_BODY {
            return None;
        }
        let host = ex.host.map(strip_port).unwrap_or("");
        let path = ex.target.split('?').next().unwrap_or("");
        match host {
            "169.254.169.254" | "[fd00:ec2::254]" | "fd00:ec2::254" => {
                self.learn_imds(path, ex.response_body)
            }
            "169.254.170.2" | "169.254.170.23" | "[fd00:ec2::23]" | "fd00:ec2::23" => {
                self.learn_container_credentials(ex.response_body)
            }
            _ => self.learn_sts(ex.signing_access_key_id, ex.status, ex.response_body),
        }
    }

    /// Learns from an STS response body (XML or JSON). `signing_access_key_id` is the key
    /// that signed the request: GetSessionToken's new key acts as it, GetCallerIdentity names
    /// it. The agent should only pass responses from endpoints it trusts as STS.
    pub fn learn_sts(
        &self,
        signing_access_key_id: Option<&str>,
        status: u16,
        body: &[u8],
    ) -> Option<Learned> {
        if status != 200 || body.len() > MAX_BODY {
            return None;
        }
        let r = parse_sts_response(body)?;
        let expires = r.expiration.as_deref().and_then(parse_expiration);
        match (r.kind, r.access_key_id, r.arn, signing_access_key_id) {
            (StsKind::CallerIdentity, _, Some(arn), Some(signer)) => {
                let expires = self.read().keys.get(signer).and_then(|e| e.expires);
                let source = match self.read().keys.get(signer) {
                    Some(e) if e.source != Source::Config => e.source,
                    _ => Source::Sts,
                };
                // Upgrades an IMDS/pod-identity/session-token guess to the exact ARN.
                let mut inner = self.write();
                if let Some(e) = inner.keys.get_mut(signer) {
                    if e.source == Source::Config {
                        return None;
                    }
                    if matches!(
                        e.principal,
                        Principal::AccountOnly | Principal::ImdsRole(_) | Principal::SameAs(_)
                    ) {
                        e.principal = Principal::Arn(arn.clone());
                        e.account_id = r.account.clone().or(e.account_id.take());
                        return Some(Learned {
                            access_key_id: signer.to_string(),
                            arn: Some(arn),
                            source,
                        });
                    }
                }
                drop(inner);
                self.learn(signer, Principal::Arn(arn), r.account, source, expires)
            }
            (StsKind::SessionToken, Some(key), _, Some(signer)) if key != signer => self.learn(
                &key,
                Principal::SameAs(signer.to_string()),
                None,
                Source::Sts,
                expires,
            ),
            (StsKind::AssumedRole | StsKind::Federated, Some(key), Some(arn), _) => {
                let acct = account_of_arn(&arn);
                self.learn(&key, Principal::Arn(arn), acct, Source::Sts, expires)
            }
            _ => None,
        }
    }

    /// Learns from an instance metadata response. Paths:
    /// `/latest/meta-data/iam/security-credentials/<role>` (role credentials),
    /// `/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance`,
    /// `/latest/dynamic/instance-identity/document` (account, instance id, region).
    pub fn learn_imds(&self, path: &str, body: &[u8]) -> Option<Learned> {
        if body.len() > MAX_BODY {
            return None;
        }
        let path = path.trim_end_matches('/');
        if path.ends_with("/dynamic/instance-identity/document") {
            let doc: IdentityDocument = serde_json::from_slice(body).ok()?;
            self.set_instance_identity(InstanceIdentity {
                account_id: doc.account_id.map(Cow::into_owned),
                instance_id: doc.instance_id.map(Cow::into_owned),
                region: doc.region.map(Cow::into_owned),
            });
            return None;
        }
        let role = if let Some((_, role)) = path.rsplit_once("/meta-data/iam/security-credentials/")
        {
            role
        } else if path.ends_with("/identity-credentials/ec2/security-credentials/ec2-instance") {
            "aws:ec2-instance"
        } else {
            return None;
        };
        if role.is_empty() || role.contains('/') || role.len() > 128 {
            return None;
        }
        let c: CredentialBody = serde_json::from_slice(body).ok()?;
        if c.code.as_deref().is_some_and(|code| code != "Success") {
            return None;
        }
        let key = c.access_key_id?;
        let expires = c.expiration.as_ref().and_then(Expiration::unix);
        self.learn(
            &key,
            Principal::ImdsRole(role.to_string()),
            None,
            Source::Imds,
            expires,
        )
    }

    /// Learns from an ECS task role (169.254.170.2) or EKS Pod Identity (169.254.170.23)
    /// credential response. ECS gives `RoleArn`; Pod Identity only `AccountId` (its ARN is
    /// learned later if the process calls GetCallerIdentity).
    pub fn learn_container_credentials(&self, body: &[u8]) -> Option<Learned> {
        if body.len() > MAX_BODY {
            return None;
        }
        let c: CredentialBody = serde_json::from_slice(body).ok()?;
        let key = c.access_key_id?;
        let expires = c.expiration.as_ref().and_then(Expiration::unix);
        let account = c
            .account_id
            .map(Cow::into_owned)
            .or_else(|| c.role_arn.as_deref().and_then(account_of_arn));
        let principal = match c.role_arn {
            Some(a) if valid_arn(&a) => Principal::Arn(a.into_owned()),
            _ => Principal::AccountOnly,
        };
        self.learn(
            &key,
            principal,
            account,
            Source::ContainerCredentials,
            expires,
        )
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Expiration as AWS sends it: RFC 3339 text, or epoch seconds in the JSON form of query APIs.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Expiration<'a> {
    Seconds(f64),
    #[serde(borrow)]
    Text(Cow<'a, str>),
}

impl Expiration<'_> {
    fn unix(&self) -> Option<i64> {
        match self {
            Expiration::Seconds(s) if s.is_finite() && *s > 0.0 && *s < 1e12 => Some(*s as i64),
            Expiration::Seconds(_) => None,
            Expiration::Text(t) => parse_expiration(t),
        }
    }
}

fn parse_expiration(s: &str) -> Option<i64> {
    crate::parse_rfc3339(s).or_else(|| {
        // Some emulators send `2026-11-25T19:00:00.123456` without a zone: assume UTC.
        crate::parse_rfc3339(&format!("{}Z", s.trim()))
    })
}

/// IMDS / container credential JSON. No field for `SecretAccessKey` or `Token`: serde skips
/// unknown fields without copying them.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialBody<'a> {
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(borrow, default)]
    expiration: Option<Expiration<'a>>,
    #[serde(borrow, default)]
    account_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    role_arn: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument<'a> {
    #[serde(borrow, default)]
    account_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    instance_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    region: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StsKind {
    AssumedRole,
    Federated,
    SessionToken,
    CallerIdentity,
}

/// The non-secret fields of an STS response.
#[derive(Debug, Default, PartialEq, Eq)]
struct StsFields {
    arn: Option<String>,
    account: Option<String>,
    access_key_id: Option<String>,
    expiration: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
struct StsResponse {
    kind: StsKind,
    arn: Option<String>,
    account: Option<String>,
    access_key_id: Option<String>,
    expiration: Option<String>,
}

fn kind_of(op: &str) -> Option<StsKind> {
    Some(match op {
        "AssumeRole" | "AssumeRoleWithWebIdentity" | "AssumeRoleWithSAML" | "AssumeRoot" => {
            StsKind::AssumedRole
        }
        "GetFederationToken" => StsKind::Federated,
        "GetSessionToken" => StsKind::SessionToken,
        "GetCallerIdentity" => StsKind::CallerIdentity,
        _ => return None,
    })
}

fn parse_sts_response(body: &[u8]) -> Option<StsResponse> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    let (op, f) = if *first == b'{' {
        parse_sts_json(body)?
    } else {
        parse_sts_xml(body)?
    };
    let kind = kind_of(&op)?;
    Some(StsResponse {
        kind,
        arn: f.arn.filter(|a| valid_arn(a)),
        account: f.account,
        access_key_id: f.access_key_id,
        expiration: f.expiration,
    })
}

/// Which element paths (below `<Op>Result`) we keep.
fn wanted(path: &[Vec<u8>]) -> Option<u8> {
    if !path.get(1).is_some_and(|r| r.ends_with(b"Result")) {
        return None;
    }
    let tail: Vec<&[u8]> = path.iter().skip(2).map(Vec::as_slice).collect();
    match tail.as_slice() {
        [b"AssumedRoleUser", b"Arn"] | [b"FederatedUser", b"Arn"] | [b"Arn"] => Some(0),
        [b"Account"] => Some(1),
        [b"Credentials", b"AccessKeyId"] => Some(2),
        [b"Credentials", b"Expiration"] => Some(3),
        _ => None,
    }
}

/// `<OpResponse><OpResult>…` → (Op, fields). Text of unwanted elements (SecretAccessKey,
/// SessionToken) is never decoded or copied.
fn parse_sts_xml(body: &[u8]) -> Option<(String, StsFields)> {
    use quick_xml::events::Event;
    let mut r = quick_xml::Reader::from_reader(body);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut op: Option<String> = None;
    let mut f = StsFields::default();
    let mut text = String::new();
    loop {
        match r.read_event().ok()? {
            Event::Start(s) => {
                if path.len() >= 16 {
                    return None;
                }
                let name = s.local_name().as_ref().as_bytes().to_vec();
                if path.is_empty() {
                    let root = std::str::from_utf8(&name).ok()?;
                    op = Some(root.strip_suffix("Response")?.to_string());
                }
                path.push(name);
                text.clear();
            }
            Event::Text(t) => {
                if wanted(&path).is_some() && text.len() < 4096 {
                    text.push_str(&t.xml10_content());
                }
            }
            Event::GeneralRef(g) => {
                if wanted(&path).is_some() && text.len() < 4096 {
                    let ch = match g.as_ref() {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "quot" => Some('"'),
                        "apos" => Some('\''),
                        _ => g.resolve_char_ref().ok().flatten(),
                    };
                    text.extend(ch);
                }
            }
            Event::End(_) => {
                if let Some(which) = wanted(&path) {
                    let v = std::mem::take(&mut text).trim().to_string();
                    let slot = match which {
                        0 => &mut f.arn,
                        1 => &mut f.account,
                        2 => &mut f.access_key_id,
                        _ => &mut f.expiration,
                    };
                    slot.get_or_insert(v);
                }
                path.pop();
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    // The result element must match the response element.
    Some((op?, f))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonArnHolder {
    #[serde(default)]
    arn: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonCredentials<'a> {
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(borrow, default)]
    expiration: Option<Expiration<'a>>,
}

/// The result object; no field for secrets.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct JsonResult<'a> {
    #[serde(default)]
    assumed_role_user: Option<JsonArnHolder>,
    #[serde(default)]
    federated_user: Option<JsonArnHolder>,
    #[serde(borrow, default)]
    credentials: Option<JsonCredentials<'a>>,
    #[serde(default)]
    arn: Option<String>,
    #[serde(default)]
    account: Option<String>,
}

#[derive(Deserialize)]
struct JsonEnvelope<'a> {
    #[serde(
        borrow,
        alias = "AssumeRoleResult",
        alias = "AssumeRoleWithWebIdentityResult",
        alias = "AssumeRoleWithSAMLResult",
        alias = "AssumeRootResult",
        alias = "GetFederationTokenResult",
        alias = "GetSessionTokenResult",
        alias = "GetCallerIdentityResult"
    )]
    result: Option<JsonResult<'a>>,
}

/// `{"AssumeRoleResponse": {"AssumeRoleResult": {...}}}` (query API with Accept: JSON).
fn parse_sts_json(body: &[u8]) -> Option<(String, StsFields)> {
    let top: HashMap<String, JsonEnvelope<'_>> = serde_json::from_slice(body).ok()?;
    let (name, env) = top.into_iter().find(|(k, _)| k.ends_with("Response"))?;
    let op = name.strip_suffix("Response")?.to_string();
    let res = env.result?;
    let arn = res
        .assumed_role_user
        .and_then(|u| u.arn)
        .or_else(|| res.federated_user.and_then(|u| u.arn))
        .or(res.arn);
    let (access_key_id, expiration) = match res.credentials {
        Some(c) => {
            let exp = c
                .expiration
                .as_ref()
                .and_then(Expiration::unix)
                .and_then(crate::rfc3339_secs);
            (c.access_key_id, exp)
        }
        None => (None, None),
    };
    Some((
        op,
        StsFields {
            arn,
            account: res.account,
            access_key_id,
            expiration,
        },
    ))
}

/// IRSA variables of one process environment. The role ARN is not secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IrsaEnv {
    pub role_arn: Option<String>,
    pub web_identity_token_file: Option<String>,
}

/// Reads `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE` from an environ file. Every other
/// variable is skipped by name; no other value is converted or copied, and the read buffer is
/// zeroed before it is freed.
pub fn read_irsa_env(environ: &Path) -> Option<IrsaEnv> {
    let mut f = fs::File::open(environ).ok()?;
    let mut buf = Vec::new();
    // Environments are bounded by ARG_MAX-ish limits; cap the read anyway.
    let res = (&mut f).take(1 << 20).read_to_end(&mut buf);
    let env = res.ok().map(|_| irsa_from_environ(&buf));
    buf.fill(0);
    std::hint::black_box(&buf);
    env.filter(|e| e.role_arn.is_some() || e.web_identity_token_file.is_some())
}

/// The IRSA variables of a NUL-separated environment block.
pub fn irsa_from_environ(block: &[u8]) -> IrsaEnv {
    let mut out = IrsaEnv::default();
    for var in block.split(|b| *b == 0) {
        let value = |name: &[u8]| {
            var.strip_prefix(name)
                .and_then(|v| v.strip_prefix(b"="))
                .and_then(|v| std::str::from_utf8(v).ok())
                .filter(|v| !v.is_empty() && v.len() <= 2048)
                .map(str::to_string)
        };
        if let Some(v) = value(b"AWS_ROLE_ARN").filter(|v| valid_arn(v)) {
            out.role_arn = Some(v);
        } else if let Some(v) = value(b"AWS_WEB_IDENTITY_TOKEN_FILE") {
            out.web_identity_token_file = Some(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY";
    pub(crate) const TOKEN: &str =
        "FwoGZXIvYXdzEBYaDHhBTEXAMPLETOKENz9Ygb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ";

    fn assume_role_xml() -> String {
        format!(
            r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <SourceIdentity>DevUser123</SourceIdentity>
    <AssumedRoleUser>
      <AssumedRoleId>AROA3XFRBF535PLBIFPI4:s3-access-example</AssumedRoleId>
      <Arn>arn:aws:sts::123456789012:assumed-role/demo/s3-access-example</Arn>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAJEXAMPLEXEG2JICEA</AccessKeyId>
      <SecretAccessKey>{SECRET}</SecretAccessKey>
      <SessionToken>{TOKEN}</SessionToken>
      <Expiration>2099-10-02T15:00:00Z</Expiration>
    </Credentials>
    <PackedPolicySize>8</PackedPolicySize>
  </AssumeRoleResult>
  <ResponseMetadata>
    <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>
  </ResponseMetadata>
</AssumeRoleResponse>"#
        )
    }

    fn map() -> PrincipalMap {
        PrincipalMap::new(PrincipalConfig::default())
    }

    #[test]
    fn assume_role_xml_is_learned_and_secrets_are_not_kept() {
        let m = map();
        let l = m
            .learn_sts(
                Some("AKIAIOSFODNN7EXAMPLE"),
                200,
                assume_role_xml().as_bytes(),
            )
            .expect("learned");
        assert_eq!(l.access_key_id, "ASIAJEXAMPLEXEG2JICEA");
        let p = m.lookup("ASIAJEXAMPLEXEG2JICEA").expect("known");
        assert_eq!(
            p.arn.as_deref(),
            Some("arn:aws:sts::123456789012:assumed-role/demo/s3-access-example")
        );
        assert_eq!(p.account_id.as_deref(), Some("123456789012"));
        assert_eq!(p.source, Source::Sts);
        assert_eq!(p.expires_rfc3339().as_deref(), Some("2099-10-02T15:00:00Z"));
        let id = p.to_identity();
        assert_eq!(id.source.as_deref(), Some("sts"));
        for dump in [
            format!("{m:?}"),
            format!("{p:?}"),
            format!("{l:?}"),
            serde_json::to_string(&p).expect("ser"),
            serde_json::to_string(&id).expect("ser"),
        ] {
            assert!(!dump.contains(SECRET), "secret leaked: {dump}");
            assert!(!dump.contains(TOKEN), "token leaked: {dump}");
            assert!(!dump.contains("wJalr"), "secret prefix leaked: {dump}");
        }
    }

    #[test]
    fn moto_shaped_assume_role_with_web_identity_and_saml() {
        let m = map();
        for (op, user) in [
            (
                "AssumeRoleWithWebIdentity",
                "arn:aws:sts::123456789012:assumed-role/irsa-role/botocore-session-1",
            ),
            (
                "AssumeRoleWithSAML",
                "arn:aws:sts::123456789012:assumed-role/saml-role/alice@example.com",
            ),
        ] {
            let key = if op.ends_with("SAML") {
                "ASIAEXAMPLESAML00001"
            } else {
                "ASIAEXAMPLEWEBID0001"
            };
            let body = format!(
                "<{op}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><{op}Result>\
                 <SubjectFromWebIdentityToken>system:serviceaccount:ns:sa</SubjectFromWebIdentityToken>\
                 <Audience>sts.amazonaws.com</Audience>\
                 <AssumedRoleUser><Arn>{user}</Arn><AssumedRoleId>AROAX:s</AssumedRoleId></AssumedRoleUser>\
                 <Credentials><SessionToken>{TOKEN}</SessionToken><SecretAccessKey>{SECRET}</SecretAccessKey>\
                 <Expiration>2099-01-01T00:00:00.123Z</Expiration><AccessKeyId>{key}</AccessKeyId></Credentials>\
                 </{op}Result><ResponseMetadata><RequestId>x</RequestId></ResponseMetadata></{op}Response>"
            );
            m.learn_sts(None, 200, body.as_bytes()).expect(op);
            let p = m.lookup(key).expect("known");
            assert_eq!(p.arn.as_deref(), Some(user));
            assert_eq!(p.expires, Some(4_070_908_800));
        }
        assert!(!format!("{m:?}").contains(SECRET));
    }

    #[test]
    fn session_token_acts_as_the_signer_and_caller_identity_names_it() {
        let m = PrincipalMap::new(PrincipalConfig {
            static_keys: [(
                "AKIAIOSFODNN7EXAMPLE".to_string(),
                "arn:aws:iam::123456789012:user/alice".to_string(),
            )]
            .into(),
            ..Default::default()
        });
        let body = format!(
            r#"<GetSessionTokenResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetSessionTokenResult>
    <Credentials>
      <SessionToken>{TOKEN}</SessionToken>
      <SecretAccessKey>{SECRET}</SecretAccessKey>
      <Expiration>2099-07-11T19:55:29.611Z</Expiration>
      <AccessKeyId>ASIAIOSFODNN7SESSION</AccessKeyId>
    </Credentials>
  </GetSessionTokenResult>
  <ResponseMetadata><RequestId>58c5dbae-abef-11e0-8cfe-09039844ac7d</RequestId></ResponseMetadata>
</GetSessionTokenResponse>"#
        );
        m.learn_sts(Some("AKIAIOSFODNN7EXAMPLE"), 200, body.as_bytes())
            .expect("session token");
        let p = m.lookup("ASIAIOSFODNN7SESSION").expect("known");
        assert_eq!(
            p.arn.as_deref(),
            Some("arn:aws:iam::123456789012:user/alice")
        );
        assert_eq!(p.account_id.as_deref(), Some("123456789012"));

        // GetCallerIdentity signed by an unknown key teaches that key.
        let gci = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
   <Arn>arn:aws:iam::123456789012:user/bob</Arn>
    <UserId>AIDACKCEVSQ6C2EXAMPLE</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>"#;
        m.learn_sts(Some("AKIAI44QH8DHBEXAMPLE"), 200, gci.as_bytes())
            .expect("caller identity");
        let p = m.lookup("AKIAI44QH8DHBEXAMPLE").expect("bob");
        assert_eq!(p.arn.as_deref(), Some("arn:aws:iam::123456789012:user/bob"));
        // Config keys are never re-attributed.
        assert!(
            m.learn_sts(Some("AKIAIOSFODNN7EXAMPLE"), 200, gci.as_bytes())
                .is_none()
        );
        assert_eq!(
            m.lookup("AKIAIOSFODNN7EXAMPLE")
                .and_then(|p| p.arn)
                .as_deref(),
            Some("arn:aws:iam::123456789012:user/alice")
        );
    }

    #[test]
    fn federation_token() {
        let m = map();
        let body = format!(
            "<GetFederationTokenResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
             <GetFederationTokenResult><Credentials><SessionToken>{TOKEN}</SessionToken>\
             <SecretAccessKey>{SECRET}</SecretAccessKey><Expiration>2099-07-15T23:28:33.359Z</Expiration>\
             <AccessKeyId>ASIAIOSFODNN7FEDERAT</AccessKeyId></Credentials>\
             <FederatedUser><Arn>arn:aws:sts::123456789012:federated-user/Bob</Arn>\
             <FederatedUserId>123456789012:Bob</FederatedUserId></FederatedUser>\
             <PackedPolicySize>6</PackedPolicySize></GetFederationTokenResult></GetFederationTokenResponse>"
        );
        m.learn_sts(None, 200, body.as_bytes()).expect("federated");
        assert_eq!(
            m.lookup("ASIAIOSFODNN7FEDERAT")
                .and_then(|p| p.arn)
                .as_deref(),
            Some("arn:aws:sts::123456789012:federated-user/Bob")
        );
    }

    #[test]
    fn json_form_of_sts() {
        let m = map();
        let body = format!(
            r#"{{"AssumeRoleResponse":{{"AssumeRoleResult":{{"AssumedRoleUser":{{"Arn":"arn:aws:sts::123456789012:assumed-role/demo/json","AssumedRoleId":"AROA:json"}},"Credentials":{{"AccessKeyId":"ASIAJSONEXAMPLE00001","Expiration":4.0709088E9,"SecretAccessKey":"{SECRET}","SessionToken":"{TOKEN}"}},"PackedPolicySize":null,"SourceIdentity":null}},"ResponseMetadata":{{"RequestId":"r"}}}}}}"#
        );
        m.learn_sts(None, 200, body.as_bytes()).expect("json");
        let p = m.lookup("ASIAJSONEXAMPLE00001").expect("known");
        assert_eq!(
            p.arn.as_deref(),
            Some("arn:aws:sts::123456789012:assumed-role/demo/json")
        );
        assert_eq!(p.expires, Some(4_070_908_800));
        let gci = r#"{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Account":"123456789012","Arn":"arn:aws:iam::123456789012:user/carol","UserId":"AIDA"},"ResponseMetadata":{"RequestId":"r"}}}"#;
        m.learn_sts(Some("AKIACAROLEXAMPLE0001"), 200, gci.as_bytes())
            .expect("gci");
        assert_eq!(
            m.lookup("AKIACAROLEXAMPLE0001")
                .and_then(|p| p.arn)
                .as_deref(),
            Some("arn:aws:iam::123456789012:user/carol")
        );
    }

    #[test]
    fn errors_and_junk_are_ignored() {
        let m = map();
        let err = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>no</Message></Error><RequestId>x</RequestId></ErrorResponse>"#;
        assert!(m.learn_sts(None, 403, err.as_bytes()).is_none());
        assert!(m.learn_sts(None, 200, err.as_bytes()).is_none());
        for junk in [
            &b""[..],
            b"<",
            b"<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>",
            b"{\"AssumeRoleResponse\": 5}",
            b"\xff\xfe<x>",
            b"<a><b><c><d><e><f><g><h><i><j><k><l><m><n><o><p><q><r>",
            b"<AssumeRoleResponse><AssumeRoleResult><AssumedRoleUser><Arn>not-an-arn</Arn></AssumedRoleUser><Credentials><AccessKeyId>ASIAEXAMPLEEXAMPLE1</AccessKeyId></Credentials></AssumeRoleResult></AssumeRoleResponse>",
            b"<AssumeRoleResponse><AssumeRoleResult><AssumedRoleUser><Arn>arn:aws:sts::1:x</Arn></AssumedRoleUser><Credentials><AccessKeyId>short</AccessKeyId></Credentials></AssumeRoleResult></AssumeRoleResponse>",
        ] {
            assert!(m.learn_sts(Some("AKIAEXAMPLEEXAMPLE"), 200, junk).is_none());
        }
        assert!(m.is_empty());
        // Entities decode in wanted fields.
        let amp = "<AssumeRoleResponse><AssumeRoleResult><AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/r/a&amp;b&#64;c</Arn></AssumedRoleUser><Credentials><AccessKeyId>ASIAEXAMPLEEXAMPLE2</AccessKeyId></Credentials></AssumeRoleResult></AssumeRoleResponse>";
        m.learn_sts(None, 200, amp.as_bytes()).expect("entities");
        assert_eq!(
            m.lookup("ASIAEXAMPLEEXAMPLE2")
                .and_then(|p| p.arn)
                .as_deref(),
            Some("arn:aws:sts::123456789012:assumed-role/r/a&b@c")
        );
    }

    #[test]
    fn truncated_and_mangled_bodies_never_panic() {
        let xml = assume_role_xml();
        let json = format!(
            r#"{{"AssumeRoleResponse":{{"AssumeRoleResult":{{"AssumedRoleUser":{{"Arn":"arn:aws:sts::123456789012:assumed-role/a/b"}},"Credentials":{{"AccessKeyId":"ASIAJSONEXAMPLE00002","Expiration":1e300,"SecretAccessKey":"{SECRET}"}}}}}}}}"#
        );
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for body in [xml.as_bytes(), json.as_bytes()] {
            for cut in 0..body.len() {
                let m = map();
                let _ = m.learn_sts(Some("AKIAIOSFODNN7EXAMPLE"), 200, &body[..cut]);
                let _ = m.learn_imds("/latest/meta-data/iam/security-credentials/r", &body[..cut]);
                let _ = m.learn_container_credentials(&body[..cut]);
                // Flip a byte too.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut v = body.to_vec();
                let i = (seed as usize) % v.len();
                v[i] = (seed >> 32) as u8;
                let _ = m.learn_sts(None, 200, &v);
                let _ = crate::cgroup::parse_cgroup_path(&String::from_utf8_lossy(&v));
            }
        }
    }

    #[test]
    fn a_live_mapping_is_not_stolen() {
        let m = map();
        m.learn_sts(None, 200, assume_role_xml().as_bytes())
            .expect("first");
        let fake = assume_role_xml().replace("assumed-role/demo", "assumed-role/evil");
        assert!(m.learn_sts(None, 200, fake.as_bytes()).is_none());
        assert_eq!(m.conflicts(), 1);
        assert!(
            m.lookup("ASIAJEXAMPLEXEG2JICEA")
                .and_then(|p| p.arn)
                .is_some_and(|a| a.contains("/demo/"))
        );
    }

    #[test]
    fn imds_role_credentials_and_identity_document() {
        let m = map();
        let creds = format!(
            r#"{{
  "Code" : "Success",
  "LastUpdated" : "2026-11-25T17:00:00Z",
  "Type" : "AWS-HMAC",
  "AccessKeyId" : "ASIAIMDSEXAMPLE00001",
  "SecretAccessKey" : "{SECRET}",
  "Token" : "{TOKEN}",
  "Expiration" : "2099-11-25T23:00:00Z"
}}"#
        );
        let ex = HttpExchange {
            host: Some("169.254.169.254"),
            method: "GET",
            target: "/latest/meta-data/iam/security-credentials/node-role",
            status: 200,
            response_body: creds.as_bytes(),
            ..Default::default()
        };
        let l = m.learn_from_exchange(&ex).expect("imds");
        assert_eq!(
            l.arn.as_deref(),
            Some("arn:aws:sts::*:assumed-role/node-role/*")
        );
        let doc = r#"{
  "accountId" : "123456789012",
  "architecture" : "x86_64",
  "availabilityZone" : "us-east-1a",
  "imageId" : "ami-0abcdef1234567890",
  "instanceId" : "i-1234567890abcdef0",
  "instanceType" : "m5.large",
  "pendingTime" : "2026-11-25T16:00:00Z",
  "privateIp" : "10.0.0.12",
  "region" : "us-east-1",
  "version" : "2017-09-30"
}"#;
        let ex2 = HttpExchange {
            host: Some("169.254.169.254:80"),
            target: "/latest/dynamic/instance-identity/document",
            status: 200,
            response_body: doc.as_bytes(),
            ..Default::default()
        };
        assert!(m.learn_from_exchange(&ex2).is_none());
        let p = m.lookup("ASIAIMDSEXAMPLE00001").expect("known");
        assert_eq!(
            p.arn.as_deref(),
            Some("arn:aws:sts::123456789012:assumed-role/node-role/i-1234567890abcdef0")
        );
        assert_eq!(p.account_id.as_deref(), Some("123456789012"));
        assert_eq!(p.source, Source::Imds);
        assert_eq!(p.expires_rfc3339().as_deref(), Some("2099-11-25T23:00:00Z"));
        // The role listing (no role in the path) is not a credential.
        let list = HttpExchange {
            host: Some("169.254.169.254"),
            target: "/latest/meta-data/iam/security-credentials/",
            status: 200,
            response_body: b"node-role",
            ..Default::default()
        };
        assert!(m.learn_from_exchange(&list).is_none());
        assert!(!format!("{m:?}").contains(SECRET));
    }

    #[test]
    fn container_and_pod_identity_credentials() {
        let m = map();
        let ecs = format!(
            r#"{{"RoleArn":"arn:aws:iam::123456789012:role/ecs-task-role","AccessKeyId":"ASIAECSEXAMPLE000001","SecretAccessKey":"{SECRET}","Token":"{TOKEN}","Expiration":"2099-11-25T23:00:00Z"}}"#
        );
        let ex = HttpExchange {
            host: Some("169.254.170.2"),
            target: "/v2/credentials/5f0e2b1a-1111-2222-3333-444455556666",
            status: 200,
            response_body: ecs.as_bytes(),
            ..Default::default()
        };
        m.learn_from_exchange(&ex).expect("ecs");
        let p = m.lookup("ASIAECSEXAMPLE000001").expect("ecs key");
        assert_eq!(
            p.arn.as_deref(),
            Some("arn:aws:iam::123456789012:role/ecs-task-role")
        );
        assert_eq!(p.source.as_str(), "container-credentials");

        let pod = format!(
            r#"{{"AccessKeyId":"ASIAPODIDEXAMPLE0001","SecretAccessKey":"{SECRET}","Token":"{TOKEN}","AccountId":"123456789012","Expiration":"2099-11-25T23:00:00Z"}}"#
        );
        let ex = HttpExchange {
            host: Some("169.254.170.23"),
            target: "/v1/credentials",
            status: 200,
            response_body: pod.as_bytes(),
            ..Default::default()
        };
        m.learn_from_exchange(&ex).expect("pod identity");
        let p = m.lookup("ASIAPODIDEXAMPLE0001").expect("pod key");
        assert_eq!(p.arn, None);
        assert_eq!(p.account_id.as_deref(), Some("123456789012"));
        // GetCallerIdentity later fills in the exact ARN.
        let gci = "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:sts::123456789012:assumed-role/app/eks-c-pod-1</Arn><Account>123456789012</Account></GetCallerIdentityResult></GetCallerIdentityResponse>";
        m.learn_sts(Some("ASIAPODIDEXAMPLE0001"), 200, gci.as_bytes())
            .expect("upgrade");
        let p = m.lookup("ASIAPODIDEXAMPLE0001").expect("pod key");
        assert_eq!(
            p.arn.as_deref(),
            Some("arn:aws:sts::123456789012:assumed-role/app/eks-c-pod-1")
        );
        assert_eq!(p.source, Source::ContainerCredentials);
        let all = format!("{m:?}");
        assert!(!all.contains(SECRET) && !all.contains(TOKEN));
    }

    #[test]
    fn expiry_sweep_keeps_grace() {
        let m = PrincipalMap::new(PrincipalConfig {
            expiry_grace_secs: 60,
            ..Default::default()
        });
        let body = assume_role_xml().replace("2099-10-02T15:00:00Z", "2020-01-01T00:00:00Z");
        m.learn_sts(None, 200, body.as_bytes()).expect("learned");
        let exp = 1_577_836_800;
        m.sweep(exp + 30);
        assert!(m.lookup("ASIAJEXAMPLEXEG2JICEA").is_some(), "within grace");
        m.sweep(exp + 61);
        assert!(
            m.lookup("ASIAJEXAMPLEXEG2JICEA").is_none(),
            "dropped after grace"
        );
    }

    #[test]
    fn irsa_env_reads_only_two_names() {
        let block = format!(
            "PATH=/usr/bin\0AWS_SECRET_ACCESS_KEY={SECRET}\0AWS_SESSION_TOKEN={TOKEN}\0\
             AWS_ROLE_ARN=arn:aws:iam::123456789012:role/irsa\0\
             AWS_WEB_IDENTITY_TOKEN_FILE=/var/run/secrets/eks.amazonaws.com/serviceaccount/token\0\
             AWS_ROLE_ARNX=arn:aws:iam::1:role/no\0"
        );
        let e = irsa_from_environ(block.as_bytes());
        assert_eq!(
            e.role_arn.as_deref(),
            Some("arn:aws:iam::123456789012:role/irsa")
        );
        assert_eq!(
            e.web_identity_token_file.as_deref(),
            Some("/var/run/secrets/eks.amazonaws.com/serviceaccount/token")
        );
        let dump = format!("{e:?}");
        assert!(!dump.contains(SECRET) && !dump.contains(TOKEN));

        let path = std::env::temp_dir().join(format!("hoop-environ-{}", std::process::id()));
        fs::write(&path, block).expect("write");
        assert_eq!(read_irsa_env(&path), Some(e));
        fs::write(&path, "PATH=/bin\0").expect("write");
        assert_eq!(read_irsa_env(&path), None);
        let _ = fs::remove_file(&path);
        assert_eq!(read_irsa_env(Path::new("/nonexistent/environ")), None);
    }

    #[test]
    fn host_ports_are_stripped() {
        assert_eq!(strip_port("169.254.169.254:80"), "169.254.169.254");
        assert_eq!(strip_port("[fd00:ec2::254]:80"), "[fd00:ec2::254]");
        assert_eq!(strip_port("fd00:ec2::254"), "fd00:ec2::254");
        assert_eq!(strip_port("sts.amazonaws.com"), "sts.amazonaws.com");
    }
}
