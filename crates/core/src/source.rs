//! The [`Source`] trait: a system drkit backs up and restores (a database, a volume).

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::Serialize;

use crate::{BoxRead, Manifest, Result};

/// A running dump: the raw bytes, and a future that says whether the dump succeeded.
///
/// The pipeline reads `reader` to its end, then awaits `finish`. A dump whose program exited
/// non-zero, was killed, or stopped early must fail in `finish` (or as a read error), so
/// that no manifest is written.
pub struct Dump {
    /// The raw dump bytes.
    pub reader: BoxRead,
    /// Resolves once the dump is complete: checks exit status and returns what goes in the
    /// manifest.
    pub finish: BoxFuture<'static, Result<DumpSummary>>,
}

/// What a finished dump reports for the manifest.
#[derive(Debug, Clone, Default)]
pub struct DumpSummary {
    /// Driver details, credentials removed (server version, database, path...).
    pub source: serde_json::Value,
    /// What a restore must reproduce (row counts, documents, files...). By convention an
    /// `"empty": true` field marks a source that held no data.
    pub stats: serde_json::Value,
    /// Things a later check should flag.
    pub warnings: Vec<String>,
}

/// How a restore should behave.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore somewhere else than the original: a path, URL or volume, read by the driver.
    pub to: Option<String>,
    /// Replace existing data (keeping what the driver can keep aside).
    pub force: bool,
    /// Restore with this many parallel workers where the driver can (PostgreSQL:
    /// `pg_restore --jobs`); `None` for the driver's default.
    pub jobs: Option<u32>,
}

/// What a restore will do or did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// The destination, credentials removed.
    pub destination: String,
    /// Whether the destination already held data that was (or would be) replaced.
    pub replaces_existing: bool,
    /// Where the replaced data was kept, when the driver keeps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_previous: Option<String>,
    /// Whether the restored data was checked against the manifest's stats.
    pub stats_checked: bool,
    /// Other things worth telling the operator.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A system that can be dumped into a byte stream and restored from one.
#[async_trait]
pub trait Source: Send + Sync {
    /// The driver name stored in manifests, e.g. `sqlite`.
    fn driver(&self) -> &'static str;

    /// File extension of the raw dump, e.g. `sqlite`, `pgdump`, `tar`, `archive`.
    fn extension(&self) -> &'static str;

    /// A human description of the source, without secrets.
    fn describe(&self) -> String;

    /// Start a dump.
    async fn dump(&self) -> Result<Dump>;

    /// Check, without changing anything, where a restore of `manifest` would go and whether
    /// it may: a destination that holds data is [`crate::ErrorKind::Refused`] unless
    /// `opts.force`.
    async fn plan_restore(
        &self,
        manifest: &Manifest,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport>;

    /// Restore from the raw dump bytes. The reader fails (with an integrity error) at its end
    /// if the bytes do not match the manifest's checksum, so a driver must not make the
    /// restored data live before it has read `data` to its end without error.
    async fn restore(
        &self,
        data: BoxRead,
        manifest: &Manifest,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport>;

    /// Pre-flight checks for `drkit doctor`: tools present, credentials accepted, server
    /// reachable. Returns notes for the operator; an error says what is wrong. The default
    /// checks nothing.
    async fn preflight(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// A scratch destination for a restore drill (a temp path, a scratch database or
    /// volume), usable as [`RestoreOptions::to`]. `None` when the driver cannot drill.
    async fn drill_scratch(&self, manifest: &Manifest) -> Result<Option<String>> {
        let _ = manifest;
        Ok(None)
    }

    /// Remove a drill's scratch destination.
    async fn drill_cleanup(&self, scratch: &str) -> Result<()> {
        let _ = scratch;
        Ok(())
    }

    /// Check the structure of a raw dump from its first bytes (a magic number, a header).
    /// `head` holds up to 4096 bytes. The default accepts anything.
    fn check_structure(&self, head: &[u8]) -> Result<()> {
        let _ = head;
        Ok(())
    }

    /// What a manifest's `stats` (written by this driver) count: rows, documents or files,
    /// in total and per table or collection. The suspect checks compare a new backup's
    /// measure with the previous good one's. The default knows nothing (only the raw sizes
    /// are compared).
    fn measure(&self, stats: &serde_json::Value) -> crate::suspect::Measure {
        let _ = stats;
        crate::suspect::Measure::default()
    }

    /// A check of the whole raw dump of `manifest` (every record, not just the head), fed by
    /// [`crate::pipeline::verify`] as it streams the archive, and so run before every restore.
    /// The default is none.
    fn stream_check(&self, manifest: &Manifest) -> Option<Box<dyn StreamCheck>> {
        let _ = manifest;
        None
    }
}

/// A structure check fed with the raw dump, chunk by chunk (see [`Source::stream_check`]).
/// Its errors are reported as integrity errors naming the backup.
pub trait StreamCheck: Send {
    /// The next bytes of the raw dump.
    fn update(&mut self, bytes: &[u8]) -> Result<()>;
    /// The raw dump ended: check it ended where it may.
    fn finish(self: Box<Self>) -> Result<()>;
}
