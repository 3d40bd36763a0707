//! MongoDB source: a native dump in the `mongodump --archive` format (see [`archive`]) through
//! the official driver, and a faithful restore from it.
//!
//! Dump: every non-system database (or `databases`), every collection and view with its
//! options and indexes, documents copied as raw BSON (never decoded) in one pass with bounded
//! memory. Where the server honours `readConcern: snapshot` with one `atClusterTime`, the whole
//! dump is one point in time; otherwise the manifest says which consistency it has.
//!
//! Restore: collections recreated with their options, documents inserted in batches, indexes
//! built after the data, views recreated last, counts compared with the manifest.

pub mod archive;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bson::{doc, rawdoc, Bson, Document, RawBsonRef, RawDocumentBuf, Timestamp};
use futures::{StreamExt, TryStreamExt};
use mongodb::options::ClientOptions;
use mongodb::{Client, ClientSession};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use archive::{CollectionMeta, Kind};
use drkit_core::{
    from_io, redact_url, BoxRead, DriverSpec, Dump, DumpSummary, Error, ErrorKind, Manifest,
    RestoreOptions, RestoreReport, Result, Source,
};

/// Databases never dumped: the server's own.
const SYSTEM_DATABASES: [&str; 3] = ["admin", "local", "config"];
/// Bytes of the pipe between the dump task and the pipeline.
const PIPE_BYTES: usize = 256 * 1024;
/// Documents asked per `getMore` of a dump. The server caps a reply at 16 MiB and the driver
/// holds two copies of a reply while it parses it: small documents come in replies of about
/// 1 MiB instead of 16 (docs/benchmarks-mongodb.md); large ones still fill a reply.
const GETMORE_BATCH_DOCS: u32 = 10_000;

/// A restore inserts at most this many documents, or bytes, per batch.
const INSERT_BATCH_DOCS: usize = 1000;
const INSERT_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// How long to look for a server before giving up, unless the URL says otherwise.
const DEFAULT_SERVER_SELECTION: Duration = Duration::from_secs(10);

/// The `source` table of a MongoDB job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MongoConfig {
    /// `mongodb://` or `mongodb+srv://` connection string; may hold user and password.
    url: String,
    /// A file holding the password of the URL's user (first line); overrides a password in the URL.
    #[serde(default)]
    password_file: Option<PathBuf>,
    /// Databases to dump; default: every database but admin, local and config.
    #[serde(default)]
    databases: Option<Vec<String>>,
    /// Only these namespaces (`db.collection`, or `db.*`).
    #[serde(default)]
    include_collections: Vec<String>,
    /// Never these namespaces (`db.collection`, or `db.*`).
    #[serde(default)]
    exclude_collections: Vec<String>,
    /// Read the whole dump at one point in time where the server can (default true).
    #[serde(default = "yes")]
    snapshot: bool,
}

fn yes() -> bool {
    true
}

/// A MongoDB deployment (standalone, replica set or mongos) as a drkit source.
pub struct MongoSource {
    cfg: MongoConfig,
    what: String,
}

impl MongoSource {
    /// Build from a job's `source` table. Nothing is contacted.
    pub fn from_spec(spec: &DriverSpec, what: &str) -> Result<Self> {
        let cfg: MongoConfig = spec.parse(what)?;
        if !(cfg.url.starts_with("mongodb://") || cfg.url.starts_with("mongodb+srv://")) {
            return Err(Error::config(format!(
                "{what}: url must start with mongodb:// or mongodb+srv://, got {:?}",
                redact_url(&cfg.url)
            )));
        }
        if let Some(dbs) = &cfg.databases {
            if dbs.is_empty() {
                return Err(Error::config(format!("{what}: databases is empty: name at least one, or remove the key to dump every database")));
            }
            for d in dbs {
                check_db_name(d).map_err(|e| Error::config(format!("{what}: databases: {e}")))?;
            }
        }
        for (key, list) in [
            ("include_collections", &cfg.include_collections),
            ("exclude_collections", &cfg.exclude_collections),
        ] {
            for p in list {
                parse_pattern(p).map_err(|e| Error::config(format!("{what}: {key}: {e}")))?;
            }
        }
        Ok(MongoSource {
            cfg,
            what: what.to_string(),
        })
    }

    fn password(&self) -> Result<Option<String>> {
        let Some(path) = &self.cfg.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "{}: cannot read password_file {}: {e}",
                self.what,
                path.display()
            ))
        })?;
        let pw = text.lines().next().unwrap_or("").to_string();
        if pw.is_empty() {
            return Err(Error::config(format!(
                "{}: password_file {} is empty",
                self.what,
                path.display()
            )));
        }
        Ok(Some(pw))
    }

    /// Connect to `url` (the job's, or a restore's `--to`) and check the server answers.
    async fn connect(&self, url: &str, password: Option<String>) -> Result<Conn> {
        let shown = redact_url(url);
        let secret = password.clone().or_else(|| url_password(url));
        let scrub = |text: String| match &secret {
            Some(s) if !s.is_empty() => text.replace(s.as_str(), "***"),
            _ => text,
        };
        let mut opts = ClientOptions::parse(url).await.map_err(|e| {
            Error::config(format!(
                "{}: cannot read MongoDB url {shown}: {}",
                self.what,
                scrub(e.to_string())
            ))
        })?;
        if let Some(pw) = password {
            match opts.credential.as_mut() {
                Some(c) if c.username.is_some() => c.password = Some(pw),
                _ => {
                    return Err(Error::config(format!(
                        "{}: password_file is set but the url {shown} names no user (mongodb://USER@host/...)",
                        self.what
                    )))
                }
            }
        }
        if opts.server_selection_timeout.is_none() {
            opts.server_selection_timeout = Some(DEFAULT_SERVER_SELECTION);
        }
        if opts.connect_timeout.is_none() {
            opts.connect_timeout = Some(DEFAULT_SERVER_SELECTION);
        }
        opts.app_name = Some(format!("drkit {}", drkit_core::VERSION));
        let client = Client::with_options(opts).map_err(|e| {
            Error::config(format!(
                "{}: MongoDB url {shown}: {}",
                self.what,
                scrub(e.to_string())
            ))
        })?;
        let conn = Conn {
            client,
            shown,
            secret,
        };
        conn.client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .map_err(|e| conn.error(e, "cannot connect to MongoDB"))?;
        Ok(conn)
    }
}

/// A connected client and how to talk about it without its secret.
struct Conn {
    client: Client,
    /// The URL, password removed.
    shown: String,
    secret: Option<String>,
}

