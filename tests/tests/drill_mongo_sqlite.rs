//! End to end: restore drills of MongoDB (SecantusDB) and SQLite jobs with the operator's
//! checks, a drill `target` server, the sweep of scratch left by killed drills, and
//! `verify --deep` against a manifest whose counts were changed.

use std::path::Path;
use std::process::Output;

use bson::{doc, Document};
use chrono::{Duration, Utc};
use drkit_core::drill::ScratchName;
use drkit_tests::mongodb::{client, mongo_url, unique};
use drkit_tests::{Run, Scratch};

/// The name of a scratch place a drill of `job` killed `hours` ago would have left.
fn stale_name(job: &str, hours: i64, sep: char) -> String {
    ScratchName {
        job: job.into(),
        at: Utc::now() - Duration::hours(hours),
        tag: 0xdead_beef,
    }
    .render(sep, 60)
}

fn run_of(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The report of the first (only) storage of a `--json drill`.
fn report(run: &Run) -> serde_json::Value {
    run.json()[0]["report"].clone()
}

/// The check named `name` of a drill report.
fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

/// Rewrite the manifest of the newest backup of `job` in the local storage `backups`:
/// `edit` changes its JSON.
fn edit_manifest(s: &Scratch, job: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let list = s.drkit(&["--json", "list", job]);
    list.expect_code(0);
    let id = list.json()[0]["id"].as_str().unwrap().to_string();
    let path = s.path("backups").join(job).join(&id).join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Whether the error (text or `--json`) of a failed run mentions every one of `needles`.
fn mentions(run: &Run, needles: &[&str]) -> bool {
    let all = format!("{}{}", run.stdout, run.stderr);
    needles.iter().all(|n| all.contains(n))
}

// ------------------------------------------------------------------------------ MongoDB ----

/// A config with a local storage and MongoDB job `mdrill` of database `db`, with `drill`
/// as its `[job.mdrill.drill]` table.
fn mongo_config(s: &Scratch, db: &str, drill: &str) {
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n\n[job.mdrill]\nstorage = [\"local\"]\nsource = {{ type = \"mongodb\", url = \"{}\", databases = [\"{db}\"] }}\n\n[job.mdrill.drill]\n{drill}\n",
        s.path("backups").display(),
        mongo_url()
    ));
}

/// The drkit scratch databases of job `mdrill` on the test server.
async fn mdrill_scratch_dbs(c: &mongodb::Client) -> Vec<String> {
    c.list_database_names()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("drkit_drill_mdrill_"))
        .collect()
}

