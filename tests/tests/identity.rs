//! End-to-end (issue 4): every call names its maker — process, workload and AWS principal —
//! through the real agent, real eBPF and real SDK processes against the emulator; and the
//! secrets that STS hands out never reach the agent's disk.

use hoop_e2e::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v[what].as_str().unwrap_or_default()
}

#[test]
fn assumed_role_keys_are_attributed_to_the_role_and_never_stored() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    let mut cmd = python();
    cmd.arg(client_script("assume_role.py"));
    emu.client_env(&mut cmd);
    let (pid, out) = run_client(cmd)?;
    let info: Value = serde_json::from_str(out.trim())?;
    let role_arn = s(&info, "role_arn").to_string();
    let temp_akid = s(&info, "access_key_id").to_string();
    let temp_secret = s(&info, "secret_access_key").to_string();
    let token = s(&info, "session_token").to_string();
    assert!(
        role_arn.contains(":assumed-role/hoop-e2e-role/"),
        "moto's ARN: {role_arn}"
    );
    assert!(temp_akid.starts_with("ASIA"), "temporary key: {temp_akid}");
    assert!(
        temp_secret.len() >= 20 && token.len() >= 20,
        "secrets in the STS response"
    );

    let recs = agent.wait_records(pid, WAIT, |r| {
        r.iter()
            .filter(|r| r["identity"]["access_key_id"] == temp_akid.as_str())
            .count()
            >= 6
    });
    let dump = || serde_json::to_string_pretty(&recs).unwrap_or_default();
    // The long-term key signed ListBuckets, ListTables and AssumeRole; the temporary key
    // signed everything after.
    let long: Vec<&Value> = matching(&recs, |r| r["identity"]["access_key_id"] == ACCESS_KEY_ID);
    let temp: Vec<&Value> = matching(&recs, |r| {
        r["identity"]["access_key_id"] == temp_akid.as_str()
    });
    assert_eq!(long.len(), 3, "long-term calls:\n{}", dump());
    assert_eq!(temp.len(), 6, "calls with the temporary key:\n{}", dump());
    assert_eq!(recs.len(), 9, "no other records:\n{}", dump());
    let assume: Vec<&&Value> = long
        .iter()
        .filter(|r| r["aws"]["operation"] == "AssumeRole")
        .collect();
    assert_eq!(assume.len(), 1, "AssumeRole record:\n{}", dump());
    assert_eq!(assume[0]["aws"]["iam_action"], "sts:AssumeRole");
    // The record keeps the request parameters and response elements, with the secrets in
    // them replaced by mask tokens.
    let params = &assume[0]["request"]["parameters"];
    assert_eq!(
        params["RoleArn"], "arn:aws:iam::123456789012:role/hoop-e2e-role",
        "{params}"
    );
    let creds = &assume[0]["response"]["elements"]["AssumeRoleResult"]["Credentials"];
    assert_eq!(
        creds["AccessKeyId"],
        temp_akid.as_str(),
        "elements: {}",
        assume[0]
    );
    for k in ["SecretAccessKey", "SessionToken"] {
        assert!(
            creds[k]
                .as_str()
                .is_some_and(|v| v.starts_with("hoop:mask:")),
            "{k} masked in {creds}"
        );
    }
    for r in &long {
        assert_ne!(
            r["identity"]["principal_arn"],
            role_arn.as_str(),
            "long-term call attributed to the role: {r}"
        );
        assert_ne!(r["identity"]["source"], "sts", "long-term call: {r}");
    }
    let mut ops = Vec::new();
    for r in &temp {
        let id = &r["identity"];
        assert_eq!(id["principal_arn"], role_arn.as_str(), "principal of {r}");
        assert_eq!(id["account_id"], "123456789012", "account of {r}");
        assert_eq!(id["source"], "sts", "source of {r}");
        let exp = id["expires"].as_str().unwrap_or_default();
        assert!(
            exp.len() >= 20 && exp.contains('T'),
            "expiry (RFC 3339) in {r}"
        );
        assert_eq!(r["process"]["pid"], pid);
        assert_eq!(r["response"]["status"], 200, "{r}");
        ops.push(s(&r["aws"], "operation").to_string());
    }
    // Time order is call order: AssumeRole precedes every temporary-key call.
    let t_assume = assume[0]["time_ns"].as_u64().unwrap_or(u64::MAX);
    assert!(
        temp.iter()
            .all(|r| r["time_ns"].as_u64().unwrap_or(0) > t_assume)
    );
    ops.sort();
    assert_eq!(
        ops,
        [
            "CreateBucket",
            "GetCallerIdentity",
            "ListObjectsV2",
            "ListSecrets",
            "ListTables",
            "PutObject"
        ],
        "operations with the temporary key"
    );

    // The query API answers the same per identity.
    let (ok, q, err) = agent.cli(&["query", "--principal", &role_arn, "--format", "jsonl"])?;
    assert!(ok, "query --principal: {err}");
    let qr = jsonl(&q);
    assert_eq!(
        qr.iter().filter(|r| r["process"]["pid"] == pid).count(),
        6,
        "query --principal {role_arn}:\n{q}"
    );

    agent.stop()?;
    // Nothing the agent wrote holds the temporary secret, the session token or the
    // long-term secret: raw files of the data directory, decompressed store blocks, the
    // output file, and everything the store gives back.
    let stored = stored_bytes(&agent.data_dir);
    let output = std::fs::read(&agent.output)?;
    assert!(
        find_bytes(&output, temp_akid.as_bytes()).is_some(),
        "the check can see the output"
    );
    assert!(
        find_bytes(&stored, role_arn.as_bytes()).is_some(),
        "the check can see into the store (role ARN readable after decompression)"
    );
    let (ok, all, err) = agent.cli(&["query", "--format", "jsonl"])?;
    assert!(ok, "query on the stopped agent's data dir: {err}");
    assert!(all.contains(&temp_akid), "query output holds the records");
    let log = agent
        .stderr
        .lock()
        .map(|l| l.join("\n"))
        .unwrap_or_default();
    assert!(
        log.contains("hoop-agent ready"),
        "the check can see the log"
    );
    for (name, secret) in [
        ("STS SecretAccessKey", temp_secret.as_str()),
        ("STS SessionToken", token.as_str()),
        ("long-term secret key", SECRET_ACCESS_KEY),
    ] {
        // Also a prefix: a truncated token is still a leak.
        let probe = &secret[..secret.len().min(40)];
        assert!(
            find_bytes(&stored, probe.as_bytes()).is_none(),
            "{name} in the data dir"
        );
        assert!(
            find_bytes(&output, probe.as_bytes()).is_none(),
            "{name} in the output file"
        );
        assert!(!all.contains(probe), "{name} in query output");
        assert!(!log.contains(probe), "{name} in the agent's log");
    }
    Ok(())
}

