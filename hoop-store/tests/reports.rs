mod common;
use common::*;
use hoop_event::*;
use hoop_store::cli::{FilterArgs, ReportFormat};
use hoop_store::dump::{DumpFormat, cloudtrail_record};
use hoop_store::report::{self, policy_document};
use hoop_store::{
    DumpArgs, Filter, FrameConsole, LocalConsole, PolicyArgs, ReportArgs, Store, apply_frames,
    query,
};
use serde_json::{Value, json};
use std::io::Read;

const ROLE: &str = "arn:aws:sts::111122223333:assumed-role/ci-role/job-42";
const USER: &str = "arn:aws:iam::444455556666:user/ops/alice";

fn rec(
    t: u64,
    who: &str,
    action: &str,
    res: &[&str],
    effect: &str,
    err: Option<&str>,
) -> CallRecord {
    let (svc, op) = action.split_once(':').expect("action");
    CallRecord {
        version: RECORD_VERSION,
        time: hoop_store::timefmt::rfc3339(BASE + t * SEC),
        time_ns: BASE + t * SEC,
        duration_ms: Some(12.5),
        process: Process {
            pid: 4242,
            comm: "python3".into(),
            exe: Some("/usr/bin/python3.12".into()),
            session: Some(Ancestor {
                pid: 4000,
                comm: "claude".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        workload: Workload {
            kind: "pod".into(),
            namespace: Some("agents".into()),
            pod: Some("runner-1".into()),
            ..Default::default()
        },
        identity: Identity {
            access_key_id: Some(
                if who == ROLE {
                    "ASIAROLEKEY"
                } else {
                    "AKIAUSERKEY"
                }
                .into(),
            ),
            principal_arn: Some(who.into()),
            ..Default::default()
        },
        connection: Connection {
            id: "7f00aa".into(),
            tls: "openssl".into(),
            http: "HTTP/1.1".into(),
        },
        request: Request {
            method: "POST".into(),
            host: Some(format!("{svc}.eu-west-1.amazonaws.com")),
            path: "/".into(),
            parameters: Some(json!({"Bucket": "b1"})),
            user_agent: Some("Boto3/1.35".into()),
            ..Default::default()
        },
        response: if effect == "deny" {
            None
        } else {
            Some(Response {
                status: if err.is_some() { 403 } else { 200 },
                request_id: Some(format!("REQ{t}")),
                error_code: err.map(String::from),
                body_bytes: 10,
                elements: Some(json!({"ok": t})),
            })
        },
        aws: Aws {
            service: svc.into(),
            signing_service: Some(svc.into()),
            region: Some("eu-west-1".into()),
            operation: Some(op.into()),
            iam_action: Some(action.into()),
            read_only: Some(op.starts_with("Get") || op.starts_with("List")),
            resources: res.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
        decision: Decision {
            effect: effect.into(),
            rule: None,
            approval: None,
        },
        event: None,
    }
}

fn fixture() -> Vec<CallRecord> {
    vec![
        rec(
            10,
            ROLE,
            "s3:GetObject",
            &["arn:aws:s3:::b1/a.txt"],
            "allow",
            None,
        ),
        rec(
            20,
            ROLE,
            "s3:GetObject",
            &["arn:aws:s3:::b1/b.txt"],
            "allow",
            None,
        ),
        rec(
            30,
            ROLE,
            "s3:PutObject",
            &["arn:aws:s3:::b1/a.txt"],
            "allow",
            Some("AccessDenied"),
        ),
        rec(
            40,
            ROLE,
            "iam:CreateUser",
            &["arn:aws:iam::111122223333:user/x"],
            "deny",
            None,
        ),
        rec(50, ROLE, "sts:GetCallerIdentity", &[], "approved", None),
        rec(60, USER, "s3:ListAllMyBuckets", &[], "allow", None),
        rec(
            70,
            USER,
            "dynamodb:GetItem",
            &["arn:aws:dynamodb:eu-west-1:444455556666:table/t"],
            "allow",
            None,
        ),
        rec(
            80,
            USER,
            "dynamodb:Query",
            &["arn:aws:dynamodb:eu-west-1:444455556666:table/t"],
            "would-deny",
            None,
        ),
    ]
}

#[test]
fn report_fields() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store_with(dir.path(), &fixture());
    let r = report::build(&s, &Filter::default()).expect("report");
    assert_eq!(r.total_calls, 8);
    assert_eq!(r.identities.len(), 2);
    let role = &r.identities[0];
    assert_eq!(role.identity, ROLE);
    assert_eq!(role.principal_arn.as_deref(), Some(ROLE));
    assert_eq!(role.access_key_ids, vec!["ASIAROLEKEY"]);
    assert_eq!(role.workloads, vec!["agents/runner-1"]);
    assert_eq!(
        (
            role.calls,
            role.errors,
            role.denied,
            role.approved,
            role.would_deny
        ),
        (5, 1, 1, 1, 0)
    );
    assert_eq!(role.first_seen, "2026-11-25T00:00:10Z");
    assert_eq!(role.last_seen, "2026-11-25T00:00:50Z");
    assert_eq!(role.error_codes.get("AccessDenied"), Some(&1));
    let get = &role.actions[0];
    assert_eq!(get.action, "s3:GetObject");
    assert_eq!((get.calls, get.errors, get.denied), (2, 0, 0));
    assert_eq!(
        get.resources,
        vec!["arn:aws:s3:::b1/a.txt", "arn:aws:s3:::b1/b.txt"]
    );
    let create = role
        .actions
        .iter()
        .find(|a| a.action == "iam:CreateUser")
        .expect("create");
    assert_eq!(create.denied, 1);
    assert_eq!(role.resources.get("arn:aws:s3:::b1/a.txt"), Some(&2));
    assert_eq!(role.timeline.iter().sum::<u64>(), 5);
    assert_eq!(role.timeline_denied.iter().sum::<u64>(), 1);
    let user = &r.identities[1];
    assert_eq!(
        (user.identity.as_str(), user.calls, user.would_deny),
        (USER, 3, 1)
    );

    // Filtered report (goes through the index path) gives the same numbers for one identity.
    let r2 = report::build(
        &s,
        &Filter {
            identity: Some(USER.into()),
            ..Default::default()
        },
    )
    .expect("r");
    assert_eq!(r2.identities.len(), 1);
    assert_eq!(r2.identities[0].calls, 3);
    assert_eq!(r2.identities[0].actions, user.actions);

    let run = |format| {
        let mut out = Vec::new();
        hoop_store::run_report(
            &s,
            &ReportArgs {
                filter: FilterArgs::default(),
                format,
            },
            &mut out,
        )
        .expect("run");
        String::from_utf8(out).expect("utf8")
    };
    let md = run(ReportFormat::Md);
    assert!(
        md.contains(&format!(
            "| {ROLE} | 5 | 1 | 1 | 1 | 2026-11-25T00:00:10Z | 2026-11-25T00:00:50Z |"
        )),
        "{md}"
    );
    assert!(
        md.contains(
            "| s3:GetObject | 2 | 0 | 0 | arn:aws:s3:::b1/a.txt<br>arn:aws:s3:::b1/b.txt |"
        ),
        "{md}"
    );
    let html = run(ReportFormat::Html);
    assert_eq!(html.matches("<svg").count(), 2, "one timeline per identity");
    assert!(!html.contains("<script"), "no JS");
    assert!(html.contains("fill=\"#d04a4a\""), "blocked calls drawn");
    let csv = run(ReportFormat::Csv);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("identity,principal_arn,action,calls,errors,denied,resources"));
    assert_eq!(lines.len(), 1 + 7, "one row per identity × action");
    assert!(lines.contains(&format!("{ROLE},{ROLE},s3:GetObject,2,0,0,arn:aws:s3:::b1/a.txt arn:aws:s3:::b1/b.txt,5,1,1,1,2026-11-25T00:00:10Z,2026-11-25T00:00:50Z").as_str()), "{csv}");
    let js: Value = serde_json::from_str(&run(ReportFormat::Json)).expect("json");
    assert_eq!(js["total_calls"], 8);
    assert_eq!(js["identities"][0]["actions"][0]["action"], "s3:GetObject");
}

#[test]
fn policy_fields() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store_with(dir.path(), &fixture());
    let p = report::policies(&s, &Filter::default()).expect("p");
    assert_eq!(
        p[ROLE],
        json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "HoopObserved1", "Effect": "Allow", "Action": ["sts:GetCallerIdentity"], "Resource": ["*"]},
            {"Sid": "HoopObserved2", "Effect": "Allow", "Action": ["s3:PutObject"], "Resource": ["arn:aws:s3:::b1/a.txt"]},
            {"Sid": "HoopObserved3", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::b1/a.txt", "arn:aws:s3:::b1/b.txt"]},
        ]}),
        "blocked iam:CreateUser grants nothing"
    );
    assert_eq!(
        p[USER]["Statement"],
        json!([
            {"Sid": "HoopObserved1", "Effect": "Allow", "Action": ["s3:ListAllMyBuckets"], "Resource": ["*"]},
            {"Sid": "HoopObserved2", "Effect": "Allow", "Action": ["dynamodb:GetItem", "dynamodb:Query"], "Resource": ["arn:aws:dynamodb:eu-west-1:444455556666:table/t"]},
        ])
    );
    let mut out = Vec::new();
    let args = PolicyArgs {
        filter: FilterArgs {
            identity: Some(USER.into()),
            ..Default::default()
        },
    };
    hoop_store::run_policy(&s, &args, &mut out).expect("run");
    let doc: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(doc, p[USER]);
    let mut acts = std::collections::BTreeMap::new();
    acts.insert(
        "s3:GetObject".to_string(),
        ["*".to_string(), "arn:x".to_string()].into_iter().collect(),
    );
    assert_eq!(
        policy_document(&acts)["Statement"][0]["Resource"],
        json!(["*"])
    );
}

