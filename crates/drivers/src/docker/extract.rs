//! Writing a volume archive directly into a volume's directory (the direct restore), and the
//! other direct writes of a restore: emptying a volume, moving a staging copy into place, the
//! root's metadata, and the read-back.
//!
//! Every entry reaches [`Extractor`] only after the restore's entry policy accepted it
//! ([`super::tar::Scanner::feed_to`] in `Mode::Enforce`: no absolute path, no `..`, no link
//! out of the volume, nothing written through a symbolic link of the archive, no device).
//! Behind that policy, the writes themselves never follow a symbolic link that anybody put
//! there: each path is opened component by component relative to its parent directory's
//! descriptor with `O_NOFOLLOW` (a directory component that is a link fails), files are
//! created `O_EXCL | O_NOFOLLOW`, ownership and times of links are set with
//! `AT_SYMLINK_NOFOLLOW`. The metadata is applied in the engine's order (its
//! `createTarFile`): owner, then the `security.capability` xattr (a chown clears it), then
//! the mode (a chown clears setuid and setgid), then the times; directories' times last,
//! deepest first, once nothing is written into them any more.
//!
//! Our own code rather than the `tar` crate's `unpack`: that one resolves paths from the top
//! on every entry (a symbolic link swapped in between is followed), checks entries by its own
//! rules rather than the one policy the verification applies, and parses headers differently
//! from Go's `archive/tar` (what the engine writes and the policy reads).

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode as FsMode, OFlags, RenameFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::direct::{names, shown};
use super::tar::{EntryView, RootMeta, Sink};

/// The capability xattr, the only one restored (the only one the engine's archiver reads).
const CAPABILITY: &str = "security.capability";
const CAPABILITY_PAX: &str = "SCHILY.xattr.security.capability";

const DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The metadata of an entry, applied after its content.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
}

/// The regular file being written.
struct Open {
    file: std::fs::File,
    path: String,
    left: u64,
    meta: Meta,
    capability: Option<Vec<u8>>,
}

/// Extracts accepted entries into the directory `root` (a volume's `_data`, opened).
pub struct Extractor {
    root: Arc<OwnedFd>,
    /// The last parent directory used: most entries share their predecessor's.
    cache: Option<(String, Arc<OwnedFd>)>,
    file: Option<Open>,
    /// Directories whose times are set at the end (as the engine, which keeps them too:
    /// memory grows with the number of directories, not files or bytes).
    dirs: Vec<(String, i64)>,
    root_meta: Option<RootMeta>,
}

