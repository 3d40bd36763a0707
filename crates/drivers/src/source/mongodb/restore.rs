//! Restore: the archive read as it comes (through [`archive::Parser`]), collections
//! recreated with their options and their documents inserted in batches, indexes built after
//! the data, views recreated last, then the document counts compared with the manifest's.
//! Nothing is dropped unless `--force`, and every destination is checked before any changes.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bson::{doc, Document, RawDocumentBuf};
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;

use drkit_core::{from_io, BoxRead, Error, ErrorKind, Manifest, RestoreReport, Result};

use super::archive::{self, CollectionMeta, Kind};
use super::conn::Conn;
use super::select::{check_mapping, manifest_namespaces, split_ns, RestoreTarget};

/// A restore inserts at most this many documents, or bytes, per batch.
const INSERT_BATCH_DOCS: usize = 1000;
const INSERT_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// What a restore into `target` would do: which non-empty collections it would replace (an
/// error unless `force`), checked on the server, nothing changed.
pub(super) async fn plan(
    conn: &Conn,
    target: &RestoreTarget,
    manifest: &Manifest,
    force: bool,
) -> Result<RestoreReport> {
    let (counts, views) = manifest_namespaces(manifest)?;
    check_mapping(target, counts.keys().chain(views.iter()))?;
    let mut non_empty = Vec::new();
    let mut replaces = false;
    for ns in counts.keys().chain(views.iter()) {
        let (db, coll) = split_ns(ns);
        let Some(tdb) = target.target_db(db) else {
            continue;
        };
        if let Some((_, has_data)) = existing_state(conn, &tdb, coll).await? {
            if has_data {
                replaces = true;
                non_empty.push(format!("{tdb}.{coll}"));
            }
        }
    }
    if !non_empty.is_empty() && !force {
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

/// Restore the archive `data` of backup `manifest` into `target`.
pub(super) async fn run(
    conn: &Conn,
    target: &RestoreTarget,
    data: BoxRead,
    manifest: &Manifest,
    force: bool,
) -> Result<RestoreReport> {
    let (want_counts, views) = manifest_namespaces(manifest)?;
    check_mapping(target, want_counts.keys().chain(views.iter()))?;
    let mut restorer = Restorer {
        conn,
        force,
        target: target.clone(),
        dest: Vec::new(),
        metas: Vec::new(),
        batch: Vec::new(),
        batch_ns: 0,
        batch_bytes: 0,
        replaced: Vec::new(),
        inserted: Vec::new(),
    };
    let parser = restorer.read_archive(data, manifest).await?;
    let mut notes = restorer.finish().await?;

    // Compare with the manifest: what the archive held, what was inserted, what is there.
    let mismatches = restorer.mismatches(&want_counts, parser.counts()).await?;
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
    notes.insert(0, restorer.summary());
    Ok(RestoreReport {
        destination: target.describe(&conn.shown),
        replaces_existing: !restorer.replaced.is_empty(),
        kept_previous: None,
        stats_checked: true,
        notes,
    })
}

/// The error for an archive of backup `manifest` that does not parse.
fn corrupt(manifest: &Manifest, e: archive::ArchiveError) -> Error {
    Error::integrity(format!(
        "backup {}/{} is corrupt: {e}",
        manifest.job, manifest.id
    ))
}

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
    /// Read the whole archive `data` of backup `manifest`, carrying out each of its steps as
    /// it comes; returns the parser, finished, with its counts.
    async fn read_archive(
        &mut self,
        mut data: BoxRead,
        manifest: &Manifest,
    ) -> Result<archive::Parser> {
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
                .map_err(|e| corrupt(manifest, e))?;
            while let Some(step) = steps.pop_front() {
                self.step(step).await?;
            }
        }
        parser.finish().map_err(|e| corrupt(manifest, e))?;
        Ok(parser)
    }

    /// How the restored collections' document counts differ from the manifest's
    /// (`want_counts`), the archive's (`archived`) and the inserted ones, and which of the
    /// manifest's restored namespaces the archive lacks.
    async fn mismatches(
        &self,
        want_counts: &BTreeMap<String, u64>,
        archived: &[archive::Counts],
    ) -> Result<Vec<String>> {
        let conn = self.conn;
        let mut mismatches = Vec::new();
        for (i, meta) in self.metas.iter().enumerate() {
            let Some((db, coll)) = &self.dest[i] else {
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
            let archived = archived[i].documents;
            if want != Some(have) || archived != have || self.inserted[i] != have {
                mismatches.push(format!(
                    "{db}.{coll}: manifest {}, archive {archived}, inserted {}, now {have}",
                    want.map(|w| w.to_string()).unwrap_or_else(|| "none".into()),
                    self.inserted[i]
                ));
            }
        }
        let missing: Vec<&String> = want_counts
            .keys()
            .filter(|ns| self.target.target_db(split_ns(ns).0).is_some())
            .filter(|ns| !self.metas.iter().any(|m| &m.namespace() == *ns))
            .collect();
        for ns in missing {
            mismatches.push(format!("{ns}: in the manifest, not in the archive"));
        }
        Ok(mismatches)
    }

    /// The first note: how many documents were restored into how many collections.
    fn summary(&self) -> String {
        let restored: u64 = self.inserted.iter().sum();
        format!(
            "{restored} document(s) restored into {} collection(s)",
            self.dest
                .iter()
                .zip(&self.metas)
                .filter(|(d, m)| d.is_some() && m.kind == Kind::Collection)
                .count()
        )
    }

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
            self.create(db, coll, &meta.options, "collection").await?;
        }
        Ok(())
    }

    /// `create` a collection or view (`what`) with the options the dump recorded.
    async fn create(&self, db: &str, coll: &str, options: &Document, what: &str) -> Result<()> {
        let mut cmd = doc! {"create": coll};
        for (k, v) in options {
            cmd.insert(k.clone(), v.clone());
        }
        self.conn
            .client
            .database(db)
            .run_command(cmd)
            .await
            .map_err(|e| self.conn.error(e, &format!("creating {what} {db}.{coll}")))?;
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
            self.create(db, coll, &meta.options, "view").await?;
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
