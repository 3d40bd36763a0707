use std::sync::Arc;

use chrono::{SubsecRound, Utc};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

use super::{Compression, HashReader, Progress, CHUNK};
use crate::catalog::{self, new_backup_id};
use crate::manifest::{DataInfo, Manifest, Suspect, FORMAT_VERSION, PLAIN_FORMAT_VERSION};
use crate::signing::{Record, Signer, Trust};
use crate::suspect::{assess, Facts, Thresholds};
use crate::{from_io, DumpSummary, Error, ErrorKind, Result, Source, Storage, Upload};

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
    /// When the new backup is suspect, compared with the newest good one.
    pub suspect: Thresholds,
    /// Signs the manifest (a `manifest.json.sig` written before it), when set.
    pub signer: Option<Arc<Signer>>,
    /// What counts as a valid previous backup when looking for the newest good one.
    pub trust: Trust,
    /// Encrypt the archive (after compression) to these keys' recipients, when set.
    pub keys: Option<Arc<crate::crypt::Keys>>,
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
    /// The kind of that error (`refused` when another run holds the job's lock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<crate::ErrorKind>,
    /// Leftovers of crashed runs removed before the backup.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cleaned: Vec<String>,
    /// Things the operator should know (a lost answer to the manifest write, a catalog that
    /// could not be read for the suspect checks).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
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

    /// Whether the backup was found suspect (see [`crate::suspect`]).
    pub fn is_suspect(&self) -> bool {
        self.manifest.suspect.is_some()
    }

    /// How this backup ends a run: a storage that failed is a failure (it outranks a suspect
    /// backup), a suspect backup is "unhealthy".
    pub fn exit(&self) -> crate::Exit {
        if !self.all_ok() {
            crate::Exit::Failed
        } else if self.is_suspect() {
            crate::Exit::Unhealthy
        } else {
            crate::Exit::Ok
        }
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
        self.outcome.error_kind = Some(e.kind());
        self.failure = Some(e);
    }
    fn live(&self) -> bool {
        self.failure.is_none()
    }
}

