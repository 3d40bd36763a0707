//! The daemon's runtime: it sleeps until [`Scheduler::next_wake`], starts what
//! [`Scheduler::due`] says as concurrent tasks, tells the scheduler when each ends, looks at
//! the storages every minute and after each task (for `/metrics`, `/healthz`, the metrics
//! file and the notifiers), takes a reloaded config between steps, and stops when the
//! process is told to ([`Drkit::stopped`]): running backups are cancelled (nothing of theirs
//! is committed: a manifest is written last), running drills remove their scratch copies.
//! The rules (what runs when) are `drkit_core::ops::daemon`'s; what a task does is
//! [`Drkit::run_task`]; how it is shown is the caller's [`Hooks`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use drkit_core::ops::daemon::{Note, Plan, Scheduler, Start, Task};
use drkit_core::{Exit, Result};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::{Drkit, TaskRun};

/// How often the daemon looks at the storages between tasks.
pub const LOOK_EVERY: Duration = Duration::from_secs(60);

/// How long running drills may take to remove their scratch copies after a stop.
pub const CLEANUP_TIME: Duration = Duration::from_secs(60);

/// What the daemon tells its caller (the CLI renders it).
pub trait Hooks: Send + Sync {
    /// A task starts.
    fn started(&self, start: &Start);
    /// A task ended after `took`.
    fn finished(&self, run: &TaskRun, took: Duration);
    /// The scheduler decided something worth a line (skipped slots, a retry).
    fn note(&self, note: &Note);
    /// Nothing runs; the next task is due at `at`: `tasks`.
    fn next(&self, at: DateTime<Utc>, tasks: &[Task]);
    /// A reloaded config: taken (`Ok`), or refused and the running one goes on (`Err`).
    fn reloaded(&self, result: &Result<()>);
    /// A warning (a look at the storages failed, the metrics file could not be written).
    fn warn(&self, message: String);
    /// The daemon stops: `cancelled` tasks were running.
    fn stopping(&self, cancelled: &[Task]);
}

/// How the daemon runs besides its config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Write the metrics file here after each look (`--metrics-file`).
    pub metrics_file: Option<PathBuf>,
}

/// Run the schedules of `app`'s config until the process is told to stop. `reloads` brings
/// configs read again (SIGHUP): one whose schedules are valid replaces the running one
/// between steps (running tasks go on); an invalid one is refused and the old one goes on.
/// Returns [`Exit::Ok`] when stopped.
pub async fn run(
    app: Drkit,
    mut reloads: mpsc::Receiver<Result<Drkit>>,
    hooks: &dyn Hooks,
    opts: Options,
) -> Result<Exit> {
    let mut app = app;
    let plan = Plan::of(app.config())?;
    look(&app, hooks, &opts).await;
    let last = app.last_runs(Utc::now()).await;
    let seed =
        u64::from(std::process::id()) ^ Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64;
    let mut sched = Scheduler::new(plan, Utc::now(), &|t| last.get(t).copied(), seed);
    let mut runs: JoinSet<(Task, TaskRun, Duration)> = JoinSet::new();
    // Each running task: its id in `runs`, what it is, how to cancel it.
    type Running = (tokio::task::Id, Task, tokio::task::AbortHandle);
    let mut handles: Vec<Running> = Vec::new();
    let mut next_look = Instant::now() + LOOK_EVERY;
    let mut told: Option<DateTime<Utc>> = None;
    loop {
        let (starts, notes) = sched.due(Utc::now());
        notes.iter().for_each(|n| hooks.note(n));
        for start in starts {
            hooks.started(&start);
            let app = app.clone();
            let task = start.task.clone();
            let handle = runs.spawn(async move {
                let t0 = Instant::now();
                let run = app
                    .run_task(&task, drkit_core::pipeline::no_progress())
                    .await;
                (task, run, t0.elapsed())
            });
            handles.push((handle.id(), start.task, handle));
        }
        let wake = sched.next_wake();
        if let Some(at) = wake.filter(|_| runs.is_empty() && wake != told) {
            hooks.next(at, &due_at(&sched, at));
            told = wake;
        }
        let until_wake = wake
            .map(|w| (w - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(LOOK_EVERY);
        let until_look = next_look.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = tokio::time::sleep(until_wake.min(until_look)) => {
                if Instant::now() >= next_look {
                    look(&app, hooks, &opts).await;
                    next_look = Instant::now() + LOOK_EVERY;
                }
            }
            Some(done) = runs.join_next_with_id(), if !runs.is_empty() => {
                let id = match &done {
                    Ok((id, _)) => *id,
                    Err(e) => e.id(),
                };
                let Some(at) = handles.iter().position(|(i, _, _)| *i == id) else { continue };
                let (_, task, _) = handles.remove(at);
                let retryable = match done {
                    Ok((_, (_, run, took))) => {
                        hooks.finished(&run, took);
                        run.exit() == Exit::Failed
                    }
                    Err(e) => {
                        hooks.warn(format!("daemon: {task} ended abnormally: {e}"));
                        true
                    }
                };
                for n in sched.finished(&task, Utc::now(), retryable) {
                    hooks.note(&n);
                }
                told = None;
                look(&app, hooks, &opts).await;
                next_look = Instant::now() + LOOK_EVERY;
            }
            Some(new) = reloads.recv() => {
                let taken = new.and_then(|new| Plan::of(new.config()).map(|p| (new, p)));
                match taken {
                    Ok((new, plan)) => {
                        sched.replace(plan, Utc::now());
                        app = new;
                        app.monitor.set_limits(app.job_limits());
                        told = None;
                        hooks.reloaded(&Ok(()));
                    }
                    Err(e) => hooks.reloaded(&Err(e)),
                }
            }
            _ = app.stopped() => break,
        }
    }
    // Stop: backups are cancelled at once; drills saw the same signal and clean up.
    let cancelled: Vec<Task> = handles.iter().map(|(_, t, _)| t.clone()).collect();
    hooks.stopping(&cancelled);
    for (_, task, handle) in &handles {
        if matches!(task, Task::Backup(_)) {
            handle.abort();
        }
    }
    let drain = async {
        while let Some(done) = runs.join_next().await {
            if let Ok((_, run, took)) = done {
                hooks.finished(&run, took);
            }
        }
    };
    if tokio::time::timeout(CLEANUP_TIME, drain).await.is_err() {
        hooks.warn(format!(
            "daemon: drills still running after {}s are abandoned; a later drill or doctor removes their scratch",
            CLEANUP_TIME.as_secs()
        ));
    }
    Ok(Exit::Ok)
}

/// The tasks whose next slot is `at` (what the "next run" line names).
fn due_at(sched: &Scheduler, at: DateTime<Utc>) -> Vec<Task> {
    let mut probe = sched.clone();
    let (starts, _) = probe.due(at);
    starts.into_iter().map(|s| s.task).collect()
}

/// Look at the storages again; tell what changed; write the metrics file.
async fn look(app: &Drkit, hooks: &dyn Hooks, opts: &Options) {
    if let Err(e) = app.look_again().await {
        hooks.warn(format!("daemon: cannot look at the storages: {e}"));
    }
    if let Some(path) = &opts.metrics_file {
        if let Err(e) = app.write_metrics_file(path).await {
            hooks.warn(e.to_string());
        }
    }
}
