//! `drkit drill [JOB...]`: restore the newest backup into a scratch place, check it against the
//! manifest, clean up, and keep a report in the storage (`<job>/drills/<time>.json`).

use drkit_core::pipeline;
use drkit_core::{catalog, Error, Result};
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
        for target in ctx.targets(job)? {
            let storage = target.storage.as_ref();
            let newest = catalog::list(storage, &name).await?.into_iter().next();
            let Some(m) = newest else {
                let e = Error::not_found(format!("{name}: no backup on {} to drill", target.name));
                eprintln!("error: {e}");
                docs.push(json!({"job": name, "storage": target.name, "ok": false, "error": e.to_string()}));
                code = code.max(5);
                continue;
            };
            ctx.out.info(format!(
                "{name}: drilling backup {} from {} ...",
                m.id, target.name
            ));
            let report = pipeline::drill(storage, &m, source.as_ref()).await?;
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
                eprintln!(
                    "error: {name}: drill of {} on {} FAILED: {}",
                    m.id,
                    target.name,
                    report.error.as_deref().unwrap_or("unknown error")
                );
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
