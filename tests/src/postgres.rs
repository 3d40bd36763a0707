//! Helpers for the PostgreSQL end-to-end tests: the test server started by
//! `scripts/test.sh` (`DRKIT_TEST_PG_URL`, `DRKIT_TEST_PG_BINDIR`), scratch databases, and a
//! row-for-row fingerprint of a database through `psql`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::required_env;

/// The test server.
#[derive(Debug, Clone)]
pub struct Pg {
    /// `postgres://drkit:PASSWORD@127.0.0.1:PORT/postgres`
    pub url: String,
    /// Folder of pg_dump, pg_restore, psql, pgbench.
    pub bindir: PathBuf,
}

/// A random lowercase suffix, so that tests running in parallel use different names.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::random::<u32>())
}

impl Pg {
    /// The server of the test run; fails the test when the harness did not start one.
    pub fn from_env() -> Pg {
        Pg {
            url: required_env("DRKIT_TEST_PG_URL"),
            bindir: PathBuf::from(required_env("DRKIT_TEST_PG_BINDIR")),
        }
    }

    /// The password in the URL.
    pub fn password(&self) -> String {
        let rest = self.url.split("://").nth(1).expect("url has a scheme");
        let userinfo = rest.split('@').next().expect("url has user info");
        userinfo
            .split(':')
            .nth(1)
            .expect("url has a password")
            .to_string()
    }

    /// `host:port` of the server.
    pub fn hostport(&self) -> String {
        let rest = self.url.split("://").nth(1).unwrap();
        let after_at = rest.rsplit('@').next().unwrap();
        after_at.split('/').next().unwrap().to_string()
    }

    /// The URL of database `db`.
    pub fn url_of(&self, db: &str) -> String {
        let (base, _) = self.url.rsplit_once('/').expect("url has a database");
        format!("{base}/{db}")
    }

    /// The URL of database `db` with `user:password` replaced.
    pub fn url_with_password(&self, db: &str, password: &str) -> String {
        format!("postgres://drkit:{password}@{}/{db}", self.hostport())
    }

    /// A client program of the server's bindir, with the password in its environment.
    pub fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(self.bindir.join(name));
        c.env("PGPASSWORD", self.password()).stdin(Stdio::null());
        c
    }

    /// Run SQL in `db` with psql (stops at the first error) and return its unaligned output.
    #[track_caller]
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .tool("psql")
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url_of(db),
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on {db}: {}\nSQL: {sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("psql output is UTF-8")
    }

    /// Run a multi-statement SQL script in `db` (stdin of psql).
    #[track_caller]
    pub fn script(&self, db: &str, sql: &str) {
        use std::io::Write;
        let mut child = self
            .tool("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.url_of(db)])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "psql script failed on {db}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Create an empty database.
    pub fn create_db(&self, db: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{db}\""));
    }

    /// Drop a database (and its connections).
    pub fn drop_db(&self, db: &str) {
        self.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
        );
    }

    /// Whether a database exists.
    pub fn db_exists(&self, db: &str) -> bool {
        self.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
        )
        .trim()
            == "1"
    }

    /// Every user table's rows (ordered, as COPY text: bytea in hex, jsonb normalized...),
    /// every sequence's state, every view's output, every large object's md5, and the
    /// extensions: if two databases give the same fingerprint, they hold the same data.
    pub fn fingerprint(&self, db: &str) -> String {
        let mut out = String::new();
        let tables = self.psql(
            db,
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' ORDER BY 1",
        );
        for t in tables.lines() {
            out.push_str(&format!("== table {t}\n"));
            out.push_str(&self.copy_sorted(db, &format!("SELECT * FROM {t}")));
        }
        let seqs = self.psql(
            db,
            "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences ORDER BY 1",
        );
        for s in seqs.lines() {
            out.push_str(&format!("== sequence {s}\n"));
            out.push_str(&self.psql(db, &format!("SELECT last_value, is_called FROM {s}")));
        }
        let views = self.psql(
            db,
            "SELECT format('%I.%I', schemaname, viewname) FROM pg_views WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        );
        for v in views.lines() {
            out.push_str(&format!("== view {v}\n"));
            out.push_str(&self.copy_sorted(db, &format!("SELECT * FROM {v}")));
        }
        out.push_str("== large objects\n");
        out.push_str(&self.psql(
            db,
            "SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY oid",
        ));
        out.push_str("== extensions\n");
        out.push_str(&self.psql(
            db,
            "SELECT extname, extversion FROM pg_extension ORDER BY 1",
        ));
        out
    }

    fn copy_sorted(&self, db: &str, query: &str) -> String {
        let text = self.psql(db, &format!("COPY ({query}) TO STDOUT"));
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        let mut s = lines.join("\n");
        s.push('\n');
        s
    }

    /// Row count of one table.
    pub fn count(&self, db: &str, table: &str) -> i64 {
        self.psql(db, &format!("SELECT count(*) FROM {table}"))
            .trim()
            .parse()
            .expect("a count")
    }
}

