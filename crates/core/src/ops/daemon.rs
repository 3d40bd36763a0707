//! What the daemon runs and when: the scheduled tasks of a config (each job's `schedule` and
//! `drill.schedule`, in its time zone), and the daemon's rules as a state machine over time,
//! [`Scheduler`]: catch-up at start, overruns, retries, jitter and how many run at once.
//! Pure: the config, the times of the last runs and `now` in; what to start and what to log
//! out. The runtime that sleeps, spawns and renders is `drkit_app::daemon`.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sha2::{Digest, Sha256};

use crate::config::RetryPolicy;
use crate::schedule::{zone, Schedule};
use crate::{Config, Error, Result};

/// One scheduled task.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Task {
    /// Back up the job, then prune it when it has a `keep` policy and the backup succeeded.
    Backup(String),
    /// Drill the job.
    Drill(String),
}

impl Task {
    /// The job it runs.
    pub fn job(&self) -> &str {
        match self {
            Task::Backup(j) | Task::Drill(j) => j,
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Task::Backup(job) => write!(f, "backup {job}"),
            Task::Drill(job) => write!(f, "drill {job}"),
        }
    }
}

/// One task with its schedule and how it is run.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The task.
    pub task: Task,
    /// The cron expression, as written.
    pub expr: String,
    schedule: Schedule,
    zone: Tz,
    retry: Option<RetryPolicy>,
    jitter: Option<std::time::Duration>,
}

impl Entry {
    /// The first slot strictly after `after`.
    pub fn next_slot(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.next_in(after, &self.zone)
    }

    /// The time zone of its schedule.
    pub fn zone(&self) -> Tz {
        self.zone
    }
}

/// The tasks of a config with their schedules, in job order (backup before drill), and how
/// many may run at once.
#[derive(Debug, Clone)]
pub struct Plan {
    entries: Vec<Entry>,
    max_parallel: usize,
}

impl Plan {
    /// Every scheduled task of `config`; a config error when no job has a schedule.
    pub fn of(config: &Config) -> Result<Plan> {
        let d = &config.daemon;
        let mut plan = Plan {
            entries: Vec::new(),
            max_parallel: d.max_parallel.unwrap_or(1).max(1),
        };
        for (name, job) in &config.job {
            let zone = match job.timezone.as_ref().or(d.timezone.as_ref()) {
                Some(z) => zone(z, &format!("job.{name}.timezone"))?,
                None => Tz::UTC,
            };
            let retry = job.retry.clone().or_else(|| d.retry.clone());
            let jitter = job
                .jitter
                .as_ref()
                .or(d.jitter.as_ref())
                .map(|s| s.duration());
            let tasks = [
                (job.schedule.as_ref(), Task::Backup(name.clone())),
                (
                    job.drill.as_ref().and_then(|d| d.schedule.as_ref()),
                    Task::Drill(name.clone()),
                ),
            ];
            for (expr, task) in tasks {
                if let Some(expr) = expr {
                    plan.entries.push(Entry {
                        schedule: Schedule::parse(expr)?,
                        expr: expr.clone(),
                        task,
                        zone,
                        retry: retry.clone(),
                        jitter,
                    });
                }
            }
        }
        if plan.entries.is_empty() {
            return Err(Error::config(
                "no job has a schedule: add `schedule = \"0 2 * * *\"` to a job",
            ));
        }
        Ok(plan)
    }

    /// The scheduled tasks, in plan order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// How many tasks may run at once.
    pub fn max_parallel(&self) -> usize {
        self.max_parallel
    }
}

/// Why a task starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// Its slot came (the slot's time; a jitter may have delayed the start).
    Slot(DateTime<Utc>),
    /// At start, its newest run (`None`: none found) was older than its last slot, `missed`.
    CatchUp {
        /// The last slot before the daemon started.
        missed: DateTime<Utc>,
        /// When its newest run started.
        newest: Option<DateTime<Utc>>,
    },
    /// The previous run failed; this is retry number `attempt` (from 1).
    Retry {
        /// Which retry.
        attempt: u32,
    },
}

/// A task to start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The task.
    pub task: Task,
    /// Why it starts.
    pub why: Why,
}

