//! End to end: writes whose answer is lost. drkit backs up to S3 (s3s-fs) through the
//! request-level fault proxy; the answer to the manifest PUT is cut after the write landed.
//! drkit asks the storage before deciding: the landed manifest is a complete backup.

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
}
