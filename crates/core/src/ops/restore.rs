//! Restore across a job's storages: choose the backup on the first storage that can say, then
//! restore it from the first copy that passes its checksums, falling back to the next storage
//! holding the same backup id when a copy fails before any byte reached the destination.

use serde::Serialize;

use crate::catalog::{self, Selector};
use crate::pipeline::{restore_phased, Phase, Progress, RestoreOutcome, Target};
use crate::signing::Trust;
use crate::{Error, ErrorKind, RestoreOptions, Result, Source};

/// What a restore did, and how it chose.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreRun {
    /// The restore.
    pub restore: RestoreOutcome,
    /// The storage the restored copy came from.
    pub storage: String,
    /// Why this backup was chosen.
    pub chosen_because: String,
    /// Suspect backups passed over (newest first).
    pub skipped_suspect: Vec<String>,
    /// Things the operator should know: a suspect backup chosen by id, storages that could
    /// not be read, copies that failed their checksums and were passed over.
    pub warnings: Vec<String>,
}

/// Choose the backup `selector` names and restore it through `source`.
#[allow(clippy::too_many_arguments)]
pub async fn restore(
    job: &str,
    targets: &[Target],
    trust: &Trust,
    selector: &Selector,
    source: &dyn Source,
    opts: &RestoreOptions,
    dry_run: bool,
    progress: Progress,
) -> Result<RestoreRun> {
    let mut warnings = Vec::new();
    let mut problems: Vec<(String, Error)> = Vec::new();
    let mut listings = Vec::new();
    for t in targets {
        match catalog::scan(t.storage.as_ref(), job, trust).await {
            Ok(l) => listings.push((t, l)),
            Err(e) => {
                warnings.push(format!("storage {} could not be read: {e}", t.name));
                problems.push((t.name.clone(), e));
            }
        }
    }
    let mut chosen = None;
    for (i, (t, l)) in listings.iter().enumerate() {
        match catalog::choose(l, job, selector) {
            Ok(c) => {
                chosen = Some((
                    i,
                    c.entry.manifest.id.clone(),
                    c.why,
                    c.skipped_suspect,
                    c.warning,
                ));
                break;
            }
            Err(e) => problems.push((t.name.clone(), e)),
        }
    }
    let Some((first, id, why, skipped_suspect, warning)) = chosen else {
        return Err(none_found(job, problems));
    };
    warnings.extend(warning);
    // The chosen storage first, then every other one that holds a valid copy of that id.
    let order = std::iter::once(first).chain((0..listings.len()).filter(|&i| i != first));
    let mut failures: Vec<String> = Vec::new();
    for i in order {
        let (t, l) = &listings[i];
        let Some(entry) = l.get(&id) else { continue };
        match restore_phased(
            t.storage.as_ref(),
            &entry.manifest,
            source,
            opts,
            dry_run,
            progress.clone(),
        )
        .await
        {
            Ok(outcome) => {
                return Ok(RestoreRun {
                    restore: outcome,
                    storage: t.name.clone(),
                    chosen_because: why,
                    skipped_suspect,
                    warnings,
                })
            }
            // A missing identity is the same on every storage: said at once, exit 2.
            Err(f) if f.phase == Phase::Verify && f.error.kind() != ErrorKind::Config => {
                warnings.push(format!(
                    "the copy on storage {} failed before anything was written ({}); trying the next storage that holds backup {id}",
                    t.name, f.error
                ));
                failures.push(format!("{}: {}", t.name, f.error));
            }
            Err(f) => return Err(f.error),
        }
    }
    Err(Error::integrity(format!(
        "every copy of backup {job}/{id} failed, nothing was restored: {}",
        failures.join("; ")
    )))
}

/// The error when no storage could offer a backup: each storage and what it said.
fn none_found(job: &str, problems: Vec<(String, Error)>) -> Error {
    if problems.is_empty() {
        return Error::not_found(format!("job {job} has no storage to restore from"));
    }
    let kind = [ErrorKind::Config, ErrorKind::Integrity, ErrorKind::Storage]
        .into_iter()
        .find(|k| problems.iter().any(|(_, e)| e.kind() == *k))
        .unwrap_or(ErrorKind::NotFound);
    let text: Vec<String> = problems
        .iter()
        .map(|(name, e)| format!("storage {name}: {e}"))
        .collect();
    let msg = if problems.len() == 1 {
        problems[0].1.to_string()
    } else {
        text.join("; ")
    };
    Error::new(kind, msg)
}
