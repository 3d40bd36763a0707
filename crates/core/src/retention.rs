//! Retention: which backups a policy keeps, and why. A pure function of the backups, the
//! policy and `now`, as restic's and rustic's `forget`.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

use crate::config::KeepPolicy;
use crate::units::Span;
use crate::Result;

/// One backup as retention sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The backup id.
    pub id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Good = not suspect, or accepted. Suspect backups never fill a slot.
    pub good: bool,
}

/// The decision for one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The backup id.
    pub id: String,
    /// Whether the policy keeps it.
    pub keep: bool,
    /// Why it is kept (`last 3`, `daily 2026-11-24`, ...), or why it is removed (`not among
    /// the 3 newest good`, `suspect, older than the newest good backup`).
    pub reasons: Vec<String>,
}

/// Apply `policy` to `backups` (any order). Returns one decision per backup, newest first.
///
/// Rules: a policy with no rule keeps everything. Only good backups fill the slots: `last = N`
/// keeps the N newest good ones; each `hourly/daily/weekly/monthly/yearly = N` keeps the
/// newest good backup of each of the N newest periods that have good backups. The newest good
/// backup is always kept, whatever the policy. Suspect backups newer than the newest good one
/// are kept for inspection; older suspect ones are removed (unless `within` keeps them).
/// `within = "7d"` keeps every backup started in the 7 days before `now`. A backup is kept if
/// any rule keeps it; a removed one says, for each rule, why that rule did not keep it.
pub fn plan(
    backups: &[Candidate],
    policy: &KeepPolicy,
    now: DateTime<Utc>,
) -> Result<Vec<Decision>> {
    let sorted = newest_first(backups);
    let mut decisions = undecided(&sorted);
    if has_no_rule(policy) {
        for d in &mut decisions {
            d.keep = true;
            d.reasons.push("no retention policy".into());
        }
        return Ok(decisions);
    }
    let mut why_not: Vec<Vec<String>> = vec![Vec::new(); decisions.len()];
    keep_newest_good_and_new_suspects(&sorted, &mut decisions, &mut why_not);
    if let Some(n) = policy.last {
        keep_last(n, &sorted, &mut decisions, &mut why_not);
    }
    for rule in period_rules(policy) {
        keep_periods(rule, &sorted, &mut decisions, &mut why_not);
    }
    if let Some(within) = &policy.within {
        keep_within(within, now, &sorted, &mut decisions, &mut why_not);
    }
    for (d, why) in decisions.iter_mut().zip(why_not) {
        if !d.keep {
            d.reasons = why;
        }
    }
    Ok(decisions)
}

/// The backups sorted newest first (ties: the greater id first).
fn newest_first(backups: &[Candidate]) -> Vec<&Candidate> {
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    sorted.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| b.id.cmp(&a.id))
    });
    sorted
}

/// One decision per backup, in the same order: not kept yet, no reasons.
fn undecided(sorted: &[&Candidate]) -> Vec<Decision> {
    sorted
        .iter()
        .map(|c| Decision {
            id: c.id.clone(),
            keep: false,
            reasons: Vec::new(),
        })
        .collect()
}

/// Whether the policy sets no rule at all (it then keeps everything).
fn has_no_rule(policy: &KeepPolicy) -> bool {
    policy.last.is_none()
        && policy.hourly.is_none()
        && policy.daily.is_none()
        && policy.weekly.is_none()
        && policy.monthly.is_none()
        && policy.yearly.is_none()
        && policy.within.is_none()
}

/// Keep the newest good backup and the suspect ones newer than it (all suspect ones when
/// there is no good backup); older suspect ones get their reason not to be kept.
fn keep_newest_good_and_new_suspects(
    sorted: &[&Candidate],
    decisions: &mut [Decision],
    why_not: &mut [Vec<String>],
) {
    let newest_good = sorted.iter().position(|c| c.good);
    for (i, (c, d)) in sorted.iter().zip(decisions.iter_mut()).enumerate() {
        if c.good {
            if Some(i) == newest_good {
                d.keep = true;
                d.reasons.push("newest good".into());
            }
        } else if newest_good.is_none_or(|g| i < g) {
            d.keep = true;
            d.reasons.push(if newest_good.is_some() {
                "suspect, newer than the newest good backup: kept for inspection".into()
            } else {
                "suspect, and there is no good backup: kept for inspection".into()
            });
        } else {
            why_not[i].push("suspect, older than the newest good backup".into());
        }
    }
}

/// The `last = n` rule: keep the `n` newest good backups.
fn keep_last(
    n: u32,
    sorted: &[&Candidate],
    decisions: &mut [Decision],
    why_not: &mut [Vec<String>],
) {
    let mut kept = 0;
    for ((c, d), why) in sorted.iter().zip(decisions.iter_mut()).zip(why_not) {
        if !c.good {
            continue;
        }
        if kept < n {
            d.keep = true;
            d.reasons.push(format!("last {n}"));
            kept += 1;
        } else {
            why.push(format!("not among the {n} newest good"));
        }
    }
}