impl Conn {
    /// Turn a driver error into a drkit error: one line, the secret removed, a hint for the
    /// usual causes.
    fn error(&self, e: mongodb::error::Error, doing: &str) -> Error {
        let mut text = e.to_string();
        if let Some(s) = &self.secret {
            if !s.is_empty() {
                text = text.replace(s.as_str(), "***");
            }
        }
        let text = text.replace('\n', " ");
        match e.kind.as_ref() {
            mongodb::error::ErrorKind::ServerSelection { .. } | mongodb::error::ErrorKind::Io(_) => Error::source_error(format!(
                "{doing} at {}: the server cannot be reached ({text}); check that it runs and that host and port are right",
                self.shown
            ))
            .retryable(),
            mongodb::error::ErrorKind::Authentication { .. } => Error::source_error(format!(
                "{doing} at {}: authentication failed ({text}); check the user, the password (or password_file) and authSource",
                self.shown
            )),
            mongodb::error::ErrorKind::Command(c) if c.code == 18 => Error::source_error(format!(
                "{doing} at {}: authentication failed ({text}); check the user, the password (or password_file) and authSource",
                self.shown
            )),
            mongodb::error::ErrorKind::Command(c) if c.code == 13 => Error::source_error(format!(
                "{doing} at {}: not authorized ({text}); the user needs the backup role to dump and the restore role to restore",
                self.shown
            )),
            mongodb::error::ErrorKind::Command(c) if c.code == 239 => Error::source_error(format!(
                "{doing} at {}: the snapshot is too old ({text}); raise the server's minSnapshotHistoryWindowInSeconds or set snapshot = false",
                self.shown
            )),
            _ => Error::source_error(format!("{doing} at {}: {text}", self.shown)),
        }
    }
}

fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let pw = userinfo.split_once(':')?.1;
    // The URL holds it percent-encoded; errors may show either form.
    Some(percent_decode(pw))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ----------------------------------------------------------------------------- naming -------

fn check_db_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 63 || name.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err(format!("{name:?} is not a valid database name"));
    }
    Ok(())
}

/// A namespace pattern: `db.collection` or `db.*`.
fn parse_pattern(p: &str) -> std::result::Result<(&str, &str), String> {
    match p.split_once('.') {
        Some((db, coll)) if !db.is_empty() && !coll.is_empty() && check_db_name(db).is_ok() => {
            Ok((db, coll))
        }
        _ => Err(format!(
            "{p:?} is not a namespace: write db.collection, or db.* for every collection of db"
        )),
    }
}

fn matches(pattern: &str, db: &str, coll: &str) -> bool {
    match parse_pattern(pattern) {
        Ok((pdb, "*")) => pdb == db,
        Ok((pdb, pcoll)) => pdb == db && pcoll == coll,
        Err(_) => false,
    }
}

/// Whether namespace `db.coll` is dumped under the include and exclude lists.
fn selected(db: &str, coll: &str, include: &[String], exclude: &[String]) -> bool {
    (include.is_empty() || include.iter().any(|p| matches(p, db, coll)))
        && !exclude.iter().any(|p| matches(p, db, coll))
}

/// Which databases to dump: the configured ones (each must exist), else every non-system one
/// (limited to the databases named by `include`, when given).
fn choose_databases(
    existing: &[String],
    configured: Option<&[String]>,
    include: &[String],
) -> std::result::Result<Vec<String>, String> {
    if let Some(dbs) = configured {
        let missing: Vec<&String> = dbs.iter().filter(|d| !existing.contains(d)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "database(s) {} do not exist on the server (it has: {})",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if existing.is_empty() {
                    "none".to_string()
                } else {
                    existing.join(", ")
                }
            ));
        }
        return Ok(dbs.to_vec());
    }
    let mut out: Vec<String> = existing
        .iter()
        .filter(|d| !SYSTEM_DATABASES.contains(&d.as_str()))
        .filter(|d| {
            include.is_empty()
                || include
                    .iter()
                    .any(|p| parse_pattern(p).is_ok_and(|(pdb, _)| pdb == d.as_str()))
        })
        .cloned()
        .collect();
    out.sort();
    Ok(out)
}

/// Where a restore goes: another server (`--to mongodb://...`) and/or renamed databases
/// (`--to app=app_restored[,other=other_copy]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct RestoreTarget {
    url: Option<String>,
    /// Source database -> target database. When not empty, only these databases are restored.
    map: Vec<(String, String)>,
}

impl RestoreTarget {
    fn parse(to: Option<&str>) -> std::result::Result<RestoreTarget, String> {
        let Some(to) = to.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(RestoreTarget::default());
        };
        if to.starts_with("mongodb://") || to.starts_with("mongodb+srv://") {
            return Ok(RestoreTarget {
                url: Some(to.to_string()),
                map: Vec::new(),
            });
        }
        let mut map: Vec<(String, String)> = Vec::new();
        for pair in to.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((from, into)) = pair.split_once('=') else {
                return Err(format!(
                    "--to {to:?}: expected a database mapping such as app=app_restored (several separated by commas), or a mongodb:// url"
                ));
            };
            let (from, into) = (from.trim(), into.trim());
            check_db_name(from).map_err(|e| format!("--to {to:?}: {e}"))?;
            check_db_name(into).map_err(|e| format!("--to {to:?}: {e}"))?;
            if SYSTEM_DATABASES.contains(&into) {
                return Err(format!(
                    "--to {to:?}: refusing to restore into the system database {into}"
                ));
            }
            if map.iter().any(|(f, _)| f == from) {
                return Err(format!("--to {to:?}: database {from} is mapped twice"));
            }
            if map.iter().any(|(_, t)| t == into) {
                return Err(format!("--to {to:?}: two databases are mapped to {into}"));
            }
            map.push((from.to_string(), into.to_string()));
        }
        Ok(RestoreTarget { url: None, map })
    }

    /// The database a source database is restored into; None when it is not restored.
    fn target_db(&self, db: &str) -> Option<String> {
        if self.map.is_empty() {
            return Some(db.to_string());
        }
        self.map
            .iter()
            .find(|(f, _)| f == db)
            .map(|(_, t)| t.clone())
    }

    fn describe(&self, shown_url: &str) -> String {
        if self.map.is_empty() {
            shown_url.to_string()
        } else {
            let m: Vec<String> = self
                .map
                .iter()
                .map(|(f, t)| format!("{f} -> {t}"))
                .collect();
            format!("{shown_url} ({})", m.join(", "))
        }
    }
}

/// The namespaces a manifest's stats name: collections with their counts, and views.
fn manifest_namespaces(manifest: &Manifest) -> Result<(BTreeMap<String, u64>, Vec<String>)> {
    let bad = || {
        Error::integrity(format!(
            "backup {}/{}: its manifest has no MongoDB stats (stats.collections); it was not written by the mongodb driver",
            manifest.job, manifest.id
        ))
    };
    let colls = manifest
        .stats
        .get("collections")
        .and_then(|v| v.as_object())
        .ok_or_else(bad)?;
    let mut counts = BTreeMap::new();
    for (ns, n) in colls {
        counts.insert(ns.clone(), n.as_u64().ok_or_else(bad)?);
    }
    let views = match manifest.stats.get("views") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<Vec<_>>>()?,
    };
    Ok((counts, views))
}

