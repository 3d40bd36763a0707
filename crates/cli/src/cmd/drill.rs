//! `drkit drill [JOB...]`: restore the newest good backup into a scratch place, check it
//! against the manifest, clean up, and keep a report in the storage
//! (`<job>/drills/<time>-<rand>.json`).

use drkit_core::catalog::{self, Selector};
use drkit_core::{pipeline, ErrorKind};
use drkit_core::{Error, Result};
use serde_json::json;

use crate::ctx::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Jobs to drill (all when none).
    pub jobs: Vec<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<u8> {
    let mut docs = Vec::new();
    let mut code = 0u8;
    for (name, job) in ctx.jobs(&args.jobs)? {
        let source = ctx.source(&name)?;
        let trust = ctx.trust(&name)?;
        let signer = ctx.signer(&name)?;
        for target in ctx.targets(job)? {
            let storage = target.storage.as_ref();
            let chosen = match catalog::scan(storage, &name, &trust).await {
                Ok(listing) => match catalog::choose(&listing, &name, &Selector::Newest) {
                    Ok(c) => {
                        if let Some(w) = &c.warning {
                            ctx.out.warn(format!("{name}: on {}: {w}", target.name));
                        }
                        Ok((c.entry.manifest.clone(), c.skipped_suspect))
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let (m, skipped) = match chosen {
                Ok(c) => c,
                Err(e) => {
                    let e = Error::new(
                        e.kind(),
                        format!("{name}: nothing to drill on {}: {e}", target.name),
                    );
                    ctx.out.error(e.to_string());
                    docs.push(json!({"job": name, "storage": target.name, "ok": false, "error": e.to_string()}));
                    code = code.max(if e.kind() == ErrorKind::NotFound {
                        5
                    } else {
                        crate::exit_code(e.kind())
                    });
                    continue;
                }
            };
            if !skipped.is_empty() {
                ctx.out.warn(format!(
                    "{name}: skipped suspect backup(s) {} on {}",
                    skipped.join(", "),
                    target.name
                ));
            }
            ctx.out.info(format!(
                "{name}: drilling backup {} from {} ...",
                m.id, target.name
            ));
            let report = pipeline::drill(storage, &m, source.as_ref(), signer.as_deref()).await?;
            if report.ok {
                ctx.out.text(format!(
                    "{name}: drill of {} on {} passed in {:.1}s (restored, checked against the manifest, removed)",
                    m.id,
                    target.name,
                    report.duration_ms as f64 / 1000.0
                ));
                if let Some(e) = &report.error {
                    ctx.out.warn(format!("{name}: {e}"));
                }
            } else {
                ctx.out.error(format!(
                    "{name}: drill of {} on {} FAILED: {}",
                    m.id,
                    target.name,
                    report.error.as_deref().unwrap_or("unknown error")
                ));
                let c = if report.error_kind.as_deref() == Some("integrity") {
                    4
                } else {
                    1
                };
                code = code.max(c);
            }
            docs.push(json!({"job": name, "storage": target.name, "report": report, "report_key": report.key()}));
        }
    }
    ctx.out.json_doc(&json!(docs));
    Ok(code)
}
