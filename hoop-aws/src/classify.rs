//! From an HTTP request to the AWS call it makes: service, operation, IAM action, read-only
//! flag, region and resource ARNs.

use std::borrow::Cow;

use serde::Serialize;

use crate::HttpRequest;
use crate::host::{HostInfo, parse_host};
use crate::model::{Model, Route, Seg, Service, model};
use crate::params::{self, Params};
use crate::sigv4::Credential;
use crate::tables;

/// One recognised AWS API call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AwsCall {
    /// botocore service name, e.g. `s3`, `dynamodb`, `sts`.
    pub service: String,
    /// Operation name as in the API reference, e.g. `PutObject`.
    pub operation: String,
    /// IAM action the call needs, e.g. `s3:PutObject`.
    pub iam_action: String,
    /// Like CloudTrail's `readOnly`.
    pub read_only: bool,
    pub region: Option<String>,
    /// ARNs of the resources the request names.
    pub resources: Vec<String>,
    /// Wire protocol of the request: `json`, `query`, `ec2`, `rest-json`, `rest-xml`,
    /// `smithy-rpc-v2-cbor`.
    pub protocol: &'static str,
}

/// Classifies a request. `cred` is the SigV4 scope (see [`crate::sigv4::parse`]), `host` the
/// host it was sent to when known from elsewhere (else the `Host` header is used),
/// `account_id` the principal's account, used in ARNs (else `*`).
pub fn classify(
    req: &HttpRequest<'_>,
    cred: Option<&Credential>,
    host: Option<&str>,
    account_id: Option<&str>,
) -> Option<AwsCall> {
    let m = model();
    let host = host
        .or_else(|| req.header_str("host"))
        .or_else(|| absolute_authority(req.target));
    let hinfo = host.map(|h| parse_host(m, h)).unwrap_or_default();
    let signing = cred.map(|c| c.service.as_str());
    let hit = find(m, req, signing, &hinfo)?;
    let svc = m.services.get(hit.svc)?;
    let op = svc.operations.get(hit.op as usize)?;

    let region = cred
        .map(|c| c.region.as_str())
        .filter(|r| *r != "*" && !r.is_empty())
        .or(hinfo.region.as_deref());
    let query = req.query().unwrap_or("");
    let versioned = hit.protocol.starts_with("rest")
        && params::pairs(query).any(|(k, v)| k == "versionId" && !v.is_empty());
    let iam = tables::iam();
    let params = collect_params(req, svc, &hit, &hinfo);
    let ctx = tables::Ctx {
        service: &svc.name,
        operation: &op.name,
        region: region.unwrap_or("*"),
        account: account_id.filter(|a| !a.is_empty()).unwrap_or("*"),
    };
    Some(AwsCall {
        service: svc.name.clone(),
        operation: op.name.clone(),
        iam_action: iam.action(
            &svc.name,
            &svc.signing_name,
            &op.name,
            req.method,
            versioned,
        ),
        read_only: iam.read_only(&svc.name, &op.name),
        region: region.map(str::to_string),
        resources: tables::resources(&ctx, &params),
        protocol: hit.protocol,
    })
}

struct Hit<'r> {
    svc: usize,
    op: u32,
    protocol: &'static str,
    /// REST: the matched route and the request path it matched against.
    route: Option<(&'static Route, Cow<'r, str>)>,
}

fn absolute_authority(target: &str) -> Option<&str> {
    let rest = target.split_once("://")?.1;
    Some(rest.split(['/', '?']).next().unwrap_or(rest))
}

fn static_protocol(p: &str) -> &'static str {
    match p {
        "json" => "json",
        "query" => "query",
        "ec2" => "ec2",
        "rest-json" => "rest-json",
        "rest-xml" => "rest-xml",
        "smithy-rpc-v2-cbor" => "smithy-rpc-v2-cbor",
        _ => "unknown",
    }
}

/// Path segments; a trailing empty segment (trailing slash) is dropped.
fn segments(path: &str) -> Vec<&str> {
    let p = path.strip_prefix('/').unwrap_or(path);
    if p.is_empty() {
        return Vec::new();
    }
    let mut v: Vec<&str> = p.split('/').collect();
    if v.len() > 1 && v.last().is_some_and(|s| s.is_empty()) {
        v.pop();
    }
    v
}

/// Byte offset of `seg` (a subslice of `path`) within `path`.
fn offset_in(path: &str, seg: &str) -> usize {
    (seg.as_ptr() as usize).saturating_sub(path.as_ptr() as usize)
}

/// Preference between services that could both serve a request: the host named it, its
/// signing name matches, its name is the signing name.
fn preference(m: &Model, i: usize, signing: Option<&str>, hinfo: &HostInfo) -> u8 {
    let Some(s) = m.services.get(i) else { return 0 };
    let mut p = 0;
    if hinfo.services.contains(&i) {
        p += 4;
    }
    if signing == Some(s.signing_name.as_str()) {
        p += 2;
    }
    if signing == Some(s.name.as_str()) || s.name == s.endpoint_prefix {
        p += 1;
    }
    p
}

