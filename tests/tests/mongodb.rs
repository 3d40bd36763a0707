//! End to end: the `drkit` binary backing up and restoring a MongoDB-wire server
//! (`DRKIT_TEST_MONGO_URL`, SecantusDB in the test harness) through a local storage.

use std::collections::BTreeMap;
use std::time::Duration;

use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, Document, JavaScriptCodeWithScope, Regex, Timestamp};
use drkit_tests::mongodb::{
    client, collections, config, database_exists, host_port, indexes, mongo_url, raw_documents,
    unique, Proxy,
};
use drkit_tests::{files_under, Scratch};
use mongodb::Client;
use sha2::{Digest, Sha256};

const BIG: i32 = 100_000;

async fn run(c: &Client, db: &str, cmd: Document) -> Document {
    c.database(db)
        .run_command(cmd.clone())
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// One document per BSON type the server stores, plus nesting and edge values.
fn every_type() -> Vec<Document> {
    let bin = |subtype, bytes: &[u8]| {
        Bson::Binary(Binary {
            subtype,
            bytes: bytes.to_vec(),
        })
    };
    vec![
        doc! {"_id": 1, "double": 1.5, "neg_zero": -0.0, "inf": f64::INFINITY, "tiny": 5e-324, "big": 1.7976931348623157e308},
        doc! {"_id": 2, "string": "héllo wörld ✓ 🦀", "empty": "", "nul_inside": "a\u{1}b"},
        doc! {"_id": 3, "doc": {"a": {"b": {"c": [1, {"d": [[], {}]}]}}}, "arr": [1, "two", 3.0, null, [4, [5]]]},
        doc! {"_id": 4, "generic": bin(BinarySubtype::Generic, b"\x00\x01\xff"), "function": bin(BinarySubtype::Function, b"fn"),
        "uuid_old": bin(BinarySubtype::UuidOld, &[7u8; 16]), "uuid": bin(BinarySubtype::Uuid, &[0x12u8; 16]),
        "md5": bin(BinarySubtype::Md5, &[9u8; 16]), "user": bin(BinarySubtype::UserDefined(0x80), b"custom"),
        "old_binary": bin(BinarySubtype::BinaryOld, b"old")},
        doc! {"_id": 5, "oid": bson::oid::ObjectId::parse_str("5f1e2d3c4b5a697887766554").unwrap(), "yes": true, "no": false, "nothing": null},
        doc! {"_id": 6, "date": bson::DateTime::from_millis(1_700_000_000_123), "before_1970": bson::DateTime::from_millis(-86_400_000)},
        doc! {"_id": 7, "regex": Regex { pattern: "^a.*[b]$".into(), options: "imsx".into() }},
        doc! {"_id": 8, "code": Bson::JavaScriptCode("function() { return 1; }".into()),
        "code_scope": Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope { code: "x + y".into(), scope: doc! {"x": 1, "y": 2} })},
        doc! {"_id": 9, "i32": i32::MIN, "i64": i64::MAX, "i64_small": 7_i64, "ts": Timestamp { time: 1_700_000_000, increment: 42 }},
        doc! {"_id": 10, "dec": "12345.6789".parse::<bson::Decimal128>().unwrap(), "dec_neg": "-0.000001".parse::<bson::Decimal128>().unwrap()},
        doc! {"_id": 11, "min": Bson::MinKey, "max": Bson::MaxKey},
        doc! {"_id": "string id", "x": 1},
        doc! {"_id": {"compound": 1, "id": [1, 2]}, "x": 2},
        doc! {"_id": bson::oid::ObjectId::new(), "nested_types": [Bson::MinKey, Bson::Decimal128("1".parse().unwrap()), Bson::Timestamp(Timestamp { time: 1, increment: 2 })]},
    ]
}

