//! End to end: restore drills of Docker named volumes (scratch volumes, path checks, the
//! sweep of scratch volumes that killed drills left behind) and `verify --deep` of volume
//! archives, against the real Docker engine of this machine (`DRKIT_TEST_DOCKER=1`).
//!
//! The drills of this file sweep every stale `drkit-drill-*` volume of the engine, so its
//! tests run one at a time (a lock file), lest one sweep the volumes another plants.

use std::process::Stdio;
use std::time::{Duration, Instant};

use drkit_tests::docker::{
    config, docker, docker_out, ensure_image, in_volume, populate, unique, volume_exists, Cleanup,
    IMAGE,
};
use drkit_tests::Scratch;

/// Held for a whole test: the tests of this file one at a time.
struct Serial(#[allow(dead_code)] std::fs::File);

fn setup() -> Serial {
    ensure_image();
    let lock = std::fs::File::create(std::env::temp_dir().join("drkit-test-drill-docker.lock"))
        .expect("create the drill lock file");
    lock.lock().expect("lock the drill lock file");
    Serial(lock)
}

/// The `drkit-drill-*` volumes of the engine.
fn scratch_volumes() -> Vec<String> {
    String::from_utf8_lossy(
        &docker_out(&["volume", "ls", "-q", "--filter", "name=drkit-drill-"]).stdout,
    )
    .split_whitespace()
    .filter(|n| n.starts_with("drkit-drill-"))
    .map(str::to_string)
    .collect()
}

/// A job `job` backing up `vol` into a local storage, with `drill` as its drill table.
fn job(s: &Scratch, job: &str, vol: &str, drill: &str) {
    s.config(&config(
        &s.path("store"),
        &format!(
            "[job.{job}]\nsource = {{ type = \"docker-volume\", volume = \"{vol}\" }}\nstorage = [\"local\"]\n\n[job.{job}.drill]\n{drill}\n"
        ),
    ));
}

/// The report of the one drill a `--json drill` run printed.
fn report(run: &drkit_tests::Run) -> serde_json::Value {
    let doc = run.json();
    let runs = doc.as_array().expect("an array of drills");
    assert_eq!(runs.len(), 1, "{doc}");
    runs[0]["report"].clone()
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report}"))
}

/// A scratch volume name as a drill of `job` at `at` would make it.
fn scratch_name(job: &str, at: chrono::DateTime<chrono::Utc>, tag: u32) -> String {
    format!("drkit-drill-{job}-{}-{tag:08x}", at.format("%Y%m%dT%H%M%S"))
}

#[test]
fn drill_checks_paths_in_a_scratch_volume_then_removes_it() {
    let _serial = setup();
    let mut clean = Cleanup::default();
    let vol = unique("drillsrc");
    clean.volumes.push(vol.clone());
    docker(&["volume", "create", &vol]);
    populate(&vol);

    let s = Scratch::new();
    // Sizes from tests/src/docker.rs `populate`: a.txt is "hello\n"; under deep/ are 1500 KiB
    // of random bytes, "long\n", and a symlink (0).
    job(
        &s,
        "vold",
        &vol,
        r#"checks = [
  { name = "a", path = "a.txt", min_size = 6 },
  { name = "deep", path = "./deep/", min_size = "1MiB" },
  { name = "link", path = "link" },
  { name = "root", path = ".", min_size = 1536000 },
]"#,
    );
    s.drkit(&["backup", "vold"]).expect_code(0);
    let before = scratch_volumes();
    let run = s.drkit(&["--json", "drill", "vold"]);
    run.expect_code(0);
    let r = report(&run);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(check(&r, "a")["value"], 6, "{r}");
    assert_eq!(check(&r, "deep")["value"], 1_536_000 + 5, "{r}");
    assert_eq!(
        check(&r, "link")["value"],
        0,
        "a symlink is not followed: {r}"
    );
    assert_eq!(check(&r, "root")["value"], 6 + 1_536_000 + 5 + 2 + 2, "{r}");
    let scratch = r["scratch"].as_str().expect("scratch").to_string();
    let scratch = scratch.trim_start_matches("docker volume ").to_string();
    assert!(scratch.starts_with("drkit-drill-vold-"), "{scratch}");
    assert!(
        r["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .contains(&format!("scratch volume {scratch}"))),
        "{r}"
    );
    assert!(
        !volume_exists(&scratch),
        "the scratch volume {scratch} is left"
    );
    assert_eq!(
        scratch_volumes(),
        before,
        "a scratch volume was left behind"
    );

    // Failing checks: a missing path (null), a file smaller than min_size, a path through a
    // symbolic link (not followed: missing), one outside the volume (refused).
    job(
        &s,
        "vold",
        &vol,
        r#"checks = [
  { name = "missing", path = "no/such/file" },
  { name = "small", path = "a.txt", min_size = "1KiB" },
  { name = "through", path = "deep/er/uplink" },
  { name = "via-link", path = "link/x" },
  { name = "escape", path = "../etc" },
]"#,
    );
    let run = s.drkit(&["--json", "drill", "vold"]);
    run.expect_code(4);
    let r = report(&run);
    assert_eq!(r["ok"], false, "{r}");
    let missing = check(&r, "missing");
    assert_eq!(missing["value"], serde_json::Value::Null, "{r}");
    assert_eq!(missing["ok"], false);
    let small = check(&r, "small");
    assert_eq!(
        (small["value"].clone(), small["ok"].clone()),
        (6.into(), false.into()),
        "{r}"
    );
    assert!(
        small["why"]
            .as_str()
            .unwrap()
            .contains("below the minimum 1024"),
        "{r}"
    );
    assert_eq!(
        check(&r, "through")["ok"],
        true,
        "the link itself exists: {r}"
    );
    assert_eq!(
        check(&r, "via-link")["value"],
        serde_json::Value::Null,
        "{r}"
    );
    let escape = check(&r, "escape");
    assert_eq!(escape["ok"], false);
    assert!(escape["why"].as_str().unwrap().contains("'..'"), "{r}");
    assert_eq!(
        scratch_volumes(),
        before,
        "a failed drill left its scratch volume"
    );
}

