use std::sync::Arc;

use chrono::{SubsecRound, Utc};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use super::{Compression, HashReader, Progress, CHUNK};
use crate::catalog::new_backup_id;
use crate::manifest::{DataInfo, Manifest, FORMAT_VERSION};
use crate::{from_io, Error, ErrorKind, Result, Source, Storage, Upload};

/// A named storage a backup is written to.
#[derive(Clone)]
pub struct Target {
    /// The storage's name in the config.
    pub name: String,
    /// The storage.
    pub storage: Arc<dyn Storage>,
}

/// How to take a backup.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Compression of the stored archive.
    pub compression: Compression,
    /// Compression level; `None` for the codec's default (zstd 3).
    pub level: Option<i32>,
}

/// What happened on one storage.
#[derive(Debug, Clone, Serialize)]
pub struct StorageOutcome {
    /// The storage's name in the config.
    pub storage: String,
    /// Whether the backup is complete there (its manifest is written).
    pub ok: bool,
    /// Why it failed there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Leftovers of crashed runs removed before the backup.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cleaned: Vec<String>,
}

/// The result of a backup: the manifest and what happened per storage.
#[derive(Debug, Clone, Serialize)]
pub struct BackupOutcome {
    /// The manifest written to every storage that succeeded.
    pub manifest: Manifest,
    /// Per storage, in the job's order.
    pub storages: Vec<StorageOutcome>,
}

impl BackupOutcome {
    /// Whether every storage has the backup.
    pub fn all_ok(&self) -> bool {
        self.storages.iter().all(|s| s.ok)
    }
}

struct Lane {
    outcome: StorageOutcome,
    storage: Arc<dyn Storage>,
    upload: Option<Box<dyn Upload>>,
    failure: Option<Error>,
    _lock: Option<crate::JobLock>,
}

impl Lane {
    fn fail(&mut self, e: Error) {
        self.outcome.ok = false;
        self.outcome.error = Some(e.to_string());
        self.failure = Some(e);
    }
    fn live(&self) -> bool {
        self.failure.is_none()
    }
}

async fn abort_all(lanes: &mut [Lane]) {
    for lane in lanes.iter_mut() {
        if let Some(up) = lane.upload.take() {
            let _ = up.abort().await;
        }
    }
}

