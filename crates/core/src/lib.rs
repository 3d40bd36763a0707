//! drkit-core: the backup pipeline, manifests, catalog, retention, schedules and config of
//! drkit, with no database client and no cloud SDK.
//!
//! Drivers (`drkit-drivers`) implement [`Source`] (a database or volume) and [`Storage`]
//! (a folder or bucket); the [`pipeline`] streams one into the other, checksummed and
//! compressed, and writes a [`Manifest`] last.
//!
//! ```no_run
//! # async fn demo(source: &dyn drkit_core::Source, storage: std::sync::Arc<dyn drkit_core::Storage>) -> drkit_core::Result<()> {
//! use drkit_core::pipeline::{self, BackupOptions, Target};
//! let targets = [Target { name: "local".into(), storage: storage.clone() }];
//! let outcome = pipeline::backup("app-db", source, &targets, &BackupOptions::default(), pipeline::no_progress()).await?;
//! pipeline::verify(storage.as_ref(), &outcome.manifest, Some(source), pipeline::no_progress()).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod catalog;
pub mod config;
pub mod crypt;
pub mod drill;
mod error;
mod exit;
pub mod init;
pub mod layout;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod pipeline;
pub mod retention;
pub mod schedule;
pub mod signing;
mod source;
mod storage;
pub mod suspect;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod units;

pub use config::{Config, DriverSpec, JobConfig};
pub use error::{from_io, one_line, redact_url, Error, ErrorKind, Result};
pub use exit::Exit;
pub use manifest::Manifest;
pub use pipeline::Compression;
pub use source::{
    DeepCheck, Dump, DumpSummary, RestoreOptions, RestoreReport, Source, StreamCheck,
};
pub use storage::{
    lock_wait, next_lock_try, set_lock_wait, BoxRead, JobLease, JobLock, LockCheck, ObjectMeta,
    Storage, Unfinished, Upload,
};

/// The version of drkit, as recorded in manifests.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// This machine's host name, for manifests and leases: `$DRKIT_HOST` when set (tests, and
/// containers whose host name is random), else the kernel's.
pub fn hostname() -> String {
    if let Some(h) = std::env::var("DRKIT_HOST")
        .ok()
        .filter(|h| !h.trim().is_empty())
    {
        return h.trim().to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}
