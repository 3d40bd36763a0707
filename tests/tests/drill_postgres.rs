//! End to end: restore drills of PostgreSQL backups, against the real test server and the
//! real Docker engine (`scripts/servers.sh` starts the server and builds the throwaway image
//! `drkit-test-postgres:15`, `DRKIT_TEST_PG_IMAGE`): beside the source, into a scratch
//! server (`drill.target`), into a throwaway container (`drill.image`), the version rule,
//! and the removal of scratch places that killed drills left.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use drkit_tests::postgres::{config, manifests, run, unique, Pg};
use drkit_tests::{required_env, Run, Scratch};

/// A scratch folder with job `job` on database `db` and `[job.<job>.drill]` = `drill`.
fn setup(pg: &Pg, job: &str, db: &str, source_extra: &str, drill: &str) -> Scratch {
    let s = Scratch::new();
    let mut text = config(
        &s.path("backups"),
        job,
        &format!(
            "url = \"{}\", bindir = \"{}\"{source_extra}",
            pg.url_of(db),
            pg.bindir.display()
        ),
    );
    text.push_str(&format!("\n[job.{job}.drill]\n{drill}\n"));
    s.config(&text);
    s
}

fn drkit(s: &Scratch, args: &[&str]) -> Run {
    let mut cmd = s.command(args);
    cmd.env_remove("PGPASSWORD");
    run(cmd)
}

/// The one report of `drkit --json drill JOB`.
fn report(r: &Run) -> serde_json::Value {
    let v = r.json();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    v[0]["report"].clone()
}

/// The databases on the test server whose names start with `prefix`.
fn databases_like(pg: &Pg, prefix: &str) -> Vec<String> {
    pg.psql(
        "postgres",
        &format!(
            "SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}') ORDER BY 1"
        ),
    )
    .lines()
    .map(String::from)
    .collect()
}

/// A database with `users` (3 rows, 2 active).
fn app_db(pg: &Pg, prefix: &str) -> String {
    let db = unique(prefix);
    pg.create_db(&db);
    pg.script(
        &db,
        "CREATE TABLE users (id int PRIMARY KEY, name text, active bool);
         INSERT INTO users VALUES (1, 'ann', true), (2, 'bob', true), (3, 'cy', false);",
    );
    db
}

