//! End to end: encryption at rest with age, the `drkit` binary against the real PostgreSQL
//! test server, a local folder and moto (S3), with keys made by Debian's `age-keygen`.
//! Encrypted backups on both storages; verify without an identity (stored bytes only) and
//! with one (everything); restore and drill with the identity; a wrong or missing identity;
//! a flipped byte and a truncated archive; the runbook with the standard tools only
//! (`age -d | zstd -d | pg_restore`); `drkit rekey` to a new key set; and no secret part of
//! an identity in any output, manifest or report.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use drkit_tests::postgres::{manifests, run, unique, Pg};
use drkit_tests::storage::moto;
use drkit_tests::{files_under, Run, Scratch};
use sha2::Digest;

const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
const SECRET_PREFIX: &str = "AGE-SECRET-KEY-1";

/// An age key pair made with `age-keygen -o FILE` (mode 600).
struct AgeKey {
    file: PathBuf,
    /// `age1...`
    public: String,
}

/// The secret part of an identity file: the text after `AGE-SECRET-KEY-1`.
fn secret_of(file: &Path) -> String {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix(SECRET_PREFIX))
        .expect("an AGE-SECRET-KEY-1 line")
        .to_string()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The public fingerprint drkit records for an age recipient, computed here on its own:
/// `age:` and the first 16 hex digits of the sha256 of the recipient text.
fn fingerprint(public: &str) -> String {
    format!(
        "age:{}",
        &hex::encode(sha2::Sha256::digest(public.as_bytes()))[..16]
    )
}

/// A PostgreSQL database with pgbench's tables (scale 1) and a table of text and bytea.
fn source_db(pg: &Pg) -> String {
    let db = unique("drkit_enc");
    pg.create_db(&db);
    let init = pg
        .tool("pgbench")
        .args(["-i", "-q", "-s", "1", &pg.url_of(&db)])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    pg.script(
        &db,
        "CREATE TABLE notes (id int PRIMARY KEY, body text, raw bytea);
         INSERT INTO notes SELECT i, repeat('note ' || i, i % 50), sha256(i::text::bytea)
         FROM generate_series(1, 2500) AS i;
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 5, now()), (2, 1, 7, -3, now());",
    );
    db
}

const TABLES: [&str; 5] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
    "notes",
];

fn counts(pg: &Pg, db: &str) -> Vec<(String, i64)> {
    TABLES
        .iter()
        .map(|t| (t.to_string(), pg.count(db, t)))
        .collect()
}

/// Whether database `db` is absent, or has no user table (nothing was restored into it).
fn absent_or_empty(pg: &Pg, db: &str) -> bool {
    !pg.db_exists(db)
        || pg
            .psql(
                db,
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 AND n.nspname !~ '^pg_toast'",
            )
            .trim()
            == "0"
}

/// One test's world: the server, a source database, a scratch folder whose `drkit.toml` has
/// a local storage (`backups`), maybe more storages, and job `app`; every drkit run's output
/// and every identity's secret are kept for the secret check.
struct World {
    pg: Pg,
    db: String,
    s: Scratch,
    /// Extra `[storage.X]` sections.
    sections: String,
    /// The job's `storage = [...]` list.
    storages: String,
    transcripts: Mutex<Vec<String>>,
    secrets: Mutex<Vec<String>>,
    /// Databases to drop at the end.
    dbs: Mutex<Vec<String>>,
}

impl World {
    fn new(sections: &str, storages: &str) -> World {
        let pg = Pg::from_env();
        let db = source_db(&pg);
        World {
            pg,
            db: db.clone(),
            s: Scratch::new(),
            sections: sections.to_string(),
            storages: storages.to_string(),
            transcripts: Mutex::new(Vec::new()),
            secrets: Mutex::new(Vec::new()),
            dbs: Mutex::new(vec![db]),
        }
    }

    fn local(&self) -> PathBuf {
        self.s.path("backups")
    }