fn ts(secs: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: secs as _,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn uid(v: u64) -> Option<rustix::fs::Uid> {
    u32::try_from(v).ok().map(rustix::fs::Uid::from_raw)
}

fn gid(v: u64) -> Option<rustix::fs::Gid> {
    u32::try_from(v).ok().map(rustix::fs::Gid::from_raw)
}

/// An owner that does not fit a `u32` is an error, not silently root's.
fn ids(path: &str, m: &Meta) -> Result<(Option<rustix::fs::Uid>, Option<rustix::fs::Gid>), String> {
    match (uid(m.uid), gid(m.gid)) {
        (Some(u), Some(g)) => Ok((Some(u), Some(g))),
        _ => Err(format!(
            "{}: owner {}:{} is out of range",
            shown(path.as_bytes()),
            m.uid,
            m.gid
        )),
    }
}

fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

impl Extractor {
    /// An extractor into `root`.
    pub fn new(root: OwnedFd) -> Extractor {
        Extractor {
            root: Arc::new(root),
            cache: None,
            file: None,
            dirs: Vec::new(),
            root_meta: None,
        }
    }

    /// The directory `dir` (a normalized path, `""` for the root), opened without following
    /// any link; missing components are created (0755, as the engine does) when `create`.
    fn open_dir(&mut self, dir: &str, create: bool) -> Result<Arc<OwnedFd>, String> {
        if dir.is_empty() {
            return Ok(self.root.clone());
        }
        if let Some((p, fd)) = &self.cache {
            if p == dir {
                return Ok(fd.clone());
            }
        }
        let mut cur = self.root.clone();
        for comp in dir.split('/') {
            let next = match rustix::fs::openat(cur.as_fd(), comp, DIR, FsMode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(cur.as_fd(), comp, FsMode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => {
                            return Err(format!(
                                "{}: cannot be created ({e})",
                                shown(dir.as_bytes())
                            ))
                        }
                    }
                    let fd = rustix::fs::openat(cur.as_fd(), comp, DIR, FsMode::empty()).map_err(
                        |e| format!("{}: cannot be opened ({e})", shown(dir.as_bytes())),
                    )?;
                    // Not the umask's mode: the engine's.
                    rustix::fs::fchmod(&fd, FsMode::from_raw_mode(0o755))
                        .map_err(|e| format!("{}: {e}", shown(dir.as_bytes())))?;
                    fd
                }
                Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
                    return Err(format!(
                    "{}: a component is not a directory (or is a symbolic link, never followed)",
                    shown(dir.as_bytes())
                ))
                }
                Err(e) => return Err(format!("{}: cannot be opened ({e})", shown(dir.as_bytes()))),
            };
            cur = Arc::new(next);
        }
        self.cache = Some((dir.to_string(), cur.clone()));
        Ok(cur)
    }

    /// Make room for a new entry at `name` in `parent`: whatever is there goes (a directory
    /// with its contents), as the engine replaces an existing path, except a directory
    /// staying a directory (handled by the caller).
    fn clear(&mut self, parent: &OwnedFd, name: &str, path: &str) -> Result<(), String> {
        let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", shown(path.as_bytes()))),
        };
        if FileType::from_raw_mode(st.st_mode as _) == FileType::Directory {
            // A cached descriptor may be inside what goes.
            self.cache = None;
            remove_tree(parent, name).map_err(|e| format!("{}: {e}", shown(path.as_bytes())))
        } else {
            rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .map_err(|e| format!("{}: cannot be replaced ({e})", shown(path.as_bytes())))
        }
    }

    /// Owner, capability, mode, times of an open file (or FIFO, or directory).
    fn finish_fd(
        fd: &OwnedFd,
        path: &str,
        m: &Meta,
        cap: Option<&[u8]>,
        times: bool,
    ) -> Result<(), String> {
        let bad = |what: &str, e: Errno| {
            format!("{}: cannot set its {what} ({e})", shown(path.as_bytes()))
        };
        let (u, g) = ids(path, m)?;
        rustix::fs::fchown(fd, u, g).map_err(|e| bad("owner", e))?;
        if let Some(v) = cap {
            rustix::fs::fsetxattr(fd, CAPABILITY, v, rustix::fs::XattrFlags::empty())
                .map_err(|e| bad("capability", e))?;
        }
        rustix::fs::fchmod(fd, FsMode::from_raw_mode(m.mode as _)).map_err(|e| bad("mode", e))?;
        if times {
            rustix::fs::futimens(fd, &ts(m.mtime)).map_err(|e| bad("time", e))?;
        }
        Ok(())
    }

    fn close_file(&mut self) -> Result<(), String> {
        let Some(f) = self.file.take() else {
            return Ok(());
        };
        let fd = OwnedFd::from(f.file);
        Self::finish_fd(&fd, &f.path, &f.meta, f.capability.as_deref(), true)
    }

    /// The end of the archive: the directories' times (deepest and latest first), then the
    /// root's metadata. Returns the root's metadata applied, if the archive had a `./`.
    pub fn finish(mut self) -> Result<(), String> {
        if let Some(f) = &self.file {
            return Err(format!(
                "{}: the archive ended inside it",
                shown(f.path.as_bytes())
            ));
        }
        let dirs = std::mem::take(&mut self.dirs);
        for (path, mtime) in dirs.iter().rev() {
            let (dir, name) = split(path);
            let parent = self.open_dir(dir, false)?;
            rustix::fs::utimensat(parent.as_fd(), name, &ts(*mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| format!("{}: cannot set its time ({e})", shown(path.as_bytes())))?;
        }
        if let Some(r) = self.root_meta {
            set_root(&self.root, &r)?;
        }
        Ok(())
    }
}

