//! `drkit drill [JOB...]`: restore the newest good backup into a scratch place, check it
//! against the manifest, clean up, and keep a report in the storage
//! (`<job>/drills/<time>-<rand>.json`). The rules: `drkit_core::ops::drill`.

use drkit_core::{Exit, Result};
use serde_json::json;

use crate::ctx::Ctx;
use crate::render;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Jobs to drill (all when none).
    pub jobs: Vec<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Exit> {
    let mut docs = Vec::new();
    let mut exit = Exit::Ok;
    for (name, _) in ctx.app.jobs(&args.jobs)? {
        ctx.out
            .info(format!("{name}: drilling the newest good backup ..."));
        let (progress, bar) = ctx.out.progress(&format!("drilling {name}"));
        let runs = ctx.app.drill(&name, progress).await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        for run in runs? {
            docs.push(render::drill(&ctx.out, &run));
            exit.note(run.exit());
        }
    }
    ctx.out.json_doc(&json!(docs));
    Ok(exit)
}
