//! The guard's engine half: which volumes a destructive command would destroy (asked of the
//! engine), and whether each has a complete, verified backup newer than the allowed age.
//!
//! "Verified" means: the newest complete backup of the volume is re-read from its storage
//! right now and its checksums, tar structure and every entry checked (`drkit verify`, which
//! applies the restore's own entry policy: a backup a restore would refuse does not count),
//! and it is not an empty backup of a volume that holds data. Checking at guard time, rather than trusting a
//! mark left by an earlier verify, also catches an archive damaged since.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drkit_core::guard::Doomed;
use drkit_core::pipeline::{self, BackupOptions, Target};
use drkit_core::{catalog, Config, Error, Manifest, Result, Source, Storage};

use super::containers;
use super::volumes::{self, VolumeInfo};
use super::{human_size, Engine};
use crate::source::docker_volume::DockerVolumeSource;

/// A volume the command would destroy.
#[derive(Debug, Clone)]
pub struct DoomedVolume {
    /// The volume.
    pub info: VolumeInfo,
    /// Its size in bytes (-1 unknown).
    pub size: i64,
}

/// Ask the engine which volumes `doomed` means.
pub async fn resolve(engine: &Engine, doomed: &Doomed) -> Result<Vec<DoomedVolume>> {
    let mut names: Vec<String> = Vec::new();
    match doomed {
        Doomed::ProjectVolumes { project } => {
            for v in volumes::list(
                engine,
                &[("label", format!("{}={project}", super::LABEL_PROJECT))],
            )
            .await?
            {
                names.push(v.name);
            }
            for c in volumes::containers(
                engine,
                &[("label", format!("{}={project}", super::LABEL_PROJECT))],
            )
            .await?
            {
                names.extend(c.volumes);
            }
            // down -v removes the named volumes of the project and the anonymous volumes
            // of its containers, not external volumes that other projects own.
            let mut kept = Vec::new();
            for n in names {
                if let Ok(v) = volumes::inspect(engine, &n).await {
                    if v.project() == Some(project.as_str()) || v.is_anonymous() {
                        kept.push(n);
                    }
                }
            }
            names = kept;
        }
        Doomed::ProjectAnonymous {
            project,
            services,
            running_too,
        } => {
            // The services named are a union: filtered here, not by the engine (whose label
            // filters are ANDed).
            let filter = [("label", format!("{}={project}", super::LABEL_PROJECT))];
            let ctrs = volumes::containers(engine, &filter).await?;
            for c in ctrs.into_iter().filter(|c| *running_too || !c.running) {
                if services.is_empty() || c.service.as_ref().is_some_and(|s| services.contains(s)) {
                    names.extend(c.volumes);
                }
            }
            let mut kept = Vec::new();
            for n in names {
                if volumes::inspect(engine, &n)
                    .await
                    .is_ok_and(|v| v.is_anonymous())
                {
                    kept.push(n);
                }
            }
            names = kept;
        }
        Doomed::Named(list) => names.extend(list.iter().cloned()),
        Doomed::Unused { all, filters } => {
            let mut f: Vec<(&str, String)> = vec![("dangling", "true".to_string())];
            for flt in filters {
                if let Some((k, v)) = flt.split_once('=') {
                    f.push((
                        if k == "label" || k == "label!" {
                            k
                        } else {
                            "label"
                        },
                        v.to_string(),
                    ));
                }
            }
            let only_anonymous = !all && engine.api_at_least(1, 42);
            for v in volumes::list(engine, &f).await? {
                if !only_anonymous
                    || v.labels.contains_key("com.docker.volume.anonymous")
                    || v.is_anonymous()
                {
                    names.push(v.name);
                }
            }
        }
        Doomed::ContainerAnonymous(ctrs) => {
            // Each as the engine resolves it for `docker rm`: full id, unique id prefix, name.
            for c in ctrs {
                if let Some(found) = containers::resolve(engine, c).await? {
                    names.extend(found.volumes);
                }
            }
            let mut kept = Vec::new();
            for n in names {
                if volumes::inspect(engine, &n)
                    .await
                    .is_ok_and(|v| v.is_anonymous())
                {
                    kept.push(n);
                }
            }
            names = kept;
        }
    }
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
                size: sizes.get(&n).copied().unwrap_or(-1),
                info,
            }),
            Err(e) if super::is_not_found(&e) => {} // the command will fail on it by itself
            Err(e) => return Err(e),
        }
    }
    Ok(out)
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
    /// The source.
    pub source: DockerVolumeSource,
    /// Storage names.
    pub storages: Vec<String>,
    /// Backup options.
    pub options: BackupOptions,
}

