//! `drkit backup [JOB...]`: exit 5 when a backup it wrote is suspect (after every job and
//! storage is done), 1 when a storage or job failed.

use std::time::Instant;

use drkit_core::{Exit, Result};
use serde_json::json;

use crate::ctx::Ctx;
use crate::render;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Jobs to back up (all when none).
    pub jobs: Vec<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Exit> {
    let jobs = ctx.app.jobs(&args.jobs)?;
    let mut results = Vec::new();
    let mut exit = Exit::Ok;
    for (name, _) in jobs {
        let started = Instant::now();
        let outcome = async {
            let source = ctx.app.source(&name).map_err(|e| e.context(&name))?;
            ctx.out
                .info(format!("{name}: backing up {} ...", source.describe()));
            let (progress, bar) = ctx.out.progress(&name);
            let r = ctx.app.backup(&name, progress).await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            r
        }
        .await;
        match outcome {
            Ok(o) => {
                results.push(render::backup(&ctx.out, &name, &o, started.elapsed()));
                exit.note(o.exit());
            }
            Err(e) => {
                ctx.out.record(crate::output::Record {
                    event: "backup.failed",
                    job: Some(&name),
                    duration: Some(started.elapsed()),
                    message: format!("{name}: backup failed: {e}"),
                    ..Default::default()
                });
                results.push(json!({"job": name, "ok": false, "error": render::error_json(&e)}));
                if args.jobs.len() == 1 && !ctx.out.json {
                    return Err(e);
                }
                if !ctx.out.json {
                    ctx.out.error(e.to_string());
                }
                exit.note(&e);
            }
        }
    }
    ctx.out.json_doc(&json!(results));
    Ok(exit)
}
