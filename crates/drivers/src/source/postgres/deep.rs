//! `verify --deep` for PostgreSQL: a structural walk of the raw dump without a server.
//!
//! The walk reads each pg_dump custom archive (the raw stream itself, or each database stream
//! of drkit's tar, see [`super::archive`]): its header, its table of contents (TOC), then
//! every data block. Table data blocks are COPY text in length-prefixed chunks; drkit dumps
//! with `--compress=0`, so the rows are counted as the lines before the `\.` end line (a
//! newline inside a value is written `\n` by COPY, so one line is one row). A compressed
//! archive (made by hand, or by another tool) has its tables counted, not its rows. Large
//! objects are counted from their blocks. The counts are then compared with the manifest's
//! stats: every table the manifest lists has its data in the archive, with the same number of
//! rows when the manifest's counts are exact, and as many large objects.
//!
//! The archive is hostile: every length is checked against what is left, strings are kept
//! only up to [`KEEP`] bytes (longer ones are skipped as they are read), and nothing holds a
//! whole block. The walk runs on a thread of its own, fed the chunks through a bounded
//! channel, so that the parser reads like the format (a `Read`), not like a state machine.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use drkit_core::{DeepCheck, Error, Manifest, Result};

use super::archive::{self, Index};
use super::stats::{DbStats, Stats, StatsMode};

/// The longest TOC string kept (table and schema names are at most 63 bytes).
const KEEP: usize = 1024;
/// The most TOC entries one archive may claim.
const MAX_ENTRIES: i64 = 10_000_000;
/// Chunks in flight between the pipeline and the walking thread.
const IN_FLIGHT: usize = 4;
/// Custom archive block types (pg_backup_custom.c).
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;

/// What one pg_dump archive holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counted {
    /// Rows per `(schema, table)` with a data block; `None` when not counted (compressed).
    pub tables: BTreeMap<(String, String), Option<u64>>,
    /// Large objects.
    pub large_objects: u64,
    /// The data blocks are compressed: rows were not counted.
    pub compressed: bool,
    /// The archive's format version is newer than this walk reads: nothing was counted.
    pub unread: Option<String>,
}

/// Why a walk failed (an integrity error once it reaches the pipeline).
fn damaged(why: impl std::fmt::Display) -> Error {
    Error::integrity(format!("the pg_dump archive is damaged: {why}"))
}

fn truncated(what: &str) -> Error {
    damaged(format!("it ends inside {what}: it is truncated"))
}

/// A `Read` over the chunks sent by [`Deep::update`].
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.buf = next;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Read exactly `buf.len()` bytes, or say what was cut.
fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<()> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => return Err(truncated(what)),
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(from_io(e)),
        }
    }
    Ok(())
}

/// A read error: the drkit error a [`StreamReader`] wrapped, or the I/O error said plainly.
fn from_io(e: std::io::Error) -> Error {
    let kind = e.kind();
    match e.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(inner)) => *inner,
        Some(Err(other)) => damaged(other),
        None => damaged(kind),
    }
}

/// Read `r` to its end, dropping the bytes.
fn drain<R: Read>(r: &mut R) -> Result<()> {
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(from_io(e)),
        }
    }
}

/// Read and drop `len` bytes, or say what was cut.
fn skip<R: Read>(r: &mut R, mut len: u64, what: &str) -> Result<()> {
    let mut buf = [0u8; 8192];
    while len > 0 {
        let n = (len as usize).min(buf.len());
        read_exact(r, &mut buf[..n], what)?;
        len -= n as u64;
    }
    Ok(())
}

fn read_byte<R: Read>(r: &mut R, what: &str) -> Result<u8> {
    let mut b = [0u8; 1];
    read_exact(r, &mut b, what)?;
    Ok(b[0])
}

/// The reader of one pg_dump custom archive.
struct Archive<'a, R> {
    r: &'a mut R,
    int_size: usize,
    version: (u8, u8, u8),
}

