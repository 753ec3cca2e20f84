//! Policy file: parse, validate and compile into what the kernel matches (issue 6).
//!
//! The syntax is documented in `docs/policy.md`. Compilation turns IAM action globs into the
//! concrete (service, operation) pairs of the AWS model and each of those into the action keys
//! the eBPF classifier computes (`hoop_common::enf::key_*`), resource ARN globs into
//! (kind, exact|prefix, length, FNV-1a) and workload selectors into selector specs that
//! `enforce` resolves to cgroup ids and pids.

use hoop_aws::model::{Seg, Service, model, parse_template};
use hoop_aws::tables::iam;
use hoop_common::enf;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Audit,
    Deny,
    Kill,
    Approve,
}

impl Effect {
    pub fn code(self) -> u8 {
        match self {
            Effect::Audit => enf::EFFECT_AUDIT,
            Effect::Deny => enf::EFFECT_DENY,
            Effect::Kill => enf::EFFECT_KILL,
            Effect::Approve => enf::EFFECT_APPROVE,
        }
    }
}

/// One string or a list of strings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn list(&self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Selectors on the process that makes the call. All given selectors must hold.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    #[serde(default)]
    pub namespace: OneOrMany,
    #[serde(default, alias = "labels")]
    pub pod_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub service_account: OneOrMany,
    /// Container id (or its first 12+ characters).
    #[serde(default)]
    pub container: OneOrMany,
    /// cgroup v2 path prefix, relative to the cgroup2 mount (`/system.slice/x.service`).
    #[serde(default)]
    pub cgroup: OneOrMany,
    /// Executable path glob.
    #[serde(default)]
    pub exe: OneOrMany,
    #[serde(default)]
    pub uid: Option<u32>,
}

impl Workload {
    fn merge(&mut self, o: &Workload) {
        let join = |a: &mut OneOrMany, b: &OneOrMany| {
            let mut v = a.list();
            v.extend(b.list());
            if !v.is_empty() {
                *a = OneOrMany::Many(v);
            }
        };
        join(&mut self.namespace, &o.namespace);
        join(&mut self.service_account, &o.service_account);
        join(&mut self.container, &o.container);
        join(&mut self.cgroup, &o.cgroup);
        join(&mut self.exe, &o.exe);
        self.pod_labels
            .extend(o.pod_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        if self.uid.is_none() {
            self.uid = o.uid;
        }
    }

    /// Has selectors that are resolved to cgroups / pids (`uid` is not one: the kernel compares
    /// it with the caller's real uid).
    pub fn is_scoped(&self) -> bool {
        !(self.namespace.list().is_empty()
            && self.pod_labels.is_empty()
            && self.service_account.list().is_empty()
            && self.container.list().is_empty()
            && self.cgroup.list().is_empty()
            && self.exe.list().is_empty())
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(default)]
    pub namespace: OneOrMany,
    #[serde(default, alias = "labels")]
    pub pod_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub service_account: OneOrMany,
    #[serde(default)]
    pub container: OneOrMany,
    #[serde(default)]
    pub cgroup: OneOrMany,
    #[serde(default)]
    pub exe: OneOrMany,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub workload: Option<Workload>,
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub access_keys: Vec<String>,
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    /// Endpoint rule: destination CIDRs or addresses (IPv4, IPv6).
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub ports: Vec<u16>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    pub effect: Effect,
    /// `approve` only: stop the process (SIGSTOP) until a decision or `hold_timeout`.
    #[serde(default)]
    pub hold: bool,
    /// `approve` only: how long a grant lasts (`30s`, `15m`, `2h`). Default 15m.
    #[serde(default)]
    pub grant_ttl: Option<String>,
    /// `approve` + `hold` only: deny after this long without a decision. Default 60s.
    #[serde(default)]
    pub hold_timeout: Option<String>,
    /// `approve` without `hold`: a request nobody decided expires after this long.
    /// Default 15m.
    #[serde(default)]
    pub request_timeout: Option<String>,
    #[serde(rename = "match", default)]
    pub matches: MatchSpec,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub name: String,
    #[serde(default = "deny")]
    pub effect: Effect,
    #[serde(alias = "cidrs", alias = "destinations")]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(rename = "match", default)]
    pub matches: Workload,
}

fn deny() -> Effect {
    Effect::Deny
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

/// A resource pattern the kernel can match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResPattern {
    pub kind: u8,
    pub mode: u8,
    pub text: String,
    pub flags: u8,
}

/// One kernel rule slot (a policy rule with several resources takes several slots).
#[derive(Clone, Debug)]
pub struct KRule {
    /// Index of the policy rule.
    pub rule: usize,
    pub res: Option<ResPattern>,
}

#[derive(Clone, Debug)]
pub struct CompiledRule {
    pub name: String,
    pub effect: Effect,
    pub hold: bool,
    pub grant_ttl_secs: u64,
    pub hold_timeout_secs: u64,
    pub request_timeout_secs: u64,
    pub workload: Workload,
    pub access_keys: Vec<String>,
    pub principals: Vec<String>,
    /// (service, operation, IAM action) the rule covers.
    pub operations: Vec<(String, String, String)>,
}

#[derive(Clone, Debug)]
pub struct EndpointRule {
    pub name: String,
    pub nets: Vec<(IpAddr, u8)>,
    pub ports: Vec<u16>,
    pub workload: Workload,
    pub effect: Effect,
}

impl EndpointRule {
    /// Entered in the trie once per selected cgroup (cgroup, container, Kubernetes selectors
    /// without `exe`); otherwise once for every cgroup, with `exe` checked through the caller's
    /// tgid and `uid` through its uid.
    pub fn keyed_by_cgroup(&self) -> bool {
        self.workload.is_scoped() && self.workload.exe.list().is_empty()
    }
}

/// A destination prefix as the trie holds it: IPv6 address (IPv4 as v4-mapped) and prefix
/// length in bits of that address.
pub fn net_v6(ip: &IpAddr, plen: u8) -> ([u8; 16], u32) {
    match ip {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 96 + u32::from(plen)),
        IpAddr::V6(v6) => (v6.octets(), u32::from(plen)),
    }
}

