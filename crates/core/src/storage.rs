//! The [`Storage`] trait: the object operations of a place that keeps backups (a local
//! folder, an S3 bucket) and what it can do (job locks, object locks).
//!
//! Keys are relative, `/`-separated paths such as `app-db/20260101T020000Z-a1b2c3/data.pgdump.zst`;
//! a storage adds its own root or prefix. A storage knows objects, not backups: which keys a
//! backup has and which objects are leftovers of crashed runs is [`crate::layout`], written
//! once over these operations for every storage. A storage is also the catalog: listing
//! manifests is listing keys (see [`crate::catalog`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{Error, Result};

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
/// nothing visible either (what a killed process leaves is removed by
/// [`crate::layout::clean_leftovers`]).
#[async_trait]
pub trait Upload: AsyncWrite + Send + Unpin {
    /// Make the object durable and visible under its key.
    async fn commit(self: Box<Self>) -> Result<ObjectMeta>;
    /// Throw away what was written.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// A write that was started and neither committed nor aborted (its process died), which the
/// storage still holds: an unfinished S3 multipart upload, a temp file of the local folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    /// The key reported when it is discarded (the key it was for, or the temp file's).
    pub key: String,
    /// When the write started, when the storage knows.
    pub started: Option<DateTime<Utc>>,
    /// What the storage needs to discard it (an upload id...): opaque to callers.
    pub handle: String,
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

/// A place that keeps objects: the primitives drkit needs, and the storage's capabilities.
/// Implemented by `drkit-drivers` (local folder, S3) and by `drkit_core::testing::MemStore`.
///
/// Callers delete with `delete` (an inherent method of `dyn Storage`), which refuses objects
/// under object lock; implementations provide the raw [`Storage::delete_object`].
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

    /// Delete one object; deleting a missing object is not an error. The raw operation: it
    /// does not ask about object locks (on a versioned S3 bucket a locked object only gets a
    /// delete marker, which hides it). Callers use `delete` on `dyn Storage`.
    async fn delete_object(&self, key: &str) -> Result<()>;

    /// Delete many objects with the raw operation (no object-lock check), stopping at the
    /// first failure; returns the keys deleted. The default deletes one by one.
    async fn delete_objects(&self, keys: &[String]) -> Result<Vec<String>> {
        let mut done = Vec::with_capacity(keys.len());
        for key in keys {
            self.delete_object(key).await?;
            done.push(key.clone());
        }
        Ok(done)
    }

    /// The unfinished writes (see [`Unfinished`]) under `prefix`. The default: none.
    async fn unfinished(&self, prefix: &str) -> Result<Vec<Unfinished>> {
        let _ = prefix;
        Ok(Vec::new())
    }

    /// Throw away an unfinished write; one already gone is not an error.
    async fn discard(&self, write: &Unfinished) -> Result<()> {
        let _ = write;
        Ok(())
    }

    /// Take the job's lock for the length of a backup or prune, when the storage can lock.
    /// A lock held by another live run is a [`crate::ErrorKind::Refused`] error; a storage
    /// that cannot lock returns [`JobLock::none`].
    async fn lock_job(&self, job: &str) -> Result<JobLock>;

    /// Whether objects of this storage can be under object lock (a retention date, a legal
    /// hold), so that a delete must ask [`Storage::locked_until`] first. The default: no.
    fn holds_object_locks(&self) -> bool {
        false
    }

    /// When `key` is protected against deletion (S3 object lock) until a time still to come:
    /// that time (`DateTime::<Utc>::MAX_UTC` for a hold without an end date). `None` when the
    /// object can be deleted now, or does not exist. Prune asks this before deleting a backup
    /// and skips locked ones. Storages without locks keep the default.
    async fn locked_until(&self, key: &str) -> Result<Option<DateTime<Utc>>> {
        let _ = key;
        Ok(None)
    }

    /// How old a leftover must be before it is removed while the job's lock is not held (a
    /// run on another host may still be writing it). Only storages that cannot lock use it.
    /// The default: a day.
    fn leftover_age(&self) -> std::time::Duration {
        std::time::Duration::from_secs(24 * 3600)
    }
}

impl dyn Storage + '_ {
    /// Delete one object; deleting a missing object is not an error. An object under object
    /// lock (see [`Storage::locked_until`]) is not deleted, whatever asked for it: that is a
    /// [`crate::ErrorKind::Refused`] error. On a versioned bucket a plain delete would not fail
    /// but add a delete marker that hides the locked object, making a protected backup look
    /// gone. This is the one place that rule is enforced.
    pub async fn delete(&self, key: &str) -> Result<()> {
        if self.holds_object_locks() {
            if let Some(until) = self.locked_until(key).await? {
                return Err(Error::refused(format!(
                    "{}: {key} is under object lock until {}: it cannot be deleted before then",
                    self.describe(),
                    if until == DateTime::<Utc>::MAX_UTC {
                        "its legal hold is removed".to_string()
                    } else {
                        until.to_rfc3339()
                    }
                )));
            }
        }
        self.delete_object(key).await
    }
}
