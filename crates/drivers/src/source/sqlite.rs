//! SQLite source: a consistent snapshot of a live database, streamed page by page.
//!
//! The dump opens a read transaction (a snapshot: in WAL mode writers go on; in rollback
//! mode they wait for it), records the tables' row counts and the page count inside it, then
//! streams every page of that snapshot from the `sqlite_dbpage` virtual table: the raw
//! stream is a byte-for-byte database file, with no temp copy. Where `sqlite_dbpage` is not
//! compiled in, it falls back to SQLite's online backup API into a temp file.
//!
//! Restore writes a temp file beside the destination, runs `PRAGMA integrity_check`, checks
//! the row counts against the manifest, and only then renames it into place. An existing
//! database is kept beside it (`<name>.pre-restore-<time>`), with its `-wal` and `-shm`.
//! The temp file is created `0600`; before the rename it takes the replaced file's mode,
//! owner and group, so the database is never visible with other permissions than the one it
//! replaces (a restore to a new path stays `0600`, owned by the user running drkit).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use drkit_core::{
    BoxRead, DriverSpec, Dump, DumpSummary, Error, ErrorKind, Manifest, RestoreOptions,
    RestoreReport, Result, Source,
};
use futures::FutureExt;
use rusqlite::{Connection, OpenFlags};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Pages are sent in chunks of about this many bytes.
const CHUNK: usize = 256 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqliteConfig {
    path: PathBuf,
    /// How long to wait for a lock held by a writer, e.g. `30s` (default 60s).
    #[serde(default)]
    busy_timeout: Option<String>,
}

/// A SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteSource {
    path: PathBuf,
    busy_timeout: std::time::Duration,
}

impl SqliteSource {
    /// A source for the database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteSource {
            path: path.into(),
            busy_timeout: std::time::Duration::from_secs(60),
        }
    }

    /// Build from a `type = "sqlite"` table.
    pub fn from_spec(spec: &DriverSpec, what: &str) -> Result<Self> {
        let c: SqliteConfig = spec.parse(what)?;
        let mut s = Self::new(c.path);
        if let Some(t) = c.busy_timeout {
            s.busy_timeout = drkit_core::config::parse_duration(&t)
                .map_err(|e| e.context(format!("{what}.busy_timeout")))?;
        }
        Ok(s)
    }
}

fn sql_error(path: &Path, e: rusqlite::Error) -> Error {
    Error::source_error(format!("SQLite {}: {e}", path.display()))
}

/// Check that `path` is an existing SQLite database file, by its header.
fn check_database_file(path: &Path) -> Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::source_error(format!(
                "SQLite database {} does not exist: check the job's source.path",
                path.display()
            ))
        } else {
            Error::source_error(format!(
                "cannot open SQLite database {}: {e}",
                path.display()
            ))
        }
    })?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut head = [0u8; 16];
    if len < 100 || f.read_exact(&mut head).is_err() || &head != MAGIC {
        return Err(Error::source_error(format!(
            "{} is not a SQLite database (no SQLite header): check the job's source.path",
            path.display()
        )));
    }
    Ok(len)
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Tables (not internal `sqlite_*` ones) with their row counts, and page facts, read on
/// `conn` (inside the caller's transaction, so they describe its snapshot).
fn read_stats(conn: &Connection) -> rusqlite::Result<Value> {
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut tables = Map::new();
    for name in &names {
        let n: i64 = conn.query_row(
            &format!("SELECT count(*) FROM {}", quote_ident(name)),
            [],
            |r| r.get(0),
        )?;
        tables.insert(name.clone(), json!(n));
    }
    let page_count: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let total_rows: i64 = tables.values().filter_map(Value::as_i64).sum();
    Ok(json!({
        "empty": names.is_empty(),
        "tables": tables,
        "table_count": names.len(),
        "rows": total_rows,
        "page_count": page_count,
        "page_size": page_size,
    }))
}

fn source_facts(conn: &Connection, path: &Path, size: u64, method: &str) -> Value {
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap_or_else(|_| "unknown".into());
    json!({
        "path": path.display().to_string(),
        "file_size": size,
        "sqlite_version": rusqlite::version(),
        "journal_mode": journal,
        "method": method,
    })
}

