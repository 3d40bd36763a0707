//! `drkit prune [JOB] [--dry-run]`: apply each job's `keep` policy on each of its storages.

use chrono::Utc;
use drkit_core::retention::{self, Candidate};
use drkit_core::{catalog, Result};
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
    for (name, job) in ctx.jobs(&names)? {
        let Some(policy) = &job.keep else {
            ctx.out
                .info(format!("{name}: no keep policy, keeping every backup"));
            continue;
        };
        for target in ctx.targets(job)? {
            let storage = target.storage.as_ref();
            let _lock = if args.dry_run {
                None
            } else {
                Some(storage.lock_job(&name).await?)
            };
            let backups = catalog::list(storage, &name).await?;
            let candidates: Vec<Candidate> = backups
                .iter()
                .map(|m| Candidate {
                    id: m.id.clone(),
                    started_at: m.started_at,
                })
                .collect();
            let decisions = retention::plan(&candidates, policy, now)?;
            for d in &decisions {
                let manifest_key = drkit_core::manifest::manifest_key(&name, &d.id);
                // A backup under object lock cannot be removed yet: skip it and say so. (The
                // manifest is written last, so its retention ends last.)
                let locked = if d.keep {
                    None
                } else {
                    storage.locked_until(&manifest_key).await?
                };
                let action = if d.keep {
                    "keep".to_string()
                } else if let Some(until) = locked {
                    let until = if until == chrono::DateTime::<Utc>::MAX_UTC {
                        "its legal hold is lifted".to_string()
                    } else {
                        until.format("%Y-%m-%d %H:%M:%SZ").to_string()
                    };
                    ctx.out.info(format!(
                        "{name}: backup {} on {} is under object lock until {until}: kept for now",
                        d.id, target.name
                    ));
                    format!("locked until {until}")
                } else if args.dry_run {
                    "would remove".to_string()
                } else {
                    // The manifest first: from then on the backup does not exist.
                    storage.delete(&manifest_key).await?;
                    for o in storage.list(&format!("{name}/{}/", d.id)).await? {
                        storage.delete(&o.key).await?;
                    }
                    "removed".to_string()
                };
                rows.push(vec![
                    name.clone(),
                    target.name.clone(),
                    d.id.clone(),
                    action.clone(),
                    d.reasons.join(", "),
                ]);
                docs.push(
                    json!({"job": name, "storage": target.name, "id": d.id, "keep": d.keep,
                    "action": action, "reasons": d.reasons}),
                );
            }
        }
    }
    if ctx.out.json {
        ctx.out.json_doc(&json!(docs));
    } else if !rows.is_empty() {
        ctx.out.text(table(
            &["JOB", "STORAGE", "ID", "ACTION", "KEPT BECAUSE"],
            &rows,
        ));
    }
    Ok(0)
}
