//! `drkit rekey JOB [--id ID] [--dry-run]`: give the job's encrypted backups to its current
//! `encryption.recipients`, opening them with `--identity FILE` (or `identity_file`). Only the
//! age header changes; the manifest is rewritten last. Exit 1 when a backup failed.

use drkit_core::ops::rekey::Rekeyed;
use drkit_core::{Exit, Result};
use serde_json::json;

use crate::ctx::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job.
    job: String,
    /// Only this backup (default: every backup of the job).
    #[arg(long)]
    id: Option<String>,
    /// Check that each backup opens and say what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Exit> {
    let items = ctx
        .app
        .rekey(&args.job, args.id.as_deref(), args.dry_run)
        .await?;
    let mut exit = Exit::Ok;
    for i in &items {
        let what = format!("{}/{} on {}", args.job, i.id, i.storage);
        match &i.result {
            Rekeyed::Rekeyed { key } => ctx.out.text(format!("{what}: rekeyed ({key})")),
            Rekeyed::Would => ctx.out.text(format!("{what}: would be rekeyed")),
            Rekeyed::Already => ctx.out.text(format!("{what}: already encrypted to these recipients")),
            Rekeyed::Plain => ctx.out.text(format!("{what}: not encrypted, left as it is")),
            Rekeyed::Locked { until } => ctx.out.warn(format!(
                "{what}: under object lock until {until}: skipped (it stays readable with its old identity)"
            )),
            Rekeyed::Failed { error } => {
                exit.note(Exit::Failed);
                ctx.out.error(format!("{what}: {error}"));
            }
        }
    }
    ctx.out.json_doc(&json!(items));
    Ok(exit)
}
