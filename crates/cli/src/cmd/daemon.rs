//! `drkit daemon`: run each job's `schedule` (backup, then prune when it has a `keep`
//! policy) and `drill.schedule` until SIGTERM or SIGINT; SIGHUP reads the config again. The
//! rules (time zones, catch-up, overruns, retries, jitter, `max_parallel`) are
//! `drkit_core::ops::daemon`'s, the runtime is `drkit_app::daemon`; this command parses,
//! listens for SIGHUP, serves `--listen` and renders.

use std::time::Duration;

use chrono::{DateTime, Utc};
use drkit_app::daemon::{Hooks, Options};
use drkit_app::TaskRun;
use drkit_core::ops::daemon::{Note, Start, Task, Why};
use drkit_core::{Exit, Result};

use crate::ctx::Ctx;
use crate::output::Output;
use crate::render;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Serve GET /metrics (Prometheus) and GET /healthz on this address, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

/// The daemon's lines, on stderr (with timestamps: crates/cli/src/log.rs).
struct Lines<'a> {
    out: &'a Output,
    config: String,
}

impl Hooks for Lines<'_> {
    fn started(&self, start: &Start) {
        let why = match &start.why {
            Why::Slot(at) => format!("its slot of {}", at.to_rfc3339()),
            Why::CatchUp { missed, newest } => format!(
                "catch-up: its slot of {} was missed ({})",
                missed.to_rfc3339(),
                match newest {
                    Some(t) => format!("the newest run started {}", t.to_rfc3339()),
                    None => "it never ran".to_string(),
                }
            ),
            Why::Retry { attempt } => format!("retry {attempt}"),
        };
        self.out
            .info(format!("daemon: {} starts ({why})", start.task));
    }

    fn finished(&self, run: &TaskRun, took: Duration) {
        let task = &run.task;
        let job = task.job();
        match &run.backup {
            Some(Ok(o)) => {
                render::backup(self.out, job, o, took);
            }
            Some(Err(e)) => self.out.error(format!("{job}: backup: {e}")),
            None => {}
        }
        match &run.prune {
            Some(Ok(prunes)) => {
                for p in prunes {
                    match &p.result {
                        Ok(r) => {
                            let removed = r.items.iter().filter(|i| !i.keep).count();
                            for i in &r.items {
                                if let drkit_core::ops::prune::Action::Failed { error } = &i.action
                                {
                                    self.out.error(format!(
                                        "{job}: removing backup {} from {} failed: {error}",
                                        i.id, p.storage
                                    ));
                                }
                            }
                            if removed > 0 {
                                self.out.info(format!(
                                    "{job}: prune on {}: {removed} backup(s) past the keep policy",
                                    p.storage
                                ));
                            }
                        }
                        Err(e) => self
                            .out
                            .error(format!("{job}: prune on {}: {e}", p.storage)),
                    }
                }
            }
            Some(Err(e)) => self.out.error(format!("{job}: prune: {e}")),
            None => {}
        }
        match &run.drill {
            Some(Ok(runs)) => runs.iter().for_each(|r| {
                render::drill(self.out, r);
            }),
            Some(Err(e)) => self.out.error(format!("{job}: drill: {e}")),
            None => {}
        }
        let exit = run.exit();
        if exit != Exit::Ok {
            self.out.warn(format!(
                "daemon: {task} ended with exit code {}; the schedule goes on",
                exit.code()
            ));
        }
    }

    fn note(&self, note: &Note) {
        match note {
            Note::Skipped { task, count } => self.out.warn(format!(
                "daemon: {task}: {count} slot(s) came while it ran or waited and were skipped"
            )),
            Note::Retry { task, attempt, at } => self.out.info(format!(
                "daemon: {task} failed; retry {attempt} at {}",
                at.to_rfc3339()
            )),
            Note::NoRetry {
                task,
                attempts,
                next_slot,
            } => match next_slot {
                Some(slot) => self.out.warn(format!(
                    "daemon: {task} failed; not retried, its next slot {} comes first",
                    slot.to_rfc3339()
                )),
                None => self.out.error(format!(
                    "daemon: {task} failed after {attempts} retries; next try at its next slot"
                )),
            },
        }
    }

    fn next(&self, at: DateTime<Utc>, tasks: &[Task]) {
        let names: Vec<String> = tasks.iter().map(ToString::to_string).collect();
        self.out.info(format!(
            "daemon: next run at {} ({})",
            at.to_rfc3339(),
            names.join(", ")
        ));
    }

    fn reloaded(&self, result: &Result<()>) {
        match result {
            Ok(()) => self
                .out
                .info(format!("daemon: SIGHUP: reloaded {}", self.config)),
            Err(e) => self.out.error(format!(
                "daemon: SIGHUP: the new config is not used, the running one goes on: {e}"
            )),
        }
    }

    fn warn(&self, message: String) {
        self.out.warn(message);
    }

    fn stopping(&self, cancelled: &[Task]) {
        for task in cancelled {
            match task {
                Task::Backup(_) => self.out.warn(format!(
                    "daemon: stopping: {task} is cancelled; nothing of it is committed"
                )),
                Task::Drill(_) => self.out.warn(format!(
                    "daemon: stopping: {task} is stopped and removes its scratch copy"
                )),
            }
        }
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Exit> {
    let app = ctx.app.clone();
    // The schedules are checked before anything is served.
    drkit_core::ops::daemon::Plan::of(app.config())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| drkit_core::Error::config(format!("cannot listen for SIGHUP: {e}")))?;
    if let Some(addr) = &args.listen {
        let listener = drkit_app::monitor::bind(addr).await?;
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tokio::spawn(drkit_app::monitor::serve(listener, app.monitor()));
        ctx.out.info(format!(
            "daemon: serving /metrics and /healthz on http://{addr}"
        ));
    }
    // SIGHUP: read the config again; the runtime takes it between steps.
    let (reload, reloads) = tokio::sync::mpsc::channel(4);
    let reader = app.clone();
    let env_files = ctx.env_files.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            if reload.send(reader.reloaded(&env_files)).await.is_err() {
                break;
            }
        }
    });
    let lines = Lines {
        out: &ctx.out,
        config: ctx.config_path.display().to_string(),
    };
    let opts = Options {
        metrics_file: ctx.metrics_file.clone(),
    };
    drkit_app::daemon::run(app, reloads, &lines, opts).await
}
