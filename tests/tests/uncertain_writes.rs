//! End to end: writes whose outcome drkit cannot see. drkit backs up to S3 (s3s-fs) through
//! the request-level fault proxy, with `max_attempts = 1` so that the fault is what drkit
//! sees (the SDK does not retry it away): the answer to a write is lost after it landed
//! (`CutResponse`), a write is answered 500 and does not land, the check that follows is
//! reset. drkit asks the storage before deciding, never deletes the archive of a manifest that
//! may exist, and prune never leaves a manifest whose data is gone.

use drkit_tests::fault_proxy::{Action, HttpFaultProxy, Rule, RuleStats};
use drkit_tests::storage::{s3s, S3Server};
use drkit_tests::{Run, Scratch};

fn fill(db: &std::path::Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);\
         INSERT INTO t(v) SELECT randomblob(200) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) SELECT i FROM n);",
    )
    .unwrap();
}

/// One job `app` (SQLite) backed up to storage `remote`: an s3s-fs bucket behind a proxy.
struct Env {
    server: S3Server,
    bucket: String,
    proxy: HttpFaultProxy,
    s: Scratch,
}

impl Env {
    async fn new() -> Env {
        let server = s3s();
        let bucket = server.new_bucket(false).await;
        let proxy = HttpFaultProxy::start(&server.endpoint);
        let s = Scratch::new();
        fill(&s.path("app.db"));
        let env = Env {
            server,
            bucket,
            proxy,
            s,
        };
        env.config("", "");
        env
    }

    /// Write `drkit.toml`: `storage_extra` lines for the S3 storage (always one attempt per
    /// request), `job_extra` lines for the job.
    fn config(&self, storage_extra: &str, job_extra: &str) {
        self.s.config(&format!(
            "{}[job.app]\nsource = {{ type = \"sqlite\", path = \"{}\" }}\nstorage = [\"remote\"]\n{job_extra}\n",
            self.server.storage_toml(
                "remote",
                self.proxy.endpoint(),
                &self.bucket,
                &format!("max_attempts = 1\n{storage_extra}")
            ),
            self.s.path("app.db").display()
        ));
    }

    /// Run `drkit ARGS` (the proxy serves on its own thread meanwhile).
    fn drkit(&self, args: &[&str]) -> Run {
        tokio::task::block_in_place(|| self.s.drkit(args))
    }

    /// A backup without faults; returns its id.
    fn backup(&self) -> String {
        let b = self.drkit(&["--json", "backup"]);
        b.expect_code(0);
        b.json()[0]["manifest"]["id"].as_str().unwrap().to_string()
    }

    /// Every key of the bucket, read directly (not through the proxy), sorted.
    async fn keys(&self) -> Vec<String> {
        let mut keys = self.server.keys(&self.bucket).await;
        keys.sort();
        keys
    }

    /// The keys of backup `id`'s folder.
    async fn folder(&self, id: &str) -> Vec<String> {
        let prefix = format!("app/{id}/");
        let mut keys = self.keys().await;
        keys.retain(|k| k.starts_with(&prefix));
        keys
    }

