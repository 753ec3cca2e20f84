//! Enforcement, user-space side (issue 6): loads and attaches the socket programs (sock_ops,
//! sk_msg, connect4/connect6), fills the kernel maps from the compiled policy, hot-reloads the
//! policy, adopts sockets that existed before the agent, turns kernel decision events into
//! record decisions and runs just-in-time approvals.

use crate::policy::{self, Compiled, Mode, Workload};
use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::lpm_trie::Key,
    maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, RingBuf, SockHash},
    programs::{CgroupAttachMode, CgroupSockAddr, SkMsg, SockOps},
};
use hoop_common::{
    Cands, DecisionEvent, EndpointKey, EndpointRef, EndpointVal, EnforceConfig, GrantKey, RuleDef,
    RuleMask, enf,
};
use hoop_event::{Aws, CallRecord, Decision, Event};
use hoop_identity::k8s::{PodCache, PodMeta};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tracing::{error, info, warn};

/// Options of `hoop-agent run` for enforcement.
#[derive(Clone, Debug, Default)]
pub struct EnforceOptions {
    /// Policy file; `None` = /etc/hoop/policy.yaml when it exists.
    pub policy: Option<PathBuf>,
    /// Unix socket of the local API.
    pub api_socket: PathBuf,
    /// Accumulate in-kernel decision time (`ENF_STATS`).
    pub stats: bool,
}

/// Kernel maps the agent writes.
struct Maps {
    config: Array<MapData, EnforceConfig>,
    actions: BpfHashMap<MapData, u64, Cands>,
    rules: Array<MapData, RuleDef>,
    scope_cg: BpfHashMap<MapData, u64, RuleMask>,
    scope_pid: BpfHashMap<MapData, u32, RuleMask>,
    akids: BpfHashMap<MapData, u64, RuleMask>,
    grants: BpfHashMap<MapData, GrantKey, u64>,
    verdict: BpfHashMap<MapData, u64, u64>,
    endpoints: LpmTrie<MapData, EndpointKey, EndpointVal>,
    ep_pid: BpfHashMap<MapData, u32, RuleMask>,
    socks: SockHash<MapData, u64>,
}

/// What was written to the kernel by the last apply, to remove stale entries.
#[derive(Default)]
struct Written {
    actions: BTreeSet<u64>,
    rules: u32,
    scope_cg: BTreeMap<u64, RuleMask>,
    scope_pid: BTreeMap<u32, RuleMask>,
    akids: BTreeMap<u64, RuleMask>,
    endpoints: BTreeMap<EpKey, EndpointVal>,
    ep_pid: BTreeMap<u32, RuleMask>,
}

/// An endpoint trie key: (prefix length in bits, cgroup id bytes, address).
type EpKey = (u32, [u8; 8], [u8; 16]);

/// Rule ids of endpoint rules in decision events: this plus the endpoint rule's index.
const ENDPOINT_RULE_BASE: u32 = 10_000;

/// The endpoint trie entries and the tgid masks of `exe` selectors: each rule becomes a
/// reference in the entries of its prefixes, keyed by each selected cgroup or by 0 (every
/// cgroup).
fn endpoint_plan(
    c: &Compiled,
    all: &[(String, u64)],
    pods: Option<&PodCache>,
) -> (BTreeMap<EpKey, EndpointVal>, BTreeMap<u32, RuleMask>) {
    let mut by_key: BTreeMap<EpKey, Vec<EndpointRef>> = BTreeMap::new();
    let mut ep_pid: BTreeMap<u32, RuleMask> = BTreeMap::new();
    for (i, e) in c.endpoints.iter().enumerate() {
        let (cgs, pids) = if e.workload.is_scoped() {
            resolve(&e.workload, all, pods)
        } else {
            Default::default()
        };
        let cgs: Vec<u64> = if e.keyed_by_cgroup() {
            cgs.into_iter().collect()
        } else {
            vec![0]
        };
        let has_exe = !e.workload.exe.list().is_empty();
        for p in pids {
            ep_pid.entry(p).or_default().set(i as u32);
        }
        let mut r = EndpointRef {
            rule: ENDPOINT_RULE_BASE + i as u32,
            index: i as u32,
            uid: e.workload.uid.unwrap_or(u32::MAX),
            effect: e.effect.code(),
            flags: if has_exe { enf::EPF_PID } else { 0 },
            ..Default::default()
        };
        for (k, p) in e.ports.iter().take(enf::MAX_EP_PORTS).enumerate() {
            r.ports[k] = *p;
        }
        for (ip, plen) in &e.nets {
            let (addr, bits) = policy::net_v6(ip, *plen);
            for cg in &cgs {
                by_key
                    .entry((64 + bits, cg.to_ne_bytes(), addr))
                    .or_default()
                    .push(r);
            }
        }
    }
    (endpoint_entries(&by_key), ep_pid)
}

/// The trie entries: every key carries, in policy order, its own rules and those of the
/// shorter prefixes of the same cgroup key that contain it (the trie returns only the longest
/// matching prefix). The policy compiler bounds their number by `MAX_EP_CANDS`.
fn endpoint_entries(by_key: &BTreeMap<EpKey, Vec<EndpointRef>>) -> BTreeMap<EpKey, EndpointVal> {
    let mut out = BTreeMap::new();
    for k in by_key.keys() {
        let mut refs: Vec<EndpointRef> = by_key
            .iter()
            .filter(|(o, _)| o.1 == k.1 && policy::net_covers((o.2, o.0 - 64), (k.2, k.0 - 64)))
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        refs.sort_by_key(|r| r.index);
        refs.dedup_by_key(|r| r.index);
        if refs.len() > enf::MAX_EP_CANDS {
            error!(
                rules = refs.len(),
                "endpoint rules beyond the first {} on one destination are not enforced",
                enf::MAX_EP_CANDS
            );
        }
        let mut v = EndpointVal {
            n: refs.len().min(enf::MAX_EP_CANDS) as u32,
            ..Default::default()
        };
        for (slot, r) in v.refs.iter_mut().zip(refs) {
            *slot = r;
        }
        out.insert(*k, v);
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
    Expired,
}

#[derive(Clone, Debug)]
pub struct Approval {
    pub id: u64,
    pub rule: String,
    pub state: ApprovalState,
    pub held: bool,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    pub operation: String,
    pub requested_at: String,
    pub requested_boot_ns: u64,
    pub decided_at: Option<String>,
    pub decided_by: Option<String>,
    pub grant_expires: Option<String>,
    /// The call that raised the request, masked as stored (non-held requests: once its
    /// record is made; held ones: after the decision, when the call has completed).
    pub call: Option<CallRecord>,
    grant: GrantKey,
    ttl_secs: u64,
    hold_timeout_secs: u64,
    request_timeout_secs: u64,
    /// Boot-time ns at which the grant ends (approved requests).
    grant_exp_boot: u64,
    /// Boot-time ns of the decision (0 while pending).
    decided_boot_ns: u64,
    conn: u64,
    recorded: bool,
}

impl Approval {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "rule": self.rule,
            "state": format!("{:?}", self.state).to_lowercase(),
            "held": self.held,
            "pid": self.tgid,
            "tid": self.tid,
            "uid": self.uid,
            "cgroup_id": self.cgroup_id,
            "operation": self.operation,
            "requested_at": self.requested_at,
            "decided_at": self.decided_at,
            "decided_by": self.decided_by,
            "grant_expires": self.grant_expires,
            "call": self.call.as_ref().map(call_json),
        })
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
        }
    }

    fn event(&self) -> Event {
        Event {
            held: Some(self.held),
            requested_at: Some(self.requested_at.clone()),
            decided_at: self.decided_at.clone(),
            decided_by: self.decided_by.clone(),
            grant_expires: self.grant_expires.clone(),
            ..Default::default()
        }
    }
}

/// The parts of a call record an approval shows (`call` in the list and the output lines).
fn call_json(rec: &CallRecord) -> Value {
    json!({
        "time": rec.time,
        "process": rec.process,
        "workload": rec.workload,
        "identity": rec.identity,
        "request": rec.request,
        "aws": rec.aws,
    })
}

/// An enforcement event on its way into the audit trail: `rec` is the entry (its
/// `decision.effect` is `approval:EVENT` or `endpoint:EFFECT`, its `event` the details).
pub struct TrailEvent {
    pub rec: CallRecord,
    /// `rec` was built from the kernel's decision alone: process, workload and identity are
    /// still to be resolved (otherwise they are the recorded call's).
    pub bare: bool,
}

/// What the event loop must tell the enforcer once a call's record is masked and stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// The record is the call that raised approval request `id`.
    Requested(u64),
    /// The record is a call that passed on the grant of approval `id`.
    Used(u64),
}

/// Finished approvals kept for `approvals list` (the trail keeps all of them).
const KEEP_FINISHED: usize = 1024;

