//! From an HTTP exchange to an AWS call record (or nothing, for non-AWS traffic).

use crate::capture::Exchange;
use hoop_aws::{HttpRequest, response, sigv4};
use hoop_event::{Aws, CallRecord, Connection, Decision, RECORD_VERSION, Request, Response};

/// Query parameters whose values are credentials and never leave the agent.
const SECRET_QUERY_KEYS: [&str; 3] = ["x-amz-signature", "x-amz-security-token", "signature"];

/// Converts boot-time ns (kernel timestamps) to Unix ns.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    boot_to_unix_ns: i128,
}

impl Clock {
    pub fn new() -> Self {
        let real = now_ns(libc::CLOCK_REALTIME);
        let boot = now_ns(libc::CLOCK_BOOTTIME);
        Clock {
            boot_to_unix_ns: real as i128 - boot as i128,
        }
    }

    pub fn unix_ns(&self, boot_ns: u64) -> u64 {
        (boot_ns as i128 + self.boot_to_unix_ns).max(0) as u64
    }

    pub fn boot_now(&self) -> u64 {
        now_ns(libc::CLOCK_BOOTTIME)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

fn now_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn rfc3339(unix_ns: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(unix_ns as i128)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Is this request an AWS API call? Signed with SigV4, or an unsigned call that still has an
/// AWS shape (STS AssumeRoleWithWebIdentity, Cognito's unauthenticated calls).
fn is_aws(req: &HttpRequest<'_>, cred: Option<&sigv4::Credential>) -> bool {
    if cred.is_some() {
        return true;
    }
    let host = req.header_str("host").unwrap_or("");
    let host = host.split(':').next().unwrap_or(host);
    if host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn") {
        return true;
    }
    if req.header("x-amz-target").is_some() {
        return true;
    }
    let form = req
        .header_str("content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    form && has_form_field(req.body, "Action") && has_form_field(req.body, "Version")
}

fn has_form_field(body: &[u8], name: &str) -> bool {
    body.split(|&c| c == b'&').any(|pair| {
        pair.split(|&c| c == b'=')
            .next()
            .is_some_and(|k| k == name.as_bytes())
    })
}

/// Query string with credentials masked (presigned URLs carry their signature there).
pub fn mask_query(q: &str) -> String {
    q.split('&')
        .map(|pair| {
            let key = pair.split('=').next().unwrap_or(pair);
            if SECRET_QUERY_KEYS.iter().any(|s| key.eq_ignore_ascii_case(s)) {
                format!("{key}=****")
            } else {
                pair.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Builds the record of an exchange, or `None` when it is not an AWS call. Process, workload
/// and identity are left for the caller to fill.
/// `account_of` maps an access key id to its account when known, so resource ARNs carry it.
pub fn build(
    ex: &Exchange,
    clock: &Clock,
    account_of: &dyn Fn(&str) -> Option<String>,
) -> Option<CallRecord> {
    let head = &ex.request.head;
    let headers = head.header_refs();
    let body = request_body_for_parsing(&ex.request);
    let req = HttpRequest {
        method: &head.method,
        target: &head.target,
        headers: &headers,
        body: &body,
    };
    let cred = sigv4::parse(&req);
    if !is_aws(&req, cred.as_ref()) {
        return None;
    }
    let time_ns = clock.unix_ns(ex.request_ts);
    let host = req.header_str("host").map(str::to_string);
    let target_header = req.header_str("x-amz-target").map(str::to_string);

    let response = ex.response.as_ref().map(|r| {
        let rh = r.head.header_refs();
        let request_id = response::request_id(&rh)
            .map(str::to_string)
            .or_else(|| response::body_request_id(&r.body));
        Response {
            status: r.head.status,
            request_id,
            error_code: response::error_code(r.head.status, &rh, &r.body),
            body_bytes: r.body_len,
            elements: None,
        }
    });
    let duration_ms = ex
        .response_ts
        .map(|end| end.saturating_sub(ex.request_ts) as f64 / 1e6);

    let account = cred.as_ref().and_then(|c| account_of(&c.access_key_id));
    let call = hoop_aws::classify(&req, cred.as_ref(), None, account.as_deref());
    let service = call
        .as_ref()
        .map(|c| c.service.clone())
        .or_else(|| cred.as_ref().map(|c| c.service.clone()))
        .unwrap_or_else(|| "unknown".to_string());
    let region = cred
        .as_ref()
        .map(|c| c.region.clone())
        .filter(|r| r != "*")
        .or_else(|| call.as_ref().and_then(|c| c.region.clone()));
    Some(CallRecord {
        version: RECORD_VERSION,
        time: rfc3339(time_ns),
        time_ns,
        duration_ms,
        connection: Connection {
            id: format!("{:x}", ex.key.conn),
            tls: if ex.source == hoop_common::SRC_GO {
                "go".to_string()
            } else {
                "openssl".to_string()
            },
            http: if ex.http2 {
                "HTTP/2".to_string()
            } else {
                format!("HTTP/1.{}", head.version)
            },
        },
        request: Request {
            method: head.method.clone(),
            host,
            path: req.path().to_string(),
            query: req.query().map(mask_query),
            content_type: req.header_str("content-type").map(str::to_string),
            body_bytes: decoded_len(&ex.request),
            parameters: None,
            user_agent: req.header_str("user-agent").map(|s| truncate(s, 256)),
        },
        response,
        aws: Aws {
            service,
            signing_service: cred.as_ref().map(|c| c.service.clone()),
            region,
            operation: call.as_ref().map(|c| c.operation.clone()),
            iam_action: call.as_ref().map(|c| c.iam_action.clone()),
            read_only: call.as_ref().map(|c| c.read_only),
            resources: call.map(|c| c.resources).unwrap_or_default(),
            target: target_header,
            signature: cred.as_ref().map(|c| c.location.as_str().to_string()),
        },
        identity: hoop_event::Identity {
            access_key_id: cred.as_ref().map(|c| c.access_key_id.clone()),
            ..Default::default()
        },
        decision: Decision::allow(),
        ..Default::default()
    })
}

/// The body the classifier should see: `aws-chunked` framing removed when present.
fn request_body_for_parsing(m: &crate::http::Message) -> std::borrow::Cow<'_, [u8]> {
    let aws_chunked = m
        .head
        .header_str("content-encoding")
        .is_some_and(|e| e.contains("aws-chunked"));
    if aws_chunked && let Some((data, _)) = crate::http::decode_aws_chunked(&m.body) {
        return data.into();
    }
    m.body.as_slice().into()
}

/// Payload length as the application sent it (`x-amz-decoded-content-length` for aws-chunked).
fn decoded_len(m: &crate::http::Message) -> u64 {
    m.head
        .header_str("x-amz-decoded-content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(m.body_len)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_presigned_signature() {
        let q = "X-Amz-Credential=AK%2F1&X-Amz-Signature=abcdef&X-Amz-Security-Token=tok&x=1";
        let m = mask_query(q);
        assert!(!m.contains("abcdef") && !m.contains("tok"));
        assert!(m.contains("X-Amz-Credential=AK%2F1") && m.contains("x=1"));
    }

    #[test]
    fn unsigned_aws_shapes() {
        let h: &[(&str, &[u8])] = &[("Content-Type", b"application/x-www-form-urlencoded")];
        let req = HttpRequest {
            method: "POST",
            target: "/",
            headers: h,
            body: b"Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=x",
        };
        assert!(is_aws(&req, None));
        let plain = HttpRequest {
            method: "GET",
            target: "/index.html",
            headers: &[("Host", b"example.com")],
            body: b"",
        };
        assert!(!is_aws(&plain, None));
    }
}
