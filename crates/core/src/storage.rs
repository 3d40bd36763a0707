//! The [`Storage`] trait: where archives and manifests live (a local folder, an S3 bucket).
//!
//! Keys are relative, `/`-separated paths such as `app-db/20260101T020000Z-a1b2c3/data.pgdump.zst`;
//! a storage adds its own root or prefix. A storage is also the catalog: listing manifests is
//! listing keys (see [`crate::catalog`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Result;

/// A boxed byte stream to read from.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;

/// What a storage knows of one stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The key, relative to the storage's root or prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, when the storage reports it.
    pub modified: Option<DateTime<Utc>>,
}

/// An object being written. Bytes go in through [`AsyncWrite`]; nothing is visible under the
/// key until [`Upload::commit`] returns. Dropping an upload without committing must leave
/// nothing visible either (leftovers are removed by [`Storage::clean_leftovers`]).
#[async_trait]
pub trait Upload: AsyncWrite + Send + Unpin {
    /// Make the object durable and visible under its key.
    async fn commit(self: Box<Self>) -> Result<ObjectMeta>;
    /// Throw away what was written.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// A held lock on one job of a storage; released when dropped.
pub struct JobLock(Option<Box<dyn Send + Sync>>);

impl JobLock {
    /// A lock that holds a guard (a file lock, ...) until dropped.
    pub fn new(guard: Box<dyn Send + Sync>) -> Self {
        JobLock(Some(guard))
    }
    /// For storages that cannot lock (S3): nothing is held.
    pub fn none() -> Self {
        JobLock(None)
    }
    /// Whether a real lock is held.
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }
}

/// A place that keeps backups. Implemented by `drkit-drivers` (local folder, S3).
#[async_trait]
pub trait Storage: Send + Sync {
    /// A human description without secrets, e.g. `local /var/backups/drkit`.
    fn describe(&self) -> String;

    /// Start writing an object at `key`.
    async fn create(&self, key: &str) -> Result<Box<dyn Upload>>;

    /// Write a small object in one call, atomically (used for manifests and reports).
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()>;

    /// Read a whole object as a stream. A missing key is [`crate::ErrorKind::NotFound`].
    async fn get(&self, key: &str) -> Result<BoxRead>;

    /// Read bytes `start..end` (end exclusive; `None` = to the end) of an object.
    async fn get_range(&self, key: &str, start: u64, end: Option<u64>) -> Result<BoxRead>;

    /// Metadata of one object, `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;

    /// Every object whose key starts with `prefix` (recursively), in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Delete one object; deleting a missing object is not an error. An object under a
    /// retention lock (see [`Storage::locked_until`]) is not deleted: that is a
    /// [`crate::ErrorKind::Refused`] error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// When `key` is protected against deletion (S3 object lock) until a time still to come:
    /// that time (`DateTime::<Utc>::MAX_UTC` for a hold without an end date). `None` when the
    /// object can be deleted now, or does not exist. Prune asks this before deleting a backup
    /// and skips locked ones. Storages without locks keep the default.
    async fn locked_until(&self, key: &str) -> Result<Option<DateTime<Utc>>> {
        let _ = key;
        Ok(None)
    }

    /// Take the job's lock for the length of a backup or prune, when the storage can lock.
    /// A lock held by another live run is a [`crate::ErrorKind::Refused`] error.
    async fn lock_job(&self, job: &str) -> Result<JobLock>;

    /// Remove what crashed runs of `job` left behind (temp files, abandoned uploads, backup
    /// folders without a manifest). `locked` says the caller holds the job's lock, so nothing
    /// of the job can be in progress. Returns the keys removed.
    async fn clean_leftovers(&self, job: &str, locked: bool) -> Result<Vec<String>>;
}
