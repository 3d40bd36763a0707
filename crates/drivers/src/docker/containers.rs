//! Finding a container as `docker rm` does ([`resolve`]); stopping the containers that use
//! a volume, and starting them again: after the work, when it fails, and when the work is
//! dropped half-way. The CLI drops the running
//! operation on SIGINT/SIGTERM, so an interrupted drkit starts them again too (the restart
//! on drop runs on a thread of its own and is waited for).

use std::sync::{Arc, Mutex};

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    InspectContainerOptions, StartContainerOptions, StopContainerOptions,
};
use drkit_core::{Error, Result};

use super::volumes::ContainerRef;
use super::{engine_error, Engine};

/// Containers stopped for a volume job, restarted exactly once.
pub struct Stopper {
    engine: Engine,
    volume: String,
    /// Containers stopped and not yet restarted.
    pending: Arc<Mutex<Vec<ContainerRef>>>,
    /// Names of the containers that were stopped.
    pub stopped: Vec<String>,
}

impl Stopper {
    /// Stop the running containers among `users` (gracefully, `timeout_secs` before a
    /// kill); they are started again by [`Stopper::restart`] or when the stopper is dropped. `what` says why, for
    /// the messages (e.g. `the backup of volume app_db`).
    pub async fn stop(
        engine: &Engine,
        volume: &str,
        users: &[ContainerRef],
        timeout_secs: i32,
        what: &str,
    ) -> Result<Stopper> {
        let pending = Arc::new(Mutex::new(Vec::new()));
        let mut stopper = Stopper {
            engine: engine.clone(),
            volume: volume.into(),
            pending: pending.clone(),
            stopped: Vec::new(),
        };
        let running: Vec<&ContainerRef> = users.iter().filter(|c| c.running).collect();
        if running.is_empty() {
            return Ok(stopper);
        }
        for c in running {
            // Recorded before the call: a stop that half-happened is still restarted.
            pending.lock().expect("lock").push(c.clone());
            engine
                .api()
                .stop_container(
                    &c.id,
                    Some(StopContainerOptions {
                        t: Some(timeout_secs),
                        signal: None,
                    }),
                )
                .await
                .map_err(|e| {
                    engine_error(
                        e,
                        format!("stopping container {} (uses volume {volume})", c.name),
                    )
                })?;
            stopper.stopped.push(c.name.clone());
            eprintln!("drkit: stopped container {} for {what}", c.name);
        }
        Ok(stopper)
    }

    /// Start again every container this stopper stopped. Each failure names its container.
    /// Returns the names started.
    pub async fn restart(&mut self) -> Result<Vec<String>> {
        let todo = std::mem::take(&mut *self.pending.lock().expect("lock"));
        let (started, failures) = start_all(&self.engine, &todo).await;
        for name in &started {
            eprintln!("drkit: restarted container {name}");
        }
        if failures.is_empty() {
            Ok(started)
        } else {
            Err(Error::source_error(format!(
                "{} (volume {}); start it by hand: docker start {}",
                failures
                    .iter()
                    .map(|(n, e)| format!("container {n} could not be restarted: {e}"))
                    .collect::<Vec<_>>()
                    .join("; "),
                self.volume,
                failures
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )))
        }
    }
}

async fn start_all(engine: &Engine, todo: &[ContainerRef]) -> (Vec<String>, Vec<(String, String)>) {
    let mut started = Vec::new();
    let mut failures = Vec::new();
    for c in todo {
        match engine
            .api()
            .start_container(&c.id, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => started.push(c.name.clone()),
            Err(e) => failures.push((
                c.name.clone(),
                engine_error(e, "start")
                    .message()
                    .trim_start_matches("start: ")
                    .to_string(),
            )),
        }
    }
    (started, failures)
}

impl Drop for Stopper {
    fn drop(&mut self) {
        let todo = std::mem::take(&mut *self.pending.lock().expect("lock"));
        if todo.is_empty() {
            return;
        }
        // Dropped half-way (a failed or abandoned job): restart now, with a connection of
        // its own, so it happens even while the caller's runtime winds down.
        self.engine.blocking_cleanup(move |engine| async move {
            let (started, failures) = start_all(&engine, &todo).await;
            for n in started {
                eprintln!("drkit: restarted container {n} after the failed job");
            }
            for (n, e) in failures {
                eprintln!("drkit: container {n} could not be restarted: {e}; start it by hand: docker start {n}");
            }
        });
    }
}

/// The container `reference` names, as the engine resolves it for `docker rm`: a full id, a
/// unique id prefix, or a name (with or without its leading `/`). `None` when there is no
/// such container (the command fails on it by itself). An id prefix that several
/// containers share is a [`drkit_core::ErrorKind::Refused`] error: the guard cannot tell
/// which one is meant.
pub async fn resolve(engine: &Engine, reference: &str) -> Result<Option<ContainerRef>> {
    let r = reference.strip_prefix('/').unwrap_or(reference);
    // Names and ids are `[a-zA-Z0-9][a-zA-Z0-9_.-]*`: anything else names no container (and
    // must not reach the request path).
    if r.is_empty()
        || !r
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Ok(None);
    }
    match engine
        .api()
        .inspect_container(r, None::<InspectContainerOptions>)
        .await
    {
        Ok(c) => Ok(Some(from_inspect(c))),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 400,
            message,
        }) => Err(Error::refused(format!(
            "container {reference:?} is ambiguous on the engine at {} ({}): the guard cannot tell which container's volumes the command destroys, so nothing was run; name the container, or give more of its id",
            engine.host,
            super::one_line(&message)
        ))),
        Err(e) => Err(engine_error(e, format!("inspecting container {reference}"))),
    }
}

fn from_inspect(c: ContainerInspectResponse) -> ContainerRef {
    let labels = c
        .config
        .as_ref()
        .and_then(|cfg| cfg.labels.clone())
        .unwrap_or_default();
    ContainerRef {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        running: c
            .state
            .as_ref()
            .is_some_and(|s| s.running == Some(true) || s.restarting == Some(true)),
        project: labels.get(super::LABEL_PROJECT).cloned(),
        service: labels.get(super::LABEL_SERVICE).cloned(),
        volumes: c
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter(|m| matches!(m.typ, Some(bollard::models::MountPointTypeEnum::VOLUME)))
            .filter_map(|m| m.name)
            .collect(),
    }
}

/// The volumes `rm --volumes` removes with the containers `references` names (each found as
/// [`resolve`] finds it): their anonymous volumes. A reference that names no container adds
/// none (the command fails on it by itself).
pub async fn rm_volumes(engine: &Engine, references: &[String]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for r in references {
        if let Some(found) = resolve(engine, r).await? {
            names.extend(found.volumes);
        }
    }
    Ok(super::volumes::anonymous_among(engine, names).await)
}
