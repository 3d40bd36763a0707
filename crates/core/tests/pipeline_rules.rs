//! The rules of the backup pipeline, checked in memory through `drkit_core::testing`: lanes
//! (one dump, every storage), the commit rule (the manifest is written last, nothing is
//! visible before), partial failure (one storage fails, the other commits), aborts on a
//! failed dump, the cleaning of leftovers, a lost manifest answer that landed, and the
//! object-lock rules of delete and prune.

use std::sync::Arc;

use chrono::Utc;
use drkit_core::config::KeepPolicy;
use drkit_core::layout::{self, manifest_key};
use drkit_core::ops::prune::{self, Action};
use drkit_core::pipeline::{self, BackupOptions, BackupOutcome, Target};
use drkit_core::signing::Trust;
use drkit_core::testing::{noise, FakeSource, MemStore, Op};
use drkit_core::{ErrorKind, Result, Storage};

fn target(name: &str, store: &MemStore) -> Target {
    Target {
        name: name.into(),
        storage: Arc::new(store.clone()),
    }
}

async fn backup(source: &FakeSource, targets: &[Target]) -> Result<BackupOutcome> {
    pipeline::backup(
        "db",
        source,
        targets,
        &BackupOptions::default(),
        pipeline::no_progress(),
    )
    .await
}

fn manifests(store: &MemStore) -> Vec<String> {
    store
        .keys()
        .into_iter()
        .filter(|k| k.ends_with(layout::MANIFEST_FILE))
        .collect()
}

const SIZE: usize = 600 * 1024;

