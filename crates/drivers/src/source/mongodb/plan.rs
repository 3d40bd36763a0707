//! Dump planning: what is on the server before the first byte is written ([`DumpPlan`]: its
//! version and topology, the databases to dump, every selected collection and view with its
//! options and indexes), and what a preflight says about it.

use bson::{doc, Bson, Document};
use futures::TryStreamExt;

use drkit_core::{Error, Result};

use super::archive::{CollectionMeta, Kind};
use super::conn::Conn;
use super::select::{choose_databases, parse_pattern, selected};
use super::MongoSource;

/// What was found on the server before the first byte is written.
pub(super) struct DumpPlan {
    pub(super) server_version: String,
    pub(super) server: String,
    pub(super) topology: String,
    pub(super) replica_set: Option<String>,
    pub(super) databases: Vec<String>,
    pub(super) metas: Vec<CollectionMeta>,
}

impl MongoSource {
    /// Find what to dump, and check that every collection named by `include_collections` exists.
    pub(super) async fn plan_dump(&self, conn: &Conn) -> Result<DumpPlan> {
        let (server_version, server) = server_version(conn).await?;
        let (topology, replica_set) = topology(conn).await?;
        let databases = self.databases(conn).await?;
        let mut metas = Vec::new();
        for db_name in &databases {
            metas.extend(self.collections(conn, db_name).await?);
        }
        self.check_included_exist(conn, &metas)?;
        Ok(DumpPlan {
            server_version,
            server,
            topology,
            replica_set,
            databases,
            metas,
        })
    }

    /// The databases to dump, chosen from those on the server (sorted by name).
    async fn databases(&self, conn: &Conn) -> Result<Vec<String>> {
        let listed = conn
            .client
            .database("admin")
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
        choose_databases(
            &existing,
            self.cfg.databases.as_deref(),
            &self.cfg.include_collections,
        )
        .map_err(|e| Error::not_found(format!("{}: {e} at {}", self.what, conn.shown)))
    }

    /// The selected collections and views of database `db_name`, sorted by name, the
    /// collections with their indexes.
    async fn collections(&self, conn: &Conn, db_name: &str) -> Result<Vec<CollectionMeta>> {
        let db = conn.client.database(db_name);
        let specs: Vec<Document> = db
            .run_cursor_command(doc! {"listCollections": 1, "nameOnly": false})
            .await
            .map_err(|e| conn.error(e, &format!("listing the collections of {db_name}")))?
            .try_collect()
            .await
            .map_err(|e| conn.error(e, &format!("listing the collections of {db_name}")))?;
        let mut found: Vec<CollectionMeta> = specs
            .iter()
            .filter_map(|spec| self.selected_meta(db_name, spec))
            .collect();
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
        Ok(found)
    }

    /// The collection or view `spec` (a `listCollections` entry) of `db_name`, without its
    /// indexes; `None` for system collections and those the config does not select.
    fn selected_meta(&self, db_name: &str, spec: &Document) -> Option<CollectionMeta> {
        let name = spec.get_str("name").unwrap_or_default().to_string();
        if name.is_empty() || name.starts_with("system.") {
            return None;
        }
        if !selected(
            db_name,
            &name,
            &self.cfg.include_collections,
            &self.cfg.exclude_collections,
        ) {
            return None;
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
        Some(CollectionMeta {
            db: db_name.to_string(),
            collection: name,
            kind,
            options,
            indexes: Vec::new(),
            uuid,
        })
    }

    /// Fail when `include_collections` names a collection (not a `db.*` pattern) that is
    /// not among `metas`.
    fn check_included_exist(&self, conn: &Conn, metas: &[CollectionMeta]) -> Result<()> {
        for p in &self.cfg.include_collections {
            let (pdb, pcoll) = parse_pattern(p).expect("checked in from_spec");
            if pcoll != "*" && !metas.iter().any(|m| m.db == pdb && m.collection == pcoll) {
                return Err(Error::not_found(format!(
                    "{}: include_collections names {p}, which does not exist at {}",
                    self.what, conn.shown
                )));
            }
        }
        Ok(())
    }
}

/// The server's version, and its product (`MongoDB`, or `SecantusDB <version>`).
async fn server_version(conn: &Conn) -> Result<(String, String)> {
    let build = conn
        .client
        .database("admin")
        .run_command(doc! {"buildInfo": 1})
        .await
        .map_err(|e| conn.error(e, "reading the server version"))?;
    let server_version = build.get_str("version").unwrap_or("unknown").to_string();
    let server = match build.get_str("secantusVersion") {
        Ok(v) => format!("SecantusDB {v}"),
        Err(_) => "MongoDB".to_string(),
    };
    Ok((server_version, server))
}

/// The server's topology (`sharded`, `replica_set` or `standalone`), and its replica set.
async fn topology(conn: &Conn) -> Result<(String, Option<String>)> {
    let hello = conn
        .client
        .database("admin")
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
    Ok((topology, replica_set))
}

/// What a preflight says about the server and the dump it would make.
pub(super) fn preflight_notes(conn: &Conn, plan: &DumpPlan, snapshot: bool) -> Vec<String> {
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
    if !snapshot {
        notes.push("snapshot = false: dumps are not from one point in time".into());
    }
    notes
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
