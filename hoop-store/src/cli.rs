//! Argument structs and runners for `hoop-agent query|replay|report|policy|dump|verify`.
//! The agent binary owns `--data-dir` and opens the store; these only use it.

use crate::console::Console;
use crate::dump::{self, CloudTrailOptions, DumpFormat};
use crate::filter::Filter;
use crate::query::{self, Session};
use crate::report;
use crate::store::{Store, StoredEvent};
use crate::timefmt::{now_ns, parse_time};
use anyhow::{Context, bail};
use std::io::Write;
use std::path::PathBuf;

/// Filters shared by query, report, policy and dump.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct FilterArgs {
    /// Identity: principal ARN, else access key id, else `unsigned` (glob allowed).
    #[arg(long)]
    pub identity: Option<String>,
    /// Principal ARN (glob allowed).
    #[arg(long)]
    pub principal: Option<String>,
    /// Access key id.
    #[arg(long = "access-key")]
    pub access_key: Option<String>,
    /// Workload: `ns/pod`, `container:<id12>` or `host` (glob allowed).
    #[arg(long)]
    pub workload: Option<String>,
    #[arg(long)]
    pub pid: Option<u32>,
    /// Process name.
    #[arg(long)]
    pub comm: Option<String>,
    /// Executable path (glob allowed).
    #[arg(long)]
    pub exe: Option<String>,
    /// Session root: PID or PID@START_TIME.
    #[arg(long)]
    pub session: Option<String>,
    /// Connection id, optionally PID:ID.
    #[arg(long)]
    pub connection: Option<String>,
    #[arg(long)]
    pub service: Option<String>,
    /// IAM action glob, e.g. `s3:Get*`.
    #[arg(long)]
    pub action: Option<String>,
    /// Resource ARN glob.
    #[arg(long)]
    pub resource: Option<String>,
    /// Decision effect: allow, audit, deny, would-deny, kill, approval-requested, approved;
    /// enforcement events: `approval:*` (requested, approved, denied, expired, used),
    /// `endpoint:*` (glob allowed).
    #[arg(long)]
    pub decision: Option<String>,
    /// Start: a duration back from now (30m, 2h, 7d) or RFC 3339.
    #[arg(long)]
    pub since: Option<String>,
    /// End: a duration back from now or RFC 3339.
    #[arg(long)]
    pub until: Option<String>,
    /// More filters as KEY=VALUE (same names as the flags).
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
}

impl FilterArgs {
    pub fn to_filter(&self) -> anyhow::Result<Filter> {
        let now = now_ns();
        let mut f = Filter::default();
        let pairs: [(&str, Option<String>); 15] = [
            ("identity", self.identity.clone()),
            ("principal", self.principal.clone()),
            ("access_key", self.access_key.clone()),
            ("workload", self.workload.clone()),
            ("pid", self.pid.map(|p| p.to_string())),
            ("comm", self.comm.clone()),
            ("exe", self.exe.clone()),
            ("session", self.session.clone()),
            ("connection", self.connection.clone()),
            ("service", self.service.clone()),
            ("action", self.action.clone()),
            ("resource", self.resource.clone()),
            ("decision", self.decision.clone()),
            ("since", self.since.clone()),
            ("until", self.until.clone()),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                f.set(k, &v, now)?;
            }
        }
        for e in &self.filter {
            let (k, v) = e
                .split_once('=')
                .with_context(|| format!("--filter {e:?} is not KEY=VALUE"))?;
            f.set(k.trim(), v.trim(), now)?;
        }
        if let (Some(s), Some(u)) = (f.since, f.until)
            && s > u
        {
            bail!("--since is after --until");
        }
        Ok(f)
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueryFormat {
    #[default]
    Table,
    Json,
    Jsonl,
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct QueryArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// At most this many records (oldest first).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
    pub format: QueryFormat,
}

fn trunc(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n.saturating_sub(1)).collect();
        format!("{t}…")
    }
}

pub fn run_query(store: &Store, args: &QueryArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut f = args.filter.to_filter()?;
    if args.limit.is_some() {
        f.limit = args.limit;
    }
    // Records are written as they are read: a large result is never held whole.
    let mut n = 0usize;
    let mut err: Option<anyhow::Error> = None;
    let mut emit = |e: StoredEvent, out: &mut dyn Write| -> bool {
        let r = write_query_record(args.format, n, &e.record, out);
        n += 1;
        if let Err(x) = r {
            err = Some(x);
            return false;
        }
        f.limit.is_none_or(|l| n < l)
    };
    match args.format {
        QueryFormat::Json => out.write_all(b"[")?,
        QueryFormat::Jsonl => {}
        QueryFormat::Table => writeln!(
            out,
            "{:<24} {:<44} {:<18} {:<22} {:<32} {:<40} {:<12} STATUS",
            "TIME", "IDENTITY", "PROCESS", "WORKLOAD", "ACTION", "RESOURCE", "DECISION",
        )?,
    }
    query::for_each(store, &f, |e| emit(e, out))?;
    if let Some(e) = err {
        return Err(e);
    }
    match args.format {
        QueryFormat::Json if n == 0 => writeln!(out, "]")?,
        QueryFormat::Json => writeln!(out, "\n]")?,
        QueryFormat::Jsonl => {}
        QueryFormat::Table => writeln!(out, "{n} records")?,
    }
    Ok(())
}

