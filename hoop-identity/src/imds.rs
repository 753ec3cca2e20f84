//! The node's own instance identity document (account, instance id, region), fetched once at
//! start-up with IMDSv2. Instance-profile keys handed out by the metadata service carry only a
//! role name; the document completes their ARN
//! (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/INSTANCE`). Off EC2 the fetch fails fast and
//! nothing changes. Only the document is read, never credentials.

use std::time::Duration;

/// Where the instance metadata service listens (fixed by AWS).
pub const IMDS_BASE: &str = "http://169.254.169.254";
/// The document's path, as `PrincipalMap::learn_imds` expects it.
pub const DOCUMENT_PATH: &str = "/latest/dynamic/instance-identity/document";

/// The identity document's body, or why it could not be fetched.
pub fn fetch_identity_document(base: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(true)
        .build()
        .into();
    let token = agent
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .send_empty()
        .map_err(|e| format!("IMDSv2 token: {e}"))?
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("IMDSv2 token: {e}"))?;
    agent
        .get(format!("{base}{DOCUMENT_PATH}"))
        .header("X-aws-ec2-metadata-token", token.trim())
        .call()
        .map_err(|e| format!("identity document: {e}"))?
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_vec()
        .map_err(|e| format!("identity document: {e}"))
}
