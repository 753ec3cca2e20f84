//! Loads hoop's eBPF object into the kernel and attaches its programs: process tracepoints
//! once, TLS uprobes once per discovered file (by device and inode).

use crate::discovery::{Function, OPENSSL_FUNCTIONS, Target};
use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use hoop_common::{ConnId, PlainEndpoint, TracepointOffsets, counter};
use std::collections::HashSet;
use std::path::Path;
use tracing::{debug, info, warn};

/// The eBPF object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hoop"));

/// Plain-HTTP endpoints that hand out AWS credentials (address, TCP port): the instance
/// metadata service (IPv4 and IPv6), the ECS task-role endpoint, EKS Pod Identity (IPv4 and
/// IPv6). Their addresses are fixed by AWS.
const PLAIN_CREDENTIAL_ENDPOINTS: [(&str, u16); 5] = [
    ("169.254.169.254", 80),
    ("fd00:ec2::254", 80),
    ("169.254.170.2", 80),
    ("169.254.170.23", 80),
    ("fd00:ec2::23", 80),
];

/// Program `name` of the eBPF object as its type (`UProbe`, `CgroupSkb`, ...).
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from eBPF object"))?;
    Ok(p.try_into()?)
}

/// Loaded programs and the files they are attached to.
pub struct Probes {
    ebpf: Ebpf,
    attached: HashSet<(u64, u64)>,
    uprobes: usize,
    /// Probes that failed to attach since the last [`Probes::take_attach_failures`].
    failures: usize,
}

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub lost_records: u64,
    pub lost_bytes: u64,
    pub lost_proc_events: u64,
    pub read_errors: u64,
}

/// Handle on the per-CPU counters map, readable from any thread.
pub struct CounterReader(PerCpuArray<MapData, u64>);

impl CounterReader {
    pub fn read(&self) -> KernelCounters {
        let sum = |i: u32| -> u64 {
            self.0
                .get(&i, 0)
                .map(|v| v.iter().sum())
                .unwrap_or_default()
        };
        KernelCounters {
            lost_records: sum(counter::LOST_RECORDS),
            lost_bytes: sum(counter::LOST_BYTES),
            lost_proc_events: sum(counter::LOST_PROC_EVENTS),
            read_errors: sum(counter::READ_ERRORS),
        }
    }
}

fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer. Kernels with memcg accounting ignore it.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        debug!("could not raise RLIMIT_MEMLOCK");
    }
}

/// tracefs, mounted if needed (aya reads tracepoint ids from it).
pub fn tracefs() -> Result<&'static Path> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("events").is_dir() {
            return Ok(Path::new(p));
        }
    }
    let p = "/sys/kernel/tracing";
    let src = c"tracefs";
    let dst = c"/sys/kernel/tracing";
    // SAFETY: constant NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(anyhow!(
            "tracefs is not mounted and mounting it at {p} failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(Path::new(p))
}

/// Offset of a field in a tracepoint's format file.
fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|l| {
        let l = l.trim();
        let decl = l.strip_prefix("field:")?.split(';').next()?;
        let name = decl.rsplit(' ').next()?;
        if name.trim_end_matches("[]") != field && !decl.ends_with(&format!(" {field}")) {
            return None;
        }
        l.split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))
            .and_then(|v| v.parse().ok())
    })
}

/// Reads the sched tracepoint field offsets from tracefs rather than hard-coding them.
pub fn tracepoint_offsets(tracefs: &Path) -> Result<TracepointOffsets> {
    let read = |name: &str| {
        std::fs::read_to_string(tracefs.join(format!("events/sched/{name}/format")))
            .with_context(|| format!("read tracepoint format of sched/{name}"))
    };
    let exec = read("sched_process_exec")?;
    let exit = read("sched_process_exit")?;
    Ok(TracepointOffsets {
        exec_filename: field_offset(&exec, "filename")
            .ok_or_else(|| anyhow!("sched_process_exec has no filename field"))?,
        exec_pid: field_offset(&exec, "pid").unwrap_or(u32::MAX),
        exit_group_dead: field_offset(&exit, "group_dead").unwrap_or(u32::MAX),
        _pad: 0,
    })
}

