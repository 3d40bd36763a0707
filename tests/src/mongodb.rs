//! Helpers for the MongoDB end-to-end tests: the test server's URL, a client, snapshots of
//! databases (raw documents, indexes, options) to compare, and a TCP proxy that can cut the
//! connection mid-dump.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bson::{doc, Document, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::Client;

use crate::{required_env, Scratch};

/// `DRKIT_TEST_MONGO_URL` (the test server, started by `scripts/test.sh`).
pub fn mongo_url() -> String {
    required_env("DRKIT_TEST_MONGO_URL")
}

/// A client of the test server.
pub async fn client() -> Client {
    Client::with_uri_str(mongo_url())
        .await
        .expect("connect to DRKIT_TEST_MONGO_URL")
}

/// A database name unique to this run: `<prefix>_<8 hex>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{:08x}", rand::random::<u32>())
}

/// Write a `drkit.toml` with a local storage and one MongoDB job `m` whose source table holds
/// `source` (TOML key = value pairs, one per line, besides `type`).
pub fn config(s: &Scratch, source: &str, job_extra: &str) {
    let mut table = String::from("type = \"mongodb\"\n");
    table.push_str(source);
    s.config(&format!(
        "[storage.local]\ntype = \"local\"\npath = \"{}\"\n\n[job.m]\nstorage = [\"local\"]\n{job_extra}\n\n[job.m.source]\n{table}\n",
        s.path("backups").display()
    ));
}

/// Every document of `db.coll` as raw bytes, ordered by `_id`.
pub async fn raw_documents(c: &Client, db: &str, coll: &str) -> Vec<Vec<u8>> {
    c.database(db)
        .collection::<RawDocumentBuf>(coll)
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .expect("find")
        .try_collect::<Vec<_>>()
        .await
        .expect("read documents")
        .into_iter()
        .map(RawDocumentBuf::into_bytes)
        .collect()
}

/// Every index of `db.coll` (without the `ns` field old servers add), by name.
pub async fn indexes(c: &Client, db: &str, coll: &str) -> BTreeMap<String, Document> {
    let specs: Vec<Document> = c
        .database(db)
        .run_cursor_command(doc! {"listIndexes": coll})
        .await
        .expect("listIndexes")
        .try_collect()
        .await
        .expect("listIndexes");
    specs
        .into_iter()
        .map(|mut s| {
            s.remove("ns");
            (s.get_str("name").unwrap().to_string(), s)
        })
        .collect()
}

/// Every collection and view of `db`: name -> (type, options).
pub async fn collections(c: &Client, db: &str) -> BTreeMap<String, (String, Document)> {
    let specs: Vec<Document> = c
        .database(db)
        .run_cursor_command(doc! {"listCollections": 1})
        .await
        .expect("listCollections")
        .try_collect()
        .await
        .expect("listCollections");
    specs
        .into_iter()
        .map(|s| {
            (
                s.get_str("name").unwrap().to_string(),
                (
                    s.get_str("type").unwrap_or("collection").to_string(),
                    s.get_document("options").cloned().unwrap_or_default(),
                ),
            )
        })
        .collect()
}

/// Whether database `db` exists on the server.
pub async fn database_exists(c: &Client, db: &str) -> bool {
    c.list_database_names()
        .await
        .expect("listDatabases")
        .iter()
        .any(|d| d == db)
}

/// A TCP proxy on 127.0.0.1 to `target` (`host:port`) that cuts every connection, and
/// refuses new ones, once `cut_after` bytes went from the server to the client.
pub struct Proxy {
    /// The proxy's port.
    pub port: u16,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    /// Start the proxy.
    pub fn start(target: &str, cut_after: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let moved = Arc::new(AtomicU64::new(0));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let target = target.to_string();
        let (cut2, open2) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                {
                    let mut o = open2.lock().unwrap();
                    o.push(client.try_clone().unwrap());
                    o.push(server.try_clone().unwrap());
                }
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pipe(c2, s2, None));
                let (cut3, moved3, open3) = (cut2.clone(), moved.clone(), open2.clone());
                std::thread::spawn(move || {
                    pipe(server, client, Some((cut_after, moved3, cut3.clone())));
                    if cut3.load(Ordering::SeqCst) {
                        for s in open3.lock().unwrap().iter() {
                            let _ = s.shutdown(Shutdown::Both);
                        }
                    }
                });
            }
        });
        Proxy { port, cut }
    }

    /// Whether the proxy has cut the connections.
    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

type CutRule = (u64, Arc<AtomicU64>, Arc<AtomicBool>);

fn pipe(mut from: TcpStream, mut to: TcpStream, rule: Option<CutRule>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((limit, moved, cut)) = &rule {
            if cut.load(Ordering::SeqCst) {
                break;
            }
            if moved.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > *limit {
                cut.store(true, Ordering::SeqCst);
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// `host:port` of a `mongodb://host:port[/...]` URL.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").expect("a mongodb:// url").1;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    authority.rsplit('@').next().unwrap().to_string()
}
