//! STS responses exactly as the emulator (moto) returned them to boto3, recorded under
//! tests/fixtures/moto-*.xml: the map learns the principals and never keeps the secret access
//! keys or session tokens that were in them.

use hoop_identity::principal::{PrincipalConfig, PrincipalMap, Source};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const SIGNER: &str = "AKIAIOSFODNN7EXAMPLE";

fn fixture(op: &str) -> String {
    std::fs::read_to_string(format!("{FIX}/moto-{op}.xml")).expect("fixture")
}

fn element<'a>(xml: &'a str, name: &str) -> &'a str {
    let open = format!("<{name}>");
    let start = xml.find(&open).expect("element") + open.len();
    let len = xml[start..].find('<').expect("end");
    &xml[start..start + len]
}

#[test]
fn moto_sts_responses_are_learned_without_secrets() {
    let map = PrincipalMap::new(PrincipalConfig::default());
    let ops = [
        "GetCallerIdentity",
        "AssumeRole",
        "AssumeRoleWithWebIdentity",
        "GetSessionToken",
        "GetFederationToken",
    ];
    let mut secrets = Vec::new();
    for op in ops {
        let body = fixture(op);
        if body.contains("<SecretAccessKey>") {
            secrets.push(element(&body, "SecretAccessKey").to_string());
            secrets.push(element(&body, "SessionToken").to_string());
        }
        map.learn_sts(Some(SIGNER), 200, body.as_bytes());
    }
    assert_eq!(secrets.len(), 8);

    let me = map.lookup(SIGNER).expect("caller identity");
    assert_eq!(
        me.arn.as_deref(),
        Some("arn:aws:sts::123456789012:user/moto")
    );
    assert_eq!(me.account_id.as_deref(), Some("123456789012"));

    let assumed = element(&fixture("AssumeRole"), "AccessKeyId").to_string();
    let p = map.lookup(&assumed).expect("assumed role key");
    assert_eq!(
        p.arn.as_deref(),
        Some("arn:aws:sts::123456789012:assumed-role/agent-role/agent-session")
    );
    assert_eq!(p.source, Source::Sts);
    assert!(p.expires_rfc3339().is_some_and(|e| e.ends_with('Z')));

    let web = element(&fixture("AssumeRoleWithWebIdentity"), "AccessKeyId").to_string();
    assert_eq!(
        map.lookup(&web).and_then(|p| p.arn).as_deref(),
        Some("arn:aws:sts::123456789012:assumed-role/agent-role/web")
    );
    // moto hands back the signer's own key id from GetSessionToken/GetFederationToken: the
    // live mapping learned from GetCallerIdentity is kept.
    assert_eq!(
        map.lookup(SIGNER).and_then(|p| p.arn).as_deref(),
        Some("arn:aws:sts::123456789012:user/moto")
    );

    let mut dumps = vec![format!("{map:?}")];
    for key in [SIGNER, &assumed, &web] {
        let info = map.lookup(key).expect("known");
        dumps.push(format!("{info:?}"));
        dumps.push(serde_json::to_string(&info).expect("json"));
        dumps.push(serde_json::to_string(&info.to_identity()).expect("json"));
    }
    for d in &dumps {
        for s in &secrets {
            assert!(
                !d.contains(s.as_str()),
                "a secret from the response leaked into {d}"
            );
        }
    }
}