/// Shared enforcement state: the kernel maps, the active policy and the approvals.
pub struct State {
    maps: Maps,
    written: Written,
    pub policy: Option<Arc<Compiled>>,
    cgroup_root: PathBuf,
    stats: bool,
    pub approvals: Vec<Approval>,
    next_id: u64,
    /// Enforcement events (approvals, endpoint decisions) for the trail and the output.
    pub events: Vec<TrailEvent>,
    clock: crate::record::Clock,
    cgroup_fd: std::fs::File,
    sock_ops_prog: aya::programs::ProgramFd,
    /// The sock_ops link to the cgroup2 root, once a policy has call rules.
    sock_ops_link: Option<OwnedFd>,
    stats_map: PerCpuArray<MapData, u64>,
    /// `STAT_SOCKS_BUSY` when last reported.
    busy_warned: u64,
    /// Pods of this node (namespace, labels, service account), for Kubernetes selectors:
    /// cgroup path → pod UID → pod. Empty outside a cluster.
    pods: Option<Arc<PodCache>>,
    /// Access key id → principal ARN, as the identity resolver knows them, for `principals`.
    principal_keys: Vec<(String, String)>,
    /// Key hash (as the kernel reports it) → access key id, for the keys rules name, so an
    /// event built from a kernel decision alone says which key asked.
    key_names: HashMap<u64, String>,
}

pub type Shared = Arc<Mutex<State>>;

/// The event-loop side: decision events in, record decisions out.
pub struct Enforcer {
    pub state: Shared,
    ring: RingBuf<MapData>,
    /// (tgid, conn) -> decisions not yet matched to a record.
    queued: HashMap<(u32, u64), VecDeque<DecisionEvent>>,
    /// Principal map size and time at the last `principals` refresh.
    principals_seen: usize,
    principals_at: std::time::Instant,
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    for line in text.lines() {
        // ... mount_point ... - fstype source opts
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() == Some("cgroup2")
            && let Some(mp) = pre.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(mp.replace("\\040", " ")));
        }
    }
    Err(anyhow!("no cgroup2 mount in /proc/self/mountinfo"))
}

fn take<T: TryFrom<aya::maps::Map>>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    <T as TryFrom<aya::maps::Map>>::Error: std::error::Error + Send + Sync + 'static,
{
    let m = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    T::try_from(m).with_context(|| format!("map {name}"))
}

/// Loads and attaches the enforcement programs, takes their maps, loads the policy and
/// starts the reload thread and the local API.
pub fn start(ebpf: &mut Ebpf, opts: &EnforceOptions) -> Result<Enforcer> {
    let root = cgroup2_mount()?;
    let socks: SockHash<MapData, u64> = take(ebpf, "ENF_SOCKS")?;
    {
        let p: &mut SkMsg = crate::probes::program(ebpf, "hoop_sk_msg")?;
        p.load().context("load sk_msg")?;
        p.attach(socks.fd()).context("attach sk_msg to ENF_SOCKS")?;
    }
    let cg = std::fs::File::open(&root).with_context(|| format!("open {}", root.display()))?;
    // sock_ops is loaded now but attached only once a policy has call rules (see
    // `State::ensure_sockets`): a socket can be attached to one sk_msg program only, so an
    // agent that enforces nothing must not claim the host's sockets.
    let sock_ops_prog = {
        let p: &mut SockOps = crate::probes::program(ebpf, "hoop_sock_ops")?;
        p.load().context("load sock_ops")?;
        p.fd()?.try_clone().context("dup sock_ops fd")?
    };
    for name in ["hoop_connect4", "hoop_connect6"] {
        let p: &mut CgroupSockAddr = crate::probes::program(ebpf, name)?;
        p.load().with_context(|| format!("load {name}"))?;
        p.attach(&cg, CgroupAttachMode::Single)
            .with_context(|| format!("attach {name}"))?;
    }
    let maps = Maps {
        config: take(ebpf, "ENF_CONFIG")?,
        actions: take(ebpf, "ENF_ACTIONS")?,
        rules: take(ebpf, "ENF_RULES")?,
        scope_cg: take(ebpf, "ENF_SCOPE_CG")?,
        scope_pid: take(ebpf, "ENF_SCOPE_PID")?,
        akids: take(ebpf, "ENF_AKIDS")?,
        grants: take(ebpf, "ENF_GRANTS")?,
        verdict: take(ebpf, "ENF_VERDICT")?,
        endpoints: take(ebpf, "ENF_ENDPOINTS")?,
        ep_pid: take(ebpf, "ENF_EP_PID")?,
        socks,
    };
    let ring: RingBuf<MapData> = take(ebpf, "ENF_EVENTS")?;
    let mut st = State {
        maps,
        written: Written::default(),
        policy: None,
        cgroup_root: root.clone(),
        cgroup_fd: cg.try_clone().context("dup cgroup fd")?,
        sock_ops_prog,
        sock_ops_link: None,
        stats_map: take(ebpf, "ENF_STATS")?,
        busy_warned: 0,
        pods: None,
        principal_keys: Vec::new(),
        key_names: HashMap::new(),
        stats: opts.stats,
        approvals: Vec::new(),
        next_id: 1,
        events: Vec::new(),
        clock: crate::record::Clock::new(),
    };
    info!(cgroup2 = %root.display(), "enforcement loaded");
    let path = opts
        .policy
        .clone()
        .or_else(|| Some(PathBuf::from("/etc/hoop/policy.yaml")).filter(|p| p.exists()));
    let mut mtime = None;
    if let Some(p) = &path {
        mtime = file_mtime(p);
        match load_policy(p) {
            Ok(c) => st.apply(Arc::new(c)),
            Err(e) => return Err(anyhow!("policy {}: {e}", p.display())),
        }
    } else {
        st.write_config();
    }
    let shared: Shared = Arc::new(Mutex::new(st));
    let s2 = shared.clone();
    std::thread::Builder::new()
        .name("hoop-policy".into())
        .spawn(move || policy_loop(s2, path, mtime))
        .context("spawn policy thread")?;
    // The approval routes are served by the agent with the other API routes
    // (`crate::api::approval_routes(enforcer.state.clone())`).
    Ok(Enforcer {
        state: shared,
        ring,
        queued: HashMap::new(),
        principals_seen: usize::MAX,
        principals_at: std::time::Instant::now(),
    })
}

fn file_mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load_policy(p: &Path) -> Result<Compiled> {
    let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
    let c = policy::compile_str(&text)?;
    for w in &c.warnings {
        warn!("policy: {w}");
    }
    Ok(c)
}

fn policy_loop(state: Shared, path: Option<PathBuf>, mut mtime: Option<SystemTime>) {
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let Ok(mut st) = state.lock() else { return };
        if let Some(p) = &path {
            let m = file_mtime(p);
            if m != mtime {
                mtime = m;
                match load_policy(p) {
                    Ok(c) => {
                        info!(rules = c.rules.len(), "policy reloaded");
                        st.apply(Arc::new(c));
                    }
                    Err(e) => error!(
                        "policy {} rejected, previous policy kept: {e:#}",
                        p.display()
                    ),
                }
            }
        }
        st.refresh_workloads();
        st.expire_approvals();
        st.sweep_verdicts();
        st.check_busy();
    }
}

/// Every cgroup directory below the mount: (relative path, cgroup id = inode).
fn cgroups(root: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        if let Ok(m) = std::fs::metadata(&d) {
            let rel = d
                .strip_prefix(root)
                .map(|p| format!("/{}", p.display()))
                .unwrap_or_default();
            out.push((rel.replace("//", "/"), m.ino()));
        }
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        if out.len() > 100_000 {
            break;
        }
    }
    out
}

fn proc_cgroup(pid: u32) -> Option<String> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// Does a pod satisfy the Kubernetes selectors of `w` (namespace and service account globs,
/// every label equal)? A pod without `serviceAccountName` runs as `default`.
pub fn pod_matches(w: &Workload, pod: &PodMeta) -> bool {
    let ns = w.namespace.list();
    if !ns.is_empty() && !ns.iter().any(|g| policy::glob(g, &pod.namespace)) {
        return false;
    }
    let sas = w.service_account.list();
    let sa = pod.service_account.as_deref().unwrap_or("default");
    if !sas.is_empty() && !sas.iter().any(|g| policy::glob(g, sa)) {
        return false;
    }
    w.pod_labels
        .iter()
        .all(|(k, v)| pod.labels.get(k).is_some_and(|pv| pv == v))
}

/// The pod a cgroup path belongs to: pod UID from the path, else its container id.
fn pod_of(pods: &PodCache, rel: &str) -> Option<Arc<PodMeta>> {
    let info = hoop_identity::cgroup::parse_cgroup_path(rel);
    info.pod_uid
        .as_deref()
        .and_then(|u| pods.by_uid(u))
        .or_else(|| {
            info.container_id
                .as_deref()
                .and_then(|c| pods.by_container(c))
        })
}

