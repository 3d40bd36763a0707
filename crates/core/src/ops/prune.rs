//! Prune: the retention plan of one job on one storage, then its application. Only what
//! prune can prove is its own is removed: the folder of a valid manifest that the plan drops.
//! Broken entries are never counted or removed; a listing with an unreadable manifest is
//! not acted on.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{self, Broken, Listing, State};
use crate::config::KeepPolicy;
use crate::manifest::backup_folder;
use crate::pipeline::Target;
use crate::retention::{self, Candidate, Decision};
use crate::signing::Trust;
use crate::{Error, Result};

/// What prune did (or, dry, would do) with one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// The policy keeps it.
    Keep,
    /// A dry run: it would be removed.
    WouldRemove,
    /// Removed (manifest first, then the rest of its folder).
    Removed,
    /// The policy drops it, but it is under object lock until this time.
    Locked {
        /// The end of the lock (`DateTime::MAX_UTC` for a legal hold).
        until: DateTime<Utc>,
    },
    /// Removing it failed; what is left is said in `error`.
    Failed {
        /// What went wrong.
        error: String,
    },
}

impl Action {
    /// The word shown in the ACTION column.
    pub fn label(&self) -> String {
        match self {
            Action::Keep => "keep".into(),
            Action::WouldRemove => "would remove".into(),
            Action::Removed => "removed".into(),
            Action::Locked { until } if *until == DateTime::<Utc>::MAX_UTC => {
                "locked until its legal hold is lifted".into()
            }
            Action::Locked { until } => {
                format!("locked until {}", until.format("%Y-%m-%d %H:%M:%SZ"))
            }
            Action::Failed { .. } => "failed".into(),
        }
    }
}

/// One backup in a prune.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// The backup id.
    pub id: String,
    /// Good, suspect or accepted.
    pub state: State,
    /// Whether the policy keeps it.
    pub keep: bool,
    /// What happened.
    #[serde(flatten)]
    pub action: Action,
    /// Why it is kept or removed.
    pub reasons: Vec<String>,
}

/// A prune of one job on one storage.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// The job.
    pub job: String,
    /// The storage's name.
    pub storage: String,
    /// Each valid backup, newest first.
    pub items: Vec<Item>,
    /// Broken entries, left alone.
    pub broken: Vec<Broken>,
    /// Leftovers removed before pruning (folders without a manifest, such as the data a
    /// prune cut short left; on storages that cannot lock, once older than `leftover_age`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cleaned: Vec<String>,
}

impl PruneReport {
    /// How this prune ends a run: a failed removal is a failure.
    pub fn exit(&self) -> crate::Exit {
        if self.has_failures() {
            crate::Exit::Failed
        } else {
            crate::Exit::Ok
        }
    }

    /// Whether some removal failed.
    pub fn has_failures(&self) -> bool {
        self.items
            .iter()
            .any(|i| matches!(i.action, Action::Failed { .. }))
    }
}

/// The retention plan of a listing: one decision per valid backup, newest first.
pub fn plan(listing: &Listing, policy: &KeepPolicy, now: DateTime<Utc>) -> Result<Vec<Decision>> {
    let candidates: Vec<Candidate> = listing
        .backups
        .iter()
        .map(|e| Candidate {
            id: e.manifest.id.clone(),
            started_at: e.manifest.started_at,
            good: e.is_good(),
        })
        .collect();
    retention::plan(&candidates, policy, now)
}

/// The prune of a job on one of its storages, or why that storage could not be pruned.
#[derive(Debug)]
pub struct StoragePrune {
    /// The storage's name.
    pub storage: String,
    /// The report, or the storage's error (the other storages are still pruned).
    pub result: Result<PruneReport>,
}

impl StoragePrune {
    /// How this prune ends a run.
    pub fn exit(&self) -> crate::Exit {
        match &self.result {
            Ok(r) => r.exit(),
            // A job held by another run is refused (3), like a backup's.
            Err(e) if e.kind() == crate::ErrorKind::Refused => crate::Exit::Refused,
            Err(_) => crate::Exit::Failed,
        }
    }
}

