//! Restore drills: restore a backup into a scratch place, check it, remove it, keep a report.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use super::{no_progress, restore, Progress};
use crate::drill::{judge, Check, CheckResult, Place, Scratch, ScratchName};
use crate::layout::{drill_report_key, signature_key};
use crate::signing::{Record, Signer};
use crate::{Error, ErrorKind, Manifest, RestoreOptions, Result, Source, Storage};

/// The record of one restore drill, kept in the storage at `<job>/drills/<report_id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    /// `YYYYMMDDTHHMMSSZ-<6 hex>`: two drills in one second keep two reports. Empty in
    /// reports of earlier versions (named by their start time alone).
    #[serde(default)]
    pub report_id: String,
    /// The job.
    pub job: String,
    /// The backup that was restored.
    pub backup_id: String,
    /// When the drill started.
    pub started_at: DateTime<Utc>,
    /// The time to usable data (the RTO): from the start of the restore until the operator's
    /// checks passed; the sum of [`DrillTimings`]' parts.
    pub duration_ms: u64,
    /// Whether the restore succeeded and matched the manifest.
    pub ok: bool,
    /// The scratch destination (removed afterwards).
    pub scratch: String,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Error kind when failed (`integrity`, `source`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    /// Where the drill restored ([`Place::describe`]); empty in reports of earlier versions.
    #[serde(default)]
    pub place: String,
    /// Where the time went; absent when the restore failed (and in earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<DrillTimings>,
    /// The operator's checks and their values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckResult>,
    /// What else happened (scratch of earlier drills removed, the source server loaded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl DrillReport {
    fn fail(&mut self, e: &Error) {
        self.ok = false;
        self.error = Some(e.to_string());
        self.error_kind = Some(e.kind());
    }

    /// The storage key this report is kept under.
    pub fn key(&self) -> String {
        if self.report_id.is_empty() {
            drill_report_key(
                &self.job,
                &self.started_at.format("%Y%m%dT%H%M%SZ").to_string(),
            )
        } else {
            drill_report_key(&self.job, &self.report_id)
        }
    }
}

/// Where the time of a drill went (its RTO, `duration_ms`, is their sum).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DrillTimings {
    /// Getting the archive from the storage: a verification pass, or the waits for the
    /// storage during a one-pass restore.
    pub download_ms: u64,
    /// The restore itself (and the driver's count checks), without the download.
    pub restore_ms: u64,
    /// The operator's checks.
    pub checks_ms: u64,
    /// Raw bytes restored.
    pub raw_bytes: u64,
    /// The archive was read once ([`crate::Source::restores_in_one_pass`]).
    pub one_pass: bool,
}

impl DrillTimings {
    /// Raw bytes per second of the restore (download included).
    pub fn rate(&self) -> u64 {
        let ms = (self.download_ms + self.restore_ms).max(1);
        (u128::from(self.raw_bytes) * 1000 / u128::from(ms)) as u64
    }
}

/// How to run a drill: where, what to check, the goal, and how to be told to stop.
#[derive(Clone)]
pub struct DrillOptions<'a> {
    /// Where to restore.
    pub place: Place,
    /// The operator's checks, run in order against the restored copy.
    pub checks: Vec<Check>,
    /// The recovery time objective: a drill slower than this fails.
    pub rto: Option<std::time::Duration>,
    /// Signs the report, when set.
    pub signer: Option<&'a Signer>,
    /// Hears the raw bytes restored so far.
    pub progress: Progress,
    /// Turns `true` when the drill must stop (SIGINT, SIGTERM): the scratch place is removed,
    /// no report is written, and the drill returns a [`ErrorKind::Cancelled`] error.
    pub cancel: Option<tokio::sync::watch::Receiver<bool>>,
    /// The keys that open an encrypted archive.
    pub keys: Option<std::sync::Arc<crate::crypt::Keys>>,
}

impl Default for DrillOptions<'_> {
    fn default() -> Self {
        DrillOptions {
            place: Place::Beside,
            checks: Vec::new(),
            rto: None,
            signer: None,
            progress: no_progress(),
            cancel: None,
            keys: None,
        }
    }
}