#[test]
fn killed_drill_leaves_a_scratch_volume_and_only_stale_ones_are_swept() {
    let _serial = setup();
    let mut clean = Cleanup::default();
    let vol = unique("drillbig");
    clean.volumes.push(vol.clone());
    docker(&["volume", "create", &vol]);
    // Big enough that the restore takes a while: random, so it does not compress.
    in_volume(
        &vol,
        "dd if=/dev/urandom of=/data/big bs=1M count=300 2>/dev/null; echo ok > /data/small",
    );
    let s = Scratch::new();
    job(
        &s,
        "volk",
        &vol,
        "checks = [ { path = \"small\", min_size = 3 } ]",
    );
    s.drkit(&["backup", "volk"]).expect_code(0);

    // kill -9 once the scratch volume appears (the restore into it has started).
    let before = scratch_volumes();
    let mut child = s
        .command(&["drill", "volk"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let leftover = loop {
        let new: Vec<String> = scratch_volumes()
            .into_iter()
            .filter(|v| !before.contains(v) && v.starts_with("drkit-drill-volk-"))
            .collect();
        if let Some(v) = new.into_iter().next() {
            break v;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the drill ended before its scratch volume was seen"
        );
        assert!(Instant::now() < deadline, "no scratch volume appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    clean.volumes.push(leftover.clone());
    let st = std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(!child.wait().unwrap().success());
    assert!(
        volume_exists(&leftover),
        "the killed drill's scratch volume is gone"
    );

    // Stale ones (named as from two days ago): one free, one a container uses.
    let old = chrono::Utc::now() - chrono::Duration::days(2);
    let stale = scratch_name("volk", old, 0x0000_0001);
    let used = scratch_name("volk", old, 0x0000_0002);
    let ctr = unique("drillctr");
    clean.volumes.extend([stale.clone(), used.clone()]);
    clean.containers.push(ctr.clone());
    docker(&["volume", "create", &stale]);
    docker(&["volume", "create", &used]);
    docker(&[
        "create",
        "--name",
        &ctr,
        "--network",
        "none",
        "-v",
        &format!("{used}:/data"),
        IMAGE,
        "true",
    ]);

    let run = s.drkit(&["--json", "drill", "volk"]);
    run.expect_code(0);
    let r = report(&run);
    let notes: Vec<String> = r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with(&format!("removed scratch volume {stale},"))),
        "{notes:?}"
    );
    assert!(!volume_exists(&stale), "the stale scratch volume is left");
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&used) && n.contains(&ctr) && n.contains("not removed")),
        "{notes:?}"
    );
    assert!(volume_exists(&used), "a scratch volume in use was removed");
    // The killed drill's own is younger than a day: another drill may still be running.
    assert!(volume_exists(&leftover), "a fresh scratch volume was swept");
    assert!(!notes.iter().any(|n| n.contains(&leftover)), "{notes:?}");
}

#[test]
fn verify_deep_compares_the_archive_with_the_manifest() {
    let _serial = setup();
    let mut clean = Cleanup::default();
    let vol = unique("deepsrc");
    clean.volumes.push(vol.clone());
    docker(&["volume", "create", &vol]);
    populate(&vol);
    let s = Scratch::new();
    job(&s, "deep", &vol, "");
    s.drkit(&["backup", "deep"]).expect_code(0);

    let run = s.drkit(&["--json", "verify", "deep", "--deep"]);
    run.expect_code(0);
    let doc = run.json();
    let deep = doc[0]["report"]["deep"]
        .as_str()
        .expect("deep summary")
        .to_string();
    assert!(
        deep.ends_with("as the manifest says") && deep.contains(" 6 files, "),
        "{deep}"
    );

    // The manifest in the storage folder, rewritten: the archive no longer matches it.
    let store = s.path("store").join("deep");
    let id = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| store.join(n).join("manifest.json").exists())
        .expect("a backup folder");
    let path = store.join(&id).join("manifest.json");
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let bytes = original["stats"]["bytes"].as_u64().unwrap();
    for (figure, value, want) in [
        (
            "files",
            serde_json::json!(7),
            "files: the archive holds 6, the manifest says 7".to_string(),
        ),
        (
            "bytes",
            serde_json::json!(bytes + 1),
            format!(
                "bytes: the archive holds {bytes}, the manifest says {}",
                bytes + 1
            ),
        ),
    ] {
        let mut m = original.clone();
        m["stats"][figure] = value;
        std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        let run = s.drkit(&["verify", "deep", "--deep"]);
        run.expect_code(4);
        run.expect_one_line_error(&want);
        // Checksums and structure still match: plain verify passes.
        s.drkit(&["verify", "deep"]).expect_code(0);
    }
}
