//! drkit-app: drkit for programs that embed it.
//!
//! [`Drkit`] is the one handle: open it with a config file or a built
//! [`Config`], then back up, list, verify, restore, prune, ask for health, drill, run what
//! the daemon runs on a tick, and check a docker command line with the [`guard`]. Every call
//! returns a typed report and prints nothing; the rules live in [`drkit_core::ops`], the
//! systems in [`drkit_drivers`].
//!
//! ```no_run
//! # async fn demo() -> drkit_core::Result<()> {
//! use drkit_app::Drkit;
//! use drkit_core::pipeline::no_progress;
//! let drkit = Drkit::open(std::path::Path::new("drkit.toml"), &[])?;
//! let outcome = drkit.backup("app-db", no_progress()).await?;
//! println!("backup {} written", outcome.manifest.id);
//! for row in drkit.status(None, chrono::Utc::now()).await? {
//!     println!("{} on {}: {:?} ({})", row.job, row.storage, row.state, row.detail);
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod daemon;
pub mod guard;
pub mod init;
pub mod monitor;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drkit_core::catalog::Selector;
use drkit_core::config::parse_env_file;
use drkit_core::metrics::{JobLimits, Tally, NOTIFY_FAILURES};
use drkit_core::notify::Notifier;
use drkit_core::ops::daemon::Task;
use drkit_core::ops::drill::DrillRun;
use drkit_core::ops::events::{self, Announcement};
use drkit_core::ops::health::{self, JobHealth};
use drkit_core::ops::prune::StoragePrune;
use drkit_core::ops::restore::RestoreRun;
use drkit_core::ops::verify::{Verified, Which};
use drkit_core::ops::{self, StorageListing};
use drkit_core::pipeline::{self, BackupOutcome, DrillOptions, Progress, Target};
use drkit_core::signing::{Signer, Trust};
use drkit_core::{
    Config, Error, Exit, JobConfig, Manifest, RestoreOptions, Result, Source, Storage,
};

/// A loaded, validated config and the way to every use case of drkit.
#[derive(Debug, Clone)]
pub struct Drkit {
    config: Config,
    path: Option<PathBuf>,
    /// Turns `true` when long operations that can clean up (drills) must stop.
    cancel: Option<tokio::sync::watch::Receiver<bool>>,
    /// The `[notify.NAME]` notifiers, by name.
    notifiers: Notifiers,
    /// Counters and the last look at the storages (shared by clones).
    monitor: Arc<monitor::Monitor>,
    /// An identity file that opens encrypted archives, over each job's `identity_file`.
    identity: Option<PathBuf>,
}

/// The notifiers of a config, by name.
#[derive(Clone, Default)]
struct Notifiers(std::collections::BTreeMap<String, Arc<dyn Notifier>>);

impl std::fmt::Debug for Notifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// What to restore, from where, and how.
#[derive(Debug, Clone, Default)]
pub struct RestoreRequest {
    /// Which backup: the newest good one, one by id, or the newest good one as of a time.
    pub selector: Selector,
    /// Read from this storage only (default: the first of the job's storages that has it,
    /// falling back to the next copy when one fails its checksums).
    pub storage: Option<String>,
    /// Destination, `--force`, parallel workers.
    pub options: RestoreOptions,
    /// Check everything and say what would happen; change nothing.
    pub dry_run: bool,
}

/// What one scheduled task of the daemon did.
#[derive(Debug)]
pub struct TaskRun {
    /// The task.
    pub task: Task,
    /// The backup, for a backup task.
    pub backup: Option<Result<BackupOutcome>>,
    /// The prune that follows a successful backup when the job has a `keep` policy.
    pub prune: Option<Result<Vec<StoragePrune>>>,
    /// The drills, for a drill task.
    pub drill: Option<Result<Vec<DrillRun>>>,
}

impl TaskRun {
    /// How the task ended.
    pub fn exit(&self) -> Exit {
        let mut exit = Exit::Ok;
        match &self.backup {
            Some(Ok(o)) => exit.note(o.exit()),
            Some(Err(e)) => exit.note(e),
            None => {}
        }
        match &self.prune {
            Some(Ok(p)) => p.iter().for_each(|p| exit.note(p.exit())),
            Some(Err(e)) => exit.note(e),
            None => {}
        }
        match &self.drill {
            Some(Ok(runs)) => runs.iter().for_each(|r| exit.note(r.exit())),
            Some(Err(e)) => exit.note(e),
            None => {}
        }
        exit
    }
}

