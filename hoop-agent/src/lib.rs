//! hoop's node agent: probes, capture, HTTP reassembly, AWS call records.

pub mod agent;
pub mod api;
pub mod audit;
pub mod capture;
pub mod config;
pub mod discovery;
pub mod enforce;
pub mod go_discovery;
pub mod h2;
pub mod http;
pub mod metrics;
pub mod policy;
pub mod probe_site;
pub mod probes;
pub mod record;
pub mod tail;
