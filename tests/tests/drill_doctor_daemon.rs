//! End to end: restore drills, doctor and the scheduler daemon, on SQLite + a local folder.

use std::time::Duration;

use drkit_tests::{files_under, Scratch};

fn setup(extra: &str) -> Scratch {
    let s = Scratch::new();
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"local\"]\n{extra}\n",
        s.path("backups").display(),
        s.path("app.db").display()
    ));
    let c = rusqlite::Connection::open(s.path("app.db")).unwrap();
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);")
        .unwrap();
    s
}

/// Flip the last byte of the newest backup's archive.
fn corrupt_newest(s: &Scratch) {
    let m = &s.drkit(&["--json", "list"]).json()[0];
    let data = s.path("backups").join(m["data"]["key"].as_str().unwrap());
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
}

fn drill_reports(s: &Scratch) -> Vec<serde_json::Value> {
    files_under(&s.path("backups"))
        .into_iter()
        .filter(|f| f.starts_with("app/drills/") && f.ends_with(".json"))
        .map(|f| {
            serde_json::from_slice(&std::fs::read(s.path("backups").join(f)).unwrap()).unwrap()
        })
        .collect()
}

#[test]
fn drill_passes_then_fails_on_a_corrupt_archive_and_keeps_reports() {
    let s = setup("");
    s.drkit(&["drill"]).expect_code(5); // nothing to drill yet
    s.drkit(&["backup"]).expect_code(0);
    let d = s.drkit(&["--json", "drill"]);
    d.expect_code(0);
    let report = &d.json()[0]["report"];
    assert_eq!(report["ok"], true);
    let scratch = report["scratch"].as_str().unwrap();
    assert!(
        !std::path::Path::new(scratch).exists(),
        "scratch {scratch} not removed"
    );
    assert_eq!(drill_reports(&s).len(), 1);
    // A drill report is not a backup.
    assert_eq!(
        s.drkit(&["--json", "list"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    corrupt_newest(&s);
    std::thread::sleep(Duration::from_millis(1100)); // report names have second resolution
    s.drkit(&["drill"])
        .expect_code(4)
        .expect_one_line_error("FAILED");
    let reports = drill_reports(&s);
    assert_eq!(reports.len(), 2);
    assert!(reports
        .iter()
        .any(|r| r["ok"] == false && r["error_kind"] == "integrity"));
}

#[test]
fn doctor_checks_storage_and_source_then_health() {
    let s = setup("");
    let d = s.drkit(&["doctor"]);
    d.expect_code(5); // all reachable, but no backup yet
    assert!(d.stdout.contains("ok    storage local"), "{}", d.stdout);
    assert!(d.stdout.contains("ok    job app source"), "{}", d.stdout);
    s.drkit(&["backup"]).expect_code(0);
    s.drkit(&["doctor"]).expect_code(0);
    std::fs::remove_file(s.path("app.db")).unwrap();
    let d = s.drkit(&["--json", "doctor"]);
    d.expect_code(1);
    let checks = d.json()["checks"].clone();
    let src = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "job app source")
        .unwrap();
    assert_eq!(src["ok"], false);
    assert!(src["error"].as_str().unwrap().contains("does not exist"));
}

#[test]
fn daemon_runs_the_schedule_until_sigterm() {
    let s = setup("schedule = \"*/1 * * * * *\"\nkeep = { last = 2 }");
    let child = s
        .command(&["daemon"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(4500));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "daemon did not stop cleanly on SIGTERM"
    );
    let runs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" written to local"))
        .count();
    assert!(
        runs >= 3,
        "the daemon ran {runs} backups in 4.5 s of a 1 s schedule"
    );
    let listed = s.drkit(&["--json", "list"]).json();
    // It ran several times, and pruned down to the policy after each run.
    let n = listed.as_array().unwrap().len();
    assert!((1..=2).contains(&n), "{n} backups listed");
    assert!(files_under(&s.path("backups"))
        .iter()
        .all(|f| !f.contains(".drkit-tmp-")));
}

#[test]
fn status_shows_the_last_drill_and_exits_5_when_it_is_overdue_or_failed() {
    let config = |s: &Scratch, max_age: &str| {
        s.config(&format!(
            "[storage.local]\ntype = \"local\"\npath = \"{}\"\n[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"local\"]\ndrill = {{ max_age = \"{max_age}\" }}\n",
            s.path("backups").display(),
            s.path("app.db").display()
        ))
    };
    let s = setup("");
    config(&s, "1h");
    s.drkit(&["backup"]).expect_code(0);
    let row = |s: &Scratch| s.drkit(&["--json", "status"]).json()[0].clone();

    // Backups fine, but no drill yet: overdue.
    let st = s.drkit(&["status"]);
    st.expect_code(5);
    assert!(
        st.stdout.contains("DRILL-STALE") && st.stdout.contains("no restore drill yet"),
        "{}",
        st.stdout
    );
    assert_eq!(row(&s)["state"], "drill-stale");

    // A drill that passed: OK, and the row says so.
    s.drkit(&["drill"]).expect_code(0);
    let st = s.drkit(&["status"]);
    st.expect_code(0);
    assert!(st.stdout.contains("last drill passed"), "{}", st.stdout);
    let r = row(&s);
    assert_eq!(r["state"], "ok");
    assert_eq!(r["drill"]["ok"], true);

    // A newer report that is junk (or forged for another job) is ignored, not trusted.
    let drills = s.path("backups").join("app/drills");
    std::fs::write(drills.join("29991231T000000Z-ffffff.json"), b"{not json").unwrap();
    let st = s.drkit(&["status"]);
    st.expect_code(0);
    assert!(st.stdout.contains("ignored"), "{}", st.stdout);

    // Overdue: the limit passes.
    config(&s, "1s");
    std::thread::sleep(Duration::from_millis(2100));
    let st = s.drkit(&["status"]);
    st.expect_code(5);
    assert!(st.stdout.contains("DRILL-STALE"), "{}", st.stdout);
    config(&s, "1h");

    // A failed drill (corrupt archive): DRILL-FAILED, exit 5; doctor says it too.
    corrupt_newest(&s);
    std::thread::sleep(Duration::from_millis(1100));
    s.drkit(&["drill"]).expect_code(4);
    let st = s.drkit(&["status"]);
    st.expect_code(5);
    assert!(
        st.stdout.contains("DRILL-FAILED") && st.stdout.contains("FAILED:"),
        "{}",
        st.stdout
    );
    let r = row(&s);
    assert_eq!(r["state"], "drill-failed");
    assert_eq!(r["drill"]["ok"], false);
    let d = s.drkit(&["doctor"]);
    d.expect_code(5);
    assert!(d.stdout.contains("DRILL-FAILED"), "{}", d.stdout);
}

#[test]
fn a_drill_over_its_rto_fails_with_the_measured_time() {
    let s = setup("drill = { rto = \"0s\" }");
    s.drkit(&["backup"]).expect_code(0);
    let d = s.drkit(&["drill"]);
    d.expect_code(4)
        .expect_one_line_error("over the recovery time objective rto = 0s");
    let reports = drill_reports(&s);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["ok"], false);
    assert_eq!(reports[0]["error_kind"], "integrity");
    // A generous goal passes.
    let s = setup("drill = { rto = \"15m\" }");
    s.drkit(&["backup"]).expect_code(0);
    s.drkit(&["drill"]).expect_code(0);
    let bad = setup("drill = { rto = \"fast\" }");
    bad.drkit(&["drill"])
        .expect_code(2)
        .expect_one_line_error("drill.rto");
}