/// A database of many types: jsonb, bytea, arrays, numeric, timestamptz, uuid, interval,
/// large objects, a view, sequences, a mixed-case table, a second schema, an empty table and
/// the pgcrypto extension.
pub const MANY_TYPES_SQL: &str = r#"
CREATE EXTENSION pgcrypto;
CREATE TABLE kinds (
    id serial PRIMARY KEY,
    doc jsonb,
    raw bytea,
    tags text[],
    nums int[],
    amount numeric(20, 6),
    at timestamptz,
    d date,
    u uuid DEFAULT gen_random_uuid(),
    span interval,
    note text,
    secret bytea
);
INSERT INTO kinds (doc, raw, tags, nums, amount, at, d, span, note, secret)
SELECT jsonb_build_object('i', i, 'nested', jsonb_build_array(i, 'x', NULL, true), 'f', i / 3.0),
       gen_random_bytes(16 + i % 200),
       ARRAY['a' || i, 'b"quoted"', NULL],
       ARRAY[i, -i, i * 1000],
       i * 1000.123456,
       timestamptz '2024-02-29 12:00:00+01' + i * interval '37 minutes',
       date '2000-01-01' + i,
       i * interval '1 second',
       CASE WHEN i % 7 = 0 THEN NULL ELSE repeat('é✓ ' || chr(9) || E'\\', i % 40) END,
       pgp_sym_encrypt('secret ' || i, 'key')
FROM generate_series(1, 3000) AS i;
CREATE TABLE "Mixed Case" ("Key" text PRIMARY KEY, "when" timestamptz);
INSERT INTO "Mixed Case" VALUES ('a', '1999-12-31 23:59:59.999999+00'), ('b', 'infinity'), ('c', NULL);
CREATE SCHEMA audit;
CREATE TABLE audit.log (id bigserial PRIMARY KEY, what text NOT NULL, at timestamptz DEFAULT now());
INSERT INTO audit.log (what) SELECT 'event ' || i FROM generate_series(1, 500) AS i;
CREATE SEQUENCE ticket START 100;
SELECT nextval('ticket') FROM generate_series(1, 5);
CREATE VIEW kinds_summary AS SELECT count(*) AS n, sum(amount) AS total, max(at) AS last FROM kinds;
CREATE TABLE docs (id int PRIMARY KEY, body oid);
INSERT INTO docs VALUES
    (1, lo_from_bytea(0, convert_to(repeat('large object text ', 5000), 'UTF8'))),
    (2, lo_from_bytea(0, (SELECT string_agg(gen_random_bytes(1000), ''::bytea) FROM generate_series(1, 200))));
CREATE TABLE empty_table (x int);
"#;

/// A drkit.toml with a local storage in `backups` and one postgres job `job` whose source
/// table holds `source_keys` (TOML inline-table keys after `type = "postgres"`).
pub fn config(backups: &Path, job: &str, source_keys: &str) -> String {
    format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n\n[job.{job}]\nsource = {{ type = \"postgres\", {source_keys} }}\nstorage = [\"local\"]\n",
        backups.display()
    )
}

/// The manifests under a local storage folder.
pub fn manifests(backups: &Path) -> Vec<serde_json::Value> {
    crate::files_under(backups)
        .into_iter()
        .filter(|f| f.ends_with("manifest.json"))
        .map(|f| serde_json::from_slice(&std::fs::read(backups.join(f)).unwrap()).unwrap())
        .collect()
}

/// The pid of a process named `comm` whose parent is `parent`, if one runs.
pub fn child_named(parent: u32, comm: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let ppid = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if name == comm && ppid == Some(parent) {
            return Some(pid);
        }
    }
    None
}

