//! The library API on its own, as a deploy tool embeds it (what examples/embed.rs shows).

use std::sync::Arc;

use drkit_core::pipeline::{self, BackupOptions, Target};
use drkit_core::{catalog, ErrorKind, RestoreOptions, Storage};
use drkit_drivers::source::sqlite::SqliteSource;
use drkit_drivers::storage::local::LocalStorage;

#[tokio::test]
async fn backup_list_verify_restore_from_rust() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);")
        .unwrap();
    drop(c);
    let source = SqliteSource::new(&db);
    let storage = Arc::new(LocalStorage::new(dir.path().join("backups")));
    let targets = [Target {
        name: "local".into(),
        storage: storage.clone(),
    }];
    let opts = BackupOptions {
        compression: drkit_core::Compression::Gzip,
        level: None,
        ..Default::default()
    };
    let outcome = pipeline::backup("app", &source, &targets, &opts, pipeline::no_progress())
        .await
        .unwrap();
    assert!(outcome.all_ok());
    assert!(outcome.manifest.data.key.ends_with("data.sqlite.gz"));
    assert_eq!(outcome.manifest.stats["tables"]["t"], 3);

    let listed = catalog::list(storage.as_ref(), "app").await.unwrap();
    assert_eq!(listed, vec![outcome.manifest.clone()]);
    pipeline::verify(
        storage.as_ref(),
        &listed[0],
        Some(&source),
        pipeline::no_progress(),
    )
    .await
    .unwrap();

    // Restoring over the source without force is refused; to another path it works.
    let err = pipeline::restore(
        storage.as_ref(),
        &listed[0],
        &source,
        &RestoreOptions::default(),
        false,
        pipeline::no_progress(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    let to = dir.path().join("restored.db");
    let opts = RestoreOptions {
        to: Some(to.display().to_string()),
        ..Default::default()
    };
    pipeline::restore(
        storage.as_ref(),
        &listed[0],
        &source,
        &opts,
        false,
        pipeline::no_progress(),
    )
    .await
    .unwrap();
    let c = rusqlite::Connection::open(&to).unwrap();
    let n: i64 = c
        .query_row("SELECT sum(x) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 6);
}

#[tokio::test]
async fn a_failed_dump_writes_no_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let source = SqliteSource::new(dir.path().join("missing.db"));
    let storage = Arc::new(LocalStorage::new(dir.path().join("backups")));
    let targets = [Target {
        name: "local".into(),
        storage: storage.clone(),
    }];
    let err = pipeline::backup(
        "app",
        &source,
        &targets,
        &BackupOptions::default(),
        pipeline::no_progress(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Source);
    assert!(catalog::list(storage.as_ref(), "app")
        .await
        .unwrap()
        .is_empty());
    let left = storage.list("app/").await.unwrap();
    assert!(
        left.iter().all(|o| !o.key.contains(".drkit-tmp-")),
        "{left:?}"
    );
}
