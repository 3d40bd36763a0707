//! `drkit daemon`: run each job's `schedule` (backup, then prune when it has a `keep`
//! policy) and `drill.schedule` until SIGTERM or SIGINT. One job runs at a time; a run that
//! fails is logged and the schedule goes on.

use chrono::Utc;
use drkit_core::schedule::{next_due, Schedule};
use drkit_core::{Error, Result};

use crate::ctx::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {}

#[derive(Debug, Clone)]
enum Task {
    Backup(String),
    Drill(String),
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Task::Backup(job) => write!(f, "backup {job}"),
            Task::Drill(job) => write!(f, "drill {job}"),
        }
    }
}

pub async fn run(ctx: &Ctx, _args: Args) -> Result<u8> {
    let mut schedules = Vec::new();
    let mut tasks = Vec::new();
    for (name, job) in &ctx.config.job {
        if let Some(expr) = &job.schedule {
            schedules.push(Schedule::parse(expr)?);
            tasks.push(Task::Backup(name.clone()));
        }
        if let Some(expr) = job.drill.as_ref().and_then(|d| d.schedule.as_ref()) {
            schedules.push(Schedule::parse(expr)?);
            tasks.push(Task::Drill(name.clone()));
        }
    }
    if schedules.is_empty() {
        return Err(Error::config(
            "no job has a schedule: add `schedule = \"0 2 * * *\"` to a job",
        ));
    }
    let mut after = Utc::now();
    loop {
        let Some((at, due)) = next_due(&schedules, after) else {
            return Err(Error::config("no schedule runs again"));
        };
        let names: Vec<String> = due.iter().map(|&i| tasks[i].to_string()).collect();
        ctx.out.info(format!(
            "daemon: next run at {} ({})",
            at.to_rfc3339(),
            names.join(", ")
        ));
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        for &i in &due {
            let code = match &tasks[i] {
                Task::Backup(job) => {
                    let a = super::backup::Args {
                        jobs: vec![job.clone()],
                    };
                    let mut code = log_result(job, "backup", super::backup::run(ctx, a).await);
                    if code == 0 && ctx.config.job[job].keep.is_some() {
                        let p = super::prune::Args {
                            job: Some(job.clone()),
                            dry_run: false,
                        };
                        code = log_result(job, "prune", super::prune::run(ctx, p).await);
                    }
                    code
                }
                Task::Drill(job) => {
                    let a = super::drill::Args {
                        jobs: vec![job.clone()],
                    };
                    log_result(job, "drill", super::drill::run(ctx, a).await)
                }
            };
            if code != 0 {
                eprintln!(
                    "daemon: {:?} ended with exit code {code}; the schedule goes on",
                    tasks[i]
                );
            }
        }
        after = at;
    }
}

fn log_result(job: &str, what: &str, r: Result<u8>) -> u8 {
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {job}: {what}: {e}");
            crate::exit_code(e.kind())
        }
    }
}
