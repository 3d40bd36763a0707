//! End to end: retention (`prune`) and health (`status`) on a local storage.

use drkit_tests::{files_under, Scratch};

fn setup(keep: &str) -> Scratch {
    let s = Scratch::new();
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"local\"]\n{keep}\n",
        s.path("backups").display(),
        s.path("app.db").display()
    ));
    let c = rusqlite::Connection::open(s.path("app.db")).unwrap();
    c.execute_batch("CREATE TABLE t(x BLOB); INSERT INTO t SELECT randomblob(100000) FROM (SELECT 1 UNION SELECT 2 UNION SELECT 3);").unwrap();
    s
}

fn ids(s: &Scratch) -> Vec<String> {
    s.drkit(&["--json", "list", "app"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn prune_keeps_by_policy_and_dry_run_changes_nothing() {
    let s = setup("keep = { last = 1 }");
    for _ in 0..3 {
        s.drkit(&["backup"]).expect_code(0);
    }
    let all = ids(&s);
    assert_eq!(all.len(), 3);
    let before = files_under(&s.path("backups"));
    let dry = s.drkit(&["--json", "prune", "--dry-run"]);
    dry.expect_code(0);
    let actions: Vec<String> = dry
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, vec!["keep", "would remove", "would remove"]);
    assert_eq!(files_under(&s.path("backups")), before);

    s.drkit(&["prune"]).expect_code(0);
    assert_eq!(ids(&s), vec![all[0].clone()]);
    let left: Vec<String> = files_under(&s.path("backups"))
        .into_iter()
        .filter(|f| !f.ends_with(".drkit.lock"))
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|f| f.contains(&all[0])));
}

#[test]
fn status_says_missing_stale_suspect_and_ok() {
    let s = setup("max_age = \"1h\"");
    s.drkit(&["status"]).expect_code(5);
    s.drkit(&["backup"]).expect_code(0);
    let ok = s.drkit(&["--json", "status"]);
    ok.expect_code(0);
    assert_eq!(ok.json()[0]["state"], "ok");
    let stale = s.drkit(&["--json", "status", "--max-age", "0s"]);
    stale.expect_code(5);
    assert_eq!(stale.json()[0]["state"], "stale");
    // The database loses almost everything (the "108-byte backup"): suspect.
    let c = rusqlite::Connection::open(s.path("app.db")).unwrap();
    c.execute_batch("DELETE FROM t; VACUUM;").unwrap();
    drop(c);
    // `backup` itself says so now (exit 5), and status keeps saying it.
    s.drkit(&["backup"]).expect_code(5);
    let suspect = s.drkit(&["--json", "status"]);
    suspect.expect_code(5);
    assert_eq!(suspect.json()[0]["state"], "suspect", "{}", suspect.stdout);
}