#[tokio::test]
async fn lanes_one_dump_feeds_every_storage() {
    let (a, b) = (MemStore::new(), MemStore::new());
    let data = noise(SIZE, 1);
    let source = FakeSource::new(data.clone())
        .chunk_size(10_000)
        .stats(serde_json::json!({"rows": 3}));
    let out = backup(&source, &[target("a", &a), target("b", &b)])
        .await
        .unwrap();
    assert_eq!(source.dumps(), 1, "the source is read once");
    assert!(out.all_ok(), "{:?}", out.storages);
    assert_eq!(
        out.storages
            .iter()
            .map(|s| s.storage.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let m = &out.manifest;
    assert_eq!(m.data.raw_size, SIZE as u64);
    assert_eq!(m.stats, serde_json::json!({"rows": 3}));
    assert_eq!(
        m.data.key,
        layout::data_key("db", &m.id, "bin", m.data.compression.suffix())
    );
    let archive = a.object(&m.data.key).expect("archive on a");
    assert_eq!(Some(&archive), b.object(&m.data.key).as_ref(), "same bytes");
    assert_eq!(archive.len() as u64, m.data.stored_size);
    for store in [&a, &b] {
        assert_eq!(store.keys(), vec![m.data.key.clone(), m.key()]);
        pipeline::verify(store, m, Some(&source), pipeline::no_progress())
            .await
            .unwrap();
    }
    // And back: the restore hands the source the very bytes it dumped.
    pipeline::restore(
        &b,
        m,
        &source,
        &Default::default(),
        false,
        pipeline::no_progress(),
    )
    .await
    .unwrap();
    assert_eq!(source.restored(), Some(data));
}

#[tokio::test]
async fn commit_rule_manifest_last_and_nothing_visible_before() {
    let (a, b) = (MemStore::new(), MemStore::new());
    let (source, pause) = FakeSource::new(noise(SIZE, 2))
        .chunk_size(4096)
        .pause_at(SIZE as u64 / 2);
    let targets = [target("a", &a), target("b", &b)];
    let run = backup(&source, &targets);
    let look = async {
        pause.reached().await;
        for store in [&a, &b] {
            assert!(
                store.list("").await.unwrap().is_empty(),
                "visible in the middle of the dump"
            );
            assert_eq!(store.pending().len(), 1, "the upload is under way");
        }
        pause.resume();
    };
    let (out, ()) = tokio::join!(run, look);
    let out = out.unwrap();
    for store in [&a, &b] {
        assert_eq!(
            store.committed(),
            vec![out.manifest.data.key.clone(), out.manifest.key()],
            "archive first, manifest last"
        );
        assert!(store.pending().is_empty());
    }

    // At the very end of the stream, before the dump's finish: still nothing.
    let c = MemStore::new();
    let (source, pause) = FakeSource::new(noise(SIZE, 3)).pause_at(SIZE as u64);
    let targets = [target("c", &c)];
    let run = backup(&source, &targets);
    let look = async {
        pause.reached().await;
        assert!(c.list("").await.unwrap().is_empty(), "visible at EOF");
        pause.resume();
    };
    let (out, ()) = tokio::join!(run, look);
    assert!(out.unwrap().all_ok());
}

#[tokio::test]
async fn one_failed_storage_does_not_stop_the_other() {
    // Each way a lane can fail: the upload breaks mid-stream, the commit fails, the
    // manifest write fails.
    for (op, pattern) in [
        (Op::Write, "db/*/data.*"),
        (Op::Commit, "db/*/data.*"),
        (Op::Put, "db/*/manifest.json"),
        (Op::LockJob, "db"),
    ] {
        let (a, b) = (MemStore::new(), MemStore::new());
        if op == Op::Write {
            b.fail_after(op, pattern, 100_000);
        } else {
            b.fail(op, pattern);
        }
        let out = backup(
            &FakeSource::new(noise(SIZE, 4)),
            &[target("a", &a), target("b", &b)],
        )
        .await
        .unwrap_or_else(|e| panic!("{op:?}: {e}"));
        assert!(!out.all_ok(), "{op:?}");
        let (sa, sb) = (&out.storages[0], &out.storages[1]);
        assert!(sa.ok && sa.error.is_none(), "{op:?}: {sa:?}");
        assert!(!sb.ok, "{op:?}");
        let error = sb.error.as_deref().expect("the failure is reported");
        assert!(error.contains("injected fault"), "{op:?}: {error}");
        assert_eq!(manifests(&a), vec![out.manifest.key()], "{op:?}");
        assert!(manifests(&b).is_empty(), "{op:?}: no manifest on b");
        assert!(b.pending().is_empty(), "{op:?}: nothing left open on b");
    }
}

#[tokio::test]
async fn every_storage_failing_is_an_error() {
    let (a, b) = (MemStore::new(), MemStore::new());
    a.fail(Op::Create, "*");
    b.fail(Op::Put, "*/manifest.json");
    let e = backup(
        &FakeSource::new(noise(SIZE, 5)),
        &[target("a", &a), target("b", &b)],
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Storage, "{e}");
    assert!(
        e.to_string().contains("storage a"),
        "the first failure: {e}"
    );
    assert!(manifests(&a).is_empty() && manifests(&b).is_empty());
}

#[tokio::test]
async fn a_failed_dump_aborts_every_upload() {
    let cases = [
        (
            "fails mid-stream",
            FakeSource::new(noise(SIZE, 6)).fail_after(300_000),
        ),
        (
            "fails at finish",
            FakeSource::new(noise(SIZE, 7)).fail_at_finish("exit 1"),
        ),
        (
            "fails to start",
            FakeSource::new(noise(SIZE, 8)).fail_to_start("no tool"),
        ),
    ];
    for (what, source) in cases {
        let (a, b) = (MemStore::new(), MemStore::new());
        let e = backup(&source, &[target("a", &a), target("b", &b)])
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: the backup succeeded"));
        assert_eq!(e.kind(), ErrorKind::Source, "{what}: {e}");
        for store in [&a, &b] {
            assert!(store.keys().is_empty(), "{what}: {:?}", store.keys());
            assert!(store.committed().is_empty(), "{what}: nothing ever visible");
            assert!(store.pending().is_empty(), "{what}: uploads aborted");
        }
    }
}

#[tokio::test]
async fn leftovers_are_cleaned_before_the_backup() {
    let store = MemStore::new();
    // A complete backup, a folder without manifest, a stray file, a drill report, and an
    // upload whose process died.
    let done = "db/20260101T000000Z-aaaaaa";
    let half = "db/20260102T000000Z-bbbbbb";
    store.insert(&format!("{done}/data.bin.zst"), noise(4096, 9));
    store.insert(&format!("{done}/manifest.json"), b"{}".to_vec());
    store.insert(&format!("{half}/data.bin.zst"), b"half".to_vec());
    store.insert("db/stray", b"x".to_vec());
    store.insert("db/drills/20260103T000000Z.json", b"{}".to_vec());
    store.insert(
        "other/20260102T000000Z-bbbbbb/data.bin",
        b"not this job".to_vec(),
    );
    std::mem::forget(
        store
            .create("db/20260104T000000Z-cccccc/data.bin.zst")
            .await
            .unwrap(),
    );
    assert_eq!(store.pending().len(), 1);

    let out = backup(&FakeSource::new(noise(SIZE, 10)), &[target("m", &store)])
        .await
        .unwrap();
    let mut cleaned = out.storages[0].cleaned.clone();
    cleaned.sort();
    assert_eq!(
        cleaned,
        vec![
            format!("{half}/data.bin.zst"),
            "db/20260104T000000Z-cccccc/data.bin.zst".to_string(),
            "db/stray".to_string(),
        ]
    );
    assert!(store.pending().is_empty(), "the dead upload was discarded");
    let m = &out.manifest;
    let mut want = vec![
        format!("{done}/data.bin.zst"),
        format!("{done}/manifest.json"),
        m.data.key.clone(),
        m.key(),
        "db/drills/20260103T000000Z.json".to_string(),
        "other/20260102T000000Z-bbbbbb/data.bin".to_string(),
    ];
    want.sort();
    assert_eq!(store.keys(), want);
}

#[tokio::test]
async fn without_a_job_lock_only_old_leftovers_go() {
    let store = MemStore::new()
        .without_job_locks()
        .with_leftover_age(std::time::Duration::from_secs(3600));
    let old = Utc::now() - chrono::Duration::hours(2);
    store.insert_at("db/20260101T000000Z-aaaaaa/data.bin", b"old".to_vec(), old);
    store.insert(
        "db/20260102T000000Z-bbbbbb/data.bin",
        b"young: maybe a live run".to_vec(),
    );
    std::mem::forget(
        store
            .create("db/20260103T000000Z-cccccc/data.bin")
            .await
            .unwrap(),
    );
    let lock = store.lock_job("db").await.unwrap();
    assert!(!lock.is_held());
    let removed = layout::clean_leftovers(&store, "db", lock.is_held())
        .await
        .unwrap();
    assert_eq!(
        removed,
        vec!["db/20260101T000000Z-aaaaaa/data.bin".to_string()]
    );
    assert_eq!(store.pending().len(), 1, "a young upload stays");
    // An hour later, the rest is old enough.
    let later = Utc::now() + chrono::Duration::hours(2);
    let removed = layout::clean_leftovers_at(&store, "db", false, later)
        .await
        .unwrap();
    assert_eq!(
        removed,
        vec![
            "db/20260102T000000Z-bbbbbb/data.bin".to_string(),
            "db/20260103T000000Z-cccccc/data.bin".to_string(),
        ]
    );
    assert!(store.keys().is_empty() && store.pending().is_empty());
}

#[tokio::test]
async fn a_second_run_of_the_job_is_refused() {
    let store = MemStore::new();
    let held = store.lock_job("db").await.unwrap();
    let e = backup(&FakeSource::new(noise(SIZE, 11)), &[target("m", &store)])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(store.keys().is_empty());
    drop(held);
    assert!(
        backup(&FakeSource::new(noise(SIZE, 11)), &[target("m", &store)])
            .await
            .unwrap()
            .all_ok()
    );
}

#[tokio::test]
async fn a_lost_manifest_answer_that_landed_is_a_complete_backup() {
    let (a, b) = (MemStore::new(), MemStore::new());
    b.lose_answer(Op::Put, "*/manifest.json");
    let out = backup(
        &FakeSource::new(noise(SIZE, 12)),
        &[target("a", &a), target("b", &b)],
    )
    .await
    .unwrap();
    assert!(out.all_ok(), "{:?}", out.storages);
    assert!(out.storages[0].notes.is_empty());
    let notes = &out.storages[1].notes;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("injected fault"),
        "the lost error is told: {notes:?}"
    );
    assert_eq!(b.object(&out.manifest.key()), Some(out.manifest.to_json()));

    // A manifest write that failed and did not land: the lane failed, the archive is left
    // for the next run's cleaning.
    let c = MemStore::new();
    c.fail_once(Op::Put, "*/manifest.json");
    let out = backup(
        &FakeSource::new(noise(SIZE, 13)),
        &[target("a", &a), target("c", &c)],
    )
    .await
    .unwrap();
    assert!(out.storages[0].ok && !out.storages[1].ok);
    assert_eq!(c.keys(), vec![out.manifest.data.key.clone()]);
    // ... and the next backup cleans it.
    let next = backup(&FakeSource::new(noise(SIZE, 14)), &[target("c", &c)])
        .await
        .unwrap();
    assert_eq!(
        next.storages[0].cleaned,
        vec![out.manifest.data.key.clone()]
    );
    assert_eq!(manifests(&c), vec![next.manifest.key()]);
}

#[tokio::test]
async fn a_manifest_whose_landing_cannot_be_checked_fails_the_lane() {
    let (a, b) = (MemStore::new(), MemStore::new());
    b.lose_answer(Op::Put, "*/manifest.json");
    b.fail(Op::Head, "*/manifest.json");
    let out = backup(
        &FakeSource::new(noise(SIZE, 15)),
        &[target("a", &a), target("b", &b)],
    )
    .await
    .unwrap();
    assert!(out.storages[0].ok);
    assert!(!out.storages[1].ok, "unknown is not ok");
    assert!(out.storages[1].error.is_some());
    // The archive is never deleted on a doubt: the backup may well be complete there.
    assert!(b.object(&out.manifest.data.key).is_some());
}

#[tokio::test]
async fn delete_refuses_objects_under_object_lock() {
    let store = MemStore::new();
    store.insert("db/k", b"x".to_vec());
    store.insert("db/held", b"x".to_vec());
    store.set_retention("db/k", Some(Utc::now() + chrono::Duration::days(1)));
    store.set_legal_hold("db/held", true);
    let s: &dyn Storage = &store;
    for key in ["db/k", "db/held"] {
        let e = s.delete(key).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
        assert!(e.to_string().contains("under object lock until"), "{e}");
    }
    assert_eq!(store.keys().len(), 2, "nothing deleted");
    store.set_retention("db/k", Some(Utc::now() - chrono::Duration::days(1)));
    s.delete("db/k").await.unwrap();
    s.delete("db/never-was").await.unwrap();
    assert_eq!(store.keys(), vec!["db/held".to_string()]);
}

#[tokio::test]
async fn prune_skips_locked_backups_and_removes_the_manifest_first() {
    let policy = KeepPolicy {
        last: Some(1),
        ..Default::default()
    };
    for locked in [true, false] {
        let store = if locked {
            MemStore::new().with_object_lock(2)
        } else {
            MemStore::new()
        };
        let t = target("m", &store);
        let first = backup(&FakeSource::new(noise(SIZE, 16)), std::slice::from_ref(&t))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let second = backup(&FakeSource::new(noise(SIZE, 17)), std::slice::from_ref(&t))
            .await
            .unwrap();
        let report = prune::prune("db", &t, &policy, &Trust::blind(), Utc::now(), false)
            .await
            .unwrap();
        let action = |id: &str| {
            report
                .items
                .iter()
                .find(|i| i.id == id)
                .map(|i| i.action.clone())
                .unwrap()
        };
        assert_eq!(action(&second.manifest.id), Action::Keep);
        let old = &first.manifest;
        if locked {
            assert!(
                matches!(action(&old.id), Action::Locked { until } if until > Utc::now()),
                "{:?}",
                action(&old.id)
            );
            assert!(
                store.object(&old.key()).is_some(),
                "a locked backup stays whole"
            );
            assert!(store.object(&old.data.key).is_some());
        } else {
            assert_eq!(action(&old.id), Action::Removed);
            assert_eq!(
                manifests(&store),
                vec![manifest_key("db", &second.manifest.id)]
            );
            assert!(store.object(&old.data.key).is_none());
        }
    }

    // A failed manifest delete keeps the backup whole: its data is not touched.
    let store = MemStore::new();
    let t = target("m", &store);
    let first = backup(&FakeSource::new(noise(SIZE, 18)), std::slice::from_ref(&t))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    backup(&FakeSource::new(noise(SIZE, 19)), std::slice::from_ref(&t))
        .await
        .unwrap();
    store.fail_once(Op::Delete, &first.manifest.key());
    let report = prune::prune("db", &t, &policy, &Trust::blind(), Utc::now(), false)
        .await
        .unwrap();
    assert!(report.has_failures());
    assert!(store.object(&first.manifest.key()).is_some());
    assert!(store.object(&first.manifest.data.key).is_some());
}
