//! AWS Signature Version 4: who signed a request and for which service and region.
//!
//! Two forms carry the credential scope `AKID/DATE/REGION/SERVICE/aws4_request`:
//! the `Authorization: AWS4-HMAC-SHA256 Credential=...` header and the presigned-URL query
//! parameter `X-Amz-Credential`. The signature itself is never returned.

use crate::HttpRequest;

/// The credential scope of a SigV4-signed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub access_key_id: String,
    /// `YYYYMMDD` of the scope.
    pub date: String,
    pub region: String,
    /// Signing name, e.g. `s3`, `dynamodb`, `execute-api`.
    pub service: String,
    /// `header` or `query` (presigned URL).
    pub location: SignatureLocation,
    /// The algorithm, e.g. `AWS4-HMAC-SHA256` or `AWS4-ECDSA-P256-SHA256` (SigV4a).
    pub algorithm: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureLocation {
    Header,
    Query,
}

impl SignatureLocation {
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureLocation::Header => "header",
            SignatureLocation::Query => "query",
        }
    }
}

/// Finds the SigV4 credential scope of a request, from the header or a presigned URL.
pub fn parse(req: &HttpRequest<'_>) -> Option<Credential> {
    if let Some(value) = req.header("authorization") {
        return parse_authorization(value);
    }
    let query = req.target.split_once('?')?.1;
    let mut algorithm = None;
    let mut credential = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k.eq_ignore_ascii_case("X-Amz-Credential") {
            credential = Some(percent_decode(v));
        } else if k.eq_ignore_ascii_case("X-Amz-Algorithm") {
            algorithm = Some(percent_decode(v));
        }
    }
    let algorithm = algorithm?;
    if !algorithm.starts_with("AWS4-") {
        return None;
    }
    scope(&credential?, algorithm, SignatureLocation::Query)
}

/// Parses an `Authorization` header value such as
/// `AWS4-HMAC-SHA256 Credential=AKID/20261125/us-east-1/s3/aws4_request, SignedHeaders=..., Signature=...`.
pub fn parse_authorization(value: &[u8]) -> Option<Credential> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (algorithm, rest) = value.split_once(char::is_whitespace)?;
    if !algorithm.starts_with("AWS4-") {
        return None;
    }
    let credential = rest
        .split(',')
        .map(str::trim)
        .find_map(|part| part.strip_prefix("Credential="))?;
    scope(credential, algorithm.to_string(), SignatureLocation::Header)
}

fn scope(credential: &str, algorithm: String, location: SignatureLocation) -> Option<Credential> {
    let mut parts = credential.trim().split('/');
    let access_key_id = parts.next()?;
    let date = parts.next()?;
    // SigV4a scopes have no region: AKID/DATE/SERVICE/aws4_request.
    let (region, service) = match (parts.next()?, parts.next()?, parts.next()) {
        (region, service, Some("aws4_request")) => (region, service),
        (service, "aws4_request", None) => ("*", service),
        _ => return None,
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*')
    };
    if !valid(access_key_id) || !valid(region) || !valid(service) || date.len() != 8 {
        return None;
    }
    Some(Credential {
        access_key_id: access_key_id.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        location,
        algorithm,
    })
}

/// Decodes `%XX` escapes and `+` (form encoding); invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(target: &'a str, headers: &'a [(&'a str, &'a [u8])]) -> HttpRequest<'a> {
        HttpRequest {
            method: "GET",
            target,
            headers,
            body: b"",
        }
    }

    #[test]
    fn header_scope() {
        let h: &[(&str, &[u8])] = &[(
            "Authorization",
            b"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261125/eu-west-1/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature=deadbeef",
        )];
        let c = parse(&req("/", h)).expect("credential");
        assert_eq!(c.access_key_id, "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(c.date, "20261125");
        assert_eq!(c.region, "eu-west-1");
        assert_eq!(c.service, "dynamodb");
        assert_eq!(c.location, SignatureLocation::Header);
    }

    #[test]
    fn presigned_query() {
        let c = parse(&req(
            "/bucket/key?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAXYZ%2F20261125%2Fus-east-2%2Fs3%2Faws4_request&X-Amz-Signature=abc",
            &[],
        ))
        .expect("credential");
        assert_eq!(c.access_key_id, "ASIAXYZ");
        assert_eq!(c.region, "us-east-2");
        assert_eq!(c.service, "s3");
        assert_eq!(c.location, SignatureLocation::Query);
    }

    #[test]
    fn sigv4a_scope_has_no_region() {
        let c = parse_authorization(
            b"AWS4-ECDSA-P256-SHA256 Credential=AKID/20261125/s3/aws4_request, SignedHeaders=host, Signature=00",
        )
        .expect("credential");
        assert_eq!(c.region, "*");
        assert_eq!(c.service, "s3");
    }

    #[test]
    fn rejects_non_sigv4() {
        assert!(parse_authorization(b"Bearer abc").is_none());
        assert!(parse_authorization(b"AWS AKID:sig").is_none());
        assert!(parse_authorization(b"AWS4-HMAC-SHA256 Credential=a/b").is_none());
        assert!(parse_authorization(&[0xff, 0xfe, b' ', b'x']).is_none());
        assert!(
            parse(&req(
                "/?X-Amz-Credential=a%2F20261125%2Fr%2Fs%2Faws4_request",
                &[]
            ))
            .is_none()
        );
    }

    #[test]
    fn percent_decoding_is_total() {
        assert_eq!(percent_decode("a%2Fb+c%zz%"), "a/b c%zz%");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