#[test]
fn cloudtrail_fields() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store_with(dir.path(), &fixture());
    let evs = query::query(&s, &Filter::default()).expect("q");
    let opts = hoop_store::CloudTrailOptions {
        source: Some("node-1".into()),
    };
    let c = cloudtrail_record(&evs[2], &opts);
    assert_eq!(c["eventVersion"], "1.09");
    assert_eq!(c["eventTime"], "2026-11-25T00:00:30Z");
    assert_eq!(c["eventSource"], "s3.amazonaws.com");
    assert_eq!(c["eventName"], "PutObject");
    assert_eq!(c["awsRegion"], "eu-west-1");
    assert_eq!(c["sourceIPAddress"], "node-1");
    assert_eq!(c["userAgent"], "Boto3/1.35");
    assert_eq!(
        c["userIdentity"],
        json!({"type": "AssumedRole", "principalId": "ci-role:job-42", "arn": ROLE, "accountId": "111122223333",
               "accessKeyId": "ASIAROLEKEY",
               "sessionContext": {"sessionIssuer": {"type": "Role", "userName": "ci-role",
                   "arn": "arn:aws:iam::111122223333:role/ci-role", "accountId": "111122223333"}}})
    );
    assert_eq!(c["requestParameters"], json!({"Bucket": "b1"}));
    assert_eq!(c["responseElements"], json!({"ok": 30}));
    assert_eq!(c["errorCode"], "AccessDenied");
    assert_eq!(c["requestID"], "REQ30");
    assert_eq!(c["readOnly"], false);
    assert_eq!(c["eventType"], "AwsApiCall");
    assert_eq!(c["resources"], json!([{"ARN": "arn:aws:s3:::b1/a.txt"}]));
    assert_eq!(c["recipientAccountId"], "111122223333");
    assert_eq!(c["additionalEventData"]["hoop"]["process"]["pid"], 4242);
    assert_eq!(
        c["additionalEventData"]["hoop"]["workloadName"],
        "agents/runner-1"
    );
    assert_eq!(
        c["additionalEventData"]["hoop"]["decision"]["effect"],
        "allow"
    );
    let id = c["eventID"].as_str().expect("id");
    assert!(uuid::Uuid::parse_str(id).is_ok());
    assert_eq!(
        cloudtrail_record(&evs[2], &opts)["eventID"],
        id,
        "stable across dumps"
    );
    assert_ne!(cloudtrail_record(&evs[1], &opts)["eventID"], id);
    let u = cloudtrail_record(&evs[5], &opts);
    assert_eq!(u["userIdentity"]["type"], "IAMUser");
    assert_eq!(u["userIdentity"]["userName"], "alice");
    assert_eq!(u["userIdentity"]["accountId"], "444455556666");
    assert_eq!(u["readOnly"], true);
    assert_eq!(u["resources"], json!([]));
    let unknown = hoop_store::dump::user_identity(&Identity {
        access_key_id: Some("AKIAX".into()),
        ..Default::default()
    });
    assert_eq!(
        unknown,
        json!({"type": "Unknown", "principalId": "AKIAX", "accessKeyId": "AKIAX"})
    );
    let denied = cloudtrail_record(&evs[3], &opts);
    assert!(denied.get("errorCode").is_none() && denied["responseElements"].is_null());
}

