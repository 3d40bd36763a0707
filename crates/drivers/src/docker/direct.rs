//! Reading a volume's directory directly, when the engine is local: the same tar stream the
//! engine's archive endpoint sends (entry order, types, modes, owners, mtimes, the
//! `security.capability` xattr, hard links), written by drkit from the volume's `Mountpoint`
//! without the daemon's archiver and its HTTP stream in between.
//!
//! - Whether it can: [`choose`] (pure) over the [`Facts`] that [`gather`] collects: the
//!   engine reached over a unix socket by a daemon in this mount namespace, no rootless or
//!   userns-remapped engine (its owners differ from the files'), the `local` driver without
//!   mount options (an NFS or bind volume is mounted only while a container uses it), the
//!   mountpoint where the engine keeps its volumes, and openable by this process.
//! - The walk ([`write_volume`]) is our own over `openat`, not `walkdir`: every directory and
//!   file is opened relative to its parent's descriptor with `O_NOFOLLOW`, so a symbolic link
//!   swapped in by a running container is never followed and nothing outside the mountpoint
//!   is read (a path-based walker re-resolves every path from the top). Names are sorted by
//!   bytes in each directory, as Go's `filepath.Walk` does; memory holds the names of the
//!   directories on the current path and of the files seen with several links, never file
//!   content beyond one chunk.
//! - The headers ([`header`]) are our own too: the `tar` crate writes its checksum and
//!   numeric fields differently from Go's `archive/tar` (which the engine uses), and the
//!   stream should read like the engine's. Each field is formatted as Go formats it; PAX
//!   records carry what USTAR cannot (long or non-ASCII names, big owners and sizes,
//!   negative times, xattrs).

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use drkit_core::{Error, Result};
use rustix::fs::{AtFlags, FileType, Mode as FsMode, OFlags, Stat};
use serde::Deserialize;

use super::tar::{Finished, Mode, Scanner};
use super::Engine;

const BLOCK: usize = 512;
/// Bytes handed to the pipeline at a time.
const CHUNK: usize = 256 * 1024;
/// Chunks read ahead of the pipeline (at most `CHUNK * AHEAD` bytes in flight).
const AHEAD: usize = 16;
/// The one xattr the engine's archiver reads.
const CAPABILITY: &str = "security.capability";

/// How a docker-volume source reads the volume (`mode` in its `source` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// Directly when it can ([`choose`]), else through the engine.
    #[default]
    Auto,
    /// Directly; a clear error when it cannot.
    Direct,
    /// Always through the engine's archive endpoint.
    Engine,
}

/// What decides whether a volume can be read directly. `None` means "fine".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Why the engine is not local (a unix socket whose daemon shares this mount namespace).
    pub not_local: Option<String>,
    /// The engine remaps owners (rootless, userns-remap): its archive's owners are not the
    /// files' owners on disk.
    pub remapped: Option<String>,
    /// The volume's driver.
    pub driver: String,
    /// The volume's driver options (a `local` volume with options is a mount: NFS, bind).
    pub options: Vec<String>,
    /// What is wrong with the reported mountpoint (not where the engine keeps volumes).
    pub mountpoint: Option<String>,
    /// Why the mountpoint cannot be opened by this process.
    pub unreadable: Option<String>,
    /// Whether this process runs as root (`auto` reads directly only then: files of any
    /// owner must be readable).
    pub root: bool,
}

/// Which way a backup reads the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// From the mountpoint.
    Direct,
    /// Through the engine's archive endpoint; with `mode = "auto"`, why not directly.
    Engine(Option<String>),
}

/// The decision table: `mode` and the facts -> the route, or (with `mode = "direct"`) why it
/// cannot.
pub fn choose(mode: ReadMode, f: &Facts) -> std::result::Result<Route, String> {
    if mode == ReadMode::Engine {
        return Ok(Route::Engine(None));
    }
    let why = f
        .not_local
        .clone()
        .or_else(|| f.remapped.clone())
        .or_else(|| {
            (f.driver != "local").then(|| {
                format!(
                    "its driver is {:?}, not \"local\": only the engine can read it",
                    f.driver
                )
            })
        })
        .or_else(|| {
            (!f.options.is_empty()).then(|| {
                format!(
                    "it is a local volume with mount options ({}): its data is mounted only while a container uses it",
                    f.options.join(", ")
                )
            })
        })
        .or_else(|| f.mountpoint.clone())
        .or_else(|| f.unreadable.clone());
    match (why, mode) {
        (None, ReadMode::Auto) if !f.root => Ok(Route::Engine(Some(
            "drkit does not run as root, and the volume's files may belong to anyone".into(),
        ))),
        (None, _) => Ok(Route::Direct),
        (Some(why), ReadMode::Auto) => Ok(Route::Engine(Some(why))),
        (Some(why), _) => Err(why),
    }
}