impl<R: Read> Archive<'_, R> {
    fn at_least(&self, minor: u8) -> bool {
        self.version >= (1, minor, 0)
    }

    /// pg_dump's `ReadInt`: a sign byte, then `int_size` bytes, least significant first.
    fn int(&mut self, what: &str) -> Result<i64> {
        let sign = read_byte(self.r, what)?;
        let mut bytes = [0u8; 8];
        read_exact(self.r, &mut bytes[..self.int_size], what)?;
        let v = i64::from_le_bytes(bytes);
        match sign {
            0 => Ok(v),
            1 => Ok(-v),
            s => Err(damaged(format!("{what} has sign byte {s}"))),
        }
    }

    /// pg_dump's `ReadStr`, kept (up to [`KEEP`] bytes) or skipped. `None` for a NULL string.
    fn string(&mut self, keep: bool, what: &str) -> Result<Option<String>> {
        let len = self.int(what)?;
        if len < 0 {
            return Ok(None);
        }
        let len = len as u64;
        if !keep {
            skip(self.r, len, what)?;
            return Ok(Some(String::new()));
        }
        let kept = (len as usize).min(KEEP);
        let mut buf = vec![0u8; kept];
        read_exact(self.r, &mut buf, what)?;
        skip(self.r, len - kept as u64, what)?;
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }
}

/// A TOC entry with data: a table's rows, or large objects.
enum DataEntry {
    Table(String, String),
    Blobs,
}

/// Walk one pg_dump custom archive read from `r` to its end.
pub fn walk_pgdump<R: Read>(r: &mut R) -> Result<Counted> {
    let mut magic = [0u8; 5];
    read_exact(r, &mut magic, "its header")?;
    if magic != super::PGDMP {
        return Err(damaged("it does not start with PGDMP"));
    }
    let mut v = [0u8; 3];
    read_exact(r, &mut v, "its header")?;
    let version = (v[0], v[1], v[2]);
    if !((1, 12, 0)..(1, 17, 0)).contains(&version) {
        // Written by a pg_dump this walk does not know: skip it whole (its checksums were
        // checked), and say so.
        drain(r)?;
        return Ok(Counted {
            unread: Some(format!("{}.{}.{}", v[0], v[1], v[2])),
            ..Counted::default()
        });
    }
    let int_size = read_byte(r, "its header")? as usize;
    let off_size = read_byte(r, "its header")? as usize;
    if !(1..=8).contains(&int_size) || !(1..=8).contains(&off_size) {
        return Err(damaged(format!(
            "its header says integers of {int_size} bytes and offsets of {off_size} bytes"
        )));
    }
    if read_byte(r, "its header")? != 1 {
        return Err(damaged("it is not in pg_dump's custom format"));
    }
    let mut a = Archive {
        r,
        int_size,
        version,
    };
    let compressed = if a.at_least(15) {
        read_byte(a.r, "its header")? != 0
    } else {
        a.int("its header")? != 0
    };
    for _ in 0..7 {
        a.int("its header")?;
    }
    a.string(false, "its header")?;
    a.string(false, "its header")?;
    a.string(false, "its header")?;
    let entries = read_toc(&mut a, off_size)?;
    let mut counted = Counted {
        compressed,
        ..Counted::default()
    };
    read_blocks(&mut a, &entries, &mut counted)?;
    Ok(counted)
}

/// The TOC: the entries that have data, by dump id.
fn read_toc<R: Read>(a: &mut Archive<'_, R>, off_size: usize) -> Result<BTreeMap<i64, DataEntry>> {
    let count = a.int("its table of contents")?;
    if !(0..=MAX_ENTRIES).contains(&count) {
        return Err(damaged(format!(
            "its table of contents claims {count} entries"
        )));
    }
    let toc = "its table of contents";
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let id = a.int(toc)?;
        if id <= 0 {
            return Err(damaged(format!("a TOC entry has id {id}")));
        }
        a.int(toc)?; // had a data dumper
        a.string(false, toc)?; // table oid
        a.string(false, toc)?; // oid
        let tag = a.string(true, toc)?.unwrap_or_default();
        let desc = a.string(true, toc)?.unwrap_or_default();
        a.int(toc)?; // section
        for _ in 0..3 {
            a.string(false, toc)?; // defn, drop statement, copy statement
        }
        let namespace = a.string(true, toc)?.unwrap_or_default();
        a.string(false, toc)?; // tablespace
        if a.at_least(14) {
            a.string(false, toc)?; // table access method
        }
        if a.at_least(16) {
            a.int(toc)?; // relkind
        }
        a.string(false, toc)?; // owner
        a.string(false, toc)?; // "false": with oids
        while a.string(false, toc)?.is_some() {} // dependencies, to a NULL
        read_byte(a.r, toc)?; // data offset: whether set, then the offset
        skip(a.r, off_size as u64, toc)?;
        let entry = match desc.as_str() {
            "TABLE DATA" => DataEntry::Table(namespace, tag),
            "BLOBS" => DataEntry::Blobs,
            _ => continue,
        };
        if out.insert(id, entry).is_some() {
            return Err(damaged(format!("TOC entry id {id} is listed twice")));
        }
    }
    Ok(out)
}

