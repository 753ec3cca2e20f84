//! Containers from cgroup paths, and cgroup ids (what `bpf_get_current_cgroup_id` returns:
//! the inode number of the cgroup v2 directory) back to paths.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a cgroup path says about the container it belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupInfo {
    pub container_id: Option<String>,
    /// `containerd`, `cri-o`, `docker`, `podman`, `systemd`.
    pub runtime: Option<String>,
    /// Kubernetes pod UID, dashed form.
    pub pod_uid: Option<String>,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Container ids are long lowercase hex strings (64 for every runtime we know).
fn container_id(s: &str) -> Option<&str> {
    (s.len() >= 32 && s.len() <= 128 && is_hex(s)).then_some(s)
}

/// A pod UID: a dashed UUID, or the 32-hex config hash of a static pod.
fn pod_uid(s: &str) -> Option<String> {
    let s = s.replace('_', "-");
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let dashed_ok = s.len() == 36 && s.bytes().filter(|b| *b == b'-').count() == 4;
    let plain_ok = s.len() == 32;
    ((dashed_ok || plain_ok) && hex.len() == 32 && is_hex(&hex)).then_some(s)
}

/// `(prefix, runtime)` of systemd scope units that wrap a container id.
const SCOPE_PREFIXES: &[(&str, &str)] = &[
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("docker-", "docker"),
    ("libpod-", "podman"),
    ("nerdctl-", "containerd"),
];

/// One path component → container id and runtime, if it names a container.
fn component_container(c: &str, in_kubepods: bool, parent: &str) -> Option<(String, &'static str)> {
    // containerd's systemd cgroupsPath form leaking into the path: `<slice>:cri-containerd:<id>`.
    if let Some((_, rest)) = c.split_once(":cri-containerd:") {
        return container_id(rest).map(|id| (id.to_string(), "containerd"));
    }
    let unit = c.strip_suffix(".scope").unwrap_or(c);
    for (prefix, runtime) in SCOPE_PREFIXES {
        if let Some(rest) = unit.strip_prefix(prefix) {
            // `crio-conmon-<id>` / `libpod-conmon-<id>` hold the runtime monitor, not the
            // container; the id check rejects them.
            return container_id(rest).map(|id| (id.to_string(), *runtime));
        }
    }
    // systemd-nspawn / machined containers.
    if let Some(rest) = c
        .strip_prefix("machine-")
        .and_then(|r| r.strip_suffix(".scope"))
        && !rest.is_empty()
    {
        // Only printable ASCII names: ids are sliced by byte elsewhere, and a delegated
        // subtree lets unprivileged users name cgroups.
        let name = unescape_systemd(rest);
        if name.len() <= 128 && name.bytes().all(|b| b.is_ascii_graphic()) {
            return Some((name, "systemd"));
        }
        return None;
    }
    // cgroupfs driver: the bare id under its parent.
    let id = container_id(c)?;
    let runtime = if parent == "docker" {
        "docker"
    } else if in_kubepods {
        "containerd"
    } else if parent == "libpod_parent" {
        "podman"
    } else {
        // `/ecs/<task>/<id>`, `/actions_job/<id>` and other docker-managed trees.
        "docker"
    };
    Some((id.to_string(), runtime))
}

/// systemd escapes `-` and other bytes in unit names as `\xNN`.
fn unescape_systemd(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && let Some(v) = s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Pod UID from one component: `pod<uid>` (cgroupfs) or `kubepods[-qos]-pod<uid_>.slice`.
fn component_pod(c: &str) -> Option<String> {
    if let Some(rest) = c.strip_prefix("pod") {
        return pod_uid(rest);
    }
    if c.starts_with("kubepods") {
        let unit = c.strip_suffix(".slice")?;
        let (_, uid) = unit.rsplit_once("-pod")?;
        return pod_uid(uid);
    }
    None
}

/// Parses a cgroup path (as in `/proc/PID/cgroup` after `0::`) into container id, runtime and
/// pod UID. The innermost container wins (docker-in-docker).
pub fn parse_cgroup_path(path: &str) -> CgroupInfo {
    let mut info = CgroupInfo::default();
    let mut in_kubepods = false;
    let mut parent = "";
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if c.starts_with("kubepods") {
            in_kubepods = true;
        }
        if let Some(uid) = component_pod(c) {
            info.pod_uid = Some(uid);
        } else if let Some((id, runtime)) = component_container(c, in_kubepods, parent) {
            info.container_id = Some(id);
            info.runtime = Some(runtime.to_string());
        }
        parent = c;
    }
    info
}