/// Something the daemon decided that its log should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// `count` slots of `task` came while it was running or waiting to run: they were
    /// skipped, not queued (an overrun runs the next slot, not every missed one).
    Skipped {
        /// The task.
        task: Task,
        /// How many slots.
        count: u64,
    },
    /// The task failed and runs again at `at` (retry number `attempt`).
    Retry {
        /// The task.
        task: Task,
        /// Which retry.
        attempt: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// The task failed and is not retried: its retries are used up (`attempts`), or its next
    /// slot comes before the retry would.
    NoRetry {
        /// The task.
        task: Task,
        /// How many retries ran.
        attempts: u32,
        /// The next slot, when it comes before the retry would have.
        next_slot: Option<DateTime<Utc>>,
    },
}

/// A run waiting to start.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    /// Not before this time.
    at: DateTime<Utc>,
    why: Why,
}

/// Where one task stands.
#[derive(Debug, Clone, Default)]
struct State {
    next_slot: Option<DateTime<Utc>>,
    pending: Option<Pending>,
    running: bool,
    /// Failures since its last success or slot.
    failures: u32,
    /// Slots skipped since the last note about them.
    skipped: u64,
}

/// The daemon's rules, as a state machine driven by the runtime: [`Scheduler::due`] when the
/// time of [`Scheduler::next_wake`] comes, [`Scheduler::finished`] when a run ends.
///
/// - A slot that comes while the task runs, or waits to run, is skipped and counted: an
///   overrun runs the next slot, not each slot it missed.
/// - Two tasks of one job (its backup and its drill) never run at once; at most
///   `max_parallel` tasks run at once; a task that must wait starts when a run ends, in plan
///   order.
/// - A failed run that may pass (exit 1) is retried per the task's `retry` policy, with a
///   doubling backoff, but never past its next slot: the slot takes over.
/// - A slot's start is delayed by a jitter in `[0, jitter)`, derived from the seed, the task
///   and the slot (hosts with different seeds spread; one host's delay is reproducible).
#[derive(Debug, Clone)]
pub struct Scheduler {
    plan: Plan,
    state: Vec<State>,
    seed: u64,
}

/// How many slots one step may walk past before it stops counting (a schedule every second
/// and a clock that jumped a year ahead must not hang the daemon).
const MAX_SKIP_WALK: u64 = 1_000_000;

impl Scheduler {
    /// The scheduler of `plan` starting at `now`. `last_run(task)` is when the task's newest
    /// run started (for a backup, the oldest of the newest backups of its storages; `None`
    /// when there is none): a task whose first slot after it has passed is due at once, as
    /// systemd's `Persistent=true` does (catch-up).
    pub fn new(
        plan: Plan,
        now: DateTime<Utc>,
        last_run: &dyn Fn(&Task) -> Option<DateTime<Utc>>,
        seed: u64,
    ) -> Scheduler {
        let state = plan
            .entries
            .iter()
            .map(|e| {
                let newest = last_run(&e.task);
                let missed = match newest {
                    Some(t) => e
                        .next_slot(t)
                        .filter(|s| *s <= now)
                        .map(|_| last_slot(e, now)),
                    None => Some(last_slot(e, now)),
                };
                State {
                    next_slot: e.next_slot(now),
                    pending: missed.flatten().map(|missed| Pending {
                        at: now,
                        why: Why::CatchUp { missed, newest },
                    }),
                    ..State::default()
                }
            })
            .collect();
        Scheduler { plan, state, seed }
    }

    /// The plan it runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The tasks running now.
    pub fn running(&self) -> Vec<Task> {
        self.plan
            .entries
            .iter()
            .zip(&self.state)
            .filter(|(_, s)| s.running)
            .map(|(e, _)| e.task.clone())
            .collect()
    }