/// The data blocks, to the end of the archive.
fn read_blocks<R: Read>(
    a: &mut Archive<'_, R>,
    entries: &BTreeMap<i64, DataEntry>,
    counted: &mut Counted,
) -> Result<()> {
    let mut seen = HashSet::new();
    loop {
        let mut kind = [0u8; 1];
        let n = loop {
            match a.r.read(&mut kind) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.map_err(from_io)?,
            }
        };
        if n == 0 {
            return Ok(());
        }
        let id = a.int("a data block")?;
        if !seen.insert(id) {
            return Err(damaged(format!("data block {id} comes twice")));
        }
        match (kind[0], entries.get(&id)) {
            (BLK_DATA, Some(DataEntry::Table(schema, name))) => {
                let what = format!("the data of table {schema}.{name}");
                let rows = read_rows(a, !counted.compressed, &what)?;
                counted
                    .tables
                    .insert((schema.clone(), name.clone()), rows);
            }
            (BLK_BLOBS, Some(DataEntry::Blobs)) => loop {
                if a.int("a large object")? == 0 {
                    break;
                }
                counted.large_objects += 1;
                read_rows(a, false, "a large object")?;
            },
            (k, _) => {
                return Err(damaged(format!(
                    "data block {id} of type {k} matches no table data or large objects of its table of contents"
                )))
            }
        }
    }
}

/// The chunks of one block, to its zero-length end: the COPY lines counted when `count`.
fn read_rows<R: Read>(a: &mut Archive<'_, R>, count: bool, what: &str) -> Result<Option<u64>> {
    let mut lines = Lines::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let len = a.int(what)?;
        if len == 0 {
            return Ok(count.then(|| lines.finish()));
        }
        if len < 0 {
            return Err(damaged(format!("{what} has a chunk of {len} bytes")));
        }
        let mut left = len as u64;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            read_exact(a.r, &mut buf[..n], what)?;
            if count {
                lines.feed(&buf[..n]);
            }
            left -= n as u64;
        }
    }
}

/// Counts COPY text rows: lines before the `\.` line.
#[derive(Default)]
struct Lines {
    rows: u64,
    /// Bytes of the current line so far (up to 3 kept in `head`).
    len: usize,
    head: [u8; 2],
    ended: bool,
}

impl Lines {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !self.ended && !bytes.is_empty() {
            let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
                self.extend(bytes);
                return;
            };
            self.extend(&bytes[..nl]);
            self.end_line();
            bytes = &bytes[nl + 1..];
        }
    }

    fn extend(&mut self, part: &[u8]) {
        for (i, &b) in part
            .iter()
            .take(2usize.saturating_sub(self.len))
            .enumerate()
        {
            self.head[self.len + i] = b;
        }
        self.len += part.len();
    }

    fn end_line(&mut self) {
        if self.len == 2 && &self.head == b"\\." {
            self.ended = true;
        } else {
            self.rows += 1;
        }
        self.len = 0;
    }

    fn finish(mut self) -> u64 {
        if !self.ended && self.len > 0 {
            self.end_line();
        }
        self.rows
    }
}

/// A `Read` of one stream of drkit's tar: its parts' bytes, ending where the next stream (or
/// the end of the archive) starts.
struct StreamReader<'a, R> {
    r: &'a mut R,
    seq: archive::Sequence,
    /// Bytes left in the current member, and its padding.
    left: u64,
    pad: u64,
    /// The next member's (stream, size), read when the current stream ended.
    next: Option<(usize, u64)>,
    /// The end-of-archive block was read.
    end: bool,
}

