//! What each operation's report announces: the events notifiers hear (docs/monitoring.md)
//! and what the metrics count. Pure: a report and `now` in, an [`Announcement`] out.

use chrono::{DateTime, Utc};

use crate::metrics::{Tally, BACKUP_FAILURES, LOCK_BUSY, STORAGE_ERRORS};
use crate::notify::{Event, EventKind, Signal};
use crate::ops::drill::{DrillResult, DrillRun};
use crate::ops::health::{Health, JobHealth};
use crate::ops::prune::{Action, StoragePrune};
use crate::ops::verify::{Verdict, Verified};
use crate::pipeline::BackupOutcome;
use crate::{ErrorKind, Result};

/// The signals an operation sends and what it adds to the counters.
#[derive(Debug, Default, Clone)]
pub struct Announcement {
    /// Events (and, for backups, the end of the run), in order.
    pub signals: Vec<Signal>,
    /// What to add to the process's counters.
    pub tally: Tally,
}

impl Announcement {
    fn event(&mut self, e: Event) {
        self.signals.push(Signal::Event(e));
    }

    /// The events alone.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.signals.iter().filter_map(|s| match s {
            Signal::Event(e) => Some(e),
            _ => None,
        })
    }
}

/// The start of a backup run (pings hear it).
pub fn backup_started(job: &str) -> Signal {
    Signal::Started {
        operation: "backup".into(),
        job: job.into(),
    }
}

/// A backup of `job` to `storages`: a failure per storage that failed (one without storage
/// when none got it), a suspect event, or one success; and the end of the run.
pub fn backup(
    job: &str,
    storages: &[String],
    result: &Result<BackupOutcome>,
    now: DateTime<Utc>,
) -> Announcement {
    let mut a = Announcement::default();
    let ev = |kind, msg: String| Event::new(kind, "backup", Some(job), msg, now);
    let (ok, summary) = match result {
        Err(e) => {
            let msg = format!("backup of {job} failed: {e}");
            a.event(ev(EventKind::Failure, msg.clone()));
            for s in storages {
                a.tally.add(BACKUP_FAILURES, &[job, s], 1.0);
                if e.kind() == ErrorKind::Refused {
                    a.tally.add(LOCK_BUSY, &[job, s], 1.0);
                }
            }
            (false, msg)
        }
        Ok(o) => {
            let m = &o.manifest;
            let took = (m.finished_at - m.started_at).num_milliseconds().max(0) as f64 / 1000.0;
            let figures = |e: Event| {
                e.of_backup(&m.id)
                    .figure("raw_bytes", m.data.raw_size as f64)
                    .figure("stored_bytes", m.data.stored_size as f64)
                    .figure("duration_seconds", took)
            };
            let mut failed = Vec::new();
            for s in o.storages.iter().filter(|s| !s.ok) {
                let why = s.error.as_deref().unwrap_or("unknown error");
                let msg = format!("backup {} of {job} failed on {}: {why}", m.id, s.storage);
                a.event(figures(ev(EventKind::Failure, msg.clone())).on_storage(&s.storage));
                a.tally.add(BACKUP_FAILURES, &[job, &s.storage], 1.0);
                if s.error_kind == Some(ErrorKind::Refused) {
                    a.tally.add(LOCK_BUSY, &[job, &s.storage], 1.0);
                }
                failed.push(msg);
            }
            if let Some(sus) = &m.suspect {
                let msg = format!(
                    "backup {} of {job} is suspect: {}; check the source, then `drkit accept {job} {}` if it is right",
                    m.id,
                    sus.reasons.join("; "),
                    m.id
                );
                a.event(figures(ev(EventKind::Suspect, msg.clone())));
                failed.push(msg);
            }
            if failed.is_empty() {
                let msg = format!(
                    "backup {} of {job} written to {} ({} raw, {} stored, {took:.1}s)",
                    m.id,
                    storages.join(", "),
                    crate::units::human_bytes(m.data.raw_size),
                    crate::units::human_bytes(m.data.stored_size),
                );
                a.event(figures(ev(EventKind::Success, msg.clone())));
                (true, msg)
            } else {
                (false, failed.join("; "))
            }
        }
    };
    a.signals.push(Signal::Finished {
        operation: "backup".into(),
        job: job.into(),
        ok,
        message: summary,
    });
    a
}