/// The period a backup's start falls in, as shown in the reasons (`2026-11-24`, ...).
type Bucket = fn(&DateTime<Utc>) -> String;

/// A period rule: its name, its periods' name in the plural, its count, and its period.
type PeriodRule = (&'static str, &'static str, Option<u32>, Bucket);

/// The hourly, daily, weekly, monthly and yearly rules of `policy`, set or not.
fn period_rules(policy: &KeepPolicy) -> [PeriodRule; 5] {
    [
        ("hourly", "hours", policy.hourly, |t| {
            format!(
                "{}-{:02}-{:02} {:02}h",
                t.year(),
                t.month(),
                t.day(),
                t.hour()
            )
        }),
        ("daily", "days", policy.daily, |t| {
            t.format("%Y-%m-%d").to_string()
        }),
        ("weekly", "weeks", policy.weekly, |t| {
            let w = t.iso_week();
            format!("{}-W{:02}", w.year(), w.week())
        }),
        ("monthly", "months", policy.monthly, |t| {
            t.format("%Y-%m").to_string()
        }),
        ("yearly", "years", policy.yearly, |t| {
            t.format("%Y").to_string()
        }),
    ]
}

/// A period rule, when set: keep the newest good backup of each of its `n` newest periods
/// that have good backups.
fn keep_periods(
    (name, periods, count, bucket): PeriodRule,
    sorted: &[&Candidate],
    decisions: &mut [Decision],
    why_not: &mut [Vec<String>],
) {
    let Some(n) = count else { return };
    let mut last_bucket: Option<String> = None;
    let mut kept = 0;
    for ((c, d), why) in sorted.iter().zip(decisions.iter_mut()).zip(why_not) {
        if !c.good {
            continue;
        }
        let b = bucket(&c.started_at);
        if kept < n && last_bucket.as_ref() != Some(&b) {
            d.keep = true;
            d.reasons.push(format!("{name} {b}"));
            kept += 1;
            last_bucket = Some(b);
        } else if last_bucket.as_ref() == Some(&b) {
            why.push(format!("{name}: not the newest good backup of {b}"));
        } else {
            why.push(format!("{name}: older than the {n} newest {periods}"));
        }
    }
}