/// Does a workload's cgroup-based selectors (cgroup prefix, container id, Kubernetes) hold
/// for the cgroup at `rel`? True when it has none.
fn cgroup_selected(w: &Workload, rel: &str, pods: Option<&PodCache>) -> bool {
    let prefixes = w.cgroup.list();
    let containers = w.container.list();
    let pre = prefixes.is_empty()
        || prefixes.iter().any(|p| {
            let p = format!("/{}", p.trim_start_matches('/'));
            rel == p || rel.starts_with(&format!("{}/", p.trim_end_matches('/')))
        });
    let con = containers.is_empty()
        || containers
            .iter()
            .any(|c| c.len() >= 12 && rel.contains(c.as_str()));
    let pod = !has_k8s(w)
        || pods
            .and_then(|p| pod_of(p, rel))
            .is_some_and(|pod| pod_matches(w, &pod));
    pre && con && pod
}

fn has_k8s(w: &Workload) -> bool {
    !(w.namespace.list().is_empty()
        && w.pod_labels.is_empty()
        && w.service_account.list().is_empty())
}

fn has_cgroup_selectors(w: &Workload) -> bool {
    !w.cgroup.list().is_empty() || !w.container.list().is_empty() || has_k8s(w)
}

/// Is process `pid` (executable `exe`) selected by a workload with `exe` selectors?
fn pid_selected(w: &Workload, pid: u32, exe: &str, pods: Option<&PodCache>) -> bool {
    if !w.exe.list().iter().any(|g| policy::glob(g, exe)) {
        return false;
    }
    !has_cgroup_selectors(w) || proc_cgroup(pid).is_some_and(|c| cgroup_selected(w, &c, pods))
}

/// Resolves a workload selector to cgroup ids and (for exe selectors) tgids. Kubernetes
/// selectors go through the pod cache (cgroup path → pod UID → pod); without pods they
/// select nothing. With `exe`, only tgids are returned (the cgroup selectors then narrow
/// which processes count).
fn resolve(
    w: &Workload,
    all: &[(String, u64)],
    pods: Option<&PodCache>,
) -> (BTreeSet<u64>, BTreeSet<u32>) {
    let mut cgs = BTreeSet::new();
    let mut pids = BTreeSet::new();
    if !w.exe.list().is_empty() {
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(exe) = std::fs::read_link(e.path().join("exe")) else {
                    continue;
                };
                if pid_selected(w, pid, &exe.to_string_lossy(), pods) {
                    pids.insert(pid);
                }
            }
        }
    } else if has_cgroup_selectors(w) {
        for (rel, id) in all {
            if cgroup_selected(w, rel, pods) {
                cgs.insert(*id);
            }
        }
    }
    (cgs, pids)
}

/// ARNs a principal glob is tried against: the ARN, and for an STS assumed-role session
/// (`arn:P:sts::A:assumed-role/R/S`) also its role (`arn:P:iam::A:role/R`).
pub fn principal_forms(arn: &str) -> Vec<String> {
    let mut v = vec![arn.to_string()];
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() == 6
        && parts[2] == "sts"
        && let Some(rest) = parts[5].strip_prefix("assumed-role/")
        && let Some((role, _session)) = rest.rsplit_once('/')
    {
        v.push(format!("arn:{}:iam::{}:role/{role}", parts[1], parts[4]));
    }
    v
}

/// The access keys a rule is enforced for (empty when it names neither keys nor principals).
pub fn rule_keys(r: &policy::CompiledRule, known: &[(String, String)]) -> BTreeSet<String> {
    let explicit: BTreeSet<String> = r.access_keys.iter().cloned().collect();
    if r.principals.is_empty() {
        return explicit;
    }
    known
        .iter()
        .filter(|(_, arn)| {
            principal_forms(arn)
                .iter()
                .any(|f| r.principals.iter().any(|g| policy::glob(g, f)))
        })
        .map(|(k, _)| k.clone())
        .filter(|k| explicit.is_empty() || explicit.contains(k))
        .collect()
}

