//! The rules of restores and drills, checked in memory through `drkit_core::testing`: a
//! one-pass restore never hands a bad archive's bytes over as good, and fails over to the
//! next copy; a drill runs the operator's checks, records their values and its timings,
//! fails on a check or over its RTO, and removes its scratch place when it is interrupted.

use std::sync::Arc;

use drkit_core::drill::{Check, Expect, Place, Query};
use drkit_core::pipeline::{self, BackupOptions, DrillOptions, Target};
use drkit_core::testing::{noise, FakeSource, MemStore};
use drkit_core::{ErrorKind, Manifest};

async fn backed_up(source: &FakeSource, stores: &[&MemStore]) -> Manifest {
    let targets: Vec<Target> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| Target {
            name: format!("s{i}"),
            storage: Arc::new((*s).clone()),
        })
        .collect();
    pipeline::backup(
        "db",
        source,
        &targets,
        &BackupOptions::default(),
        pipeline::no_progress(),
    )
    .await
    .unwrap()
    .manifest
}

/// Flip one byte in the middle of the stored archive: it still decompresses or not, but
/// either way its checksums no longer match.
fn corrupt(store: &MemStore, m: &Manifest) {
    let mut bytes = store.object(&m.data.key).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    store.insert(&m.data.key, bytes);
}

/// Restore `m` from `store` through `source` into its default place.
async fn restore_from(
    store: &MemStore,
    m: &Manifest,
    source: &FakeSource,
) -> Result<pipeline::RestoreOutcome, pipeline::RestoreFailure> {
    pipeline::restore_phased(
        store,
        m,
        source,
        &Default::default(),
        false,
        pipeline::no_progress(),
    )
    .await
}

#[tokio::test]
async fn one_pass_restore_refuses_a_bad_archive_and_keeps_nothing() {
    let data = noise(300 * 1024, 7);
    let source = FakeSource::new(data.clone()).one_pass();
    let store = MemStore::new();
    let m = backed_up(&source, &[&store]).await;

    let ok = restore_from(&store, &m, &source).await.unwrap();
    assert!(ok.timings.one_pass);
    assert_eq!(ok.timings.verify_ms, 0, "no separate verification pass");
    assert_eq!(ok.timings.raw_bytes, data.len() as u64);
    assert_eq!(source.restored(), Some(data));

    let fresh = FakeSource::new(noise(10, 7)).one_pass();
    corrupt(&store, &m);
    let err = restore_from(&store, &m, &fresh).await.unwrap_err();
    assert_eq!(err.error.kind(), ErrorKind::Integrity, "{}", err.error);
    assert_eq!(err.phase, pipeline::Phase::Verify, "nothing was made live");
    assert_eq!(fresh.restored(), None, "the driver kept nothing");
}

#[tokio::test]
async fn two_pass_restore_verifies_before_the_driver_sees_a_byte() {
    let source = FakeSource::new(noise(200 * 1024, 7));
    let store = MemStore::new();
    let m = backed_up(&source, &[&store]).await;
    let ok = restore_from(&store, &m, &source).await.unwrap();
    assert!(!ok.timings.one_pass);
    corrupt(&store, &m);
    let fresh = FakeSource::new(noise(10, 7));
    let err = restore_from(&store, &m, &fresh).await.unwrap_err();
    assert_eq!(err.phase, pipeline::Phase::Verify);
    assert_eq!(fresh.restored(), None);
}

#[tokio::test]
async fn a_one_pass_restore_falls_over_to_the_next_good_copy() {
    let data = noise(100 * 1024, 7);
    let source = FakeSource::new(data.clone()).one_pass();
    let (a, b) = (MemStore::new(), MemStore::new());
    let m = backed_up(&source, &[&a, &b]).await;
    corrupt(&a, &m);
    let targets = [
        Target {
            name: "a".into(),
            storage: Arc::new(a.clone()),
        },
        Target {
            name: "b".into(),
            storage: Arc::new(b.clone()),
        },
    ];
    let fresh = FakeSource::new(noise(10, 7)).one_pass();
    let run = drkit_core::ops::restore::restore(
        "db",
        &targets,
        &drkit_core::signing::Trust::blind(),
        &Default::default(),
        &fresh,
        &Default::default(),
        false,
        pipeline::no_progress(),
    )
    .await
    .unwrap();
    assert_eq!(run.storage, "b");
    assert_eq!(fresh.restored(), Some(data));
}

