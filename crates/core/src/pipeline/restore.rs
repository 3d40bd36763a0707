use std::pin::Pin;
use std::task::{Context, Poll};

use serde::Serialize;
use tokio::io::{AsyncRead, ReadBuf};

use super::hash::HashHandle;
use super::verify::{compare, open_raw, verify};
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
/// `opts.force`); the whole archive is verified (checksums) before the first byte goes to
/// the destination; then it is streamed again into the driver, whose reader fails at its end
/// if the bytes changed in between. With `dry_run`, it stops after the verification.
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
    let at = |phase| move |error| RestoreFailure { phase, error };
    let plan = source
        .plan_restore(manifest, opts)
        .await
        .map_err(at(Phase::Plan))?;
    verify(storage, manifest, Some(source), no_progress())
        .await
        .map_err(at(Phase::Verify))?;
    if dry_run {
        return Ok(RestoreOutcome {
            job: manifest.job.clone(),
            id: manifest.id.clone(),
            dry_run: true,
            report: plan,
        });
    }
    let (raw, _stored, raw_hash) = open_raw(storage, manifest, 0)
        .await
        .map_err(at(Phase::Verify))?;
    let checked = CheckedReader {
        inner: Box::new(raw),
        hash: raw_hash,
        manifest: manifest.clone(),
        progress,
        total: 0,
        done: false,
    };
    let report = source
        .restore(Box::new(checked), manifest, opts)
        .await
        .map_err(at(Phase::Write))?;
    Ok(RestoreOutcome {
        job: manifest.job.clone(),
        id: manifest.id.clone(),
        dry_run: false,
        report,
    })
}

/// Fails at the end of the stream when the raw bytes do not match the manifest, so a driver
/// that only makes data live after a clean end of stream never makes corrupt data live.
struct CheckedReader {
    inner: BoxRead,
    hash: HashHandle,
    manifest: Manifest,
    progress: Progress,
    total: u64,
    done: bool,
}

impl AsyncRead for CheckedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                this.total += n as u64;
                (this.progress)(this.total);
                if n == 0 && !this.done {
                    this.done = true;
                    let m = &this.manifest;
                    if let Err(e) = compare(
                        m,
                        "raw",
                        &this.hash.finish(),
                        m.data.raw_size,
                        &m.data.raw_sha256,
                    ) {
                        return Poll::Ready(Err(e.into()));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                Poll::Ready(Err(super::verify::read_failure(&this.manifest, e).into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