/// Give the directory `root` the metadata `r` (owner, then mode, then time).
pub fn set_root(root: &OwnedFd, r: &RootMeta) -> Result<(), String> {
    let m = Meta {
        mode: r.mode & 0o7777,
        uid: r.uid as u64,
        gid: r.gid as u64,
        mtime: r.mtime as i64,
    };
    Extractor::finish_fd(root, "./", &m, None, true)
}

impl Sink for Extractor {
    fn entry(&mut self, e: &EntryView<'_>) -> Result<(), String> {
        self.close_file()?;
        let m = Meta {
            mode: e.mode & 0o7777,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
        };
        let shown_path = || shown(e.path.as_bytes());
        if e.path.is_empty() {
            // Only a directory reaches here (the policy refuses anything else as the root).
            if e.typeflag == b'5' {
                self.root_meta = Some(RootMeta {
                    mode: m.mode,
                    uid: u32::try_from(m.uid)
                        .map_err(|_| format!("\"./\": owner {} is out of range", m.uid))?,
                    gid: u32::try_from(m.gid)
                        .map_err(|_| format!("\"./\": group {} is out of range", m.gid))?,
                    mtime: u64::try_from(m.mtime).unwrap_or(0),
                });
            }
            return Ok(());
        }
        let (dir, name) = split(e.path);
        let parent_owned = self.open_dir(dir, true)?;
        let parent = parent_owned.as_fd();
        match e.typeflag {
            b'5' => {
                match rustix::fs::mkdirat(parent, name, FsMode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(|er| format!("{}: {er}", shown_path()))?;
                        if FileType::from_raw_mode(st.st_mode as _) != FileType::Directory {
                            self.clear(&parent_owned, name, e.path)?;
                            rustix::fs::mkdirat(parent, name, FsMode::from_raw_mode(0o700))
                                .map_err(|er| {
                                    format!("{}: cannot be created ({er})", shown_path())
                                })?;
                        }
                    }
                    Err(er) => return Err(format!("{}: cannot be created ({er})", shown_path())),
                }
                let fd = rustix::fs::openat(parent, name, DIR, FsMode::empty())
                    .map_err(|er| format!("{}: cannot be opened ({er})", shown_path()))?;
                let cap = capability(e.xattrs);
                Self::finish_fd(&fd, e.path, &m, cap, false)?;
                self.dirs.push((e.path.to_string(), m.mtime));
            }
            b'0' => {
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::NOCTTY
                    | OFlags::CLOEXEC;
                let mode = FsMode::from_raw_mode(0o600);
                let fd = match rustix::fs::openat(parent, name, flags, mode) {
                    Err(Errno::EXIST) => {
                        self.clear(&parent_owned, name, e.path)?;
                        rustix::fs::openat(parent, name, flags, mode)
                    }
                    other => other,
                }
                .map_err(|er| format!("{}: cannot be created ({er})", shown_path()))?;
                self.file = Some(Open {
                    file: std::fs::File::from(fd),
                    path: e.path.to_string(),
                    left: e.size,
                    meta: m,
                    capability: capability(e.xattrs).map(<[u8]>::to_vec),
                });
                if e.size == 0 {
                    self.close_file()?;
                }
            }
            b'2' => {
                let link = e.link;
                let made = match rustix::fs::symlinkat(link, parent, name) {
                    Err(Errno::EXIST) => {
                        self.clear(&parent_owned, name, e.path)?;
                        rustix::fs::symlinkat(link, parent, name)
                    }
                    other => other,
                };
                made.map_err(|er| format!("{}: cannot be created ({er})", shown_path()))?;
                let (u, g) = ids(e.path, &m)?;
                rustix::fs::chownat(parent, name, u, g, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|er| format!("{}: cannot set its owner ({er})", shown_path()))?;
                rustix::fs::utimensat(parent, name, &ts(m.mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|er| format!("{}: cannot set its time ({er})", shown_path()))?;
            }
            b'1' => {
                let target = std::str::from_utf8(e.link)
                    .map_err(|_| format!("{}: its target is not UTF-8", shown_path()))?;
                let (tdir, tname) = split(target);
                let tparent = self.open_dir(tdir, false)?;
                // flags 0: a target that is a symbolic link is linked itself, never followed.
                let made = match rustix::fs::linkat(
                    tparent.as_fd(),
                    tname,
                    parent,
                    name,
                    AtFlags::empty(),
                ) {
                    Err(Errno::EXIST) => {
                        self.clear(&parent_owned, name, e.path)?;
                        rustix::fs::linkat(tparent.as_fd(), tname, parent, name, AtFlags::empty())
                    }
                    other => other,
                };
                // The file's owner, mode and time are its first entry's (same inode): not
                // set again, so a chown cannot clear its setuid bit.
                made.map_err(|er| {
                    format!(
                        "{}: cannot be linked to {} ({er})",
                        shown_path(),
                        shown(e.link)
                    )
                })?;
            }
            b'6' => {
                let fifo = FsMode::from_raw_mode(0o600);
                let made = match rustix::fs::mknodat(parent, name, FileType::Fifo, fifo, 0) {
                    Err(Errno::EXIST) => {
                        self.clear(&parent_owned, name, e.path)?;
                        rustix::fs::mknodat(parent, name, FileType::Fifo, fifo, 0)
                    }
                    other => other,
                };
                made.map_err(|er| format!("{}: cannot be created ({er})", shown_path()))?;
                // Opened to set its metadata on the descriptor: non-blocking, no writer needed.
                let fd = rustix::fs::openat(
                    parent,
                    name,
                    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    FsMode::empty(),
                )
                .map_err(|er| format!("{}: cannot be opened ({er})", shown_path()))?;
                Self::finish_fd(&fd, e.path, &m, None, true)?;
            }
            t => {
                return Err(format!(
                    "{}: entries of type {:?} are not restored directly",
                    shown_path(),
                    t as char
                ))
            }
        }
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), String> {
        let Some(f) = self.file.as_mut() else {
            return Err("content without a file entry".into());
        };
        f.file
            .write_all(bytes)
            .map_err(|e| format!("{}: cannot be written ({e})", shown(f.path.as_bytes())))?;
        f.left = f.left.saturating_sub(bytes.len() as u64);
        if f.left == 0 {
            self.close_file()?;
        }
        Ok(())
    }
}

