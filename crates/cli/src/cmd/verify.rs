//! `drkit verify [JOB] [--id ID] [--all]`

use drkit_core::pipeline;
use drkit_core::{catalog, Error, ErrorKind, Result};
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

pub async fn run(ctx: &Ctx, args: Args) -> Result<u8> {
    let names: Vec<String> = args.job.iter().cloned().collect();
    let mut results = Vec::new();
    let mut worst: Option<Error> = None;
    for (name, job) in ctx.jobs(&names)? {
        let source = ctx.source(&name)?;
        for target in ctx.targets(job)? {
            let storage = target.storage.as_ref();
            let manifests = match &args.id {
                Some(id) => vec![catalog::load(storage, &name, id).await?],
                None => {
                    let all = catalog::list(storage, &name).await?;
                    if all.is_empty() {
                        let e = Error::not_found(format!(
                            "job {name} has no backup on storage {}",
                            target.name
                        ));
                        eprintln!("error: {e}");
                        results.push(json!({"job": name, "storage": target.name, "ok": false, "error": e.to_string()}));
                        worst.get_or_insert(e);
                        continue;
                    }
                    if args.all {
                        all
                    } else {
                        all.into_iter().take(1).collect()
                    }
                }
            };
            for m in manifests {
                let (progress, bar) = ctx.out.progress(&format!("{name} {}", m.id));
                let r = pipeline::verify(storage, &m, Some(source.as_ref()), progress).await;
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                match r {
                    Ok(rep) => {
                        ctx.out.text(format!(
                            "{name}: backup {} on {} OK ({} stored, {} raw, checksums{} match)",
                            m.id,
                            target.name,
                            human_bytes(rep.stored_size),
                            human_bytes(rep.raw_size),
                            if rep.structure_checked {
                                " and structure"
                            } else {
                                ""
                            }
                        ));
                        for w in &m.warnings {
                            ctx.out.warn(format!("{name}/{}: {w}", m.id));
                        }
                        results.push(json!({"job": name, "storage": target.name, "id": m.id, "ok": true, "report": rep}));
                    }
                    Err(e) => {
                        eprintln!(
                            "error: {name}: backup {} on {} FAILED: {e}",
                            m.id, target.name
                        );
                        results.push(
                            json!({"job": name, "storage": target.name, "id": m.id, "ok": false,
                            "error": {"kind": e.kind().as_str(), "message": e.to_string()}}),
                        );
                        if worst
                            .as_ref()
                            .is_none_or(|w| w.kind() != ErrorKind::Integrity)
                        {
                            worst = Some(e);
                        }
                    }
                }
            }
        }
    }
    ctx.out.json_doc(&json!(results));
    Ok(worst.map(|e| crate::exit_code(e.kind())).unwrap_or(0))
}
