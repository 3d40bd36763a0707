use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

use super::{HashReader, Hashes, Progress, CHUNK};
use crate::{from_io, BoxRead, Error, ErrorKind, Manifest, Result, Source, Storage};

/// What a verification checked.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The job of the backup.
    pub job: String,
    /// The backup id.
    pub id: String,
    /// Stored bytes read and checked.
    pub stored_size: u64,
    /// Raw bytes after decompression, checked.
    pub raw_size: u64,
    /// Whether the driver's structure check ran on the raw bytes.
    pub structure_checked: bool,
    /// What the deep check (`verify --deep`) counted, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deep: Option<String>,
    /// How far the check went: everything, or (an encrypted backup without its identity)
    /// the stored bytes only.
    pub checked: Checked,
}

/// How far a verification went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Checked {
    /// Stored and raw checksums, and the structure when a source was given.
    Full,
    /// An encrypted archive without its identity: the stored size and sha256 only.
    Stored,
}

/// A stored archive opened for reading: its raw bytes, the handles that hash the stored and
/// the raw stream, and the time spent waiting for the storage.
pub(crate) struct Opened {
    pub raw: HashReader<BoxRead>,
    pub stored_hash: super::hash::HashHandle,
    pub raw_hash: super::hash::HashHandle,
    pub waited: super::hash::WaitHandle,
}

/// Open the stored archive of `manifest` and return a reader of its raw bytes, keeping up to
/// `head` first raw bytes for the structure check.
pub(crate) async fn open_raw(
    storage: &dyn Storage,
    manifest: &Manifest,
    head: usize,
    keys: Option<&crate::crypt::Keys>,
) -> Result<Opened> {
    let encrypted = check_encryption(manifest)?;
    if encrypted && !keys.is_some_and(|k| k.can_decrypt()) {
        return Err(crate::crypt::missing_identity(manifest));
    }
    let stored = storage.get(&manifest.data.key).await.map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            Error::integrity(format!(
                "backup {}/{}: its archive {} is missing from the storage",
                manifest.job, manifest.id, manifest.data.key
            ))
        } else {
            e
        }
    })?;
    let (stored, waited) = super::hash::WaitClock::new(stored);
    let (stored, stored_hash) = HashReader::new(stored, 0);
    let plain: BoxRead = match keys.filter(|_| encrypted) {
        Some(k) => k.decrypt(manifest, Box::new(stored)).await?,
        None => Box::new(stored),
    };
    let decoded = manifest
        .data
        .compression
        .decoder(BufReader::with_capacity(CHUNK, plain));
    let (raw, raw_hash) = HashReader::new(Box::new(decoded) as BoxRead, head);
    Ok(Opened {
        raw,
        stored_hash,
        raw_hash,
        waited,
    })
}

/// Whether the archive is encrypted; an encryption this build does not know is a backup
/// from a newer drkit (or a forged manifest): refused, never guessed.
pub(crate) fn check_encryption(manifest: &Manifest) -> Result<bool> {
    match manifest.data.encryption.as_str() {
        "none" => Ok(false),
        crate::crypt::AGE => Ok(true),
        other => Err(Error::integrity(format!(
            "backup {}/{}: its archive uses encryption {:?}, which this drkit cannot read",
            manifest.job,
            manifest.id,
            other.chars().take(32).collect::<String>()
        ))),
    }
}

/// Verify only what can be checked without the key: the stored bytes' size and sha256.
async fn verify_stored(
    storage: &dyn Storage,
    manifest: &Manifest,
    progress: &Progress,
) -> Result<VerifyReport> {
    let stored = storage.get(&manifest.data.key).await?;
    let (stored, hash) = HashReader::new(stored, 0);
    progress.total(manifest.data.stored_size);
    drain_with(stored, progress, |_| {})
        .await
        .map_err(|e| read_failure(manifest, e))?;
    let got = hash.finish();
    compare(
        manifest,
        "stored",
        &got,
        manifest.data.stored_size,
        &manifest.data.stored_sha256,
    )?;
    Ok(VerifyReport {
        job: manifest.job.clone(),
        id: manifest.id.clone(),
        stored_size: got.size,
        raw_size: 0,
        structure_checked: false,
        deep: None,
        checked: Checked::Stored,
    })
}

pub(crate) fn compare(
    manifest: &Manifest,
    what: &str,
    got: &Hashes,
    size: u64,
    sha: &str,
) -> Result<()> {
    if got.size != size || got.sha256 != sha {
        return Err(Error::integrity(format!(
            "backup {}/{} is corrupt: {what} bytes have size {} and sha256 {}, the manifest says {} and {}",
            manifest.job, manifest.id, got.size, &got.sha256[..12], size, &sha[..sha.len().min(12)]
        )));
    }
    Ok(())
}

/// Turn a failure while reading an archive into the right error: a storage error stays one;
/// anything else (the decompressor choking) means the archive is corrupt.
pub(crate) fn read_failure(manifest: &Manifest, e: std::io::Error) -> Error {
    let carried = e.get_ref().is_some_and(|inner| inner.is::<Error>());
    if carried {
        return from_io(e, ErrorKind::Storage, "");
    }
    Error::integrity(format!(
        "backup {}/{} is corrupt: its archive cannot be decrypted or decompressed ({e})",
        manifest.job, manifest.id
    ))
}