/// The cgroup v2 line (`0::/path`) of a `/proc/PID/cgroup` file.
pub fn unified_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim_end)
}

/// The path that names the process's workload in a `/proc/PID/cgroup` file: the cgroup v2
/// line; on a cgroup-v1-only host (no `0::` line), the first v1 hierarchy that places the
/// process in a container (`12:memory:/docker/<id>`). Hybrid hosts keep the v2 line: their
/// v1 hierarchies may be arranged by something else than the container runtime.
pub fn workload_path(proc_cgroup: &str) -> Option<&str> {
    if let Some(v2) = unified_path(proc_cgroup) {
        return Some(v2);
    }
    proc_cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .map(str::trim_end)
        .find(|p| parse_cgroup_path(p).container_id.is_some())
}

/// Undo the octal escapes (`\040` for space...) of /proc/self/mountinfo fields.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mount in a mountinfo text: `(mount point, root of the mount within the
/// hierarchy)`. The root is not `/` when the agent runs in a cgroup namespace.
pub fn find_cgroup2_mount_in(mountinfo: &str) -> Option<(PathBuf, String)> {
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let f: Vec<&str> = pre.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        return Some((
            PathBuf::from(unescape_mountinfo(f[4])),
            unescape_mountinfo(f[3]),
        ));
    }
    None
}

/// Finds where cgroup v2 is mounted, from `/proc/self/mountinfo`.
pub fn find_cgroup2_mount() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    find_cgroup2_mount_in(&text).map(|(p, _)| p)
}

/// Maps cgroup ids to cgroup paths by walking the cgroup2 mount. Walks are cached and a miss
/// re-walks at most once per `rewalk_interval`, so an unknown id cannot make us walk per event.
#[derive(Debug)]
pub struct CgroupResolver {
    mount: Option<PathBuf>,
    /// Prefix prepended to paths when the mount is not the hierarchy root.
    root: String,
    rewalk_interval: Duration,
    state: Mutex<ResolverState>,
}

#[derive(Debug, Default)]
struct ResolverState {
    by_id: HashMap<u64, String>,
    last_walk: Option<Instant>,
}

/// Bounds the walk: a host has thousands of cgroups, not millions.
const MAX_WALK_ENTRIES: usize = 200_000;
const MAX_WALK_DEPTH: usize = 32;

impl CgroupResolver {
    /// Detects the cgroup2 mount; without one every lookup misses.
    pub fn new() -> Self {
        let found = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|t| find_cgroup2_mount_in(&t));
        match found {
            Some((mount, root)) => Self::with_mount(Some(mount), root),
            None => Self::with_mount(None, "/".into()),
        }
    }

    /// A resolver over a given mount (tests, or a configured override).
    pub fn with_mount(mount: Option<PathBuf>, root: String) -> Self {
        CgroupResolver {
            mount,
            root,
            rewalk_interval: Duration::from_secs(1),
            state: Mutex::new(ResolverState::default()),
        }
    }

    pub fn mount(&self) -> Option<&Path> {
        self.mount.as_deref()
    }

    /// The cgroup path (`/kubepods.slice/...`, `/` for the root) of a cgroup id.
    pub fn path_of(&self, id: u64) -> Option<String> {
        let mount = self.mount.as_ref()?;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = st.by_id.get(&id) {
            return Some(p.clone());
        }
        if st
            .last_walk
            .is_some_and(|t| t.elapsed() < self.rewalk_interval)
        {
            return None;
        }
        st.last_walk = Some(Instant::now());
        // Forget removed cgroups; ids are never reused while the inode lives.
        st.by_id.clear();
        let mut stack = vec![(mount.clone(), 0usize)];
        let mut seen = 0usize;
        while let Some((dir, depth)) = stack.pop() {
            let Ok(md) = fs::metadata(&dir) else { continue };
            let rel = dir.strip_prefix(mount).unwrap_or(Path::new(""));
            let rel = rel.to_string_lossy();
            let path = join_root(&self.root, &rel);
            st.by_id.insert(md.ino(), path);
            seen += 1;
            if seen >= MAX_WALK_ENTRIES || depth >= MAX_WALK_DEPTH {
                continue;
            }
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
        st.by_id.get(&id).cloned()
    }
}

