//! Recognises AWS API calls in plaintext HTTP requests: who signed them (SigV4), which
//! service and operation they invoke, the IAM action they need and the resources they touch.
//!
//! Pure code: no I/O, no kernel. The agent feeds it parsed HTTP exchanges.

pub mod classify;
pub mod host;
pub mod model;
pub mod params;
pub mod response;
pub mod sigv4;
pub mod tables;

pub use classify::{AwsCall, classify};

/// One HTTP request as the classifier sees it.
#[derive(Clone, Copy, Debug)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The request-target exactly as sent: origin-form path with optional `?query`
    /// (absolute-form targets are accepted too).
    pub target: &'a str,
    /// Header names as sent (compare case-insensitively) and raw values.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The (de-chunked) body bytes that were captured; may be partial or empty.
    pub body: &'a [u8],
}

impl<'a> HttpRequest<'a> {
    /// First header with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// First header with this name as UTF-8 text, trimmed.
    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
    }

    /// The path part of the target (without query), origin-form.
    pub fn path(&self) -> &'a str {
        let t = self.target.split_once('?').map_or(self.target, |(p, _)| p);
        // absolute-form: scheme://authority/path
        match t.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => t,
        }
    }

    /// The raw query string (without `?`), if any.
    pub fn query(&self) -> Option<&'a str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
}