fn capability(xattrs: &[(String, Vec<u8>)]) -> Option<&[u8]> {
    xattrs
        .iter()
        .find(|(k, _)| k == CAPABILITY_PAX)
        .map(|(_, v)| v.as_slice())
}

/// Remove `name` in `parent` and, if it is a directory, everything under it; never follows
/// a symbolic link (each directory is opened `O_NOFOLLOW` relative to its parent). An
/// explicit stack, not recursion: a deep tree cannot exhaust the thread's stack.
pub fn remove_tree(parent: &OwnedFd, name: &str) -> std::io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let top = rustix::fs::openat(parent, name, DIR, FsMode::empty())?;
    // Each level: the directory and its names still to remove (popped from the end); a
    // name that is a directory is put back once, marked, to be removed when emptied.
    let mut list = names(&top)?;
    list.reverse();
    let mut stack = vec![(
        top,
        list.into_iter().map(|n| (n, false)).collect::<Vec<_>>(),
    )];
    while let Some((dir, rest)) = stack.last_mut() {
        let Some((n, emptied)) = rest.pop() else {
            stack.pop();
            continue;
        };
        if emptied {
            rustix::fs::unlinkat(&*dir, n.as_c_str(), AtFlags::REMOVEDIR)?;
            continue;
        }
        match rustix::fs::unlinkat(&*dir, n.as_c_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::ISDIR) | Err(Errno::PERM) => {
                let sub = rustix::fs::openat(&*dir, n.as_c_str(), DIR, FsMode::empty())?;
                let mut list = names(&sub)?;
                list.reverse();
                rest.push((n, true));
                stack.push((sub, list.into_iter().map(|n| (n, false)).collect()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// Empty the directory `root` (a volume's `_data`): every entry removed, never following a
/// link; then checked empty.
pub fn empty_dir(root: &OwnedFd) -> std::io::Result<()> {
    let fd = rustix::fs::openat(root, c".", DIR, FsMode::empty())?;
    for n in names(&fd)? {
        let n = n.to_str().map(str::to_string);
        match n {
            Ok(n) => remove_tree(&fd, &n)?,
            Err(_) => {
                return Err(std::io::Error::other(
                    "a name that is not UTF-8 (remove it by hand)",
                ))
            }
        }
    }
    if !names(&fd)?.is_empty() {
        return Err(std::io::Error::other(
            "entries appeared while it was emptied",
        ));
    }
    Ok(())
}

/// Move every entry of `from` into `to` (both directories on one filesystem) by renaming,
/// never replacing an entry of `to`. Returns how many were moved.
pub fn move_entries(from: &OwnedFd, to: &OwnedFd) -> std::io::Result<usize> {
    let fd = rustix::fs::openat(from, c".", DIR, FsMode::empty())?;
    let list = names(&fd)?;
    for n in &list {
        rustix::fs::renameat_with(&fd, n.as_c_str(), to, n.as_c_str(), RenameFlags::NOREPLACE)?;
    }
    Ok(list.len())
}

/// Whether two open directories are on the same filesystem (a rename between them works).
pub fn same_filesystem(a: &OwnedFd, b: &OwnedFd) -> std::io::Result<bool> {
    Ok(rustix::fs::fstat(a)?.st_dev == rustix::fs::fstat(b)?.st_dev)
}

/// Extract the archive `data` into the directory `root`, every entry through the restore's
/// policy first (`Mode::Enforce`): the first refused entry, a malformed archive or a failed
/// write stops it (`refusal` makes the error of a policy or format failure; the caller
/// throws the directory's volume away). The writes run on a blocking thread, a few chunks
/// behind the reads (bounded memory).
pub async fn extract_into(
    root: OwnedFd,
    mut data: drkit_core::BoxRead,
    volume: &str,
    refusal: fn(super::tar::TarError) -> drkit_core::Error,
) -> drkit_core::Result<super::tar::Finished> {
    use super::tar::{Mode, Scanner, TarError};
    use drkit_core::{Error, ErrorKind};
    use tokio::io::AsyncReadExt;
    const CHUNK: usize = 256 * 1024;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let writer = tokio::task::spawn_blocking(move || {
        let mut scanner = Scanner::new(Mode::Enforce);
        let mut ex = Extractor::new(root);
        while let Some(chunk) = rx.blocking_recv() {
            scanner.feed_to(&chunk, &mut ex)?;
        }
        let finished = scanner.finish()?;
        ex.finish().map_err(TarError::Sink)?;
        Ok::<_, TarError>(finished)
    });
    let mut read_error = None;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = match data.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                read_error = Some(drkit_core::from_io(
                    e,
                    ErrorKind::Storage,
                    "reading the backup",
                ));
                break;
            }
        };
        if n == 0 {
            break;
        }
        buf.truncate(n);
        if tx.send(buf).await.is_err() {
            break; // the writer stopped: its error says why
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| {
        Error::source_error(format!(
            "volume {volume}: the restore's writer failed ({e})"
        ))
    })?;
    if let Some(e) = read_error {
        return Err(e);
    }
    written.map_err(|e| match e {
        TarError::Sink(m) => {
            Error::source_error(format!("restore into volume {volume} failed: {m}"))
        }
        other => refusal(other),
    })
}

/// Read the directory `root` back as the backup would (the direct walk) and return its
/// stats, with a content digest of `algo`.
pub async fn read_back(
    root: OwnedFd,
    volume: &str,
    algo: super::tar::DigestAlgo,
) -> drkit_core::Result<super::tar::TarStats> {
    use super::tar::{Mode, Scanner};
    let volume = volume.to_string();
    tokio::task::spawn_blocking(move || {
        let mut scanner = Scanner::with_digest(Mode::Observe, algo);
        let mut skipped = Vec::new();
        let mut feed = |chunk: Vec<u8>| -> std::io::Result<()> {
            scanner
                .feed(&chunk, None)
                .map_err(|e| std::io::Error::other(e.to_string()))
        };
        super::direct::write_volume(&root, &mut feed, &mut skipped).map_err(|e| {
            drkit_core::Error::source_error(format!("reading volume {volume} back: {e}"))
        })?;
        scanner.finish().map(|f| f.stats).map_err(|e| {
            drkit_core::Error::source_error(format!("reading volume {volume} back: {e}"))
        })
    })
    .await
    .map_err(|e| drkit_core::Error::source_error(format!("reading a volume back failed ({e})")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::tar::build::{archive, entry};
    use crate::docker::tar::{Mode, Scanner, TarError};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn open(p: &std::path::Path) -> OwnedFd {
        rustix::fs::openat(rustix::fs::CWD, p, DIR, FsMode::empty()).unwrap()
    }

    /// Extract `bytes` into `dir` in small, odd-sized pieces (entries and contents split
    /// across feeds).
    fn extract(dir: &std::path::Path, bytes: &[u8]) -> Result<(), TarError> {
        let mut s = Scanner::new(Mode::Enforce);
        let mut ex = Extractor::new(open(dir));
        for c in bytes.chunks(777) {
            s.feed_to(c, &mut ex)?;
        }
        s.finish()?;
        ex.finish().map_err(TarError::Sink)
    }

    fn walk(dir: &std::path::Path) -> Vec<u8> {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        crate::docker::direct::write_volume(
            &open(dir),
            &mut |c| {
                out.extend_from_slice(&c);
                Ok(())
            },
            &mut skipped,
        )
        .unwrap();
        out
    }

    fn digest(bytes: &[u8]) -> crate::docker::tar::TarStats {
        let mut s = Scanner::new(Mode::Observe);
        s.feed(bytes, None).unwrap();
        s.finish().unwrap().stats
    }

    #[test]
    fn restores_what_the_direct_walk_reads_back() {
        assert!(
            rustix::process::geteuid().is_root(),
            "runs as root: it sets owners"
        );
        let mut root = entry("./", b'5', "", b"");
        (root.mode, root.uid, root.gid, root.mtime) = (0o750, 70, 70, 1_546_300_800);
        let mut a = entry("./a.txt", b'0', "", b"hello");
        (a.mode, a.uid, a.gid, a.mtime) = (0o4750, 1234, 567, 1_580_702_706);
        let mut d = entry("./d/", b'5', "", b"");
        (d.mode, d.uid, d.mtime) = (0o1777, 999, 1_500_000_000);
        let big = vec![9u8; 3000];
        let mut b = entry("./d/deep/big", b'0', "", &big); // its parent is implicit
        b.mtime = 1_600_000_000;
        let mut l = entry("./d/up", b'2', "../a.txt", b"");
        (l.uid, l.mtime) = (5, 1_400_000_000);
        let mut e = entry("./d/empty/", b'5', "", b"");
        e.mtime = 1_300_000_000;
        let h = entry("./d/hard", b'1', "./d/deep/big", b"");
        let mut f = entry("./fifo", b'6', "", b"");
        f.mode = 0o640;
        let tar = archive(&[root, a, d, b, l, e, h, f]);
        let t = tempfile::tempdir().unwrap();
        extract(t.path(), &tar).unwrap();
        let p = t.path();
        let m = std::fs::symlink_metadata(p.join("a.txt")).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
            (0o4750, 1234, 567, 1_580_702_706)
        );
        let m = std::fs::symlink_metadata(p.join("d/up")).unwrap();
        assert!(m.file_type().is_symlink());
        assert_eq!((m.uid(), m.mtime()), (5, 1_400_000_000));
        assert_eq!(
            std::fs::read_link(p.join("d/up")).unwrap(),
            std::path::Path::new("../a.txt")
        );
        let m = std::fs::metadata(p.join("d/hard")).unwrap();
        assert_eq!((m.nlink(), m.len()), (2, 3000));
        let m = std::fs::metadata(p.join("d")).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.mtime()),
            (0o1777, 999, 1_500_000_000)
        );
        assert_eq!(
            std::fs::metadata(p.join("d/empty")).unwrap().mtime(),
            1_300_000_000
        );
        assert_eq!(
            std::fs::metadata(p.join("d/deep"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o755
        );
        let m = std::fs::metadata(p).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.mtime()),
            (0o750, 70, 1_546_300_800)
        );
        // Read back directly, it holds what the archive holds (the implicit directory
        // aside, which the engine adds too).
        let back = digest(&walk(p));
        let want = digest(&tar);
        assert_eq!(
            (
                back.files,
                back.bytes,
                back.symlinks,
                back.hardlinks,
                back.other
            ),
            (
                want.files,
                want.bytes,
                want.symlinks,
                want.hardlinks,
                want.other
            )
        );
        assert_eq!(back.dirs, want.dirs + 1);
    }

    #[test]
    fn refuses_writes_through_links_and_out_of_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().display().to_string();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                archive(&[
                    entry("./l", b'2', &target, b""),
                    entry("./l/evil", b'0', "", b"x"),
                ]),
                "absolute",
            ),
            (
                archive(&[
                    entry("./l", b'2', "..", b""),
                    entry("./l/evil", b'0', "", b"x"),
                ]),
                "outside",
            ),
            (archive(&[entry("../evil", b'0', "", b"x")]), "climbs out"),
            (archive(&[entry("./h", b'1', "../x", b"")]), "climbs out"),
        ];
        for (tar, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let e = extract(dir.path(), &tar).unwrap_err();
            assert!(
                matches!(&e, TarError::Unsafe(_)) && e.to_string().contains(want),
                "{e}"
            );
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                0,
                "{want}: something was written"
            );
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // A link planted in the tree (by a container, not the archive): never followed.
        std::os::unix::fs::symlink(outside.path(), t.path().join("dir")).unwrap();
        let e = extract(t.path(), &archive(&[entry("./dir/evil", b'0', "", b"x")])).unwrap_err();
        assert!(
            matches!(e, TarError::Sink(ref m) if m.contains("never followed")),
            "{e}"
        );
        std::fs::write(t.path().join("f"), b"old").unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), t.path().join("g")).unwrap();
        // A file over an existing file or link replaces it, never writes through it.
        extract(
            t.path(),
            &archive(&[
                entry("./f", b'0', "", b"new"),
                entry("./g", b'0', "", b"new"),
            ]),
        )
        .unwrap();
        assert_eq!(std::fs::read(t.path().join("g")).unwrap(), b"new");
        assert!(!outside.path().join("victim").exists());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        // An observing scanner cannot feed an extraction.
        let mut s = Scanner::new(Mode::Observe);
        let mut ex = Extractor::new(open(t.path()));
        assert!(s
            .feed_to(&archive(&[entry("./x", b'0', "", b"x")]), &mut ex)
            .is_err());
    }

    #[test]
    fn empties_and_moves_without_following_links() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"k").unwrap();
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        std::fs::create_dir_all(p.join("a/b/c")).unwrap();
        std::fs::write(p.join("a/b/c/f"), b"x").unwrap();
        std::fs::write(p.join("top"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), p.join("a/out")).unwrap();
        empty_dir(&open(p)).unwrap();
        assert_eq!(std::fs::read_dir(p).unwrap().count(), 0);
        assert!(outside.path().join("keep").exists(), "a link was followed");
        let from = tempfile::tempdir().unwrap();
        std::fs::create_dir(from.path().join("d")).unwrap();
        std::fs::write(from.path().join("f"), b"x").unwrap();
        assert!(same_filesystem(&open(from.path()), &open(p)).unwrap());
        assert_eq!(move_entries(&open(from.path()), &open(p)).unwrap(), 2);
        assert!(p.join("d").is_dir() && p.join("f").is_file());
        std::fs::write(from.path().join("f"), b"y").unwrap();
        assert!(
            move_entries(&open(from.path()), &open(p)).is_err(),
            "replaced an entry"
        );
        assert_eq!(std::fs::read(p.join("f")).unwrap(), b"x");
    }
}