#[test]
fn dumps_plain_gzip_and_rotating() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = store_with(dir.path(), &fixture());
    let out_dir = tempfile::tempdir().expect("tmp");
    // CloudTrail file, gzip, via --output.
    let path = out_dir.path().join("trail.json.gz");
    let args = DumpArgs {
        gzip: true,
        output: Some(path.clone()),
        node: Some("n1".into()),
        ..Default::default()
    };
    let mut msg = Vec::new();
    hoop_store::run_dump(&s, &args, &mut LocalConsole::new(&mut msg, false)).expect("dump");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).expect("open"))
        .read_to_string(&mut text)
        .expect("gunzip");
    let doc: Value = serde_json::from_str(&text).expect("cloudtrail json");
    assert_eq!(doc["Records"].as_array().expect("records").len(), 8);
    assert_eq!(doc["Records"][0]["eventName"], "GetObject");
    // JSON lines with a time filter, to a writer.
    let args = DumpArgs {
        format: DumpFormat::Jsonl,
        filter: FilterArgs {
            since: Some("2026-11-25T00:00:40Z".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut out = Vec::new();
    hoop_store::run_dump(&s, &args, &mut LocalConsole::new(&mut out, false)).expect("dump");
    let lines: Vec<CallRecord> = String::from_utf8(out)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("rec"))
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0], fixture()[3]);
    // Rotating windows cover every event exactly once; files appear whole (temp + rename).
    let rot = tempfile::tempdir().expect("tmp");
    let mut d =
        hoop_store::RotatingDumper::new(rot.path(), "node/1", std::time::Duration::from_secs(45));
    d.last_to = Some(BASE);
    assert!(
        d.tick(&s, BASE + 30 * SEC).expect("tick").is_none(),
        "interval not over"
    );
    let a = d.tick(&s, BASE + 45 * SEC).expect("tick").expect("file");
    let b = d.tick(&s, BASE + 90 * SEC).expect("tick").expect("file");
    assert_eq!(
        a.file_name().and_then(|n| n.to_str()),
        Some("hoop-node_1-20261125T000000Z-20261125T000045Z.json.gz")
    );
    let count = |p: &std::path::Path| {
        let mut t = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(p).expect("o"))
            .read_to_string(&mut t)
            .expect("gz");
        let v: Value = serde_json::from_str(&t).expect("json");
        v["Records"].as_array().expect("r").len()
    };
    assert_eq!((count(&a), count(&b)), (4, 4));
    let names: Vec<String> = std::fs::read_dir(rot.path())
        .expect("rd")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "no temp files left: {names:?}");
    drop(s);
    // Works on a read-only open too.
    let ro = Store::open_read_only(dir.path()).expect("ro");
    let mut out = Vec::new();
    hoop_store::run_dump(
        &ro,
        &DumpArgs::default(),
        &mut LocalConsole::new(&mut out, false),
    )
    .expect("dump");
    assert!(
        String::from_utf8(out)
            .expect("utf8")
            .starts_with("{\"Records\":[")
    );
}

