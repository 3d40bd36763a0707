//! The direct read of a docker volume (`mode = "direct"`: the volume's directory, read by
//! drkit when the engine is local) against the engine's archive endpoint (`mode =
//! "engine"`), on this machine's real Docker engine: the same stats and content digest, a
//! restore of the direct backup that reproduces every file with its metadata, and the
//! BLAKE3 digest of new backups next to an old manifest's sha256 one, which still verifies.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use drkit_tests::docker::{
    config, docker, ensure_image, in_volume, listing, unique, Cleanup, Crafted,
};
use drkit_tests::Scratch;

/// Files, symlinks, a hard link, an empty dir, odd modes (setuid, sticky, 000) and owners
/// (one past USTAR's octal range), a long and a non-ASCII name. (Not setuid on a file with
/// hard links: the engine's extraction chowns the link after the file, which clears the
/// bit, and the restore's read-back check fails it; docs/docker.md, Limits.)
fn fill(volume: &str) {
    in_volume(
        volume,
        r#"set -e; cd /data
mkdir -p deep/er "ünï code" empty-dir
echo hello > a.txt; chown 1234:567 a.txt; chmod 640 a.txt
: > empty; chown 4000000:5 empty
dd if=/dev/urandom of=deep/er/random.bin bs=1k count=700 2>/dev/null
echo y > "ünï code/ß.txt"; chmod 000 "ünï code/ß.txt"
ln -s a.txt link; ln -s ../../a.txt deep/er/uplink; ln a.txt deep/hard
p=deep/er/nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn.txt
echo long > $p
chmod 4755 deep/er/random.bin; chmod 1777 empty-dir; chmod 700 deep; chown 999:999 deep/er
touch -d "2020-02-03 04:05:06" a.txt deep/er/random.bin "ünï code"
chown 70:70 /data; chmod 750 /data; touch -d "2019-01-01 00:00:00" /data"#,
    );
}

fn job(name: &str, vol: &str, mode: &str) -> String {
    format!("[job.{name}]\nsource = {{ type = \"docker-volume\", volume = \"{vol}\", mode = \"{mode}\" }}\nstorage = [\"local\"]\n")
}

fn newest(s: &Scratch, job: &str) -> serde_json::Value {
    let r = s.drkit(&["--json", "list", job]);
    r.expect_code(0);
    r.json().as_array().expect("array")[0].clone()
}

/// The manifest file of the newest backup of `job` in the scratch's local storage.
fn manifest_path(store: &Path, m: &serde_json::Value) -> PathBuf {
    let key = m["data"]["key"].as_str().expect("data key");
    let data = drkit_tests::files_under(store)
        .into_iter()
        .find(|f| f.ends_with(key))
        .unwrap_or_else(|| panic!("no {key} under {}", store.display()));
    store.join(data).with_file_name("manifest.json")
}