/// The jobs whose source is `volume` (by name or compose identity), then the ad-hoc job on
/// `adhoc_storages`.
pub fn jobs_for(
    config: &Config,
    volume: &VolumeInfo,
    adhoc_storages: &[String],
) -> Result<Vec<VolumeJob>> {
    let mut out = Vec::new();
    for (name, job) in &config.job {
        if job.source.kind != "docker-volume" {
            continue;
        }
        let src = DockerVolumeSource::from_spec(&job.source, &format!("job.{name}.source"))?;
        if src.names(volume) {
            out.push(VolumeJob {
                name: name.clone(),
                configured: true,
                source: src,
                storages: job.storage.clone(),
                options: BackupOptions {
                    compression: job.compression,
                    level: job.compression_level,
                    suspect: job.suspect.clone(),
                    signer: job.signer(name)?.map(std::sync::Arc::new),
                    trust: job.trust(name)?,
                },
            });
        }
    }
    out.push(VolumeJob {
        name: adhoc_job(&volume.name),
        configured: false,
        source: DockerVolumeSource::for_volume(&volume.name, true),
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
    /// The storage it was found on.
    pub storage: String,
    /// Its manifest.
    pub manifest: Manifest,
}

/// A doomed volume's protection.
#[derive(Debug, Clone)]
pub struct Protection {
    /// The volume.
    pub volume: DoomedVolume,
    /// The newest complete backup, if any.
    pub newest: Option<Newest>,
    /// Why the volume is not protected; `None` when it is.
    pub problem: Option<String>,
    /// The configured jobs that back it up.
    pub jobs: Vec<String>,
}

impl Protection {
    /// The age of the newest backup in words, or `never`.
    pub fn age(&self, now: DateTime<Utc>) -> String {
        match &self.newest {
            None => "never".into(),
            Some(n) => human_age((now - n.manifest.finished_at).num_seconds()),
        }
    }
}

/// `90s`, `15m`, `6h`, `3d`.
pub fn human_age(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        format!("{s}s ago")
    } else if s < 7200 {
        format!("{}m ago", s / 60)
    } else if s < 172_800 {
        format!("{}h ago", s / 3600)
    } else {
        format!("{}d ago", s / 86_400)
    }
}

fn open_storages(config: &Config, names: &[String]) -> Result<Vec<Target>> {
    names
        .iter()
        .map(|n| {
            let spec = config.storage.get(n).ok_or_else(|| {
                Error::config(format!("storage {n:?} is not defined in the config"))
            })?;
            Ok(Target {
                name: n.clone(),
                storage: crate::open_storage(n, spec)?,
            })
        })
        .collect()
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
pub async fn check(
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
            for target in open_storages(config, &job.storages)? {
                // Only a good backup protects (not suspect, or accepted), and with a signing
                // key configured only a signed one: a forged manifest is a broken entry.
                let listing =
                    catalog::scan(target.storage.as_ref(), &job.name, &job.options.trust).await?;
                if let Some(m) = listing.newest_good().map(|e| e.manifest.clone()) {
                    if newest
                        .as_ref()
                        .is_none_or(|(n, _, _)| m.finished_at > n.manifest.finished_at)
                    {
                        newest = Some((
                            Newest {
                                job: job.name.clone(),
                                storage: target.name.clone(),
                                manifest: m,
                            },
                            target.storage.clone(),
                            ji,
                        ));
                    }
                }
            }
        }
        let configured: Vec<String> = jobs
            .iter()
            .filter(|j| j.configured)
            .map(|j| j.name.clone())
            .collect();
        let problem = match &newest {
            None if d.size == 0 => None,
            None => Some("no backup".to_string()),
            Some((n, storage, ji)) => {
                let age = (now - n.manifest.finished_at).to_std().unwrap_or_default();
                if age > max_age {
                    Some(format!(
                        "newest backup {} is older than {}",
                        n.manifest.id,
                        fmt_duration(max_age)
                    ))
                } else if n.manifest.is_empty_source() && d.size > 0 {
                    Some(format!(
                        "newest backup {} is empty, but the volume holds {}",
                        n.manifest.id,
                        human_size(d.size)
                    ))
                } else {
                    let src: &dyn Source = &jobs[*ji].source;
                    match pipeline::verify(
                        storage.as_ref(),
                        &n.manifest,
                        Some(src),
                        pipeline::no_progress(),
                    )
                    .await
                    {
                        Ok(_) => None,
                        Err(e) => Some(format!(
                            "newest backup {} failed verification: {e}",
                            n.manifest.id
                        )),
                    }
                }
            }
        };
        out.push(Protection {
            volume: d.clone(),
            newest: newest.map(|(n, _, _)| n),
            problem,
            jobs: configured,
        });
    }
    Ok(out)
}

fn fmt_duration(d: Duration) -> String {
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
/// is verified before this returns.
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
    let targets = open_storages(config, &job.storages)?;
    let outcome = pipeline::backup(
        &job.name,
        &job.source,
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
                Some(&job.source),
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
/// them all, else the guard with `--backup-first`.
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

fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adhoc_names_and_ages() {
        assert_eq!(adhoc_job("myapp_pgdata"), "volume-myapp_pgdata");
        assert_eq!(adhoc_job(".x/y"), "volume-x-y");
        assert_eq!(human_age(30), "30s ago");
        assert_eq!(human_age(3600), "60m ago");
        assert_eq!(human_age(3 * 86_400), "3d ago");
        assert_eq!(fmt_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(
            shell_words(&[
                "docker".into(),
                "compose".into(),
                "-p".into(),
                "my app".into()
            ]),
            "docker compose -p 'my app'"
        );
    }
}
