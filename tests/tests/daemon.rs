//! End to end: `drkit daemon` as production runs it. Three jobs on second-level schedules
//! with a catch-up at start, a parallel limit and a retry; a SIGHUP that changes a schedule;
//! SIGTERM while a backup runs (it is cancelled: no manifest, exit 0) and while a drill runs
//! (its scratch copy is removed). SQLite into a local folder; the real binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use drkit_tests::{files_under, Scratch};

/// A SQLite database of `rows` small rows, or `mib` MiB of random blobs.
fn database(path: &std::path::Path, mib: u32) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);")
        .unwrap();
    if mib > 0 {
        c.execute_batch(&format!(
            "CREATE TABLE big(b); WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {mib}) INSERT INTO big SELECT randomblob(1048576) FROM n;"
        ))
        .unwrap();
    }
}

fn job(s: &Scratch, name: &str, extra: &str) -> String {
    format!(
        "[job.{name}]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"local\"]\n{extra}\n",
        s.path(&format!("{name}.db")).display()
    )
}

fn storage(s: &Scratch) -> String {
    format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n",
        s.path("backups").display()
    )
}

/// A running daemon whose stderr lines are collected as they come.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(s: &Scratch, tmp: Option<&std::path::Path>) -> Daemon {
        let mut cmd = s.command(&["daemon"]);
        if let Some(tmp) = tmp {
            cmd.env("TMPDIR", tmp);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                sink.lock().unwrap().push(line);
            }
        });
        Daemon { child, lines }
    }

    fn signal(&self, name: &str) {
        assert!(std::process::Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Wait until a line contains `needle` (at most `secs`).
    fn wait_for(&mut self, needle: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} after {secs} s:\n{}",
                self.log()
            );
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the daemon ended:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then the exit code and the whole log.
    fn stop(mut self) -> (Option<i32>, String) {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(90);
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            assert!(Instant::now() < deadline, "the daemon did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100));
        (code, self.log())
    }
}

/// Every backup of the listing: (job, started, finished).
fn backups(s: &Scratch) -> Vec<(String, DateTime<Utc>, DateTime<Utc>)> {
    let listed = s.drkit(&["--json", "list"]).json();
    let time = |v: &serde_json::Value| -> DateTime<Utc> { v.as_str().unwrap().parse().unwrap() };
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["job"].as_str().unwrap().to_string(),
                time(&m["started_at"]),
                time(&m["finished_at"]),
            )
        })
        .collect()
}

#[test]
fn three_jobs_catch_up_overlap_never_and_follow_a_reload() {
    let s = Scratch::new();
    for name in ["a", "b", "c"] {
        database(&s.path(&format!("{name}.db")), 0);
    }
    let config = |c_schedule: &str| {
        format!(
            "{}[daemon]\nmax_parallel = 2\n{}{}{}{}",
            storage(&s),
            job(&s, "a", "schedule = \"*/5 * * * * *\""),
            job(&s, "b", "schedule = \"*/5 * * * * *\""),
            job(&s, "c", &format!("schedule = \"{c_schedule}\"")),
            // Its file does not exist: it fails at its catch-up and once more on its retry.
            job(
                &s,
                "gone",
                "schedule = \"0 0 0 1 1 *\"\nretry = { attempts = 1, backoff = \"1s\" }"
            ),
        )
    };
    s.config(&config("*/10 * * * * *"));
    let mut d = Daemon::start(&s, None);
    // Nothing was ever backed up: every job catches up at once.
    for job in ["a", "b", "c", "gone"] {
        d.wait_for(&format!("daemon: backup {job} starts (catch-up"), 30);
    }
    d.wait_for("daemon: backup gone failed; retry 1 at", 30);
    d.wait_for("daemon: backup gone starts (retry 1)", 30);
    d.wait_for("daemon: backup gone failed after 1 retries", 30);
    std::thread::sleep(Duration::from_secs(12));
    // c backs up every 2 s from now on.
    let reload = Utc::now();
    s.config(&config("*/2 * * * * *"));
    d.signal("-HUP");
    d.wait_for("SIGHUP: reloaded", 10);
    std::thread::sleep(Duration::from_secs(12));
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");

    let all = backups(&s);
    let of = |j: &str| -> Vec<&(String, DateTime<Utc>, DateTime<Utc>)> {
        all.iter().filter(|(job, _, _)| job == j).collect()
    };
    // ~26 s: a and b ran at the catch-up and about every 5 s after it.
    for j in ["a", "b"] {
        let n = of(j).len();
        assert!((4..=7).contains(&n), "{j}: {n} backups\n{log}");
    }
    // c: every 10 s before the reload, every 2 s after it.
    let before = of("c").iter().filter(|(_, t, _)| *t < reload).count();
    let after = of("c").iter().filter(|(_, t, _)| *t >= reload).count();
    assert!(
        (1..=3).contains(&before),
        "c before the reload: {before}\n{log}"
    );
    assert!(after >= 4, "c after the reload: {after}\n{log}");
    // Never two backups of one job at once; never more than two at once.
    for (i, x) in all.iter().enumerate() {
        let overlapping = all
            .iter()
            .enumerate()
            .filter(|(k, y)| *k != i && y.1 < x.2 && x.1 < y.2)
            .map(|(_, y)| y)
            .collect::<Vec<_>>();
        assert!(
            overlapping.iter().all(|y| y.0 != x.0),
            "two backups of {} overlap: {x:?} {overlapping:?}",
            x.0
        );
        let at_start = all.iter().filter(|y| y.1 <= x.1 && x.1 < y.2).count();
        assert!(at_start <= 2, "{at_start} backups ran at {}\n{log}", x.1);
    }
    assert!(of("gone").is_empty());
}

