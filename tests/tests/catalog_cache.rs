//! End to end: the catalog at scale (issue 15) on moto and s3s-fs. The local manifest cache
//! is untrusted input: a tampered, forged, oversized or stray cache file never changes what
//! `drkit list` says, is replaced or removed, and entries of backups gone from the bucket are
//! pruned. A job of a few hundred backups (read concurrently) lists exactly, in order, cold
//! and warm alike.

use std::path::Path;
use std::sync::Arc;

use drkit_tests::storage::{moto, s3s, S3Server};
use drkit_tests::{files_under, Run, Scratch};
use sha2::{Digest, Sha256};

fn make_db(path: &Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t(v) VALUES ('a'), ('b');",
    )
    .unwrap();
}

async fn drkit(s: &Arc<Scratch>, args: &[&str], env: &[(&str, &str)]) -> Run {
    let s = s.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = s.command(&args);
        cmd.env_remove("DRKIT_CACHE").env_remove("DRKIT_CACHE_DIR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run::from(cmd.output().expect("run drkit"))
    })
    .await
    .unwrap()
}

/// A scratch folder whose job `app` backs up to `bucket`, with its cache in `cache/`.
fn scratch(server: &S3Server, bucket: &str, job_extra: &str) -> Arc<Scratch> {
    let s = Scratch::new();
    make_db(&s.path("app.db"));
    let section = server.storage_toml("offsite", &server.endpoint, bucket, "");
    s.config(&format!(
        "{section}\n[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"offsite\"]\n{job_extra}\n\n[cache]\ndir = \"{}\"\n",
        s.path("app.db").display(),
        s.path("cache").display()
    ));
    Arc::new(s)
}

/// `(id, state, reason)` of each entry of `list --json`, in its order.
async fn listed(s: &Arc<Scratch>) -> Vec<(String, String, String)> {
    let l = drkit(s, &["--json", "list", "app"], &[]).await;
    l.expect_code(0);
    l.list_entries()
}

/// The cache files: (path, header, body).
fn cache_files(s: &Scratch) -> Vec<(std::path::PathBuf, serde_json::Value, Vec<u8>)> {
    let root = s.path("cache");
    files_under(&root)
        .into_iter()
        .filter(|f| f.ends_with(".rec"))
        .map(|f| {
            let path = root.join(f);
            let bytes = std::fs::read(&path).unwrap();
            let nl = bytes.iter().position(|&b| b == b'\n').unwrap_or(0);
            let header = serde_json::from_slice(&bytes[..nl]).unwrap_or(serde_json::Value::Null);
            (path, header, bytes[nl + 1..].to_vec())
        })
        .collect()
}

