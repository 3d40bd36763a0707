//! `drkit verify [JOB] [--id ID] [--all]`: re-read backups from storage and check both
//! checksums and the structure (what a restore would refuse, verify refuses). Broken catalog
//! entries are failures too (exit 4); a storage that cannot be read is one error line and
//! exit 1 at the end, the others are still verified.

use drkit_core::catalog::{self, Entry};
use drkit_core::{pipeline, Error, ErrorKind, Result};
use serde_json::json;

use crate::ctx::Ctx;
use crate::output::human_bytes;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this job (all jobs when omitted).
    job: Option<String>,
    /// Verify this backup (needs JOB).
    #[arg(long, requires = "job", conflicts_with = "all")]
    id: Option<String>,
    /// Verify every backup, not only the newest of each job.
    #[arg(long)]
    all: bool,
}

/// Keep the worst error: integrity first.
fn note(worst: &mut Option<Error>, e: Error) {
    if worst
        .as_ref()
        .is_none_or(|w| w.kind() != ErrorKind::Integrity)
    {
        *worst = Some(e);
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<u8> {
    let names: Vec<String> = args.job.iter().cloned().collect();
    let mut results = Vec::new();
    let mut worst: Option<Error> = None;
    for (name, job) in ctx.jobs(&names)? {
        let source = ctx.source(&name)?;
        let trust = ctx.trust(&name)?;
        for target in ctx.targets(job)? {
            let storage = target.storage.as_ref();
            let entries: Vec<Entry> = match &args.id {
                Some(id) => match catalog::load(storage, &name, id, &trust).await {
                    Ok(e) => vec![e],
                    Err(e) if e.kind() == ErrorKind::NotFound && args.job.is_some() => {
                        ctx.out.error(format!("{name}: {e}"));
                        results.push(
                            json!({"job": name, "storage": target.name, "id": id, "ok": false,
                            "error": {"kind": e.kind().as_str(), "message": e.to_string()}}),
                        );
                        note(&mut worst, e);
                        continue;
                    }
                    Err(e) => {
                        ctx.out.error(format!(
                            "{name}: backup {id} on {} FAILED: {e}",
                            target.name
                        ));
                        results.push(
                            json!({"job": name, "storage": target.name, "id": id, "ok": false,
                            "error": {"kind": e.kind().as_str(), "message": e.to_string()}}),
                        );
                        note(&mut worst, e);
                        continue;
                    }
                },
                None => {
                    let listing = match catalog::scan(storage, &name, &trust).await {
                        Ok(l) => l,
                        Err(e) => {
                            ctx.out.error(format!(
                                "{name}: storage {} could not be read: {e}",
                                target.name
                            ));
                            results.push(json!({"job": name, "storage": target.name, "ok": false,
                                "error": {"kind": e.kind().as_str(), "message": e.to_string()}}));
                            note(&mut worst, e);
                            continue;
                        }
                    };
                    for b in &listing.broken {
                        let e = catalog::broken_error(&name, b);
                        ctx.out.error(format!("{name}: on {}: {e}", target.name));
                        results.push(
                            json!({"job": name, "storage": target.name, "id": b.id, "ok": false,
                            "error": {"kind": e.kind().as_str(), "message": e.to_string()}}),
                        );
                        note(&mut worst, e);
                    }
                    if listing.backups.is_empty() {
                        let e = Error::not_found(format!(
                            "job {name} has no backup on storage {}",
                            target.name
                        ));
                        ctx.out.error(e.to_string());
                        results.push(json!({"job": name, "storage": target.name, "ok": false, "error": e.to_string()}));
                        note(&mut worst, e);
                        continue;
                    }
                    if args.all {
                        listing.backups
                    } else {
                        listing.backups.into_iter().take(1).collect()
                    }
                }
            };
            for entry in entries {
                let m = &entry.manifest;
                let (progress, bar) = ctx.out.progress(&format!("{name} {}", m.id));
                let r = pipeline::verify(storage, m, Some(source.as_ref()), progress).await;
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                match r {
                    Ok(rep) => {
                        ctx.out.text(format!(
                            "{name}: backup {} on {} OK ({} stored, {} raw, checksums{} match){}",
                            m.id,
                            target.name,
                            human_bytes(rep.stored_size),
                            human_bytes(rep.raw_size),
                            if rep.structure_checked {
                                " and structure"
                            } else {
                                ""
                            },
                            if entry.is_good() {
                                ""
                            } else {
                                "; it is SUSPECT"
                            }
                        ));
                        for w in m.warnings.iter().chain(m.suspect_reasons()) {
                            ctx.out.warn(format!("{name}/{}: {w}", m.id));
                        }
                        results.push(
                            json!({"job": name, "storage": target.name, "id": m.id, "ok": true,
                            "state": entry.state(), "report": rep}),
                        );
                    }
                    Err(e) => {
                        ctx.out.error(format!(
                            "{name}: backup {} on {} FAILED: {e}",
                            m.id, target.name
                        ));
                        results.push(
                            json!({"job": name, "storage": target.name, "id": m.id, "ok": false,
                            "error": {"kind": e.kind().as_str(), "message": e.to_string()}}),
                        );
                        note(&mut worst, e);
                    }
                }
            }
        }
    }
    ctx.out.json_doc(&json!(results));
    Ok(worst.map(|e| crate::exit_code(e.kind())).unwrap_or(0))
}
