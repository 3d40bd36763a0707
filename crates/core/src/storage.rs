//! The [`Storage`] trait: the object operations of a place that keeps backups (a local
//! folder, an S3 bucket) and what it can do (job locks, object locks).
//!
//! Keys are relative, `/`-separated paths such as `app-db/20260101T020000Z-a1b2c3/data.pgdump.zst`;
//! a storage adds its own root or prefix. A storage knows objects, not backups: which keys a
//! backup has and which objects are leftovers of crashed runs is [`crate::layout`], written
//! once over these operations for every storage. A storage is also the catalog: listing
//! manifests is listing keys (see [`crate::catalog`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    /// The storage's version tag of the object's content (the S3 ETag, quotes included),
    /// when it has one. With `size` and `modified` it tells one version of a key from another
    /// (the catalog's manifest cache, [`crate::catalog::cache`]).
    pub etag: Option<String>,
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

/// A lease on a job held in a storage (an S3 lease object, see `docs/s3.md`): renewed while
/// it is held, given back by [`JobLease::release`] (best effort when dropped instead).
#[async_trait]
pub trait JobLease: Send + Sync {
    /// Stop renewing and give the lease back (remove it from the storage) so that the next
    /// run need not wait for it to expire.
    async fn release(self: Box<Self>) -> Result<()>;
    /// Why the lease is no longer ours (another run took it over after its renewals failed
    /// for longer than its time to live), or `None` while it is held.
    fn lost(&self) -> Option<String>;
}

/// A held lock on one job of a storage: a guard (a file lock) released when dropped, or a
/// [`JobLease`] given back by [`JobLock::release`].
pub struct JobLock {
    guard: Option<Box<dyn Send + Sync>>,
    lease: Option<Box<dyn JobLease>>,
    strict: bool,
}

impl JobLock {
    /// A lock that holds a guard (a file lock, ...) until dropped.
    pub fn new(guard: Box<dyn Send + Sync>) -> Self {
        JobLock {
            guard: Some(guard),
            lease: None,
            strict: true,
        }
    }
    /// For storages that cannot lock: nothing is held.
    pub fn none() -> Self {
        JobLock {
            guard: None,
            lease: None,
            strict: false,
        }
    }
    /// A lease held in the storage. `strict`: the storage honours the conditional writes the
    /// lease is taken with, so no other run holds the job; otherwise the lease is advisory
    /// (a run on another host may have taken it at the same moment) and the lock does not
    /// count as held.
    pub fn lease(lease: Box<dyn JobLease>, strict: bool) -> Self {
        JobLock {
            guard: None,
            lease: Some(lease),
            strict,
        }
    }
    /// Whether a real lock is held: no other run can be writing the job.
    pub fn is_held(&self) -> bool {
        self.guard.is_some() || (self.lease.is_some() && self.strict)
    }
    /// `Ok` while the lock is still ours; a [`crate::ErrorKind::Refused`] error once the
    /// lease was lost (another run took it over): a run checks before it commits.
    pub fn check(&self) -> Result<()> {
        match self.lease.as_ref().and_then(|l| l.lost()) {
            Some(why) => Err(Error::refused(why)),
            None => Ok(()),
        }
    }
    /// Give the lock back: a lease is removed from the storage (awaited), a guard dropped.
    /// An error says the lease could not be removed (it then expires by itself).
    pub async fn release(mut self) -> Result<()> {
        self.guard.take();
        match self.lease.take() {
            Some(lease) => lease.release().await,
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for JobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLock")
            .field("held", &self.is_held())
            .field("lease", &self.lease.is_some())
            .finish()
    }
}

/// What [`Storage::lock_check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockCheck {
    /// Whether a held lock excludes every other run of the job (else it is advisory).
    pub exclusive: bool,
    /// One line saying so, for `drkit doctor`.
    pub note: String,
}

/// How long [`lock`](#method.lock) on `dyn Storage` waits for a job held by another run, in
/// milliseconds (the CLI's `--wait`; default 0: refuse at once).
static LOCK_WAIT_MS: AtomicU64 = AtomicU64::new(0);