/// Brings a kernel mask map from `old` to `new`: changed entries written first, then the
/// stale ones removed.
fn sync_masks<K: aya::Pod + Ord>(
    map: &mut BpfHashMap<MapData, K, RuleMask>,
    old: &BTreeMap<K, RuleMask>,
    new: &BTreeMap<K, RuleMask>,
) {
    for (k, m) in new {
        if old.get(k) != Some(m)
            && let Err(e) = map.insert(k, m, 0)
        {
            error!("write rule mask: {e}");
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(k)) {
        let _ = map.remove(k);
    }
}

/// Sets one key's mask (an empty mask removes the key).
fn set_mask<K: aya::Pod + Ord>(
    map: &mut BpfHashMap<MapData, K, RuleMask>,
    written: &mut BTreeMap<K, RuleMask>,
    k: K,
    m: RuleMask,
) {
    if m == RuleMask::default() {
        if written.remove(&k).is_some() {
            let _ = map.remove(&k);
        }
    } else if written.get(&k) != Some(&m) {
        match map.insert(&k, &m, 0) {
            Ok(()) => {
                written.insert(k, m);
            }
            Err(e) => error!("write rule mask: {e}"),
        }
    }
}

fn fnv(s: &str) -> u64 {
    enf::fnv(s.as_bytes())
}

impl State {
    fn write_config(&mut self) {
        let (enabled, monitor, global) = match &self.policy {
            Some(p) => (
                u32::from(!p.rules.is_empty() || !p.endpoints.is_empty()),
                u32::from(p.mode == Mode::Monitor),
                u32::from(
                    p.rules
                        .iter()
                        .any(|r| !r.operations.is_empty() && !r.workload.is_scoped()),
                ),
            ),
            None => (0, 0, 0),
        };
        let cfg = EnforceConfig {
            enabled,
            monitor,
            stats: u32::from(self.stats),
            global,
            ..Default::default()
        };
        if let Err(e) = self.maps.config.set(0, &cfg, 0) {
            error!("write ENF_CONFIG: {e}");
        }
    }

    /// Writes a compiled policy into the kernel maps (new entries first, then stale ones out).
    pub fn apply(&mut self, c: Arc<Compiled>) {
        // Rules.
        let mut slot_flags = Vec::with_capacity(c.krules.len());
        for (slot, kr) in c.krules.iter().enumerate() {
            let r = &c.rules[kr.rule];
            let mut flags = 0u8;
            if r.workload.is_scoped() {
                flags |= enf::RF_WORKLOAD;
            }
            if !r.access_keys.is_empty() || !r.principals.is_empty() {
                flags |= enf::RF_AKID;
            }
            if r.hold {
                flags |= enf::RF_HOLD;
            }
            let mut def = RuleDef {
                effect: r.effect.code(),
                flags,
                uid: r.workload.uid.unwrap_or(u32::MAX),
                ..Default::default()
            };
            if let Some(res) = &kr.res {
                def.flags |= res.flags;
                def.res_kind = res.kind;
                def.res_mode = res.mode;
                def.res_len = res.text.len() as u32;
                def.res_hash = fnv(&res.text);
                if res.kind == enf::RES_TABLE {
                    def.flags |= enf::RF_TABLE;
                }
            }
            slot_flags.push(def.flags);
            if let Err(e) = self.maps.rules.set(slot as u32, &def, 0) {
                error!("write ENF_RULES[{slot}]: {e}");
            }
        }
        for slot in c.krules.len() as u32..self.written.rules {
            let _ = self.maps.rules.set(slot, &RuleDef::default(), 0);
        }
        self.written.rules = c.krules.len() as u32;
        // Action keys.
        let mut keys = BTreeSet::new();
        for (k, v) in &c.actions {
            let mut cands = Cands {
                n: v.len() as u32,
                all: u32::from(u8::MAX),
                ..Default::default()
            };
            for (i, s) in v.iter().enumerate().take(enf::MAX_CANDS) {
                let f = slot_flags.get(*s as usize).copied().unwrap_or(0);
                cands.idx[i] = *s;
                cands.cflags[i] = f;
                cands.flags |= u32::from(f);
                cands.all &= u32::from(f);
            }
            if let Err(e) = self.maps.actions.insert(k, &cands, 0) {
                error!("write ENF_ACTIONS: {e}");
            }
            keys.insert(*k);
        }
        for k in self.written.actions.difference(&keys) {
            let _ = self.maps.actions.remove(k);
        }
        self.written.actions = keys;
        self.policy = Some(c);
        self.write_akids();
        self.refresh_workloads();
        self.write_config();
        self.ensure_sockets();
    }

    /// Writes each rule's access keys: its `access_keys`, and for `principals` the keys the
    /// identity resolver knows for matching principal ARNs (both given: keys in both).
    fn write_akids(&mut self) {
        let Some(c) = self.policy.clone() else { return };
        let mut ak: BTreeMap<u64, RuleMask> = BTreeMap::new();
        let mut names = HashMap::new();
        for (slot, kr) in c.krules.iter().enumerate() {
            let r = &c.rules[kr.rule];
            for a in rule_keys(r, &self.principal_keys) {
                let h = enf::akid_hash(a.as_bytes());
                ak.entry(h).or_default().set(slot as u32);
                names.insert(h, a);
            }
        }
        self.key_names = names;
        sync_masks(&mut self.maps.akids, &self.written.akids, &ak);
        self.written.akids = ak;
    }

    /// The pod cache for Kubernetes selectors (re-resolved at once).
    pub fn set_pods(&mut self, pods: Arc<PodCache>) {
        self.pods = Some(pods);
        self.refresh_workloads();
    }

    /// New (access key, principal ARN) pairs from the identity resolver.
    pub fn set_principal_keys(&mut self, mut keys: Vec<(String, String)>) {
        keys.sort_unstable();
        if keys != self.principal_keys {
            self.principal_keys = keys;
            self.write_akids();
        }
    }

    /// Re-resolves workload selectors (new cgroups, new processes) into the maps.
    fn refresh_workloads(&mut self) {
        let Some(c) = self.policy.clone() else { return };
        let pods = self.pods.clone();
        let pods = pods.as_deref();
        let all = if c.needs_workload() {
            cgroups(&self.cgroup_root)
        } else {
            Vec::new()
        };
        let mut scope_cg: BTreeMap<u64, RuleMask> = BTreeMap::new();
        let mut scope_pid: BTreeMap<u32, RuleMask> = BTreeMap::new();
        let mut cache: HashMap<usize, (BTreeSet<u64>, BTreeSet<u32>)> = HashMap::new();
        for (slot, kr) in c.krules.iter().enumerate() {
            let r = &c.rules[kr.rule];
            if !r.workload.is_scoped() {
                continue;
            }
            let (cgs, pids) = cache
                .entry(kr.rule)
                .or_insert_with(|| resolve(&r.workload, &all, pods))
                .clone();
            for cg in cgs {
                scope_cg.entry(cg).or_default().set(slot as u32);
            }
            for p in pids {
                scope_pid.entry(p).or_default().set(slot as u32);
            }
        }
        sync_masks(&mut self.maps.scope_cg, &self.written.scope_cg, &scope_cg);
        sync_masks(
            &mut self.maps.scope_pid,
            &self.written.scope_pid,
            &scope_pid,
        );
        self.written.scope_cg = scope_cg;
        self.written.scope_pid = scope_pid;
        let (eps, ep_pid) = endpoint_plan(&c, &all, pods);
        for (k, v) in &eps {
            if self.written.endpoints.get(k) == Some(v) {
                continue;
            }
            let key = Key::new(
                k.0,
                EndpointKey {
                    cgroup: k.1,
                    addr: k.2,
                },
            );
            if let Err(e) = self.maps.endpoints.insert(&key, v, 0) {
                error!("write ENF_ENDPOINTS: {e}");
            }
        }
        for (bits, cg, addr) in self.written.endpoints.keys() {
            if !eps.contains_key(&(*bits, *cg, *addr)) {
                let _ = self.maps.endpoints.remove(&Key::new(
                    *bits,
                    EndpointKey {
                        cgroup: *cg,
                        addr: *addr,
                    },
                ));
            }
        }
        self.written.endpoints = eps;
        sync_masks(&mut self.maps.ep_pid, &self.written.ep_pid, &ep_pid);
        self.written.ep_pid = ep_pid;
    }

    /// A process exec'd: its `exe` selector bits are set (or cleared) at once, so a new
    /// process is covered from its first call, not from the next refresh.
    pub fn on_exec(&mut self, tgid: u32) {
        let Some(c) = self.policy.clone() else { return };
        if !c.has_exe() {
            return;
        }
        let Ok(exe) = std::fs::read_link(format!("/proc/{tgid}/exe")) else {
            return;
        };
        let exe = exe.to_string_lossy();
        let pods = self.pods.clone();
        let pods = pods.as_deref();
        let mut call = RuleMask::default();
        for (slot, kr) in c.krules.iter().enumerate() {
            let w = &c.rules[kr.rule].workload;
            if !w.exe.list().is_empty() && pid_selected(w, tgid, &exe, pods) {
                call.set(slot as u32);
            }
        }
        let mut ep = RuleMask::default();
        for (i, e) in c.endpoints.iter().enumerate() {
            if !e.workload.exe.list().is_empty() && pid_selected(&e.workload, tgid, &exe, pods) {
                ep.set(i as u32);
            }
        }
        set_mask(
            &mut self.maps.scope_pid,
            &mut self.written.scope_pid,
            tgid,
            call,
        );
        set_mask(&mut self.maps.ep_pid, &mut self.written.ep_pid, tgid, ep);
    }

    /// Adopts established TCP sockets of running processes into the SockHash.
    /// Returns (adopted, busy): busy sockets are attached to another sk_msg program.
    fn adopt_existing_sockets(&mut self) -> (usize, usize) {
        let established = established_inodes();
        let me = std::process::id();
        let mut n = 0;
        let mut busy = 0;
        let mut seen: BTreeSet<u64> = self.maps.socks.keys().flatten().collect();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return (0, 0);
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
                continue;
            };
            let mut pidfd: Option<OwnedFd> = None;
            for fd in fds.flatten() {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let t = target.to_string_lossy();
                let Some(ino) = t
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse::<u64>().ok())
                else {
                    continue;
                };
                if !established.contains(&ino) {
                    continue;
                }
                let Some(num) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                if pidfd.is_none() {
                    // SAFETY: plain syscall; the result is checked.
                    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
                    if r < 0 {
                        break;
                    }
                    // SAFETY: a fresh fd we own.
                    pidfd = Some(unsafe { OwnedFd::from_raw_fd(r as i32) });
                }
                let Some(pfd) = pidfd.as_ref() else { break };
                // SAFETY: plain syscall; the result is checked.
                let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pfd.as_raw_fd(), num, 0) };
                if r < 0 {
                    continue;
                }
                // SAFETY: a fresh duplicate we own; closing it keeps map membership.
                let dup = unsafe { OwnedFd::from_raw_fd(r as i32) };
                let mut cookie: u64 = 0;
                let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
                // SAFETY: valid out-pointers.
                let ok = unsafe {
                    libc::getsockopt(
                        dup.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_COOKIE,
                        (&mut cookie as *mut u64).cast(),
                        &mut len,
                    )
                } == 0;
                if !ok || !seen.insert(cookie) {
                    continue;
                }
                match self.maps.socks.insert(&cookie, dup.as_raw_fd(), 0) {
                    Ok(()) => n += 1,
                    Err(aya::maps::MapError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::EBUSY) =>
                    {
                        busy += 1
                    }
                    Err(_) => {}
                }
            }
        }
        (n, busy)
    }

    /// Removes verdicts past their deadline: a drop that never happened (the thread was
    /// killed, or never sent) leaves its entry, and the map would fill up.
    fn sweep_verdicts(&mut self) {
        let now = self.clock.boot_now();
        let stale: Vec<u64> = self
            .maps
            .verdict
            .iter()
            .filter_map(|e| e.ok())
            .filter(|(_, deadline)| *deadline < now)
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            let _ = self.maps.verdict.remove(&k);
        }
    }

    /// Ends what has run out of time: pending requests past their timeout (`hold_timeout`
    /// for held callers, which resume into a failed send; `request_timeout` otherwise) and
    /// grants past their TTL, which leave `ENF_GRANTS`. Each one is an `expired` event.
    fn expire_approvals(&mut self) {
        let now = self.clock.boot_now();
        for i in 0..self.approvals.len() {
            let a = &self.approvals[i];
            match a.state {
                ApprovalState::Pending => {
                    let timeout = if a.held {
                        a.hold_timeout_secs
                    } else {
                        a.request_timeout_secs
                    };
                    if now > a.requested_boot_ns + timeout * 1_000_000_000 {
                        // Only a grant write can fail, and this is no approval.
                        let _ = self.finish(i, false, "timeout", true);
                    }
                }
                ApprovalState::Approved if a.grant_exp_boot <= now => {
                    // A later approval of the same identity, action and resource may have
                    // extended the grant: remove only the entry this approval wrote.
                    if self.maps.grants.get(&a.grant, 0).ok() == Some(a.grant_exp_boot) {
                        let _ = self.maps.grants.remove(&a.grant);
                    }
                    let exp = a.grant_exp_boot;
                    self.approvals[i].state = ApprovalState::Expired;
                    self.push_approval_event(i, "expired", exp);
                }
                _ => {}
            }
        }
        let finished = self
            .approvals
            .iter()
            .filter(|a| matches!(a.state, ApprovalState::Denied | ApprovalState::Expired))
            .count();
        if finished > KEEP_FINISHED {
            let mut drop = finished - KEEP_FINISHED;
            self.approvals.retain(|a| {
                let old =
                    drop > 0 && matches!(a.state, ApprovalState::Denied | ApprovalState::Expired);
                drop -= usize::from(old);
                !old
            });
        }
    }

    /// Approves or denies an approval request.
    pub fn decide(&mut self, id: u64, approve: bool, who: &str, timeout: bool) -> Result<Value> {
        let i = self
            .approvals
            .iter()
            .position(|a| a.id == id)
            .ok_or_else(|| anyhow!("no approval request {id}"))?;
        let a = &self.approvals[i];
        if a.state != ApprovalState::Pending {
            return Err(anyhow!(
                "approval request {id} is already {}",
                a.state_name()
            ));
        }
        self.finish(i, approve, who, timeout)
    }

    /// Decides pending request `i`: approved (a grant in `ENF_GRANTS`), denied, or expired
    /// (`timeout`). A held caller resumes; unless approved, its stopped write is dropped.
    fn finish(&mut self, i: usize, approve: bool, who: &str, timeout: bool) -> Result<Value> {
        let now_boot = self.clock.boot_now();
        let now = crate::record::rfc3339(self.clock.unix_ns(now_boot));
        let a = &mut self.approvals[i];
        if approve {
            let exp = now_boot + a.ttl_secs * 1_000_000_000;
            self.maps
                .grants
                .insert(&a.grant, &exp, 0)
                .map_err(|e| anyhow!("write grant: {e}"))?;
            a.state = ApprovalState::Approved;
            a.grant_exp_boot = exp;
            a.grant_expires = Some(crate::record::rfc3339(self.clock.unix_ns(exp)));
        } else {
            a.state = if timeout {
                ApprovalState::Expired
            } else {
                ApprovalState::Denied
            };
            if a.held {
                // The stopped write resumes into a dropped send (a stopped process may take a
                // moment to be scheduled: a longer deadline than the kernel's).
                let _ = self.maps.verdict.insert(
                    &(((a.tgid as u64) << 32) | a.tid as u64),
                    &(now_boot + 4 * enf::VERDICT_TTL_NS),
                    0,
                );
            }
        }
        a.decided_at = Some(now);
        a.decided_boot_ns = now_boot;
        a.decided_by = Some(who.to_string());
        if a.held {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(a.tgid as i32, libc::SIGCONT) };
        }
        let what = a.state_name();
        let mut v = a.to_json();
        v["type"] = json!("approval");
        v["event"] = json!(what);
        self.push_approval_event(i, what, now_boot);
        Ok(v)
    }

    /// A record built from a kernel decision alone (the call's plaintext never made a
    /// complete exchange, or has not yet): process ids, the operation the action key stands
    /// for, the decision time.
    fn bare_record(&self, ts_boot: u64, ev: &DecisionEvent) -> CallRecord {
        let mut rec = CallRecord {
            version: hoop_event::RECORD_VERSION,
            time_ns: self.clock.unix_ns(ts_boot),
            time: crate::record::rfc3339(self.clock.unix_ns(ts_boot)),
            ..Default::default()
        };
        rec.process.pid = ev.tgid;
        rec.process.tid = ev.tid;
        rec.process.uid = ev.uid;
        rec.process.cgroup_id = ev.cgroup_id;
        rec.process.comm = std::fs::read_to_string(format!("/proc/{}/comm", ev.tgid))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        rec.identity.access_key_id = self.key_names.get(&ev.akid).cloned();
        if ev.kind != enf::KIND_CONNECT {
            rec.connection.id = format!("{:#x}", ev.conn);
            rec.connection.tls = "openssl".into();
            rec.connection.http = "HTTP/1.1".into();
            let (aws, method) = self.aws_of(ev.action);
            rec.aws = aws;
            rec.request.method = method;
        }
        rec.workload.kind = "host".into();
        rec
    }

    /// The AWS call an action key stands for, and its HTTP method.
    fn aws_of(&self, action: u64) -> (Aws, String) {
        let mut aws = Aws::default();
        let mut method = String::new();
        if let Some((svc, op)) = self.policy.as_ref().and_then(|p| p.key_names.get(&action)) {
            aws.service = svc.clone();
            aws.operation = Some(op.clone());
            if let Some(s) = hoop_aws::model::model().service(svc) {
                method = s
                    .operation(op)
                    .map(|o| o.method.clone())
                    .unwrap_or_default();
                aws.iam_action =
                    Some(hoop_aws::tables::iam().action(svc, &s.signing_name, op, &method, false));
                aws.signing_service = Some(s.signing_name.clone());
            }
        }
        (aws, method)
    }

    /// Queues approval event `what` (`requested`, `approved`, ...) of approval `i` at boot
    /// time `at`: the entry is the call that raised the request when its record exists.
    fn push_approval_event(&mut self, i: usize, what: &str, at: u64) {
        let a = &self.approvals[i];
        let (mut rec, bare) = match &a.call {
            Some(c) => (c.clone(), false),
            None => {
                let ev = DecisionEvent {
                    tgid: a.tgid,
                    tid: a.tid,
                    uid: a.uid,
                    cgroup_id: a.cgroup_id,
                    conn: a.conn,
                    action: a.grant.action,
                    akid: a.grant.akid,
                    ..Default::default()
                };
                (self.bare_record(a.requested_boot_ns, &ev), true)
            }
        };
        let unix = self.clock.unix_ns(at);
        rec.time_ns = unix;
        rec.time = crate::record::rfc3339(unix);
        // The event is not the response: the call's own record holds that.
        rec.response = None;
        rec.duration_ms = None;
        rec.decision = Decision {
            effect: format!("approval:{what}"),
            rule: Some(a.rule.clone()),
            approval: Some(a.id),
        };
        rec.event = Some(a.event());
        self.events.push(TrailEvent { rec, bare });
    }

    fn rule_name(&self, slot: u32) -> Option<String> {
        let p = self.policy.as_ref()?;
        if slot >= ENDPOINT_RULE_BASE {
            return p
                .endpoints
                .get((slot - ENDPOINT_RULE_BASE) as usize)
                .map(|e| e.name.clone());
        }
        let kr = p.krules.get(slot as usize);
        match kr {
            Some(kr) => p.rules.get(kr.rule).map(|r| r.name.clone()),
            None => p.rules.get(slot as usize).map(|r| r.name.clone()),
        }
    }

    fn rule_of_slot(&self, slot: u32) -> Option<policy::CompiledRule> {
        let p = self.policy.as_ref()?;
        p.krules
            .get(slot as usize)
            .and_then(|kr| p.rules.get(kr.rule))
            .cloned()
    }
}