/// One storage of `config` by name (the one place a storage is opened by its name).
fn open_storage(config: &Config, name: &str) -> Result<Arc<dyn Storage>> {
    let spec = config
        .storage
        .get(name)
        .ok_or_else(|| Error::config(format!("storage {name:?} is not defined")))?;
    drkit_drivers::open_storage(name, spec)
}

/// The storages `names` of `config`, as pipeline targets, in that order.
pub(crate) fn open_targets(config: &Config, names: &[String]) -> Result<Vec<Target>> {
    names
        .iter()
        .map(|name| {
            Ok(Target {
                name: name.clone(),
                storage: open_storage(config, name)?,
            })
        })
        .collect()
}

impl Drkit {
    /// The config file to use when none is given: `$DRKIT_CONFIG`, else `./drkit.toml`.
    pub fn default_path() -> PathBuf {
        match std::env::var_os("DRKIT_CONFIG") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from("drkit.toml"),
        }
    }

    /// Read, interpolate and validate a config file. `env_files` hold `KEY=VALUE` lines that
    /// `${VAR}` sees before the process environment (later files win).
    pub fn open(path: &Path, env_files: &[PathBuf]) -> Result<Drkit> {
        let mut vars: HashMap<String, String> = HashMap::new();
        for file in env_files {
            let text = std::fs::read_to_string(file).map_err(|e| {
                Error::config(format!("cannot read env file {}: {e}", file.display()))
            })?;
            vars.extend(parse_env_file(&text, &file.display().to_string())?);
        }
        let lookup = |name: &str| match name.strip_prefix("file:") {
            Some(path) => read_secret(Path::new(path)),
            None => vars.get(name).cloned().or_else(|| std::env::var(name).ok()),
        };
        let config = Config::load(path, &lookup)?;
        let mut drkit = Drkit::from_config(config)?;
        drkit.path = Some(path.to_path_buf());
        Ok(drkit)
    }

    /// Use a config built in code (its drivers' settings are checked now; nothing is
    /// contacted).
    pub fn from_config(config: Config) -> Result<Drkit> {
        drkit_drivers::validate(&config)?;
        // The manifest cache of this process (docs/config.md, `[cache]`).
        drkit_core::catalog::cache::install(
            config
                .cache
                .resolve(&|name| std::env::var(name).ok())
                .map(|s| drkit_core::catalog::cache::ManifestCache::new(&s)),
        );
        let mut notifiers = Notifiers::default();
        for (name, n) in &config.notify {
            notifiers
                .0
                .insert(name.clone(), drkit_drivers::open_notifier(name, n)?);
        }
        let app = Drkit {
            config,
            path: None,
            cancel: None,
            notifiers,
            monitor: Arc::default(),
            identity: None,
        };
        app.monitor.set_limits(app.job_limits());
        Ok(app)
    }

    /// Tell the notifiers of `job` (every notifier when `None`) what `a` announces, and count
    /// it. A notifier that fails is a warning and a count, never an error.
    pub async fn announce(&self, job: Option<&str>, a: Announcement) {
        self.monitor.count(&a.tally);
        let chosen: Vec<Arc<dyn Notifier>> = match job.and_then(|j| self.config.job.get(j)) {
            Some(j) => j
                .notifiers(&self.config.notify)
                .into_iter()
                .filter_map(|n| self.notifiers.0.get(n).cloned())
                .collect(),
            None => self.notifiers.0.values().cloned().collect(),
        };
        if chosen.is_empty() || a.signals.is_empty() {
            return;
        }
        let failed = drkit_core::notify::deliver(&chosen, &a.signals).await;
        let mut tally = Tally::default();
        for f in failed {
            tracing::warn!(
                event = "notify.failed",
                notifier = f.notifier.as_str(),
                "notifier {} did not take the event: {}",
                f.notifier,
                f.why
            );
            tally.add(NOTIFY_FAILURES, &[&f.notifier], 1.0);
        }
        self.monitor.count(&tally);
    }

    /// The counters and the last look at the storages.
    pub fn monitor(&self) -> Arc<monitor::Monitor> {
        self.monitor.clone()
    }

    /// What the metrics need of each job (its freshness limit, its drill's goal and age).
    pub fn job_limits(&self) -> Vec<JobLimits> {
        self.config
            .job
            .iter()
            .map(|(name, j)| JobLimits {
                job: name.clone(),
                max_age: j
                    .max_age
                    .as_ref()
                    .map(|s| s.duration())
                    .unwrap_or(health::DEFAULT_MAX_AGE),
                rto_goal: j
                    .drill
                    .as_ref()
                    .and_then(|d| d.rto.as_ref())
                    .map(|s| s.duration()),
                drill_max_age: j
                    .drill
                    .as_ref()
                    .and_then(|d| d.max_age.as_ref())
                    .map(|s| s.duration()),
            })
            .collect()
    }

    /// Tell the notifiers what a `status` found wrong (missing, stale, suspect, drill overdue
    /// or failed, storage unreadable).
    pub async fn report_health(&self, rows: &[JobHealth]) {
        let mut a = events::health(rows, Utc::now());
        a.tally = Tally::default(); // `status` counted its reads already
        for r in rows {
            let one = Announcement {
                signals: a
                    .signals
                    .iter()
                    .filter(|s| s.job() == Some(r.job.as_str()))
                    .cloned()
                    .collect(),
                tally: Tally::default(),
            };
            a.signals.retain(|s| s.job() != Some(r.job.as_str()));
            self.announce(Some(&r.job), one).await;
        }
    }

    /// Tell every notifier that the guard refused a command (`message`: what and why).
    pub async fn report_refusal(&self, message: &str) {
        self.announce(None, events::refused(message, Utc::now()))
            .await;
    }

    /// Look at every job's storages again (as `status`), and tell the notifiers about rows
    /// that turned unhealthy since the previous look: what the daemon runs every minute.
    pub async fn look_again(&self) -> Result<()> {
        let before = self.monitor.last_look();
        let now = Utc::now();
        let rows = self.status(None, now).await?;
        let changed = events::health_changes(&before, &rows, now);
        for (job, _) in self.jobs(&[])? {
            let mine = Announcement {
                signals: changed
                    .signals
                    .iter()
                    .filter(|s| s.job() == Some(job.as_str()))
                    .cloned()
                    .collect(),
                tally: Tally::default(),
            };
            self.announce(Some(&job), mine).await;
        }
        Ok(())
    }

    /// Write the metrics of every job to `path` for node_exporter's textfile collector:
    /// atomically (a temp file beside it, then rename), counters continued from the file
    /// already there.
    pub async fn write_metrics_file(&self, path: &Path) -> Result<()> {
        let rows = match self.monitor.fresh_look() {
            Some(rows) => rows,
            None => self.status(None, Utc::now()).await?,
        };
        let mut tally = match read_bounded(path, 4 << 20) {
            Ok(text) => Tally::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Tally::default(),
            // Not ours (too large, not text): replaced, its counters start again.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Other | std::io::ErrorKind::InvalidData
                ) =>
            {
                tracing::warn!(
                    "--metrics-file {}: the file there is not a drkit metrics file ({e}): it is replaced and its counters start again",
                    path.display()
                );
                Tally::default()
            }
            Err(e) => {
                return Err(Error::config(format!(
                    "--metrics-file {}: cannot read the previous file: {e}",
                    path.display()
                )))
            }
        };
        // Series of jobs, storages and notifiers no longer in the config end with it.
        let known = |name: &str, labels: &[String]| match labels {
            [job, storage] => self
                .config
                .job
                .get(job)
                .is_some_and(|j| j.storage.contains(storage)),
            [notifier] => name == NOTIFY_FAILURES && self.config.notify.contains_key(notifier),
            _ => false,
        };
        tally
            .counters
            .retain(|(name, labels), _| known(name, labels));
        tally
            .verified
            .retain(|(job, storage), _| known("", &[job.clone(), storage.clone()]));
        tally.merge(&self.monitor.tally());
        let text = drkit_core::metrics::exposition(&self.job_limits(), &rows, &tally);
        write_atomically(path, text.as_bytes()).map_err(|e| {
            Error::config(format!(
                "--metrics-file {}: cannot write it: {e}",
                path.display()
            ))
        })
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The file the config came from, if it came from one.
    pub fn config_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The jobs named, or all jobs (in name order) when none is.
    pub fn jobs(&self, names: &[String]) -> Result<Vec<(String, &JobConfig)>> {
        if names.is_empty() {
            if self.config.job.is_empty() {
                return Err(Error::config(format!(
                    "{} defines no [job.NAME]: add one (see examples/)",
                    self.path
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "the config".into())
                )));
            }
            return Ok(self
                .config
                .job
                .iter()
                .map(|(n, j)| (n.clone(), j))
                .collect());
        }
        names
            .iter()
            .map(|n| Ok((n.clone(), self.config.job(n)?)))
            .collect()
    }

    /// The source of a job (nothing is contacted yet).
    pub fn source(&self, job: &str) -> Result<Box<dyn Source>> {
        drkit_drivers::open_source(job, &self.config.job(job)?.source)
    }

    /// The storages of a job, in the job's order.
    pub fn targets(&self, job: &str) -> Result<Vec<Target>> {
        open_targets(&self.config, &self.config.job(job)?.storage)
    }

    /// One storage by name.
    pub fn storage(&self, name: &str) -> Result<Arc<dyn Storage>> {
        open_storage(&self.config, name)
    }

    /// What the job's readers trust (its signing public key, or nothing).
    pub fn trust(&self, job: &str) -> Result<Trust> {
        self.config.job(job)?.trust(job)
    }

    /// The job's signer, when this host has its key file.
    pub fn signer(&self, job: &str) -> Result<Option<Arc<Signer>>> {
        Ok(self.config.job(job)?.signer(job)?.map(Arc::new))
    }

    /// Back up `job` to each of its storages. A storage that fails is in the outcome (the
    /// others still commit); an error means no storage has the backup.
    /// The job's notifiers hear the run's start and end and what it found.
    pub async fn backup(&self, job: &str, progress: Progress) -> Result<BackupOutcome> {
        let storages = self.config.job(job)?.storage.clone();
        let start = Announcement {
            signals: vec![events::backup_started(job)],
            tally: Tally::default(),
        };
        self.announce(Some(job), start).await;
        let result = async {
            let source = self.source(job)?;
            let targets = self.targets(job)?;
            let opts = self.config.job(job)?.backup_options(job)?;
            pipeline::backup(job, source.as_ref(), &targets, &opts, progress)
                .await
                .map_err(|e| e.context(job))
        }
        .await;
        self.monitor.changed();
        self.announce(
            Some(job),
            events::backup(job, &storages, &result, Utc::now()),
        )
        .await;
        result
    }

    /// The backups of `job` on each of its storages (valid, suspect, accepted and broken).
    pub async fn list(&self, job: &str) -> Result<Vec<StorageListing>> {
        Ok(ops::list_job(job, &self.targets(job)?, &self.trust(job)?).await)
    }

    /// Re-read `which` backups of `job` and check checksums and structure; with `deep`, also
    /// walk each archive's content and compare its counts with the manifest.
    pub async fn verify(
        &self,
        job: &str,
        which: &Which,
        deep: bool,
        progress: &(dyn Fn(&Manifest) -> Progress + Send + Sync),
    ) -> Result<Vec<Verified>> {
        let source = self.source(job)?;
        let targets = self.targets(job)?;
        let trust = self.trust(job)?;
        let keys = self.keys(job)?;
        let items = ops::verify::verify(
            job,
            &targets,
            &trust,
            which,
            Some(source.as_ref()),
            deep,
            keys.as_deref(),
            progress,
        )
        .await;
        self.announce(Some(job), events::verify(job, &items, Utc::now()))
            .await;
        Ok(items)
    }

    /// Choose a backup of `job` across its storages and restore it.
    pub async fn restore(
        &self,
        job: &str,
        request: &RestoreRequest,
        progress: Progress,
    ) -> Result<RestoreRun> {
        let source = self.source(job)?;
        let mut targets = self.targets(job)?;
        if let Some(name) = &request.storage {
            targets.retain(|t| &t.name == name);
            if targets.is_empty() {
                return Err(Error::config(format!(
                    "job {job} does not use storage {name:?}"
                )));
            }
        }
        let mut options = request.options.clone();
        if options.keys.is_none() {
            options.keys = self.keys(job)?;
        }
        ops::restore::restore(
            job,
            &targets,
            &self.trust(job)?,
            &request.selector,
            source.as_ref(),
            &options,
            request.dry_run,
            progress,
        )
        .await
    }

    /// Apply `job`'s `keep` policy on each of its storages; `None` when it has no policy.
    pub async fn prune(
        &self,
        job: &str,
        dry_run: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<StoragePrune>>> {
        let Some(policy) = &self.config.job(job)?.keep else {
            return Ok(None);
        };
        let targets = self.targets(job)?;
        let trust = self.trust(job)?;
        let prunes = ops::prune::prune_job(job, &targets, policy, &trust, now, dry_run).await;
        if !dry_run {
            self.monitor.changed();
            self.announce(Some(job), events::prune(job, &prunes, Utc::now()))
                .await;
        }
        Ok(Some(prunes))
    }

    /// The health of every job on every storage. `max_age` overrides each job's `max_age`
    /// (default [`health::DEFAULT_MAX_AGE`]).
    pub async fn status(
        &self,
        max_age: Option<Duration>,
        now: DateTime<Utc>,
    ) -> Result<Vec<JobHealth>> {
        let mut out = Vec::new();
        for (name, job) in self.jobs(&[])? {
            let limit = max_age
                .or(job.max_age.as_ref().map(|s| s.duration()))
                .unwrap_or(health::DEFAULT_MAX_AGE);
            let targets = self.targets(&name)?;
            let drill_limit = job.drill.as_ref().and_then(|d| d.limit(now));
            out.extend(
                health::health(
                    &name,
                    &targets,
                    &self.trust(&name)?,
                    now,
                    limit,
                    drill_limit,
                )
                .await,
            );
        }
        self.monitor.count(&events::health(&out, now).tally);
        if max_age.is_none() {
            self.monitor.looked(out.clone(), now);
        }
        Ok(out)
    }

    /// The fleet view: every job found in each storage of the config, whether or not this
    /// config names it (the hosts that share a bucket), with its health. A job this config
    /// names is judged by its own limits and signing key; another by `max_age` (default
    /// [`health::DEFAULT_MAX_AGE`]) and read blindly (its key is not known here). Job names
    /// found in a storage are used only when they are valid names.
    pub async fn fleet(
        &self,
        max_age: Option<Duration>,
        now: DateTime<Utc>,
    ) -> Result<Vec<JobHealth>> {
        let mut out = Vec::new();
        for name in self.config.storage.keys() {
            let storage = self.storage(name)?;
            let objects = match storage.list("").await {
                Ok(o) => o,
                Err(e) => {
                    out.push(JobHealth::unreadable("*", name, &e));
                    continue;
                }
            };
            let targets = [Target {
                name: name.clone(),
                storage,
            }];
            for job in drkit_core::layout::jobs_in(&objects)
                .into_iter()
                .filter(|j| drkit_core::config::valid_name(j))
            {
                let known = self.config.job.get(&job);
                let limit = max_age
                    .or(known.and_then(|j| j.max_age.as_ref().map(|s| s.duration())))
                    .unwrap_or(health::DEFAULT_MAX_AGE);
                let drill_limit = known.and_then(|j| j.drill.as_ref().and_then(|d| d.limit(now)));
                let trust = match known {
                    Some(j) => j.trust(&job)?,
                    None => Trust::blind(),
                };
                let mut rows =
                    health::health(&job, &targets, &trust, now, limit, drill_limit).await;
                if known.is_none() {
                    for r in &mut rows {
                        r.detail
                            .push_str("; not in this config (read without its signing key)");
                    }
                }
                out.extend(rows);
            }
        }
        Ok(out)
    }

    /// Mark suspect backup `id` of `job` as good on each storage that holds it (an
    /// `accepted.json` beside it, signed when the job signs; the manifest is never rewritten).
    pub async fn accept(
        &self,
        job: &str,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<ops::accept::AcceptOutcome>> {
        let signer = self.signer(job)?;
        ops::accept::accept(
            job,
            id,
            &self.targets(job)?,
            &self.trust(job)?,
            signer.as_deref(),
            &ops::accept::current_user(),
            reason,
            now,
        )
        .await
    }

    /// Drill `job` on each of its storages, as its `[job.X.drill]` table says (where, which
    /// checks, the RTO). `progress` hears the raw bytes restored of each drill in turn.
    pub async fn drill(&self, job: &str, progress: Progress) -> Result<Vec<DrillRun>> {
        let source = self.source(job)?;
        let targets = self.targets(job)?;
        let signer = self.signer(job)?;
        let settings = self.config.job(job)?.drill.clone().unwrap_or_default();
        let opts = DrillOptions {
            place: settings.place(),
            checks: settings.checks,
            rto: settings.rto.map(|r| r.duration()),
            signer: signer.as_deref(),
            progress,
            cancel: self.cancel.clone(),
            keys: self.keys(job)?,
        };
        let runs =
            ops::drill::drill(job, &targets, &self.trust(job)?, source.as_ref(), &opts).await;
        self.monitor.changed();
        self.announce(Some(job), events::drill(job, &runs, Utc::now()))
            .await;
        runs
    }

    /// Remove the scratch places of `job`'s drills that a killed drill left more than a day
    /// before `now` (at the job's drill place); one line per place removed. `doctor` runs it;
    /// every drill runs it first too.
    pub async fn sweep_drill_scratch(&self, job: &str, now: DateTime<Utc>) -> Result<Vec<String>> {
        let place = self
            .config
            .job(job)?
            .drill
            .as_ref()
            .map(|d| d.place())
            .unwrap_or_default();
        self.source(job)?.drill_sweep(&place, now).await
    }

    /// Give `job`'s encrypted backups (only `id` when given) to the job's current recipients,
    /// opening them with this host's identity (`set_identity`, else `identity_file`).
    pub async fn rekey(
        &self,
        job: &str,
        id: Option<&str>,
        dry_run: bool,
    ) -> Result<Vec<ops::rekey::RekeyItem>> {
        let cfg = self.config.job(job)?;
        let to = cfg.keys(job, None)?.ok_or_else(|| {
            Error::config(format!(
                "job {job} has no `encryption` table: set its recipients first"
            ))
        })?;
        let from = self.keys(job)?.expect("the job encrypts");
        let signer = self.signer(job)?;
        let items = ops::rekey::rekey(
            job,
            &self.targets(job)?,
            &self.trust(job)?,
            &from,
            &to,
            signer.as_deref(),
            id,
            dry_run,
        )
        .await?;
        self.monitor.changed();
        Ok(items)
    }

    /// The same handle over the config file read again (SIGHUP in the daemon): what the
    /// process set (cancel, identity) and its counters and last look carry over. An invalid
    /// file is an error and this handle stays as it was.
    pub fn reloaded(&self, env_files: &[PathBuf]) -> Result<Drkit> {
        let path = self.path.as_deref().ok_or_else(|| {
            Error::config("this config was not read from a file: nothing to reload")
        })?;
        let mut new = Drkit::open(path, env_files)?;
        new.cancel = self.cancel.clone();
        new.identity = self.identity.clone();
        new.monitor = self.monitor.clone();
        Ok(new)
    }

    /// Open encrypted archives with the identity in `path` (`--identity FILE`), instead of
    /// each job's `encryption.identity_file`.
    pub fn set_identity(&mut self, path: PathBuf) {
        self.identity = Some(path);
    }

    /// The keys of `job`: its recipients and, when this host has it, its identity (`None`:
    /// the job does not encrypt and no `--identity` was given).
    pub fn keys(&self, job: &str) -> Result<Option<Arc<drkit_core::crypt::Keys>>> {
        self.config.job(job)?.keys(job, self.identity.as_deref())
    }

    /// Let drills stop (removing their scratch copies) when `cancel` turns `true`: the CLI
    /// sends it on SIGINT and SIGTERM.
    pub fn set_cancel(&mut self, cancel: tokio::sync::watch::Receiver<bool>) {
        self.cancel = Some(cancel);
    }

    /// The guard's decision on a docker command line (`argv` as the shell would run it):
    /// which volumes it destroys, and whether each has a verified backup newer than
    /// `opts.max_age`. A command that destroys no volume is allowed with no volumes.
    pub async fn guard_check(
        &self,
        argv: &[String],
        world: &guard::Context<'_>,
        opts: &guard::Options,
        now: DateTime<Utc>,
    ) -> Result<guard::Verdict> {
        guard::check(&self.config, argv, world, opts, now).await
    }

    /// Back up the volumes a verdict found unprotected (their jobs, else ad-hoc jobs on the
    /// verdict's storages), then decide again. `on_step` hears each backup start and end.
    pub async fn guard_backup_first(
        &self,
        verdict: guard::Verdict,
        on_step: &mut (dyn FnMut(guard::BackupStep<'_>) + Send),
    ) -> Result<guard::Verdict> {
        guard::backup_first(&self.config, verdict, on_step).await
    }

    /// When each scheduled task last ran, for the daemon's catch-up at start: a backup's is
    /// the oldest of its storages' newest backups (`None` when one has none or cannot be
    /// read), a drill's the newest drill report.
    pub async fn last_runs(&self, now: DateTime<Utc>) -> HashMap<Task, DateTime<Utc>> {
        let rows = match self.status(None, now).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("cannot look at the storages for the catch-up: {e}");
                return HashMap::new();
            }
        };
        let mut out = HashMap::new();
        for (job, _) in self.config.job.iter() {
            let mine: Vec<&JobHealth> = rows.iter().filter(|r| &r.job == job).collect();
            let newest: Option<Vec<DateTime<Utc>>> = mine
                .iter()
                .map(|r| r.newest.as_ref().map(|n| n.started_at))
                .collect();
            if let Some(oldest) = newest.and_then(|v| v.into_iter().min()) {
                out.insert(Task::Backup(job.clone()), oldest);
            }
            if let Some(drilled) = mine
                .iter()
                .filter_map(|r| r.drill.as_ref().map(|d| d.started_at))
                .max()
            {
                out.insert(Task::Drill(job.clone()), drilled);
            }
        }
        out
    }

    /// A future that completes when this process was told to stop ([`Drkit::set_cancel`]);
    /// never, when it was not given a cancel signal.
    pub async fn stopped(&self) {
        match self.cancel.clone() {
            // A sender gone without saying stop never will.
            Some(mut c) => {
                if c.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Run one scheduled task as the daemon does on a tick: a backup (then a prune when the
    /// job has a `keep` policy and the backup succeeded everywhere), or a drill.
    pub async fn run_task(&self, task: &Task, progress: Progress) -> TaskRun {
        let mut run = TaskRun {
            task: task.clone(),
            backup: None,
            prune: None,
            drill: None,
        };
        match task {
            Task::Backup(job) => {
                let backup = self.backup(job, progress).await;
                if matches!(&backup, Ok(o) if o.exit() == Exit::Ok) {
                    run.prune = self.prune(job, false, Utc::now()).await.transpose();
                }
                run.backup = Some(backup);
            }
            Task::Drill(job) => run.drill = Some(self.drill(job, progress).await),
        }
        run
    }
}

/// The value of `${file:PATH}`: the file's text without its final newline, when it is
/// readable, at most 64 KiB, and UTF-8.
fn read_secret(path: &Path) -> Option<String> {
    let text = read_bounded(path, 64 * 1024).ok()?;
    let trimmed = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    Some(trimmed.to_string())
}

/// Read a text file of at most `limit` bytes (a file a wrong path names must not cost
/// memory); a longer one is an error.
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "it is larger than {limit} bytes"
        )));
    }
    Ok(text)
}

/// Write `bytes` to `path` through a temp file in the same folder and a rename, so that a
/// reader (node_exporter) sees the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".drkit-metrics.")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // node_exporter may run as another user: the file is world-readable, as metrics are.
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The examples of docs/library.md, compiled as doc tests so that they keep up with the API.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/library.md")]
pub struct LibraryDoc;