impl<R: Read> StreamReader<'_, R> {
    /// Read the next member header: `None` at the end of the archive.
    fn header(&mut self) -> Result<Option<(usize, bool, u64)>> {
        let mut h = [0u8; archive::BLOCK];
        read_exact(self.r, &mut h, "the tar stream")?;
        let Some((name, size)) = archive::parse_header(&h)? else {
            self.end = true;
            return Ok(None);
        };
        let (i, starts) = self.seq.next(&name)?;
        Ok(Some((i, starts, size)))
    }

    /// Move to the member that starts the next stream: its index, `None` at the end.
    fn next_stream(&mut self) -> Result<Option<usize>> {
        // What the last stream left unread.
        skip(self.r, self.left + self.pad, "the tar stream")?;
        self.left = 0;
        self.pad = 0;
        let (i, size) = match self.next.take() {
            Some(n) => n,
            None if self.end => return Ok(None),
            None => match self.header()? {
                None => return Ok(None),
                Some((i, _, size)) => (i, size),
            },
        };
        self.left = size;
        self.pad = padding(size);
        Ok(Some(i))
    }

    fn fill(&mut self, out: &mut [u8]) -> Result<usize> {
        while self.left == 0 {
            skip(self.r, self.pad, "the tar stream")?;
            self.pad = 0;
            if self.end || self.next.is_some() {
                return Ok(0);
            }
            match self.header()? {
                None => return Ok(0),
                Some((i, true, size)) => {
                    self.next = Some((i, size));
                    return Ok(0);
                }
                Some((_, false, size)) => {
                    self.left = size;
                    self.pad = padding(size);
                }
            }
        }
        let n = (self.left as usize).min(out.len());
        let got = self.r.read(&mut out[..n]).map_err(from_io)?;
        if got == 0 {
            return Err(truncated("a tar member"));
        }
        self.left -= got as u64;
        Ok(got)
    }
}

impl<R: Read> Read for StreamReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.fill(out).map_err(std::io::Error::other)
    }
}

fn padding(size: u64) -> u64 {
    let b = archive::BLOCK as u64;
    (b - size % b) % b
}

/// Walk drkit's tar of several streams: the counts of each database, by archived name.
pub fn walk_tar<R: Read>(
    r: &mut R,
    globals: bool,
    databases: &[&str],
) -> Result<Vec<(String, Counted)>> {
    let mut h = [0u8; archive::BLOCK];
    read_exact(r, &mut h, "the tar stream")?;
    let (name, size) =
        archive::parse_header(&h)?.ok_or_else(|| damaged("the tar stream is empty"))?;
    if name != archive::INDEX_NAME || size > archive::PART_SIZE as u64 {
        return Err(damaged(format!(
            "the tar stream starts with {name:?} of {size} bytes, not its index"
        )));
    }
    let mut raw = vec![0u8; size as usize];
    read_exact(r, &mut raw, "the tar stream's index")?;
    skip(r, padding(size), "the tar stream's index")?;
    let index: Index = serde_json::from_slice(&raw)
        .map_err(|e| damaged(format!("its index is unreadable: {e}")))?;
    if index.format != archive::FORMAT || index.version != 1 {
        return Err(damaged(format!(
            "its index is in format {} version {}, which this drkit does not read",
            index.format, index.version
        )));
    }
    super::restore::check_index(&index, globals, databases)
        .map_err(|why| damaged(format!("its index is refused: {why}")))?;
    let mut streams = StreamReader {
        r,
        seq: archive::Sequence::new(&index),
        left: 0,
        pad: 0,
        next: None,
        end: false,
    };
    let mut out = Vec::new();
    while let Some(i) = streams.next_stream()? {
        let entry = &index.streams[i];
        match &entry.database {
            None => {
                let mut sink = [0u8; 8192];
                while streams.fill(&mut sink)? > 0 {}
            }
            Some(db) => {
                let counted = walk_pgdump(&mut streams)
                    .map_err(|e| Error::integrity(format!("database {db:?}: {}", e.message())))?;
                out.push((db.clone(), counted));
            }
        }
    }
    // The end block was read: what follows is zeros (the second end block, tar's padding).
    let mut rest = [0u8; 8192];
    loop {
        let n = streams.r.read(&mut rest).map_err(from_io)?;
        if n == 0 {
            break;
        }
        if rest[..n].iter().any(|&b| b != 0) {
            return Err(damaged("bytes follow the end of the tar stream"));
        }
    }
    if streams.seq.started() != index.streams.len() {
        return Err(damaged(format!(
            "the tar stream holds {} of its {} streams: it is truncated",
            streams.seq.started(),
            index.streams.len()
        )));
    }
    Ok(out)
}