/// A command run in one process (the agent) for another (the reviewer): the output, files and
/// errors arrive as frames over a socket; binary output survives and files are written by
/// the receiving side.
#[test]
fn dump_through_frames() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = std::sync::Arc::new(store_with(dir.path(), &fixture()));
    let out_dir = tempfile::tempdir().expect("tmp");
    let run = |args: DumpArgs| -> (anyhow::Result<()>, Vec<u8>) {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let s = s.clone();
        let agent = std::thread::spawn(move || {
            let mut c = FrameConsole::new(Box::new(a));
            let r = hoop_store::run_dump(&s, &args, &mut c);
            let _ = c.end(&r);
        });
        let mut out = Vec::new();
        let r = apply_frames(b, &mut LocalConsole::new(&mut out, false));
        agent.join().expect("agent side");
        (r, out)
    };
    let gz = DumpArgs {
        gzip: true,
        ..Default::default()
    };
    let (r, out) = run(gz);
    r.expect("gzip dump through frames");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&out[..])
        .read_to_string(&mut text)
        .expect("valid gzip on stdout");
    let doc: Value = serde_json::from_str(&text).expect("cloudtrail json");
    assert_eq!(doc["Records"].as_array().expect("records").len(), 8);
    // -o: written on the receiving side.
    let path = out_dir.path().join("t.jsonl");
    let (r, out) = run(DumpArgs {
        format: DumpFormat::Jsonl,
        output: Some(path.clone()),
        ..Default::default()
    });
    r.expect("dump -o");
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        format!("8 events written to {}", path.display())
    );
    let lines = std::fs::read_to_string(&path).expect("file");
    assert_eq!(lines.lines().count(), 8);
    // --rotate-dir: the named window file appears in the receiving side's directory.
    let rot = out_dir.path().join("rot");
    let (r, out) = run(DumpArgs {
        rotate_dir: Some(rot.clone()),
        node: Some("n".into()),
        filter: FilterArgs {
            since: Some("2026-11-25T00:00:00Z".into()),
            until: Some("2026-11-25T01:00:00Z".into()),
            ..Default::default()
        },
        ..Default::default()
    });
    r.expect("rotate-dir");
    let p = rot.join("hoop-n-20261125T000000Z-20261125T010000Z.json.gz");
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        p.display().to_string()
    );
    assert!(p.exists());
    // An error ends the stream as an error, and no partial file is left.
    let (r, _) = run(DumpArgs {
        output: Some(out_dir.path().join("no/such/dir/x.json")),
        ..Default::default()
    });
    assert!(r.is_err());
    let (r, _) = run(DumpArgs {
        filter: FilterArgs {
            since: Some("yesterday-ish".into()),
            ..Default::default()
        },
        ..Default::default()
    });
    assert!(
        r.expect_err("bad time")
            .to_string()
            .contains("yesterday-ish")
    );
}