#[test]
fn direct_and_engine_backups_agree_and_the_direct_one_restores() {
    ensure_image();
    let mut clean = Cleanup::default();
    let vol = unique("direct");
    let copy = unique("dcopy");
    clean.volumes.extend([vol.clone(), copy.clone()]);
    docker(&["volume", "create", &vol]);
    fill(&vol);
    let before = listing(&vol);
    assert!(
        before.contains("|640|1234|567|")
            && before.contains("|4755|")
            && before.contains("|1777|")
            && before.contains("|0|"),
        "{before}"
    );

    let s = Scratch::new();
    let store = s.path("store");
    s.config(&config(
        &store,
        &format!(
            "{}{}",
            job("direct", &vol, "direct"),
            job("engine", &vol, "engine")
        ),
    ));
    s.drkit(&["backup", "direct"]).expect_code(0);
    s.drkit(&["backup", "engine"]).expect_code(0);
    let d = newest(&s, "direct");
    let e = newest(&s, "engine");
    assert_eq!(d["source"]["read"], "direct", "{}", d["source"]);
    assert_eq!(e["source"]["read"], "engine", "{}", e["source"]);
    // The same stats, digest included: the same volume contents as the engine sees them.
    assert_eq!(d["stats"], e["stats"], "direct and engine stats differ");
    let digest = d["stats"]["digest"].as_str().unwrap();
    assert!(
        digest.starts_with("blake3:") && digest.len() == 71,
        "{digest}"
    );
    assert_eq!(d["stats"]["files"], 5, "{}", d["stats"]);
    assert_eq!(d["stats"]["hardlinks"], 1);
    assert_eq!(d["stats"]["symlinks"], 2);
    assert_eq!(d["stats"]["dirs"], 4);
    assert_ne!(d["data"]["raw_sha256"], serde_json::Value::Null);
    s.drkit(&["verify", "direct", "--deep"]).expect_code(0);

    // The direct backup restores into a new volume: every entry, byte and metadata.
    s.drkit(&["restore", "direct", "--to", &copy])
        .expect_code(0);
    assert_eq!(listing(&copy), before, "the restored copy differs");

    // A content change shows in the digest of both ways alike.
    in_volume(&vol, "echo changed > /data/deep/er/uplink.txt");
    s.drkit(&["backup", "direct"]).expect_code(0);
    s.drkit(&["backup", "engine"]).expect_code(0);
    let (d2, e2) = (newest(&s, "direct"), newest(&s, "engine"));
    assert_eq!(d2["stats"], e2["stats"]);
    assert_ne!(d2["stats"]["digest"], d["stats"]["digest"]);
}

#[test]
fn an_old_sha256_manifest_still_verifies_and_restores() {
    ensure_image();
    let mut clean = Cleanup::default();
    let vol = unique("olddig");
    let copy = unique("oldcopy");
    clean.volumes.extend([vol.clone(), copy.clone()]);
    docker(&["volume", "create", &vol]);
    fill(&vol);
    let before = listing(&vol);
    let s = Scratch::new();
    let store = s.path("store");
    s.config(&config(&store, &job("files", &vol, "auto")));
    s.drkit(&["backup", "files"]).expect_code(0);
    let m = newest(&s, "files");
    assert_eq!(
        m["source"]["read"], "direct",
        "auto reads a local volume directly as root"
    );
    let path = manifest_path(&store, &m);

    // What an older drkit recorded: the sha256 content digest of the same archive.
    let data = path.with_file_name(
        Path::new(m["data"]["key"].as_str().unwrap())
            .file_name()
            .unwrap(),
    );
    let mut unzstd = Command::new("zstd")
        .args(["-dc", data.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("zstd");
    let sha = drkit_drivers::docker::archive_digest(unzstd.stdout.take().unwrap(), "sha256")
        .expect("digest");
    assert!(unzstd.wait().unwrap().success());
    assert!(sha.starts_with("sha256:"), "{sha}");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_ne!(manifest["stats"]["digest"].as_str(), Some(sha.as_str()));
    manifest["stats"]["digest"] = sha.clone().into();
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    assert_eq!(newest(&s, "files")["stats"]["digest"], sha.as_str());

    s.drkit(&["verify", "files", "--deep"]).expect_code(0);
    s.drkit(&["restore", "files", "--to", &copy]).expect_code(0);
    assert_eq!(listing(&copy), before);

    // A wrong sha256 digest fails the deep verify; an unknown algorithm is named.
    let mut wrong = manifest.clone();
    wrong["stats"]["digest"] = format!("sha256:{}", "0".repeat(64)).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&wrong).unwrap()).unwrap();
    s.drkit(&["verify", "files", "--deep"])
        .expect_code(4)
        .expect_one_line_error("content digest");
    wrong["stats"]["digest"] = "md5:0123".into();
    std::fs::write(&path, serde_json::to_vec_pretty(&wrong).unwrap()).unwrap();
    s.drkit(&["verify", "files", "--deep"])
        .expect_code(4)
        .expect_one_line_error("names no algorithm");
}