fn warnings_for(stats: &Value, path: &Path) -> Vec<String> {
    if stats["empty"] == json!(true) {
        vec![format!("SQLite database {} has no tables", path.display())]
    } else {
        Vec::new()
    }
}

fn open_read(path: &Path, busy: std::time::Duration) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sql_error(path, e))?;
    conn.busy_timeout(busy).map_err(|e| sql_error(path, e))?;
    Ok(conn)
}

type Sender = mpsc::Sender<std::io::Result<Bytes>>;

/// Stream the snapshot's pages through `tx`; returns the summary. Runs on a blocking thread.
fn dump_pages(
    path: &Path,
    size: u64,
    busy: std::time::Duration,
    tx: &Sender,
) -> Result<DumpSummary> {
    let conn = open_read(path, busy)?;
    let has_dbpage = conn
        .prepare("SELECT pgno FROM sqlite_dbpage('main') LIMIT 0")
        .is_ok();
    if !has_dbpage {
        drop(conn);
        return dump_with_backup_api(path, size, busy, tx);
    }
    conn.execute_batch("BEGIN")
        .map_err(|e| sql_error(path, e))?;
    let stats = read_stats(&conn).map_err(|e| sql_error(path, e))?;
    let page_count = stats["page_count"].as_i64().unwrap_or(0);
    let mut stmt = conn
        .prepare("SELECT pgno, data FROM sqlite_dbpage('main') ORDER BY pgno")
        .map_err(|e| sql_error(path, e))?;
    let mut rows = stmt.query([]).map_err(|e| sql_error(path, e))?;
    let mut buf = Vec::with_capacity(CHUNK);
    let mut expected = 1i64;
    while let Some(row) = rows.next().map_err(|e| sql_error(path, e))? {
        let pgno: i64 = row.get(0).map_err(|e| sql_error(path, e))?;
        if pgno != expected {
            return Err(Error::source_error(format!(
                "SQLite {}: page {expected} missing from the snapshot",
                path.display()
            )));
        }
        expected += 1;
        let data = row.get_ref(1).map_err(|e| sql_error(path, e))?;
        buf.extend_from_slice(
            data.as_blob()
                .map_err(|e| Error::source_error(e.to_string()))?,
        );
        if buf.len() >= CHUNK {
            let chunk = Bytes::from(std::mem::replace(&mut buf, Vec::with_capacity(CHUNK)));
            if tx.blocking_send(Ok(chunk)).is_err() {
                return Err(Error::cancelled(
                    "the backup stopped reading the SQLite dump",
                ));
            }
        }
    }
    if !buf.is_empty() && tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
        return Err(Error::cancelled(
            "the backup stopped reading the SQLite dump",
        ));
    }
    if expected - 1 != page_count {
        return Err(Error::source_error(format!(
            "SQLite {}: snapshot has {} pages, page_count says {page_count}",
            path.display(),
            expected - 1
        )));
    }
    drop(rows);
    drop(stmt);
    let source = source_facts(&conn, path, size, "snapshot (sqlite_dbpage)");
    conn.execute_batch("COMMIT")
        .map_err(|e| sql_error(path, e))?;
    Ok(DumpSummary {
        warnings: warnings_for(&stats, path),
        source,
        stats,
    })
}

/// Fallback: SQLite's online backup API into a temp file, then stream that file.
fn dump_with_backup_api(
    path: &Path,
    size: u64,
    busy: std::time::Duration,
    tx: &Sender,
) -> Result<DumpSummary> {
    use std::io::Read;
    let src = open_read(path, busy)?;
    let tmp = tempfile::NamedTempFile::new().map_err(|e| {
        Error::source_error(format!(
            "cannot create a temp file for the SQLite backup: {e}"
        ))
    })?;
    let mut dst = Connection::open(tmp.path()).map_err(|e| sql_error(tmp.path(), e))?;
    {
        let backup =
            rusqlite::backup::Backup::new(&src, &mut dst).map_err(|e| sql_error(path, e))?;
        backup
            .run_to_completion(-1, std::time::Duration::from_millis(50), None)
            .map_err(|e| sql_error(path, e))?;
    }
    let stats = read_stats(&dst).map_err(|e| sql_error(path, e))?;
    let source = source_facts(&src, path, size, "online backup API");
    drop(dst);
    let mut f = std::fs::File::open(tmp.path()).map_err(|e| Error::source_error(e.to_string()))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::source_error(e.to_string()))?;
        if n == 0 {
            break;
        }
        if tx
            .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
            .is_err()
        {
            return Err(Error::cancelled(
                "the backup stopped reading the SQLite dump",
            ));
        }
    }
    Ok(DumpSummary {
        warnings: warnings_for(&stats, path),
        source,
        stats,
    })
}

