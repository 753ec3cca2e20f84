//! The record of one AWS API call as hoop emits it (`hoop-agent run` prints one per line),
//! stores it and reports on it. Secrets are masked before a record is built: nothing in here
//! may hold a signature, a session token, a secret key or a secret value.
//!
//! Field names are part of the output format: change them only with the README.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the record layout, bumped on incompatible changes.
pub const RECORD_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CallRecord {
    pub version: u32,
    /// Request start, RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// Request start, Unix nanoseconds (for ordering and ranges).
    pub time_ns: u64,
    /// Request start to end of response, when the response was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    pub process: Process,
    pub workload: Workload,
    pub identity: Identity,
    pub connection: Connection,
    pub request: Request,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Response>,
    pub aws: Aws,
    pub decision: Decision,
    /// Set on trail entries that record an enforcement event rather than a call (approval
    /// requests and their outcomes, endpoint decisions); see [`Event`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
}

impl CallRecord {
    /// An enforcement event entry, not an AWS call (reports and policies skip it).
    pub fn is_event(&self) -> bool {
        self.event.is_some() || is_event_effect(&self.decision.effect)
    }
}

/// Effects of enforcement event entries are `KIND:EVENT` (`approval:approved`,
/// `endpoint:deny`); call effects never hold a colon.
pub fn is_event_effect(effect: &str) -> bool {
    effect.contains(':')
}

/// An enforcement event in the audit trail. The entry's `decision.effect` says what happened:
/// `approval:requested`, `approval:approved`, `approval:denied`, `approval:expired`,
/// `approval:used` (a call passed on the grant), `endpoint:deny` / `endpoint:would-deny` (a
/// connect). Its `process`, `workload` and `identity` are the caller's (who asked), `aws` and
/// `request` the call asked for (masked), `decision.approval` the request id.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Approvals: the caller was stopped (`hold: true`) rather than refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<bool>,
    /// Approvals: when the request was made, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    /// Who decided: `uid=U pid=P comm=C` (local API), `tls-client cert=…`, or `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// Approved requests: when the grant ends, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_expires: Option<String>,
    /// Endpoint decisions: the address connected to, and its port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// The process that made the call.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Command line, arguments joined by spaces, bounded in length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// Process start, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// Parent chain, nearest first, a few levels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Ancestor>,
    /// Root of the agent session this process belongs to (see the `session` config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Ancestor>,
    pub cgroup_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
}

/// Where the process runs: host, container or Kubernetes pod.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Workload {
    /// `host`, `container` or `pod`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// `containerd`, `cri-o`, `docker`, `systemd`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    /// A short stable name: `ns/pod`, `container:<id12>` or `host`.
    pub fn name(&self) -> String {
        match (&self.namespace, &self.pod, &self.container_id) {
            (Some(ns), Some(pod), _) => format!("{ns}/{pod}"),
            (_, _, Some(id)) => format!("container:{}", &id[..id.len().min(12)]),
            _ => "host".to_string(),
        }
    }
}

/// The AWS principal whose keys signed the call.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Principal ARN when learned (STS, credential endpoints, config), else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// How the principal was learned: `sts`, `imds`, `container-credentials`, `irsa`, `config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Expiry of temporary credentials, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl Identity {
    /// The name reviewers group by: the principal ARN, else the access key id, else `unsigned`.
    pub fn key(&self) -> &str {
        self.principal_arn
            .as_deref()
            .or(self.access_key_id.as_deref())
            .unwrap_or("unsigned")
    }
}

/// The TLS connection the call travelled on.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Connection {
    /// Library connection object address (hex), unique per live connection in a process.
    pub id: String,
    /// `openssl` or `go`.
    pub tls: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub http: String,
}

/// Summary of the request, secrets masked.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub path: String,
    /// Query string with presigned signatures and tokens masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Body length in bytes as sent (decoded from chunked encoding).
    pub body_bytes: u64,
    /// Masked request parameters (JSON or form body, or query), when small enough to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// Summary of the response, secrets masked.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub body_bytes: u64,
    /// Masked response elements, when small enough to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elements: Option<serde_json::Value>,
}

/// What the call is in AWS terms.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Aws {
    /// Service (botocore model name, e.g. `s3`, `dynamodb`; the signing name when unknown).
    pub service: String,
    /// SigV4 signing name from the credential scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// IAM action, e.g. `s3:GetObject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Resource ARNs the call touches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// `X-Amz-Target` header (json protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `header` or `query` (presigned URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// What policy decided about the call.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Decision {
    /// `allow`, `audit`, `deny`, `would-deny`, `kill`, `approval-requested`, `approved`;
    /// on event entries `KIND:EVENT` (see [`Event`]).
    pub effect: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The approval request this call raised or passed on (and the request an event is about).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<u64>,
}

impl Decision {
    pub fn allow() -> Self {
        Decision {
            effect: "allow".to_string(),
            rule: None,
            approval: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let mut r = CallRecord {
            version: RECORD_VERSION,
            time: "2026-11-25T18:00:00.000000001Z".into(),
            time_ns: 1,
            decision: Decision::allow(),
            ..Default::default()
        };
        r.aws.service = "s3".into();
        r.workload.labels.insert("app".into(), "x".into());
        let s = serde_json::to_string(&r).expect("serialize");
        let back: CallRecord = serde_json::from_str(&s).expect("parse");
        assert_eq!(back, r);
        assert!(
            !s.contains("duration_ms"),
            "absent options are omitted: {s}"
        );
    }

    #[test]
    fn identity_key_prefers_principal() {
        let mut i = Identity {
            access_key_id: Some("AKIA1".into()),
            ..Default::default()
        };
        assert_eq!(i.key(), "AKIA1");
        i.principal_arn = Some("arn:aws:iam::1:user/a".into());
        assert_eq!(i.key(), "arn:aws:iam::1:user/a");
        assert_eq!(Identity::default().key(), "unsigned");
    }
}
