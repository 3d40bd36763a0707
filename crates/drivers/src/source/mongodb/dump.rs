//! Dump: the archive written in one pass by a task behind a pipe: the prelude, then every
//! collection's documents copied as raw BSON (never decoded) with their CRC, read at one point
//! in time where the server can ([`Consistency`]), and the summary that goes into the manifest.

use bson::{rawdoc, RawBsonRef, RawDocumentBuf, Timestamp};
use futures::StreamExt;
use mongodb::raw_batch_cursor::{RawBatch, SessionRawBatchCursor};
use mongodb::ClientSession;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use drkit_core::{Dump, DumpSummary, Error, Result};

use super::archive::{self, CollectionMeta, Kind};
use super::conn::Conn;
use super::plan::DumpPlan;

/// Bytes of the pipe between the dump task and the pipeline.
const PIPE_BYTES: usize = 256 * 1024;
/// Documents asked per `getMore` of a dump. The server caps a reply at 16 MiB and the driver
/// holds two copies of a reply while it parses it: small documents come in replies of about
/// 1 MiB instead of 16 (docs/benchmarks-mongodb.md); large ones still fill a reply.
const GETMORE_BATCH_DOCS: u32 = 10_000;

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

/// Start the dump of `plan`: a task writes the archive into a pipe whose other end is the
/// [`Dump`]'s reader; its `finish` gives the summary once the last byte is written.
pub(super) fn start(conn: Conn, plan: DumpPlan, snapshot: bool) -> Dump {
    let (reader, mut writer) = tokio::io::duplex(PIPE_BYTES);
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
    Dump {
        reader: Box::new(reader),
        finish,
    }
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
    let reading = format!("reading {ns}");
    let mut cursor = open_cursor(conn, session, meta, mode, out, &reading).await?;
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
        let (n, b) = write_batch(conn, &batch, meta, &reading, &mut crc, w).await?;
        docs += n;
        bytes += b;
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

/// Start the `find` of collection `meta` in `mode`. A server that refuses the first snapshot
/// read is read with readConcern local from then on (`mode` and `out` say so).
async fn open_cursor(
    conn: &Conn,
    session: &mut ClientSession,
    meta: &CollectionMeta,
    mode: &mut ReadMode,
    out: &mut DataOutcome,
    reading: &str,
) -> Result<SessionRawBatchCursor> {
    let db = conn.client.database(&meta.db);
    match db
        .run_raw_cursor_command(find_command(&meta.collection, *mode))
        .batch_size(GETMORE_BATCH_DOCS)
        .session(&mut *session)
        .batch()
        .await
    {
        Ok(c) => Ok(c),
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
                .map_err(|e| conn.error(e, reading))
        }
        Err(e) => Err(conn.error(e, reading)),
    }
}

/// Copy the documents of one reply of collection `meta` to the archive, as one namespace
/// block (none for an empty reply), adding them to `crc`. Returns their count and bytes.
async fn write_batch<W: AsyncWrite + Unpin>(
    conn: &Conn,
    batch: &RawBatch,
    meta: &CollectionMeta,
    reading: &str,
    crc: &mut archive::Crc64,
    w: &mut W,
) -> Result<(u64, u64)> {
    let items = batch.doc_slices().map_err(|e| conn.error(e, reading))?;
    let (mut docs, mut bytes) = (0u64, 0u64);
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
}
