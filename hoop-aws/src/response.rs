//! What an AWS response says about the call: request id and, for failures, the error code.
//!
//! AWS protocols report errors in three shapes: XML (`<Error><Code>` for query/rest-xml/ec2,
//! `<Errors><Error><Code>` for EC2), JSON (`__type` or `code`, maybe prefixed with a namespace
//! `com.amazonaws...#Code`) and the `x-amzn-ErrorType` header (rest-json).

/// Request id from the headers AWS services use.
pub fn request_id<'a>(headers: &[(&'a str, &'a [u8])]) -> Option<&'a str> {
    const NAMES: [&str; 3] = ["x-amzn-requestid", "x-amz-request-id", "x-amzn-request-id"];
    NAMES.iter().find_map(|name| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::trim)
    })
}

/// The AWS error code of a failed response (status >= 300), from header or body.
pub fn error_code(status: u16, headers: &[(&str, &[u8])], body: &[u8]) -> Option<String> {
    if status < 300 {
        return None;
    }
    let header = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amzn-errortype"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok());
    if let Some(h) = header {
        // "ValidationException:http://internal.amazon.com/coral/..."
        let code = h.split(':').next().unwrap_or(h).trim();
        if !code.is_empty() {
            return Some(strip_namespace(code).to_string());
        }
    }
    let body = trim_ascii(body);
    match body.first() {
        Some(b'<') => xml_code(body),
        Some(b'{') => json_code(body),
        _ => None,
    }
    .map(|c| strip_namespace(&c).to_string())
}

/// Request id from an XML or JSON body (query protocol puts it in `<RequestId>`).
pub fn body_request_id(body: &[u8]) -> Option<String> {
    let body = std::str::from_utf8(trim_ascii(body)).ok()?;
    xml_element(body, "RequestId").or_else(|| xml_element(body, "RequestID"))
}

fn strip_namespace(code: &str) -> &str {
    code.rsplit('#').next().unwrap_or(code)
}

fn xml_code(body: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    xml_element(s, "Code")
}

fn xml_element(s: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = s.find(&open)? + open.len();
    let len = s[start..].find(&close)?;
    let v = s[start..start + len].trim();
    (!v.is_empty() && v.len() <= 256).then(|| v.to_string())
}

fn json_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    ["__type", "code", "Code"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(|c| c.as_str()))
        .map(str::to_string)
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_error() {
        let body = b"<?xml version=\"1.0\"?>\n<Error><Code>NoSuchBucket</Code><Message>x</Message></Error>";
        assert_eq!(error_code(404, &[], body).as_deref(), Some("NoSuchBucket"));
        let ec2 = b"<Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code></Error></Errors><RequestID>r-1</RequestID></Response>";
        assert_eq!(
            error_code(400, &[], ec2).as_deref(),
            Some("InvalidInstanceID.NotFound")
        );
        assert_eq!(body_request_id(ec2).as_deref(), Some("r-1"));
    }

    #[test]
    fn json_error() {
        let body = br#"{"__type":"com.amazonaws.dynamodb.v20120810#ResourceNotFoundException","message":"x"}"#;
        assert_eq!(
            error_code(400, &[], body).as_deref(),
            Some("ResourceNotFoundException")
        );
        let h: &[(&str, &[u8])] = &[("X-Amzn-ErrorType", b"AccessDeniedException:http://internal")];
        assert_eq!(
            error_code(403, h, b"{}").as_deref(),
            Some("AccessDeniedException")
        );
    }

    #[test]
    fn success_has_no_code() {
        assert_eq!(error_code(200, &[], b"<Error><Code>X</Code></Error>"), None);
        assert_eq!(error_code(500, &[], b"\xff\xfe garbage"), None);
    }

    #[test]
    fn request_id_headers() {
        let h: &[(&str, &[u8])] = &[("x-amzn-RequestId", b" abc ")];
        assert_eq!(request_id(h), Some("abc"));
    }
}
