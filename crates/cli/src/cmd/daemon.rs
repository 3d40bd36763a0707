//! `drkit daemon`: run each job's `schedule` (backup, then prune when it has a `keep`
//! policy) and `drill.schedule` until SIGTERM or SIGINT. One job runs at a time; a run that
//! fails is logged and the schedule goes on. What runs when: `drkit_core::ops::daemon`; what
//! a task does: `drkit_app::Drkit::run_task`.

use std::time::Instant;

use chrono::Utc;
use drkit_core::ops::daemon::Plan;
use drkit_core::{Exit, Result};

use crate::ctx::Ctx;
use crate::render;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(ctx: &Ctx, _args: Args) -> Result<Exit> {
    let plan = Plan::of(ctx.app.config())?;
    let mut after = Utc::now();
    loop {
        let (at, due) = plan.next(after)?;
        let names: Vec<String> = due.iter().map(ToString::to_string).collect();
        ctx.out.info(format!(
            "daemon: next run at {} ({})",
            at.to_rfc3339(),
            names.join(", ")
        ));
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
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
        after = at;
    }
}
