//! `drkit restore JOB [--id ID | --at TIME] [--to DEST] [--force] [--dry-run]`

use drkit_core::pipeline;
use drkit_core::{catalog, Error, ErrorKind, Manifest, RestoreOptions, Result};
use serde_json::json;

use crate::ctx::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The job whose backup to restore.
    job: String,
    /// Restore this backup.
    #[arg(long, conflicts_with = "at")]
    id: Option<String>,
    /// Restore the newest backup that started at or before TIME (RFC 3339, or
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
    /// Read from this storage (default: the job's first storage that has the backup).
    #[arg(long, value_name = "NAME")]
    storage: Option<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<u8> {
    let job = ctx.config.job(&args.job)?;
    let source = ctx.source(&args.job)?;
    let mut targets = ctx.targets(job)?;
    if let Some(name) = &args.storage {
        targets.retain(|t| &t.name == name);
        if targets.is_empty() {
            return Err(Error::config(format!(
                "job {} does not use storage {name:?}",
                args.job
            )));
        }
    }
    let at = args.at.as_deref().map(catalog::parse_time).transpose()?;

    // The first storage that has the wanted backup.
    let mut chosen: Option<(Manifest, String, usize)> = None;
    let mut last_err: Option<Error> = None;
    for (i, t) in targets.iter().enumerate() {
        let pick = async {
            match (&args.id, at) {
                (Some(id), _) => {
                    let m = catalog::load(t.storage.as_ref(), &args.job, id).await?;
                    Ok((m, format!("backup {id} as asked")))
                }
                (None, Some(at)) => {
                    let all = catalog::list(t.storage.as_ref(), &args.job).await?;
                    let (m, why) = catalog::choose_at(&all, at)?;
                    Ok((m.clone(), why))
                }
                (None, None) => {
                    let all = catalog::list(t.storage.as_ref(), &args.job).await?;
                    let m = all.into_iter().next().ok_or_else(|| {
                        Error::not_found(format!(
                            "job {} has no backup on storage {}",
                            args.job, t.name
                        ))
                    })?;
                    let why = format!("chose the newest backup {}", m.id);
                    Ok::<_, Error>((m, why))
                }
            }
        }
        .await;
        match pick {
            Ok((m, why)) => {
                chosen = Some((m, why, i));
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Storage) => {
                last_err = Some(e)
            }
            Err(e) => return Err(e),
        }
    }
    let Some((manifest, why, idx)) = chosen else {
        return Err(last_err.unwrap_or_else(|| Error::not_found("no backup found")));
    };
    let target = &targets[idx];
    ctx.out.info(format!(
        "{}: {why} (from storage {})",
        args.job, target.name
    ));

    let opts = RestoreOptions {
        to: args.to.clone(),
        force: args.force,
        jobs: args.jobs,
    };
    let (progress, bar) = ctx.out.progress(&format!("restoring {}", manifest.id));
    let result = pipeline::restore(
        target.storage.as_ref(),
        &manifest,
        source.as_ref(),
        &opts,
        args.dry_run,
        progress,
    )
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let outcome = result?;
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
        ctx.out.text(format!(
            "restored {}/{} to {}{}",
            outcome.job,
            outcome.id,
            r.destination,
            if r.stats_checked {
                "; counts match the manifest"
            } else {
                ""
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
    ctx.out
        .json_doc(&json!({"chosen_because": why, "storage": target.name, "restore": outcome}));
    Ok(0)
}
