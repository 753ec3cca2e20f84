//! The process cache: exe, cmdline, user, start time, cgroup, parent chain and agent-session
//! root of every process that makes a call, kept for a grace period after it exits so a
//! 200 ms `aws s3 ls` is still attributed when its last response is parsed.
//!
//! Entries are keyed by (pid, start time in clock ticks): a reused pid is a new process, and a
//! parent chain never jumps to an unrelated process that later took the parent's pid.

use crate::cgroup;
use crate::principal::{IrsaEnv, read_irsa_env};
use globset::{Glob, GlobMatcher};
use hoop_event::{Ancestor, Process};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Process cache settings (`identity.process` in the agent config).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessConfig {
    /// Ancestors reported per call, nearest first.
    pub ancestors: usize,
    /// How long an exited process stays resolvable.
    pub exit_grace_secs: u64,
    /// Upper bound of cached processes (live and exited); least recently used go first.
    pub max_entries: usize,
    /// Bytes of command line kept.
    pub cmdline_max: usize,
    /// Where procfs is (tests, or a host procfs mounted into the agent's container).
    pub proc_root: PathBuf,
    /// Host user database for uid → name.
    pub passwd_path: PathBuf,
    /// Read `AWS_ROLE_ARN` / `AWS_WEB_IDENTITY_TOKEN_FILE` (only those) from each new process.
    pub read_irsa_env: bool,
    /// Which process roots an agent session; empty: no session roots.
    pub session: Vec<SessionMatcherSpec>,
    /// How far up the tree the session root is searched.
    pub session_max_depth: usize,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            ancestors: 4,
            exit_grace_secs: 300,
            max_entries: 32_768,
            cmdline_max: 1024,
            proc_root: PathBuf::from("/proc"),
            passwd_path: PathBuf::from("/etc/passwd"),
            read_irsa_env: true,
            session: Vec::new(),
            session_max_depth: 64,
        }
    }
}

/// One session matcher in config: the word `"container"`, or a table whose set fields must
/// all match, e.g. `{ exe = "/usr/local/bin/claude*" }`, `{ comm = "python3", cmdline =
/// "agent\\.py" }`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SessionMatcherSpec {
    Keyword(String),
    Matcher(SessionMatcherConfig),
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionMatcherConfig {
    /// Glob on the executable path.
    pub exe: Option<String>,
    /// Glob on the process name (comm, 15 bytes).
    pub comm: Option<String>,
    /// Regex searched in the command line.
    pub cmdline: Option<String>,
    /// The root process of a container (its parent is outside that container).
    pub container: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error("session matcher: bad glob {0:?}: {1}")]
    Glob(String, globset::Error),
    #[error("session matcher: bad regex {0:?}: {1}")]
    Regex(String, regex::Error),
    #[error("session matcher: unknown keyword {0:?} (only \"container\")")]
    Keyword(String),
    #[error("session matcher: empty matcher")]
    Empty,
}

#[derive(Clone, Debug)]
struct Matcher {
    exe: Option<GlobMatcher>,
    comm: Option<GlobMatcher>,
    cmdline: Option<Regex>,
    container: bool,
}

/// Marks the root of an "agent session": the nearest process (self or ancestor) that any
/// matcher matches.
#[derive(Clone, Debug, Default)]
pub struct SessionSelector {
    matchers: Vec<Matcher>,
}