/// Collect the [`Facts`] about volume `name` on `engine`; with them the mountpoint's
/// directory, opened, when it could be.
pub async fn gather(engine: &Engine, name: &str) -> Result<(Facts, Option<OwnedFd>)> {
    let mut facts = Facts {
        root: rustix::process::geteuid().is_root(),
        not_local: local_engine(&engine.address).err(),
        ..Default::default()
    };
    let info = engine
        .api()
        .info()
        .await
        .map_err(|e| super::engine_error(e, "asking the engine how it runs"))?;
    let options = info.security_options.unwrap_or_default();
    facts.remapped = options
        .iter()
        .find(|o| o.contains("name=rootless") || o.contains("name=userns"))
        .map(|o| {
            format!("the engine remaps owners ({o}): its archive's owners are not those on disk")
        });
    let vol = engine
        .api()
        .inspect_volume(name)
        .await
        .map_err(|e| super::engine_error(e, format!("inspecting volume {name}")))?;
    facts.driver = vol.driver.clone();
    facts.options = vol.options.keys().cloned().collect();
    facts.options.sort();
    let root_dir = info.docker_root_dir.unwrap_or_default();
    facts.mountpoint = mountpoint_problem(&vol.mountpoint, &root_dir, name);
    if facts.not_local.is_some() || facts.mountpoint.is_some() {
        return Ok((facts, None));
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(
        rustix::fs::CWD,
        vol.mountpoint.as_str(),
        flags,
        FsMode::empty(),
    ) {
        Ok(fd) => Ok((facts, Some(fd))),
        Err(e) => {
            facts.unreadable = Some(format!(
                "its directory {} cannot be opened by this process ({e})",
                vol.mountpoint
            ));
            Ok((facts, None))
        }
    }
}

/// Whether `mountpoint` is where an engine with root directory `root_dir` keeps the local
/// volume `name` (`<root>/volumes/<name>/_data`); else what is wrong.
pub fn mountpoint_problem(mountpoint: &str, root_dir: &str, name: &str) -> Option<String> {
    if mountpoint.is_empty() {
        return Some("the engine reports no mountpoint for it".into());
    }
    let want = format!("{}/volumes/{name}/_data", root_dir.trim_end_matches('/'));
    (root_dir.is_empty() || !root_dir.starts_with('/') || mountpoint != want).then(|| {
        format!("its mountpoint {mountpoint:?} is not where the engine keeps volumes ({want:?})")
    })
}

/// `Ok` when `address` is a unix socket whose daemon runs in this process's mount
/// namespace (so the mountpoint it reports is the same directory here); else why not.
fn local_engine(address: &str) -> std::result::Result<(), String> {
    let Some(path) = address.strip_prefix("unix://") else {
        return Err(format!(
            "the engine at {} is remote: its volumes are not on this machine",
            drkit_core::redact_url(address)
        ));
    };
    let stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| format!("cannot connect to {path} to see who serves it ({e})"))?;
    let cred = rustix::net::sockopt::socket_peercred(&stream)
        .map_err(|e| format!("cannot tell which process serves {path} ({e})"))?;
    let pid = rustix::process::Pid::as_raw(Some(cred.pid));
    if pid <= 0 {
        return Err(format!(
            "the process serving {path} is not visible here (another PID namespace)"
        ));
    }
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt"));
    match (ns("self"), ns(&pid.to_string())) {
        (Ok(a), Ok(b)) if a == b => Ok(()),
        (Ok(_), Ok(_)) => Err(format!(
            "the engine serving {path} runs in another mount namespace (drkit in a container?): its mountpoints are not this process's paths"
        )),
        (_, Err(e)) | (Err(e), _) => Err(format!(
            "cannot tell whether the engine serving {path} shares this mount namespace ({e})"
        )),
    }
}

