//! How the reports of the library read on a terminal and in `--json`, for the reports that
//! more than one command shows (a backup: `backup` and `daemon`; a drill: `drill` and
//! `daemon`; health: `status` and `doctor`). Commands never call each other; they share this.

use std::time::Duration;

use drkit_core::ops::drill::{DrillResult, DrillRun};
use drkit_core::ops::health::{Health, JobHealth};
use drkit_core::pipeline::BackupOutcome;
use drkit_core::Error;
use serde_json::{json, Value};

use crate::output::{human_bytes, table, Output, Record};

/// An error as `{"kind": ..., "message": ...}`.
pub fn error_json(e: &Error) -> Value {
    json!({"kind": e.kind().as_str(), "message": e.to_string()})
}

/// Print what a backup of `name` did (leftovers, where it went, warnings, suspect, failed
/// storages) and return its `--json` document.
pub fn backup(out: &Output, name: &str, o: &BackupOutcome, took: Duration) -> Value {
    let m = &o.manifest;
    for s in &o.storages {
        for key in &s.cleaned {
            out.detail(format!("{name}: removed leftover {key} from {}", s.storage));
        }
        if !s.cleaned.is_empty() {
            out.info(format!(
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
    let line = format!(
        "{name}: backup {} written to {} ({} raw, {} stored, {:.1}s)",
        m.id,
        ok.join(", "),
        human_bytes(m.data.raw_size),
        human_bytes(m.data.stored_size),
        took.as_secs_f64()
    );
    out.text(&line);
    for s in &o.storages {
        out.record(Record {
            event: if s.ok { "backup.done" } else { "backup.failed" },
            job: Some(name),
            storage: Some(&s.storage),
            backup_id: Some(&m.id),
            duration: Some(took),
            ok: s.ok,
            message: match &s.error {
                None => line.clone(),
                Some(e) => format!("{name}: storage {} failed: {e}", s.storage),
            },
        });
    }
    for w in &m.warnings {
        out.warn(format!("{name}: {w}"));
    }
    for s in &o.storages {
        for n in &s.notes {
            out.warn(format!("{name}: storage {}: {n}", s.storage));
        }
    }
    if o.is_suspect() {
        out.warn(format!(
            "{name}: backup {} is SUSPECT: {}. It is kept, but retention, restore and drill do not count it as good; if the shrink is real, run `drkit accept {name} {} --reason \"...\"`",
            m.id,
            m.suspect_reasons().join("; "),
            m.id
        ));
    }
    for s in o.storages.iter().filter(|s| !s.ok) {
        out.error(format!(
            "{name}: storage {} failed: {}",
            s.storage,
            s.error.as_deref().unwrap_or("unknown error")
        ));
    }
    json!({"job": name, "ok": o.all_ok(), "suspect": o.is_suspect(), "manifest": m, "storages": o.storages})
}

/// Print one storage's drill and return its `--json` document.
pub fn drill(out: &Output, run: &DrillRun) -> Value {
    let (name, storage) = (&run.job, &run.storage);
    match &run.result {
        DrillResult::Nothing { error } => {
            out.error(error.to_string());
            json!({"job": name, "storage": storage, "ok": false, "error": error.to_string()})
        }
        DrillResult::Ran {
            report,
            report_key,
            skipped_suspect,
            warning,
        } => {
            if let Some(w) = warning {
                out.warn(format!("{name}: on {storage}: {w}"));
            }
            if !skipped_suspect.is_empty() {
                out.warn(format!(
                    "{name}: skipped suspect backup(s) {} on {storage}",
                    skipped_suspect.join(", ")
                ));
            }
            for note in &report.notes {
                out.info(format!("{name}: {note}"));
            }
            for c in &report.checks {
                let line = format!(
                    "{name}: check {:?} = {}: {}",
                    c.name,
                    c.value,
                    c.why.as_deref().unwrap_or("ok")
                );
                if c.ok {
                    out.info(line);
                } else {
                    out.error(line);
                }
            }
            let rto = report.timings.as_ref().map(|t| {
                format!(
                    "RTO {:.1}s: download {:.1}s, restore {:.1}s, checks {:.1}s; {} at {}/s",
                    report.duration_ms as f64 / 1000.0,
                    t.download_ms as f64 / 1000.0,
                    t.restore_ms as f64 / 1000.0,
                    t.checks_ms as f64 / 1000.0,
                    human_bytes(t.raw_bytes),
                    human_bytes(t.rate()),
                )
            });
            if report.ok {
                out.text(format!(
                    "{name}: drill of {} on {storage} passed, {} ({}; restored into {}, checked, removed)",
                    report.backup_id,
                    rto.as_deref().unwrap_or("no timings"),
                    report.place,
                    report.scratch,
                ));
            } else {
                out.error(format!(
                    "{name}: drill of {} on {storage} FAILED: {}{}",
                    report.backup_id,
                    report.error.as_deref().unwrap_or("unknown error"),
                    rto.map(|r| format!(" ({r})")).unwrap_or_default()
                ));
            }
            out.record(Record {
                event: if report.ok {
                    "drill.passed"
                } else {
                    "drill.failed"
                },
                job: Some(name),
                storage: Some(storage),
                backup_id: Some(&report.backup_id),
                duration: Some(Duration::from_millis(report.duration_ms)),
                ok: report.ok,
                message: format!(
                    "{name}: drill of {} on {storage} {}",
                    report.backup_id,
                    if report.ok { "passed" } else { "FAILED" }
                ),
            });
            json!({"job": name, "storage": storage, "report": report, "report_key": report_key})
        }
    }
}

/// The fleet table: `JOB STORAGE HOST STATE NEWEST SIZE DETAIL`.
pub fn fleet_table(report: &[JobHealth]) -> String {
    let rows: Vec<Vec<String>> = report
        .iter()
        .map(|h| {
            let n = h.newest.as_ref();
            vec![
                h.job.clone(),
                h.storage.clone(),
                n.map(|n| n.host.clone()).unwrap_or_else(|| "-".into()),
                h.state.label().to_string(),
                n.map(|n| n.id.clone()).unwrap_or_else(|| "-".into()),
                n.map(|n| human_bytes(n.stored_size))
                    .unwrap_or_else(|| "-".into()),
                match &h.lease {
                    Some(holder) => format!("{}; being written now ({holder})", h.detail),
                    None => h.detail.clone(),
                },
            ]
        })
        .collect();
    table(
        &[
            "JOB", "STORAGE", "HOST", "STATE", "NEWEST", "SIZE", "DETAIL",
        ],
        &rows,
    )
}

/// The `JOB STORAGE STATE DETAIL` table of a health report.
pub fn health_table(report: &[JobHealth]) -> String {
    let rows: Vec<Vec<String>> = report
        .iter()
        .map(|h| {
            vec![
                h.job.clone(),
                h.storage.clone(),
                h.state.label().to_string(),
                h.detail.clone(),
            ]
        })
        .collect();
    table(&["JOB", "STORAGE", "STATE", "DETAIL"], &rows)
}

/// One error line per storage that could not be read.
pub fn health_errors(out: &Output, report: &[JobHealth]) {
    for h in report.iter().filter(|h| h.state == Health::Error) {
        out.error(format!(
            "{}: storage {} could not be read: {}",
            h.job, h.storage, h.detail
        ));
    }
}
