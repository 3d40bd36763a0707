//! `drkit doctor`: pre-flight checks of the config, each source (tools, credentials,
//! reachability) and each storage (reachable, writable), then the backups' health.
//! Exit 1 when a check fails, 5 when backups are missing, stale or suspect, else 0.

use chrono::Utc;
use drkit_core::notify::{show_url, EventKind, NotifierKind};
use drkit_core::ops::health;
use drkit_core::{Error, Exit, Result};
use serde_json::json;

use crate::ctx::Ctx;
use crate::render;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(ctx: &Ctx, _args: Args) -> Result<Exit> {
    let mut checks = Vec::new();
    let mut failed = false;
    let mut report = |what: String, r: Result<Vec<String>>| {
        match &r {
            Ok(notes) => {
                ctx.out.text(format!("ok    {what}"));
                for n in notes {
                    ctx.out.text(format!("      {n}"));
                }
            }
            Err(e) => {
                failed = true;
                ctx.out.text(format!("FAIL  {what}: {e}"));
            }
        }
        checks.push(json!({"check": what, "ok": r.is_ok(),
            "notes": r.as_ref().ok(), "error": r.as_ref().err().map(|e| e.to_string())}));
    };
    report(format!("config {}", ctx.config_path.display()), Ok(vec![]));
    for name in ctx.app.config().storage.keys() {
        let r = async {
            let storage = ctx.app.storage(name)?;
            let probe = format!(".drkit-doctor-{:08x}", rand_suffix());
            storage
                .put(&probe, b"drkit doctor probe\n".to_vec())
                .await?;
            storage.delete(&probe).await?;
            storage.list("").await?;
            let mut notes = vec![format!(
                "{}: listed, wrote and deleted a probe object",
                storage.describe()
            )];
            if let Some(c) = storage.lock_check().await? {
                notes.push(if c.exclusive {
                    format!("job leases: {}", c.note)
                } else {
                    format!("WARNING: job leases are ADVISORY: {}", c.note)
                });
            }
            Ok::<_, Error>(notes)
        }
        .await;
        report(format!("storage {name}"), r);
    }
    let config = ctx.app.config();
    for (name, n) in &config.notify {
        let users: Vec<&str> = config
            .job
            .iter()
            .filter(|(_, j)| j.notifiers(&config.notify).contains(&name.as_str()))
            .map(|(j, _)| j.as_str())
            .collect();
        let hears = match n.kind {
            NotifierKind::Ping => "the start and end of backups".to_string(),
            _ => {
                let on: Vec<&str> = EventKind::ALL
                    .iter()
                    .filter(|k| n.wants(&drkit_core::notify::Signal::Event(probe_event(**k))))
                    .map(|k| k.as_str())
                    .collect();
                on.join(", ")
            }
        };
        let to = match (&n.url, &n.command) {
            (Some(url), _) => show_url(url),
            (None, Some(argv)) => argv.first().cloned().unwrap_or_default(),
            (None, None) => String::new(),
        };
        let mut notes = vec![format!(
            "{} to {to} (hears {hears}; timeout {})",
            n.kind.as_str(),
            drkit_core::ops::health::human_age(n.timeout())
        )];
        notes.push(if users.is_empty() {
            "used by no job: it is never told anything (check each job's `notify`)".into()
        } else {
            format!("used by {}", users.join(", "))
        });
        report(format!("notifier {name}"), Ok(notes));
    }
    for (name, job) in &ctx.app.config().job {
        let r = async {
            let source = ctx.app.source(name)?;
            let mut notes = vec![source.describe()];
            notes.extend(source.preflight().await?);
            notes.extend(ctx.app.sweep_drill_scratch(name, Utc::now()).await?);
            match ctx.app.keys(name)? {
                Some(k) => {
                    notes.push(format!(
                        "encryption: age to {} recipient(s) ({}); {}",
                        k.fingerprints().len(),
                        drkit_core::crypt::key_set(&k.fingerprints()),
                        if k.can_decrypt() {
                            "this host has an identity: it can restore, drill and fully verify"
                        } else {
                            "no identity on this host: it backs up and verifies the stored bytes only"
                        }
                    ));
                    notes.extend(k.warnings.iter().cloned());
                }
                None => notes.push(
                    "not encrypted: whoever reads the storage reads the data (see encryption in docs/security.md)".into(),
                ),
            }
            if job.notifiers(&config.notify).is_empty() {
                notes.push("no notifier: a failed or suspect backup is only in this host's logs and exit codes (add [notify.NAME], docs/monitoring.md)".into());
            }
            notes.push(if job.trust(name)?.is_blind() {
                "no signing public key: whatever is in the storage is trusted blindly (anyone who can write it can forge a backup; see docs/security.md)".to_string()
            } else {
                "signing: only manifests signed by the job's key are trusted".to_string()
            });
            Ok::<_, Error>(notes)
        }
        .await;
        report(format!("job {name} source"), r);
    }
    let report = ctx.app.status(None, Utc::now()).await?;
    ctx.out.text("");
    ctx.out.text(render::health_table(&report));
    ctx.out
        .json_doc(&json!({"checks": checks, "backups": report}));
    Ok(if failed {
        Exit::Failed
    } else {
        health::exit(&report)
    })
}

/// An event of `kind`, to ask a notifier's `on` whether it hears that kind.
fn probe_event(kind: EventKind) -> drkit_core::notify::Event {
    drkit_core::notify::Event::new(kind, "doctor", None, "", Utc::now())
}

fn rand_suffix() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id()
}