fn check(name: &str, min: Option<f64>, max: Option<f64>) -> Check {
    Check {
        name: name.into(),
        query: Query::Sql("restored bytes".into()),
        expect: Expect {
            min,
            max,
            equals: None,
        },
    }
}

#[tokio::test]
async fn drill_checks_values_timings_and_verdicts() {
    let data = noise(64 * 1024, 7);
    let source = FakeSource::new(data.clone()).one_pass();
    let store = MemStore::new();
    let m = backed_up(&source, &[&store]).await;
    let len = data.len() as f64;

    let opts = DrillOptions {
        checks: vec![check("size", Some(len), Some(len))],
        ..Default::default()
    };
    let report = pipeline::drill(&store, &m, &source, &opts).await.unwrap();
    assert!(report.ok, "{:?}", report.error);
    assert_eq!(report.checks.len(), 1);
    assert_eq!(report.checks[0].value, serde_json::json!(data.len()));
    assert!(report.checks[0].ok);
    let t = report.timings.clone().unwrap();
    assert_eq!(
        report.duration_ms,
        t.download_ms + t.restore_ms + t.checks_ms
    );
    assert_eq!(t.raw_bytes, data.len() as u64);
    assert_eq!(report.place, Place::Beside.describe());
    assert_eq!(source.cleanups(), 1);
    assert!(store.object(&report.key()).is_some(), "the report is kept");

    // A failing check, and one the driver cannot run: both recorded, the first one decides.
    let opts = DrillOptions {
        checks: vec![
            check("too big", None, Some(len - 1.0)),
            Check {
                name: "unknown".into(),
                query: Query::Path("x".into()),
                expect: Expect::default(),
            },
        ],
        ..Default::default()
    };
    let report = pipeline::drill(&store, &m, &source, &opts).await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.error_kind, Some(ErrorKind::Integrity));
    assert!(report.error.as_deref().unwrap().contains("too big"));
    assert_eq!(report.checks.len(), 2);
    assert!(!report.checks[0].ok && !report.checks[1].ok);
    assert_eq!(report.checks[1].value, serde_json::Value::Null);
    assert_eq!(source.cleanups(), 2);

    // Over the RTO: restored and checked, but too slow.
    let opts = DrillOptions {
        rto: Some(std::time::Duration::from_millis(5)),
        ..Default::default()
    };
    let slow_source = FakeSource::new(data).restore_delay(std::time::Duration::from_millis(30));
    let slow_store = MemStore::new();
    let m = backed_up(&slow_source, &[&slow_store]).await;
    let report = pipeline::drill(&slow_store, &m, &slow_source, &opts)
        .await
        .unwrap();
    assert!(report.duration_ms >= 30, "{}", report.duration_ms);
    assert!(!report.ok);
    assert_eq!(report.error_kind, Some(ErrorKind::Integrity));
    assert!(report.error.unwrap().contains("recovery time objective"));
}

#[tokio::test]
async fn an_interrupted_drill_removes_its_scratch_and_keeps_no_report() {
    let source = FakeSource::new(noise(64 * 1024, 7))
        .one_pass()
        .restore_delay(std::time::Duration::from_secs(3600));
    let store = MemStore::new();
    let m = backed_up(&source, &[&store]).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let opts = DrillOptions {
        cancel: Some(stopped),
        ..Default::default()
    };
    let drill = pipeline::drill(&store, &m, &source, &opts);
    let interrupt = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stop.send(true).unwrap();
    };
    let (result, ()) = tokio::join!(drill, interrupt);
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(err.to_string().contains("removed"), "{err}");
    assert_eq!(source.cleanups(), 1);
    assert!(
        !store.keys().iter().any(|k| k.contains("/drills/")),
        "no report for an interrupted drill"
    );
}
