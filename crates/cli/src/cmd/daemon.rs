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
async fn look(ctx: &Ctx) {
    if let Err(e) = ctx.app.look_again().await {
        ctx.out
            .warn(format!("daemon: cannot look at the storages: {e}"));
    }
    if let Some(path) = &ctx.metrics_file {
        if let Err(e) = ctx.app.write_metrics_file(path).await {
            ctx.out.warn(e.to_string());
        }
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Exit> {
    let plan = Plan::of(ctx.app.config())?;
    let listener = match &args.listen {
        Some(addr) => Some(drkit_app::monitor::bind(addr).await?),
        None => None,
    };
    look(ctx).await;
    if let Some(listener) = listener {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tokio::spawn(drkit_app::monitor::serve(
            listener,
            ctx.app.monitor(),
            ctx.app.job_limits(),
        ));
        ctx.out.info(format!(
            "daemon: serving /metrics and /healthz on http://{addr}"
        ));
    }
    let mut next_look = Instant::now() + LOOK_EVERY;
    let mut after = Utc::now();
    loop {
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
            if wait <= to_look {
                tokio::time::sleep(wait).await;
                break;
            }
            tokio::time::sleep(to_look).await;
            look(ctx).await;
            next_look = Instant::now() + LOOK_EVERY;
        }
        for task in &due {
            let started = Instant::now();
            let run = ctx
                .app
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
        look(ctx).await;
        next_look = Instant::now() + LOOK_EVERY;
        after = at;
    }
}