    /// The ids of the backup folders in the bucket, whatever they hold, sorted.
    async fn folder_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .keys()
            .await
            .iter()
            .filter_map(|k| k.strip_prefix("app/")?.split('/').next())
            .map(str::to_string)
            .collect();
        ids.dedup();
        ids
    }

    /// `drkit list app` (without faults): the ids listed, newest first. Asserts that every
    /// listed backup is valid and that its archive is in the bucket with the size its
    /// manifest says: `list` never shows a backup whose data is gone.
    async fn listed(&self) -> Vec<String> {
        let l = self.drkit(&["--json", "list", "app"]);
        l.expect_code(0);
        let docs = l.json();
        let keys = self.server.keys(&self.bucket).await;
        let admin = self.server.admin();
        let mut ids = Vec::new();
        for d in docs.as_array().expect("a JSON array") {
            assert_ne!(d["state"], "broken", "a broken entry is listed: {d}");
            let id = d["id"].as_str().expect("an id").to_string();
            let data = d["data"]["key"].as_str().expect("a data key");
            assert!(
                keys.iter().any(|k| k == data),
                "backup {id} is listed but its archive {data} is gone: {keys:#?}"
            );
            let head = admin
                .head_object()
                .bucket(&self.bucket)
                .key(data)
                .send()
                .await
                .expect("HEAD of a listed archive");
            assert_eq!(
                head.content_length(),
                d["data"]["stored_size"].as_i64(),
                "{data}"
            );
            ids.push(id);
        }
        ids
    }

    /// What the proxy saw, for assertion messages.
    fn traffic(&self) -> String {
        self.proxy
            .requests()
            .iter()
            .map(|r| format!("{} {} -> {:?} {:?}", r.method, r.target, r.action, r.status))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The one `error:` line of a failed run.
#[track_caller]
fn error_line(r: &Run, needle: &str) -> String {
    r.expect_one_line_error(needle);
    r.stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_manifest_answer_is_checked_and_the_archive_is_never_deleted() {
    let env = Env::new().await;

    // 1. The manifest PUT lands, its answer is lost: a complete backup, with a warning.
    let cut = env
        .proxy
        .add_rule(Rule::new("PUT", "/manifest.json", Action::CutResponse).nth(1));
    let b = env.drkit(&["--json", "backup"]);
    b.expect_code(0);
    assert_eq!(env.proxy.stats(cut).fired, 1, "the fault fired");
    assert!(
        b.stderr
            .contains("the manifest is in the storage, byte for byte"),
        "{}",
        b.stderr
    );
    let id = b.json()[0]["manifest"]["id"].as_str().unwrap().to_string();
    env.proxy.clear_rules();
    assert_eq!(env.listed().await, std::slice::from_ref(&id));
    env.drkit(&["verify", "app", "--id", &id]).expect_code(0);
}

/// The manifest PUT is answered 500 and did not land (the proxy did not forward it): the
/// backup failed on that storage (exit 1, one error line naming it and the backup), the
/// check found no manifest, the archive is kept (S3 cannot lock, so only a leftover older
/// than `leftover_age` is cleaned), nothing is listed, and later backups work; the one with
/// `leftover_age = "0s"` removes the archive left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_put_answered_500_that_did_not_land_fails_and_keeps_the_archive() {
    let env = Env::new().await;
    let put = env
        .proxy
        .add_rule(Rule::new("PUT", "/manifest.json", Action::Status500));
    let b = env.drkit(&["backup"]);
    b.expect_code(1);
    let traffic = env.traffic();
    // One attempt, no SDK retry; then one HEAD to ask whether it landed.
    assert_eq!(
        env.proxy.stats(put),
        RuleStats { seen: 1, fired: 1 },
        "{traffic}"
    );
    assert_eq!(env.proxy.count("HEAD", "/manifest.json"), 1, "{traffic}");
    assert_eq!(env.proxy.count("PUT", "/data."), 1, "{traffic}");
    env.proxy.clear_rules();

    let ids = env.folder_ids().await;
    assert_eq!(ids.len(), 1, "{:#?}\n{traffic}", env.keys().await);
    let failed = ids[0].clone();
    // The archive, and nothing else: no manifest, no signature (not signing).
    assert_eq!(
        env.folder(&failed).await,
        [format!("app/{failed}/data.sqlite.zst")],
        "{traffic}"
    );
    let line = error_line(&b, "the storage does not have it");
    for want in [
        "storage remote",
        failed.as_str(),
        "failed",
        "archive is kept",
    ] {
        assert!(line.contains(want), "{want:?} not in {line}");
    }
    assert!(env.listed().await.is_empty());

    // A later backup works, and removes the failed one's archive: it holds the job's lease
    // (S3 leases, docs/s3.md), so no other run can be writing it, whatever its age.
    let b = env.drkit(&["--json", "backup"]);
    b.expect_code(0);
    let next = b.json()[0]["manifest"]["id"].as_str().unwrap().to_string();
    assert_eq!(env.listed().await, std::slice::from_ref(&next));
    let cleaned = &b.json()[0]["storages"][0]["cleaned"];
    assert_eq!(
        cleaned,
        &serde_json::json!([format!("app/{failed}/data.sqlite.zst")]),
        "{}",
        b.stdout
    );
    env.drkit(&["verify", "app", "--id", &next]).expect_code(0);
    assert!(env.folder(&failed).await.is_empty());
    env.backup();
    assert_eq!(env.listed().await.len(), 2);
}

/// The manifest PUT lands but its answer is cut, and the HEAD that asks whether it landed is
/// reset: drkit cannot know. It says exactly that in one line (the storage, the backup, what
/// to run), exits 1 and keeps the archive; `list` then shows the backup complete (it did
/// land) and it verifies. The same with a PUT answered 500 that did not land: unknown too,
/// the archive is kept, nothing is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_manifest_answer_whose_check_fails_is_reported_as_unknown_and_keeps_the_archive() {
    let env = Env::new().await;
    let cut = env
        .proxy
        .add_rule(Rule::new("PUT", "/manifest.json", Action::CutResponse).nth(1));
    let reset = env
        .proxy
        .add_rule(Rule::new("HEAD", "/manifest.json", Action::Reset));
    let b = env.drkit(&["backup"]);
    b.expect_code(1);
    let traffic = env.traffic();
    assert_eq!(
        env.proxy.stats(cut),
        RuleStats { seen: 1, fired: 1 },
        "{traffic}"
    );
    assert_eq!(
        env.proxy.stats(reset),
        RuleStats { seen: 1, fired: 1 },
        "{traffic}"
    );
    env.proxy.clear_rules();
    let ids = env.folder_ids().await;
    assert_eq!(ids.len(), 1, "{traffic}");
    let id = ids[0].clone();
    let line = error_line(&b, "whether it landed is unknown");
    for want in [
        "storage remote",
        id.as_str(),
        "the backup may be complete there",
        "archive is kept",
        "drkit list app",
        &format!("drkit verify app --id {id}"),
    ] {
        assert!(line.contains(want), "{want:?} not in {line}");
    }
    // Nothing was deleted: the manifest landed, the archive is there.
    assert_eq!(
        env.folder(&id).await,
        [
            format!("app/{id}/data.sqlite.zst"),
            format!("app/{id}/manifest.json")
        ]
    );
    assert_eq!(env.listed().await, std::slice::from_ref(&id));
    env.drkit(&["verify", "app", "--id", &id]).expect_code(0);

    // A PUT that did not land, whose check is reset: unknown as well, and still no delete.
    env.proxy.set_rules([
        Rule::new("PUT", "/manifest.json", Action::Status500),
        Rule::new("HEAD", "/manifest.json", Action::Reset),
    ]);
    let b = env.drkit(&["backup"]);
    b.expect_code(1);
    env.proxy.clear_rules();
    let second = env
        .folder_ids()
        .await
        .into_iter()
        .find(|i| *i != id)
        .expect("the second backup's folder");
    let line = error_line(&b, "whether it landed is unknown");
    assert!(line.contains(&second), "{line}");
    assert_eq!(
        env.folder(&second).await,
        [format!("app/{second}/data.sqlite.zst")]
    );
    assert_eq!(env.listed().await, [id]);
}