impl SqliteSource {
    fn destination(&self, opts: &RestoreOptions) -> PathBuf {
        opts.to
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.path.clone())
    }
}

fn side_path(dest: &Path, suffix: &str) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dest.with_file_name(name)
}

/// Mode of a restored database that replaces nothing: owner-only, as a database may hold
/// secrets and the folder may be readable by others.
const NEW_FILE_MODE: u32 = 0o600;

/// Permission bits, owner and group a restored file takes: those of the file it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ownership {
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Ownership {
    /// Those of the existing file at `dest` (following a symlink, as the rename replaces
    /// what the path names), or `None` when there is none.
    fn of(dest: &Path) -> Result<Option<Ownership>> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(dest) {
            Ok(m) => Ok(Some(Ownership {
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::source_error(format!(
                "cannot read the mode and owner of {}: {e}",
                dest.display()
            ))),
        }
    }

    fn describe(&self) -> String {
        format!("mode {:04o}, owner {}:{}", self.mode, self.uid, self.gid)
    }

    /// Give `path` this owner, group and mode (owner first: a chown may clear set-id bits).
    fn apply(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let f = std::fs::File::open(path)
            .map_err(|e| Error::source_error(format!("cannot open {}: {e}", path.display())))?;
        let m = f
            .metadata()
            .map_err(|e| Error::source_error(format!("cannot stat {}: {e}", path.display())))?;
        if (m.uid(), m.gid()) != (self.uid, self.gid) {
            std::os::unix::fs::fchown(&f, Some(self.uid), Some(self.gid)).map_err(|e| {
                Error::source_error(format!(
                    "cannot give the restored database the owner {}:{} of the file it replaces ({e}): \
                     run the restore as root or as that user; nothing was replaced",
                    self.uid, self.gid
                ))
            })?;
        }
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(self.mode))
            .map_err(|e| {
                Error::source_error(format!(
                    "cannot set mode {:04o} on {}: {e}",
                    self.mode,
                    path.display()
                ))
            })
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        Error::source_error(format!(
            "cannot set mode {mode:04o} on {}: {e}",
            path.display()
        ))
    })
}

/// Check a restored file: integrity, then the manifest's row counts.
fn check_restored(path: &Path, manifest: &Manifest) -> Result<()> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| sql_error(path, e))?;
    let verdict: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect())
        .map_err(|e| Error::integrity(format!("restored database fails to open: {e}")))?;
    if verdict != ["ok"] {
        return Err(Error::integrity(format!(
            "restored database fails PRAGMA integrity_check: {}",
            verdict.join("; ")
        )));
    }
    let got = read_stats(&conn).map_err(|e| sql_error(path, e))?;
    if got["tables"] != manifest.stats["tables"] {
        return Err(Error::integrity(format!(
            "restored row counts {} differ from the manifest's {}",
            got["tables"], manifest.stats["tables"]
        )));
    }
    Ok(())
}

