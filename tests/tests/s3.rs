//! End to end on S3: the `drkit` binary and the pipeline against moto (SigV4 checked) and
//! s3s-fs on loopback. Object lock, a fault-injecting TCP proxy of the test's own between
//! drkit and the server (cut uploads and downloads), the error cases a user meets (wrong
//! secret, unknown bucket, unreachable endpoint, a bucket without object lock), and a job
//! with several storages.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use drkit_core::pipeline::{self, BackupOptions, Target};
use drkit_core::{Compression, ErrorKind, RestoreOptions, Storage};
use drkit_drivers::storage::local::LocalStorage;
use drkit_tests::storage::{moto, s3s, Fault, FaultProxy, PatternSource, S3Server};
use drkit_tests::{files_under, Run, Scratch};
use rusqlite::Connection;

const MIB: u64 = 1024 * 1024;
/// Small parts so that a few MiB already make a multipart upload; few attempts so that the
/// failure cases fail fast.
const SMALL_PARTS: &str = "part_size = \"5MiB\"\nupload_concurrency = 2";

/// A SQLite database of about `mib` MiB of random (incompressible) bytes.
fn make_db(path: &std::path::Path, mib: u64) {
    let c = Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
        .unwrap();
    c.execute(
        &format!("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < {}) INSERT INTO t(v) SELECT randomblob(65536) FROM c", mib * 16),
        [],
    )
    .unwrap();
}