fn write_query_record(
    format: QueryFormat,
    i: usize,
    r: &hoop_event::CallRecord,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match format {
        QueryFormat::Json => {
            out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
            serde_json::to_writer_pretty(&mut *out, r)?;
        }
        QueryFormat::Jsonl => {
            serde_json::to_writer(&mut *out, r)?;
            writeln!(out)?;
        }
        QueryFormat::Table => {
            let status = match &r.response {
                Some(x) => match &x.error_code {
                    Some(c) => format!("{} {c}", x.status),
                    None => x.status.to_string(),
                },
                None => "-".into(),
            };
            writeln!(
                out,
                "{:<24} {:<44} {:<18} {:<22} {:<32} {:<40} {:<12} {}",
                trunc(&crate::timefmt::rfc3339_secs(r.time_ns), 24),
                trunc(r.identity.key(), 44),
                trunc(&format!("{}/{}", r.process.pid, r.process.comm), 18),
                trunc(&r.workload.name(), 22),
                trunc(r.aws.iam_action.as_deref().unwrap_or(&r.aws.service), 32),
                trunc(
                    r.aws.resources.first().map(String::as_str).unwrap_or("-"),
                    40
                ),
                trunc(&r.decision.effect, 12),
                status
            )?;
        }
    }
    Ok(())
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplayFormat {
    #[default]
    Text,
    Json,
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct ReplayArgs {
    /// Session root (process tree): PID or PID@START_TIME.
    #[arg(long, conflicts_with = "connection")]
    pub session: Option<String>,
    /// Connection id (hex), with --pid to pick the process.
    #[arg(long)]
    pub connection: Option<String>,
    #[arg(long, requires = "connection")]
    pub pid: Option<u32>,
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, value_enum, default_value_t = ReplayFormat::Text)]
    pub format: ReplayFormat,
}

impl ReplayArgs {
    pub fn session(&self) -> anyhow::Result<Session> {
        if let Some(s) = &self.session {
            let (pid, start) = match s.split_once('@') {
                Some((p, st)) => (p, Some(st.to_string())),
                None => (s.as_str(), None),
            };
            let pid = pid
                .parse()
                .with_context(|| format!("--session {s:?}: expected PID or PID@START_TIME"))?;
            return Ok(Session::ProcessTree {
                pid,
                start_time: start,
            });
        }
        if let Some(c) = &self.connection {
            return Ok(Session::Connection {
                id: c.clone(),
                pid: self.pid,
            });
        }
        bail!("replay needs --session PID[@START_TIME] or --connection ID")
    }
}

pub fn run_replay(store: &Store, args: &ReplayArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let now = now_ns();
    let since = args
        .since
        .as_deref()
        .map(|s| parse_time(s, now))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let until = args
        .until
        .as_deref()
        .map(|s| parse_time(s, now))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let session = args.session()?;
    let events = query::replay(store, &session, since, until)?;
    if args.format == ReplayFormat::Json {
        let recs: Vec<&hoop_event::CallRecord> = events.iter().map(|e| &e.record).collect();
        serde_json::to_writer_pretty(&mut *out, &recs)?;
        writeln!(out)?;
        return Ok(());
    }
    let t0 = events.first().map(|e| e.record.time_ns).unwrap_or(0);
    writeln!(out, "# replay of {session:?}: {} calls", events.len())?;
    for (i, e) in events.iter().enumerate() {
        let r = &e.record;
        let off = (r.time_ns - t0) as f64 / 1e9;
        writeln!(
            out,
            "\n[{}] {} (+{off:.3}s) pid {} {} {}",
            i + 1,
            r.time,
            r.process.pid,
            r.process.comm,
            r.process.cmdline.as_deref().unwrap_or("")
        )?;
        writeln!(
            out,
            "  identity {}  workload {}  connection {}",
            r.identity.key(),
            r.workload.name(),
            r.connection.id
        )?;
        let q = r
            .request
            .query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        writeln!(
            out,
            "  > {} {}{}{}  [{}]",
            r.request.method,
            r.request.host.as_deref().unwrap_or(""),
            r.request.path,
            q,
            r.aws.iam_action.as_deref().unwrap_or(&r.aws.service)
        )?;
        if let Some(p) = &r.request.parameters {
            writeln!(out, "  > {}", serde_json::to_string(p)?)?;
        }
        let rule = r
            .decision
            .rule
            .as_deref()
            .map(|x| format!(" ({x})"))
            .unwrap_or_default();
        writeln!(out, "  decision {}{rule}", r.decision.effect)?;
        match &r.response {
            Some(x) => {
                let err = x
                    .error_code
                    .as_deref()
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default();
                let dur = r
                    .duration_ms
                    .map(|d| format!(" in {d:.1} ms"))
                    .unwrap_or_default();
                writeln!(out, "  < {}{err}{dur}", x.status)?;
                if let Some(el) = &x.elements {
                    writeln!(out, "  < {}", serde_json::to_string(el)?)?;
                }
            }
            None => writeln!(out, "  < (no response)")?,
        }
    }
    Ok(())
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReportFormat {
    #[default]
    Md,
    Html,
    Csv,
    Json,
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct ReportArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    pub format: ReportFormat,
}

pub fn run_report(store: &Store, args: &ReportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let f = args.filter.to_filter()?;
    let r = report::build(store, &f)?;
    match args.format {
        ReportFormat::Md => out.write_all(report::render_markdown(&r).as_bytes())?,
        ReportFormat::Html => out.write_all(report::render_html(&r).as_bytes())?,
        ReportFormat::Csv => out.write_all(report::render_csv(&r).as_bytes())?,
        ReportFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &r)?;
            writeln!(out)?;
        }
    }
    Ok(())
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct PolicyArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// With `--identity` (no glob) prints that identity's policy document; otherwise an object
/// of identity → policy document.
pub fn run_policy(store: &Store, args: &PolicyArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let f = args.filter.to_filter()?;
    let mut p = report::policies(store, &f)?;
    match &args.filter.identity {
        Some(id) if !crate::filter::is_glob(id) => {
            let doc = p
                .remove(id)
                .with_context(|| format!("no calls by {id:?} in the selected range"))?;
            serde_json::to_writer_pretty(&mut *out, &doc)?;
        }
        _ => serde_json::to_writer_pretty(&mut *out, &p)?,
    }
    writeln!(out)?;
    Ok(())
}