fn split_ns(ns: &str) -> (&str, &str) {
    ns.split_once('.').unwrap_or((ns, ""))
}

// ------------------------------------------------------------------------------- dump -------

/// How consistent a dump is, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Consistency {
    /// Every collection read at one `atClusterTime`.
    Snapshot,
    /// Each collection read as a snapshot of its own, at different times.
    Collection,
    /// `readConcern: local`: documents changed during the dump may be seen half-way.
    None,
}

impl Consistency {
    fn as_str(self) -> &'static str {
        match self {
            Consistency::Snapshot => "snapshot",
            Consistency::Collection => "collection",
            Consistency::None => "none",
        }
    }
}

/// The read concern of the next `find`.
#[derive(Debug, Clone, Copy)]
enum ReadMode {
    /// Snapshot; the first reply fixes the time.
    SnapshotFirst,
    /// Snapshot at this cluster time.
    SnapshotAt(Timestamp),
    /// `readConcern: local`.
    Local,
}

/// What was found on the server before the first byte is written.
struct DumpPlan {
    server_version: String,
    server: String,
    topology: String,
    replica_set: Option<String>,
    databases: Vec<String>,
    metas: Vec<CollectionMeta>,
}

impl MongoSource {
    async fn plan_dump(&self, conn: &Conn) -> Result<DumpPlan> {
        let admin = conn.client.database("admin");
        let build = admin
            .run_command(doc! {"buildInfo": 1})
            .await
            .map_err(|e| conn.error(e, "reading the server version"))?;
        let server_version = build.get_str("version").unwrap_or("unknown").to_string();
        let server = match build.get_str("secantusVersion") {
            Ok(v) => format!("SecantusDB {v}"),
            Err(_) => "MongoDB".to_string(),
        };
        let hello = admin
            .run_command(doc! {"hello": 1})
            .await
            .map_err(|e| conn.error(e, "reading the topology"))?;
        let replica_set = hello.get_str("setName").ok().map(str::to_string);
        let topology = if hello.get_str("msg") == Ok("isdbgrid") {
            "sharded"
        } else if replica_set.is_some() {
            "replica_set"
        } else {
            "standalone"
        }
        .to_string();

        let listed = admin
            .run_command(doc! {"listDatabases": 1, "nameOnly": true})
            .await
            .map_err(|e| conn.error(e, "listing databases"))?;
        let mut existing: Vec<String> = listed
            .get_array("databases")
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_document()?.get_str("name").ok().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        existing.sort();
        let databases = choose_databases(
            &existing,
            self.cfg.databases.as_deref(),
            &self.cfg.include_collections,
        )
        .map_err(|e| Error::not_found(format!("{}: {e} at {}", self.what, conn.shown)))?;

        let mut metas = Vec::new();
        for db_name in &databases {
            let db = conn.client.database(db_name);
            let specs: Vec<Document> = db
                .run_cursor_command(doc! {"listCollections": 1, "nameOnly": false})
                .await
                .map_err(|e| conn.error(e, &format!("listing the collections of {db_name}")))?
                .try_collect()
                .await
                .map_err(|e| conn.error(e, &format!("listing the collections of {db_name}")))?;
            let mut found = Vec::new();
            for spec in specs {
                let name = spec.get_str("name").unwrap_or_default().to_string();
                if name.is_empty() || name.starts_with("system.") {
                    continue;
                }
                if !selected(
                    db_name,
                    &name,
                    &self.cfg.include_collections,
                    &self.cfg.exclude_collections,
                ) {
                    continue;
                }
                let kind = match spec.get_str("type").unwrap_or("collection") {
                    "view" => Kind::View,
                    // MongoDB's time-series collections: dumped as their measurements and
                    // restored by creating the collection with its `timeseries` options.
                    _ => Kind::Collection,
                };
                let options = spec.get_document("options").cloned().unwrap_or_default();
                let uuid = spec
                    .get_document("info")
                    .ok()
                    .and_then(|i| match i.get("uuid") {
                        Some(Bson::Binary(b)) => Some(hex_lower(&b.bytes)),
                        _ => None,
                    });
                found.push(CollectionMeta {
                    db: db_name.clone(),
                    collection: name,
                    kind,
                    options,
                    indexes: Vec::new(),
                    uuid,
                });
            }
            found.sort_by(|a, b| a.collection.cmp(&b.collection));
            for meta in found.iter_mut().filter(|m| m.kind == Kind::Collection) {
                meta.indexes = db
                    .run_cursor_command(doc! {"listIndexes": meta.collection.as_str()})
                    .await
                    .map_err(|e| {
                        conn.error(e, &format!("listing the indexes of {}", meta.namespace()))
                    })?
                    .try_collect()
                    .await
                    .map_err(|e| {
                        conn.error(e, &format!("listing the indexes of {}", meta.namespace()))
                    })?;
            }
            metas.extend(found);
        }
        for p in &self.cfg.include_collections {
            let (pdb, pcoll) = parse_pattern(p).expect("checked in from_spec");
            if pcoll != "*" && !metas.iter().any(|m| m.db == pdb && m.collection == pcoll) {
                return Err(Error::not_found(format!(
                    "{}: include_collections names {p}, which does not exist at {}",
                    self.what, conn.shown
                )));
            }
        }
        Ok(DumpPlan {
            server_version,
            server,
            topology,
            replica_set,
            databases,
            metas,
        })
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn write<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> Result<()> {
    w.write_all(bytes)
        .await
        .map_err(|e| Error::cancelled(format!("the backup stopped reading the MongoDB dump ({e})")))
}

/// What the dump of the documents found.
struct DataOutcome {
    counts: Vec<(u64, u64)>,
    consistency: Consistency,
    at_cluster_time: Option<Timestamp>,
    warnings: Vec<String>,
}

/// Write every collection's documents (and every namespace's end) after the prelude.
async fn dump_data<W: AsyncWrite + Unpin>(
    conn: &Conn,
    metas: &[CollectionMeta],
    snapshot: bool,
    w: &mut W,
) -> Result<DataOutcome> {
    let mut session = conn
        .client
        .start_session()
        .causal_consistency(false)
        .await
        .map_err(|e| conn.error(e, "starting a session"))?;
    let mut mode = if snapshot {
        ReadMode::SnapshotFirst
    } else {
        ReadMode::Local
    };
    let mut out = DataOutcome {
        counts: Vec::with_capacity(metas.len()),
        consistency: if snapshot {
            Consistency::Snapshot
        } else {
            Consistency::None
        },
        at_cluster_time: None,
        warnings: Vec::new(),
    };
    if !snapshot {
        out.warnings.push(
            "snapshot = false: collections were read with readConcern local, not at one point in time".into(),
        );
    }
    for meta in metas {
        if meta.kind != Kind::Collection {
            write(w, &archive::end_block(&meta.db, &meta.collection, 0)).await?;
            out.counts.push((0, 0));
            continue;
        }
        let counted = dump_collection(conn, &mut session, meta, &mut mode, &mut out, w).await?;
        out.counts.push(counted);
    }
    Ok(out)
}

fn find_command(coll: &str, mode: ReadMode) -> RawDocumentBuf {
    let mut cmd = rawdoc! {"find": coll, "filter": {}};
    match mode {
        ReadMode::SnapshotFirst => cmd.append("readConcern", rawdoc! {"level": "snapshot"}),
        ReadMode::SnapshotAt(t) => cmd.append(
            "readConcern",
            rawdoc! {"level": "snapshot", "atClusterTime": t},
        ),
        ReadMode::Local => cmd.append("readConcern", rawdoc! {"level": "local"}),
    }
    cmd
}

async fn dump_collection<W: AsyncWrite + Unpin>(
    conn: &Conn,
    session: &mut ClientSession,
    meta: &CollectionMeta,
    mode: &mut ReadMode,
    out: &mut DataOutcome,
    w: &mut W,
) -> Result<(u64, u64)> {
    let ns = meta.namespace();
    let db = conn.client.database(&meta.db);
    let reading = format!("reading {ns}");
    let mut cursor = match db
        .run_raw_cursor_command(find_command(&meta.collection, *mode))
        .batch_size(GETMORE_BATCH_DOCS)
        .session(&mut *session)
        .batch()
        .await
    {
        Ok(c) => c,
        Err(e)
            if matches!(mode, ReadMode::SnapshotFirst)
                && matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(_)) =>
        {
            // The server refuses snapshot reads (a standalone server, an old version...):
            // read with readConcern local and say so.
            out.consistency = Consistency::None;
            out.warnings.push(format!(
                "the server does not support snapshot reads ({}): collections were read with readConcern local, not at one point in time",
                conn.error(e, "snapshot read").message()
            ));
            *mode = ReadMode::Local;
            db.run_raw_cursor_command(find_command(&meta.collection, *mode))
                .batch_size(GETMORE_BATCH_DOCS)
                .session(&mut *session)
                .batch()
                .await
                .map_err(|e| conn.error(e, &reading))?
        }
        Err(e) => return Err(conn.error(e, &reading)),
    };
    let mut stream = cursor.stream(&mut *session);
    let mut crc = archive::Crc64::default();
    let (mut docs, mut bytes) = (0u64, 0u64);
    let mut first = true;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| conn.error(e, &reading))?;
        if first {
            first = false;
            let at = batch
                .as_raw_document()
                .get_document("cursor")
                .ok()
                .and_then(|c| c.get_timestamp("atClusterTime").ok());
            note_cluster_time(mode, at, &ns, out);
        }
        let items = batch.doc_slices().map_err(|e| conn.error(e, &reading))?;
        let mut header_written = false;
        for item in items {
            let item = item.map_err(|e| {
                Error::source_error(format!("{reading}: the server sent malformed BSON ({e})"))
            })?;
            let RawBsonRef::Document(d) = item else {
                return Err(Error::source_error(format!(
                    "{reading}: the server sent a batch item that is not a document"
                )));
            };
            if !header_written {
                write(
                    w,
                    &archive::namespace_header(&meta.db, &meta.collection, false, 0),
                )
                .await?;
                header_written = true;
            }
            let raw = d.as_bytes();
            crc.update(raw);
            write(w, raw).await?;
            docs += 1;
            bytes += raw.len() as u64;
        }
        if header_written {
            write(w, &archive::TERMINATOR).await?;
        }
    }
    write(
        w,
        &archive::end_block(
            &meta.db,
            &meta.collection,
            if docs == 0 { 0 } else { crc.value() },
        ),
    )
    .await?;
    Ok((docs, bytes))
}