fn rows(path: &std::path::Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

/// A scratch folder with a SQLite database of `mib` MiB and a config whose job `app` writes
/// to `storages` (defined in `sections`).
fn scratch(mib: u64, storages: &str, sections: &str) -> Scratch {
    let s = Scratch::new();
    make_db(&s.path("app.db"), mib);
    s.config(&format!(
        "{sections}\n[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [{storages}]\n",
        s.path("app.db").display()
    ));
    s
}

/// Run drkit without blocking the runtime (the proxy of a test lives on it).
async fn drkit(s: &Arc<Scratch>, args: &[&str]) -> Run {
    let s = s.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s.drkit(&args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_backup_list_verify_restore_through_s3() {
    let server = moto();
    let bucket = server.new_bucket(false).await;
    let section = server.storage_toml(
        "offsite",
        &server.endpoint,
        &bucket,
        &format!("prefix = \"prod\"\n{SMALL_PARTS}"),
    );
    let s = Arc::new(scratch(12, "\"offsite\"", &section));

    drkit(&s, &["backup"]).await.expect_code(0);
    let keys = server.keys(&bucket).await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("prod/app/")), "{keys:?}");
    assert!(keys.iter().any(|k| k.ends_with("/manifest.json")));
    let data = keys.iter().find(|k| k.contains("/data.")).unwrap();
    let size = server
        .admin()
        .head_object()
        .bucket(&bucket)
        .key(data)
        .send()
        .await
        .unwrap()
        .content_length()
        .unwrap();
    assert!(size > 12 * MIB as i64, "a multipart upload of {size} bytes");

    let list = drkit(&s, &["--json", "list", "app"]).await;
    list.expect_code(0);
    assert_eq!(list.json().as_array().unwrap().len(), 1);
    drkit(&s, &["verify", "app"]).await.expect_code(0);
    let to = s.path("restored.db");
    drkit(&s, &["restore", "app", "--to", to.to_str().unwrap()])
        .await
        .expect_code(0);
    assert_eq!(rows(&to), rows(&s.path("app.db")));
    // Nothing went through local disk but the restored database itself.
    let local: Vec<String> = files_under(s.dir.path())
        .into_iter()
        .filter(|f| !f.starts_with("app.db") && !f.starts_with("restored.db"))
        .collect();
    assert_eq!(local, vec!["drkit.toml".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_lock_protects_every_object_and_prune_skips_locked_backups() {
    let server = moto();
    let bucket = server.new_bucket(true).await;
    let extra = format!("{SMALL_PARTS}\nobject_lock = {{ mode = \"governance\", days = 2 }}");
    let section = server.storage_toml("offsite", &server.endpoint, &bucket, &extra);
    let s = Arc::new(scratch(7, "\"offsite\"", &section));
    let started = Utc::now();
    drkit(&s, &["backup"]).await.expect_code(0);
    drkit(&s, &["backup"]).await.expect_code(0);

    // Every object (multipart archives and manifests) carries the retention.
    let admin = server.admin();
    let keys = server.keys(&bucket).await;
    assert_eq!(keys.len(), 4, "{keys:?}");
    for key in &keys {
        let h = admin
            .head_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            h.object_lock_mode().map(|m| m.as_str()),
            Some("GOVERNANCE"),
            "{key}"
        );
        let until = h
            .object_lock_retain_until_date()
            .expect("a retention date")
            .secs();
        let want = (started + chrono::Duration::days(2)).timestamp();
        assert!(
            (until - want).abs() < 300,
            "{key}: retained until {until}, want about {want}"
        );
    }

    // A prune that would remove the older backup skips it and says so.
    let mut config = std::fs::read_to_string(s.path("drkit.toml")).unwrap();
    config.push_str("keep = { last = 1 }\n");
    s.config(&config);
    let pruned = drkit(&s, &["--json", "prune", "app"]).await;
    pruned.expect_code(0);
    assert!(
        pruned.stderr.contains("under object lock until"),
        "{}",
        pruned.stderr
    );
    let actions: Vec<String> = pruned
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| a.starts_with("locked until"))
            .count(),
        1,
        "{actions:?}"
    );
    assert_eq!(
        drkit(&s, &["--json", "list", "app"])
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A direct delete is refused: no delete marker hides the locked backup.
    let storage = drkit_drivers::open_storage("offsite", &server.spec(&bucket, &extra)).unwrap();
    let manifest = keys.iter().find(|k| k.ends_with("manifest.json")).unwrap();
    let until = storage
        .locked_until(manifest)
        .await
        .unwrap()
        .expect("locked");
    assert!(until > Utc::now() + chrono::Duration::days(1));
    let e = storage.delete(manifest).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("object lock until"), "{e}");
    let versions = admin
        .list_object_versions()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    // Only the job's lease, given back at the end of each run, leaves delete markers.
    let markers: Vec<_> = versions
        .delete_markers()
        .iter()
        .filter(|m| m.key() != Some("app/.drkit.lease"))
        .collect();
    assert!(markers.is_empty(), "delete markers: {markers:?}");
    assert_eq!(server.keys(&bucket).await.len(), 4);
}

/// Which error the CLI prints for a storage that cannot work, and with which exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_for_bad_credentials_bucket_endpoint_and_object_lock() {
    let m = moto();
    let bucket = m.new_bucket(false).await;
    let s3s_server = s3s();
    let s3s_bucket = s3s_server.new_bucket(false).await;
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let wrong_secret = "wrong-Secret-For-The-Test-0123456789";
    let with = |server: &S3Server,
                endpoint: &str,
                bucket: &str,
                extra: &str,
                key: Option<&str>,
                secret: Option<&str>| {
        let mut section = server.storage_toml("offsite", endpoint, bucket, extra);
        if let Some(secret) = secret {
            section = section.replace(&format!("{:?}", server.secret_key), &format!("{secret:?}"));
        }
        if let Some(key) = key {
            section = section.replace(&format!("{:?}", server.access_key), &format!("{key:?}"));
        }
        section
    };
    let unreachable = format!("http://127.0.0.1:{closed_port}");
    let lock = "object_lock = { mode = \"compliance\", days = 1 }";
    let cases: Vec<(&str, String, i32, Vec<&str>)> = vec![
        (
            "wrong secret",
            with(&m, &m.endpoint, &bucket, "", None, Some(wrong_secret)),
            2,
            vec!["secret access key is wrong", "SignatureDoesNotMatch"],
        ),
        (
            "unknown key",
            with(
                &m,
                &m.endpoint,
                &bucket,
                "",
                Some("AKIANOSUCHKEY0000000"),
                None,
            ),
            2,
            vec!["access key id", "InvalidAccessKeyId"],
        ),
        (
            "unknown bucket",
            with(&m, &m.endpoint, "no-such-bucket-here", "", None, None),
            2,
            vec!["bucket does not exist", "no-such-bucket-here"],
        ),
        (
            "unknown bucket (s3s)",
            with(
                &s3s_server,
                &s3s_server.endpoint,
                "no-such-bucket-here",
                "",
                None,
                None,
            ),
            2,
            vec!["bucket does not exist"],
        ),
        (
            "unreachable",
            with(
                &m,
                &unreachable,
                &bucket,
                "max_attempts = 2\ntimeout = \"5s\"",
                None,
                None,
            ),
            1,
            vec!["connection failed", &unreachable],
        ),
        (
            "no object lock",
            with(&m, &m.endpoint, &bucket, lock, None, None),
            2,
            vec!["no object lock enabled"],
        ),
        (
            "no object lock (s3s)",
            with(
                &s3s_server,
                &s3s_server.endpoint,
                &s3s_bucket,
                lock,
                None,
                None,
            ),
            2,
            vec!["no object lock enabled"],
        ),
    ];
    for (what, section, code, needles) in cases {
        let s = Arc::new(scratch(1, "\"offsite\"", &section));
        let run = drkit(&s, &["backup", "app"]).await;
        run.expect_code(code);
        run.expect_one_line_error(needles[0]);
        let line = run
            .stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap()
            .to_string();
        for n in &needles {
            assert!(line.contains(n), "{what}: {line:?} lacks {n:?}");
        }
        let endpoint_named = [
            m.endpoint.as_str(),
            s3s_server.endpoint.as_str(),
            unreachable.as_str(),
        ]
        .iter()
        .any(|e| line.contains(e));
        assert!(
            endpoint_named && line.contains("s3 bucket"),
            "{what}: bucket and endpoint not named: {line}"
        );
        for secret in [
            wrong_secret,
            m.secret_key.as_str(),
            s3s_server.secret_key.as_str(),
        ] {
            assert!(
                !run.stderr.contains(secret) && !run.stdout.contains(secret),
                "{what}: a secret is shown"
            );
        }
    }
    // None of the failed runs left an object behind.
    assert!(m.keys(&bucket).await.is_empty());
    assert!(m.pending_uploads(&bucket).await.is_empty());
    assert!(s3s_server.keys(&s3s_bucket).await.is_empty());
}

