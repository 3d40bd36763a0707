//! Backup: snapshot, pg_dump, stats.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use drkit_core::{from_io, Dump, DumpSummary, Error, ErrorKind, Result};
use futures::FutureExt;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::archive::{self, Index, StreamEntry};
use super::conn::{self, pg_error, ConnParams};
use super::stats::{self, DbStats, Selection, Stats, StatsMode};
use super::tools::{check_version, Tool, Version};
use super::{Databases, PostgresSource};
use crate::process::{Process, ProcessReader};

/// A spawned task that is aborted when dropped (a failed backup leaves nothing running).
pub(super) struct Task<T>(JoinHandle<T>);

impl<T: Send + 'static> Task<T> {
    pub(super) fn spawn(f: impl Future<Output = T> + Send + 'static) -> Self {
        Task(tokio::spawn(f))
    }
}

impl<T> Future for Task<T> {
    type Output = Result<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.map_err(|e| Error::source_error(format!("a PostgreSQL backup task failed: {e}")))
        })
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the server said about itself.
pub(super) struct Server {
    pub version: Version,
    pub version_text: String,
}

pub(super) async fn server_version(client: &Client, params: &ConnParams) -> Result<Server> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
        .map_err(|e| pg_error(&e, params, "reading the server version"))?;
    let num: i32 = row.get(0);
    let text: String = row.get(1);
    Ok(Server {
        version: Version(num as u32),
        version_text: text.split_whitespace().next().unwrap_or("").to_string(),
    })
}