fn notes(report: &serde_json::Value) -> Vec<String> {
    report["notes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A scratch name of `job` made `days` days ago (as a drill killed then left it).
fn old_name(job: &str, days: i64, sep: char, tag: u32) -> String {
    let at = Utc::now() - chrono::Duration::days(days);
    let s = format!("drkit_drill_{job}_{}_{tag:08x}", at.format("%Y%m%dT%H%M%S"));
    s.replace('_', &sep.to_string())
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(id, label value)` of the containers labelled `drkit.drill` whose value holds `job`.
fn drill_containers(job: &str) -> Vec<(String, String)> {
    docker(&[
        "ps",
        "-a",
        "--filter",
        "label=drkit.drill",
        "--format",
        "{{.ID}}\t{{.Label \"drkit.drill\"}}",
    ])
    .lines()
    .filter_map(|l| l.split_once('\t'))
    .filter(|(_, v)| v.contains(job))
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

/// Names of the networks labelled `drkit.drill` whose label value holds `job`.
fn drill_networks(job: &str) -> Vec<String> {
    docker(&[
        "network",
        "ls",
        "--filter",
        "label=drkit.drill",
        "--format",
        "{{.Name}}\t{{.Label \"drkit.drill\"}}",
    ])
    .lines()
    .filter_map(|l| l.split_once('\t'))
    .filter(|(_, v)| v.contains(job))
    .map(|(n, _)| n.to_string())
    .collect()
}

fn volume_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["volume", "inspect", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Run `drkit --json drill JOB` while watching the engine: returns the run and the
/// volumes of the job's throwaway containers seen while it ran.
fn drill_watching_docker(s: &Scratch, job: &str) -> (Run, Vec<String>) {
    let mut cmd = s.command(&["--json", "drill", job]);
    cmd.env_remove("PGPASSWORD")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start drkit");
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().expect("wait drkit"));
    let mut volumes: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !waiter.is_finished() {
        assert!(Instant::now() < deadline, "drill {pid} hangs");
        for (id, _) in drill_containers(job) {
            let out = Command::new("docker")
                .args(["inspect", "-f", "{{range .Mounts}}{{.Name}} {{end}}", &id])
                .output()
                .expect("docker inspect");
            for v in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if !volumes.iter().any(|x| x == v) {
                    volumes.push(v.to_string());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    (Run::from(waiter.join().unwrap()), volumes)
}

#[test]
fn beside_the_source_passing_and_failing_checks() {
    let pg = Pg::from_env();
    let db = app_db(&pg, "drill_beside");
    let job = unique("bs");
    let checks = "checks = [\n  { sql = \"SELECT count(*) FROM users\", min = 3 },\n  { name = \"active\", sql = \"SELECT count(*) FILTER (WHERE active) = 2 FROM users\", equals = true },\n  { name = \"who\", sql = \"SELECT name FROM users ORDER BY id\", equals = \"ann\" },\n]";
    let s = setup(&pg, &job, &db, "", checks);
    drkit(&s, &["backup", &job]).expect_code(0);

    let r = drkit(&s, &["--json", "drill", &job]);
    r.expect_code(0);
    let rep = report(&r);
    assert_eq!(rep["ok"], true, "{rep}");
    assert_eq!(rep["checks"][0]["value"], 3, "{rep}");
    assert_eq!(rep["checks"][1]["value"], true, "{rep}");
    assert_eq!(rep["checks"][2]["value"], "ann", "{rep}");
    let scratch = rep["scratch"].as_str().unwrap();
    assert!(
        scratch.starts_with(&format!("drkit_drill_{job}_")),
        "{scratch}"
    );
    assert!(
        notes(&rep)
            .iter()
            .any(|n| n.contains("scratch databases on the source server (it loads it)")),
        "{rep}"
    );
    assert!(databases_like(&pg, &format!("drkit_drill_{job}")).is_empty());

    // A failing check: exit 4, the value and the verdict in the report.
    s.config(
        &std::fs::read_to_string(s.path("drkit.toml"))
            .unwrap()
            .replace(", min = 3 }", ", max = 0 }"),
    );
    let r = drkit(&s, &["--json", "drill", &job]);
    r.expect_code(4);
    let rep = report(&r);
    assert_eq!(rep["ok"], false);
    assert_eq!(rep["checks"][0]["value"], 3, "{rep}");
    assert_eq!(rep["checks"][0]["ok"], false, "{rep}");
    assert!(
        rep["checks"][0]["why"]
            .as_str()
            .unwrap()
            .contains("above the maximum 0"),
        "{rep}"
    );
    assert_eq!(rep["checks"][1]["ok"], true, "{rep}");
    assert!(databases_like(&pg, &format!("drkit_drill_{job}")).is_empty());

    // A check that writes is refused by the read-only transaction; other queries are
    // config errors.
    s.config(
        &std::fs::read_to_string(s.path("drkit.toml"))
            .unwrap()
            .replace(
                "SELECT count(*) FROM users\", max = 0",
                "INSERT INTO users VALUES (9, 'x', true) RETURNING id\", max = 100",
            ),
    );
    let r = drkit(&s, &["--json", "drill", &job]);
    r.expect_code(4);
    let rep = report(&r);
    assert!(
        rep["checks"][0]["why"]
            .as_str()
            .unwrap()
            .contains("read-only"),
        "{rep}"
    );
    pg.drop_db(&db);
}

#[test]
fn into_a_scratch_server_with_several_databases() {
    let pg = Pg::from_env();
    let a = app_db(&pg, "drill_ta");
    let b = unique("drill_tb");
    pg.create_db(&b);
    pg.script(
        &b,
        "CREATE TABLE t2 AS SELECT g AS n FROM generate_series(1, 7) g;",
    );
    // The scratch server: the same server, reached as another role with its own password.
    let role = unique("drill_target");
    let pw = "target-pw-7c1d";
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{pw}'"),
    );
    let target = format!("postgres://{role}:{pw}@{}/postgres", pg.hostport());
    let job = unique("ts");
    let drill = format!(
        "target = \"{target}\"\nchecks = [\n  {{ sql = \"SELECT count(*) FROM users\", equals = 3 }},\n  {{ sql = \"{b}: SELECT count(*) FROM t2\", equals = 7 }},\n  {{ name = \"user\", sql = \"SELECT current_user\", equals = \"{role}\" }},\n  {{ name = \"db\", sql = \"{b}: SELECT current_database() LIKE 'drkit\\\\_drill\\\\_%'\", equals = true }},\n]"
    );
    let s = setup(
        &pg,
        &job,
        &a,
        &format!(", databases = [\"{a}\", \"{b}\"]"),
        &drill,
    );
    drkit(&s, &["backup", &job]).expect_code(0);
    let r = drkit(&s, &["--json", "drill", &job]);
    r.expect_code(0);
    assert!(
        !r.stdout.contains(pw) && !r.stderr.contains(pw),
        "password leaked"
    );
    let rep = report(&r);
    assert_eq!(rep["ok"], true, "{rep}");
    let scratch = rep["scratch"].as_str().unwrap();
    assert!(
        scratch.starts_with(&format!("postgres://{role}@")) && scratch.ends_with("_*"),
        "{scratch}"
    );
    assert!(
        rep["place"].as_str().unwrap().starts_with("server "),
        "{rep}"
    );
    assert!(databases_like(&pg, &format!("drkit_drill_{job}")).is_empty());

    // A check naming a database the backup does not hold is a config error of that check.
    s.config(
        &std::fs::read_to_string(s.path("drkit.toml"))
            .unwrap()
            .replace(
                &format!("{b}: SELECT count(*)"),
                "nosuchdb: SELECT count(*)",
            ),
    );
    let r = drkit(&s, &["--json", "drill", &job]);
    let rep = report(&r);
    assert_eq!(rep["checks"][1]["ok"], false, "{rep}");
    assert!(
        rep["checks"][1]["why"]
            .as_str()
            .unwrap()
            .contains("does not hold"),
        "{rep}"
    );
    assert!(databases_like(&pg, &format!("drkit_drill_{job}")).is_empty());
    pg.drop_db(&a);
    pg.drop_db(&b);
    pg.psql("postgres", &format!("DROP ROLE {role}"));
}

#[test]
fn into_a_throwaway_container_with_the_roles_and_nothing_left_after() {
    let pg = Pg::from_env();
    let image = required_env("DRKIT_TEST_PG_IMAGE");
    let role = unique("drill_owner");
    pg.psql("postgres", &format!("CREATE ROLE {role} NOLOGIN"));
    let db = app_db(&pg, "drill_img");
    pg.psql(&db, &format!("ALTER TABLE users OWNER TO {role}"));
    let job = unique("im");
    let drill = format!(
        "image = \"{image}\"\nchecks = [\n  {{ sql = \"SELECT count(*) FROM users WHERE active\", equals = 2 }},\n  {{ name = \"owner\", sql = \"SELECT tableowner FROM pg_tables WHERE tablename = 'users'\", equals = \"{role}\" }},\n  {{ name = \"server\", sql = \"SELECT inet_server_addr() <> '127.0.0.1'\", equals = true }},\n]"
    );
    let s = setup(&pg, &job, &db, ", globals = true", &drill);
    drkit(&s, &["backup", &job]).expect_code(0);

    // What a drill killed two days ago left: a labelled container (with a volume) and network.
    let old = old_name(&job, 2, '_', 0xdead);
    let old_dash = old.replace('_', "-");
    docker(&[
        "network",
        "create",
        "--internal",
        "--label",
        &format!("drkit.drill={old}"),
        &old_dash,
    ]);
    docker(&[
        "create",
        "--name",
        &old_dash,
        "--network",
        &old_dash,
        "--label",
        &format!("drkit.drill={old}"),
        "-e",
        "POSTGRES_PASSWORD=x",
        &image,
    ]);
    let old_volumes: Vec<String> = docker(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Name}} {{end}}",
        &old_dash,
    ])
    .split_whitespace()
    .map(String::from)
    .collect();
    assert!(
        !old_volumes.is_empty(),
        "the image declares its data volume"
    );

    let (r, volumes) = drill_watching_docker(&s, &job);
    r.expect_code(0);
    let rep = report(&r);
    eprintln!("drill report: {rep}");
    assert_eq!(rep["ok"], true, "{rep}");
    assert_eq!(rep["checks"][1]["value"], role.as_str(), "{rep}");
    assert!(
        rep["place"]
            .as_str()
            .unwrap()
            .contains("throwaway container"),
        "{rep}"
    );
    let scratch = rep["scratch"].as_str().unwrap();
    assert!(scratch.starts_with("postgres://postgres@"), "{scratch}");
    assert!(!r.stdout.contains("POSTGRES_PASSWORD") && !r.stderr.contains("POSTGRES_PASSWORD"));
    let n = notes(&rep);
    assert!(
        n.iter().any(
            |l| l.contains(&format!("removed throwaway container {old_dash}"))
                && l.contains("left by a drill killed on")
        ),
        "{n:?}"
    );
    // The drill's container was seen with its data volume; now all is gone.
    assert!(
        !volumes.is_empty(),
        "no throwaway container was seen while the drill ran"
    );
    assert!(
        drill_containers(&job).is_empty(),
        "{:?}",
        drill_containers(&job)
    );
    assert!(
        drill_networks(&job).is_empty(),
        "{:?}",
        drill_networks(&job)
    );
    for v in volumes.iter().chain(&old_volumes) {
        assert!(!volume_exists(v), "volume {v} is left");
    }
    pg.drop_db(&db);
    pg.psql("postgres", &format!("DROP ROLE {role}"));
}

#[test]
fn a_throwaway_server_older_than_the_backup_fails_the_drill() {
    let pg = Pg::from_env();
    let image = required_env("DRKIT_TEST_PG_IMAGE");
    let db = app_db(&pg, "drill_old");
    let job = unique("ov");
    let s = setup(
        &pg,
        &job,
        &db,
        "",
        &format!("image = \"{image}\"\nchecks = [ {{ sql = \"SELECT 1\", equals = 1 }} ]"),
    );
    drkit(&s, &["backup", &job]).expect_code(0);
    // Only PostgreSQL 15 can be built here: say the backup came from a PostgreSQL 99 server.
    let backups = s.path("backups");
    let found: Vec<String> = drkit_tests::files_under(&backups)
        .into_iter()
        .filter(|f| f.ends_with("manifest.json"))
        .collect();
    assert_eq!(found.len(), 1);
    let path = backups.join(&found[0]);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["source"]["server_version"] = "99.1".into();
    m["source"]["server_version_num"] = 990001.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    assert_eq!(
        manifests(&backups)[0]["source"]["server_version_num"],
        990001
    );

    let (r, volumes) = drill_watching_docker(&s, &job);
    assert_ne!(r.code, 0, "{r:?}");
    let rep = report(&r);
    assert_eq!(rep["ok"], false, "{rep}");
    let err = rep["error"].as_str().unwrap();
    assert!(
        err.contains("runs PostgreSQL 15") && err.contains("older than PostgreSQL 99.1"),
        "{err}"
    );
    assert!(drill_containers(&job).is_empty());
    assert!(drill_networks(&job).is_empty());
    for v in &volumes {
        assert!(!volume_exists(v), "volume {v} is left");
    }
    pg.drop_db(&db);
}

#[test]
fn stale_scratch_databases_are_removed_and_others_kept() {
    let pg = Pg::from_env();
    let db = app_db(&pg, "drill_stale");
    let job = unique("st");
    let s = setup(
        &pg,
        &job,
        &db,
        "",
        "checks = [ { sql = \"SELECT count(*) FROM users\", equals = 3 } ]",
    );
    drkit(&s, &["backup", &job]).expect_code(0);
    let stale = old_name(&job, 2, '_', 0xab);
    let fresh = old_name(&job, 0, '_', 0xcd);
    let not_ours = format!("drkit_drill_{job}_notascratch");
    for n in [&stale, &fresh, &not_ours] {
        pg.create_db(n);
    }
    let r = drkit(&s, &["--json", "drill", &job]);
    r.expect_code(0);
    let rep = report(&r);
    let n = notes(&rep);
    assert!(
        n.iter().any(
            |l| l.starts_with(&format!("removed scratch database {stale} "))
                && l.contains("left by a drill killed on")
        ),
        "{n:?}"
    );
    assert_eq!(
        n.iter().filter(|l| l.starts_with("removed")).count(),
        1,
        "{n:?}"
    );
    let left = databases_like(&pg, &format!("drkit_drill_{job}"));
    assert_eq!(left, {
        let mut v = vec![fresh.clone(), not_ours.clone()];
        v.sort();
        v
    });
    pg.drop_db(&fresh);
    pg.drop_db(&not_ours);
    pg.drop_db(&db);
}

#[test]
fn a_drill_killed_mid_restore_leaves_a_scratch_database_the_next_drill_removes() {
    let pg = Pg::from_env();
    let db = unique("drill_kill");
    pg.create_db(&db);
    // Enough rows that the restore (and its index build) takes a few seconds.
    pg.script(
        &db,
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS pad FROM generate_series(1, 1500000) g;
         CREATE INDEX ON big (pad);",
    );
    let job = unique("kl");
    let s = setup(
        &pg,
        &job,
        &db,
        "",
        "checks = [ { sql = \"SELECT count(*) FROM big\", min = 1 } ]",
    );
    drkit(&s, &["backup", &job]).expect_code(0);

    let mut child = s
        .command(&["drill", &job])
        .env_remove("PGPASSWORD")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let prefix = format!("drkit_drill_{job}_");
    let leftover = loop {
        assert!(Instant::now() < deadline, "no scratch database appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the drill ended before it was killed"
        );
        if let Some(n) = databases_like(&pg, &prefix).into_iter().next() {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL: no clean-up runs
    child.wait().unwrap();
    // Its pg_restore sees the end of its input and gives up; the database stays.
    let wait_idle = Instant::now() + Duration::from_secs(60);
    while pg
        .psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{leftover}'"),
        )
        .trim()
        != "0"
    {
        assert!(
            Instant::now() < wait_idle,
            "the killed drill's pg_restore does not end"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(databases_like(&pg, &prefix), vec![leftover.clone()]);

    // The next drill, on the same day: the leftover is not stale yet, and is kept.
    let r = drkit(&s, &["--json", "drill", &job]);
    r.expect_code(0);
    assert!(!notes(&report(&r)).iter().any(|l| l.starts_with("removed")));
    assert_eq!(databases_like(&pg, &prefix), vec![leftover.clone()]);

    // A day later (the clock cannot be moved: the leftover's name is moved back two days,
    // which is all the sweep reads), the next drill removes it.
    let tag = leftover.rsplit('_').next().unwrap();
    let aged = old_name(&job, 2, '_', u32::from_str_radix(tag, 16).unwrap());
    pg.psql(
        "postgres",
        &format!("ALTER DATABASE \"{leftover}\" RENAME TO \"{aged}\""),
    );
    let r = drkit(&s, &["--json", "drill", &job]);
    r.expect_code(0);
    let n = notes(&report(&r));
    assert!(
        n.iter()
            .any(|l| l.starts_with(&format!("removed scratch database {aged} "))),
        "{n:?}"
    );
    assert!(databases_like(&pg, &prefix).is_empty());
    pg.drop_db(&db);
}