/// Does prefix `outer` contain prefix `inner`?
pub fn net_covers(outer: ([u8; 16], u32), inner: ([u8; 16], u32)) -> bool {
    if outer.1 > inner.1 {
        return false;
    }
    let mask = if outer.1 == 0 {
        0
    } else {
        u128::MAX << (128 - outer.1.min(128))
    };
    u128::from_be_bytes(outer.0) & mask == u128::from_be_bytes(inner.0) & mask
}

#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub mode: Mode,
    pub rules: Vec<CompiledRule>,
    pub krules: Vec<KRule>,
    /// action key -> kernel rule slots (policy order); empty = known operation without rules.
    pub actions: BTreeMap<u64, Vec<u16>>,
    /// action key -> (service, operation) for decoding decision events.
    pub key_names: BTreeMap<u64, (String, String)>,
    pub endpoints: Vec<EndpointRule>,
    pub warnings: Vec<String>,
}

impl Compiled {
    pub fn needs_workload(&self) -> bool {
        self.rules.iter().any(|r| r.workload.is_scoped())
            || self.endpoints.iter().any(|r| r.workload.is_scoped())
    }

    /// Some rule (call or endpoint) has an `exe` selector.
    pub fn has_exe(&self) -> bool {
        self.rules.iter().any(|r| !r.workload.exe.list().is_empty())
            || self
                .endpoints
                .iter()
                .any(|r| !r.workload.exe.list().is_empty())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy is not valid YAML for hoop: {0}")]
    Syntax(String),
    #[error("rule {index} ({name}): field `{field}`: {msg}")]
    Rule {
        index: usize,
        name: String,
        field: &'static str,
        msg: String,
    },
}

fn rule_err(index: usize, name: &str, field: &'static str, msg: impl Into<String>) -> PolicyError {
    PolicyError::Rule {
        index,
        name: name.to_string(),
        field,
        msg: msg.into(),
    }
}

/// Case-insensitive glob with `*` and `?`.
pub fn glob(pat: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        let (mut pi, mut si) = (0, 0);
        let (mut star, mut mark) = (usize::MAX, 0);
        while si < s.len() {
            if pi < p.len() && (p[pi] == b'?' || p[pi].eq_ignore_ascii_case(&s[si])) {
                pi += 1;
                si += 1;
            } else if pi < p.len() && p[pi] == b'*' {
                star = pi;
                mark = si;
                pi += 1;
            } else if star != usize::MAX {
                pi = star + 1;
                mark += 1;
                si = mark;
            } else {
                return false;
            }
        }
        while pi < p.len() && p[pi] == b'*' {
            pi += 1;
        }
        pi == p.len()
    }
    go(pat.as_bytes(), s.as_bytes())
}

/// `30s`, `15m`, `2h`, `1d` or plain seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1),
        'm' => (&s[..s.len() - 1], 60),
        'h' => (&s[..s.len() - 1], 3600),
        'd' => (&s[..s.len() - 1], 86400),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok().map(|n| n * mul)
}

fn parse_net(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
        None => (s, None),
    };
    let ip: IpAddr = a
        .trim()
        .trim_matches(|c| c == '[' || c == ']')
        .parse()
        .ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let p = p.unwrap_or(max);
    (p <= max).then_some((ip, p))
}

