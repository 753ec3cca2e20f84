//! hoop-identity