#[test]
fn short_lived_aws_cli_is_attributed_with_exe_and_cmdline() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let agent = Agent::start(&[])?;
    let marker = format!("hoop-cli-marker-{}", std::process::id());
    let mut cmd = aws_cli();
    // An unknown --query path is harmless and puts a marker into the command line.
    cmd.args([
        "--endpoint-url",
        &emu.endpoint(),
        "sts",
        "get-caller-identity",
    ])
    .args(["--query", &format!("Account || '{marker}'")]);
    emu.client_env(&mut cmd);
    let (pid, _) = run_client(cmd)?;
    // The process is gone before its record is written (the agent closes the connection of
    // an exited process after a grace period); its identity comes from the exec-time cache.
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "aws exited");
    let recs = agent.wait_records(pid, WAIT, |r| !r.is_empty());
    let m = matching(&recs, |r| r["aws"]["operation"] == "GetCallerIdentity");
    assert_eq!(m.len(), 1, "{}", serde_json::to_string_pretty(&recs)?);
    let p = &m[0]["process"];
    let exe = p["exe"].as_str().unwrap_or_default();
    assert!(
        exe.contains("python"),
        "exe of the AWS CLI (a python script): {p}"
    );
    let cmdline = p["cmdline"].as_str().unwrap_or_default();
    assert!(cmdline.contains("aws"), "cmdline names the CLI: {p}");
    assert!(
        cmdline.contains("sts get-caller-identity"),
        "cmdline arguments: {p}"
    );
    assert!(cmdline.contains(&marker), "full cmdline: {p}");
    assert!(
        p["ppid"]
            .as_u64()
            .is_some_and(|pp| pp == std::process::id() as u64),
        "parent: {p}"
    );
    assert!(p["start_time"].is_string(), "start time: {p}");
    assert_eq!(m[0]["identity"]["access_key_id"], ACCESS_KEY_ID);
    assert_eq!(m[0]["workload"]["kind"], "host");
    Ok(())
}

