//! The container deployments of docs/deploy.md, run for real: `examples/deploy/Dockerfile`
//! built by the engine as a user builds it (the binary under test at `target/release/drkit`
//! of the context, the repository's `.dockerignore`), a SQLite backup inside it checked on the
//! host; and `examples/deploy/docker-compose.sidecar.yml` brought up with docker-compose: the
//! daemon's scheduled backup of the app's volume lands in a host folder, the guard refuses
//! `down -v` before it and lets it through after it, and the volume comes back by restore.
//!
//! No registry here: the Dockerfile's `FROM` is the Debian bookworm image scripts/servers.sh
//! builds with debootstrap (DRKIT_TEST_BASE_IMAGE), given as its `BASE_IMAGE` build argument.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use drkit_tests::docker::{
    docker, docker_out, ensure_image, in_volume, require_docker, running, unique, volume_exists,
    Cleanup, IMAGE,
};
use drkit_tests::{drkit_bin, files_under, required_env, Run};

/// The image's user (examples/deploy/Dockerfile).
const UID: u32 = 10001;
/// The tag of the image built from examples/deploy/Dockerfile.
const TAG: &str = "drkit-test-deploy:dev";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy(file: &str) -> PathBuf {
    repo().join("examples/deploy").join(file)
}

#[track_caller]
fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Build examples/deploy/Dockerfile once per test process, serialized across processes (the
/// engine's build cache makes the later builds of one run cheap). The context is what the
/// Dockerfile's header says to send: the repository root's `.dockerignore` and the binary at
/// `target/release/drkit` (here the binary under test, whatever its profile).
fn drkit_image() -> &'static str {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        require_docker();
        let base = required_env("DRKIT_TEST_BASE_IMAGE");
        let lock = std::fs::File::create(std::env::temp_dir().join("drkit-test-deploy-image.lock"))
            .expect("create the image lock file");
        lock.lock().expect("lock the image lock file");
        let ctx = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(ctx.path().join("target/release")).unwrap();
        std::fs::copy(drkit_bin(), ctx.path().join("target/release/drkit")).unwrap();
        std::fs::copy(
            repo().join(".dockerignore"),
            ctx.path().join(".dockerignore"),
        )
        .unwrap();
        // A stray file beside the binary must stay out of the image.
        std::fs::write(ctx.path().join("target/release/not-sent"), "x").unwrap();
        let old = image_id(TAG);
        let out = Command::new("docker")
            .arg("build")
            .arg("-f")
            .arg(deploy("Dockerfile"))
            .args(["--build-arg", &format!("BASE_IMAGE={base}"), "-t", TAG])
            .arg(ctx.path())
            // The classic builder: it uses the local base image and never asks a registry.
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run docker build");
        check("docker build -f examples/deploy/Dockerfile", &out);
        // The image of an earlier binary, now untagged: removed (it is ours; in use, it stays).
        if let Some(old) = old.filter(|o| Some(o) != image_id(TAG).as_ref()) {
            let _ = docker_out(&["rmi", &old]);
        }
    });
    TAG
}

fn image_id(tag: &str) -> Option<String> {
    let out = docker_out(&["image", "inspect", "-f", "{{.Id}}", tag]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn run_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn chown_to_image_user(path: &Path) {
    std::os::unix::fs::chown(path, Some(UID), Some(UID)).unwrap_or_else(|e| {
        panic!(
            "chown {} to {UID} (the tests run as root): {e}",
            path.display()
        )
    });
}

/// The one backup of `job` under `store`: its manifest path and data file name.
fn only_backup(store: &Path, job: &str) -> (PathBuf, String) {
    let files = files_under(store);
    let manifests: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with(&format!("{job}/")) && f.ends_with("/manifest.json"))
        .collect();
    assert_eq!(
        manifests.len(),
        1,
        "one backup of {job} expected: {files:?}"
    );
    let folder = manifests[0].trim_end_matches("manifest.json");
    let data: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with(folder) && f.contains("/data."))
        .collect();
    assert_eq!(data.len(), 1, "one archive beside the manifest: {files:?}");
    (
        store.join(manifests[0]),
        data[0].trim_start_matches(folder).to_string(),
    )
}

