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
}

impl Health {
    /// Whether this needs someone's attention (`status` exits 5, or 1 for `Error`).
    pub fn is_bad(self) -> bool {
        self != Health::Ok
    }
}

/// The newest backup, as health reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Newest {
    /// Its id.
    pub id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its stored size.
    pub stored_size: u64,
    /// Good, suspect or accepted.
    pub state: State,
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
            "{} old, {} stored",
            human_age(a),
            human_bytes(good.manifest.data.stored_size)
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
            Health::Missing | Health::Stale | Health::Suspect => crate::Exit::Unhealthy,
        })
        .fold(crate::Exit::Ok, crate::Exit::worst)
}

/// The health of `job` on each of its storages.
pub async fn health(
    job: &str,
    targets: &[Target],
    trust: &Trust,
    now: DateTime<Utc>,
    max_age: std::time::Duration,
) -> Vec<JobHealth> {
    let mut out = Vec::new();
    for l in super::list_job(job, targets, trust).await {
        let row = match l.listing {
            Err(e) => JobHealth {
                job: job.to_string(),
                storage: l.storage,
                state: Health::Error,
                detail: e.to_string(),
                newest: None,
                broken: 0,
            },
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
                        stored_size: e.manifest.data.stored_size,
                        state: e.state(),
                    }),
                    broken: listing.broken.len(),
                }
            }
        };
        out.push(row);
    }
    out
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
