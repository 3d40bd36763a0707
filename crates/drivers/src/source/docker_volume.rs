//! The Docker named-volume source: a tar of the volume's contents, read and written through
//! the Engine's archive endpoints of a helper container that is never started.
//!
//! ```toml
//! [job.uploads]
//! source = { type = "docker-volume", volume = "myapp_uploads", stop_containers = true }
//! # or by compose identity, resolved through the com.docker.compose.* labels:
//! source = { type = "docker-volume", project = "myapp", volume = "pgdata" }
//! ```
//!
//! A backup reads the volume's directory directly when the engine is local and it can
//! (`mode = "auto"`, the default; [`crate::docker::direct`]), else through the engine; the
//! manifest's `source.read` says which ran. A restore writes the same way where it can
//! ([`crate::docker::extract`]: the same entry policy, then `openat`/`O_NOFOLLOW` writes, a
//! rename of the staging copy into place, a direct read-back), as root only; its report's
//! notes say which way ran and why.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use drkit_core::drill::{Place, Query, Scratch, ScratchName};
use drkit_core::{
    from_io, BoxRead, DeepCheck, DriverSpec, Dump, DumpSummary, Error, ErrorKind, Manifest,
    RestoreOptions, RestoreReport, Result, Source, StreamCheck,
};
use futures::{FutureExt, Stream};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::docker::containers::Stopper;
use crate::docker::direct::{self, ReadMode, Route};
use crate::docker::extract;
use crate::docker::helper::{self, Helper, MOUNT};
use crate::docker::tar::{self, DigestAlgo, Finished, Mode, Scanner, TarError};
use crate::docker::volumes::{self, ContainerRef, VolumeInfo};
use crate::docker::{engine_error, Engine};

/// The `source` table of a docker-volume job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerVolumeConfig {
    /// The volume's name; with `project`, its key in the compose file.
    pub volume: String,
    /// The compose project the volume belongs to (found by compose's labels).
    #[serde(default)]
    pub project: Option<String>,
    /// Stop the containers using the volume during the backup (and restore), then start them.
    #[serde(default)]
    pub stop_containers: bool,
    /// How long a container may take to stop before it is killed (default `30s`).
    #[serde(default)]
    pub stop_timeout: Option<String>,
    /// The engine's address (default: `DOCKER_HOST`, else the local socket).
    #[serde(default)]
    pub host: Option<String>,
    /// How a backup reads the volume: `auto` (directly when it can, else through the
    /// engine), `direct` (directly, or a clear error), `engine` (the archive endpoint).
    #[serde(default)]
    pub mode: ReadMode,
}

/// A Docker named volume.
pub struct DockerVolumeSource {
    cfg: DockerVolumeConfig,
    stop_timeout: i32,
}

impl DockerVolumeSource {
    /// Build from a job's `source` table; `what` names it in errors.
    pub fn from_spec(spec: &DriverSpec, what: &str) -> Result<Self> {
        let cfg: DockerVolumeConfig = spec.parse(what)?;
        Self::new(cfg, what)
    }

    /// Build from settings.
    pub fn new(cfg: DockerVolumeConfig, what: &str) -> Result<Self> {
        if cfg.volume.trim().is_empty() {
            return Err(Error::config(format!("{what}.volume is empty: name the docker volume (or its compose key with `project`)")));
        }
        if cfg.project.as_deref().is_some_and(|p| p.trim().is_empty()) {
            return Err(Error::config(format!(
                "{what}.project is empty: remove it, or name the compose project"
            )));
        }
        let stop_timeout = match &cfg.stop_timeout {
            Some(t) => drkit_core::config::parse_duration(t)
                .map_err(|e| e.context(format!("{what}.stop_timeout")))?
                .as_secs()
                .min(i32::MAX as u64) as i32,
            None => 30,
        };
        Ok(DockerVolumeSource { cfg, stop_timeout })
    }

    /// A source for a plain volume name (what the guard's `--backup-first` uses for volumes
    /// that no job names).
    pub fn for_volume(name: &str, stop_containers: bool) -> Self {
        DockerVolumeSource {
            cfg: DockerVolumeConfig {
                volume: name.into(),
                project: None,
                stop_containers,
                stop_timeout: None,
                host: None,
                mode: ReadMode::Auto,
            },
            stop_timeout: 30,
        }
    }

    /// The settings.
    pub fn config(&self) -> &DockerVolumeConfig {
        &self.cfg
    }

    async fn engine(&self) -> Result<Engine> {
        Engine::connect(self.cfg.host.as_deref()).await
    }

    /// Find the volume this source names.
    pub async fn resolve(&self, engine: &Engine) -> Result<VolumeInfo> {
        match &self.cfg.project {
            Some(p) => volumes::resolve_compose(engine, p, &self.cfg.volume).await,
            None => volumes::inspect(engine, &self.cfg.volume).await,
        }
    }

    /// How a backup of volume `name` reads it ([`direct::choose`] over the facts of the
    /// engine and the volume); with the volume's directory open when directly. With
    /// `mode = "direct"`, a clear error when it cannot.
    async fn route(
        &self,
        engine: &Engine,
        name: &str,
    ) -> Result<(Route, Option<std::os::fd::OwnedFd>)> {
        if self.cfg.mode == ReadMode::Engine {
            return Ok((Route::Engine(None), None));
        }
        let (facts, root) = direct::gather(engine, name).await?;
        match direct::choose(self.cfg.mode, &facts) {
            Ok(Route::Direct) => match root {
                Some(fd) => Ok((Route::Direct, Some(fd))),
                None => Err(Error::source_error(format!("volume {name}: its directory could not be opened"))),
            },
            Ok(route) => Ok((route, None)),
            Err(why) => Err(Error::source_error(format!(
                "volume {name} cannot be read directly (mode = \"direct\"): {why}; set mode = \"auto\" to read it through the engine when it cannot"
            ))),
        }
    }

    /// Whether `v` is the volume this source names (by name, or by compose labels).
    pub fn names(&self, v: &VolumeInfo) -> bool {
        match &self.cfg.project {
            Some(p) => {
                v.project() == Some(p.as_str())
                    && v.compose_volume() == Some(self.cfg.volume.as_str())
            }
            None => v.name == self.cfg.volume,
        }
    }

    /// Where a restore goes: `--to`, else the job's volume (or, when the compose volume is
    /// gone, the name recorded in the manifest). Returns the name and, when it exists, the
    /// volume.
    async fn destination(
        &self,
        engine: &Engine,
        manifest: &Manifest,
        opts: &RestoreOptions,
    ) -> Result<(String, Option<VolumeInfo>)> {
        let name = match &opts.to {
            Some(to) => {
                let to = to.trim();
                if to.is_empty() || to.contains('/') || to.starts_with('.') {
                    return Err(Error::config(format!("--to {to:?} is not a docker volume name: use letters, digits, '_', '.', '-'")));
                }
                to.to_string()
            }
            None => match self.resolve(engine).await {
                Ok(v) => return Ok((v.name.clone(), Some(v))),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    match manifest.source.get("volume").and_then(|v| v.as_str()) {
                        Some(n) => n.to_string(),
                        None => self.cfg.volume.clone(),
                    }
                }
                Err(e) => return Err(e),
            },
        };
        match volumes::inspect(engine, &name).await {
            Ok(v) => Ok((name, Some(v))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok((name, None)),
            Err(e) => Err(e),
        }
    }

