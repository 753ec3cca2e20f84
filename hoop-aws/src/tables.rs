//! The hand-maintained tables next to the generated model: IAM action exceptions and
//! read-only flags (`data/iam.tsv`), resource ARN templates (`data/resources.tsv`).

use std::sync::LazyLock;

use crate::model::FastMap;
use crate::params::Params;

static IAM_TSV: &str = include_str!("../data/iam.tsv");
static RESOURCES_TSV: &str = include_str!("../data/resources.tsv");

#[derive(Debug, Default)]
pub struct IamTable {
    prefix: FastMap<String, String>,
    /// service -> operation -> value: looked up by `&str` without building keys.
    action: FastMap<String, FastMap<String, String>>,
    version: FastMap<String, FastMap<String, String>>,
    method: Vec<String>,
    readonly: FastMap<String, FastMap<String, bool>>,
}

static IAM: LazyLock<IamTable> = LazyLock::new(|| IamTable::parse(IAM_TSV));
static RESOURCES: LazyLock<FastMap<String, Vec<Rule>>> =
    LazyLock::new(|| parse_rules(RESOURCES_TSV));

pub fn iam() -> &'static IamTable {
    &IAM
}

const READ_VERBS: [&str; 16] = [
    "Get", "List", "Describe", "Head", "Query", "Scan", "BatchGet", "Search", "Lookup", "Select",
    "Check", "View", "Download", "Preview", "Estimate", "Validate",
];

impl IamTable {
    fn parse(text: &str) -> IamTable {
        let mut t = IamTable::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split('\t').collect();
            match (f.first().copied(), f.len()) {
                (Some("prefix"), 3) => {
                    t.prefix.insert(f[1].to_string(), f[2].to_string());
                }
                (Some("action"), 4) => {
                    t.action
                        .entry(f[1].to_string())
                        .or_default()
                        .insert(f[2].to_string(), f[3].to_string());
                }
                (Some("version"), 4) => {
                    t.version
                        .entry(f[1].to_string())
                        .or_default()
                        .insert(f[2].to_string(), f[3].to_string());
                }
                (Some("method"), 2) => t.method.push(f[1].to_string()),
                (Some("readonly"), 4) => {
                    t.readonly
                        .entry(f[1].to_string())
                        .or_default()
                        .insert(f[2].to_string(), f[3] == "true");
                }
                _ => {}
            }
        }
        t
    }

    /// IAM service prefix of a service (`monitoring` signs CloudWatch, whose prefix is
    /// `cloudwatch`).
    pub fn prefix<'a>(&'a self, service: &str, signing_name: &'a str) -> &'a str {
        self.prefix
            .get(service)
            .map_or(signing_name, String::as_str)
    }

    pub fn action(
        &self,
        service: &str,
        signing_name: &str,
        operation: &str,
        method: &str,
        versioned: bool,
    ) -> String {
        let get = |m: &FastMap<String, FastMap<String, String>>| {
            m.get(service).and_then(|ops| ops.get(operation)).cloned()
        };
        if versioned && let Some(a) = get(&self.version) {
            return a;
        }
        if let Some(a) = get(&self.action) {
            return a;
        }
        let prefix = self.prefix(service, signing_name);
        if self.method.iter().any(|m| m == service) {
            return format!("{prefix}:{method}");
        }
        format!("{prefix}:{operation}")
    }

    pub fn read_only(&self, service: &str, operation: &str) -> bool {
        if let Some(&r) = self.readonly.get(service).and_then(|o| o.get(operation)) {
            return r;
        }
        READ_VERBS.iter().any(|v| {
            operation.strip_prefix(v).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_uppercase())
            })
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Partition,
    Region,
    Account,
    Member(String, Transform),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transform {
    None,
    Last,
    Acct,
    NoSlash,
    CopySrc,
}

