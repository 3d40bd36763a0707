//! `drkit verify [JOB] [--id ID] [--all]`: re-read backups from storage and check both
//! checksums and the structure (what a restore would refuse, verify refuses). Broken catalog
//! entries are failures too (exit 4); a storage that cannot be read is one error line and
//! exit 1 at the end, the others are still verified.

use std::sync::Mutex;

use drkit_core::ops::verify::{Verdict, Verified, Which};
use drkit_core::pipeline::Checked;
use drkit_core::{Exit, Manifest, Result};
use indicatif::ProgressBar;
use serde_json::{json, Value};

use crate::ctx::Ctx;
use crate::output::human_bytes;
use crate::render;

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
    /// Also walk each archive's content without a server (tables and rows, collections and
    /// documents, files and bytes) and compare the counts with the manifest.
    #[arg(long)]
    deep: bool,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Exit> {
    let names: Vec<String> = args.job.iter().cloned().collect();
    let which = match (&args.id, args.all) {
        (Some(id), _) => Which::Id(id.clone()),
        (None, true) => Which::All,
        (None, false) => Which::Newest,
    };
    let mut results = Vec::new();
    let mut exit = Exit::Ok;
    // One progress bar per backup re-read: the previous one is finished when the next starts.
    let bar: Mutex<Option<ProgressBar>> = Mutex::new(None);
    let finish = || {
        if let Some(b) = bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
        }
    };
    let progress = |m: &Manifest| {
        finish();
        let (progress, b) = ctx.out.progress(&format!("{} {}", m.job, m.id));
        *bar.lock().unwrap_or_else(|p| p.into_inner()) = b;
        progress
    };
    for (name, _) in ctx.app.jobs(&names)? {
        let items = ctx.app.verify(&name, &which, args.deep, &progress).await?;
        finish();
        for item in items {
            exit.note(item.exit());
            results.push(show(ctx, &item));
        }
    }
    ctx.out.json_doc(&json!(results));
    Ok(exit)
}

/// Print one verified item and return its `--json` document.
fn show(ctx: &Ctx, item: &Verified) -> Value {
    let (name, storage) = (&item.job, &item.storage);
    let failed = |id: Option<&String>, e: &drkit_core::Error| json!({"job": name, "storage": storage, "id": id, "ok": false, "error": render::error_json(e)});
    match &item.verdict {
        Verdict::Ok { entry, report: rep } if rep.checked == Checked::Stored => {
            let m = &entry.manifest;
            ctx.out.text(format!(
                "{name}: backup {} on {storage} OK: stored bytes only ({} stored, sha256 matches); it is encrypted and this host has no identity, so the raw checksum and structure were not checked (pass --identity FILE for a full check)",
                m.id,
                human_bytes(rep.stored_size),
            ));
            json!({"job": name, "storage": storage, "id": m.id, "ok": true,
                "state": entry.state(), "report": rep})
        }
        Verdict::Ok { entry, report: rep } => {
            let m = &entry.manifest;
            ctx.out.text(format!(
                "{name}: backup {} on {storage} OK ({} stored, {} raw, checksums{} match){}",
                m.id,
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
            json!({"job": name, "storage": storage, "id": m.id, "ok": true,
                "state": entry.state(), "report": rep})
        }
        Verdict::NotFound { id, error } => {
            ctx.out.error(format!("{name}: {error}"));
            failed(Some(id), error)
        }
        Verdict::Failed { id, error } => {
            ctx.out
                .error(format!("{name}: backup {id} on {storage} FAILED: {error}"));
            failed(Some(id), error)
        }
        Verdict::Broken { id, error } => {
            ctx.out.error(format!("{name}: on {storage}: {error}"));
            failed(Some(id), error)
        }
        Verdict::Unreadable { error } => {
            ctx.out.error(format!(
                "{name}: storage {storage} could not be read: {error}"
            ));
            failed(None, error)
        }
        Verdict::Empty { error } => {
            ctx.out.error(error.to_string());
            json!({"job": name, "storage": storage, "ok": false, "error": error.to_string()})
        }
    }
}
