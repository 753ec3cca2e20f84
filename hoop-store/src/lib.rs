//! hoop-store
