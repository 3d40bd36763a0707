//! `drkit list [JOB]`: every backup of each job on each of its storages, with its state
//! (OK, SUSPECT, ACCEPTED, BROKEN). A storage that cannot be read is one error line; the
//! others are shown, and the exit code is 1 at the end.

use chrono::Utc;
use drkit_core::manifest::format_time;
use drkit_core::{Exit, Result};
use serde_json::{json, Value};

use crate::ctx::Ctx;
use crate::output::{human_age, human_bytes, table};
use crate::render;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this job.
    job: Option<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> Result<Exit> {
    let names: Vec<String> = args.job.into_iter().collect();
    let now = Utc::now();
    let mut docs: Vec<Value> = Vec::new();
    let mut rows = Vec::new();
    let mut exit = Exit::Ok;
    for (name, _) in ctx.app.jobs(&names)? {
        for l in ctx.app.list(&name).await? {
            let listing = match l.listing {
                Ok(listing) => listing,
                Err(e) => {
                    ctx.out.error(format!(
                        "{name}: storage {} could not be read: {e}",
                        l.storage
                    ));
                    docs.push(json!({"job": name, "storage": l.storage, "state": "error",
                        "error": render::error_json(&e)}));
                    exit.note(Exit::Failed);
                    continue;
                }
            };
            for e in &listing.backups {
                let m = &e.manifest;
                let mut notes: Vec<String> = m.suspect_reasons().to_vec();
                if m.data.encryption == drkit_core::crypt::AGE {
                    notes.push(format!(
                        "encrypted, needs {}",
                        drkit_core::crypt::key_set(&m.data.recipients)
                    ));
                }
                if let Some(a) = &e.accepted {
                    notes.push(format!(
                        "accepted by {} on {}: {}",
                        a.by,
                        format_time(&a.accepted_at),
                        a.reason
                    ));
                }
                notes.extend(e.accept_problem.clone());
                notes.extend(m.warnings.iter().cloned());
                rows.push(vec![
                    name.clone(),
                    m.id.clone(),
                    e.state().label().to_string(),
                    format_time(&m.started_at),
                    human_age((now - m.started_at).num_seconds()),
                    human_bytes(m.data.raw_size),
                    human_bytes(m.data.stored_size),
                    l.storage.clone(),
                    notes.join("; "),
                ]);
                let mut doc = serde_json::to_value(m).expect("manifest serializes");
                doc["storage"] = Value::String(l.storage.clone());
                doc["state"] = json!(e.state());
                if let Some(a) = &e.accepted {
                    doc["accepted"] = json!(a);
                }
                docs.push(doc);
            }
            for b in &listing.broken {
                rows.push(vec![
                    name.clone(),
                    b.id.clone(),
                    "BROKEN".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    l.storage.clone(),
                    b.reason.clone(),
                ]);
                docs.push(
                    json!({"job": name, "id": b.id, "storage": l.storage, "state": "broken",
                    "key": b.key, "reason": b.reason}),
                );
            }
        }
    }
    if ctx.out.json {
        ctx.out.json_doc(&Value::Array(docs));
    } else if rows.is_empty() {
        ctx.out.text("no backups yet");
    } else {
        ctx.out.text(table(
            &[
                "JOB", "ID", "STATE", "STARTED", "AGE", "RAW", "STORED", "STORAGE", "NOTES",
            ],
            &rows,
        ));
    }
    Ok(exit)
}
