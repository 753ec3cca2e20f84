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
            if SECRET_QUERY_KEYS
                .iter()
                .any(|s| key.eq_ignore_ascii_case(s))
            {
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
    let svc = call
        .as_ref()
        .map(|c| c.service.as_str())
        .or_else(|| cred.as_ref().map(|c| c.service.as_str()))
        .unwrap_or("");
    let op = call.as_ref().map(|c| c.operation.as_str()).unwrap_or("");
    let parameters = request_parameters(&req, &ex.request, svc, op);
    let mut response = response;
    if let (Some(resp), Some(r)) = (response.as_mut(), ex.response.as_ref()) {
        resp.elements = response_elements(r, svc, op);
    }
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
            parameters,
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

/// Request bodies above this are not turned into parameters.
const MAX_PARAM_BODY: usize = 64 * 1024;
/// Response bodies above this are not turned into elements.
const MAX_ELEMENT_BODY: usize = 16 * 1024;
/// Leaf values kept per parameters / elements tree.
const MAX_FIELDS: usize = 100;
/// Strings longer than this are replaced by their length.
const MAX_STRING: usize = 4096;
/// Nesting kept in parameters / elements.
const MAX_DEPTH: usize = 32;

/// Operations whose bodies are payload (object data, function input/output), never
/// parameters.
fn payload_body(service: &str, operation: &str, request: bool) -> bool {
    match service {
        // S3 request bodies are object data or XML configuration; responses of the object
        // reads are object data.
        "s3" => request || operation.starts_with("GetObject") || operation == "SelectObjectContent",
        "lambda" => operation.starts_with("Invoke"),
        "kinesis" | "firehose" => operation.starts_with("PutRecord"),
        _ => false,
    }
}

/// Request parameters: a JSON body (json / rest-json), a form body (query / ec2), else the
/// query string. Bounded; masked later by the store's masker.
fn request_parameters(
    req: &HttpRequest<'_>,
    m: &crate::http::Message,
    service: &str,
    operation: &str,
) -> Option<serde_json::Value> {
    let ct = req
        .header_str("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let complete = m.body.len() as u64 >= m.body_len;
    let body_ok = !req.body.is_empty()
        && req.body.len() <= MAX_PARAM_BODY
        && complete
        && !payload_body(service, operation, true);
    let mut budget = MAX_FIELDS;
    if body_ok
        && ct.contains("json")
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(req.body)
    {
        return Some(bound(v, &mut budget, 0));
    }
    if body_ok
        && ct.starts_with("application/x-www-form-urlencoded")
        && let Ok(text) = std::str::from_utf8(req.body)
    {
        return form_object(text, &mut budget);
    }
    let q = req.query().filter(|q| !q.is_empty())?;
    let masked = mask_query(q);
    form_object(&masked, &mut budget)
}

/// `a=1&b=x%20y` → `{"a":"1","b":"x y"}` (a repeated key keeps its first value).
fn form_object(text: &str, budget: &mut usize) -> Option<serde_json::Value> {
    let mut map = serde_json::Map::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        if *budget == 0 {
            map.insert("hoop:truncated".into(), serde_json::Value::Bool(true));
            break;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k);
        if k.is_empty() || map.contains_key(&k) {
            continue;
        }
        *budget -= 1;
        map.insert(k, bound_string(percent_decode(v)));
    }
    (!map.is_empty()).then_some(serde_json::Value::Object(map))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn bound_string(s: String) -> serde_json::Value {
    if s.len() > MAX_STRING {
        serde_json::Value::String(format!("<{} bytes>", s.len()))
    } else {
        serde_json::Value::String(s)
    }
}

/// Keeps at most `budget` leaves, `MAX_DEPTH` levels and `MAX_STRING` bytes per string.
fn bound(v: serde_json::Value, budget: &mut usize, depth: usize) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            if depth >= MAX_DEPTH {
                return Value::String("<nested too deep>".into());
            }
            let mut out = serde_json::Map::new();
            for (k, c) in m {
                if *budget == 0 {
                    out.insert("hoop:truncated".into(), Value::Bool(true));
                    break;
                }
                out.insert(k, bound(c, budget, depth + 1));
            }
            Value::Object(out)
        }
        Value::Array(a) => {
            if depth >= MAX_DEPTH {
                return Value::String("<nested too deep>".into());
            }
            let mut out = Vec::new();
            for c in a {
                if *budget == 0 {
                    out.push(Value::String("hoop:truncated".into()));
                    break;
                }
                out.push(bound(c, budget, depth + 1));
            }
            Value::Array(out)
        }
        Value::String(s) => {
            *budget = budget.saturating_sub(1);
            bound_string(s)
        }
        other => {
            *budget = budget.saturating_sub(1);
            other
        }
    }
}

