//! End to end: metrics (docs/monitoring.md). `drkit daemon --listen` serves `/metrics` that
//! `promtool check metrics` accepts and a real Prometheus scrapes and reads back, and
//! `/healthz`; `--metrics-file` writes the same exposition, and its counters continue.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use drkit_tests::prometheus::{check_metrics, free_port, Prometheus};
use drkit_tests::receiver::http_get;
use drkit_tests::Scratch;

/// One sample of a text exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a Prometheus text exposition (comments skipped).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let name = &line[..open];
                let mut labels = BTreeMap::new();
                let b = line.as_bytes();
                let mut i = open + 1;
                loop {
                    while i < b.len() && (b[i] == b' ' || b[i] == b',') {
                        i += 1;
                    }
                    if i >= b.len() || b[i] == b'}' {
                        i += 1;
                        break;
                    }
                    let eq = i + line[i..].find('=').expect("label =");
                    let key = line[i..eq].trim().to_string();
                    i = eq + 1;
                    assert_eq!(b[i], b'"', "label value not quoted: {line}");
                    i += 1;
                    let mut val = String::new();
                    while b[i] != b'"' {
                        if b[i] == b'\\' {
                            i += 1;
                            val.push(match b[i] {
                                b'n' => '\n',
                                c => c as char,
                            });
                        } else {
                            let c = line[i..].chars().next().unwrap();
                            val.push(c);
                            i += c.len_utf8() - 1;
                        }
                        i += 1;
                    }
                    i += 1;
                    labels.insert(key, val);
                }
                (name.to_string(), labels, &line[i.min(line.len())..])
            }
            None => {
                let sp = line.find(' ').expect("a value");
                (line[..sp].to_string(), BTreeMap::new(), &line[sp..])
            }
        };
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no value: {line}"));
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of the series `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

const APP_LOCAL: &[(&str, &str)] = &[("job", "app"), ("storage", "local")];

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[track_caller]
fn assert_recent(what: &str, t: f64) {
    let now = now_unix();
    assert!(
        t > now - 600.0 && t < now + 5.0,
        "{what} = {t} is not a Unix time of the last 10 min (now {now})"
    );
}

/// A SQLite job `app` on `app.db` (10 rows) into `backups`, with `job` lines and `tail`.
fn setup(job: &str, tail: &str) -> Scratch {
    let s = Scratch::new();
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n\n[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"local\"]\n{job}\n\n{tail}\n",
        s.path("backups").display(),
        s.path("app.db").display()
    ));
    let c = rusqlite::Connection::open(s.path("app.db")).unwrap();
    c.execute_batch(
        "CREATE TABLE t(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) INSERT INTO t SELECT i FROM n;",
    )
    .unwrap();
    s
}

/// `drkit daemon --listen 127.0.0.1:PORT`, stopped with SIGTERM (then SIGKILL) on drop.
struct Daemon {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(s: &Scratch) -> Daemon {
        let port = free_port();
        let log = s.path("daemon.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = s
            .command(&["daemon", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start drkit daemon");
        Daemon { child, port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path`, panicking if the daemon died.
    fn get(&mut self, path: &str) -> Option<drkit_tests::receiver::Response> {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("the daemon exited with {st}:\n{}", self.log());
        }
        http_get(&self.url(path)).ok()
    }

    /// Stop with SIGTERM and return the exit code.
    fn stop(mut self) -> Option<i32> {
        self.terminate()
    }

    fn terminate(&mut self) -> Option<i32> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return st.code();
        }
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