/// A database with every kind of thing the driver must carry.
async fn seed(c: &Client, db: &str) {
    let d = c.database(db);
    d.collection::<Document>("types")
        .insert_many(every_type())
        .await
        .expect("insert every type");

    run(c, db, doc! {"create": "big"}).await;
    let far = bson::DateTime::from_millis(4_102_444_800_000); // 2100: nothing expires
    for chunk in 0..10 {
        let docs: Vec<Document> = (chunk * BIG / 10..(chunk + 1) * BIG / 10)
            .map(|n| {
                let mut d = doc! {"_id": n, "n": n, "grp": n % 100, "s": format!("item {n:06} {}", "x".repeat(40)), "at": far};
                if n % 7 == 0 {
                    d.insert("opt", n);
                }
                d
            })
            .collect();
        d.collection::<Document>("big")
            .insert_many(docs)
            .await
            .expect("insert big");
    }
    run(
        c,
        db,
        doc! {"createIndexes": "big", "indexes": [
            {"key": {"n": 1}, "name": "n_unique", "unique": true},
            {"key": {"grp": 1, "n": -1, "s": 1}, "name": "grp_n_s"},
            {"key": {"at": 1}, "name": "ttl_at", "expireAfterSeconds": 3600},
            {"key": {"opt": 1}, "name": "opt_sparse", "sparse": true},
            {"key": {"grp": 1}, "name": "grp_partial", "partialFilterExpression": {"grp": {"$gt": 50}}},
            {"key": {"s": 1}, "name": "s_collated", "collation": {"locale": "en", "strength": 2}},
            {"key": {"n": 1, "grp": 1}, "name": "n_grp_hidden", "hidden": true},
        ]},
    )
    .await;

    run(
        c,
        db,
        doc! {"create": "cap", "capped": true, "size": 1_048_576, "max": 500},
    )
    .await;
    let capped: Vec<Document> = (0..300i32)
        .map(|i| doc! {"i": i, "pad": "p".repeat(i as usize % 17)})
        .collect();
    d.collection::<Document>("cap")
        .insert_many(capped)
        .await
        .expect("insert cap");

    run(
        c,
        db,
        doc! {"create": "validated",
        "validator": {"$jsonSchema": {"bsonType": "object", "required": ["email"], "properties": {"email": {"bsonType": "string"}}}},
        "validationLevel": "moderate", "validationAction": "error"},
    )
    .await;
    d.collection::<Document>("validated")
        .insert_many([
            doc! {"email": "a@example.org"},
            doc! {"email": "b@example.org", "age": 3},
        ])
        .await
        .expect("insert validated");

    run(
        c,
        db,
        doc! {"create": "collated", "collation": {"locale": "fr", "strength": 1}},
    )
    .await;
    d.collection::<Document>("collated")
        .insert_many([doc! {"w": "côte"}, doc! {"w": "cote"}, doc! {"w": "Côté"}])
        .await
        .expect("insert collated");

    run(c, db, doc! {"create": "clustered", "clusteredIndex": {"key": {"_id": 1}, "unique": true, "name": "by_id"}}).await;
    d.collection::<Document>("clustered")
        .insert_many((0..20).map(|i| doc! {"_id": i * 3, "v": i}))
        .await
        .expect("insert clustered");

    run(c, db, doc! {"create": "ts", "timeseries": {"timeField": "t", "metaField": "m", "granularity": "hours"}}).await;
    d.collection::<Document>("ts")
        .insert_many((0..24).map(|h| doc! {"t": bson::DateTime::from_millis(1_700_000_000_000 + h * 3_600_000), "m": {"sensor": h % 3}, "v": h as f64 / 2.0}))
        .await
        .expect("insert ts");

    run(c, db, doc! {"create": "empty"}).await;
    run(c, db, doc! {"create": "high_groups", "viewOn": "big", "pipeline": [{"$match": {"grp": {"$gte": 90}}}, {"$project": {"s": 0}}]}).await;
}

/// Everything a restore must reproduce, as bytes (so key order counts): per namespace its
/// type and options, its indexes, its documents in `_id` order, and (capped) in natural order.
#[derive(Debug, PartialEq)]
struct Snapshot(BTreeMap<String, Entry>);

