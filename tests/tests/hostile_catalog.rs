//! End to end: the storage is untrusted input. A manifest counts only in its own folder, one
//! broken manifest never blocks or costs the rest of the job, and with signing configured a
//! manifest edited by hand (any byte) is refused by restore, drill, verify and the guard.

use std::path::{Path, PathBuf};

use drkit_tests::docker::{
    docker, ensure_image, populate, unique as dunique, volume_exists, Cleanup,
};
use drkit_tests::{files_under, Run, Scratch};

fn fill(db: &Path, rows: usize) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB);")
        .unwrap();
    c.execute(
        "INSERT INTO t(v) SELECT randomblob(100) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) SELECT i FROM n)",
        [rows as i64],
    )
    .unwrap();
}

fn count(db: &Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

fn setup(extra: &str) -> Scratch {
    let s = Scratch::new();
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"local\"]\n{extra}\n",
        s.path("backups").display(),
        s.path("app.db").display()
    ));
    s
}

fn backup(s: &Scratch) -> String {
    let b = s.drkit(&["--json", "backup"]);
    b.expect_code(0);
    b.json()[0]["manifest"]["id"].as_str().unwrap().to_string()
}

fn manifest_path(s: &Scratch, id: &str) -> PathBuf {
    s.path(&format!("backups/app/{id}/manifest.json"))
}

/// `(id, state, reason)` of each `list --json` entry.
fn listed(s: &Scratch) -> Vec<(String, String, String)> {
    let l = s.drkit(&["--json", "list", "app"]);
    l.expect_code(0);
    l.list_entries()
}

#[test]
fn a_manifest_copied_into_another_folder_is_broken_and_never_costs_a_backup() {
    let s = setup("keep = { last = 1 }");
    fill(&s.path("app.db"), 100);
    let old = backup(&s);
    // Ids sort by the second they start in: a second apart, `new` sorts after `old`.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let new = backup(&s);
    // The attacker copies the old manifest over the new one: prune would have deleted by
    // the manifest's id (the old backup) and... the new folder is now a stray.
    std::fs::copy(manifest_path(&s, &old), manifest_path(&s, &new)).unwrap();
    let l = listed(&s);
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!((l[0].0.as_str(), l[0].1.as_str()), (old.as_str(), "good"));
    assert_eq!(l[1].0, new);
    assert_eq!(l[1].1, "broken");
    assert!(
        l[1].2.contains(&format!("describes backup app/{old}")),
        "{l:?}"
    );
    let before = files_under(&s.path("backups"));
    s.drkit(&["prune"]).expect_code(0);
    // Nothing removed: the old backup is the newest valid one, the broken folder is not ours.
    assert_eq!(files_under(&s.path("backups")), before);
    let r = s.drkit(&["restore", "app", "--to", "r.db"]);
    r.expect_code(0);
    assert!(
        r.stderr
            .contains(&format!("passed over newer broken entry {new}")),
        "{}",
        r.stderr
    );
    assert_eq!(count(&s.path("r.db")), 100);
    // verify reports the broken entry as an integrity failure.
    let v = s.drkit(&["verify", "--all"]);
    v.expect_code(4);
    assert!(
        v.stdout.contains(&format!("backup {old} on local OK")),
        "{}",
        v.stdout
    );
    assert!(
        v.stderr.contains(&format!("backup app/{new} is broken")),
        "{}",
        v.stderr
    );
}

#[test]
fn garbage_truncated_or_empty_manifests_do_not_block_the_job() {
    let s = setup("keep = { last = 2 }");
    fill(&s.path("app.db"), 50);
    let ids: Vec<String> = (0..4).map(|_| backup(&s)).collect();
    let full = std::fs::read(manifest_path(&s, &ids[0])).unwrap();
    std::fs::write(manifest_path(&s, &ids[0]), b"\x00\xffgarbage").unwrap();
    std::fs::write(manifest_path(&s, &ids[1]), &full[..full.len() / 2]).unwrap();
    std::fs::write(manifest_path(&s, &ids[2]), b"").unwrap();
    // A data key pointing outside its folder.
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest_path(&s, &ids[3])).unwrap()).unwrap();
    let good_manifest = std::fs::read(manifest_path(&s, &ids[3])).unwrap();
    m["data"]["key"] = serde_json::json!("../../../etc/passwd");
    std::fs::write(manifest_path(&s, &ids[3]), serde_json::to_vec(&m).unwrap()).unwrap();
    let l = listed(&s);
    assert_eq!(l.len(), 4);
    assert!(l.iter().all(|e| e.1 == "broken"), "{l:?}");
    assert!(
        l.iter().any(|e| e.2.contains("is not a file of folder")),
        "{l:?}"
    );
    // Nothing valid: restore says so (exit 4), naming a broken entry; prune leaves all.
    s.drkit(&["restore", "app", "--to", "x.db"])
        .expect_code(4)
        .expect_one_line_error("no valid backup to choose: 4 broken entries");
    let before = files_under(&s.path("backups"));
    s.drkit(&["prune"]).expect_code(0);
    assert_eq!(files_under(&s.path("backups")), before);
    // One good backup among them: everything works again, the broken ones stay put.
    std::fs::write(manifest_path(&s, &ids[3]), good_manifest).unwrap();
    s.drkit(&["restore", "app", "--to", "y.db"]).expect_code(0);
    assert_eq!(count(&s.path("y.db")), 50);
    s.drkit(&["verify"]).expect_code(4);
    let fresh = backup(&s);
    s.drkit(&["prune"]).expect_code(0);
    let l = listed(&s);
    let valid: Vec<&str> = l
        .iter()
        .filter(|e| e.1 == "good")
        .map(|e| e.0.as_str())
        .collect();
    assert_eq!(valid, vec![fresh.as_str(), ids[3].as_str()]);
    assert_eq!(l.iter().filter(|e| e.1 == "broken").count(), 3);
    let human = s.drkit(&["list", "app"]);
    assert_eq!(
        human.stdout.matches("BROKEN").count(),
        3,
        "{}",
        human.stdout
    );
}

