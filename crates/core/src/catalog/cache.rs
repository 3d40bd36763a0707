//! The local cache of catalog records: manifests (and their signatures and accept records),
//! which never change once written, kept on local disk so that listing a job with thousands
//! of backups does not fetch thousands of objects again.
//!
//! The cache is untrusted input, like the storage:
//!
//! - a cache file is used only when the storage's listing of the same run names its key with
//!   the same version (its ETag, else its size and modification time) and the same size, and
//!   the file's own record (storage, key, version, size, sha256 of the bytes) agrees;
//! - the bytes read from it go through exactly the same checks as bytes read from the
//!   storage (the catalog does not know where they came from), and when those checks fail the
//!   catalog reads the storage instead and replaces the file;
//! - a file that cannot be read, is larger than [`MAX_FILE_SIZE`], or does not parse is a
//!   miss, never an error: nothing the cache holds can block a backup or change a listing;
//! - files are written atomically (a temp file in the same folder, then a rename), entries of
//!   records gone from the storage are removed after a full listing, and the whole cache is
//!   kept under its size bound by removing the oldest files.
//!
//! Layout: `<dir>/catalog-v1/<storage>/<job>/<key>.rec`, each part a hex sha256 prefix of the
//! storage's description, the job's name and the record's key (nothing read from a storage
//! becomes a path). A file is one JSON header line, then the record's bytes.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ObjectMeta;

/// Records larger than this are not cached (a manifest is a few KiB).
pub const MAX_RECORD: u64 = 1 << 20;

/// The longest header line a cache file may have.
const MAX_HEADER: u64 = 8 << 10;

/// A cache file larger than this is ignored (and replaced).
pub const MAX_FILE_SIZE: u64 = MAX_RECORD + MAX_HEADER;

/// The default bound of the whole cache.
pub const DEFAULT_MAX_SIZE: u64 = 256 << 20;

/// The name of the folder under the cache directory (its format version).
const FOLDER: &str = "catalog-v1";