/// The databases that accept connections and are not templates.
pub(super) async fn list_databases(client: &Client, params: &ConnParams) -> Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname",
            &[],
        )
        .await
        .map_err(|e| pg_error(&e, params, "listing databases"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// One database, ready to dump: a connection inside the exported snapshot's transaction.
struct Prepared {
    client: Client,
    params: ConnParams,
    password: Option<String>,
    snapshot: String,
    selection: Selection,
    facts: (i64, String, String, String, String),
}

async fn prepare(src: &PostgresSource, db: &str, reuse: Option<Client>) -> Result<Prepared> {
    let params = src.params.with_dbname(db);
    let password = src.password_for(&params)?;
    let client = match reuse {
        Some(c) => c,
        None => conn::connect(&params, password.as_deref()).await?,
    };
    client
        // One backend for the counts: parallel workers would take CPU from pg_dump's COPY.
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL max_parallel_workers_per_gather = 0")
        .await
        .map_err(|e| pg_error(&e, &params, "starting the snapshot transaction"))?;
    let snapshot: String = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(|e| pg_error(&e, &params, "exporting the snapshot"))?
        .get(0);
    let (schemas, tables) = stats::read_catalog(&client, &params).await?;
    let selection = stats::select(&schemas, &tables, &src.filters, db)?;
    let facts = stats::database_facts(&client, &params).await?;
    Ok(Prepared {
        client,
        params,
        password,
        snapshot,
        selection,
        facts,
    })
}

/// The row counts of one database, and its connection (which holds the snapshot).
type Counting = Task<Result<(DbStats, Client)>>;

/// Start pg_dump on the prepared snapshot, and the row counts beside it.
fn start(src: &PostgresSource, p: Prepared, mode: StatsMode) -> Result<(ProcessReader, Counting)> {
    let child = src.tools.child_params(&p.params);
    let mut args = vec![
        "--format=custom".to_string(),
        "--compress=0".to_string(),
        "--no-password".to_string(),
        format!("--snapshot={}", p.snapshot),
        format!("--dbname={}", child.conninfo()),
    ];
    args.extend(p.selection.args.iter().cloned());
    let mut cmd = src
        .tools
        .command(Tool::PgDump, &args, p.password.as_deref(), false);
    let name = format!("pg_dump of database {:?}", p.params.dbname());
    let reader = Process::reader(&mut cmd, &name)?;
    let Prepared {
        client,
        params,
        selection,
        facts,
        ..
    } = p;
    let counting = Task::spawn(async move {
        let tables = stats::count_rows(&client, &params, &selection.tables, mode).await?;
        let large_objects = if selection.large_objects {
            Some(stats::count_large_objects(&client, &params).await?)
        } else {
            None
        };
        let (size_bytes, encoding, collate, ctype, owner) = facts;
        let db = DbStats {
            name: params.dbname().to_string(),
            size_bytes,
            encoding,
            collate,
            ctype,
            owner,
            schemas: selection.schemas,
            tables,
            large_objects,
        };
        // The client (and its transaction, which holds the snapshot) lives until the caller
        // drops it, after pg_dump has finished.
        Ok((db, client))
    });
    Ok((reader, counting))
}

/// `drkit doctor`: the server answers with these credentials, the tools are there and new
/// enough, the databases exist.
pub(super) async fn preflight(src: &PostgresSource) -> Result<Vec<String>> {
    let params = &src.params;
    let password = src.password_for(params)?;
    let client = conn::connect(params, password.as_deref()).await?;
    let server = server_version(&client, params).await?;
    let server_what = format!(
        "the PostgreSQL {} server at {}",
        server.version_text,
        params.server()
    );
    let mut notes = vec![format!(
        "PostgreSQL {} at {} answers as user {:?}",
        server.version_text,
        params.server(),
        params.user()
    )];
    let mut tools = vec![Tool::PgDump, Tool::PgRestore];
    if src.globals {
        tools.extend([Tool::PgDumpall, Tool::Psql]);
    }
    for tool in tools {
        let (v, text) = src.tools.version(tool).await?;
        if tool != Tool::PgRestore {
            check_version(&src.tools, tool, &text, v, server.version, &server_what)?;
        }
        notes.push(format!("{} {text}", src.tools.describe(tool)));
    }
    let existing = list_databases(&client, params).await?;
    if let Databases::List(v) = &src.databases {
        for d in v {
            if !existing.contains(d) {
                return Err(Error::config(format!(
                    "database {d:?} (in `databases`) does not exist on {}",
                    params.server()
                )));
            }
        }
    }
    Ok(notes)
}

pub(super) async fn dump(src: &PostgresSource) -> Result<Dump> {
    let params = &src.params;
    let password = src.password_for(params)?;
    let client = conn::connect(params, password.as_deref()).await?;
    let server = server_version(&client, params).await?;
    let pg_dump_text = check_dump_tools(src, &server).await?;
    let existing = list_databases(&client, params).await?;
    let databases = chosen_databases(src, &existing)?;
    let source = json!({
        "server": params.server(),
        "user": params.user(),
        "server_version": server.version_text,
        "server_version_num": server.version.0,
        "pg_dump_version": pg_dump_text,
        "exec": src.tools.exec_label(),
        "databases": databases,
        "layout": if src.single_archive() { "pgdump" } else { "tar" },
        "globals": src.globals,
        "filters": src.filters.any(),
    });
    let all = src.databases == Databases::All;
    if src.single_archive() {
        let db = &databases[0];
        let reuse = (db == params.dbname()).then_some(client);
        return dump_single(src, db, reuse, source, all).await;
    }
    drop(client);
    Ok(dump_several(src, databases, source, all))
}

/// pg_dump (and pg_dumpall, for the roles) can dump `server`. Returns pg_dump's version.
async fn check_dump_tools(src: &PostgresSource, server: &Server) -> Result<String> {
    let server_what = format!(
        "the PostgreSQL {} server at {}",
        server.version_text,
        src.params.server()
    );
    let (pg_dump_version, pg_dump_text) = src.tools.version(Tool::PgDump).await?;
    check_version(
        &src.tools,
        Tool::PgDump,
        &pg_dump_text,
        pg_dump_version,
        server.version,
        &server_what,
    )?;
    if src.globals {
        let (v, text) = src.tools.version(Tool::PgDumpall).await?;
        check_version(
            &src.tools,
            Tool::PgDumpall,
            &text,
            v,
            server.version,
            &server_what,
        )?;
    }
    Ok(pg_dump_text)
}

/// The databases to dump, in order; those listed in `databases` must be in `existing`.
fn chosen_databases(src: &PostgresSource, existing: &[String]) -> Result<Vec<String>> {
    match &src.databases {
        Databases::Url => Ok(vec![src.params.dbname().to_string()]),
        Databases::All => Ok(existing.to_vec()),
        Databases::List(v) => {
            if let Some(d) = v.iter().find(|d| !existing.contains(d)) {
                return Err(Error::config(format!(
                    "database {d:?} (in `databases`) does not exist on {} (it has: {})",
                    src.params.server(),
                    existing.join(", ")
                )));
            }
            Ok(v.clone())
        }
    }
}

/// One database as a plain pg_dump archive. `reuse` is a connection to it, when open.
async fn dump_single(
    src: &PostgresSource,
    db: &str,
    reuse: Option<Client>,
    source: serde_json::Value,
    all: bool,
) -> Result<Dump> {
    let mode = src.stats;
    let prepared = prepare(src, db, reuse).await?;
    let (reader, counting) = start(src, prepared, mode)?;
    let finish = async move {
        let (db_stats, client) = counting.await??;
        drop(client);
        Ok(summary(source, Stats::new(mode, vec![db_stats]), all))
    };
    Ok(Dump {
        reader: Box::new(reader),
        finish: finish.boxed(),
    })
}

/// Several streams in drkit's tar (see [`archive`]), written by a task as they are read.
fn dump_several(
    src: &PostgresSource,
    databases: Vec<String>,
    source: serde_json::Value,
    all: bool,
) -> Dump {
    let mode = src.stats;
    let (w, r) = tokio::io::duplex(256 * 1024);
    let producer = Task::spawn(write_archive(src.clone(), databases, w));
    let finish = async move {
        let all_stats = producer.await??;
        Ok(summary(source, Stats::new(mode, all_stats), all))
    };
    Dump {
        reader: Box::new(r),
        finish: finish.boxed(),
    }
}

/// The streams of a multi-stream archive: the roles first (when `globals`), then each
/// database.
fn streams(globals: bool, databases: &[String]) -> Vec<StreamEntry> {
    let mut streams = Vec::new();
    if globals {
        streams.push(StreamEntry {
            file: "globals.sql".into(),
            kind: "globals".into(),
            database: None,
        });
    }
    for (i, db) in databases.iter().enumerate() {
        streams.push(StreamEntry {
            file: archive::database_file(i, db),
            kind: "database".into(),
            database: Some(db.clone()),
        });
    }
    streams
}

/// Write the multi-stream archive into `w`: the index, then each stream, one dump at a
/// time. Returns the databases' stats, each read in its dump's snapshot.
async fn write_archive(
    src: PostgresSource,
    databases: Vec<String>,
    mut w: tokio::io::DuplexStream,
) -> Result<Vec<DbStats>> {
    let streams = streams(src.globals, &databases);
    let index = Index::new(streams.clone());
    let write_err =
        |e: std::io::Error| from_io(e, ErrorKind::Source, "writing the PostgreSQL archive");
    archive::write_member(
        &mut w,
        archive::INDEX_NAME,
        &serde_json::to_vec_pretty(&index).expect("index serializes"),
    )
    .await
    .map_err(write_err)?;
    let mut buf = Vec::new();
    let mut all_stats = Vec::new();
    for entry in &streams {
        match &entry.database {
            None => {
                let mut reader = dump_globals(&src)?;
                archive::write_stream(&mut reader, &mut w, &entry.file, &mut buf)
                    .await
                    .map_err(write_err)?;
            }
            Some(db) => {
                let prepared = prepare(&src, db, None).await?;
                let (mut reader, counting) = start(&src, prepared, src.stats)?;
                archive::write_stream(&mut reader, &mut w, &entry.file, &mut buf)
                    .await
                    .map_err(write_err)?;
                let (db_stats, client) = counting.await??;
                drop(client);
                all_stats.push(db_stats);
            }
        }
    }
    archive::write_end(&mut w).await.map_err(write_err)?;
    w.shutdown().await.map_err(write_err)?;
    Ok(all_stats)
}

/// Start `pg_dumpall --globals-only`: the roles and tablespaces, as SQL.
fn dump_globals(src: &PostgresSource) -> Result<ProcessReader> {
    let child = src.tools.child_params(&src.params);
    let password = src.password_for(&src.params)?;
    let args = vec![
        "--globals-only".to_string(),
        "--no-password".to_string(),
        format!("--dbname={}", child.conninfo()),
        format!("--database={}", child.dbname()),
    ];
    let mut cmd = src
        .tools
        .command(Tool::PgDumpall, &args, password.as_deref(), false);
    Process::reader(&mut cmd, "pg_dumpall --globals-only")
}

fn summary(source: serde_json::Value, stats: Stats, all: bool) -> DumpSummary {
    let mut warnings = stats.warnings();
    if all && !stats.empty {
        // The maintenance database is usually empty: not worth a warning when dumping all.
        warnings.retain(|w| !w.starts_with("database \"postgres\" "));
    }
    DumpSummary {
        source,
        stats: serde_json::to_value(&stats).expect("stats serialize"),
        warnings,
    }
}