/// The volume's tar stream, written on a blocking thread from the mountpoint `root` and
/// scanned on the way (stats and digest, as for the engine's stream): chunks arrive on the
/// returned channel; at its end, `slot` holds the scan, `notes` what was left out.
pub fn start(
    root: OwnedFd,
    volume: String,
    slot: Arc<Mutex<Option<Finished>>>,
    notes: Arc<Mutex<Vec<String>>>,
) -> tokio::sync::mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut scanner = Scanner::new(Mode::Observe);
        let mut skipped = Vec::new();
        let mut emit = |chunk: Vec<u8>| -> std::io::Result<()> {
            scanner.feed(&chunk, None).map_err(|e| {
                std::io::Error::from(Error::source_error(format!(
                    "volume {volume}: drkit wrote an archive it cannot read back: {e}"
                )))
            })?;
            tx.blocking_send(Ok(Bytes::from(chunk)))
                .map_err(|_| std::io::Error::other("the backup stopped reading the volume"))
        };
        let written = write_volume(&root, &mut emit, &mut skipped);
        let result = written.map_err(|e| {
            std::io::Error::from(Error::source_error(format!("volume {volume}: {e}")))
        });
        match result.and_then(|()| {
            scanner.finish().map_err(|e| {
                std::io::Error::from(Error::source_error(format!("volume {volume}: {e}")))
            })
        }) {
            Ok(f) => {
                *slot.lock().expect("lock") = Some(f);
                *notes.lock().expect("lock") = skipped;
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    rx
}

/// One entry of the archive, as the engine's archiver would describe it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    /// The archive path (`./a/b`, `./dir/`), bytes as on disk.
    pub path: Vec<u8>,
    /// `b'0'`, `b'1'`, `b'2'`, `b'3'`, `b'4'`, `b'5'`, `b'6'`.
    pub typeflag: u8,
    /// `st_mode`'s permission and type bits, as Go's archiver writes them.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Content bytes (regular files).
    pub size: u64,
    /// Modification time, whole seconds.
    pub mtime: i64,
    /// Link target (symbolic and hard links).
    pub link: Vec<u8>,
    /// Device numbers (character and block devices).
    pub dev: (u32, u32),
    /// Extended attributes (`security.capability` only, as the engine).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Largest values of the USTAR octal fields (8 and 12 bytes with their NUL).
const MAX_ID: u64 = 0o7777777;
const MAX_SIZE: u64 = 0o77777777777;

/// The header blocks of `h`: a PAX extended header first when USTAR cannot hold a field
/// (as Go's writer decides: a name or link over 100 bytes or not ASCII, an owner, size or
/// time out of the octal range, an xattr), then the USTAR block.
pub fn header(h: &Header) -> Vec<u8> {
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    let long = |v: &[u8]| v.len() > 100 || !v.is_ascii();
    if long(&h.path) {
        pax.push(("path".into(), h.path.clone()));
    }
    if long(&h.link) {
        pax.push(("linkpath".into(), h.link.clone()));
    }
    if h.uid > MAX_ID {
        pax.push(("uid".into(), h.uid.to_string().into_bytes()));
    }
    if h.gid > MAX_ID {
        pax.push(("gid".into(), h.gid.to_string().into_bytes()));
    }
    if h.size > MAX_SIZE {
        pax.push(("size".into(), h.size.to_string().into_bytes()));
    }
    if h.mtime < 0 || h.mtime as u64 > MAX_SIZE {
        pax.push(("mtime".into(), h.mtime.to_string().into_bytes()));
    }
    for (k, v) in &h.xattrs {
        pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
    }
    pax.sort();
    let mut out = Vec::with_capacity(3 * BLOCK);
    if !pax.is_empty() {
        let mut body = Vec::new();
        for (k, v) in &pax {
            body.extend_from_slice(&pax_record(k, v));
        }
        let mut name = pax_name(&h.path);
        name.truncate(100);
        while name.last() == Some(&b'/') {
            name.pop();
        }
        let mut b = [0u8; BLOCK];
        put_bytes(&mut b[0..100], &name);
        octal(&mut b[100..108], 0);
        octal(&mut b[108..116], 0);
        octal(&mut b[116..124], 0);
        octal(&mut b[124..136], body.len() as u64);
        octal(&mut b[136..148], 0);
        b[156] = b'x';
        ustar_tail(&mut b);
        out.extend_from_slice(&b);
        out.extend_from_slice(&body);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    let mut b = [0u8; BLOCK];
    put_bytes(&mut b[0..100], &h.path);
    octal(&mut b[100..108], h.mode as u64);
    octal(&mut b[108..116], if h.uid > MAX_ID { 0 } else { h.uid });
    octal(&mut b[116..124], if h.gid > MAX_ID { 0 } else { h.gid });
    octal(&mut b[124..136], if h.size > MAX_SIZE { 0 } else { h.size });
    let mtime = u64::try_from(h.mtime).ok().filter(|&t| t <= MAX_SIZE);
    octal(&mut b[136..148], mtime.unwrap_or(0));
    b[156] = h.typeflag;
    put_bytes(&mut b[157..257], &h.link);
    octal(&mut b[329..337], h.dev.0 as u64);
    octal(&mut b[337..345], h.dev.1 as u64);
    ustar_tail(&mut b);
    out.extend_from_slice(&b);
    out
}

/// Magic, version and checksum (as Go: six octal digits, NUL, space).
fn ustar_tail(b: &mut [u8; BLOCK]) {
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b[148..156].copy_from_slice(b"        ");
    let sum: u64 = b.iter().map(|&c| c as u64).sum();
    octal(&mut b[148..155], sum);
    b[155] = b' ';
}

/// Go's `formatOctal`: zero-padded to the field's width less one, then a NUL. Values that
/// do not fit are written as 0 (their PAX record holds them).
fn octal(field: &mut [u8], v: u64) {
    let width = field.len() - 1;
    let text = format!("{v:0width$o}");
    let text = if text.len() > width {
        "0".repeat(width)
    } else {
        text
    };
    field[..width].copy_from_slice(text.as_bytes());
    field[width] = 0;
}

/// A name field: as many bytes as fit (a PAX record holds the whole name when it is longer).
fn put_bytes(field: &mut [u8], v: &[u8]) {
    let n = v.len().min(field.len());
    field[..n].copy_from_slice(&v[..n]);
}

/// `"%d %s=%s\n"`, the length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3;
    let mut len = base + base.to_string().len();
    if len.to_string().len() != base.to_string().len() {
        len = base + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// The name of the PAX header of the entry at `path`, as Go's writer makes it:
/// `path.Join(dir, "PaxHeaders.0", file)` (which drops a leading `./`), ASCII only.
fn pax_name(path: &[u8]) -> Vec<u8> {
    let (dir, file) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => (&b""[..], path),
    };
    let mut dir = dir;
    while let Some(rest) = dir.strip_prefix(b"./") {
        dir = rest;
    }
    let mut name = [dir, b"PaxHeaders.0"].concat();
    if !file.is_empty() {
        name.push(b'/');
        name.extend_from_slice(file);
    }
    name.retain(|b| b.is_ascii() && *b != 0);
    name
}

/// The header of an entry from its `stat` (as Go's `FileInfoHeader`: mode with its type
/// bits, owner, whole-second mtime, device numbers), at archive path `path`.
// `stat`'s field types differ between architectures: the conversions are no-ops only here.
#[allow(clippy::useless_conversion)]
pub fn from_stat(path: Vec<u8>, st: &Stat, typeflag: u8) -> Header {
    let is_dev = matches!(typeflag, b'3' | b'4');
    Header {
        path,
        typeflag,
        mode: st.st_mode & 0o177777,
        uid: u64::from(st.st_uid),
        gid: u64::from(st.st_gid),
        size: 0,
        mtime: i64::from(st.st_mtime),
        link: Vec::new(),
        dev: if is_dev {
            let rdev = u64::from(st.st_rdev);
            (rustix::fs::major(rdev), rustix::fs::minor(rdev))
        } else {
            (0, 0)
        },
        xattrs: Vec::new(),
    }
}

/// Where the tar goes: a chunk buffer handed to `emit` when full.
struct Out<'a> {
    buf: Vec<u8>,
    len: usize,
    emit: &'a mut dyn FnMut(Vec<u8>) -> std::io::Result<()>,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut bytes = bytes;
        while !bytes.is_empty() {
            let n = (CHUNK - self.len).min(bytes.len());
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            self.flush_full()?;
        }
        Ok(())
    }

    fn flush_full(&mut self) -> std::io::Result<()> {
        if self.len == CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.len > 0 {
            let mut full = std::mem::replace(&mut self.buf, vec![0u8; CHUNK]);
            full.truncate(self.len);
            self.len = 0;
            (self.emit)(full)?;
        }
        Ok(())
    }

    /// Exactly `size` bytes of `file`, read straight into the chunk, then the padding.
    /// A file that grew is cut at `size` (as the engine's writer); one that shrank is an
    /// error naming `path`.
    fn copy(
        &mut self,
        file: &mut std::fs::File,
        size: u64,
        path: &[u8],
    ) -> std::result::Result<(), WalkError> {
        let bad = |what: String| WalkError::Entry(format!("{} {what}", shown(path)));
        let mut left = size;
        while left > 0 {
            let room = ((CHUNK - self.len) as u64).min(left) as usize;
            let n = loop {
                match file.read(&mut self.buf[self.len..self.len + room]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(bad(format!("cannot be read ({e})"))),
                }
            };
            if n == 0 {
                return Err(bad(format!(
                    "shrank while it was read ({} of {size} bytes): it is being written; set stop_containers = true for a consistent copy",
                    size - left
                )));
            }
            self.len += n;
            left -= n as u64;
            self.flush_full()?;
        }
        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        Ok(self.put(&[0u8; BLOCK][..pad])?)
    }
}

