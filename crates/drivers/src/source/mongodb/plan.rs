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