fn established_inodes() -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(t) = std::fs::read_to_string(f) else {
            continue;
        };
        for l in t.lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() > 9
                && cols[3] == "01"
                && let Ok(i) = cols[9].parse()
            {
                out.insert(i);
            }
        }
    }
    out
}

fn outcome_effect(o: u8) -> &'static str {
    match o {
        enf::OUT_AUDIT => "audit",
        enf::OUT_DENY => "deny",
        enf::OUT_WOULD_DENY => "would-deny",
        enf::OUT_KILL => "kill",
        enf::OUT_APPROVAL_REQUESTED | enf::OUT_HELD => "approval-requested",
        enf::OUT_APPROVED => "approved",
        _ => "allow",
    }
}

/// In-kernel decision time, summed over CPUs.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelStats {
    pub decisions: u64,
    pub decision_ns: u64,
    pub drops: u64,
    pub classified: u64,
    pub lost_events: u64,
    pub connect_denied: u64,
    pub socks_added: u64,
    pub socks_busy: u64,
    pub requests: u64,
    pub split_requests: u64,
    pub split_ns: u64,
}

impl State {
    pub fn kernel_stats(&self) -> KernelStats {
        let sum = |i: u32| -> u64 {
            self.stats_map
                .get(&i, 0)
                .map(|v| v.iter().sum())
                .unwrap_or_default()
        };
        KernelStats {
            decisions: sum(enf::STAT_DECISIONS),
            decision_ns: sum(enf::STAT_DECISION_NS),
            drops: sum(enf::STAT_DROPS),
            classified: sum(enf::STAT_CLASSIFIED),
            lost_events: sum(enf::STAT_LOST_EVENTS),
            connect_denied: sum(enf::STAT_CONNECT_DENIED),
            socks_added: sum(enf::STAT_SOCKS_ADDED),
            socks_busy: sum(enf::STAT_SOCKS_BUSY),
            requests: sum(enf::STAT_REQUESTS),
            split_requests: sum(enf::STAT_SPLIT_REQUESTS),
            split_ns: sum(enf::STAT_SPLIT_NS),
        }
    }