/// Drills of `job`: a success or a drill failure per storage.
pub fn drill(job: &str, result: &Result<Vec<DrillRun>>, now: DateTime<Utc>) -> Announcement {
    let mut a = Announcement::default();
    let ev = |kind, msg: String| Event::new(kind, "drill", Some(job), msg, now);
    match result {
        Err(e) => a.event(ev(
            EventKind::DrillFailure,
            format!("drill of {job} could not run: {e}"),
        )),
        Ok(runs) => {
            for run in runs {
                let e = match &run.result {
                    DrillResult::Nothing { error } => ev(
                        EventKind::DrillFailure,
                        format!(
                            "drill of {job} on {}: nothing to drill: {error}",
                            run.storage
                        ),
                    ),
                    DrillResult::Ran { report, .. } => {
                        let rto = report.duration_ms as f64 / 1000.0;
                        let e = if report.ok {
                            ev(
                                EventKind::Success,
                                format!(
                                    "drill of {job} on {} passed: backup {} restored and checked in {rto:.1}s",
                                    run.storage, report.backup_id
                                ),
                            )
                        } else {
                            ev(
                                EventKind::DrillFailure,
                                format!(
                                    "drill of {job} on {} FAILED: {}",
                                    run.storage,
                                    report.error.as_deref().unwrap_or("unknown error")
                                ),
                            )
                        };
                        e.of_backup(&report.backup_id)
                            .figure("rto_seconds", rto)
                            .figure("checks", report.checks.len() as f64)
                    }
                };
                a.event(e.on_storage(&run.storage));
            }
        }
    }
    a
}

/// A verify of `job`: a failure per item that failed, else one success per storage; each
/// storage whose items all passed is noted as verified at `now`.
pub fn verify(job: &str, items: &[Verified], now: DateTime<Utc>) -> Announcement {
    let mut a = Announcement::default();
    let mut storages: Vec<&str> = items.iter().map(|i| i.storage.as_str()).collect();
    storages.dedup();
    for storage in storages {
        let mine: Vec<&Verified> = items.iter().filter(|i| i.storage == storage).collect();
        let mut bad = 0;
        for i in &mine {
            if let Some(err) = i.error() {
                bad += 1;
                let mut e = Event::new(
                    EventKind::Failure,
                    "verify",
                    Some(job),
                    format!("verify of {job} on {storage} failed: {err}"),
                    now,
                )
                .on_storage(storage);
                if let Verdict::Failed { id, .. }
                | Verdict::NotFound { id, .. }
                | Verdict::Broken { id, .. } = &i.verdict
                {
                    e = e.of_backup(id);
                }
                a.event(e);
                if matches!(i.verdict, Verdict::Unreadable { .. }) {
                    a.tally.add(STORAGE_ERRORS, &[job, storage], 1.0);
                }
            }
        }
        if bad == 0 {
            a.tally.verified(job, storage, now);
            a.event(
                Event::new(
                    EventKind::Success,
                    "verify",
                    Some(job),
                    format!("{} backup(s) of {job} on {storage} verified", mine.len()),
                    now,
                )
                .on_storage(storage)
                .figure("verified", mine.len() as f64),
            );
        }
    }
    a
}

/// A prune of `job`: a failure per storage or backup that could not be pruned, and a
/// success naming how many backups it removed (when it removed any).
pub fn prune(job: &str, prunes: &[StoragePrune], now: DateTime<Utc>) -> Announcement {
    let mut a = Announcement::default();
    let ev = |kind, msg: String, storage: &str| {
        Event::new(kind, "prune", Some(job), msg, now).on_storage(storage)
    };
    for p in prunes {
        match &p.result {
            Err(e) => a.event(ev(
                EventKind::Failure,
                format!("prune of {job} on {} failed: {e}", p.storage),
                &p.storage,
            )),
            Ok(r) => {
                let removed: Vec<&str> = r
                    .items
                    .iter()
                    .filter(|i| matches!(i.action, Action::Removed))
                    .map(|i| i.id.as_str())
                    .collect();
                for i in &r.items {
                    if let Action::Failed { error } = &i.action {
                        a.event(
                            ev(
                                EventKind::Failure,
                                format!(
                                    "prune of {job} on {}: removing backup {} failed: {error}",
                                    p.storage, i.id
                                ),
                                &p.storage,
                            )
                            .of_backup(&i.id),
                        );
                    }
                }
                if !removed.is_empty() {
                    a.event(
                        ev(
                            EventKind::Success,
                            format!(
                                "prune of {job} on {} removed {} backup(s) past the keep policy: {}",
                                p.storage,
                                removed.len(),
                                removed.join(", ")
                            ),
                            &p.storage,
                        )
                        .figure("removed", removed.len() as f64),
                    );
                }
            }
        }
    }
    a
}