/// Give back every lane's job lock (a lease is removed from its storage, awaited); a lease
/// that cannot be removed expires by itself.
async fn release_locks(lanes: &mut [Lane]) {
    for lane in lanes.iter_mut() {
        if let Some(lock) = lane._lock.take() {
            if let Err(e) = lock.release().await {
                tracing::warn!(
                    event = "lock.release_failed",
                    "storage {}: {e}",
                    lane.outcome.storage
                );
            }
        }
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
/// written only after the dump succeeded and the archive was committed there. Before the
/// manifest is written, the backup is compared with the newest good backup of the job on its
/// storages and marked suspect when it looks wrong ([`crate::suspect`]). Returns an error
/// when no storage got the backup; otherwise the outcome says per storage what happened.
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
    let encrypt = opts.keys.as_ref().filter(|k| k.can_encrypt());
    let suffix = format!(
        "{}{}",
        opts.compression.suffix(),
        if encrypt.is_some() { ".age" } else { "" }
    );
    let key = crate::layout::data_key(job, &id, source.extension(), &suffix);
    tracing::debug!(
        event = "backup.start",
        job,
        backup_id = id.as_str(),
        "{job}: backup {id} starts ({} storage(s), {})",
        targets.len(),
        opts.compression
    );

    let (mut lanes, baseline) = prepare_lanes(job, &key, targets, &opts.trust).await;
    if lanes.iter().all(|l| !l.live()) {
        release_locks(&mut lanes).await;
        return Err(first_failure(lanes));
    }
    let streamed = match stream_dump(source, &key, opts, &mut lanes, progress).await {
        Ok(s) => s,
        Err(e) => {
            release_locks(&mut lanes).await;
            return Err(e);
        }
    };
    commit_archives(&key, streamed.stored_size, &mut lanes).await;

    let mut manifest = Manifest {
        format_version: if encrypt.is_some() {
            FORMAT_VERSION
        } else {
            PLAIN_FORMAT_VERSION
        },
        id: id.clone(),
        job: job.to_string(),
        driver: source.driver().to_string(),
        started_at,
        finished_at: started_at,
        data: DataInfo {
            key: key.clone(),
            compression: opts.compression,
            compression_level: opts.compression.effective_level(opts.level),
            encryption: if encrypt.is_some() {
                crate::crypt::AGE.into()
            } else {
                "none".into()
            },
            recipients: encrypt.map(|k| k.fingerprints()).unwrap_or_default(),
            raw_size: streamed.raw_size,
            raw_sha256: streamed.raw_sha256,
            stored_size: streamed.stored_size,
            stored_sha256: streamed.stored_sha256,
        },
        source: streamed.summary.source,
        stats: streamed.summary.stats,
        warnings: streamed.summary.warnings,
        suspect: None,
        drkit_version: crate::VERSION.to_string(),
        host: crate::hostname(),
    };
    let reasons = suspect_reasons(source, &manifest, baseline.as_ref(), &opts.suspect);
    if !reasons.is_empty() {
        manifest.suspect = Some(Suspect { reasons });
    }
    manifest.finished_at = Utc::now().trunc_subsecs(3);
    for lane in lanes.iter_mut().filter(|l| l.live()) {
        // A lease taken over by another run: this run must not commit there.
        if let Some(Err(e)) = lane._lock.as_ref().map(|l| l.check()) {
            lane.fail(e.context(format!("storage {}", lane.outcome.storage)));
        }
    }
    write_manifests(&manifest, opts.signer.as_deref(), &mut lanes).await;
    release_locks(&mut lanes).await;
    if lanes.iter().all(|l| !l.live()) {
        return Err(first_failure(lanes));
    }
    Ok(BackupOutcome {
        manifest,
        storages: lanes.into_iter().map(|l| l.outcome).collect(),
    })
}

/// Lock each storage's job, clean leftovers of crashed runs, read its newest good backup and
/// start the upload. A storage that fails is a dead lane; the others go on. Returns the lanes
/// and the newest good backup over all storages (the suspect checks' baseline: a storage
/// added later, or one that missed backups, must not make a tiny backup look fine).
async fn prepare_lanes(
    job: &str,
    key: &str,
    targets: &[Target],
    trust: &Trust,
) -> (Vec<Lane>, Option<Manifest>) {
    let mut lanes = Vec::with_capacity(targets.len());
    let mut baseline: Option<Manifest> = None;
    for t in targets {
        let mut lane = Lane {
            outcome: StorageOutcome {
                storage: t.name.clone(),
                ok: false,
                error: None,
                error_kind: None,
                cleaned: Vec::new(),
                notes: Vec::new(),
            },
            storage: t.storage.clone(),
            upload: None,
            failure: None,
            _lock: None,
        };
        let prepared = async {
            let lock = t.storage.lock(job).await?;
            let cleaned =
                crate::layout::clean_recent_leftovers(t.storage.as_ref(), job, lock.is_held())
                    .await?;
            let upload = t.storage.create(key).await?;
            Ok::<_, Error>((lock, cleaned, upload))
        }
        .await;
        match prepared {
            Ok((lock, cleaned, upload)) => {
                lane._lock = Some(lock);
                lane.outcome.cleaned = cleaned;
                lane.upload = Some(upload);
                match catalog::newest_good(t.storage.as_ref(), job, trust, Utc::now()).await {
                    Ok(newest) => {
                        if let Some(e) = newest {
                            if baseline
                                .as_ref()
                                .is_none_or(|b| e.manifest.started_at > b.started_at)
                            {
                                baseline = Some(e.manifest.clone());
                            }
                        }
                    }
                    Err(e) => lane.outcome.notes.push(format!(
                        "could not read the earlier backups for the suspect checks: {e}"
                    )),
                }
            }
            Err(e) => lane.fail(e.context(format!("storage {}", t.name))),
        }
        lanes.push(lane);
    }
    (lanes, baseline)
}

/// What the dump produced, hashed on the way.
struct Streamed {
    raw_size: u64,
    raw_sha256: String,
    stored_size: u64,
    stored_sha256: String,
    summary: DumpSummary,
}

/// Run the dump, compress it and write it to every live lane in one pass. A storage that
/// fails drops out; the dump failing (its read or its exit status) aborts every upload.
async fn stream_dump(
    source: &dyn Source,
    key: &str,
    opts: &BackupOptions,
    lanes: &mut Vec<Lane>,
    progress: Progress,
) -> Result<Streamed> {
    let dump = match source.dump().await {
        Ok(d) => d,
        Err(e) => {
            abort_all(lanes).await;
            return Err(e);
        }
    };
    let (raw, raw_hash) = HashReader::new(dump.reader, 0);
    let mut stored = opts
        .compression
        .encoder(BufReader::with_capacity(CHUNK, raw), opts.level);
    let mut stored_hasher = sha2::Sha256::default();
    let mut stored_size = 0u64;
    let mut encrypting = match opts.keys.as_ref().filter(|k| k.can_encrypt()) {
        Some(k) => match k.encryptor() {
            Ok(e) => Some(e),
            Err(e) => {
                abort_all(lanes).await;
                return Err(e);
            }
        },
        None => None,
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match stored.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                abort_all(lanes).await;
                return Err(from_io(
                    e,
                    ErrorKind::Source,
                    format!("reading the {} dump", source.driver()),
                ));
            }
        };
        let sealed;
        let out: &[u8] = match encrypting.as_mut() {
            Some(enc) => {
                sealed = match enc.push(&buf[..n]) {
                    Ok(s) => s,
                    Err(e) => {
                        abort_all(lanes).await;
                        return Err(encrypt_failed(e));
                    }
                };
                &sealed
            }
            None => &buf[..n],
        };
        sha2::Digest::update(&mut stored_hasher, out);
        stored_size += out.len() as u64;
        if !fan_out(lanes, key, out).await {
            drop(stored);
            return Err(first_failure(std::mem::take(lanes)));
        }
        progress.moved(raw_hash.size());
    }
    drop(stored);
    if let Some(enc) = encrypting.take() {
        let last = match enc.finish() {
            Ok(l) => l,
            Err(e) => {
                abort_all(lanes).await;
                return Err(encrypt_failed(e));
            }
        };
        sha2::Digest::update(&mut stored_hasher, &last);
        stored_size += last.len() as u64;
        if !fan_out(lanes, key, &last).await {
            return Err(first_failure(std::mem::take(lanes)));
        }
    }

    // The dump's exit status is part of the data: check it before anything is committed.
    let summary = match dump.finish.await {
        Ok(s) => s,
        Err(e) => {
            abort_all(lanes).await;
            return Err(e);
        }
    };
    let raw = raw_hash.finish();
    Ok(Streamed {
        raw_size: raw.size,
        raw_sha256: raw.sha256,
        stored_size,
        stored_sha256: hex::encode(sha2::Digest::finalize(stored_hasher)),
        summary,
    })
}

