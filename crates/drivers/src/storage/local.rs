//! A local folder (or a mounted network share) as storage.
//!
//! Writes go to `<key>.drkit-tmp-<pid>-<rand>` (mode 0600), are fsynced, renamed into place,
//! and the folder is fsynced (restic's Save). A crash leaves at most temp files and backup
//! folders without a manifest, which the next run of the job removes under the job's lock
//! (`drkit_core::layout::clean_leftovers`: temp files are this storage's unfinished writes).

use std::io::{ErrorKind as IoKind, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use drkit_core::{
    BoxRead, DriverSpec, Error, JobLock, ObjectMeta, Result, Storage, Unfinished, Upload,
};
use serde::Deserialize;
use tokio::io::{AsyncSeekExt, AsyncWrite, AsyncWriteExt};

/// Marks temp files; anything with it in its name is a leftover once its job is locked.
const TMP_MARK: &str = ".drkit-tmp-";
const LOCK_FILE: &str = ".drkit.lock";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalConfig {
    path: PathBuf,
}

/// A storage in a local folder.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    /// A storage rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStorage { root: root.into() }
    }

    /// Build from a `type = "local"` table.
    pub fn from_spec(spec: &DriverSpec, what: &str) -> Result<Self> {
        let c: LocalConfig = spec.parse(what)?;
        if c.path.as_os_str().is_empty() {
            return Err(Error::config(format!("{what}.path is empty")));
        }
        Ok(Self::new(c.path))
    }

    /// The folder backups are kept in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        let rel = Path::new(key);
        let clean = !key.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !clean {
            return Err(Error::storage(format!("invalid storage key {key:?}")));
        }
        Ok(self.root.join(rel))
    }

    fn io_error(&self, action: &str, path: &Path, e: std::io::Error) -> Error {
        let hint = match e.kind() {
            IoKind::PermissionDenied => ": check that drkit's user may write there",
            IoKind::ReadOnlyFilesystem => ": the file system is read-only",
            IoKind::StorageFull => ": the disk is full",
            _ => "",
        };
        let err = Error::storage(format!("{action} {}: {e}{hint}", path.display()));
        if e.kind() == IoKind::NotFound {
            Error::not_found(format!("{} does not exist", path.display()))
        } else {
            err
        }
    }

    fn make_dirs(&self, dir: &Path) -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                Error::storage(format!(
                    "cannot create folder {}: {e}: check the storage path and that drkit's user may write there",
                    dir.display()
                ))
            })
    }
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        "{TMP_MARK}{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    path.with_file_name(name)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// An upload into a temp file, renamed into place on commit.
pub struct LocalUpload {
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl AsyncWrite for LocalUpload {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.file.as_mut() {
            Some(f) => Pin::new(f).poll_write(cx, buf),
            None => Poll::Ready(Err(std::io::Error::other("upload already finished"))),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.file.as_mut() {
            Some(f) => Pin::new(f).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.file.as_mut() {
            Some(f) => Pin::new(f).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

#[async_trait]
impl Upload for LocalUpload {
    async fn commit(mut self: Box<Self>) -> Result<ObjectMeta> {
        let mut file = self.file.take().expect("commit once");
        let (tmp, dest) = (self.tmp.clone(), self.dest.clone());
        let fail = |e: std::io::Error| Error::storage(format!("writing {}: {e}", dest.display()));
        file.flush().await.map_err(fail)?;
        file.sync_all().await.map_err(fail)?;
        let size = file.metadata().await.map_err(fail)?.len();
        drop(file);
        let (tmp2, dest2) = (tmp.clone(), dest.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::rename(&tmp2, &dest2)?;
            sync_dir(dest2.parent().expect("a key has a parent"))
        })
        .await
        .map_err(|e| Error::storage(format!("writing {}: {e}", dest.display())))?
        .map_err(fail)?;
        Ok(ObjectMeta {
            key: String::new(),
            size,
            modified: Some(Utc::now()),
            etag: None,
        })
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.file.take();
        match tokio::fs::remove_file(&self.tmp).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == IoKind::NotFound => Ok(()),
            Err(e) => Err(Error::storage(format!(
                "removing {}: {e}",
                self.tmp.display()
            ))),
        }
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        // Neither committed nor aborted (an error unwound past us): leave nothing behind.
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Every file under `dir` whose key starts with `prefix`; folders that cannot hold such a key
/// are not entered (a listing of one day of a job does not read every backup's folder).
fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == IoKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let ft = entry.file_type()?;
        let path = entry.path();
        let rel = path.strip_prefix(root).expect("walked under root");
        let key = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if ft.is_dir() {
            let folder = format!("{key}/");
            if folder.starts_with(prefix) || prefix.starts_with(&folder) {
                walk(root, &path, prefix, out)?;
            }
        } else if ft.is_file() && key.starts_with(prefix) {
            let meta = entry.metadata()?;
            out.push(ObjectMeta {
                key,
                size: meta.len(),
                modified: meta.modified().ok().map(DateTime::<Utc>::from),
                etag: None,
            });
        }
    }
    Ok(())
}

/// Remove empty folders from `dir` up to (not including) `root`.
fn prune_empty_dirs(root: &Path, mut dir: &Path) {
    while dir != root && dir.starts_with(root) {
        if std::fs::remove_dir(dir).is_err() {
            break;
        }
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn describe(&self) -> String {
        format!("local {}", self.root.display())
    }

    async fn create(&self, key: &str) -> Result<Box<dyn Upload>> {
        let dest = self.path_of(key)?;
        self.make_dirs(dest.parent().expect("a key has a parent"))?;
        let tmp = tmp_name(&dest);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| self.io_error("cannot create", &tmp, e))?;
        Ok(Box::new(LocalUpload {
            file: Some(tokio::fs::File::from_std(file)),
            tmp,
            dest,
        }))
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let mut up = self.create(key).await?;
        up.write_all(&data)
            .await
            .map_err(|e| Error::storage(format!("writing {key}: {e}")))?;
        up.commit().await.map(|_| ())
    }

    async fn get(&self, key: &str) -> Result<BoxRead> {
        let path = self.path_of(key)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.io_error("cannot open", &path, e))?;
        Ok(Box::new(tokio::io::BufReader::with_capacity(
            256 * 1024,
            file,
        )))
    }

    async fn get_range(&self, key: &str, start: u64, end: Option<u64>) -> Result<BoxRead> {
        let path = self.path_of(key)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.io_error("cannot open", &path, e))?;
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| self.io_error("cannot seek in", &path, e))?;
        let reader = tokio::io::BufReader::with_capacity(256 * 1024, file);
        Ok(match end {
            Some(end) => Box::new(tokio::io::AsyncReadExt::take(
                reader,
                end.saturating_sub(start),
            )),
            None => Box::new(reader),
        })
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path_of(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: m.len(),
                modified: m.modified().ok().map(DateTime::<Utc>::from),
                etag: None,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == IoKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error("cannot read", &path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let root = self.root.clone();
        // Walk only the deepest folder the prefix names.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            root.clone()
        } else {
            self.path_of(dir_part)?
        };
        let prefix = prefix.to_string();
        let wanted = prefix.clone();
        let walked = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &start, &wanted, &mut out).map(|_| out)
        })
        .await
        .map_err(|e| Error::storage(format!("listing {}: {e}", self.root.display())))?
        .map_err(|e| self.io_error("cannot list", &self.root, e))?;
        let mut out: Vec<ObjectMeta> = walked
            .into_iter()
            .filter(|o| o.key.starts_with(&prefix))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete_object(&self, key: &str) -> Result<()> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == IoKind::NotFound => {}
            Err(e) => return Err(self.io_error("cannot delete", &path, e)),
        }
        if let Some(parent) = path.parent() {
            prune_empty_dirs(&self.root, parent);
        }
        Ok(())
    }

    async fn lock_job(&self, job: &str) -> Result<JobLock> {
        let dir = self.path_of(job)?;
        self.make_dirs(&dir)?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| self.io_error("cannot open lock file", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(JobLock::new(Box::new(file))),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::refused(format!(
                "another drkit run is writing job {job} in {} (lock {} is held); wait for it to finish",
                self.root.display(),
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => Err(self.io_error("cannot lock", &path, e)),
        }
    }

    /// Temp files (`<key>.drkit-tmp-<pid>-<rand>`) of writes whose process died.
    async fn unfinished(&self, prefix: &str) -> Result<Vec<Unfinished>> {
        Ok(self
            .list(prefix)
            .await?
            .into_iter()
            .filter(|o| o.key.contains(TMP_MARK))
            .map(|o| Unfinished {
                handle: o.key.clone(),
                key: o.key,
                started: o.modified,
            })
            .collect())
    }

    async fn discard(&self, write: &Unfinished) -> Result<()> {
        self.delete_object(&write.handle).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        for bad in ["../x", "/etc/passwd", "a/../../x", ""] {
            assert!(s.path_of(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn uncommitted_upload_is_invisible_and_dropped_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        let mut up = s.create("j/20260101T000000Z-aaaaaa/data.x").await.unwrap();
        up.write_all(b"abc").await.unwrap();
        assert!(s
            .head("j/20260101T000000Z-aaaaaa/data.x")
            .await
            .unwrap()
            .is_none());
        drop(up);
        assert!(s.list("j/").await.unwrap().is_empty());
        let mut up = s.create("j/k").await.unwrap();
        up.write_all(b"abc").await.unwrap();
        up.commit().await.unwrap();
        let mut r = s.get("j/k").await.unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"abc");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("j/k"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        let held = s.lock_job("j").await.unwrap();
        let e = s.lock_job("j").await.err().unwrap();
        assert_eq!(e.kind(), drkit_core::ErrorKind::Refused);
        drop(held);
        s.lock_job("j").await.unwrap();
    }
}
