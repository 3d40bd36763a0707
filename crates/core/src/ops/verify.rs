//! Verify a job on each of its storages: which backups to re-read (the newest, all, or one by
//! id), and what each came to. Broken catalog entries are failures of the verification (a
//! forged or damaged manifest is an integrity problem); a storage that cannot be read is one
//! failure, and the other storages are still verified.

use crate::catalog::{self, Entry};
use crate::pipeline::{self, Progress, Target, VerifyReport};
use crate::signing::Trust;
use crate::{Error, ErrorKind, Exit, Manifest, Source};

/// Which backups of a job to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// The newest backup on each storage.
    Newest,
    /// Every backup.
    All,
    /// The backup with this id.
    Id(String),
}

/// What verifying one item came to.
#[derive(Debug)]
pub enum Verdict {
    /// Both checksums and the structure match.
    Ok {
        /// The backup.
        entry: Box<Entry>,
        /// What was checked.
        report: VerifyReport,
    },
    /// The backup failed its checks (or could not be loaded).
    Failed {
        /// The backup id.
        id: String,
        /// Why.
        error: Error,
    },
    /// No backup with the id asked for.
    NotFound {
        /// The id asked for.
        id: String,
        /// The error to show.
        error: Error,
    },
    /// A broken catalog entry (forged, damaged, misplaced manifest).
    Broken {
        /// The folder's id.
        id: String,
        /// Why it is broken.
        error: Error,
    },
    /// The storage could not be listed.
    Unreadable {
        /// Why.
        error: Error,
    },
    /// The storage holds no backup of the job.
    Empty {
        /// The error to show.
        error: Error,
    },
}

/// One verified item: a backup, a broken entry, or a storage's problem.
#[derive(Debug)]
pub struct Verified {
    /// The job.
    pub job: String,
    /// The storage's name.
    pub storage: String,
    /// What it came to.
    pub verdict: Verdict,
}

impl Verified {
    /// How this item ends a run (integrity failures are exit 4, the rest their kind's code).
    pub fn exit(&self) -> Exit {
        match &self.verdict {
            Verdict::Ok { .. } => Exit::Ok,
            Verdict::Failed { error, .. }
            | Verdict::NotFound { error, .. }
            | Verdict::Broken { error, .. }
            | Verdict::Unreadable { error }
            | Verdict::Empty { error } => Exit::from(error),
        }
    }

    /// The item's error, when it failed.
    pub fn error(&self) -> Option<&Error> {
        match &self.verdict {
            Verdict::Ok { .. } => None,
            Verdict::Failed { error, .. }
            | Verdict::NotFound { error, .. }
            | Verdict::Broken { error, .. }
            | Verdict::Unreadable { error }
            | Verdict::Empty { error } => Some(error),
        }
    }
}

/// Verify `which` backups of `job` on each of its storages. `progress` is asked for a
/// progress callback before each backup is re-read. With a `source`, the driver's structure
/// checks run too (what a restore would refuse, verify refuses), and with `deep` its deep
/// check ([`crate::Source::deep_check`]).
#[allow(clippy::too_many_arguments)]
pub async fn verify(
    job: &str,
    targets: &[Target],
    trust: &Trust,
    which: &Which,
    source: Option<&dyn Source>,
    deep: bool,
    keys: Option<&crate::crypt::Keys>,
    progress: &(dyn Fn(&Manifest) -> Progress + Send + Sync),
) -> Vec<Verified> {
    let mut out = Vec::new();
    for target in targets {
        let item = |verdict| Verified {
            job: job.to_string(),
            storage: target.name.clone(),
            verdict,
        };
        let storage = target.storage.as_ref();
        let entries: Vec<Entry> = match which {
            Which::Id(id) => match catalog::load(storage, job, id, trust).await {
                Ok(e) => vec![e],
                Err(error) if error.kind() == ErrorKind::NotFound => {
                    out.push(item(Verdict::NotFound {
                        id: id.clone(),
                        error,
                    }));
                    continue;
                }
                Err(error) => {
                    out.push(item(Verdict::Failed {
                        id: id.clone(),
                        error,
                    }));
                    continue;
                }
            },
            Which::Newest | Which::All => {
                let listing = match catalog::scan(storage, job, trust).await {
                    Ok(l) => l,
                    Err(error) => {
                        out.push(item(Verdict::Unreadable { error }));
                        continue;
                    }
                };
                for b in &listing.broken {
                    out.push(item(Verdict::Broken {
                        id: b.id.clone(),
                        error: catalog::broken_error(job, b),
                    }));
                }
                if listing.backups.is_empty() {
                    out.push(item(Verdict::Empty {
                        error: Error::not_found(format!(
                            "job {job} has no backup on storage {}",
                            target.name
                        )),
                    }));
                    continue;
                }
                let take = if *which == Which::All { usize::MAX } else { 1 };
                listing.backups.into_iter().take(take).collect()
            }
        };
        for entry in entries {
            let m = &entry.manifest;
            let verdict =
                match pipeline::verify_with(storage, m, source, deep, keys, progress(m)).await {
                    Ok(report) => Verdict::Ok {
                        entry: Box::new(entry),
                        report,
                    },
                    Err(error) => Verdict::Failed {
                        id: m.id.clone(),
                        error,
                    },
                };
            out.push(item(verdict));
        }
    }
    out
}
