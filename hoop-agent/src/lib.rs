//! hoop's node agent: probes, capture, HTTP reassembly, AWS call records.

pub mod agent;
pub mod capture;
pub mod discovery;
pub mod go_discovery;
pub mod h2;
pub mod http;
pub mod probes;
pub mod procs;
pub mod record;
