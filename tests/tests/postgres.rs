//! End to end: the `drkit` binary backing up and restoring a real PostgreSQL server (started
//! by `scripts/test.sh`), as a user runs it: a drkit.toml, `drkit backup`, `drkit restore`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drkit_tests::postgres::{
    child_named, config, manifests, pg_tools_image, run, unique, written, Pg, MANY_TYPES_SQL,
};
use drkit_tests::{files_under, Run, Scratch};

/// A scratch folder with a job `app` on database `db` (url through `${APP_DB_URL}`).
fn setup(pg: &Pg, extra: &str) -> Scratch {
    let s = Scratch::new();
    s.config(&config(
        &s.path("backups"),
        "app",
        &format!(
            "url = \"${{APP_DB_URL}}\", bindir = \"{}\"{extra}",
            pg.bindir.display()
        ),
    ));
    s
}

fn drkit(s: &Scratch, pg: &Pg, db: &str, args: &[&str]) -> Run {
    let mut cmd = s.command(args);
    cmd.env("APP_DB_URL", pg.url_of(db))
        .env_remove("PGPASSWORD");
    run(cmd)
}

fn only_manifest(s: &Scratch) -> serde_json::Value {
    let m = manifests(&s.path("backups"));
    assert_eq!(m.len(), 1, "want one backup, got {m:?}");
    m.into_iter().next().unwrap()
}

fn table_rows(m: &serde_json::Value, db_index: usize, schema: &str, name: &str) -> Option<i64> {
    m["stats"]["databases"][db_index]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["schema"] == schema && t["name"] == name)
        .map(|t| t["rows"].as_i64().expect("exact counts"))
}

fn assert_no_secret(pg: &Pg, text: &str) {
    assert!(
        !text.contains(&pg.password()),
        "the password leaked: {text}"
    );
}

#[test]
fn many_types_backup_drop_restore_row_for_row() {
    let pg = Pg::from_env();
    let db = unique("drkit_types");
    pg.create_db(&db);
    pg.script(&db, MANY_TYPES_SQL);
    let before = pg.fingerprint(&db);
    let s = setup(&pg, "");

    let backup = drkit(&s, &pg, &db, &["backup", "app"]);
    backup.expect_code(0);
    let m = only_manifest(&s);
    assert_no_secret(&pg, &m.to_string());
    assert_eq!(m["driver"], "postgres");
    assert!(
        m["data"]["key"]
            .as_str()
            .unwrap()
            .ends_with("/data.pgdump.zst"),
        "{}",
        m["data"]["key"]
    );
    assert_eq!(m["source"]["layout"], "pgdump");
    assert_eq!(
        m["source"]["server_version_num"].as_i64().unwrap() / 10000,
        15
    );
    assert_eq!(m["stats"]["empty"], false);
    assert_eq!(m["stats"]["row_counts"], "exact");
    assert_eq!(table_rows(&m, 0, "public", "kinds"), Some(3000));
    assert_eq!(table_rows(&m, 0, "public", "Mixed Case"), Some(3));
    assert_eq!(table_rows(&m, 0, "audit", "log"), Some(500));
    assert_eq!(table_rows(&m, 0, "public", "docs"), Some(2));
    assert_eq!(table_rows(&m, 0, "public", "empty_table"), Some(0));
    assert_eq!(m["stats"]["large_objects"], 2);
    assert_eq!(m["stats"]["table_count"], 5);

    drkit(&s, &pg, &db, &["verify", "app"]).expect_code(0);

    // The runbook without drkit: zstd, then plain pg_restore.
    let stored = s.path("backups").join(m["data"]["key"].as_str().unwrap());
    let raw = s.path("app.pgdump");
    let unz = Command::new("zstd")
        .arg("-q")
        .arg("-d")
        .arg(&stored)
        .arg("-o")
        .arg(&raw)
        .status()
        .unwrap();
    assert!(unz.success());
    let plain = unique("drkit_plain");
    pg.create_db(&plain);
    let out = pg
        .tool("pg_restore")
        .args([
            "--single-transaction",
            "--exit-on-error",
            "-d",
            &pg.url_of(&plain),
        ])
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plain pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pg.fingerprint(&plain),
        before,
        "plain pg_restore of the raw stream"
    );
    pg.drop_db(&plain);

    // Lose the database, then restore it: drkit creates it again.
    pg.drop_db(&db);
    let restored = drkit(&s, &pg, &db, &["restore", "app"]);
    restored.expect_code(0);
    assert!(
        restored.stdout.contains("counts match the manifest"),
        "{}",
        restored.stdout
    );
    assert_no_secret(&pg, &(restored.stdout.clone() + &restored.stderr));
    assert_eq!(
        pg.fingerprint(&db),
        before,
        "restored database differs from the original"
    );
    pg.drop_db(&db);
}

