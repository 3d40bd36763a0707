//! End to end: `drkit verify --deep` of real PostgreSQL backups (the archive walked without a
//! server and its counts compared with the manifest), and the one-pass restore of a corrupt
//! archive (the checksum fails only at the end of the stream): nothing restored stays, no
//! database it created is left, no role of the archive is created.

use std::path::Path;

use drkit_tests::postgres::{only_backup, run, unique, Pg};
use drkit_tests::{Run, Scratch};

/// A scratch folder with job `app` on the test server, `extra` added to its source table.
fn setup(pg: &Pg, extra: &str, compression: &str) -> Scratch {
    let s = Scratch::new();
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n\n[job.app]\nsource = {{ type = \"postgres\", url = \"${{APP_DB_URL}}\", bindir = \"{}\"{extra} }}\nstorage = [\"local\"]\ncompression = \"{compression}\"\n",
        s.path("backups").display(),
        pg.bindir.display()
    ));
    s
}

fn drkit(s: &Scratch, pg: &Pg, db: &str, args: &[&str]) -> Run {
    let mut cmd = s.command(args);
    cmd.env("APP_DB_URL", pg.url_of(db))
        .env_remove("PGPASSWORD");
    run(cmd)
}

fn role_exists(pg: &Pg, role: &str) -> bool {
    pg.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}'"),
    )
    .trim()
        == "1"
}

fn fill(pg: &Pg, db: &str) {
    pg.script(
        db,
        "CREATE TABLE accounts (id int PRIMARY KEY, note text);
         INSERT INTO accounts SELECT i, 'note ' || i || E'\\nline two' FROM generate_series(1, 10000) i;
         CREATE SCHEMA other;
         CREATE TABLE other.events (at timestamptz, what text);
         INSERT INTO other.events SELECT now(), 'event-' || i FROM generate_series(1, 500) i;
         CREATE TABLE empty_one (x int);",
    );
}

