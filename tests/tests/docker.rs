//! End-to-end tests of the Docker volume source and the guard, against the real Docker
//! engine of this machine (`DRKIT_TEST_DOCKER=1`, set by scripts/test.sh). Containers run a
//! busybox image imported locally: no registry is used.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use drkit_tests::docker::{
    compose_flavours, config, docker, docker_out, ensure_image, in_volume, listing, populate,
    running, unique, volume_exists, Cleanup, Crafted, IMAGE,
};
use drkit_tests::Scratch;

fn setup() {
    ensure_image();
}

fn list_json(s: &Scratch, job: &str) -> Vec<serde_json::Value> {
    let r = s.drkit(&["--json", "list", job]);
    r.expect_code(0);
    r.json().as_array().expect("array").clone()
}

#[test]
fn volume_backup_verify_restore_byte_for_byte() {
    setup();
    let mut clean = Cleanup::default();
    let vol = unique("src");
    let copy = unique("copy");
    clean.volumes.extend([vol.clone(), copy.clone()]);
    docker(&["volume", "create", &vol]);
    populate(&vol);
    let before = listing(&vol);
    assert!(
        before.contains("ünïcode/ß.txt") && before.contains("|4755|"),
        "{before}"
    );

    let s = Scratch::new();
    s.config(&config(&s.path("store"), &format!("[job.files]\nsource = {{ type = \"docker-volume\", volume = \"{vol}\" }}\nstorage = [\"local\"]\n")));
    s.drkit(&["backup", "files"]).expect_code(0);
    let list = list_json(&s, "files");
    assert_eq!(list.len(), 1);
    let m = &list[0];
    assert_eq!(m["driver"], "docker-volume");
    assert_eq!(m["source"]["volume"], vol.as_str());
    assert_eq!(m["stats"]["empty"], false);
    assert_eq!(m["stats"]["files"], 6, "{}", m["stats"]);
    assert_eq!(m["stats"]["symlinks"], 2);
    assert_eq!(m["stats"]["hardlinks"], 1);
    assert!(m["stats"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("blake3:"));
    assert!(m["data"]["key"].as_str().unwrap().ends_with("data.tar.zst"));
    s.drkit(&["verify", "files"]).expect_code(0);

    // Into a new volume (created), then compare everything.
    s.drkit(&["restore", "files", "--to", &copy]).expect_code(0);
    assert_eq!(listing(&copy), before, "restored copy differs");

    // Into the original, now changed: refused without --force, and left as it was.
    in_volume(
        &vol,
        "echo changed > /data/a.txt; echo new > /data/extra; rm /data/empty",
    );
    let changed = listing(&vol);
    s.drkit(&["restore", "files"])
        .expect_code(3)
        .expect_one_line_error("not empty");
    assert_eq!(
        listing(&vol),
        changed,
        "a refused restore changed the volume"
    );
    // With --force: emptied first, then restored exactly.
    s.drkit(&["restore", "files", "--force"]).expect_code(0);
    assert_eq!(listing(&vol), before, "forced restore differs");
    assert_eq!(
        docker(&[
            "ps",
            "-aq",
            "--filter",
            "label=drkit.helper",
            "--filter",
            &format!("volume={vol}")
        ])
        .trim(),
        "",
        "helper containers left behind"
    );
}

#[test]
fn empty_volume_is_backed_up_and_marked_empty() {
    setup();
    let mut clean = Cleanup::default();
    let vol = unique("empty");
    clean.volumes.push(vol.clone());
    docker(&["volume", "create", &vol]);
    let s = Scratch::new();
    s.config(&config(&s.path("store"), &format!("[job.e]\nsource = {{ type = \"docker-volume\", volume = \"{vol}\" }}\nstorage = \"local\"\n")));
    let r = s.drkit(&["backup", "e"]);
    // An empty source is written, and loud: suspect (exit 5).
    r.expect_code(5);
    assert!(r.stderr.contains("holds no files"), "{}", r.stderr);
    assert!(r.stderr.contains("SUSPECT"), "{}", r.stderr);
    let m = &list_json(&s, "e")[0];
    assert_eq!(m["stats"]["empty"], true);
    assert_eq!(m["stats"]["entries"], 0);
    assert!(m["warnings"][0]
        .as_str()
        .unwrap()
        .contains("holds no files"));
}

/// The whole story, with each compose spelling present: a service writes into a named
/// volume; the guard refuses `down -v` with no backup (the volume survives); after
/// `drkit backup` it lets it through; after `up`, `drkit restore` brings every file back.
#[test]
fn compose_guard_refuses_down_v_then_backup_down_up_restore() {
    setup();
    for flavour in compose_flavours() {
        let mut clean = Cleanup::default();
        let s = Scratch::new();
        let project = unique("proj");
        let dir = s.path("stack");
        std::fs::create_dir_all(&dir).unwrap();
        clean.projects.push(project.clone());
        std::fs::write(
            dir.join("docker-compose.yml"),
            format!(
                r#"version: "3"
services:
  app:
    image: {IMAGE}
    network_mode: none
    command: ["sh", "-c", "if [ \"$$SEED\" = 1 ]; then mkdir -p /data/db && dd if=/dev/urandom of=/data/db/blob bs=1k count=200 2>/dev/null && echo v1 > /data/db/version && chown -R 999:999 /data/db && chmod 700 /data/db && touch /data/.ready; fi; trap 'exit 0' TERM; while true; do sleep 1; done"]
    environment:
      SEED: "${{SEED:-0}}"
    volumes:
      - data:/data
volumes:
  data:
"#
            ),
        )
        .unwrap();
        // The project name comes from .env, as in the incident.
        std::fs::write(
            dir.join(".env"),
            format!("COMPOSE_PROJECT_NAME={project}\n"),
        )
        .unwrap();
        s.config(&config(
            &s.path("store"),
            &format!("[job.appdata]\nsource = {{ type = \"docker-volume\", project = \"{project}\", volume = \"data\", stop_containers = true, stop_timeout = \"5s\" }}\nstorage = [\"local\"]\n"),
        ));
        let compose = |args: &[&str], seed: bool| {
            let mut cmd = std::process::Command::new(flavour[0]);
            cmd.args(&flavour[1..])
                .args(args)
                .current_dir(&dir)
                .env_remove("COMPOSE_PROJECT_NAME");
            if seed {
                cmd.env("SEED", "1");
            } else {
                cmd.env_remove("SEED");
            }
            let out = cmd.output().expect("run compose");
            assert!(
                out.status.success(),
                "{flavour:?} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let volume = format!("{project}_data");
        compose(&["up", "-d"], true);
        let t0 = Instant::now();
        while in_volume(&volume, "test -f /data/.ready && echo yes || echo no").trim() != "yes" {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the service never wrote its files"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        let before = listing(&volume);

        // Guard with no backup: refused, nothing run, the volume is still there.
        let cfg_path = s.path("drkit.toml").display().to_string();
        let mut guarded: Vec<&str> = vec!["--config", &cfg_path, "guard", "--"];
        guarded.extend(flavour.iter());
        guarded.extend(["down", "-v"]);
        let run_in_dir = |args: &[&str]| {
            let mut c = s.command(args);
            c.current_dir(&dir).env_remove("COMPOSE_PROJECT_NAME");
            let out = c.output().expect("run drkit");
            drkit_tests::Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into(),
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            }
        };
        let r = run_in_dir(&guarded);
        r.expect_code(3).expect_one_line_error("nothing was run");
        assert!(
            r.stderr.contains(&volume) && r.stderr.contains("never"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("drkit backup appdata"), "{}", r.stderr);
        assert!(
            volume_exists(&volume),
            "the refused command destroyed the volume"
        );
        assert!(
            running(&format!("{project}_app_1")) || running(&format!("{project}-app-1")),
            "the service stopped"
        );

        // Back up (the service is stopped for it and started again), then the guard lets it run.
        let b = s.drkit(&["backup", "appdata"]);
        b.expect_code(0);
        assert!(
            b.stderr.contains("stopped container") && b.stderr.contains("restarted container"),
            "{}",
            b.stderr
        );
        let m = &list_json(&s, "appdata")[0];
        assert_eq!(m["source"]["project"], project.as_str());
        assert_eq!(
            m["source"]["stopped_containers"].as_array().unwrap().len(),
            1
        );
        let r = run_in_dir(&guarded);
        r.expect_code(0);
        assert!(!volume_exists(&volume), "down -v did not run: {}", r.stderr);

        // up again: a fresh, empty volume; restore brings everything back.
        compose(&["up", "-d"], false);
        assert!(volume_exists(&volume));
        s.drkit(&["restore", "appdata"]).expect_code(0);
        assert_eq!(
            listing(&volume),
            before,
            "{flavour:?}: restored volume differs"
        );
    }
}

#[test]
fn guard_runs_harmless_commands_unchanged() {
    setup();
    // No config at all: harmless commands do not need one.
    let s = Scratch::new();
    let r = s.drkit(&["guard", "--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (7, "out\n", "err\n")
    );
    let r = s.drkit(&[
        "guard",
        "--",
        "docker",
        "volume",
        "ls",
        "--format",
        "{{.Driver}}",
    ]);
    r.expect_code(0);
    let r = s.drkit(&[
        "guard",
        "--",
        "docker",
        "volume",
        "inspect",
        "drkit-no-such-volume",
    ]);
    assert_eq!(r.code, 1, "docker's own exit code: {r:?}");
    std::fs::write(
        s.path("docker-compose.yml"),
        format!("version: \"3\"\nservices:\n  x:\n    image: {IMAGE}\n"),
    )
    .unwrap();
    let r = s.drkit(&[
        "guard",
        "--",
        "docker-compose",
        "-p",
        "drkitnosuchproject",
        "down",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    // A destructive command with no config is refused with a clear line, nothing run.
    let vol = unique("keep");
    let mut clean = Cleanup::default();
    clean.volumes.push(vol.clone());
    docker(&["volume", "create", &vol]);
    s.drkit(&["guard", "--", "docker", "volume", "rm", &vol])
        .expect_code(2)
        .expect_one_line_error("needs the drkit config");
    assert!(volume_exists(&vol));
    // --install prints the shell function.
    let r = s.drkit(&["guard", "--install"]);
    r.expect_code(0);
    assert!(
        r.stdout.contains("docker() {") && r.stdout.contains("guard -- docker-compose \"$@\""),
        "{}",
        r.stdout
    );
    let check = std::process::Command::new("bash")
        .args(["-n", "-c", &r.stdout])
        .status()
        .unwrap();
    assert!(check.success(), "the shell function is not valid bash");
}

#[test]
fn guard_volume_rm_prune_stale_corrupt_and_backup_first() {
    setup();
    let mut clean = Cleanup::default();
    let vol = unique("rmme");
    let other = unique("other");
    clean.volumes.extend([vol.clone(), other.clone()]);
    docker(&["volume", "create", &vol]);
    in_volume(
        &vol,
        "echo precious > /data/p; dd if=/dev/urandom of=/data/r bs=1k count=64 2>/dev/null",
    );
    let before = listing(&vol);
    let s = Scratch::new();
    s.config(&config(&s.path("store"), &format!("[job.named]\nsource = {{ type = \"docker-volume\", volume = \"{vol}\" }}\nstorage = [\"local\"]\n")));

    // No backup: refused.
    let r = s.drkit(&["guard", "--", "docker", "volume", "rm", "-f", &vol]);
    r.expect_code(3);
    assert!(
        r.stderr.contains(&vol) && r.stderr.contains("never") && r.stderr.contains("KiB"),
        "{}",
        r.stderr
    );
    assert!(volume_exists(&vol));
    // prune (all unused volumes on this engine) is refused too; it is never run here.
    let r = s.drkit(&["guard", "--", "docker", "volume", "prune", "-f"]);
    r.expect_code(3);
    assert!(r.stderr.contains(&vol), "{}", r.stderr);
    let r = s.drkit(&[
        "guard",
        "--",
        "docker",
        "system",
        "prune",
        "-f",
        "--volumes",
    ]);
    r.expect_code(3);
    assert!(volume_exists(&vol));

    // A backup, but too old for --max-age.
    s.drkit(&["backup", "named"]).expect_code(0);
    std::thread::sleep(Duration::from_millis(2100));
    let r = s.drkit(&[
        "guard",
        "--max-age",
        "1s",
        "--",
        "docker",
        "volume",
        "rm",
        &vol,
    ]);
    r.expect_code(3);
    assert!(r.stderr.contains("older than 1s"), "{}", r.stderr);
    // A fresh backup whose archive was damaged since: it fails verification, refused.
    let data = drkit_tests::files_under(&s.path("store"))
        .into_iter()
        .find(|f| f.ends_with("data.tar.zst"))
        .expect("archive");
    let path = s.path("store").join(&data);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let r = s.drkit(&["guard", "--", "docker", "volume", "rm", &vol]);
    r.expect_code(3);
    assert!(r.stderr.contains("failed verification"), "{}", r.stderr);
    assert!(volume_exists(&vol));

    // --backup-first: a volume no job names is backed up ad hoc, then the command runs.
    docker(&["volume", "create", &other]);
    in_volume(&other, "echo other > /data/o");
    let other_before = listing(&other);
    let r = s.drkit(&[
        "guard",
        "--backup-first",
        "--",
        "docker",
        "volume",
        "rm",
        &other,
    ]);
    r.expect_code(0);
    assert!(r.stderr.contains("written and verified"), "{}", r.stderr);
    assert!(!volume_exists(&other));
    // The ad-hoc job's backups are found by name: add the job and restore from them.
    let adhoc = format!("volume-{other}");
    s.config(&config(&s.path("store"), &format!("[job.named]\nsource = {{ type = \"docker-volume\", volume = \"{vol}\" }}\nstorage = [\"local\"]\n\n[job.{adhoc}]\nsource = {{ type = \"docker-volume\", volume = \"{other}\" }}\nstorage = [\"local\"]\n")));
    s.drkit(&["restore", &adhoc]).expect_code(0);
    assert_eq!(listing(&other), other_before);

    // --backup-first with a job: a new, good backup replaces the damaged one's role.
    let r = s.drkit(&[
        "guard",
        "--backup-first",
        "--",
        "docker",
        "volume",
        "rm",
        &vol,
    ]);
    r.expect_code(0);
    assert!(!volume_exists(&vol));
    s.drkit(&["restore", "named"]).expect_code(0);
    assert_eq!(listing(&vol), before);
}

#[test]
fn errors_engine_down_missing_volume_unrestartable_container() {
    setup();
    let mut clean = Cleanup::default();
    let s = Scratch::new();
    let vol = unique("err");
    clean.volumes.push(vol.clone());
    s.config(&config(
        &s.path("store"),
        &format!(
            "[job.missing]\nsource = {{ type = \"docker-volume\", volume = \"{vol}-nope\" }}\nstorage = \"local\"\n\n\
             [job.compose]\nsource = {{ type = \"docker-volume\", project = \"{vol}nope\", volume = \"db\" }}\nstorage = \"local\"\n\n\
             [job.stuck]\nsource = {{ type = \"docker-volume\", volume = \"{vol}\", stop_containers = true, stop_timeout = \"2s\" }}\nstorage = \"local\"\n"
        ),
    ));
    // The engine is not running (nothing listens on that socket).
    let mut c = s.command(&["backup", "missing"]);
    c.env(
        "DOCKER_HOST",
        format!("unix://{}", s.path("no-docker.sock").display()),
    );
    let out = c.output().unwrap();
    let r = drkit_tests::Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    r.expect_code(1)
        .expect_one_line_error("cannot reach the Docker engine");
    // A volume that does not exist.
    s.drkit(&["backup", "missing"])
        .expect_code(1)
        .expect_one_line_error("does not exist");
    s.drkit(&["backup", "compose"])
        .expect_code(1)
        .expect_one_line_error("has no volume \"db\"");
    assert!(list_json(&s, "missing").is_empty());

    // A container that cannot be started again: its bind-mount source is gone once stopped.
    docker(&["volume", "create", &vol]);
    in_volume(&vol, "echo x > /data/x");
    let bind = s.path("bind-src");
    std::fs::create_dir_all(&bind).unwrap();
    let ctr = unique("stuck");
    clean.containers.push(ctr.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &ctr,
        "--network",
        "none",
        "-v",
        &format!("{vol}:/data"),
        "--mount",
        &format!("type=bind,source={},target=/b", bind.display()),
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    std::fs::remove_dir(&bind).unwrap();
    let r = s.drkit(&["backup", "stuck"]);
    r.expect_code(1)
        .expect_one_line_error(&format!("container {ctr} could not be restarted"));
    assert!(
        r.stderr.contains(&format!("docker start {ctr}")),
        "{}",
        r.stderr
    );
    assert!(
        list_json(&s, "stuck").is_empty(),
        "a backup that left a container down was recorded"
    );
}

#[test]
fn sigterm_during_backup_restarts_the_stopped_container() {
    setup();
    let mut clean = Cleanup::default();
    let vol = unique("sig");
    let ctr = unique("sigctr");
    clean.volumes.push(vol.clone());
    clean.containers.push(ctr.clone());
    docker(&["volume", "create", &vol]);
    in_volume(
        &vol,
        "dd if=/dev/urandom of=/data/big bs=1M count=400 2>/dev/null",
    );
    docker(&[
        "run",
        "-d",
        "--name",
        &ctr,
        "--network",
        "none",
        "-v",
        &format!("{vol}:/data"),
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    let s = Scratch::new();
    s.config(&config(&s.path("store"), &format!("[job.sig]\nsource = {{ type = \"docker-volume\", volume = \"{vol}\", stop_containers = true }}\nstorage = \"local\"\n")));
    let mut child = s
        .command(&["backup", "sig"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("stopped container") {
            break;
        }
    }
    assert!(
        seen.contains(&ctr),
        "drkit did not say it stopped {ctr}: {seen}"
    );
    assert!(!running(&ctr));
    let st = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    for line in lines {
        seen.push_str(&line.unwrap());
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted backup exited 0: {seen}");
    assert!(
        seen.contains(&format!("restarted container {ctr}")),
        "{seen}"
    );
    assert!(running(&ctr), "the container was not started again: {seen}");
    assert!(
        list_json(&s, "sig").is_empty(),
        "an interrupted backup was recorded"
    );
}

#[test]
fn lookalike_volumes_and_split_services_are_reported() {
    setup();
    let mut clean = Cleanup::default();
    let key = unique("db");
    let (old_p, new_p) = (format!("{key}old"), format!("{key}new"));
    let (old_v, new_v) = (format!("{old_p}_{key}"), format!("{new_p}_{key}"));
    clean.volumes.extend([old_v.clone(), new_v.clone()]);
    for (v, p) in [(&old_v, &old_p), (&new_v, &new_p)] {
        docker(&[
            "volume",
            "create",
            "--label",
            &format!("com.docker.compose.project={p}"),
            "--label",
            &format!("com.docker.compose.volume={key}"),
            v,
        ]);
    }
    in_volume(
        &old_v,
        "dd if=/dev/urandom of=/data/history bs=1k count=512 2>/dev/null",
    );
    in_volume(&new_v, "echo fresh > /data/x");
    for (p, v) in [(&new_p, &new_v), (&old_p, &old_v)] {
        let name = format!("{p}-backend-1");
        clean.containers.push(name.clone());
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "--label",
            &format!("com.docker.compose.project={p}"),
            "--label",
            &format!("com.docker.compose.service={key}backend"),
            "-v",
            &format!("{v}:/data"),
            IMAGE,
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 1; done",
        ]);
    }
    // The old project's container also mounts the old volume: stop it, so only the new one is in use.
    docker(&["stop", "-t", "1", &format!("{old_p}-backend-1")]);
    let s = Scratch::new();
    s.config(&config(&s.path("store"), ""));
    let r = s.drkit(&["guard", "--", "docker", "volume", "rm", &new_v]);
    r.expect_code(3);
    assert!(
        r.stderr
            .contains(&format!("volume {new_v} (project {new_p}, in use"))
            && r.stderr
                .contains(&format!("lookalike holding more data: {old_v}")),
        "{}",
        r.stderr
    );
    // Both projects running the same service.
    docker(&["start", &format!("{old_p}-backend-1")]);
    let r = s.drkit(&["guard", "--", "docker", "volume", "rm", &new_v]);
    assert!(
        r.stderr.contains(&format!(
            "compose service {key}backend has running containers in 2 projects"
        )),
        "{}",
        r.stderr
    );
    assert!(volume_exists(&new_v));
    let _ = docker_out(&["ps"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_archives_are_refused_and_nothing_is_written() {
    use drkit_core::pipeline::{self, Target};
    use drkit_drivers::source::docker_volume::DockerVolumeSource;
    use drkit_drivers::test_util::volume_tar::{archive, entry};
    setup();
    let mut clean = Cleanup::default();
    let existing = unique("victim");
    clean.volumes.push(existing.clone());
    docker(&["volume", "create", &existing]);
    in_volume(&existing, "echo keep > /data/marker");
    let before = listing(&existing);
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
        storage: storage.clone(),
    }];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            archive(&[
                entry("./", b'5', "", b""),
                entry("./fine", b'0', "", b"fine"),
                entry("../evil", b'0', "", b"evil"),
            ]),
            "climbs out",
        ),
        (
            "nested-dotdot",
            archive(&[
                entry("./fine", b'0', "", b"fine"),
                entry("./a/../../evil", b'0', "", b"evil"),
            ]),
            "climbs out",
        ),
        (
            "absolute",
            archive(&[
                entry("./fine", b'0', "", b"fine"),
                entry("/evil", b'0', "", b"evil"),
            ]),
            "absolute path",
        ),
        (
            "symlink-out",
            archive(&[
                entry("./fine", b'0', "", b"fine"),
                entry("./l", b'2', "../../../../tmp", b""),
                entry("./l/evil", b'0', "", b"evil"),
            ]),
            "outside the volume",
        ),
        (
            "symlink-abs",
            archive(&[
                entry("./fine", b'0', "", b"fine"),
                entry("./etc", b'2', "/etc", b""),
                entry("./etc/evil", b'0', "", b"evil"),
            ]),
            "absolute path",
        ),
        (
            "hardlink-out",
            archive(&[
                entry("./fine", b'0', "", b"fine"),
                entry("./h", b'1', "/etc/passwd", b""),
            ]),
            "absolute path",
        ),
    ];
    for (name, bytes, want) in cases {
        let job = format!("crafted-{name}");
        let outcome = pipeline::backup(
            &job,
            &Crafted(bytes.clone()),
            &targets,
            &Default::default(),
            pipeline::no_progress(),
        )
        .await
        .unwrap();
        let manifest = outcome.manifest;
        // Into a new volume: refused, and the volume is not left behind.
        let fresh = unique("fresh");
        clean.volumes.push(fresh.clone());
        let src = DockerVolumeSource::for_volume(&fresh, false);
        let opts = drkit_core::RestoreOptions {
            force: false,
            ..Default::default()
        };
        // The restore's verification applies the entry policy first: nothing is created.
        let err = pipeline::restore(
            storage.as_ref(),
            &manifest,
            &src,
            &opts,
            false,
            pipeline::no_progress(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.kind(),
            drkit_core::ErrorKind::Integrity,
            "{name}: {err}"
        );
        assert!(
            err.to_string().contains(want) && err.to_string().contains("restore would refuse"),
            "{name}: {err}"
        );
        assert!(
            !volume_exists(&fresh),
            "{name}: the refused restore left volume {fresh}"
        );
        // The driver's own check, behind it (bytes changed in the storage since the
        // verification): refused while streaming, and the new volume is removed again.
        let err = drkit_core::Source::restore(
            &src,
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
            !volume_exists(&fresh),
            "{name}: the refused restore left volume {fresh}"
        );
        // Into an existing volume, even with --force: refused, and the volume is untouched.
        let src = DockerVolumeSource::for_volume(&existing, false);
        let opts = drkit_core::RestoreOptions {
            force: true,
            ..Default::default()
        };
        let err = pipeline::restore(
            storage.as_ref(),
            &manifest,
            &src,
            &opts,
            false,
            pipeline::no_progress(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.kind(),
            drkit_core::ErrorKind::Integrity,
            "{name}: {err}"
        );
        assert_eq!(
            listing(&existing),
            before,
            "{name}: the refused restore changed the volume"
        );
        let err = drkit_core::Source::restore(
            &src,
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
    assert_eq!(
        docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=drkit.staging={existing}")
        ])
        .trim(),
        "",
        "staging volumes left behind"
    );
    assert_eq!(
        docker(&[
            "ps",
            "-aq",
            "--filter",
            "label=drkit.helper",
            "--filter",
            &format!("volume={existing}")
        ])
        .trim(),
        "",
        "helper containers left behind"
    );
    // Nothing landed on the host's /tmp or /etc either.
    assert!(
        !std::path::Path::new("/tmp/evil").exists()
            && !std::path::Path::new("/etc/evil").exists()
            && !std::path::Path::new("/evil").exists()
    );
}

#[test]
fn example_config_parses() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/docker-volumes.toml");
    let config =
        drkit_core::Config::load(&path, &|_| None).expect("examples/docker-volumes.toml parses");
    drkit_drivers::validate(&config).expect("examples/docker-volumes.toml validates");
    assert_eq!(config.job["shop-db"].source.kind, "docker-volume");
}

/// `docker-compose.test.yml` (the test servers as containers, docs/testing.md) is a valid
/// compose file for every compose tool here, and `scripts/compose-env.sh` names every variable
/// the suite reads, pointing at the ports the file publishes.
#[test]
fn compose_test_file_is_valid_and_matches_its_env_script() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let file = root.join("docker-compose.test.yml");
    for tool in drkit_tests::docker::compose_flavours() {
        let out = std::process::Command::new(tool[0])
            .args(&tool[1..])
            .args(["-f", file.to_str().unwrap(), "config"])
            .env("DRKIT_PG_IMAGE", "local/pg:15")
            .output()
            .expect("run compose");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{tool:?} config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Image names come from variables, with the official images as defaults.
        assert!(text.contains("image: local/pg:15"), "{text}");
        assert!(text.contains("image: mongo:7"), "{text}");
        for port in ["25432", "27117", "29000"] {
            assert!(text.contains(port), "port {port} missing:\n{text}");
        }
    }
    let env = std::process::Command::new("bash")
        .arg(root.join("scripts/compose-env.sh"))
        .output()
        .expect("run compose-env.sh");
    assert!(env.status.success());
    let env = String::from_utf8_lossy(&env.stdout);
    for var in [
        "DRKIT_TEST_PG_URL='postgres://drkit:drkit-test-pw@127.0.0.1:25432/postgres'",
        "DRKIT_TEST_MONGO_URL='mongodb://127.0.0.1:27117/",
        "DRKIT_TEST_MOTO_ENDPOINT='http://127.0.0.1:29000'",
        "DRKIT_TEST_S3S_ENDPOINT='http://127.0.0.1:29000'",
        "DRKIT_TEST_S3S_SECRET_KEY='drkit-test-secret'",
    ] {
        assert!(env.contains(var), "{var} missing:\n{env}");
    }
}

/// Run drkit in `dir` (the compose project's directory), without the caller's
/// COMPOSE_PROJECT_NAME.
fn drkit_in(s: &Scratch, dir: &std::path::Path, args: &[&str]) -> drkit_tests::Run {
    let mut c = s.command(args);
    c.current_dir(dir).env_remove("COMPOSE_PROJECT_NAME");
    let out = c.output().expect("run drkit");
    drkit_tests::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// The anonymous volumes a container mounts.
fn anonymous_volumes(container: &str) -> Vec<String> {
    docker(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}",
        container,
    ])
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

/// `docker rm -v` by short id, full id and `/name`: the container is found as the engine
/// finds it, and its un-backed-up anonymous volume makes the guard refuse.
#[test]
fn guard_rm_v_by_container_id_is_refused() {
    setup();
    let mut clean = Cleanup::default();
    let ctr = unique("anon");
    clean.containers.push(ctr.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &ctr,
        "--network",
        "none",
        "-v",
        "/data",
        IMAGE,
        "sh",
        "-c",
        "dd if=/dev/urandom of=/data/precious bs=1k count=64 2>/dev/null; touch /data/.ready; trap 'exit 0' TERM; while true; do sleep 1; done",
    ]);
    let vols = anonymous_volumes(&ctr);
    assert_eq!(vols.len(), 1, "{vols:?}");
    clean.volumes.extend(vols.iter().cloned());
    let t0 = Instant::now();
    while !docker_out(&["exec", &ctr, "test", "-f", "/data/.ready"])
        .status
        .success()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the container never wrote its data"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let full = docker(&["inspect", "-f", "{{.Id}}", &ctr])
        .trim()
        .to_string();
    let short = full[..12].to_string();
    let slash = format!("/{ctr}");
    let s = Scratch::new();
    s.config(&config(&s.path("store"), ""));
    for spelling in [
        vec!["docker", "rm", "-fv", short.as_str()],
        vec!["docker", "rm", "-v", full.as_str()],
        vec![
            "docker",
            "container",
            "rm",
            "--volumes",
            "--force",
            &full[..7],
        ],
        vec!["docker", "rm", "-fv", slash.as_str()],
    ] {
        let mut args = vec!["guard", "--"];
        args.extend(&spelling);
        let r = s.drkit(&args);
        r.expect_code(3).expect_one_line_error("nothing was run");
        assert!(
            r.stderr.contains(&vols[0]) && r.stderr.contains("no backup"),
            "{spelling:?}: {}",
            r.stderr
        );
        assert!(running(&ctr), "{spelling:?}: the container was removed");
    }
    // A container that does not exist: the command runs (and fails by itself).
    let r = s.drkit(&[
        "guard",
        "--",
        "docker",
        "rm",
        "-v",
        "drkit-no-such-container",
    ]);
    assert_eq!(r.code, 1, "docker's own exit code: {r:?}");
}

/// Compose v1 spellings that destroyed volumes with no backup: `rm -v svc1 svc2` (the
/// services were ANDed, so nothing matched) and `env -u HOME docker-compose down -v`.
#[test]
fn guard_compose_rm_services_and_env_wrapped_down_are_refused() {
    setup();
    if !compose_flavours().iter().any(|f| f[0] == "docker-compose") {
        panic!("docker-compose (v1) is not installed");
    }
    let mut clean = Cleanup::default();
    let s = Scratch::new();
    let project = unique("rmsvc");
    clean.projects.push(project.clone());
    let dir = s.path("stack");
    std::fs::create_dir_all(&dir).unwrap();
    let service = |name: &str| {
        format!(
            "  {name}:\n    image: {IMAGE}\n    network_mode: none\n    command: [\"sh\", \"-c\", \"dd if=/dev/urandom of=/data/{name} bs=1k count=32 2>/dev/null; touch /data/.ready; trap 'exit 0' TERM; while true; do sleep 1; done\"]\n    volumes:\n      - /data\n"
        )
    };
    std::fs::write(
        dir.join("docker-compose.yml"),
        format!(
            "version: \"3\"\nservices:\n{}{}",
            service("svc1"),
            service("svc2")
        ),
    )
    .unwrap();
    let compose = |args: &[&str]| {
        let out = std::process::Command::new("docker-compose")
            .args(["-p", &project])
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run docker-compose");
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    compose(&["up", "-d"]);
    let label = format!("label=com.docker.compose.project={project}");
    let ids = || -> Vec<String> {
        docker(&["ps", "-aq", "--filter", &label])
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let ctrs = ids();
    assert_eq!(ctrs.len(), 2);
    let mut vols = Vec::new();
    for c in &ctrs {
        let t0 = Instant::now();
        while !docker_out(&["exec", c, "test", "-f", "/data/.ready"])
            .status
            .success()
        {
            assert!(t0.elapsed() < Duration::from_secs(30), "no data written");
            std::thread::sleep(Duration::from_millis(200));
        }
        vols.extend(anonymous_volumes(c));
    }
    assert_eq!(vols.len(), 2);
    compose(&["stop", "-t", "2"]);
    s.config(&config(&s.path("store"), ""));
    let cfg = s.path("drkit.toml").display().to_string();
    let spellings: Vec<Vec<&str>> = vec![
        vec![
            "docker-compose",
            "-p",
            &project,
            "rm",
            "-v",
            "-f",
            "svc1",
            "svc2",
        ],
        vec!["docker-compose", "-p", &project, "rm", "-fv", "svc2"],
        vec![
            "env",
            "-u",
            "HOME",
            "docker-compose",
            "-p",
            &project,
            "down",
            "-v",
        ],
        vec!["env", "-S", "docker-compose -p", &project, "down", "-v"],
        vec![
            "nice",
            "-n",
            "5",
            "timeout",
            "600",
            "docker-compose",
            "-p",
            &project,
            "down",
            "-v",
        ],
    ];
    for spelling in &spellings {
        let mut args = vec!["--config", &cfg, "guard", "--"];
        args.extend(spelling);
        let r = drkit_in(&s, &dir, &args);
        r.expect_code(3).expect_one_line_error("nothing was run");
        let shown = vols
            .iter()
            .filter(|v| r.stderr.contains(v.as_str()))
            .count();
        let want = if spelling.contains(&"svc2") && !spelling.contains(&"svc1") {
            1
        } else {
            2
        };
        assert_eq!(shown, want, "{spelling:?}: {}", r.stderr);
        assert_eq!(ids().len(), 2, "{spelling:?}: containers were removed");
        for v in &vols {
            assert!(volume_exists(v), "{spelling:?}: volume {v} was destroyed");
        }
    }
}

/// Verify applies the restore's entry policy: a backup whose archive holds an absolute
/// symlink (a live volume's, flagged at backup time; or one planted in the storage) fails
/// `drkit verify` (exit 4, naming the entry), and so the guard does not count it.
#[test]
fn verify_fails_what_restore_refuses_and_the_guard_follows() {
    use drkit_drivers::test_util::volume_tar::{archive, entry};
    use sha2::Digest;
    setup();
    let mut clean = Cleanup::default();
    let live = unique("abslink");
    let planted = unique("planted");
    let fresh = unique("fresh");
    clean
        .volumes
        .extend([live.clone(), planted.clone(), fresh.clone()]);
    docker(&["volume", "create", &live]);
    docker(&["volume", "create", &planted]);
    in_volume(&live, "echo data > /data/f; ln -s /etc/hostname /data/abs");
    in_volume(
        &planted,
        "echo precious > /data/p; dd if=/dev/urandom of=/data/r bs=1k count=16 2>/dev/null",
    );
    let s = Scratch::new();
    s.config(&config(
        &s.path("store"),
        &format!(
            "[job.live]\nsource = {{ type = \"docker-volume\", volume = \"{live}\" }}\nstorage = [\"local\"]\n\n\
             [job.planted]\nsource = {{ type = \"docker-volume\", volume = \"{planted}\" }}\nstorage = [\"local\"]\ncompression = \"none\"\n"
        ),
    ));

    // A live volume with an absolute symlink: backed up, flagged, not verified, not counted.
    let b = s.drkit(&["backup", "live"]);
    b.expect_code(0);
    assert!(
        b.stderr.contains("not restorable") && b.stderr.contains("\"./abs\""),
        "{}",
        b.stderr
    );
    let r = s.drkit(&["verify", "live"]);
    r.expect_code(4);
    assert!(
        r.stderr.contains("restore would refuse") && r.stderr.contains("\"./abs\""),
        "{}",
        r.stderr
    );
    let r = s.drkit(&["guard", "--", "docker", "volume", "rm", &live]);
    r.expect_code(3);
    assert!(r.stderr.contains("failed verification"), "{}", r.stderr);
    assert!(volume_exists(&live));

    // A good backup, then its archive replaced in the storage by one with an absolute
    // symlink, the manifest's checksums rewritten to match.
    s.drkit(&["backup", "planted"]).expect_code(0);
    s.drkit(&["verify", "planted"]).expect_code(0);
    let store = s.path("store");
    let files = drkit_tests::files_under(&store);
    let data = files
        .iter()
        .find(|f| f.contains("planted") && f.ends_with("data.tar"))
        .unwrap_or_else(|| panic!("no uncompressed archive in {files:?}"));
    let manifest = files
        .iter()
        .find(|f| f.contains("planted") && f.ends_with("manifest.json"))
        .expect("manifest");
    let evil = archive(&[
        entry("./", b'5', "", b""),
        entry("./p", b'0', "", b"precious\n"),
        entry("./etc", b'2', "/etc", b""),
    ]);
    std::fs::write(store.join(data), &evil).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&evil));
    let mpath = store.join(manifest);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    for (k, v) in [
        ("raw_size", serde_json::json!(evil.len())),
        ("stored_size", serde_json::json!(evil.len())),
        ("raw_sha256", serde_json::json!(sha)),
        ("stored_sha256", serde_json::json!(sha)),
    ] {
        m["data"][k] = v;
    }
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let r = s.drkit(&["verify", "planted"]);
    r.expect_code(4);
    assert!(
        r.stderr.contains("\"./etc\"") && r.stderr.contains("absolute path \"/etc\""),
        "{}",
        r.stderr
    );
    let r = s.drkit(&["guard", "--", "docker", "volume", "rm", &planted]);
    r.expect_code(3).expect_one_line_error("nothing was run");
    assert!(
        r.stderr.contains("failed verification") && r.stderr.contains("\"./etc\""),
        "{}",
        r.stderr
    );
    assert!(volume_exists(&planted));
    // The restore stops at the same place, before anything is created.
    s.drkit(&["restore", "planted", "--to", &fresh])
        .expect_code(4);
    assert!(
        !volume_exists(&fresh),
        "the refused restore created {fresh}"
    );
}
