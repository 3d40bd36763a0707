//! Job leases on S3 (docs/s3.md, *Leases*): the `drkit` binary against moto and s3s-fs, with
//! an HTTP fault proxy of the test's own in front of the server to make backups slow (the
//! archive's PUT is delayed; the lease requests are not).
//!
//! Both test servers honour conditional writes (`If-None-Match: *`, `If-Match`): `drkit
//! doctor` must say so for each, and the strict-exclusion tests run on both. The pure parts
//! (the lease document, its validation as hostile input, expiry and take-over decisions) are
//! unit tests in `crates/drivers/src/storage/s3/lease.rs`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use drkit_tests::fault_proxy::{Action, HttpFaultProxy, Rule};
use drkit_tests::storage::{moto, s3s, S3Server};
use drkit_tests::{Run, Scratch};
use rusqlite::Connection;

/// Whether each test server honours conditional writes (probed by hand with boto3 and by
/// `doctor_says_whether_leases_exclude_other_runs`): moto 5.2.1 and s3s-fs 0.14.1 both do.
fn honours_conditional_writes(server: &S3Server) -> bool {
    match server.name {
        "moto" | "s3s" => true,
        other => panic!("unknown test server {other}"),
    }
}

/// A job `app` (a small SQLite database) on an S3 bucket reached through a fault proxy.
struct Env {
    server: S3Server,
    bucket: String,
    proxy: HttpFaultProxy,
    s: Arc<Scratch>,
}

impl Env {
    /// `extra`: more lines of the storage table (lease_ttl...); `job_extra`: of the job.
    async fn new(server: S3Server, object_lock: bool, extra: &str, job_extra: &str) -> Env {
        let bucket = server.new_bucket(object_lock).await;
        let proxy = HttpFaultProxy::start(&server.endpoint);
        let s = Scratch::new();
        let db = s.path("app.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO t(v) VALUES ('one'), ('two'), ('three');",
        )
        .unwrap();
        let section = server.storage_toml(
            "offsite",
            proxy.endpoint(),
            &bucket,
            &format!("prefix = \"p\"\nmax_attempts = 2\n{extra}"),
        );
        s.config(&format!(
            "{section}\n[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"offsite\"]\n{job_extra}\n",
            db.display()
        ));
        Env {
            server,
            bucket,
            proxy,
            s: Arc::new(s),
        }
    }

    /// `drkit ARGS` as host `host`, not waited for; stdout and stderr piped.
    fn spawn(&self, host: &str, args: &[&str]) -> Child {
        let mut cmd: Command = self.s.command(args);
        cmd.env("DRKIT_HOST", host)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("start drkit")
    }

    /// `drkit ARGS` as host `host`, waited for off the runtime.
    async fn run(&self, host: &str, args: &[&str]) -> Run {
        let child = self.spawn(host, args);
        tokio::task::spawn_blocking(move || Run::from(child.wait_with_output().unwrap()))
            .await
            .unwrap()
    }

    /// Whether the lease object of job `app` exists now.
    async fn lease_exists(&self) -> bool {
        self.server
            .keys(&self.bucket)
            .await
            .contains(&"p/app/.drkit.lease".to_string())
    }

    /// The ids of the job's backups, as `drkit list --json` shows them (newest first).
    async fn listed(&self) -> Vec<String> {
        let r = self.run("lister", &["--json", "list", "app"]).await;
        r.expect_code(0);
        let doc = r.json();
        let rows = doc
            .as_array()
            .cloned()
            .or_else(|| doc["backups"].as_array().cloned());
        rows.unwrap_or_default()
            .iter()
            .filter_map(|b| b["id"].as_str().map(str::to_string))
            .collect()
    }
}

/// The times of one run's lease events (`--log-format json -v`): `(event, at)`.
fn lease_events(stderr: &str) -> Vec<(String, DateTime<Utc>)> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let event = v["event"].as_str()?.to_string();
            if !event.starts_with("lease.") {
                return None;
            }
            let at = v["at"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())?;
            Some((event, at.with_timezone(&Utc)))
        })
        .collect()
}

/// The one `[acquired, released]` interval of a successful run.
fn held_interval(r: &Run) -> (DateTime<Utc>, DateTime<Utc>) {
    let ev = lease_events(&r.stderr);
    let get = |name: &str| {
        let found: Vec<_> = ev.iter().filter(|(e, _)| e == name).collect();
        assert_eq!(found.len(), 1, "one {name} event wanted:\n{}", r.stderr);
        found[0].1
    };
    let (a, b) = (get("lease.acquired"), get("lease.released"));
    assert!(a <= b, "{a} {b}");
    (a, b)
}