/// Compare the counts of each database with the manifest's stats: the summary line, or an
/// error naming the first differences.
pub fn compare(stats: &Stats, counted: &[(String, Counted)]) -> Result<String> {
    let exact = stats.row_counts == StatsMode::Exact;
    let mut diffs = Vec::new();
    let (mut tables, mut rows, mut extra, mut los) = (0usize, 0u64, 0usize, 0u64);
    let mut notes = Vec::new();
    for db in &stats.databases {
        let Some((_, c)) = counted.iter().find(|(n, _)| *n == db.name) else {
            diffs.push(format!("database {:?} is not in the archive", db.name));
            continue;
        };
        if let Some(v) = &c.unread {
            notes.push(format!(
                "database {:?} not walked (pg_dump archive format {v} is newer than this drkit reads)",
                db.name
            ));
            continue;
        }
        if c.compressed {
            notes.push(format!(
                "database {:?}: its data is compressed, so its rows were not counted",
                db.name
            ));
        }
        compare_db(db, c, exact && !c.compressed, &mut diffs);
        tables += c.tables.len();
        rows += c.tables.values().flatten().sum::<u64>();
        extra += c
            .tables
            .keys()
            .filter(|(s, n)| !db.tables.iter().any(|t| t.schema == *s && t.name == *n))
            .count();
        los += c.large_objects;
    }
    if !diffs.is_empty() {
        let more = if diffs.len() > 3 {
            format!(" (and {} more differences)", diffs.len() - 3)
        } else {
            String::new()
        };
        return Err(Error::integrity(format!(
            "the archive does not match its manifest: {}{more}",
            diffs.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        )));
    }
    let n = stats.databases.len();
    let mut line = format!(
        "{n} database{}, {tables} tables, {rows} rows{}",
        if n == 1 { "" } else { "s" },
        if los > 0 {
            format!(", {los} large objects")
        } else {
            String::new()
        }
    );
    line.push_str(if exact {
        ": as the manifest says"
    } else {
        ": every table of the manifest is there (its row counts are estimates, not compared)"
    });
    if extra > 0 {
        notes.push(format!(
            "{extra} tables not listed in the manifest (extension tables)"
        ));
    }
    for n in notes {
        line.push_str("; ");
        line.push_str(&n);
    }
    Ok(line)
}

fn compare_db(db: &DbStats, c: &Counted, rows: bool, diffs: &mut Vec<String>) {
    for t in &db.tables {
        let key = (t.schema.clone(), t.name.clone());
        match (c.tables.get(&key), t.rows) {
            (None, _) => diffs.push(format!(
                "table {}.{} of database {:?} has no data in the archive",
                t.schema, t.name, db.name
            )),
            (Some(Some(got)), Some(want)) if rows && *got as i64 != want => {
                diffs.push(format!(
                    "table {}.{} of database {:?}: the archive holds {got} rows, the manifest says {want}",
                    t.schema, t.name, db.name
                ))
            }
            _ => {}
        }
    }
    if let Some(want) = db.large_objects {
        if c.large_objects as i64 != want {
            diffs.push(format!(
                "database {:?}: the archive holds {} large objects, the manifest says {want}",
                db.name, c.large_objects
            ));
        }
    }
}

/// The layout of a manifest's archive and its stats.
fn plan(manifest: &Manifest) -> std::result::Result<(bool, bool, Stats), String> {
    let stats: Stats = serde_json::from_value(manifest.stats.clone())
        .map_err(|e| format!("its manifest's stats are unreadable ({e})"))?;
    let tar = manifest.source.get("layout").and_then(|l| l.as_str()) == Some("tar");
    let globals = manifest.source.get("globals").and_then(|g| g.as_bool()) == Some(true);
    if !tar && stats.databases.len() != 1 {
        return Err(format!(
            "its manifest lists {} databases for a single pg_dump archive",
            stats.databases.len()
        ));
    }
    Ok((tar, globals, stats))
}

/// The counts of each database of an archive, by archived name.
type PerDatabase = Vec<(String, Counted)>;

/// The deep check of one backup (see [`deep_check`]).
struct Deep {
    tx: Option<SyncSender<Vec<u8>>>,
    walker: Option<JoinHandle<Result<PerDatabase>>>,
    stats: Option<Stats>,
    /// Why the check cannot run (an unreadable manifest).
    refused: Option<String>,
}

impl Deep {
    /// The walker's result (after its input was closed or it stopped).
    fn join(&mut self) -> Result<Vec<(String, Counted)>> {
        self.tx = None;
        match self.walker.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::integrity("the archive walk stopped unexpectedly")),
            None => Err(Error::integrity("the archive walk already stopped")),
        }
    }
}