/// Prune (keep the newest) through faults on its deletes, one backup per case, each checked
/// on the bucket and with `list` (never a listed backup without data):
/// - the manifest DELETE lands, its answer is lost: the HEAD says it is gone, the data goes;
/// - the manifest DELETE is answered 500: the HEAD says it is there, the backup is intact
///   (exit 1), the next prune removes it;
/// - the DELETE of the archive fails after its manifest was deleted: exit 1, the backup is no
///   longer listed, the next prune cleans the folder (`leftover_age = "0s"`);
/// - the manifest DELETE's answer is lost and the HEAD is reset: unknown, the data is left
///   (exit 1), the next prune cleans the folder (the manifest is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_through_lost_and_failed_deletes_never_leaves_a_manifest_without_data() {
    let env = Env::new().await;
    let storage = "leftover_age = \"0s\"";
    env.config(storage, "");
    let ids: Vec<String> = (0..5).map(|_| env.backup()).collect();
    let mut want: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(env.listed().await, want);
    let keep = |n: usize| env.config(storage, &format!("keep = {{ last = {n} }}"));
    let prune = || env.drkit(&["prune", "app"]);

    // The manifest DELETE of ids[0] lands, its answer is lost.
    keep(4);
    let cut = env.proxy.add_rule(Rule::new(
        "DELETE",
        &format!("{}/manifest.json", ids[0]),
        Action::CutResponse,
    ));
    let start = env.proxy.requests().len();
    prune().expect_code(0);
    assert_eq!(env.proxy.stats(cut), RuleStats { seen: 1, fired: 1 });
    assert!(env.folder(&ids[0]).await.is_empty(), "{}", env.traffic());
    want.pop();
    assert_eq!(env.listed().await, want);
    // HEADs of the manifest before its DELETE (prune asks about object lock): the check
    // after a failed DELETE is the next one.
    let requests = env.proxy.requests().split_off(start);
    let manifest0 = format!("{}/manifest.json", ids[0]);
    let heads_before = requests
        .iter()
        .take_while(|r| !(r.method == "DELETE" && r.target.contains(&manifest0)))
        .filter(|r| r.method == "HEAD" && r.target.contains(&manifest0))
        .count();
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.method == "HEAD" && r.target.contains(&manifest0))
            .count(),
        heads_before + 1,
        "one HEAD after the failed DELETE: {}",
        env.traffic()
    );
    env.proxy.clear_rules();

    // The manifest DELETE of ids[1] is answered 500: it is there, the backup is intact.
    keep(3);
    env.proxy.add_rule(Rule::new(
        "DELETE",
        &format!("{}/manifest.json", ids[1]),
        Action::Status500,
    ));
    let p = prune();
    p.expect_code(1);
    let line = error_line(&p, "the backup is intact");
    assert!(line.contains(&ids[1]) && line.contains("remote"), "{line}");
    env.proxy.clear_rules();
    assert_eq!(env.listed().await, want);
    env.drkit(&["verify", "app", "--id", &ids[1]])
        .expect_code(0);
    prune().expect_code(0);
    assert!(env.folder(&ids[1]).await.is_empty());
    want.pop();
    assert_eq!(env.listed().await, want);

    // The DELETE of ids[2]'s archive fails after its manifest was deleted.
    keep(2);
    env.proxy.add_rule(Rule::new(
        "DELETE",
        &format!("{}/data.", ids[2]),
        Action::Status500,
    ));
    let p = prune();
    p.expect_code(1);
    let data2 = format!("app/{}/data.sqlite.zst", ids[2]);
    let line = error_line(&p, "the manifest is removed");
    assert!(line.contains(&ids[2]) && line.contains(&data2), "{line}");
    env.proxy.clear_rules();
    assert_eq!(env.folder(&ids[2]).await, std::slice::from_ref(&data2));
    want.pop();
    assert_eq!(env.listed().await, want, "no longer listed");
    prune().expect_code(0);
    assert!(
        env.folder(&ids[2]).await.is_empty(),
        "the next prune cleans the folder: {:#?}",
        env.keys().await
    );
    assert_eq!(env.listed().await, want);

    // The manifest DELETE of ids[3] lands, its answer is lost, and the check is reset.
    keep(1);
    let manifest3 = format!("{}/manifest.json", ids[3]);
    env.proxy.set_rules([
        Rule::new("DELETE", &manifest3, Action::CutResponse),
        Rule::new("HEAD", &manifest3, Action::Reset).nth(heads_before + 1),
    ]);
    let p = prune();
    p.expect_code(1);
    let line = error_line(&p, "whether it is gone is unknown");
    assert!(line.contains(&ids[3]), "{line}");
    env.proxy.clear_rules();
    assert_eq!(
        env.folder(&ids[3]).await,
        [format!("app/{}/data.sqlite.zst", ids[3])],
        "its data was left: {}",
        env.traffic()
    );
    want.pop();
    assert_eq!(env.listed().await, want);
    prune().expect_code(0);
    assert!(env.folder(&ids[3]).await.is_empty());
    assert_eq!(env.listed().await, [ids[4].clone()]);
    env.drkit(&["verify", "app"]).expect_code(0);
}