fn find<'r>(
    m: &'static Model,
    req: &HttpRequest<'r>,
    signing: Option<&str>,
    hinfo: &HostInfo,
) -> Option<Hit<'r>> {
    // awsJson: X-Amz-Target names the service (by its target prefix) and the operation.
    if let Some(target) = req.header_str("x-amz-target")
        && let Some((prefix, op)) = target.rsplit_once('.')
        && let Some(svcs) = m.by_target_prefix.get(prefix)
    {
        let mut best: Option<(u8, usize, u32)> = None;
        for &i in svcs {
            let Some(&j) = m.services.get(i).and_then(|s| s.op_index.get(op)) else {
                continue;
            };
            let p = preference(m, i, signing, hinfo);
            if best.is_none_or(|(bp, _, _)| p > bp) {
                best = Some((p, i, j));
            }
        }
        if let Some((_, svc, op)) = best {
            return Some(Hit {
                svc,
                op,
                protocol: "json",
                route: None,
            });
        }
    }

    let path = req.path();
    let segs = segments(path);
    // Smithy RPC v2 CBOR: `.../service/{ServiceName}/operation/{Operation}`.
    if segs.len() >= 4
        && let [.., "service", service_name, "operation", op] = segs.as_slice()
    {
        let service_name = service_name.rsplit('#').next().unwrap_or(service_name);
        if let Some(svcs) = m.by_target_prefix.get(service_name) {
            for &i in svcs {
                if let Some(&j) = m.services.get(i).and_then(|s| s.op_index.get(*op)) {
                    return Some(Hit {
                        svc: i,
                        op: j,
                        protocol: "smithy-rpc-v2-cbor",
                        route: None,
                    });
                }
            }
        }
    }

    let cands = candidates(m, signing, hinfo);
    if cands.is_empty() {
        return None;
    }

    // Query/EC2: `Action=` in a form body, or in the query string (GET, presigned).
    let query = req.query().unwrap_or("");
    let form = form_body(req);
    let action_version = |src: &'r str| {
        let mut action = None;
        let mut version = None;
        for (k, v) in params::pairs(src) {
            match k {
                "Action" => action = Some(v),
                "Version" => version = Some(v),
                _ => {}
            }
        }
        action.map(|a| (a, version))
    };
    let action = form
        .and_then(action_version)
        .or_else(|| action_version(query));
    let qpairs: Vec<(&str, &str)> = params::pairs(query).collect();
    let mut best: Option<(i32, u8, Hit<'r>)> = None;
    for &i in cands.iter() {
        let Some(svc) = m.services.get(i) else {
            continue;
        };
        let pref = preference(m, i, signing, hinfo);
        if let Some((a, version)) = action
            && (svc.speaks("query") || svc.speaks("ec2"))
            && let Some(&j) = svc.op_index.get(a)
        {
            let score = 1000
                + if version == Some(svc.api_version.as_str()) {
                    10
                } else {
                    0
                };
            let protocol = if svc.speaks("ec2") { "ec2" } else { "query" };
            consider(
                &mut best,
                score,
                pref,
                Hit {
                    svc: i,
                    op: j,
                    protocol,
                    route: None,
                },
            );
            continue;
        }
        if let Some((score, hit)) = rest_hit(svc, i, req, path, &segs, &qpairs, hinfo) {
            consider(&mut best, score, pref, hit);
        }
    }
    // An endpoint URL may carry a base path that the SDK puts before the operation's URI
    // (the API Gateway Management API's endpoint is the API's stage URL, `/{stage}`): when
    // nothing matched the whole path, the operation's URI may follow one or two leading
    // segments.
    let mut base = path;
    for _ in 0..MAX_BASE_SEGMENTS {
        if best.is_some() {
            break;
        }
        let Some(rest) = base
            .get(1..)
            .and_then(|p| p.find('/'))
            .map(|i| &base[i + 1..])
        else {
            break;
        };
        base = rest;
        let segs = segments(base);
        for &i in cands.iter() {
            if let Some(svc) = m.services.get(i)
                && let Some((score, hit)) = rest_hit(svc, i, req, base, &segs, &qpairs, hinfo)
            {
                consider(&mut best, score, preference(m, i, signing, hinfo), hit);
            }
        }
    }
    best.map(|(_, _, h)| h)
}

/// Keeps the better of two hits: higher score, then stronger preference.
fn consider<'r>(best: &mut Option<(i32, u8, Hit<'r>)>, score: i32, pref: u8, hit: Hit<'r>) {
    if best
        .as_ref()
        .is_none_or(|(bs, bp, _)| score > *bs || (score == *bs && pref > *bp))
    {
        *best = Some((score, pref, hit));
    }
}