#[test]
fn direct_mode_fails_clearly_where_it_cannot() {
    ensure_image();
    let mut clean = Cleanup::default();
    // A local volume with mount options (a tmpfs): its data exists only while mounted.
    let vol = unique("tmpfs");
    clean.volumes.push(vol.clone());
    docker(&[
        "volume",
        "create",
        "--driver",
        "local",
        "--opt",
        "type=tmpfs",
        "--opt",
        "device=tmpfs",
        &vol,
    ]);
    let s = Scratch::new();
    s.config(&config(
        &s.path("store"),
        &format!("{}{}", job("d", &vol, "direct"), job("a", &vol, "auto")),
    ));
    s.drkit(&["backup", "d"])
        .expect_code(1)
        .expect_one_line_error("cannot be read directly (mode = \"direct\")");
    // auto goes through the engine, and the manifest says why.
    let r = s.drkit(&["backup", "a"]);
    assert!(r.code == 0 || r.code == 5, "{}", r.stderr); // empty: suspect
    let m = newest(&s, "a");
    assert_eq!(m["source"]["read"], "engine");
    assert!(
        m["source"]["read_reason"]
            .as_str()
            .unwrap()
            .contains("mount options"),
        "{}",
        m["source"]
    );
}

/// A restore says which way it wrote the volume (the report's notes, on stderr or stdout).
fn restore_says(r: &drkit_tests::Run, want: &str) {
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains(want), "no {want:?} in: {all}");
}

/// The direct restore (into a new volume, and with --force over an existing one: staging,
/// emptied destination, entries renamed in, read back directly) reproduces the volume entry
/// for entry and metadata for metadata, as the engine's restore does.
#[test]
fn direct_and_engine_restores_reproduce_the_volume_alike() {
    ensure_image();
    let mut clean = Cleanup::default();
    let vol = unique("rdirect");
    let by_direct = unique("rdcopy");
    let by_engine = unique("recopy");
    clean
        .volumes
        .extend([vol.clone(), by_direct.clone(), by_engine.clone()]);
    docker(&["volume", "create", &vol]);
    fill(&vol);
    let before = listing(&vol);
    let s = Scratch::new();
    s.config(&config(
        &s.path("store"),
        &format!(
            "{}{}",
            job("direct", &vol, "direct"),
            job("engine", &vol, "engine")
        ),
    ));
    s.drkit(&["backup", "direct"]).expect_code(0);
    s.drkit(&["backup", "engine"]).expect_code(0);

    let r = s.drkit(&["restore", "direct", "--to", &by_direct]);
    r.expect_code(0);
    restore_says(&r, "written directly into the volume's directory (direct)");
    let r = s.drkit(&["restore", "engine", "--to", &by_engine]);
    r.expect_code(0);
    restore_says(&r, "through the engine's archive endpoint (engine)");
    assert_eq!(listing(&by_direct), before, "the direct restore differs");
    assert_eq!(listing(&by_engine), before, "the engine restore differs");

    // Over the changed original with --force: staged, checked, renamed in.
    in_volume(
        &vol,
        "rm -rf /data/deep; echo new > /data/a.txt; mkdir /data/extra; echo e > /data/extra/f",
    );
    assert_ne!(listing(&vol), before);
    s.drkit(&["restore", "direct"])
        .expect_code(3)
        .expect_one_line_error("not empty");
    let r = s.drkit(&["restore", "direct", "--force"]);
    r.expect_code(0);
    restore_says(&r, "written directly into the volume's directory (direct)");
    restore_says(&r, "(rename)");
    assert_eq!(
        listing(&vol),
        before,
        "the direct restore over the volume differs"
    );
    let staging = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=drkit.staging={vol}"),
    ]);
    assert_eq!(staging.trim(), "", "staging volumes left behind");
}