/// The `within` rule: keep every backup started in the span before `now`.
fn keep_within(
    within: &Span,
    now: DateTime<Utc>,
    sorted: &[&Candidate],
    decisions: &mut [Decision],
    why_not: &mut [Vec<String>],
) {
    let limit = now - within.chrono();
    for ((c, d), why) in sorted.iter().zip(decisions.iter_mut()).zip(why_not) {
        if c.started_at >= limit {
            d.keep = true;
            d.reasons.push(format!("within {within}"));
        } else {
            why.push(format!("older than {within}"));
        }
    }
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
                good: true,
            })
            .collect()
    }

    /// Backups with a state: `(time, good)`.
    fn states(list: &[(&str, bool)]) -> Vec<Candidate> {
        list.iter()
            .map(|(t, good)| Candidate {
                id: t.to_string(),
                started_at: at(t),
                good: *good,
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
                p(|k| k.within = Some("1d".parse().unwrap())),
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
            assert!(got.iter().all(|d| !d.reasons.is_empty()), "{policy:?}");
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
            vec!["newest good".to_string(), "daily 2026-11-24".to_string()]
        );
        assert!(!got[1].keep);
        assert_eq!(
            got[1].reasons,
            vec!["daily: not the newest good backup of 2026-11-24".to_string()]
        );
    }

    fn policy(f: fn(&mut KeepPolicy)) -> KeepPolicy {
        let mut k = KeepPolicy::default();
        f(&mut k);
        k
    }

    #[test]
    fn suspect_backups_never_displace_good_ones() {
        let now = at("2026-11-24 12:00");
        let last1 = policy(|k| k.last = Some(1));
        let last3 = policy(|k| k.last = Some(3));
        let daily2 = policy(|k| k.daily = Some(2));
        // (backups newest first as (time, good), policy, kept, reasons of one backup)
        type Case<'a> = (
            Vec<(&'a str, bool)>,
            KeepPolicy,
            Vec<&'a str>,
            (&'a str, Vec<&'a str>),
        );
        let cases: Vec<Case> = vec![
            // the sequence: a good backup, then a tiny one, keep last 1
            (
                vec![("2026-11-24 06:00", false), ("2026-11-24 00:00", true)],
                last1.clone(),
                vec!["2026-11-24 06:00", "2026-11-24 00:00"],
                (
                    "2026-11-24 06:00",
                    vec!["suspect, newer than the newest good backup: kept for inspection"],
                ),
            ),
            // the good one is kept by both rules
            (
                vec![("2026-11-24 06:00", false), ("2026-11-24 00:00", true)],
                last1.clone(),
                vec!["2026-11-24 06:00", "2026-11-24 00:00"],
                ("2026-11-24 00:00", vec!["newest good", "last 1"]),
            ),
            // suspect ones fill no slot of last 3; an old suspect one goes
            (
                vec![
                    ("2026-11-24 06:00", false),
                    ("2026-11-24 05:00", true),
                    ("2026-11-24 04:00", false),
                    ("2026-11-24 03:00", true),
                    ("2026-11-24 02:00", true),
                    ("2026-11-24 01:00", true),
                ],
                last3.clone(),
                vec![
                    "2026-11-24 06:00",
                    "2026-11-24 05:00",
                    "2026-11-24 03:00",
                    "2026-11-24 02:00",
                ],
                (
                    "2026-11-24 04:00",
                    vec!["suspect, older than the newest good backup"],
                ),
            ),
            (
                vec![
                    ("2026-11-24 05:00", true),
                    ("2026-11-24 03:00", true),
                    ("2026-11-24 02:00", true),
                    ("2026-11-24 01:00", true),
                ],
                last3.clone(),
                vec!["2026-11-24 05:00", "2026-11-24 03:00", "2026-11-24 02:00"],
                ("2026-11-24 01:00", vec!["not among the 3 newest good"]),
            ),
            // a day whose newest backup is suspect keeps its newest good one
            (
                vec![
                    ("2026-11-24 06:00", false),
                    ("2026-11-24 01:00", true),
                    ("2026-11-23 23:00", false),
                    ("2026-11-23 10:00", true),
                    ("2026-11-22 10:00", true),
                ],
                daily2.clone(),
                vec!["2026-11-24 06:00", "2026-11-24 01:00", "2026-11-23 10:00"],
                (
                    "2026-11-22 10:00",
                    vec!["daily: older than the 2 newest days"],
                ),
            ),
            // only suspect backups: all kept for inspection
            (
                vec![("2026-11-24 06:00", false), ("2026-11-23 06:00", false)],
                last1.clone(),
                vec!["2026-11-24 06:00", "2026-11-23 06:00"],
                (
                    "2026-11-23 06:00",
                    vec!["suspect, and there is no good backup: kept for inspection"],
                ),
            ),
            // within keeps every backup of the window, suspect or not
            (
                vec![
                    ("2026-11-24 06:00", true),
                    ("2026-11-24 05:00", false),
                    ("2026-11-20 05:00", false),
                ],
                policy(|k| k.within = Some("1d".parse().unwrap())),
                vec!["2026-11-24 06:00", "2026-11-24 05:00"],
                (
                    "2026-11-20 05:00",
                    vec![
                        "suspect, older than the newest good backup",
                        "older than 1d",
                    ],
                ),
            ),
        ];
        for (i, (list, policy, want, (id, reasons))) in cases.into_iter().enumerate() {
            let got = plan(&states(&list), &policy, now).unwrap();
            assert_eq!(kept(&got), want, "case {i}");
            let d = got.iter().find(|d| d.id == id).unwrap();
            assert_eq!(d.reasons, reasons, "case {i}");
        }
    }

    /// restic's documented example (`forget --keep-daily 7 --keep-weekly 5 --keep-monthly 12
    /// --keep-yearly 75` over daily backups): the 7 newest days, then the newest backup of
    /// the weeks, months and years not already covered.
    #[test]
    fn restic_documented_policy_over_daily_backups() {
        let mut backups = Vec::new();
        let mut t = at("2024-01-01 12:00");
        let end = at("2026-11-24 12:00");
        while t <= end {
            backups.push(Candidate {
                id: t.format("%Y-%m-%d").to_string(),
                started_at: t,
                good: true,
            });
            t += chrono::Duration::days(1);
        }
        let p = policy(|k| {
            k.daily = Some(7);
            k.weekly = Some(5);
            k.monthly = Some(12);
            k.yearly = Some(75);
        });
        let got = plan(&backups, &p, end).unwrap();
        let want = vec![
            // daily 7 (Tue 24 back to Wed 18; the weeks 48 and 47 are covered)
            "2026-11-24",
            "2026-11-23",
            "2026-11-22",
            "2026-11-21",
            "2026-11-20",
            "2026-11-19",
            "2026-11-18",
            // weekly: the Sundays of weeks 46, 45, 44
            "2026-11-15",
            "2026-11-08",
            "2026-11-01",
            // monthly: the last days of the 11 months before
            "2026-10-31",
            "2026-09-30",
            "2026-08-31",
            "2026-07-31",
            "2026-06-30",
            "2026-05-31",
            "2026-04-30",
            "2026-03-31",
            "2026-02-28",
            "2026-01-31",
            "2025-12-31",
            // yearly: 2024 (2026 and 2025 already kept)
            "2024-12-31",
        ];
        assert_eq!(kept(&got), want);
        assert_eq!(got.len(), backups.len());
    }
}