/// Apply `policy` to `job` on each of its storages, in the job's order.
pub async fn prune_job(
    job: &str,
    targets: &[Target],
    policy: &KeepPolicy,
    trust: &Trust,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Vec<StoragePrune> {
    let mut out = Vec::with_capacity(targets.len());
    for target in targets {
        out.push(StoragePrune {
            storage: target.name.clone(),
            result: prune(job, target, policy, trust, now, dry_run).await,
        });
    }
    out
}

/// Apply `policy` to `job` on `target` (with `dry_run`, only say what would go).
pub async fn prune(
    job: &str,
    target: &Target,
    policy: &KeepPolicy,
    trust: &Trust,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<PruneReport> {
    let lock = if dry_run {
        None
    } else {
        Some(target.storage.lock(job).await?)
    };
    let held = lock.as_ref().map(|l| l.is_held());
    let result = prune_under(job, target, policy, trust, now, dry_run, held).await;
    if let Some(lock) = lock {
        if let Err(e) = lock.release().await {
            tracing::warn!(
                event = "lock.release_failed",
                job,
                "storage {}: {e}",
                target.name
            );
        }
    }
    result
}

/// [`prune`] under the job's lock: `held` is `None` for a dry run (no lock, no cleaning),
/// else whether the lock is really held ([`crate::JobLock::is_held`]).
async fn prune_under(
    job: &str,
    target: &Target,
    policy: &KeepPolicy,
    trust: &Trust,
    now: DateTime<Utc>,
    dry_run: bool,
    held: Option<bool>,
) -> Result<PruneReport> {
    let storage = target.storage.as_ref();
    let listing = catalog::scan(storage, job, trust).await?;
    if !dry_run {
        if let Some(b) = listing.broken.iter().find(|b| b.unreadable) {
            return Err(Error::storage(format!(
                "job {job} on storage {}: backup {} could not be read ({}); not pruning while the catalog is incomplete",
                target.name, b.id, b.reason
            )));
        }
    }
    // What an earlier prune cut short (or a crashed backup) left: the same cleaning as a
    // backup's, under the same rule (everything under a held lock, else only old leftovers).
    let cleaned = match held {
        Some(held) => crate::layout::clean_leftovers(storage, job, held).await?,
        None => Vec::new(),
    };
    let decisions = plan(&listing, policy, now)?;
    let mut items = Vec::with_capacity(decisions.len());
    for d in decisions {
        let entry = listing.get(&d.id).expect("a decision per listed backup");
        let action = if d.keep {
            Action::Keep
        } else if let Some(until) = storage.locked_until(&entry.manifest.key()).await? {
            // The manifest is written last, so its retention ends last.
            Action::Locked { until }
        } else if dry_run {
            Action::WouldRemove
        } else {
            match remove(storage, job, &d.id).await {
                Ok(()) => {
                    tracing::debug!(
                        event = "prune.removed",
                        job,
                        backup_id = d.id.as_str(),
                        "{job}: removed backup {}",
                        d.id
                    );
                    Action::Removed
                }
                Err(e) => Action::Failed {
                    error: e.to_string(),
                },
            }
        };
        items.push(Item {
            id: d.id,
            state: entry.state(),
            keep: d.keep,
            action,
            reasons: d.reasons,
        });
    }
    Ok(PruneReport {
        job: job.to_string(),
        storage: target.name.clone(),
        items,
        broken: listing.broken,
        cleaned,
    })
}

/// Remove backup `id`: the manifest first (from then on the backup does not exist), then
/// everything else in its folder. A failed manifest delete may have landed: the storage is
/// asked before the data goes, so a backup that still has its manifest keeps its data.
async fn remove(storage: &dyn crate::Storage, job: &str, id: &str) -> Result<()> {
    let manifest_key = crate::manifest::manifest_key(job, id);
    if let Err(e) = storage.delete(&manifest_key).await {
        match storage.head(&manifest_key).await {
            Ok(None) => {}
            Ok(Some(_)) => {
                return Err(e.context(
                    "removing the manifest failed and it is still there: the backup is intact, the next prune tries again",
                ))
            }
            Err(check) => {
                return Err(Error::new(e.kind(), format!(
                    "removing the manifest failed and whether it is gone is unknown (the storage could not be asked), so its data was left: `drkit list` shows whether the backup is still there; if it is gone, the leftover cleaning of the next backup or prune removes the data; the delete: {e}; the check: {check}"
                )))
            }
        }
    }
    let left = |what: &str| {
        format!("the manifest is removed, {what} is left for the leftover cleaning of the next backup or prune")
    };
    let folder = backup_folder(job, id);
    let objects = storage
        .list(&folder)
        .await
        .map_err(|e| e.context(left(&format!("the rest of {folder}"))))?;
    for o in objects {
        storage
            .delete(&o.key)
            .await
            .map_err(|e| e.context(left(&o.key)))?;
    }
    Ok(())
}
