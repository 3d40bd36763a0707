//! The guard's policy: which volumes a destructive command destroys (the engine is asked),
//! and whether each has a complete, verified backup newer than the allowed age; backing one
//! up now.
//!
//! "Verified" means: the newest complete backup of the volume is re-read from its storage
//! right now and its checksums, tar structure and every entry checked (`drkit verify`, which
//! applies the restore's own entry policy: a backup a restore would refuse does not count),
//! and it is not an empty backup of a volume that holds data. Checking at guard time, rather
//! than trusting a mark left by an earlier verify, also catches an archive damaged since.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drkit_core::ops::health::human_age;
use drkit_core::pipeline::{self, BackupOptions};
use drkit_core::units::human_bytes;
use drkit_core::{catalog, Config, Error, ErrorKind, Manifest, Result, Source, Storage};
use drkit_drivers::docker::volumes::{self, VolumeInfo};
use drkit_drivers::docker::{containers, Engine};
use drkit_drivers::source::docker_volume::DockerVolumeSource;

use super::argv::Doomed;
use super::shell::shell_words;

/// A volume the command would destroy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoomedVolume {
    /// The volume.
    pub info: VolumeInfo,
    /// Its size in bytes as the engine computes it; `None` when the engine cannot tell
    /// (volumes of other drivers than `local`).
    pub size: Option<u64>,
}

impl DoomedVolume {
    /// Its size in words: `68.0 KiB`, or `size unknown`.
    pub fn size_words(&self) -> String {
        match self.size {
            Some(n) => human_bytes(n),
            None => "size unknown".into(),
        }
    }
}

