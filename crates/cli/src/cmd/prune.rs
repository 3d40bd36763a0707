//! `drkit prune [JOB] [--dry-run]`: apply each job's `keep` policy on each of its storages
//! (the rules: `drkit_core::ops::prune`).

use chrono::Utc;
use drkit_core::ops::prune::{self, Action};
use drkit_core::Result;
use serde_json::json;

use crate::ctx::Ctx;
use crate::output::table;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this job.
    pub job: Option<String>,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<u8> {
    let names: Vec<String> = args.job.iter().cloned().collect();
    let now = Utc::now();
    let mut docs = Vec::new();
    let mut rows = Vec::new();
    let mut failed = false;
    for (name, job) in ctx.jobs(&names)? {
        let Some(policy) = &job.keep else {
            ctx.out
                .info(format!("{name}: no keep policy, keeping every backup"));
            continue;
        };
        let trust = ctx.trust(&name)?;
        for target in ctx.targets(job)? {
            let report = match prune::prune(&name, &target, policy, &trust, now, args.dry_run).await
            {
                Ok(r) => r,
                Err(e) => {
                    ctx.out
                        .error(format!("{name}: storage {}: {e}", target.name));
                    docs.push(json!({"job": name, "storage": target.name,
                            "error": {"kind": e.kind().as_str(), "message": e.to_string()}}));
                    failed = true;
                    continue;
                }
            };
            for item in &report.items {
                match &item.action {
                    Action::Locked { .. } => ctx.out.info(format!(
                        "{name}: backup {} on {} is under object lock until {}: kept for now",
                        item.id,
                        target.name,
                        item.action.label().trim_start_matches("locked until ")
                    )),
                    Action::Failed { error } => {
                        failed = true;
                        ctx.out.error(format!(
                            "{name}: removing backup {} from {} failed: {error}",
                            item.id, target.name
                        ));
                    }
                    _ => {}
                }
                rows.push(vec![
                    name.clone(),
                    target.name.clone(),
                    item.id.clone(),
                    item.state.label().to_string(),
                    item.action.label(),
                    item.reasons.join(", "),
                ]);
                docs.push(json!({"job": name, "storage": target.name, "id": item.id,
                    "state": item.state, "keep": item.keep, "action": item.action.label(),
                    "reasons": item.reasons}));
            }
            for b in &report.broken {
                ctx.out.warn(format!(
                    "{name}: {} on {} is broken ({}): left alone, never counted",
                    b.key, target.name, b.reason
                ));
                rows.push(vec![
                    name.clone(),
                    target.name.clone(),
                    b.id.clone(),
                    "BROKEN".into(),
                    "left alone".into(),
                    b.reason.clone(),
                ]);
                docs.push(json!({"job": name, "storage": target.name, "id": b.id,
                    "state": "broken", "keep": true, "action": "left alone", "reasons": [b.reason]}));
            }
        }
    }
    if ctx.out.json {
        ctx.out.json_doc(&json!(docs));
    } else if !rows.is_empty() {
        ctx.out.text(table(
            &["JOB", "STORAGE", "ID", "STATE", "ACTION", "WHY"],
            &rows,
        ));
    }
    Ok(if failed { 1 } else { 0 })
}
