//! What the daemon runs: the scheduled tasks of a config (each job's `schedule` and
//! `drill.schedule`), and which are due next. Pure: the config and `after` in, tasks out.

use chrono::{DateTime, Utc};

use crate::schedule::{next_due, Schedule};
use crate::{Config, Error, Result};

/// One scheduled task.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// The tasks of a config with their schedules, in job order (backup before drill).
#[derive(Debug, Clone)]
pub struct Plan {
    schedules: Vec<Schedule>,
    tasks: Vec<Task>,
}

impl Plan {
    /// Every scheduled task of `config`; a config error when no job has a schedule.
    pub fn of(config: &Config) -> Result<Plan> {
        let mut plan = Plan {
            schedules: Vec::new(),
            tasks: Vec::new(),
        };
        for (name, job) in &config.job {
            if let Some(expr) = &job.schedule {
                plan.schedules.push(Schedule::parse(expr)?);
                plan.tasks.push(Task::Backup(name.clone()));
            }
            if let Some(expr) = job.drill.as_ref().and_then(|d| d.schedule.as_ref()) {
                plan.schedules.push(Schedule::parse(expr)?);
                plan.tasks.push(Task::Drill(name.clone()));
            }
        }
        if plan.tasks.is_empty() {
            return Err(Error::config(
                "no job has a schedule: add `schedule = \"0 2 * * *\"` to a job",
            ));
        }
        Ok(plan)
    }

    /// The next time strictly after `after` when tasks are due, and those tasks in plan order.
    pub fn next(&self, after: DateTime<Utc>) -> Result<(DateTime<Utc>, Vec<Task>)> {
        let (at, due) = next_due(&self.schedules, after)
            .ok_or_else(|| Error::config("no schedule runs again"))?;
        Ok((at, due.into_iter().map(|i| self.tasks[i].clone()).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "drkit.toml", &|_| None).unwrap()
    }

    #[test]
    fn plan_and_next() {
        let c = config(
            "[storage.l]\ntype = \"local\"\n\
             [job.a]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\nschedule = \"0 2 * * *\"\ndrill = { schedule = \"0 3 * * 0\" }\n\
             [job.b]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\nschedule = \"0 2 * * *\"\n\
             [job.c]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\n",
        );
        let plan = Plan::of(&c).unwrap();
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        // 2026-11-29 is a Sunday.
        let cases = [
            (
                "2026-11-28T12:00:00Z",
                "2026-11-29T02:00:00Z",
                vec![Task::Backup("a".into()), Task::Backup("b".into())],
            ),
            (
                "2026-11-29T02:00:00Z",
                "2026-11-29T03:00:00Z",
                vec![Task::Drill("a".into())],
            ),
            (
                "2026-11-29T03:00:00Z",
                "2026-11-30T02:00:00Z",
                vec![Task::Backup("a".into()), Task::Backup("b".into())],
            ),
        ];
        for (after, at, tasks) in cases {
            let (got_at, got) = plan.next(t(after)).unwrap();
            assert_eq!(got_at, t(at), "after {after}");
            assert_eq!(got, tasks, "after {after}");
        }
        assert_eq!(Task::Drill("a".into()).to_string(), "drill a");
        let none = config("[storage.l]\ntype = \"local\"\n[job.c]\nsource = { type = \"sqlite\" }\nstorage = [\"l\"]\n");
        let e = Plan::of(&none).unwrap_err();
        assert!(e.to_string().contains("no job has a schedule"), "{e}");
    }
}
