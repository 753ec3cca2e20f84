//! hoop's audit store: an append-only event log in sled with per-field index trees, masking
//! before storage, a SHA-256 hash chain for tamper evidence, and the reviewer-facing queries,
//! reports, policies and dumps built on it.
//!
//! Layout of a data directory:
//! - `HOOP-STORE`: format marker; a directory without it is never touched.
//! - `sled/`: the sled database (trees `log`, `meta`, `batches`, `idx:<field>`). The `log`
//!   holds compressed blocks of events with per-event chain links and report summaries
//!   (see [`block`]).
//! - `HEAD`: the chain head after the last flush, outside sled (a replacement store continues
//!   from it when sled cannot open this one, see [`Store::open_or_recover`]).
//! - `quarantine/`: sled snapshot files set aside after an abrupt stop.
//!
//! Writers call [`Store::open`], [`Store::append`] (after [`Masker::apply`]), and
//! [`Store::close`]; readers use [`Store::open_read_only`] and the `run_*` functions in [`cli`].

#[doc(hidden)]
pub mod block;
pub mod chain;
pub mod cli;
pub mod console;
pub mod dump;
pub mod filter;
mod index;
pub mod mask;
pub mod query;
pub mod report;
mod store;
#[doc(hidden)]
pub mod testgen;
pub mod timefmt;

pub use chain::{VerifyError, VerifyReport};
pub use cli::{
    DumpArgs, PolicyArgs, QueryArgs, ReplayArgs, ReportArgs, VerifyArgs, run_dump, run_policy,
    run_query, run_replay, run_report, run_verify,
};
pub use console::{Console, FrameConsole, LocalConsole, apply_frames};
pub use dump::{CloudTrailOptions, RotatingDumper, dump_rotating};
pub use filter::Filter;
pub use mask::{MaskConfig, MaskRule, Masker};
pub use query::{Session, query, replay};
pub use store::{Predecessor, RetentionStats, Stats, Store, StoreConfig, StoreError, StoredEvent};