/// Ask the engine which volumes `doomed` means: those that exist, each with its size.
pub async fn resolve(engine: &Engine, doomed: &Doomed) -> Result<Vec<DoomedVolume>> {
    let mut names = match doomed {
        Doomed::ProjectVolumes { project } => {
            volumes::compose_down_volumes(engine, project).await?
        }
        Doomed::ProjectAnonymous {
            project,
            services,
            running_too,
        } => volumes::compose_rm_volumes(engine, project, services, *running_too).await?,
        Doomed::Named(list) => list.clone(),
        Doomed::Unused { all, filters } => {
            volumes::prune_candidates(engine, *all, &engine_filters(filters)).await?
        }
        Doomed::ContainerAnonymous(refs) => containers::rm_volumes(engine, refs).await?,
    };
    names.sort();
    names.dedup();
    let sizes = if names.is_empty() {
        Default::default()
    } else {
        volumes::sizes(engine).await?
    };
    let mut out = Vec::new();
    for n in names {
        match volumes::inspect(engine, &n).await {
            Ok(info) => out.push(DoomedVolume {
                size: sizes.get(&n).and_then(|s| u64::try_from(*s).ok()),
                info,
            }),
            // The command will fail on it by itself.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The `--filter` values of a prune as engine filters: `label=...` and `label!=...` as
/// they are, any other `KEY=VALUE` as a label filter on VALUE.
pub(super) fn engine_filters(filters: &[String]) -> Vec<(&'static str, String)> {
    filters
        .iter()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| {
            let key = if k == "label!" { "label!" } else { "label" };
            (key, v.to_string())
        })
        .collect()
}

/// The job name `--backup-first` uses for a volume that no job names.
pub fn adhoc_job(volume: &str) -> String {
    let clean: String = volume
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("volume-{}", clean.trim_start_matches('.'))
}

/// A job that backs up a volume: its name, source and storages.
pub struct VolumeJob {
    /// Job name (a configured job, or [`adhoc_job`]).
    pub name: String,
    /// Whether it is configured (false: ad hoc).
    pub configured: bool,
    /// Whether it is a dump of the database server that keeps its data in the volume (the
    /// job `covers` it), rather than a copy of the volume.
    pub dump: bool,
    /// The source.
    pub source: Box<dyn Source>,
    /// Storage names.
    pub storages: Vec<String>,
    /// Backup options.
    pub options: BackupOptions,
}

/// The jobs that back up `volume`: first those that `covers` it (dumps of the database
/// server whose data it holds: the consistent backup, so `--backup-first` runs them), then
/// those whose source is the volume (by name or compose identity), then the ad-hoc job on
/// `adhoc_storages`.
pub fn jobs_for(
    config: &Config,
    volume: &VolumeInfo,
    adhoc_storages: &[String],
) -> Result<Vec<VolumeJob>> {
    let mut out = Vec::new();
    for (name, job) in &config.job {
        if job.covers.iter().any(|v| v == &volume.name) {
            out.push(VolumeJob {
                name: name.clone(),
                configured: true,
                dump: true,
                source: drkit_drivers::open_source(name, &job.source)?,
                storages: job.storage.clone(),
                options: job.backup_options(name)?,
            });
        }
    }
    for (name, job) in &config.job {
        let Some(src) = drkit_drivers::docker_volume_source(name, &job.source)? else {
            continue;
        };
        if src.names(volume) {
            out.push(VolumeJob {
                name: name.clone(),
                configured: true,
                dump: false,
                source: Box::new(src),
                storages: job.storage.clone(),
                options: job.backup_options(name)?,
            });
        }
    }
    out.push(VolumeJob {
        name: adhoc_job(&volume.name),
        configured: false,
        dump: false,
        source: Box::new(DockerVolumeSource::for_volume(&volume.name, true)),
        storages: adhoc_storages.to_vec(),
        options: BackupOptions::default(),
    });
    Ok(out)
}

/// The newest backup found for a volume.
#[derive(Debug, Clone)]
pub struct Newest {
    /// The job.
    pub job: String,
    /// The job is a dump of the database server whose data the volume holds (it `covers`
    /// the volume).
    pub dump: bool,
    /// The storage it was found on.
    pub storage: String,
    /// Its manifest.
    pub manifest: Manifest,
}

/// Why a volume is not protected.
#[derive(Debug)]
pub enum Problem {
    /// No complete, good backup of the volume (and it holds data, or its size is unknown).
    NoBackup,
    /// The newest backup finished longer than the allowed age ago.
    TooOld {
        /// The backup's id.
        id: String,
        /// The allowed age.
        max_age: Duration,
    },
    /// The newest backup is of an empty volume, and the volume holds data now.
    Empty {
        /// The backup's id.
        id: String,
        /// What the volume holds, in bytes.
        holds: u64,
    },
    /// The newest backup, re-read now, failed verification.
    FailedVerification {
        /// The backup's id.
        id: String,
        /// What verification found.
        error: Error,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoBackup => f.write_str("no backup"),
            Problem::TooOld { id, max_age } => write!(
                f,
                "newest backup {id} is older than {}",
                fmt_duration(*max_age)
            ),
            Problem::Empty { id, holds } => write!(
                f,
                "newest backup {id} is empty, but the volume holds {}",
                human_bytes(*holds)
            ),
            Problem::FailedVerification { id, error } => {
                write!(f, "newest backup {id} failed verification: {error}")
            }
        }
    }
}

/// A doomed volume's protection.
#[derive(Debug)]
pub struct Protection {
    /// The volume.
    pub volume: DoomedVolume,
    /// The newest complete, good backup, if any.
    pub newest: Option<Newest>,
    /// How long before the check the newest backup finished.
    pub age: Option<Duration>,
    /// Why the volume is not protected; `None` when it is.
    pub problem: Option<Problem>,
    /// The configured jobs that back it up.
    pub jobs: Vec<String>,
}

impl Protection {
    /// Whether the volume may be destroyed: its newest backup is fresh and verified (or the
    /// volume is empty and has none).
    pub fn protected(&self) -> bool {
        self.problem.is_none()
    }

    /// The age of the newest backup in words (`5m ago`), or `never`.
    pub fn age_words(&self) -> String {
        match (&self.newest, self.age) {
            (Some(_), Some(age)) => format!("{} ago", human_age(age)),
            _ => "never".into(),
        }
    }
}

/// The storages `--backup-first` writes ad-hoc backups to: `chosen`, else every storage of
/// the config.
pub fn adhoc_storages(config: &Config, chosen: &[String]) -> Result<Vec<String>> {
    if !chosen.is_empty() {
        for c in chosen {
            if !config.storage.contains_key(c) {
                return Err(Error::config(format!(
                    "--storage {c}: no such storage in the config"
                )));
            }
        }
        return Ok(chosen.to_vec());
    }
    Ok(config.storage.keys().cloned().collect())
}

/// For each volume, find its newest good backup and decide whether it protects the volume:
/// complete, not suspect (or accepted), signed when the job checks signatures, finished
/// within `max_age` of `now`, verified now, and not empty when the volume holds data.
pub async fn protections(
    config: &Config,
    doomed: &[DoomedVolume],
    adhoc: &[String],
    max_age: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<Protection>> {
    let mut out = Vec::new();
    for d in doomed {
        let jobs = jobs_for(config, &d.info, adhoc)?;
        let mut newest: Option<(Newest, Arc<dyn Storage>, usize)> = None;
        for (ji, job) in jobs.iter().enumerate() {
            for target in crate::open_targets(config, &job.storages)? {
                // Only a good backup protects (not suspect, or accepted), and with a signing
                // key configured only a signed one: a forged manifest is a broken entry.
                let listing =
                    catalog::scan(target.storage.as_ref(), &job.name, &job.options.trust).await?;
                if let Some(m) = listing.newest_good().map(|e| e.manifest.clone()) {
                    if newest
                        .as_ref()
                        .is_none_or(|(n, _, _)| m.finished_at > n.manifest.finished_at)
                    {
                        let n = Newest {
                            job: job.name.clone(),
                            dump: job.dump,
                            storage: target.name.clone(),
                            manifest: m,
                        };
                        newest = Some((n, target.storage.clone(), ji));
                    }
                }
            }
        }
        let configured: Vec<String> = jobs
            .iter()
            .filter(|j| j.configured)
            .map(|j| j.name.clone())
            .collect();
        let age = newest
            .as_ref()
            .map(|(n, _, _)| (now - n.manifest.finished_at).to_std().unwrap_or_default());
        let problem = match (&newest, age) {
            (Some((n, storage, ji)), Some(age)) => {
                let id = n.manifest.id.clone();
                if age > max_age {
                    Some(Problem::TooOld { id, max_age })
                } else if let Some(holds) =
                    d.size.filter(|s| *s > 0 && n.manifest.is_empty_source())
                {
                    Some(Problem::Empty { id, holds })
                } else {
                    let src: &dyn Source = jobs[*ji].source.as_ref();
                    let verified = pipeline::verify(
                        storage.as_ref(),
                        &n.manifest,
                        Some(src),
                        pipeline::no_progress(),
                    )
                    .await;
                    verified
                        .err()
                        .map(|error| Problem::FailedVerification { id, error })
                }
            }
            _ if d.size == Some(0) => None,
            _ => Some(Problem::NoBackup),
        };
        out.push(Protection {
            volume: d.clone(),
            newest: newest.map(|(n, _, _)| n),
            age,
            problem,
            jobs: configured,
        });
    }
    Ok(out)
}

/// A configured age limit in its largest whole unit: `1h`, `90m`, `7d`, `45s`.
pub(super) fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) && s > 0 {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) && s > 0 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) && s > 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Back up one volume now: with the first configured job that names it, else ad hoc (job
/// [`adhoc_job`], containers stopped during the copy) into `adhoc` storages. The new backup
/// is verified before this returns. Returns the job's name and the new backup's manifest.
pub async fn backup_now(
    config: &Config,
    volume: &VolumeInfo,
    adhoc: &[String],
) -> Result<(String, Manifest)> {
    let jobs = jobs_for(config, volume, adhoc)?;
    let job = jobs
        .into_iter()
        .next()
        .expect("the ad-hoc job is always there");
    if job.storages.is_empty() {
        return Err(Error::config(
            "the config defines no storage to back up to: add a [storage.NAME]",
        ));
    }
    let targets = crate::open_targets(config, &job.storages)?;
    let outcome = pipeline::backup(
        &job.name,
        job.source.as_ref(),
        &targets,
        &job.options,
        pipeline::no_progress(),
    )
    .await?;
    for (t, s) in targets.iter().zip(&outcome.storages) {
        if s.ok {
            pipeline::verify(
                t.storage.as_ref(),
                &outcome.manifest,
                Some(job.source.as_ref()),
                pipeline::no_progress(),
            )
            .await?;
        }
    }
    if !outcome.all_ok() {
        let failed: Vec<String> = outcome
            .storages
            .iter()
            .filter(|s| !s.ok)
            .map(|s| format!("{}: {}", s.storage, s.error.as_deref().unwrap_or("failed")))
            .collect();
        return Err(Error::storage(format!(
            "backup of volume {} failed on {}",
            volume.name,
            failed.join("; ")
        )));
    }
    Ok((job.name, outcome.manifest))
}

/// The command that backs up the unprotected volumes: `drkit backup JOB...` when jobs name
/// them all, else the guard with `--backup-first` on the `original` command.
pub fn backup_hint(unprotected: &[&Protection], original: &[String]) -> String {
    let mut jobs: Vec<&str> = Vec::new();
    for p in unprotected {
        match p.jobs.first() {
            Some(j) => jobs.push(j),
            None => {
                return format!("drkit guard --backup-first -- {}", shell_words(original));
            }
        }
    }
    jobs.sort();
    jobs.dedup();
    format!("drkit backup {}", jobs.join(" "))
}