    /// Restore into the existing volume `name`: extract into a staging volume first, so that
    /// nothing reaches the destination unless the whole archive was safe and intact; the
    /// staging volume is removed after.
    async fn restore_over(
        &self,
        engine: &Engine,
        name: &str,
        data: BoxRead,
        expected: Option<&Expected>,
        report: &mut RestoreReport,
    ) -> Result<tar::TarStats> {
        let staging = format!("drkit-staging-{:08x}", rand::random::<u32>());
        let staged_labels: BTreeMap<String, String> =
            [("drkit.staging".to_string(), name.to_string())].into();
        volumes::create(engine, &staging, "local", &BTreeMap::new(), &staged_labels).await?;
        let result = self
            .replace_from_staging(engine, name, &staging, data, expected, report)
            .await;
        let _ = volumes::remove(engine, &staging).await;
        result
    }

    /// Extract `data` into the volume `staging`, then, with the containers using volume
    /// `name` stopped when the config says so, replace `name`'s contents with it.
    async fn replace_from_staging(
        &self,
        engine: &Engine,
        name: &str,
        staging: &str,
        data: BoxRead,
        expected: Option<&Expected>,
        report: &mut RestoreReport,
    ) -> Result<tar::TarStats> {
        let (route, dest) = restore_route(engine, name, self.cfg.mode).await?;
        let staging_dir = match &route {
            Route::Direct => restore_route(engine, staging, self.cfg.mode).await?.1,
            Route::Engine(_) => None,
        };
        if let (Some(dest), Some(staging_dir)) = (dest, staging_dir) {
            report.notes.push(route_note(&route));
            return self
                .replace_directly(
                    engine,
                    name,
                    staging,
                    dest,
                    staging_dir,
                    data,
                    expected,
                    report,
                )
                .await;
        }
        let route = match route {
            Route::Direct => Route::Engine(Some(format!(
                "the staging volume {staging} cannot be written directly"
            ))),
            r => r,
        };
        if self.cfg.mode == ReadMode::Direct {
            let Route::Engine(Some(why)) = &route else {
                unreachable!("direct route handled above")
            };
            return Err(Error::source_error(format!("volume {name} cannot be restored directly (mode = \"direct\"): {why}; set mode = \"auto\" to restore through the engine when it cannot")));
        }
        report.notes.push(route_note(&route));
        let staged = extract(engine, staging, data).await?;
        let users = volumes::users(engine, name).await?;
        let mut stopper = self.stop_users(engine, name, &users, report).await?;
        let written = write_from_staging(
            engine,
            staging,
            name,
            staged.root,
            report.replaces_existing,
            expected,
        )
        .await;
        let restarted = match stopper.as_mut() {
            Some(s) => s.restart().await,
            None => Ok(Vec::new()),
        };
        let written = written?;
        let restarted = restarted?;
        if let Some(s) = &stopper {
            if !s.stopped.is_empty() {
                report.notes.push(format!(
                    "stopped containers {} and started them again: {}",
                    s.stopped.join(", "),
                    restarted.join(", ")
                ));
            }
        }
        Ok(written)
    }

    /// The direct way of [`Self::replace_from_staging`]: extract into the staging volume's
    /// directory `staging_dir`, then (containers stopped when the config says so) empty the
    /// destination's directory `dest` (`--force`), move the staged entries in by renaming
    /// (or, across filesystems, copy them through the engine), give the root its metadata,
    /// and read the destination back directly.
    #[allow(clippy::too_many_arguments)]
    async fn replace_directly(
        &self,
        engine: &Engine,
        name: &str,
        staging: &str,
        dest: std::os::fd::OwnedFd,
        staging_dir: std::os::fd::OwnedFd,
        data: BoxRead,
        expected: Option<&Expected>,
        report: &mut RestoreReport,
    ) -> Result<tar::TarStats> {
        let staging_keep = staging_dir.try_clone().map_err(|e| {
            Error::source_error(format!(
                "volume {staging}: cannot keep its directory open ({e})"
            ))
        })?;
        let staged = extract::extract_into(staging_dir, data, staging, tar_refusal).await?;
        let users = volumes::users(engine, name).await?;
        let mut stopper = self.stop_users(engine, name, &users, report).await?;
        let written = async {
            let same = extract::same_filesystem(&staging_keep, &dest).unwrap_or(false);
            let replaces = report.replaces_existing;
            let owned = name.to_string();
            let (dest, staging_keep, moved) = blocking(move || {
                let name = owned.as_str();
                if replaces {
                    extract::empty_dir(&dest).map_err(|e| {
                        Error::source_error(format!(
                            "could not empty volume {name} before the restore ({e}); empty it by hand and retry"
                        ))
                    })?;
                }
                let moved = if same {
                    Some(extract::move_entries(&staging_keep, &dest).map_err(|e| {
                        Error::source_error(format!(
                            "moving the restored files into volume {name} failed ({e})"
                        ))
                    })?)
                } else {
                    None
                };
                Ok((dest, staging_keep, moved))
            })
            .await?;
            drop(staging_keep);
            match moved {
                Some(n) => report.notes.push(format!(
                    "moved the {n} top-level entries of the checked staging copy into volume {name} (rename)"
                )),
                None => {
                    report.notes.push(format!(
                        "the staging volume {staging} is on another filesystem than volume {name}: copied through the engine"
                    ));
                    copy_volume(engine, staging, name).await?;
                }
            }
            if let Some(r) = staged.root {
                extract::set_root(&dest, &r).map_err(|e| {
                    Error::source_error(format!("volume {name}: setting its root's metadata: {e}"))
                })?;
            }
            // Checked before the containers start again and write to it.
            check_restored_directly(dest, name, expected).await
        }
        .await;
        let restarted = match stopper.as_mut() {
            Some(s) => s.restart().await,
            None => Ok(Vec::new()),
        };
        let written = written?;
        let restarted = restarted?;
        if let Some(s) = &stopper {
            if !s.stopped.is_empty() {
                report.notes.push(format!(
                    "stopped containers {} and started them again: {}",
                    s.stopped.join(", "),
                    restarted.join(", ")
                ));
            }
        }
        Ok(written)
    }

    /// Stop the running containers among `users` of volume `name` when the config says so;
    /// else note those kept running.
    async fn stop_users(
        &self,
        engine: &Engine,
        name: &str,
        users: &[ContainerRef],
        report: &mut RestoreReport,
    ) -> Result<Option<Stopper>> {
        if self.cfg.stop_containers {
            return Ok(Some(
                Stopper::stop(
                    engine,
                    name,
                    users,
                    self.stop_timeout,
                    &format!("the restore into volume {name}"),
                )
                .await?,
            ));
        }
        let running: Vec<String> = users
            .iter()
            .filter(|c| c.running)
            .map(|c| c.name.clone())
            .collect();
        if !running.is_empty() {
            report.notes.push(format!("containers {} kept running on volume {name} during the restore: restart them so they see the restored files", running.join(", ")));
        }
        Ok(None)
    }
}

