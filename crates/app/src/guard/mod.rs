//! The guard: refuse a docker command line that destroys volumes (`compose down -v`,
//! `volume rm`, `volume prune`, `system prune --volumes`, `compose rm -v`, `rm -v`, also
//! behind `sudo`, `env`, `nice`, `timeout` ...) unless each volume it destroys has a
//! complete backup, newer than an allowed age, that verifies now.
//!
//! Three steps, each usable alone:
//! 1. [`analyse`] reads the argument vector, purely: what would be destroyed, in terms the
//!    engine can resolve ([`Analysis`]); `None` for a command that destroys no volume.
//! 2. [`survey`] asks the engine which volumes exist among those ([`Survey`]), and warns of
//!    lookalike volumes (a compose project name that changed).
//! 3. [`assess`] finds each volume's newest good backup, re-verifies it, and decides
//!    ([`Verdict`]). [`backup_first`] backs up the volumes that lack one, then decides again.
//!
//! [`check`] does 1 to 3 in one call, for a program that embeds drkit:
//!
//! ```no_run
//! # async fn demo(config: &drkit_core::Config) -> drkit_core::Result<()> {
//! use drkit_app::guard::{self, Context, Options};
//! let argv: Vec<String> = ["docker", "compose", "down", "-v"].map(String::from).into();
//! let cwd = std::env::current_dir().expect("a working directory");
//! let env = |k: &str| std::env::var(k).ok();
//! let read = |p: &std::path::Path| std::fs::read_to_string(p).ok();
//! let ctx = Context { cwd: &cwd, env: &env, read: &read };
//! let opts = Options::new(std::time::Duration::from_secs(3600));
//! let verdict = guard::check(config, &argv, &ctx, &opts, chrono::Utc::now()).await?;
//! for p in &verdict.volumes {
//!     println!("{} {} {}", p.volume.info.name, p.age_words(), p.protected());
//! }
//! if verdict.allowed() { /* run the command */ }
//! # Ok(()) }
//! ```

mod argv;
mod compose;
pub mod policy;
mod shell;
mod wrappers;

use std::time::Duration;

use chrono::{DateTime, Utc};
use drkit_core::{Config, Manifest, Result};
use drkit_drivers::docker::{lookalike, Engine};

pub use argv::{analyse, Analysis, Context, Doomed};
pub use compose::normalize_project;
pub use policy::{DoomedVolume, Newest, Problem, Protection};
pub use shell::shell_function;

/// How the guard decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The oldest each volume's newest backup may be (the CLI's `--max-age`).
    pub max_age: Duration,
    /// The storages ad-hoc backups (of volumes that no job names) are looked for on and
    /// written to (the CLI's `--storage`); empty: every storage of the config.
    pub storages: Vec<String>,
}

impl Options {
    /// Backups newer than `max_age`; ad-hoc backups on every storage of the config.
    pub fn new(max_age: Duration) -> Options {
        Options {
            max_age,
            storages: Vec::new(),
        }
    }
}

/// What a destructive command would destroy on the engine.
#[derive(Debug)]
pub struct Survey {
    /// What the command destroys, read from its argv.
    pub analysis: Analysis,
    /// The volumes among those that exist on the engine, each with its size.
    pub volumes: Vec<DoomedVolume>,
    /// Lookalike volumes and split compose services: the symptoms of a changed compose
    /// project name. A failed lookalike check is a warning too.
    pub warnings: Vec<String>,
}

/// The guard's decision on one command line.
#[derive(Debug)]
pub struct Verdict {
    /// What the command destroys; `None`: no volume (it may run at once).
    pub analysis: Option<Analysis>,
    /// Warnings from the [`Survey`].
    pub warnings: Vec<String>,
    /// Each volume the command destroys that exists on the engine, with its protection.
    pub volumes: Vec<Protection>,
    /// The storages ad-hoc backups were looked for on (and [`backup_first`] writes to).
    pub adhoc_storages: Vec<String>,
    /// The age limit applied.
    pub max_age: Duration,
    /// When the backups were checked: ages count from here.
    pub checked_at: DateTime<Utc>,
}

impl Verdict {
    /// Whether the command may run: every volume it destroys is protected (true when it
    /// destroys none).
    pub fn allowed(&self) -> bool {
        self.volumes.iter().all(Protection::protected)
    }

    /// The volumes that lack a fresh, verified backup.
    pub fn unprotected(&self) -> Vec<&Protection> {
        self.volumes.iter().filter(|p| !p.protected()).collect()
    }

