//! `drkit list [JOB]`

use chrono::Utc;
use drkit_core::manifest::format_time;
use drkit_core::{catalog, Result};
use serde_json::Value;

use crate::ctx::Ctx;
use crate::output::{human_age, human_bytes, table};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this job.
    job: Option<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<u8> {
    let names: Vec<String> = args.job.into_iter().collect();
    let now = Utc::now();
    let mut docs: Vec<Value> = Vec::new();
    let mut rows = Vec::new();
    for (name, job) in ctx.jobs(&names)? {
        for target in ctx.targets(job)? {
            for m in catalog::list(target.storage.as_ref(), &name).await? {
                rows.push(vec![
                    name.clone(),
                    m.id.clone(),
                    format_time(&m.started_at),
                    human_age((now - m.started_at).num_seconds()),
                    human_bytes(m.data.raw_size),
                    human_bytes(m.data.stored_size),
                    target.name.clone(),
                    if m.warnings.is_empty() {
                        String::new()
                    } else {
                        m.warnings.join("; ")
                    },
                ]);
                let mut doc = serde_json::to_value(&m).expect("manifest serializes");
                doc["storage"] = Value::String(target.name.clone());
                docs.push(doc);
            }
        }
    }
    if ctx.out.json {
        ctx.out.json_doc(&Value::Array(docs));
    } else if rows.is_empty() {
        ctx.out.text("no backups yet");
    } else {
        ctx.out.text(table(
            &[
                "JOB", "ID", "STARTED", "AGE", "RAW", "STORED", "STORAGE", "WARNINGS",
            ],
            &rows,
        ));
    }
    Ok(0)
}