/// An error of the walk: the entry's path and what went wrong (or the sink's error).
#[derive(Debug)]
pub enum WalkError {
    /// An entry could not be read.
    Entry(String),
    /// The receiving end failed or went away.
    Sink(std::io::Error),
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::Entry(m) => write!(f, "{m}"),
            WalkError::Sink(e) => write!(f, "{e}"),
        }
    }
}

impl From<std::io::Error> for WalkError {
    fn from(e: std::io::Error) -> Self {
        WalkError::Sink(e)
    }
}

/// One directory being walked: its descriptor and the names still to visit.
struct Level {
    dir: OwnedFd,
    names: std::vec::IntoIter<CString>,
    prefix: Vec<u8>,
}

/// The names in directory `dir`, sorted by bytes (as Go's `filepath.Walk`).
pub(crate) fn names(dir: &OwnedFd) -> std::io::Result<Vec<CString>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        out.push(name.to_owned());
    }
    out.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(out)
}

/// A path for messages: quoted, never raw bytes of a hostile name.
pub(crate) fn shown(path: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(path))
}

/// The `security.capability` of an open file or directory, as the engine reads it.
fn capability(fd: &OwnedFd) -> Vec<(String, Vec<u8>)> {
    let mut buf = [0u8; 256];
    match rustix::fs::fgetxattr(fd, CAPABILITY, &mut buf[..]) {
        Ok(n) => vec![(CAPABILITY.to_string(), buf[..n].to_vec())],
        Err(_) => Vec::new(), // none (ENODATA), or not supported here: the engine's too
    }
}