#[derive(Debug, PartialEq)]
struct Entry {
    kind: String,
    options: Vec<u8>,
    indexes: BTreeMap<String, Vec<u8>>,
    documents: Vec<Vec<u8>>,
    natural: Vec<Vec<u8>>,
}

async fn snapshot(c: &Client, db: &str) -> Snapshot {
    let mut out = BTreeMap::new();
    for (name, (kind, options)) in collections(c, db).await {
        let (idx, docs, natural) = if kind == "view" {
            (BTreeMap::new(), Vec::new(), Vec::new())
        } else {
            let idx = indexes(c, db, &name)
                .await
                .into_iter()
                .map(|(k, v)| (k, bson::to_vec(&v).unwrap()))
                .collect();
            let natural = if name == "cap" {
                natural_order(c, db, &name).await
            } else {
                Vec::new()
            };
            (idx, raw_documents(c, db, &name).await, natural)
        };
        out.insert(
            name,
            Entry {
                kind,
                options: bson::to_vec(&options).unwrap(),
                indexes: idx,
                documents: docs,
                natural,
            },
        );
    }
    Snapshot(out)
}

async fn natural_order(c: &Client, db: &str, coll: &str) -> Vec<Vec<u8>> {
    use futures::TryStreamExt;
    c.database(db)
        .collection::<bson::RawDocumentBuf>(coll)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.into_bytes())
        .collect()
}

