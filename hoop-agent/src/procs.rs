//! Process attributes for records, read from /proc when a process execs (so short-lived
//! processes are still known after they exit).

use crate::capture::Origin;
use hoop_event::Process;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const CMDLINE_MAX: usize = 1024;
/// How long an exited process stays known.
const EXITED_TTL: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, Default)]
struct Info {
    exe: Option<String>,
    cmdline: Option<String>,
    ppid: Option<u32>,
    exited: Option<Instant>,
}

#[derive(Default)]
pub struct ProcTable {
    procs: HashMap<u32, Info>,
}

fn read(pid: u32) -> Option<Info> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut cmd: Vec<u8> = raw[..raw.len().min(CMDLINE_MAX)].to_vec();
    while cmd.last() == Some(&0) {
        cmd.pop();
    }
    for b in cmd.iter_mut() {
        if *b == 0 {
            *b = b' ';
        }
    }
    let ppid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|v| v.trim().parse().ok())
        });
    Some(Info {
        exe,
        cmdline: Some(String::from_utf8_lossy(&cmd).into_owned()),
        ppid,
        exited: None,
    })
}

impl ProcTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn scan_existing(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                self.on_exec(pid);
            }
        }
    }

    pub fn on_exec(&mut self, pid: u32) {
        if let Some(info) = read(pid) {
            self.procs.insert(pid, info);
        }
    }

    pub fn on_exit(&mut self, pid: u32) {
        if let Some(i) = self.procs.get_mut(&pid) {
            i.exited = Some(Instant::now());
        }
    }

    pub fn prune(&mut self) {
        self.procs
            .retain(|_, i| i.exited.is_none_or(|t| t.elapsed() < EXITED_TTL));
    }

    pub fn describe(&mut self, o: &Origin) -> Process {
        if !self.procs.contains_key(&o.tgid) {
            self.on_exec(o.tgid);
        }
        let info = self.procs.get(&o.tgid).cloned().unwrap_or_default();
        Process {
            pid: o.tgid,
            tid: o.tid,
            comm: o.comm.clone(),
            exe: info.exe,
            cmdline: info.cmdline,
            uid: o.uid,
            ppid: info.ppid,
            cgroup_id: o.cgroup_id,
            ..Default::default()
        }
    }
}