/// Record what the first reply of a collection's `find` says about its point in time.
fn note_cluster_time(mode: &mut ReadMode, at: Option<Timestamp>, ns: &str, out: &mut DataOutcome) {
    match (*mode, at) {
        (ReadMode::Local, _) => {}
        (ReadMode::SnapshotFirst, Some(t)) => {
            *mode = ReadMode::SnapshotAt(t);
            out.at_cluster_time = Some(t);
        }
        (ReadMode::SnapshotAt(want), Some(got)) if got == want => {}
        (ReadMode::SnapshotAt(want), Some(got)) => {
            if out.consistency < Consistency::Collection {
                out.warnings.push(format!(
                    "the server read {ns} at cluster time {}.{} instead of the requested {}.{}: each collection is a snapshot of its own, collections are not from one point in time",
                    got.time, got.increment, want.time, want.increment
                ));
            }
            out.consistency = out.consistency.max(Consistency::Collection);
        }
        (_, None) => {
            if out.consistency < Consistency::None {
                out.warnings.push(format!(
                    "the server gave no snapshot time for {ns}: the dump is not from one point in time"
                ));
            }
            out.consistency = Consistency::None;
            *mode = ReadMode::Local;
        }
    }
}

// ---------------------------------------------------------------------------- restore -------

/// One thing to do, owned, taken from the parser's events.
enum Step {
    Prelude(archive::Prelude),
    Doc(usize, RawDocumentBuf),
    End,
}

struct Restorer<'a> {
    conn: &'a Conn,
    force: bool,
    target: RestoreTarget,
    /// Per prelude namespace: the (db, collection) it goes to, None when not restored.
    dest: Vec<Option<(String, String)>>,
    metas: Vec<CollectionMeta>,
    batch: Vec<RawDocumentBuf>,
    batch_ns: usize,
    batch_bytes: usize,
    replaced: Vec<String>,
    inserted: Vec<u64>,
}

