//! `hoop-agent tail`: the running agent's records as they are made.
//!
//! The agent publishes every delivered record (masked, as stored) on a broadcast channel; the
//! API route `GET /v1/events/stream` writes them as JSON lines for as long as the client stays
//! connected. A client that reads too slowly skips ahead and gets `{"lagged": N}` in place of
//! the N records it missed. The CLI filters on fields of the record.

use crate::api::{Lines, Router};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

/// The stream route.
pub const STREAM_PATH: &str = "/v1/events/stream";

pub fn routes(events: Lines) -> Router {
    Router::new().stream(STREAM_PATH, events)
}

/// One `--filter`: `a.b.c=value` (the record's field at that path, compared as text; numbers
/// and booleans by their JSON spelling), `a.b!=value`, or `a.b~text` (contains).
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    path: Vec<String>,
    op: Op,
    value: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Eq,
    Ne,
    Contains,
}

/// Short names for the fields people filter on most.
const ALIASES: [(&str, &str); 8] = [
    ("service", "aws.service"),
    ("operation", "aws.operation"),
    ("action", "aws.iam_action"),
    ("region", "aws.region"),
    ("pid", "process.pid"),
    ("comm", "process.comm"),
    ("decision", "decision.effect"),
    ("principal", "identity.principal_arn"),
];

impl std::str::FromStr for Filter {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (key, op, value) = if let Some((k, v)) = s.split_once("!=") {
            (k, Op::Ne, v)
        } else if let Some((k, v)) = s.split_once('=') {
            (k, Op::Eq, v)
        } else if let Some((k, v)) = s.split_once('~') {
            (k, Op::Contains, v)
        } else {
            bail!("filter {s:?} is not FIELD=VALUE, FIELD!=VALUE or FIELD~TEXT");
        };
        let key = key.trim();
        if key.is_empty() {
            bail!("filter {s:?} has no field");
        }
        let key = ALIASES
            .iter()
            .find(|(a, _)| *a == key)
            .map(|(_, k)| *k)
            .unwrap_or(key);
        Ok(Filter {
            path: key.split('.').map(str::to_string).collect(),
            op,
            value: value.to_string(),
        })
    }
}

impl Filter {
    pub fn matches(&self, rec: &Value) -> bool {
        let mut v = rec;
        for p in &self.path {
            v = match v {
                Value::Object(m) => m.get(p).unwrap_or(&Value::Null),
                Value::Array(a) => p
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| a.get(i))
                    .unwrap_or(&Value::Null),
                _ => &Value::Null,
            };
        }
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        match self.op {
            Op::Eq => !v.is_null() && text == self.value,
            Op::Ne => v.is_null() || text != self.value,
            Op::Contains => !v.is_null() && text.contains(&self.value),
        }
    }
}

/// Connects to the agent's socket and prints matching records (JSON lines) until the agent
/// goes away, or after `count` records.
pub fn run(socket: &Path, filters: &[Filter], count: Option<u64>, pretty: bool) -> Result<()> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connect to the agent at {}", socket.display()))?;
    write!(
        s,
        "GET {STREAM_PATH} HTTP/1.1\r\nHost: hoop\r\nAccept: application/x-ndjson\r\n\r\n"
    )?;
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    r.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    if status != 200 {
        let mut body = String::new();
        let _ = std::io::Read::read_to_string(&mut r, &mut body);
        let msg = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        bail!("agent answered {status}: {msg}");
    }
    tracing::info!(socket = %socket.display(), "streaming records");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut printed = 0u64;
    let mut line = String::new();
    loop {
        if count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("the agent closed the stream");
        }
        let Ok(v) = serde_json::from_str::<Value>(line.trim_end()) else {
            continue;
        };
        if let Some(n) = v.get("lagged").and_then(Value::as_u64) {
            tracing::warn!(missed = n, "tail fell behind; records skipped");
            continue;
        }
        if !filters.iter().all(|f| f.matches(&v)) {
            continue;
        }
        if pretty {
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        } else {
            writeln!(out, "{}", line.trim_end())?;
        }
        out.flush()?;
        printed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_match_fields() {
        let rec = json!({
            "aws": {"service": "s3", "iam_action": "s3:PutObject"},
            "process": {"pid": 42, "comm": "python3"},
        });
        let f = |s: &str| s.parse::<Filter>().expect("filter");
        assert!(f("service=s3").matches(&rec));
        assert!(f("aws.service=s3").matches(&rec));
        assert!(!f("service=sts").matches(&rec));
        assert!(f("pid=42").matches(&rec));
        assert!(f("action~Put").matches(&rec));
        assert!(f("comm!=node").matches(&rec));
        assert!(f("missing.field!=x").matches(&rec));
        assert!(!f("missing.field=x").matches(&rec));
        assert!("nofilter".parse::<Filter>().is_err());
        assert!("=x".parse::<Filter>().is_err());
    }
}