/// Leading path segments an endpoint's base path may add before an operation's URI.
const MAX_BASE_SEGMENTS: usize = 2;

/// The best route of a REST service for `path` (with its segments `segs`): its score and hit.
fn rest_hit<'r>(
    svc: &'static Service,
    i: usize,
    req: &HttpRequest<'r>,
    path: &'r str,
    segs: &[&str],
    qpairs: &[(&str, &str)],
    hinfo: &HostInfo,
) -> Option<(i32, Hit<'r>)> {
    if !svc.is_rest() {
        return None;
    }
    let routes = svc.routes.get(req.method)?;
    let trailing_slash = path.len() > 1 && path.ends_with('/');
    // S3 virtual-hosted style: the bucket is the first path label.
    let vpath: Cow<'r, str> = match (&hinfo.bucket, &hinfo.access_point) {
        (Some(b), _) if svc.name == "s3" => Cow::Owned(format!("/{b}{path}")),
        (_, Some((ap, _))) if svc.name == "s3" => Cow::Owned(format!("/{ap}{path}")),
        _ => Cow::Borrowed(path),
    };
    let owned_segs;
    let segs_ref = match &vpath {
        Cow::Owned(p) => {
            owned_segs = segments(p);
            &owned_segs
        }
        Cow::Borrowed(_) => segs,
    };
    let mut route_best: Option<(i32, &'static Route)> = None;
    for r in routes {
        if let Some(s) = match_route(svc, r, segs_ref, qpairs, req, trailing_slash)
            && route_best.is_none_or(|(bs, _)| s > bs)
        {
            route_best = Some((s, r));
        }
    }
    let (score, r) = route_best?;
    let protocol = static_protocol(if svc.speaks("rest-xml") {
        "rest-xml"
    } else {
        "rest-json"
    });
    Some((
        score,
        Hit {
            svc: i,
            op: r.op,
            protocol,
            route: Some((r, vpath)),
        },
    ))
}

fn candidates(m: &'static Model, signing: Option<&str>, hinfo: &HostInfo) -> Cow<'static, [usize]> {
    let by_sign: &[usize] = signing
        .and_then(|s| {
            m.by_signing_name
                .get(s)
                .or_else(|| m.by_endpoint_prefix.get(s))
        })
        .map_or(&[][..], Vec::as_slice);
    let host = hinfo.services;
    if host.is_empty() {
        return Cow::Borrowed(by_sign);
    }
    if by_sign.is_empty() || host == by_sign {
        return Cow::Borrowed(host);
    }
    let both: Vec<usize> = host
        .iter()
        .copied()
        .filter(|i| by_sign.contains(i))
        .collect();
    if both.is_empty() {
        let mut all: Vec<usize> = host.iter().chain(by_sign).copied().collect();
        all.dedup();
        Cow::Owned(all)
    } else {
        Cow::Owned(both)
    }
}

/// The body as a form (`a=b&c=d`) when it is one.
fn form_body<'r>(req: &HttpRequest<'r>) -> Option<&'r str> {
    if req.body.is_empty() {
        return None;
    }
    let is_form = req
        .header_str("content-type")
        .is_some_and(|c| c.contains("x-www-form-urlencoded"))
        || req.body.starts_with(b"Action=");
    if !is_form {
        return None;
    }
    // A partial capture may end inside a UTF-8 sequence: keep the valid prefix.
    match std::str::from_utf8(req.body) {
        Ok(s) => Some(s),
        Err(e) => std::str::from_utf8(req.body.get(..e.valid_up_to())?).ok(),
    }
}

/// Where a greedy label sits in the request segments: `Some(Some((start, len)))`;
/// `Some(None)` for a route without one; None when the segment counts cannot match.
fn greedy_span(r: &Route, segs: &[&str]) -> Option<Option<(usize, usize)>> {
    match r.segs.iter().position(|s| matches!(s, Seg::Greedy(_))) {
        Some(g) => {
            let len = (segs.len() + 1).checked_sub(r.segs.len())?;
            (len >= 1).then_some(Some((g, len)))
        }
        None => (segs.len() == r.segs.len()).then_some(None),
    }
}

/// Request segment index of template segment `i` (segments after a greedy label shift).
fn seg_index(i: usize, span: Option<(usize, usize)>) -> usize {
    match span {
        Some((g, len)) if i > g => i + len - 1,
        _ => i,
    }
}