/// Enforcement events (approvals, endpoint decisions) are links of the chain that `query`
/// and `dump` return, but reports and least-privilege policies count only calls.
#[test]
fn enforcement_events_are_stored_but_not_counted_as_calls() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut recs = fixture();
    let mut ev = rec(
        41,
        ROLE,
        "iam:CreateUser",
        &["arn:aws:iam::111122223333:user/x"],
        "approval:approved",
        None,
    );
    ev.response = None;
    ev.decision.approval = Some(7);
    ev.event = Some(Event {
        held: Some(false),
        decided_by: Some("uid=0 pid=1 comm=hoop-agent".into()),
        grant_expires: Some("2026-11-25T00:15:41Z".into()),
        ..Default::default()
    });
    recs.push(ev.clone());
    let s = store_with(dir.path(), &recs);
    assert!(s.verify().ok, "events are chained like calls");
    let got = query::query(
        &s,
        &Filter {
            decision: Some("approval:*".into()),
            ..Default::default()
        },
    )
    .expect("q");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].record, ev);
    let r = report::build(&s, &Filter::default()).expect("report");
    assert_eq!(r.total_calls, 8, "the event is not a call");
    assert_eq!(r.identities[0].calls, 5);
    let p = report::policies(&s, &Filter::default()).expect("p");
    assert!(
        !p[ROLE].to_string().contains("iam:CreateUser"),
        "an approval grants nothing: {}",
        p[ROLE]
    );
    let c = cloudtrail_record(&got[0], &hoop_store::CloudTrailOptions::default());
    assert_eq!(c["eventType"], "AwsServiceEvent");
    assert_eq!(c["eventSource"], "hoop.enforcement");
    assert_eq!(c["eventName"], "approval:approved");
    assert_eq!(c["serviceEventDetails"]["decision"]["approval"], 7);
}
