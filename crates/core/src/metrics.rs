//! Metrics: what the daemon's `/metrics` and `--metrics-file` expose (docs/monitoring.md),
//! `/healthz`'s verdict, and the counters a process (or a chain of metrics files) keeps.
//! Pure: health rows and a [`Tally`] in, text out.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{CounterVec, Encoder, GaugeVec, Opts, Registry, TextEncoder};

use crate::ops::health::{Health, JobHealth};

/// Counters: backups that failed on a storage.
pub const BACKUP_FAILURES: &str = "drkit_backup_failures_total";
/// Counters: reads of a storage's catalog that failed.
pub const STORAGE_ERRORS: &str = "drkit_storage_errors_total";
/// Counters: runs that found the job's lock held by another run.
pub const LOCK_BUSY: &str = "drkit_lock_busy_total";
/// Counters: events a notifier did not take.
pub const NOTIFY_FAILURES: &str = "drkit_notify_failures_total";
/// The gauge of the last verify that passed (kept by the process, like the counters).
pub const VERIFY_LAST_SUCCESS: &str = "drkit_verify_last_success_timestamp_seconds";

/// The counters and their help, with their labels.
const COUNTERS: [(&str, &str, &[&str]); 4] = [
    (
        BACKUP_FAILURES,
        "Backups that failed on the storage.",
        &["job", "storage"],
    ),
    (
        STORAGE_ERRORS,
        "Reads of the storage's catalog that failed.",
        &["job", "storage"],
    ),
    (
        LOCK_BUSY,
        "Runs that found the job's lock held by another run.",
        &["job", "storage"],
    ),
    (
        NOTIFY_FAILURES,
        "Events a notifier did not take.",
        &["notifier"],
    ),
];

/// One series: a metric name and its label values, in the metric's label order.
pub type Series = (String, Vec<String>);

/// What a process counts and remembers between looks at the storages: counters, and when a
/// verify last passed per job and storage. A metrics file carries it to the next command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Counter values by series.
    pub counters: BTreeMap<Series, f64>,
    /// The last verify that passed, per (job, storage), as Unix seconds.
    pub verified: BTreeMap<(String, String), f64>,
}

impl Tally {
    /// Add `n` to a counter (`labels` in the counter's order: job, storage; or notifier).
    pub fn add(&mut self, counter: &str, labels: &[&str], n: f64) {
        let key = (
            counter.to_string(),
            labels.iter().map(|s| s.to_string()).collect(),
        );
        *self.counters.entry(key).or_default() += n;
    }

    /// Note a verify of `job` on `storage` that passed at `at`.
    pub fn verified(&mut self, job: &str, storage: &str, at: DateTime<Utc>) {
        let v = self
            .verified
            .entry((job.to_string(), storage.to_string()))
            .or_default();
        *v = v.max(at.timestamp() as f64);
    }