/// Read a stream to its end, in bounded chunks, calling `progress` and handing every chunk
/// to `each`.
async fn drain_with<R: AsyncRead + Unpin>(
    mut r: R,
    progress: &Progress,
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        each(&buf[..n]);
        total += n as u64;
        progress.moved(total);
    }
}

/// Re-read a backup from its storage and check it: the stored bytes' size and sha256, the raw
/// bytes' size and sha256 after decompression, and the driver's structure check when a
/// `source` is given. Any mismatch is an [`ErrorKind::Integrity`] error naming the backup.
pub async fn verify(
    storage: &dyn Storage,
    manifest: &Manifest,
    source: Option<&dyn Source>,
    progress: Progress,
) -> Result<VerifyReport> {
    verify_with(storage, manifest, source, false, None, progress).await
}

/// [`verify`], and with `deep` also the driver's deep check ([`Source::deep_check`]): a
/// structural walk of the whole archive whose counts are compared with the manifest's.
pub async fn verify_with(
    storage: &dyn Storage,
    manifest: &Manifest,
    source: Option<&dyn Source>,
    deep: bool,
    keys: Option<&crate::crypt::Keys>,
    progress: Progress,
) -> Result<VerifyReport> {
    if check_encryption(manifest)? && !keys.is_some_and(|k| k.can_decrypt()) {
        return verify_stored(storage, manifest, &progress).await;
    }
    progress.total(manifest.data.raw_size);
    let opened = open_raw(storage, manifest, 4096, keys).await?;
    let mut checks = EndChecks::new(manifest, source, deep);
    let read = drain_with(opened.raw, &progress, |chunk| checks.update(chunk)).await;
    if let Err(e) = read {
        return Err(read_failure(manifest, e));
    }
    let stored_size = opened.stored_hash.finish().size;
    let deep = checks.finish(&opened.stored_hash, &opened.raw_hash)?;
    if let Some(src) = source {
        src.check_structure(&opened.raw_hash.head())
            .map_err(|e| corrupt(manifest, e))?;
    }
    Ok(VerifyReport {
        job: manifest.job.clone(),
        id: manifest.id.clone(),
        stored_size,
        raw_size: manifest.data.raw_size,
        structure_checked: source.is_some(),
        deep,
        checked: Checked::Full,
    })
}

pub(crate) fn corrupt(manifest: &Manifest, e: Error) -> Error {
    Error::integrity(format!(
        "backup {}/{} is corrupt: {e}",
        manifest.job, manifest.id
    ))
}

/// What is checked once the whole raw stream was read: both checksums, the driver's stream
/// check, and (for `verify --deep`) its deep check. Fed chunk by chunk, by [`verify_with`]
/// and by a one-pass restore's reader; it owns what it needs, so a reader handed to a driver
/// can carry it. (The head's structure check is the caller's: it needs the source.)
pub(crate) struct EndChecks {
    manifest: Manifest,
    stream: Option<Box<dyn crate::StreamCheck>>,
    deep: Option<Box<dyn crate::DeepCheck>>,
    /// The first error of a stream or deep check (later chunks are not fed).
    failed: Option<Error>,
}

impl EndChecks {
    pub(crate) fn new(manifest: &Manifest, source: Option<&dyn Source>, deep: bool) -> Self {
        EndChecks {
            manifest: manifest.clone(),
            stream: source.and_then(|s| s.stream_check(manifest)),
            deep: source.filter(|_| deep).and_then(|s| s.deep_check(manifest)),
            failed: None,
        }
    }

    pub(crate) fn update(&mut self, chunk: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if let Some(c) = self.stream.as_mut() {
            self.failed = c.update(chunk).err();
        }
        if let (Some(c), None) = (self.deep.as_mut(), &self.failed) {
            self.failed = c.update(chunk).err();
        }
    }

    /// Check the end; returns the deep check's summary when one ran.
    pub(crate) fn finish(
        self,
        stored: &super::hash::HashHandle,
        raw: &super::hash::HashHandle,
    ) -> Result<Option<String>> {
        let manifest = &self.manifest;
        compare(
            manifest,
            "stored",
            &stored.finish(),
            manifest.data.stored_size,
            &manifest.data.stored_sha256,
        )?;
        compare(
            manifest,
            "raw",
            &raw.finish(),
            manifest.data.raw_size,
            &manifest.data.raw_sha256,
        )?;
        if let Some(e) = self.failed {
            return Err(corrupt(manifest, e));
        }
        if let Some(c) = self.stream {
            c.finish().map_err(|e| corrupt(manifest, e))?;
        }
        match self.deep {
            Some(c) => c.finish().map(Some).map_err(|e| {
                Error::integrity(format!(
                    "backup {}/{}: the deep check failed: {e}",
                    manifest.job, manifest.id
                ))
            }),
            None => Ok(None),
        }
    }
}
