//! What the Host header says: endpoint prefix, region, and for S3 the bucket or access point
//! carried in the host name.

use crate::model::Model;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Indexes of services whose endpoint prefix the host names (empty: not an AWS host).
    pub services: &'static [usize],
    pub region: Option<String>,
    /// S3 virtual-hosted-style bucket.
    pub bucket: Option<String>,
    /// S3 access point `(name, account)`.
    pub access_point: Option<(String, String)>,
    /// True when the host is an AWS domain (not an IP or custom endpoint).
    pub aws: bool,
}

const AWS_SUFFIXES: [&str; 6] = [
    ".amazonaws.com",
    ".amazonaws.com.cn",
    ".api.aws",
    ".api.amazonwebservices.com.cn",
    ".c2s.ic.gov",
    ".sc2s.sgov.gov",
];

/// `us-east-1`, `us-gov-west-1`, `cn-north-1`, `us-iso-east-1`...
pub fn is_region(s: &str) -> bool {
    let mut parts = s.split('-');
    let Some(first) = parts.next() else {
        return false;
    };
    if first.len() != 2 || !first.bytes().all(|b| b.is_ascii_lowercase()) {
        return false;
    }
    let rest: Vec<&str> = parts.collect();
    match rest.split_last() {
        Some((num, mid)) => {
            !mid.is_empty()
                && !num.is_empty()
                && num.len() <= 2
                && num.bytes().all(|b| b.is_ascii_digit())
                && mid
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        }
        None => false,
    }
}

/// Strips the port and a trailing dot; lower-cases only when needed.
fn normalize(host: &str) -> std::borrow::Cow<'_, str> {
    let h = host.trim();
    let h = if h.starts_with('[') {
        // IPv6 literal: never an AWS name.
        h
    } else {
        h.rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(h, |(h, _)| h)
    };
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

/// Host names of the S3 data plane that are not endpoint prefixes in the model.
fn s3_data_plane(label: &str) -> Option<bool> {
    match label {
        "s3-accesspoint" | "s3-object-lambda" => Some(true),
        "s3-website" => Some(false),
        l if l.starts_with("s3express-") && l != "s3express-control" => Some(false),
        _ => None,
    }
}

