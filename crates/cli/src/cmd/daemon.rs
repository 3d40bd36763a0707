//! `drkit daemon`: run each job's `schedule` (backup, then prune when it has a `keep`
//! policy) and `drill.schedule` until SIGTERM or SIGINT. One job runs at a time; a run that
//! fails is logged and the schedule goes on. What runs when: `drkit_core::ops::daemon`; what
//! a task does: `drkit_app::Drkit::run_task`. Every minute, and after each task, it looks at
//! the storages again: for `--listen`'s `/metrics` and `/healthz`, for `--metrics-file`,
//! and to tell the notifiers about jobs that turned stale, suspect or failed.

use std::time::{Duration, Instant};

use chrono::Utc;
use drkit_core::ops::daemon::Plan;
use drkit_core::{Exit, Result};

use drkit_app::Drkit;

use crate::ctx::Ctx;
use crate::render;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Serve GET /metrics (Prometheus) and GET /healthz on this address, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

/// How often the daemon looks at the storages between tasks.
const LOOK_EVERY: Duration = Duration::from_secs(60);

/// Look at the storages again; tell what changed; write the metrics file.
async fn look(ctx: &Ctx, app: &Drkit) {
    if let Err(e) = app.look_again().await {
        ctx.out
            .warn(format!("daemon: cannot look at the storages: {e}"));
    }
    if let Some(path) = &ctx.metrics_file {
        if let Err(e) = app.write_metrics_file(path).await {
            ctx.out.warn(e.to_string());
        }
    }
}

/// SIGHUP: read the config again. A valid one replaces the running one (and its plan); an
/// invalid one is logged and the old one keeps running.
fn reload(ctx: &Ctx, app: &mut Drkit, plan: &mut Plan) {
    let new = app
        .reloaded(&ctx.env_files)
        .and_then(|new| Plan::of(new.config()).map(|p| (new, p)));
    match new {
        Ok((new, p)) => {
            *app = new;
            *plan = p;
            ctx.out.info(format!(
                "daemon: SIGHUP: reloaded {}",
                ctx.config_path.display()
            ));
        }
        Err(e) => ctx.out.error(format!(
            "daemon: SIGHUP: the new config is not used, the running one goes on: {e}"
        )),
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Exit> {
    let mut app = ctx.app.clone();
    let mut plan = Plan::of(app.config())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| drkit_core::Error::config(format!("cannot listen for SIGHUP: {e}")))?;
    let listener = match &args.listen {
        Some(addr) => Some(drkit_app::monitor::bind(addr).await?),
        None => None,
    };
    look(ctx, &app).await;
    if let Some(listener) = listener {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tokio::spawn(drkit_app::monitor::serve(
            listener,
            app.monitor(),
            app.job_limits(),
        ));
        ctx.out.info(format!(
            "daemon: serving /metrics and /healthz on http://{addr}"
        ));
    }
    let mut next_look = Instant::now() + LOOK_EVERY;
    let mut after = Utc::now();
    'plan: loop {
        let (at, due) = plan.next(after)?;
        let names: Vec<String> = due.iter().map(ToString::to_string).collect();
        ctx.out.info(format!(
            "daemon: next run at {} ({})",
            at.to_rfc3339(),
            names.join(", ")
        ));
        loop {
            let wait = (at - Utc::now()).to_std().unwrap_or_default();
            let to_look = next_look.saturating_duration_since(Instant::now());
            tokio::select! {
                _ = tokio::time::sleep(wait.min(to_look)) => {}
                _ = hangup.recv() => {
                    reload(ctx, &mut app, &mut plan);
                    after = Utc::now();
                    continue 'plan;
                }
            }
            if wait <= to_look {
                break;
            }
            look(ctx, &app).await;
            next_look = Instant::now() + LOOK_EVERY;
        }
        for task in &due {
            let started = Instant::now();
            let run = app
                .run_task(task, drkit_core::pipeline::no_progress())
                .await;
            let job = task.job();
            match &run.backup {
                Some(Ok(o)) => {
                    render::backup(&ctx.out, job, o, started.elapsed());
                }
                Some(Err(e)) => ctx.out.error(format!("{job}: backup: {e}")),
                None => {}
            }
            match &run.prune {
                Some(Ok(prunes)) => {
                    for p in prunes {
                        match &p.result {
                            Ok(r) => {
                                let removed = r.items.iter().filter(|i| !i.keep).count();
                                for i in &r.items {
                                    if let drkit_core::ops::prune::Action::Failed { error } =
                                        &i.action
                                    {
                                        ctx.out.error(format!(
                                            "{job}: removing backup {} from {} failed: {error}",
                                            i.id, p.storage
                                        ));
                                    }
                                }
                                if removed > 0 {
                                    ctx.out.info(format!(
                                        "{job}: prune on {}: {removed} backup(s) past the keep policy",
                                        p.storage
                                    ));
                                }
                            }
                            Err(e) => ctx.out.error(format!("{job}: prune on {}: {e}", p.storage)),
                        }
                    }
                }
                Some(Err(e)) => ctx.out.error(format!("{job}: prune: {e}")),
                None => {}
            }
            match &run.drill {
                Some(Ok(runs)) => runs.iter().for_each(|r| {
                    render::drill(&ctx.out, r);
                }),
                Some(Err(e)) => ctx.out.error(format!("{job}: drill: {e}")),
                None => {}
            }
            let exit = run.exit();
            if exit != Exit::Ok {
                ctx.out.warn(format!(
                    "daemon: {task} ended with exit code {}; the schedule goes on",
                    exit.code()
                ));
            }
        }
        look(ctx, &app).await;
        next_look = Instant::now() + LOOK_EVERY;
        after = at;
    }
}