#[derive(clap::Args, Clone, Debug)]
pub struct DumpArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[arg(long, value_enum, default_value_t = DumpFormat::Cloudtrail)]
    pub format: DumpFormat,
    /// gzip the output.
    #[arg(long)]
    pub gzip: bool,
    /// Write here instead of standard output (atomically: temp file + rename).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Write one rotating-style file `hoop-<node>-<from>-<to>.json.gz` into this directory
    /// for --since..--until (default: the last hour).
    #[arg(long, conflicts_with = "output")]
    pub rotate_dir: Option<PathBuf>,
    /// Node name for file names and `sourceIPAddress` (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

impl Default for DumpArgs {
    fn default() -> Self {
        DumpArgs {
            filter: FilterArgs::default(),
            format: DumpFormat::Cloudtrail,
            gzip: false,
            output: None,
            rotate_dir: None,
            node: None,
            no_progress: true,
        }
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "hoop".into())
}

/// Files (`-o`, `--rotate-dir`) and the progress bar go through `console`: they are the
/// reviewer's, also when the agent runs the command.
pub fn run_dump(store: &Store, args: &DumpArgs, console: &mut dyn Console) -> anyhow::Result<()> {
    let f = args.filter.to_filter()?;
    let node = args.node.clone().unwrap_or_else(hostname);
    if let Some(dir) = &args.rotate_dir {
        let to = f.until.unwrap_or_else(now_ns);
        let from = f.since.unwrap_or(to.saturating_sub(3_600_000_000_000));
        let path = dir.join(dump::rotating_name(&node, from, to));
        console.create(&path, true)?;
        dump::write_window(store, &node, from, to, console.file()?)?;
        console.commit()?;
        writeln!(console.out(), "{}", path.display())?;
        return Ok(());
    }
    let opts = CloudTrailOptions { source: Some(node) };
    let mut progress = console.progress();
    match &args.output {
        Some(path) => {
            console.create(path, false)?;
            let n = dump::write_dump(
                store,
                &f,
                args.format,
                args.gzip,
                &opts,
                console.file()?,
                &mut progress,
            )?;
            console.commit()?;
            writeln!(console.out(), "{n} events written to {}", path.display())?;
        }
        None => {
            dump::write_dump(
                store,
                &f,
                args.format,
                args.gzip,
                &opts,
                console.out(),
                &mut progress,
            )?;
        }
    }
    Ok(())
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct VerifyArgs {
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints the result; a broken chain is an error (non-zero exit).
pub fn run_verify(store: &Store, args: &VerifyArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let r = store.verify();
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &r)?;
        writeln!(out)?;
    } else if r.ok {
        writeln!(out, "chain OK: {} events, head {}", r.events, r.head)?;
        if let Some(p) = &r.predecessor {
            writeln!(
                out,
                "it continues from head {} of a damaged store moved to {} ({})",
                p.head.as_deref().unwrap_or("unknown"),
                p.path,
                p.reason
            )?;
        }
    } else if let Some(e) = &r.first_broken {
        writeln!(out, "chain BROKEN after {} good events: {e}", r.events)?;
    }
    match r.first_broken {
        Some(e) => bail!("audit chain broken: {e}"),
        None => Ok(()),
    }
}