    /// The next time something is due: a slot, or the start of a waiting run that could
    /// start (one that waits for a run to end starts when [`Scheduler::finished`] is told,
    /// and asking again then). `None` when nothing will ever be due.
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        let full = self.state.iter().filter(|s| s.running).count() >= self.plan.max_parallel;
        self.plan
            .entries
            .iter()
            .zip(&self.state)
            .flat_map(|(e, s)| {
                let startable = !full && !s.running && !self.job_running(e.task.job());
                let waiting = s.pending.as_ref().filter(|_| startable).map(|p| p.at);
                [s.next_slot, waiting]
            })
            .flatten()
            .min()
    }

    /// The tasks to start at `now`, in plan order (each is marked running), and what to log.
    pub fn due(&mut self, now: DateTime<Utc>) -> (Vec<Start>, Vec<Note>) {
        for (e, s) in self.plan.entries.iter().zip(self.state.iter_mut()) {
            let mut walked = 0;
            while let Some(slot) = s.next_slot.filter(|t| *t <= now) {
                s.next_slot = e.next_slot(slot);
                walked += 1;
                let busy = s.running
                    || matches!(&s.pending, Some(p) if !matches!(p.why, Why::Retry { .. }));
                if busy {
                    s.skipped += 1;
                } else {
                    // A slot replaces a waiting retry: the schedule takes over.
                    s.failures = 0;
                    s.pending = Some(Pending {
                        at: slot + jitter(self.seed, e, slot),
                        why: Why::Slot(slot),
                    });
                }
                if walked >= MAX_SKIP_WALK {
                    s.next_slot = e.next_slot(now);
                    break;
                }
            }
        }
        let mut starts = Vec::new();
        let mut notes = Vec::new();
        let mut running = self.state.iter().filter(|s| s.running).count();
        for i in 0..self.state.len() {
            if running >= self.plan.max_parallel {
                break;
            }
            let ready = matches!(&self.state[i].pending, Some(p) if p.at <= now);
            if !ready || self.state[i].running || self.job_running(self.plan.entries[i].task.job())
            {
                continue;
            }
            let s = &mut self.state[i];
            let p = s.pending.take().expect("checked above");
            s.running = true;
            running += 1;
            let task = self.plan.entries[i].task.clone();
            if s.skipped > 0 {
                notes.push(Note::Skipped {
                    task: task.clone(),
                    count: std::mem::take(&mut s.skipped),
                });
            }
            starts.push(Start { task, why: p.why });
        }
        (starts, notes)
    }

    /// A run of `task` ended at `now`; `retryable`: it failed for a reason that may pass.
    /// Returns what to log. A task the plan does not have (it was removed by a reload while it
    /// ran) is ignored.
    pub fn finished(&mut self, task: &Task, now: DateTime<Utc>, retryable: bool) -> Vec<Note> {
        let Some(i) = self.plan.entries.iter().position(|e| &e.task == task) else {
            return Vec::new();
        };
        let e = &self.plan.entries[i];
        let s = &mut self.state[i];
        s.running = false;
        let mut notes = Vec::new();
        if s.skipped > 0 {
            notes.push(Note::Skipped {
                task: task.clone(),
                count: std::mem::take(&mut s.skipped),
            });
        }
        if !retryable {
            s.failures = 0;
            return notes;
        }
        s.failures += 1;
        let attempts = e.retry.as_ref().map_or(0, |r| r.attempts);
        if s.failures > attempts {
            if attempts > 0 {
                notes.push(Note::NoRetry {
                    task: task.clone(),
                    attempts,
                    next_slot: None,
                });
            }
            s.failures = 0;
            return notes;
        }
        let backoff = e
            .retry
            .as_ref()
            .map(|r| r.backoff.chrono())
            .unwrap_or_default();
        let at = now + backoff * 2i32.saturating_pow(s.failures - 1);
        match s.next_slot {
            Some(slot) if slot <= at => {
                notes.push(Note::NoRetry {
                    task: task.clone(),
                    attempts: s.failures - 1,
                    next_slot: Some(slot),
                });
                s.failures = 0;
            }
            _ => {
                if s.pending.is_none() {
                    s.pending = Some(Pending {
                        at,
                        why: Why::Retry {
                            attempt: s.failures,
                        },
                    });
                }
                notes.push(Note::Retry {
                    task: task.clone(),
                    attempt: s.failures,
                    at,
                });
            }
        }
        notes
    }

    /// Go on with `plan` (a reloaded config) from `now`: a task it still has keeps its
    /// running run, its waiting run and its failures; its next slot is computed again. New
    /// tasks start with their next slot (no catch-up); removed ones are forgotten (a run of
    /// one still going ends on its own).
    pub fn replace(&mut self, plan: Plan, now: DateTime<Utc>) {
        let state = plan
            .entries
            .iter()
            .map(|e| {
                let old = self
                    .plan
                    .entries
                    .iter()
                    .position(|o| o.task == e.task)
                    .map(|i| self.state[i].clone())
                    .unwrap_or_default();
                State {
                    next_slot: e.next_slot(now),
                    ..old
                }
            })
            .collect();
        self.plan = plan;
        self.state = state;
    }

    fn job_running(&self, job: &str) -> bool {
        self.plan
            .entries
            .iter()
            .zip(&self.state)
            .any(|(e, s)| s.running && e.task.job() == job)
    }
}