fn describe(s: &Snapshot) -> String {
    s.0.iter()
        .map(|(k, e)| {
            format!(
                "{k}: {} {} docs {} indexes",
                e.kind,
                e.documents.len(),
                e.indexes.len()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[track_caller]
fn assert_same(got: &Snapshot, want: &Snapshot, what: &str) {
    assert_eq!(
        got.0.keys().collect::<Vec<_>>(),
        want.0.keys().collect::<Vec<_>>(),
        "{what}: namespaces differ"
    );
    for (name, w) in &want.0 {
        let g = &got.0[name];
        assert_eq!(g.kind, w.kind, "{what}: {name} type");
        assert_eq!(
            bson::from_slice::<Document>(&g.options).unwrap(),
            bson::from_slice::<Document>(&w.options).unwrap(),
            "{what}: {name} options"
        );
        assert_eq!(
            g.options, w.options,
            "{what}: {name} options bytes (field order)"
        );
        assert_eq!(g.indexes, w.indexes, "{what}: {name} indexes");
        assert_eq!(
            g.documents.len(),
            w.documents.len(),
            "{what}: {name} document count"
        );
        assert!(
            g.documents == w.documents,
            "{what}: {name} documents differ byte for byte"
        );
        assert!(
            g.natural == w.natural,
            "{what}: {name} natural order differs"
        );
    }
}

fn source(db: &str) -> String {
    format!("url = \"{}\"\ndatabases = [\"{db}\"]\n", mongo_url())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_index_option_and_view_survive_backup_drop_restore() {
    let c = client().await;
    let db = unique("drkit_mt_full");
    let copy = format!("{db}_copy");
    seed(&c, &db).await;
    let before = snapshot(&c, &db).await;
    assert_eq!(before.0["big"].documents.len(), BIG as usize);
    assert_eq!(
        before.0["big"].indexes.len(),
        8,
        "{:?}",
        before.0["big"].indexes.keys()
    );
    assert_eq!(before.0.len(), 9, "{}", describe(&before));

    let s = Scratch::new();
    config(&s, &source(&db), "");
    let backup = s.drkit(&["--json", "backup", "m"]);
    backup.expect_code(0);
    let manifest = &backup.json()[0]["manifest"];
    assert_eq!(manifest["driver"], "mongodb");
    let stats = &manifest["stats"];
    assert_eq!(stats["collections"][format!("{db}.big")], BIG);
    assert_eq!(
        stats["collections"][format!("{db}.types")],
        every_type().len()
    );
    assert_eq!(stats["collections"][format!("{db}.cap")], 300);
    assert_eq!(stats["collections"][format!("{db}.empty")], 0);
    assert_eq!(
        stats["views"],
        serde_json::json!([format!("{db}.high_groups")])
    );
    assert_eq!(stats["empty"], false);
    let src = &manifest["source"];
    assert!(
        src["server_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{src}"
    );
    assert!(src["topology"].is_string(), "{src}");
    assert!(
        ["snapshot", "collection", "none"].contains(&src["consistency"].as_str().unwrap()),
        "{src}"
    );
    assert_eq!(src["archive_format"], "mongodump --archive 0.1");
    assert!(manifest["data"]["key"]
        .as_str()
        .unwrap()
        .ends_with("data.archive.zst"));

    s.drkit(&["verify", "m"]).expect_code(0);

    // The originals are still there: a plain restore refuses.
    let refused = s.drkit(&["restore", "m"]);
    refused.expect_code(3);
    refused.expect_one_line_error("non-empty");

    // Restore renamed, next to the original.
    let to = format!("{db}={copy}");
    s.drkit(&["restore", "m", "--to", &to]).expect_code(0);
    assert_same(&snapshot(&c, &copy).await, &before, "restored --to copy");

    // Drop the original and restore it in place.
    c.database(&db).drop().await.unwrap();
    assert!(!database_exists(&c, &db).await);
    let restored = s.drkit(&["--json", "restore", "m"]);
    restored.expect_code(0);
    assert_eq!(restored.json()["restore"]["report"]["stats_checked"], true);
    assert_same(&snapshot(&c, &db).await, &before, "restored after drop");

    // --force drops and restores over changed data.
    c.database(&db)
        .collection::<Document>("big")
        // A few documents by _id: a wide delete_many is very slow on SecantusDB (each deleted
        // chunk prunes its oplog), and any change proves that --force drops first.
        .delete_many(doc! {"_id": {"$in": [0, 1, 2, 99_999]}})
        .await
        .unwrap();
    c.database(&db)
        .collection::<Document>("types")
        .insert_one(doc! {"_id": "extra"})
        .await
        .unwrap();
    s.drkit(&["restore", "m", "--force"]).expect_code(0);
    assert_same(&snapshot(&c, &db).await, &before, "restored with --force");

    // The restored documents behave: the unique index holds, the view answers.
    let dup = c
        .database(&db)
        .collection::<Document>("big")
        .insert_one(doc! {"n": 5})
        .await;
    assert!(dup.is_err(), "the unique index on n was not restored");
    let high = c
        .database(&db)
        .collection::<Document>("high_groups")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(high, (BIG / 10) as u64);

    c.database(&db).drop().await.unwrap();
    c.database(&copy).drop().await.unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_archive_is_an_integrity_error_before_anything_is_written() {
    let c = client().await;
    let db = unique("drkit_mt_corrupt");
    let target = format!("{db}_x");
    let d = c.database(&db);
    d.collection::<Document>("a")
        .insert_many((0..200).map(|i| doc! {"_id": i, "s": format!("value {i}")}))
        .await
        .unwrap();
    d.collection::<Document>("b")
        .insert_many((0..50).map(|i| doc! {"i": i}))
        .await
        .unwrap();
    let s = Scratch::new();
    config(&s, &source(&db), "compression = \"none\"");
    let backup = s.drkit(&["--json", "backup", "m"]);
    backup.expect_code(0);
    let manifest = backup.json()[0]["manifest"].clone();
    let key = manifest["data"]["key"].as_str().unwrap().to_string();
    let archive_path = s.path("backups").join(&key);
    let manifest_path = s
        .path("backups")
        .join(key.replace("data.archive", "manifest.json"));
    let good = std::fs::read(&archive_path).unwrap();
    let good_manifest = std::fs::read(&manifest_path).unwrap();
    assert_eq!(&good[..4], &[0x6d, 0xe2, 0x99, 0x81]);

    // Rewrites the archive and its manifest's checksums, as a buggy writer would have: only
    // the structure check can catch these.
    let install = |bytes: &[u8]| {
        std::fs::write(&archive_path, bytes).unwrap();
        let mut m: serde_json::Value = serde_json::from_slice(&good_manifest).unwrap();
        let sha = sha256_hex(bytes);
        m["data"]["raw_size"] = bytes.len().into();
        m["data"]["stored_size"] = bytes.len().into();
        m["data"]["raw_sha256"] = sha.clone().into();
        m["data"]["stored_sha256"] = sha.into();
        std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    };
    let first_doc = {
        let needle = bson::to_vec(&doc! {"_id": 0, "s": "value 0"}).unwrap();
        good.windows(needle.len())
            .position(|w| w == needle)
            .expect("document 0 in the archive")
    };
    let mut bad_magic = good.clone();
    bad_magic[1] ^= 0xff;
    let truncated = good[..good.len() - 9].to_vec();
    let mut flipped = good.clone();
    flipped[first_doc + 20] ^= 0x01; // inside "value 0": the CRC no longer matches
    let mut too_long = good.clone();
    too_long[first_doc..first_doc + 4].copy_from_slice(&100_000_000i32.to_le_bytes());
    let mut runs_past = good.clone();
    // The string's length inside document 0 runs past the document.
    let str_len_at = first_doc + 4 + 1 + 4 + 4 + 1 + 2;
    runs_past[str_len_at..str_len_at + 4].copy_from_slice(&60i32.to_le_bytes());

    for (name, bytes, needle) in [
        ("bad magic", &bad_magic, "not a mongodump archive"),
        ("truncated", &truncated, "truncated"),
        ("flipped byte", &flipped, "CRC"),
        ("length too long", &too_long, "neither a BSON length"),
        ("runs past its document", &runs_past, "malformed BSON"),
    ] {
        install(bytes);
        let v = s.drkit(&["verify", "m"]);
        v.expect_code(4);
        v.expect_one_line_error(needle);
        let r = s.drkit(&["restore", "m", "--to", &format!("{db}={target}")]);
        r.expect_code(4);
        r.expect_one_line_error(needle);
        assert!(
            !database_exists(&c, &target).await,
            "{name}: the restore wrote to the server before finding the archive corrupt"
        );
    }

    // A stored archive changed after the backup (manifest untouched): the checksum says so.
    std::fs::write(&manifest_path, &good_manifest).unwrap();
    std::fs::write(&archive_path, &flipped).unwrap();
    s.drkit(&["restore", "m", "--to", &format!("{db}={target}")])
        .expect_code(4);
    assert!(!database_exists(&c, &target).await);

    // The good archive restores.
    std::fs::write(&archive_path, &good).unwrap();
    s.drkit(&["restore", "m", "--to", &format!("{db}={target}")])
        .expect_code(0);
    assert_eq!(
        raw_documents(&c, &target, "a").await,
        raw_documents(&c, &db, "a").await
    );
    c.database(&db).drop().await.unwrap();
    c.database(&target).drop().await.unwrap();
}

fn no_manifest(s: &Scratch) {
    let files = files_under(&s.path("backups"));
    assert!(
        !files.iter().any(|f| f.ends_with("manifest.json")),
        "a failed backup left a manifest: {files:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_server_wrong_credentials_missing_database_fail_clearly() {
    let c = client().await;
    let hp = host_port(&mongo_url());

    // Nothing listens on this port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = Scratch::new();
    config(
        &s,
        &format!("url = \"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=1500\"\n"),
        "",
    );
    let r = s.drkit(&["backup", "m"]);
    r.expect_code(1);
    r.expect_one_line_error("cannot be reached");
    no_manifest(&s);

    // A user with a password; the wrong password is refused, and never printed.
    let user = "drkit_test_user";
    let good_pw = "Right-pw-8843";
    let bad_pw = "Wrong-pw-1177";
    match c
        .database("admin")
        .run_command(doc! {"createUser": user, "pwd": good_pw, "roles": ["root"]})
        .await
    {
        Ok(_) => {}
        Err(e) if e.to_string().contains("already exists") => {}
        Err(e) => panic!("createUser: {e}"),
    }
    let db = unique("drkit_mt_auth");
    c.database(&db)
        .collection::<Document>("c")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
    let s = Scratch::new();
    config(
        &s,
        &format!(
            "url = \"mongodb://{user}:{bad_pw}@{hp}/?authSource=admin\"\ndatabases = [\"{db}\"]\n"
        ),
        "",
    );
    let r = s.drkit(&["backup", "m"]);
    r.expect_code(1);
    r.expect_one_line_error("authentication failed");
    assert!(
        !r.stderr.contains(bad_pw) && !r.stdout.contains(bad_pw),
        "{}",
        r.stderr
    );
    no_manifest(&s);

    // The right password from a file: works, and is stored nowhere.
    std::fs::write(s.path("pw"), format!("{good_pw}\n")).unwrap();
    config(
        &s,
        &format!(
            "url = \"mongodb://{user}@{hp}/?authSource=admin\"\npassword_file = \"{}\"\ndatabases = [\"{db}\"]\n",
            s.path("pw").display()
        ),
        "",
    );
    let ok = s.drkit(&["--json", "backup", "m"]);
    ok.expect_code(0);
    assert!(!ok.stdout.contains(good_pw));
    for f in files_under(&s.path("backups")) {
        let text = std::fs::read(s.path("backups").join(&f)).unwrap();
        assert!(
            !text.windows(good_pw.len()).any(|w| w == good_pw.as_bytes()),
            "{f} holds the password"
        );
    }

    // A database that does not exist.
    let s = Scratch::new();
    config(&s, &source("drkit_no_such_db_here"), "");
    let r = s.drkit(&["backup", "m"]);
    r.expect_code(1);
    r.expect_one_line_error("drkit_no_such_db_here");
    assert!(r.stderr.contains("do not exist"), "{}", r.stderr);
    no_manifest(&s);

    c.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn server_gone_mid_dump_fails_without_manifest() {
    let c = client().await;
    let db = unique("drkit_mt_gone");
    let pad = "z".repeat(1000);
    for chunk in 0..6 {
        c.database(&db)
            .collection::<Document>("c")
            .insert_many((0..5000).map(|i| doc! {"_id": chunk * 5000 + i, "pad": &pad}))
            .await
            .unwrap();
    }
    // The proxy cuts every connection after 3 MiB of replies: well inside the 30 MiB dump.
    let proxy = Proxy::start(&host_port(&mongo_url()), 3 * 1024 * 1024);
    let s = Scratch::new();
    config(
        &s,
        &format!(
            "url = \"mongodb://127.0.0.1:{}/?directConnection=true&serverSelectionTimeoutMS=2000\"\ndatabases = [\"{db}\"]\n",
            proxy.port
        ),
        "",
    );
    let r = s.drkit(&["backup", "m"]);
    assert!(
        proxy.was_cut(),
        "the proxy never cut the dump: {}",
        r.stderr
    );
    r.expect_code(1);
    r.expect_one_line_error(&db);
    no_manifest(&s);
    c.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn consistency_is_recorded_in_the_manifest() {
    let c = client().await;
    let db = unique("drkit_mt_consistency");
    c.database(&db)
        .collection::<Document>("a")
        .insert_many((0..20_000).map(|i| doc! {"_id": i, "pad": "p".repeat(100)}))
        .await
        .unwrap();
    c.database(&db)
        .collection::<Document>("b")
        .insert_one(doc! {"_id": -1})
        .await
        .unwrap();
    let server = c
        .database("admin")
        .run_command(doc! {"buildInfo": 1})
        .await
        .unwrap();
    let secantus = server.get_str("secantusVersion").is_ok();

    // A writer that keeps inserting into `b` while the dump reads `a` then `b`.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (c, db, stop) = (c.clone(), db.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                c.database(&db)
                    .collection::<Document>("b")
                    .insert_one(doc! {"_id": i})
                    .await
                    .unwrap();
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = Scratch::new();
    config(&s, &source(&db), "");
    let backup = s.drkit(&["--json", "backup", "m"]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.unwrap();
    backup.expect_code(0);
    let manifest = &backup.json()[0]["manifest"];
    let consistency = manifest["source"]["consistency"]
        .as_str()
        .unwrap()
        .to_string();
    let warnings = manifest["warnings"].as_array().cloned().unwrap_or_default();
    match consistency.as_str() {
        "snapshot" => {
            assert!(
                manifest["source"]["at_cluster_time"]["t"]
                    .as_u64()
                    .is_some(),
                "{manifest}"
            );
            assert!(!secantus, "SecantusDB does not keep one atClusterTime across collections, yet the dump claims it");
        }
        "collection" | "none" => {
            assert!(
                !warnings.is_empty(),
                "a lower consistency needs a warning: {manifest}"
            );
            assert!(backup.stderr.contains("WARNING"), "{}", backup.stderr);
        }
        other => panic!("unknown consistency {other}"),
    }
    if secantus {
        assert_eq!(consistency, "collection", "{manifest}");
    }

    // snapshot = false says so.
    config(&s, &format!("{}snapshot = false\n", source(&db)), "");
    let backup = s.drkit(&["--json", "backup", "m"]);
    backup.expect_code(0);
    let manifest = &backup.json()[0]["manifest"];
    assert_eq!(manifest["source"]["consistency"], "none");
    assert!(manifest["warnings"][0]
        .as_str()
        .unwrap()
        .contains("snapshot = false"));
    c.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn include_exclude_empty_and_drill() {
    let c = client().await;
    let db = unique("drkit_mt_select");
    let d = c.database(&db);
    for name in ["keep", "skip", "also"] {
        d.collection::<Document>(name)
            .insert_many((0..10).map(|i| doc! {"i": i}))
            .await
            .unwrap();
    }
    let s = Scratch::new();
    config(
        &s,
        &format!(
            "url = \"{}\"\ninclude_collections = [\"{db}.*\"]\nexclude_collections = [\"{db}.skip\"]\n",
            mongo_url()
        ),
        "",
    );
    let backup = s.drkit(&["--json", "backup", "m"]);
    backup.expect_code(0);
    let colls = backup.json()[0]["manifest"]["stats"]["collections"].clone();
    assert_eq!(
        colls,
        serde_json::json!({format!("{db}.also"): 10, format!("{db}.keep"): 10})
    );

    // A drill restores into scratch databases and removes them.
    let drill = s.drkit(&["drill", "m"]);
    drill.expect_code(0);
    let left: Vec<String> = c
        .list_database_names()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("drkit_drill_"))
        .collect();
    assert!(left.is_empty(), "drill left {left:?}");

    // An empty database: the backup says so.
    let empty = unique("drkit_mt_emptydb");
    c.database(&empty)
        .create_collection("nothing")
        .await
        .unwrap();
    let s = Scratch::new();
    config(&s, &source(&empty), "");
    let backup = s.drkit(&["--json", "backup", "m"]);
    // An empty source is written, and loud: suspect (exit 5).
    backup.expect_code(5);
    let manifest = &backup.json()[0]["manifest"];
    assert_eq!(manifest["stats"]["empty"], true);
    assert!(manifest["suspect"]["reasons"][0]
        .as_str()
        .unwrap()
        .contains("holds no data"));
    assert!(backup.stderr.contains("WARNING"), "{}", backup.stderr);

    c.database(&db).drop().await.unwrap();
    c.database(&empty).drop().await.unwrap();
}