/// S3 has no job lock object (`lock_job` holds nothing there); the objects written besides
/// the archive and the manifest are the signatures. The answer to the signature PUT is lost
/// after it landed: drkit checks it (byte for byte) and writes the manifest: a complete,
/// signed backup, with a warning. A signature PUT answered 500 (not landed): the manifest is
/// not written (never a manifest without its signature), exit 1, the archive is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_signature_answer_is_checked_before_the_manifest_is_written() {
    let env = Env::new().await;
    let (key, _) = drkit_tests::signing_keypair(env.s.dir.path());
    env.config(
        "",
        &format!("signing = {{ key_file = \"{}\" }}", key.display()),
    );

    let cut = env
        .proxy
        .add_rule(Rule::new("PUT", "/manifest.json.sig", Action::CutResponse).nth(1));
    let b = env.drkit(&["--json", "backup"]);
    b.expect_code(0);
    assert_eq!(
        env.proxy.stats(cut),
        RuleStats { seen: 1, fired: 1 },
        "{}",
        env.traffic()
    );
    assert!(
        b.stderr
            .contains("the signature is in the storage, byte for byte"),
        "{}",
        b.stderr
    );
    let id = b.json()[0]["manifest"]["id"].as_str().unwrap().to_string();
    env.proxy.clear_rules();
    assert_eq!(
        env.folder(&id).await,
        [
            format!("app/{id}/data.sqlite.zst"),
            format!("app/{id}/manifest.json"),
            format!("app/{id}/manifest.json.sig"),
        ]
    );
    // Listed as valid (its signature checks), and it verifies.
    assert_eq!(env.listed().await, std::slice::from_ref(&id));
    env.drkit(&["verify", "app", "--id", &id]).expect_code(0);

    env.proxy
        .add_rule(Rule::new("PUT", "/manifest.json.sig", Action::Status500));
    let b = env.drkit(&["backup"]);
    b.expect_code(1);
    env.proxy.clear_rules();
    let failed = env
        .folder_ids()
        .await
        .into_iter()
        .find(|i| *i != id)
        .expect("the failed backup's folder");
    let line = error_line(&b, "the manifest was not written");
    assert!(
        line.contains(&failed) && line.contains("storage remote"),
        "{line}"
    );
    assert_eq!(
        env.folder(&failed).await,
        [format!("app/{failed}/data.sqlite.zst")]
    );
    assert_eq!(env.listed().await, [id]);
}

/// The lease PUT lands but its answer is lost: the retry of that write fails its condition
/// (the lease exists), and drkit finds the lease is its own instead of refusing itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_answer_is_found_to_be_our_own_lease() {
    let env = Env::new().await;
    let cut = env
        .proxy
        .add_rule(Rule::new("PUT", "/.drkit.lease", Action::CutResponse).nth(1));
    let b = env.drkit(&["--json", "backup"]);
    let traffic = env.traffic();
    b.expect_code(0);
    assert_eq!(env.proxy.stats(cut).fired, 1, "the fault fired:\n{traffic}");
    let id = b.json()[0]["manifest"]["id"].as_str().unwrap().to_string();
    env.proxy.clear_rules();
    assert_eq!(env.listed().await, std::slice::from_ref(&id));
}