async fn seed_mongo(c: &mongodb::Client, db: &str) {
    let d = c.database(db);
    d.collection::<Document>("users")
        .insert_many((0..10).map(|i| doc! {"i": i, "active": i % 2 == 0}))
        .await
        .unwrap();
    d.collection::<Document>("orders")
        .insert_many((0..3).map(|i| doc! {"n": i}))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn mongodb_drill_checks_target_sweep_and_deep_verify() {
    let c = client().await;
    let db = unique("drkit_dms");
    seed_mongo(&c, &db).await;
    let s = Scratch::new();
    let checks = format!(
        "checks = [\n  {{ name = \"active\", collection = \"users\", filter = {{ active = true, i = {{ \"$gte\" = 0 }} }}, equals = 5 }},\n  {{ name = \"orders\", collection = \"{db}.orders\", min = 100 }},\n]"
    );
    mongo_config(&s, &db, &checks);
    s.drkit(&["backup", "mdrill"]).expect_code(0);

    // A scratch database a drill killed two days ago left, and one of a drill still running.
    let stale = format!("{}_0", stale_name("mdrill", 48, '_'));
    let young = format!("{}_0", stale_name("mdrill", 1, '_'));
    for name in [&stale, &young] {
        c.database(name)
            .collection::<Document>("x")
            .insert_one(doc! {"a": 1})
            .await
            .unwrap();
    }

    // Beside the source: one check passes, one fails (exit 4), both values in the report.
    let d = s.drkit(&["--json", "drill", "mdrill"]);
    d.expect_code(4);
    let r = report(&d);
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(check(&r, "active")["value"], 5, "{r}");
    assert_eq!(check(&r, "active")["ok"], true, "{r}");
    let orders = check(&r, "orders");
    assert_eq!(orders["value"], 3, "{r}");
    assert_eq!(orders["ok"], false, "{r}");
    assert!(
        orders["why"]
            .as_str()
            .unwrap()
            .contains("below the minimum"),
        "{r}"
    );
    assert_eq!(r["place"], "beside the source");
    assert_eq!(r["timings"]["one_pass"], false, "{r}");
    let notes = r["notes"].to_string();
    assert!(
        notes.contains(&stale),
        "the sweep is not in the notes: {notes}"
    );
    assert!(notes.contains("loads that server"), "{notes}");
    assert!(!notes.contains(&young), "{notes}");
    let left = mdrill_scratch_dbs(&c).await;
    assert_eq!(
        left,
        vec![young.clone()],
        "the drill left or swept the wrong databases"
    );
    c.database(&young).drop().await.unwrap();

    // A drill into a target server (the only test server: the same one, so the point is that
    // the scratch databases are made on the server `target` names and dropped after).
    mongo_config(
        &s,
        &db,
        &format!(
            "target = \"{}\"\nchecks = [ {{ name = \"users\", collection = \"{db}.users\", min = 10 }} ]",
            mongo_url()
        ),
    );
    let d = s.drkit(&["--json", "drill", "mdrill"]);
    d.expect_code(0);
    let r = report(&d);
    assert_eq!(check(&r, "users")["value"], 10, "{r}");
    assert_eq!(r["place"], format!("server {}", mongo_url()), "{r}");
    assert!(
        r["scratch"]
            .as_str()
            .unwrap()
            .contains(&format!("{db} -> drkit_drill_mdrill_")),
        "{r}"
    );
    assert!(
        mdrill_scratch_dbs(&c).await.is_empty(),
        "target drill left databases"
    );

    // A filter that would run code on the server is refused (exit 2).
    mongo_config(
        &s,
        &db,
        "checks = [ { collection = \"users\", filter = { \"$where\" = \"sleep(100) || true\" }, min = 1 } ]",
    );
    let d = s.drkit(&["--json", "drill", "mdrill"]);
    d.expect_code(2);
    let r = report(&d);
    assert!(
        r["checks"][0]["why"].as_str().unwrap().contains("$where"),
        "{r}"
    );
    assert!(mdrill_scratch_dbs(&c).await.is_empty());

    // verify --deep counts every namespace of the archive against the manifest.
    let v = s.drkit(&["--json", "verify", "mdrill", "--deep"]);
    v.expect_code(0);
    assert_eq!(
        v.json()[0]["report"]["deep"],
        "1 database, 2 collections, 13 documents: as the manifest says"
    );
    // The manifest's total of documents +1: only the deep check compares it.
    edit_manifest(&s, "mdrill", |m| {
        m["stats"]["documents"] = 14.into();
    });
    let v = s.drkit(&["--json", "verify", "mdrill", "--deep"]);
    v.expect_code(4);
    assert!(
        mentions(
            &v,
            &[
                "the deep check failed",
                "in all: the archive holds 13 document(s), the manifest says 14"
            ]
        ),
        "{v:?}"
    );
    s.drkit(&["verify", "mdrill"]).expect_code(0);
    // One collection's count +1.
    edit_manifest(&s, "mdrill", |m| {
        let users = &mut m["stats"]["collections"][format!("{db}.users")];
        *users = (users.as_u64().unwrap() + 1).into();
    });
    let v = s.drkit(&["--json", "verify", "mdrill", "--deep"]);
    v.expect_code(4);
    let wrong = format!("{db}.users: the archive holds 10 document(s), the manifest says 11");
    assert!(mentions(&v, &[&wrong]), "{v:?}");
    // The plain verify of a MongoDB backup already compares the counts (its stream check,
    // also run before every restore, so it fails first under --deep too): it fails as well.
    let v = s.drkit(&["verify", "mdrill"]);
    v.expect_code(4);
    assert!(mentions(&v, &[&wrong]), "{v:?}");

    c.database(&db).drop().await.unwrap();
}

// ------------------------------------------------------------------------------- SQLite ----

/// A config with a local storage and SQLite job `app` of `app.db`, with `drill` as its
/// `[job.app.drill]` table, and the database: `users` with 5 rows, 3 active.
fn sqlite_setup(drill: &str) -> Scratch {
    let s = Scratch::new();
    sqlite_config(&s, drill);
    let c = rusqlite::Connection::open(s.path("app.db")).unwrap();
    c.execute_batch(
        "CREATE TABLE users(name TEXT, active INT);
         INSERT INTO users VALUES ('a', 1), ('b', 0), ('c', 1), ('d', 1), ('e', 0);
         CREATE TABLE notes(t TEXT); INSERT INTO notes VALUES ('x');",
    )
    .unwrap();
    std::fs::create_dir(s.path("tmp")).unwrap();
    s
}

fn sqlite_config(s: &Scratch, drill: &str) {
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"local\"]\n[job.app.drill]\n{drill}\n",
        s.path("backups").display(),
        s.path("app.db").display()
    ));
}