/// The `[cache]` table of `drkit.toml` (docs/config.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// `false` turns the cache off (default: on).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Where the cache lives (default `$XDG_CACHE_HOME/drkit`, else `~/.cache/drkit`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The bound of the whole cache, e.g. `"256MiB"` (default [`DEFAULT_MAX_SIZE`]).
    #[serde(default, deserialize_with = "size")]
    pub max_size: Option<u64>,
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Words(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(Some(n)),
        Size::Words(s) => crate::units::parse_size(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Where the cache is and how big it may grow, once the config and the environment are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSetting {
    /// The cache directory.
    pub dir: PathBuf,
    /// The bound of the whole cache, in bytes.
    pub max_size: u64,
}

impl CacheConfig {
    /// Resolve the setting with the environment `env`: `DRKIT_CACHE=off` (or `0`, `false`)
    /// turns the cache off, `DRKIT_CACHE_DIR` overrides `dir`; the default directory is
    /// `$XDG_CACHE_HOME/drkit`, else `$HOME/.cache/drkit`. `None`: no cache (turned off, or
    /// no directory known).
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Option<CacheSetting> {
        let set = |name: &str| env(name).filter(|v| !v.is_empty());
        if let Some(v) = set("DRKIT_CACHE") {
            if matches!(
                v.to_ascii_lowercase().as_str(),
                "off" | "0" | "false" | "no"
            ) {
                return None;
            }
        }
        if self.enabled == Some(false) {
            return None;
        }
        let dir = set("DRKIT_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| self.dir.clone())
            .or_else(|| set("XDG_CACHE_HOME").map(|x| Path::new(&x).join("drkit")))
            .or_else(|| set("HOME").map(|h| Path::new(&h).join(".cache").join("drkit")))?;
        Some(CacheSetting {
            dir,
            max_size: self.max_size.unwrap_or(DEFAULT_MAX_SIZE),
        })
    }
}

/// The version of a listed object that a cache entry must match: its ETag, else its size and
/// modification time to the nanosecond; `None` when the storage reports neither (not cached).
pub fn version_of(meta: &ObjectMeta) -> Option<String> {
    match (&meta.etag, meta.modified) {
        (Some(e), _) if !e.is_empty() => Some(format!("etag {e}")),
        (_, Some(t)) => Some(format!(
            "size {} modified {}",
            meta.size,
            t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        )),
        _ => None,
    }
}

/// The header line of a cache file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    drkit_cache: u32,
    storage: String,
    key: String,
    version: String,
    size: u64,
    sha256: String,
}

/// Why a cache file was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// The listing gives no version for the object (nothing can be checked).
    NoVersion,
    /// No file.
    Absent,
    /// The file is not usable (unreadable, oversized, corrupt, for another key or version).
    Bad(String),
}

/// The bytes of a cache file holding `bytes`, the record at `key` of `storage` whose listing
/// entry is `meta`; `None` when it is not to be cached (no version, too big).
pub fn encode(storage: &str, meta: &ObjectMeta, bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() as u64 > MAX_RECORD || bytes.len() as u64 != meta.size {
        return None;
    }
    let header = Header {
        drkit_cache: 1,
        storage: storage.to_string(),
        key: meta.key.clone(),
        version: version_of(meta)?,
        size: meta.size,
        sha256: hex::encode(Sha256::digest(bytes)),
    };
    let mut out = serde_json::to_vec(&header).ok()?;
    if out.len() as u64 >= MAX_HEADER {
        return None;
    }
    out.push(b'\n');
    out.extend_from_slice(bytes);
    Some(out)
}

/// The record in cache file `file` when it is the one the listing entry `meta` of `storage`
/// names: same storage, key, version and size, and bytes whose sha256 is the recorded one.
pub fn decode(file: &[u8], storage: &str, meta: &ObjectMeta) -> Result<Vec<u8>, Miss> {
    let version = version_of(meta).ok_or(Miss::NoVersion)?;
    if file.len() as u64 > MAX_FILE_SIZE {
        return Err(Miss::Bad("larger than any cache file".into()));
    }
    let nl = file
        .iter()
        .take(MAX_HEADER as usize)
        .position(|&b| b == b'\n')
        .ok_or_else(|| Miss::Bad("no header line".into()))?;
    let header: Header = serde_json::from_slice(&file[..nl])
        .map_err(|e| Miss::Bad(format!("unreadable header: {e}")))?;
    let body = &file[nl + 1..];
    let why = if header.drkit_cache != 1 {
        "another cache format"
    } else if header.storage != storage || header.key != meta.key {
        "for another record"
    } else if header.version != version || header.size != meta.size {
        "of another version"
    } else if body.len() as u64 != meta.size {
        "truncated or padded"
    } else if hex::encode(Sha256::digest(body)) != header.sha256 {
        "its bytes do not match their checksum"
    } else {
        return Ok(body.to_vec());
    };
    Err(Miss::Bad(why.into()))
}

/// A short hex name for `s`.
fn hashed(s: &str, len: usize) -> String {
    let mut h = hex::encode(Sha256::digest(s.as_bytes()));
    h.truncate(len);
    h
}

/// The cache: a directory of records, each file checked against the storage's listing.
#[derive(Debug)]
pub struct ManifestCache {
    root: PathBuf,
    max_size: u64,
}

impl ManifestCache {
    /// A cache in `setting.dir` (created on the first write).
    pub fn new(setting: &CacheSetting) -> ManifestCache {
        ManifestCache {
            root: setting.dir.join(FOLDER),
            max_size: setting.max_size,
        }
    }

    /// The folder of `job` of `storage`.
    fn job_dir(&self, storage: &str, job: &str) -> PathBuf {
        self.root.join(hashed(storage, 32)).join(hashed(job, 32))
    }

    fn file_name(key: &str) -> String {
        format!("{}.rec", hashed(key, 40))
    }

    /// The cached record for the listing entry `meta` of `job` on `storage`, or why not.
    pub async fn get(&self, storage: &str, job: &str, meta: &ObjectMeta) -> Result<Vec<u8>, Miss> {
        if version_of(meta).is_none() {
            return Err(Miss::NoVersion);
        }
        let path = self.job_dir(storage, job).join(Self::file_name(&meta.key));
        let (storage, owned) = (storage.to_string(), meta.clone());
        let read = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, Miss> {
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Miss::Absent),
                Err(e) => return Err(Miss::Bad(e.to_string())),
            };
            let mut buf = Vec::new();
            file.take(MAX_FILE_SIZE + 1)
                .read_to_end(&mut buf)
                .map_err(|e| Miss::Bad(e.to_string()))?;
            decode(&buf, &storage, &owned)
        });
        let got = read.await.unwrap_or_else(|e| Err(Miss::Bad(e.to_string())));
        if let Err(Miss::Bad(why)) = &got {
            tracing::debug!("manifest cache: entry for {} ignored: {why}", meta.key);
        }
        got
    }

    /// Keep `bytes`, read from the storage for the listing entry `meta`. Failing to write is
    /// only logged (the cache is an optimization).
    pub async fn put(&self, storage: &str, job: &str, meta: &ObjectMeta, bytes: &[u8]) {
        let Some(content) = encode(storage, meta, bytes) else {
            return;
        };
        let dir = self.job_dir(storage, job);
        let name = Self::file_name(&meta.key);
        let key = meta.key.clone();
        let done = tokio::task::spawn_blocking(move || write_atomic(&dir, &name, &content)).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("manifest cache: cannot write the entry of {key}: {e}"),
            Err(e) => tracing::debug!("manifest cache: cannot write the entry of {key}: {e}"),
        }
    }

    /// Remove the entry of `key` (its bytes failed the catalog's checks).
    pub async fn forget(&self, storage: &str, job: &str, key: &str) {
        let path = self.job_dir(storage, job).join(Self::file_name(key));
        let _ = tokio::fs::remove_file(path).await;
    }

    /// After a full listing of `job` on `storage`: remove the entries of keys it no longer
    /// holds (and stale temp files); then, when entries were `written` during that listing,
    /// keep the whole cache under its bound. Returns how many entries were removed from this
    /// job's folder.
    pub async fn retain(&self, storage: &str, job: &str, keys: &[&str], written: bool) -> usize {
        let dir = self.job_dir(storage, job);
        let keep: HashSet<String> = keys.iter().map(|k| Self::file_name(k)).collect();
        let (root, max) = (self.root.clone(), self.max_size);
        tokio::task::spawn_blocking(move || {
            let removed = retain_dir(&dir, &keep);
            if written {
                bound(&root, max);
            }
            removed
        })
        .await
        .unwrap_or(0)
    }
}

