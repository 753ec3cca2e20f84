#![no_std]
// Library target so `cargo check`/clippy on the host can see the crate; the programs live in main.rs.