/// Kernel action keys of one operation, for every protocol the service speaks.
pub fn op_keys(svc: &Service, op: &str) -> Vec<u64> {
    let mut keys = Vec::new();
    let signing = enf::fnv(svc.signing_name.as_bytes());
    let mut protos: Vec<&str> = vec![svc.protocol.as_str()];
    protos.extend(svc.protocols.iter().map(String::as_str));
    protos.sort_unstable();
    protos.dedup();
    for p in protos {
        match p {
            "json" => {
                let target = format!("{}.{}", svc.target_prefix, op);
                keys.push(enf::key_json(enf::fnv(target.as_bytes())));
            }
            "query" | "ec2" => keys.push(enf::key_query(signing, enf::fnv(op.as_bytes()))),
            "smithy-rpc-v2-cbor" => keys.push(enf::key_cbor(signing, enf::fnv(op.as_bytes()))),
            "rest-json" | "rest-xml" => {
                let Some(o) = svc.operation(op) else { continue };
                keys.extend(rest_keys(signing, &o.method, &o.uri));
            }
            _ => {}
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn method_code(m: &str) -> u64 {
    match m {
        "GET" => enf::M_GET,
        "PUT" => enf::M_PUT,
        "POST" => enf::M_POST,
        "DELETE" => enf::M_DELETE,
        "HEAD" => enf::M_HEAD,
        "PATCH" => enf::M_PATCH,
        _ => 0,
    }
}

/// REST keys: (method, depth, first literal segment or any, first query discriminator or any).
pub fn rest_keys(signing: u64, method: &str, uri: &str) -> Vec<u64> {
    let (segs, query) = parse_template(uri);
    let m = method_code(method);
    let seg0 = match segs.first() {
        Some(Seg::Lit(l)) => enf::fnv(l.as_bytes()),
        _ => 0,
    };
    let qkey = query.first().map_or(0, |(k, _)| enf::fnv(k.as_bytes()));
    let n = segs.len() as u64;
    let greedy = matches!(segs.last(), Some(Seg::Greedy(_)));
    let max = enf::MAX_DEPTH as u64;
    let depths: Vec<u64> = if greedy {
        (n..=max).collect()
    } else {
        vec![n.min(max)]
    };
    depths
        .into_iter()
        .map(|d| enf::key_rest(signing, m, d, seg0, qkey))
        .collect()
}

fn parse_resource(pat: &str) -> Result<Option<ResPattern>, String> {
    if pat == "*" {
        return Ok(None);
    }
    let name_mode = |name: &str| -> Result<(u8, String), String> {
        let (mode, text) = match name.strip_suffix('*') {
            Some(p) if !p.contains(['*', '?']) => (enf::RES_PREFIX, p.to_string()),
            None if !name.contains(['*', '?']) => (enf::RES_EXACT, name.to_string()),
            _ => {
                return Err(format!(
                    "`{pat}`: the kernel matches a resource name exactly or by prefix (`name`, `prefix*`)"
                ));
            }
        };
        if text.len() > enf::RES_PREFIX_MAX {
            return Err(format!(
                "`{pat}`: names longer than {} bytes",
                enf::RES_PREFIX_MAX
            ));
        }
        Ok((mode, text))
    };
    let parts: Vec<&str> = pat.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" {
        return Err(format!("`{pat}` is not an ARN glob"));
    }
    match parts[2] {
        "s3" => {
            let (bucket, key) = match parts[5].split_once('/') {
                Some((b, k)) => (b, Some(k)),
                None => (parts[5], None),
            };
            if let Some(k) = key
                && k != "*"
            {
                return Err(format!(
                    "`{pat}`: the kernel matches S3 objects by bucket only (`bucket/*`)"
                ));
            }
            let flags = if key.is_some() {
                enf::RF_OBJECT
            } else {
                enf::RF_BUCKET
            };
            if bucket == "*" {
                return Ok(Some(ResPattern {
                    kind: enf::RES_BUCKET,
                    mode: enf::RES_ANY,
                    text: String::new(),
                    flags,
                }));
            }
            let (mode, text) = name_mode(bucket)?;
            Ok(Some(ResPattern {
                kind: enf::RES_BUCKET,
                mode,
                text,
                flags,
            }))
        }
        "dynamodb" => {
            let Some(t) = parts[5].strip_prefix("table/") else {
                return Err(format!(
                    "`{pat}`: the kernel matches DynamoDB tables (`table/NAME`)"
                ));
            };
            if t.contains('/') {
                return Err(format!(
                    "`{pat}`: the kernel matches DynamoDB tables, not indexes or streams"
                ));
            }
            let (mode, text) = name_mode(t)?;
            Ok(Some(ResPattern {
                kind: enf::RES_TABLE,
                mode,
                text,
                flags: 0,
            }))
        }
        _ => Err(format!(
            "`{pat}`: the kernel matches S3 bucket/object and DynamoDB table ARNs only"
        )),
    }
}

/// Every (service, operation, IAM action) whose action matches one of the globs.
fn expand_actions(globs: &[String]) -> Vec<(String, String, String)> {
    let t = iam();
    let mut out = Vec::new();
    for svc in &model().services {
        let prefix = t.prefix(&svc.name, &svc.signing_name);
        // Cheap filter on the service prefix part.
        if !globs.iter().any(|g| {
            let gp = g.split(':').next().unwrap_or("");
            glob(gp, prefix) || glob(gp, &svc.name)
        }) {
            continue;
        }
        for op in &svc.operations {
            let action = t.action(&svc.name, &svc.signing_name, &op.name, &op.method, false);
            if globs.iter().any(|g| glob(g, &action)) {
                out.push((svc.name.clone(), op.name.clone(), action));
            }
        }
    }
    out
}

/// Parses and compiles a policy. Errors name the rule (index and name) and the field.
pub fn compile_str(text: &str) -> Result<Compiled, PolicyError> {
    let file: PolicyFile =
        serde_yaml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
    compile(&file)
}

/// The workload checks common to call and endpoint rules.
fn check_workload(i: usize, name: &str, wl: &Workload) -> Result<(), PolicyError> {
    for e in wl.exe.list() {
        if !e.starts_with('/') && !e.starts_with('*') {
            return Err(rule_err(
                i,
                name,
                "exe",
                format!("`{e}`: use an absolute path glob"),
            ));
        }
    }
    Ok(())
}

/// Validates one endpoint rule (`rules:` with `match.endpoints`, or the `endpoints:` list).
fn endpoint_rule(
    i: usize,
    name: &str,
    effect: Effect,
    endpoints: &[String],
    ports: &[u16],
    workload: Workload,
) -> Result<EndpointRule, PolicyError> {
    if !matches!(effect, Effect::Deny | Effect::Audit) {
        return Err(rule_err(
            i,
            name,
            "effect",
            format!(
                "`{}`: an endpoint rule decides a connect(), before any request or approval \
                 exists; use `deny` or `audit`",
                format!("{effect:?}").to_lowercase()
            ),
        ));
    }
    if endpoints.is_empty() {
        return Err(rule_err(
            i,
            name,
            "endpoints",
            "at least one address or CIDR is required",
        ));
    }
    let nets = endpoints
        .iter()
        .map(|e| {
            parse_net(e).ok_or_else(|| {
                rule_err(
                    i,
                    name,
                    "endpoints",
                    format!("`{e}` is not an address or CIDR"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ports.len() > enf::MAX_EP_PORTS {
        return Err(rule_err(
            i,
            name,
            "ports",
            format!(
                "{} ports given; the kernel checks at most {} per endpoint rule (split the rule)",
                ports.len(),
                enf::MAX_EP_PORTS
            ),
        ));
    }
    if ports.contains(&0) {
        return Err(rule_err(i, name, "ports", "`0` is not a port"));
    }
    check_workload(i, name, &workload)?;
    Ok(EndpointRule {
        name: name.to_string(),
        nets,
        ports: ports.to_vec(),
        workload,
        effect,
    })
}

/// The kernel checks at most `MAX_EP_CANDS` rules per destination entry; an entry holds the
/// rules of its prefix and of every prefix containing it. Rules keyed by cgroup are counted as
/// if they all selected the same cgroup (which cgroups they select is only known at run time).
fn check_endpoint_overlap(c: &Compiled, policy_index: &[usize]) -> Result<(), PolicyError> {
    for (k, (r, &index)) in c.endpoints.iter().zip(policy_index).enumerate() {
        let class = r.keyed_by_cgroup();
        let upto: Vec<&EndpointRule> = c.endpoints[..=k]
            .iter()
            .filter(|e| e.keyed_by_cgroup() == class)
            .collect();
        for e in &upto {
            for (ip, plen) in &e.nets {
                let inner = net_v6(ip, *plen);
                let n = upto
                    .iter()
                    .filter(|o| {
                        o.nets
                            .iter()
                            .any(|(oip, op)| net_covers(net_v6(oip, *op), inner))
                    })
                    .count();
                if n > enf::MAX_EP_CANDS {
                    return Err(rule_err(
                        index,
                        &r.name,
                        "endpoints",
                        format!(
                            "{n} endpoint rules cover {ip}/{plen}; the kernel checks at most {} \
                             per destination: merge rules",
                            enf::MAX_EP_CANDS
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Can resource pattern `r` ever match a request of operation `op` of service `svc`? The
/// kernel takes bucket names from S3 paths (depth 1 = bucket, 2+ = object) and table names
/// from DynamoDB bodies.
fn resource_fits(r: &ResPattern, svc: &str, op: &str) -> bool {
    match r.kind {
        enf::RES_BUCKET => {
            if svc != "s3" {
                return false;
            }
            let depth = model()
                .service(svc)
                .and_then(|s| s.operation(op))
                .map_or(0, |o| parse_template(&o.uri).0.len());
            if r.flags & enf::RF_OBJECT != 0 {
                depth >= 2
            } else {
                depth == 1
            }
        }
        enf::RES_TABLE => svc == "dynamodb",
        _ => true,
    }
}

/// What a resource pattern names and which operations carry such a resource.
fn describe_resource(r: &ResPattern) -> (&'static str, &'static str) {
    match r.kind {
        enf::RES_BUCKET if r.flags & enf::RF_OBJECT != 0 => (
            "names S3 objects (`bucket/*`)",
            "S3 object operations (path /bucket/key)",
        ),
        enf::RES_BUCKET => (
            "names S3 buckets (objects are `bucket/*`)",
            "S3 bucket operations (path /bucket)",
        ),
        _ => ("names a DynamoDB table", "DynamoDB operations"),
    }
}

pub fn compile(file: &PolicyFile) -> Result<Compiled, PolicyError> {
    let mut c = Compiled {
        mode: file.mode,
        ..Default::default()
    };
    let mut names = BTreeSet::new();
    let mut touched_services = BTreeSet::new();
    // Policy index of each endpoint rule, for errors found after the loop.
    let mut endpoint_index = Vec::new();
    for (i, r) in file.rules.iter().enumerate() {
        let name = r.name.as_str();
        if name.trim().is_empty() {
            return Err(rule_err(i, name, "name", "must not be empty"));
        }
        if !names.insert(name.to_string()) {
            return Err(rule_err(i, name, "name", "duplicate rule name"));
        }
        if r.hold && r.effect != Effect::Approve {
            return Err(rule_err(i, name, "hold", "only `approve` rules can hold"));
        }
        let ttl = match &r.grant_ttl {
            Some(s) => parse_duration(s).ok_or_else(|| {
                rule_err(i, name, "grant_ttl", format!("`{s}` is not a duration"))
            })?,
            None => 900,
        };
        let hold_timeout = match &r.hold_timeout {
            Some(s) => parse_duration(s).ok_or_else(|| {
                rule_err(i, name, "hold_timeout", format!("`{s}` is not a duration"))
            })?,
            None => 60,
        };
        if r.effect != Effect::Approve {
            for (field, given) in [
                ("grant_ttl", r.grant_ttl.is_some()),
                ("hold_timeout", r.hold_timeout.is_some()),
                ("request_timeout", r.request_timeout.is_some()),
            ] {
                if given {
                    return Err(rule_err(i, name, field, "only `approve` rules take it"));
                }
            }
        }
        let request_timeout = match &r.request_timeout {
            Some(s) => parse_duration(s).ok_or_else(|| {
                rule_err(
                    i,
                    name,
                    "request_timeout",
                    format!("`{s}` is not a duration"),
                )
            })?,
            None => 900,
        };
        let m = &r.matches;
        let mut wl = Workload {
            namespace: m.namespace.clone(),
            pod_labels: m.pod_labels.clone(),
            service_account: m.service_account.clone(),
            container: m.container.clone(),
            cgroup: m.cgroup.clone(),
            exe: m.exe.clone(),
            uid: m.uid,
        };
        if let Some(w) = &m.workload {
            wl.merge(w);
        }
        check_workload(i, name, &wl)?;
        if !m.endpoints.is_empty() {
            // A connect() has no request yet: nothing of a call can be matched.
            for (field, given) in [
                ("actions", !m.actions.is_empty()),
                ("resources", !m.resources.is_empty()),
                ("principals", !m.principals.is_empty()),
                ("access_keys", !m.access_keys.is_empty()),
            ] {
                if given {
                    return Err(rule_err(
                        i,
                        name,
                        field,
                        "an endpoint rule (`match.endpoints`) is decided at connect(), before \
                         any request exists, so it cannot match call fields; write a separate \
                         call rule",
                    ));
                }
            }
            c.endpoints.push(endpoint_rule(
                i,
                name,
                r.effect,
                &m.endpoints,
                &m.ports,
                wl,
            )?);
            endpoint_index.push(i);
            // Keep rule indexes aligned with the policy: an inert action rule slot.
            c.rules.push(CompiledRule {
                name: name.to_string(),
                effect: r.effect,
                hold: false,
                grant_ttl_secs: ttl,
                hold_timeout_secs: hold_timeout,
                request_timeout_secs: request_timeout,
                workload: Workload::default(),
                access_keys: Vec::new(),
                principals: Vec::new(),
                operations: Vec::new(),
            });
            continue;
        }
        if !m.ports.is_empty() {
            return Err(rule_err(
                i,
                name,
                "ports",
                "ports only apply to endpoint rules (with `match.endpoints`)",
            ));
        }
        if m.actions.is_empty() {
            return Err(rule_err(
                i,
                name,
                "actions",
                "at least one IAM action glob is required",
            ));
        }
        for a in &m.actions {
            if !a.contains(':') {
                return Err(rule_err(
                    i,
                    name,
                    "actions",
                    format!("`{a}` is not `service:Action`"),
                ));
            }
        }
        let ops = expand_actions(&m.actions);
        if ops.is_empty() {
            return Err(rule_err(
                i,
                name,
                "actions",
                format!("{:?} match no operation of the AWS model", m.actions),
            ));
        }
        for k in &m.access_keys {
            if k.len() < 16 || !k.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(rule_err(
                    i,
                    name,
                    "access_keys",
                    format!("`{k}` is not an access key id"),
                ));
            }
        }
        for p in &m.principals {
            if !p.starts_with("arn:") {
                return Err(rule_err(
                    i,
                    name,
                    "principals",
                    format!("`{p}` is not an ARN glob"),
                ));
            }
        }
        let mut res = Vec::new();
        for p in &m.resources {
            res.push(parse_resource(p).map_err(|e| rule_err(i, name, "resources", e))?);
        }
        if res.is_empty() || res.iter().any(Option::is_none) {
            res = vec![None];
        } else {
            // A resource the rule's operations never carry, or an action none of the
            // resources can name, would make (part of) the rule silently never match.
            for (p, rp) in m.resources.iter().zip(res.iter().flatten()) {
                if !ops.iter().any(|(s, o, _)| resource_fits(rp, s, o)) {
                    let (what, carriers) = describe_resource(rp);
                    return Err(rule_err(
                        i,
                        name,
                        "resources",
                        format!(
                            "`{p}` {what}, which only {carriers} carry; none of the rule's \
                             actions {:?} is such an operation, so it would never match",
                            m.actions
                        ),
                    ));
                }
            }
            for g in &m.actions {
                let fits = expand_actions(std::slice::from_ref(g))
                    .iter()
                    .any(|(s, o, _)| res.iter().flatten().any(|rp| resource_fits(rp, s, o)));
                if !fits {
                    return Err(rule_err(
                        i,
                        name,
                        "actions",
                        format!(
                            "`{g}`: none of its operations carries a resource the rule names \
                             ({:?}), so it would never match; put it in a rule without \
                             `resources` or with a fitting one",
                            m.resources
                        ),
                    ));
                }
            }
        }
        let first_slot = c.krules.len();
        for rp in res {
            if c.krules.len() >= enf::MAX_RULES as usize {
                return Err(rule_err(
                    i,
                    name,
                    "resources",
                    format!(
                        "the kernel holds at most {} rule slots (one per resource pattern of \
                         each call rule)",
                        enf::MAX_RULES
                    ),
                ));
            }
            c.krules.push(KRule { rule: i, res: rp });
        }
        let slots: Vec<u16> = (first_slot..c.krules.len()).map(|s| s as u16).collect();
        for (svc_name, op, _) in &ops {
            let Some(svc) = model().service(svc_name) else {
                continue;
            };
            touched_services.insert(svc_name.clone());
            for key in op_keys(svc, op) {
                let v = c.actions.entry(key).or_default();
                for s in &slots {
                    if !v.contains(s) {
                        v.push(*s);
                    }
                }
                if v.len() > enf::MAX_CANDS {
                    let mut before: Vec<&str> = Vec::new();
                    for s in v.iter() {
                        let n = c
                            .krules
                            .get(*s as usize)
                            .and_then(|k| file.rules.get(k.rule))
                            .map_or("", |r| r.name.as_str());
                        if n != name && !before.contains(&n) {
                            before.push(n);
                        }
                    }
                    return Err(rule_err(
                        i,
                        name,
                        "actions",
                        format!(
                            "{svc_name}:{op} would be matched by {} rule slots (one per \
                             resource pattern of each rule covering it: this rule and {:?}); \
                             the kernel checks at most {} per operation: merge rules or \
                             resources",
                            v.len(),
                            before,
                            enf::MAX_CANDS
                        ),
                    ));
                }
                c.key_names.insert(key, (svc_name.clone(), op.clone()));
            }
        }
        c.rules.push(CompiledRule {
            name: name.to_string(),
            effect: r.effect,
            hold: r.hold,
            grant_ttl_secs: ttl,
            hold_timeout_secs: hold_timeout,
            request_timeout_secs: request_timeout,
            workload: wl,
            access_keys: m.access_keys.clone(),
            principals: m.principals.clone(),
            operations: ops,
        });
    }
    for (j, e) in file.endpoints.iter().enumerate() {
        let i = file.rules.len() + j;
        if e.name.trim().is_empty() {
            return Err(rule_err(i, &e.name, "name", "must not be empty"));
        }
        if !names.insert(e.name.clone()) {
            return Err(rule_err(i, &e.name, "name", "duplicate rule name"));
        }
        c.endpoints.push(endpoint_rule(
            i,
            &e.name,
            e.effect,
            &e.endpoints,
            &e.ports,
            e.matches.clone(),
        )?);
        endpoint_index.push(i);
    }
    if let Some(&i) = endpoint_index.get(enf::MAX_RULES as usize) {
        return Err(rule_err(
            i,
            &c.endpoints[enf::MAX_RULES as usize].name,
            "endpoints",
            format!("more than {} endpoint rules", enf::MAX_RULES),
        ));
    }
    check_endpoint_overlap(&c, &endpoint_index)?;
    // Shadow keys: every other operation of a REST service with rules gets an empty entry, so
    // a more specific template (`PUT /{Bucket}?policy`) never falls back to a less specific
    // one that carries rules (`PUT /{Bucket}`).
    let mut owners: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for s in &touched_services {
        let Some(svc) = model().service(s) else {
            continue;
        };
        for op in &svc.operations {
            for key in op_keys(svc, &op.name) {
                owners.entry(key).or_default().insert(op.name.clone());
                c.actions.entry(key).or_default();
                c.key_names
                    .entry(key)
                    .or_insert_with(|| (svc.name.clone(), op.name.clone()));
            }
        }
    }
    for (key, ops) in &owners {
        if ops.len() > 1 && c.actions.get(key).is_some_and(|v| !v.is_empty()) {
            let ruled: BTreeSet<&String> = c
                .rules
                .iter()
                .flat_map(|r| r.operations.iter().map(|(_, o, _)| o))
                .collect();
            if !ops.iter().all(|o| ruled.contains(o)) {
                c.warnings.push(format!(
                    "the kernel cannot tell these operations apart (same method and path shape): {}",
                    ops.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {

    #[test]
    fn readme_example_compiles() {
        let readme = include_str!("../../README.md");
        let yaml = readme
            .split("## Policy")
            .nth(1)
            .and_then(|s| s.split("```yaml\n").nth(1))
            .and_then(|b| b.split("```").next())
            .expect("README has a policy example");
        if let Err(e) = compile_str(yaml) {
            panic!("README policy example: {e}");
        }
    }

    #[test]
    fn docs_example_compiles() {
        let doc = include_str!("../../docs/policy.md");
        let yaml = doc
            .split("```yaml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("docs/policy.md has a policy example");
        if let Err(e) = compile_str(yaml) {
            panic!("docs/policy.md example: {e}");
        }
    }

    use super::*;

    fn ok(y: &str) -> Compiled {
        match compile_str(y) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn globs() {
        assert!(glob("iam:Create*", "iam:CreateUser"));
        assert!(glob("iam:create*", "iam:CreateUser"));
        assert!(!glob("iam:Create*", "iam:DeleteUser"));
        assert!(glob("*", "x"));
        assert!(glob("s3:?etObject", "s3:GetObject"));
    }

    #[test]
    fn compiles_every_family() {
        let c = ok(r#"
mode: enforce
rules:
  - name: d
    effect: deny
    match:
      actions: ["s3:DeleteBucket", "dynamodb:DeleteTable", "iam:CreateUser", "s3:PutBucketPolicy", "cloudwatch:PutMetricData"]
"#);
        let s3 = model().service("s3").expect("s3");
        let s3sig = enf::fnv(b"s3");
        // DELETE /{Bucket}
        let k = enf::key_rest(s3sig, enf::M_DELETE, 1, 0, 0);
        assert_eq!(c.actions.get(&k), Some(&vec![0u16]));
        // PUT /{Bucket}?policy
        let k = enf::key_rest(s3sig, enf::M_PUT, 1, 0, enf::fnv(b"policy"));
        assert_eq!(c.actions.get(&k), Some(&vec![0u16]));
        // PUT /{Bucket} (CreateBucket) is a known key without rules.
        let k = enf::key_rest(s3sig, enf::M_PUT, 1, 0, 0);
        assert_eq!(c.actions.get(&k), Some(&vec![]));
        let k = enf::key_json(enf::fnv(b"DynamoDB_20120810.DeleteTable"));
        assert_eq!(c.actions.get(&k), Some(&vec![0u16]));
        let k = enf::key_query(enf::fnv(b"iam"), enf::fnv(b"CreateUser"));
        assert_eq!(c.actions.get(&k), Some(&vec![0u16]));
        // CloudWatch speaks rpc-v2-cbor (signing name `monitoring`), json and query: one key each.
        let k = enf::key_cbor(enf::fnv(b"monitoring"), enf::fnv(b"PutMetricData"));
        assert_eq!(c.actions.get(&k), Some(&vec![0u16]));
        let k = enf::key_json(enf::fnv(b"GraniteServiceVersion20100801.PutMetricData"));
        assert_eq!(c.actions.get(&k), Some(&vec![0u16]));
        let k = enf::key_query(enf::fnv(b"monitoring"), enf::fnv(b"PutMetricData"));
        assert_eq!(c.actions.get(&k), Some(&vec![0u16]));
        // PutObject: greedy key, every depth from 2.
        let keys = op_keys(s3, "PutObject");
        assert_eq!(keys.len(), 7);
        assert!(keys.iter().all(|k| c.actions.get(k) == Some(&vec![])));
    }

    #[test]
    fn action_globs_expand() {
        let c = ok(
            "rules:\n  - name: x\n    effect: audit\n    match:\n      actions: [\"iam:Create*\"]\n",
        );
        let ops = &c.rules[0].operations;
        assert!(ops.iter().any(|(_, o, _)| o == "CreateUser"));
        assert!(
            ops.iter()
                .all(|(s, o, _)| s == "iam" && o.starts_with("Create"))
        );
    }

    #[test]
    fn resources() {
        let c = ok(r#"
rules:
  - name: p
    effect: approve
    hold: true
    match:
      actions: ["s3:PutObject", "dynamodb:PutItem"]
      resources: ["arn:aws:s3:::prod-*/*", "arn:aws:dynamodb:*:*:table/orders"]
"#);
        assert_eq!(c.krules.len(), 2);
        let r0 = c.krules[0].res.as_ref().expect("res");
        assert_eq!(
            (r0.kind, r0.mode, r0.text.as_str(), r0.flags),
            (enf::RES_BUCKET, enf::RES_PREFIX, "prod-", enf::RF_OBJECT)
        );
        let r1 = c.krules[1].res.as_ref().expect("res");
        assert_eq!(
            (r1.kind, r1.mode, r1.text.as_str()),
            (enf::RES_TABLE, enf::RES_EXACT, "orders")
        );
    }

    #[test]
    fn errors_name_rule_and_field() {
        let e = compile_str("rules:\n  - name: a\n    effect: deny\n    match:\n      actions: [\"nosuch:Thing\"]\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("rule 0 (a)") && e.contains("`actions`"), "{e}");
        let e = compile_str("rules:\n  - name: a\n    effect: deny\n    match:\n      actions: [\"s3:*\"]\n      resources: [\"arn:aws:s3:::*-prod/*\"]\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("`resources`"), "{e}");
        let e = compile_str("rules:\n  - name: a\n    effect: block\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("line") && e.contains("effect"), "{e}");
        let e = compile_str(
            "rules:\n  - name: a\n    effect: deny\n    match:\n      actoins: [\"s3:*\"]\n",
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("actoins"), "{e}");
        let e = compile_str("rules:\n  - name: a\n    effect: deny\n    request_timeout: 5m\n    match:\n      actions: [\"s3:DeleteBucket\"]\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("rule 0 (a)") && e.contains("`request_timeout`") && e.contains("approve"),
            "{e}"
        );
        let e = compile_str("rules:\n  - name: a\n    effect: approve\n    request_timeout: soon\n    match:\n      actions: [\"s3:DeleteBucket\"]\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("`request_timeout`") && e.contains("soon"), "{e}");
        let c = compile_str("rules:\n  - name: a\n    effect: approve\n    request_timeout: 2s\n    match:\n      actions: [\"s3:DeleteBucket\"]\n")
            .map(|c| c.rules[0].request_timeout_secs)
            .unwrap_or_default();
        assert_eq!(c, 2);
    }

    #[test]
    fn deploy_example_compiles() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/kubernetes/configmap.yaml"
        ))
        .unwrap_or_default();
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_default();
        let policy = v["data"]["policy.yaml"].as_str().unwrap_or_default();
        let c = ok(policy);
        assert_eq!(c.endpoints.len(), 1);
        assert!(c.endpoints[0].nets.iter().any(|(ip, _)| ip.is_ipv6()));
    }

    #[test]
    fn endpoints() {
        let c = ok(
            "endpoints:\n  - name: imds\n    cidrs: [\"169.254.169.254/32\", \"fd00:ec2::254\"]\n    ports: [80]\n",
        );
        assert_eq!(c.endpoints[0].nets.len(), 2);
        assert_eq!(c.endpoints[0].ports, vec![80]);
    }

    fn err(y: &str) -> String {
        match compile_str(y) {
            Ok(_) => panic!("accepted:\n{y}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn endpoint_rules_reject_call_fields() {
        for (field, line) in [
            ("principals", "principals: [\"arn:aws:iam::*:role/x\"]"),
            ("access_keys", "access_keys: [\"AKIAAAAAAAAAAAAAAAAA\"]"),
            ("actions", "actions: [\"s3:*\"]"),
            ("resources", "resources: [\"arn:aws:s3:::b\"]"),
        ] {
            let e = err(&format!(
                "rules:\n  - name: imds\n    effect: deny\n    match:\n      endpoints: [\"169.254.169.254\"]\n      {line}\n"
            ));
            assert!(
                e.contains("rule 0 (imds)")
                    && e.contains(&format!("`{field}`"))
                    && e.contains("connect"),
                "{field}: {e}"
            );
        }
        // Workload selectors are honoured, so they are accepted.
        let c = ok(
            "rules:\n  - name: imds\n    effect: deny\n    match:\n      endpoints: [\"169.254.169.254\"]\n      uid: 1000\n      exe: \"/usr/bin/curl\"\n",
        );
        assert_eq!(c.endpoints[0].workload.uid, Some(1000));
        assert!(!c.endpoints[0].keyed_by_cgroup(), "exe is checked by tgid");
        // Ports belong to endpoint rules only.
        let e = err(
            "rules:\n  - name: c\n    effect: deny\n    match:\n      actions: [\"s3:DeleteBucket\"]\n      ports: [443]\n",
        );
        assert!(e.contains("rule 0 (c)") && e.contains("`ports`"), "{e}");
    }

    #[test]
    fn endpoint_effects_and_ports_are_checked_in_both_forms() {
        for eff in ["kill", "approve"] {
            let e = err(&format!(
                "endpoints:\n  - name: imds\n    effect: {eff}\n    cidrs: [\"169.254.169.254/32\"]\n"
            ));
            assert!(
                e.contains("rule 0 (imds)") && e.contains("`effect`") && e.contains(eff),
                "{e}"
            );
            let e = err(&format!(
                "rules:\n  - name: a\n    effect: deny\n    match: {{actions: [\"s3:DeleteBucket\"]}}\n  - name: imds\n    effect: {eff}\n    match: {{endpoints: [\"fd00:ec2::254\"]}}\n"
            ));
            assert!(e.contains("rule 1 (imds)") && e.contains("`effect`"), "{e}");
        }
        // Top-level entries are numbered after `rules`.
        let e = err(
            "rules:\n  - name: a\n    effect: deny\n    match: {actions: [\"s3:DeleteBucket\"]}\nendpoints:\n  - name: imds\n    cidrs: [\"169.254.169.254\"]\n    ports: [80, 81, 82, 83, 84]\n",
        );
        assert!(
            e.contains("rule 1 (imds)") && e.contains("`ports`") && e.contains("at most 4"),
            "{e}"
        );
        let e =
            err("endpoints:\n  - name: imds\n    cidrs: [\"169.254.169.254\"]\n    ports: [0]\n");
        assert!(e.contains("`ports`"), "{e}");
        let e = err("endpoints:\n  - name: imds\n    cidrs: []\n");
        assert!(e.contains("`endpoints`"), "{e}");
        let e = err(
            "endpoints:\n  - name: imds\n    cidrs: [\"169.254.169.254\"]\n    match: {exe: python3}\n",
        );
        assert!(e.contains("`exe`"), "{e}");
        let e = err(
            "rules:\n  - name: imds\n    effect: deny\n    match: {endpoints: [\"10.0.0.1\"]}\nendpoints:\n  - name: imds\n    cidrs: [\"169.254.169.254\"]\n",
        );
        assert!(
            e.contains("rule 1 (imds)") && e.contains("duplicate"),
            "{e}"
        );
        // audit is honoured in both forms; the default effect is deny.
        let c = ok(
            "rules:\n  - name: a\n    effect: audit\n    match: {endpoints: [\"169.254.169.254\"], ports: [80, 443]}\nendpoints:\n  - name: b\n    cidrs: [\"fd00:ec2::254\"]\n",
        );
        assert_eq!(c.endpoints[0].effect, Effect::Audit);
        assert_eq!(c.endpoints[1].effect, Effect::Deny);
    }

    #[test]
    fn endpoint_rules_per_destination_are_bounded() {
        let mut y = String::from("endpoints:\n");
        for n in 0..=enf::MAX_EP_CANDS {
            // Nested prefixes: all of them cover 169.254.169.254.
            y.push_str(&format!(
                "  - name: r{n}\n    cidrs: [\"169.254.169.254/{}\"]\n",
                32 - n
            ));
        }
        let e = err(&y);
        assert!(
            e.contains(&format!(
                "rule {} (r{})",
                enf::MAX_EP_CANDS,
                enf::MAX_EP_CANDS
            )) && e.contains("at most 16"),
            "{e}"
        );
        // Disjoint destinations do not add up.
        let mut y = String::from("endpoints:\n");
        for n in 0..=enf::MAX_EP_CANDS {
            y.push_str(&format!("  - name: r{n}\n    cidrs: [\"10.0.0.{n}\"]\n"));
        }
        assert_eq!(ok(&y).endpoints.len(), enf::MAX_EP_CANDS + 1);
    }

    #[test]
    fn resources_must_fit_the_actions() {
        let e = err(
            "rules:\n  - name: r\n    effect: deny\n    match:\n      actions: [\"dynamodb:DeleteTable\"]\n      resources: [\"arn:aws:s3:::prod-*/*\"]\n",
        );
        assert!(
            e.contains("rule 0 (r)") && e.contains("`resources`") && e.contains("never match"),
            "{e}"
        );
        let e = err(
            "rules:\n  - name: r\n    effect: deny\n    match:\n      actions: [\"s3:*\"]\n      resources: [\"arn:aws:dynamodb:*:*:table/orders\"]\n",
        );
        assert!(e.contains("`resources`") && e.contains("DynamoDB"), "{e}");
        // A bucket-level pattern on object operations, and the reverse.
        let e = err(
            "rules:\n  - name: r\n    effect: deny\n    match:\n      actions: [\"s3:PutObject\"]\n      resources: [\"arn:aws:s3:::prod-*\"]\n",
        );
        assert!(e.contains("`resources`") && e.contains("bucket/*"), "{e}");
        let e = err(
            "rules:\n  - name: r\n    effect: deny\n    match:\n      actions: [\"s3:DeleteBucket\"]\n      resources: [\"arn:aws:s3:::prod-*/*\"]\n",
        );
        assert!(e.contains("`resources`"), "{e}");
        // An action that none of the resources can name.
        let e = err(
            "rules:\n  - name: r\n    effect: deny\n    match:\n      actions: [\"s3:DeleteBucket\", \"iam:CreateUser\"]\n      resources: [\"arn:aws:s3:::prod-*\"]\n",
        );
        assert!(
            e.contains("`actions`") && e.contains("iam:CreateUser"),
            "{e}"
        );
        // Fitting combinations compile; `*` lifts the restriction.
        ok(
            "rules:\n  - name: r\n    effect: deny\n    match:\n      actions: [\"s3:*\"]\n      resources: [\"arn:aws:s3:::prod-*\", \"arn:aws:s3:::prod-*/*\"]\n",
        );
        ok(
            "rules:\n  - name: r\n    effect: deny\n    match:\n      actions: [\"dynamodb:*\"]\n      resources: [\"arn:aws:dynamodb:*:*:table/orders\"]\n",
        );
        ok(
            "rules:\n  - name: r\n    effect: deny\n    match:\n      actions: [\"iam:CreateUser\"]\n      resources: [\"*\"]\n",
        );
    }

    #[test]
    fn too_many_rules_per_operation_names_the_rule_and_the_limit() {
        let mut y = String::from("rules:\n");
        for n in 0..=enf::MAX_CANDS {
            y.push_str(&format!(
                "  - name: r{n}\n    effect: audit\n    match: {{actions: [\"s3:DeleteBucket\"]}}\n"
            ));
        }
        let e = err(&y);
        assert!(
            e.contains(&format!("rule {} (r{})", enf::MAX_CANDS, enf::MAX_CANDS))
                && e.contains("`actions`")
                && e.contains("s3:DeleteBucket")
                && e.contains("at most 16 per operation"),
            "{e}"
        );
        // Resource patterns take one slot each.
        let mut y = String::from("rules:\n");
        for n in 0..8 {
            y.push_str(&format!(
                "  - name: r{n}\n    effect: audit\n    match: {{actions: [\"s3:DeleteBucket\"], resources: [\"arn:aws:s3:::a{n}\", \"arn:aws:s3:::b{n}\"]}}\n"
            ));
        }
        assert_eq!(ok(&y).krules.len(), 16);
        y.push_str(
            "  - name: last\n    effect: audit\n    match: {actions: [\"s3:DeleteBucket\"]}\n",
        );
        assert!(err(&y).contains("rule 8 (last)"));
    }
}