impl DeepCheck for Deep {
    fn update(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(why) = &self.refused {
            return Err(Error::integrity(why.clone()));
        }
        let sent = match &self.tx {
            Some(tx) => tx.send(bytes.to_vec()).is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The walker stopped early: it failed.
        match self.join() {
            Err(e) => Err(e),
            Ok(_) => Err(damaged("bytes follow the end of the archive")),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<String> {
        if let Some(why) = &self.refused {
            return Err(Error::integrity(why.clone()));
        }
        let counted = self.join()?;
        compare(self.stats.as_ref().expect("set with the walker"), &counted)
    }
}

/// A deep check of `manifest`'s raw dump (see [`drkit_core::Source::deep_check`]).
pub fn deep_check(manifest: &Manifest) -> Box<dyn DeepCheck> {
    let (tar, globals, stats) = match plan(manifest) {
        Ok(p) => p,
        Err(why) => {
            return Box::new(Deep {
                tx: None,
                walker: None,
                stats: None,
                refused: Some(why),
            })
        }
    };
    start(tar, globals, stats)
}

/// Start the walking thread for an archive of this layout.
fn start(tar: bool, globals: bool, stats: Stats) -> Box<dyn DeepCheck> {
    let names: Vec<String> = stats.databases.iter().map(|d| d.name.clone()).collect();
    let (tx, rx) = sync_channel::<Vec<u8>>(IN_FLIGHT);
    let walker = std::thread::Builder::new()
        .name("drkit-pg-deep".into())
        .spawn(move || {
            let mut r = ChannelReader {
                rx,
                buf: Vec::new(),
                pos: 0,
            };
            if tar {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                walk_tar(&mut r, globals, &names)
            } else {
                let counted = walk_pgdump(&mut r)?;
                Ok(vec![(names[0].clone(), counted)])
            }
        });
    match walker {
        Ok(w) => Box::new(Deep {
            tx: Some(tx),
            walker: Some(w),
            stats: Some(stats),
            refused: None,
        }),
        Err(e) => Box::new(Deep {
            tx: None,
            walker: None,
            stats: None,
            refused: Some(format!("cannot start the archive walk: {e}")),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::postgres::stats::TableStats;

    const PLAIN: &[u8] = include_bytes!("fixtures/deep-pg15.pgdump");
    const GZIP: &[u8] = include_bytes!("fixtures/deep-pg15-gzip.pgdump");
    const ONE: &[u8] = include_bytes!("fixtures/deep-pg15-one-table.pgdump");

    fn key(s: &str, n: &str) -> (String, String) {
        (s.to_string(), n.to_string())
    }

    fn db(name: &str, tables: &[(&str, &str, i64)], los: Option<i64>) -> DbStats {
        DbStats {
            name: name.into(),
            size_bytes: 0,
            encoding: "UTF8".into(),
            collate: "C".into(),
            ctype: "C".into(),
            owner: "drkit".into(),
            schemas: vec!["public".into()],
            tables: tables
                .iter()
                .map(|(s, n, r)| TableStats {
                    schema: s.to_string(),
                    name: n.to_string(),
                    rows: Some(*r),
                })
                .collect(),
            large_objects: los,
        }
    }

    fn fx(name: &str) -> DbStats {
        db(
            name,
            &[
                ("public", "a", 1001),
                ("public", "empty_t", 0),
                ("We ird", "T.1", 2),
            ],
            Some(2),
        )
    }

    fn feed(check: Box<dyn DeepCheck>, data: &[u8], chunk: usize) -> Result<String> {
        let mut check = check;
        for c in data.chunks(chunk) {
            check.update(c)?;
        }
        check.finish()
    }

    #[test]
    fn counts_the_rows_and_large_objects_of_a_real_dump() {
        let c = walk_pgdump(&mut &PLAIN[..]).unwrap();
        assert!(!c.compressed);
        assert_eq!(c.large_objects, 2);
        assert_eq!(c.tables.len(), 3);
        assert_eq!(c.tables[&key("public", "a")], Some(1001));
        assert_eq!(c.tables[&key("public", "empty_t")], Some(0));
        assert_eq!(c.tables[&key("We ird", "T.1")], Some(2));
        let one = walk_pgdump(&mut &ONE[..]).unwrap();
        assert_eq!(one.tables.len(), 1);
        assert_eq!(one.large_objects, 0);
    }

    #[test]
    fn a_compressed_dump_has_its_tables_counted_not_its_rows() {
        let c = walk_pgdump(&mut &GZIP[..]).unwrap();
        assert!(c.compressed);
        assert_eq!(c.large_objects, 2);
        assert_eq!(c.tables[&key("public", "a")], None);
        let stats = Stats::new(StatsMode::Exact, vec![fx("fx")]);
        let line = compare(&stats, &[("fx".into(), c)]).unwrap();
        assert!(line.contains("rows were not counted"), "{line}");
    }

    #[test]
    fn fed_in_any_chunks_it_agrees_with_the_manifest() {
        let stats = Stats::new(StatsMode::Exact, vec![fx("fx")]);
        for chunk in [1, 7, 512, 4096, 1 << 20] {
            let line = feed(start(false, false, stats.clone()), PLAIN, chunk).unwrap();
            assert_eq!(
                line,
                "1 database, 3 tables, 1003 rows, 2 large objects: as the manifest says"
            );
        }
    }

    #[test]
    fn a_count_that_differs_names_the_table_and_both_numbers() {
        let mut want = fx("fx");
        want.tables[0].rows = Some(1002);
        want.large_objects = Some(3);
        let stats = Stats::new(StatsMode::Exact, vec![want]);
        let e = feed(start(false, false, stats), PLAIN, 4096).unwrap_err();
        assert_eq!(e.kind(), drkit_core::ErrorKind::Integrity);
        let msg = e.to_string();
        assert!(
            msg.contains("table public.a of database \"fx\": the archive holds 1001 rows, the manifest says 1002"),
            "{msg}"
        );
        assert!(
            msg.contains("2 large objects, the manifest says 3"),
            "{msg}"
        );

        let missing = db("fx", &[("public", "gone", 5)], None);
        let e = compare(
            &Stats::new(StatsMode::Exact, vec![missing]),
            &[("fx".into(), walk_pgdump(&mut &PLAIN[..]).unwrap())],
        )
        .unwrap_err();
        assert!(e.to_string().contains("public.gone"), "{e}");
    }

    #[test]
    fn estimated_counts_are_not_compared() {
        let mut want = fx("fx");
        want.tables[0].rows = Some(900);
        want.tables.pop();
        let stats = Stats::new(StatsMode::Estimate, vec![want]);
        let line = feed(start(false, false, stats), PLAIN, 4096).unwrap();
        assert!(line.contains("estimates, not compared"), "{line}");
        assert!(line.contains("1 tables not listed"), "{line}");
    }

    fn tar(streams: &[(&str, &str, Option<&str>, &[u8])]) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let index = Index::new(
                streams
                    .iter()
                    .map(|(file, kind, db, _)| archive::StreamEntry {
                        file: file.to_string(),
                        kind: kind.to_string(),
                        database: db.map(String::from),
                    })
                    .collect(),
            );
            let mut out = Vec::new();
            archive::write_member(
                &mut out,
                archive::INDEX_NAME,
                &serde_json::to_vec(&index).unwrap(),
            )
            .await
            .unwrap();
            let mut buf = Vec::new();
            for (file, _, _, data) in streams {
                archive::write_stream(&mut &data[..], &mut out, file, &mut buf)
                    .await
                    .unwrap();
            }
            archive::write_end(&mut out).await.unwrap();
            out
        })
    }

    #[test]
    fn walks_the_tar_of_several_databases_and_the_roles() {
        // A stream larger than a tar part, to cross member boundaries inside a data block.
        let mut big = Vec::new();
        let roles = b"CREATE ROLE x;\n".repeat(100_000);
        big.extend_from_slice(&roles);
        let data = tar(&[
            ("globals.sql", "globals", None, &big),
            ("db-001-fx.pgdump", "database", Some("fx"), PLAIN),
            ("db-002-one.pgdump", "database", Some("one"), ONE),
        ]);
        let stats = Stats::new(
            StatsMode::Exact,
            vec![fx("fx"), db("one", &[("public", "a", 1001)], None)],
        );
        for chunk in [333, 65536] {
            let line = feed(start(true, true, stats.clone()), &data, chunk).unwrap();
            assert_eq!(
                line,
                "2 databases, 4 tables, 2004 rows, 2 large objects: as the manifest says"
            );
        }
        // A database the manifest lists is missing from the index.
        let short = tar(&[("db-001-fx.pgdump", "database", Some("fx"), PLAIN)]);
        let e = feed(start(true, false, stats.clone()), &short, 4096).unwrap_err();
        assert!(e.to_string().contains("1 of the 2 databases"), "{e}");
        // Cut in the middle: the stream of the second database is missing.
        let e = feed(start(true, true, stats), &data[..data.len() / 2 + 7], 4096).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn hostile_archives_fail_cleanly() {
        let stats = Stats::new(StatsMode::Exact, vec![fx("fx")]);
        // Every cut of the archive is refused, none panics.
        for cut in (0..PLAIN.len() - 1)
            .step_by(37)
            .chain(PLAIN.len() - 12..PLAIN.len())
        {
            let e = feed(start(false, false, stats.clone()), &PLAIN[..cut], 4096);
            assert!(e.is_err(), "cut at {cut} passed");
        }
        // Huge claimed lengths: the TOC count, a string, a chunk. No allocation follows them.
        // The TOC count follows the header's last string, pg_dump's version.
        let version = b"deb12u1)";
        let toc_count_at = PLAIN[..200]
            .windows(version.len())
            .rposition(|w| w == version)
            .unwrap()
            + version.len();
        assert_eq!(PLAIN[toc_count_at], 0, "a sign byte");
        let cases: Vec<(usize, Vec<u8>, &str)> = vec![
            (toc_count_at, vec![0, 0xff, 0xff, 0xff, 0x7f], "claims"),
            (8, vec![200], "integers of 200 bytes"),
            (10, vec![3], "custom format"),
        ];
        for (at, bytes, want) in cases {
            let mut bad = PLAIN.to_vec();
            bad[at..at + bytes.len()].copy_from_slice(&bytes);
            let e = walk_pgdump(&mut &bad[..]).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        // The first string of the header (the database name "fx", length 2) claims 2 GiB.
        let name_at = PLAIN
            .windows(7)
            .position(|w| w == [0, 2, 0, 0, 0, b'f', b'x'])
            .unwrap();
        let mut bad = PLAIN.to_vec();
        bad[name_at + 1..name_at + 5].copy_from_slice(&[0xff, 0xff, 0xff, 0x7f]);
        assert!(walk_pgdump(&mut &bad[..])
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        // A data chunk that claims 2 GiB.
        let chunk_at = PLAIN
            .windows(6)
            .position(|w| w == [0, 0x05, 0, 0, 0, b'\\'])
            .unwrap();
        let mut bad = PLAIN.to_vec();
        bad[chunk_at + 1..chunk_at + 5].copy_from_slice(&[0xff, 0xff, 0xff, 0x7f]);
        assert!(walk_pgdump(&mut &bad[..])
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        // Flipped bytes anywhere: an error or a count, never a panic.
        for at in (0..PLAIN.len()).step_by(13) {
            let mut bad = PLAIN.to_vec();
            bad[at] ^= 0x5a;
            let _ = walk_pgdump(&mut &bad[..]);
        }
        // Bytes after the last block.
        let mut more = PLAIN.to_vec();
        more.extend_from_slice(&[1, 0, 99, 0, 0, 0]);
        assert!(walk_pgdump(&mut &more[..]).is_err());
        assert!(walk_pgdump(&mut &b"SQLite format 3\0"[..]).is_err());
    }

    #[test]
    fn a_newer_format_is_said_not_walked() {
        let mut newer = PLAIN.to_vec();
        newer[6] = 20;
        let c = walk_pgdump(&mut &newer[..]).unwrap();
        assert_eq!(c.unread.as_deref(), Some("1.20.0"));
        let stats = Stats::new(StatsMode::Exact, vec![fx("fx")]);
        let line = compare(&stats, &[("fx".into(), c)]).unwrap();
        assert!(line.contains("not walked"), "{line}");
    }

    #[test]
    fn copy_lines() {
        let count = |parts: &[&[u8]]| {
            let mut l = Lines::default();
            for p in parts {
                l.feed(p);
            }
            l.finish()
        };
        assert_eq!(count(&[b"1\ta\n2\tb\n\\.\n\n\n"]), 2);
        assert_eq!(count(&[b"1\ta\n2", b"\tb\n\\", b".\n\n"]), 2);
        assert_eq!(count(&[b"\\\\.\n\\.x\n"]), 2);
        assert_eq!(count(&[b"1\n2"]), 2);
        assert_eq!(count(&[b""]), 0);
        assert_eq!(count(&[b"\\."]), 0);
    }
}