/// A cgroup created for the test, removed on drop (after its processes exited).
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.0.display());
    }
}

fn hex64(seed: u64) -> String {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = String::new();
    while out.len() < 64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}"));
    }
    out.truncate(64);
    out
}

fn run_in_cgroup(emu: &Emulator, cg: &Path, script: &str) -> anyhow::Result<(u32, String)> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$0\" -c \"$1\"",
            cg.display()
        ))
        .arg(repo_root().join(".venv/bin/python"))
        .arg(script);
    emu.client_env(&mut cmd);
    run_client(cmd)
}

const CALLER_SCRIPT: &str = "import boto3, os, json\n\
    boto3.client('sts', endpoint_url=os.environ['HOOP_ENDPOINT']).get_caller_identity()\n\
    print(json.dumps({'pid': os.getpid(), 'cgroup': open('/proc/self/cgroup').read()}))\n";

#[test]
fn process_in_a_container_cgroup_gets_its_container_id() -> anyhow::Result<()> {
    let Some(mount) = cgroup2_mount() else {
        anyhow::bail!("no cgroup2 mount in /proc/self/mountinfo");
    };
    let emu = Emulator::start()?;
    let agent = Agent::start(&[])?;
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .elapsed()
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let docker_id = hex64(seed);
    let cri_id = hex64(seed + 1);
    // Docker's systemd form at the top, and containerd's Kubernetes form nested under a pod
    // slice (the pod UID comes with it).
    let docker = Cgroup(mount.join(format!("docker-{docker_id}.scope")));
    std::fs::create_dir(&docker.0)?;
    let pod_uid = "0d1f6c2e-7a4b-4c1e-9f00-5e6e2b1a9c33";
    let pod_slice = Cgroup(mount.join(format!(
        "kubepods-besteffort-pod{}.slice",
        pod_uid.replace('-', "_")
    )));
    std::fs::create_dir(&pod_slice.0)?;
    let cri = Cgroup(pod_slice.0.join(format!("cri-containerd-{cri_id}.scope")));
    std::fs::create_dir(&cri.0)?;

    let mut found = Vec::new();
    for (cg, id, runtime) in [
        (&docker, &docker_id, "docker"),
        (&cri, &cri_id, "containerd"),
    ] {
        let (pid, out) = run_in_cgroup(&emu, &cg.0, CALLER_SCRIPT)?;
        let info: Value = serde_json::from_str(out.trim())?;
        assert_eq!(info["pid"], pid, "exec kept the pid");
        assert!(
            s(&info, "cgroup").contains(id.as_str()),
            "client ran in the cgroup: {info}"
        );
        let recs = agent.wait_records(pid, WAIT, |r| !r.is_empty());
        assert_eq!(recs.len(), 1, "{}", serde_json::to_string_pretty(&recs)?);
        let r = &recs[0];
        let w = &r["workload"];
        assert_eq!(w["kind"], "container", "workload of {r}");
        assert_eq!(w["container_id"], id.as_str(), "container id of {r}");
        assert_eq!(w["runtime"], runtime, "runtime of {r}");
        assert!(
            r["process"]["cgroup"]
                .as_str()
                .is_some_and(|c| c.contains(id.as_str())),
            "cgroup path in {r}"
        );
        found.push(r.clone());
    }
    // The kubelet's systemd-driver slice names the pod: its UID comes with the container.
    let w = &found[1]["workload"];
    assert_eq!(w["pod_uid"], pod_uid, "pod UID from the slice: {w}");
    // The store's workload filter finds the container by its short id.
    let short = &docker_id[..12];
    let (ok, q, err) = agent.cli(&[
        "query",
        "--workload",
        &format!("container:{short}*"),
        "--format",
        "jsonl",
    ])?;
    assert!(ok, "{err}");
    let q = jsonl(&q);
    assert_eq!(q.len(), 1, "query --workload container:{short}: {q:?}");
    assert_eq!(q[0]["workload"]["container_id"], docker_id.as_str());
    drop(cri);
    drop(pod_slice);
    drop(docker);
    Ok(())
}