#[async_trait]
impl Source for SqliteSource {
    fn driver(&self) -> &'static str {
        "sqlite"
    }

    fn extension(&self) -> &'static str {
        "sqlite"
    }

    fn describe(&self) -> String {
        format!("SQLite {}", self.path.display())
    }

    async fn dump(&self) -> Result<Dump> {
        let size = check_database_file(&self.path)?;
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
        let (path, busy) = (self.path.clone(), self.busy_timeout);
        let worker = tokio::task::spawn_blocking(move || {
            let result = dump_pages(&path, size, busy, &tx);
            if let Err(e) = &result {
                // Make the reader fail too, so nothing reads a short stream as complete.
                let _ = tx.blocking_send(Err(std::io::Error::other(Error::new(
                    e.kind(),
                    e.message().to_string(),
                ))));
            }
            result
        });
        let reader = tokio_util::io::StreamReader::new(tokio_stream_from(rx));
        let finish = async move {
            worker
                .await
                .map_err(|e| Error::source_error(format!("SQLite dump thread failed: {e}")))?
        }
        .boxed();
        Ok(Dump {
            reader: Box::new(reader),
            finish,
        })
    }

    async fn plan_restore(
        &self,
        _manifest: &Manifest,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let dest = self.destination(opts);
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(Error::config(format!(
                "cannot restore to {}: folder {} does not exist",
                dest.display(),
                parent.display()
            )));
        }
        let exists = dest.exists();
        if exists && !opts.force {
            return Err(Error::refused(format!(
                "{} already exists: pass --force to replace it (the current file is kept beside it as {}.pre-restore-<time>), or --to another path",
                dest.display(),
                dest.file_name().unwrap_or_default().to_string_lossy()
            )));
        }
        let notes = match Ownership::of(&dest)? {
            Some(o) if exists => vec![format!(
                "the restored database takes the {} of the file it replaces",
                o.describe()
            )],
            _ => vec![format!(
                "the restored database is created with mode {NEW_FILE_MODE:04o}, owned by the user running drkit"
            )],
        };
        Ok(RestoreReport {
            destination: dest.display().to_string(),
            replaces_existing: exists,
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
        let mut report = self.plan_restore(manifest, opts).await?;
        let dest = self.destination(opts);
        let tmp = side_path(
            &dest,
            &format!(".drkit-restore-{:08x}", rand::random::<u32>()),
        );
        let checked = match write_temp(&mut data, &tmp).await {
            Ok(()) => check_temp(&tmp, manifest).await,
            Err(e) => Err(e),
        };
        // Side files the check left (SQLite normally removes them when it closes): they go
        // with the database, with the same mode and owner.
        let side_files: Vec<&str> = ["-wal", "-shm"]
            .into_iter()
            .filter(|s| side_path(&tmp, s).exists())
            .collect();
        let owned = checked.and_then(|()| take_ownership(&dest, &tmp, &side_files));
        if let Err(e) = owned {
            let _ = std::fs::remove_file(&tmp);
            for s in &side_files {
                let _ = std::fs::remove_file(side_path(&tmp, s));
            }
            return Err(e);
        }
        // Keep the current database (and its -wal/-shm) beside the new one, then rename.
        if dest.exists() {
            let kept = move_aside(&dest)?;
            report.kept_previous = Some(kept.display().to_string());
        }
        move_into_place(&tmp, &dest, &side_files)?;
        report.stats_checked = true;
        Ok(report)
    }

    async fn preflight(&self) -> Result<Vec<String>> {
        let size = check_database_file(&self.path)?;
        let (path, busy) = (self.path.clone(), self.busy_timeout);
        let journal = tokio::task::spawn_blocking(move || {
            let conn = open_read(&path, busy)?;
            conn.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
                .map_err(|e| sql_error(&path, e))
        })
        .await
        .map_err(|e| Error::source_error(e.to_string()))??;
        let mut notes = vec![format!(
            "{} readable, {size} bytes, journal mode {journal}",
            self.path.display()
        )];
        if journal != "wal" {
            notes.push("not in WAL mode: writers wait while a backup reads its snapshot".into());
        }
        Ok(notes)
    }

    async fn drill_scratch(
        &self,
        _manifest: &Manifest,
        place: &drkit_core::drill::Place,
        name: &drkit_core::drill::ScratchName,
    ) -> Result<Option<drkit_core::drill::Scratch>> {
        if *place != drkit_core::drill::Place::Beside {
            return Ok(None);
        }
        let dir = std::env::temp_dir().join(name.render('-', 200));
        std::fs::create_dir(&dir).map_err(|e| {
            Error::source_error(format!("cannot create drill folder {}: {e}", dir.display()))
        })?;
        let path = dir.join("restore.db").display().to_string();
        Ok(Some(drkit_core::drill::Scratch {
            to: path.clone(),
            shown: path,
            ..Default::default()
        }))
    }

    async fn drill_cleanup(&self, scratch: &drkit_core::drill::Scratch) -> Result<()> {
        if let Some(dir) = Path::new(&scratch.to).parent() {
            std::fs::remove_dir_all(dir).map_err(|e| {
                Error::source_error(format!("cannot remove {}: {e}", dir.display()))
            })?;
        }
        Ok(())
    }

    async fn drill_sweep(
        &self,
        place: &drkit_core::drill::Place,
        now: chrono::DateTime<Utc>,
    ) -> Result<Vec<String>> {
        if *place != drkit_core::drill::Place::Beside {
            return Ok(Vec::new());
        }
        let tmp = std::env::temp_dir();
        tokio::task::spawn_blocking(move || sweep_scratch_dirs(&tmp, now))
            .await
            .map_err(|e| Error::source_error(format!("the drill sweep failed: {e}")))?
    }

    async fn drill_check(
        &self,
        scratch: &drkit_core::drill::Scratch,
        query: &drkit_core::drill::Query,
    ) -> Result<Value> {
        let drkit_core::drill::Query::Sql(sql) = query else {
            return Err(Error::config(format!(
                "the sqlite driver cannot run the drill check {query}: write sql = \"...\""
            )));
        };
        let (path, sql) = (PathBuf::from(&scratch.to), sql.clone());
        tokio::task::spawn_blocking(move || sql_value(&path, &sql))
            .await
            .map_err(|e| Error::source_error(format!("the drill check failed: {e}")))?
    }

    /// `true`: the restore writes a temp file beside the destination, checks it, and renames
    /// it into place only then; a stream that fails (at its end too) removes the temp file
    /// and leaves the destination as it was.
    fn restores_in_one_pass(&self) -> bool {
        true
    }

    fn deep_check(&self, manifest: &Manifest) -> Option<Box<dyn drkit_core::DeepCheck>> {
        Some(Box::new(DeepCheck::new(manifest)))
    }

    fn measure(&self, stats: &serde_json::Value) -> drkit_core::suspect::Measure {
        crate::source::measure::sqlite(stats)
    }

    fn check_structure(&self, head: &[u8]) -> Result<()> {
        if head.len() >= 16 && &head[..16] == MAGIC {
            Ok(())
        } else {
            Err(Error::integrity(
                "the dump does not start with a SQLite header",
            ))
        }
    }
}

