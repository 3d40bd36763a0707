//! `drkit backup [JOB...]`: exit 5 when a backup it wrote is suspect (after every job and
//! storage is done), 1 when a storage or job failed.

use std::time::Instant;

use drkit_core::pipeline::{self, BackupOptions};
use drkit_core::{Error, Result};
use serde_json::json;

use crate::ctx::Ctx;
use crate::output::human_bytes;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Jobs to back up (all when none).
    pub jobs: Vec<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<u8> {
    let jobs = ctx.jobs(&args.jobs)?;
    let mut results = Vec::new();
    let mut first_error: Option<Error> = None;
    let mut partial = false;
    let mut suspect = false;
    for (name, job) in jobs {
        let started = Instant::now();
        let outcome = async {
            let source = ctx.source(&name)?;
            let targets = ctx.targets(job)?;
            ctx.out
                .info(format!("{name}: backing up {} ...", source.describe()));
            let opts = BackupOptions {
                compression: job.compression,
                level: job.compression_level,
                suspect: job.suspect.clone(),
                signer: ctx.signer(&name)?,
                trust: ctx.trust(&name)?,
            };
            let (progress, bar) = ctx.out.progress(&name);
            let r = pipeline::backup(&name, source.as_ref(), &targets, &opts, progress).await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            r
        }
        .await;
        match outcome {
            Ok(o) => {
                let m = &o.manifest;
                for s in &o.storages {
                    for key in &s.cleaned {
                        ctx.out
                            .detail(format!("{name}: removed leftover {key} from {}", s.storage));
                    }
                    if !s.cleaned.is_empty() {
                        ctx.out.info(format!(
                            "{name}: removed {} leftover(s) of crashed runs from {}",
                            s.cleaned.len(),
                            s.storage
                        ));
                    }
                }
                let ok: Vec<&str> = o
                    .storages
                    .iter()
                    .filter(|s| s.ok)
                    .map(|s| s.storage.as_str())
                    .collect();
                ctx.out.text(format!(
                    "{name}: backup {} written to {} ({} raw, {} stored, {:.1}s)",
                    m.id,
                    ok.join(", "),
                    human_bytes(m.data.raw_size),
                    human_bytes(m.data.stored_size),
                    started.elapsed().as_secs_f64()
                ));
                for w in &m.warnings {
                    ctx.out.warn(format!("{name}: {w}"));
                }
                for s in &o.storages {
                    for n in &s.notes {
                        ctx.out.warn(format!("{name}: storage {}: {n}", s.storage));
                    }
                }
                if o.is_suspect() {
                    suspect = true;
                    ctx.out.warn(format!(
                        "{name}: backup {} is SUSPECT: {}. It is kept, but retention, restore and drill do not count it as good; if the shrink is real, run `drkit accept {name} {} --reason \"...\"`",
                        m.id,
                        m.suspect_reasons().join("; "),
                        m.id
                    ));
                }
                for s in o.storages.iter().filter(|s| !s.ok) {
                    partial = true;
                    ctx.out.error(format!(
                        "{name}: storage {} failed: {}",
                        s.storage,
                        s.error.as_deref().unwrap_or("unknown error")
                    ));
                }
                results.push(
                    json!({"job": name, "ok": o.all_ok(), "suspect": o.is_suspect(), "manifest": m, "storages": o.storages}),
                );
            }
            Err(e) => {
                let e = e.context(&name);
                results.push(json!({"job": name, "ok": false, "error": {"kind": e.kind().as_str(), "message": e.to_string()}}));
                if args.jobs.len() == 1 || ctx.out.json {
                    if !ctx.out.json {
                        return Err(e);
                    }
                } else {
                    ctx.out.error(e.to_string());
                }
                first_error.get_or_insert(e);
            }
        }
    }
    ctx.out.json_doc(&json!(results));
    // A failure is worse than a suspect backup: 1 (or the error's code) before 5.
    match first_error {
        Some(e) => Ok(crate::exit_code(e.kind())),
        None if partial => Ok(1),
        None if suspect => Ok(5),
        None => Ok(0),
    }
}