#[test]
fn restore_refuses_a_database_with_tables_unless_forced() {
    let pg = Pg::from_env();
    let db = unique("drkit_force");
    pg.create_db(&db);
    pg.script(&db, MANY_TYPES_SQL);
    let before = pg.fingerprint(&db);
    let s = setup(&pg, "");
    drkit(&s, &pg, &db, &["backup", "app"]).expect_code(0);

    // A bad deploy: rows deleted, a table dropped, a new table added.
    pg.script(
        &db,
        "DELETE FROM kinds WHERE id % 2 = 0; DROP TABLE audit.log; CREATE TABLE junk (x int);",
    );
    let damaged = pg.fingerprint(&db);

    let refused = drkit(&s, &pg, &db, &["restore", "app"]);
    refused.expect_code(3).expect_one_line_error("--force");
    let dry = drkit(&s, &pg, &db, &["restore", "app", "--force", "--dry-run"]);
    dry.expect_code(0);
    assert_eq!(
        pg.fingerprint(&db),
        damaged,
        "a refused or dry-run restore changed the database"
    );

    let forced = drkit(&s, &pg, &db, &["restore", "app", "--force"]);
    forced.expect_code(0);
    assert_eq!(pg.count(&db, "kinds"), 3000);
    assert_eq!(pg.count(&db, "audit.log"), 500);
    // --clean only replaces the backed-up objects: `junk` is not in the backup and stays.
    assert_eq!(pg.count(&db, "junk"), 0);
    pg.psql(&db, "DROP TABLE junk");
    assert_eq!(pg.fingerprint(&db), before);
    pg.drop_db(&db);
}

#[test]
fn restore_elsewhere_with_to_and_jobs() {
    let pg = Pg::from_env();
    let db = unique("drkit_to");
    pg.create_db(&db);
    pg.script(&db, MANY_TYPES_SQL);
    let before = pg.fingerprint(&db);
    let s = setup(&pg, "");
    drkit(&s, &pg, &db, &["backup", "app"]).expect_code(0);

    // --to a URL of a database that does not exist yet, restored in parallel from a staged file.
    let other = unique("drkit_to_url");
    let staged = drkit(
        &s,
        &pg,
        &db,
        &["restore", "app", "--to", &pg.url_of(&other), "--jobs", "2"],
    );
    staged.expect_code(0);
    assert!(
        staged.stderr.contains("pg_restore --jobs 2"),
        "{}",
        staged.stderr
    );
    assert_eq!(pg.fingerprint(&other), before);

    // --to a bare name: a database on the job's server.
    let named = unique("drkit_to_name");
    drkit(&s, &pg, &db, &["restore", "app", "--to", &named]).expect_code(0);
    assert_eq!(pg.fingerprint(&named), before);

    // A dry run creates nothing.
    let ghost = unique("drkit_to_ghost");
    let dry = drkit(
        &s,
        &pg,
        &db,
        &["restore", "app", "--to", &ghost, "--dry-run"],
    );
    dry.expect_code(0);
    assert!(!pg.db_exists(&ghost), "a dry run created the database");

    // The original is untouched by all of this.
    assert_eq!(pg.fingerprint(&db), before);
    for d in [&db, &other, &named] {
        pg.drop_db(d);
    }
}

