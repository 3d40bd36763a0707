//! End to end: `drkit init` on a compose project brought up with docker-compose 1.29 (a
//! PostgreSQL service from the locally built image, an app container writing a named volume,
//! a second volume written by a one-shot service), then `drkit backup` with the generated
//! file, `drkit guard -- docker-compose down -v` (refused before the backup, allowed after it,
//! with the dump accepted for the database's data volume), and a restore of every job.

use std::process::Command;
use std::time::{Duration, Instant};

use drkit_tests::docker::{
    docker, docker_out, ensure_image, require_docker, unique, Cleanup, IMAGE,
};
use drkit_tests::{Run, Scratch};

const PASSWORD: &str = "init-test-pw";

/// A PostgreSQL image name `init` recognises (the test image is Debian's PostgreSQL 15 with
/// the official image's interface, tagged as a `postgres` repository).
fn pg_image() -> String {
    let built = drkit_tests::required_env("DRKIT_TEST_PG_IMAGE");
    let tag = "postgres:15-drkit-test";
    docker(&["tag", &built, tag]);
    tag.to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Stack {
    dir: std::path::PathBuf,
    project: String,
    db: String,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker-compose")
            .args(["-p", &self.project])
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("run docker-compose")
    }

    #[track_caller]
    fn up(&self) {
        let out = self.compose(&["up", "-d"]);
        assert!(
            out.status.success(),
            "up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = docker_out(&[
                "exec",
                &self.db,
                "pg_isready",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ]);
            if ready.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                docker(&["logs", &self.db])
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn psql(&self, db: &str, sql: &str) -> String {
        let out = docker_out(&[
            "exec",
            "-e",
            &format!("PGPASSWORD={PASSWORD}"),
            &self.db,
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            db,
            "-XAtqc",
            sql,
        ]);
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

#[test]
fn init_protects_a_compose_deployment_end_to_end() {
    require_docker();
    ensure_image();
    let mut clean = Cleanup::default();
    let s = Scratch::new();
    let project = unique("init");
    clean.projects.push(project.clone());
    let dir = s.path("stack");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let image = pg_image();
    std::fs::write(
        dir.join("docker-compose.yml"),
        format!(
            r#"version: "2.4"
services:
  db:
    image: {image}
    environment:
      POSTGRES_PASSWORD: {PASSWORD}
    ports: ["127.0.0.1:{port}:5432"]
    volumes: ["pgdata:/var/lib/postgresql/data"]
  app:
    image: {IMAGE}
    command: ["sh", "-c", "echo hello > /data/hello.txt; trap 'exit 0' TERM; while true; do sleep 1; done"]
    volumes: ["uploads:/data"]
  seed:
    image: {IMAGE}
    command: ["sh", "-c", "echo cached > /cache/c.txt"]
    volumes: ["cache:/cache"]
volumes:
  pgdata: {{}}
  uploads: {{}}
  cache: {{}}
"#
        ),
    )
    .unwrap();
    // docker-compose 1 names containers PROJECT_SERVICE_1.
    let stack = Stack {
        dir: dir.clone(),
        project: project.clone(),
        db: format!("{project}_db_1"),
    };
    stack.up();
    stack.psql("postgres", "CREATE DATABASE shop");
    stack.psql("shop", "CREATE TABLE bookings(n text); INSERT INTO bookings SELECT 'NL-' || i FROM generate_series(1, 500) i");
    docker(&[
        "exec",
        &format!("{project}_app_1"),
        "sh",
        "-c",
        "echo precious > /data/precious.txt",
    ]);

    // init: a dry run prints, a run writes, a second run refuses to overwrite.
    let config = s.path("drkit.toml");
    let store = s.path("backups");
    let init = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "init",
            "--project",
            &project,
            "--storage-path",
            store.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Run::from(
            Command::new(drkit_tests::drkit_bin())
                .args(&args)
                .output()
                .unwrap(),
        )
    };
    let dry = init(&["--dry-run"]);
    dry.expect_code(0);
    assert!(!config.exists());
    init(&[]).expect_code(0);
    let text = std::fs::read_to_string(&config).unwrap();
    assert_eq!(
        text,
        dry.stdout.trim_end_matches('\n').to_string() + "\n",
        "the dry run shows the file"
    );
    init(&[]).expect_code(2).expect_one_line_error("--force");
    let p = project.to_ascii_lowercase();
    for job in [
        format!("{p}-db"),
        format!("{p}-uploads"),
        format!("{p}-cache"),
    ] {
        assert!(
            text.contains(&format!("[job.{job}]")),
            "{job} missing:\n{text}"
        );
    }
    assert!(
        !text.contains(&format!("[job.{p}-pgdata]")),
        "the data volume is copied:\n{text}"
    );
    assert!(
        text.contains(&format!("covers = [\"{project}_pgdata\"]")),
        "{text}"
    );
    assert!(
        !text.contains(PASSWORD),
        "a credential was written:\n{text}"
    );
    // The app writes uploads: it is stopped for the copy; cache's writer has exited.
    let uploads = &text[text.find(&format!("[job.{p}-uploads]")).unwrap()..];
    assert!(
        uploads
            .lines()
            .nth(1)
            .unwrap()
            .contains("stop_containers = true"),
        "{text}"
    );
    let cache = &text[text.find(&format!("[job.{p}-cache]")).unwrap()..];
    assert!(
        !cache.lines().nth(1).unwrap().contains("stop_containers"),
        "{text}"
    );

    let var = project.to_ascii_uppercase();
    std::fs::write(
        s.path("secrets.env"),
        format!("{var}_DB_USER=postgres\n{var}_DB_PASSWORD={PASSWORD}\n"),
    )
    .unwrap();
    let env_file = s.path("secrets.env");
    let drkit = |args: &[&str]| {
        let out = Command::new(drkit_tests::drkit_bin())
            .arg("--config")
            .arg(&config)
            .arg("--env-file")
            .arg(&env_file)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        Run::from(out)
    };
    let down = [
        "guard",
        "--",
        "docker-compose",
        "-p",
        project.as_str(),
        "down",
        "-v",
    ];
    // Before any backup the guard refuses, and nothing is destroyed.
    drkit(&down).expect_code(3);
    assert!(
        docker_out(&["volume", "inspect", &format!("{project}_uploads")])
            .status
            .success()
    );

    drkit(&["backup"]).expect_code(0);
    let guard = drkit(&down);
    guard.expect_code(0);
    assert!(
        guard
            .stderr
            .contains("verified dump of the server whose data it holds"),
        "{}",
        guard.stderr
    );
    for v in ["pgdata", "uploads", "cache"] {
        assert!(
            !docker_out(&["volume", "inspect", &format!("{project}_{v}")])
                .status
                .success(),
            "{v} survived down -v"
        );
    }

    // Everything comes back: the volumes first (created with their compose labels), then a
    // fresh server that the dump is restored into.
    drkit(&["restore", &format!("{p}-uploads")]).expect_code(0);
    drkit(&["restore", &format!("{p}-cache")]).expect_code(0);
    stack.up();
    drkit(&["restore", &format!("{p}-db")]).expect_code(0);
    assert_eq!(
        stack.psql("shop", "SELECT count(*) FROM bookings WHERE n LIKE 'NL-%'"),
        "500"
    );
    let precious = docker(&[
        "exec",
        &format!("{project}_app_1"),
        "cat",
        "/data/precious.txt",
    ]);
    assert_eq!(precious.trim(), "precious");
    let cached = docker(&[
        "run",
        "--rm",
        "-v",
        &format!("{project}_cache:/c"),
        IMAGE,
        "cat",
        "/c/c.txt",
    ]);
    assert_eq!(cached.trim(), "cached");
    let out = stack.compose(&["down", "-v"]);
    assert!(out.status.success());
}
