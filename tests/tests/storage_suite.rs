//! The storage contract suite, run against every storage: the local folder, moto (SigV4
//! checked), s3s-fs and the in-memory `MemStore` of `drkit_core::testing`. It checks the
//! `Storage` contract the pipeline relies on: put / get / head, streaming uploads that are
//! invisible until committed (and leave nothing when aborted or dropped), ranged reads,
//! listing with pagination over thousands of keys, deletes, the cleaning of leftovers, and the
//! lock semantics of each storage.
//!
//! Each check is its own test on a fresh storage, generated per backend by
//! `contract_tests!`: `local::ranged_reads`, `s3_moto::leftovers_are_cleaned`, ... so one
//! failure hides none of the others (`cargo test --test e2e -- storage_suite::mem::` runs one
//! backend).

use std::sync::Arc;
use std::time::Duration;

use drkit_core::layout::clean_leftovers;
use drkit_core::testing::MemStore;
use drkit_core::{ErrorKind, Storage, Upload};
use drkit_drivers::storage::local::LocalStorage;
use drkit_tests::storage::{moto, s3s, Pattern, S3Server};
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;
/// Keys for the pagination check; with `list_page_size = 100` that is 21 pages on S3.
const MANY: usize = 2_050;
/// Keys for the delete check: more than one page on S3.
const FEW: usize = 150;

/// S3 settings for the suite: small parts (5 MiB, the S3 minimum) so that multipart uploads
/// happen with little data, a small page size so that pagination happens, and no grace
/// period for leftovers.
const S3_SUITE: &str = "part_size = \"5MiB\"\nupload_concurrency = 2\nlist_page_size = 100\nleftover_age = \"0s\"\nmax_attempts = 3";

/// What the suite can check directly on each kind of storage.
enum Backend {
    Local(std::path::PathBuf),
    S3 { server: S3Server, bucket: String },
    Mem(MemStore),
}

impl Backend {
    /// Nothing half-written left behind: no temp files, no unfinished multipart uploads.
    async fn assert_no_pending(&self, what: &str) {
        match self {
            Backend::Local(root) => {
                let mut stack = vec![root.clone()];
                while let Some(dir) = stack.pop() {
                    let entries = match std::fs::read_dir(&dir) {
                        Ok(e) => e,
                        // Nothing written yet: the root is created on the first write.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => panic!("{what}: reading {}: {e}", dir.display()),
                    };
                    for e in entries {
                        let e = e.unwrap();
                        let name = e.file_name().to_string_lossy().to_string();
                        assert!(
                            !name.contains(".drkit-tmp-"),
                            "{what}: temp file {name} left in {}",
                            dir.display()
                        );
                        if e.file_type().unwrap().is_dir() {
                            stack.push(e.path());
                        }
                    }
                }
            }
            Backend::S3 { server, bucket } if server.lists_uploads => {
                // A dropped upload is aborted by its background task: give it a moment.
                for _ in 0..100 {
                    if server.pending_uploads(bucket).await.is_empty() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!(
                    "{what}: unfinished multipart uploads left: {:?}",
                    server.pending_uploads(bucket).await
                );
            }
            Backend::S3 { .. } => {}
            Backend::Mem(store) => {
                assert!(
                    store.pending().is_empty(),
                    "{what}: unfinished uploads left: {:?}",
                    store.pending()
                );
            }
        }
    }

    fn can_lock(&self) -> bool {
        // S3: a lease object; both test servers honour conditional writes (tests/tests/leases.rs).
        matches!(
            self,
            Backend::Local(_) | Backend::Mem(_) | Backend::S3 { .. }
        )
    }
}

/// A fresh, empty storage under test and what the suite knows of it.
struct Fixture {
    storage: Arc<dyn Storage>,
    backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    async fn local() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        Fixture {
            storage: Arc::new(LocalStorage::new(&root)),
            backend: Backend::Local(root),
            _dir: Some(dir),
        }
    }

    async fn s3(server: S3Server) -> Fixture {
        let bucket = server.new_bucket(false).await;
        // A prefix, so that the suite also checks that keys are mapped under it and back.
        let storage = server.storage(&bucket, &format!("{S3_SUITE}\nprefix = \"suite-root/\""));
        Fixture {
            storage,
            backend: Backend::S3 { server, bucket },
            _dir: None,
        }
    }

    async fn mem() -> Fixture {
        let store = MemStore::new();
        Fixture {
            storage: Arc::new(store.clone()),
            backend: Backend::Mem(store),
            _dir: None,
        }
    }

    fn s(&self) -> &dyn Storage {
        self.storage.as_ref()
    }
}

async fn read_all(storage: &dyn Storage, key: &str) -> Vec<u8> {
    let mut r = storage
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"));
    let mut out = Vec::new();
    r.read_to_end(&mut out)
        .await
        .unwrap_or_else(|e| panic!("read {key}: {e}"));
    out
}