/// Rewrite the only manifest under `backups` with `edit`.
fn edit_manifest(backups: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let (path, _) = only_backup(backups);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn verify_deep_walks_the_archive_and_catches_a_count_the_manifest_got_wrong() {
    let pg = Pg::from_env();
    let db = unique("drkit_deep");
    pg.create_db(&db);
    fill(&pg, &db);
    let s = setup(&pg, "", "zstd");
    drkit(&s, &pg, &db, &["backup", "app"]).expect_code(0);

    let r = drkit(&s, &pg, &db, &["--json", "verify", "app", "--deep"]);
    r.expect_code(0);
    let deep = r.json()[0]["report"]["deep"]
        .as_str()
        .unwrap_or_else(|| panic!("no deep summary: {}", r.stdout))
        .to_string();
    assert_eq!(
        deep, "1 database, 3 tables, 10500 rows: as the manifest says",
        "{}",
        r.stdout
    );
    // Without --deep there is no summary.
    let plain = drkit(&s, &pg, &db, &["--json", "verify", "app"]);
    plain.expect_code(0);
    assert!(
        plain.json()[0]["report"].get("deep").is_none(),
        "{}",
        plain.stdout
    );

    // The manifest says one row more for other.events than the archive holds.
    edit_manifest(&s.path("backups"), |m| {
        let tables = m["stats"]["databases"][0]["tables"].as_array_mut().unwrap();
        let t = tables
            .iter_mut()
            .find(|t| t["schema"] == "other" && t["name"] == "events")
            .expect("other.events in the stats");
        assert_eq!(t["rows"], 500);
        t["rows"] = serde_json::json!(501);
    });
    drkit(&s, &pg, &db, &["verify", "app"]).expect_code(0);
    let r = drkit(&s, &pg, &db, &["verify", "app", "--deep"]);
    r.expect_code(4);
    assert!(
        r.stderr.contains("other.events")
            && r.stderr.contains("500 rows")
            && r.stderr.contains("501"),
        "the error names the table and both counts:\n{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    pg.drop_db(&db);
}

#[test]
fn verify_deep_reads_the_tar_of_several_databases_and_the_roles() {
    let pg = Pg::from_env();
    let (a, b) = (unique("drkit_deep_a"), unique("drkit_deep_b"));
    for db in [&a, &b] {
        pg.create_db(db);
    }
    fill(&pg, &a);
    pg.script(
        &b,
        "CREATE TABLE big (id int, pad text);
         INSERT INTO big SELECT i, repeat('x', 200) FROM generate_series(1, 20000) i;",
    );
    let s = setup(
        &pg,
        &format!(", databases = [\"{a}\", \"{b}\"], globals = true"),
        "none",
    );
    drkit(&s, &pg, "postgres", &["backup", "app"]).expect_code(0);
    let r = drkit(&s, &pg, "postgres", &["--json", "verify", "app", "--deep"]);
    r.expect_code(0);
    assert_eq!(
        r.json()[0]["report"]["deep"],
        "2 databases, 4 tables, 30500 rows: as the manifest says",
        "{}",
        r.stdout
    );

    // A table missing from the archive's point of view: the manifest lists one more.
    edit_manifest(&s.path("backups"), |m| {
        let dbs = m["stats"]["databases"].as_array_mut().unwrap();
        let tables = dbs[1]["tables"].as_array_mut().unwrap();
        tables.push(serde_json::json!({"schema": "public", "name": "ghost", "rows": 3}));
    });
    let r = drkit(&s, &pg, "postgres", &["verify", "app", "--deep"]);
    r.expect_code(4);
    assert!(
        r.stderr.contains("public.ghost") && r.stderr.contains(&b),
        "{}",
        r.stderr
    );
    for db in [&a, &b] {
        pg.drop_db(db);
    }
}

/// Flip one byte of `needle` in the stored archive (kept in the manifest as it was), so that
/// only the checksum at the end of the stream says it is corrupt: pg_restore would take the
/// changed row as it is.
fn corrupt_row(backups: &Path, needle: &[u8]) {
    let (_, data) = only_backup(backups);
    let mut bytes = std::fs::read(&data).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the row in the archive");
    bytes[at + needle.len() - 1] ^= 0x01;
    std::fs::write(&data, bytes).unwrap();
}

#[track_caller]
fn expect_corrupt(r: &Run) {
    r.expect_code(4);
    assert!(
        r.stderr.contains("corrupt") || r.stderr.contains("checksum"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_corrupt_single_archive_restored_in_one_pass_leaves_nothing() {
    let pg = Pg::from_env();
    let db = unique("drkit_onepass");
    pg.create_db(&db);
    fill(&pg, &db);
    let s = setup(&pg, "", "none");
    drkit(&s, &pg, &db, &["backup", "app"]).expect_code(0);
    corrupt_row(&s.path("backups"), b"note 9999");

    // Into a database that does not exist: it is created, then dropped again.
    let to = unique("drkit_onepass_to");
    let r = drkit(&s, &pg, &db, &["restore", "app", "--to", &to]);
    expect_corrupt(&r);
    assert!(!pg.db_exists(&to), "the created database was left behind");

    // Over the source itself (--force), changed since the backup: it stays as it was.
    pg.psql(
        &db,
        "INSERT INTO accounts VALUES (10001, 'after the backup')",
    );
    let r = drkit(&s, &pg, &db, &["restore", "app", "--force"]);
    expect_corrupt(&r);
    assert_eq!(
        pg.count(&db, "accounts"),
        10001,
        "the restore was committed"
    );

    // Into an existing empty database: no table appears.
    let empty = unique("drkit_onepass_empty");
    pg.create_db(&empty);
    let r = drkit(&s, &pg, &db, &["restore", "app", "--to", &empty]);
    expect_corrupt(&r);
    assert_eq!(
        pg.psql(
            &empty,
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
        .trim(),
        "0",
        "tables of the corrupt archive are live"
    );
    for d in [&db, &empty] {
        pg.drop_db(d);
    }
}

#[test]
fn a_corrupt_tar_with_roles_restored_in_one_pass_creates_no_role_and_no_database() {
    let pg = Pg::from_env();
    let (a, b, role) = (
        unique("drkit_onepass_a"),
        unique("drkit_onepass_b"),
        unique("drkit_onepass_role"),
    );
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN PASSWORD 'role-pw'"),
    );
    for db in [&a, &b] {
        pg.create_db(db);
        pg.psql("postgres", &format!("ALTER DATABASE {db} OWNER TO {role}"));
    }
    fill(&pg, &a);
    pg.script(
        &b,
        &format!(
            "CREATE TABLE t (id int, v text); INSERT INTO t SELECT i, 'value-' || i FROM generate_series(1, 3000) i; ALTER TABLE t OWNER TO {role};"
        ),
    );
    let s = setup(
        &pg,
        &format!(", databases = [\"{a}\", \"{b}\"], globals = true"),
        "none",
    );
    drkit(&s, &pg, "postgres", &["backup", "app"]).expect_code(0);
    // The byte changed is in the last database: the roles and the first database come first
    // in the stream, and would be restored by then if they were not held back.
    corrupt_row(&s.path("backups"), b"value-2999");
    for db in [&a, &b] {
        pg.drop_db(db);
    }
    pg.psql("postgres", &format!("DROP ROLE {role}"));

    for jobs in [None, Some("2")] {
        let mut args = vec!["--json", "restore", "app"];
        if let Some(j) = jobs {
            args.extend(["--jobs", j]);
        }
        let r = drkit(&s, &pg, "postgres", &args);
        expect_corrupt(&r);
        assert!(
            !role_exists(&pg, &role),
            "{jobs:?}: the archive's role was created"
        );
        for db in [&a, &b] {
            assert!(!pg.db_exists(db), "{jobs:?}: database {db} was left behind");
        }
    }
    // The same without the roles: both databases are streamed, neither stays.
    let s2 = setup(&pg, &format!(", databases = [\"{a}\", \"{b}\"]"), "none");
    for db in [&a, &b] {
        pg.create_db(db);
    }
    fill(&pg, &a);
    pg.script(
        &b,
        "CREATE TABLE t (id int, v text); INSERT INTO t SELECT i, 'value-' || i FROM generate_series(1, 3000) i;",
    );
    drkit(&s2, &pg, "postgres", &["backup", "app"]).expect_code(0);
    corrupt_row(&s2.path("backups"), b"value-2999");
    for db in [&a, &b] {
        pg.drop_db(db);
    }
    let r = drkit(&s2, &pg, "postgres", &["restore", "app"]);
    expect_corrupt(&r);
    for db in [&a, &b] {
        assert!(!pg.db_exists(db), "database {db} was left behind");
    }
}