    /// The drkit command that backs up the unprotected volumes of `argv` (see
    /// [`policy::backup_hint`]); `None` when the command is allowed.
    pub fn backup_hint(&self, argv: &[String]) -> Option<String> {
        let unprotected = self.unprotected();
        (!unprotected.is_empty()).then(|| policy::backup_hint(&unprotected, argv))
    }
}

/// Whether `argv` may run: [`analyse`], [`survey`], then [`assess`] at `now`. A command that
/// destroys no volume is allowed without asking the engine or reading a storage. An error
/// when the guard cannot tell what the command destroys is [`drkit_core::ErrorKind::Refused`].
pub async fn check(
    config: &Config,
    argv: &[String],
    ctx: &Context<'_>,
    opts: &Options,
    now: DateTime<Utc>,
) -> Result<Verdict> {
    match analyse(argv, ctx)? {
        None => Ok(Verdict {
            analysis: None,
            warnings: Vec::new(),
            volumes: Vec::new(),
            adhoc_storages: Vec::new(),
            max_age: opts.max_age,
            checked_at: now,
        }),
        Some(analysis) => assess(config, survey(analysis).await?, opts, now).await,
    }
}

/// Ask the engine the command talks to (its `-H`, else `DOCKER_HOST`) which volumes the
/// analysed command destroys, and check for lookalike volumes.
pub async fn survey(analysis: Analysis) -> Result<Survey> {
    let engine = Engine::connect(analysis.docker_host.as_deref()).await?;
    let volumes = policy::resolve(&engine, &analysis.doomed).await?;
    let focus = match &analysis.doomed {
        Doomed::ProjectVolumes { project } => Some(project.as_str()),
        _ => None,
    };
    let warnings = match lookalike::check(&engine, focus).await {
        Ok(w) => w,
        Err(e) => vec![format!("could not check for lookalike volumes: {e}")],
    };
    Ok(Survey {
        analysis,
        volumes,
        warnings,
    })
}

/// Decide on a surveyed command at `now`: each volume's newest good backup on the storages
/// of the jobs that name it (and of its ad-hoc job), re-verified now, must be newer than
/// `opts.max_age`. Reads the storages; the engine is not asked again.
pub async fn assess(
    config: &Config,
    survey: Survey,
    opts: &Options,
    now: DateTime<Utc>,
) -> Result<Verdict> {
    let (volumes, adhoc_storages) = if survey.volumes.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let adhoc = policy::adhoc_storages(config, &opts.storages)?;
        let checked =
            policy::protections(config, &survey.volumes, &adhoc, opts.max_age, now).await?;
        (checked, adhoc)
    };
    Ok(Verdict {
        analysis: Some(survey.analysis),
        warnings: survey.warnings,
        volumes,
        adhoc_storages,
        max_age: opts.max_age,
        checked_at: now,
    })
}

/// What [`backup_first`] is doing, for a caller that shows progress.
#[derive(Debug)]
pub enum BackupStep<'a> {
    /// The backup of this volume starts.
    Starting(&'a DoomedVolume),
    /// Its backup is written to every storage and verified.
    Done {
        /// The volume.
        volume: &'a DoomedVolume,
        /// The job it was backed up with (a configured one, or [`policy::adhoc_job`]).
        job: &'a str,
        /// The new backup.
        manifest: &'a Manifest,
    },
}

/// Back up each unprotected volume of `verdict` now ([`policy::backup_now`]: its first
/// configured job, else ad hoc onto [`Verdict::adhoc_storages`]), each verified, then decide
/// again at the current time. An allowed verdict is returned as it is. The first failed
/// backup ends the work with its error: the command must not run.
pub async fn backup_first(
    config: &Config,
    verdict: Verdict,
    on_step: &mut (dyn FnMut(BackupStep<'_>) + Send),
) -> Result<Verdict> {
    if verdict.allowed() {
        return Ok(verdict);
    }
    for p in verdict.unprotected() {
        let volume = &p.volume;
        on_step(BackupStep::Starting(volume));
        let (job, manifest) = policy::backup_now(config, &volume.info, &verdict.adhoc_storages)
            .await
            .map_err(|e| {
                e.context(format!(
                    "the backup of volume {} failed, so the command was not run",
                    volume.info.name
                ))
            })?;
        on_step(BackupStep::Done {
            volume,
            job: &job,
            manifest: &manifest,
        });
    }
    let doomed: Vec<DoomedVolume> = verdict.volumes.iter().map(|p| p.volume.clone()).collect();
    let now = Utc::now();
    let volumes = policy::protections(
        config,
        &doomed,
        &verdict.adhoc_storages,
        verdict.max_age,
        now,
    )
    .await?;
    Ok(Verdict {
        volumes,
        checked_at: now,
        ..verdict
    })
}

#[cfg(test)]
mod tests;