    /// Attaches sock_ops (once) when the policy has call rules, then adopts the sockets that
    /// were established before. Called after every apply.
    fn ensure_sockets(&mut self) {
        let needed = self.policy.as_ref().is_some_and(|p| !p.krules.is_empty());
        if !needed || self.sock_ops_link.is_some() {
            return;
        }
        match link_create(
            self.sock_ops_prog.as_fd().as_raw_fd(),
            self.cgroup_fd.as_raw_fd(),
            BPF_CGROUP_SOCK_OPS,
        ) {
            Ok(fd) => self.sock_ops_link = Some(fd),
            Err(e) => {
                error!(
                    "attach sock_ops to {}: {e}; calls cannot be blocked",
                    self.cgroup_root.display()
                );
                return;
            }
        }
        let (adopted, busy) = self.adopt_existing_sockets();
        info!(adopted, busy, "socket enforcement attached");
        if busy > 0 {
            warn!(
                busy,
                "established sockets already belong to another sk_msg program (a second enforcing \
                 agent on this host?): sends on them are not enforced by this agent"
            );
        }
    }

    /// Warns when sock_ops could not add new sockets (see `STAT_SOCKS_BUSY`).
    fn check_busy(&mut self) {
        if self.sock_ops_link.is_none() {
            return;
        }
        let busy = self.kernel_stats().socks_busy;
        if busy > self.busy_warned {
            warn!(
                new = busy - self.busy_warned,
                total = busy,
                "new sockets already belong to another sk_msg program (a second enforcing agent \
                 on this host?): sends on them are not enforced by this agent"
            );
            self.busy_warned = busy;
        }
    }
}

/// `BPF_CGROUP_SOCK_OPS` (uapi `enum bpf_attach_type`).
const BPF_CGROUP_SOCK_OPS: u32 = 3;

/// `bpf(BPF_LINK_CREATE)` for a cgroup program: the link detaches when the fd is closed.
fn link_create(prog_fd: i32, target_fd: i32, attach_type: u32) -> std::io::Result<OwnedFd> {
    const BPF_LINK_CREATE: libc::c_long = 28;
    // union bpf_attr, link_create: prog_fd, target_fd, attach_type, flags (u32 each).
    let mut attr = [0u32; 16];
    attr[0] = prog_fd as u32;
    attr[1] = target_fd as u32;
    attr[2] = attach_type;
    // SAFETY: a zeroed, large-enough bpf_attr; the result is checked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// Kernel enforcement counters as JSON (`GET /v1/enforce/stats`).
pub fn stats_json(state: &Shared) -> Value {
    let Ok(s) = state.lock() else {
        return json!({});
    };
    let k = s.kernel_stats();
    json!({
        "decisions": k.decisions,
        "decision_ns": k.decision_ns,
        "decision_ns_avg": if k.decisions > 0 { k.decision_ns as f64 / k.decisions as f64 } else { 0.0 },
        // A query request's head and body write are one request: its time is both writes'.
        "requests": k.requests,
        "decision_ns_per_request": if k.requests > 0 { k.decision_ns as f64 / k.requests as f64 } else { 0.0 },
        // Requests whose body came in a later write (both writes' time).
        "split_requests": k.split_requests,
        "split_ns": k.split_ns,
        "drops": k.drops,
        "classified": k.classified,
        "lost_events": k.lost_events,
        "connect_denied": k.connect_denied,
        "socks_added": k.socks_added,
        "socks_busy": k.socks_busy,
        "sock_ops_attached": s.sock_ops_link.is_some(),
        // Live approval grants in ENF_GRANTS (expired ones are removed within 0.5 s).
        "grants": s.maps.grants.keys().filter(|k| k.is_ok()).count(),
    })
}

impl Enforcer {
    /// Connects the identity resolver: its pod cache resolves Kubernetes selectors, its
    /// principal map the `principals` selectors (re-read when it learns keys, at least every
    /// second while a rule names principals). Called from the event loop.
    pub fn sync_identity(&mut self, id: &hoop_identity::Resolver) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st.pods.is_none() {
            st.set_pods(id.pods().clone());
        }
        let wants = st
            .policy
            .as_ref()
            .is_some_and(|p| p.rules.iter().any(|r| !r.principals.is_empty()));
        if !wants {
            return;
        }
        let n = id.principals().len();
        if n != self.principals_seen || self.principals_at.elapsed() > Duration::from_secs(1) {
            self.principals_seen = n;
            self.principals_at = std::time::Instant::now();
            st.set_principal_keys(id.principals().keys_with_arns());
        }
    }

    /// A process exec'd (from the exec tracepoint): see [`State::on_exec`].
    pub fn on_exec(&self, tgid: u32) {
        if let Ok(mut st) = self.state.lock() {
            st.on_exec(tgid);
        }
    }

    pub fn kernel_stats(&self) -> KernelStats {
        self.state
            .lock()
            .map(|s| s.kernel_stats())
            .unwrap_or_default()
    }

    /// Drains kernel decision events.
    /// A second descriptor on the decision ring, for the event loop to wait on.
    pub fn ring_fd(&self) -> Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.ring
            .as_fd()
            .try_clone_to_owned()
            .context("dup the decision ring descriptor")
    }

    pub fn poll(&mut self) {
        let mut evs = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= std::mem::size_of::<DecisionEvent>() {
                // SAFETY: POD read of a length-checked buffer.
                evs.push(unsafe {
                    std::ptr::read_unaligned(item.as_ptr().cast::<DecisionEvent>())
                });
            }
        }
        if evs.is_empty() {
            return;
        }
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        for ev in evs {
            if ev.kind == enf::KIND_CONNECT {
                let ip = std::net::Ipv6Addr::from(ev.addr);
                let ip = ip
                    .to_ipv4_mapped()
                    .map_or(ip.to_string(), |v4| v4.to_string());
                let mut rec = st.bare_record(ev.ts_ns, &ev);
                rec.decision = Decision {
                    effect: format!("endpoint:{}", outcome_effect(ev.outcome)),
                    rule: st.rule_name(ev.rule),
                    approval: None,
                };
                rec.event = Some(Event {
                    destination: Some(ip),
                    port: Some(ev.port),
                    ..Default::default()
                });
                st.events.push(TrailEvent { rec, bare: true });
                continue;
            }
            if ev.outcome == enf::OUT_APPROVAL_REQUESTED || ev.outcome == enf::OUT_HELD {
                let rule = st.rule_of_slot(ev.rule);
                let operation = st
                    .policy
                    .as_ref()
                    .and_then(|p| p.key_names.get(&ev.action))
                    .map(|(s, o)| format!("{s}:{o}"))
                    .unwrap_or_default();
                let id = st.next_id;
                st.next_id += 1;
                let a = Approval {
                    id,
                    rule: rule.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
                    state: ApprovalState::Pending,
                    held: ev.outcome == enf::OUT_HELD,
                    tgid: ev.tgid,
                    tid: ev.tid,
                    uid: ev.uid,
                    cgroup_id: ev.cgroup_id,
                    operation,
                    requested_at: crate::record::rfc3339(st.clock.unix_ns(ev.ts_ns)),
                    requested_boot_ns: ev.ts_ns,
                    decided_at: None,
                    decided_by: None,
                    grant_expires: None,
                    call: None,
                    grant: GrantKey {
                        akid: ev.akid,
                        action: ev.action,
                        res: ev.res,
                    },
                    ttl_secs: rule.as_ref().map_or(900, |r| r.grant_ttl_secs),
                    hold_timeout_secs: rule.as_ref().map_or(60, |r| r.hold_timeout_secs),
                    request_timeout_secs: rule.as_ref().map_or(900, |r| r.request_timeout_secs),
                    grant_exp_boot: 0,
                    decided_boot_ns: 0,
                    conn: ev.conn,
                    recorded: false,
                };
                let held = a.held;
                st.approvals.push(a);
                if held {
                    // The caller is stopped before its request is sent: the request is an
                    // event now; the call's record follows the decision. A refused
                    // (non-held) call's record comes first and carries the request event
                    // (see `recorded`).
                    let i = st.approvals.len() - 1;
                    st.push_approval_event(i, "requested", ev.ts_ns);
                }
            }
            self.queued
                .entry((ev.tgid, ev.conn))
                .or_default()
                .push_back(ev);
        }
    }

    /// Sets a record's decision from the kernel's decision for its request. A `Note` says
    /// what to call [`Enforcer::recorded`] with once the record is masked and stored.
    pub fn annotate(
        &mut self,
        rec: &mut CallRecord,
        tgid: u32,
        conn: u64,
        req_ts: u64,
        resp_ts: Option<u64>,
    ) -> Option<Note> {
        let q = self.queued.get_mut(&(tgid, conn))?;
        const SLACK: u64 = 50_000_000;
        while q
            .front()
            .is_some_and(|e| e.ts_ns + SLACK < req_ts && e.outcome != enf::OUT_HELD)
        {
            q.pop_front();
        }
        let ev = q.front().copied()?;
        if ev.ts_ns > resp_ts.unwrap_or(u64::MAX) {
            return None;
        }
        q.pop_front();
        if q.is_empty() {
            self.queued.remove(&(tgid, conn));
        }
        let Ok(mut st) = self.state.lock() else {
            return None;
        };
        let rule = st.rule_name(ev.rule);
        let mut effect = outcome_effect(ev.outcome).to_string();
        let mut note = None;
        match ev.outcome {
            enf::OUT_APPROVAL_REQUESTED | enf::OUT_HELD => {
                if let Some(a) = st.request_of(&ev) {
                    match a.state {
                        ApprovalState::Approved if a.held => effect = "approved".into(),
                        ApprovalState::Denied | ApprovalState::Expired if a.held => {
                            effect = "deny".into()
                        }
                        _ => {}
                    }
                    note = Some(Note::Requested(a.id));
                }
            }
            enf::OUT_APPROVED => {
                let grant = GrantKey {
                    akid: ev.akid,
                    action: ev.action,
                    res: ev.res,
                };
                note = st
                    .approvals
                    .iter()
                    .rev()
                    .find(|a| a.grant == grant && a.state == ApprovalState::Approved)
                    .map(|a| Note::Used(a.id));
            }
            _ => {}
        }
        rec.decision = Decision {
            effect,
            rule,
            approval: note.map(|(Note::Requested(id) | Note::Used(id))| id),
        };
        note
    }

    /// Called with a call's record once it is masked and stored, for the `Note` that
    /// [`Enforcer::annotate`] or [`Enforcer::expire`] gave: the approval keeps the call, and
    /// the trail gets the request (non-held) or the use of the grant as an event.
    pub fn recorded(&mut self, note: Note, rec: &CallRecord) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match note {
            Note::Requested(id) => {
                let Some(i) = st.approvals.iter().position(|a| a.id == id) else {
                    return;
                };
                st.approvals[i].call = Some(rec.clone());
                if !st.approvals[i].held {
                    let at = st.approvals[i].requested_boot_ns;
                    st.push_approval_event(i, "requested", at);
                }
            }
            Note::Used(id) => {
                let Some(i) = st.approvals.iter().position(|a| a.id == id) else {
                    return;
                };
                let a = &st.approvals[i];
                let mut e = rec.clone();
                e.response = None;
                e.duration_ms = None;
                e.decision = Decision {
                    effect: "approval:used".into(),
                    rule: Some(a.rule.clone()),
                    approval: Some(id),
                };
                e.event = Some(a.event());
                st.events.push(TrailEvent {
                    rec: e,
                    bare: false,
                });
            }
        }
    }

    /// Blocked requests whose plaintext never formed a complete exchange (the body write was
    /// dropped) still get a record, built from the kernel decision, after `GRACE`.
    pub fn expire(&mut self) -> Vec<(CallRecord, Option<Note>)> {
        const GRACE: u64 = 3_000_000_000;
        const KEEP: u64 = 60_000_000_000;
        let Ok(mut st) = self.state.lock() else {
            return Vec::new();
        };
        let now = st.clock.boot_now();
        let mut out = Vec::new();
        for q in self.queued.values_mut() {
            while let Some(ev) = q.front().copied() {
                let refused = matches!(
                    ev.outcome,
                    enf::OUT_DENY | enf::OUT_KILL | enf::OUT_APPROVAL_REQUESTED
                );
                // A held call is refused once its request is denied or expires: its stopped
                // write then resumes into a dropped send. Pending, it waits for the decision.
                let held = if ev.outcome == enf::OUT_HELD {
                    st.held_request(&ev)
                } else {
                    None
                };
                let due = match held {
                    Some(a) if a.state == ApprovalState::Pending => u64::MAX,
                    Some(a) if a.state != ApprovalState::Approved => a.decided_boot_ns + GRACE,
                    _ if refused => ev.ts_ns + GRACE,
                    _ => ev.ts_ns + KEEP,
                };
                let refused = refused || held.is_some_and(|a| a.state != ApprovalState::Approved);
                if due > now {
                    break;
                }
                q.pop_front();
                if !refused {
                    continue;
                }
                let mut rec = st.bare_record(ev.ts_ns, &ev);
                let note = if matches!(ev.outcome, enf::OUT_APPROVAL_REQUESTED | enf::OUT_HELD) {
                    st.request_of(&ev).map(|a| Note::Requested(a.id))
                } else {
                    None
                };
                rec.decision = Decision {
                    effect: if ev.outcome == enf::OUT_HELD {
                        "deny".into()
                    } else {
                        outcome_effect(ev.outcome).to_string()
                    },
                    rule: st.rule_name(ev.rule),
                    approval: note.map(|(Note::Requested(id) | Note::Used(id))| id),
                };
                out.push((rec, note));
            }
        }
        self.queued.retain(|_, q| !q.is_empty());
        out
    }

    /// Enforcement events produced since the last call (approvals, endpoint decisions).
    pub fn take_events(&mut self) -> Vec<TrailEvent> {
        self.state
            .lock()
            .map(|mut s| std::mem::take(&mut s.events))
            .unwrap_or_default()
    }
}

