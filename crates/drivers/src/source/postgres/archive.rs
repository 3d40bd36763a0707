//! The multi-stream layout: several dumps (the roles, and one pg_dump archive per database)
//! in one raw stream, written as they are produced, with no temp file.
//!
//! The raw stream is a POSIX tar file. Its first member, `drkit-postgres.json`, lists the
//! streams in order. Each stream is then cut into members of at most [`PART_SIZE`] bytes
//! named `<file>.<8-digit part number>` (`db-001-app.pgdump.00000000`, ...), so that a tar
//! member's size is known before its header is written. Without drkit:
//! `tar -xf data.tar && cat db-001-app.pgdump.* > app.pgdump` gives back the pg_dump
//! archive.

use std::collections::BTreeMap;

use drkit_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Name of the first member: the index of the streams.
pub const INDEX_NAME: &str = "drkit-postgres.json";
/// Format name in the index.
pub const FORMAT: &str = "drkit-postgres-tar";
/// Largest member (one part of a stream). Also the memory a writer or reader holds.
pub const PART_SIZE: usize = 1 << 20;
/// A tar block: headers and padding come in these.
pub const BLOCK: usize = 512;

/// One stream of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEntry {
    /// Base name of its members.
    pub file: String,
    /// `globals` (pg_dumpall --globals-only, SQL) or `database` (pg_dump --format=custom).
    pub kind: String,
    /// The database, for `database` streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// The first member: what follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version, 1.
    pub version: u32,
    /// Largest part, in bytes.
    pub part_size: usize,
    /// The streams, in the order they follow.
    pub streams: Vec<StreamEntry>,
}

impl Index {
    /// An index of `streams`.
    pub fn new(streams: Vec<StreamEntry>) -> Index {
        Index {
            format: FORMAT.into(),
            version: 1,
            part_size: PART_SIZE,
            streams,
        }
    }
}

/// A file name for a database's stream: `db-001-<name, made safe>.pgdump`.
pub fn database_file(index: usize, db: &str) -> String {
    let safe: String = db
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("db-{:03}-{safe}.pgdump", index + 1)
}

/// Check a stream's file name read from an archive's index before it is used as a path: it
/// must be one plain path component (not empty, no `/`, no `\\`, not `.` or `..`, no NUL, no
/// leading `-`, at most 80 bytes), so that it stays inside the staging folder.
pub fn check_file_name(name: &str) -> std::result::Result<(), String> {
    use std::path::{Component, Path};
    let why = if name.is_empty() {
        "it is empty"
    } else if name.contains('\0') {
        "it holds a NUL character"
    } else if name.contains('/') || name.contains('\\') {
        "it holds a path separator"
    } else if name.starts_with('-') {
        "it starts with -"
    } else if name.len() > 80 {
        "it is longer than drkit writes"
    } else if !matches!(
        Path::new(name).components().collect::<Vec<_>>().as_slice(),
        [Component::Normal(n)] if *n == std::ffi::OsStr::new(name)
    ) {
        "it is not a plain file name"
    } else {
        return Ok(());
    };
    Err(format!(
        "stream file name {name:?} would leave the staging folder: {why}"
    ))
}

/// The name of one part of a stream.
pub fn part_name(file: &str, part: u64) -> String {
    format!("{file}.{part:08}")
}

/// Split a member name into stream file and part number.
pub fn split_part(name: &str) -> Option<(&str, u64)> {
    let (file, part) = name.rsplit_once('.')?;
    if part.len() != 8 || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((file, part.parse().ok()?))
}

/// A ustar header for a regular file `name` of `size` bytes.
pub fn header(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK]> {
    if name.len() > 100 || size >= 1 << 33 {
        return Err(Error::source_error(format!(
            "tar member {name:?} of {size} bytes does not fit a ustar header"
        )));
    }
    let mut h = tar::Header::new_ustar();
    // Written as it is: drkit's member names are plain file names ([`part_name`]).
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(*h.as_bytes())
}

/// Read a header block: `None` for an end-of-archive (zero) block, else (name, size).
pub fn parse_header(h: &[u8; BLOCK]) -> Result<Option<(String, u64)>> {
    if h.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let bad = |why: &str| {
        Error::integrity(format!(
            "the PostgreSQL archive's tar stream is damaged: {why}"
        ))
    };
    let header = tar::Header::from_byte_slice(h);
    let stored = header
        .cksum()
        .map_err(|_| bad("unreadable header checksum"))?;
    // The checksum a tar writer would store for these bytes.
    let mut recomputed = header.clone();
    recomputed.set_cksum();
    if recomputed.cksum().ok() != Some(stored) {
        return Err(bad("header checksum mismatch"));
    }
    if &h[257..262] != b"ustar" {
        return Err(bad("not a ustar header"));
    }
    if !header.entry_type().is_file() {
        return Err(bad("a member is not a regular file"));
    }
    let field = &header.as_old().name;
    let name_len = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let name = std::str::from_utf8(&field[..name_len])
        .map_err(|_| bad("member name is not UTF-8"))?
        .to_string();
    let size = header
        .entry_size()
        .map_err(|_| bad("unreadable member size"))?;
    Ok(Some((name, size)))
}

fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Write one member.
pub async fn write_member<W: AsyncWrite + Unpin>(
    w: &mut W,
    name: &str,
    data: &[u8],
) -> std::io::Result<()> {
    let h = header(name, data.len() as u64, now_secs()).map_err(std::io::Error::other)?;
    w.write_all(&h).await?;
    w.write_all(data).await?;
    w.write_all(&[0u8; BLOCK][..padding(data.len() as u64)])
        .await
}

/// Read from `r` until `buf` is full or `r` ends; returns the bytes read.
pub async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = r.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

/// Copy all of `r` into members `<file>.00000000`, `<file>.00000001`, ... (at least one,
/// empty if `r` is). Returns the bytes copied.
pub async fn write_stream<R, W>(
    r: &mut R,
    w: &mut W,
    file: &str,
    buf: &mut Vec<u8>,
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    buf.resize(PART_SIZE, 0);
    let mut part = 0u64;
    let mut total = 0u64;
    loop {
        let n = fill(r, buf).await?;
        if n > 0 || part == 0 {
            write_member(w, &part_name(file, part), &buf[..n]).await?;
            part += 1;
            total += n as u64;
        }
        if n < buf.len() {
            return Ok(total);
        }
    }
}

/// Write the end of the archive (two zero blocks).
pub async fn write_end<W: AsyncWrite + Unpin>(w: &mut W) -> std::io::Result<()> {
    w.write_all(&[0u8; BLOCK * 2]).await
}

/// Reads members one after the other.
pub struct TarReader<R> {
    inner: R,
}

/// One member read whole (members are at most [`PART_SIZE`] bytes).
#[derive(Debug)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

impl<R: AsyncRead + Unpin> TarReader<R> {
    /// Read members from `inner`.
    pub fn new(inner: R) -> Self {
        TarReader { inner }
    }

    /// The next member, or `None` at the end of the archive. Read errors keep their kind
    /// (an integrity failure of the restore reader stays one).
    pub async fn next(&mut self) -> Result<Option<Member>> {
        let mut h = [0u8; BLOCK];
        let n = fill(&mut self.inner, &mut h).await.map_err(read_err)?;
        if n == 0 {
            return Err(Error::integrity(
                "the PostgreSQL archive ends without its end-of-archive blocks: it is truncated",
            ));
        }
        if n < BLOCK {
            return Err(Error::integrity(
                "the PostgreSQL archive ends inside a tar header: it is truncated",
            ));
        }
        let Some((name, size)) = parse_header(&h)? else {
            // Consume the rest of the stream so that the reader's own end checks run.
            let mut sink = vec![0u8; 64 * 1024];
            while fill(&mut self.inner, &mut sink).await.map_err(read_err)? > 0 {}
            return Ok(None);
        };
        if size > PART_SIZE as u64 * 4 {
            return Err(Error::integrity(format!("the PostgreSQL archive's member {name:?} is {size} bytes, larger than drkit writes")));
        }
        let mut data = vec![0u8; size as usize];
        let got = fill(&mut self.inner, &mut data).await.map_err(read_err)?;
        if got < data.len() {
            return Err(Error::integrity(format!(
                "the PostgreSQL archive ends inside member {name:?}: it is truncated"
            )));
        }
        let mut pad = [0u8; BLOCK];
        let p = padding(size);
        if fill(&mut self.inner, &mut pad[..p])
            .await
            .map_err(read_err)?
            < p
        {
            return Err(Error::integrity(format!(
                "the PostgreSQL archive ends after member {name:?}: it is truncated"
            )));
        }
        Ok(Some(Member { name, data }))
    }
}

fn read_err(e: std::io::Error) -> Error {
    drkit_core::from_io(e, drkit_core::ErrorKind::Storage, "reading the archive")
}

/// Checks that members come in the index's order, each stream's parts numbered from 0 with no
/// gap, and says which stream a member belongs to.
pub struct Sequence {
    order: BTreeMap<String, usize>,
    current: Option<(usize, u64)>,
}

