//! End to end: PostgreSQL backups tampered with in the storage (the checksums in the manifest
//! rewritten to match) must not turn a `drkit restore` or `drkit drill` into commands run on
//! the restoring host, writes outside its staging folder, or a shell on the database host.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use drkit_tests::postgres::{
    only_backup, replace_backup_data, run, tar_members, tar_of, unique, Pg,
};
use drkit_tests::{files_under, Run, Scratch};

/// A scratch folder with job `app` (uncompressed, so that it can be edited in place).
fn setup(pg: &Pg, extra: &str) -> Scratch {
    let s = Scratch::new();
    write_config(&s, pg, extra);
    s
}

fn write_config(s: &Scratch, pg: &Pg, extra: &str) {
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n\n[job.app]\nsource = {{ type = \"postgres\", url = \"${{APP_DB_URL}}\", bindir = \"{}\"{extra} }}\nstorage = [\"local\"]\ncompression = \"none\"\n",
        s.path("backups").display(),
        pg.bindir.display()
    ));
}

fn drkit(s: &Scratch, pg: &Pg, args: &[&str]) -> Run {
    drkit_env(s, pg, args, &[])
}

fn drkit_env(s: &Scratch, pg: &Pg, args: &[&str], env: &[(&str, &Path)]) -> Run {
    let mut cmd = s.command(args);
    cmd.env("APP_DB_URL", pg.url_of("postgres"))
        .env_remove("PGPASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
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

fn stored(s: &Scratch) -> Vec<u8> {
    std::fs::read(only_backup(&s.path("backups")).1).unwrap()
}

/// The stored tar with its roles script edited by `edit`.
fn with_globals(original: &[u8], edit: impl Fn(&str) -> String) -> Vec<u8> {
    let mut members = tar_members(original);
    let g = members
        .iter_mut()
        .find(|(n, _)| n == "globals.sql.00000000")
        .expect("a roles stream");
    let text = String::from_utf8(g.1.clone()).unwrap();
    let edited = edit(&text);
    assert_ne!(edited, text, "the edit changed nothing");
    g.1 = edited.into_bytes();
    tar_of(&members)
}

#[test]
fn a_roles_script_with_psql_meta_commands_runs_nothing() {
    let pg = Pg::from_env();
    let (db, evil) = (unique("drkit_hostile_g"), unique("drkit_evil"));
    pg.create_db(&db);
    pg.script(
        &db,
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);",
    );
    let s = setup(&pg, &format!(", databases = [\"{db}\"], globals = true"));
    drkit(&s, &pg, &["backup", "app"]).expect_code(0);
    let original = stored(&s);
    let pwned = s.path("pwned");

    let anchor = "SET standard_conforming_strings = on;\n";
    let variants: Vec<(String, &str)> = vec![
        // On its own line, after a statement that would create a role.
        (
            format!(
                "{anchor}CREATE ROLE {evil};\n\\! touch {}\n",
                pwned.display()
            ),
            "meta-command",
        ),
        // After a statement on the same line.
        (
            format!(
                "{anchor}CREATE ROLE {evil}; \\! touch {}\n",
                pwned.display()
            ),
            "meta-command",
        ),
        // A statement that is not in a roles script.
        (
            format!(
                "{anchor}CREATE ROLE {evil};\nCOPY (SELECT 1) TO PROGRAM 'touch {}';\n",
                pwned.display()
            ),
            "COPY",
        ),
    ];
    for (replacement, want) in variants {
        let tampered = with_globals(&original, |t| {
            assert!(t.contains(anchor), "pg_dumpall wrote:\n{t}");
            t.replacen(anchor, &replacement, 1)
        });
        replace_backup_data(&s.path("backups"), &tampered);
        for args in [
            &["restore", "app", "--force"][..],
            &["restore", "app", "--force", "--jobs", "2"][..],
            &["drill", "app"][..],
        ] {
            let r = drkit(&s, &pg, args);
            eprintln!("{args:?}:\n{}", r.stderr);
            r.expect_code(4);
            assert!(
                r.stderr.contains("roles script") && r.stderr.contains(want),
                "{args:?}: stderr does not name the problem:\n{}",
                r.stderr
            );
            assert!(
                r.stderr.contains("line "),
                "{args:?}: no line number:\n{}",
                r.stderr
            );
            assert!(
                !pwned.exists(),
                "{args:?}: the command ran on the restoring host"
            );
            assert!(
                !role_exists(&pg, &evil),
                "{args:?}: a statement ran before the script was refused"
            );
        }
    }
    pg.drop_db(&db);
}

#[test]
fn a_real_roles_backup_still_restores_the_roles() {
    let pg = Pg::from_env();
    let (db, role) = (unique("drkit_hostile_r"), unique("drkit_role"));
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN PASSWORD 'role-pw' CONNECTION LIMIT 7"),
    );
    pg.script(
        "postgres",
        &format!(
            "ALTER ROLE {role} SET work_mem = '64MB';\n\
             COMMENT ON ROLE {role} IS 'the app''s role; -- with a ;';\n\
             GRANT pg_read_all_data TO {role};"
        ),
    );
    pg.create_db(&db);
    pg.psql("postgres", &format!("ALTER DATABASE {db} OWNER TO {role}"));
    pg.script(
        &db,
        &format!("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 50); ALTER TABLE t OWNER TO {role};"),
    );
    let s = setup(&pg, &format!(", databases = [\"{db}\"], globals = true"));
    drkit(&s, &pg, &["backup", "app"]).expect_code(0);
    let script = String::from_utf8(
        tar_members(&stored(&s))
            .into_iter()
            .find(|(n, _)| n == "globals.sql.00000000")
            .unwrap()
            .1,
    )
    .unwrap();
    assert!(
        script.contains("\\restrict ") && script.contains(&format!("CREATE ROLE {role};")),
        "pg_dumpall 15.14+ writes its guard lines:\n{script}"
    );

    for jobs in [None, Some("2")] {
        pg.drop_db(&db);
        pg.psql("postgres", &format!("DROP ROLE {role}"));
        let mut args = vec!["restore", "app"];
        if let Some(j) = jobs {
            args.extend(["--jobs", j]);
        }
        let r = drkit(&s, &pg, &args);
        r.expect_code(0);
        assert_eq!(
            pg.psql(
                "postgres",
                &format!(
                    "SELECT r.rolcanlogin, r.rolconnlimit, a.rolpassword IS NOT NULL, array_to_string(r.rolconfig, ','), shobj_description(r.oid, 'pg_authid') FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = '{role}'"
                ),
            )
            .trim(),
            "t|7|t|work_mem=64MB|the app's role; -- with a ;",
            "{jobs:?}: the role is back as it was"
        );
        assert_eq!(
            pg.psql(
                "postgres",
                &format!("SELECT pg_has_role('{role}', 'pg_read_all_data', 'MEMBER')"),
            )
            .trim(),
            "t"
        );
        assert_eq!(
            pg.psql(
                "postgres",
                &format!("SELECT datdba::regrole FROM pg_database WHERE datname = '{db}'")
            )
            .trim(),
            role
        );
        assert_eq!(pg.count(&db, "t"), 50);
    }
    pg.drop_db(&db);
    pg.psql("postgres", &format!("DROP ROLE {role}"));
}

