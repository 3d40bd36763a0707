//! Job health: is there a recent good backup on each storage, and is the newest one right?

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{Listing, State};
use crate::pipeline::Target;
use crate::signing::Trust;
use crate::units::human_bytes;

/// The health of one job on one storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// A good backup within the age limit, and the newest backup is not suspect.
    Ok,
    /// No backup at all.
    Missing,
    /// The newest good backup is older than the limit (or there is none).
    Stale,
    /// The newest backup is suspect.
    Suspect,
    /// The storage could not be read.
    Error,
    /// The backups are fine, but the last restore drill is older than the job's
    /// `drill.max_age`, or there is none.
    #[serde(rename = "drill-stale")]
    DrillStale,
    /// The backups are fine, but the last restore drill failed.
    #[serde(rename = "drill-failed")]
    DrillFailed,
}

impl Health {
    /// Whether this needs someone's attention (`status` exits 5, or 1 for `Error`).
    pub fn is_bad(self) -> bool {
        self != Health::Ok
    }

    /// The word `status` shows: `OK`, `MISSING`, `STALE`, `SUSPECT`, `ERROR`, `DRILL-STALE`,
    /// `DRILL-FAILED`.
    pub fn label(self) -> &'static str {
        match self {
            Health::Ok => "OK",
            Health::Missing => "MISSING",
            Health::Stale => "STALE",
            Health::Suspect => "SUSPECT",
            Health::Error => "ERROR",
            Health::DrillStale => "DRILL-STALE",
            Health::DrillFailed => "DRILL-FAILED",
        }
    }
}

/// The last restore drill, as health reports it.
#[derive(Debug, Clone, Serialize)]
pub struct LastDrill {
    /// The report's id.
    pub report_id: String,
    /// The backup it restored.
    pub backup_id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Whether it passed.
    pub ok: bool,
    /// How long the restore and its checks took (the RTO).
    pub duration_ms: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// Where the time went (absent when the restore failed, and in earlier reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<crate::pipeline::DrillTimings>,
    /// How many operator checks ran.
    pub checks_run: usize,
    /// How many of them failed.
    pub checks_failed: usize,
}

/// The verdict on the last drill: pure, `now` given. `limit` is how old it may be (`None`:
/// drills are not required, the drill is only described). Returns the state it imposes
/// (`None`: it imposes nothing) and a description.
pub fn assess_drill(
    last: Option<&LastDrill>,
    now: DateTime<Utc>,
    limit: Option<std::time::Duration>,
) -> (Option<Health>, String) {
    let Some(d) = last else {
        return match limit {
            Some(_) => (Some(Health::DrillStale), "no restore drill yet".into()),
            None => (None, String::new()),
        };
    };
    let age = (now - d.started_at).to_std().unwrap_or_default();
    let took = match d.checks_run {
        0 => format!("RTO {:.1}s", d.duration_ms as f64 / 1000.0),
        n => format!(
            "RTO {:.1}s, {n} check{} passed",
            d.duration_ms as f64 / 1000.0,
            if n == 1 { "" } else { "s" }
        ),
    };
    if !d.ok {
        let why = d.error.as_deref().unwrap_or("unknown error");
        let text = format!("last drill {} ago FAILED: {why}", human_age(age));
        return (limit.map(|_| Health::DrillFailed), text);
    }
    match limit {
        Some(l) if age > l => (
            Some(Health::DrillStale),
            format!(
                "last drill passed {} ago (max {})",
                human_age(age),
                human_age(l)
            ),
        ),
        _ => (
            None,
            format!("last drill passed {} ago, {took}", human_age(age)),
        ),
    }
}

/// The newest backup, as health reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Newest {
    /// Its id.
    pub id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// Its size before compression.
    pub raw_size: u64,
    /// Its stored size.
    pub stored_size: u64,
    /// The host that wrote it.
    pub host: String,
    /// Good, suspect or accepted.
    pub state: State,
    /// The key set it needs when it is encrypted (`keys:...`, see [`crate::crypt::key_set`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_set: Option<String>,
}

/// One row of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct JobHealth {
    /// The job.
    pub job: String,
    /// The storage.
    pub storage: String,
    /// The verdict.
    pub state: Health,
    /// Why, in words.
    pub detail: String,
    /// The newest backup, if any.
    pub newest: Option<Newest>,
    /// Broken entries found (forged or damaged manifests).
    pub broken: usize,
    /// The last valid restore drill on this storage, if any.
    pub drill: Option<LastDrill>,
    /// Complete backups on the storage (good, suspect and accepted).
    pub backups: usize,
    /// When the newest good (or accepted) backup finished.
    pub last_good_at: Option<DateTime<Utc>>,
    /// When the newest drill that passed started: the last verified restore.
    pub drill_passed_at: Option<DateTime<Utc>>,
    /// Who holds a live lease on the job in this storage (a run writing it now, maybe on
    /// another host): `host H, pid P, since T, lease expires E`.
    pub lease: Option<String>,
}

