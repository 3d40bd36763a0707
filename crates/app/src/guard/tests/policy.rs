//! The policy against a local storage and made-up volumes: no engine needed. Backups are
//! written by the real pipeline from a source that replays given bytes.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use drkit_core::pipeline::{self, BackupOptions, Target};
use drkit_core::{Config, ErrorKind, Manifest};
use drkit_drivers::docker::volumes::VolumeInfo;
use drkit_drivers::test_util::volume_tar::{archive, entry};

use crate::guard::policy::{
    self, adhoc_job, backup_hint, engine_filters, fmt_duration, DoomedVolume, Problem,
};
use crate::guard::shell::{shell_quote, shell_words};
use crate::guard::{Analysis, Doomed, Verdict};

const HOUR: Duration = Duration::from_secs(3600);

fn volume(name: &str, size: Option<u64>) -> DoomedVolume {
    DoomedVolume {
        info: VolumeInfo {
            name: name.into(),
            driver: "local".into(),
            options: Default::default(),
            labels: Default::default(),
            created: None,
        },
        size,
    }
}

/// A config with one local storage in `dir`, and `jobs` (TOML) after it.
fn config(dir: &std::path::Path, jobs: &str) -> Config {
    let text = format!(
        "[storage.local]\ntype = \"local\"\npath = {:?}\n\n{jobs}",
        dir.display().to_string()
    );
    Config::parse(&text, "test", &|_| None).expect("valid config")
}

fn good_tar() -> Vec<u8> {
    archive(&[
        entry("./", b'5', "", b""),
        entry("./precious", b'0', "", b"precious data\n"),
    ])
}

/// Back up `bytes` as job `job` onto the config's `local` storage.
async fn store(config: &Config, job: &str, bytes: Vec<u8>, empty: bool) -> Manifest {
    let spec = &config.storage["local"];
    let targets = [Target {
        name: "local".into(),
        storage: drkit_drivers::open_storage("local", spec).expect("local storage"),
    }];
    // Replays the bytes as a volume dump; `empty` marks the source as holding no data.
    let source = drkit_core::testing::FakeSource::new(bytes)
        .driver("docker-volume", "tar")
        .stats(serde_json::json!({ "empty": empty }));
    let outcome = pipeline::backup(
        job,
        &source,
        &targets,
        &BackupOptions::default(),
        pipeline::no_progress(),
    )
    .await
    .expect("backup");
    assert!(outcome.all_ok());
    outcome.manifest
}

fn after(m: &Manifest, d: Duration) -> DateTime<Utc> {
    m.finished_at + TimeDelta::from_std(d).expect("a small duration")
}

async fn one(
    config: &Config,
    v: &DoomedVolume,
    max_age: Duration,
    now: DateTime<Utc>,
) -> policy::Protection {
    let adhoc = policy::adhoc_storages(config, &[]).expect("storages");
    let mut out = policy::protections(config, std::slice::from_ref(v), &adhoc, max_age, now)
        .await
        .expect("protections");
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[tokio::test]
async fn no_backup_refuses_unless_the_volume_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let now = Utc::now();
    let p = one(&cfg, &volume("data", Some(100)), HOUR, now).await;
    assert!(matches!(p.problem, Some(Problem::NoBackup)), "{p:?}");
    assert_eq!(
        (p.age_words(), p.volume.size_words()),
        ("never".into(), "100 B".into())
    );
    assert_eq!(p.problem.unwrap().to_string(), "no backup");
    let unknown = one(&cfg, &volume("remote", None), HOUR, now).await;
    assert!(!unknown.protected());
    assert_eq!(unknown.volume.size_words(), "size unknown");
    let empty = one(&cfg, &volume("empty", Some(0)), HOUR, now).await;
    assert!(empty.protected(), "{empty:?}");
    assert!(empty.newest.is_none() && empty.jobs.is_empty());
}

#[tokio::test]
async fn a_fresh_verified_backup_protects_an_old_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let m = store(&cfg, &adhoc_job("data"), good_tar(), false).await;
    let v = volume("data", Some(5 * 1024));
    let p = one(&cfg, &v, HOUR, after(&m, Duration::from_secs(300))).await;
    assert!(p.protected(), "{p:?}");
    let n = p.newest.as_ref().expect("newest");
    assert_eq!(
        (n.job.as_str(), n.storage.as_str()),
        ("volume-data", "local")
    );
    assert_eq!(n.manifest.id, m.id);
    assert_eq!(p.age, Some(Duration::from_secs(300)));
    assert_eq!(p.age_words(), "5m ago");
    assert_eq!(p.volume.size_words(), "5.0 KiB");
    // Older than --max-age.
    let p = one(&cfg, &v, HOUR, after(&m, 2 * HOUR)).await;
    assert_eq!(
        p.problem.as_ref().map(ToString::to_string),
        Some(format!("newest backup {} is older than 1h", m.id))
    );
    assert_eq!(p.age_words(), "2h 0m ago");
}