/// Set how long a run waits for a job's lock held by another run before it is refused (the
/// CLI's global `--wait`). For the whole process.
pub fn set_lock_wait(wait: Duration) {
    LOCK_WAIT_MS.store(
        u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// The wait set by [`set_lock_wait`].
pub fn lock_wait() -> Duration {
    Duration::from_millis(LOCK_WAIT_MS.load(Ordering::Relaxed))
}

/// How long to sleep before asking again for a lock, `waited` into a wait of `wait`: one
/// second, less when the wait ends sooner; `None` when the wait is over.
pub fn next_lock_try(waited: Duration, wait: Duration) -> Option<Duration> {
    let left = wait.checked_sub(waited).filter(|d| !d.is_zero())?;
    Some(left.min(Duration::from_secs(1)))
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

    /// How this storage excludes concurrent runs of a job, for `drkit doctor`: storages that
    /// must probe the server (S3: does it honour conditional writes?) do it here. `None`:
    /// nothing to say (the default).
    async fn lock_check(&self) -> Result<Option<LockCheck>> {
        Ok(None)
    }

    /// Who holds a live lease on `job` now (`host H, pid P, since T, lease expires E`), for
    /// the fleet view; `None` when nobody does, or the storage keeps no leases (a local
    /// folder's lock is a lock on this host only). The default: `None`.
    async fn lease_holder(&self, job: &str, now: DateTime<Utc>) -> Result<Option<String>> {
        let _ = (job, now);
        Ok(None)
    }

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
    /// Take the job's lock ([`Storage::lock_job`]); while another run holds it, ask again
    /// every second for up to [`lock_wait`] (the CLI's `--wait`), then give the refusal
    /// (exit 3) that names the holder. Every run that writes a job takes its lock this way.
    pub async fn lock(&self, job: &str) -> Result<JobLock> {
        let wait = lock_wait();
        let start = std::time::Instant::now();
        let mut told = false;
        loop {
            match self.lock_job(job).await {
                Err(e) if e.kind() == crate::ErrorKind::Refused => {
                    let Some(pause) = next_lock_try(start.elapsed(), wait) else {
                        return Err(Error::refused(if wait.is_zero() {
                            format!("{e}, or run with --wait DURATION")
                        } else {
                            format!("{e} (still held after waiting {wait:?})")
                        }));
                    };
                    if !told {
                        told = true;
                        tracing::info!(
                            event = "lock.wait",
                            job,
                            "{job}: waiting up to {wait:?} for the job's lock on {}: {e}",
                            self.describe()
                        );
                    }
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_retries_within_the_wait() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let cases = [
            (s(0), s(0), None),
            (ms(10), s(0), None),
            (s(0), s(30), Some(s(1))),
            (s(29), s(30), Some(s(1))),
            (ms(29_600), s(30), Some(ms(400))),
            (s(30), s(30), None),
            (s(31), s(30), None),
        ];
        for (waited, wait, want) in cases {
            assert_eq!(next_lock_try(waited, wait), want, "{waited:?} of {wait:?}");
        }
    }

    struct FakeLease(Option<String>);

    #[async_trait]
    impl JobLease for FakeLease {
        async fn release(self: Box<Self>) -> Result<()> {
            Ok(())
        }
        fn lost(&self) -> Option<String> {
            self.0.clone()
        }
    }

    #[tokio::test]
    async fn what_a_lock_holds() {
        assert!(!JobLock::none().is_held());
        assert!(JobLock::new(Box::new(())).is_held());
        assert!(JobLock::lease(Box::new(FakeLease(None)), true).is_held());
        let advisory = JobLock::lease(Box::new(FakeLease(None)), false);
        assert!(
            !advisory.is_held(),
            "an advisory lease does not count as held"
        );
        assert!(advisory.check().is_ok());
        advisory.release().await.unwrap();
        let lost = JobLock::lease(Box::new(FakeLease(Some("taken over".into()))), true);
        let e = lost.check().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Refused);
        assert!(e.to_string().contains("taken over"), "{e}");
    }
}
