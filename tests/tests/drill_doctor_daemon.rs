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

/// A SQLite database of about `mib` MiB of random blobs (zstd cannot shrink it, so a drill
/// takes long enough to be interrupted).
fn big_setup(mib: u32) -> Scratch {
    let s = setup("");
    let c = rusqlite::Connection::open(s.path("app.db")).unwrap();
    c.execute_batch(&format!(
        "CREATE TABLE big(b); WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {mib}) INSERT INTO big SELECT randomblob(1048576) FROM n;"
    ))
    .unwrap();
    s
}

/// The drill scratch folders under `tmp` (the drill's TMPDIR).
fn scratch_dirs(tmp: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("drkit-drill-"))
        .collect()
}

#[test]
fn sigterm_during_a_drill_removes_the_scratch_copy_and_keeps_no_report() {
    let s = big_setup(200);
    s.drkit(&["backup"]).expect_code(0);
    let tmp = s.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut child = s
        .command(&["drill"])
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt as soon as the scratch copy exists, mid-restore.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while scratch_dirs(&tmp).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no scratch copy appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the drill ended before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let run = drkit_tests::Run::from(child.wait_with_output().unwrap());
    run.expect_code(1).expect_one_line_error("interrupted");
    assert!(run.stderr.contains("removed"), "{}", run.stderr);
    assert_eq!(
        scratch_dirs(&tmp),
        Vec::<String>::new(),
        "scratch left behind"
    );
    assert!(
        drill_reports(&s).is_empty(),
        "an interrupted drill keeps no report"
    );
}

#[test]
fn a_drill_removes_scratch_left_by_a_killed_drill_a_day_ago_and_says_so() {
    let s = setup("[job.app.drill]\nchecks = [ { sql = \"select count(*) from t\", min = 2 }, { name = \"no negatives\", sql = \"select count(*) from t where x < 0\", max = 0 } ]");
    s.drkit(&["backup"]).expect_code(0);
    let tmp = s.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let old = (chrono::Utc::now() - chrono::Duration::days(2)).format("%Y%m%dT%H%M%S");
    let fresh = chrono::Utc::now().format("%Y%m%dT%H%M%S");
    let stale = format!("drkit-drill-app-{old}-0000abcd");
    let young = format!("drkit-drill-app-{fresh}-0000abce");
    for d in [&stale, &young] {
        std::fs::create_dir(tmp.join(d)).unwrap();
        std::fs::write(tmp.join(d).join("restore.db"), b"left over").unwrap();
    }
    let d = s
        .command(&["--json", "drill"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let d = drkit_tests::Run::from(d);
    d.expect_code(0);
    let report = &d.json()[0]["report"];
    assert_eq!(report["ok"], true, "{report}");
    let notes = report["notes"].to_string();
    assert!(notes.contains(&stale), "{notes}");
    assert_eq!(
        scratch_dirs(&tmp),
        vec![young.clone()],
        "only the day-old scratch goes"
    );
    assert_eq!(report["checks"][0]["value"], 2);
    assert_eq!(report["checks"][1]["ok"], true);
    let t = &report["timings"];
    assert_eq!(
        report["duration_ms"].as_u64().unwrap(),
        t["download_ms"].as_u64().unwrap()
            + t["restore_ms"].as_u64().unwrap()
            + t["checks_ms"].as_u64().unwrap()
    );
}

#[test]
fn sighup_reloads_a_valid_config_and_keeps_the_running_one_for_an_invalid_one() {
    let s = setup("schedule = \"*/1 * * * * *\"");
    let original = std::fs::read_to_string(s.path("drkit.toml")).unwrap();
    let c = rusqlite::Connection::open(s.path("other.db")).unwrap();
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let child = s
        .command(&["daemon"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let signal = |name: &str| {
        std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap();
    };
    std::thread::sleep(Duration::from_millis(1500));
    // A second scheduled job appears with the reload.
    let with_other = format!(
        "{original}\n[job.other]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"local\"]\nschedule = \"*/1 * * * * *\"\n",
        s.path("other.db").display()
    );
    std::fs::write(s.path("drkit.toml"), &with_other).unwrap();
    signal("-HUP");
    std::thread::sleep(Duration::from_millis(2500));
    // A broken file is refused; the running config (with both jobs) goes on.
    std::fs::write(s.path("drkit.toml"), "[job.x]\nnot valid").unwrap();
    signal("-HUP");
    std::thread::sleep(Duration::from_millis(2500));
    signal("-TERM");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("SIGHUP: reloaded"), "{stderr}");
    assert!(
        stderr.contains("the new config is not used, the running one goes on"),
        "{stderr}"
    );
    // Backups of the new job ran after the reload, and still after the refused one.
    let other: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("other: backup"))
        .collect();
    assert!(other.len() >= 3, "{stdout}");
    std::fs::write(s.path("drkit.toml"), &with_other).unwrap();
    let listed = s.drkit(&["--json", "list", "other"]).json();
    assert!(listed.as_array().unwrap().len() >= 3, "{listed}");
}