pub fn parse_host(model: &'static Model, host: &str) -> HostInfo {
    let mut info = HostInfo::default();
    let host = normalize(host);
    let Some(stem) = AWS_SUFFIXES.iter().find_map(|s| host.strip_suffix(s)) else {
        return info;
    };
    info.aws = true;
    // The region is the last label that looks like one; what precedes it names the service.
    let mut prefix = stem;
    let mut end = stem.len();
    for label in stem.rsplit('.') {
        let start = end - label.len();
        if is_region(label) {
            info.region = Some(label.to_string());
            prefix = &stem[..start.saturating_sub(1)];
            break;
        }
        end = start.saturating_sub(1);
    }
    while let Some(p) = prefix
        .strip_suffix(".dualstack")
        .or_else(|| prefix.strip_suffix(".fips"))
    {
        prefix = p;
    }
    let (lead, last) = prefix.rsplit_once('.').unwrap_or(("", prefix));
    // Forms whose last label is not itself an endpoint prefix: `s3-fips`, legacy
    // `s3-<region>`, access points, S3 Express zonal endpoints.
    let mut special = last.strip_suffix("-fips").map(|l| (l, false));
    if info.region.is_none()
        && let Some(r) = last.strip_prefix("s3-").filter(|r| is_region(r))
    {
        info.region = Some(r.to_string());
        special = Some(("s3", false));
    }
    if let Some(ap) = s3_data_plane(last) {
        special = Some(("s3", ap));
    }
    match special {
        Some((name, ap)) => {
            if let Some(svcs) = model.by_endpoint_prefix.get(name) {
                info.services = svcs;
            }
            if ap {
                // `<name>-<12-digit account>`
                if let Some((name, acct)) = lead.rsplit_once('-')
                    && acct.len() == 12
                    && acct.bytes().all(|b| b.is_ascii_digit())
                {
                    info.access_point = Some((name.to_string(), acct.to_string()));
                }
            } else if name == "s3" && !lead.is_empty() {
                info.bucket = Some(lead.to_string());
            }
        }
        None => {
            // Longest label-suffix that is an endpoint prefix; leading labels are a bucket, an
            // account id host prefix, an API id...
            let mut cand = prefix;
            loop {
                if let Some(svcs) = model.by_endpoint_prefix.get(cand) {
                    info.services = svcs;
                    let lead = &prefix[..prefix.len() - cand.len()];
                    let lead = lead.strip_suffix('.').unwrap_or(lead);
                    if cand == "s3" && !lead.is_empty() {
                        info.bucket = Some(lead.to_string());
                    }
                    break;
                }
                match cand.split_once('.') {
                    Some((_, rest)) => cand = rest,
                    None => break,
                }
            }
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::model;

    fn names(h: &HostInfo) -> Vec<&str> {
        h.services
            .iter()
            .map(|&i| model().services[i].name.as_str())
            .collect()
    }

    #[test]
    fn regions() {
        for r in [
            "us-east-1",
            "us-gov-west-1",
            "cn-north-1",
            "ap-southeast-2",
            "us-iso-east-1",
        ] {
            assert!(is_region(r), "{r}");
        }
        for r in ["s3", "us-east", "dualstack", "1-east-1", "us--1"] {
            assert!(!is_region(r), "{r}");
        }
    }

    #[test]
    fn hosts() {
        let m = model();
        let h = parse_host(m, "dynamodb.eu-west-1.amazonaws.com");
        assert_eq!(names(&h), ["dynamodb"]);
        assert_eq!(h.region.as_deref(), Some("eu-west-1"));
        let h = parse_host(m, "my.bucket.s3.dualstack.us-west-2.amazonaws.com:443");
        assert_eq!(names(&h), ["s3"]);
        assert_eq!(h.bucket.as_deref(), Some("my.bucket"));
        let h = parse_host(m, "bkt.s3-fips.us-east-1.amazonaws.com");
        assert_eq!(h.bucket.as_deref(), Some("bkt"));
        let h = parse_host(m, "bkt.s3-us-west-2.amazonaws.com");
        assert_eq!(
            (h.bucket.as_deref(), h.region.as_deref()),
            (Some("bkt"), Some("us-west-2"))
        );
        let h = parse_host(m, "bkt.s3.amazonaws.com");
        assert_eq!((h.bucket.as_deref(), h.region), (Some("bkt"), None));
        let h = parse_host(m, "ap1-123456789012.s3-accesspoint.us-east-1.amazonaws.com");
        assert_eq!(names(&h), ["s3"]);
        assert_eq!(h.access_point, Some(("ap1".into(), "123456789012".into())));
        let h = parse_host(m, "123456789012.s3-control.us-east-1.amazonaws.com");
        assert_eq!(names(&h), ["s3control"]);
        let h = parse_host(m, "IAM.amazonaws.com");
        assert_eq!(names(&h), ["iam"]);
        let h = parse_host(m, "streams.dynamodb.us-east-1.amazonaws.com");
        assert_eq!(names(&h), ["dynamodbstreams"]);
        let h = parse_host(m, "sqs.us-east-1.api.aws");
        assert_eq!(names(&h), ["sqs"]);
        // FIPS and dual-stack endpoints of other services.
        for (host, svc, region) in [
            (
                "dynamodb-fips.us-east-1.amazonaws.com",
                "dynamodb",
                "us-east-1",
            ),
            ("dynamodb-fips.us-east-1.api.aws", "dynamodb", "us-east-1"),
            ("dynamodb.us-east-1.api.aws", "dynamodb", "us-east-1"),
            (
                "kms-fips.us-gov-west-1.amazonaws.com",
                "kms",
                "us-gov-west-1",
            ),
            ("ec2.dualstack.eu-west-1.amazonaws.com", "ec2", "eu-west-1"),
            ("sts-fips.us-east-2.amazonaws.com", "sts", "us-east-2"),
        ] {
            let h = parse_host(m, host);
            assert_eq!(names(&h), [svc], "{host}");
            assert_eq!(h.region.as_deref(), Some(region), "{host}");
            assert_eq!(h.bucket, None, "{host}");
        }
        assert!(!parse_host(m, "127.0.0.1:4566").aws);
        assert!(parse_host(m, "[::1]:4566").services.is_empty());
        assert!(parse_host(m, "").services.is_empty());
    }
}