/// Restore into the new volume `name`: nobody uses it, so restore straight into it (created
/// with the backup's driver, and its options and labels unless `--to`), and remove it again
/// if anything goes wrong.
#[allow(clippy::too_many_arguments)]
async fn restore_new(
    engine: &Engine,
    name: &str,
    data: BoxRead,
    manifest: &Manifest,
    opts: &RestoreOptions,
    expected: Option<&Expected>,
    mode: ReadMode,
    notes: &mut Vec<String>,
) -> Result<tar::TarStats> {
    let recorded_labels = if opts.to.is_none() {
        labels_of(manifest)
    } else if is_scratch_volume(name) {
        [(LABEL_DRILL.to_string(), "1".to_string())].into()
    } else {
        BTreeMap::new()
    };
    let driver = manifest
        .source
        .get("volume_driver")
        .and_then(|d| d.as_str())
        .unwrap_or("local")
        .to_string();
    let options = if opts.to.is_none() {
        options_of(manifest)
    } else {
        BTreeMap::new()
    };
    volumes::create(engine, name, &driver, &options, &recorded_labels).await?;
    let result = async {
        let (route, dir) = restore_route(engine, name, mode).await?;
        notes.push(route_note(&route));
        if let Some(dir) = dir {
            let keep = dir.try_clone().map_err(|e| {
                Error::source_error(format!(
                    "volume {name}: cannot keep its directory open ({e})"
                ))
            })?;
            // The root's metadata is set by the extraction itself.
            extract::extract_into(dir, data, name, tar_refusal).await?;
            return check_restored_directly(keep, name, expected).await;
        }
        let finished = extract(engine, name, data).await?;
        set_root(engine, name, finished.root).await?;
        check_restored(engine, name, expected).await
    }
    .await;
    if result.is_err() {
        let _ = volumes::remove(engine, name).await;
    }
    result
}

/// How a restore writes volume `name`: as a backup reads it ([`direct::choose`] over the
/// same facts), and directly only as root (it sets every file's owner). With the volume's
/// directory open when directly; with `mode = "direct"`, a clear error when it cannot.
async fn restore_route(
    engine: &Engine,
    name: &str,
    mode: ReadMode,
) -> Result<(Route, Option<std::os::fd::OwnedFd>)> {
    if mode == ReadMode::Engine {
        return Ok((Route::Engine(None), None));
    }
    let (facts, root) = direct::gather(engine, name).await?;
    let cannot = |why: String| {
        Error::source_error(format!(
            "volume {name} cannot be restored directly (mode = \"direct\"): {why}; set mode = \"auto\" to restore through the engine when it cannot"
        ))
    };
    match direct::choose(mode, &facts) {
        Ok(Route::Direct) if !facts.root => {
            let why =
                "drkit does not run as root: it could not give the files their owners".to_string();
            match mode {
                ReadMode::Direct => Err(cannot(why)),
                _ => Ok((Route::Engine(Some(why)), None)),
            }
        }
        Ok(Route::Direct) => match root {
            Some(fd) => Ok((Route::Direct, Some(fd))),
            None => Err(cannot("its directory could not be opened".into())),
        },
        Ok(route) => Ok((route, None)),
        Err(why) => Err(cannot(why)),
    }
}

/// The report's line saying which way the restore wrote the volume, and why.
fn route_note(route: &Route) -> String {
    match route {
        Route::Direct => "written directly into the volume's directory (direct): the engine is local and drkit runs as root".into(),
        Route::Engine(None) => "written through the engine's archive endpoint (engine): mode = \"engine\"".into(),
        Route::Engine(Some(why)) => format!("written through the engine's archive endpoint (engine): {why}"),
    }
}

/// Run blocking file system work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::source_error(format!("a restore step failed ({e})")))?
}

/// Read a restored volume's directory back (the direct walk) and compare it with the
/// backup's stats.
async fn check_restored_directly(
    dir: std::os::fd::OwnedFd,
    name: &str,
    expected: Option<&Expected>,
) -> Result<tar::TarStats> {
    let algo = expected.map(|e| e.algo).unwrap_or_default();
    let got = extract::read_back(dir, name, algo).await?;
    compare_restored(name, got, expected)
}

/// Replace the contents of volume `name` (emptied first when `replaces`) with those of
/// volume `staging`, give its root `root`'s metadata, and check it against the backup.
async fn write_from_staging(
    engine: &Engine,
    staging: &str,
    name: &str,
    root: Option<tar::RootMeta>,
    replaces: bool,
    expected: Option<&Expected>,
) -> Result<tar::TarStats> {
    if replaces {
        empty_volume(engine, name).await?;
    }
    copy_volume(engine, staging, name).await?;
    set_root(engine, name, root).await?;
    // Checked before the containers start again and write to it.
    check_restored(engine, name, expected).await
}