/// Take one backup of `source` for `job` into every target, reading the source once.
///
/// The archive is streamed (no temp copy, bounded memory). On each storage the manifest is
/// written only after the dump succeeded and the archive was committed there. Returns an
/// error when no storage got the backup; otherwise the outcome says per storage what
/// happened.
pub async fn backup(
    job: &str,
    source: &dyn Source,
    targets: &[Target],
    opts: &BackupOptions,
    progress: Progress,
) -> Result<BackupOutcome> {
    if targets.is_empty() {
        return Err(Error::config(format!("job {job} has no storage")));
    }
    let started_at = Utc::now().trunc_subsecs(3);
    let id = new_backup_id(started_at, &mut rand::thread_rng());
    let key = format!(
        "{job}/{id}/data.{}{}",
        source.extension(),
        opts.compression.suffix()
    );

    let mut lanes = Vec::with_capacity(targets.len());
    for t in targets {
        let mut lane = Lane {
            outcome: StorageOutcome {
                storage: t.name.clone(),
                ok: false,
                error: None,
                cleaned: Vec::new(),
            },
            storage: t.storage.clone(),
            upload: None,
            failure: None,
            _lock: None,
        };
        let prepared = async {
            let lock = t.storage.lock_job(job).await?;
            let cleaned = t.storage.clean_leftovers(job, lock.is_held()).await?;
            let upload = t.storage.create(&key).await?;
            Ok::<_, Error>((lock, cleaned, upload))
        }
        .await;
        match prepared {
            Ok((lock, cleaned, upload)) => {
                lane._lock = Some(lock);
                lane.outcome.cleaned = cleaned;
                lane.upload = Some(upload);
            }
            Err(e) => lane.fail(e.context(format!("storage {}", t.name))),
        }
        lanes.push(lane);
    }
    if lanes.iter().all(|l| !l.live()) {
        return Err(first_failure(lanes));
    }

    let dump = match source.dump().await {
        Ok(d) => d,
        Err(e) => {
            abort_all(&mut lanes).await;
            return Err(e);
        }
    };

    let (raw, raw_hash) = HashReader::new(dump.reader, 0);
    let mut stored = opts
        .compression
        .encoder(BufReader::with_capacity(CHUNK, raw), opts.level);
    let mut stored_hasher = sha2::Sha256::default();
    let mut stored_size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match stored.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                abort_all(&mut lanes).await;
                return Err(from_io(
                    e,
                    ErrorKind::Source,
                    format!("reading the {} dump", source.driver()),
                ));
            }
        };
        sha2::Digest::update(&mut stored_hasher, &buf[..n]);
        stored_size += n as u64;
        for lane in lanes.iter_mut().filter(|l| l.live()) {
            let up = lane.upload.as_mut().expect("live lane has an upload");
            if let Err(e) = up.write_all(&buf[..n]).await {
                let err = from_io(
                    e,
                    ErrorKind::Storage,
                    format!("storage {}: writing {key}", lane.outcome.storage),
                );
                if let Some(up) = lane.upload.take() {
                    let _ = up.abort().await;
                }
                lane.fail(err);
            }
        }
        if lanes.iter().all(|l| !l.live()) {
            drop(stored);
            return Err(first_failure(lanes));
        }
        progress(raw_hash.size());
    }
    drop(stored);

    // The dump's exit status is part of the data: check it before anything is committed.
    let summary = match dump.finish.await {
        Ok(s) => s,
        Err(e) => {
            abort_all(&mut lanes).await;
            return Err(e);
        }
    };
    let raw = raw_hash.finish();
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        id: id.clone(),
        job: job.to_string(),
        driver: source.driver().to_string(),
        started_at,
        finished_at: started_at,
        data: DataInfo {
            key: key.clone(),
            compression: opts.compression,
            encryption: "none".into(),
            raw_size: raw.size,
            raw_sha256: raw.sha256,
            stored_size,
            stored_sha256: hex::encode(sha2::Digest::finalize(stored_hasher)),
        },
        source: summary.source,
        stats: summary.stats,
        warnings: summary.warnings,
        drkit_version: crate::VERSION.to_string(),
        host: crate::hostname(),
    };

    for lane in lanes.iter_mut().filter(|l| l.live()) {
        let mut up = lane.upload.take().expect("live lane has an upload");
        let committed = async {
            up.flush()
                .await
                .map_err(|e| from_io(e, ErrorKind::Storage, format!("writing {key}")))?;
            let meta = up.commit().await?;
            if meta.size != stored_size {
                return Err(Error::integrity(format!(
                    "{key}: storage holds {} bytes, {stored_size} were written",
                    meta.size
                )));
            }
            Ok(())
        }
        .await;
        if let Err(e) = committed {
            lane.fail(e.context(format!("storage {}", lane.outcome.storage)));
        }
    }
    manifest.finished_at = Utc::now().trunc_subsecs(3);
    let json = manifest.to_json();
    for lane in lanes.iter_mut().filter(|l| l.live()) {
        match lane.storage.put(&manifest.key(), json.clone()).await {
            Ok(()) => lane.outcome.ok = true,
            Err(e) => {
                // Without its manifest the archive is a leftover: remove it now.
                let _ = lane.storage.delete(&key).await;
                lane.fail(e.context(format!(
                    "storage {}: writing the manifest",
                    lane.outcome.storage
                )));
            }
        }
    }
    if lanes.iter().all(|l| !l.live()) {
        return Err(first_failure(lanes));
    }
    Ok(BackupOutcome {
        manifest,
        storages: lanes.into_iter().map(|l| l.outcome).collect(),
    })
}

fn first_failure(lanes: Vec<Lane>) -> Error {
    lanes
        .into_iter()
        .find_map(|l| l.failure)
        .unwrap_or_else(|| Error::storage("no storage accepted the backup"))
}
