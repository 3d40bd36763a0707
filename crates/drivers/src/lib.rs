//! drkit-drivers: the systems drkit talks to. Sources (SQLite, PostgreSQL, MongoDB, Docker
//! volumes) and storages (local folder, S3), each behind a cargo feature.
//!
//! This file is the only place that chooses a driver by its kind.
//!
//! ```no_run
//! # async fn demo() -> drkit_core::Result<()> {
//! use drkit_core::{pipeline, DriverSpec};
//! let mut src = toml::Table::new();
//! src.insert("path".into(), "/srv/app.db".into());
//! let source = drkit_drivers::open_source("app", &DriverSpec { kind: "sqlite".into(), settings: src })?;
//! let mut st = toml::Table::new();
//! st.insert("path".into(), "/var/backups/drkit".into());
//! let storage = drkit_drivers::open_storage("local", &DriverSpec { kind: "local".into(), settings: st })?;
//! let targets = [pipeline::Target { name: "local".into(), storage }];
//! let outcome = pipeline::backup("app", source.as_ref(), &targets, &Default::default(), pipeline::no_progress()).await?;
//! println!("backup {} written", outcome.manifest.id);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

use std::sync::Arc;

use drkit_core::{Config, DriverSpec, Error, Result, Source, Storage};

// The public surface (docs/library.md): the functions below, the driver types with their
// settings re-exported here, and `docker` (the Engine API that drkit-app's guard uses).
// Everything else is `pub(crate)`; helpers for tests are behind the `test-util` feature.
#[cfg(feature = "docker")]
pub mod docker;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub(crate) mod notify;
pub(crate) mod process;
pub mod source;
pub mod storage;
#[cfg(feature = "test-util")]
pub mod test_util;

#[cfg(feature = "docker")]
pub use source::docker_volume::DockerVolumeSource;
#[cfg(feature = "mongodb")]
pub use source::mongodb::MongoSource;
#[cfg(feature = "postgres")]
pub use source::postgres::PostgresSource;
#[cfg(feature = "sqlite")]
pub use source::sqlite::SqliteSource;
pub use storage::local::LocalStorage;
#[cfg(feature = "s3")]
pub use storage::s3::{S3Settings, S3Storage};

/// The source kinds this build supports.
pub fn source_kinds() -> &'static [&'static str] {
    &[
        #[cfg(feature = "sqlite")]
        "sqlite",
        #[cfg(feature = "docker")]
        "docker-volume",
        #[cfg(feature = "postgres")]
        "postgres",
        #[cfg(feature = "mongodb")]
        "mongodb",
    ]
}

/// The storage kinds this build supports.
pub fn storage_kinds() -> &'static [&'static str] {
    &[
        "local",
        #[cfg(feature = "s3")]
        "s3",
    ]
}

/// Build the source of job `job` from its config. Nothing is contacted yet.
pub fn open_source(job: &str, spec: &DriverSpec) -> Result<Box<dyn Source>> {
    let what = format!("job.{job}.source");
    match spec.kind.as_str() {
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Box::new(source::sqlite::SqliteSource::from_spec(
            spec, &what,
        )?)),
        #[cfg(feature = "docker")]
        "docker-volume" => Ok(Box::new(
            source::docker_volume::DockerVolumeSource::from_spec(spec, &what)?,
        )),
        #[cfg(feature = "postgres")]
        "postgres" => Ok(Box::new(source::postgres::PostgresSource::from_spec(
            spec, &what,
        )?)),
        #[cfg(feature = "mongodb")]
        "mongodb" => Ok(Box::new(source::mongodb::MongoSource::from_spec(
            spec, &what,
        )?)),
        other => Err(Error::config(format!(
            "{what}: unknown source type {other:?} (this build supports: {})",
            source_kinds().join(", ")
        ))),
    }
}

/// The Docker volume source of job `job`, or `None` when the job backs up something else.
/// Nothing is contacted yet.
#[cfg(feature = "docker")]
pub fn docker_volume_source(
    job: &str,
    spec: &DriverSpec,
) -> Result<Option<source::docker_volume::DockerVolumeSource>> {
    if spec.kind != "docker-volume" {
        return Ok(None);
    }
    let what = format!("job.{job}.source");
    source::docker_volume::DockerVolumeSource::from_spec(spec, &what).map(Some)
}

/// Build the storage named `name` from its config. Nothing is contacted yet.
pub fn open_storage(name: &str, spec: &DriverSpec) -> Result<Arc<dyn Storage>> {
    let what = format!("storage.{name}");
    match spec.kind.as_str() {
        "local" => Ok(Arc::new(storage::local::LocalStorage::from_spec(
            spec, &what,
        )?)),
        #[cfg(feature = "s3")]
        "s3" => Ok(Arc::new(storage::s3::S3Storage::from_spec(spec, &what)?)),
        other => Err(Error::config(format!(
            "{what}: unknown storage type {other:?} (this build supports: {})",
            storage_kinds().join(", ")
        ))),
    }
}

/// Build the notifier named `name` from its `[notify.NAME]` table. Nothing is contacted yet.
pub fn open_notifier(
    name: &str,
    cfg: &drkit_core::notify::NotifierConfig,
) -> Result<Arc<dyn drkit_core::notify::Notifier>> {
    use drkit_core::notify::NotifierKind;
    Ok(match cfg.kind {
        NotifierKind::Webhook => Arc::new(notify::Webhook::new(name, cfg)?),
        NotifierKind::Ping => Arc::new(notify::Ping::new(name, cfg)?),
        NotifierKind::Command => Arc::new(notify::Command::new(name, cfg)),
    })
}

/// Check every source, storage and notifier of a config (their keys and values), contacting
/// nothing.
pub fn validate(config: &Config) -> Result<()> {
    for (name, spec) in &config.storage {
        open_storage(name, spec)?;
    }
    for (name, n) in &config.notify {
        open_notifier(name, n)?;
    }
    for (name, job) in &config.job {
        open_source(name, &job.source)?;
    }
    Ok(())
}