/// Hostile archives through the direct restore (mode = "direct"), behind the verification
/// (as if the stored bytes changed after it): refused while extracting, the new volume
/// removed, an existing one untouched even with --force, nothing written outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_restore_refuses_crafted_archives_and_writes_nothing() {
    use drkit_core::pipeline::{self, Target};
    use drkit_drivers::docker::direct::ReadMode;
    use drkit_drivers::source::docker_volume::{DockerVolumeConfig, DockerVolumeSource};
    use drkit_drivers::test_util::volume_tar::{archive, entry};
    ensure_image();
    let mut clean = Cleanup::default();
    let existing = unique("dvictim");
    clean.volumes.push(existing.clone());
    docker(&["volume", "create", &existing]);
    in_volume(&existing, "echo keep > /data/marker; mkdir /data/d");
    let before = listing(&existing);
    let outside = tempfile::tempdir().unwrap();
    let out = outside.path().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = drkit_core::DriverSpec {
        kind: "local".into(),
        settings: Default::default(),
    };
    spec.settings
        .insert("path".into(), dir.path().display().to_string().into());
    let storage = drkit_drivers::open_storage("local", &spec).unwrap();
    let targets = [Target {
        name: "local".into(),
        storage,
    }];
    let source = |volume: &str| {
        DockerVolumeSource::new(
            DockerVolumeConfig {
                volume: volume.into(),
                project: None,
                stop_containers: false,
                stop_timeout: None,
                host: None,
                mode: ReadMode::Direct,
            },
            "test",
        )
        .unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "through-symlink",
            archive(&[
                entry("./fine", b'0', "", b"fine"),
                entry("./l", b'2', "d", b""),
                entry("./l/evil", b'0', "", b"evil"),
            ]),
            "through the symbolic link",
        ),
        (
            "dotdot",
            archive(&[
                entry("./fine", b'0', "", b"fine"),
                entry("../x", b'0', "", b"x"),
            ]),
            "climbs out",
        ),
        (
            "absolute-link",
            archive(&[
                entry("./fine", b'0', "", b"fine"),
                entry("./out", b'2', &out, b""),
                entry("./out/evil", b'0', "", b"evil"),
            ]),
            "absolute path",
        ),
        (
            "hardlink-out",
            archive(&[
                entry("./fine", b'0', "", b"fine"),
                entry("./h", b'1', "../../x", b""),
            ]),
            "climbs out",
        ),
        (
            "device",
            archive(&[
                entry("./fine", b'0', "", b"fine"),
                entry("./tty", b'3', "", b""),
            ]),
            "device node",
        ),
    ];
    for (name, bytes, want) in cases {
        let outcome = pipeline::backup(
            &format!("dcrafted-{name}"),
            &Crafted(bytes.clone()),
            &targets,
            &Default::default(),
            pipeline::no_progress(),
        )
        .await
        .unwrap();
        let manifest = outcome.manifest;
        let fresh = unique("dfresh");
        clean.volumes.push(fresh.clone());
        let opts = drkit_core::RestoreOptions::default();
        let err = drkit_core::Source::restore(
            &source(&fresh),
            Box::new(std::io::Cursor::new(bytes.clone())),
            &manifest,
            &opts,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), drkit_core::ErrorKind::Refused, "{name}: {err}");
        assert!(
            err.to_string().contains(want) && err.to_string().contains("nothing was written"),
            "{name}: {err}"
        );
        assert!(
            !err.to_string().contains('\n'),
            "{name}: not one line: {err}"
        );
        let gone = docker(&["volume", "ls", "-q", "--filter", &format!("name=^{fresh}$")]);
        assert_eq!(
            gone.trim(),
            "",
            "{name}: the refused restore left volume {fresh}"
        );
        let opts = drkit_core::RestoreOptions {
            force: true,
            ..Default::default()
        };
        let err = drkit_core::Source::restore(
            &source(&existing),
            Box::new(std::io::Cursor::new(bytes.clone())),
            &manifest,
            &opts,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), drkit_core::ErrorKind::Refused, "{name}: {err}");
        assert_eq!(
            listing(&existing),
            before,
            "{name}: the refused restore changed the volume"
        );
    }
    let staging = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=drkit.staging={existing}"),
    ]);
    assert_eq!(staging.trim(), "", "staging volumes left behind");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    assert!(!Path::new("/x").exists() && !Path::new("/evil").exists());
}