    /// Counters add up; verify times keep the newest.
    pub fn merge(&mut self, other: &Tally) {
        for (k, v) in &other.counters {
            *self.counters.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.verified {
            let mine = self.verified.entry(k.clone()).or_default();
            *mine = mine.max(*v);
        }
    }

    /// What an earlier exposition (a previous metrics file) counted: its counters and verify
    /// times. Lines it does not know are skipped; a damaged file yields what could be read.
    pub fn parse(text: &str) -> Tally {
        let mut out = Tally::default();
        for line in text.lines() {
            let Some((name, labels, value)) = parse_sample(line) else {
                continue;
            };
            if !value.is_finite() || value < 0.0 {
                continue;
            }
            if let Some((_, _, names)) = COUNTERS.iter().find(|(n, _, _)| *n == name) {
                let values: Option<Vec<String>> =
                    names.iter().map(|l| labels.get(*l).cloned()).collect();
                if let Some(values) = values {
                    *out.counters.entry((name.to_string(), values)).or_default() += value;
                }
            } else if name == VERIFY_LAST_SUCCESS {
                if let (Some(j), Some(s)) = (labels.get("job"), labels.get("storage")) {
                    let v = out.verified.entry((j.clone(), s.clone())).or_default();
                    *v = v.max(value);
                }
            }
        }
        out
    }
}

/// One sample line of the text format: name, labels, value.
fn parse_sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '}' => break,
                ',' | ' ' => continue,
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
        let consumed = chars.next().map(|(i, _)| i).unwrap_or(body.len());
        rest = &body[consumed..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// What the metrics need of one job besides its health rows.
#[derive(Debug, Clone)]
pub struct JobLimits {
    /// The job.
    pub job: String,
    /// Its freshness limit.
    pub max_age: Duration,
    /// Its drill's RTO goal.
    pub rto_goal: Option<Duration>,
    /// How old its last drill may be.
    pub drill_max_age: Option<Duration>,
}

fn ts(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// The exposition, in the Prometheus text format (0.0.4), of `jobs` with their health `rows`
/// (any order) and `tally`.
pub fn exposition(jobs: &[JobLimits], rows: &[JobHealth], tally: &Tally) -> String {
    let registry = Registry::new();
    let gauge = |name: &str, help: &str, labels: &[&str]| -> GaugeVec {
        let g = GaugeVec::new(Opts::new(name, help), labels).expect("a valid metric");
        registry
            .register(Box::new(g.clone()))
            .expect("each metric registered once");
        g
    };
    let build = gauge(
        "drkit_build_info",
        "The drkit build; always 1.",
        &["version"],
    );
    build.with_label_values(&[crate::VERSION]).set(1.0);
    let js = &["job", "storage"];
    let last_success = gauge(
        "drkit_backup_last_success_timestamp_seconds",
        "When the newest good backup finished.",
        js,
    );
    let duration = gauge(
        "drkit_backup_last_duration_seconds",
        "How long the newest backup took.",
        js,
    );
    let raw = gauge(
        "drkit_backup_last_raw_bytes",
        "The newest backup's size before compression.",
        js,
    );
    let stored = gauge(
        "drkit_backup_last_stored_bytes",
        "The newest backup's size on the storage.",
        js,
    );
    let count = gauge(
        "drkit_backups",
        "Complete backups on the storage (good, suspect, accepted).",
        js,
    );
    let suspect = gauge(
        "drkit_backup_suspect",
        "1 when the newest backup is suspect.",
        js,
    );
    let max_age = gauge(
        "drkit_backup_max_age_seconds",
        "The job's freshness limit.",
        &["job"],
    );
    let verified = gauge(
        VERIFY_LAST_SUCCESS,
        "When the last verify (or drill, which verifies) passed.",
        js,
    );
    let drill_last = gauge(
        "drkit_drill_last_timestamp_seconds",
        "When the last drill started.",
        js,
    );
    let drill_success = gauge(
        "drkit_drill_last_success_timestamp_seconds",
        "When the newest drill that passed started: the last verified restore.",
        js,
    );
    let drill_passed = gauge(
        "drkit_drill_last_passed",
        "1 when the last drill passed.",
        js,
    );
    let rto = gauge(
        "drkit_drill_last_rto_seconds",
        "The last drill's recovery time.",
        js,
    );
    let rto_goal = gauge(
        "drkit_drill_rto_goal_seconds",
        "The job's drill RTO goal.",
        &["job"],
    );
    let drill_max_age = gauge(
        "drkit_drill_max_age_seconds",
        "How old the job's last drill may be.",
        &["job"],
    );
    let up = gauge(
        "drkit_storage_up",
        "1 when the storage's backups could be read at the last look.",
        js,
    );
    for j in jobs {
        max_age
            .with_label_values(&[&j.job])
            .set(j.max_age.as_secs_f64());
        if let Some(g) = j.rto_goal {
            rto_goal.with_label_values(&[&j.job]).set(g.as_secs_f64());
        }
        if let Some(g) = j.drill_max_age {
            drill_max_age
                .with_label_values(&[&j.job])
                .set(g.as_secs_f64());
        }
    }
    for r in rows {
        let l = [r.job.as_str(), r.storage.as_str()];
        up.with_label_values(&l)
            .set(if r.state == Health::Error { 0.0 } else { 1.0 });
        if r.state == Health::Error {
            continue;
        }
        count.with_label_values(&l).set(r.backups as f64);
        if let Some(t) = r.last_good_at {
            last_success.with_label_values(&l).set(ts(t));
        }
        if let Some(n) = &r.newest {
            let took = (n.finished_at - n.started_at).num_milliseconds().max(0) as f64 / 1000.0;
            duration.with_label_values(&l).set(took);
            raw.with_label_values(&l).set(n.raw_size as f64);
            stored.with_label_values(&l).set(n.stored_size as f64);
            let s = n.state == crate::catalog::State::Suspect;
            suspect.with_label_values(&l).set(if s { 1.0 } else { 0.0 });
        }
        if let Some(d) = &r.drill {
            drill_last.with_label_values(&l).set(ts(d.started_at));
            drill_passed
                .with_label_values(&l)
                .set(if d.ok { 1.0 } else { 0.0 });
            rto.with_label_values(&l).set(d.duration_ms as f64 / 1000.0);
        }
        if let Some(t) = r.drill_passed_at {
            drill_success.with_label_values(&l).set(ts(t));
        }
        let kept = tally
            .verified
            .get(&(r.job.clone(), r.storage.clone()))
            .copied();
        let by_drill = r.drill_passed_at.map(ts);
        if let Some(v) = kept.into_iter().chain(by_drill).reduce(f64::max) {
            verified.with_label_values(&l).set(v);
        }
    }
    for (name, help, labels) in COUNTERS {
        let c = CounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
        registry
            .register(Box::new(c.clone()))
            .expect("each metric registered once");
        // Every job and storage looked at starts at 0, so that `increase()` sees the first one.
        if labels.len() == 2 {
            for r in rows {
                c.with_label_values(&[&r.job, &r.storage]).inc_by(0.0);
            }
        }
        for ((n, values), v) in &tally.counters {
            if n == name && values.len() == labels.len() {
                let refs: Vec<&str> = values.iter().map(String::as_str).collect();
                c.with_label_values(&refs).inc_by(*v);
            }
        }
    }
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("the text format encodes");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// `/healthz`: whether every row is healthy, and a JSON body naming what is not.
pub fn healthz(rows: &[JobHealth]) -> (bool, serde_json::Value) {
    let problems: Vec<serde_json::Value> = rows
        .iter()
        .filter(|r| r.state.is_bad())
        .map(|r| {
            serde_json::json!({
                "job": r.job, "storage": r.storage, "state": r.state, "detail": r.detail,
            })
        })
        .collect();
    let ok = problems.is_empty() && !rows.is_empty();
    let mut body = serde_json::json!({ "ok": ok, "problems": problems });
    if rows.is_empty() {
        body["detail"] = "no job has been looked at yet".into();
    }
    (ok, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::State;
    use crate::ops::health::{LastDrill, Newest};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn row(job: &str, state: Health) -> JobHealth {
        JobHealth {
            job: job.into(),
            storage: "local".into(),
            state,
            detail: "d".into(),
            newest: Some(Newest {
                id: "b1".into(),
                started_at: at("2026-12-03T02:00:00Z"),
                finished_at: at("2026-12-03T02:00:04.5Z"),
                raw_size: 1000,
                stored_size: 100,
                host: "h".into(),
                state: if state == Health::Suspect {
                    State::Suspect
                } else {
                    State::Good
                },
                key_set: None,
            }),
            broken: 0,
            drill: Some(LastDrill {
                report_id: "r".into(),
                backup_id: "b1".into(),
                started_at: at("2026-12-03T03:00:00Z"),
                ok: false,
                duration_ms: 8500,
                error: Some("check failed".into()),
                timings: None,
                checks_run: 1,
                checks_failed: 1,
            }),
            backups: 3,
            last_good_at: Some(at("2026-12-03T02:00:04.5Z")),
            drill_passed_at: Some(at("2026-12-02T03:00:00Z")),
            lease: None,
        }
    }

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .map(|l| l[series.len() + 1..].trim())
    }

    #[test]
    fn exposition_has_the_documented_series() {
        let mut tally = Tally::default();
        tally.add(BACKUP_FAILURES, &["app", "local"], 2.0);
        tally.add(NOTIFY_FAILURES, &["ops"], 1.0);
        tally.verified("app", "local", at("2026-12-03T05:00:00Z"));
        let jobs = [JobLimits {
            job: "app".into(),
            max_age: Duration::from_secs(90_000),
            rto_goal: Some(Duration::from_secs(900)),
            drill_max_age: None,
        }];
        let mut bad = row("other", Health::Error);
        bad.job = "app".into();
        bad.storage = "s3".into();
        let text = exposition(&jobs, &[row("app", Health::Suspect), bad], &tally);
        let l = "{job=\"app\",storage=\"local\"}";
        let cases = [
            (
                format!("drkit_build_info{{version=\"{}\"}}", crate::VERSION),
                "1",
            ),
            (
                format!("drkit_backup_last_success_timestamp_seconds{l}"),
                "1796263204.5",
            ),
            (format!("drkit_backup_last_duration_seconds{l}"), "4.5"),
            (format!("drkit_backup_last_raw_bytes{l}"), "1000"),
            (format!("drkit_backup_last_stored_bytes{l}"), "100"),
            (format!("drkit_backups{l}"), "3"),
            (format!("drkit_backup_suspect{l}"), "1"),
            ("drkit_backup_max_age_seconds{job=\"app\"}".into(), "90000"),
            ("drkit_drill_rto_goal_seconds{job=\"app\"}".into(), "900"),
            (format!("drkit_drill_last_passed{l}"), "0"),
            (format!("drkit_drill_last_rto_seconds{l}"), "8.5"),
            (
                format!("drkit_drill_last_timestamp_seconds{l}"),
                "1796266800",
            ),
            (
                format!("drkit_drill_last_success_timestamp_seconds{l}"),
                "1796180400",
            ),
            // The kept verify time is newer than the last passed drill.
            (
                format!("drkit_verify_last_success_timestamp_seconds{l}"),
                "1796274000",
            ),
            (format!("drkit_storage_up{l}"), "1"),
            ("drkit_storage_up{job=\"app\",storage=\"s3\"}".into(), "0"),
            (format!("drkit_backup_failures_total{l}"), "2"),
            ("drkit_notify_failures_total{notifier=\"ops\"}".into(), "1"),
        ];
        for (series, want) in cases {
            assert_eq!(sample(&text, &series), Some(want), "{series} in\n{text}");
        }
        assert_eq!(
            sample(&text, "drkit_backups{job=\"app\",storage=\"s3\"}"),
            None
        );
        assert!(text.contains("# TYPE drkit_backup_failures_total counter"));
        assert!(text.contains("# HELP drkit_backup_suspect "));
    }

    #[test]
    fn a_previous_file_carries_counters_and_verify_times() {
        let mut tally = Tally::default();
        tally.add(BACKUP_FAILURES, &["a\"b", "local"], 3.0);
        tally.add(LOCK_BUSY, &["app", "s3"], 1.0);
        tally.add(NOTIFY_FAILURES, &["ops"], 2.0);
        tally.verified("app", "local", at("2026-12-03T05:00:00Z"));
        let rows = [row("app", Health::Ok)];
        let text = exposition(&[], &rows, &tally);
        let mut back = Tally::parse(&text);
        // The rows' counters start at 0 in the exposition.
        let zero = (
            BACKUP_FAILURES.to_string(),
            vec!["app".into(), "local".into()],
        );
        assert_eq!(back.counters.get(&zero), Some(&0.0));
        back.counters.retain(|_, v| *v > 0.0);
        assert_eq!(back.counters, tally.counters);
        assert_eq!(back.verified, tally.verified);
        let mut twice = back.clone();
        twice.merge(&back);
        assert_eq!(
            twice.counters[&(
                BACKUP_FAILURES.to_string(),
                vec!["a\"b".into(), "local".into()]
            )],
            6.0
        );
        // Damaged or foreign lines are skipped, not fatal.
        let junk = "drkit_backup_failures_total{job=\"x\" 5\ndrkit_backup_failures_total{job=\"x\",storage=\"y\"} -3\n\
                    drkit_backup_failures_total{job=\"x\",storage=\"y\"} NaN\nother_total 9\n\
                    drkit_notify_failures_total{notifier=\"n\"} 4\n";
        let t = Tally::parse(junk);
        assert_eq!(t.counters.len(), 1, "{t:?}");
        assert_eq!(
            t.counters[&(NOTIFY_FAILURES.to_string(), vec!["n".into()])],
            4.0
        );
    }

    #[test]
    fn healthz_names_what_is_wrong() {
        let (ok, body) = healthz(&[row("app", Health::Ok)]);
        assert!(ok);
        assert_eq!(body["problems"].as_array().unwrap().len(), 0);
        let (ok, body) = healthz(&[row("app", Health::Ok), row("db", Health::DrillFailed)]);
        assert!(!ok);
        assert_eq!(body["problems"][0]["job"], "db");
        assert_eq!(body["problems"][0]["state"], "drill-failed");
        assert!(!healthz(&[]).0, "nothing looked at is not healthy");
    }
}