/// What a rule requires of a member's value (besides being present and non-empty).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cond {
    /// `Member^prefix`: starts with the prefix (empty: anything).
    Prefix(String),
    /// `Member!value`: is not the value, nor an ARN whose last path segment is it.
    Not(String),
}

impl Cond {
    fn holds(&self, v: &str) -> bool {
        match self {
            Cond::Prefix(p) => v.starts_with(p.as_str()),
            Cond::Not(n) => v != n && v.rsplit_once('/').is_none_or(|(_, last)| last != n),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    ops: Vec<String>,
    members: Vec<(String, Cond)>,
    parts: Vec<Part>,
}

fn parse_template(t: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Lit(rest[..open].to_string()));
        }
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        parts.push(match name {
            "partition" => Part::Partition,
            "region" => Part::Region,
            "account" => Part::Account,
            _ => {
                let (m, f) = name.split_once('|').unwrap_or((name, ""));
                let f = match f {
                    "last" => Transform::Last,
                    "acct" => Transform::Acct,
                    "noslash" => Transform::NoSlash,
                    "copysrc" => Transform::CopySrc,
                    _ => Transform::None,
                };
                Part::Member(m.to_string(), f)
            }
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_string()));
    }
    parts
}

fn parse_rules(text: &str) -> FastMap<String, Vec<Rule>> {
    let mut rules: FastMap<String, Vec<Rule>> = FastMap::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 3 {
            continue;
        }
        let (service, ops) = f[0].split_once('@').unwrap_or((f[0], ""));
        let members = f[1]
            .split(',')
            .map(|m| match (m.split_once('^'), m.split_once('!')) {
                (Some((m, p)), _) => (m.to_string(), Cond::Prefix(p.to_string())),
                (None, Some((m, n))) => (m.to_string(), Cond::Not(n.to_string())),
                (None, None) => (m.to_string(), Cond::Prefix(String::new())),
            })
            .collect();
        rules.entry(service.to_string()).or_default().push(Rule {
            ops: ops
                .split('|')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            members,
            parts: parse_template(f[2]),
        });
    }
    rules
}

/// `aws`, `aws-cn`, `aws-us-gov`... from a region name.
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("us-isob-") {
        "aws-iso-b"
    } else if region.starts_with("us-iso-") {
        "aws-iso"
    } else if region.starts_with("eusc-") {
        "aws-eusc"
    } else {
        "aws"
    }
}

/// Upper bound on resources per call (EC2 can name thousands of instances in one request).
const MAX_RESOURCES: usize = 64;

pub struct Ctx<'a> {
    pub service: &'a str,
    pub operation: &'a str,
    pub region: &'a str,
    pub account: &'a str,
}

fn render<'v>(rule: &Rule, ctx: &Ctx<'_>, value_of: &dyn Fn(&str) -> Option<&'v str>) -> String {
    let mut out = String::with_capacity(64);
    for p in &rule.parts {
        match p {
            Part::Lit(s) => out.push_str(s),
            Part::Partition => out.push_str(partition(ctx.region)),
            Part::Region => out.push_str(ctx.region),
            Part::Account => out.push_str(ctx.account),
            Part::Member(m, f) => {
                if let Some(v) = value_of(m) {
                    out.push_str(&transform(v, *f, ctx.account));
                }
            }
        }
    }
    out
}

fn transform(v: &str, f: Transform, account: &str) -> String {
    match f {
        Transform::None => v.to_string(),
        Transform::Last => v
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(v)
            .to_string(),
        Transform::Acct => {
            let mut segs = v.trim_end_matches('/').rsplit('/');
            segs.next();
            match segs.next() {
                Some(a) if a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()) => a.to_string(),
                _ => account.to_string(),
            }
        }
        Transform::NoSlash => v.trim_start_matches('/').to_string(),
        Transform::CopySrc => {
            let d = crate::params::decode(v, false);
            let d = d.trim_start_matches('/');
            d.split_once("?versionId=")
                .map_or(d, |(k, _)| k)
                .to_string()
        }
    }
}