#[test]
fn sigterm_during_a_backup_cancels_it_and_commits_nothing() {
    let s = Scratch::new();
    database(&s.path("big.db"), 300);
    database(&s.path("small.db"), 0);
    s.config(&format!(
        "{}{}{}",
        storage(&s),
        job(&s, "small", "schedule = \"0 0 0 1 1 *\""),
        job(&s, "big", "schedule = \"0 0 0 1 1 *\"")
    ));
    s.drkit(&["backup", "small"]).expect_code(0);
    let mut d = Daemon::start(&s, None);
    // big was never backed up: it starts at once (catch-up); small is fresh.
    d.wait_for("daemon: backup big starts", 30);
    std::thread::sleep(Duration::from_millis(300));
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("daemon: stopping: backup big is cancelled; nothing of it is committed"),
        "{log}"
    );
    assert!(
        !log.contains("big: backup"),
        "big finished before SIGTERM:\n{log}"
    );
    assert!(!log.contains("backup small starts"), "{log}");
    let jobs: Vec<String> = backups(&s).into_iter().map(|b| b.0).collect();
    assert_eq!(jobs, vec!["small".to_string()], "{log}");
    // Of big, only its lock file (a local folder's job lock) is there: no data, no temp.
    let left: Vec<String> = files_under(&s.path("backups"))
        .into_iter()
        .filter(|f| f.starts_with("big/") && f != "big/.drkit.lock")
        .collect();
    assert_eq!(left, Vec::<String>::new());
}

#[test]
fn sigterm_during_a_drill_removes_its_scratch_copy() {
    let s = Scratch::new();
    database(&s.path("big.db"), 200);
    s.config(&format!(
        "{}{}",
        storage(&s),
        job(&s, "big", "drill = { schedule = \"0 0 0 1 1 *\" }")
    ));
    s.drkit(&["backup"]).expect_code(0);
    let tmp = s.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let scratch = || -> Vec<String> {
        std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("drkit-drill-"))
            .collect()
    };
    let mut d = Daemon::start(&s, Some(&tmp));
    // Never drilled: the drill catches up at once.
    d.wait_for("daemon: drill big starts (catch-up", 30);
    let deadline = Instant::now() + Duration::from_secs(60);
    while scratch().is_empty() {
        assert!(Instant::now() < deadline, "no scratch copy:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(2));
    }
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("drill big is stopped"), "{log}");
    assert_eq!(scratch(), Vec::<String>::new(), "scratch left:\n{log}");
    let reports = files_under(&s.path("backups"))
        .into_iter()
        .filter(|f| f.starts_with("big/drills/"))
        .count();
    assert_eq!(reports, 0, "an interrupted drill keeps no report");
}