#[tokio::test]
async fn an_empty_backup_of_a_full_volume_and_a_damaged_one_do_not_protect() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let m = store(&cfg, &adhoc_job("was-empty"), good_tar(), true).await;
    let now = after(&m, Duration::from_secs(1));
    let p = one(&cfg, &volume("was-empty", Some(2048)), HOUR, now).await;
    assert_eq!(
        p.problem.as_ref().map(ToString::to_string),
        Some(format!(
            "newest backup {} is empty, but the volume holds 2.0 KiB",
            m.id
        ))
    );
    // Still empty: the empty backup protects it.
    assert!(one(&cfg, &volume("was-empty", Some(0)), HOUR, now)
        .await
        .protected());
    // Not a tar archive: verification (the restore's own checks) fails.
    let m = store(&cfg, &adhoc_job("garbage"), b"not a tar".repeat(100), false).await;
    let p = one(
        &cfg,
        &volume("garbage", Some(900)),
        HOUR,
        after(&m, Duration::from_secs(1)),
    )
    .await;
    match &p.problem {
        Some(Problem::FailedVerification { id, error }) => {
            assert_eq!(id, &m.id);
            assert_eq!(error.kind(), ErrorKind::Integrity, "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(p
        .problem
        .unwrap()
        .to_string()
        .contains("failed verification"));
}

#[tokio::test]
async fn configured_jobs_name_their_volume_and_the_hint_uses_them() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = "[job.app]\nsource = { type = \"docker-volume\", volume = \"data\" }\nstorage = [\"local\"]\n\n[job.other]\nsource = { type = \"docker-volume\", volume = \"elsewhere\" }\nstorage = [\"local\"]\n";
    let cfg = config(dir.path(), jobs);
    let v = volume("data", Some(10));
    let found = policy::jobs_for(&cfg, &v.info, &["local".into()]).unwrap();
    let names: Vec<(&str, bool)> = found
        .iter()
        .map(|j| (j.name.as_str(), j.configured))
        .collect();
    assert_eq!(names, [("app", true), ("volume-data", false)]);
    // The configured job's backup protects the volume.
    let m = store(&cfg, "app", good_tar(), false).await;
    let p = one(&cfg, &v, HOUR, after(&m, Duration::from_secs(5))).await;
    assert!(p.protected(), "{p:?}");
    assert_eq!(p.jobs, ["app"]);
    assert_eq!(p.newest.as_ref().map(|n| n.job.as_str()), Some("app"));
    // Hints: jobs when every volume has one, else the guard with --backup-first.
    let stale = one(&cfg, &v, HOUR, after(&m, 3 * HOUR)).await;
    let lone = one(&cfg, &volume("lone", Some(10)), HOUR, Utc::now()).await;
    let argv: Vec<String> = ["docker", "volume", "rm", "my vol"]
        .map(String::from)
        .into();
    assert_eq!(backup_hint(&[&stale], &argv), "drkit backup app");
    assert_eq!(
        backup_hint(&[&stale, &lone], &argv),
        "drkit guard --backup-first -- docker volume rm 'my vol'"
    );
    // The verdict over them.
    let verdict = Verdict {
        analysis: Some(Analysis {
            doomed: Doomed::Named(vec!["data".into(), "lone".into()]),
            summary: "volumes data, lone".into(),
            docker_host: None,
        }),
        warnings: Vec::new(),
        volumes: vec![p, lone],
        adhoc_storages: vec!["local".into()],
        max_age: HOUR,
        checked_at: Utc::now(),
    };
    assert!(!verdict.allowed());
    assert_eq!(verdict.unprotected().len(), 1);
    assert_eq!(
        verdict.backup_hint(&argv).as_deref(),
        Some("drkit guard --backup-first -- docker volume rm 'my vol'")
    );
}

#[test]
fn storages_names_filters_and_words() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    assert_eq!(policy::adhoc_storages(&cfg, &[]).unwrap(), ["local"]);
    let err = policy::adhoc_storages(&cfg, &["nope".into()]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("--storage nope"), "{err}");
    assert_eq!(adhoc_job("myapp_pgdata"), "volume-myapp_pgdata");
    assert_eq!(adhoc_job(".x/y"), "volume-x-y");
    assert_eq!(fmt_duration(HOUR), "1h");
    assert_eq!(fmt_duration(Duration::from_secs(90 * 60)), "90m");
    assert_eq!(fmt_duration(Duration::from_secs(7 * 86_400)), "7d");
    assert_eq!(fmt_duration(Duration::from_secs(45)), "45s");
    assert_eq!(
        engine_filters(&[
            "label=a=b".into(),
            "label!=x".into(),
            "until=24h".into(),
            "junk".into()
        ]),
        [
            ("label", "a=b".to_string()),
            ("label!", "x".to_string()),
            ("label", "24h".to_string())
        ]
    );
    assert_eq!(
        shell_words(&[
            "docker".into(),
            "compose".into(),
            "-p".into(),
            "my app".into()
        ]),
        "docker compose -p 'my app'"
    );
    assert_eq!(
        shell_quote("COMPOSE_PROJECT_NAME=x"),
        "COMPOSE_PROJECT_NAME=x"
    );
    assert_eq!(shell_quote("it's"), "'it'\\''s'");
    assert_eq!(shell_quote(""), "''");
}
