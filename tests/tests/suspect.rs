//! End to end: a bad backup never costs a good one. Suspect backups are caught when they are
//! written (exit 5), retention keeps the last good copy, restore and drill choose it, `drkit
//! accept` makes a real shrink good, and one broken storage is not a broken catalog.

use std::path::Path;

use drkit_tests::postgres::{run, unique, Pg};
use drkit_tests::{files_under, Run, Scratch};

/// A SQLite job `app` on `app.db` into `backups`, with `extra` job lines.
fn sqlite_setup(extra: &str) -> Scratch {
    let s = Scratch::new();
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"local\"]\n{extra}\n",
        s.path("backups").display(),
        s.path("app.db").display()
    ));
    s
}

/// `rows` rows of ~400 bytes in table `t` (about 2 MiB for 5000).
fn fill(db: &Path, rows: usize) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB);")
        .unwrap();
    c.execute(
        "INSERT INTO t(v) SELECT randomblob(400) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) SELECT i FROM n)",
        [rows as i64],
    )
    .unwrap();
}

fn keep_only(db: &Path, rows: usize) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute("DELETE FROM t WHERE id > ?1", [rows as i64])
        .unwrap();
    c.execute_batch("VACUUM;").unwrap();
}

fn count(db: &Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

/// `(id, state)` of every entry `list --json` shows, newest first.
fn states(s: &Scratch) -> Vec<(String, String)> {
    let l = s.drkit(&["--json", "list", "app"]);
    l.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap_or("").to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn backup_id(r: &Run) -> String {
    r.json()[0]["manifest"]["id"].as_str().unwrap().to_string()
}

#[test]
fn emptied_sqlite_is_suspect_kept_apart_and_accepted() {
    let s = sqlite_setup("keep = { last = 1 }");
    fill(&s.path("app.db"), 5000);
    let good = s.drkit(&["--json", "backup"]);
    good.expect_code(0);
    let good_id = backup_id(&good);

    // The database is emptied: the backup is written, but suspect, and says why.
    keep_only(&s.path("app.db"), 0);
    let bad = s.drkit(&["--json", "backup"]);
    bad.expect_code(5);
    assert!(
        bad.stderr.contains("SUSPECT") && bad.stderr.contains("the source holds no data"),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr.contains("of the previous good backup's"),
        "{}",
        bad.stderr
    );
    let bad_id = backup_id(&bad);
    let reasons = bad.json()[0]["manifest"]["suspect"]["reasons"].clone();
    assert!(reasons.as_array().unwrap().len() >= 2, "{reasons}");
    assert_eq!(
        states(&s),
        vec![
            (bad_id.clone(), "suspect".to_string()),
            (good_id.clone(), "good".to_string())
        ]
    );
    let human = s.drkit(&["list", "app"]);
    human.expect_code(0);
    assert!(
        human.stdout.contains("STATE") && human.stdout.contains("SUSPECT"),
        "{}",
        human.stdout
    );

    // keep = { last = 1 } keeps the good backup (and the suspect one, for inspection).
    let dry = s.drkit(&["--json", "prune", "--dry-run"]);
    dry.expect_code(0);
    let actions: Vec<String> = dry
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, vec!["keep", "keep"], "{}", dry.stdout);
    s.drkit(&["prune"]).expect_code(0);
    assert_eq!(states(&s).len(), 2);

    // Restore without --id takes the good one and names the suspect one it skipped.
    let r = s.drkit(&["restore", "app", "--to", "restored.db"]);
    r.expect_code(0);
    assert!(
        r.stderr
            .contains(&format!("chose the newest good backup {good_id}")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&format!("skipped suspect backup(s) {bad_id}")),
        "{}",
        r.stderr
    );
    assert_eq!(count(&s.path("restored.db")), 5000);
    // --id of the suspect one works, with a warning.
    let r = s.drkit(&["restore", "app", "--id", &bad_id, "--to", "empty.db"]);
    r.expect_code(0);
    assert!(r.stderr.contains("is suspect"), "{}", r.stderr);
    assert_eq!(count(&s.path("empty.db")), 0);
    // verify and drill work on it too.
    s.drkit(&["verify", "app", "--id", &bad_id]).expect_code(0);
    let d = s.drkit(&["drill", "app"]);
    d.expect_code(0);
    assert!(
        d.stdout.contains(&good_id),
        "the drill takes the good backup: {}",
        d.stdout
    );

    // The purge was deliberate: accept it. The manifest is not rewritten.
    let manifest = s.path(&format!("backups/app/{bad_id}/manifest.json"));
    let before = std::fs::read(&manifest).unwrap();
    s.drkit(&["accept", "app", &bad_id]).expect_code(2); // --reason is required
    let a = s.drkit(&[
        "accept",
        "app",
        &bad_id,
        "--reason",
        "customer data purged on request",
    ]);
    a.expect_code(0);
    assert_eq!(std::fs::read(&manifest).unwrap(), before);
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.path(&format!("backups/app/{bad_id}/accepted.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(record["reason"], "customer data purged on request");
    assert_eq!(record["backup_id"], bad_id.as_str());
    assert_eq!(states(&s)[0], (bad_id.clone(), "accepted".to_string()));
    // Accepting a good backup is refused (nothing to accept).
    s.drkit(&["accept", "app", &good_id, "--reason", "x"])
        .expect_code(1);

    // Now retention treats it as good: last = 1 keeps it and removes the old one.
    s.drkit(&["prune"]).expect_code(0);
    assert_eq!(states(&s), vec![(bad_id.clone(), "accepted".to_string())]);
    // And the next backup of the (still empty) database is compared with it: not suspect
    // for shrinking, but still for holding no data.
    let next = s.drkit(&["--json", "backup"]);
    next.expect_code(5);
    let reasons = next.json()[0]["manifest"]["suspect"]["reasons"].clone();
    assert_eq!(reasons.as_array().unwrap().len(), 1, "{reasons}");
    // status calls the newest suspect.
    let st = s.drkit(&["--json", "status"]);
    st.expect_code(5);
    assert_eq!(st.json()[0]["state"], "suspect");
}

#[test]
fn sqlite_shrunk_to_a_fifth_is_suspect_and_thresholds_can_be_turned_off() {
    let s = sqlite_setup("keep = { last = 1 }");
    fill(&s.path("app.db"), 5000);
    s.drkit(&["backup"]).expect_code(0);
    keep_only(&s.path("app.db"), 1000);
    let bad = s.drkit(&["--json", "backup"]);
    bad.expect_code(5);
    let reasons: Vec<String> = bad.json()[0]["manifest"]["suspect"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("1000 rows is 20.0% of the previous good backup's 5000")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("raw size")),
        "{reasons:?}"
    );
    s.drkit(&["prune"]).expect_code(0);
    assert_eq!(states(&s).len(), 2, "the good one survives last = 1");

    // With the checks off, the same shrink is a good backup (exit 0).
    let s = sqlite_setup(
        "keep = { last = 1 }\nsuspect = { shrink = 0, vanished_min = 0, empty = false, min_size = \"0\" }",
    );
    fill(&s.path("app.db"), 5000);
    s.drkit(&["backup"]).expect_code(0);
    keep_only(&s.path("app.db"), 0);
    s.drkit(&["backup"]).expect_code(0);
    s.drkit(&["prune"]).expect_code(0);
    assert_eq!(states(&s).len(), 1);
}

#[test]
fn list_time_is_accepted_by_at() {
    let s = sqlite_setup("");
    fill(&s.path("app.db"), 10);
    s.drkit(&["backup"]).expect_code(0);
    let l = s.drkit(&["--json", "list", "app"]);
    let id = l.json()[0]["id"].as_str().unwrap().to_string();
    let human = s.drkit(&["list", "app"]);
    // The STARTED column, as printed.
    let line = human.stdout.lines().find(|l| l.contains(&id)).unwrap();
    let printed = line.split_whitespace().nth(3).unwrap().to_string();
    assert!(
        printed.ends_with('Z') && !printed.contains('.'),
        "{printed}"
    );
    let r = s.drkit(&["restore", "app", "--at", &printed, "--to", "at.db"]);
    r.expect_code(0);
    assert!(r.stderr.contains(&id), "{}", r.stderr);
}

#[test]
fn compression_level_is_checked_and_recorded() {
    let s = sqlite_setup("compression_level = 25");
    fill(&s.path("app.db"), 10);
    s.drkit(&["backup"])
        .expect_code(2)
        .expect_one_line_error("compression_level = 25 is out of range for zstd: use 1 to 19");
    let s = sqlite_setup("compression = \"gzip\"\ncompression_level = 9");
    fill(&s.path("app.db"), 10);
    let b = s.drkit(&["--json", "backup"]);
    b.expect_code(0);
    assert_eq!(b.json()[0]["manifest"]["data"]["compression_level"], 9);
    let s = sqlite_setup("");
    fill(&s.path("app.db"), 10);
    let b = s.drkit(&["--json", "backup"]);
    assert_eq!(b.json()[0]["manifest"]["data"]["compression_level"], 3);
}

#[test]
fn closed_stdout_is_not_a_panic() {
    let s = sqlite_setup("");
    fill(&s.path("app.db"), 10);
    for _ in 0..3 {
        s.drkit(&["backup"]).expect_code(0);
    }
    for args in [
        &["--json", "list"][..],
        &["list"][..],
        &["--json", "status"][..],
    ] {
        let mut child = s
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before drkit writes (as `| head -c1` does after one byte).
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.status.code().is_some(), "{args:?}: killed by a signal");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

#[test]
fn two_drills_keep_two_reports() {
    let s = sqlite_setup("");
    fill(&s.path("app.db"), 10);
    s.drkit(&["backup"]).expect_code(0);
    s.drkit(&["drill", "app"]).expect_code(0);
    s.drkit(&["drill", "app"]).expect_code(0);
    let reports: Vec<String> = files_under(&s.path("backups/app/drills"));
    assert_eq!(reports.len(), 2, "{reports:?}");
}

/// A local storage and an S3 storage on a closed port (nothing listens there).
fn with_unreachable_s3() -> Scratch {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = Scratch::new();
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n\
         [storage.gone]\ntype = \"s3\"\nbucket = \"drkit-gone\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\nforce_path_style = true\naccess_key_id = \"AKIAEXAMPLE\"\nsecret_access_key = \"secret-example\"\nmax_attempts = 2\n\
         [job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"gone\", \"local\"]\nkeep = {{ last = 1 }}\n",
        s.path("backups").display(),
        s.path("app.db").display()
    ));
    s
}

#[test]
fn one_unreachable_storage_is_not_a_broken_catalog() {
    let s = with_unreachable_s3();
    fill(&s.path("app.db"), 5000);
    let b = s.drkit(&["backup"]);
    b.expect_code(1);
    assert!(b.stderr.contains("storage gone failed"), "{}", b.stderr);
    keep_only(&s.path("app.db"), 0);
    // Still suspect on the storage that works; a failure outranks it in the exit code.
    let bad = s.drkit(&["--json", "backup"]);
    bad.expect_code(1);
    assert!(bad.stderr.contains("SUSPECT"), "{}", bad.stderr);

    let l = s.drkit(&["list", "app"]);
    l.expect_code(1);
    assert_eq!(
        l.stderr.lines().filter(|x| x.starts_with("error:")).count(),
        1,
        "{}",
        l.stderr
    );
    assert!(
        l.stderr.contains("storage gone could not be read"),
        "{}",
        l.stderr
    );
    assert_eq!(l.stdout.matches("local").count(), 2, "{}", l.stdout);

    let st = s.drkit(&["--json", "status"]);
    st.expect_code(1);
    let states: Vec<String> = st
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, vec!["error", "suspect"]);

    let v = s.drkit(&["verify", "--all"]);
    v.expect_code(1);
    assert_eq!(v.stdout.matches(" OK ").count(), 2, "{}", v.stdout);

    s.drkit(&["prune"]).expect_code(1);
    let r = s.drkit(&["restore", "app", "--to", "restored.db"]);
    r.expect_code(0);
    assert!(
        r.stderr.contains("storage gone could not be read"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("from storage local"), "{}", r.stderr);
    assert_eq!(count(&s.path("restored.db")), 5000);
}

#[test]
fn a_corrupt_first_copy_falls_back_to_the_second_storage() {
    let s = Scratch::new();
    s.config(&format!(
        "[storage.a]\ntype = \"local\"\npath = \"{}\"\n[storage.b]\ntype = \"local\"\npath = \"{}\"\n\
         [job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"a\", \"b\"]\n",
        s.path("a").display(),
        s.path("b").display(),
        s.path("app.db").display()
    ));
    fill(&s.path("app.db"), 2000);
    let b = s.drkit(&["--json", "backup"]);
    b.expect_code(0);
    let id = backup_id(&b);
    let data_key = b.json()[0]["manifest"]["data"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let flip = |root: &str| {
        let p = s.path(&format!("{root}/{data_key}"));
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&p, bytes).unwrap();
    };
    flip("a");
    let r = s.drkit(&["restore", "app", "--to", "restored.db"]);
    r.expect_code(0);
    assert!(
        r.stderr
            .contains("the copy on storage a failed before anything was written"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("from storage b"), "{}", r.stderr);
    assert_eq!(count(&s.path("restored.db")), 2000);

    // Both copies bad: nothing is written, and the error names each storage.
    flip("b");
    let r = s.drkit(&["restore", "app", "--to", "never.db"]);
    r.expect_code(4)
        .expect_one_line_error(&format!("every copy of backup app/{id} failed"));
    assert!(
        r.stderr.contains("a: ") && r.stderr.contains("b: "),
        "{}",
        r.stderr
    );
    assert!(!s.path("never.db").exists());
    assert!(files_under(s.dir.path())
        .iter()
        .all(|f| !f.starts_with("never.db")));
}

#[test]
fn postgres_emptied_and_shrunk_are_suspect_and_restore_takes_the_good_one() {
    let pg = Pg::from_env();
    let db = unique("drkit_suspect");
    pg.create_db(&db);
    pg.script(
        &db,
        "CREATE TABLE orders(id int PRIMARY KEY, note text);\
         INSERT INTO orders SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g;\
         CREATE TABLE lookup(id int PRIMARY KEY); INSERT INTO lookup SELECT generate_series(1, 10);",
    );
    let s = Scratch::new();
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n[job.app]\nsource = {{ type = \"postgres\", url = \"${{APP_DB_URL}}\", bindir = \"{}\" }}\nstorage = [\"local\"]\nkeep = {{ last = 1 }}\n",
        s.path("backups").display(),
        pg.bindir.display()
    ));
    let drkit = |args: &[&str]| {
        let mut cmd = s.command(args);
        cmd.env("APP_DB_URL", pg.url_of(&db));
        run(cmd)
    };
    let good = drkit(&["--json", "backup"]);
    good.expect_code(0);
    let good_id = backup_id(&good);

    // Shrunk to 20%.
    pg.psql(&db, "DELETE FROM orders WHERE id > 1000");
    let shrunk = drkit(&["--json", "backup"]);
    shrunk.expect_code(5);
    assert!(
        shrunk
            .stderr
            .contains("1010 rows is 20.2% of the previous good backup's 5010"),
        "{}",
        shrunk.stderr
    );
    // Emptied (the table that held 1000+ rows vanished).
    pg.psql(&db, "DROP TABLE orders; DELETE FROM lookup");
    let empty = drkit(&["--json", "backup"]);
    empty.expect_code(5);
    assert!(
        empty.stderr.contains("the source holds no data"),
        "{}",
        empty.stderr
    );
    assert!(
        empty
            .stderr
            .contains(&format!("{db}.public.orders (had 5000, now gone)")),
        "{}",
        empty.stderr
    );

    drkit(&["prune"]).expect_code(0);
    let ids: Vec<String> = drkit(&["--json", "list", "app"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.len(),
        3,
        "the good one and the two newer suspect ones stay"
    );
    assert!(ids.contains(&good_id));

    let target = unique("drkit_suspect_restored");
    let r = drkit(&["restore", "app", "--to", &pg.url_of(&target)]);
    r.expect_code(0);
    assert!(
        r.stderr
            .contains(&format!("chose the newest good backup {good_id}")),
        "{}",
        r.stderr
    );
    assert_eq!(pg.count(&target, "orders"), 5000);

    // Accept the newest (empty) one: retention then keeps it alone.
    let newest = ids[0].clone();
    drkit(&["accept", "app", &newest, "--reason", "app retired"]).expect_code(0);
    drkit(&["prune"]).expect_code(0);
    let left = drkit(&["--json", "list", "app"]).json();
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left[0]["state"], "accepted");
    pg.drop_db(&db);
    pg.drop_db(&target);
}