/// ARNs of the resources a request names: the service's templates, then every parameter value
/// that already is an ARN.
pub fn resources(ctx: &Ctx<'_>, params: &Params<'_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let push = |out: &mut Vec<String>, arn: String| {
        if out.len() < MAX_RESOURCES && !out.contains(&arn) {
            out.push(arn);
        }
    };
    let mut used: Vec<&str> = Vec::new();
    if let Some(rules) = RESOURCES.get(ctx.service) {
        for rule in rules {
            if !rule.ops.is_empty() && !rule.ops.iter().any(|o| o == ctx.operation) {
                continue;
            }
            let ok = rule.members.iter().all(|(m, cond)| {
                !used.contains(&m.as_str())
                    && params
                        .first(m)
                        .is_some_and(|v| !v.is_empty() && cond.holds(v))
            });
            if !ok {
                continue;
            }
            used.extend(rule.members.iter().map(|(m, _)| m.as_str()));
            if let [(only, _)] = rule.members.as_slice() {
                // One ARN per value of a list member.
                for v in params.all(only) {
                    if v.starts_with("arn:") {
                        push(&mut out, v.to_string());
                        continue;
                    }
                    push(&mut out, render(rule, ctx, &|_| Some(v)));
                }
            } else {
                let arn = render(rule, ctx, &|m| params.first(m));
                push(&mut out, arn);
            }
        }
    }
    for (_, v) in &params.items {
        if v.starts_with("arn:") && v.len() <= 2048 {
            push(&mut out, v.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iam_defaults_and_exceptions() {
        let t = iam();
        assert_eq!(
            t.action("s3", "s3", "ListObjectsV2", "GET", false),
            "s3:ListBucket"
        );
        assert_eq!(
            t.action("s3", "s3", "GetObject", "GET", true),
            "s3:GetObjectVersion"
        );
        assert_eq!(
            t.action("cloudwatch", "monitoring", "PutMetricData", "POST", false),
            "cloudwatch:PutMetricData"
        );
        assert_eq!(
            t.action("apigateway", "apigateway", "GetRestApis", "GET", false),
            "apigateway:GET"
        );
        assert_eq!(
            t.action("dynamodb", "dynamodb", "PutItem", "POST", false),
            "dynamodb:PutItem"
        );
        assert!(t.read_only("s3", "GetObject"));
        assert!(t.read_only("kms", "Decrypt"));
        assert!(!t.read_only("sqs", "ReceiveMessage"));
        assert!(!t.read_only("s3", "PutObject"));
        assert!(!t.read_only("x", "Getaway"));
        assert!(t.read_only("x", "List"));
    }

    #[test]
    fn iam_exceptions_from_data() {
        let t = iam();
        let cases = [
            // (service, signing name, operation, method, versioned, IAM action)
            ("s3", "s3", "HeadObject", "HEAD", false, "s3:GetObject"),
            (
                "s3",
                "s3",
                "HeadObject",
                "HEAD",
                true,
                "s3:GetObjectVersion",
            ),
            ("s3", "s3", "GetObjectAcl", "GET", false, "s3:GetObjectAcl"),
            (
                "s3",
                "s3",
                "GetObjectAcl",
                "GET",
                true,
                "s3:GetObjectVersionAcl",
            ),
            ("s3", "s3", "ListObjects", "GET", false, "s3:ListBucket"),
            (
                "s3",
                "s3",
                "ListBuckets",
                "GET",
                false,
                "s3:ListAllMyBuckets",
            ),
            (
                "s3",
                "s3",
                "DeleteObjects",
                "POST",
                false,
                "s3:DeleteObject",
            ),
            (
                "s3",
                "s3",
                "CreateSession",
                "GET",
                false,
                "s3express:CreateSession",
            ),
            ("ses", "ses", "SendEmail", "POST", false, "ses:SendEmail"),
            ("sesv2", "ses", "SendEmail", "POST", false, "ses:SendEmail"),
            (
                "cloudwatch",
                "monitoring",
                "GetMetricData",
                "POST",
                false,
                "cloudwatch:GetMetricData",
            ),
            (
                "lambda",
                "lambda",
                "Invoke",
                "POST",
                false,
                "lambda:InvokeFunction",
            ),
            (
                "sqs",
                "sqs",
                "SendMessageBatch",
                "POST",
                false,
                "sqs:SendMessage",
            ),
            (
                "sqs",
                "sqs",
                "ChangeMessageVisibilityBatch",
                "POST",
                false,
                "sqs:ChangeMessageVisibility",
            ),
            (
                "bedrock-runtime",
                "bedrock",
                "Converse",
                "POST",
                false,
                "bedrock:InvokeModel",
            ),
            (
                "bedrock-runtime",
                "bedrock",
                "InvokeModel",
                "POST",
                false,
                "bedrock:InvokeModel",
            ),
            (
                "apigatewaymanagementapi",
                "execute-api",
                "DeleteConnection",
                "DELETE",
                false,
                "execute-api:ManageConnections",
            ),
            (
                "dynamodbstreams",
                "dynamodb",
                "GetRecords",
                "POST",
                false,
                "dynamodb:GetRecords",
            ),
            (
                "elbv2",
                "elasticloadbalancing",
                "DescribeLoadBalancers",
                "POST",
                false,
                "elasticloadbalancing:DescribeLoadBalancers",
            ),
            (
                "apigatewayv2",
                "apigateway",
                "GetApis",
                "GET",
                false,
                "apigateway:GET",
            ),
        ];
        for (svc, signing, op, method, versioned, want) in cases {
            assert_eq!(
                t.action(svc, signing, op, method, versioned),
                want,
                "{svc} {op}"
            );
        }
    }

    /// Every row of the hand-written tables names a service and operations that exist in the
    /// generated model (a typo would silently never apply).
    #[test]
    fn data_rows_name_real_services_and_operations() {
        let m = crate::model::model();
        let has_op = |s: &str, op: &str| m.service(s).is_some_and(|s| s.operation(op).is_some());
        for line in IAM_TSV.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["prefix", s, _] | ["method", s] => {
                    assert!(m.service(s).is_some(), "iam.tsv: {line}")
                }
                ["action" | "version" | "readonly", s, op, _] => {
                    assert!(has_op(s, op), "iam.tsv: {line}")
                }
                _ => panic!("iam.tsv: malformed row {line:?}"),
            }
        }
        for line in RESOURCES_TSV.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 3, "resources.tsv: malformed row {line:?}");
            let (s, ops) = f[0].split_once('@').unwrap_or((f[0], ""));
            assert!(m.service(s).is_some(), "resources.tsv: {line}");
            for op in ops.split('|').filter(|o| !o.is_empty()) {
                assert!(has_op(s, op), "resources.tsv: no {s}.{op}");
            }
        }
    }

    #[test]
    fn member_conditions() {
        assert!(Cond::Prefix("alias/".into()).holds("alias/x"));
        assert!(!Cond::Prefix("alias/".into()).holds("k-1"));
        assert!(Cond::Not("default".into()).holds("orders"));
        assert!(!Cond::Not("default".into()).holds("default"));
        assert!(!Cond::Not("default".into()).holds("arn:aws:events:r:1:event-bus/default"));
    }

    #[test]
    fn partitions() {
        assert_eq!(partition("cn-north-1"), "aws-cn");
        assert_eq!(partition("us-gov-west-1"), "aws-us-gov");
        assert_eq!(partition("eu-west-1"), "aws");
    }

    #[test]
    fn rules_parse() {
        assert!(RESOURCES.get("s3").is_some_and(|r| r.len() >= 4));
        for rules in RESOURCES.values() {
            for r in rules {
                assert!(!r.members.is_empty() && !r.parts.is_empty());
            }
        }
    }
}
