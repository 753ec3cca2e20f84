//! The facade the agent calls: one event → (Process, Workload, Identity).

use crate::cgroup::{self, CgroupResolver};
use crate::k8s::{K8sConfig, K8sError, PodCache, PodWatcher};
use crate::principal::{PrincipalConfig, PrincipalMap, Source};
use crate::process::{ProcInfo, ProcessCache, ProcessConfig, SelectorError};
use hoop_event::{Identity, Process, Workload};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// All identity settings (`identity` in the agent config).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct IdentityConfig {
    pub process: ProcessConfig,
    pub kubernetes: K8sConfig,
    pub principals: PrincipalConfig,
    /// cgroup2 mount override; detected from /proc/self/mountinfo when absent.
    pub cgroup2_mount: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Selector(#[from] SelectorError),
    #[error(transparent)]
    Kubernetes(#[from] K8sError),
}

/// Process, workload and principal resolution. `Send + Sync`; share behind an `Arc`.
#[derive(Debug)]
pub struct Resolver {
    processes: ProcessCache,
    cgroups: CgroupResolver,
    pods: Arc<PodCache>,
    watcher: Option<PodWatcher>,
    principals: PrincipalMap,
}

impl Resolver {
    /// Builds the caches and, when in a cluster (or `kubernetes.api_url` is set), starts the
    /// pod watcher thread. Outside a cluster the pod cache stays empty.
    pub fn new(cfg: IdentityConfig) -> Result<Self, IdentityError> {
        let cgroups = match cfg.cgroup2_mount.clone() {
            Some(m) => CgroupResolver::with_mount(Some(m), "/".into()),
            None => CgroupResolver::new(),
        };
        let watcher = PodWatcher::start(&cfg.kubernetes)?;
        let pods = watcher
            .as_ref()
            .map(PodWatcher::cache)
            .unwrap_or_else(|| Arc::new(PodCache::default()));
        Ok(Resolver {
            processes: ProcessCache::new(cfg.process)?,
            cgroups,
            pods,
            watcher,
            principals: PrincipalMap::new(cfg.principals),
        })
    }

    /// Assembles a resolver from parts (tests, or an agent that wants its own pod source).
    pub fn from_parts(
        processes: ProcessCache,
        cgroups: CgroupResolver,
        pods: Arc<PodCache>,
        principals: PrincipalMap,
    ) -> Self {
        Resolver {
            processes,
            cgroups,
            pods,
            watcher: None,
            principals,
        }
    }

    pub fn processes(&self) -> &ProcessCache {
        &self.processes
    }

    pub fn principals(&self) -> &PrincipalMap {
        &self.principals
    }

    pub fn pods(&self) -> &Arc<PodCache> {
        &self.pods
    }

    pub fn cgroups(&self) -> &CgroupResolver {
        &self.cgroups
    }

    /// Whether the pod watcher runs (we are in a cluster).
    pub fn kubernetes_enabled(&self) -> bool {
        self.watcher.is_some()
    }

    /// Exec tracepoint event.
    pub fn on_exec(&self, tgid: u32, ppid: u32, filename: &str) {
        self.processes.on_exec(tgid, ppid, filename);
    }

    /// Exit tracepoint event with `group_dead` set.
    pub fn on_exit(&self, tgid: u32) {
        self.processes.on_exit(tgid);
    }

    /// Periodic housekeeping (e.g. every 10 s): evicts exited processes past their grace and
    /// expired keys past theirs.
    pub fn sweep(&self) {
        self.processes.sweep();
        self.principals.sweep(crate::now_unix());
    }

    /// Who made a call: `tgid`/`tid` and `cgroup_id` from the probe, `access_key_id` from the
    /// request's SigV4 credential (None when unsigned).
    pub fn resolve(
        &self,
        tgid: u32,
        tid: u32,
        cgroup_id: u64,
        access_key_id: Option<&str>,
    ) -> (Process, Workload, Identity) {
        let (mut process, info) = match self.processes.describe(tgid, tid) {
            Some((p, info)) => (p, Some(info)),
            None => (
                Process {
                    pid: tgid,
                    tid,
                    ..Default::default()
                },
                None,
            ),
        };
        process.cgroup_id = cgroup_id;
        // The probe's cgroup id is what the process was in at call time; /proc's path is the
        // fallback when the id is unknown (0) or its cgroup is gone.
        if cgroup_id != 0
            && let Some(path) = self.cgroups.path_of(cgroup_id)
        {
            process.cgroup = Some(path);
        }
        let workload = self.workload(process.cgroup.as_deref());
        let identity = self.identity(access_key_id, info.as_deref());
        (process, workload, identity)
    }

    /// The workload of a cgroup path (container, pod or host).
    pub fn workload(&self, cgroup_path: Option<&str>) -> Workload {
        let info = cgroup_path
            .map(cgroup::parse_cgroup_path)
            .unwrap_or_default();
        let pod = info
            .pod_uid
            .as_deref()
            .and_then(|u| self.pods.by_uid(u))
            .or_else(|| {
                info.container_id
                    .as_deref()
                    .and_then(|c| self.pods.by_container(c))
            });
        let mut w = Workload {
            kind: "host".into(),
            container_id: info.container_id,
            runtime: info.runtime,
            pod_uid: info.pod_uid,
            ..Default::default()
        };
        if w.container_id.is_some() {
            w.kind = "container".into();
        }
        if let Some(p) = pod {
            w.kind = "pod".into();
            w.pod_uid = Some(p.uid.clone());
            w.namespace = Some(p.namespace.clone());
            w.pod = Some(p.name.clone());
            w.service_account = p.service_account.clone();
            w.labels = p.labels.clone();
        }
        w
    }

    fn identity(&self, access_key_id: Option<&str>, info: Option<&ProcInfo>) -> Identity {
        if let Some(p) = access_key_id.and_then(|k| self.principals.lookup(k)) {
            return p.to_identity();
        }
        let mut id = Identity {
            access_key_id: access_key_id.map(str::to_string),
            ..Default::default()
        };
        // An unknown key from a process configured for IRSA is most likely that role's web
        // identity session; say so, marked with its source.
        if access_key_id.is_some()
            && let Some(arn) = info.and_then(|i| i.irsa.as_ref()?.role_arn.clone())
        {
            id.account_id = crate::principal::account_of_arn(&arn);
            id.principal_arn = Some(arn);
            id.source = Some(Source::Irsa.as_str().to_string());
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::PodMeta;
    use std::process::Command;

    #[test]
    fn resolves_a_host_process_with_a_learned_principal() {
        let r = Resolver::new(IdentityConfig::default()).expect("resolver");
        assert!(!r.kubernetes_enabled() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some());
        let body = "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult><AssumedRoleUser><AssumedRoleId>AROA:s</AssumedRoleId><Arn>arn:aws:sts::123456789012:assumed-role/r/s</Arn></AssumedRoleUser><Credentials><AccessKeyId>ASIARESOLVEREXAMPLE1</AccessKeyId><SecretAccessKey>x</SecretAccessKey><SessionToken>y</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>";
        r.principals()
            .learn_sts(None, 200, body.as_bytes())
            .expect("learn");
        // Long-lived so a slow machine cannot let it exit before the exec is read; killed
        // once read, to show attribution outliving the process.
        let mut child = Command::new("sleep").arg("30").spawn().expect("spawn");
        let pid = child.id();
        crate::process::wait_exec_done(pid);
        r.on_exec(pid, std::process::id(), "/usr/bin/sleep");
        child.kill().expect("kill");
        child.wait().expect("wait");
        r.on_exit(pid);
        let (p, w, i) = r.resolve(pid, pid, 0, Some("ASIARESOLVEREXAMPLE1"));
        assert_eq!(p.comm, "sleep");
        assert_eq!(p.cmdline.as_deref(), Some("sleep 30"));
        assert_eq!(w.kind, "host");
        assert_eq!(
            i.principal_arn.as_deref(),
            Some("arn:aws:sts::123456789012:assumed-role/r/s")
        );
        assert_eq!(i.account_id.as_deref(), Some("123456789012"));
        assert_eq!(i.expires.as_deref(), Some("2099-01-01T00:00:00Z"));

        let (_, _, unknown) = r.resolve(pid, pid, 0, Some("AKIAUNKNOWNEXAMPLE01"));
        assert_eq!(unknown.key(), "AKIAUNKNOWNEXAMPLE01");
        assert_eq!(unknown.source, None);
        let (gone, w, _) = r.resolve(u32::MAX - 3, 1, 0, None);
        assert_eq!(gone.pid, u32::MAX - 3);
        assert_eq!(w.kind, "host");
    }

    #[test]
    fn cgroup_id_maps_to_path_and_pods_to_workloads() {
        let r = Resolver::from_parts(
            ProcessCache::new(ProcessConfig::default()).expect("cache"),
            CgroupResolver::new(),
            Arc::new(PodCache::default()),
            PrincipalMap::new(PrincipalConfig::default()),
        );
        // Our own cgroup id → our own path.
        if let Some(mount) = r.cgroups().mount().map(|m| m.to_path_buf()) {
            use std::os::unix::fs::MetadataExt;
            let own = std::fs::read_to_string("/proc/self/cgroup").expect("cg");
            let own = cgroup::unified_path(&own).expect("0::").to_string();
            let ino = std::fs::metadata(mount.join(own.trim_start_matches('/')))
                .expect("dir")
                .ino();
            let me = std::process::id();
            let (p, _, _) = r.resolve(me, me, ino, None);
            assert_eq!(p.cgroup.as_deref(), Some(own.as_str()));
            assert_eq!(p.cgroup_id, ino);
        }
        let id = "c".repeat(64);
        let uid = "8f3c2a1e-5b6d-4e7f-9a0b-1c2d3e4f5a6b";
        let path = format!("/kubepods/burstable/pod{uid}/{id}");
        let w = r.workload(Some(&path));
        assert_eq!(w.kind, "container");
        assert_eq!(w.container_id.as_deref(), Some(id.as_str()));
        assert_eq!(w.pod_uid.as_deref(), Some(uid));
        r.pods().upsert(PodMeta {
            uid: uid.into(),
            namespace: "agents".into(),
            name: "claude-7d9f".into(),
            service_account: Some("agent-sa".into()),
            labels: [("app".to_string(), "claude".to_string())].into(),
            container_ids: vec![id.clone()],
        });
        let w = r.workload(Some(&path));
        assert_eq!(w.kind, "pod");
        assert_eq!(w.name(), "agents/claude-7d9f");
        assert_eq!(w.service_account.as_deref(), Some("agent-sa"));
        // By container id alone (cgroup namespace hides the pod part).
        let w = r.workload(Some(&format!("/{id}")));
        assert_eq!(w.pod.as_deref(), Some("claude-7d9f"));
    }

    #[test]
    fn a_process_in_its_own_cgroup_gets_its_container_id() {
        // Needs a writable cgroup2 mount (root); skipped elsewhere.
        let Some(mount) = cgroup::find_cgroup2_mount() else {
            return;
        };
        let id = format!("{:064x}", u128::from(std::process::id()) << 64 | 0xfeed);
        let parent = mount.join(format!("hoop-identity-test-{}", std::process::id()));
        let dir = parent.join(format!("docker-{id}.scope"));
        if std::fs::create_dir_all(&dir).is_err() {
            eprintln!("cannot create a cgroup; skipping");
            return;
        }
        let mut child = Command::new("sleep").arg("5").spawn().expect("spawn");
        let pid = child.id();
        let moved = std::fs::write(dir.join("cgroup.procs"), pid.to_string());
        if moved.is_ok() {
            use std::os::unix::fs::MetadataExt;
            let ino = std::fs::metadata(&dir).expect("dir").ino();
            let r = Resolver::new(IdentityConfig::default()).expect("resolver");
            // By the probe's cgroup id, and by /proc alone (cgroup id 0).
            for cg in [ino, 0] {
                let (p, w, _) = r.resolve(pid, pid, cg, None);
                assert_eq!(w.kind, "container", "cgroup id {cg}: {p:?}");
                assert_eq!(w.container_id.as_deref(), Some(id.as_str()));
                assert_eq!(w.runtime.as_deref(), Some("docker"));
                assert!(p.cgroup.as_deref().is_some_and(|c| c.ends_with(".scope")));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        // The cgroup is empty once the child is reaped.
        for _ in 0..50 {
            if std::fs::remove_dir(&dir).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&parent);
        moved.expect("move into cgroup");
    }

    #[test]
    fn irsa_role_is_a_marked_fallback() {
        let r = Resolver::new(IdentityConfig::default()).expect("resolver");
        let info = ProcInfo {
            irsa: Some(crate::principal::IrsaEnv {
                role_arn: Some("arn:aws:iam::123456789012:role/irsa".into()),
                web_identity_token_file: None,
            }),
            ..Default::default()
        };
        let id = r.identity(Some("ASIAUNKNOWNEXAMPLE01"), Some(&info));
        assert_eq!(
            id.principal_arn.as_deref(),
            Some("arn:aws:iam::123456789012:role/irsa")
        );
        assert_eq!(id.source.as_deref(), Some("irsa"));
        assert_eq!(id.account_id.as_deref(), Some("123456789012"));
        assert_eq!(r.identity(None, Some(&info)).principal_arn, None);
    }
}