#[test]
fn signed_manifests_refuse_any_edit() {
    let s = Scratch::new();
    let (key, public) = drkit_tests::signing_keypair(s.dir.path());
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"local\"]\nsigning = {{ key_file = \"{}\" }}\n",
        s.path("backups").display(),
        s.path("app.db").display(),
        key.display()
    ));
    fill(&s.path("app.db"), 30);
    let id = backup(&s);
    let manifest = manifest_path(&s, &id);
    assert!(
        manifest.with_extension("json.sig").exists(),
        "signature written"
    );
    s.drkit(&["verify"]).expect_code(0);
    s.drkit(&["drill", "app"]).expect_code(0);

    // A restoring host with only the public key trusts it.
    let reader = Scratch::new();
    let reader_cfg = |signing: &str| {
        format!(
            "[storage.local]\ntype = \"local\"\npath = \"{}\"\n[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"local\"]\n{signing}\n",
            s.path("backups").display(),
            reader.path("app.db").display()
        )
    };
    reader.config(&reader_cfg(&format!(
        "signing = {{ public = \"{public}\" }}"
    )));
    reader
        .drkit(&["restore", "app", "--to", "ok.db"])
        .expect_code(0);
    assert_eq!(count(&reader.path("ok.db")), 30);
    // That host cannot write: backup needs the key file.
    let b = reader.drkit(&["backup"]);
    assert_ne!(b.code, 0);

    // Any single byte changed: every reader refuses, naming the backup.
    let original = std::fs::read(&manifest).unwrap();
    let text = String::from_utf8(original.clone()).unwrap();
    let pos = text.find("\"host\"").unwrap() + 9;
    let mut edited = original.clone();
    edited[pos] ^= 0x01;
    std::fs::write(&manifest, &edited).unwrap();
    let expect_refused = |r: &Run, what: &str| {
        assert_eq!(r.code, 4, "{what}: {}\n{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains(&id) && r.stderr.contains("signature does not match"),
            "{what}: {}",
            r.stderr
        );
    };
    expect_refused(
        &reader.drkit(&["restore", "app", "--to", "bad.db"]),
        "restore",
    );
    expect_refused(
        &reader.drkit(&["restore", "app", "--id", &id, "--to", "bad.db"]),
        "restore --id",
    );
    expect_refused(&reader.drkit(&["verify"]), "verify");
    expect_refused(
        &reader.drkit(&["verify", "app", "--id", &id]),
        "verify --id",
    );
    expect_refused(&s.drkit(&["drill", "app"]), "drill");
    assert!(!reader.path("bad.db").exists());
    let l = reader.drkit(&["--json", "list", "app"]);
    assert_eq!(l.json()[0]["state"], "broken");

    // A missing signature is refused too.
    std::fs::write(&manifest, &original).unwrap();
    std::fs::remove_file(manifest.with_extension("json.sig")).unwrap();
    let r = reader.drkit(&["verify"]);
    r.expect_code(4);
    assert!(r.stderr.contains("signature is missing"), "{}", r.stderr);

    // Without a public key configured, drkit reads the storage as before (blindly).
    std::fs::write(&manifest, &edited).unwrap();
    reader.config(&reader_cfg(""));
    reader.drkit(&["verify"]).expect_code(0);
    fill(&reader.path("app.db"), 1);
    let d = reader.drkit(&["doctor"]);
    assert!(d.stdout.contains("trusted blindly"), "{}", d.stdout);
}

#[test]
fn the_guard_refuses_a_volume_whose_signed_manifest_was_edited() {
    ensure_image();
    let mut clean = Cleanup::default();
    let volume = dunique("signed");
    docker(&["volume", "create", &volume]);
    clean.volumes.push(volume.clone());
    populate(&volume);
    let s = Scratch::new();
    let (key, _) = drkit_tests::signing_keypair(s.dir.path());
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n[job.vol]\nsource = {{ type = \"docker-volume\", volume = \"{volume}\" }}\nstorage = [\"local\"]\nsigning = {{ key_file = \"{}\" }}\n",
        s.path("store").display(),
        key.display()
    ));
    let b = s.drkit(&["--json", "backup"]);
    b.expect_code(0);
    let id = b.json()[0]["manifest"]["id"].as_str().unwrap().to_string();
    let manifest = s.path(&format!("store/vol/{id}/manifest.json"));
    let mut bytes = std::fs::read(&manifest).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01; // inside the last value
    std::fs::write(&manifest, &bytes).unwrap();
    let g = s.drkit(&["guard", "--", "docker", "volume", "rm", &volume]);
    g.expect_code(3);
    assert!(volume_exists(&volume), "the guard let the volume go");
    assert!(g.stderr.contains(&volume), "{}", g.stderr);
}