/// A cache file with a valid header (the right checksum) for `body`.
fn forge(header: &serde_json::Value, body: &[u8]) -> Vec<u8> {
    let mut h = header.clone();
    h["sha256"] = hex::encode(Sha256::digest(body)).into();
    let mut out = serde_json::to_vec(&h).unwrap();
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

async fn tampered_cache_never_changes_the_listing(server: S3Server) {
    let bucket = server.new_bucket(false).await;
    let s0 = Scratch::new();
    let (key_file, _) = drkit_tests::signing_keypair(s0.dir.path());
    let s = scratch(
        &server,
        &bucket,
        &format!("signing = {{ key_file = \"{}\" }}", key_file.display()),
    );
    for _ in 0..5 {
        drkit(&s, &["backup"], &[]).await.expect_code(0);
    }
    let truth = listed(&s).await;
    assert_eq!(truth.len(), 5, "{truth:?}");
    assert!(truth.iter().all(|e| e.1 == "good"), "{truth:?}");
    // every manifest and its signature are in the cache now
    let files = cache_files(&s);
    assert_eq!(files.len(), 10, "{:?}", files_under(&s.path("cache")));
    assert_eq!(listed(&s).await, truth, "warm = cold");

    let manifests: Vec<_> = files
        .iter()
        .filter(|f| f.1["key"].as_str().unwrap().ends_with("/manifest.json"))
        .cloned()
        .collect();
    assert_eq!(manifests.len(), 5);
    let id_of = |h: &serde_json::Value| {
        h["key"]
            .as_str()
            .unwrap()
            .split('/')
            .nth(1)
            .unwrap()
            .to_string()
    };
    // 1: a flipped byte
    let (p, _, _) = &manifests[0];
    let mut b = std::fs::read(p).unwrap();
    *b.last_mut().unwrap() ^= 0x20;
    std::fs::write(p, b).unwrap();
    // 2: a valid cache file holding another backup's manifest (ids have one length)
    let (p, h, body) = &manifests[1];
    let forged = String::from_utf8(body.clone())
        .unwrap()
        .replace(&id_of(h), &id_of(&manifests[2].1));
    assert_ne!(forged.as_bytes(), body.as_slice());
    std::fs::write(p, forge(h, forged.as_bytes())).unwrap();
    // 3: a valid cache file with one digit of raw_size changed: its signature fails
    let (p, h, body) = &manifests[2];
    let mut edited = body.clone();
    let at = String::from_utf8_lossy(body).find("\"raw_size\"").unwrap();
    let end = at + edited[at..].iter().position(|&c| c == b',').unwrap() - 1;
    assert!(edited[end].is_ascii_digit());
    edited[end] = if edited[end] == b'9' {
        b'8'
    } else {
        edited[end] + 1
    };
    std::fs::write(p, forge(h, &edited)).unwrap();
    // 4: an oversized file
    let (p, _, _) = &manifests[3];
    std::fs::write(p, vec![b'{'; (1 << 20) + (16 << 10)]).unwrap();
    // 5: garbage
    let (p, _, _) = &manifests[4];
    std::fs::write(p, b"\xff\xfe not a cache file").unwrap();
    // 6: a stray file for a key the bucket does not hold
    let stray = manifests[0].0.with_file_name("0000.rec");
    std::fs::write(&stray, forge(&manifests[0].1, b"{}")).unwrap();

    assert_eq!(listed(&s).await, truth, "a tampered cache changes nothing");
    assert!(!stray.exists(), "a file for no listed key is removed");
    // every file was replaced by a good one again
    let again = cache_files(&s);
    assert_eq!(again.len(), 10);
    for (p, h, body) in &again {
        assert_eq!(
            h["sha256"].as_str().unwrap(),
            hex::encode(Sha256::digest(body)),
            "{}",
            p.display()
        );
    }
    // a backup removed from the bucket leaves the listing and the cache
    let gone = &truth[0].0;
    for name in ["manifest.json", "manifest.json.sig"] {
        server
            .admin()
            .delete_object()
            .bucket(&bucket)
            .key(format!("app/{gone}/{name}"))
            .send()
            .await
            .unwrap();
    }
    let after = listed(&s).await;
    assert_eq!(after, truth[1..].to_vec());
    let left = cache_files(&s);
    assert_eq!(left.len(), 8);
    assert!(left
        .iter()
        .all(|f| !f.1["key"].as_str().unwrap().contains(gone.as_str())));
    // off: nothing written
    let s2 = scratch(&server, &bucket, "");
    let off = drkit(&s2, &["--json", "list", "app"], &[("DRKIT_CACHE", "off")]).await;
    off.expect_code(0);
    assert!(!s2.path("cache").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_a_tampered_cache_never_changes_the_listing() {
    tampered_cache_never_changes_the_listing(moto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_a_tampered_cache_never_changes_the_listing() {
    tampered_cache_never_changes_the_listing(s3s()).await;
}

/// One real backup, then `n` copies of its manifest under new ids a minute apart (older), and
/// `junk` folders whose manifest is not JSON.
async fn many_backups(server: &S3Server, bucket: &str, s: &Arc<Scratch>, n: usize, junk: usize) {
    drkit(s, &["backup"], &[]).await.expect_code(0);
    let admin = server.admin();
    let keys = server.keys(bucket).await;
    let key = keys.iter().find(|k| k.ends_with("/manifest.json")).unwrap();
    let body = admin
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let base: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let id0 = base["id"].as_str().unwrap().to_string();
    let t0 = chrono::NaiveDateTime::parse_from_str(&id0[..16], "%Y%m%dT%H%M%SZ")
        .unwrap()
        .and_utc();
    let name = base["data"]["key"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let puts = (0..n + junk).map(|i| {
        let admin = admin.clone();
        let mut m = base.clone();
        let bucket = bucket.to_string();
        let name = name.clone();
        async move {
            let start = t0 - chrono::Duration::minutes(i as i64 + 1);
            let id = format!("{}-{:06x}", start.format("%Y%m%dT%H%M%SZ"), i);
            let bytes = if i < n {
                m["id"] = id.clone().into();
                m["started_at"] = start.to_rfc3339().into();
                m["finished_at"] = start.to_rfc3339().into();
                m["data"]["key"] = format!("app/{id}/{name}").into();
                serde_json::to_vec_pretty(&m).unwrap()
            } else {
                b"{ not json".to_vec()
            };
            admin
                .put_object()
                .bucket(bucket)
                .key(format!("app/{id}/manifest.json"))
                .body(bytes.into())
                .send()
                .await
                .unwrap();
        }
    });
    futures::stream::iter(puts)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

use futures::StreamExt;

async fn hundreds_list_exactly(server: S3Server) {
    let bucket = server.new_bucket(false).await;
    let s = scratch(&server, &bucket, "");
    let (n, junk) = (300, 4);
    many_backups(&server, &bucket, &s, n, junk).await;
    let cold = listed(&s).await;
    let valid: Vec<_> = cold.iter().filter(|e| e.1 != "broken").collect();
    let broken: Vec<_> = cold.iter().filter(|e| e.1 == "broken").collect();
    assert_eq!(valid.len(), n + 1, "every backup, once");
    assert_eq!(broken.len(), junk, "{broken:?}");
    assert!(
        broken.iter().all(|b| b.2.contains("not valid JSON")),
        "{broken:?}"
    );
    // newest first, no id twice
    let ids: Vec<&String> = valid.iter().map(|e| &e.0).collect();
    let mut sorted = ids.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(ids, sorted);
    assert_eq!(
        cache_files(&s).len(),
        n + 1,
        "valid manifests are cached, broken ones not"
    );
    assert_eq!(listed(&s).await, cold, "warm = cold");
    let off = drkit(&s, &["--json", "list", "app"], &[("DRKIT_CACHE", "off")]).await;
    assert_eq!(off.json().as_array().unwrap().len(), n + 1 + junk);
    // status counts them the same way
    let st = drkit(&s, &["--json", "status"], &[]).await;
    let row = &st.json().as_array().unwrap()[0].clone();
    assert_eq!(row["backups"], (n + 1) as u64, "{row}");
    assert_eq!(row["broken"], junk as u64, "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_hundreds_of_backups_list_exactly() {
    hundreds_list_exactly(moto()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_hundreds_of_backups_list_exactly() {
    hundreds_list_exactly(s3s()).await;
}
