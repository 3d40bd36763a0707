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
    /// The keys that open an encrypted archive (its identity).
    pub keys: Option<std::sync::Arc<crate::crypt::Keys>>,
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

    /// Prepare a scratch destination for a restore drill of `manifest` at `place`, named
    /// after `name` ([`crate::drill::ScratchName::render`]): a scratch database on the source
    /// server or on the named server, a throwaway container, a scratch volume, a temp file.
    /// `None` when the driver cannot drill there (core then says so).
    async fn drill_scratch(
        &self,
        manifest: &Manifest,
        place: &crate::drill::Place,
        name: &crate::drill::ScratchName,
    ) -> Result<Option<crate::drill::Scratch>> {
        let _ = (manifest, place, name);
        Ok(None)
    }

    /// Remove a drill's scratch destination (and what else it made: a container, a network).
    async fn drill_cleanup(&self, scratch: &crate::drill::Scratch) -> Result<()> {
        let _ = scratch;
        Ok(())
    }

    /// Remove the scratch places at `place` that drills killed before their cleanup left
    /// behind: those whose name says they are older than [`crate::drill::STALE_AFTER`] at
    /// `now` ([`crate::drill::is_stale`]). Returns one line per place removed. The default
    /// removes nothing.
    async fn drill_sweep(
        &self,
        place: &crate::drill::Place,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>> {
        let _ = (place, now);
        Ok(Vec::new())
    }

    /// Run an operator's check query against a drill's restored copy and return its value
    /// (`null` when there is none). A query this driver cannot run is a config error.
    async fn drill_check(
        &self,
        scratch: &crate::drill::Scratch,
        query: &crate::drill::Query,
    ) -> Result<serde_json::Value> {
        let _ = scratch;
        Err(crate::Error::config(format!(
            "the {} driver cannot run the drill check {query}",
            self.driver()
        )))
    }

    /// Whether [`Source::restore`] may be fed the archive in one pass: the driver makes
    /// nothing live, and leaves nothing behind, unless `data` reads to its end without error
    /// (the end is where a checksum mismatch shows). The pipeline then skips its separate
    /// verification pass, which halves the reads of a restore. The default is `false`: the
    /// archive is verified whole first.
    fn restores_in_one_pass(&self) -> bool {
        false
    }

    /// A structural walk of the whole raw dump for `verify --deep`, without a server: it
    /// counts what the archive holds (tables and rows, collections and documents, files and
    /// bytes) and its [`DeepCheck::finish`] compares the counts with the manifest's stats.
    /// The default is none.
    fn deep_check(&self, manifest: &Manifest) -> Option<Box<dyn DeepCheck>> {
        let _ = manifest;
        None
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

/// A deep check fed with the raw dump, chunk by chunk (see [`Source::deep_check`]). Its
/// errors are reported as integrity errors naming the backup.
pub trait DeepCheck: Send {
    /// The next bytes of the raw dump.
    fn update(&mut self, bytes: &[u8]) -> Result<()>;
    /// The raw dump ended: check what was counted against the manifest, and say in one line
    /// what was checked (e.g. `12 tables, 10500 rows: as the manifest says`).
    fn finish(self: Box<Self>) -> Result<String>;
}