/// Restore `manifest`'s backup into a scratch place the driver prepares at `opts.place`,
/// check it against the manifest (the driver's restore does) and with the operator's checks,
/// remove the scratch place, and write the report to the storage (signed, with a `.sig`
/// beside it, when a signer is set). Scratch places that killed drills left more than a day
/// ago are removed first. Returns the report; a failed drill is a report with `ok: false`:
/// a failed check, or a drill slower than `opts.rto`, is an integrity failure.
pub async fn drill(
    storage: &dyn Storage,
    manifest: &Manifest,
    source: &dyn Source,
    opts: &DrillOptions<'_>,
) -> Result<DrillReport> {
    let started_at = Utc::now().trunc_subsecs(3);
    let mut notes = match source.drill_sweep(&opts.place, started_at).await {
        Ok(lines) => lines,
        Err(e) => vec![format!(
            "could not look for scratch left by earlier drills: {e}"
        )],
    };
    let name = ScratchName {
        job: manifest.job.clone(),
        at: started_at,
        tag: rand::random(),
    };
    let prepared = match source.drill_scratch(manifest, &opts.place, &name).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => {
            return Err(Error::config(format!(
                "the {} driver cannot run restore drills {}",
                source.driver(),
                match opts.place {
                    Place::Beside => "beside the source".into(),
                    _ => format!("into a {}", opts.place.describe()),
                }
            )))
        }
        Err(e) => Err(e),
    };
    let mut report = DrillReport {
        report_id: crate::catalog::new_backup_id(started_at, &mut rand::thread_rng()),
        job: manifest.job.clone(),
        backup_id: manifest.id.clone(),
        started_at,
        duration_ms: 0,
        ok: false,
        scratch: String::new(),
        place: opts.place.describe(),
        error: None,
        error_kind: None,
        timings: None,
        checks: Vec::new(),
        notes: Vec::new(),
    };
    match prepared {
        Err(e) => report.fail(&e),
        Ok(scratch) => {
            report.scratch = scratch.shown.clone();
            notes.extend(scratch.notes.iter().cloned());
            let work = restore_and_check(storage, manifest, source, opts, &scratch, &mut report);
            let stopped = match opts.cancel.clone() {
                None => {
                    work.await;
                    false
                }
                Some(mut cancel) => tokio::select! {
                    () = work => false,
                    _ = cancel.wait_for(|stop| *stop) => true,
                },
            };
            let cleanup = source.drill_cleanup(&scratch).await;
            if stopped {
                return Err(Error::cancelled(format!(
                    "drill of {}/{} interrupted; {}",
                    manifest.job,
                    manifest.id,
                    match cleanup {
                        Ok(()) => format!("its scratch copy {} was removed", scratch.shown),
                        Err(e) => format!("removing its scratch copy failed: {e}"),
                    }
                )));
            }
            if let Err(e) = cleanup {
                notes.push(format!("removing the scratch copy failed: {e}"));
            }
        }
    }
    if let Some(limit) = opts
        .rto
        .filter(|l| report.ok && clock_over(report.duration_ms, *l))
    {
        report.ok = false;
        report.error = Some(format!(
            "restored and checked, but it took {:.1}s, over the recovery time objective rto = {}s",
            report.duration_ms as f64 / 1000.0,
            limit.as_secs_f64()
        ));
        report.error_kind = Some(ErrorKind::Integrity);
    }
    report.notes = notes;
    let mut json = serde_json::to_vec_pretty(&report).expect("a report serializes");
    json.push(b'\n');
    // The report is written under the job's lock. A drill that ends while another run holds
    // it (after --wait) still keeps its report: a new key under drills/ that no backup or
    // prune writes, so it cannot spoil that run.
    let lock = match storage.lock(&report.job).await {
        Ok(l) => Some(l),
        Err(e) if e.kind() == ErrorKind::Refused => {
            tracing::warn!(
                event = "drill.report_unlocked",
                job = report.job.as_str(),
                "{}: writing the drill report while another run holds the job: {e}",
                report.job
            );
            None
        }
        Err(e) => return Err(e),
    };
    let written = async {
        if let Some(signer) = opts.signer {
            let sig = signer.sign(Record::Drill, &json);
            storage.put(&signature_key(&report.key()), sig).await?;
        }
        storage.put(&report.key(), json).await
    }
    .await;
    if let Some(lock) = lock {
        if let Err(e) = lock.release().await {
            tracing::warn!(
                event = "lock.release_failed",
                job = report.job.as_str(),
                "{e}"
            );
        }
    }
    written?;
    Ok(report)
}

/// The restore into `scratch` and the operator's checks, filling `report` (its verdict,
/// timings and check results) as they go, so that an interrupted drill keeps what it had.
async fn restore_and_check(
    storage: &dyn Storage,
    manifest: &Manifest,
    source: &dyn Source,
    opts: &DrillOptions<'_>,
    scratch: &Scratch,
    report: &mut DrillReport,
) {
    let restore_opts = RestoreOptions {
        to: Some(scratch.to.clone()),
        keys: opts.keys.clone(),
        ..Default::default()
    };
    let restored = restore(
        storage,
        manifest,
        source,
        &restore_opts,
        false,
        opts.progress.clone(),
    )
    .await;
    let t = match restored {
        Ok(outcome) => outcome.timings,
        Err(e) => return report.fail(&e),
    };
    let download_ms = t.download_ms().min(t.total_ms);
    let mut timings = DrillTimings {
        download_ms,
        restore_ms: t.total_ms - download_ms,
        checks_ms: 0,
        raw_bytes: t.raw_bytes,
        one_pass: t.one_pass,
    };
    let clock = std::time::Instant::now();
    let mut first_failure: Option<Error> = None;
    for check in &opts.checks {
        let (value, why, kind) = match source.drill_check(scratch, &check.query).await {
            Ok(value) => {
                let why = judge(&value, &check.expect);
                (value, why, ErrorKind::Integrity)
            }
            Err(e) => (serde_json::Value::Null, Some(e.to_string()), e.kind()),
        };
        if let (Some(why), None) = (&why, &first_failure) {
            first_failure = Some(Error::new(
                kind,
                format!("restored, but the check {:?} failed: {why}", check.name),
            ));
        }
        report.checks.push(CheckResult {
            name: check.name.clone(),
            ok: why.is_none(),
            value,
            why,
        });
    }
    timings.checks_ms = clock.elapsed().as_millis() as u64;
    report.duration_ms = timings.download_ms + timings.restore_ms + timings.checks_ms;
    report.timings = Some(timings);
    match first_failure {
        Some(e) => report.fail(&e),
        None => report.ok = true,
    }
}
/// Whether `duration_ms` is over `limit`.
fn clock_over(duration_ms: u64, limit: std::time::Duration) -> bool {
    u128::from(duration_ms) > limit.as_millis()
}