impl Sequence {
    /// Follow `index`.
    pub fn new(index: &Index) -> Sequence {
        let order = index
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| (s.file.clone(), i))
            .collect();
        Sequence {
            order,
            current: None,
        }
    }

    /// The stream index of member `name`, and whether it starts that stream.
    pub fn next(&mut self, name: &str) -> Result<(usize, bool)> {
        let bad =
            |why: String| Error::integrity(format!("the PostgreSQL archive is damaged: {why}"));
        let (file, part) =
            split_part(name).ok_or_else(|| bad(format!("unexpected member {name:?}")))?;
        let &i = self
            .order
            .get(file)
            .ok_or_else(|| bad(format!("member {name:?} belongs to no listed stream")))?;
        let (starts, ok) = match self.current {
            Some((ci, cp)) if ci == i => (false, part == cp + 1),
            Some((ci, _)) => (true, i > ci && part == 0),
            None => (true, part == 0),
        };
        if !ok {
            return Err(bad(format!("member {name:?} is out of order")));
        }
        self.current = Some((i, part));
        Ok((i, starts))
    }

    /// Streams started so far.
    pub fn started(&self) -> usize {
        self.current.map(|(i, _)| i + 1).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_what_tar_reads_and_reads_it_back() {
        let index = Index::new(vec![
            StreamEntry {
                file: "globals.sql".into(),
                kind: "globals".into(),
                database: None,
            },
            StreamEntry {
                file: database_file(0, "my app/1"),
                kind: "database".into(),
                database: Some("my app/1".into()),
            },
        ]);
        let big: Vec<u8> = (0..PART_SIZE * 2 + 1234)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut out = Vec::new();
        write_member(&mut out, INDEX_NAME, &serde_json::to_vec(&index).unwrap())
            .await
            .unwrap();
        let mut buf = Vec::new();
        write_stream(
            &mut &b"CREATE ROLE x;\n"[..],
            &mut out,
            "globals.sql",
            &mut buf,
        )
        .await
        .unwrap();
        let n = write_stream(&mut &big[..], &mut out, &index.streams[1].file, &mut buf)
            .await
            .unwrap();
        assert_eq!(n, big.len() as u64);
        write_end(&mut out).await.unwrap();
        assert_eq!(out.len() % BLOCK, 0);

        // The system tar lists what we wrote.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tar");
        std::fs::write(&path, &out).unwrap();
        let listed = std::process::Command::new("tar")
            .arg("-tf")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        let names = String::from_utf8(listed.stdout).unwrap();
        assert_eq!(
            names.lines().collect::<Vec<_>>(),
            vec![
                INDEX_NAME,
                "globals.sql.00000000",
                "db-001-my_app_1.pgdump.00000000",
                "db-001-my_app_1.pgdump.00000001",
                "db-001-my_app_1.pgdump.00000002"
            ]
        );

        let mut r = TarReader::new(&out[..]);
        let first = r.next().await.unwrap().unwrap();
        assert_eq!(first.name, INDEX_NAME);
        let back: Index = serde_json::from_slice(&first.data).unwrap();
        assert_eq!(back, index);
        let mut seq = Sequence::new(&back);
        let mut rebuilt = Vec::new();
        let mut starts = Vec::new();
        while let Some(m) = r.next().await.unwrap() {
            let (i, s) = seq.next(&m.name).unwrap();
            starts.push((i, s));
            if i == 1 {
                rebuilt.extend_from_slice(&m.data);
            }
        }
        assert_eq!(rebuilt, big);
        assert_eq!(starts, vec![(0, true), (1, true), (1, false), (1, false)]);
    }

    #[tokio::test]
    async fn truncation_and_damage_are_integrity_errors() {
        let mut out = Vec::new();
        write_member(&mut out, "a.00000000", b"hello")
            .await
            .unwrap();
        write_end(&mut out).await.unwrap();
        for cut in [0, 100, 512, 515] {
            let mut r = TarReader::new(&out[..cut]);
            let e = loop {
                match r.next().await {
                    Err(e) => break e,
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("truncated at {cut} read as complete"),
                }
            };
            assert_eq!(e.kind(), drkit_core::ErrorKind::Integrity, "cut {cut}");
        }
        let mut bad = out.clone();
        bad[3] ^= 1;
        assert_eq!(
            TarReader::new(&bad[..]).next().await.unwrap_err().kind(),
            drkit_core::ErrorKind::Integrity
        );
    }

    #[test]
    fn file_names_stay_in_the_staging_folder() {
        for ok in [
            "globals.sql",
            "db-001-app.pgdump",
            &database_file(3, "../../etc"),
        ] {
            assert_eq!(check_file_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "../../x",
            "/tmp/victim",
            "a/b",
            "a/",
            "a\\b",
            "x\0y",
            "-rf",
            "--dbname=evil",
            &"a".repeat(81),
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sequence_rules() {
        let index = Index::new(vec![
            StreamEntry {
                file: "a".into(),
                kind: "globals".into(),
                database: None,
            },
            StreamEntry {
                file: "b".into(),
                kind: "database".into(),
                database: Some("b".into()),
            },
        ]);
        let run = |names: &[&str]| {
            let mut s = Sequence::new(&index);
            names.iter().try_for_each(|n| s.next(n).map(|_| ()))
        };
        assert!(run(&["a.00000000", "a.00000001", "b.00000000"]).is_ok());
        assert!(run(&["b.00000000"]).is_ok());
        assert!(run(&["a.00000001"]).is_err());
        assert!(run(&["a.00000000", "a.00000002"]).is_err());
        assert!(run(&["b.00000000", "a.00000000"]).is_err());
        assert!(run(&["c.00000000"]).is_err());
        assert!(run(&["junk"]).is_err());
        assert_eq!(split_part("x.pgdump.00000012"), Some(("x.pgdump", 12)));
    }
}