impl Restorer<'_> {
    async fn step(&mut self, step: Step) -> Result<()> {
        match step {
            Step::Prelude(p) => self.prelude(p).await,
            Step::Doc(ns, doc) => {
                if self.dest[ns].is_none() {
                    return Ok(());
                }
                if self.batch_ns != ns
                    || self.batch.len() >= INSERT_BATCH_DOCS
                    || self.batch_bytes + doc.as_bytes().len() > INSERT_BATCH_BYTES
                {
                    self.flush().await?;
                }
                self.batch_ns = ns;
                self.batch_bytes += doc.as_bytes().len();
                self.batch.push(doc);
                Ok(())
            }
            Step::End => self.flush().await,
        }
    }

    async fn prelude(&mut self, p: archive::Prelude) -> Result<()> {
        self.metas = p.collections;
        self.inserted = vec![0; self.metas.len()];
        self.dest = self
            .metas
            .iter()
            .map(|m| {
                self.target
                    .target_db(&m.db)
                    .map(|db| (db, m.collection.clone()))
            })
            .collect();
        if let Some(m) = self
            .metas
            .iter()
            .zip(&self.dest)
            .find(|(m, d)| d.is_some() && m.kind == Kind::Timeseries)
            .map(|(m, _)| m)
        {
            return Err(Error::source_error(format!(
                "{} is a time-series collection stored as buckets (an archive of mongodump for MongoDB before 8.3): drkit does not restore those; use mongorestore",
                m.namespace()
            )));
        }
        // Check every destination before changing any.
        let mut existing: HashMap<(String, String), (String, bool)> = HashMap::new();
        for (db, coll) in self.dest.iter().flatten() {
            if let Some(state) = existing_state(self.conn, db, coll).await? {
                existing.insert((db.clone(), coll.clone()), state);
            }
        }
        let non_empty: Vec<String> = existing
            .iter()
            .filter(|(_, (_, has_data))| *has_data)
            .map(|((db, coll), _)| format!("{db}.{coll}"))
            .collect();
        if !non_empty.is_empty() && !self.force {
            return Err(refusal(&self.conn.shown, non_empty));
        }
        for ((db, coll), (kind, has_data)) in &existing {
            drop_namespace(self.conn, db, coll).await?;
            if *has_data {
                self.replaced.push(format!("{db}.{coll} ({kind})"));
            }
        }
        self.replaced.sort();
        for (meta, dest) in self.metas.iter().zip(&self.dest) {
            let Some((db, coll)) = dest else { continue };
            if meta.kind != Kind::Collection {
                continue;
            }
            let mut cmd = doc! {"create": coll.as_str()};
            for (k, v) in &meta.options {
                cmd.insert(k.clone(), v.clone());
            }
            self.conn
                .client
                .database(db)
                .run_command(cmd)
                .await
                .map_err(|e| {
                    self.conn
                        .error(e, &format!("creating collection {db}.{coll}"))
                })?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let ns = self.batch_ns;
        let (db, coll) = self.dest[ns]
            .clone()
            .expect("only restored namespaces are batched");
        let n = self.batch.len() as u64;
        let docs = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.conn
            .client
            .database(&db)
            .collection::<RawDocumentBuf>(&coll)
            .insert_many(docs)
            .ordered(true)
            .bypass_document_validation(true)
            .await
            .map_err(|e| self.conn.error(e, &format!("inserting into {db}.{coll}")))?;
        self.inserted[ns] += n;
        Ok(())
    }

    /// After the data: indexes, then views.
    async fn finish(&mut self) -> Result<Vec<String>> {
        self.flush().await?;
        let mut notes = Vec::new();
        let mut index_count = 0usize;
        for (meta, dest) in self.metas.iter().zip(&self.dest) {
            let Some((db, coll)) = dest else { continue };
            if meta.kind != Kind::Collection {
                continue;
            }
            let clustered = meta
                .options
                .get_document("clusteredIndex")
                .ok()
                .and_then(|c| c.get_str("name").ok());
            let specs: Vec<Document> = meta
                .indexes
                .iter()
                .filter(|spec| {
                    let name = spec.get_str("name").unwrap_or_default();
                    name != "_id_" && Some(name) != clustered
                })
                .map(|spec| {
                    let mut s = spec.clone();
                    s.remove("ns");
                    s
                })
                .collect();
            if specs.is_empty() {
                continue;
            }
            index_count += specs.len();
            self.conn
                .client
                .database(db)
                .run_command(doc! {"createIndexes": coll.as_str(), "indexes": specs})
                .await
                .map_err(|e| {
                    self.conn
                        .error(e, &format!("building the indexes of {db}.{coll}"))
                })?;
        }
        let mut views = 0usize;
        for (meta, dest) in self.metas.iter().zip(&self.dest) {
            let Some((db, coll)) = dest else { continue };
            if meta.kind != Kind::View {
                continue;
            }
            let mut cmd = doc! {"create": coll.as_str()};
            for (k, v) in &meta.options {
                cmd.insert(k.clone(), v.clone());
            }
            self.conn
                .client
                .database(db)
                .run_command(cmd)
                .await
                .map_err(|e| self.conn.error(e, &format!("creating view {db}.{coll}")))?;
            views += 1;
        }
        notes.push(format!(
            "{index_count} index(es) built after the data, {views} view(s) recreated"
        ));
        let skipped: Vec<String> = self
            .metas
            .iter()
            .zip(&self.dest)
            .filter(|(_, d)| d.is_none())
            .map(|(m, _)| m.namespace())
            .collect();
        if !skipped.is_empty() {
            notes.push(format!(
                "not restored (database not in --to): {}",
                skipped.join(", ")
            ));
        }
        Ok(notes)
    }
}

fn refusal(shown: &str, mut non_empty: Vec<String>) -> Error {
    non_empty.sort();
    Error::refused(format!(
        "restore into {shown} would overwrite {} non-empty collection(s): {}; restore elsewhere (--to app=app_restored) or use --force to drop them first",
        non_empty.len(),
        non_empty.join(", ")
    ))
}

/// Whether `db.coll` exists: its type, and whether it holds documents.
async fn existing_state(conn: &Conn, db: &str, coll: &str) -> Result<Option<(String, bool)>> {
    let database = conn.client.database(db);
    let specs: Vec<Document> = database
        .run_cursor_command(doc! {"listCollections": 1, "filter": {"name": coll}})
        .await
        .map_err(|e| conn.error(e, &format!("checking {db}.{coll}")))?
        .try_collect()
        .await
        .map_err(|e| conn.error(e, &format!("checking {db}.{coll}")))?;
    let Some(spec) = specs.first() else {
        return Ok(None);
    };
    let kind = spec.get_str("type").unwrap_or("collection").to_string();
    if kind == "view" {
        return Ok(Some((kind, false)));
    }
    let one = database
        .collection::<RawDocumentBuf>(coll)
        .find_one(doc! {})
        .projection(doc! {"_id": 1})
        .await
        .map_err(|e| conn.error(e, &format!("checking {db}.{coll}")))?;
    Ok(Some((kind, one.is_some())))
}

async fn drop_namespace(conn: &Conn, db: &str, coll: &str) -> Result<()> {
    match conn
        .client
        .database(db)
        .run_command(doc! {"drop": coll})
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 26) => {
            Ok(())
        }
        Err(e) => Err(conn.error(e, &format!("dropping {db}.{coll}"))),
    }
}