#[test]
fn index_file_names_cannot_leave_the_staging_folder() {
    let pg = Pg::from_env();
    let (a, b) = (unique("drkit_hostile_a"), unique("drkit_hostile_b"));
    for db in [&a, &b] {
        pg.create_db(db);
        pg.script(db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1);");
    }
    let s = setup(&pg, &format!(", databases = [\"{a}\", \"{b}\"]"));
    drkit(&s, &pg, &["backup", "app"]).expect_code(0);
    let original = stored(&s);
    let victim = s.path("victim");
    std::fs::write(&victim, b"precious").unwrap();
    // The staging folder is made in TMPDIR: `../../x` from it lands in `tmp/x`.
    let tmp = s.path("tmp/deeper");
    std::fs::create_dir_all(&tmp).unwrap();

    for evil in [victim.display().to_string(), "../../x".to_string()] {
        let members = tar_members(&original);
        let index_name = "drkit-postgres.json";
        let mut index: serde_json::Value = serde_json::from_slice(&members[0].1).unwrap();
        assert_eq!(members[0].0, index_name);
        let first = index["streams"][0]["file"].as_str().unwrap().to_string();
        index["streams"][0]["file"] = serde_json::json!(evil);
        let renamed: Vec<(String, Vec<u8>)> = members
            .into_iter()
            .map(|(name, data)| {
                if name == index_name {
                    (name, serde_json::to_vec(&index).unwrap())
                } else if let Some(part) = name.strip_prefix(&format!("{first}.")) {
                    (format!("{evil}.{part}"), data)
                } else {
                    (name, data)
                }
            })
            .collect();
        replace_backup_data(&s.path("backups"), &tar_of(&renamed));
        let before = files_under(s.dir.path());
        for args in [
            &["restore", "app", "--force", "--jobs", "2"][..],
            &["restore", "app", "--force"][..],
        ] {
            let r = drkit_env(&s, &pg, args, &[("TMPDIR", &tmp)]);
            eprintln!("{evil} {args:?}:\n{}", r.stderr);
            r.expect_code(4);
            assert!(
                r.stderr.contains("index is refused") && r.stderr.contains("file name"),
                "{evil}: {}",
                r.stderr
            );
            assert_eq!(
                std::fs::read(&victim).unwrap(),
                b"precious",
                "{evil}: victim changed"
            );
            assert_eq!(
                files_under(s.dir.path()),
                before,
                "{evil}: a file was created"
            );
        }
        assert!(!s.path("tmp/x").exists() && !s.path("x").exists());
    }
    pg.drop_db(&a);
    pg.drop_db(&b);
}

