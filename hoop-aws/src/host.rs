//! What the Host header says: endpoint prefix, region, and for S3 the bucket or access point
//! carried in the host name.

use crate::model::Model;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// Indexes of services whose endpoint prefix the host names (empty: not an AWS host).
    pub services: Vec<usize>,
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

pub fn parse_host(model: &Model, host: &str) -> HostInfo {
    let mut info = HostInfo::default();
    let host = normalize(host);
    let Some(stem) = AWS_SUFFIXES.iter().find_map(|s| host.strip_suffix(s)) else {
        return info;
    };
    info.aws = true;
    let labels: Vec<&str> = stem.split('.').collect();
    // The region is the last label that looks like one; legacy S3 hosts fold it into
    // `s3-<region>` / `s3-website-<region>`.
    let region_at = labels.iter().rposition(|l| is_region(l));
    let mut prefix_labels: Vec<&str> = match region_at {
        Some(i) => {
            info.region = labels.get(i).map(|r| r.to_string());
            labels[..i].to_vec()
        }
        None => labels.clone(),
    };
    prefix_labels.retain(|l| *l != "dualstack" && *l != "fips");
    if let Some(last) = prefix_labels.last_mut() {
        if let Some(stripped) = last.strip_suffix("-fips") {
            *last = stripped;
        }
        if info.region.is_none()
            && let Some(r) = last.strip_prefix("s3-").filter(|r| is_region(r))
        {
            info.region = Some(r.to_string());
            *last = "s3";
        }
    }
    // S3 data-plane host forms that are not endpoint prefixes in the model.
    if let Some(last) = prefix_labels.last_mut()
        && (*last == "s3-accesspoint"
            || *last == "s3-object-lambda"
            || last.starts_with("s3express-")
            || *last == "s3-website")
        && *last != "s3express-control"
    {
        let ap = *last == "s3-accesspoint" || *last == "s3-object-lambda";
        *last = "s3";
        if ap && prefix_labels.len() >= 2 {
            let lead = prefix_labels[..prefix_labels.len() - 1].join(".");
            // `<name>-<12-digit account>`
            if let Some((name, acct)) = lead.rsplit_once('-')
                && acct.len() == 12
                && acct.bytes().all(|b| b.is_ascii_digit())
            {
                info.access_point = Some((name.to_string(), acct.to_string()));
            }
        }
    }
    // Longest suffix of the remaining labels that is an endpoint prefix; leading labels are
    // a bucket, an account id host prefix, an API id...
    for start in 0..prefix_labels.len() {
        let candidate = prefix_labels[start..].join(".");
        if let Some(svcs) = model.by_endpoint_prefix.get(&candidate) {
            info.services = svcs.clone();
            if start > 0 && candidate == "s3" && info.access_point.is_none() {
                info.bucket = Some(prefix_labels[..start].join("."));
            }
            break;
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
        assert!(!parse_host(m, "127.0.0.1:4566").aws);
        assert!(parse_host(m, "[::1]:4566").services.is_empty());
        assert!(parse_host(m, "").services.is_empty());
    }
}