async fn read_range(storage: &dyn Storage, key: &str, start: u64, end: Option<u64>) -> Vec<u8> {
    let mut r = storage
        .get_range(key, start, end)
        .await
        .unwrap_or_else(|e| panic!("get_range {key} {start}..{end:?}: {e}"));
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    out
}

/// Write `data` into an upload in chunks of an awkward size.
async fn write_chunks(up: &mut Box<dyn Upload>, data: &[u8]) {
    for chunk in data.chunks(100_003) {
        up.write_all(chunk).await.unwrap();
    }
}

async fn keys(storage: &dyn Storage, prefix: &str) -> Vec<String> {
    storage
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// The data of the streamed upload: larger than three parts.
fn big() -> Vec<u8> {
    Pattern::bytes(1, 17 * MIB + 12_345)
}

/// Upload `data` to `key` as a stream and commit it.
async fn upload(s: &dyn Storage, key: &str, data: &[u8]) {
    let mut up = s.create(key).await.unwrap();
    write_chunks(&mut up, data).await;
    up.flush().await.unwrap();
    assert_eq!(up.commit().await.unwrap().size, data.len() as u64, "{key}");
}

/// Put `count` keys `<prefix>k00000`... holding their own key, 16 at a time.
async fn put_many(storage: &Arc<dyn Storage>, prefix: &str, count: usize) -> Vec<String> {
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}k{i:05}")).collect();
    futures::stream::iter(names.iter().cloned())
        .map(|k| {
            let storage = storage.clone();
            async move { storage.put(&k, k.as_bytes().to_vec()).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    names
}

/// put / get / head, overwrite.
async fn put_get_head_overwrite(f: &Fixture) {
    let s = f.s();
    s.put("suite/a/one.txt", b"hello".to_vec()).await.unwrap();
    assert_eq!(read_all(s, "suite/a/one.txt").await, b"hello");
    let meta = s
        .head("suite/a/one.txt")
        .await
        .unwrap()
        .expect("head of a written key");
    assert_eq!((meta.key.as_str(), meta.size), ("suite/a/one.txt", 5));
    assert!(meta.modified.is_some());
    s.put("suite/a/one.txt", b"hello again".to_vec())
        .await
        .unwrap();
    assert_eq!(read_all(s, "suite/a/one.txt").await, b"hello again");
}

/// Missing keys: get and get_range are NotFound, head is None.
async fn missing_keys(f: &Fixture) {
    let s = f.s();
    // Something else exists: the storage is set up, the key is what is missing.
    s.put("suite/a/one.txt", b"hello".to_vec()).await.unwrap();
    assert_eq!(
        s.get("suite/missing")
            .await
            .err()
            .expect("missing key")
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        s.get_range("suite/missing", 0, Some(3))
            .await
            .err()
            .expect("missing key")
            .kind(),
        ErrorKind::NotFound
    );
    assert!(s.head("suite/missing").await.unwrap().is_none());
}

/// A streamed upload larger than three parts: invisible until committed, then whole.
async fn streamed_upload_is_invisible_until_commit(f: &Fixture) {
    let s = f.s();
    let big = big();
    let mut up = s.create("suite/big.bin").await.unwrap();
    write_chunks(&mut up, &big).await;
    assert!(
        s.head("suite/big.bin").await.unwrap().is_none(),
        "visible before commit"
    );
    assert!(!keys(s, "suite/")
        .await
        .contains(&"suite/big.bin".to_string()));
    up.flush().await.unwrap();
    let meta = up.commit().await.unwrap();
    assert_eq!(meta.size, big.len() as u64);
    assert_eq!(read_all(s, "suite/big.bin").await, big);
    assert_eq!(
        s.head("suite/big.bin").await.unwrap().unwrap().size,
        big.len() as u64
    );
}

/// Exactly one part, a small object, an empty object.
async fn uploads_of_one_part_small_and_empty(f: &Fixture) {
    let s = f.s();
    for (key, len) in [
        ("suite/exact.bin", 5 * MIB),
        ("suite/small.bin", 1000),
        ("suite/empty.bin", 0),
    ] {
        let data = Pattern::bytes(2, len);
        let mut up = s.create(key).await.unwrap();
        write_chunks(&mut up, &data).await;
        assert_eq!(up.commit().await.unwrap().size, len as u64, "{key}");
        assert_eq!(read_all(s, key).await, data, "{key}");
    }
}

/// Abort: nothing visible, nothing pending (the multipart upload had started).
async fn abort_leaves_nothing(f: &Fixture) {
    let s = f.s();
    let big = big();
    let mut up = s.create("suite/aborted.bin").await.unwrap();
    write_chunks(&mut up, &big[..12 * MIB]).await;
    up.abort().await.unwrap();
    assert!(s.head("suite/aborted.bin").await.unwrap().is_none());
    f.backend.assert_no_pending("after abort").await;
}

/// Dropped without commit (an error unwound past it): the same.
async fn drop_leaves_nothing(f: &Fixture) {
    let s = f.s();
    let big = big();
    let mut up = s.create("suite/dropped.bin").await.unwrap();
    write_chunks(&mut up, &big[..12 * MIB]).await;
    drop(up);
    f.backend.assert_no_pending("after drop").await;
    assert!(s.head("suite/dropped.bin").await.unwrap().is_none());
}

/// Ranged reads, across part boundaries, to the end, past the end.
async fn ranged_reads(f: &Fixture) {
    let s = f.s();
    let big = big();
    upload(s, "suite/big.bin", &big).await;
    let len = big.len() as u64;
    let p = 5 * MIB as u64;
    for (start, end) in [
        (0, Some(10)),
        (p - 3, Some(p + 3)),
        (len - 5, None),
        (len - 1, Some(len)),
        (123, Some(2 * p + 7)),
    ] {
        let got = read_range(s, "suite/big.bin", start, end).await;
        let want = &big[start as usize..end.unwrap_or(len) as usize];
        assert!(
            got == want,
            "range {start}..{end:?}: {} bytes, want {}",
            got.len(),
            want.len()
        );
    }
    assert!(
        read_range(s, "suite/big.bin", len, None).await.is_empty(),
        "range from the end"
    );
    assert!(
        read_range(s, "suite/big.bin", 7, Some(7)).await.is_empty(),
        "empty range"
    );
}

/// Listing: thousands of keys, over many pages, in key order; prefixes do not leak.
async fn listing_pages_in_key_order(f: &Fixture) {
    let s = f.s();
    // The five objects the other checks write beside the many keys.
    for key in [
        "suite/a/one.txt",
        "suite/big.bin",
        "suite/exact.bin",
        "suite/small.bin",
        "suite/empty.bin",
    ] {
        s.put(key, key.as_bytes().to_vec()).await.unwrap();
    }
    let names = put_many(&f.storage, "suite/many/", MANY).await;
    let listed = s.list("suite/many/").await.unwrap();
    assert_eq!(listed.len(), MANY);
    assert!(
        listed.iter().map(|o| &o.key).eq(names.iter()),
        "listing is in key order and complete"
    );
    assert!(listed.iter().all(|o| o.size == o.key.len() as u64));
    assert_eq!(
        keys(s, "suite/many/k0100").await,
        (1000..1010)
            .map(|i| format!("suite/many/k{i:05}"))
            .collect::<Vec<_>>()
    );
    assert!(keys(s, "suite/nothing-here/").await.is_empty());
    assert_eq!(
        keys(s, "suite/a/").await,
        vec!["suite/a/one.txt".to_string()]
    );
    let all = keys(s, "").await;
    assert!(
        all.contains(&"suite/big.bin".to_string()) && all.len() == MANY + 5,
        "{} keys",
        all.len()
    );
}

/// Deletes: one key, then a missing key (not an error).
async fn deletes(f: &Fixture) {
    let s = f.s();
    put_many(&f.storage, "suite/many/", FEW).await;
    s.delete("suite/many/k00007").await.unwrap();
    assert!(s.head("suite/many/k00007").await.unwrap().is_none());
    assert_eq!(s.list("suite/many/").await.unwrap().len(), FEW - 1);
    s.delete("suite/many/k00007").await.unwrap();
    s.delete("suite/never-was").await.unwrap();
}

/// Nothing written without object lock is locked.
async fn nothing_is_locked_here(f: &Fixture) {
    let s = f.s();
    s.put("suite/a/one.txt", b"hello".to_vec()).await.unwrap();
    assert_eq!(
        s.locked_until("suite/a/one.txt").await.unwrap(),
        None,
        "nothing is locked here"
    );
}

/// Leftovers: a backup folder without manifest and a crashed (leaked, never finished)
/// upload are removed; complete backups and drill reports stay. Cleaning again finds nothing.
async fn leftovers_are_cleaned(f: &Fixture) {
    let (s, backend) = (f.s(), &f.backend);
    let big = big();
    let complete = "lj/20260101T000000Z-aaaaaa";
    let incomplete = "lj/20260102T000000Z-bbbbbb";
    s.put(&format!("{complete}/data.bin"), b"data".to_vec())
        .await
        .unwrap();
    s.put(&format!("{complete}/manifest.json"), b"{}".to_vec())
        .await
        .unwrap();
    s.put(&format!("{incomplete}/data.bin"), b"half".to_vec())
        .await
        .unwrap();
    s.put("lj/drills/20260103T000000Z.json", b"{}".to_vec())
        .await
        .unwrap();
    let mut crashed = s
        .create("lj/20260104T000000Z-cccccc/data.bin")
        .await
        .unwrap();
    write_chunks(&mut crashed, &big[..11 * MIB]).await;
    std::mem::forget(crashed); // as if the process had died: no commit, no abort, no drop
                               // S3 times have a resolution of one second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let lock = s.lock_job("lj").await.unwrap();
    let removed = clean_leftovers(s, "lj", lock.is_held()).await.unwrap();
    drop(lock);
    assert!(
        removed.contains(&format!("{incomplete}/data.bin")),
        "removed: {removed:?}"
    );
    let kept: Vec<String> = keys(s, "lj/")
        .await
        .into_iter()
        .filter(|k| !k.contains("/."))
        .collect();
    assert_eq!(
        kept,
        vec![
            format!("{complete}/data.bin"),
            format!("{complete}/manifest.json"),
            "lj/drills/20260103T000000Z.json".to_string(),
        ]
    );
    match backend {
        Backend::S3 { server, bucket } if server.lists_uploads => {
            assert!(
                removed.contains(&"lj/20260104T000000Z-cccccc/data.bin".to_string()),
                "removed: {removed:?}"
            );
            assert!(
                server.pending_uploads(bucket).await.is_empty(),
                "the crashed upload was aborted"
            );
        }
        Backend::S3 { .. } => {} // s3s-fs cannot list multipart uploads: tolerated, not cleaned
        Backend::Mem(_) => {
            assert!(
                removed.contains(&"lj/20260104T000000Z-cccccc/data.bin".to_string()),
                "removed: {removed:?}"
            );
            backend.assert_no_pending("after clean_leftovers").await;
        }
        Backend::Local(_) => backend.assert_no_pending("after clean_leftovers").await,
    }
    // Cleaning again finds nothing.
    let lock = s.lock_job("lj").await.unwrap();
    assert_eq!(
        clean_leftovers(s, "lj", lock.is_held()).await.unwrap(),
        Vec::<String>::new()
    );
    drop(lock);
}

/// Lock semantics: the local folder (a lock file), MemStore and S3 (a lease object) hold a
/// real lock: a second one is refused until the first is released.
async fn lock_semantics(f: &Fixture) {
    let s = f.s();
    let first = s.lock_job("lj").await.unwrap();
    if f.backend.can_lock() {
        assert!(first.is_held());
        let second = s
            .lock_job("lj")
            .await
            .expect_err("a second lock is refused");
        assert_eq!(second.kind(), ErrorKind::Refused);
        assert!(second.to_string().contains("lj"), "{second}");
        drop(first);
        assert!(
            s.lock_job("lj").await.unwrap().is_held(),
            "the lock is released on drop"
        );
    } else {
        assert!(!first.is_held());
        assert!(!s.lock_job("lj").await.unwrap().is_held());
    }
}

/// Everything written (puts, a streamed upload, a job's lock and leftovers) can be deleted,
/// and on S3 nothing is left in the bucket: keys map under the prefix and back.
async fn everything_can_be_deleted(f: &Fixture) {
    let s = f.s();
    s.put("suite/a/one.txt", b"hello".to_vec()).await.unwrap();
    upload(s, "suite/big.bin", &big()).await;
    put_many(&f.storage, "suite/many/", 10).await;
    s.put("lj/20260102T000000Z-bbbbbb/data.bin", b"half".to_vec())
        .await
        .unwrap();
    drop(s.lock_job("lj").await.unwrap());
    for k in keys(s, "").await {
        s.delete(&k).await.unwrap();
    }
    assert!(keys(s, "").await.is_empty());
    if let Backend::S3 { server, bucket } = &f.backend {
        let left = server.keys(bucket).await;
        assert!(left.is_empty(), "objects left in the bucket: {left:?}");
    }
}

/// One `#[tokio::test]` per contract check, in a module per backend.
macro_rules! contract_tests {
    ($($backend:ident => $fixture:expr;)+) => {
        $(
            mod $backend {
                use super::*;
                contract_tests!(@checks $fixture;
                    put_get_head_overwrite,
                    missing_keys,
                    streamed_upload_is_invisible_until_commit,
                    uploads_of_one_part_small_and_empty,
                    abort_leaves_nothing,
                    drop_leaves_nothing,
                    ranged_reads,
                    listing_pages_in_key_order,
                    deletes,
                    nothing_is_locked_here,
                    leftovers_are_cleaned,
                    lock_semantics,
                    everything_can_be_deleted,
                );
            }
        )+
    };
    (@checks $fixture:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let fixture = $fixture.await;
                super::$check(&fixture).await;
            }
        )+
    };
}

contract_tests! {
    local => Fixture::local();
    s3_moto => Fixture::s3(moto());
    s3_s3s_fs => Fixture::s3(s3s());
    mem => Fixture::mem();
}
