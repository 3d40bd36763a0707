//! Restore drills: where the scratch databases go (beside the source, or on a server the
//! operator names), the operator's count checks against them, and the sweep of scratch
//! databases that killed drills left behind.

use bson::{doc, Document, RawDocumentBuf};
use chrono::{DateTime, Utc};

use drkit_core::drill::{is_stale, Place, Query, Scratch, ScratchName};
use drkit_core::{redact_url, Error, Manifest, Result};

use super::conn::Conn;
use super::select::{self, is_scratch_db, RestoreTarget};
use super::MongoSource;

/// Query operators that run code on the server: a drill check never sends them.
const CODE_OPERATORS: [&str; 3] = ["$where", "$function", "$accumulator"];

impl MongoSource {
    /// The scratch databases of a drill of `manifest` at `place`, named after `name`.
    pub(super) fn scratch(
        &self,
        manifest: &Manifest,
        place: &Place,
        name: &ScratchName,
    ) -> Result<Option<Scratch>> {
        let (url, note) = match place {
            Place::Beside => (
                None,
                format!(
                    "the drill restored into scratch databases on the source server {}: it loads that server",
                    redact_url(&self.cfg.url)
                ),
            ),
            Place::Server(url) => {
                if !(url.starts_with("mongodb://") || url.starts_with("mongodb+srv://")) {
                    return Err(Error::config(format!(
                        "{}: drill.target must be a mongodb:// or mongodb+srv:// url, got {}",
                        self.what,
                        redact_url(url)
                    )));
                }
                (
                    Some(url.as_str()),
                    format!(
                        "the drill restored into scratch databases on {}",
                        redact_url(url)
                    ),
                )
            }
            Place::Image(_) => return Ok(None),
        };
        let Some(to) = select::drill_scratch(manifest, name, url)? else {
            return Ok(None);
        };
        let target = RestoreTarget::parse(Some(&to)).map_err(Error::config)?;
        let shown_url = redact_url(url.unwrap_or(&self.cfg.url));
        Ok(Some(Scratch {
            shown: target.describe(&shown_url),
            to,
            resources: Vec::new(),
            notes: vec![note],
        }))
    }

    /// The connection to the server of a drill place.
    async fn place_conn(&self, place: &Place) -> Result<Option<Conn>> {
        match place {
            Place::Beside => Ok(Some(self.connect(&self.cfg.url, self.password()?).await?)),
            Place::Server(url) => Ok(Some(self.connect(url, None).await?)),
            Place::Image(_) => Ok(None),
        }
    }

    /// Drop the scratch databases of `scratch`; refuses any database not named like one.
    pub(super) async fn cleanup(&self, scratch: &Scratch) -> Result<()> {
        let target = RestoreTarget::parse(Some(&scratch.to)).map_err(Error::config)?;
        if let Some((_, db)) = target.map.iter().find(|(_, db)| !is_scratch_db(db)) {
            return Err(Error::refused(format!(
                "refusing to drop {db}: not a drill's scratch database"
            )));
        }
        let conn = self.restore_conn(&target).await?;
        for (_, db) in &target.map {
            drop_database(&conn, db).await?;
        }
        Ok(())
    }

    /// Drop the scratch databases at `place` older than a day at `now`.
    pub(super) async fn sweep(&self, place: &Place, now: DateTime<Utc>) -> Result<Vec<String>> {
        let Some(conn) = self.place_conn(place).await? else {
            return Ok(Vec::new());
        };
        let listed = conn
            .client
            .database("admin")
            .run_command(doc! {"listDatabases": 1, "nameOnly": true})
            .await
            .map_err(|e| conn.error(e, "listing databases"))?;
        let names: Vec<String> = listed
            .get_array("databases")
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_document()?.get_str("name").ok().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut lines = Vec::new();
        for db in names
            .iter()
            .filter(|db| is_scratch_db(db) && is_stale(db, now))
        {
            drop_database(&conn, db).await?;
            lines.push(format!(
                "dropped scratch database {db} on {}, left by an earlier drill more than a day ago",
                conn.shown
            ));
        }
        Ok(lines)
    }

    /// The value of a drill check: the number of documents matching a filter.
    pub(super) async fn check(
        &self,
        scratch: &Scratch,
        query: &Query,
    ) -> Result<serde_json::Value> {
        let Query::Count { collection, filter } = query else {
            return Err(Error::config(format!(
                "the mongodb driver cannot run the drill check {query}: write collection = \"...\" with a filter"
            )));
        };
        let filter = count_filter(collection, filter)?;
        let target = RestoreTarget::parse(Some(&scratch.to)).map_err(Error::config)?;
        let (db, coll) = resolve_collection(&target, collection)?;
        let conn = self.restore_conn(&target).await?;
        let n = conn
            .client
            .database(&db)
            .collection::<RawDocumentBuf>(&coll)
            .count_documents(filter)
            .await
            .map_err(|e| {
                conn.error(
                    e,
                    &format!("counting the documents of the scratch copy of {collection}"),
                )
            })?;
        Ok(serde_json::json!(n))
    }
}