impl JobHealth {
    /// The row of a storage that could not be read.
    pub fn unreadable(job: &str, storage: &str, error: &crate::Error) -> JobHealth {
        JobHealth {
            job: job.to_string(),
            storage: storage.to_string(),
            state: Health::Error,
            detail: error.to_string(),
            newest: None,
            broken: 0,
            drill: None,
            backups: 0,
            last_good_at: None,
            drill_passed_at: None,
            lease: None,
        }
    }
}

/// The verdict on one listing: pure, `now` given.
pub fn assess(
    listing: &Listing,
    now: DateTime<Utc>,
    max_age: std::time::Duration,
) -> (Health, String) {
    let Some(newest) = listing.backups.first() else {
        return (Health::Missing, "no backup yet".into());
    };
    let age = |t: DateTime<Utc>| (now - t).to_std().unwrap_or_default();
    if newest.state() == State::Suspect {
        let good = match listing.newest_good() {
            Some(g) => format!(
                "; the newest good backup is {} ({} old)",
                g.manifest.id,
                human_age(age(g.manifest.started_at))
            ),
            None => "; there is no good backup".into(),
        };
        return (
            Health::Suspect,
            format!(
                "the newest backup {} is suspect: {}{good}",
                newest.manifest.id,
                newest.manifest.suspect_reasons().join("; ")
            ),
        );
    }
    let good = listing.newest_good().expect("the newest backup is good");
    let a = age(good.manifest.started_at);
    if a > max_age {
        return (
            Health::Stale,
            format!(
                "newest good backup is {} old (max {})",
                human_age(a),
                human_age(max_age)
            ),
        );
    }
    (
        Health::Ok,
        format!(
            "{} old, {} stored{}",
            human_age(a),
            human_bytes(good.manifest.data.stored_size),
            if good.manifest.data.encryption == crate::crypt::AGE {
                format!(
                    ", encrypted ({})",
                    crate::crypt::key_set(&good.manifest.data.recipients)
                )
            } else {
                String::new()
            }
        ),
    )
}

/// Age after which the newest good backup is stale when neither the job's `max_age` nor the
/// caller says.
pub const DEFAULT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(25 * 3600);

/// How a health report ends a run: a storage that could not be read is a failure; a missing,
/// stale or suspect backup is "unhealthy".
pub fn exit(report: &[JobHealth]) -> crate::Exit {
    report
        .iter()
        .map(|h| match h.state {
            Health::Ok => crate::Exit::Ok,
            Health::Error => crate::Exit::Failed,
            Health::Missing
            | Health::Stale
            | Health::Suspect
            | Health::DrillStale
            | Health::DrillFailed => crate::Exit::Unhealthy,
        })
        .fold(crate::Exit::Ok, crate::Exit::worst)
}

/// The health of `job` on each of its storages: its backups (`max_age`) and its last restore
/// drill (`drill_limit`, see [`assess_drill`]).
pub async fn health(
    job: &str,
    targets: &[Target],
    trust: &Trust,
    now: DateTime<Utc>,
    max_age: std::time::Duration,
    drill_limit: Option<std::time::Duration>,
) -> Vec<JobHealth> {
    let mut out = Vec::new();
    for (l, t) in super::list_job(job, targets, trust)
        .await
        .into_iter()
        .zip(targets)
    {
        let row = match l.listing {
            Err(e) => JobHealth::unreadable(job, &l.storage, &e),
            Ok(listing) => {
                let (state, mut detail) = assess(&listing, now, max_age);
                if !listing.broken.is_empty() {
                    detail.push_str(&format!(
                        "; {} broken entr{} (see `drkit list {job}`)",
                        listing.broken.len(),
                        if listing.broken.len() == 1 {
                            "y"
                        } else {
                            "ies"
                        }
                    ));
                }
                JobHealth {
                    job: job.to_string(),
                    storage: l.storage,
                    state,
                    detail,
                    newest: listing.backups.first().map(|e| Newest {
                        id: e.manifest.id.clone(),
                        started_at: e.manifest.started_at,
                        finished_at: e.manifest.finished_at,
                        raw_size: e.manifest.data.raw_size,
                        stored_size: e.manifest.data.stored_size,
                        host: e.manifest.host.clone(),
                        state: e.state(),
                        key_set: (e.manifest.data.encryption == crate::crypt::AGE)
                            .then(|| crate::crypt::key_set(&e.manifest.data.recipients)),
                    }),
                    broken: listing.broken.len(),
                    drill: None,
                    backups: listing.backups.len(),
                    last_good_at: listing.newest_good().map(|g| g.manifest.finished_at),
                    drill_passed_at: None,
                    lease: None,
                }
            }
        };
        let mut row = with_drill(row, t, job, trust, now, drill_limit).await;
        if row.state != Health::Error {
            // A lease that cannot be read is the next writer's business, not the health's.
            row.lease = t.storage.lease_holder(job, now).await.ok().flatten();
        }
        out.push(row);
    }
    out
}