    /// A new key pair in the scratch folder (`NAME.txt`), made with age-keygen.
    fn keygen(&self, name: &str) -> AgeKey {
        let file = self.s.path(&format!("{name}.txt"));
        let out = Command::new("age-keygen")
            .arg("-o")
            .arg(&file)
            .output()
            .expect("run age-keygen");
        assert!(
            out.status.success(),
            "age-keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        set_mode(&file, 0o600);
        let public = String::from_utf8_lossy(&out.stderr)
            .lines()
            .find_map(|l| l.strip_prefix("Public key: "))
            .expect("age-keygen prints the public key")
            .trim()
            .to_string();
        let y = Command::new("age-keygen")
            .arg("-y")
            .arg(&file)
            .output()
            .expect("run age-keygen -y");
        assert_eq!(String::from_utf8_lossy(&y.stdout).trim(), public);
        assert!(public.starts_with("age1"), "{public}");
        let secret = secret_of(&file);
        assert!(secret.len() > 40, "a real secret");
        self.secrets.lock().unwrap().push(secret);
        AgeKey { file, public }
    }

    /// Write `drkit.toml` with job `app` and `encryption = { ENCRYPTION }`.
    fn configure(&self, encryption: &str) {
        self.s.config(&format!(
            "[storage.local]\ntype = \"local\"\npath = \"{}\"\n\n{}\n[job.app]\nsource = {{ type = \"postgres\", url = \"{}\", bindir = \"{}\" }}\nstorage = [{}]\nencryption = {{ {encryption} }}\n",
            self.local().display(),
            self.sections,
            self.pg.url_of(&self.db),
            self.pg.bindir.display(),
            self.storages,
        ));
    }

    /// `drkit ARGS`, its output kept for the secret check.
    fn drkit(&self, args: &[&str]) -> Run {
        let mut cmd = self.s.command(args);
        cmd.env_remove("PGPASSWORD");
        let r = run(cmd);
        self.transcripts.lock().unwrap().push(format!(
            "$ drkit {} (exit {})\n{}\n{}",
            args.join(" "),
            r.code,
            r.stdout,
            r.stderr
        ));
        r
    }

    /// `drkit --identity KEY ARGS`.
    fn with_key(&self, key: &AgeKey, args: &[&str]) -> Run {
        let mut all = vec!["--identity", key.file.to_str().unwrap()];
        all.extend_from_slice(args);
        self.drkit(&all)
    }

    /// A database name for a restore, dropped at the end.
    fn new_db(&self, prefix: &str) -> String {
        let d = unique(prefix);
        self.dbs.lock().unwrap().push(d.clone());
        d
    }

    fn manifests(&self) -> Vec<serde_json::Value> {
        manifests(&self.local())
    }

    fn only_manifest(&self) -> serde_json::Value {
        let m = self.manifests();
        assert_eq!(m.len(), 1, "want one backup, got {m:?}");
        m.into_iter().next().unwrap()
    }

    /// The stored archive of manifest `m` in the local storage.
    fn archive(&self, m: &serde_json::Value) -> PathBuf {
        self.local()
            .join(m["data"]["key"].as_str().expect("a data key"))
    }

    /// Back up and return the new backup's id.
    fn backup(&self) -> String {
        let before: Vec<String> = self
            .manifests()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        self.drkit(&["backup", "app"]).expect_code(0);
        let new: Vec<String> = self
            .manifests()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .filter(|id| !before.contains(id))
            .collect();
        assert_eq!(new.len(), 1, "one new backup: {new:?}");
        new.into_iter().next().unwrap()
    }

    fn manifest_of(&self, id: &str) -> serde_json::Value {
        self.manifests()
            .into_iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no manifest of {id}"))
    }

    /// Restore the newest backup with `key` into a new database and compare it with the source.
    #[track_caller]
    fn restore_matches(&self, key: &AgeKey, extra: &[&str]) -> Run {
        let to = self.new_db("drkit_enc_to");
        let mut args = vec!["restore", "app", "--to", &to];
        args.extend_from_slice(extra);
        let r = self.with_key(key, &args);
        r.expect_code(0);
        assert_eq!(counts(&self.pg, &to), counts(&self.pg, &self.db));
        assert_eq!(
            self.pg.fingerprint(&to),
            self.pg.fingerprint(&self.db),
            "the restored database differs from the source"
        );
        r
    }

    /// Assert that no secret part of an identity appears in any drkit output of this test,
    /// in `extra` texts, or in any file of the local storage (manifests, drill reports,
    /// accepted.json... and the archives).
    #[track_caller]
    fn assert_no_secret(&self, extra: &[String]) {
        let secrets = self.secrets.lock().unwrap().clone();
        assert!(!secrets.is_empty());
        let transcripts = self.transcripts.lock().unwrap();
        assert!(!transcripts.is_empty());
        let mut texts: Vec<(String, Vec<u8>)> = transcripts
            .iter()
            .map(|t| ("a drkit run".to_string(), t.as_bytes().to_vec()))
            .collect();
        texts.extend(
            extra
                .iter()
                .map(|t| ("a storage document".to_string(), t.as_bytes().to_vec())),
        );
        let mut json_files = 0;
        for f in files_under(&self.local()) {
            if f.ends_with(".json") {
                json_files += 1;
            }
            texts.push((f.clone(), std::fs::read(self.local().join(&f)).unwrap()));
        }
        assert!(json_files > 0, "no JSON file in the local storage");
        for (what, bytes) in &texts {
            for secret in &secrets {
                assert!(
                    !contains(bytes, secret.as_bytes()),
                    "the secret of an identity is in {what}:\n{}",
                    String::from_utf8_lossy(bytes)
                );
            }
            // drkit's messages may name the format ("AGE-SECRET-KEY-1..."); documents in the
            // storage have no reason to.
            if what.ends_with(".json") || what == "a storage document" {
                assert!(
                    !contains(bytes, SECRET_PREFIX.as_bytes()),
                    "{SECRET_PREFIX} in {what}:\n{}",
                    String::from_utf8_lossy(bytes)
                );
            }
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let dbs = self.dbs.lock().map(|d| d.clone()).unwrap_or_default();
        for d in dbs {
            let _ = self
                .pg
                .tool("psql")
                .args([
                    "-X",
                    "-q",
                    "-d",
                    &self.pg.url_of("postgres"),
                    "-c",
                    &format!("DROP DATABASE IF EXISTS \"{d}\" WITH (FORCE)"),
                ])
                .output();
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The `report.checked` of each item of `drkit --json verify`, after checking each is ok.
#[track_caller]
fn checked(r: &Run) -> Vec<(String, String)> {
    r.expect_code(0);
    let v = r.json();
    v.as_array()
        .expect("an array")
        .iter()
        .map(|item| {
            assert_eq!(item["ok"], true, "{item}");
            (
                item["storage"].as_str().unwrap().to_string(),
                item["report"]["checked"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The end of an age header (`--- MAC\n`): where the payload starts.
fn payload_start(file: &[u8]) -> usize {
    assert!(file.starts_with(AGE_MAGIC), "not an age file");
    let mac = file
        .windows(5)
        .position(|w| w == b"\n--- ")
        .expect("an age header ends with a --- line");
    mac + 1
        + file[mac + 1..]
            .iter()
            .position(|&b| b == b'\n')
            .expect("the --- line ends")
        + 1
}

/// The lines of an age header (the magic, the recipient stanzas, the MAC line).
fn header(file: &[u8]) -> String {
    String::from_utf8(file[..payload_start(file)].to_vec()).expect("a text header")
}

// ---- a. encrypted backup to S3 and a local folder ------------------------------------------

#[test]
fn encrypted_backup_to_s3_and_local_verify_restore_drill() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = moto();
    let bucket = rt.block_on(server.new_bucket(false));
    let section = server.storage_toml("offsite", &server.endpoint, &bucket, "");
    let w = World::new(&section, "\"offsite\", \"local\"");
    let a = w.keygen("a");
    w.configure(&format!("recipients = [\"{}\"]", a.public));

    let backup = w.drkit(&["backup", "app"]);
    backup.expect_code(0);

    // The local copy: a standard age file, and a manifest that says so with public
    // fingerprints only.
    let m = w.only_manifest();
    let key = m["data"]["key"].as_str().unwrap().to_string();
    assert!(key.ends_with("/data.pgdump.zst.age"), "{key}");
    let stored = std::fs::read(w.archive(&m)).unwrap();
    assert!(
        stored.starts_with(AGE_MAGIC),
        "{:?}",
        String::from_utf8_lossy(&stored[..40.min(stored.len())])
    );
    assert!(
        header(&stored).contains("-> X25519 "),
        "{}",
        header(&stored)
    );
    assert_eq!(m["data"]["encryption"], "age", "{m}");
    assert_eq!(
        m["data"]["recipients"],
        serde_json::json!([fingerprint(&a.public)]),
        "{m}"
    );
    assert_eq!(m["data"]["stored_size"].as_u64(), Some(stored.len() as u64));
    let text = m.to_string();
    assert!(!text.contains(SECRET_PREFIX), "{text}");
    assert!(
        !text.contains(&a.public),
        "the manifest records fingerprints, not keys"
    );

    // The S3 copy: the same layout.
    let s3_keys = rt.block_on(server.keys(&bucket));
    assert!(
        s3_keys.iter().any(|k| k.ends_with(&key)),
        "{s3_keys:?} lacks {key}"
    );
    let get = |k: &str| -> Vec<u8> {
        rt.block_on(async {
            let o = server
                .admin()
                .get_object()
                .bucket(&bucket)
                .key(k)
                .send()
                .await
                .unwrap();
            o.body.collect().await.unwrap().into_bytes().to_vec()
        })
    };
    let s3_data = get(s3_keys.iter().find(|k| k.ends_with(&key)).unwrap());
    assert!(s3_data.starts_with(AGE_MAGIC));
    let mut s3_docs = Vec::new();
    for k in s3_keys.iter().filter(|k| k.ends_with(".json")) {
        s3_docs.push(String::from_utf8(get(k)).unwrap());
    }
    let s3_manifest: serde_json::Value = serde_json::from_str(
        &String::from_utf8(get(s3_keys
            .iter()
            .find(|k| k.ends_with("/manifest.json"))
            .unwrap()))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(s3_manifest["data"]["encryption"], "age");
    assert_eq!(s3_manifest["data"]["recipients"], m["data"]["recipients"]);

    // verify without an identity: the stored bytes only, on both storages.
    let plain = w.drkit(&["verify", "app"]);
    plain.expect_code(0);
    assert_eq!(
        plain.stdout.matches("stored bytes only").count(),
        2,
        "{}",
        plain.stdout
    );
    let mut got = checked(&w.drkit(&["--json", "verify", "app"]));
    got.sort();
    assert_eq!(
        got,
        vec![
            ("local".to_string(), "stored".to_string()),
            ("offsite".to_string(), "stored".to_string())
        ]
    );

    // With the identity: everything, on both storages.
    let full = w.with_key(&a, &["--json", "verify", "app"]);
    let mut got = checked(&full);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("local".to_string(), "full".to_string()),
            ("offsite".to_string(), "full".to_string())
        ]
    );
    for item in full.json().as_array().unwrap() {
        assert_eq!(item["report"]["structure_checked"], true, "{item}");
        assert_eq!(item["report"]["raw_size"], m["data"]["raw_size"], "{item}");
    }

    // Restore (from the first storage, S3) and from the local folder.
    let r = w.restore_matches(&a, &[]);
    assert!(
        (r.stdout.clone() + &r.stderr).contains("from storage offsite"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    let r = w.restore_matches(&a, &["--storage", "local"]);
    assert!(
        (r.stdout.clone() + &r.stderr).contains("from storage local"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );

    // A drill on each storage, decrypting with the identity.
    let drill = w.with_key(&a, &["--json", "drill", "app"]);
    drill.expect_code(0);
    let reports = drill.json();
    assert_eq!(reports.as_array().map(Vec::len), Some(2), "{reports}");
    for r in reports.as_array().unwrap() {
        assert_eq!(r["report"]["ok"], true, "{r}");
    }

    // The job's identity_file does what --identity does.
    w.configure(&format!(
        "recipients = [\"{}\"], identity_file = \"{}\"",
        a.public,
        a.file.display()
    ));
    let got = checked(&w.drkit(&["--json", "verify", "app"]));
    assert!(got.iter().all(|(_, c)| c == "full"), "{got:?}");

    // No secret anywhere (drill reports were written to both storages since).
    for k in rt
        .block_on(server.keys(&bucket))
        .iter()
        .filter(|k| k.ends_with(".json"))
    {
        s3_docs.push(String::from_utf8(get(k)).unwrap());
    }
    w.assert_no_secret(&s3_docs);
}

// ---- b. a wrong identity, and none -----------------------------------------------------------

#[test]
fn wrong_identity_restores_nothing_and_none_is_a_config_error() {
    let w = World::new("", "\"local\"");
    let a = w.keygen("a");
    let b = w.keygen("b");
    w.configure(&format!("recipients = [\"{}\"]", a.public));
    w.backup();

    // A database that does not exist stays absent.
    let ghost = w.new_db("drkit_enc_wrong");
    let r = w.with_key(&b, &["restore", "app", "--to", &ghost]);
    r.expect_code(4).expect_one_line_error("does not open");
    assert!(
        absent_or_empty(&w.pg, &ghost),
        "a restore with the wrong identity wrote into {ghost}"
    );
    // An empty database stays empty.
    let empty = w.new_db("drkit_enc_empty");
    w.pg.create_db(&empty);
    w.with_key(&b, &["restore", "app", "--to", &empty])
        .expect_code(4);
    assert!(
        absent_or_empty(&w.pg, &empty),
        "a restore with the wrong identity wrote into {empty}"
    );

    // No identity at all: a config error naming both ways to give one.
    let none = w.new_db("drkit_enc_none");
    let r = w.drkit(&["restore", "app", "--to", &none]);
    r.expect_code(2).expect_one_line_error("identity_file");
    assert!(r.stderr.contains("--identity"), "{}", r.stderr);
    assert!(absent_or_empty(&w.pg, &none));

    // verify with the wrong identity cannot check the content: a failure, not "stored".
    w.with_key(&b, &["verify", "app"]).expect_code(4);
    // The drill with the wrong identity fails too, and leaves no scratch database.
    let d = w.with_key(&b, &["--json", "drill", "app"]);
    assert_ne!(d.code, 0, "{}\n{}", d.stdout, d.stderr);
    // The right one still works after all this.
    w.restore_matches(&a, &[]);
    w.assert_no_secret(&[]);
}

// ---- c. altered ciphertext -------------------------------------------------------------------

/// Set the stored size and sha256 of the only local backup's manifest to those of `data`:
/// what someone who can write the storage does to get altered bytes past the checksums, so
/// that age's own authentication is what must catch them.
fn forge_stored_checksums(w: &World, data: &[u8]) {
    let found: Vec<String> = files_under(&w.local())
        .into_iter()
        .filter(|f| f.ends_with("manifest.json"))
        .collect();
    assert_eq!(found.len(), 1);
    let path = w.local().join(&found[0]);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["data"]["stored_size"] = serde_json::json!(data.len());
    m["data"]["stored_sha256"] = serde_json::json!(hex::encode(sha2::Sha256::digest(data)));
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn flipped_byte_and_truncated_archive_fail_verify_and_restore() {
    let w = World::new("", "\"local\"");
    let a = w.keygen("a");
    w.configure(&format!("recipients = [\"{}\"]", a.public));
    w.backup();
    let m = w.only_manifest();
    let archive = w.archive(&m);
    let good = std::fs::read(&archive).unwrap();
    let manifest_path = files_under(&w.local())
        .into_iter()
        .find(|f| f.ends_with("manifest.json"))
        .map(|f| w.local().join(f))
        .unwrap();
    let good_manifest = std::fs::read(&manifest_path).unwrap();
    assert!(
        good.len() > 64 * 1024 + 1000,
        "several age chunks: {} bytes",
        good.len()
    );

    let mut flipped = good.clone();
    let mid = good.len() / 2;
    flipped[mid] ^= 0x01;
    let truncated = good[..good.len() - 100].to_vec();

    for (what, bad) in [("flipped byte", &flipped), ("truncated", &truncated)] {
        for forged in [false, true] {
            std::fs::write(&archive, bad).unwrap();
            if forged {
                forge_stored_checksums(&w, bad);
                // The stored checksums match now: without the identity that is all verify can
                // see.
                w.drkit(&["verify", "app"]).expect_code(0);
            } else {
                w.drkit(&["verify", "app"]).expect_code(4);
            }
            let v = w.with_key(&a, &["verify", "app"]);
            assert_eq!(
                v.code, 4,
                "{what} (stored checksums forged: {forged}): verify --identity\n{}\n{}",
                v.stdout, v.stderr
            );
            // age's authentication catches it, even when the stored checksums were forged.
            assert!(
                v.stderr.contains("corrupt") && v.stderr.contains("decrypt"),
                "{what} (forged: {forged}): {}",
                v.stderr
            );
            let to = w.new_db("drkit_enc_bad");
            let r = w.with_key(&a, &["restore", "app", "--to", &to]);
            assert_eq!(
                r.code, 4,
                "{what} (stored checksums forged: {forged}): restore\n{}\n{}",
                r.stdout, r.stderr
            );
            assert!(
                absent_or_empty(&w.pg, &to),
                "{what} (forged: {forged}): the restore left data in {to}"
            );
            // Put the good archive and manifest back.
            std::fs::write(&archive, &good).unwrap();
            std::fs::write(&manifest_path, &good_manifest).unwrap();
        }
    }
    let got = checked(&w.with_key(&a, &["--json", "verify", "app"]));
    assert_eq!(got, vec![("local".to_string(), "full".to_string())]);
    w.restore_matches(&a, &[]);
    w.assert_no_secret(&[]);
}

// ---- d. the runbook with the standard tools --------------------------------------------------

#[test]
fn age_zstd_pg_restore_by_hand_restores_the_same_rows() {
    let w = World::new("", "\"local\"");
    let a = w.keygen("a");
    w.configure(&format!("recipients = [\"{}\"]", a.public));
    w.backup();
    let m = w.only_manifest();
    let archive = w.archive(&m);
    let to = w.new_db("drkit_enc_hand");
    w.pg.create_db(&to);
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            "set -euo pipefail; age -d -i \"$1\" \"$2\" | zstd -d | \"$3\" --exit-on-error --single-transaction -d \"$4\"",
        )
        .arg("runbook")
        .arg(&a.file)
        .arg(&archive)
        .arg(w.pg.bindir.join("pg_restore"))
        .arg(w.pg.url_of(&to))
        .env("PGPASSWORD", w.pg.password())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "age -d | zstd -d | pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(counts(&w.pg, &to), counts(&w.pg, &w.db));
    assert_eq!(w.pg.fingerprint(&to), w.pg.fingerprint(&w.db));

    // And the raw stream is the one the manifest describes.
    let raw = Command::new("bash")
        .arg("-c")
        .arg("set -euo pipefail; age -d -i \"$1\" \"$2\" | zstd -d | sha256sum")
        .arg("runbook")
        .arg(&a.file)
        .arg(&archive)
        .output()
        .unwrap();
    assert!(raw.status.success());
    let sha = String::from_utf8_lossy(&raw.stdout);
    assert_eq!(
        sha.split_whitespace().next(),
        m["data"]["raw_sha256"].as_str(),
        "{m}"
    );
    w.assert_no_secret(&[]);
}

// ---- e. rekey ------------------------------------------------------------------------------

fn rekey_available(w: &World) -> bool {
    let help = w.drkit(&["rekey", "--help"]);
    help.code == 0
}

#[test]
fn rekey_to_a_new_key_set_old_identity_no_longer_opens() {
    let w = World::new("", "\"local\"");
    let a = w.keygen("a");
    let b = w.keygen("b");
    w.configure(&format!("recipients = [\"{}\"]", a.public));
    let first = w.backup();
    let second = w.backup();
    let before: Vec<(String, Vec<u8>)> = [&first, &second]
        .iter()
        .map(|id| {
            let m = w.manifest_of(id);
            (id.to_string(), std::fs::read(w.archive(&m)).unwrap())
        })
        .collect();
    assert!(
        rekey_available(&w),
        "drkit has no `rekey` command yet (drkit rekey --help fails)"
    );

    // The new key set: B only.
    w.configure(&format!("recipients = [\"{}\"]", b.public));
    w.with_key(&a, &["rekey", "app"]).expect_code(0);

    for (id, old) in &before {
        let m = w.manifest_of(id);
        assert_eq!(m["data"]["encryption"], "age", "{m}");
        assert_eq!(
            m["data"]["recipients"],
            serde_json::json!([fingerprint(&b.public)]),
            "{id}: the manifest names the new key set"
        );
        let new = std::fs::read(w.archive(&m)).unwrap();
        assert_ne!(header(&new), header(old), "{id}: the header was rewritten");
        assert_eq!(
            &new[payload_start(&new)..],
            &old[payload_start(old)..],
            "{id}: the payload bytes are untouched"
        );
        assert_eq!(m["data"]["stored_size"].as_u64(), Some(new.len() as u64));
        assert_eq!(
            m["data"]["stored_sha256"].as_str(),
            Some(hex::encode(sha2::Sha256::digest(&new)).as_str()),
            "{id}: the stored checksum is the new file's"
        );
        // Still a standard age file: age opens it with B, not with A.
        let by_hand = |key: &AgeKey| {
            Command::new("age")
                .arg("-d")
                .arg("-i")
                .arg(&key.file)
                .arg("-o")
                .arg("/dev/null")
                .arg(w.archive(&m))
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(by_hand(&b), "{id}: age -d -i B fails after the rekey");
        assert!(!by_hand(&a), "{id}: age -d -i A still opens it");
    }

    // Every backup verifies fully with B; without an identity the stored bytes still match.
    let got = checked(&w.with_key(&b, &["--json", "verify", "app", "--all"]));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|(_, c)| c == "full"), "{got:?}");
    let got = checked(&w.drkit(&["--json", "verify", "app", "--all"]));
    assert!(got.iter().all(|(_, c)| c == "stored"), "{got:?}");

    // Restore with B works; A no longer opens it and writes nothing.
    w.restore_matches(&b, &[]);
    let to = w.new_db("drkit_enc_old");
    w.with_key(&a, &["restore", "app", "--to", &to])
        .expect_code(4);
    assert!(absent_or_empty(&w.pg, &to));
    w.with_key(&a, &["verify", "app"]).expect_code(4);
    w.assert_no_secret(&[]);
}

#[test]
fn rekey_with_id_touches_only_that_backup_and_needs_an_opening_identity() {
    let w = World::new("", "\"local\"");
    let a = w.keygen("a");
    let b = w.keygen("b");
    let c = w.keygen("c");
    w.configure(&format!("recipients = [\"{}\"]", a.public));
    let first = w.backup();
    let second = w.backup();
    assert!(
        rekey_available(&w),
        "drkit has no `rekey` command yet (drkit rekey --help fails)"
    );
    w.configure(&format!("recipients = [\"{}\"]", b.public));
    let snapshot = || -> Vec<(String, Vec<u8>)> {
        files_under(&w.local())
            .into_iter()
            .map(|f| {
                let bytes = std::fs::read(w.local().join(&f)).unwrap();
                (f, bytes)
            })
            .collect()
    };

    // An identity that opens nothing changes nothing.
    let untouched = snapshot();
    let r = w.with_key(&c, &["rekey", "app"]);
    assert_ne!(
        r.code, 0,
        "rekey with an unrelated identity:\n{}\n{}",
        r.stdout, r.stderr
    );
    assert_eq!(snapshot(), untouched, "a failed rekey changed the storage");
    // No identity at all: the same.
    let r = w.drkit(&["rekey", "app"]);
    assert_ne!(
        r.code, 0,
        "rekey without identity:\n{}\n{}",
        r.stdout, r.stderr
    );
    assert_eq!(snapshot(), untouched, "a failed rekey changed the storage");

    // A dry run opens each backup and writes nothing.
    w.with_key(&a, &["rekey", "app", "--dry-run"])
        .expect_code(0);
    assert_eq!(snapshot(), untouched, "rekey --dry-run changed the storage");

    // Only the first backup.
    w.with_key(&a, &["rekey", "app", "--id", &first])
        .expect_code(0);
    assert_eq!(
        w.manifest_of(&first)["data"]["recipients"],
        serde_json::json!([fingerprint(&b.public)])
    );
    assert_eq!(
        w.manifest_of(&second)["data"]["recipients"],
        serde_json::json!([fingerprint(&a.public)]),
        "rekey --id changed another backup"
    );
    let got = checked(&w.with_key(&b, &["--json", "verify", "app", "--id", &first]));
    assert_eq!(got, vec![("local".to_string(), "full".to_string())]);
    w.with_key(&b, &["verify", "app", "--id", &second])
        .expect_code(4);
    let got = checked(&w.with_key(&a, &["--json", "verify", "app", "--id", &second]));
    assert_eq!(got, vec![("local".to_string(), "full".to_string())]);
    w.with_key(&a, &["verify", "app", "--id", &first])
        .expect_code(4);
    w.assert_no_secret(&[]);
}

// ---- f. no secret anywhere -------------------------------------------------------------------

#[test]
fn no_identity_secret_in_any_output_manifest_or_report() {
    let w = World::new("", "\"local\"");
    let a = w.keygen("a");
    let b = w.keygen("b");
    w.configure(&format!(
        "recipients = [\"{}\"], identity_file = \"{}\"",
        a.public,
        a.file.display()
    ));
    // A damaged copy of A (one character of its secret changed): a parse error must not echo
    // the line.
    let damaged = w.s.path("damaged.txt");
    let text = std::fs::read_to_string(&a.file).unwrap();
    let secret = secret_of(&a.file);
    let last = secret.chars().last().unwrap();
    let other = if last == 'Q' { 'P' } else { 'Q' };
    let bad_secret = format!("{}{other}", &secret[..secret.len() - 1]);
    std::fs::write(&damaged, text.replace(&secret, &bad_secret)).unwrap();
    set_mode(&damaged, 0o600);
    w.secrets.lock().unwrap().push(bad_secret);
    // A loose copy of B (mode 644): a warning, no secret.
    let loose = w.s.path("loose.txt");
    std::fs::copy(&b.file, &loose).unwrap();
    set_mode(&loose, 0o644);

    for args in [
        &["backup", "app"][..],
        &["-v", "backup", "app"],
        &["--json", "backup", "app"],
        &["--log-format", "json", "-vv", "backup", "app"],
        &["list", "app"],
        &["--json", "list", "app"],
        &["status"],
        &["--json", "status"],
        &["doctor"],
        &["--json", "doctor"],
        &["verify", "app", "--all"],
        &["-vv", "--json", "verify", "app", "--deep"],
        &["--log-format", "json", "-vv", "drill", "app"],
        &["--json", "drill", "app"],
    ] {
        w.drkit(args);
    }
    let to = w.new_db("drkit_enc_f");
    w.drkit(&["-vv", "restore", "app", "--to", &to])
        .expect_code(0);
    let to2 = w.new_db("drkit_enc_f");
    w.drkit(&[
        "--json",
        "--log-format",
        "json",
        "-vv",
        "restore",
        "app",
        "--to",
        &to2,
    ])
    .expect_code(0);
    // Failures: a damaged identity file, a loose wrong one, a missing one, the wrong key.
    let dmg = damaged.to_str().unwrap();
    let lse = loose.to_str().unwrap();
    let r = w.drkit(&["--identity", dmg, "verify", "app"]);
    assert_ne!(r.code, 0, "a damaged identity file is refused");
    w.drkit(&[
        "--identity",
        dmg,
        "-vv",
        "--json",
        "restore",
        "app",
        "--to",
        &unique("x"),
    ]);
    let r = w.drkit(&["--identity", lse, "-vv", "verify", "app"]);
    assert_eq!(r.code, 4, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("chmod 600"), "{}", r.stderr);
    let ghost = w.new_db("drkit_enc_f_wrong");
    w.drkit(&[
        "--identity",
        lse,
        "--json",
        "restore",
        "app",
        "--to",
        &ghost,
    ])
    .expect_code(4);
    w.drkit(&[
        "--identity",
        lse,
        "--log-format",
        "json",
        "-vv",
        "drill",
        "app",
    ]);
    w.drkit(&["--identity", "/nonexistent/key.txt", "verify", "app"]);
    w.configure(&format!("recipients = [\"{}\"]", a.public));
    w.drkit(&["--json", "restore", "app", "--to", &unique("x")])
        .expect_code(2);
    w.drkit(&["-vv", "drill", "app"]);
    if rekey_available(&w) {
        w.configure(&format!("recipients = [\"{}\"]", b.public));
        let id = w.manifests()[0]["id"].as_str().unwrap().to_string();
        w.drkit(&[
            "--identity",
            a.file.to_str().unwrap(),
            "-vv",
            "rekey",
            "app",
            "--id",
            &id,
        ]);
        w.drkit(&[
            "--identity",
            a.file.to_str().unwrap(),
            "--json",
            "rekey",
            "app",
        ]);
        w.drkit(&["--identity", dmg, "rekey", "app"]);
    }
    let runs = w.transcripts.lock().unwrap().len();
    assert!(runs >= 25, "{runs} runs");
    w.assert_no_secret(&[]);
}