/// Bytes a process has written so far (`/proc/PID/io` wchar).
pub fn written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("wchar:"))
                .and_then(|l| l[6..].trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Run a prepared `drkit` command and collect its result.
pub fn run(mut cmd: Command) -> crate::Run {
    let out = cmd.output().expect("run drkit");
    crate::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A Docker image holding this machine's PostgreSQL client programs (and `sleep`), built
/// with `docker import` from local files (no registry is needed). Returns its tag.
pub fn pg_tools_image(bindir: &Path) -> String {
    let tag = "drkit-test-pgtools:15".to_string();
    let have = Command::new("docker")
        .args(["image", "inspect", &tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if have.map(|s| s.success()).unwrap_or(false) {
        return tag;
    }
    let stage = tempfile::tempdir().expect("temp dir");
    let mut files: Vec<PathBuf> = ["pg_dump", "pg_restore", "pg_dumpall", "psql"]
        .iter()
        .map(|t| bindir.join(t))
        .collect();
    files.push(PathBuf::from("/usr/bin/sleep"));
    let ldd = Command::new("ldd").args(&files).output().expect("run ldd");
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if word.starts_with('/') && !word.ends_with(':') {
            files.push(PathBuf::from(word));
        }
    }
    for f in &files {
        let dest = stage.path().join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(f, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", f.display()));
    }
    std::fs::create_dir_all(stage.path().join("etc")).unwrap();
    std::fs::create_dir_all(stage.path().join("tmp")).unwrap();
    std::fs::write(
        stage.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
    )
    .unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -c . | docker import - {tag} >/dev/null",
            stage.path().display()
        ))
        .status()
        .expect("run docker import");
    assert!(
        status.success(),
        "docker import of the pg tools image failed"
    );
    tag
}

/// The only backup under a local storage folder: (manifest path, stored data path).
pub fn only_backup(backups: &Path) -> (PathBuf, PathBuf) {
    let found: Vec<String> = crate::files_under(backups)
        .into_iter()
        .filter(|f| f.ends_with("manifest.json"))
        .collect();
    assert_eq!(found.len(), 1, "want one backup, got {found:?}");
    let manifest_path = backups.join(&found[0]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let data = backups.join(m["data"]["key"].as_str().expect("a data key"));
    (manifest_path, data)
}

/// Replace the stored data of the only backup under `backups` (written with
/// `compression = "none"`) by `data`, and rewrite its manifest's sizes and checksums to
/// match: what someone who can write the storage does to get a tampered archive through the
/// checksums.
pub fn replace_backup_data(backups: &Path, data: &[u8]) {
    use sha2::Digest;
    let (manifest_path, data_path) = only_backup(backups);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert_eq!(
        m["data"]["compression"], "none",
        "tampering needs a backup written with compression = \"none\""
    );
    let sha = hex::encode(sha2::Sha256::digest(data));
    std::fs::write(&data_path, data).unwrap();
    for k in ["raw_size", "stored_size"] {
        m["data"][k] = serde_json::json!(data.len());
    }
    for k in ["raw_sha256", "stored_sha256"] {
        m["data"][k] = serde_json::json!(sha);
    }
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// The members (name, bytes) of a drkit PostgreSQL tar archive.
pub fn tar_members(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    use drkit_drivers::test_util::postgres_archive::TarReader;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut r = TarReader::new(data);
        let mut out = Vec::new();
        while let Some(m) = r.next().await.expect("a readable archive") {
            out.push((m.name, m.data));
        }
        out
    })
}

/// A drkit PostgreSQL tar archive of `members`.
pub fn tar_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    use drkit_drivers::test_util::postgres_archive::{write_end, write_member};
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut out = Vec::new();
        for (name, data) in members {
            write_member(&mut out, name, data).await.unwrap();
        }
        write_end(&mut out).await.unwrap();
        out
    })
}
