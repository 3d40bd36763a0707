use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::hash::HashHandle;
use super::verify::{open_raw, read_failure, EndChecks};
use super::{no_progress, Progress};
use crate::{BoxRead, Manifest, RestoreOptions, RestoreReport, Result, Source, Storage};

/// What a restore did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    /// The job of the restored backup.
    pub job: String,
    /// The restored backup's id.
    pub id: String,
    /// Whether this was a dry run (nothing changed).
    pub dry_run: bool,
    /// The driver's report.
    pub report: RestoreReport,
    /// Where the time went.
    pub timings: RestoreTimings,
}

/// Where a restore's time went.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreTimings {
    /// The archive was read once, verified as it was restored (the driver rolls back a bad
    /// stream); else it was verified whole first, then read again.
    pub one_pass: bool,
    /// The separate verification pass (0 in one pass).
    pub verify_ms: u64,
    /// Time the restore pass waited for the storage (download).
    pub storage_wait_ms: u64,
    /// The whole restore, from the plan to the driver's last check.
    pub total_ms: u64,
    /// Raw bytes restored.
    pub raw_bytes: u64,
}

impl RestoreTimings {
    /// The time spent getting the archive: the verification pass and the waits for the
    /// storage during the restore pass.
    pub fn download_ms(&self) -> u64 {
        self.verify_ms + self.storage_wait_ms
    }

    /// Raw bytes per second over the whole restore.
    pub fn rate(&self) -> u64 {
        (self.raw_bytes as u128 * 1000 / u128::from(self.total_ms.max(1))) as u64
    }
}

/// How far a failed restore got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The driver checked the destination (nothing read from the storage yet).
    Plan,
    /// The archive was being verified: nothing reached the destination.
    Verify,
    /// Bytes were going to the destination.
    Write,
}

/// A failed restore and how far it got: a failure before [`Phase::Write`] left the
/// destination untouched, so another copy of the backup may be tried.
#[derive(Debug)]
pub struct RestoreFailure {
    /// Where it failed.
    pub phase: Phase,
    /// Why.
    pub error: crate::Error,
}

/// Restore `manifest`'s backup from `storage` through `source`.
///
/// Order: the driver checks the destination (refusing one that holds data unless
/// `opts.force`). Then, when the driver restores in one pass
/// ([`Source::restores_in_one_pass`]: it makes nothing live unless the stream ends without
/// error), the archive is read once: its head is checked, and the reader handed to the
/// driver fails at its end if either checksum or the driver's stream check fails. Otherwise
/// the whole archive is verified first, before the first byte goes to the destination, then
/// streamed again into the driver through the same checking reader. With `dry_run`, it
/// verifies the archive and stops.
pub async fn restore(
    storage: &dyn Storage,
    manifest: &Manifest,
    source: &dyn Source,
    opts: &RestoreOptions,
    dry_run: bool,
    progress: Progress,
) -> Result<RestoreOutcome> {
    restore_phased(storage, manifest, source, opts, dry_run, progress)
        .await
        .map_err(|f| f.error)
}

/// [`restore`], saying on failure how far it got.
pub async fn restore_phased(
    storage: &dyn Storage,
    manifest: &Manifest,
    source: &dyn Source,
    opts: &RestoreOptions,
    dry_run: bool,
    progress: Progress,
) -> std::result::Result<RestoreOutcome, RestoreFailure> {
    let clock = std::time::Instant::now();
    let at = |phase| move |error| RestoreFailure { phase, error };
    let plan = source
        .plan_restore(manifest, opts)
        .await
        .map_err(at(Phase::Plan))?;
    let one_pass = source.restores_in_one_pass() && !dry_run;
    let mut timings = RestoreTimings {
        one_pass,
        raw_bytes: manifest.data.raw_size,
        ..Default::default()
    };
    let outcome = |report, timings| RestoreOutcome {
        job: manifest.job.clone(),
        id: manifest.id.clone(),
        dry_run,
        report,
        timings,
    };
    if !one_pass {
        super::verify::verify_with(
            storage,
            manifest,
            Some(source),
            false,
            opts.keys.as_deref(),
            no_progress(),
        )
        .await
        .map_err(at(Phase::Verify))?;
        timings.verify_ms = clock.elapsed().as_millis() as u64;
    }
    if dry_run {
        timings.total_ms = clock.elapsed().as_millis() as u64;
        return Ok(outcome(plan, timings));
    }
    let opened = open_raw(storage, manifest, 0, opts.keys.as_deref())
        .await
        .map_err(at(Phase::Verify))?;
    let waited = opened.waited.clone();
    progress.total(manifest.data.raw_size);
    let mut raw: BoxRead = Box::new(opened.raw);
    if one_pass {
        // The head's structure check, before anything reaches the driver.
        let mut head = Vec::with_capacity(HEAD);
        (&mut raw)
            .take(HEAD as u64)
            .read_to_end(&mut head)
            .await
            .map_err(|e| at(Phase::Verify)(read_failure(manifest, e)))?;
        source
            .check_structure(&head)
            .map_err(|e| at(Phase::Verify)(super::verify::corrupt(manifest, e)))?;
        raw = Box::new(std::io::Cursor::new(head).chain(raw));
    }
    let archive_failed = Arc::new(AtomicBool::new(false));
    let checked = CheckedReader {
        inner: raw,
        stored_hash: opened.stored_hash,
        raw_hash: opened.raw_hash,
        checks: Some(EndChecks::new(
            manifest,
            Some(source).filter(|_| one_pass),
            false,
        )),
        manifest: manifest.clone(),
        failed: archive_failed.clone(),
        progress,
        total: 0,
    };
    let report = source
        .restore(Box::new(checked), manifest, opts)
        .await
        .map_err(|error| RestoreFailure {
            // In one pass, a bad archive left the destination as it was (the driver's
            // promise): another copy may be tried.
            phase: if one_pass && archive_failed.load(Ordering::Relaxed) {
                Phase::Verify
            } else {
                Phase::Write
            },
            error,
        })?;
    timings.storage_wait_ms = waited.waited().as_millis() as u64;
    timings.total_ms = clock.elapsed().as_millis() as u64;
    Ok(outcome(report, timings))
}

/// How many first raw bytes a one-pass restore checks before the driver sees any.
const HEAD: usize = 4096;

/// Fails at the end of the stream when the bytes do not match the manifest (both checksums,
/// and in one pass the driver's stream check), so a driver that only makes data live after a
/// clean end of stream never makes corrupt data live.
struct CheckedReader {
    inner: BoxRead,
    stored_hash: HashHandle,
    raw_hash: HashHandle,
    /// Taken at the end.
    checks: Option<EndChecks>,
    manifest: Manifest,
    /// Set when this reader failed the stream (the archive is bad).
    failed: Arc<AtomicBool>,
    progress: Progress,
    total: u64,
}

impl AsyncRead for CheckedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                this.total += new.len() as u64;
                this.progress.moved(this.total);
                match (new.is_empty(), this.checks.as_mut()) {
                    (false, Some(c)) => {
                        c.update(new);
                        Ok(())
                    }
                    (true, Some(_)) => {
                        let checks = this.checks.take().expect("checked above");
                        checks.finish(&this.stored_hash, &this.raw_hash).map(|_| ())
                    }
                    (_, None) => Ok(()),
                }
            }
            Poll::Ready(Err(e)) => Err(read_failure(&this.manifest, e)),
        };
        if let Err(e) = result {
            this.failed.store(true, Ordering::Relaxed);
            return Poll::Ready(Err(e.into()));
        }
        Poll::Ready(Ok(()))
    }
}