/// What `status` found wrong: an event per unhealthy row, and the storage errors counted.
pub fn health(rows: &[JobHealth], now: DateTime<Utc>) -> Announcement {
    let mut a = Announcement::default();
    for r in rows {
        let kind = match r.state {
            Health::Ok => continue,
            Health::Missing | Health::Stale | Health::DrillStale => EventKind::Stale,
            Health::Suspect => EventKind::Suspect,
            Health::DrillFailed => EventKind::DrillFailure,
            Health::Error => {
                a.tally.add(STORAGE_ERRORS, &[&r.job, &r.storage], 1.0);
                EventKind::Failure
            }
        };
        let mut e = Event::new(
            kind,
            "status",
            Some(&r.job),
            format!(
                "{} on {}: {}: {}",
                r.job,
                r.storage,
                r.state.label(),
                r.detail
            ),
            now,
        )
        .on_storage(&r.storage);
        if let Some(n) = &r.newest {
            e = e.of_backup(&n.id).figure(
                "age_seconds",
                (now - n.started_at).num_seconds().max(0) as f64,
            );
        }
        a.event(e);
    }
    a
}

/// What the daemon announces after a look at the storages: the rows that turned unhealthy
/// (or changed how) since the look `before`, so that a stale job is told once, not every
/// minute.
pub fn health_changes(
    before: &[JobHealth],
    after: &[JobHealth],
    now: DateTime<Utc>,
) -> Announcement {
    let changed: Vec<JobHealth> = after
        .iter()
        .filter(|r| {
            !before
                .iter()
                .any(|b| b.job == r.job && b.storage == r.storage && b.state == r.state)
        })
        .cloned()
        .collect();
    let mut a = health(&changed, now);
    a.tally = Tally::default();
    a
}

/// The guard refused a destructive command; `message` says what and why.
pub fn refused(message: &str, now: DateTime<Utc>) -> Announcement {
    let mut a = Announcement::default();
    a.event(Event::new(EventKind::Refused, "guard", None, message, now));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn now() -> DateTime<Utc> {
        "2026-12-03T02:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_backup_that_no_storage_got() {
        let r: Result<BackupOutcome> = Err(Error::new(ErrorKind::Source, "pg_dump: no such db"));
        let a = backup("app", &["local".into(), "s3".into()], &r, now());
        let events: Vec<&Event> = a.events().collect();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, EventKind::Failure);
        assert_eq!(events[0].storage, None);
        assert!(events[0].message.contains("pg_dump: no such db"));
        assert_eq!(a.tally.counters.len(), 2, "one failure per storage");
        assert!(matches!(
            a.signals.last(),
            Some(Signal::Finished { ok: false, .. })
        ));
        let busy = Err(Error::new(ErrorKind::Refused, "lock held"));
        let a = backup("app", &["local".into()], &busy, now());
        assert_eq!(
            a.tally.counters[&(LOCK_BUSY.to_string(), vec!["app".into(), "local".into()])],
            1.0
        );
    }

    #[test]
    fn status_rows_become_events() {
        let row = |state| JobHealth {
            job: "app".into(),
            storage: "local".into(),
            state,
            detail: "why".into(),
            newest: None,
            broken: 0,
            drill: None,
            backups: 0,
            last_good_at: None,
            drill_passed_at: None,
            lease: None,
        };
        let cases = [
            (Health::Ok, None),
            (Health::Missing, Some(EventKind::Stale)),
            (Health::Stale, Some(EventKind::Stale)),
            (Health::DrillStale, Some(EventKind::Stale)),
            (Health::Suspect, Some(EventKind::Suspect)),
            (Health::DrillFailed, Some(EventKind::DrillFailure)),
            (Health::Error, Some(EventKind::Failure)),
        ];
        for (state, want) in cases {
            let a = health(&[row(state)], now());
            let got: Vec<EventKind> = a.events().map(|e| e.event).collect();
            assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "{state:?}");
            assert_eq!(a.tally.counters.len(), usize::from(state == Health::Error));
        }
    }
}