impl State {
    /// The held request a kernel decision raised, while its call has no record yet.
    fn held_request(&self, ev: &DecisionEvent) -> Option<&Approval> {
        self.approvals.iter().find(|a| {
            a.held
                && a.tgid == ev.tgid
                && a.conn == ev.conn
                && !a.recorded
                && a.requested_boot_ns == ev.ts_ns
        })
    }

    /// The approval request a kernel decision raised, marked as having its call record.
    fn request_of(&mut self, ev: &DecisionEvent) -> Option<&Approval> {
        let a = self.approvals.iter_mut().find(|a| {
            a.tgid == ev.tgid && a.conn == ev.conn && !a.recorded && a.requested_boot_ns == ev.ts_ns
        })?;
        a.recorded = true;
        Some(a)
    }
}

/// The line an enforcement event entry is printed as (stdout, `--output`):
/// `{"type":"approval","event":...}` or `{"type":"endpoint-decision",...}`.
pub fn output_line(rec: &CallRecord) -> Value {
    let e = rec.event.clone().unwrap_or_default();
    let p = &rec.process;
    let (kind, what) = rec
        .decision
        .effect
        .split_once(':')
        .unwrap_or(("", rec.decision.effect.as_str()));
    if kind == "endpoint" {
        return json!({
            "type": "endpoint-decision",
            "time": rec.time,
            "effect": what,
            "rule": rec.decision.rule,
            "pid": p.pid,
            "tid": p.tid,
            "uid": p.uid,
            "cgroup_id": p.cgroup_id,
            "destination": e.destination,
            "port": e.port,
        });
    }
    let state = match what {
        "requested" => "pending",
        "used" => "approved",
        w => w,
    };
    let operation = match (&rec.aws.service, &rec.aws.operation) {
        (s, Some(o)) if !s.is_empty() => format!("{s}:{o}"),
        _ => String::new(),
    };
    json!({
        "type": "approval",
        "event": what,
        "time": rec.time,
        "id": rec.decision.approval,
        "rule": rec.decision.rule,
        "state": state,
        "held": e.held,
        "pid": p.pid,
        "tid": p.tid,
        "uid": p.uid,
        "cgroup_id": p.cgroup_id,
        "operation": operation,
        "requested_at": e.requested_at,
        "decided_at": e.decided_at,
        "decided_by": e.decided_by,
        "grant_expires": e.grant_expires,
        "call": call_json(rec),
    })
}