/// Score of a route against a request, or None if it does not match. Literal segments beat
/// labels beat greedy labels; literal query discriminators (`?tagging`, `?list-type=2`) and
/// required query/header members present count more.
fn match_route(
    svc: &Service,
    r: &Route,
    segs: &[&str],
    q: &[(&str, &str)],
    req: &HttpRequest<'_>,
    trailing_slash: bool,
) -> Option<i32> {
    let span = greedy_span(r, segs)?;
    let mut score = 0i32;
    for (i, s) in r.segs.iter().enumerate() {
        match s {
            Seg::Lit(l) => {
                if segs.get(seg_index(i, span))? != l {
                    return None;
                }
                score += 3;
            }
            Seg::Label(_) => {
                if segs.get(seg_index(i, span))?.is_empty() {
                    return None;
                }
                score += 2;
            }
            Seg::Greedy(_) => {
                let (start, len) = span?;
                if segs.get(start..start + len)?.iter().all(|s| s.is_empty()) {
                    return None;
                }
                score += 1;
            }
        }
    }
    if trailing_slash == r.trailing_slash {
        score += 1;
    }
    let lookup = |k: &str| q.iter().find(|(qk, _)| *qk == k).map(|(_, v)| *v);
    for (k, v) in &r.query {
        let got = lookup(k);
        // `x-id` only names the operation; some SDKs leave it out.
        if k == "x-id" {
            match got {
                Some(g) if Some(g) != v.as_deref() => return None,
                Some(_) => score += 4,
                None => {}
            }
            continue;
        }
        match (got, v) {
            (None, _) => return None,
            (Some(g), Some(v)) if g != v => return None,
            _ => score += 4,
        }
    }
    let op = svc.operations.get(r.op as usize)?;
    if !r.query.iter().any(|(k, _)| k == "x-id") && lookup("x-id") == Some(op.name.as_str()) {
        score += 4;
    }
    for b in op.query.iter().filter(|b| b.required) {
        score += if lookup(&b.wire).is_some() { 2 } else { -2 };
    }
    for b in op.headers.iter().filter(|b| b.required) {
        score += if req.header(&b.wire).is_some() { 2 } else { -2 };
    }
    Some(score)
}

fn collect_params<'r>(
    req: &HttpRequest<'r>,
    svc: &'static Service,
    hit: &'r Hit<'r>,
    hinfo: &'r HostInfo,
) -> Params<'r> {
    let mut p = Params::default();
    let op = match svc.operations.get(hit.op as usize) {
        Some(op) => op,
        None => return p,
    };
    match hit.protocol {
        "json" => params::scan_json(req.body, &mut p),
        "query" | "ec2" => {
            let src = form_body(req).or(req.query()).unwrap_or("");
            for (k, v) in params::pairs(src) {
                if k == "Action" || k == "Version" {
                    continue;
                }
                let member = match params::decode(k, true) {
                    Cow::Borrowed(k) => Cow::Borrowed(params::form_member(k)),
                    Cow::Owned(k) => Cow::Owned(params::form_member(&k).to_string()),
                };
                p.push(member, params::decode(v, true));
            }
        }
        "rest-json" | "rest-xml" => {
            if let Some((route, path)) = &hit.route {
                let segs = segments(path);
                let span = greedy_span(route, &segs).flatten();
                for (i, s) in route.segs.iter().enumerate() {
                    let (label, raw) = match s {
                        Seg::Lit(_) => continue,
                        Seg::Label(l) => (l, segs.get(seg_index(i, span)).copied().unwrap_or("")),
                        Seg::Greedy(l) => {
                            let (start, len) = span.unwrap_or((i, 1));
                            let from = segs.get(start).map_or(path.len(), |s| offset_in(path, s));
                            // Up to the end of the last covered segment; to the end of the
                            // path (keeping a trailing slash) when the label is last.
                            let to = match segs.get(start + len) {
                                Some(next) => offset_in(path, next).saturating_sub(1),
                                None => path.len(),
                            };
                            (l, path.get(from..to).unwrap_or(""))
                        }
                    };
                    let member = op.label_member(label);
                    let value = params::decode(raw, false);
                    match (&hinfo.access_point, member) {
                        (Some((name, acct)), "Bucket") if svc.name == "s3" => {
                            p.push("AccessPoint", name.as_str());
                            p.push("AccessPointAccount", acct.as_str());
                        }
                        _ => p.push(member, value),
                    }
                }
            }
            for (k, v) in params::pairs(req.query().unwrap_or("")) {
                if k.starts_with("X-Amz-") || k.starts_with("x-amz-") {
                    continue;
                }
                let member = op
                    .query
                    .iter()
                    .find(|b| b.wire == k)
                    .map_or(k, |b| b.member.as_str());
                p.push(member, params::decode(v, false));
            }
            for b in &op.headers {
                if let Some(v) = req.header_str(&b.wire) {
                    p.push(b.member.as_str(), v);
                }
            }
            if req.body.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{') {
                params::scan_json(req.body, &mut p);
            }
        }
        _ => {}
    }
    p
}
