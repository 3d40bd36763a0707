//! Drill a job: on each of its storages, restore the newest good backup into a scratch place
//! the source provides, check it against the manifest, remove the scratch place, and keep a
//! report in that storage (`pipeline::drill`). A storage with nothing to drill is a result,
//! not an error: the others are still drilled.

use serde::Serialize;

use crate::catalog::{self, Selector};
use crate::pipeline::{self, DrillOptions, DrillReport, Target};
use crate::signing::Trust;
use crate::{Error, ErrorKind, Exit, Result, Source};

/// What drilling one storage of a job came to.
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DrillResult {
    /// The drill ran; its report says whether it passed.
    Ran {
        /// The report, as kept in the storage.
        report: Box<DrillReport>,
        /// The report's key in the storage.
        report_key: String,
        /// Suspect backups passed over to reach the newest good one (newest first).
        skipped_suspect: Vec<String>,
        /// Something the operator should know about the choice (e.g. newer broken entries).
        warning: Option<String>,
    },
    /// There was nothing to drill: no good backup, or the storage could not be read.
    Nothing {
        /// Why, as one line.
        #[serde(serialize_with = "crate::ops::error_json")]
        error: Error,
    },
}

/// One storage's drill.
#[derive(Debug, Serialize)]
pub struct DrillRun {
    /// The job.
    pub job: String,
    /// The storage's name.
    pub storage: String,
    /// What happened.
    #[serde(flatten)]
    pub result: DrillResult,
}

impl DrillRun {
    /// How this drill ends a run: a failed restore or check is its error's kind (a checksum
    /// or count mismatch is an integrity failure), no backup to drill is "unhealthy", an
    /// unreadable storage is a failure.
    pub fn exit(&self) -> Exit {
        match &self.result {
            DrillResult::Ran { report, .. } if report.ok => Exit::Ok,
            DrillResult::Ran { report, .. } => report
                .error_kind
                .map(Exit::from)
                .unwrap_or(Exit::Failed)
                .worst(Exit::Failed),
            DrillResult::Nothing { error } if error.kind() == ErrorKind::NotFound => {
                Exit::Unhealthy
            }
            DrillResult::Nothing { error } => Exit::from(error),
        }
    }
}

/// Drill `job` on each of its storages, in the job's order. An error is returned only for
/// what stops every drill (the source cannot drill, a report cannot be written).
pub async fn drill(
    job: &str,
    targets: &[Target],
    trust: &Trust,
    source: &dyn Source,
    opts: &DrillOptions<'_>,
) -> Result<Vec<DrillRun>> {
    let mut runs = Vec::with_capacity(targets.len());
    for target in targets {
        let storage = target.storage.as_ref();
        let chosen = match catalog::scan(storage, job, trust).await {
            Ok(listing) => catalog::choose(&listing, job, &Selector::Newest).map(|c| {
                (
                    c.entry.manifest.clone(),
                    c.skipped_suspect,
                    c.warning.clone(),
                )
            }),
            Err(e) => Err(e),
        };
        let result = match chosen {
            Err(e) => DrillResult::Nothing {
                error: Error::new(
                    e.kind(),
                    format!("{job}: nothing to drill on {}: {e}", target.name),
                ),
            },
            Ok((manifest, skipped_suspect, warning)) => {
                let report = pipeline::drill(storage, &manifest, source, opts).await?;
                DrillResult::Ran {
                    report_key: report.key(),
                    report: Box::new(report),
                    skipped_suspect,
                    warning,
                }
            }
        };
        runs.push(DrillRun {
            job: job.to_string(),
            storage: target.name.clone(),
            result,
        });
    }
    Ok(runs)
}

/// The newest drill report of a job on one storage that can be trusted, and the reports
/// passed over on the way (unreadable, forged, misplaced: storage content is untrusted).
#[derive(Debug, Default)]
pub struct LastDrill {
    /// The newest valid report.
    pub report: Option<DrillReport>,
    /// One line per report that was ignored, newest first.
    pub ignored: Vec<String>,
    /// When the newest valid report that passed started (the newest one, or an older one
    /// when the newest failed; looked for among the next [`MAX_PASSED_SEARCH`] reports).
    pub passed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How many reports older than a failed newest one are read to find the last that passed.
pub const MAX_PASSED_SEARCH: usize = 16;

/// How many newer reports may be unusable before the search stops (a storage full of junk
/// must not make `status` read it all).
const MAX_IGNORED: usize = 8;

/// Find the newest valid drill report of `job` on `storage`. A report counts only where it
/// was found (`<job>/drills/<its id>.json`), for this job, and signed when `trust` has a key.
pub async fn last(storage: &dyn crate::Storage, job: &str, trust: &Trust) -> Result<LastDrill> {
    let folder = format!("{job}/{}/", crate::layout::DRILLS_FOLDER);
    let mut keys: Vec<String> = storage
        .list(&folder)
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with(".json") && !k[folder.len()..].contains('/'))
        .collect();
    keys.sort_unstable_by(|a, b| b.cmp(a));
    let mut out = LastDrill::default();
    let mut keys = keys.into_iter();
    for key in keys.by_ref() {
        match read_report(storage, &key, job, trust).await {
            Ok(report) => {
                if report.ok {
                    out.passed_at = Some(report.started_at);
                }
                out.report = Some(report);
                break;
            }
            Err(why) => {
                out.ignored
                    .push(format!("drill report {key} ignored: {why}"));
                if out.ignored.len() >= MAX_IGNORED {
                    return Ok(out);
                }
            }
        }
    }
    if out.passed_at.is_none() {
        for key in keys.take(MAX_PASSED_SEARCH) {
            if let Ok(r) = read_report(storage, &key, job, trust).await {
                if r.ok {
                    out.passed_at = Some(r.started_at);
                    break;
                }
            }
        }
    }
    Ok(out)
}

async fn read_report(
    storage: &dyn crate::Storage,
    key: &str,
    job: &str,
    trust: &Trust,
) -> std::result::Result<DrillReport, String> {
    let bytes = crate::catalog::read_record(storage, key)
        .await
        .map_err(|e| e.to_string())?;
    if !trust.is_blind() {
        let sig =
            match crate::catalog::read_record(storage, &crate::layout::signature_key(key)).await {
                Ok(s) => Some(s),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(format!("its signature cannot be read: {e}")),
            };
        trust
            .check(crate::signing::Record::Drill, &bytes, sig.as_deref())
            .map_err(|e| e.to_string())?;
    }
    let report: DrillReport =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a valid drill report ({e})"))?;
    if report.job != job || report.key() != key {
        return Err(format!(
            "it is the report of {}/{}, not of this place",
            report.job,
            report.key()
        ));
    }
    Ok(report)
}
