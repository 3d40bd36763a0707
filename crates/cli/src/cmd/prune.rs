//! `drkit prune [JOB] [--dry-run]`: apply each job's `keep` policy on each of its storages
//! (the rules: `drkit_core::ops::prune`).

use chrono::Utc;
use drkit_core::ops::prune::Action;
use drkit_core::{Exit, Result};
use serde_json::json;

use crate::ctx::Ctx;
use crate::output::table;
use crate::render;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this job.
    pub job: Option<String>,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Exit> {
    let names: Vec<String> = args.job.iter().cloned().collect();
    let now = Utc::now();
    let mut docs = Vec::new();
    let mut rows = Vec::new();
    let mut exit = Exit::Ok;
    for (name, _) in ctx.app.jobs(&names)? {
        let Some(prunes) = ctx.app.prune(&name, args.dry_run, now).await? else {
            ctx.out
                .info(format!("{name}: no keep policy, keeping every backup"));
            continue;
        };
        for p in prunes {
            exit.note(p.exit());
            let report = match p.result {
                Ok(r) => r,
                Err(e) => {
                    ctx.out.error(format!("{name}: storage {}: {e}", p.storage));
                    docs.push(json!({"job": name, "storage": p.storage,
                            "error": render::error_json(&e)}));
                    continue;
                }
            };
            if !report.cleaned.is_empty() {
                ctx.out.info(format!(
                    "{name}: removed {} leftover(s) of crashed runs or failed removals from {}",
                    report.cleaned.len(),
                    p.storage
                ));
            }
            for item in &report.items {
                match &item.action {
                    Action::Locked { .. } => ctx.out.info(format!(
                        "{name}: backup {} on {} is under object lock until {}: kept for now",
                        item.id,
                        p.storage,
                        item.action.label().trim_start_matches("locked until ")
                    )),
                    Action::Failed { error } => {
                        ctx.out.error(format!(
                            "{name}: removing backup {} from {} failed: {error}",
                            item.id, p.storage
                        ));
                    }
                    _ => {}
                }
                rows.push(vec![
                    name.clone(),
                    p.storage.clone(),
                    item.id.clone(),
                    item.state.label().to_string(),
                    item.action.label(),
                    item.reasons.join(", "),
                ]);
                docs.push(json!({"job": name, "storage": p.storage, "id": item.id,
                    "state": item.state, "keep": item.keep, "action": item.action.label(),
                    "reasons": item.reasons}));
            }
            for b in &report.broken {
                ctx.out.warn(format!(
                    "{name}: {} on {} is broken ({}): left alone, never counted",
                    b.key, p.storage, b.reason
                ));
                rows.push(vec![
                    name.clone(),
                    p.storage.clone(),
                    b.id.clone(),
                    "BROKEN".into(),
                    "left alone".into(),
                    b.reason.clone(),
                ]);
                docs.push(json!({"job": name, "storage": p.storage, "id": b.id,
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
    Ok(exit)
}
