//! `drkit accept JOB ID --reason TEXT`: mark a suspect backup as good after a deliberate
//! purge (an `accepted.json` beside it; the manifest is never rewritten).

use chrono::Utc;
use drkit_core::ops::accept;
use drkit_core::Result;
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

pub async fn run(ctx: &Ctx, args: Args) -> Result<u8> {
    let job = ctx.config.job(&args.job)?;
    let targets = ctx.targets(job)?;
    let signer = ctx.signer(&args.job)?;
    let outcomes = accept::accept(
        &args.job,
        &args.id,
        &targets,
        &ctx.trust(&args.job)?,
        signer.as_deref(),
        &accept::current_user(),
        &args.reason,
        Utc::now(),
    )
    .await?;
    for o in &outcomes {
        ctx.out.text(format!(
            "{}/{} on {}: {}",
            args.job, args.id, o.storage, o.detail
        ));
    }
    ctx.out.json_doc(&json!(outcomes));
    Ok(0)
}