/// The error line of a run: `error: ...` in text logs, the message of the ERROR object in
/// JSON logs.
fn error_line(r: &Run) -> String {
    r.stderr
        .lines()
        .find_map(|l| {
            if let Some(m) = l.strip_prefix("error: ") {
                return Some(m.to_string());
            }
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["level"] == "ERROR").then(|| v["message"].as_str().unwrap_or("").to_string())
        })
        .unwrap_or_else(|| panic!("no error line:\n{}", r.stderr))
}

/// The error line of a refused run names the holder: host, pid, since, expires.
#[track_caller]
fn assert_names_holder(r: &Run, host: &str, pid: Option<u32>) {
    r.expect_code(3);
    let line = error_line(r);
    assert!(
        line.contains("is being written by another drkit run"),
        "{line}"
    );
    assert!(line.contains(&format!("host {host}, pid ")), "{line}");
    if let Some(pid) = pid {
        assert!(line.contains(&format!("pid {pid}, since ")), "{line}");
    }
    assert!(
        line.contains(", since 20") && line.contains("lease expires 20"),
        "{line}"
    );
    assert!(line.contains("--wait"), "{line}");
}

async fn wait_for_lease(env: &Env, child: &mut Child) {
    let start = Instant::now();
    while !env.lease_exists().await {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the holder ended ({status}) before its lease was seen");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no lease after 30s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn doctor_case(server: S3Server) {
    let strict = honours_conditional_writes(&server);
    let env = Env::new(server, false, "", "").await;
    let r = env.run("alpha", &["doctor"]).await;
    let want = if strict {
        "job leases: the server honours conditional writes (If-None-Match, If-Match)"
    } else {
        "WARNING: job leases are ADVISORY: the server ignores conditional writes"
    };
    assert!(r.stdout.contains(want), "{}\n{}", r.stdout, r.stderr);
    // The probe object is gone.
    assert!(
        env.server
            .keys(&env.bucket)
            .await
            .iter()
            .all(|k| !k.contains("probe")),
        "{:?}",
        env.server.keys(&env.bucket).await
    );
    let b = env.run("alpha", &["backup", "app"]).await;
    b.expect_code(0);
    assert_eq!(
        b.stderr.contains("leases are advisory"),
        !strict,
        "the advisory warning, once per run, only where conditions are ignored:\n{}",
        b.stderr
    );
    assert!(
        !env.lease_exists().await,
        "the lease is given back at the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_whether_leases_exclude_other_runs_moto() {
    doctor_case(moto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_whether_leases_exclude_other_runs_s3s() {
    doctor_case(s3s()).await;
}

/// Two processes (two "hosts") back up one job on one bucket, started together, 20 times.
async fn race_case(server: S3Server) {
    assert!(honours_conditional_writes(&server));
    let env = Env::new(server, false, "", "").await;
    // A slower archive upload widens the window in which both runs are alive.
    env.proxy.add_rule(Rule::new(
        "PUT",
        "/data.",
        Action::Delay(Duration::from_millis(300)),
    ));
    let args = ["-v", "--log-format", "json", "backup", "app"];
    let mut held = Vec::new();
    let mut ok_ids = Vec::new();
    let mut refused = 0;
    let mut races_lost = 0;
    for round in 0..20 {
        let a = env.spawn("host-a", &args);
        let b = env.spawn("host-b", &args);
        let (pa, pb) = (a.id(), b.id());
        let runs = tokio::task::spawn_blocking(move || {
            [a, b].map(|c| Run::from(c.wait_with_output().unwrap()))
        })
        .await
        .unwrap();
        let mut oks = 0;
        for (i, r) in runs.iter().enumerate() {
            match r.code {
                0 => {
                    oks += 1;
                    held.push(held_interval(r));
                    let id = r
                        .stderr
                        .lines()
                        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                        .find(|v| v["event"] == "backup.start")
                        .and_then(|v| v["backup_id"].as_str().map(str::to_string))
                        .unwrap_or_else(|| panic!("no backup id:\n{}", r.stderr));
                    ok_ids.push(id);
                }
                3 => {
                    refused += 1;
                    races_lost += usize::from(r.stderr.contains("\"lease.race_lost\""));
                    let (other, pid) = if i == 0 {
                        ("host-b", pb)
                    } else {
                        ("host-a", pa)
                    };
                    assert_names_holder(r, other, Some(pid));
                    assert!(
                        !lease_events(&r.stderr)
                            .iter()
                            .any(|(e, _)| e == "lease.acquired"),
                        "a refused run took no lease:\n{}",
                        r.stderr
                    );
                }
                _ => panic!("round {round}: run {i} exited {}:\n{}", r.code, r.stderr),
            }
        }
        assert!(oks >= 1, "round {round}: both runs refused");
    }
    // Never two holders at once.
    held.sort();
    for w in held.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "two runs held the job at once: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    // Every backup that said it succeeded is listed and verifies; nothing else is there.
    let mut listed = env.listed().await;
    listed.sort();
    ok_ids.sort();
    assert_eq!(listed, ok_ids, "{refused} runs were refused");
    env.run("lister", &["verify", "app", "--all"])
        .await
        .expect_code(0);
    assert!(!env.lease_exists().await);
    eprintln!(
        "{}: {} backups, {refused} refused in 20 rounds ({races_lost} after both conditional creates succeeded and the read-back showed the other's lease)",
        env.server.name,
        ok_ids.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_never_write_the_job_at_once_moto() {
    race_case(moto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_never_write_the_job_at_once_s3s() {
    race_case(s3s()).await;
}

/// A holder killed mid-backup: its lease refuses others until it expires, then is taken
/// over with a warning naming the old holder.
async fn killed_case(server: S3Server) {
    assert!(honours_conditional_writes(&server));
    let env = Env::new(
        server,
        false,
        "lease_ttl = \"5s\"\nlease_renew = \"1s\"",
        "",
    )
    .await;
    let slow = env.proxy.add_rule(Rule::new(
        "PUT",
        "/data.",
        Action::Delay(Duration::from_secs(120)),
    ));
    let mut holder = env.spawn("alpha", &["backup", "app"]);
    let pid = holder.id();
    wait_for_lease(&env, &mut holder).await;
    // Let a renewal or two happen, then kill it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    holder.kill().unwrap(); // SIGKILL
    let killed_at = Instant::now();
    holder.wait().unwrap();
    env.proxy.remove_rule(slow);
    assert!(env.lease_exists().await, "a killed run leaves its lease");

    let refused = env.run("beta", &["backup", "app"]).await;
    assert!(
        killed_at.elapsed() < Duration::from_secs(4),
        "the check came too late to see a live lease"
    );
    assert_names_holder(&refused, "alpha", Some(pid));
    // The fleet view names the holder of the live lease.
    let fleet = env.run("lister", &["--json", "status", "--all-jobs"]).await;
    let rows = fleet.json();
    let app = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["job"] == "app")
        .unwrap_or_else(|| panic!("no row of app: {rows}"));
    assert!(
        app["lease"]
            .as_str()
            .is_some_and(|h| h.contains(&format!("host alpha, pid {pid}, since "))),
        "{rows}"
    );

    let r = env
        .run("beta", &["-v", "--wait", "30s", "backup", "app"])
        .await;
    r.expect_code(0);
    let waited = killed_at.elapsed();
    assert!(
        r.stderr
            .contains("took over the expired lease of another drkit run")
            && r.stderr.contains(&format!("host alpha, pid {pid}, since ")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("waiting up to 30s"), "{}", r.stderr);
    // Not before the lease expired: at least lease_ttl after its last renewal (which was at
    // most lease_renew before the kill).
    assert!(
        waited >= Duration::from_secs(4),
        "taken over after {waited:?}, before the lease expired"
    );
    assert_eq!(env.listed().await.len(), 1);
    env.run("lister", &["verify", "app"]).await.expect_code(0);
    assert!(!env.lease_exists().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holders_lease_is_taken_over_after_it_expires_moto() {
    killed_case(moto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holders_lease_is_taken_over_after_it_expires_s3s() {
    killed_case(s3s()).await;
}

/// `prune --wait` on host beta waits for a backup running on host alpha, then prunes.
async fn prune_case(server: S3Server) {
    assert!(honours_conditional_writes(&server));
    let env = Env::new(
        server,
        false,
        "lease_ttl = \"4s\"\nlease_renew = \"1s\"",
        "keep = { last = 1 }",
    )
    .await;
    env.run("alpha", &["backup", "app"]).await.expect_code(0);
    let first = env.listed().await;
    assert_eq!(first.len(), 1);
    // A backup that takes about 6 s (longer than lease_ttl: renewals keep it).
    env.proxy.add_rule(Rule::new(
        "PUT",
        "/data.",
        Action::Delay(Duration::from_secs(6)),
    ));
    let mut backup = env.spawn("alpha", &["-v", "--log-format", "json", "backup", "app"]);
    wait_for_lease(&env, &mut backup).await;

    let refused = env.run("beta", &["prune", "app"]).await;
    assert_names_holder(&refused, "alpha", Some(backup.id()));

    let prune = env
        .run(
            "beta",
            &[
                "-v",
                "--log-format",
                "json",
                "--wait",
                "60s",
                "prune",
                "app",
            ],
        )
        .await;
    let backup = tokio::task::spawn_blocking(move || Run::from(backup.wait_with_output().unwrap()))
        .await
        .unwrap();
    backup.expect_code(0);
    prune.expect_code(0);
    assert!(
        prune.stderr.contains("waiting up to 60s") && prune.stderr.contains("host alpha"),
        "{}",
        prune.stderr
    );
    let (_, backup_released) = held_interval(&backup);
    let (prune_took, _) = held_interval(&prune);
    assert!(
        prune_took >= backup_released,
        "prune took the lease at {prune_took}, the backup gave it back at {backup_released}"
    );
    // The prune saw the new backup: the old one is gone, the new one kept.
    let now = env.listed().await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now, first);
    env.run("lister", &["verify", "app"]).await.expect_code(0);
    assert!(!env.lease_exists().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_waits_for_a_backup_on_another_host_moto() {
    prune_case(moto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_waits_for_a_backup_on_another_host_s3s() {
    prune_case(s3s()).await;
}

/// A lease object that is not a drkit lease (hostile or garbled): refused with a clear line
/// while it is young, taken over once `lease_ttl` after its write has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_lease_blocks_only_until_its_ttl() {
    let env = Env::new(
        s3s(),
        false,
        "lease_ttl = \"10s\"\nlease_renew = \"2s\"",
        "",
    )
    .await;
    let garbage: Vec<u8> = std::iter::repeat_n(b'\x1b', 100_000).collect();
    env.server
        .admin()
        .put_object()
        .bucket(&env.bucket)
        .key("p/app/.drkit.lease")
        .body(garbage.into())
        .send()
        .await
        .unwrap();
    let r = env.run("alpha", &["backup", "app"]).await;
    r.expect_code(3);
    r.expect_one_line_error("an unreadable lease (it is larger than 4096 bytes)");
    let r = env.run("alpha", &["--wait", "40s", "backup", "app"]).await;
    r.expect_code(0);
    assert!(
        r.stderr.contains("took over the expired lease"),
        "{}",
        r.stderr
    );
    assert_eq!(env.listed().await.len(), 1);
    assert!(!env.lease_exists().await);
}

/// On a bucket with object lock and a default retention (every new version is locked), a
/// lease is still replaced (a new version per write) and given back (a delete marker), and
/// the next run takes it again. drkit's own `object_lock` retention is not put on leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_work_on_an_object_lock_bucket() {
    let env = Env::new(
        moto(),
        true,
        "object_lock = { mode = \"governance\", days = 1 }\nlease_ttl = \"3s\"\nlease_renew = \"1s\"",
        "",
    )
    .await;
    use aws_sdk_s3::types::{
        DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode,
        ObjectLockRule,
    };
    let admin = env.server.admin();
    admin
        .put_object_lock_configuration()
        .bucket(&env.bucket)
        .object_lock_configuration(
            ObjectLockConfiguration::builder()
                .object_lock_enabled(ObjectLockEnabled::Enabled)
                .rule(
                    ObjectLockRule::builder()
                        .default_retention(
                            DefaultRetention::builder()
                                .mode(ObjectLockRetentionMode::Governance)
                                .days(1)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    // A slow backup (renewals replace the locked lease version), then a second one.
    let slow = env.proxy.add_rule(Rule::new(
        "PUT",
        "/data.",
        Action::Delay(Duration::from_secs(3)),
    ));
    env.run("alpha", &["backup", "app"]).await.expect_code(0);
    env.proxy.remove_rule(slow);
    assert!(
        !env.lease_exists().await,
        "given back: hidden by a delete marker"
    );
    env.run("beta", &["backup", "app"]).await.expect_code(0);
    assert_eq!(env.listed().await.len(), 2);
    let versions = admin
        .list_object_versions()
        .bucket(&env.bucket)
        .prefix("p/app/.drkit.lease")
        .send()
        .await
        .unwrap();
    let kept = versions.versions().len();
    let markers = versions.delete_markers().len();
    assert!(kept >= 3, "creations and renewals are versions: {kept}");
    assert_eq!(markers, 2, "one delete marker per release");
    eprintln!("object lock bucket: {kept} lease versions kept (locked by the default retention), {markers} delete markers");
}