/// The last slot of `e` at or before `now` (`None` if there was none in five years).
fn last_slot(e: &Entry, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Walk forward from a day, then a year, back: cron has no cheap "previous".
    for back in [
        chrono::Duration::days(1),
        chrono::Duration::days(366),
        chrono::Duration::days(5 * 366),
    ] {
        let mut t = e.next_slot(now - back)?;
        if t > now {
            continue;
        }
        let mut walked = 0u64;
        while let Some(n) = e.next_slot(t).filter(|n| *n <= now) {
            t = n;
            walked += 1;
            if walked >= MAX_SKIP_WALK {
                break;
            }
        }
        return Some(t);
    }
    None
}

/// The jitter of `e`'s start at `slot`: in `[0, jitter)`, from a hash of the seed, the task
/// and the slot.
fn jitter(seed: u64, e: &Entry, slot: DateTime<Utc>) -> chrono::Duration {
    let Some(max) = e.jitter.filter(|j| !j.is_zero()) else {
        return chrono::Duration::zero();
    };
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(e.task.to_string().as_bytes());
    h.update(slot.timestamp().to_le_bytes());
    let d = h.finalize();
    let n = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    chrono::Duration::milliseconds((n % max_ms) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "drkit.toml", &|_| None).unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        crate::catalog::parse_time(s).unwrap()
    }

    const STORAGE: &str = "[storage.l]\ntype = \"local\"\n";

    fn job(name: &str, extra: &str) -> String {
        format!("[job.{name}]\nsource = {{ type = \"sqlite\" }}\nstorage = [\"l\"]\n{extra}\n")
    }

    fn scheduler(text: &str, now: &str, last: Option<&str>) -> Scheduler {
        let plan = Plan::of(&config(&format!("{STORAGE}{text}"))).unwrap();
        let last = last.map(t);
        Scheduler::new(plan, t(now), &|_| last, 7)
    }

    fn backup(j: &str) -> Task {
        Task::Backup(j.into())
    }

    fn slot(task: Task, at: &str) -> Start {
        Start {
            task,
            why: Why::Slot(t(at)),
        }
    }

    #[test]
    fn plan_zones_and_errors() {
        let c = config(&format!(
            "{STORAGE}[daemon]\ntimezone = \"Europe/Berlin\"\nmax_parallel = 2\n{}{}{}",
            job(
                "a",
                "schedule = \"0 2 * * *\"\ndrill = { schedule = \"0 3 * * 0\" }"
            ),
            job(
                "b",
                "schedule = \"0 2 * * *\"\ntimezone = \"America/New_York\""
            ),
            job("c", ""),
        ));
        let plan = Plan::of(&c).unwrap();
        assert_eq!(plan.max_parallel(), 2);
        let got: Vec<(String, String)> = plan
            .entries()
            .iter()
            .map(|e| {
                (
                    e.task.to_string(),
                    e.next_slot(t("2026-11-28 12:00")).unwrap().to_rfc3339(),
                )
            })
            .collect();
        // 2026-11-29 is a Sunday; Berlin is UTC+1 and New York UTC-5 in November.
        let want = [
            ("backup a", "2026-11-29T01:00:00+00:00"),
            ("drill a", "2026-11-29T02:00:00+00:00"),
            ("backup b", "2026-11-29T07:00:00+00:00"),
        ];
        assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
        let none = config(&format!("{STORAGE}{}", job("c", "")));
        let e = Plan::of(&none).unwrap_err();
        assert!(e.to_string().contains("no job has a schedule"), "{e}");
        for (text, says) in [
            ("[daemon]\ntimezone = \"Mars/Olympus\"\n", "daemon.timezone"),
            ("[daemon]\nmax_parallel = 0\n", "max_parallel"),
        ] {
            let e =
                Config::parse(&format!("{STORAGE}{text}"), "drkit.toml", &|_| None).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
        let e = Config::parse(
            &format!(
                "{STORAGE}{}",
                job("a", "schedule = \"@daily\"\ntimezone = \"Berlin\"")
            ),
            "drkit.toml",
            &|_| None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("job.a.timezone"), "{e}");
    }

    #[test]
    fn catch_up_table() {
        let daily = job("a", "schedule = \"0 2 * * *\"");
        // (newest run, now, the catch-up start expected at now)
        let cases: [(Option<&str>, &str, Option<Why>); 5] = [
            // The newest run is after the last slot: nothing to catch up.
            (Some("2026-11-28 02:00:05"), "2026-11-28 12:00", None),
            // It missed the 02:00 of today.
            (
                Some("2026-11-27 02:00:05"),
                "2026-11-28 12:00",
                Some(Why::CatchUp {
                    missed: t("2026-11-28 02:00"),
                    newest: Some(t("2026-11-27 02:00:05")),
                }),
            ),
            // Days down: one run, for the last slot only.
            (
                Some("2026-11-20 02:00:05"),
                "2026-11-28 01:59",
                Some(Why::CatchUp {
                    missed: t("2026-11-27 02:00"),
                    newest: Some(t("2026-11-20 02:00:05")),
                }),
            ),
            // Never backed up.
            (
                None,
                "2026-11-28 12:00",
                Some(Why::CatchUp {
                    missed: t("2026-11-28 02:00"),
                    newest: None,
                }),
            ),
            // Exactly at the slot: it runs once, as the catch-up.
            (
                Some("2026-11-27 02:00:05"),
                "2026-11-28 02:00",
                Some(Why::CatchUp {
                    missed: t("2026-11-28 02:00"),
                    newest: Some(t("2026-11-27 02:00:05")),
                }),
            ),
        ];
        for (last, now, want) in cases {
            let mut s = scheduler(&daily, now, last);
            let (starts, _) = s.due(t(now));
            let got = starts.into_iter().next().map(|s| s.why);
            assert_eq!(got, want, "newest {last:?} now {now}");
            // Once caught up (or not), the next start is the next slot.
            s.finished(&backup("a"), t(now), false);
            assert!(s.next_wake().unwrap() > t(now));
        }
    }

    #[test]
    fn overrun_skips_and_counts() {
        let mut s = scheduler(
            &job("a", "schedule = \"*/5 * * * * *\""),
            "2026-11-28 00:00:00",
            Some("2026-11-28 00:00:00"),
        );
        assert_eq!(s.next_wake(), Some(t("2026-11-28 00:00:05")));
        let (starts, _) = s.due(t("2026-11-28 00:00:05"));
        assert_eq!(starts, vec![slot(backup("a"), "2026-11-28 00:00:05")]);
        // The run takes 12 s: the slots of :10 and :15 come while it runs.
        for at in ["2026-11-28 00:00:10", "2026-11-28 00:00:15"] {
            assert_eq!(s.due(t(at)), (vec![], vec![]));
        }
        assert_eq!(s.running(), vec![backup("a")]);
        let notes = s.finished(&backup("a"), t("2026-11-28 00:00:17"), false);
        assert_eq!(
            notes,
            vec![Note::Skipped {
                task: backup("a"),
                count: 2
            }]
        );
        assert_eq!(s.next_wake(), Some(t("2026-11-28 00:00:20")));
        let (starts, _) = s.due(t("2026-11-28 00:00:20"));
        assert_eq!(starts, vec![slot(backup("a"), "2026-11-28 00:00:20")]);
        // A daemon that slept through many slots (a suspended laptop) runs once.
        s.finished(&backup("a"), t("2026-11-28 00:00:21"), false);
        let (starts, _) = s.due(t("2026-11-28 01:00:02"));
        assert_eq!(starts, vec![slot(backup("a"), "2026-11-28 00:00:25")]);
        assert_eq!(s.next_wake(), Some(t("2026-11-28 01:00:05")));
    }

    #[test]
    fn parallel_limit_and_one_run_per_job() {
        let text = format!(
            "[daemon]\nmax_parallel = 2\n{}{}{}",
            job(
                "a",
                "schedule = \"0 * * * *\"\ndrill = { schedule = \"0 * * * *\" }"
            ),
            job("b", "schedule = \"0 * * * *\""),
            job("c", "schedule = \"0 * * * *\""),
        );
        let mut s = scheduler(&text, "2026-11-28 00:30", Some("2026-11-28 00:00:01"));
        let drill_a = Task::Drill("a".into());
        // Plan order: backup a, drill a, backup b, backup c. Drill a waits for backup a (one
        // job), backup c for a free place (two at once).
        let (starts, _) = s.due(t("2026-11-28 01:00"));
        assert_eq!(
            starts,
            vec![
                slot(backup("a"), "2026-11-28 01:00"),
                slot(backup("b"), "2026-11-28 01:00")
            ]
        );
        // The waiting ones start when a run ends, not by the clock.
        assert_eq!(s.next_wake(), Some(t("2026-11-28 02:00")));
        assert_eq!(s.due(t("2026-11-28 01:01")).0, vec![]);
        s.finished(&backup("a"), t("2026-11-28 01:10"), false);
        assert_eq!(
            s.due(t("2026-11-28 01:10")).0,
            vec![slot(drill_a.clone(), "2026-11-28 01:00")]
        );
        s.finished(&backup("b"), t("2026-11-28 01:20"), false);
        assert_eq!(
            s.due(t("2026-11-28 01:20")).0,
            vec![slot(backup("c"), "2026-11-28 01:00")]
        );
        // The 02:00 slot of drill a comes while it still runs: skipped, said when it ends.
        // At 02:00 drill a and backup c still run: two at once, nothing more starts.
        assert_eq!(s.due(t("2026-11-28 02:00")).0, vec![]);
        let notes = s.finished(&drill_a, t("2026-11-28 02:05"), false);
        assert_eq!(
            notes,
            vec![Note::Skipped {
                task: drill_a,
                count: 1
            }]
        );
    }

    #[test]
    fn retries_back_off_and_yield_to_the_next_slot() {
        let text = job(
            "a",
            "schedule = \"0 * * * *\"\nretry = { attempts = 2, backoff = \"1m\" }",
        );
        let mut s = scheduler(&text, "2026-11-28 00:30", Some("2026-11-28 00:00:01"));
        assert_eq!(
            s.due(t("2026-11-28 01:00")).0,
            vec![slot(backup("a"), "2026-11-28 01:00")]
        );
        let steps = [
            // (failed at, the note, the start that follows)
            ("2026-11-28 01:00:30", "2026-11-28 01:01:30", 1),
            ("2026-11-28 01:02:00", "2026-11-28 01:04:00", 2),
        ];
        for (failed, at, attempt) in steps {
            let notes = s.finished(&backup("a"), t(failed), true);
            assert_eq!(
                notes,
                vec![Note::Retry {
                    task: backup("a"),
                    attempt,
                    at: t(at)
                }]
            );
            assert_eq!(s.next_wake(), Some(t(at)));
            assert_eq!(
                s.due(t(at)).0,
                vec![Start {
                    task: backup("a"),
                    why: Why::Retry { attempt }
                }]
            );
        }
        let notes = s.finished(&backup("a"), t("2026-11-28 01:05"), true);
        assert_eq!(
            notes,
            vec![Note::NoRetry {
                task: backup("a"),
                attempts: 2,
                next_slot: None
            }]
        );
        assert_eq!(s.next_wake(), Some(t("2026-11-28 02:00")));
        // The 02:00 run fails: the first retry is due at 02:01, and succeeds.
        assert_eq!(s.due(t("2026-11-28 02:00")).0.len(), 1);
        assert_eq!(
            s.finished(&backup("a"), t("2026-11-28 02:00:00"), true)
                .len(),
            1
        );
        assert_eq!(s.due(t("2026-11-28 02:01")).0.len(), 1);
        assert_eq!(
            s.finished(&backup("a"), t("2026-11-28 02:01:10"), false),
            vec![]
        );
        // A failure that cannot pass (exit 2, 3, 4) is not retried.
        assert_eq!(s.due(t("2026-11-28 03:00")).0.len(), 1);
        assert_eq!(
            s.finished(&backup("a"), t("2026-11-28 03:00:10"), false),
            vec![]
        );
        assert_eq!(s.next_wake(), Some(t("2026-11-28 04:00")));

        // A retry that would run after the next slot gives way to it.
        let text = job(
            "b",
            "schedule = \"0 * * * *\"\nretry = { attempts = 3, backoff = \"40m\" }",
        );
        let mut s = scheduler(&text, "2026-11-28 00:30", Some("2026-11-28 00:00:01"));
        s.due(t("2026-11-28 01:00"));
        assert_eq!(
            s.finished(&backup("b"), t("2026-11-28 01:30"), true),
            vec![Note::NoRetry {
                task: backup("b"),
                attempts: 0,
                next_slot: Some(t("2026-11-28 02:00"))
            }]
        );
        // No retry policy: a failure is only logged by the runtime.
        let mut s = scheduler(
            &job("c", "schedule = \"0 * * * *\""),
            "2026-11-28 00:30",
            Some("2026-11-28 00:00:01"),
        );
        s.due(t("2026-11-28 01:00"));
        assert_eq!(
            s.finished(&backup("c"), t("2026-11-28 01:30"), true),
            vec![]
        );
        assert_eq!(s.next_wake(), Some(t("2026-11-28 02:00")));
    }

    #[test]
    fn jitter_is_bounded_and_spread() {
        let text = job("a", "schedule = \"0 * * * *\"\njitter = \"10m\"");
        let plan = Plan::of(&config(&format!("{STORAGE}{text}"))).unwrap();
        let mut delays = std::collections::BTreeSet::new();
        for seed in 0..20 {
            let mut s = Scheduler::new(
                plan.clone(),
                t("2026-11-28 00:30"),
                &|_| Some(t("2026-11-28 00:00:01")),
                seed,
            );
            assert_eq!(s.due(t("2026-11-28 01:00")).0, vec![], "seed {seed}");
            let at = s.next_wake().unwrap();
            assert!(
                at >= t("2026-11-28 01:00") && at < t("2026-11-28 01:10"),
                "seed {seed}: {at}"
            );
            assert_eq!(s.due(at).0, vec![slot(backup("a"), "2026-11-28 01:00")]);
            delays.insert(at);
        }
        assert!(
            delays.len() > 10,
            "20 hosts start at {} different times",
            delays.len()
        );
    }

    #[test]
    fn reload_keeps_what_runs() {
        let mut s = scheduler(
            &job("a", "schedule = \"*/10 * * * * *\""),
            "2026-11-28 00:00:00",
            Some("2026-11-28 00:00:00"),
        );
        assert_eq!(s.due(t("2026-11-28 00:00:10")).0.len(), 1);
        let new = Plan::of(&config(&format!(
            "{STORAGE}[daemon]\nmax_parallel = 2\n{}{}",
            job("a", "schedule = \"*/3 * * * * *\""),
            job("b", "schedule = \"*/3 * * * * *\"")
        )))
        .unwrap();
        s.replace(new, t("2026-11-28 00:00:11"));
        assert_eq!(s.running(), vec![backup("a")]);
        assert_eq!(s.next_wake(), Some(t("2026-11-28 00:00:12")));
        // a still runs: only b starts; a's slot is skipped.
        assert_eq!(
            s.due(t("2026-11-28 00:00:12")).0,
            vec![slot(backup("b"), "2026-11-28 00:00:12")]
        );
        let notes = s.finished(&backup("a"), t("2026-11-28 00:00:13"), false);
        assert_eq!(
            notes,
            vec![Note::Skipped {
                task: backup("a"),
                count: 1
            }]
        );
        // A task removed by a reload while it ran is forgotten when it ends.
        let only_b = Plan::of(&config(&format!(
            "{STORAGE}{}",
            job("b", "schedule = \"*/3 * * * * *\"")
        )))
        .unwrap();
        s.replace(only_b, t("2026-11-28 00:00:14"));
        assert_eq!(
            s.finished(&backup("a"), t("2026-11-28 00:00:14"), true),
            vec![]
        );
    }
}