/// Write `content` as `dir/name` through a temp file and a rename (a reader sees the old
/// file or the new one, never a part).
fn write_atomic(dir: &Path, name: &str, content: &[u8]) -> std::io::Result<()> {
    create_private_dir(dir)?;
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::thread_rng().gen::<u32>()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content)?;
        f.flush()?;
        std::fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Temp files older than this are leftovers of a killed process.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);

fn retain_dir(dir: &Path, keep: &HashSet<String>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = if name.starts_with('.') {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP)
        } else {
            !keep.contains(&name)
        };
        if stale && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Keep the files under `root` (two levels of folders) within `max` bytes: when over, remove
/// the least recently written files down to 90 % of it.
fn bound(root: &Path, max: u64) {
    let mut files = Vec::new();
    let mut total = 0u64;
    let dirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for storage in dirs(root) {
        for job in dirs(&storage) {
            for file in dirs(&job) {
                if let Ok(m) = std::fs::symlink_metadata(&file) {
                    if m.is_file() {
                        total += m.len();
                        files.push((m.modified().ok(), m.len(), file));
                    }
                }
            }
        }
    }
    if total <= max {
        return;
    }
    files.sort_by_key(|f| f.0);
    let target = max / 10 * 9;
    for (_, len, path) in files {
        if total <= target {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

static INSTALLED: RwLock<Option<Arc<ManifestCache>>> = RwLock::new(None);

/// Make `cache` the one the catalog reads through in this process ([`super::scan`] and the
/// other readers); `None` turns it off. `drkit_app::Drkit` installs the one its config names.
pub fn install(cache: Option<ManifestCache>) {
    let mut slot = INSTALLED.write().unwrap_or_else(|e| e.into_inner());
    *slot = cache.map(Arc::new);
}

/// The cache installed with [`install`], if any.
pub fn installed() -> Option<Arc<ManifestCache>> {
    INSTALLED.read().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn meta(key: &str, size: u64, etag: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            modified: Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()),
            etag: etag.map(str::to_string),
        }
    }

    #[test]
    fn resolve_table() {
        let home = |extra: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                [("HOME", "/home/u")]
                    .iter()
                    .chain(extra)
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let cfg = CacheConfig::default();
        let dir = |c: &CacheConfig, env: &dyn Fn(&str) -> Option<String>| {
            c.resolve(env).map(|s| s.dir.display().to_string())
        };
        type Case<'a> = (CacheConfig, Vec<(&'a str, &'a str)>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (cfg.clone(), vec![], Some("/home/u/.cache/drkit")),
            (
                cfg.clone(),
                vec![("XDG_CACHE_HOME", "/xdg")],
                Some("/xdg/drkit"),
            ),
            (
                CacheConfig {
                    dir: Some("/etc-cache".into()),
                    ..cfg.clone()
                },
                vec![("XDG_CACHE_HOME", "/xdg")],
                Some("/etc-cache"),
            ),
            (
                CacheConfig {
                    dir: Some("/etc-cache".into()),
                    ..cfg.clone()
                },
                vec![("DRKIT_CACHE_DIR", "/env")],
                Some("/env"),
            ),
            (
                CacheConfig {
                    enabled: Some(false),
                    ..cfg.clone()
                },
                vec![],
                None,
            ),
            (cfg.clone(), vec![("DRKIT_CACHE", "off")], None),
            (
                cfg.clone(),
                vec![("DRKIT_CACHE", "on")],
                Some("/home/u/.cache/drkit"),
            ),
        ];
        for (c, extra, want) in cases {
            let extra: &'static [(&str, &str)] = Box::leak(extra.into_boxed_slice());
            assert_eq!(dir(&c, &home(extra)).as_deref(), want, "{c:?} {extra:?}");
        }
        assert_eq!(dir(&cfg, &|_| None), None, "no home: no cache");
        let sized: CacheConfig = toml::from_str("max_size = \"1MiB\"").unwrap();
        assert_eq!(sized.max_size, Some(1 << 20));
        assert!(toml::from_str::<CacheConfig>("size = 1").is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(
            version_of(&meta("k", 3, Some("\"abc\""))).unwrap(),
            "etag \"abc\""
        );
        let v = version_of(&meta("k", 3, None)).unwrap();
        assert!(v.starts_with("size 3 modified 2026-01-01T00:00:00"), "{v}");
        let mut none = meta("k", 3, None);
        none.modified = None;
        assert_eq!(version_of(&none), None);
    }

    /// The table: what a cache file holds against what the listing says.
    #[test]
    fn decode_table() {
        let key = "db/20260101T000000Z-aaaaaa/manifest.json";
        let body = b"{\"manifest\":1}".to_vec();
        let listed = meta(key, body.len() as u64, Some("\"e1\""));
        let good = encode("s3://b", &listed, &body).unwrap();
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let oversized = {
            let mut v = good.clone();
            v.resize(MAX_FILE_SIZE as usize + 1, b' ');
            v
        };
        let other_key = encode(
            "s3://b",
            &meta("db/x/manifest.json", body.len() as u64, Some("\"e1\"")),
            &body,
        )
        .unwrap();
        let mut etag_changed = listed.clone();
        etag_changed.etag = Some("\"e2\"".into());
        let mut size_changed = listed.clone();
        size_changed.size += 1;
        let mut no_version = listed.clone();
        no_version.etag = None;
        no_version.modified = None;
        type Case<'a> = (
            &'a str,
            Vec<u8>,
            &'a str,
            &'a ObjectMeta,
            Result<Vec<u8>, &'a str>,
        );
        let cases: Vec<Case> = vec![
            ("hit", good.clone(), "s3://b", &listed, Ok(body.clone())),
            (
                "etag changed",
                good.clone(),
                "s3://b",
                &etag_changed,
                Err("another version"),
            ),
            (
                "size changed",
                good.clone(),
                "s3://b",
                &size_changed,
                Err("another version"),
            ),
            ("corrupt byte", flipped, "s3://b", &listed, Err("checksum")),
            (
                "truncated",
                good[..good.len() - 2].to_vec(),
                "s3://b",
                &listed,
                Err("truncated"),
            ),
            (
                "garbage",
                b"\x00\xffjunk\n".to_vec(),
                "s3://b",
                &listed,
                Err("unreadable header"),
            ),
            (
                "no header",
                b"junk".to_vec(),
                "s3://b",
                &listed,
                Err("no header line"),
            ),
            (
                "oversized",
                oversized,
                "s3://b",
                &listed,
                Err("larger than"),
            ),
            (
                "another key's file",
                other_key,
                "s3://b",
                &listed,
                Err("another record"),
            ),
            (
                "another storage",
                good.clone(),
                "s3://c",
                &listed,
                Err("another record"),
            ),
        ];
        for (name, file, storage, m, want) in cases {
            let got = decode(&file, storage, m);
            match (got, want) {
                (Ok(b), Ok(w)) => assert_eq!(b, w, "{name}"),
                (Err(Miss::Bad(why)), Err(w)) => assert!(why.contains(w), "{name}: {why}"),
                (got, want) => panic!("{name}: {got:?}, want {want:?}"),
            }
        }
        assert_eq!(decode(&good, "s3://b", &no_version), Err(Miss::NoVersion));
        // not cached at all: too big, or not the size the listing says
        let big = vec![b'x'; MAX_RECORD as usize + 1];
        assert!(encode("s", &meta(key, big.len() as u64, Some("e")), &big).is_none());
        assert!(encode("s", &meta(key, 1, Some("e")), &body).is_none());
    }

    #[tokio::test]
    async fn files_are_replaced_pruned_and_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ManifestCache::new(&CacheSetting {
            dir: tmp.path().to_path_buf(),
            max_size: 4096,
        });
        let a = meta("db/a/manifest.json", 1000, Some("\"1\""));
        let b = meta("db/b/manifest.json", 1000, Some("\"1\""));
        let bytes = vec![b'{'; 1000];
        assert_eq!(cache.get("s", "db", &a).await, Err(Miss::Absent));
        cache.put("s", "db", &a, &bytes).await;
        cache.put("s", "db", &b, &bytes).await;
        assert_eq!(cache.get("s", "db", &a).await.unwrap(), bytes);
        // a corrupt file is a miss, and a new put replaces it
        let path = cache
            .job_dir("s", "db")
            .join(ManifestCache::file_name(&a.key));
        std::fs::write(&path, b"junk").unwrap();
        assert!(matches!(cache.get("s", "db", &a).await, Err(Miss::Bad(_))));
        cache.put("s", "db", &a, &bytes).await;
        assert_eq!(cache.get("s", "db", &a).await.unwrap(), bytes);
        // a key gone from the listing loses its entry
        assert_eq!(cache.retain("s", "db", &[&a.key], false).await, 1);
        assert_eq!(cache.get("s", "db", &b).await, Err(Miss::Absent));
        // the bound: 5 files of ~1.1 KiB in 4 KiB leave at most 90 % of it
        for i in 0..5 {
            let m = meta(&format!("db/{i}/manifest.json"), 1000, Some("\"1\""));
            cache.put("s", "other", &m, &bytes).await;
        }
        cache.retain("s", "db", &[&a.key], true).await;
        let total: u64 = walkdir(tmp.path());
        assert!(total <= 4096 / 10 * 9, "{total}");
        // no temp file is left behind
        assert!(!std::fs::read_dir(cache.job_dir("s", "other"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with('.')));
    }

    fn walkdir(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .map(|e| {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    walkdir(&e.path())
                } else {
                    m.len()
                }
            })
            .sum()
    }
}