const LIST_BUCKETS_SCRIPT: &str = "import boto3, os\n\
    s = boto3.session.Session()\n\
    c = s.get_credentials()\n\
    assert c is not None, 'no credentials from the endpoint'\n\
    print(s.get_credentials().method)\n\
    boto3.client('s3', endpoint_url=os.environ['HOOP_ENDPOINT']).list_buckets()\n";

/// Keys handed out by the instance metadata service (IPv4 and IPv6), the ECS task-role
/// endpoint and EKS Pod Identity travel as plain HTTP: the agent's cgroup_skb programs see
/// them, so calls signed with those keys name the role (or the account) that owns them,
/// while the secrets in the same responses are never kept.
#[test]
fn credential_endpoint_keys_are_attributed_to_their_principals() -> anyhow::Result<()> {
    let _ll = LinkLocal::add()?;
    let id = std::process::id();
    let spec = credential_endpoint_spec(id);
    let _server = serve_credential_endpoints(&spec)?;

    let emu = Emulator::start()?;
    let mut agent = Agent::start(&[])?;
    // The agent reads the node's identity document at start-up (account, instance id).
    agent.wait_log("instance identity", WAIT)?;

    let role = s(&spec, "role");
    let imds_arn = format!(
        "arn:aws:sts::210987654321:assumed-role/{role}/{}",
        s(&spec, "instance")
    );
    // (endpoint, client environment, boto3's provider, expected ARN, expected source)
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a str,
        Option<&'a str>,
        &'a str,
    );
    let cases: [Case; 4] = [
        ("imds", &[], "iam-role", Some(&imds_arn), "imds"),
        (
            "imds6",
            &[("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6")],
            "iam-role",
            Some(&imds_arn),
            "imds",
        ),
        (
            "ecs",
            &[(
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                spec["ecs_path"].as_str().unwrap_or_default(),
            )],
            "container-role",
            spec["ecs_role_arn"].as_str(),
            "container-credentials",
        ),
        (
            "pod",
            &[
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "http://169.254.170.23/v1/credentials",
                ),
                (
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                    spec["pod_token"].as_str().unwrap_or_default(),
                ),
            ],
            "container-role",
            None,
            "container-credentials",
        ),
    ];
    for (which, env, method, arn, source) in cases {
        let mut cmd = python();
        cmd.arg("-c").arg(LIST_BUCKETS_SCRIPT);
        emu.client_env(&mut cmd);
        cmd.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_EC2_METADATA_DISABLED");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (pid, out) = run_client(cmd)?;
        assert_eq!(out.trim(), method, "{which}: boto3's credential provider");
        let key = s(&spec[which], "key");
        let recs = agent.wait_records(pid, WAIT, |r| !r.is_empty());
        assert_eq!(recs.len(), 1, "{which}: {recs:?}");
        let i = &recs[0]["identity"];
        assert_eq!(i["access_key_id"], key, "{which}: {i}");
        match arn {
            Some(a) => assert_eq!(i["principal_arn"], a, "{which}: {i}"),
            None => assert!(i["principal_arn"].is_null(), "{which}: {i}"),
        }
        assert_eq!(i["account_id"], "210987654321", "{which}: {i}");
        assert_eq!(i["source"], source, "{which}: {i}");
        assert!(i["expires"].is_string(), "{which}: expiry kept: {i}");
    }
    agent.stop()?;
    // The responses carried secret keys and session tokens: none reached the agent's disk
    // or its log.
    let mut stored = stored_bytes(&agent.data_dir);
    stored.extend(std::fs::read(&agent.output)?);
    let log = agent
        .stderr
        .lock()
        .map(|l| l.join("\n"))
        .unwrap_or_default();
    for which in ["imds", "imds6", "ecs", "pod"] {
        for field in ["secret", "token"] {
            let v = s(&spec[which], field);
            assert!(
                find_bytes(&stored, v.as_bytes()).is_none(),
                "{which} {field} stored"
            );
            assert!(!log.contains(v), "{which} {field} in the agent log");
        }
    }
    Ok(())
}

