//! `drkit accept JOB ID --reason TEXT`: mark a suspect backup as good after a deliberate
//! purge (an `accepted.json` beside it; the manifest is never rewritten).

use chrono::Utc;
use drkit_core::{Exit, Result};
use serde_json::json;

use crate::ctx::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job.
    job: String,
    /// The suspect backup to accept.
    id: String,
    /// Why the backup is right (kept in the record).
    #[arg(long)]
    reason: String,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Exit> {
    let outcomes = ctx
        .app
        .accept(&args.job, &args.id, &args.reason, Utc::now())
        .await?;
    for o in &outcomes {
        ctx.out.text(format!(
            "{}/{} on {}: {}",
            args.job, args.id, o.storage, o.detail
        ));
    }
    ctx.out.json_doc(&json!(outcomes));
    Ok(Exit::Ok)
}
