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
}

/// Open the stored archive of `manifest` and return a reader of its raw bytes, together with
/// the handles that hash the stored and the raw stream.
pub(crate) async fn open_raw(
    storage: &dyn Storage,
    manifest: &Manifest,
    head: usize,
) -> Result<(
    HashReader<BoxRead>,
    super::hash::HashHandle,
    super::hash::HashHandle,
)> {
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
    let (stored, stored_hash) = HashReader::new(stored, 0);
    let decoded = manifest
        .data
        .compression
        .decoder(BufReader::with_capacity(CHUNK, stored));
    let (raw, raw_hash) = HashReader::new(decoded, head);
    Ok((raw, stored_hash, raw_hash))
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
        "backup {}/{} is corrupt: its archive cannot be decompressed ({e})",
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
        progress(total);
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
    let (raw, stored_hash, raw_hash) = open_raw(storage, manifest, 4096).await?;
    let mut check = source.and_then(|s| s.stream_check(manifest));
    let mut check_failed: Option<Error> = None;
    let read = drain_with(raw, &progress, |chunk| {
        if let (Some(c), None) = (check.as_mut(), check_failed.as_ref()) {
            check_failed = c.update(chunk).err();
        }
    })
    .await;
    let stored = stored_hash.finish();
    if let Err(e) = read {
        return Err(read_failure(manifest, e));
    }
    compare(
        manifest,
        "stored",
        &stored,
        manifest.data.stored_size,
        &manifest.data.stored_sha256,
    )?;
    compare(
        manifest,
        "raw",
        &raw_hash.finish(),
        manifest.data.raw_size,
        &manifest.data.raw_sha256,
    )?;
    let mut structure_checked = false;
    if let Some(src) = source {
        let corrupt = |e: Error| {
            Error::integrity(format!(
                "backup {}/{} is corrupt: {e}",
                manifest.job, manifest.id
            ))
        };
        src.check_structure(&raw_hash.head()).map_err(corrupt)?;
        match (check, check_failed) {
            (_, Some(e)) => return Err(corrupt(e)),
            (Some(c), None) => c.finish().map_err(corrupt)?,
            (None, None) => {}
        }
        structure_checked = true;
    }
    Ok(VerifyReport {
        job: manifest.job.clone(),
        id: manifest.id.clone(),
        stored_size: stored.size,
        raw_size: manifest.data.raw_size,
        structure_checked,
    })
}