/// Write the restored database `data` to the new file `tmp` (mode [`NEW_FILE_MODE`]),
/// synced.
async fn write_temp(data: &mut BoxRead, tmp: &Path) -> Result<()> {
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(NEW_FILE_MODE)
        .open(tmp)
        .await
        .map_err(|e| Error::source_error(format!("cannot create {}: {e}", tmp.display())))?;
    tokio::io::copy(data, &mut f).await.map_err(|e| {
        drkit_core::from_io(e, ErrorKind::Source, format!("writing {}", tmp.display()))
    })?;
    f.sync_all()
        .await
        .map_err(|e| Error::source_error(format!("writing {}: {e}", tmp.display())))?;
    f.shutdown().await.ok();
    Ok(())
}

/// Check the restored database `tmp` against `manifest` ([`check_restored`]), off the
/// async threads.
async fn check_temp(tmp: &Path, manifest: &Manifest) -> Result<()> {
    let (tmp2, m) = (tmp.to_path_buf(), manifest.clone());
    tokio::task::spawn_blocking(move || check_restored(&tmp2, &m))
        .await
        .map_err(|e| Error::source_error(e.to_string()))
        .and_then(|r| r)
}

/// Give `tmp` and its `side_files` the mode, owner and group of the file `dest` they
/// replace, before the rename: the database is never visible under `dest` with other
/// permissions. umask aside, the temp file is already 0600; make it exactly that for a new
/// file.
fn take_ownership(dest: &Path, tmp: &Path, side_files: &[&str]) -> Result<()> {
    let target = Ownership::of(dest)?;
    let sides = side_files.iter().map(|s| side_path(tmp, s));
    for path in std::iter::once(tmp.to_path_buf()).chain(sides) {
        match target {
            Some(o) => o.apply(&path)?,
            None => set_mode(&path, NEW_FILE_MODE)?,
        }
    }
    Ok(())
}