#[async_trait]
impl Source for DockerVolumeSource {
    fn driver(&self) -> &'static str {
        "docker-volume"
    }

    fn extension(&self) -> &'static str {
        "tar"
    }

    fn describe(&self) -> String {
        match &self.cfg.project {
            Some(p) => format!("docker volume {} of compose project {p}", self.cfg.volume),
            None => format!("docker volume {}", self.cfg.volume),
        }
    }

    async fn dump(&self) -> Result<Dump> {
        let engine = self.engine().await?;
        let vol = self.resolve(&engine).await?;
        let users = volumes::users(&engine, &vol.name).await?;
        let running: Vec<String> = users
            .iter()
            .filter(|c| c.running)
            .map(|c| c.name.clone())
            .collect();
        let mut warnings = Vec::new();
        let (route, root) = self.route(&engine, &vol.name).await?;
        // The helper (or the volume's directory) is open before any container is stopped:
        // nothing is created while they are down, so an interruption then leaves nothing
        // behind.
        let helper = match root {
            Some(_) => None,
            None => Some(Helper::create(&engine, &vol.name, MOUNT, true).await?),
        };
        let stopper = if self.cfg.stop_containers {
            Some(
                Stopper::stop(
                    &engine,
                    &vol.name,
                    &users,
                    self.stop_timeout,
                    &format!("the backup of volume {}", vol.name),
                )
                .await?,
            )
        } else {
            if !running.is_empty() {
                warnings.push(format!(
                    "volume {} was copied while containers were running on it ({}): files being written may be inconsistent; set stop_containers = true for a consistent copy",
                    vol.name,
                    running.join(", ")
                ));
            }
            None
        };
        let slot: Arc<Mutex<Option<Finished>>> = Arc::default();
        let skipped: Arc<Mutex<Vec<String>>> = Arc::default();
        let reader = match (&helper, root) {
            (Some(h), _) => ScanReader::start(h, slot.clone(), vol.name.clone()),
            (None, Some(fd)) => ScanReader::from_channel(direct::start(
                fd,
                vol.name.clone(),
                slot.clone(),
                skipped.clone(),
            )),
            (None, None) => unreachable!("a helper exists unless the directory is open"),
        };
        let finish = async move {
            let mut stopper = stopper;
            let removed = match helper {
                Some(h) => h.remove().await,
                None => Ok(()),
            };
            let restarted = match stopper.as_mut() {
                Some(s) => s.restart().await?,
                None => Vec::new(),
            };
            removed?;
            let finished = slot.lock().expect("lock").take().ok_or_else(|| {
                Error::source_error(format!("volume {}: the archive stream was not read to its end", vol.name))
            })?;
            let stats = finished.stats.clone();
            let skipped = std::mem::take(&mut *skipped.lock().expect("lock"));
            if !skipped.is_empty() {
                warnings.push(format!(
                    "volume {}: {} socket(s) left out, as the engine leaves them out: {}",
                    vol.name,
                    skipped.len(),
                    skipped.iter().take(5).map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")
                ));
            }
            if stats.entries == 0 {
                warnings.push(format!("volume {} holds no files: this backup is empty", vol.name));
            }
            if let Some(why) = finished.refusal() {
                // Kept (it is what the volume holds), but flagged: verify fails it, so the
                // guard does not count it, and a restore refuses it.
                warnings.push(format!(
                    "volume {} holds {why}; this backup is kept, but it is not restorable: `drkit verify` fails it and the guard does not count it until the volume holds only entries a restore accepts (make absolute or outward symlinks relative, remove device nodes; see docs/docker.md)",
                    vol.name,
                ));
            }
            let stopped = stopper.as_ref().map(|s| s.stopped.clone()).unwrap_or_default();
            let source = serde_json::json!({
                "volume": vol.name,
                "project": vol.project(),
                "compose_volume": vol.compose_volume(),
                "volume_driver": vol.driver,
                "driver_options": vol.options,
                "labels": vol.labels,
                "created": vol.created.map(|t| drkit_core::manifest::format_time(&t)),
                "engine_version": engine.version,
                "api_version": engine.api_version,
                "stopped_containers": stopped,
                "restarted_containers": restarted,
                "read": match &route { Route::Direct => "direct", Route::Engine(_) => "engine" },
                "read_reason": match &route {
                    Route::Direct => Some("the engine is local: the volume's directory was read directly".to_string()),
                    Route::Engine(why) => why.clone(),
                },
            });
            Ok(DumpSummary { source, stats: stats.to_json(), warnings })
        }
        .boxed();
        Ok(Dump {
            reader: Box::new(reader),
            finish,
        })
    }

    async fn plan_restore(
        &self,
        manifest: &Manifest,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let engine = self.engine().await?;
        let (name, existing) = self.destination(&engine, manifest, opts).await?;
        let mut report = RestoreReport {
            destination: format!("docker volume {name}"),
            ..Default::default()
        };
        match existing {
            None => report
                .notes
                .push(format!("volume {name} does not exist: it will be created")),
            Some(_) => {
                let empty = helper::is_empty(&engine, &name).await?;
                if !empty {
                    if !opts.force {
                        return Err(Error::refused(format!(
                            "volume {name} is not empty: a restore would replace its contents; pass --force to empty it first, or --to NEW_VOLUME to restore beside it"
                        )));
                    }
                    report.replaces_existing = true;
                    report.notes.push(format!("volume {name} is not empty: --force empties it before the restored files go in"));
                }
            }
        }
        Ok(report)
    }

    async fn restore(
        &self,
        data: BoxRead,
        manifest: &Manifest,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let mut report = self.plan_restore(manifest, opts).await?;
        let engine = self.engine().await?;
        let (name, existing) = self.destination(&engine, manifest, opts).await?;
        let expected = expected_stats(manifest)?;

        let got = match existing {
            None => {
                let got = restore_new(
                    &engine,
                    &name,
                    data,
                    manifest,
                    opts,
                    expected.as_ref(),
                    self.cfg.mode,
                    &mut report.notes,
                )
                .await?;
                report.notes.push(format!("created volume {name}"));
                got
            }
            Some(_) => {
                self.restore_over(&engine, &name, data, expected.as_ref(), &mut report)
                    .await?
            }
        };
        report.stats_checked = expected.is_some();
        report.notes.push(format!(
            "{} entries ({} files, {} bytes) in volume {name}",
            got.entries, got.files, got.bytes
        ));
        Ok(report)
    }

    async fn preflight(&self) -> Result<Vec<String>> {
        let engine = self.engine().await?;
        let vol = self.resolve(&engine).await?;
        let users = volumes::users(&engine, &vol.name).await?;
        let size = volumes::sizes(&engine)
            .await?
            .get(&vol.name)
            .copied()
            .unwrap_or(-1);
        let mut notes = vec![format!(
            "Docker engine {} (API {}) at {}: volume {} ({}), used by {}",
            engine.version,
            engine.api_version,
            engine.host,
            vol.name,
            crate::docker::human_size(size),
            if users.is_empty() {
                "no container".to_string()
            } else {
                users
                    .iter()
                    .map(|c| format!("{}{}", c.name, if c.running { " (running)" } else { "" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )];
        helper::ensure_image(&engine).await?;
        notes.push(format!("helper image {} present", helper::HELPER_IMAGE));
        notes.push(match self.route(&engine, &vol.name).await? {
            (Route::Direct, _) => {
                "backups read the volume's directory directly (mode = auto/direct)".to_string()
            }
            (Route::Engine(None), _) => {
                "backups read the volume through the engine (mode = \"engine\")".to_string()
            }
            (Route::Engine(Some(why)), _) => {
                format!("backups read the volume through the engine: {why}")
            }
        });
        for w in crate::docker::lookalike::check(&engine, vol.project()).await? {
            notes.push(format!("WARNING: {w}"));
        }
        Ok(notes)
    }

    /// A volume drill always restores into a new scratch volume on the source's engine
    /// (`drkit-drill-<job>-<time>-<tag>`, labelled `drkit.drill`): a `target` server or an
    /// `image` means nothing to a volume, so those places are declined.
    async fn drill_scratch(
        &self,
        _manifest: &Manifest,
        place: &Place,
        name: &ScratchName,
    ) -> Result<Option<Scratch>> {
        if *place != Place::Beside {
            return Ok(None);
        }
        let engine = self.engine().await?;
        let to = name.render('-', SCRATCH_NAME_MAX);
        Ok(Some(Scratch {
            notes: vec![format!(
                "restored into scratch volume {to} on this Docker engine ({}), removed after the checks",
                engine.host
            )],
            to: to.clone(),
            shown: format!("docker volume {to}"),
            ..Default::default()
        }))
    }

    async fn drill_cleanup(&self, scratch: &Scratch) -> Result<()> {
        let engine = self.engine().await?;
        match volumes::remove(&engine, &scratch.to).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Scratch volumes (`drkit-drill-*`) whose name time is more than a day old: removed,
    /// unless a container uses them (then the line says so and they stay).
    async fn drill_sweep(
        &self,
        place: &Place,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>> {
        if *place != Place::Beside {
            return Ok(Vec::new());
        }
        let engine = self.engine().await?;
        // Helpers of a killed drkit on this host would hold a scratch volume: gone first.
        let _ = helper::clean_stale(&engine).await;
        let prefix = scratch_prefix();
        let mut lines = Vec::new();
        for v in volumes::list(&engine, &[("name", prefix.clone())]).await? {
            if v.name.starts_with(&prefix) && drkit_core::drill::is_stale(&v.name, now) {
                lines.push(sweep_one(&engine, &v.name).await);
            }
        }
        Ok(lines)
    }

    /// `{ path = "..." }`: the bytes of that path in the scratch volume (a file's size, a
    /// folder's files summed), `null` when it is missing. See [`path_size`].
    async fn drill_check(&self, scratch: &Scratch, query: &Query) -> Result<serde_json::Value> {
        let Query::Path(path) = query else {
            return Err(Error::config(format!(
                "the docker-volume driver cannot run the drill check {query}: a volume drill checks paths, e.g. {{ path = \"data/app.db\", min_size = \"1KiB\" }}"
            )));
        };
        let rel = volume_path(path)?;
        let engine = self.engine().await?;
        Ok(match path_size(&engine, &scratch.to, &rel).await? {
            Some(n) => serde_json::json!(n),
            None => serde_json::Value::Null,
        })
    }

    /// Not in one pass, on purpose. The restore into an existing volume would qualify: it
    /// extracts into a staging volume, and only a stream read cleanly to its end is copied
    /// in. But a restore into a new volume (the job's own volume gone, or `--to NEW`, and
    /// every drill) extracts straight into the volume under its final name, and removes it
    /// again on failure: during the stream the partial volume is visible to the engine (a
    /// `docker compose up` would adopt and mount it, since it carries the project's labels),
    /// and its removal fails if a container mounted it meanwhile, or the engine hiccups. A
    /// stream failing at its end could then leave partial data live and behind. A volume
    /// cannot be renamed, so making that safe costs a staging copy (as large as the verify
    /// pass it saves); the archive is verified whole first instead (docs/docker.md).
    fn restores_in_one_pass(&self) -> bool {
        false
    }

    /// The whole archive, entry by entry (bounded memory: headers only), counted and
    /// digested as the backup did, and compared with the manifest's stats.
    fn deep_check(&self, manifest: &Manifest) -> Option<Box<dyn DeepCheck>> {
        // The recorded digest's algorithm (older backups: sha256); an unknown one is
        // reported by compare_stats.
        let algo = manifest
            .stats
            .get("digest")
            .and_then(|d| d.as_str())
            .and_then(DigestAlgo::of)
            .unwrap_or_default();
        Some(Box::new(DeepTarCheck {
            scanner: Scanner::with_digest(Mode::Observe, algo),
            stats: manifest.stats.clone(),
        }))
    }

    fn measure(&self, stats: &serde_json::Value) -> drkit_core::suspect::Measure {
        crate::source::measure::docker_volume(stats)
    }

    /// The whole archive through the restore's own entry policy: an archive a restore would
    /// refuse fails verification (naming its first refused entries), so "verified" means
    /// "a restore accepts it".
    fn stream_check(&self, manifest: &Manifest) -> Option<Box<dyn StreamCheck>> {
        let _ = manifest;
        Some(Box::new(RestorableCheck {
            scanner: Scanner::new(Mode::Observe),
        }))
    }

    fn check_structure(&self, head: &[u8]) -> Result<()> {
        if tar::looks_like_tar(head) {
            Ok(())
        } else {
            Err(Error::integrity(
                "the archive is not a tar archive (bad first header)",
            ))
        }
    }
}

/// The label on a drill's scratch volume.
pub const LABEL_DRILL: &str = "drkit.drill";

/// The longest scratch volume name drkit makes (the engine's local driver allows 255).
const SCRATCH_NAME_MAX: usize = 128;

/// `drkit-drill-`: the prefix of every scratch volume.
fn scratch_prefix() -> String {
    drkit_core::drill::SCRATCH_PREFIX.replace('_', "-")
}

/// Whether `name` is a drill's scratch volume name (prefix and time).
fn is_scratch_volume(name: &str) -> bool {
    name.starts_with(&scratch_prefix()) && drkit_core::drill::scratch_time(name).is_some()
}

/// Remove the stale scratch volume `name`, unless a container uses it; one line either way.
async fn sweep_one(engine: &Engine, name: &str) -> String {
    let when = drkit_core::drill::scratch_time(name)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default();
    let users = match volumes::users(engine, name).await {
        Ok(u) => u,
        Err(e) => return format!("scratch volume {name} of a drill of {when} is left over; could not tell whether it is in use: {e}"),
    };
    if !users.is_empty() {
        let names: Vec<&str> = users.iter().map(|c| c.name.as_str()).collect();
        return format!(
            "scratch volume {name} of a drill of {when} is left over but in use by containers {}: not removed (remove them, then `docker volume rm {name}`)",
            names.join(", ")
        );
    }
    match volumes::remove(engine, name).await {
        Ok(()) => format!(
            "removed scratch volume {name}, left by a drill of {when} that did not clean up"
        ),
        Err(e) if e.to_string().contains("in use") => format!(
            "scratch volume {name} of a drill of {when} is left over but in use: not removed ({e})"
        ),
        Err(e) => format!("could not remove scratch volume {name} of a drill of {when}: {e}"),
    }
}

/// A drill check's path, normalized: relative to the volume's root (`""` for the root),
/// with no `..` and no absolute path.
fn volume_path(path: &str) -> Result<String> {
    let bad = |why: &str| {
        Error::config(format!(
            "drill check path {path:?} {why}: write a path relative to the volume's root, e.g. \"data/app.db\""
        ))
    };
    if path.starts_with('/') {
        return Err(bad("is absolute"));
    }
    if path.contains('\0') {
        return Err(bad("holds a NUL byte"));
    }
    let mut parts = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(bad("climbs out with '..'")),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// The bytes of the regular files at or under `rel` (normalized, [`volume_path`]) in
/// `volume`; `None` when nothing is there.
///
/// Read through the engine's archive endpoint, never a command's output: the tar of the
/// path's first component (`/data/<first>`, or the whole volume for the root) is scanned and
/// the entries at or under `rel` summed. The engine resolves symbolic links in the
/// directories *above* the last component of the path it is asked for, in the container's
/// root: asking for the first component, right under the mount, leaves none to resolve (a
/// symbolic link there is archived as the link itself). Deeper components are matched by
/// name in the archive, which never follows a link: a path through a symbolic link is
/// missing, and a link counts 0 bytes.
pub async fn path_size(engine: &Engine, volume: &str, rel: &str) -> Result<Option<u64>> {
    let first = rel.split('/').next().unwrap_or_default();
    let source = if first.is_empty() {
        format!("{MOUNT}/.")
    } else {
        format!("{MOUNT}/{first}")
    };
    let helper = Helper::create(engine, volume, MOUNT, true).await?;
    let mut reader = helper.download(&source);
    let mut scanner = Scanner::new(Mode::Observe).watch(rel);
    let mut buf = vec![0u8; 256 * 1024];
    let result = loop {
        match reader.read(&mut buf).await {
            Ok(0) => {
                break scanner
                    .finish()
                    .map(|f| f.watched.filter(|w| w.found).map(|w| w.bytes))
                    .map_err(|e| Error::source_error(format!("volume {volume}: {e}")))
            }
            Ok(n) => {
                if let Err(e) = scanner.feed(&buf[..n], None) {
                    break Err(Error::source_error(format!("volume {volume}: {e}")));
                }
            }
            Err(e) => {
                let e = from_io(e, ErrorKind::Source, format!("reading volume {volume}"));
                // The engine's 404: the path's first component is not there.
                break if e.kind() == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                };
            }
        }
    };
    drop(reader);
    helper.remove().await?;
    result
}

/// `drkit verify --deep` of a volume archive: entries, files, bytes (and the other counts
/// and the content digest) against the manifest's stats.
struct DeepTarCheck {
    scanner: Scanner,
    stats: serde_json::Value,
}

impl DeepCheck for DeepTarCheck {
    fn update(&mut self, bytes: &[u8]) -> Result<()> {
        self.scanner
            .feed(bytes, None)
            .map_err(|e| Error::integrity(e.to_string()))
    }

    fn finish(self: Box<Self>) -> Result<String> {
        let got = self
            .scanner
            .finish()
            .map_err(|e| Error::integrity(e.to_string()))?
            .stats;
        compare_stats(&got, &self.stats)
    }
}

/// Compare what an archive holds with the manifest's `stats`: a mismatch names the figure and
/// both numbers. `entries`, `files` and `bytes` must be recorded; the other counts and the
/// digest are compared when they are.
fn compare_stats(got: &tar::TarStats, stats: &serde_json::Value) -> Result<String> {
    let figures = [
        ("entries", got.entries, true),
        ("files", got.files, true),
        ("bytes", got.bytes, true),
        ("dirs", got.dirs, false),
        ("symlinks", got.symlinks, false),
        ("hardlinks", got.hardlinks, false),
        ("other", got.other, false),
    ];
    for (name, have, required) in figures {
        let want = match stats.get(name) {
            None if required => {
                return Err(Error::integrity(format!(
                    "the manifest's stats record no {name} count to compare with (the archive holds {have})"
                )))
            }
            None => continue,
            Some(v) => v.as_u64().ok_or_else(|| {
                Error::integrity(format!(
                    "the manifest's stats.{name} is {}, not a count",
                    short_json(v)
                ))
            })?,
        };
        if want != have {
            return Err(Error::integrity(format!(
                "{name}: the archive holds {have}, the manifest says {want}"
            )));
        }
    }
    let digest = match stats.get("digest") {
        None => false,
        Some(v) => {
            let want = v.as_str().ok_or_else(|| {
                Error::integrity(format!(
                    "the manifest's stats.digest is {}, not a digest",
                    short_json(v)
                ))
            })?;
            if DigestAlgo::of(want).is_none() {
                return Err(Error::integrity(format!(
                    "the manifest's content digest {:?} names no algorithm drkit knows (blake3:, sha256:)",
                    short(want)
                )));
            }
            if want != got.digest {
                return Err(Error::integrity(format!(
                    "content digest: the archive's is {}, the manifest says {}",
                    short(&got.digest),
                    short(want)
                )));
            }
            true
        }
    };
    Ok(format!(
        "{} entries, {} files, {} bytes{}: as the manifest says",
        got.entries,
        got.files,
        got.bytes,
        if digest { ", content digest" } else { "" }
    ))
}

/// A JSON value for a message, cut to a few characters.
fn short_json(v: &serde_json::Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

/// `drkit verify`'s check of a volume archive: every entry through [`Scanner`]'s policy, the
/// one the restore enforces.
struct RestorableCheck {
    scanner: Scanner,
}

impl StreamCheck for RestorableCheck {
    fn update(&mut self, bytes: &[u8]) -> Result<()> {
        self.scanner
            .feed(bytes, None)
            .map_err(|e| Error::integrity(e.to_string()))
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let finished = self
            .scanner
            .finish()
            .map_err(|e| Error::integrity(e.to_string()))?;
        match finished.refusal() {
            None => Ok(()),
            Some(why) => Err(Error::integrity(format!(
                "a restore would refuse it: the archive holds {why}"
            ))),
        }
    }
}

/// Read a restored volume back and compare it with the backup's stats.
async fn check_restored(
    engine: &Engine,
    name: &str,
    expected: Option<&Expected>,
) -> Result<tar::TarStats> {
    let algo = expected.map(|e| e.algo).unwrap_or_default();
    let got = scan_volume(engine, name, algo).await?;
    compare_restored(name, got, expected)
}

/// The restored volume's stats against the backup's: a difference is an integrity error.
fn compare_restored(
    name: &str,
    got: tar::TarStats,
    expected: Option<&Expected>,
) -> Result<tar::TarStats> {
    if let Some(want) = expected {
        if got.digest != want.digest || got.entries != want.entries || got.bytes != want.bytes {
            return Err(Error::integrity(format!(
                "volume {name} after the restore holds {} entries, {} bytes, digest {}; the backup recorded {} entries, {} bytes, digest {}",
                got.entries,
                got.bytes,
                short(&got.digest),
                want.entries,
                want.bytes,
                short(&want.digest)
            )));
        }
    }
    Ok(got)
}

/// A digest cut to its first characters (`sha256:` and 12 hex digits); never splits a
/// character (a manifest's digest is hostile text).
fn short(d: &str) -> &str {
    match d.char_indices().nth(19) {
        Some((i, _)) => &d[..i],
        None => d,
    }
}

struct Expected {
    entries: u64,
    bytes: u64,
    digest: String,
    algo: DigestAlgo,
}

/// What the restored volume must hold, from the manifest's stats; `None` when they record no
/// counts or digest (nothing to compare). A digest of an unknown algorithm is refused before
/// anything is written.
fn expected_stats(m: &Manifest) -> Result<Option<Expected>> {
    let s = &m.stats;
    let (Some(entries), Some(bytes), Some(digest)) = (
        s.get("entries").and_then(|v| v.as_u64()),
        s.get("bytes").and_then(|v| v.as_u64()),
        s.get("digest").and_then(|v| v.as_str()),
    ) else {
        return Ok(None);
    };
    let algo = DigestAlgo::of(digest).ok_or_else(|| {
        Error::integrity(format!(
            "restore refused: the manifest's content digest {:?} names no algorithm drkit knows (blake3:, sha256:)",
            short(digest)
        ))
    })?;
    Ok(Some(Expected {
        entries,
        bytes,
        digest: digest.to_string(),
        algo,
    }))
}

fn labels_of(m: &Manifest) -> BTreeMap<String, String> {
    string_map(m.source.get("labels"))
}

fn options_of(m: &Manifest) -> BTreeMap<String, String> {
    string_map(m.source.get("driver_options"))
}

fn string_map(v: Option<&serde_json::Value>) -> BTreeMap<String, String> {
    v.and_then(|v| v.as_object())
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Read a whole volume through the engine and return its stats, with a content digest of
/// `algo`.
pub async fn scan_volume(engine: &Engine, volume: &str, algo: DigestAlgo) -> Result<tar::TarStats> {
    let helper = Helper::create(engine, volume, MOUNT, true).await?;
    let mut reader = helper.download(&format!("{MOUNT}/."));
    let mut scanner = Scanner::with_digest(Mode::Observe, algo);
    let mut buf = vec![0u8; 256 * 1024];
    let result = loop {
        match reader.read(&mut buf).await {
            Ok(0) => {
                break scanner
                    .finish()
                    .map(|f| f.stats)
                    .map_err(|e| Error::source_error(format!("volume {volume}: {e}")))
            }
            Ok(n) => {
                if let Err(e) = scanner.feed(&buf[..n], None) {
                    break Err(Error::source_error(format!("volume {volume}: {e}")));
                }
            }
            Err(e) => {
                break Err(from_io(
                    e,
                    ErrorKind::Source,
                    format!("reading volume {volume}"),
                ))
            }
        }
    };
    drop(reader);
    helper.remove().await?;
    result
}

/// Extract `data` into `volume`, checking every entry before it is sent: the first unsafe
/// entry stops the stream (the caller throws the volume away).
async fn extract(engine: &Engine, volume: &str, data: BoxRead) -> Result<Finished> {
    let helper = Helper::create(engine, volume, MOUNT, false).await?;
    let failure: Arc<Mutex<Option<Error>>> = Arc::default();
    let finished: Arc<Mutex<Option<Finished>>> = Arc::default();
    let stream = validating_stream(data, failure.clone(), finished.clone());
    let uploaded = helper.upload(MOUNT, stream).await;
    let removed = helper.remove().await;
    if let Some(e) = failure.lock().expect("lock").take() {
        return Err(e);
    }
    uploaded.map_err(|e| engine_error(e, format!("writing the archive into volume {volume}")))?;
    removed?;
    let done = finished.lock().expect("lock").take();
    done.ok_or_else(|| {
        Error::source_error(format!(
            "volume {volume}: the engine stopped reading the archive before its end"
        ))
    })
}

fn validating_stream(
    data: BoxRead,
    failure: Arc<Mutex<Option<Error>>>,
    finished: Arc<Mutex<Option<Finished>>>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    struct St {
        data: BoxRead,
        scanner: Option<Scanner>,
        buf: Vec<u8>,
    }
    let st = St {
        data,
        scanner: Some(Scanner::new(Mode::Enforce)),
        buf: vec![0u8; 256 * 1024],
    };
    futures::stream::try_unfold(st, move |mut st| {
        let failure = failure.clone();
        let finished = finished.clone();
        async move {
            let fail = |e: Error| {
                let msg = e.to_string();
                *failure.lock().expect("lock") = Some(e);
                std::io::Error::other(msg)
            };
            loop {
                let Some(scanner) = st.scanner.as_mut() else {
                    return Ok(None);
                };
                let n = match st.data.read(&mut st.buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        return Err(fail(from_io(e, ErrorKind::Storage, "reading the backup")))
                    }
                };
                if n == 0 {
                    let scanner = st.scanner.take().expect("present");
                    match scanner.finish() {
                        Ok(f) => {
                            *finished.lock().expect("lock") = Some(f);
                            return Ok(None);
                        }
                        Err(e) => return Err(fail(tar_refusal(e))),
                    }
                }
                let mut out = Vec::with_capacity(n + 1024);
                if let Err(e) = scanner.feed(&st.buf[..n], Some(&mut out)) {
                    return Err(fail(tar_refusal(e)));
                }
                if !out.is_empty() {
                    return Ok(Some((Bytes::from(out), st)));
                }
            }
        }
    })
}

fn tar_refusal(e: TarError) -> Error {
    match e {
        TarError::Unsafe(u) => Error::refused(format!("restore refused, nothing was written to the volume: the archive's {u}")),
        TarError::Malformed(m) => Error::integrity(format!("restore refused, nothing was written to the volume: the backup is not a valid tar archive ({m})")),
        TarError::Sink(m) => Error::source_error(format!("restore failed, the volume was left as it was: writing {m}")),
    }
}

/// Give the volume's root directory the archive's mode, owner and mtime. The archive
/// endpoint ignores an archive's `./` entry, so the volume is mounted one level down
/// (`/drkit/data`) and a directory entry `data` is extracted at `/drkit`: an existing
/// directory replaced by a directory keeps its contents and takes the entry's metadata.
async fn set_root(engine: &Engine, volume: &str, root: Option<tar::RootMeta>) -> Result<()> {
    let Some(r) = root else {
        return Ok(());
    };
    let h = Helper::create(engine, volume, "/drkit/data", false).await?;
    let mut e = tar::build::entry("data", b'5', "", b"");
    e.mode = r.mode;
    e.uid = r.uid;
    e.gid = r.gid;
    e.mtime = r.mtime;
    let archive = tar::build::archive(&[e]);
    let stream = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(archive))]);
    let result = h.upload("/drkit", stream).await;
    let _ = h.remove().await;
    result.map_err(|e| {
        engine_error(
            e,
            format!("setting the owner, mode and time of volume {volume}'s root"),
        )
    })
}

/// Copy one volume's contents into another, through two helpers.
async fn copy_volume(engine: &Engine, from: &str, to: &str) -> Result<()> {
    let src = Helper::create(engine, from, MOUNT, true).await?;
    let dst = Helper::create(engine, to, MOUNT, false).await?;
    let reader = src.download(&format!("{MOUNT}/."));
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024);
    let result = dst.upload(MOUNT, stream).await;
    let _ = src.remove().await;
    let _ = dst.remove().await;
    result.map_err(|e| engine_error(e, format!("copying the restored files into volume {to}")))
}

/// Empty a volume through the archive endpoint: with the volume mounted at `/drkit/data`,
/// extracting a regular file named `data` at `/drkit` makes the engine remove the directory
/// tree first (replacing a directory by a file); the mount point itself cannot go (EBUSY),
/// which ends that extraction with an error, and leaves the volume empty. Checked afterwards.
async fn empty_volume(engine: &Engine, volume: &str) -> Result<()> {
    let h = Helper::create(engine, volume, "/drkit/data", false).await?;
    let archive = tar::build::archive(&[tar::build::entry("data", b'0', "", b"")]);
    let stream = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(archive))]);
    let result = h.upload("/drkit", stream).await;
    let _ = h.remove().await;
    match result {
        Ok(()) => {}
        Err(bollard::errors::Error::DockerResponseServerError { message, .. })
            if message.contains("busy") => {}
        Err(e) => return Err(engine_error(e, format!("emptying volume {volume}"))),
    }
    if !helper::is_empty(engine, volume).await? {
        return Err(Error::source_error(format!(
            "could not empty volume {volume} before the restore; empty it by hand and retry"
        )));
    }
    Ok(())
}