impl SessionSelector {
    pub fn new(specs: &[SessionMatcherSpec]) -> Result<Self, SelectorError> {
        let glob = |p: &str| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| SelectorError::Glob(p.to_string(), e))
        };
        let mut matchers = Vec::new();
        for spec in specs {
            let m = match spec {
                SessionMatcherSpec::Keyword(k) if k == "container" => Matcher {
                    exe: None,
                    comm: None,
                    cmdline: None,
                    container: true,
                },
                SessionMatcherSpec::Keyword(k) => return Err(SelectorError::Keyword(k.clone())),
                SessionMatcherSpec::Matcher(c) => {
                    if c.exe.is_none() && c.comm.is_none() && c.cmdline.is_none() && !c.container {
                        return Err(SelectorError::Empty);
                    }
                    Matcher {
                        exe: c.exe.as_deref().map(glob).transpose()?,
                        comm: c.comm.as_deref().map(glob).transpose()?,
                        cmdline: c
                            .cmdline
                            .as_deref()
                            .map(|r| {
                                regex::RegexBuilder::new(r)
                                    .size_limit(1 << 20)
                                    .build()
                                    .map_err(|e| SelectorError::Regex(r.to_string(), e))
                            })
                            .transpose()?,
                        container: c.container,
                    }
                }
            };
            matchers.push(m);
        }
        Ok(SessionSelector { matchers })
    }

    pub fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }

    /// Whether `p` roots a session. `parent` is needed only by the container matcher.
    pub fn matches(&self, p: &ProcInfo, parent: Option<&ProcInfo>) -> bool {
        self.matchers.iter().any(|m| {
            let exe_ok = m
                .exe
                .as_ref()
                .is_none_or(|g| p.exe.as_deref().is_some_and(|e| g.is_match(e)));
            let comm_ok = m.comm.as_ref().is_none_or(|g| g.is_match(&p.comm));
            let cmd_ok = m
                .cmdline
                .as_ref()
                .is_none_or(|r| p.cmdline.as_deref().is_some_and(|c| r.is_match(c)));
            let container_ok = !m.container || {
                let mine = p.container_id();
                mine.is_some() && parent.and_then(ProcInfo::container_id) != mine
            };
            exe_ok && comm_ok && cmd_ok && container_ok
        })
    }
}

/// What the cache knows about one process. Immutable once built; shared by `Arc`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// Arguments joined by spaces, bounded, likely secrets in flags redacted.
    pub cmdline: Option<String>,
    /// Effective uid.
    pub uid: u32,
    pub user: Option<String>,
    /// Start time in clock ticks since boot (0 when unknown): the pid-reuse discriminator.
    pub start_ticks: u64,
    /// Start time, RFC 3339.
    pub start_time: Option<String>,
    /// cgroup v2 path.
    pub cgroup: Option<String>,
    /// Container/pod parsed from `cgroup`.
    pub cgroup_info: cgroup::CgroupInfo,
    /// IRSA variables of the environment (only those two names are ever read).
    pub irsa: Option<IrsaEnv>,
    /// False when /proc was gone and only the exec event was known.
    pub from_proc: bool,
}

impl ProcInfo {
    pub fn container_id(&self) -> Option<&str> {
        self.cgroup_info.container_id.as_deref()
    }