/// Move the database `dest` and its `-wal`, `-shm` and `-journal` files aside, to
/// `<dest>.pre-restore-<time>`; returns that path.
fn move_aside(dest: &Path) -> Result<PathBuf> {
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let kept = side_path(dest, &format!(".pre-restore-{stamp}"));
    for suffix in ["-wal", "-shm", "-journal"] {
        let from = side_path(dest, suffix);
        if from.exists() {
            std::fs::rename(&from, side_path(&kept, suffix)).map_err(|e| {
                Error::source_error(format!("cannot move {} aside: {e}", from.display()))
            })?;
        }
    }
    std::fs::rename(dest, &kept)
        .map_err(|e| Error::source_error(format!("cannot move {} aside: {e}", dest.display())))?;
    Ok(kept)
}

/// Rename `tmp`'s `side_files`, then `tmp`, to `dest`, and sync the folder.
fn move_into_place(tmp: &Path, dest: &Path, side_files: &[&str]) -> Result<()> {
    for suffix in side_files {
        let (from, to) = (side_path(tmp, suffix), side_path(dest, suffix));
        std::fs::rename(&from, &to).map_err(|e| {
            Error::source_error(format!(
                "cannot rename {} to {}: {e}",
                from.display(),
                to.display()
            ))
        })?;
    }
    std::fs::rename(tmp, dest).map_err(|e| {
        Error::source_error(format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            dest.display()
        ))
    })?;
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(())
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Unpin {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Open the database file `path` read-only and immutable: no lock, no `-wal` or `-shm` file
/// is made beside it (it works for a database whose header says WAL mode, too).
fn open_immutable(path: &Path) -> rusqlite::Result<Connection> {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?mode=ro&immutable=1");
    Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

/// The value of a drill check: the first column of the first row of `sql` run on the
/// restored copy `path`, opened read-only (`null` when there is no row). A statement that
/// would write, or that fails, is a config error.
fn sql_value(path: &Path, sql: &str) -> Result<Value> {
    let conn = open_immutable(path).map_err(|e| sql_error(path, e))?;
    let bad = |why: String| Error::config(format!("drill check sql {sql:?}: {why}"));
    let mut stmt = conn.prepare(sql).map_err(|e| bad(e.to_string()))?;
    if !stmt.readonly() {
        return Err(bad(
            "it would change the database; a check only reads".into()
        ));
    }
    if stmt.column_count() == 0 {
        return Err(bad("it returns no column".into()));
    }
    let mut rows = stmt.query([]).map_err(|e| bad(e.to_string()))?;
    let Some(row) = rows.next().map_err(|e| bad(e.to_string()))? else {
        return Ok(Value::Null);
    };
    use rusqlite::types::ValueRef;
    Ok(match row.get_ref(0).map_err(|e| bad(e.to_string()))? {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => json!(f),
        ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => json!(format!("blob of {} bytes", b.len())),
    })
}

/// Remove the drill folders in `tmp` (named as drkit scratch, with `-`) older than a day at
/// `now`; one line per folder removed (or that could not be).
fn sweep_scratch_dirs(tmp: &Path, now: chrono::DateTime<Utc>) -> Result<Vec<String>> {
    let prefix = drkit_core::drill::SCRATCH_PREFIX.replace('_', "-");
    let entries = std::fs::read_dir(tmp).map_err(|e| {
        Error::source_error(format!(
            "cannot list the temp folder {}: {e}",
            tmp.display()
        ))
    })?;
    let mut lines = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(&prefix) || !drkit_core::drill::is_stale(name, now) {
            continue;
        }
        let path = entry.path();
        // A folder, not a link to one.
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        lines.push(match std::fs::remove_dir_all(&path) {
            Ok(()) => format!(
                "removed drill folder {}, left by an earlier drill more than a day ago",
                path.display()
            ),
            Err(e) => format!(
                "could not remove drill folder {}, left by an earlier drill: {e}",
                path.display()
            ),
        });
    }
    lines.sort();
    Ok(lines)
}

/// `verify --deep`: the raw stream written to a temp file (in a temp folder removed when the
/// check ends, whatever the outcome), then `PRAGMA integrity_check` and each table's row
/// count compared with the manifest's.
struct DeepCheck {
    /// The temp folder and the file in it; `None` once a write failed.
    file: Option<(tempfile::TempDir, std::fs::File)>,
    /// Why the temp file could not be written.
    failed: Option<String>,
    /// The manifest's `stats.tables`.
    want: Value,
}

impl DeepCheck {
    fn new(manifest: &Manifest) -> DeepCheck {
        let made = tempfile::Builder::new()
            .prefix("drkit-verify-")
            .tempdir()
            .and_then(|dir| {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(NEW_FILE_MODE)
                    .open(dir.path().join("check.db"))?;
                Ok((dir, f))
            });
        let (file, failed) = match made {
            Ok(f) => (Some(f), None),
            Err(e) => (
                None,
                Some(format!(
                    "cannot create a temp file to check the database in: {e}"
                )),
            ),
        };
        DeepCheck {
            file,
            failed,
            want: manifest.stats.get("tables").cloned().unwrap_or(Value::Null),
        }
    }
}

impl drkit_core::DeepCheck for DeepCheck {
    fn update(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        if let Some((dir, f)) = self.file.as_mut() {
            if let Err(e) = f.write_all(bytes) {
                self.failed = Some(format!(
                    "cannot write the database to a temp file in {}: {e}",
                    dir.path().display()
                ));
                self.file = None;
            }
        }
        match &self.failed {
            Some(why) => Err(Error::source_error(why.clone())),
            None => Ok(()),
        }
    }

    fn finish(self: Box<Self>) -> Result<String> {
        let Some((dir, f)) = self.file else {
            return Err(Error::source_error(
                self.failed
                    .unwrap_or_else(|| "the temp file is gone".into()),
            ));
        };
        drop(f);
        let result = check_copy(&dir.path().join("check.db"), &self.want);
        drop(dir);
        result
    }
}

/// Check the database copy `path` against the manifest's `stats.tables` (`want`).
fn check_copy(path: &Path, want: &Value) -> Result<String> {
    let Some(want) = want.as_object() else {
        return Err(Error::integrity(
            "the manifest has no SQLite stats (stats.tables)",
        ));
    };
    let conn = open_immutable(path)
        .map_err(|e| Error::integrity(format!("the database does not open: {e}")))?;
    let verdict: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect())
        .map_err(|e| Error::integrity(format!("PRAGMA integrity_check cannot run: {e}")))?;
    if verdict != ["ok"] {
        let shown: Vec<String> = verdict.iter().take(5).cloned().collect();
        return Err(Error::integrity(format!(
            "PRAGMA integrity_check fails: {}",
            shown.join("; ")
        )));
    }
    let got = read_stats(&conn)
        .map_err(|e| Error::integrity(format!("the tables cannot be counted: {e}")))?;
    let got = got["tables"].as_object().cloned().unwrap_or_default();
    let wrong = table_mismatches(&got, want);
    if !wrong.is_empty() {
        return Err(Error::integrity(format!(
            "the database does not match the manifest: {}",
            wrong.join("; ")
        )));
    }
    let rows: i64 = got.values().filter_map(Value::as_i64).sum();
    Ok(format!(
        "{} table{}, {rows} row{}, PRAGMA integrity_check ok: as the manifest says",
        got.len(),
        if got.len() == 1 { "" } else { "s" },
        if rows == 1 { "" } else { "s" },
    ))
}