/// Reads the engine's archive on a task of its own, a few chunks ahead of the pipeline, and
/// scans it on the way (stats and digest for the manifest): the engine, the scan and the
/// pipeline's hashing and compression run side by side.
struct ScanReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    buf: Bytes,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ScanReader {
    fn start(helper: &Helper, slot: Arc<Mutex<Option<Finished>>>, volume: String) -> ScanReader {
        use futures::StreamExt;
        let mut stream = helper.download_stream(&format!("{MOUNT}/."));
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(64);
        let task = tokio::spawn(async move {
            let mut scanner = Scanner::new(Mode::Observe);
            while let Some(item) = stream.next().await {
                let chunk = match item {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if let Err(e) = scanner.feed(&chunk, None) {
                    let e = Error::source_error(format!(
                        "volume {volume}: the engine's archive is unreadable: {e}"
                    ));
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                if tx.send(Ok(chunk)).await.is_err() {
                    return; // the pipeline gave up
                }
            }
            match scanner.finish() {
                Ok(f) => *slot.lock().expect("lock") = Some(f),
                Err(e) => {
                    let e =
                        Error::source_error(format!("volume {volume}: the engine's archive {e}"));
                    let _ = tx.send(Err(e.into())).await;
                }
            }
        });
        ScanReader {
            rx,
            buf: Bytes::new(),
            task: Some(task),
        }
    }

    /// Chunks that are already scanned on their way (the direct read: its writer stops
    /// when this reader, and so the channel, is dropped).
    fn from_channel(rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> ScanReader {
        ScanReader {
            rx,
            buf: Bytes::new(),
            task: None,
        }
    }
}

impl Drop for ScanReader {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl AsyncRead for ScanReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len().min(out.remaining());
                let chunk = self.buf.split_to(n);
                out.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) => self.buf = b,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> DriverSpec {
        let mut settings: toml::Table = toml::from_str(text).unwrap();
        let kind = settings
            .remove("type")
            .and_then(|t| t.as_str().map(str::to_string))
            .unwrap_or_default();
        DriverSpec { kind, settings }
    }

    #[test]
    fn config_errors() {
        let cases = [
            ("type = \"docker-volume\"\nvolume = \"\"", "volume is empty"),
            (
                "type = \"docker-volume\"\nvolume = \"v\"\nproject = \" \"",
                "project is empty",
            ),
            (
                "type = \"docker-volume\"\nvolume = \"v\"\nstop_timeout = \"soon\"",
                "stop_timeout",
            ),
            (
                "type = \"docker-volume\"\nvolume = \"v\"\nstop = true",
                "unknown field `stop`",
            ),
            (
                "type = \"docker-volume\"\nstop_containers = true",
                "missing field `volume`",
            ),
        ];
        for (text, want) in cases {
            let err = DockerVolumeSource::from_spec(&spec(text), "job.x.source")
                .err()
                .expect(text);
            assert_eq!(err.kind(), ErrorKind::Config, "{text}");
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
        let ok = DockerVolumeSource::from_spec(&spec("type = \"docker-volume\"\nvolume = \"db\"\nproject = \"shop\"\nstop_timeout = \"2m\""), "s").unwrap();
        assert_eq!(ok.stop_timeout, 120);
        assert_eq!(ok.describe(), "docker volume db of compose project shop");
    }

    #[test]
    fn names_by_label_or_name() {
        let v = VolumeInfo {
            name: "shop_db".into(),
            driver: "local".into(),
            options: Default::default(),
            labels: [
                (crate::docker::LABEL_PROJECT.to_string(), "shop".to_string()),
                (crate::docker::LABEL_VOLUME.to_string(), "db".to_string()),
            ]
            .into(),
            created: None,
        };
        let by_compose =
            DockerVolumeSource::from_spec(&spec("volume = \"db\"\nproject = \"shop\""), "s")
                .unwrap();
        let by_name = DockerVolumeSource::for_volume("shop_db", false);
        let other =
            DockerVolumeSource::from_spec(&spec("volume = \"db\"\nproject = \"shop-prod\""), "s")
                .unwrap();
        assert!(by_compose.names(&v) && by_name.names(&v) && !other.names(&v));
    }

    #[test]
    fn drill_check_paths_stay_in_the_volume() {
        for (path, want) in [
            ("data/app.db", "data/app.db"),
            ("./data//app.db/", "data/app.db"),
            (".", ""),
            ("", ""),
            ("with space/ß", "with space/ß"),
        ] {
            assert_eq!(volume_path(path).unwrap(), want, "{path}");
        }
        for (path, why) in [
            ("/etc/passwd", "is absolute"),
            ("../x", "'..'"),
            ("a/../../x", "'..'"),
            ("a\0b", "NUL"),
        ] {
            let e = volume_path(path).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{path}");
            assert!(e.to_string().contains(why), "{path}: {e}");
        }
        assert!(is_scratch_volume(
            "drkit-drill-app-20261203T040506-000000ab"
        ));
        assert!(!is_scratch_volume("drkit-drill-app"));
        assert!(!is_scratch_volume(
            "drkit_drill_app_20261203T040506_000000ab"
        ));
    }

    #[test]
    fn deep_counts_are_compared_with_the_manifest() {
        let got = tar::TarStats {
            entries: 5,
            files: 3,
            dirs: 1,
            symlinks: 1,
            bytes: 100,
            digest: "sha256:abcdef0123456789abcdef".into(),
            ..Default::default()
        };
        let stats = got.to_json();
        assert_eq!(
            compare_stats(&got, &stats).unwrap(),
            "5 entries, 3 files, 100 bytes, content digest: as the manifest says"
        );
        let with = |k: &str, v: serde_json::Value| {
            let mut s = stats.clone();
            s[k] = v;
            compare_stats(&got, &s).unwrap_err().to_string()
        };
        assert_eq!(
            with("files", serde_json::json!(4)),
            "files: the archive holds 3, the manifest says 4"
        );
        assert!(with("bytes", serde_json::json!(99))
            .contains("bytes: the archive holds 100, the manifest says 99"));
        assert!(with("symlinks", serde_json::json!(0)).contains("symlinks"));
        assert!(with("entries", serde_json::json!("x".repeat(500))).contains("not a count"));
        assert!(
            with("digest", serde_json::json!("sha256:ééééééééééééééééééé"))
                .contains("content digest")
        );
        assert!(with("digest", serde_json::json!(3)).contains("not a digest"));
        assert!(with("digest", serde_json::json!("md5:0123456789abcdef"))
            .contains("names no algorithm drkit knows"),);
        let mut none = stats.clone();
        none.as_object_mut().unwrap().remove("bytes");
        assert!(compare_stats(&got, &none)
            .unwrap_err()
            .to_string()
            .contains("no bytes count"));
        assert!(compare_stats(&got, &serde_json::json!("junk")).is_err());
    }
}