#[test]
fn image_builds_runs_as_its_user_and_backs_up_sqlite_that_the_host_verifies() {
    let image = drkit_image();

    // What the Dockerfile promises: a non-root user, the volumes, the entrypoint, the config.
    let inspect = docker(&["image", "inspect", "-f", "{{json .Config}}", image]);
    let cfg: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(cfg["User"], format!("{UID}:{UID}"), "{cfg}");
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["drkit"]), "{cfg}");
    assert_eq!(cfg["Cmd"], serde_json::json!(["daemon"]), "{cfg}");
    let volumes: Vec<&String> = cfg["Volumes"].as_object().unwrap().keys().collect();
    assert_eq!(volumes, ["/backups"], "{cfg}");
    assert!(
        cfg["Env"]
            .as_array()
            .unwrap()
            .contains(&"DRKIT_CONFIG=/etc/drkit/drkit.toml".into()),
        "{cfg}"
    );
    let files = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "ls",
        image,
        "/usr/local/bin",
    ]);
    assert_eq!(
        files.trim(),
        "drkit",
        "only the binary came from the context"
    );

    // The binary is the one under test; the PostgreSQL client is there for postgres sources.
    let host = Command::new(drkit_bin()).arg("--version").output().unwrap();
    check("drkit --version", &host);
    let version = String::from_utf8_lossy(&host.stdout).trim().to_string();
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let inside = docker(&["run", "--rm", "--network", "none", image, "--version"]);
    assert_eq!(inside.trim(), version);
    let pg_dump = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "pg_dump",
        image,
        "--version",
    ]);
    assert!(pg_dump.starts_with("pg_dump (PostgreSQL) 15."), "{pg_dump}");

    // The default command is the daemon (its lines start with their time); with no config
    // mounted it is a config error (exit 2) naming the path.
    let r = Run::from(docker_out(&["run", "--rm", "--network", "none", image]));
    r.expect_code(2);
    let errors: Vec<&str> = r.stderr.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(
        errors[0].contains("error: config file /etc/drkit/drkit.toml not found"),
        "{}",
        r.stderr
    );

    // A SQLite database in a host folder mounted at /data, a local storage at /backups, the
    // config mounted at its default path: `backup` in a container.
    let dir = tempfile::tempdir().unwrap();
    let (data, store, conf) = (
        dir.path().join("data"),
        dir.path().join("backups"),
        dir.path().join("conf"),
    );
    for d in [&data, &store, &conf] {
        std::fs::create_dir_all(d).unwrap();
    }
    {
        let c = rusqlite::Connection::open(data.join("app.db")).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE orders(id INTEGER PRIMARY KEY, v BLOB);
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 300)
             INSERT INTO orders(v) SELECT randomblob(100) FROM c;",
        )
        .unwrap();
    }
    for p in [&data, &data.join("app.db"), &store] {
        chown_to_image_user(p);
    }
    let config = "[storage.local]\ntype = \"local\"\npath = \"/backups\"\n\n\
                  [job.app]\nsource = { type = \"sqlite\", path = \"/data/app.db\" }\nstorage = [\"local\"]\n";
    std::fs::write(conf.join("drkit.toml"), config).unwrap();
    let mount = |host: &Path, at: &str| format!("{}:{at}", host.display());
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--hostname",
            "drkit-in-a-container",
        ])
        .args(["-v", &mount(&data, "/data")])
        .args(["-v", &mount(&store, "/backups")])
        .args([
            "-v",
            &mount(&conf.join("drkit.toml"), "/etc/drkit/drkit.toml:ro"),
        ])
        .args([image, "--json", "backup"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    check("drkit backup in the container", &out);
    let report = run_json(&out);
    assert_eq!(report[0]["ok"], true, "{report}");

    // On the host: the manifest and the archive, written by the image's user, verify.
    let (manifest, data_file) = only_backup(&store, "app");
    assert_eq!(data_file, "data.sqlite.zst");
    assert_eq!(
        std::fs::metadata(&manifest).unwrap().uid(),
        UID,
        "not run as its user"
    );
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(m["host"], "drkit-in-a-container", "{m}");
    assert_eq!(m["job"], "app");
    let host_config = dir.path().join("host.toml");
    std::fs::write(
        &host_config,
        config.replace("/backups", &store.display().to_string()),
    )
    .unwrap();
    let verify = Command::new(drkit_bin())
        .arg("--config")
        .arg(&host_config)
        .args(["--json", "verify", "app"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    check("drkit verify on the host", &verify);
    let v = run_json(&verify);
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v[0]["ok"], true, "{v}");
    assert_eq!(v[0]["id"], m["id"], "{v}");
}

/// The environment of the sidecar's compose file and config, for compose and the host's drkit.
struct Sidecar {
    project: String,
    file: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Sidecar {
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("DRKIT_USER")
            .stdin(Stdio::null());
        c
    }

    #[track_caller]
    fn compose(&self, args: &[&str]) -> Output {
        let out = self
            .command(Path::new("docker-compose"))
            .args(["-p", &self.project, "-f"])
            .arg(&self.file)
            .args(args)
            .output()
            .expect("run docker-compose");
        check(&format!("docker-compose {}", args.join(" ")), &out);
        out
    }

    /// `docker-compose -p P -f F down -v` through the guard as `drkit guard --install` puts it
    /// in front of docker-compose in a shell.
    fn guarded_down(&self) -> Run {
        let script = format!(
            "eval \"$('{}' guard --install)\" && docker-compose -p '{}' -f '{}' down -v",
            drkit_bin().display(),
            self.project,
            self.file.display()
        );
        Run::from(
            self.command(Path::new("bash"))
                .args(["-c", &script])
                .output()
                .expect("run bash"),
        )
    }

    fn logs(&self) -> String {
        let out = self
            .command(Path::new("docker-compose"))
            .args(["-p", &self.project, "-f"])
            .arg(&self.file)
            .args(["logs", "--no-color", "drkit"])
            .output()
            .expect("run docker-compose logs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn compose_sidecar_backs_up_the_volume_and_the_guard_lets_down_v_through_only_after() {
    ensure_image();
    let image = drkit_image();
    let project = unique("sidecar");
    let volume = format!("{project}_appdata");
    let mut clean = Cleanup::default();
    clean.projects.push(project.clone());
    clean.volumes.push(volume.clone()); // also when a helper of the daemon still holds it

    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("backups");
    std::fs::create_dir(&store).unwrap();
    chown_to_image_user(&store);
    let config = dir.path().join("drkit.toml");
    let docker_gid = std::fs::metadata("/var/run/docker.sock")
        .expect("the Docker socket at /var/run/docker.sock")
        .gid();
    let sidecar = Sidecar {
        project: project.clone(),
        file: deploy("docker-compose.sidecar.yml"),
        env: vec![
            ("COMPOSE_PROJECT_NAME", project.clone()),
            ("DOCKER_GID", docker_gid.to_string()),
            ("DRKIT_BACKUPS", store.display().to_string()),
            ("DRKIT_IMAGE", image.to_string()),
            ("APP_IMAGE", IMAGE.to_string()),
            ("DRKIT_SIDECAR_CONFIG", config.display().to_string()),
            ("DRKIT_CONFIG", config.display().to_string()),
        ],
    };

    // The documented env file names every variable the compose file requires.
    let out = Command::new("docker-compose")
        .arg("--env-file")
        .arg(deploy("sidecar.env"))
        .arg("-f")
        .arg(&sidecar.file)
        .args(["config", "-q"])
        .env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("DOCKER_GID")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    check("docker-compose --env-file sidecar.env config", &out);

    // The app alone first: it writes to its volume, and with no backup the guard refuses.
    sidecar.compose(&["up", "-d", "app"]);
    let t0 = Instant::now();
    while in_volume(&volume, "cat /data/app.log 2>/dev/null || true").trim() != "started" {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the app never wrote its file"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let example = std::fs::read_to_string(deploy("drkit.sidecar.toml")).unwrap();
    std::fs::write(&config, &example).unwrap(); // the guard reads it as it is
    let r = sidecar.guarded_down();
    r.expect_code(3).expect_one_line_error("nothing was run");
    assert!(
        r.stderr.contains("REFUSED") && r.stderr.contains(&volume),
        "{}",
        r.stderr
    );
    assert!(
        volume_exists(&volume),
        "the refused down -v removed the volume"
    );

    // The daemon beside it, with the example's config but a schedule every 2 seconds.
    let with_schedule = |schedule: &str| {
        let text = example.replace(
            "schedule = \"0 * * * *\"",
            &format!("schedule = \"{schedule}\""),
        );
        assert_ne!(
            text, example,
            "the example's schedule line changed: update this test"
        );
        text
    };
    std::fs::write(&config, with_schedule("*/2 * * * * *")).unwrap();
    sidecar.compose(&["up", "-d"]);
    let t0 = Instant::now();
    while !files_under(&store)
        .iter()
        .any(|f| f.ends_with("/manifest.json"))
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no backup from the daemon after {:?}; its log:\n{}",
            t0.elapsed(),
            sidecar.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Then quiet, so that no backup runs while down -v stops it: the config edited in place
    // and reloaded with SIGHUP, as docs/deploy.md says (the daemon takes it between backups).
    std::fs::write(&config, with_schedule("0 0 1 1 *")).unwrap();
    sidecar.compose(&["kill", "-s", "HUP", "drkit"]);
    let t0 = Instant::now();
    while !sidecar.logs().contains("daemon: SIGHUP: reloaded") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the daemon did not reload its config; its log:\n{}",
            sidecar.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // The backups are in the host folder, written by the image's user, with the app stopped
    // for each copy; the host's drkit verifies the newest with the same config file.
    let manifests: Vec<String> = files_under(&store)
        .into_iter()
        .filter(|f| f.starts_with("appdata/") && f.ends_with("/manifest.json"))
        .collect();
    let newest = store.join(manifests.last().expect("a manifest"));
    let folder = newest.parent().unwrap();
    assert!(
        folder.join("data.tar.zst").is_file(),
        "{:?}",
        files_under(&store)
    );
    assert_eq!(std::fs::metadata(&newest).unwrap().uid(), UID);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&newest).unwrap()).unwrap();
    assert_eq!(m["source"]["project"], project.as_str(), "{m}");
    assert_eq!(m["stats"]["files"], 1, "{m}");
    assert_eq!(
        m["source"]["stopped_containers"].as_array().map(Vec::len),
        Some(1),
        "{m}"
    );
    let verify = sidecar
        .command(&drkit_bin())
        .args(["--json", "verify", "appdata"])
        .output()
        .unwrap();
    check("drkit verify on the host", &verify);
    let v = run_json(&verify);
    assert_eq!(
        (v[0]["ok"].clone(), v[0]["id"].clone()),
        (true.into(), m["id"].clone()),
        "{v}"
    );
    let app = format!("{project}_app_1");
    let t0 = Instant::now();
    while !running(&app) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the daemon did not restart the app"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs = sidecar.logs();
    assert!(logs.contains("restarted container"), "{logs}");

    // Now the guard lets down -v through: the volume and the containers are gone, the
    // backups (a host folder) stay.
    let r = sidecar.guarded_down();
    r.expect_code(0);
    assert!(
        r.stderr.contains("verified backup newer than"),
        "{}",
        r.stderr
    );
    // The app's volume only: the image declares no /data volume, so none is anonymous.
    let rows: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("ok: verified"))
        .collect();
    assert!(
        rows.len() == 1 && rows[0].starts_with(&volume),
        "{}",
        r.stderr
    );
    assert!(
        !volume_exists(&volume),
        "down -v did not run:\n{}",
        r.stderr
    );
    let label = format!("label=com.docker.compose.project={project}");
    assert_eq!(docker(&["ps", "-aq", "--filter", &label]).trim(), "");

    // And the host's drkit brings the volume back from the sidecar's backup.
    let restore = sidecar
        .command(&drkit_bin())
        .args(["restore", "appdata"])
        .output()
        .unwrap();
    check("drkit restore appdata", &restore);
    // One line per start of the app: the first, and one after each earlier backup.
    let log = in_volume(&volume, "cat /data/app.log");
    assert!(
        !log.is_empty() && log.lines().all(|l| l == "started"),
        "{log:?}"
    );
}
