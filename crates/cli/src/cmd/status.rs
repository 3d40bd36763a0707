//! `drkit status [--max-age DURATION]`: freshness and health of each job's backups.
//! Exit 5 when a job has no backup, a stale one, or a suspect one.

use chrono::Utc;
use drkit_core::config::parse_duration;
use drkit_core::{catalog, Manifest, Result};
use serde_json::json;

use crate::ctx::Ctx;
use crate::output::{human_age, human_bytes, table};

/// Age after which the newest backup is stale when neither the job nor the flag says.
const DEFAULT_MAX_AGE: &str = "25h";

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Newest backup older than this is stale (overrides each job's `max_age`; default 25h).
    #[arg(long, value_name = "DURATION")]
    max_age: Option<String>,
}

/// Why the newest backup looks wrong even though it exists, compared with the one before.
pub fn suspicion(newest: &Manifest, previous: Option<&Manifest>) -> Option<String> {
    if newest.is_empty_source() {
        return Some("the newest backup holds no data (empty source)".into());
    }
    if let Some(prev) = previous {
        // A dump that shrank to a tenth is the "108-byte backup" of the incident reports.
        if prev.data.raw_size >= 4096 && newest.data.raw_size * 10 < prev.data.raw_size {
            return Some(format!(
                "the newest backup is {} raw, the one before was {}",
                human_bytes(newest.data.raw_size),
                human_bytes(prev.data.raw_size)
            ));
        }
    }
    None
}

/// The health table: human rows, JSON documents, and whether anything is wrong.
pub async fn health(
    ctx: &Ctx,
    max_age: Option<&str>,
) -> Result<(Vec<Vec<String>>, Vec<serde_json::Value>, bool)> {
    let now = Utc::now();
    let mut rows = Vec::new();
    let mut docs = Vec::new();
    let mut bad = false;
    for (name, job) in ctx.jobs(&[])? {
        let max_age_text = max_age
            .map(str::to_string)
            .or(job.max_age.clone())
            .unwrap_or(DEFAULT_MAX_AGE.into());
        let limit = parse_duration(&max_age_text)?;
        for target in ctx.targets(job)? {
            let (state, detail, newest) = match catalog::list(target.storage.as_ref(), &name).await
            {
                Err(e) => ("error", e.to_string(), None),
                Ok(all) => match all.first() {
                    None => ("missing", "no backup yet".to_string(), None),
                    Some(m) => {
                        let age = (now - m.started_at).num_seconds();
                        if (now - m.started_at).num_milliseconds() > limit.as_millis() as i64 {
                            (
                                "stale",
                                format!("newest is {} old (max {max_age_text})", human_age(age)),
                                Some(m.clone()),
                            )
                        } else if let Some(why) = suspicion(m, all.get(1)) {
                            ("suspect", why, Some(m.clone()))
                        } else {
                            (
                                "ok",
                                format!(
                                    "{} old, {} stored",
                                    human_age(age),
                                    human_bytes(m.data.stored_size)
                                ),
                                Some(m.clone()),
                            )
                        }
                    }
                },
            };
            bad |= state != "ok";
            rows.push(vec![
                name.clone(),
                target.name.clone(),
                state.to_uppercase(),
                detail.clone(),
            ]);
            docs.push(json!({"job": name, "storage": target.name, "state": state, "detail": detail,
                "newest": newest.map(|m| json!({"id": m.id, "started_at": m.started_at, "stored_size": m.data.stored_size}))}));
        }
    }
    Ok((rows, docs, bad))
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<u8> {
    let (rows, docs, bad) = health(ctx, args.max_age.as_deref()).await?;
    if ctx.out.json {
        ctx.out.json_doc(&json!(docs));
    } else {
        ctx.out
            .text(table(&["JOB", "STORAGE", "STATE", "DETAIL"], &rows));
    }
    Ok(if bad { 5 } else { 0 })
}