/// How the row counts `got` differ from the manifest's `want`: one line per table naming
/// both numbers (at most 5, then how many more).
fn table_mismatches(got: &Map<String, Value>, want: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (table, n) in got {
        let t = shown_name(table);
        match want.get(table) {
            Some(w) if w == n => {}
            Some(w) => out.push(format!(
                "table {t}: the database holds {n} row(s), the manifest says {}",
                shown_count(w)
            )),
            None => out.push(format!(
                "table {t}: in the database ({n} row(s)), not in the manifest"
            )),
        }
    }
    for (table, w) in want {
        if !got.contains_key(table) {
            out.push(format!(
                "table {}: in the manifest ({} row(s)), not in the database",
                shown_name(table),
                shown_count(w)
            ));
        }
    }
    if out.len() > 5 {
        let more = out.len() - 5;
        out.truncate(5);
        out.push(format!("and {more} more"));
    }
    out
}

/// A name read from a manifest or a database, fit for a one-line message: as it is when it
/// is short and printable, else quoted with escapes and cut.
fn shown_name(name: &str) -> String {
    if name.len() <= 100 && !name.chars().any(char::is_control) {
        return name.to_string();
    }
    let cut: String = name.chars().take(100).collect();
    format!("{cut:?}{}", if cut.len() < name.len() { "..." } else { "" })
}