#[async_trait]
impl Source for MongoSource {
    fn driver(&self) -> &'static str {
        "mongodb"
    }

    fn extension(&self) -> &'static str {
        "archive"
    }

    fn describe(&self) -> String {
        let scope = match &self.cfg.databases {
            Some(d) => format!(" databases {}", d.join(", ")),
            None => " (all databases)".to_string(),
        };
        format!("MongoDB {}{scope}", redact_url(&self.cfg.url))
    }

    async fn dump(&self) -> Result<Dump> {
        let conn = self.connect(&self.cfg.url, self.password()?).await?;
        let plan = self.plan_dump(&conn).await?;
        let (reader, mut writer) = tokio::io::duplex(PIPE_BYTES);
        let snapshot = self.cfg.snapshot;
        let tool = format!("drkit {}", drkit_core::VERSION);
        let task = tokio::spawn(async move {
            write(
                &mut writer,
                &archive::prelude_bytes(&plan.server_version, &tool, &plan.metas),
            )
            .await?;
            let data = dump_data(&conn, &plan.metas, snapshot, &mut writer).await?;
            writer.shutdown().await.map_err(|e| {
                Error::cancelled(format!("the backup stopped reading the MongoDB dump ({e})"))
            })?;
            Ok::<_, Error>(summary(&conn.shown, plan, data))
        });
        let finish = Box::pin(async move {
            task.await
                .map_err(|e| Error::source_error(format!("the MongoDB dump task failed: {e}")))?
        });
        Ok(Dump {
            reader: Box::new(reader),
            finish,
        })
    }

    async fn plan_restore(
        &self,
        manifest: &Manifest,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let target = RestoreTarget::parse(opts.to.as_deref()).map_err(Error::config)?;
        let conn = self.restore_conn(&target).await?;
        let (counts, views) = manifest_namespaces(manifest)?;
        check_mapping(&target, counts.keys().chain(views.iter()))?;
        let mut non_empty = Vec::new();
        let mut replaces = false;
        for ns in counts.keys().chain(views.iter()) {
            let (db, coll) = split_ns(ns);
            let Some(tdb) = target.target_db(db) else {
                continue;
            };
            if let Some((_, has_data)) = existing_state(&conn, &tdb, coll).await? {
                if has_data {
                    replaces = true;
                    non_empty.push(format!("{tdb}.{coll}"));
                }
            }
        }
        if !non_empty.is_empty() && !opts.force {
            return Err(refusal(&conn.shown, non_empty));
        }
        let mut notes = Vec::new();
        if !non_empty.is_empty() {
            notes.push(format!("--force: will drop {} first", non_empty.join(", ")));
        }
        Ok(RestoreReport {
            destination: target.describe(&conn.shown),
            replaces_existing: replaces,
            kept_previous: None,
            stats_checked: false,
            notes,
        })
    }

    async fn restore(
        &self,
        mut data: BoxRead,
        manifest: &Manifest,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let target = RestoreTarget::parse(opts.to.as_deref()).map_err(Error::config)?;
        let conn = self.restore_conn(&target).await?;
        let (want_counts, views) = manifest_namespaces(manifest)?;
        check_mapping(&target, want_counts.keys().chain(views.iter()))?;
        let corrupt = |e: archive::ArchiveError| {
            Error::integrity(format!(
                "backup {}/{} is corrupt: {e}",
                manifest.job, manifest.id
            ))
        };
        let mut restorer = Restorer {
            conn: &conn,
            force: opts.force,
            target: target.clone(),
            dest: Vec::new(),
            metas: Vec::new(),
            batch: Vec::new(),
            batch_ns: 0,
            batch_bytes: 0,
            replaced: Vec::new(),
            inserted: Vec::new(),
        };
        let mut parser = archive::Parser::new();
        let mut steps: VecDeque<Step> = VecDeque::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = data
                .read(&mut buf)
                .await
                .map_err(|e| from_io(e, ErrorKind::Storage, "reading the archive"))?;
            if n == 0 {
                break;
            }
            parser
                .feed(&buf[..n], &mut |ev| {
                    steps.push_back(match ev {
                        archive::Event::Prelude(p) => Step::Prelude(p.clone()),
                        archive::Event::Document { ns, bytes } => Step::Doc(
                            ns,
                            RawDocumentBuf::from_bytes(bytes.to_vec())
                                .map_err(|e| archive::ArchiveError(e.to_string()))?,
                        ),
                        archive::Event::End { .. } => Step::End,
                    });
                    Ok(())
                })
                .map_err(corrupt)?;
            while let Some(step) = steps.pop_front() {
                restorer.step(step).await?;
            }
        }
        parser.finish().map_err(corrupt)?;
        let mut notes = restorer.finish().await?;

        // Compare with the manifest: what the archive held, what was inserted, what is there.
        let mut mismatches = Vec::new();
        for (i, meta) in restorer.metas.iter().enumerate() {
            let Some((db, coll)) = &restorer.dest[i] else {
                continue;
            };
            if meta.kind != Kind::Collection {
                continue;
            }
            let ns = meta.namespace();
            let want = want_counts.get(&ns).copied();
            let have = conn
                .client
                .database(db)
                .collection::<RawDocumentBuf>(coll)
                .count_documents(doc! {})
                .await
                .map_err(|e| conn.error(e, &format!("counting {db}.{coll}")))?;
            let archived = parser.counts()[i].documents;
            if want != Some(have) || archived != have || restorer.inserted[i] != have {
                mismatches.push(format!(
                    "{db}.{coll}: manifest {}, archive {archived}, inserted {}, now {have}",
                    want.map(|w| w.to_string()).unwrap_or_else(|| "none".into()),
                    restorer.inserted[i]
                ));
            }
        }
        let missing: Vec<&String> = want_counts
            .keys()
            .filter(|ns| target.target_db(split_ns(ns).0).is_some())
            .filter(|ns| !restorer.metas.iter().any(|m| &m.namespace() == *ns))
            .collect();
        for ns in missing {
            mismatches.push(format!("{ns}: in the manifest, not in the archive"));
        }
        if !mismatches.is_empty() {
            return Err(Error::integrity(format!(
                "backup {}/{}: document counts after the restore do not match: {}",
                manifest.job,
                manifest.id,
                mismatches.join("; ")
            )));
        }
        if !restorer.replaced.is_empty() {
            notes.push(format!(
                "--force dropped first: {}",
                restorer.replaced.join(", ")
            ));
        }
        let restored: u64 = restorer.inserted.iter().sum();
        notes.insert(
            0,
            format!(
                "{restored} document(s) restored into {} collection(s)",
                restorer
                    .dest
                    .iter()
                    .zip(&restorer.metas)
                    .filter(|(d, m)| d.is_some() && m.kind == Kind::Collection)
                    .count()
            ),
        );
        Ok(RestoreReport {
            destination: target.describe(&conn.shown),
            replaces_existing: !restorer.replaced.is_empty(),
            kept_previous: None,
            stats_checked: true,
            notes,
        })
    }

    async fn preflight(&self) -> Result<Vec<String>> {
        let conn = self.connect(&self.cfg.url, self.password()?).await?;
        let plan = self.plan_dump(&conn).await?;
        let collections = plan.metas.iter().filter(|m| m.kind != Kind::View).count();
        let views = plan.metas.len() - collections;
        let mut notes = vec![format!(
            "{} {} ({}) at {} answers; {} database(s) to dump: {} collection(s), {} view(s)",
            plan.server,
            plan.server_version,
            plan.topology,
            conn.shown,
            plan.databases.len(),
            collections,
            views
        )];
        if !self.cfg.snapshot {
            notes.push("snapshot = false: dumps are not from one point in time".into());
        }
        Ok(notes)
    }

    async fn drill_scratch(&self, manifest: &Manifest) -> Result<Option<String>> {
        let (counts, views) = manifest_namespaces(manifest)?;
        let mut dbs: Vec<&str> = counts
            .keys()
            .chain(views.iter())
            .map(|ns| split_ns(ns).0)
            .collect();
        dbs.sort();
        dbs.dedup();
        if dbs.is_empty() {
            return Ok(None);
        }
        Ok(Some(drill_mapping(&dbs, rand::random::<u32>())))
    }

    async fn drill_cleanup(&self, scratch: &str) -> Result<()> {
        let target = RestoreTarget::parse(Some(scratch)).map_err(Error::config)?;
        let conn = self.restore_conn(&target).await?;
        for (_, db) in &target.map {
            if !db.starts_with("drkit_drill_") {
                return Err(Error::refused(format!(
                    "refusing to drop {db}: not a drill database"
                )));
            }
            conn.client
                .database(db)
                .drop()
                .await
                .map_err(|e| conn.error(e, &format!("dropping drill database {db}")))?;
        }
        Ok(())
    }

    fn measure(&self, stats: &serde_json::Value) -> drkit_core::suspect::Measure {
        crate::source::measure::mongodb(stats)
    }

    fn check_structure(&self, head: &[u8]) -> Result<()> {
        let mut parser = archive::Parser::new();
        parser
            .feed(head, &mut |_| Ok(()))
            .map_err(|e| Error::integrity(e.to_string()))?;
        if head.len() < 4096 {
            // The whole archive fits in the head: it must also end where it may.
            parser
                .finish()
                .map_err(|e| Error::integrity(e.to_string()))?;
        }
        Ok(())
    }

    fn stream_check(&self, manifest: &Manifest) -> Option<Box<dyn drkit_core::StreamCheck>> {
        Some(Box::new(ArchiveCheck {
            parser: archive::Parser::new(),
            want: manifest_namespaces(manifest).ok(),
        }))
    }
}