/// Add the last drill of `target` to a healthy (or only described) row.
async fn with_drill(
    mut row: JobHealth,
    target: &Target,
    job: &str,
    trust: &Trust,
    now: DateTime<Utc>,
    limit: Option<std::time::Duration>,
) -> JobHealth {
    if row.state == Health::Error {
        return row;
    }
    let last = match super::drill::last(target.storage.as_ref(), job, trust).await {
        Ok(l) => l,
        Err(e) => {
            row.detail
                .push_str(&format!("; drill reports cannot be read: {e}"));
            return row;
        }
    };
    row.drill_passed_at = last.passed_at;
    row.drill = last.report.as_ref().map(|r| LastDrill {
        report_id: r.report_id.clone(),
        backup_id: r.backup_id.clone(),
        started_at: r.started_at,
        ok: r.ok,
        duration_ms: r.duration_ms,
        error: r.error.clone(),
        timings: r.timings.clone(),
        checks_run: r.checks.len(),
        checks_failed: r.checks.iter().filter(|c| !c.ok).count(),
    });
    if let Some(first) = last.ignored.first() {
        row.detail.push_str(&format!("; {first}"));
    }
    let (state, text) = assess_drill(row.drill.as_ref(), now, limit);
    if !text.is_empty() {
        row.detail.push_str(&format!("; {text}"));
    }
    if let (Some(state), Health::Ok) = (state, row.state) {
        row.state = state;
    }
    row
}

/// A duration as a short human string (3h 5m, 2d 4h, 45s).
pub fn human_age(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn drill_verdicts() {
        let now = t("2026-12-02T12:00:00Z");
        let drill = |at: &str, ok: bool| LastDrill {
            report_id: "r".into(),
            backup_id: "b".into(),
            started_at: t(at),
            ok,
            duration_ms: 1500,
            error: (!ok).then(|| "restored counts differ".to_string()),
            timings: None,
            checks_run: 2,
            checks_failed: 0,
        };
        let day = Some(Duration::from_secs(86_400));
        type Case = (
            Option<LastDrill>,
            Option<Duration>,
            Option<Health>,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            // Not required: described, never a state.
            (None, None, None, ""),
            (
                Some(drill("2026-12-02T10:00:00Z", true)),
                None,
                None,
                "last drill passed 2h 0m ago, RTO 1.5s, 2 checks passed",
            ),
            (
                Some(drill("2026-01-01T10:00:00Z", false)),
                None,
                None,
                "FAILED: restored counts differ",
            ),
            // Required.
            (None, day, Some(Health::DrillStale), "no restore drill yet"),
            (
                Some(drill("2026-12-02T10:00:00Z", true)),
                day,
                None,
                "passed 2h 0m ago",
            ),
            (
                Some(drill("2026-11-30T10:00:00Z", true)),
                day,
                Some(Health::DrillStale),
                "(max 24h 0m)",
            ),
            (
                Some(drill("2026-12-02T10:00:00Z", false)),
                day,
                Some(Health::DrillFailed),
                "FAILED",
            ),
        ];
        for (last, limit, want, text) in cases {
            let (got, words) = assess_drill(last.as_ref(), now, limit);
            assert_eq!(got, want, "{last:?} {limit:?}");
            assert!(words.contains(text), "{words:?} lacks {text:?}");
        }
        assert_eq!(Health::DrillStale.label(), "DRILL-STALE");
        assert_eq!(
            serde_json::to_value(Health::DrillFailed).unwrap(),
            "drill-failed"
        );
        assert_eq!(exit(&[]), crate::Exit::Ok);
    }

    #[test]
    fn drill_limits() {
        let now = t("2026-12-02T12:00:00Z");
        let cfg = |schedule: Option<&str>, max_age: Option<&str>| crate::config::DrillConfig {
            schedule: schedule.map(str::to_string),
            max_age: max_age.map(|m| m.parse().unwrap()),
            ..Default::default()
        };
        let cases = [
            (cfg(None, None), None),
            (cfg(Some("0 4 * * *"), None), Some(2 * 86_400)),
            (cfg(Some("0 4 * * 0"), None), Some(14 * 86_400)),
            (cfg(Some("0 4 * * 0"), Some("3d")), Some(3 * 86_400)),
            (cfg(None, Some("6h")), Some(6 * 3600)),
        ];
        for (c, want) in cases {
            assert_eq!(c.limit(now).map(|d| d.as_secs()), want, "{c:?}");
        }
    }
}