/// A configured selector marks the root of an agent session: a call made by a child of a
/// shell whose command line matches names that shell as its session root, and its parent
/// chain leads to it.
#[test]
fn configured_session_root_and_parent_chain_are_recorded() -> anyhow::Result<()> {
    let emu = Emulator::start()?;
    let dir = TempDir::new("session")?;
    let marker = format!("hoop-agent-session-{}", std::process::id());
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!("session:\n  selectors:\n    - {{ comm: \"sh\", cmdline: \"{marker}\" }}\n"),
    )?;
    let agent = Agent::start(&["--config", cfg.to_str().unwrap_or_default()])?;
    // sh forks python (the trailing command keeps it from exec-ing in place), and prints
    // its own pid first.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo $$; \"$1\" -c \"$2\"; true")
        .arg(&marker)
        .arg(repo_root().join(".venv/bin/python"))
        .arg(CALLER_SCRIPT);
    emu.client_env(&mut cmd);
    let (sh_pid, out) = run_client(cmd)?;
    let mut lines = out.lines();
    assert_eq!(
        lines.next().map(str::trim),
        Some(sh_pid.to_string().as_str())
    );
    let info: Value = serde_json::from_str(lines.next().unwrap_or_default())?;
    let py_pid = info["pid"].as_u64().unwrap_or_default() as u32;
    assert_ne!(py_pid, sh_pid, "python ran as a child of sh");
    let recs = agent.wait_records(py_pid, WAIT, |r| !r.is_empty());
    assert_eq!(recs.len(), 1, "{recs:?}");
    let p = &recs[0]["process"];
    assert_eq!(p["ppid"], sh_pid, "parent: {p}");
    assert_eq!(p["session"]["pid"], sh_pid, "session root: {p}");
    assert_eq!(p["session"]["comm"], "sh", "session root: {p}");
    let chain: Vec<u64> = p["ancestors"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["pid"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(chain.first(), Some(&(sh_pid as u64)), "parent chain: {p}");
    assert_eq!(
        chain.get(1),
        Some(&(std::process::id() as u64)),
        "the test started sh: {p}"
    );
    // Without a matching root, nothing is marked.
    let (pid, _) = run_client({
        let mut c = python();
        c.arg("-c").arg(CALLER_SCRIPT);
        emu.client_env(&mut c);
        c
    })?;
    let recs = agent.wait_records(pid, WAIT, |r| !r.is_empty());
    assert!(recs[0]["process"]["session"].is_null(), "{}", recs[0]);
    Ok(())
}
