//! `drkit restore JOB [--id ID | --at TIME] [--to DEST] [--force] [--dry-run]`

use drkit_app::RestoreRequest;
use drkit_core::catalog::{self, Selector};
use drkit_core::{Exit, RestoreOptions, Result};
use serde_json::json;

use crate::ctx::Ctx;
use crate::output::human_bytes;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job whose backup to restore.
    job: String,
    /// Restore this backup (also a suspect one, with a warning). Default: the newest good
    /// backup.
    #[arg(long, conflicts_with = "at")]
    id: Option<String>,
    /// Restore the newest good backup that started at or before TIME (RFC 3339, or
    /// YYYY-MM-DD[ HH:MM[:SS]] in UTC).
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Restore somewhere else: a path, URL or volume, depending on the source.
    #[arg(long, value_name = "DEST")]
    to: Option<String>,
    /// Replace existing data (the driver keeps what it can aside).
    #[arg(long)]
    force: bool,
    /// Check everything (destination, checksums) and say what would happen; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Restore with N parallel workers where the source allows it (PostgreSQL: the archive
    /// is staged in a temp folder, then `pg_restore --jobs N`).
    #[arg(long, value_name = "N")]
    jobs: Option<u32>,
    /// Read from this storage only (default: the job's first storage that has the backup,
    /// then the next one holding the same backup when a copy fails its checksums).
    #[arg(long, value_name = "NAME")]
    storage: Option<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Exit> {
    let selector = match (&args.id, &args.at) {
        (Some(id), _) => Selector::Id(id.clone()),
        (None, Some(at)) => Selector::At(catalog::parse_time(at)?),
        (None, None) => Selector::Newest,
    };
    let request = RestoreRequest {
        selector,
        storage: args.storage.clone(),
        options: RestoreOptions {
            to: args.to.clone(),
            force: args.force,
            jobs: args.jobs,
            keys: None,
        },
        dry_run: args.dry_run,
    };
    let (progress, bar) = ctx.out.progress(&format!("restoring {}", args.job));
    let result = ctx.app.restore(&args.job, &request, progress).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let run = result?;
    ctx.out.info(format!(
        "{}: {} (from storage {})",
        args.job, run.chosen_because, run.storage
    ));
    if !run.skipped_suspect.is_empty() {
        ctx.out.warn(format!(
            "{}: skipped suspect backup(s) {} (restore one with --id, or `drkit accept`)",
            args.job,
            run.skipped_suspect.join(", ")
        ));
    }
    for w in &run.warnings {
        ctx.out.warn(format!("{}: {w}", args.job));
    }
    let outcome = &run.restore;
    let r = &outcome.report;
    if outcome.dry_run {
        ctx.out.text(format!(
            "dry run: would restore {}/{} to {}{}; checksums verified; nothing changed",
            outcome.job,
            outcome.id,
            r.destination,
            if r.replaces_existing {
                " (replacing what is there)"
            } else {
                ""
            }
        ));
    } else {
        let t = &outcome.timings;
        ctx.out.text(format!(
            "restored {}/{} to {}{} in {:.1}s ({} at {}/s, {})",
            outcome.job,
            outcome.id,
            r.destination,
            if r.stats_checked {
                "; counts match the manifest"
            } else {
                ""
            },
            t.total_ms as f64 / 1000.0,
            human_bytes(t.raw_bytes),
            human_bytes(t.rate()),
            if t.one_pass {
                "read once, verified as it streamed"
            } else {
                "verified first, then streamed"
            }
        ));
        if let Some(kept) = &r.kept_previous {
            ctx.out
                .text(format!("the previous data was kept at {kept}"));
        }
    }
    for n in &r.notes {
        ctx.out.info(n);
    }
    ctx.out.json_doc(
        &json!({"chosen_because": run.chosen_because, "storage": run.storage,
        "skipped_suspect": run.skipped_suspect, "warnings": run.warnings, "restore": outcome}),
    );
    Ok(Exit::Ok)
}