/// Response elements from a small JSON or XML body.
fn response_elements(
    m: &crate::http::Message,
    service: &str,
    operation: &str,
) -> Option<serde_json::Value> {
    if m.body.is_empty()
        || m.body.len() > MAX_ELEMENT_BODY
        || (m.body.len() as u64) < m.body_len
        || payload_body(service, operation, false)
    {
        return None;
    }
    let ct = m
        .head
        .header_str("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let first = m.body.iter().find(|c| !c.is_ascii_whitespace()).copied();
    let mut budget = MAX_FIELDS;
    // By content type, else by the first byte: some services (and emulators) label JSON
    // bodies text/html or nothing.
    if ct.contains("json") || first == Some(b'{') {
        let v = serde_json::from_slice::<serde_json::Value>(&m.body).ok()?;
        return Some(bound(v, &mut budget, 0));
    }
    if ct.contains("xml") || (first == Some(b'<') && !ct.contains("html")) {
        return xml_to_json(&m.body, &mut budget);
    }
    None
}

/// A simple JSON tree of an XML document: the root element's children as an object; an
/// element with children is an object, a text-only one a string; repeated names become
/// arrays; attributes are dropped. Iterative (no recursion on attacker-controlled depth).
pub fn xml_to_json(body: &[u8], budget: &mut usize) -> Option<serde_json::Value> {
    use quick_xml::events::Event;
    use serde_json::{Map, Value};
    struct Frame {
        name: String,
        map: Map<String, Value>,
        text: String,
    }
    fn insert(map: &mut Map<String, Value>, k: String, v: Value) {
        match map.get_mut(&k) {
            Some(Value::Array(a)) => a.push(v),
            Some(old) => {
                let prev = std::mem::take(old);
                *old = Value::Array(vec![prev, v]);
            }
            None => {
                map.insert(k, v);
            }
        }
    }
    fn close(f: Frame) -> Value {
        if f.map.is_empty() {
            bound_string(f.text.trim().to_string())
        } else {
            Value::Object(f.map)
        }
    }
    let mut r = quick_xml::Reader::from_reader(body);
    let mut stack: Vec<Frame> = Vec::new();
    // Elements deeper than MAX_DEPTH are skipped; this counts how deep into them we are.
    let mut skipped = 0usize;
    let mut root: Option<Value> = None;
    let mut truncated = false;
    loop {
        match r.read_event().ok()? {
            Event::Start(s) => {
                if skipped > 0 || stack.len() >= MAX_DEPTH || (*budget == 0 && !stack.is_empty()) {
                    truncated |= *budget == 0;
                    skipped += 1;
                    continue;
                }
                let name = s.local_name().as_ref().to_string();
                stack.push(Frame {
                    name,
                    map: Map::new(),
                    text: String::new(),
                });
            }
            Event::Empty(s) => {
                if skipped > 0 || stack.is_empty() || *budget == 0 {
                    continue;
                }
                *budget -= 1;
                let name = s.local_name().as_ref().to_string();
                if let Some(top) = stack.last_mut() {
                    insert(&mut top.map, name, Value::String(String::new()));
                }
            }
            Event::Text(t) => {
                if skipped == 0
                    && let Some(top) = stack.last_mut()
                    && top.text.len() <= MAX_STRING
                {
                    top.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(t) => {
                if skipped == 0
                    && let Some(top) = stack.last_mut()
                    && top.text.len() <= MAX_STRING
                {
                    top.text.push_str(t.as_ref());
                }
            }
            Event::GeneralRef(g) => {
                if skipped == 0
                    && let Some(top) = stack.last_mut()
                {
                    let ch = match g.as_ref() {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "quot" => Some('"'),
                        "apos" => Some('\''),
                        _ => g.resolve_char_ref().ok().flatten(),
                    };
                    top.text.extend(ch);
                }
            }
            Event::End(_) => {
                if skipped > 0 {
                    skipped -= 1;
                    continue;
                }
                let Some(f) = stack.pop() else { break };
                if f.map.is_empty() {
                    *budget = budget.saturating_sub(1);
                }
                let name = f.name.clone();
                let v = close(f);
                match stack.last_mut() {
                    Some(parent) => insert(&mut parent.map, name, v),
                    None => {
                        root = Some(v);
                        break;
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let mut root = root?;
    if truncated && let Value::Object(m) = &mut root {
        m.insert("hoop:truncated".into(), Value::Bool(true));
    }
    Some(root)
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

    #[test]
    fn xml_elements_tree() {
        let body = br#"<?xml version="1.0"?>
<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <SessionToken>FQoGZXIvYXdzEXAMPLE</SessionToken>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
    <AssumedRoleUser><Arn>arn:aws:sts::1:assumed-role/r/s&amp;x</Arn></AssumedRoleUser>
    <Items><member>a</member><member>b</member><Empty/></Items>
  </AssumeRoleResult>
</AssumeRoleResponse>"#;
        let mut budget = MAX_FIELDS;
        let v = xml_to_json(body, &mut budget).expect("tree");
        let r = &v["AssumeRoleResult"];
        assert_eq!(r["Credentials"]["AccessKeyId"], "ASIAEXAMPLE");
        assert_eq!(
            r["AssumedRoleUser"]["Arn"],
            "arn:aws:sts::1:assumed-role/r/s&x"
        );
        assert_eq!(r["Items"]["member"], serde_json::json!(["a", "b"]));
        // Deep and wide documents stay bounded and never recurse.
        let deep = "<a>".repeat(100_000);
        let mut budget = MAX_FIELDS;
        let _ = xml_to_json(deep.as_bytes(), &mut budget);
        let wide = format!("<r>{}</r>", "<m>x</m>".repeat(1000));
        let mut budget = MAX_FIELDS;
        let v = xml_to_json(wide.as_bytes(), &mut budget).expect("wide");
        assert!(v["m"].as_array().is_some_and(|a| a.len() <= MAX_FIELDS));
        assert_eq!(v["hoop:truncated"], true);
        assert!(xml_to_json(b"<a><b>unterminated", &mut MAX_FIELDS.clone()).is_none());
    }

    #[test]
    fn form_and_json_parameters_are_bounded() {
        let mut budget = MAX_FIELDS;
        let v = form_object(
            "Action=AssumeRole&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr&A=b+c&x",
            &mut budget,
        )
        .expect("form");
        assert_eq!(v["RoleArn"], "arn:aws:iam::1:role/r");
        assert_eq!(v["A"], "b c");
        assert_eq!(v["x"], "");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        let many: Vec<String> = (0..500).map(|i| format!("k{i}=v")).collect();
        let mut budget = MAX_FIELDS;
        let v = form_object(&many.join("&"), &mut budget).expect("many");
        assert!(v.as_object().is_some_and(|m| m.len() <= MAX_FIELDS + 1));
        let big = serde_json::json!({"a": "x".repeat(MAX_STRING + 1), "b": (0..1000).collect::<Vec<_>>()});
        let mut budget = MAX_FIELDS;
        let v = bound(big, &mut budget, 0);
        assert_eq!(v["a"], format!("<{} bytes>", MAX_STRING + 1));
        assert!(v["b"].as_array().is_some_and(|a| a.len() <= MAX_FIELDS + 1));
    }
}