/// A count read from a manifest: the number, or what it is instead.
fn shown_count(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        _ => "a value that is not a number".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn make(path: &Path, wal: bool) {
        let c = Connection::open(path).unwrap();
        if wal {
            c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
                .unwrap();
        }
        c.execute_batch(
            "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2.5), ('a'), (NULL), (x'0102');
             CREATE TABLE u(y); INSERT INTO u VALUES (7);",
        )
        .unwrap();
    }

    #[test]
    fn checks_read_values_from_an_immutable_copy() {
        let dir = tempfile::tempdir().unwrap();
        // A WAL database in a folder whose name needs escaping in a URI.
        let sub = dir.path().join("a b?c#d%e");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("db.sqlite");
        make(&path, true);
        let before: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        let v = |sql: &str| sql_value(&path, sql);
        assert_eq!(v("SELECT count(*) FROM t").unwrap(), json!(5));
        assert_eq!(v("SELECT x FROM t WHERE rowid = 2").unwrap(), json!(2.5));
        assert_eq!(v("SELECT x FROM t WHERE rowid = 3").unwrap(), json!("a"));
        assert_eq!(v("SELECT x FROM t WHERE rowid = 4").unwrap(), Value::Null);
        assert_eq!(
            v("SELECT x FROM t WHERE rowid = 5").unwrap(),
            json!("blob of 2 bytes")
        );
        assert_eq!(v("SELECT x FROM t WHERE 0").unwrap(), Value::Null);
        for bad in ["DELETE FROM t", "SELECT * FROM nope", "not sql"] {
            let e = v(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
        }
        assert_eq!(v("SELECT count(*) FROM t").unwrap(), json!(5));
        let after: Vec<_> = std::fs::read_dir(&sub)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(before, after, "the check left files beside the database");
    }

    #[test]
    fn deep_check_compares_tables_with_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        make(&path, false);
        assert_eq!(
            check_copy(&path, &json!({"t": 5, "u": 1})).unwrap(),
            "2 tables, 6 rows, PRAGMA integrity_check ok: as the manifest says"
        );
        let e = check_copy(&path, &json!({"t": 6, "v": "x"})).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity);
        let text = e.to_string();
        assert!(
            text.contains("table t: the database holds 5 row(s), the manifest says 6"),
            "{text}"
        );
        assert!(text.contains("table u: in the database"), "{text}");
        assert!(
            text.contains("table v: in the manifest (a value that is not a number"),
            "{text}"
        );
        assert!(check_copy(&path, &json!(null)).is_err());
        std::fs::write(&path, b"SQLite format 3\0garbage").unwrap();
        assert_eq!(
            check_copy(&path, &json!({})).unwrap_err().kind(),
            ErrorKind::Integrity
        );
    }

    #[test]
    fn sweep_removes_only_stale_scratch_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let now = Utc.with_ymd_and_hms(2026, 12, 3, 4, 5, 6).unwrap();
        let name = |hours: i64| {
            drkit_core::drill::ScratchName {
                job: "app".into(),
                at: now - chrono::Duration::hours(hours),
                tag: 1,
            }
            .render('-', 200)
        };
        let (old, fresh) = (name(48), name(2));
        for d in [&old, &fresh, &"drkit-drill-other".to_string()] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
            std::fs::write(tmp.path().join(d).join("restore.db"), b"x").unwrap();
        }
        // A file and a link with a stale name are left alone.
        std::fs::write(tmp.path().join(name(50)), b"x").unwrap();
        std::os::unix::fs::symlink(tmp.path().join(&fresh), tmp.path().join(name(60))).unwrap();
        let lines = sweep_scratch_dirs(tmp.path(), now).unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(&old), "{lines:?}");
        assert!(!tmp.path().join(&old).exists());
        assert!(tmp.path().join(&fresh).join("restore.db").exists());
        assert!(tmp.path().join(name(50)).exists());
    }
}
