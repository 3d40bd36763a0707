//! `drkit status [--max-age DURATION]`: freshness and health of each job's backups.
//! Exit 5 when a job has no backup, a stale one, or a suspect newest one; 1 when a storage
//! could not be read (the others are still shown).

use chrono::Utc;
use drkit_core::config::parse_duration;
use drkit_core::ops::health::{self, Health, JobHealth};
use drkit_core::Result;
use serde_json::json;

use crate::ctx::Ctx;

/// Age after which the newest good backup is stale when neither the job nor the flag says.
const DEFAULT_MAX_AGE: &str = "25h";

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Newest good backup older than this is stale (overrides each job's `max_age`; default 25h).
    #[arg(long, value_name = "DURATION")]
    max_age: Option<String>,
}

/// The health of every job on every storage.
pub async fn health(ctx: &Ctx, max_age: Option<&str>) -> Result<Vec<JobHealth>> {
    let now = Utc::now();
    let mut out = Vec::new();
    for (name, job) in ctx.jobs(&[])? {
        let text = max_age
            .map(str::to_string)
            .or(job.max_age.clone())
            .unwrap_or(DEFAULT_MAX_AGE.into());
        let limit = parse_duration(&text)?;
        let targets = ctx.targets(job)?;
        out.extend(health::health(&name, &targets, &ctx.trust(&name)?, now, limit).await);
    }
    Ok(out)
}

/// The table rows of a health report.
pub fn rows(report: &[JobHealth]) -> Vec<Vec<String>> {
    report
        .iter()
        .map(|h| {
            vec![
                h.job.clone(),
                h.storage.clone(),
                format!("{:?}", h.state).to_uppercase(),
                h.detail.clone(),
            ]
        })
        .collect()
}

/// The exit code of a health report: 1 when a storage failed, 5 when a backup is missing,
/// stale or suspect, else 0.
pub fn exit_code(report: &[JobHealth]) -> u8 {
    if report.iter().any(|h| h.state == Health::Error) {
        1
    } else if report.iter().any(|h| h.state.is_bad()) {
        5
    } else {
        0
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<u8> {
    let report = health(ctx, args.max_age.as_deref()).await?;
    for h in report.iter().filter(|h| h.state == Health::Error) {
        ctx.out.error(format!(
            "{}: storage {} could not be read: {}",
            h.job, h.storage, h.detail
        ));
    }
    if ctx.out.json {
        ctx.out.json_doc(&json!(report));
    } else {
        ctx.out.text(crate::output::table(
            &["JOB", "STORAGE", "STATE", "DETAIL"],
            &rows(&report),
        ));
    }
    Ok(exit_code(&report))
}
