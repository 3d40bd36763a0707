//! Restore drills: restore a backup into a scratch place, check it, remove it, keep a report.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use super::{no_progress, restore};
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
    /// How long the restore and its checks took.
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
}

impl DrillReport {
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

/// Restore `manifest`'s backup into a scratch place the driver provides, check it against the
/// manifest (the driver's restore does), remove the scratch place, and write the report to
/// the storage (signed, with a `.sig` beside it, when `signer` is set). Returns the report; a
/// failed drill is a report with `ok: false`. With `rto`, a drill whose restore and checks
/// took longer fails (an integrity failure: the recovery goal is not met), with the figure.
pub async fn drill(
    storage: &dyn Storage,
    manifest: &Manifest,
    source: &dyn Source,
    signer: Option<&Signer>,
    rto: Option<std::time::Duration>,
) -> Result<DrillReport> {
    let scratch = source.drill_scratch(manifest).await?.ok_or_else(|| {
        Error::config(format!(
            "the {} driver cannot run restore drills",
            source.driver()
        ))
    })?;
    let started_at = Utc::now().trunc_subsecs(3);
    let clock = std::time::Instant::now();
    let opts = RestoreOptions {
        to: Some(scratch.clone()),
        ..Default::default()
    };
    let result = restore(storage, manifest, source, &opts, false, no_progress()).await;
    let duration_ms = clock.elapsed().as_millis() as u64;
    let cleanup = source.drill_cleanup(&scratch).await;
    let mut report = DrillReport {
        report_id: crate::catalog::new_backup_id(started_at, &mut rand::thread_rng()),
        job: manifest.job.clone(),
        backup_id: manifest.id.clone(),
        started_at,
        duration_ms,
        ok: result.is_ok(),
        scratch,
        error: result.as_ref().err().map(|e| e.to_string()),
        error_kind: result.as_ref().err().map(|e| e.kind()),
    };
    if let Some(limit) = rto.filter(|l| report.ok && clock_over(duration_ms, *l)) {
        report.ok = false;
        report.error = Some(format!(
            "restored and checked, but it took {:.1}s, over the recovery time objective rto = {}s",
            duration_ms as f64 / 1000.0,
            limit.as_secs_f64()
        ));
        report.error_kind = Some(ErrorKind::Integrity);
    }
    if let (true, Err(e)) = (report.ok, &cleanup) {
        report.error = Some(format!(
            "restore ok, but removing the scratch copy failed: {e}"
        ));
    }
    let mut json = serde_json::to_vec_pretty(&report).expect("a report serializes");
    json.push(b'\n');
    if let Some(signer) = signer {
        let sig = signer.sign(Record::Drill, &json);
        storage.put(&signature_key(&report.key()), sig).await?;
    }
    storage.put(&report.key(), json).await?;
    Ok(report)
}

/// Whether `duration_ms` is over `limit`.
fn clock_over(duration_ms: u64, limit: std::time::Duration) -> bool {
    u128::from(duration_ms) > limit.as_millis()
}
