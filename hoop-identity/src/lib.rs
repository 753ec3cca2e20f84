//! hoop-identity: who made each AWS call.
//!
//! - [`process`]: a process cache fed by exec/exit events (and /proc on first sight) that keeps
//!   exited processes for a grace period, with parent chains and agent-session roots.
//! - [`cgroup`]: container id, runtime and pod UID from cgroup paths; cgroup id → path.
//! - [`k8s`]: pod metadata of this node from the Kubernetes API (list + watch, in-cluster).
//! - [`principal`]: access key id → principal ARN, learned from STS and credential endpoint
//!   responses, process environments (IRSA) and config. Never holds secrets.
//! - [`Resolver`]: the facade the agent calls per event.

pub mod cgroup;
pub mod imds;
pub mod k8s;
pub mod principal;
pub mod process;
mod resolver;

pub use resolver::{IdentityConfig, IdentityError, Resolver};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// RFC 3339 UTC for Unix nanoseconds.
pub(crate) fn rfc3339_nanos(unix_nanos: i128) -> Option<String> {
    OffsetDateTime::from_unix_timestamp_nanos(unix_nanos)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// RFC 3339 UTC for Unix seconds.
pub(crate) fn rfc3339_secs(unix: i64) -> Option<String> {
    rfc3339_nanos(i128::from(unix) * 1_000_000_000)
}

/// Unix seconds of an RFC 3339 timestamp (`2026-11-25T19:00:00Z`, `...T19:00:00.123Z`).
pub(crate) fn parse_rfc3339(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s.trim(), &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

/// Wall clock now, Unix seconds.
pub(crate) fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}