    pub fn to_ancestor(&self) -> Ancestor {
        Ancestor {
            pid: self.pid,
            comm: self.comm.clone(),
            exe: self.exe.clone(),
            start_time: self.start_time.clone(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    info: Arc<ProcInfo>,
    exited: Option<Instant>,
    last_used: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<(u32, u64), Entry>,
    /// pid → start ticks of the newest process with that pid.
    current: HashMap<u32, u64>,
    clock: u64,
    last_sweep: Option<Instant>,
}

impl State {
    fn touch(&mut self, key: (u32, u64)) -> Option<Arc<ProcInfo>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(&key).map(|e| {
            e.last_used = clock;
            e.info.clone()
        })
    }
}

#[derive(Debug, Default)]
struct UserDb {
    names: HashMap<u32, String>,
    mtime: Option<SystemTime>,
    checked: Option<Instant>,
}

/// Process cache. All methods take `&self`; share it behind an `Arc`.
#[derive(Debug)]
pub struct ProcessCache {
    cfg: ProcessConfig,
    selector: SessionSelector,
    boot_time: Option<u64>,
    clk_tck: u64,
    state: Mutex<State>,
    users: Mutex<UserDb>,
}

fn clk_tck() -> u64 {
    // SAFETY: sysconf only reads a constant of the C library.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 { v as u64 } else { 100 }
}

/// `btime` of /proc/stat: boot time in Unix seconds.
fn boot_time(proc_root: &Path) -> Option<u64> {
    let text = fs::read_to_string(proc_root.join("stat")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Fields of /proc/PID/stat we need: (comm, ppid, start ticks). The comm is in parentheses and
/// may itself contain spaces and parentheses: split after the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<(String, u32, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, starttime field 22.
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((comm, ppid, start))
}

/// (Name, PPid, effective Uid) from /proc/PID/status.
fn parse_status(text: &str) -> (Option<String>, Option<u32>, Option<u32>) {
    let (mut name, mut ppid, mut uid) = (None, None, None);
    for l in text.lines() {
        if let Some(v) = l.strip_prefix("Name:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = l.strip_prefix("PPid:") {
            ppid = v.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("Uid:") {
            uid = v.split_whitespace().nth(1).and_then(|u| u.parse().ok());
        }
    }
    (name, ppid, uid)
}

/// Flags whose value is `user:password` (curl, wget, many HTTP tools).
const USER_FLAGS: &[&str] = &["--user", "-u", "--proxy-user", "-U", "--http-password"];

/// Flag and variable names whose values are never kept in a command line.
const SECRET_WORDS: &[&str] = &["secret", "token", "password", "passwd", "credential"];

fn is_secret_name(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    // `--secret-id prod/db` names a secret, it is not one.
    let names_a_thing = ["-id", "-ids", "-name", "-names", "-arn", "-arns"]
        .iter()
        .any(|s| l.ends_with(s));
    !names_a_thing && SECRET_WORDS.iter().any(|w| l.contains(w))
}

/// Joins argv (NUL-separated) with spaces, bounded to `max` bytes, with values of flags or
/// `NAME=value` words that name secrets replaced by `***`.
pub fn format_cmdline(raw: &[u8], max: usize) -> String {
    let mut out = String::new();
    let mut redact_next = false;
    let mut user_next = false;
    for arg in raw.split(|b| *b == 0).filter(|a| !a.is_empty()) {
        let arg = String::from_utf8_lossy(arg);
        let word = if redact_next {
            redact_next = false;
            "***".to_string()
        } else if user_next {
            // curl-style `--user NAME:PASSWORD`: keep the name (often an access key id).
            user_next = false;
            match arg.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => arg.into_owned(),
            }
        } else if let Some(v) = USER_FLAGS
            .iter()
            .find_map(|f| arg.strip_prefix(f).and_then(|r| r.strip_prefix('=')))
        {
            match v.split_once(':') {
                Some((user, _)) => format!("{}={user}:***", &arg[..arg.len() - v.len() - 1]),
                None => arg.into_owned(),
            }
        } else if USER_FLAGS.contains(&arg.as_ref()) {
            user_next = true;
            arg.into_owned()
        } else if let Some((k, _)) = arg.split_once('=').filter(|(k, _)| is_secret_name(k)) {
            format!("{k}=***")
        } else {
            // Flags, and `aws configure set aws_secret_access_key VALUE`.
            let lower = arg.to_ascii_lowercase();
            if (arg.starts_with('-') && is_secret_name(&arg))
                || lower == "aws_secret_access_key"
                || lower == "aws_session_token"
            {
                redact_next = true;
            }
            arg.into_owned()
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&word);
        if out.len() >= max {
            break;
        }
    }
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

fn read_bounded(path: &Path, max: usize) -> Option<Vec<u8>> {
    let f = fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(max as u64).read_to_end(&mut buf).ok()?;
    Some(buf)
}

impl ProcessCache {
    pub fn new(cfg: ProcessConfig) -> Result<Self, SelectorError> {
        let selector = SessionSelector::new(&cfg.session)?;
        Ok(ProcessCache {
            boot_time: boot_time(&cfg.proc_root),
            clk_tck: clk_tck(),
            selector,
            cfg,
            state: Mutex::new(State::default()),
            users: Mutex::new(UserDb::default()),
        })
    }

    pub fn config(&self) -> &ProcessConfig {
        &self.cfg
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_time(&self, ticks: u64) -> Option<String> {
        let bt = self.boot_time?;
        let nanos = i128::from(bt) * 1_000_000_000
            + i128::from(ticks) * 1_000_000_000 / i128::from(self.clk_tck);
        crate::rfc3339_nanos(nanos)
    }

    /// uid → name from the host passwd file, re-read when it changes (checked every 10 s).
    pub fn user_name(&self, uid: u32) -> Option<String> {
        let mut db = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if db
            .checked
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            db.checked = Some(Instant::now());
            let mtime = fs::metadata(&self.cfg.passwd_path)
                .and_then(|m| m.modified())
                .ok();
            if mtime != db.mtime || db.mtime.is_none() {
                db.mtime = mtime;
                db.names.clear();
                if let Ok(text) = fs::read_to_string(&self.cfg.passwd_path) {
                    for l in text.lines() {
                        let mut f = l.split(':');
                        if let (Some(name), Some(_), Some(id)) = (f.next(), f.next(), f.next())
                            && let Ok(id) = id.parse::<u32>()
                        {
                            db.names.entry(id).or_insert_with(|| name.to_string());
                        }
                    }
                }
            }
        }
        db.names.get(&uid).cloned()
    }

    /// Reads /proc/PID; `None` when the process is gone (or was replaced mid-read).
    pub fn read_proc(&self, pid: u32) -> Option<ProcInfo> {
        let dir = self.cfg.proc_root.join(pid.to_string());
        let stat = fs::read_to_string(dir.join("stat")).ok()?;
        let (stat_comm, stat_ppid, start_ticks) = parse_stat(&stat)?;
        let (name, ppid, uid) = fs::read_to_string(dir.join("status"))
            .map(|s| parse_status(&s))
            .unwrap_or((None, None, None));
        let exe = fs::read_link(dir.join("exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let cmdline = read_bounded(&dir.join("cmdline"), self.cfg.cmdline_max + 1)
            .map(|raw| format_cmdline(&raw, self.cfg.cmdline_max))
            .filter(|c| !c.is_empty());
        let cgroup = fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|t| cgroup::workload_path(&t).map(str::to_string));
        let irsa = if self.cfg.read_irsa_env {
            read_irsa_env(&dir.join("environ"))
        } else {
            None
        };
        // The pid may have been reused while we read: the start time must not have moved.
        let again = fs::read_to_string(dir.join("stat")).ok()?;
        if parse_stat(&again).map(|s| s.2) != Some(start_ticks) {
            return None;
        }
        let uid = uid.unwrap_or(u32::MAX);
        Some(ProcInfo {
            pid,
            ppid: ppid.unwrap_or(stat_ppid),
            comm: name.unwrap_or(stat_comm),
            exe,
            cmdline,
            uid,
            user: if uid == u32::MAX {
                None
            } else {
                self.user_name(uid)
            },
            start_ticks,
            start_time: self.start_time(start_ticks),
            cgroup_info: cgroup
                .as_deref()
                .map(cgroup::parse_cgroup_path)
                .unwrap_or_default(),
            cgroup,
            irsa,
            from_proc: true,
        })
    }

    fn insert(&self, info: ProcInfo) -> Arc<ProcInfo> {
        let info = Arc::new(info);
        let key = (info.pid, info.start_ticks);
        let mut st = self.state();
        st.clock += 1;
        let clock = st.clock;
        st.current.insert(info.pid, info.start_ticks);
        st.entries.insert(
            key,
            Entry {
                info: info.clone(),
                exited: None,
                last_used: clock,
            },
        );
        self.maybe_evict(&mut st);
        info
    }

    /// An exec tracepoint event: (re)reads the process. `filename` is what the event carried;
    /// it stands in for exe when the process is already gone.
    pub fn on_exec(&self, tgid: u32, ppid: u32, filename: &str) -> Arc<ProcInfo> {
        match self.read_proc(tgid) {
            Some(info) => self.insert(info),
            None => {
                let comm = filename.rsplit('/').next().unwrap_or(filename);
                let comm: String = comm.chars().take(15).collect();
                // Unknown start: key 0 still works for lookups by pid until the next exec.
                self.insert(ProcInfo {
                    pid: tgid,
                    ppid,
                    comm,
                    exe: (!filename.is_empty()).then(|| filename.to_string()),
                    uid: u32::MAX,
                    ..Default::default()
                })
            }
        }
    }

    /// A process exit (call it for the thread group leader's exit, `group_dead`): the entry
    /// stays for the grace period.
    pub fn on_exit(&self, tgid: u32) {
        let mut st = self.state();
        if let Some(start) = st.current.get(&tgid).copied()
            && let Some(e) = st.entries.get_mut(&(tgid, start))
        {
            e.exited.get_or_insert_with(Instant::now);
        }
        self.maybe_sweep(&mut st);
    }

    /// The process now (or last) known under `tgid`; reads /proc on first sight.
    pub fn lookup(&self, tgid: u32) -> Option<Arc<ProcInfo>> {
        {
            let mut st = self.state();
            if let Some(start) = st.current.get(&tgid).copied()
                && let Some(info) = st.touch((tgid, start))
            {
                return Some(info);
            }
        }
        self.read_proc(tgid).map(|i| self.insert(i))
    }

    /// The parent of `child`, checked against pid reuse: a parent cannot be younger than its
    /// child.
    fn parent_of(&self, child: &ProcInfo) -> Option<Arc<ProcInfo>> {
        let ppid = child.ppid;
        if ppid == 0 || ppid == child.pid {
            return None;
        }
        let older = |p: &ProcInfo| {
            p.start_ticks == 0 || child.start_ticks == 0 || p.start_ticks <= child.start_ticks
        };
        {
            let mut st = self.state();
            if let Some(start) = st.current.get(&ppid).copied()
                && let Some(info) = st.touch((ppid, start))
            {
                if older(&info) {
                    return Some(info);
                }
                // The current holder of the pid is younger: look for the old parent.
                let old = st
                    .entries
                    .iter()
                    .filter(|((pid, _), e)| *pid == ppid && older(&e.info))
                    .max_by_key(|((_, s), _)| *s)
                    .map(|(_, e)| e.info.clone());
                return old;
            }
        }
        let info = self.read_proc(ppid)?;
        if !older(&info) {
            return None;
        }
        Some(self.insert(info))
    }

    /// Self and ancestors, nearest first, at most `depth + 1` entries.
    pub fn chain(&self, tgid: u32, depth: usize) -> Vec<Arc<ProcInfo>> {
        let mut out = Vec::new();
        let Some(mut cur) = self.lookup(tgid) else {
            return out;
        };
        out.push(cur.clone());
        while out.len() <= depth {
            match self.parent_of(&cur) {
                Some(p) => {
                    out.push(p.clone());
                    cur = p;
                }
                None => break,
            }
        }
        out
    }

    /// A filled `hoop_event::Process` (cgroup_id left 0 for the caller), or `None` when the
    /// process is unknown and gone.
    pub fn describe(&self, tgid: u32, tid: u32) -> Option<(Process, Arc<ProcInfo>)> {
        let want = if self.selector.is_empty() {
            self.cfg.ancestors
        } else {
            self.cfg.ancestors.max(self.cfg.session_max_depth)
        };
        let chain = self.chain(tgid, want);
        let me = chain.first()?.clone();
        let session = if self.selector.is_empty() {
            None
        } else {
            chain
                .iter()
                .enumerate()
                .find(|(i, p)| self.selector.matches(p, chain.get(i + 1).map(|a| &**a)))
                .map(|(_, p)| p.to_ancestor())
        };
        let p = Process {
            pid: me.pid,
            tid,
            comm: me.comm.clone(),
            exe: me.exe.clone(),
            cmdline: me.cmdline.clone(),
            uid: me.uid,
            user: me.user.clone(),
            ppid: Some(me.ppid).filter(|p| *p != 0 || me.from_proc),
            start_time: me.start_time.clone(),
            ancestors: chain
                .iter()
                .skip(1)
                .take(self.cfg.ancestors)
                .map(|a| a.to_ancestor())
                .collect(),
            session,
            cgroup_id: 0,
            cgroup: me.cgroup.clone(),
        };
        Some((p, me))
    }

    /// Number of cached processes (live and exited).
    pub fn len(&self) -> usize {
        self.state().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops exited processes older than the grace period. Called from exec/exit already;
    /// the agent may also call it from a timer.
    pub fn sweep(&self) {
        let mut st = self.state();
        self.sweep_locked(&mut st);
    }

    fn maybe_sweep(&self, st: &mut State) {
        if st
            .last_sweep
            .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            self.sweep_locked(st);
        }
    }

    fn sweep_locked(&self, st: &mut State) {
        st.last_sweep = Some(Instant::now());
        let grace = Duration::from_secs(self.cfg.exit_grace_secs);
        let State {
            entries, current, ..
        } = st;
        entries.retain(|(pid, start), e| {
            let keep = e.exited.is_none_or(|t| t.elapsed() < grace);
            if !keep && current.get(pid) == Some(start) {
                current.remove(pid);
            }
            keep
        });
    }

    fn maybe_evict(&self, st: &mut State) {
        self.maybe_sweep(st);
        let max = self.cfg.max_entries.max(16);
        if st.entries.len() <= max {
            return;
        }
        self.sweep_locked(st);
        if st.entries.len() <= max {
            return;
        }
        // Evict the least recently used eighth in one go so this sort is rare.
        let mut ages: Vec<(u64, (u32, u64))> =
            st.entries.iter().map(|(k, e)| (e.last_used, *k)).collect();
        ages.sort_unstable();
        let n = st.entries.len() - max + max / 8;
        for (_, key) in ages.into_iter().take(n) {
            st.entries.remove(&key);
            if st.current.get(&key.0) == Some(&key.1) {
                st.current.remove(&key.0);
            }
        }
    }
}

/// Test helper: returns once `pid` has finished exec. `spawn` returns as soon as the child
/// closes its close-on-exec descriptors, before the kernel has set up the new argv, so
/// /proc/PID/cmdline can still read empty then; the exec tracepoint the agent uses fires after.
#[cfg(test)]
pub(crate) fn wait_exec_done(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn cache(cfg: ProcessConfig) -> ProcessCache {
        ProcessCache::new(cfg).expect("cache")
    }

    #[test]
    fn stat_parsing_handles_odd_comm() {
        let mut fields = vec!["S", "42"];
        fields.extend(std::iter::repeat_n("0", 17));
        fields.push("12345");
        fields.extend(["0", "0"]);
        let text = format!("777 (we (ird) name) {}", fields.join(" "));
        assert_eq!(
            parse_stat(&text),
            Some(("we (ird) name".to_string(), 42, 12345))
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x"), None);
        assert_eq!(parse_stat(")("), None);
    }

    #[test]
    fn cmdline_is_bounded_and_redacted() {
        let raw = b"aws\0s3\0ls\0--secret-access-key\0abc123\0AWS_SESSION_TOKEN=zzz\0--token=qq\0";
        let s = format_cmdline(raw, 1024);
        assert_eq!(
            s,
            "aws s3 ls --secret-access-key *** AWS_SESSION_TOKEN=*** --token=***"
        );
        let raw = b"aws\0secretsmanager\0get-secret-value\0--secret-id\0prod/db\0";
        assert_eq!(
            format_cmdline(raw, 1024),
            "aws secretsmanager get-secret-value --secret-id prod/db"
        );
        let raw = b"aws\0configure\0set\0aws_secret_access_key\0abc\0";
        assert_eq!(
            format_cmdline(raw, 1024),
            "aws configure set aws_secret_access_key ***"
        );
        let long = "é".repeat(2000);
        let s = format_cmdline(long.as_bytes(), 1024);
        assert!(s.len() <= 1024);
        assert_eq!(format_cmdline(b"", 10), "");
        assert_eq!(
            format_cmdline(
                b"curl\0--user\0AKIA1:s3cr3t\0-u\0bob\0--user=AKIA2:pw\0",
                1024
            ),
            "curl --user AKIA1:*** -u bob --user=AKIA2:***"
        );
        assert_eq!(format_cmdline(b"\xff\xfe\0x", 10), "\u{fffd}\u{fffd} x");
    }

    #[test]
    fn reads_a_real_process_and_keeps_it_after_exit() {
        let c = cache(ProcessConfig {
            exit_grace_secs: 60,
            ..Default::default()
        });
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        wait_exec_done(pid);
        let info = c.on_exec(pid, std::process::id(), "/usr/bin/sleep");
        assert!(info.from_proc);
        assert_eq!(info.comm, "sleep");
        assert!(
            info.exe.as_deref().is_some_and(|e| e.ends_with("sleep")),
            "{info:?}"
        );
        assert_eq!(info.cmdline.as_deref(), Some("sleep 30"));
        assert_eq!(info.ppid, std::process::id());
        assert!(info.start_ticks > 0);
        let start = info.start_time.clone().expect("start time");
        assert!(start.starts_with("20"), "{start}");
        // SAFETY: geteuid has no preconditions.
        assert_eq!(info.uid, unsafe { libc::geteuid() });
        if info.uid == 0 {
            assert_eq!(info.user.as_deref(), Some("root"));
        }
        assert!(info.cgroup.is_some());

        child.kill().expect("kill");
        child.wait().expect("wait");
        c.on_exit(pid);
        let after = c.lookup(pid).expect("still attributed after exit");
        assert_eq!(after.cmdline.as_deref(), Some("sleep 30"));
        let (p, _) = c.describe(pid, pid + 1).expect("describe after exit");
        assert_eq!(p.pid, pid);
        assert_eq!(p.tid, pid + 1);
        assert_eq!(p.comm, "sleep");
        // Our own test binary is the first ancestor.
        let me = p.ancestors.first().expect("parent");
        assert_eq!(me.pid, std::process::id());
    }

    #[test]
    fn exited_processes_are_evicted_after_grace() {
        let c = cache(ProcessConfig {
            exit_grace_secs: 0,
            ..Default::default()
        });
        let mut child = Command::new("sleep").arg("0.1").spawn().expect("spawn");
        let pid = child.id();
        c.on_exec(pid, 0, "/usr/bin/sleep");
        child.wait().expect("wait");
        c.on_exit(pid);
        c.sweep();
        assert!(c.lookup(pid).is_none(), "gone after grace and /proc");
    }

    #[test]
    fn exec_of_a_vanished_process_uses_the_event() {
        let c = cache(ProcessConfig::default());
        let info = c.on_exec(u32::MAX - 7, 1, "/usr/local/bin/aws");
        assert!(!info.from_proc);
        assert_eq!(info.comm, "aws");
        assert_eq!(info.exe.as_deref(), Some("/usr/local/bin/aws"));
        let (p, _) = c.describe(u32::MAX - 7, 1).expect("describe");
        assert_eq!(p.ppid, Some(1));
    }

    #[test]
    fn pid_reuse_is_a_new_process() {
        // Simulated with a fake procfs: same pid, two start times.
        let dir = std::env::temp_dir().join(format!("hoop-proc-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("500")).expect("mk");
        fs::create_dir_all(dir.join("400")).expect("mk");
        fs::write(dir.join("stat"), "cpu 0\nbtime 1700000000\n").expect("stat");
        let stat = |pid: u32, comm: &str, ppid: u32, start: u64| {
            let mut f = vec!["S".to_string(), ppid.to_string()];
            f.extend(std::iter::repeat_n("0".to_string(), 17));
            f.push(start.to_string());
            format!("{pid} ({comm}) {}\n", f.join(" "))
        };
        let write = |pid: u32, comm: &str, ppid: u32, start: u64, cmd: &str| {
            let d = dir.join(pid.to_string());
            fs::write(d.join("stat"), stat(pid, comm, ppid, start)).expect("w");
            fs::write(
                d.join("status"),
                format!("Name:\t{comm}\nPPid:\t{ppid}\nUid:\t1000\t1000\t1000\t1000\n"),
            )
            .expect("w");
            fs::write(d.join("cmdline"), cmd.replace(' ', "\0")).expect("w");
            fs::write(d.join("cgroup"), "0::/user.slice\n").expect("w");
        };
        write(400, "bash", 1, 100, "bash");
        write(500, "aws", 400, 200, "aws s3 ls");
        let c = cache(ProcessConfig {
            proc_root: dir.clone(),
            passwd_path: dir.join("passwd"),
            ..Default::default()
        });
        let first = c.on_exec(500, 400, "/usr/bin/aws");
        assert_eq!(first.start_ticks, 200);
        assert_eq!(first.start_time.as_deref(), Some("2023-11-14T22:13:22Z"));
        assert_eq!(first.user, None, "unknown uid keeps the number only");
        assert_eq!(first.uid, 1000);
        let (p, _) = c.describe(500, 500).expect("describe");
        assert_eq!(p.ancestors.first().map(|a| a.comm.as_str()), Some("bash"));
        assert_eq!(c.len(), 2);
        c.on_exit(500);
        // pid 500 is reused by another process, and pid 400 too (younger than 500 now).
        write(500, "curl", 400, 900, "curl x");
        let second = c.on_exec(500, 400, "/usr/bin/curl");
        assert_eq!(second.comm, "curl");
        assert_eq!(c.lookup(500).expect("current").comm, "curl");
        assert_eq!(c.len(), 3, "old and new pid 500, plus parent");
        write(400, "impostor", 1, 1000, "impostor");
        // 500/curl started at 900; the 400 now in /proc started at 1000: not its parent, and
        // the cached old bash (start 100) is.
        let (p, _) = c.describe(500, 500).expect("describe");
        assert_eq!(p.ancestors.first().map(|a| a.comm.as_str()), Some("bash"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn session_selector_finds_nearest_matching_ancestor() {
        // A shell running `sleep` is ours; match the test binary by exe glob.
        let exe = std::env::current_exe().expect("exe");
        let name = exe.file_name().expect("name").to_string_lossy().to_string();
        let specs: Vec<SessionMatcherSpec> = serde_json::from_str(&format!(
            r#"[{{"comm": "nomatch*"}}, {{"exe": "**/{name}"}}, {{"cmdline": "^sh -c sleep 30; true$"}}]"#
        ))
        .expect("specs");
        let c = cache(ProcessConfig {
            session: specs,
            ..Default::default()
        });
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30; true"])
            .spawn()
            .expect("spawn");
        let pid = child.id();
        // Find the sleep whose parent is our shell (poll: a loaded machine may be slow to fork).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let sleep_pid = loop {
            let found = fs::read_dir("/proc")
                .expect("proc")
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .find(|p| {
                    c.read_proc(*p)
                        .is_some_and(|i| i.ppid == pid && i.comm == "sleep")
                });
            match found {
                Some(p) => break p,
                None if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                None => panic!("no sleep child of the shell"),
            }
        };
        let (p, _) = c.describe(sleep_pid, sleep_pid).expect("describe");
        let s = p.session.expect("session root");
        assert_eq!(s.pid, pid, "the shell matches the cmdline regex first");
        assert_eq!(p.ancestors.len(), 4.min(p.ancestors.len()));
        assert_eq!(p.ancestors[0].pid, pid);
        assert_eq!(p.ancestors[1].pid, std::process::id());
        // The test binary itself matches the exe glob.
        let (me, _) = c
            .describe(std::process::id(), std::process::id())
            .expect("me");
        assert_eq!(me.session.map(|s| s.pid), Some(std::process::id()));
        let _ = Command::new("kill").arg(sleep_pid.to_string()).status();
        child.wait().expect("wait");
    }

    #[test]
    fn session_selector_config_forms_and_errors() {
        let specs: Vec<SessionMatcherSpec> =
            serde_json::from_str(r#"["container", {"exe": "/usr/bin/*", "comm": "py*"}]"#)
                .expect("parse");
        assert!(SessionSelector::new(&specs).is_ok());
        assert!(SessionSelector::new(&[SessionMatcherSpec::Keyword("host".into())]).is_err());
        assert!(
            SessionSelector::new(&[SessionMatcherSpec::Matcher(SessionMatcherConfig {
                cmdline: Some("(".into()),
                ..Default::default()
            })])
            .is_err()
        );
        assert!(SessionSelector::new(&[SessionMatcherSpec::Matcher(Default::default())]).is_err());
        assert!(serde_json::from_str::<Vec<SessionMatcherSpec>>(r#"[{"bogus": 1}]"#).is_err());
    }

    #[test]
    fn container_matcher_picks_the_container_root() {
        let sel =
            SessionSelector::new(&[SessionMatcherSpec::Keyword("container".into())]).expect("sel");
        let id = "b".repeat(64);
        let inside = |pid| ProcInfo {
            pid,
            cgroup_info: cgroup::parse_cgroup_path(&format!("/docker/{id}")),
            ..Default::default()
        };
        let host = ProcInfo::default();
        assert!(sel.matches(&inside(10), Some(&host)));
        assert!(!sel.matches(&inside(11), Some(&inside(10))));
        assert!(!sel.matches(&host, None));
    }
}
