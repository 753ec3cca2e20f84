//! Query filters. String filters match exactly, or as a glob when they contain `*` or `?`
//! (`s3:Get*`, `arn:aws:s3:::bucket/*`). Filters can be built field by field, from
//! `key=value` pairs (the local API and `--filter`), or from CLI flags.

use crate::timefmt::{now_ns, parse_time};
use hoop_event::CallRecord;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("unknown filter {0:?}: known filters are {known}", known = KNOWN.join(", "))]
    Unknown(String),
    #[error("filter {key}: {msg}")]
    Bad { key: String, msg: String },
    #[error("filter {0:?} is not key=value")]
    Syntax(String),
}

pub const KNOWN: &[&str] = &[
    "identity",
    "principal",
    "access_key",
    "workload",
    "pid",
    "comm",
    "exe",
    "session",
    "connection",
    "service",
    "action",
    "resource",
    "decision",
    "since",
    "until",
    "limit",
];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    /// `Identity::key()`: principal ARN, else access key id, else `unsigned`.
    pub identity: Option<String>,
    pub principal: Option<String>,
    pub access_key: Option<String>,
    /// `Workload::name()`: `ns/pod`, `container:<id12>` or `host`.
    pub workload: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    /// Session root: `PID` or `PID@START_TIME` (RFC 3339 as recorded).
    pub session: Option<String>,
    /// Connection id (hex address), optionally with `pid:` before it.
    pub connection: Option<String>,
    pub service: Option<String>,
    /// IAM action, glob (`s3:Get*`).
    pub action: Option<String>,
    /// Resource ARN, glob.
    pub resource: Option<String>,
    /// Decision effect (`allow`, `deny`, ...), glob.
    pub decision: Option<String>,
    /// Unix ns, inclusive.
    pub since: Option<u64>,
    /// Unix ns, inclusive.
    pub until: Option<u64>,
    pub limit: Option<usize>,
}

/// `*` any run, `?` one character.
pub fn glob_match(pat: &str, s: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

pub fn is_glob(p: &str) -> bool {
    p.contains(['*', '?'])
}

/// The literal text before the first wildcard.
pub fn literal_prefix(p: &str) -> &str {
    match p.find(['*', '?']) {
        Some(i) => &p[..i],
        None => p,
    }
}

fn m(pat: &Option<String>, v: Option<&str>) -> bool {
    match pat {
        None => true,
        Some(p) => match v {
            None => false,
            Some(v) if is_glob(p) => glob_match(p, v),
            Some(v) => p == v,
        },
    }
}

impl Filter {
    /// Set one filter from text. `now` anchors relative times (`2h`).
    pub fn set(&mut self, key: &str, value: &str, now: u64) -> Result<(), FilterError> {
        let bad = |msg: String| FilterError::Bad {
            key: key.to_string(),
            msg,
        };
        let v = Some(value.to_string());
        match key {
            "identity" => self.identity = v,
            "principal" => self.principal = v,
            "access_key" | "access-key" => self.access_key = v,
            "workload" => self.workload = v,
            "pid" => {
                self.pid = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("{value:?} is not a pid")))?,
                )
            }
            "comm" => self.comm = v,
            "exe" => self.exe = v,
            "session" => {
                let pid = value.split('@').next().unwrap_or("");
                if pid.parse::<u32>().is_err() {
                    return Err(bad(format!("{value:?} is not PID or PID@START_TIME")));
                }
                self.session = v
            }
            "connection" => self.connection = v,
            "service" => self.service = v,
            "action" => self.action = v,
            "resource" => self.resource = v,
            "decision" => self.decision = v,
            "since" => self.since = Some(parse_time(value, now).map_err(bad)?),
            "until" => self.until = Some(parse_time(value, now).map_err(bad)?),
            "limit" => {
                self.limit = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("{value:?} is not a count")))?,
                )
            }
            other => return Err(FilterError::Unknown(other.to_string())),
        }
        Ok(())
    }

    /// Parse `key=value` expressions.
    pub fn parse<'a>(exprs: impl IntoIterator<Item = &'a str>) -> Result<Filter, FilterError> {
        let now = now_ns();
        let mut f = Filter::default();
        for e in exprs {
            let (k, v) = e
                .split_once('=')
                .ok_or_else(|| FilterError::Syntax(e.to_string()))?;
            f.set(k.trim(), v.trim(), now)?;
        }
        Ok(f)
    }

    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Does a record pass every filter? (Time uses the record's own `time_ns`.)
    pub fn matches(&self, r: &CallRecord) -> bool {
        if self.since.is_some_and(|s| r.time_ns < s) || self.until.is_some_and(|u| r.time_ns > u) {
            return false;
        }
        if self.pid.is_some_and(|p| p != r.process.pid) {
            return false;
        }
        if let Some(s) = &self.session {
            let (pid, start) = match s.split_once('@') {
                Some((p, st)) => (p, Some(st)),
                None => (s.as_str(), None),
            };
            let root = r.process.session.as_ref();
            let ok = root.is_some_and(|a| {
                a.pid.to_string() == pid
                    && start.is_none_or(|st| a.start_time.as_deref() == Some(st))
            });
            if !ok {
                return false;
            }
        }
        if let Some(c) = &self.connection {
            let (pid, id) = match c.split_once(':') {
                Some((p, id)) if p.parse::<u32>().is_ok() => (Some(p), id),
                _ => (None, c.as_str()),
            };
            if r.connection.id != id || pid.is_some_and(|p| p != r.process.pid.to_string()) {
                return false;
            }
        }
        let workload = if self.workload.is_some() {
            Some(r.workload.name())
        } else {
            None
        };
        m(&self.identity, Some(r.identity.key()))
            && m(&self.principal, r.identity.principal_arn.as_deref())
            && m(&self.access_key, r.identity.access_key_id.as_deref())
            && m(&self.workload, workload.as_deref())
            && m(&self.comm, Some(&r.process.comm))
            && m(&self.exe, r.process.exe.as_deref())
            && m(&self.service, Some(&r.aws.service))
            && m(&self.action, r.aws.iam_action.as_deref())
            && m(&self.decision, Some(&r.decision.effect))
            && (self.resource.is_none()
                || r.aws.resources.iter().any(|x| m(&self.resource, Some(x))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("s3:Get*", "s3:GetObject"));
        assert!(!glob_match("s3:Get*", "s3:PutObject"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(glob_match("arn:*:bucket/*", "arn:aws:s3:::bucket/k"));
        assert!(!glob_match("abc", "abcd"));
        assert_eq!(literal_prefix("s3:Get*"), "s3:Get");
    }

    #[test]
    fn parse_errors_are_clear() {
        let e = Filter::parse(["colour=red"]).expect_err("unknown");
        assert!(e.to_string().contains("unknown filter \"colour\""), "{e}");
        let e = Filter::parse(["since=yesterday"]).expect_err("bad time");
        assert!(e.to_string().contains("bad time"), "{e}");
        assert!(Filter::parse(["pid=abc"]).is_err());
        assert!(Filter::parse(["noequals"]).is_err());
        let f = Filter::parse(["action=s3:Get*", "since=2h"]).expect("ok");
        assert!(f.since.is_some());
    }
}