async fn drop_database(conn: &Conn, db: &str) -> Result<()> {
    conn.client
        .database(db)
        .drop()
        .await
        .map_err(|e| conn.error(e, &format!("dropping drill database {db}")))
}

/// The filter of a count check on `collection`, as a query document: an object (MongoDB
/// extended JSON is read, e.g. `{"$date": ...}`) that names no operator running code.
fn count_filter(collection: &str, filter: &serde_json::Value) -> Result<Document> {
    let bad = |why: String| Error::config(format!("drill check on {collection}: {why}"));
    if let Some(op) = code_operator(filter) {
        return Err(bad(format!(
            "the filter uses {op}, which runs code on the server: drkit refuses it; write the filter with query operators ($eq, $gt, $in...)"
        )));
    }
    match bson::Bson::try_from(filter.clone()) {
        Ok(bson::Bson::Document(d)) => Ok(d),
        Ok(_) => Err(bad("the filter must be a table (a query document)".into())),
        Err(e) => Err(bad(format!("the filter is not a query document ({e})"))),
    }
}

/// The first operator of [`CODE_OPERATORS`] used anywhere in `v`, as a key at any depth.
fn code_operator(v: &serde_json::Value) -> Option<&'static str> {
    match v {
        serde_json::Value::Object(m) => m.iter().find_map(|(k, v)| {
            CODE_OPERATORS
                .iter()
                .find(|op| k.trim() == **op)
                .copied()
                .or_else(|| code_operator(v))
        }),
        serde_json::Value::Array(a) => a.iter().find_map(code_operator),
        _ => None,
    }
}

/// The scratch database and collection a check's `collection` names: `db.collection` with
/// `db` one of the backup's databases, else a bare name when the backup holds one database.
fn resolve_collection(target: &RestoreTarget, collection: &str) -> Result<(String, String)> {
    if let Some((db, coll)) = collection.split_once('.') {
        if let Some(tdb) = target.map.iter().find(|(f, _)| f == db).map(|(_, t)| t) {
            if !coll.is_empty() {
                return Ok((tdb.clone(), coll.to_string()));
            }
        }
    }
    match target.map.as_slice() {
        [(_, tdb)] if !collection.is_empty() => Ok((tdb.clone(), collection.to_string())),
        _ => Err(Error::config(format!(
            "drill check on {collection}: the backup holds the databases {}: name the collection as db.collection",
            target
                .map
                .iter()
                .map(|(f, _)| f.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn code_operators_are_refused_anywhere() {
        for bad in [
            json!({"$where": "this.a > 1"}),
            json!({"a": {"$gt": 1}, "$and": [{"b": 1}, {"$where": "1"}]}),
            json!({"$expr": {"$function": {"body": "x", "args": [], "lang": "js"}}}),
            json!({"$expr": {"$eq": [{"$accumulator": {}}, 1]}}),
        ] {
            let e = count_filter("users", &bad).unwrap_err();
            assert_eq!(e.kind(), drkit_core::ErrorKind::Config, "{bad}");
            assert!(e.to_string().contains("runs code"), "{e}");
        }
        let ok = count_filter("users", &json!({"active": true, "n": {"$gte": 2}})).unwrap();
        assert_eq!(ok, doc! {"active": true, "n": {"$gte": 2}});
        assert!(count_filter("users", &json!([1])).is_err());
        // "$where" as a value is only text.
        assert!(count_filter("users", &json!({"note": "$where"})).is_ok());
    }

    #[test]
    fn collections_resolve_to_scratch_databases() {
        let one = RestoreTarget::parse(Some("app=s0")).unwrap();
        let two = RestoreTarget::parse(Some("app=s0,shop=s1")).unwrap();
        let r = |t: &RestoreTarget, c: &str| resolve_collection(t, c).ok();
        assert_eq!(r(&one, "users"), Some(("s0".into(), "users".into())));
        assert_eq!(r(&one, "app.users"), Some(("s0".into(), "users".into())));
        // A dotted collection name of the only database.
        assert_eq!(r(&one, "a.b"), Some(("s0".into(), "a.b".into())));
        assert_eq!(r(&two, "shop.orders"), Some(("s1".into(), "orders".into())));
        assert_eq!(r(&two, "orders"), None);
        assert_eq!(r(&two, "other.orders"), None);
        assert_eq!(r(&one, ""), None);
    }
}
