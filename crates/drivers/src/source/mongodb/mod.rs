//! MongoDB source: a native dump in the `mongodump --archive` format (see [`archive`]) through
//! the official driver, and a faithful restore from it.
//!
//! Dump: every non-system database (or `databases`), every collection and view with its
//! options and indexes, documents copied as raw BSON (never decoded) in one pass with bounded
//! memory. Where the server honours `readConcern: snapshot` with one `atClusterTime`, the whole
//! dump is one point in time; otherwise the manifest says which consistency it has.
//!
//! Restore: collections recreated with their options, documents inserted in batches, indexes
//! built after the data, views recreated last, counts compared with the manifest.
//!
//! This file holds [`MongoSource`] and its [`Source`] impl, which delegates to:
//! - `conn`: the `source` table and its checks, the password, connecting, driver errors;
//! - `select`: names, namespace selection, `--to` targets and drill scratch databases;
//! - `drill`: restore drills: scratch places, the operator's count checks, the sweep;
//! - `plan`: what is on the server before a dump (and what a preflight says);
//! - `dump`: writing the archive and the manifest's summary;
//! - `restore`: planning and running a restore, and checking its counts;
//! - `verify`: the archive checks of a verify (and of `verify --deep`), against the manifest;
//! - [`archive`]: the archive format itself, written and parsed with no server.

pub(crate) mod archive;
mod conn;
mod drill;
mod dump;
mod plan;
mod restore;
mod select;
mod verify;

use async_trait::async_trait;

use drkit_core::{
    redact_url, BoxRead, DriverSpec, Dump, Error, Manifest, RestoreOptions, RestoreReport, Result,
    Source,
};

use conn::MongoConfig;
use select::RestoreTarget;

/// A MongoDB deployment (standalone, replica set or mongos) as a drkit source.
pub struct MongoSource {
    cfg: MongoConfig,
    what: String,
}

impl MongoSource {
    /// Build from a job's `source` table. Nothing is contacted.
    pub fn from_spec(spec: &DriverSpec, what: &str) -> Result<Self> {
        Ok(MongoSource {
            cfg: MongoConfig::from_spec(spec, what)?,
            what: what.to_string(),
        })
    }
}

#[async_trait]
impl Source for MongoSource {
    fn driver(&self) -> &'static str {
        "mongodb"
    }

    fn extension(&self) -> &'static str {
        "archive"
    }

    fn describe(&self) -> String {
        let scope = match &self.cfg.databases {
            Some(d) => format!(" databases {}", d.join(", ")),
            None => " (all databases)".to_string(),
        };
        format!("MongoDB {}{scope}", redact_url(&self.cfg.url))
    }

    async fn dump(&self) -> Result<Dump> {
        let conn = self.connect(&self.cfg.url, self.password()?).await?;
        let plan = self.plan_dump(&conn).await?;
        Ok(dump::start(conn, plan, self.cfg.snapshot))
    }

    async fn plan_restore(
        &self,
        manifest: &Manifest,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let target = RestoreTarget::parse(opts.to.as_deref()).map_err(Error::config)?;
        let conn = self.restore_conn(&target).await?;
        restore::plan(&conn, &target, manifest, opts.force).await
    }

    async fn restore(
        &self,
        data: BoxRead,
        manifest: &Manifest,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let target = RestoreTarget::parse(opts.to.as_deref()).map_err(Error::config)?;
        let conn = self.restore_conn(&target).await?;
        restore::run(&conn, &target, data, manifest, opts.force).await
    }

    async fn preflight(&self) -> Result<Vec<String>> {
        let conn = self.connect(&self.cfg.url, self.password()?).await?;
        let plan = self.plan_dump(&conn).await?;
        Ok(plan::preflight_notes(&conn, &plan, self.cfg.snapshot))
    }

    async fn drill_scratch(
        &self,
        manifest: &Manifest,
        place: &drkit_core::drill::Place,
        name: &drkit_core::drill::ScratchName,
    ) -> Result<Option<drkit_core::drill::Scratch>> {
        self.scratch(manifest, place, name)
    }

    async fn drill_cleanup(&self, scratch: &drkit_core::drill::Scratch) -> Result<()> {
        self.cleanup(scratch).await
    }

    async fn drill_sweep(
        &self,
        place: &drkit_core::drill::Place,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>> {
        self.sweep(place, now).await
    }

    async fn drill_check(
        &self,
        scratch: &drkit_core::drill::Scratch,
        query: &drkit_core::drill::Query,
    ) -> Result<serde_json::Value> {
        self.check(scratch, query).await
    }

    /// `false`: a restore inserts documents as the archive streams in, and with `--force` it
    /// drops the collections it replaces first, so a stream that fails at its end would
    /// leave data live (or lost). The archive is verified whole first.
    fn restores_in_one_pass(&self) -> bool {
        false
    }

    fn deep_check(&self, manifest: &Manifest) -> Option<Box<dyn drkit_core::DeepCheck>> {
        Some(Box::new(verify::DeepArchiveCheck::new(manifest)))
    }

    fn measure(&self, stats: &serde_json::Value) -> drkit_core::suspect::Measure {
        crate::source::measure::mongodb(stats)
    }

    fn check_structure(&self, head: &[u8]) -> Result<()> {
        verify::check_structure(head)
    }

    fn stream_check(&self, manifest: &Manifest) -> Option<Box<dyn drkit_core::StreamCheck>> {
        Some(Box::new(verify::ArchiveCheck::new(manifest)))
    }
}