#[test]
fn the_daemon_serves_metrics_that_prometheus_scrapes_and_healthz() {
    let s = setup(
        "schedule = \"* * * * * *\"\nkeep = { last = 3 }",
        "[job.app.drill]\nschedule = \"*/2 * * * * *\"\nmax_age = \"1h\"\nchecks = [ { name = \"rows\", sql = \"select count(*) from t\", min = 10 } ]\n",
    );
    let mut d = Daemon::start(&s);
    const BACKUP: &str = "drkit_backup_last_success_timestamp_seconds";
    const DRILL: &str = "drkit_drill_last_success_timestamp_seconds";

    // Every value /metrics showed, to compare with what Prometheus read.
    let mut seen_backup: Vec<f64> = Vec::new();
    let mut seen_drill: Vec<f64> = Vec::new();
    let record = |text: &str, sb: &mut Vec<f64>, sd: &mut Vec<f64>| {
        let samples = parse(text);
        if let Some(v) = value(&samples, BACKUP, APP_LOCAL) {
            if !sb.contains(&v) {
                sb.push(v);
            }
        }
        if let Some(v) = value(&samples, DRILL, APP_LOCAL) {
            if !sd.contains(&v) {
                sd.push(v);
            }
        }
    };

    // The series appear once a backup and a drill ran.
    let deadline = Instant::now() + Duration::from_secs(40);
    let exposition = loop {
        let last = d.get("/metrics");
        if let Some(a) = &last {
            if a.status == 200 {
                let text = a.text();
                record(&text, &mut seen_backup, &mut seen_drill);
                if !seen_backup.is_empty() && !seen_drill.is_empty() {
                    assert!(
                        a.header("content-type")
                            .is_some_and(|c| c.starts_with("text/plain")),
                        "content-type {:?}",
                        a.header("content-type")
                    );
                    break text;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {BACKUP} and {DRILL} for job app after 40 s; last /metrics: {:?}\ndaemon:\n{}",
            last.map(|a| (a.status, a.text())),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (code, out) = check_metrics(&exposition);
    assert_eq!(code, 0, "promtool check metrics: {out}\n{exposition}");
    let samples = parse(&exposition);
    assert_recent(BACKUP, value(&samples, BACKUP, APP_LOCAL).unwrap());
    assert_recent(DRILL, value(&samples, DRILL, APP_LOCAL).unwrap());
    assert_eq!(
        value(
            &samples,
            "drkit_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{exposition}"
    );
    assert_eq!(
        value(&samples, "drkit_drill_last_passed", APP_LOCAL),
        Some(1.0)
    );

    // /healthz: fresh backup and a passed drill.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = d.get("/healthz").expect("/healthz answers");
        if h.status == 200 {
            let v = h.json();
            assert_eq!(v["ok"], true, "{v}");
            assert_eq!(v["problems"], serde_json::json!([]), "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz {} {}",
            h.status,
            h.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Prometheus scrapes the daemon; what it reads back is what /metrics showed.
    let prom = Prometheus::start(&format!("127.0.0.1:{}", d.port));
    let deadline = Instant::now() + Duration::from_secs(30);
    let sel = |m: &str| format!("{m}{{job=\"app\",storage=\"local\"}}");
    let mut last_check = Instant::now() - Duration::from_secs(1);
    let (pb, pd) = loop {
        if let Some(a) = d.get("/metrics") {
            record(&a.text(), &mut seen_backup, &mut seen_drill);
        }
        if last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            let b = prom.query_vector(&sel(BACKUP));
            let dr = prom.query_vector(&sel(DRILL));
            if let (Some(b), Some(dr)) = (b.first(), dr.first()) {
                let same = |v: f64, seen: &[f64]| seen.iter().any(|s| s.floor() == v.floor());
                if same(b.1, &seen_backup) && same(dr.1, &seen_drill) {
                    break (b.1, dr.1);
                }
                assert!(
                    Instant::now() < deadline,
                    "Prometheus read {BACKUP} = {} and {DRILL} = {}, /metrics showed {seen_backup:?} and {seen_drill:?}",
                    b.1,
                    dr.1
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has no {BACKUP} / {DRILL} of app after 30 s: up = {}",
            prom.query("up")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_recent("Prometheus's backup timestamp", pb);
    assert_recent("Prometheus's drill timestamp", pd);
    let info = prom.query_vector("drkit_build_info");
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0].0["version"], env!("CARGO_PKG_VERSION"), "{info:?}");
    assert_eq!(info[0].1, 1.0);
    drop(prom);
    assert_eq!(
        d.stop(),
        Some(0),
        "the daemon did not stop cleanly on SIGTERM"
    );
}

#[test]
fn healthz_is_503_naming_a_job_that_never_backed_up() {
    let s = setup("schedule = \"* * * * * *\"\nkeep = { last = 2 }", "");
    // A second job without schedule: never backed up.
    let mut text = std::fs::read_to_string(s.path("drkit.toml")).unwrap();
    text.push_str(&format!(
        "[job.other]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"local\"]\n",
        s.path("app.db").display()
    ));
    s.config(&text);
    let mut d = Daemon::start(&s);
    let problem_jobs = |v: &serde_json::Value| -> Vec<String> {
        v["problems"]
            .as_array()
            .unwrap_or_else(|| panic!("no problems array: {v}"))
            .iter()
            .map(|p| p["job"].as_str().unwrap_or("").to_string())
            .collect()
    };
    // Once app has its backup, the only problem left is the job that never backed up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(h) = d.get("/healthz") {
            assert_eq!(h.status, 503, "{}", h.text());
            let v = h.json();
            assert_eq!(v["ok"], false, "{v}");
            let jobs = problem_jobs(&v);
            assert!(jobs.contains(&"other".to_string()), "{v}");
            if jobs.iter().all(|j| j == "other") {
                let p = &v["problems"][0];
                for key in ["job", "storage", "state", "detail"] {
                    assert!(p.get(key).is_some(), "problem without {key}: {v}");
                }
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "app still has a problem after 30 s:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_file_is_valid_and_its_counters_continue() {
    let s = setup("", "");
    std::fs::create_dir(s.path("prom")).unwrap();
    let file = s.path("prom/drkit.prom");
    let f = file.to_str().unwrap();
    s.drkit(&["backup", "--metrics-file", f]).expect_code(0);
    let text = std::fs::read_to_string(&file).expect("the metrics file");
    let (code, out) = check_metrics(&text);
    assert_eq!(code, 0, "promtool check metrics: {out}\n{text}");
    let samples = parse(&text);
    assert_recent(
        "drkit_backup_last_success_timestamp_seconds",
        value(
            &samples,
            "drkit_backup_last_success_timestamp_seconds",
            APP_LOCAL,
        )
        .unwrap_or_else(|| panic!("no backup timestamp of app on local:\n{text}")),
    );
    assert_eq!(
        value(&samples, "drkit_backups", APP_LOCAL),
        Some(1.0),
        "{text}"
    );
    assert!(value(&samples, "drkit_build_info", &[]).is_some(), "{text}");
    // Written atomically: nothing but the file is left in its folder.
    let left: Vec<String> = std::fs::read_dir(s.path("prom"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["drkit.prom".to_string()]);

    // A failing backup, twice, with the same file: the counter continues.
    let bad = setup("", "");
    std::fs::remove_file(bad.path("app.db")).unwrap();
    let file = bad.path("fail.prom");
    let f = file.to_str().unwrap();
    let failures = |n: f64| {
        let text = std::fs::read_to_string(&file).expect("the metrics file");
        let (code, out) = check_metrics(&text);
        assert_eq!(code, 0, "promtool check metrics: {out}\n{text}");
        assert_eq!(
            value(&parse(&text), "drkit_backup_failures_total", APP_LOCAL),
            Some(n),
            "{text}"
        );
    };
    bad.drkit(&["backup", "--metrics-file", f]).expect_code(1);
    failures(1.0);
    bad.drkit(&["backup", "--metrics-file", f]).expect_code(1);
    failures(2.0);
}

#[test]
fn the_daemon_serves_the_job_limits_of_a_reloaded_config() {
    let s = setup("schedule = \"0 0 0 1 1 *\"\nmax_age = \"26h\"", "");
    let config = std::fs::read_to_string(s.path("drkit.toml")).unwrap();
    let mut d = Daemon::start(&s);
    const MAX_AGE: &str = "drkit_backup_max_age_seconds";
    let limit = |d: &mut Daemon| {
        d.get("/metrics")
            .and_then(|r| value(&parse(&r.text()), MAX_AGE, &[("job", "app")]))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while limit(&mut d) != Some(93_600.0) {
        assert!(Instant::now() < deadline, "no 26 h limit:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(s.path("drkit.toml"), config.replace("\"26h\"", "\"2h\"")).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &d.child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while limit(&mut d) != Some(7_200.0) {
        assert!(
            Instant::now() < deadline,
            "the reloaded 2 h limit is not served: {:?}\n{}",
            limit(&mut d),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.log().contains("SIGHUP: reloaded"), "{}", d.log());
    assert_eq!(d.stop(), Some(0));
}