/// Replace the text of `placeholder` in the pg_dump archive by `sql`, padded to the same
/// length (a pg_dump custom archive stores each statement with its length).
fn forge(archive: &[u8], placeholder: &str, sql: &str) -> Vec<u8> {
    assert!(sql.len() <= placeholder.len());
    let at = archive
        .windows(placeholder.len())
        .position(|w| w == placeholder.as_bytes())
        .expect("the placeholder is in the archive");
    let mut out = archive.to_vec();
    let padded = format!("{sql:<width$}", width = placeholder.len());
    out[at..at + placeholder.len()].copy_from_slice(padded.as_bytes());
    out
}

/// A folder the database server (another OS user) can write into.
fn shared_dir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::Builder::new()
        .prefix("drkit-hostile-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let p = d.path().join("pwned");
    (d, p)
}

#[test]
fn restore_role_runs_pg_restore_as_that_role() {
    let pg = Pg::from_env();
    let (db, role) = (unique("drkit_hostile_rr"), unique("drkit_restorer"));
    let to = format!("{db}_copy");
    pg.psql("postgres", &format!("CREATE ROLE {role} NOLOGIN"));
    pg.create_db(&db);
    pg.psql("postgres", &format!("ALTER DATABASE {db} OWNER TO {role}"));
    let placeholder = format!("COMMENT ON TABLE public.t IS '{}';", "A".repeat(160));
    pg.script(
        &db,
        &format!("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2), (3); ALTER TABLE t OWNER TO {role}; {placeholder}"),
    );
    let s = setup(
        &pg,
        &format!(", databases = [\"{db}\"], restore_role = \"{role}\""),
    );
    drkit(&s, &pg, &["backup", "app"]).expect_code(0);

    // The real backup restores with restore_role: the database is the role's, and so is
    // what pg_restore created.
    let r = drkit(&s, &pg, &["restore", "app", "--to", &to]);
    eprintln!("restore_role:\n{}\n{}", r.stdout, r.stderr);
    r.expect_code(0);
    assert!(
        format!("{}{}", r.stdout, r.stderr).contains("RESET ROLE"),
        "the superuser url is pointed out:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(pg.count(&to, "t"), 3);
    assert_eq!(
        pg.psql(
            "postgres",
            &format!("SELECT datdba::regrole FROM pg_database WHERE datname = '{to}'")
        )
        .trim(),
        role
    );
    pg.drop_db(&to);

    // A forged archive runs COPY ... TO PROGRAM: refused to the role, not to a superuser.
    let (_keep, pwned) = shared_dir();
    let original = stored(&s);
    let evil = format!("COPY (SELECT 1) TO PROGRAM 'touch {}';", pwned.display());
    replace_backup_data(&s.path("backups"), &forge(&original, &placeholder, &evil));
    let r = drkit(&s, &pg, &["restore", "app", "--to", &to]);
    eprintln!("forged, restore_role:\n{}", r.stderr);
    assert_ne!(r.code, 0, "the forged COPY ran:\n{}", r.stderr);
    assert!(
        r.stderr.contains("pg_execute_server_program") || r.stderr.contains("superuser"),
        "{}",
        r.stderr
    );
    assert!(!pwned.exists(), "COPY TO PROGRAM ran as the restore role");
    assert!(!pg.db_exists(&to), "the failed restore left its database");
    let drill = drkit(&s, &pg, &["drill", "app"]);
    assert_ne!(drill.code, 0, "{}", drill.stderr);
    assert!(!pwned.exists(), "COPY TO PROGRAM ran in the drill");

    // The same forged archive without restore_role, as the superuser of the url: the
    // command runs on the database host. This is what restore_role (or a url of a user that
    // is not a superuser) prevents.
    write_config(&s, &pg, &format!(", databases = [\"{db}\"]"));
    drkit(&s, &pg, &["restore", "app", "--to", &to]).expect_code(0);
    assert!(
        pwned.exists(),
        "the forged archive did not reach pg_restore"
    );
    pg.drop_db(&to);
    pg.drop_db(&db);
    pg.psql("postgres", &format!("DROP ROLE {role}"));
}