impl Probes {
    /// Loads the eBPF object with a TLS ring buffer of `ring_bytes` (power of two, >= 4 KiB).
    pub fn load(ring_bytes: u32) -> Result<Self> {
        raise_memlock();
        let ebpf = EbpfLoader::new()
            .map_max_entries("TLS_EVENTS", ring_bytes)
            .load(EBPF_OBJECT)
            .context("load eBPF object (are you root, with BPF enabled?)")?;
        Ok(Probes {
            ebpf,
            attached: HashSet::new(),
            uprobes: 0,
            failures: 0,
        })
    }

    /// Forwards aya-log messages from the kernel programs to the agent's log.
    pub fn start_kernel_log(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                debug!("eBPF logger not started: {e}");
                None
            }
        }
    }

    /// Loads every uprobe program (attachment happens per file later).
    pub fn load_uprobes(&mut self) -> Result<()> {
        let go = crate::go_discovery::GO_FUNCTIONS.map(|(_, p)| p);
        for (_, entry, ret) in OPENSSL_FUNCTIONS {
            for name in std::iter::once(entry).chain(ret) {
                let p: &mut UProbe = program(&mut self.ebpf, name)?;
                p.load().with_context(|| format!("load {name}"))?;
                // The write probes carry the enforcement classifier: how close it is to the
                // verifier's 1M-instruction budget.
                let verified = p.info().ok().and_then(|i| i.verified_instruction_count());
                debug!(program = name, verified_insns = ?verified, "uprobe loaded");
            }
        }
        for name in go {
            let p: &mut UProbe = program(&mut self.ebpf, name)?;
            p.load().with_context(|| format!("load {name}"))?;
        }
        Ok(())
    }

    /// Attaches the exec/exit tracepoints that feed the process cache and discovery.
    pub fn attach_process_tracepoints(&mut self) -> Result<()> {
        let tracefs = tracefs()?;
        let offsets = tracepoint_offsets(tracefs)?;
        let mut map: Array<_, TracepointOffsets> = Array::try_from(
            self.ebpf
                .map_mut("TP_OFFSETS")
                .ok_or_else(|| anyhow!("TP_OFFSETS map missing"))?,
        )?;
        map.set(0, &offsets, 0)?;
        for name in ["sched_process_exec", "sched_process_exit"] {
            let p: &mut TracePoint = program(&mut self.ebpf, name)?;
            p.load().with_context(|| format!("load {name}"))?;
            p.attach("sched", name)
                .with_context(|| format!("attach tracepoint sched/{name}"))?;
        }
        Ok(())
    }

    /// Attaches the `cgroup_skb` programs that copy plain-HTTP traffic to the credential
    /// endpoints (instance metadata, ECS and EKS Pod Identity credentials) on the cgroup2 root.
    pub fn attach_plain_http(&mut self) -> Result<()> {
        let mut eps: aya::maps::HashMap<_, PlainEndpoint, u8> = aya::maps::HashMap::try_from(
            self.ebpf
                .map_mut("PLAIN_ENDPOINTS")
                .ok_or_else(|| anyhow!("PLAIN_ENDPOINTS map missing"))?,
        )?;
        for (ip, port) in PLAIN_CREDENTIAL_ENDPOINTS {
            let ip: std::net::IpAddr = ip.parse()?;
            let addr = match ip {
                std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                std::net::IpAddr::V6(v6) => v6.octets(),
            };
            let key = PlainEndpoint {
                addr,
                port,
                _pad: [0; 6],
            };
            eps.insert(&key, &1, 0)?;
        }
        let root = crate::enforce::cgroup2_mount()?;
        let cg = std::fs::File::open(&root)
            .with_context(|| format!("open cgroup2 root {}", root.display()))?;
        for (name, kind) in [
            ("plain_http_egress", CgroupSkbAttachType::Egress),
            ("plain_http_ingress", CgroupSkbAttachType::Ingress),
        ] {
            let p: &mut CgroupSkb = program(&mut self.ebpf, name)?;
            p.load().with_context(|| format!("load {name}"))?;
            // A bpf_link (aya uses one on >= 5.7) always sits beside other programs on the
            // cgroup; the kernel refuses attach flags on links, so the mode must be Single.
            p.attach(&cg, kind, CgroupAttachMode::Single)
                .with_context(|| format!("attach {name} to {}", root.display()))?;
        }
        Ok(())
    }

    /// Attaches the TLS probes to one file, unless that file (device, inode) already has them.
    /// Returns the number of probes attached.
    pub fn attach_tls(&mut self, t: &Target) -> Result<usize> {
        if !self.attached.insert((t.dev, t.ino)) {
            return Ok(0);
        }
        let mut n = 0;
        for (func, entry, ret) in OPENSSL_FUNCTIONS {
            let Some(f) = t.functions.iter().find(|f| f.name == func) else {
                continue;
            };
            if f.worker {
                debug!(file = %t.path, function = func, address = f.address, "probing the shared worker of {func}");
            }
            for prog in std::iter::once(entry).chain(ret) {
                n += self.attach_at(prog, f, t)?;
            }
        }
        // Go crypto/tls: entry probes on Write and Read, one probe per RET of Read.
        for (func, prog) in crate::go_discovery::GO_FUNCTIONS {
            for f in t.functions.iter().filter(|f| f.name == func) {
                n += self.attach_at(prog, f, t)?;
            }
        }
        self.uprobes += n;
        info!(file = %t.path, probes = n, "TLS library attached");
        Ok(n)
    }

    /// Attaches one uprobe program at a resolved function location of `t`. A failed attach is
    /// logged and counts 0: the other probes of the file still work.
    fn attach_at(&mut self, prog: &str, f: &Function, t: &Target) -> Result<usize> {
        let location = UProbeAttachLocation::from_virtual_address(
            f.address,
            f.section_address,
            f.section_offset,
        )?;
        let p: &mut UProbe = program(&mut self.ebpf, prog)?;
        match p.attach([location], &t.open_path, UProbeScope::AllProcesses) {
            Ok(_) => Ok(1),
            Err(e) => {
                warn!(file = %t.path, function = f.name, "attach failed: {e}");
                self.failures += 1;
                Ok(0)
            }
        }
    }

    /// Files with TLS probes attached.
    pub fn files_attached(&self) -> usize {
        self.attached.len()
    }

    /// Probe attach failures since the last call (for the metrics counter).
    pub fn take_attach_failures(&mut self) -> usize {
        std::mem::take(&mut self.failures)
    }

    pub fn uprobes_attached(&self) -> usize {
        self.uprobes
    }

    pub fn take_ring(&mut self, name: &str) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The loaded object, for modules that load their own programs and maps (enforcement).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The map of connections whose plaintext the kernel stops copying.
    pub fn take_muted(&mut self) -> Result<aya::maps::HashMap<MapData, ConnId, u8>> {
        let map = self
            .ebpf
            .take_map("MUTED_CONNS")
            .ok_or_else(|| anyhow!("MUTED_CONNS map missing"))?;
        Ok(aya::maps::HashMap::try_from(map)?)
    }

    pub fn take_counters(&mut self) -> Result<CounterReader> {
        let map = self
            .ebpf
            .take_map("COUNTERS")
            .ok_or_else(|| anyhow!("COUNTERS map missing"))?;
        Ok(CounterReader(PerCpuArray::try_from(map)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_field_offsets() {
        let exec = "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
                    \tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
                    \tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n";
        assert_eq!(field_offset(exec, "filename"), Some(8));
        assert_eq!(field_offset(exec, "pid"), Some(12));
        assert_eq!(field_offset(exec, "group_dead"), None);
        let exit = "\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n";
        assert_eq!(field_offset(exit, "group_dead"), Some(32));
    }
}
