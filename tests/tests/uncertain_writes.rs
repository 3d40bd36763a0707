//! End to end: writes whose answer is lost. drkit backs up to S3 (s3s-fs) through the
//! request-level fault proxy; the answer to the manifest PUT is cut after the write landed,
//! or the PUT fails with 500. drkit asks the storage before deciding, and never deletes the
//! archive of a manifest that may exist.

use drkit_tests::fault_proxy::{Action, HttpFaultProxy, Rule};
use drkit_tests::storage::s3s;
use drkit_tests::Scratch;

fn fill(db: &std::path::Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);\
         INSERT INTO t(v) SELECT randomblob(200) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) SELECT i FROM n);",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_manifest_answer_is_checked_and_the_archive_is_never_deleted() {
    let server = s3s();
    let bucket = server.new_bucket(false).await;
    let proxy = HttpFaultProxy::start(&server.endpoint);
    let s = Scratch::new();
    fill(&s.path("app.db"));
    // One attempt per request: the fault is what drkit sees, not something the SDK retries.
    s.config(&format!(
        "{}[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"remote\"]\n",
        server.storage_toml("remote", proxy.endpoint(), &bucket, "max_attempts = 1"),
        s.path("app.db").display()
    ));

    // 1. The manifest PUT lands, its answer is lost: a complete backup, with a warning.
    let cut = proxy.add_rule(Rule::new("PUT", "/manifest.json", Action::CutResponse).nth(1));
    let b = tokio::task::block_in_place(|| s.drkit(&["--json", "backup"]));
    b.expect_code(0);
    assert_eq!(proxy.stats(cut).fired, 1, "the fault fired");
    assert!(
        b.stderr
            .contains("the manifest is in the storage, byte for byte"),
        "{}",
        b.stderr
    );
    let id = b.json()[0]["manifest"]["id"].as_str().unwrap().to_string();
    proxy.clear_rules();
    let l = tokio::task::block_in_place(|| s.drkit(&["--json", "list", "app"]));
    l.expect_code(0);
    assert_eq!(l.json()[0]["id"], id.as_str());
    tokio::task::block_in_place(|| s.drkit(&["verify", "app", "--id", &id])).expect_code(0);

    // 2. The manifest PUT fails (500, nothing written): the backup failed, exit 1, and the
    //    archive stays for the next run's cleaning instead of being deleted.
    proxy.add_rule(Rule::new("PUT", "/manifest.json", Action::Status500).every());
    let b = tokio::task::block_in_place(|| s.drkit(&["--json", "backup"]));
    b.expect_code(1);
    assert!(b.stderr.contains("it is not there"), "{}", b.stderr);
    proxy.clear_rules();
    let keys = server.keys(&bucket).await;
    let archives: Vec<&String> = keys.iter().filter(|k| k.contains("/data.")).collect();
    let manifests: Vec<&String> = keys
        .iter()
        .filter(|k| k.ends_with("manifest.json"))
        .collect();
    assert_eq!(manifests.len(), 1, "{keys:?}");
    assert_eq!(
        archives.len(),
        2,
        "the second archive was not deleted: {keys:?}"
    );
    let l = tokio::task::block_in_place(|| s.drkit(&["--json", "list", "app"]));
    assert_eq!(
        l.json().as_array().unwrap().len(),
        1,
        "only the complete backup is listed"
    );

    // 3. The answer is lost and the storage cannot be asked either (the HEAD resets): the
    //    backup may be complete; exit 1 says so, and the archive is kept.
    proxy.add_rule(Rule::new("PUT", "/manifest.json", Action::CutResponse).nth(1));
    proxy.add_rule(Rule::new("HEAD", "/manifest.json", Action::Reset).every());
    let b = tokio::task::block_in_place(|| s.drkit(&["--json", "backup"]));
    b.expect_code(1);
    assert!(
        b.stderr.contains("whether it landed is unknown"),
        "{}",
        b.stderr
    );
    proxy.clear_rules();
    let keys = server.keys(&bucket).await;
    assert_eq!(
        keys.iter().filter(|k| k.contains("/data.")).count(),
        3,
        "{keys:?}"
    );
    let l = tokio::task::block_in_place(|| s.drkit(&["--json", "list", "app"]));
    assert_eq!(
        l.json().as_array().unwrap().len(),
        2,
        "the landed manifest is a backup with its data"
    );
    tokio::task::block_in_place(|| s.drkit(&["verify", "--all"])).expect_code(0);
}