/// Builds the approvals list for the API.
pub fn approvals_json(state: &Shared) -> Value {
    let list: Vec<Value> = state
        .lock()
        .map(|s| s.approvals.iter().map(Approval::to_json).collect())
        .unwrap_or_default();
    json!({ "approvals": list })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const UID_A: &str = "2a3b4c5d-1111-2222-3333-444455556666";
    const UID_B: &str = "9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff";
    const CID_A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn pod(
        uid: &str,
        ns: &str,
        sa: Option<&str>,
        labels: &[(&str, &str)],
        containers: &[&str],
    ) -> PodMeta {
        PodMeta {
            uid: uid.into(),
            namespace: ns.into(),
            name: format!("p-{ns}"),
            service_account: sa.map(str::to_string),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            container_ids: containers.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// A fake node: two pods (systemd and cgroupfs layouts) and a host service.
    fn node() -> (Arc<PodCache>, Vec<(String, u64)>) {
        let pods = Arc::new(PodCache::default());
        pods.upsert(pod(
            UID_A,
            "ai-agents",
            Some("runner"),
            &[("app", "llm"), ("tier", "x")],
            &[CID_A],
        ));
        pods.upsert(pod(UID_B, "default", None, &[("app", "web")], &[]));
        let ua = UID_A.replace('-', "_");
        let all = vec![
            ("/kubepods.slice".to_string(), 10),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{ua}.slice"
                ),
                11,
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{ua}.slice/cri-containerd-{CID_A}.scope"
                ),
                12,
            ),
            (format!("/kubepods/besteffort/pod{UID_B}"), 20),
            (
                format!("/kubepods/besteffort/pod{UID_B}/{}", "f".repeat(64)),
                21,
            ),
            ("/system.slice/ssh.service".to_string(), 30),
        ];
        (pods, all)
    }

    fn wl(y: &str) -> Workload {
        serde_yaml::from_str(y).unwrap_or_else(|e| panic!("{y}: {e}"))
    }

    fn ids(w: &Workload, pods: Option<&PodCache>) -> Vec<u64> {
        let (_, all) = node();
        resolve(w, &all, pods).0.into_iter().collect()
    }

    #[test]
    fn kubernetes_selectors_resolve_through_the_pod_cache() {
        let (pods, _) = node();
        let p = Some(&*pods);
        assert_eq!(ids(&wl("namespace: ai-agents"), p), vec![11, 12]);
        assert_eq!(
            ids(&wl("namespace: [\"ai-*\", default]"), p),
            vec![11, 12, 20, 21]
        );
        assert_eq!(ids(&wl("pod_labels: {app: llm}"), p), vec![11, 12]);
        assert_eq!(
            ids(&wl("labels: {app: llm, tier: y}"), p),
            Vec::<u64>::new()
        );
        assert_eq!(ids(&wl("service_account: runner"), p), vec![11, 12]);
        // No serviceAccountName: the pod runs as `default`.
        assert_eq!(ids(&wl("service_account: default"), p), vec![20, 21]);
        // All selectors must hold.
        assert_eq!(
            ids(&wl("{namespace: default, pod_labels: {app: llm}}"), p),
            Vec::<u64>::new()
        );
        assert_eq!(
            ids(
                &wl("{namespace: ai-agents, cgroup: /kubepods.slice/kubepods-burstable.slice}"),
                p
            ),
            vec![11, 12]
        );
        assert_eq!(
            ids(
                &wl("{namespace: ai-agents, container: 0123456789abcdef}"),
                p
            ),
            vec![12]
        );
        // Without a pod cache (not in a cluster) they select nothing, never everything.
        assert_eq!(ids(&wl("namespace: ai-agents"), None), Vec::<u64>::new());
        // A pod that appears later is picked up by the next resolution.
        let uc = "11111111-2222-3333-4444-555555555555";
        pods.upsert(pod(uc, "ai-agents", None, &[], &[]));
        let mut all = node().1;
        all.push((format!("/kubepods/pod{uc}"), 40));
        let got: Vec<u64> = resolve(&wl("namespace: ai-agents"), &all, p)
            .0
            .into_iter()
            .collect();
        assert_eq!(got, vec![11, 12, 40]);
    }

    #[test]
    fn pod_found_by_container_id_when_the_path_has_no_pod_uid() {
        let pods = PodCache::default();
        pods.upsert(pod(UID_A, "ai-agents", None, &[], &[CID_A]));
        let all = vec![(format!("/system.slice/docker-{CID_A}.scope"), 5)];
        let got: Vec<u64> = resolve(&wl("namespace: ai-agents"), &all, Some(&pods))
            .0
            .into_iter()
            .collect();
        assert_eq!(got, vec![5]);
    }

    fn rule(keys: &[&str], principals: &[&str]) -> policy::CompiledRule {
        policy::CompiledRule {
            name: "r".into(),
            effect: policy::Effect::Deny,
            hold: false,
            grant_ttl_secs: 0,
            hold_timeout_secs: 0,
            request_timeout_secs: 0,
            workload: Workload::default(),
            access_keys: keys.iter().map(|k| k.to_string()).collect(),
            principals: principals.iter().map(|k| k.to_string()).collect(),
            operations: Vec::new(),
        }
    }

    #[test]
    fn principals_are_enforced_through_their_known_keys() {
        let pm = hoop_identity::principal::PrincipalMap::new(
            hoop_identity::principal::PrincipalConfig {
                static_keys: BTreeMap::from([
                    (
                        "AKIAAGENT0000000001".to_string(),
                        "arn:aws:iam::123456789012:role/agent-a".to_string(),
                    ),
                    (
                        "AKIAHUMAN0000000001".to_string(),
                        "arn:aws:iam::123456789012:user/alice".to_string(),
                    ),
                ])
                .into_iter()
                .collect(),
                ..Default::default()
            },
        );
        let mut known = pm.keys_with_arns();
        known.push((
            "ASIASESSION00000001".into(),
            "arn:aws:sts::123456789012:assumed-role/agent-b/session-1".into(),
        ));
        let r = rule(&[], &["arn:aws:iam::*:role/agent-*"]);
        let got = rule_keys(&r, &known);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec![
                "AKIAAGENT0000000001".to_string(),
                "ASIASESSION00000001".to_string()
            ]
        );
        // Session ARNs match directly too.
        let r = rule(&[], &["arn:aws:sts::*:assumed-role/agent-b/*"]);
        assert_eq!(rule_keys(&r, &known).len(), 1);
        // Both given: keys that satisfy both.
        let r = rule(
            &["AKIAHUMAN0000000001", "AKIAAGENT0000000001"],
            &["*:role/agent-*"],
        );
        assert_eq!(
            rule_keys(&r, &known).into_iter().collect::<Vec<_>>(),
            vec!["AKIAAGENT0000000001".to_string()]
        );
        // No principal known yet: the rule has no keys (matches nothing until one is learned).
        assert!(rule_keys(&rule(&[], &["arn:aws:iam::*:role/other"]), &known).is_empty());
        // access_keys alone.
        assert_eq!(rule_keys(&rule(&["AKIAX0000000000001"], &[]), &[]).len(), 1);
    }

    #[test]
    fn assumed_role_forms() {
        assert_eq!(
            principal_forms("arn:aws:sts::123456789012:assumed-role/ci/s1"),
            vec![
                "arn:aws:sts::123456789012:assumed-role/ci/s1",
                "arn:aws:iam::123456789012:role/ci"
            ]
        );
        assert_eq!(
            principal_forms("arn:aws:iam::1:user/u"),
            vec!["arn:aws:iam::1:user/u"]
        );
    }

    #[test]
    fn endpoint_entries_carry_every_rule_that_covers_them() {
        let c = policy::compile_str(
            r#"
rules:
  - name: link-local
    effect: deny
    match: {endpoints: ["169.254.0.0/16"], uid: 1000}
  - name: imds-audit
    effect: audit
    match: {endpoints: ["169.254.169.254"], ports: [80, 443]}
  - name: ssh-imds
    effect: deny
    match: {endpoints: ["169.254.169.254"], cgroup: /system.slice/ssh.service}
endpoints:
  - name: curl-imds
    cidrs: ["fd00:ec2::254"]
    match: {exe: /nonexistent/hoop-test-exe}
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (pods, all) = node();
        let (eps, pids) = endpoint_plan(&c, &all, Some(&*pods));
        let imds = policy::net_v6(&"169.254.169.254".parse().expect("ip"), 32);
        let ll = policy::net_v6(&"169.254.0.0".parse().expect("ip"), 16);
        let rules = |k: &EpKey| -> Vec<(u32, u8, u32, [u16; 4])> {
            let v = &eps[k];
            v.refs[..v.n as usize]
                .iter()
                .map(|r| (r.rule, r.effect, r.uid, r.ports))
                .collect()
        };
        // Every cgroup, /32: its own audit rule and the /16 deny (the trie returns only the
        // /32 entry), in policy order.
        assert_eq!(
            rules(&(64 + imds.1, [0; 8], imds.0)),
            vec![
                (ENDPOINT_RULE_BASE, enf::EFFECT_DENY, 1000, [0; 4]),
                (
                    ENDPOINT_RULE_BASE + 1,
                    enf::EFFECT_AUDIT,
                    u32::MAX,
                    [80, 443, 0, 0]
                ),
            ]
        );
        assert_eq!(rules(&(64 + ll.1, [0; 8], ll.0)).len(), 1);
        // The cgroup-scoped rule has its own key (the kernel looks up both keys).
        assert_eq!(
            rules(&(64 + imds.1, 30u64.to_ne_bytes(), imds.0)),
            vec![(ENDPOINT_RULE_BASE + 2, enf::EFFECT_DENY, u32::MAX, [0; 4])]
        );
        // exe: every cgroup, checked through the tgid mask (no process runs that file).
        let v6 = policy::net_v6(&"fd00:ec2::254".parse().expect("ip"), 128);
        let r = eps[&(64 + v6.1, [0; 8], v6.0)].refs[0];
        assert_eq!((r.index, r.flags), (3, enf::EPF_PID));
        assert!(pids.is_empty());
        assert_eq!(eps.len(), 4);
    }
}