/// Commit the archive on every live lane and check the storage holds every byte.
fn encrypt_failed(e: std::io::Error) -> Error {
    Error::new(ErrorKind::Source, format!("age encryption failed: {e}"))
}

/// Write `bytes` to every live lane; a lane whose write fails drops out. Returns whether
/// any lane is still live.
async fn fan_out(lanes: &mut [Lane], key: &str, bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return lanes.iter().any(|l| l.live());
    }
    for lane in lanes.iter_mut().filter(|l| l.live()) {
        let up = lane.upload.as_mut().expect("live lane has an upload");
        if let Err(e) = up.write_all(bytes).await {
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
    lanes.iter().any(|l| l.live())
}

async fn commit_archives(key: &str, stored_size: u64, lanes: &mut [Lane]) {
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
}

/// The suspect checks of the new backup against the newest good one.
fn suspect_reasons(
    source: &dyn Source,
    new: &Manifest,
    baseline: Option<&Manifest>,
    thresholds: &Thresholds,
) -> Vec<String> {
    let facts = |m: &Manifest| Facts {
        raw_size: m.data.raw_size,
        measure: source.measure(&m.stats),
    };
    // A baseline of another driver (the job's source changed kind) is no baseline.
    let previous = baseline.filter(|b| b.driver == new.driver).map(facts);
    assess(&facts(new), previous.as_ref(), thresholds)
}

/// Write the signature (when signing) and then the manifest on every live lane: the commit.
///
/// A failed write may have landed (the answer was lost). drkit then asks the storage: a
/// manifest (or signature) that is there with exactly the bytes written counts as written
/// (for the manifest: a complete backup, ok, with a note); otherwise the lane failed, and
/// without its signature the manifest is not written at all. The archive is never deleted
/// here: when the manifest is absent, the archive is a leftover for the leftover cleaning of
/// a later run (on storages that cannot lock, once older than their `leftover_age`: a 5xx
/// answered write may still land); when the storage cannot say, deleting it could leave a
/// listed backup without data.
async fn write_manifests(manifest: &Manifest, signer: Option<&Signer>, lanes: &mut [Lane]) {
    let json = manifest.to_json();
    let key = manifest.key();
    let (job, id) = (&manifest.job, &manifest.id);
    let sig = signer.map(|s| s.sign(Record::Manifest, &json));
    for lane in lanes.iter_mut().filter(|l| l.live()) {
        let name = lane.outcome.storage.clone();
        if let Some(sig) = &sig {
            let sig_key = crate::layout::signature_key(&key);
            if let Err(e) = lane.storage.put(&sig_key, sig.clone()).await {
                match landed(lane.storage.as_ref(), &sig_key, sig).await {
                    Ok(true) => lane.outcome.notes.push(format!(
                        "the signature write reported an error ({e}), but the signature is in the storage, byte for byte"
                    )),
                    Ok(false) => {
                        lane.fail(Error::new(e.kind(), format!(
                            "storage {name}: backup {id} failed: its manifest's signature could not be written (the storage does not have it, asked after the error), so the manifest was not written; the archive is kept for the leftover cleaning of a later run; the write: {e}"
                        )));
                        continue;
                    }
                    Err(check) => {
                        lane.fail(Error::new(e.kind(), format!(
                            "storage {name}: backup {id} failed: its manifest's signature could not be written (whether it landed is unknown), so the manifest was not written; the archive is kept for the leftover cleaning of a later run; the write: {e}; the check: {check}"
                        )));
                        continue;
                    }
                }
            }
        }
        let Err(e) = lane.storage.put(&key, json.clone()).await else {
            lane.outcome.ok = true;
            continue;
        };
        match landed(lane.storage.as_ref(), &key, &json).await {
            Ok(true) => {
                lane.outcome.ok = true;
                lane.outcome.notes.push(format!(
                    "the manifest write reported an error ({e}), but the manifest is in the storage, byte for byte: the backup is complete"
                ));
            }
            Ok(false) => lane.fail(Error::new(e.kind(), format!(
                "storage {name}: backup {id} failed: its manifest could not be written (the storage does not have it, asked after the error); the archive is kept for the leftover cleaning of a later run; the write: {e}"
            ))),
            Err(check) => lane.fail(Error::new(e.kind(), format!(
                "storage {name}: backup {id}: writing its manifest failed and whether it landed is unknown (the storage could not be asked): the backup may be complete there, and its archive is kept; run `drkit list {job}` to see whether it is listed, and `drkit verify {job} --id {id}` to check it; the write: {e}; the check: {check}"
            ))),
        }
    }
}

/// Whether `key` holds exactly `bytes` (a write whose answer was lost may have landed).
async fn landed(storage: &dyn Storage, key: &str, bytes: &[u8]) -> Result<bool> {
    match storage.head(key).await? {
        None => Ok(false),
        Some(meta) if meta.size != bytes.len() as u64 => Ok(false),
        Some(_) => Ok(catalog::read_small(storage, key).await? == bytes),
    }
}

fn first_failure(lanes: Vec<Lane>) -> Error {
    lanes
        .into_iter()
        .find_map(|l| l.failure)
        .unwrap_or_else(|| Error::storage("no storage accepted the backup"))
}