/// `drkit ARGS` with its own temp folder (`tmp` in the scratch folder), where SQLite drills
/// make their scratch folders.
fn drkit_tmp(s: &Scratch, args: &[&str]) -> Run {
    run_of(
        s.command(args)
            .env("TMPDIR", s.path("tmp"))
            .output()
            .expect("run drkit"),
    )
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn sqlite_drill_checks_sweep_and_deep_verify() {
    let s = sqlite_setup(
        "checks = [\n  { name = \"active\", sql = \"select count(*) from users where active = 1\", equals = 3 },\n  { name = \"few users\", sql = \"select count(*) from users\", max = 2 },\n  { name = \"first\", sql = \"select name from users order by name limit 1\", equals = \"a\" },\n]",
    );
    s.drkit(&["backup", "app"]).expect_code(0);

    // A drill folder a killed drill left two days ago, and one of a drill still running.
    let (stale, young) = (stale_name("app", 48, '-'), stale_name("app", 1, '-'));
    for d in [&stale, &young] {
        std::fs::create_dir(s.path("tmp").join(d)).unwrap();
        std::fs::write(s.path("tmp").join(d).join("restore.db"), b"x").unwrap();
    }

    let d = drkit_tmp(&s, &["--json", "drill", "app"]);
    d.expect_code(4);
    let r = report(&d);
    assert_eq!(check(&r, "active")["value"], 3, "{r}");
    assert_eq!(check(&r, "active")["ok"], true, "{r}");
    assert_eq!(check(&r, "first")["value"], "a", "{r}");
    assert_eq!(check(&r, "first")["ok"], true, "{r}");
    let few = check(&r, "few users");
    assert_eq!(few["value"], 5, "{r}");
    assert_eq!(few["ok"], false, "{r}");
    assert!(
        few["why"].as_str().unwrap().contains("above the maximum"),
        "{r}"
    );
    // The restore read the archive once: it renames its temp file into place only after a
    // clean end of stream.
    assert_eq!(r["timings"]["one_pass"], true, "{r}");
    let notes = r["notes"].to_string();
    assert!(
        notes.contains(&stale),
        "the sweep is not in the notes: {notes}"
    );
    assert!(!notes.contains(&young), "{notes}");
    assert_eq!(
        entries(&s.path("tmp")),
        vec![young.clone()],
        "drill folders left"
    );

    // A check that writes is refused (exit 2), and the source is untouched.
    sqlite_config(&s, "checks = [ { sql = \"delete from users\", max = 0 } ]");
    let d = drkit_tmp(&s, &["--json", "drill", "app"]);
    d.expect_code(2);
    assert!(
        report(&d)["checks"][0]["why"]
            .as_str()
            .unwrap()
            .contains("only reads"),
        "{}",
        d.stdout
    );
    assert_eq!(entries(&s.path("tmp")), vec![young.clone()]);

    // verify --deep: integrity_check and every table's rows against the manifest; its temp
    // copy is removed.
    let v = drkit_tmp(&s, &["--json", "verify", "app", "--deep"]);
    v.expect_code(0);
    assert_eq!(
        v.json()[0]["report"]["deep"],
        "2 tables, 6 rows, PRAGMA integrity_check ok: as the manifest says"
    );
    assert_eq!(
        entries(&s.path("tmp")),
        vec![young.clone()],
        "deep check left files"
    );
    edit_manifest(&s, "app", |m| {
        m["stats"]["tables"]["users"] = 6.into();
    });
    let v = drkit_tmp(&s, &["--json", "verify", "app", "--deep"]);
    v.expect_code(4);
    assert!(
        mentions(
            &v,
            &[
                "deep check",
                "table users: the database holds 5 row(s), the manifest says 6"
            ]
        ),
        "{v:?}"
    );
    assert_eq!(
        entries(&s.path("tmp")),
        vec![young],
        "failed deep check left files"
    );
    // The plain verify checks the bytes, not the counts: it still passes.
    drkit_tmp(&s, &["verify", "app"]).expect_code(0);
}