/// Write the tar of the directory `root` (the volume's root, as `./`) to `emit`, in the
/// engine's order and form. Sockets are left out, as the engine leaves them out (Go's
/// archiver cannot write them); their paths are added to `skipped`.
// `stat`'s field types differ between architectures: the conversions are no-ops only here.
#[allow(clippy::useless_conversion)]
pub fn write_volume(
    root: &OwnedFd,
    emit: &mut dyn FnMut(Vec<u8>) -> std::io::Result<()>,
    skipped: &mut Vec<String>,
) -> std::result::Result<(), WalkError> {
    let mut out = Out {
        buf: vec![0u8; CHUNK],
        len: 0,
        emit,
    };
    let entry_err = |path: &[u8], what: String| WalkError::Entry(format!("{} {what}", shown(path)));
    let st =
        rustix::fs::fstat(root).map_err(|e| entry_err(b"./", format!("cannot be read ({e})")))?;
    let mut h = from_stat(b"./".to_vec(), &st, b'5');
    h.xattrs = capability(root);
    out.put(&header(&h))?;
    let first = rustix::fs::openat(
        root,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        FsMode::empty(),
    )
    .map_err(|e| entry_err(b"./", format!("cannot be opened ({e})")))?;
    let list = names(&first).map_err(|e| entry_err(b"./", format!("cannot be listed ({e})")))?;
    let mut stack = vec![Level {
        dir: first,
        names: list.into_iter(),
        prefix: b"./".to_vec(),
    }];
    // Files with several links: the first archive path of each (device, inode).
    let mut seen: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    while let Some(level) = stack.last_mut() {
        let Some(name) = level.names.next() else {
            stack.pop();
            continue;
        };
        let path = [level.prefix.as_slice(), name.as_bytes()].concat();
        let dir = &level.dir;
        let st = match rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed since the directory was listed (a running container): as if never there.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(entry_err(&path, format!("cannot be read ({e})"))),
        };
        let kind = FileType::from_raw_mode(st.st_mode as _);
        if kind == FileType::Directory {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let sub =
                rustix::fs::openat(dir, name.as_c_str(), flags, FsMode::empty()).map_err(|e| {
                    entry_err(
                        &path,
                        format!(
                            "cannot be opened ({e}); it may have been replaced while it was read"
                        ),
                    )
                })?;
            let st = rustix::fs::fstat(&sub)
                .map_err(|e| entry_err(&path, format!("cannot be read ({e})")))?;
            let list =
                names(&sub).map_err(|e| entry_err(&path, format!("cannot be listed ({e})")))?;
            let mut dir_path = path;
            dir_path.push(b'/');
            let mut h = from_stat(dir_path.clone(), &st, b'5');
            h.xattrs = capability(&sub);
            out.put(&header(&h))?;
            stack.push(Level {
                dir: sub,
                names: list.into_iter(),
                prefix: dir_path,
            });
            continue;
        }
        if kind == FileType::Socket {
            skipped.push(String::from_utf8_lossy(&path).into_owned());
            continue;
        }
        // As Go's archiver: anything but a directory with several links is a hard link to
        // the first path it was archived at.
        let linked = u64::from(st.st_nlink) > 1;
        let key = (u64::from(st.st_dev), u64::from(st.st_ino));
        if linked {
            if let Some(first) = seen.get(&key) {
                let mut h = from_stat(path, &st, b'1');
                h.link = first.clone();
                out.put(&header(&h))?;
                continue;
            }
        }
        match kind {
            FileType::RegularFile => {
                let flags = OFlags::RDONLY
                    | OFlags::NOFOLLOW
                    | OFlags::NONBLOCK
                    | OFlags::NOCTTY
                    | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(dir, name.as_c_str(), flags, FsMode::empty())
                    .map_err(|e| entry_err(&path, format!("cannot be opened ({e})")))?;
                let st = rustix::fs::fstat(&fd)
                    .map_err(|e| entry_err(&path, format!("cannot be read ({e})")))?;
                if FileType::from_raw_mode(st.st_mode as _) != FileType::RegularFile {
                    return Err(entry_err(&path, "was replaced while it was read; set stop_containers = true for a consistent copy".into()));
                }
                let mut h = from_stat(path.clone(), &st, b'0');
                h.size = st.st_size as u64;
                h.xattrs = capability(&fd);
                out.put(&header(&h))?;
                let mut file = std::fs::File::from(fd);
                out.copy(&mut file, h.size, &path)?;
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, name.as_c_str(), Vec::new())
                    .map_err(|e| entry_err(&path, format!("cannot be read ({e})")))?;
                let mut h = from_stat(path.clone(), &st, b'2');
                h.link = target.into_bytes();
                out.put(&header(&h))?;
            }
            FileType::Fifo => out.put(&header(&from_stat(path.clone(), &st, b'6')))?,
            FileType::CharacterDevice => out.put(&header(&from_stat(path.clone(), &st, b'3')))?,
            FileType::BlockDevice => out.put(&header(&from_stat(path.clone(), &st, b'4')))?,
            _ => {
                skipped.push(String::from_utf8_lossy(&path).into_owned());
                continue;
            }
        }
        if linked {
            seen.insert(key, path);
        }
    }
    out.put(&[0u8; 2 * BLOCK])?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(path: &str, typeflag: u8, mode: u32, uid: u64, gid: u64, size: u64, mtime: i64) -> Header {
        Header {
            path: path.as_bytes().to_vec(),
            typeflag,
            mode,
            uid,
            gid,
            size,
            mtime,
            ..Default::default()
        }
    }

    /// The checksum field of the last (the entry's) block, and of the PAX block before it.
    fn checksums(blocks: &[u8]) -> Vec<String> {
        blocks
            .chunks(BLOCK)
            .filter(|b| b[257..263] == *b"ustar\0")
            .map(|b| String::from_utf8_lossy(&b[148..156]).into_owned())
            .collect()
    }

    #[test]
    fn headers_match_the_engines_blocks() {
        // Checksums of the blocks Engine 20.10's archive endpoint wrote for the same entries
        // (its uname/gname fields were empty for these owners): equal sums of the same
        // fields, formatted as Go formats them.
        let cases: Vec<(Header, Vec<&str>)> = vec![
            (
                h("./", b'5', 0o40750, 70, 70, 0, 1_546_300_800),
                vec!["007415\0 "],
            ),
            (
                h("./a.txt", b'0', 0o100640, 1234, 567, 6, 1_580_702_706),
                vec!["010417\0 "],
            ),
            // An owner over the octal range: a PAX uid record, 0 in the field.
            (
                h("./empty", b'0', 0o100644, 4_000_000, 5, 0, 1_796_415_688),
                vec!["011300\0 ", "010450\0 "],
            ),
        ];
        for (hd, want) in cases {
            let blocks = header(&hd);
            assert_eq!(
                checksums(&blocks),
                want,
                "{:?}",
                String::from_utf8_lossy(&hd.path)
            );
        }
        let mut hard = h("./hard", b'1', 0o100640, 1234, 567, 0, 1_580_702_706);
        hard.link = b"./a.txt".to_vec();
        assert_eq!(checksums(&header(&hard)), ["011406\0 "]);
        let fifo = h("./fifo", b'6', 0o10644, 0, 0, 0, 1_796_415_688);
        let b = header(&fifo);
        assert_eq!(&b[100..108], b"0010644\0");
        assert_eq!(&b[329..345], b"0000000\x000000000\0");
    }

    #[test]
    fn headers_of_each_entry_type_read_back_as_written() {
        let mut dev = h("./tty", b'3', 0o20620, 0, 5, 0, 1);
        dev.dev = (136, 3);
        let mut link = h("./l", b'2', 0o120777, 0, 0, 0, 1);
        link.link = b"a".to_vec();
        let long = format!("./{}", "n".repeat(150));
        let mut long_link = h("./ll", b'2', 0o120777, 0, 0, 0, 1);
        long_link.link = "t".repeat(120).into_bytes();
        let mut cap = h("./cap", b'0', 0o100755, 0, 0, 0, -5);
        cap.xattrs = vec![(CAPABILITY.into(), vec![1, 0, 0, 2])];
        let entries = [
            h("./", b'5', 0o40755, 0, 0, 0, 1),
            h("./d/", b'5', 0o40700, 1, 2, 0, 2),
            h("./ünï", b'0', 0o100644, 0, 0, 0, 3),
            h(&long, b'0', 0o100644, 0, 0, 0, 4),
            link,
            long_link,
            dev,
            h("./p", b'6', 0o10600, 0, 0, 0, 5),
            cap,
        ];
        let mut a = Vec::new();
        for e in &entries {
            a.extend_from_slice(&header(e));
        }
        a.resize(a.len() + 2 * BLOCK, 0);
        let mut s = Scanner::new(Mode::Observe);
        s.feed(&a, None).unwrap();
        let f = s.finish().unwrap();
        assert_eq!(
            (
                f.stats.entries,
                f.stats.files,
                f.stats.dirs,
                f.stats.symlinks,
                f.stats.other
            ),
            (8, 3, 1, 2, 2)
        );
        // The device is one a restore refuses: its path is what the archive named.
        assert!(f.refusal().unwrap().contains("./tty"), "{:?}", f.refusal());
        // PAX records carry the long and non-ASCII names, the long link, the xattr and the
        // negative time.
        let text = String::from_utf8_lossy(&a);
        for want in [
            "path=./ünï\n",
            &format!("path={long}\n"),
            &format!("linkpath={}\n", "t".repeat(120)),
            "SCHILY.xattr.security.capability=",
            "mtime=-5\n",
        ] {
            assert!(text.contains(want), "{want}");
        }
        assert_eq!(pax_name(b"./deep/x.txt"), b"deep/PaxHeaders.0/x.txt");
        assert_eq!(pax_name("./ünïcode/".as_bytes()), b"ncode/PaxHeaders.0");
        assert_eq!(pax_record("uid", b"4000000"), b"15 uid=4000000\n");
        assert_eq!(pax_record("k", &[b'v'; 5]), b"11 k=vvvvv\n");
        let r = pax_record("path", &[b'x'; 93]); // 3 + 4 + 93 + 2 digits: 102, 3 digits
        assert_eq!(&r[..4], b"103 ");
        assert_eq!(r.len(), 103);
    }

    #[test]
    fn mode_decision_table() {
        let ok = Facts {
            driver: "local".into(),
            root: true,
            ..Default::default()
        };
        let with = |f: &dyn Fn(&mut Facts)| {
            let mut x = ok.clone();
            f(&mut x);
            x
        };
        let remote = with(&|f| f.not_local = Some("the engine at tcp://h:2375 is remote".into()));
        let rootless =
            with(&|f| f.remapped = Some("the engine remaps owners (name=rootless)".into()));
        let nfs = with(&|f| f.driver = "rexray".into());
        let options = with(&|f| f.options = vec!["device".into(), "o".into(), "type".into()]);
        let elsewhere = with(&|f| f.mountpoint = Some("its mountpoint \"/x\" is not where".into()));
        let denied =
            with(&|f| f.unreadable = Some("cannot be opened by this process (EACCES)".into()));
        let user = with(&|f| f.root = false);
        use ReadMode::*;
        let cases: Vec<(&str, &Facts, ReadMode, std::result::Result<Route, &str>)> = vec![
            ("local root", &ok, Auto, Ok(Route::Direct)),
            ("local root", &ok, Direct, Ok(Route::Direct)),
            ("local root", &ok, Engine, Ok(Route::Engine(None))),
            (
                "remote",
                &remote,
                Auto,
                Ok(Route::Engine(Some("remote".into()))),
            ),
            ("remote", &remote, Direct, Err("remote")),
            ("remote", &remote, Engine, Ok(Route::Engine(None))),
            (
                "rootless",
                &rootless,
                Auto,
                Ok(Route::Engine(Some("rootless".into()))),
            ),
            ("rootless", &rootless, Direct, Err("rootless")),
            (
                "driver",
                &nfs,
                Auto,
                Ok(Route::Engine(Some("rexray".into()))),
            ),
            ("driver", &nfs, Direct, Err("not \"local\"")),
            (
                "options",
                &options,
                Auto,
                Ok(Route::Engine(Some("device, o, type".into()))),
            ),
            ("options", &options, Direct, Err("mounted only while")),
            ("mountpoint", &elsewhere, Direct, Err("not where")),
            (
                "permission",
                &denied,
                Auto,
                Ok(Route::Engine(Some("EACCES".into()))),
            ),
            ("permission", &denied, Direct, Err("EACCES")),
            (
                "not root",
                &user,
                Auto,
                Ok(Route::Engine(Some("not run as root".into()))),
            ),
            ("not root", &user, Direct, Ok(Route::Direct)),
        ];
        for (what, facts, mode, want) in cases {
            let got = choose(mode, facts);
            match (&got, &want) {
                (Ok(Route::Engine(Some(why))), Ok(Route::Engine(Some(part)))) => {
                    assert!(why.contains(part.as_str()), "{what} {mode:?}: {why}")
                }
                (Err(why), Err(part)) => assert!(why.contains(part), "{what} {mode:?}: {why}"),
                (got, want) => assert_eq!(
                    got.as_ref().map_err(|_| ()),
                    want.as_ref().map_err(|_| ()),
                    "{what} {mode:?}"
                ),
            }
        }
        // The first reason wins: remote before the driver.
        let both = with(&|f| {
            f.not_local = Some("remote".into());
            f.driver = "nfs".into();
        });
        assert_eq!(choose(Direct, &both), Err("remote".into()));
    }

    #[test]
    fn mountpoints_must_be_the_engines() {
        let root = "/var/lib/docker";
        assert_eq!(
            mountpoint_problem("/var/lib/docker/volumes/v/_data", root, "v"),
            None
        );
        assert_eq!(
            mountpoint_problem("/var/lib/docker/volumes/v/_data", "/var/lib/docker/", "v"),
            None
        );
        for (mp, root) in [
            ("", root),
            ("/etc", root),
            ("/var/lib/docker/volumes/w/_data", root),
            ("/var/lib/docker/volumes/v/_data/../../x", root),
            ("volumes/v/_data", ""),
        ] {
            assert!(mountpoint_problem(mp, root, "v").is_some(), "{mp}");
        }
    }

    #[test]
    fn local_engine_needs_a_unix_socket() {
        let e = local_engine("tcp://10.0.0.1:2375").unwrap_err();
        assert!(e.contains("remote"), "{e}");
        let e = local_engine("unix:///nonexistent/docker.sock").unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");
    }

    /// A directory walked as the engine would archive it: order, types, links, no symlink
    /// followed, sockets left out.
    #[test]
    fn walks_a_tree_in_the_engines_order() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        std::fs::create_dir_all(p.join("b/inner")).unwrap();
        std::fs::create_dir(p.join("empty")).unwrap();
        std::fs::write(p.join("a.txt"), b"hello").unwrap();
        std::fs::write(p.join("b/inner/big"), vec![7u8; 3 * CHUNK + 17]).unwrap();
        std::fs::hard_link(p.join("a.txt"), p.join("b/hard")).unwrap();
        symlink("/etc", p.join("etc")).unwrap();
        symlink("../a.txt", p.join("b/up")).unwrap();
        std::fs::set_permissions(p.join("a.txt"), std::fs::Permissions::from_mode(0o4640)).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(p.join("sock")).unwrap();
        let root = rustix::fs::openat(
            rustix::fs::CWD,
            p,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            FsMode::empty(),
        )
        .unwrap();
        let mut chunks = Vec::new();
        let mut skipped = Vec::new();
        write_volume(
            &root,
            &mut |c| {
                assert!(c.len() <= CHUNK);
                chunks.push(c);
                Ok(())
            },
            &mut skipped,
        )
        .unwrap();
        let a = chunks.concat();
        assert_eq!(a.len() % BLOCK, 0);
        assert_eq!(skipped, ["./sock"]);
        let mut names = Vec::new();
        let mut at = 0;
        while at + BLOCK <= a.len() && a[at..at + BLOCK].iter().any(|&b| b != 0) {
            let b = &a[at..at + BLOCK];
            let name = String::from_utf8_lossy(&b[..100])
                .trim_end_matches('\0')
                .to_string();
            let link = String::from_utf8_lossy(&b[157..257])
                .trim_end_matches('\0')
                .to_string();
            let size = u64::from_str_radix(std::str::from_utf8(&b[124..135]).unwrap(), 8).unwrap();
            names.push(format!("{name} {} {link}", b[156] as char));
            at += BLOCK + (size as usize).div_ceil(BLOCK) * BLOCK;
        }
        assert_eq!(
            names,
            [
                "./ 5 ",
                "./a.txt 0 ",
                "./b/ 5 ",
                "./b/hard 1 ./a.txt",
                "./b/inner/ 5 ",
                "./b/inner/big 0 ",
                "./b/up 2 ../a.txt",
                "./empty/ 5 ",
                "./etc 2 /etc",
            ]
        );
        let mut s = Scanner::new(Mode::Observe);
        for c in &chunks {
            s.feed(c, None).unwrap();
        }
        let f = s.finish().unwrap();
        assert_eq!(
            (f.stats.files, f.stats.bytes, f.stats.hardlinks),
            (2, 5 + 3 * CHUNK as u64 + 17, 1)
        );
        let a_txt = &a[BLOCK..2 * BLOCK];
        assert_eq!(&a_txt[100..108], b"0104640\0", "setuid and type bits kept");
        // The absolute symlink is archived as a link (never followed), and flagged.
        assert!(f.refusal().unwrap().contains("./etc"));
    }
}