#[test]
fn backup_during_pgbench_writes_restores_the_exact_counts() {
    let pg = Pg::from_env();
    let db = unique("drkit_bench");
    pg.create_db(&db);
    let init = pg
        .tool("pgbench")
        .args(["-i", "-q", "-s", "4", &pg.url_of(&db)])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let s = setup(&pg, "");

    let mut bench = pg
        .tool("pgbench")
        .args(["-c", "4", "-j", "2", "-T", "120", "-n", &pg.url_of(&db)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Let the writers get going, then back up while they write.
    let t0 = Instant::now();
    while pg.count(&db, "pgbench_history") < 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "pgbench does not write"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let backup = drkit(&s, &pg, &db, &["backup", "app"]);
    std::thread::sleep(Duration::from_millis(500));
    let after_backup = pg.count(&db, "pgbench_history");
    let _ = Command::new("kill").arg(bench.id().to_string()).status();
    let _ = bench.wait();
    backup.expect_code(0);

    let m = only_manifest(&s);
    let history = table_rows(&m, 0, "public", "pgbench_history").unwrap();
    assert!(history >= 200, "the backup saw {history} history rows");
    assert!(
        after_backup > history,
        "pgbench did not write during the backup ({after_backup} <= {history})"
    );
    assert_eq!(
        table_rows(&m, 0, "public", "pgbench_accounts"),
        Some(400_000)
    );

    let copy = unique("drkit_bench_copy");
    drkit(&s, &pg, &db, &["restore", "app", "--to", &copy]).expect_code(0);
    assert_eq!(pg.count(&copy, "pgbench_history"), history);
    // One snapshot: every pgbench transaction is either wholly in the copy or not at all, so
    // the balances of accounts, tellers and branches all equal the sum of the history.
    let sums = pg.psql(
        &copy,
        "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts), (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers), \
         (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches), (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    );
    let v: Vec<&str> = sums.trim().split('|').collect();
    assert!(v.iter().all(|x| *x == v[0]), "inconsistent copy: {sums}");
    pg.drop_db(&copy);
    pg.drop_db(&db);
}

/// A failed backup: the given exit code, one clear error line, no manifest, no leftover
/// archive, no password in the output.
fn expect_failed_backup(pg: &Pg, s: &Scratch, r: &Run, code: i32, needle: &str) {
    r.expect_code(code).expect_one_line_error(needle);
    assert_no_secret(pg, &(r.stdout.clone() + &r.stderr));
    let left: Vec<String> = files_under(&s.path("backups"))
        .into_iter()
        .filter(|f| !f.ends_with(".drkit.lock"))
        .collect();
    assert!(left.is_empty(), "a failed backup left {left:?}");
}

#[test]
fn failures_are_one_clear_line_and_leave_no_backup() {
    let pg = Pg::from_env();
    let db = unique("drkit_fail");
    pg.create_db(&db);
    pg.script(
        &db,
        "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 100);",
    );

    let wrong = Scratch::new();
    wrong.config(&config(
        &wrong.path("backups"),
        "app",
        &format!(
            "url = \"{}\"",
            pg.url_with_password(&db, "not-the-password")
        ),
    ));
    let r = run(wrong.command(&["backup", "app"]));
    expect_failed_backup(&pg, &wrong, &r, 2, "password authentication failed");

    let down = Scratch::new();
    down.config(&config(
        &down.path("backups"),
        "app",
        &format!(
            "url = \"postgres://drkit:{}@127.0.0.1:1/{db}\"",
            pg.password()
        ),
    ));
    let r = run(down.command(&["backup", "app"]));
    expect_failed_backup(&pg, &down, &r, 1, "connection refused");

    let missing = Scratch::new();
    missing.config(&config(
        &missing.path("backups"),
        "app",
        &format!("url = \"{}\"", pg.url_of("drkit_no_such_db")),
    ));
    let r = run(missing.command(&["backup", "app"]));
    expect_failed_backup(
        &pg,
        &missing,
        &r,
        2,
        "database \"drkit_no_such_db\" does not exist",
    );

    // A pg_dump older than the server (a PostgreSQL 12 pg_dump, as `--version` reports it).
    let old = Scratch::new();
    let bin = old.path("oldbin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(
        bin.join("pg_dump"),
        "#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.4 (Debian 12.4-1)'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("pg_dump"), std::fs::Permissions::from_mode(0o755)).unwrap();
    old.config(&config(
        &old.path("backups"),
        "app",
        &format!(
            "url = \"{}\", bindir = \"{}\"",
            pg.url_of(&db),
            bin.display()
        ),
    ));
    let r = run(old.command(&["backup", "app"]));
    expect_failed_backup(
        &pg,
        &old,
        &r,
        2,
        "is version 12.4, older than the PostgreSQL 15",
    );
    assert!(
        r.stderr.contains("bindir"),
        "the error says how to fix it: {}",
        r.stderr
    );
    pg.drop_db(&db);
}

#[test]
fn pg_dump_killed_mid_stream_fails_the_backup() {
    let pg = Pg::from_env();
    let db = unique("drkit_kill");
    pg.create_db(&db);
    // ~100 MB of table data, so pg_dump is still streaming when it is killed.
    pg.script(&db, "CREATE TABLE big (id int, v text); INSERT INTO big SELECT i, repeat(md5(i::text), 30) FROM generate_series(1, 100000) i;");
    let s = setup(&pg, "");
    let mut cmd = s.command(&["backup", "app"]);
    cmd.env("APP_DB_URL", pg.url_of(&db))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let drkit_pid = child.id();
    let t0 = Instant::now();
    let pg_dump = loop {
        if let Some(pid) = child_named(drkit_pid, "pg_dump") {
            if written(pid) > 1 << 20 {
                break pid;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "pg_dump never got going"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    // The password is not in pg_dump's command line (what `ps` shows).
    let cmdline = std::fs::read(format!("/proc/{pg_dump}/cmdline")).unwrap_or_default();
    assert_no_secret(&pg, &String::from_utf8_lossy(&cmdline));
    assert!(
        String::from_utf8_lossy(&cmdline).contains("--snapshot="),
        "pg_dump runs on the exported snapshot"
    );
    let killed = Command::new("kill")
        .args(["-9", &pg_dump.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    expect_failed_backup(&pg, &s, &r, 1, "was killed by signal 9 (SIGKILL)");
    pg.drop_db(&db);
}

#[test]
fn empty_database_is_backed_up_and_marked() {
    let pg = Pg::from_env();
    let db = unique("drkit_empty");
    pg.create_db(&db);
    let s = setup(&pg, "");
    let r = drkit(&s, &pg, &db, &["backup", "app"]);
    // An empty source is written, and loud: suspect (exit 5).
    r.expect_code(5);
    assert!(r.stderr.contains("SUSPECT"), "{}", r.stderr);
    assert!(
        r.stderr.contains("has no tables"),
        "the operator is warned: {}",
        r.stderr
    );
    let m = only_manifest(&s);
    assert_eq!(m["stats"]["empty"], true);
    assert_eq!(m["stats"]["table_count"], 0);
    assert!(
        m["warnings"][0].as_str().unwrap().contains("has no tables"),
        "{}",
        m["warnings"]
    );
    // It restores (to an empty database) like any other, asked for by id (it is suspect, so
    // restore does not choose it by itself).
    let copy = unique("drkit_empty_copy");
    let id = drkit(&s, &pg, &db, &["--json", "list", "app"]).json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    drkit(
        &s,
        &pg,
        &db,
        &["restore", "app", "--id", &id, "--to", &copy],
    )
    .expect_code(0);
    assert!(pg.db_exists(&copy));
    pg.drop_db(&copy);
    pg.drop_db(&db);
}

#[test]
fn several_databases_and_roles_in_one_archive() {
    let pg = Pg::from_env();
    let (a, b, role) = (
        unique("drkit_multi_a"),
        unique("drkit_multi_b"),
        unique("drkit_role"),
    );
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN PASSWORD 'role-pw'"),
    );
    pg.create_db(&a);
    pg.create_db(&b);
    pg.script(&a, MANY_TYPES_SQL);
    pg.script(&b, &format!("CREATE TABLE owned (id int PRIMARY KEY, v text); INSERT INTO owned SELECT i, 'v' || i FROM generate_series(1, 1234) i; ALTER TABLE owned OWNER TO {role};"));
    pg.psql("postgres", &format!("ALTER DATABASE {b} OWNER TO {role}"));
    let (fa, fb) = (pg.fingerprint(&a), pg.fingerprint(&b));
    let s = setup(
        &pg,
        &format!(", databases = [\"{a}\", \"{b}\"], globals = true"),
    );
    drkit(&s, &pg, "postgres", &["backup", "app"]).expect_code(0);
    let m = only_manifest(&s);
    assert_eq!(m["source"]["layout"], "tar");
    assert!(m["data"]["key"]
        .as_str()
        .unwrap()
        .ends_with("/data.tar.zst"));
    assert_eq!(table_rows(&m, 1, "public", "owned"), Some(1234));
    assert_no_secret(&pg, &m.to_string());

    // The runbook without drkit: zstd, tar, cat the parts, pg_restore.
    let stored = s.path("backups").join(m["data"]["key"].as_str().unwrap());
    let x = s.path("x");
    std::fs::create_dir(&x).unwrap();
    let untar = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | tar -x -C '{}' && cat '{}'/db-002-*.pgdump.* > '{}'/b.pgdump",
            stored.display(),
            x.display(),
            x.display(),
            x.display()
        ))
        .status()
        .unwrap();
    assert!(untar.success());
    let globals = std::fs::read_to_string(x.join("globals.sql.00000000")).unwrap();
    assert!(
        globals.contains(&format!("CREATE ROLE {role};")),
        "the roles are in the archive"
    );
    let list = pg
        .tool("pg_restore")
        .arg("--list")
        .arg(x.join("b.pgdump"))
        .output()
        .unwrap();
    assert!(
        list.status.success()
            && String::from_utf8_lossy(&list.stdout).contains("TABLE DATA public owned")
    );

    // Lose both databases and the role; restore everything.
    pg.drop_db(&a);
    pg.drop_db(&b);
    pg.psql("postgres", &format!("DROP ROLE {role}"));
    let r = drkit(&s, &pg, "postgres", &["restore", "app"]);
    r.expect_code(0);
    assert_eq!(pg.fingerprint(&a), fa);
    assert_eq!(pg.fingerprint(&b), fb);
    assert_eq!(
        pg.psql(
            &b,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'owned'"
        )
        .trim(),
        role
    );
    assert_eq!(
        pg.psql(
            "postgres",
            &format!("SELECT datdba::regrole FROM pg_database WHERE datname = '{b}'")
        )
        .trim(),
        role,
        "the database keeps its owner"
    );

    // A drill restores both into scratch databases and removes them.
    let drill = drkit(&s, &pg, "postgres", &["drill", "app"]);
    drill.expect_code(0);
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'drkit\\_drill\\_app\\_%'"
        )
        .trim(),
        "0",
        "drill databases left behind"
    );

    pg.drop_db(&a);
    pg.drop_db(&b);
    pg.psql("postgres", &format!("DROP ROLE {role}"));
}

#[test]
fn filters_and_estimated_counts() {
    let pg = Pg::from_env();
    let db = unique("drkit_filter");
    pg.create_db(&db);
    pg.script(&db, MANY_TYPES_SQL);
    pg.psql(&db, "ANALYZE");
    let s = setup(
        &pg,
        ", schemas = [\"public\"], exclude_tables = [\"empty_*\"], stats = \"estimate\"",
    );
    drkit(&s, &pg, &db, &["backup", "app"]).expect_code(0);
    let m = only_manifest(&s);
    let tables: Vec<String> = m["stats"]["databases"][0]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}.{}",
                t["schema"].as_str().unwrap(),
                t["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(tables, ["public.Mixed Case", "public.docs", "public.kinds"]);
    assert_eq!(m["stats"]["row_counts"], "estimate");
    assert_eq!(
        m["stats"]["databases"][0]["tables"][2]["rows"], 3000,
        "ANALYZE makes the estimate exact here"
    );
    assert_eq!(
        m["stats"]["databases"][0]["large_objects"], 2,
        "schemas are chosen by excluding the others: large objects stay"
    );

    let copy = unique("drkit_filter_copy");
    let r = drkit(&s, &pg, &db, &["restore", "app", "--to", &copy]);
    r.expect_code(0);
    assert!(r.stderr.contains("estimated row counts"), "{}", r.stderr);
    assert_eq!(pg.count(&copy, "kinds"), 3000);
    assert_eq!(
        pg.psql(
            &copy,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'audit'"
        )
        .trim(),
        "0"
    );
    assert_eq!(
        pg.psql(
            &copy,
            "SELECT count(*) FROM pg_class WHERE relname = 'empty_table'"
        )
        .trim(),
        "0"
    );
    pg.drop_db(&copy);
    pg.drop_db(&db);
}

#[test]
fn password_from_file_env_and_pgpass() {
    let pg = Pg::from_env();
    let db = unique("drkit_pw");
    pg.create_db(&db);
    pg.psql(&db, "CREATE TABLE t AS SELECT generate_series(1, 10) AS x");
    let url = format!("postgres://drkit@{}/{db}", pg.hostport());

    let s = Scratch::new();
    std::fs::write(s.path("pw"), format!("{}\n", pg.password())).unwrap();
    std::fs::write(
        s.path(".pgpass"),
        format!("127.0.0.1:*:*:drkit:{}\n", pg.password()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(s.path(".pgpass"), std::fs::Permissions::from_mode(0o600)).unwrap();
    s.config(&format!(
        "{}\n[job.env]\nsource = {{ type = \"postgres\", url = \"{url}\" }}\nstorage = [\"local\"]\n\n[job.pgpass]\nsource = {{ type = \"postgres\", url = \"{url}\" }}\nstorage = [\"local\"]\n",
        config(&s.path("backups"), "file", &format!("url = \"{url}\", password_file = \"{}\"", s.path("pw").display()))
    ));
    let mut file = s.command(&["backup", "file"]);
    file.env_remove("PGPASSWORD").env("HOME", "/nonexistent");
    run(file).expect_code(0);
    let mut env = s.command(&["backup", "env"]);
    env.env("PGPASSWORD", pg.password())
        .env("HOME", "/nonexistent");
    run(env).expect_code(0);
    let mut pgpass = s.command(&["backup", "pgpass"]);
    pgpass.env_remove("PGPASSWORD").env("HOME", s.dir.path());
    run(pgpass).expect_code(0);
    let mut none = s.command(&["backup", "pgpass"]);
    none.env_remove("PGPASSWORD").env("HOME", "/nonexistent");
    run(none)
        .expect_code(2)
        .expect_one_line_error("none was found");

    let all = manifests(&s.path("backups"));
    assert_eq!(all.len(), 3);
    for m in all {
        assert_no_secret(&pg, &m.to_string());
        assert_eq!(m["stats"]["rows"], 10);
    }
    pg.drop_db(&db);
}

#[test]
fn tools_in_a_container_with_docker_exec() {
    let pg = Pg::from_env();
    assert_eq!(
        std::env::var("DRKIT_TEST_DOCKER").as_deref(),
        Ok("1"),
        "DRKIT_TEST_DOCKER is not set: run the suite with `bash scripts/test.sh`, which checks the Docker engine"
    );
    let image = pg_tools_image(&pg.bindir);
    let container = unique("drkit_pgtools");
    let started = Command::new("docker")
        .args([
            "run",
            "-d",
            "--rm",
            "--network",
            "host",
            "--name",
            &container,
            &image,
            "/usr/bin/sleep",
            "600",
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(started.success(), "docker run of {image} failed");

    let db = unique("drkit_docker");
    pg.create_db(&db);
    pg.script(&db, MANY_TYPES_SQL);
    let before = pg.fingerprint(&db);
    let s = setup(&pg, &format!(", exec = {{ docker = \"{container}\" }}"));
    let backup = drkit(&s, &pg, &db, &["backup", "app"]);
    let m = manifests(&s.path("backups"));
    let copy = unique("drkit_docker_copy");
    let restore = drkit(&s, &pg, &db, &["restore", "app", "--to", &copy]);
    let _ = Command::new("docker")
        .args(["rm", "-f", &container])
        .stdout(Stdio::null())
        .status();
    backup.expect_code(0);
    assert_eq!(m[0]["source"]["exec"], format!("docker:{container}"));
    restore.expect_code(0);
    assert_eq!(pg.fingerprint(&copy), before);
    pg.drop_db(&copy);
    pg.drop_db(&db);
}

/// The raw bytes of a backup, then an integrity error at the end: what the pipeline's
/// restore reader does when the archive changed between its verification and the restore.
struct FailAtEnd {
    data: std::io::Cursor<Vec<u8>>,
}

impl tokio::io::AsyncRead for FailAtEnd {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.data).poll_read(cx, buf) {
            std::task::Poll::Ready(Ok(())) if buf.filled().len() == before => {
                std::task::Poll::Ready(Err(drkit_core::Error::integrity(
                    "backup is corrupt: raw bytes differ from the manifest (test)",
                )
                .into()))
            }
            other => other,
        }
    }
}

#[tokio::test]
async fn a_damaged_stream_never_commits_a_restore() {
    use drkit_core::pipeline::{self, BackupOptions, Target};
    use drkit_core::{Compression, DriverSpec, ErrorKind, RestoreOptions};
    use tokio::io::AsyncReadExt;

    let pg = Pg::from_env();
    let db = unique("drkit_damaged");
    pg.create_db(&db);
    pg.script(&db, MANY_TYPES_SQL);
    let dir = tempfile::tempdir().unwrap();
    let storage: std::sync::Arc<dyn drkit_core::Storage> =
        std::sync::Arc::new(drkit_drivers::storage::local::LocalStorage::new(dir.path()));
    let targets = [Target {
        name: "local".into(),
        storage: storage.clone(),
    }];
    let opts = BackupOptions {
        compression: Compression::None,
        level: None,
        ..Default::default()
    };

    for extra in ["", "globals = true"] {
        let mut settings: toml::Table = toml::from_str(&format!(
            "url = \"{}\"\nbindir = \"{}\"\ndatabases = [\"{db}\"]\n{extra}",
            pg.url_of(&db),
            pg.bindir.display()
        ))
        .unwrap();
        settings.remove("type");
        let source = drkit_drivers::open_source(
            "app",
            &DriverSpec {
                kind: "postgres".into(),
                settings,
            },
        )
        .unwrap();
        let outcome = pipeline::backup(
            "app",
            source.as_ref(),
            &targets,
            &opts,
            pipeline::no_progress(),
        )
        .await
        .unwrap();
        let manifest = outcome.manifest;
        let mut raw = Vec::new();
        storage
            .get(&manifest.data.key)
            .await
            .unwrap()
            .read_to_end(&mut raw)
            .await
            .unwrap();
        let tar = !extra.is_empty();

        // Into a database that does not exist: it is created, then dropped again.
        let fresh = unique("drkit_damaged_new");
        let to = if tar {
            format!("{fresh}_*")
        } else {
            fresh.clone()
        };
        let restore_opts = RestoreOptions {
            to: Some(to),
            ..Default::default()
        };
        let reader = Box::new(FailAtEnd {
            data: std::io::Cursor::new(raw.clone()),
        });
        let err = source
            .restore(reader, &manifest, &restore_opts)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
        let leftover = pg.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname LIKE '{fresh}%'"),
        );
        assert_eq!(
            leftover.trim(),
            "0",
            "a failed restore left database {fresh}"
        );

        // Into an existing empty database: it stays empty.
        let empty = unique("drkit_damaged_empty");
        let target = if tar {
            format!("{empty}_{db}")
        } else {
            empty.clone()
        };
        pg.create_db(&target);
        let to = if tar {
            format!("{empty}_*")
        } else {
            empty.clone()
        };
        let restore_opts = RestoreOptions {
            to: Some(to.clone()),
            ..Default::default()
        };
        let reader = Box::new(FailAtEnd {
            data: std::io::Cursor::new(raw.clone()),
        });
        let err = source
            .restore(reader, &manifest, &restore_opts)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
        assert!(
            pg.db_exists(&target),
            "drkit dropped a database it did not create"
        );
        assert_eq!(
            pg.psql(
                &target,
                "SELECT count(*) FROM pg_class WHERE relname = 'kinds'"
            )
            .trim(),
            "0",
            "a damaged stream was committed"
        );

        // The same bytes without the error restore fine (the test is not vacuous).
        let reader = Box::new(std::io::Cursor::new(raw));
        source
            .restore(reader, &manifest, &restore_opts)
            .await
            .unwrap();
        assert_eq!(pg.count(&target, "kinds"), 3000);
        pg.drop_db(&target);
    }
    pg.drop_db(&db);
}
