//! `drkit status [--max-age DURATION]`: freshness and health of each job's backups.
//! Exit 5 when a job has no backup, a stale one, or a suspect newest one; 1 when a storage
//! could not be read (the others are still shown). The rules: `drkit_core::ops::health`.

use chrono::Utc;
use drkit_core::ops::health;
use drkit_core::units::Span;
use drkit_core::{Exit, Result};
use serde_json::json;

use crate::ctx::Ctx;
use crate::render;

#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// Newest good backup older than this is stale (overrides each job's `max_age`; default 25h).
    #[arg(long, value_name = "DURATION")]
    max_age: Option<String>,
    /// Every job found in each storage of the config, whether or not this config names it
    /// (many hosts writing one bucket), with the host that wrote its newest backup.
    #[arg(long)]
    all_jobs: bool,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Exit> {
    let max_age = match &args.max_age {
        Some(text) => Some(
            text.parse::<Span>()
                .map_err(|e| e.context("--max-age"))?
                .duration(),
        ),
        None => None,
    };
    let report = if args.all_jobs {
        ctx.app.fleet(max_age, Utc::now()).await?
    } else {
        let r = ctx.app.status(max_age, Utc::now()).await?;
        ctx.app.report_health(&r).await;
        r
    };
    render::health_errors(&ctx.out, &report);
    if ctx.out.json {
        ctx.out.json_doc(&json!(report));
    } else if args.all_jobs {
        ctx.out.text(render::fleet_table(&report));
    } else {
        ctx.out.text(render::health_table(&report));
    }
    Ok(health::exit(&report))
}
