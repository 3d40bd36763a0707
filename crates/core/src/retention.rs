//! Retention: which backups a policy keeps, and why. A pure function of the backups, the
//! policy and `now`, as restic's and rustic's `forget`.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

use crate::config::{parse_duration, KeepPolicy};
use crate::Result;

/// One backup as retention sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The backup id.
    pub id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

/// The decision for one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The backup id.
    pub id: String,
    /// Whether the policy keeps it.
    pub keep: bool,
    /// Why it is kept (`last 3`, `daily 2026-11-24`, ...); empty when removed.
    pub reasons: Vec<String>,
}

/// Apply `policy` to `backups` (any order). Returns one decision per backup, newest first.
///
/// Rules: a policy with no rule keeps everything; the newest backup is always kept; each
/// `hourly/daily/weekly/monthly/yearly = N` keeps the newest backup of each of the N newest
/// periods that have backups; `last = N` keeps the N newest; `within = "7d"` keeps all backups
/// started in the 7 days before `now`. A backup is kept if any rule keeps it.
pub fn plan(
    backups: &[Candidate],
    policy: &KeepPolicy,
    now: DateTime<Utc>,
) -> Result<Vec<Decision>> {
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    sorted.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| b.id.cmp(&a.id))
    });
    let mut decisions: Vec<Decision> = sorted
        .iter()
        .map(|c| Decision {
            id: c.id.clone(),
            keep: false,
            reasons: Vec::new(),
        })
        .collect();
    let no_rule = policy.last.is_none()
        && policy.hourly.is_none()
        && policy.daily.is_none()
        && policy.weekly.is_none()
        && policy.monthly.is_none()
        && policy.yearly.is_none()
        && policy.within.is_none();
    if no_rule {
        for d in &mut decisions {
            d.keep = true;
            d.reasons.push("no retention policy".into());
        }
        return Ok(decisions);
    }
    if let Some(first) = decisions.first_mut() {
        first.keep = true;
        first.reasons.push("newest".into());
    }
    if let Some(n) = policy.last {
        for d in decisions.iter_mut().take(n as usize) {
            d.keep = true;
            d.reasons.push(format!("last {n}"));
        }
    }
    type Bucket = fn(&DateTime<Utc>) -> String;
    let rules: [(&str, Option<u32>, Bucket); 5] = [
        ("hourly", policy.hourly, |t| {
            format!(
                "{}-{:02}-{:02} {:02}h",
                t.year(),
                t.month(),
                t.day(),
                t.hour()
            )
        }),
        ("daily", policy.daily, |t| t.format("%Y-%m-%d").to_string()),
        ("weekly", policy.weekly, |t| {
            let w = t.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }),
        ("monthly", policy.monthly, |t| t.format("%Y-%m").to_string()),
        ("yearly", policy.yearly, |t| t.format("%Y").to_string()),
    ];
    for (name, count, bucket) in rules {
        let Some(n) = count else { continue };
        let mut last_bucket: Option<String> = None;
        let mut kept = 0;
        for (c, d) in sorted.iter().zip(decisions.iter_mut()) {
            if kept >= n {
                break;
            }
            let b = bucket(&c.started_at);
            if last_bucket.as_ref() != Some(&b) {
                d.keep = true;
                d.reasons.push(format!("{name} {b}"));
                kept += 1;
                last_bucket = Some(b);
            }
        }
    }
    if let Some(within) = &policy.within {
        let limit = now
            - chrono::Duration::from_std(parse_duration(within)?).unwrap_or(chrono::Duration::MAX);
        for (c, d) in sorted.iter().zip(decisions.iter_mut()) {
            if c.started_at >= limit {
                d.keep = true;
                d.reasons.push(format!("within {within}"));
            }
        }
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        crate::catalog::parse_time(s).unwrap()
    }

    fn cands(times: &[&str]) -> Vec<Candidate> {
        times
            .iter()
            .map(|t| Candidate {
                id: t.to_string(),
                started_at: at(t),
            })
            .collect()
    }

    fn kept(ds: &[Decision]) -> Vec<&str> {
        ds.iter()
            .filter(|d| d.keep)
            .map(|d| d.id.as_str())
            .collect()
    }

    #[test]
    fn policy_table() {
        let backups = cands(&[
            "2026-11-24 06:00",
            "2026-11-24 00:00",
            "2026-11-23 18:00",
            "2026-11-23 12:00",
            "2026-11-22 12:00",
            "2026-11-15 12:00",
            "2026-10-31 12:00",
            "2026-09-30 12:00",
            "2025-12-31 12:00",
        ]);
        let now = at("2026-11-24 07:00");
        let p = |f: fn(&mut KeepPolicy)| {
            let mut k = KeepPolicy::default();
            f(&mut k);
            k
        };
        let cases: Vec<(KeepPolicy, Vec<&str>)> = vec![
            (p(|_| {}), backups.iter().map(|c| c.id.as_str()).collect()),
            (
                p(|k| k.last = Some(2)),
                vec!["2026-11-24 06:00", "2026-11-24 00:00"],
            ),
            (p(|k| k.last = Some(0)), vec!["2026-11-24 06:00"]),
            (
                p(|k| k.daily = Some(3)),
                vec!["2026-11-24 06:00", "2026-11-23 18:00", "2026-11-22 12:00"],
            ),
            (
                p(|k| k.weekly = Some(2)),
                vec!["2026-11-24 06:00", "2026-11-22 12:00"],
            ),
            (
                p(|k| k.monthly = Some(3)),
                vec!["2026-11-24 06:00", "2026-10-31 12:00", "2026-09-30 12:00"],
            ),
            (
                p(|k| k.yearly = Some(5)),
                vec!["2026-11-24 06:00", "2025-12-31 12:00"],
            ),
            (
                p(|k| k.hourly = Some(2)),
                vec!["2026-11-24 06:00", "2026-11-24 00:00"],
            ),
            (
                p(|k| k.within = Some("1d".into())),
                vec![
                    "2026-11-24 06:00",
                    "2026-11-24 00:00",
                    "2026-11-23 18:00",
                    "2026-11-23 12:00",
                ],
            ),
            (
                p(|k| {
                    k.last = Some(1);
                    k.monthly = Some(2);
                }),
                vec!["2026-11-24 06:00", "2026-10-31 12:00"],
            ),
        ];
        for (policy, want) in cases {
            let got = plan(&backups, &policy, now).unwrap();
            assert_eq!(kept(&got), want, "{policy:?}");
            assert!(
                got.iter().all(|d| d.keep != d.reasons.is_empty()),
                "{policy:?}"
            );
        }
    }

    #[test]
    fn empty_and_reasons() {
        assert!(plan(
            &[],
            &KeepPolicy {
                last: Some(1),
                ..Default::default()
            },
            Utc::now()
        )
        .unwrap()
        .is_empty());
        let b = cands(&["2026-11-24 06:00", "2026-11-24 05:00"]);
        let got = plan(
            &b,
            &KeepPolicy {
                daily: Some(1),
                ..Default::default()
            },
            at("2026-11-25"),
        )
        .unwrap();
        assert_eq!(
            got[0].reasons,
            vec!["newest".to_string(), "daily 2026-11-24".to_string()]
        );
        assert!(!got[1].keep);
    }
}