impl Default for CgroupResolver {
    fn default() -> Self {
        Self::new()
    }
}

fn join_root(root: &str, rel: &str) -> String {
    let root = root.trim_end_matches('/');
    if rel.is_empty() {
        if root.is_empty() {
            "/".into()
        } else {
            root.into()
        }
    } else {
        format!("{root}/{rel}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4c2e1b9f0a7d3e5c6b8a9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";
    const UID: &str = "8f3c2a1e-5b6d-4e7f-9a0b-1c2d3e4f5a6b";

    fn check(path: &str, id: Option<&str>, runtime: Option<&str>, pod: Option<&str>) {
        let i = parse_cgroup_path(path);
        assert_eq!(i.container_id.as_deref(), id, "{path}");
        assert_eq!(i.runtime.as_deref(), runtime, "{path}");
        assert_eq!(i.pod_uid.as_deref(), pod, "{path}");
    }

    #[test]
    fn containerd_cgroupfs() {
        check(
            &format!("/kubepods/burstable/pod{UID}/{ID}"),
            Some(ID),
            Some("containerd"),
            Some(UID),
        );
        check(
            &format!("/kubepods/pod{UID}/{ID}"),
            Some(ID),
            Some("containerd"),
            Some(UID),
        );
        check(
            &format!("/kubepods/besteffort/pod{UID}"),
            None,
            None,
            Some(UID),
        );
    }

    #[test]
    fn containerd_systemd_slice() {
        let u = UID.replace('-', "_");
        check(
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
            ),
            Some(ID),
            Some("containerd"),
            Some(UID),
        );
        check(
            &format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"),
            Some(ID),
            Some("containerd"),
            Some(UID),
        );
        check(
            &format!(
                "/system.slice/containerd.service/kubepods-besteffort-pod{u}.slice:cri-containerd:{ID}"
            ),
            Some(ID),
            Some("containerd"),
            None,
        );
    }

    #[test]
    fn crio() {
        let u = UID.replace('-', "_");
        check(
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope"
            ),
            Some(ID),
            Some("cri-o"),
            Some(UID),
        );
        // conmon is the runtime monitor, not the container.
        check(
            &format!("/kubepods.slice/kubepods-pod{u}.slice/crio-conmon-{ID}.scope"),
            None,
            None,
            Some(UID),
        );
        check(
            &format!("/kubepods/burstable/pod{UID}/crio-{ID}"),
            Some(ID),
            Some("cri-o"),
            Some(UID),
        );
    }

    #[test]
    fn docker_and_podman() {
        check(&format!("/docker/{ID}"), Some(ID), Some("docker"), None);
        check(
            &format!("/system.slice/docker-{ID}.scope"),
            Some(ID),
            Some("docker"),
            None,
        );
        check(
            &format!("/system.slice/docker-{ID}.scope/init.scope"),
            Some(ID),
            Some("docker"),
            None,
        );
        check(
            &format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
            ),
            Some(ID),
            Some("podman"),
            None,
        );
        check(
            &format!("/machine.slice/libpod-{ID}.scope"),
            Some(ID),
            Some("podman"),
            None,
        );
        check(
            &format!("/libpod_parent/libpod-{ID}"),
            Some(ID),
            Some("podman"),
            None,
        );
        check(
            &format!("/system.slice/nerdctl-{ID}.scope"),
            Some(ID),
            Some("containerd"),
            None,
        );
        // docker-in-docker: the innermost wins.
        let inner = "a".repeat(64);
        check(
            &format!("/docker/{ID}/docker/{inner}"),
            Some(&inner),
            Some("docker"),
            None,
        );
        check(
            "/machine.slice/machine-web\\x2d1.scope",
            Some("web-1"),
            Some("systemd"),
            None,
        );
    }

    #[test]
    fn machine_names_must_be_printable_ascii() {
        check(
            "/machine.slice/machine-\\xc3\\xa9t\\xc3\\xa9.scope",
            None,
            None,
            None,
        );
        check("/machine.slice/machine-a b.scope", None, None, None);
    }

    #[test]
    fn static_pod_hash_uid() {
        let hash = "6d3b3f0b8e3e8e6a1c2d3e4f5a6b7c8d";
        check(
            &format!("/kubepods/burstable/pod{hash}/{ID}"),
            Some(ID),
            Some("containerd"),
            Some(hash),
        );
    }

    #[test]
    fn host_paths() {
        for p in [
            "/",
            "",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/sshd.service",
            "/init.scope",
        ] {
            check(p, None, None, None);
        }
        // junk never panics
        for p in [
            "/docker-",
            "/kubepods-pod.slice",
            "/pod",
            "\\x",
            "/machine-\\x.scope",
            "/é/ü\\xzz",
        ] {
            let _ = parse_cgroup_path(p);
        }
    }

    #[test]
    fn unified_line() {
        let text = "12:pids:/\n1:name=systemd:/x\n0::/system.slice/docker-abc.scope\n";
        assert_eq!(unified_path(text), Some("/system.slice/docker-abc.scope"));
        assert_eq!(unified_path("1:cpu:/\n"), None);
    }

    #[test]
    fn v1_only_hosts_name_the_container_from_a_v1_hierarchy() {
        let id = "3f4e0bd3c2a1f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1";
        let v1 =
            format!("12:memory:/docker/{id}\n11:pids:/docker/{id}\n1:name=systemd:/docker/{id}\n");
        let p = workload_path(&v1).expect("a v1 path");
        assert_eq!(parse_cgroup_path(p).container_id.as_deref(), Some(id));
        // Hybrid hosts: the v2 line wins when it places the process.
        let hybrid = format!("{v1}0::/system.slice/docker-{id}.scope\n");
        assert_eq!(
            workload_path(&hybrid),
            Some(format!("/system.slice/docker-{id}.scope").as_str())
        );
        // Host processes keep their v2 path, also when a v1 hierarchy looks like a container.
        assert_eq!(
            workload_path("1:cpu:/\n0::/user.slice\n"),
            Some("/user.slice")
        );
        assert_eq!(
            workload_path(&format!("4:memory:/docker/{id}\n0::/\n")),
            Some("/")
        );
        assert_eq!(workload_path("1:cpu:/\n"), None);
    }

    #[test]
    fn mountinfo_parsing() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let (m, root) = find_cgroup2_mount_in(text).expect("found");
        assert_eq!(m, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(root, "/");
        let eks =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            find_cgroup2_mount_in(eks).expect("eks").0,
            PathBuf::from("/sys/fs/cgroup")
        );
        let esc = "41 31 0:38 /.. /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        let (m, root) = find_cgroup2_mount_in(esc).expect("escaped");
        assert_eq!(m, PathBuf::from("/mnt/my cg"));
        assert_eq!(root, "/..");
        assert_eq!(find_cgroup2_mount_in("garbage\n - \n"), None);
    }

    #[test]
    fn real_mount_and_id_walk() {
        // This machine has cgroup2 somewhere; find it and map our own cgroup id back.
        let Some(mount) = find_cgroup2_mount() else {
            eprintln!("no cgroup2 mount; skipping");
            return;
        };
        let own = fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
        let own = unified_path(&own).expect("unified line").to_string();
        let dir = mount.join(own.trim_start_matches('/'));
        let ino = fs::metadata(&dir).expect("cgroup dir").ino();
        let r = CgroupResolver::new();
        assert_eq!(r.mount(), Some(mount.as_path()));
        assert_eq!(r.path_of(ino).as_deref(), Some(own.as_str()));
        // An unknown id misses, and a second miss right after does not re-walk.
        assert_eq!(r.path_of(u64::MAX), None);
        assert_eq!(r.path_of(u64::MAX - 1), None);
    }
}
