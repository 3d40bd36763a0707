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
pub use drill::{drill, DrillOptions, DrillReport, DrillTimings};
pub use hash::{HashReader, Hashes, WaitClock, WaitHandle};
pub use restore::{restore, restore_phased, Phase, RestoreFailure, RestoreOutcome, RestoreTimings};
pub use verify::{verify, verify_with, Checked, VerifyReport};

/// Hears how far a backup, verify, restore or drill got. Any `Fn(u64)` closure is one (it
/// hears the bytes moved); a meter that can show a share done and a time left also hears the
/// total, when it is known (a manifest's raw size, before a verify, restore or drill).
pub trait Meter: Send + Sync {
    /// The number of bytes moved so far.
    fn moved(&self, bytes: u64);
    /// How many bytes there will be in all. The default ignores it.
    fn total(&self, bytes: u64) {
        let _ = bytes;
    }
}

impl<F: Fn(u64) + Send + Sync> Meter for F {
    fn moved(&self, bytes: u64) {
        self(bytes)
    }
}

/// Reports progress (see [`Meter`]).
pub type Progress = std::sync::Arc<dyn Meter>;

/// A progress callback that does nothing.
pub fn no_progress() -> Progress {
    std::sync::Arc::new(|_| {})
}

/// Size of the chunks the pipeline moves (bounded memory per stage).
pub(crate) const CHUNK: usize = 256 * 1024;