impl MongoSource {
    async fn restore_conn(&self, target: &RestoreTarget) -> Result<Conn> {
        match &target.url {
            Some(url) => self.connect(url, None).await,
            None => self.connect(&self.cfg.url, self.password()?).await,
        }
    }
}

/// `--to` for a drill: every database of the backup into a scratch database
/// `drkit_drill_<tag>_<db>` (cut to MongoDB's 63-byte limit).
fn drill_mapping(dbs: &[&str], tag: u32) -> String {
    dbs.iter()
        .enumerate()
        .map(|(i, db)| {
            let mut name = format!("drkit_drill_{tag:08x}_{i}_{db}");
            while name.len() > 63 {
                name.pop();
            }
            format!("{db}={name}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn check_mapping<'a>(
    target: &RestoreTarget,
    namespaces: impl Iterator<Item = &'a String>,
) -> Result<()> {
    let dbs: Vec<&str> = {
        let mut v: Vec<&str> = namespaces.map(|ns| split_ns(ns).0).collect();
        v.sort();
        v.dedup();
        v
    };
    for (from, _) in &target.map {
        if !dbs.contains(&from.as_str()) {
            return Err(Error::config(format!(
                "--to maps database {from}, which is not in this backup (it holds: {})",
                if dbs.is_empty() {
                    "nothing".to_string()
                } else {
                    dbs.join(", ")
                }
            )));
        }
    }
    Ok(())
}

/// The whole-archive check run while a backup is verified (and so before every restore):
/// the archive's structure, CRCs, and its document counts against the manifest's.
struct ArchiveCheck {
    parser: archive::Parser,
    want: Option<(BTreeMap<String, u64>, Vec<String>)>,
}

impl drkit_core::StreamCheck for ArchiveCheck {
    fn update(&mut self, bytes: &[u8]) -> Result<()> {
        self.parser
            .feed(bytes, &mut |_| Ok(()))
            .map_err(|e| Error::integrity(e.to_string()))
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.parser
            .finish()
            .map_err(|e| Error::integrity(e.to_string()))?;
        let Some((want, views)) = &self.want else {
            return Err(Error::integrity(
                "the manifest has no MongoDB stats (stats.collections)",
            ));
        };
        let prelude = self
            .parser
            .prelude()
            .expect("a finished archive has a prelude");
        let mut got: BTreeMap<String, u64> = BTreeMap::new();
        let mut got_views = Vec::new();
        for (meta, c) in prelude.collections.iter().zip(self.parser.counts()) {
            match meta.kind {
                Kind::View => got_views.push(meta.namespace()),
                _ => {
                    got.insert(meta.namespace(), c.documents);
                }
            }
        }
        got_views.sort();
        let mut want_views = views.clone();
        want_views.sort();
        if &got != want || got_views != want_views {
            return Err(Error::integrity(format!(
                "the archive does not match the manifest: it holds {} collection(s) with {} document(s) and {} view(s), the manifest says {} with {} and {}",
                got.len(),
                got.values().sum::<u64>(),
                got_views.len(),
                want.len(),
                want.values().sum::<u64>(),
                want_views.len()
            )));
        }
        Ok(())
    }
}

fn summary(shown: &str, plan: DumpPlan, data: DataOutcome) -> DumpSummary {
    let mut collections = serde_json::Map::new();
    let mut views = Vec::new();
    let (mut documents, mut bytes) = (0u64, 0u64);
    for (meta, (docs, b)) in plan.metas.iter().zip(&data.counts) {
        match meta.kind {
            Kind::View => views.push(serde_json::Value::String(meta.namespace())),
            _ => {
                collections.insert(meta.namespace(), (*docs).into());
            }
        }
        documents += docs;
        bytes += b;
    }
    let mut warnings = data.warnings;
    let empty = documents == 0;
    if empty {
        warnings.push(format!(
            "the dump holds no documents ({} collection(s), {} view(s) in {} database(s))",
            collections.len(),
            views.len(),
            plan.databases.len()
        ));
    }
    let consistency_text = match data.consistency {
        Consistency::Snapshot => "every collection read at one point in time (readConcern snapshot, one atClusterTime)",
        Consistency::Collection => "each collection read as a snapshot of its own; collections may be from different moments",
        Consistency::None => "readConcern local: documents changed during the dump may be seen in either state",
    };
    let mut source = serde_json::json!({
        "url": shown,
        "server": plan.server,
        "server_version": plan.server_version,
        "topology": plan.topology,
        "databases": plan.databases,
        "consistency": data.consistency.as_str(),
        "consistency_detail": consistency_text,
        "archive_format": format!("mongodump --archive {}", archive::FORMAT_VERSION),
    });
    if let Some(rs) = plan.replica_set {
        source["replica_set"] = rs.into();
    }
    if let Some(t) = data.at_cluster_time {
        source["at_cluster_time"] = serde_json::json!({"t": t.time, "i": t.increment});
    }
    let stats = serde_json::json!({
        "collections": collections,
        "views": views,
        "documents": documents,
        "bytes": bytes,
        "empty": empty,
    });
    DumpSummary {
        source,
        stats,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_selection() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        #[allow(clippy::type_complexity)]
        let cases: &[(&[&str], &[&str], &str, &str, bool)] = &[
            (&[], &[], "app", "users", true),
            (&["app.users"], &[], "app", "users", true),
            (&["app.users"], &[], "app", "orders", false),
            (&["app.*"], &[], "app", "orders", true),
            (&["app.*"], &["app.sessions"], "app", "sessions", false),
            (&[], &["app.*"], "app", "users", false),
            (&[], &["app.*"], "other", "users", true),
            (&["app.a.b"], &[], "app", "a.b", true),
        ];
        for (inc, exc, db, coll, want) in cases {
            assert_eq!(
                selected(db, coll, &s(inc), &s(exc)),
                *want,
                "{inc:?} {exc:?} {db}.{coll}"
            );
        }
    }

    #[test]
    fn database_choice() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let existing = s(&["admin", "app", "config", "local", "shop"]);
        assert_eq!(
            choose_databases(&existing, None, &[]).unwrap(),
            s(&["app", "shop"])
        );
        assert_eq!(
            choose_databases(&existing, Some(&s(&["shop"])), &[]).unwrap(),
            s(&["shop"])
        );
        assert_eq!(
            choose_databases(&existing, None, &s(&["shop.orders"])).unwrap(),
            s(&["shop"])
        );
        let e = choose_databases(&existing, Some(&s(&["nope", "app"])), &[]).unwrap_err();
        assert!(e.contains("nope") && e.contains("do not exist"), "{e}");
    }

    #[test]
    fn restore_target_parsing() {
        let m = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            RestoreTarget::parse(None).unwrap(),
            RestoreTarget::default()
        );
        assert_eq!(
            RestoreTarget::parse(Some("app=app_restored")).unwrap().map,
            m(&[("app", "app_restored")])
        );
        assert_eq!(
            RestoreTarget::parse(Some(" a=b , c=d ")).unwrap().map,
            m(&[("a", "b"), ("c", "d")])
        );
        let url = RestoreTarget::parse(Some("mongodb://h:1/")).unwrap();
        assert_eq!(url.url.as_deref(), Some("mongodb://h:1/"));
        for bad in ["app", "a=b,a=c", "a=x,b=x", "a=admin", "a=b.c", "=b"] {
            assert!(RestoreTarget::parse(Some(bad)).is_err(), "{bad}");
        }
        let t = RestoreTarget::parse(Some("app=copy")).unwrap();
        assert_eq!(t.target_db("app").as_deref(), Some("copy"));
        assert_eq!(t.target_db("other"), None);
        assert_eq!(
            RestoreTarget::default().target_db("x").as_deref(),
            Some("x")
        );
    }

    #[test]
    fn drill_mapping_names_scratch_databases() {
        let long = "x".repeat(60);
        let m = drill_mapping(&["app", &long], 0xabc);
        let t = RestoreTarget::parse(Some(&m)).unwrap();
        assert_eq!(
            t.target_db("app").as_deref(),
            Some("drkit_drill_00000abc_0_app")
        );
        let l = t.target_db(&long).unwrap();
        assert!(
            l.len() == 63 && l.starts_with("drkit_drill_00000abc_1_x"),
            "{l}"
        );
    }

    #[test]
    fn url_password_is_found_for_scrubbing() {
        assert_eq!(
            url_password("mongodb://u:p%40ss@h/db").as_deref(),
            Some("p@ss")
        );
        assert_eq!(url_password("mongodb://u@h/db"), None);
        assert_eq!(url_password("mongodb://h/db?x=a:b@c"), None);
    }

    #[test]
    fn cluster_time_notes() {
        let t = |i| Timestamp {
            time: 10,
            increment: i,
        };
        let fresh = || DataOutcome {
            counts: vec![],
            consistency: Consistency::Snapshot,
            at_cluster_time: None,
            warnings: vec![],
        };
        let mut out = fresh();
        let mut mode = ReadMode::SnapshotFirst;
        note_cluster_time(&mut mode, Some(t(1)), "a.b", &mut out);
        note_cluster_time(&mut mode, Some(t(1)), "a.c", &mut out);
        assert_eq!(out.consistency, Consistency::Snapshot);
        assert_eq!(out.at_cluster_time, Some(t(1)));
        note_cluster_time(&mut mode, Some(t(2)), "a.d", &mut out);
        assert_eq!(out.consistency, Consistency::Collection);
        assert_eq!(out.warnings.len(), 1);
        note_cluster_time(&mut mode, None, "a.e", &mut out);
        assert_eq!(out.consistency, Consistency::None);
        assert!(matches!(mode, ReadMode::Local));
        assert_eq!(out.warnings.len(), 2);
    }

    #[test]
    fn config_is_checked() {
        let spec = |t: &str| DriverSpec {
            kind: "mongodb".into(),
            settings: toml::from_str(t).unwrap(),
        };
        assert!(MongoSource::from_spec(&spec("url = \"mongodb://h/\""), "job.x.source").is_ok());
        for bad in [
            "url = \"postgres://h/\"",
            "url = \"mongodb://h/\"\ndatabases = []",
            "url = \"mongodb://h/\"\ninclude_collections = [\"users\"]",
            "url = \"mongodb://h/\"\nbogus = 1",
            "url = \"mongodb://u:secret@h/\"\ndatabases = [\"a.b\"]",
        ] {
            let e = MongoSource::from_spec(&spec(bad), "job.x.source")
                .err()
                .unwrap();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }
}
