//! The streaming chain: backup, verify and restore, in one pass with bounded memory.
//!
//! backup: `source.dump()` -> sha256+size (raw) -> compress -> sha256+size (stored) -> every
//! storage's upload -> dump exit checked -> `commit()` -> manifest written last.

mod backup;
mod compress;
mod drill;
mod hash;
mod restore;
mod verify;

pub use backup::{backup, BackupOptions, BackupOutcome, StorageOutcome, Target};
pub use compress::Compression;
pub use drill::{drill, DrillReport};
pub use hash::{HashReader, Hashes};
pub use restore::{restore, restore_phased, Phase, RestoreFailure, RestoreOutcome};
pub use verify::{verify, VerifyReport};

/// Reports progress: called with the number of bytes moved so far.
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// A progress callback that does nothing.
pub fn no_progress() -> Progress {
    std::sync::Arc::new(|_| {})
}

/// Size of the chunks the pipeline moves (bounded memory per stage).
pub(crate) const CHUNK: usize = 256 * 1024;