/// The pipeline's backup of `size` pattern bytes to `storage`.
async fn backup_pattern(
    storage: Arc<dyn Storage>,
    size: u64,
    seed: u64,
) -> drkit_core::Result<drkit_core::pipeline::BackupOutcome> {
    let source = PatternSource::new(size, seed);
    let targets = [Target {
        name: "s3".into(),
        storage,
    }];
    let opts = BackupOptions {
        compression: Compression::None,
        level: None,
        ..Default::default()
    };
    pipeline::backup("pat", &source, &targets, &opts, pipeline::no_progress()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_upload_is_retried_and_the_backup_completes() {
    let server = moto();
    let bucket = server.new_bucket(false).await;
    // Cut in the middle of the second part (the first 5 MiB part goes first).
    let proxy = FaultProxy::start(&server.endpoint, Fault::CutUploadOnceAt(8 * MIB)).await;
    let storage =
        drkit_drivers::open_storage("s3", &server.spec_at(&proxy.endpoint, &bucket, SMALL_PARTS))
            .unwrap();
    let size = 23 * MIB + 7;
    let outcome = backup_pattern(storage, size, 42)
        .await
        .expect("the backup heals the cut");
    assert!(outcome.all_ok());
    assert_eq!(proxy.cuts(), 1, "the proxy cut one connection");
    assert!(proxy.bytes_up() > size, "the cut part was sent again");

    // Read back directly from the server: whole and right.
    let direct = server.storage(&bucket, "");
    let report = pipeline::verify(
        direct.as_ref(),
        &outcome.manifest,
        None,
        pipeline::no_progress(),
    )
    .await
    .unwrap();
    assert_eq!(report.raw_size, size);
    let source = PatternSource::new(size, 42);
    pipeline::restore(
        direct.as_ref(),
        &outcome.manifest,
        &source,
        &RestoreOptions::default(),
        false,
        pipeline::no_progress(),
    )
    .await
    .unwrap();
    assert_eq!(
        source.restored.load(std::sync::atomic::Ordering::SeqCst),
        size
    );
    assert!(server.pending_uploads(&bucket).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_mid_upload_fails_with_exit_1_and_no_visible_object() {
    let server = moto();
    let bucket = server.new_bucket(false).await;
    let proxy = FaultProxy::start(&server.endpoint, Fault::None).await;
    // A short lease: the failed run cannot give it back, the next one takes it over.
    let extra = format!(
        "{SMALL_PARTS}\nmax_attempts = 3\nleftover_age = \"0s\"\nlease_ttl = \"2s\"\nlease_renew = \"1s\""
    );
    let section = server.storage_toml("offsite", &proxy.endpoint, &bucket, &extra);
    let s = Arc::new(scratch(14, "\"offsite\"", &section));
    // The bucket is reached (leftover cleaning, first part), then the server is gone for good.
    proxy.set_fault(Fault::DownFromUpload(proxy.bytes_up() + 7 * MIB));
    let run = drkit(&s, &["backup", "app"]).await;
    run.expect_code(1);
    run.expect_one_line_error("connection failed");
    // The job's lease could not be given back either (the server is gone): it expires.
    let mut left = server.keys(&bucket).await;
    left.retain(|k| k != "app/.drkit.lease");
    assert!(
        left.is_empty(),
        "no object, no manifest is visible: {left:?}"
    );
    assert!(proxy.cuts() >= 1);

    // The upload the dead connection could not abort is cleaned by the next run.
    let pending = server.pending_uploads(&bucket).await;
    assert!(pending.len() <= 1, "{pending:?}");
    let healed = server.storage_toml("offsite", &server.endpoint, &bucket, &extra);
    s.config(
        &std::fs::read_to_string(s.path("drkit.toml"))
            .unwrap()
            .replace(&section, &healed),
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    drkit(&s, &["backup", "app"]).await.expect_code(0);
    assert!(
        server.pending_uploads(&bucket).await.is_empty(),
        "the abandoned upload was aborted"
    );
    assert_eq!(server.keys(&bucket).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_midway_resumes_with_a_ranged_request() {
    let server = moto();
    let bucket = server.new_bucket(false).await;
    let size = 9 * MIB + 3;
    let outcome = backup_pattern(server.storage(&bucket, SMALL_PARTS), size, 7)
        .await
        .unwrap();

    let proxy = FaultProxy::start(&server.endpoint, Fault::CutDownloadOnceAt(4 * MIB)).await;
    let via_proxy =
        drkit_drivers::open_storage("s3", &server.spec_at(&proxy.endpoint, &bucket, "")).unwrap();
    let report = pipeline::verify(
        via_proxy.as_ref(),
        &outcome.manifest,
        None,
        pipeline::no_progress(),
    )
    .await
    .unwrap();
    assert_eq!(report.raw_size, size);
    assert_eq!(proxy.cuts(), 1);
    // The rest was asked for from where the cut happened, not from the start.
    let resumed: Vec<u64> = proxy
        .ranges()
        .iter()
        .filter_map(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .collect();
    assert_eq!(resumed.len(), 1, "ranges asked: {:?}", proxy.ranges());
    assert!(
        resumed[0] > MIB && resumed[0] < size,
        "resumed at {}",
        resumed[0]
    );
    assert!(
        proxy.bytes_down() < size + 2 * MIB,
        "the download did not start over: {} bytes",
        proxy.bytes_down()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dump_leaves_nothing_on_s3() {
    for server in [moto(), s3s()] {
        let bucket = server.new_bucket(false).await;
        let mut source = PatternSource::new(30 * MIB, 3);
        source.fail_after = Some(17 * MIB);
        let targets = [Target {
            name: "s3".into(),
            storage: server.storage(&bucket, SMALL_PARTS),
        }];
        let e = pipeline::backup(
            "pat",
            &source,
            &targets,
            &BackupOptions::default(),
            pipeline::no_progress(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Source, "{e}");
        assert!(
            server.keys(&bucket).await.is_empty(),
            "{}: objects left",
            server.name
        );
        if server.lists_uploads {
            assert!(
                server.pending_uploads(&bucket).await.is_empty(),
                "the multipart upload was aborted"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_writes_local_and_s3_and_one_failing_storage_does_not_sink_the_other() {
    let server = moto();
    let bucket = server.new_bucket(false).await;
    let s = Arc::new(Scratch::new());
    make_db(&s.path("app.db"), 6);
    let write_config = |offsite: &str| {
        s.config(&format!(
            "[storage.local]\ntype = \"local\"\npath = \"{}\"\n\n{offsite}\n[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"local\", \"offsite\"]\n",
            s.path("backups").display(),
            s.path("app.db").display()
        ))
    };
    write_config(&server.storage_toml("offsite", &server.endpoint, &bucket, SMALL_PARTS));
    let run = drkit(&s, &["--json", "backup", "app"]).await;
    run.expect_code(0);
    let doc = run.json();
    let storages = doc[0]["storages"].as_array().unwrap();
    assert!(storages.iter().all(|st| st["ok"] == true), "{doc}");
    let id = doc[0]["manifest"]["id"].as_str().unwrap().to_string();
    assert!(s.path(&format!("backups/app/{id}/manifest.json")).exists());
    assert!(server
        .keys(&bucket)
        .await
        .contains(&format!("app/{id}/manifest.json")));

    // The S3 storage fails (its endpoint is gone): the local one still gets the backup, the
    // result says which did what, and the command fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    write_config(&server.storage_toml(
        "offsite",
        &format!("http://127.0.0.1:{closed}"),
        &bucket,
        "max_attempts = 2",
    ));
    let run = drkit(&s, &["--json", "backup", "app"]).await;
    run.expect_code(1);
    let doc = run.json();
    let storages = doc[0]["storages"].as_array().unwrap();
    let local = storages.iter().find(|st| st["storage"] == "local").unwrap();
    let offsite = storages
        .iter()
        .find(|st| st["storage"] == "offsite")
        .unwrap();
    assert_eq!(local["ok"], true, "{doc}");
    assert_eq!(offsite["ok"], false, "{doc}");
    assert!(
        offsite["error"]
            .as_str()
            .unwrap()
            .contains("connection failed"),
        "{doc}"
    );
    let id2 = doc[0]["manifest"]["id"].as_str().unwrap();
    assert!(s.path(&format!("backups/app/{id2}/manifest.json")).exists());
    assert_eq!(
        server.keys(&bucket).await.len(),
        2,
        "S3 still holds only the first backup"
    );

    // And the other way round, through the library: the local folder fails, S3 gets it.
    let blocked = s.path("blocked");
    std::fs::write(&blocked, b"a file where a folder should be").unwrap();
    let targets = [
        Target {
            name: "local".into(),
            storage: Arc::new(LocalStorage::new(blocked.join("x"))),
        },
        Target {
            name: "offsite".into(),
            storage: server.storage(&bucket, ""),
        },
    ];
    let outcome = pipeline::backup(
        "pat",
        &PatternSource::new(MIB, 1),
        &targets,
        &BackupOptions::default(),
        pipeline::no_progress(),
    )
    .await
    .unwrap();
    assert!(
        !outcome.storages[0].ok && outcome.storages[1].ok,
        "{:?}",
        outcome.storages
    );
    assert!(server.keys(&bucket).await.contains(&outcome.manifest.key()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_the_aws_chain_when_the_config_has_none() {
    let server = moto();
    let bucket = server.new_bucket(false).await;
    let run_with = |s: &Arc<Scratch>, env: Vec<(String, String)>| {
        let s = s.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = s.command(&["backup", "app"]);
            // Nothing from this machine: only what the case gives.
            cmd.env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("HOME", s.path("home"))
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .envs(env);
            let out = cmd.output().expect("run drkit");
            Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
    };
    let no_keys = |extra: &str| {
        server
            .storage_toml("offsite", &server.endpoint, &bucket, extra)
            .lines()
            .filter(|l| !l.starts_with("access_key_id") && !l.starts_with("secret_access_key"))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // The environment.
    let s = Arc::new(scratch(1, "\"offsite\"", &no_keys("")));
    let env = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), server.access_key.clone()),
        (
            "AWS_SECRET_ACCESS_KEY".to_string(),
            server.secret_key.clone(),
        ),
    ];
    run_with(&s, env).await.unwrap().expect_code(0);

    // A named profile of the shared credentials file.
    let s = Arc::new(scratch(1, "\"offsite\"", &no_keys("profile = \"backup\"")));
    let creds = s.path("credentials");
    std::fs::write(
        &creds,
        format!(
            "[backup]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            server.access_key, server.secret_key
        ),
    )
    .unwrap();
    let env = vec![(
        "AWS_SHARED_CREDENTIALS_FILE".to_string(),
        creds.display().to_string(),
    )];
    run_with(&s, env).await.unwrap().expect_code(0);
    assert_eq!(server.keys(&bucket).await.len(), 4);

    // None anywhere: a config error that says where credentials come from.
    let s = Arc::new(scratch(1, "\"offsite\"", &no_keys("")));
    let run = run_with(&s, Vec::new()).await.unwrap();
    run.expect_code(2);
    run.expect_one_line_error("no usable AWS credentials");
}

/// A key made by Debian's `age-keygen`: (the identity file, its public recipient).
fn age_key(s: &Scratch, name: &str) -> (std::path::PathBuf, String) {
    let path = s.path(name);
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .expect("age-keygen runs (Debian's age; scripts/servers.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("Public key: ").map(str::to_string))
        .expect("age-keygen prints the public key");
    (path, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_skips_object_locked_backups_which_keep_their_old_key() {
    let server = moto();
    let bucket = server.new_bucket(true).await;
    let extra = "object_lock = { mode = \"governance\", days = 1 }";
    let section = server.storage_toml("offsite", &server.endpoint, &bucket, extra);
    let probe = Scratch::new();
    let (old_key, old_public) = age_key(&probe, "old.txt");
    let (new_key, new_public) = age_key(&probe, "new.txt");
    let with = |recipient: &str| {
        format!("{section}\n[job.app]\nsource = {{ type = \"sqlite\", path = \"APP\" }}\nstorage = [\"offsite\"]\nencryption = {{ recipients = [\"{recipient}\"] }}\n")
    };
    let s = Arc::new(Scratch::new());
    make_db(&s.path("app.db"), 1);
    let app = s.path("app.db").display().to_string();
    s.config(&with(&old_public).replace("APP", &app));
    drkit(&s, &["backup"]).await.expect_code(0);
    let before = server.keys(&bucket).await;

    // The job now encrypts to the new key; the locked backup cannot have its manifest
    // rewritten, so rekey skips it with a reason and changes nothing.
    s.config(&with(&new_public).replace("APP", &app));
    let old_arg = old_key.display().to_string();
    let r = drkit(&s, &["--identity", &old_arg, "--json", "rekey", "app"]).await;
    r.expect_code(0);
    let items = r.json();
    assert_eq!(items[0]["action"], "locked", "{items}");
    assert!(r.stderr.contains("object lock"), "{}", r.stderr);
    assert_eq!(
        server.keys(&bucket).await,
        before,
        "nothing was written or removed"
    );

    // It stays readable with its old identity only.
    let to = s.path("restored.db").display().to_string();
    let new_arg = new_key.display().to_string();
    drkit(&s, &["--identity", &new_arg, "restore", "app", "--to", &to])
        .await
        .expect_code(4);
    drkit(&s, &["--identity", &old_arg, "restore", "app", "--to", &to])
        .await
        .expect_code(0);
    assert_eq!(rows(&s.path("restored.db")), rows(&s.path("app.db")));
}
