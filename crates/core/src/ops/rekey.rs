//! `rekey`: give existing encrypted backups to the job's current recipients. Only the age
//! header changes (the file key is opened with the old identity and wrapped for the new
//! recipients; the nonce and the payload are copied byte for byte). The new archive is
//! written beside the old one, checked, and the manifest is rewritten last; then the old
//! archive is removed. A backup under object lock is skipped: its manifest cannot change.

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::catalog::{self, Entry};
use crate::crypt::{self, Keys};
use crate::pipeline::Target;
use crate::signing::{Record, Signer, Trust};
use crate::{Error, ErrorKind, Manifest, Result};

/// What happened to one backup.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Rekeyed {
    /// Its header now names the new recipients.
    Rekeyed {
        /// The new archive's key.
        key: String,
    },
    /// It is already encrypted to exactly these recipients.
    Already,
    /// Not encrypted: nothing to rekey (a new backup of the job will be).
    Plain,
    /// Under object lock: its manifest cannot be rewritten.
    Locked {
        /// Until when.
        until: chrono::DateTime<chrono::Utc>,
    },
    /// A dry run: it would be rekeyed.
    Would,
    /// It failed; the backup is unchanged (or, if only the old archive's removal failed,
    /// rekeyed with a leftover that a later prune removes).
    Failed {
        /// Why.
        error: String,
    },
}

/// One backup's rekey.
#[derive(Debug, Clone, Serialize)]
pub struct RekeyItem {
    /// The storage.
    pub storage: String,
    /// The backup.
    pub id: String,
    /// What happened.
    #[serde(flatten)]
    pub result: Rekeyed,
}

/// Rekey the encrypted backups of `job` (only `id` when given) on each storage: opened with
/// `from`'s identity, given to `to`'s recipients. A storage that cannot be read is an error
/// item; the others go on.
#[allow(clippy::too_many_arguments)]
pub async fn rekey(
    job: &str,
    targets: &[Target],
    trust: &Trust,
    from: &Keys,
    to: &Keys,
    signer: Option<&Signer>,
    id: Option<&str>,
    dry_run: bool,
) -> Result<Vec<RekeyItem>> {
    if !to.can_encrypt() {
        return Err(Error::config(format!(
            "job {job} has no encryption recipients to rekey to: set job.{job}.encryption.recipients"
        )));
    }
    if !from.can_decrypt() {
        return Err(Error::config(format!(
            "rekey needs the identity that opens the backups now: pass --identity FILE (or set job.{job}.encryption.identity_file)"
        )));
    }
    if !trust.is_blind() && signer.is_none() {
        return Err(Error::config(format!(
            "job {job} signs its manifests and this host has no signing key_file: a rekeyed manifest would not be trusted"
        )));
    }
    let mut out = Vec::new();
    for t in targets {
        let listing = match catalog::scan(t.storage.as_ref(), job, trust).await {
            Ok(l) => l,
            Err(e) => {
                out.push(RekeyItem {
                    storage: t.name.clone(),
                    id: String::new(),
                    result: Rekeyed::Failed {
                        error: e.to_string(),
                    },
                });
                continue;
            }
        };
        for entry in listing
            .backups
            .iter()
            .filter(|e| id.is_none_or(|i| e.manifest.id == i))
        {
            let result = match one(t, entry, from, to, signer, dry_run).await {
                Ok(r) => r,
                Err(e) => Rekeyed::Failed {
                    error: e.to_string(),
                },
            };
            out.push(RekeyItem {
                storage: t.name.clone(),
                id: entry.manifest.id.clone(),
                result,
            });
        }
    }
    if let (Some(id), true) = (id, out.iter().all(|i| i.id.is_empty())) {
        return Err(Error::not_found(format!(
            "no backup {job}/{id} on the job's storages"
        )));
    }
    Ok(out)
}

/// The key of the rekeyed archive: the old name with a `.rk<time>` before `.age`.
fn new_key(old: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let base = old.strip_suffix(".age").unwrap_or(old);
    let base = match base.rfind(".rk") {
        Some(i) if base.len() > i + 3 && base[i + 3..].chars().all(|c| c.is_ascii_digit()) => {
            &base[..i]
        }
        _ => base,
    };
    format!("{base}.rk{}.age", now.timestamp_millis())
}

async fn one(
    t: &Target,
    entry: &Entry,
    from: &Keys,
    to: &Keys,
    signer: Option<&Signer>,
    dry_run: bool,
) -> Result<Rekeyed> {
    let m = &entry.manifest;
    let storage = t.storage.as_ref();
    if m.data.encryption != crypt::AGE {
        return Ok(Rekeyed::Plain);
    }
    let (mut have, mut want) = (m.data.recipients.clone(), to.fingerprints());
    have.sort();
    want.sort();
    if have == want {
        return Ok(Rekeyed::Already);
    }
    if let Some(until) = storage.locked_until(&m.key()).await? {
        return Ok(Rekeyed::Locked { until });
    }
    let what = format!("backup {}/{}", m.job, m.id);
    let mut old = storage.get(&m.data.key).await?;
    // The header, then the rest streamed: both hashed, the old against the manifest.
    let mut head = Vec::with_capacity(crypt::MAX_HEADER);
    (&mut old)
        .take(crypt::MAX_HEADER as u64)
        .read_to_end(&mut head)
        .await
        .map_err(|e| crate::from_io(e, ErrorKind::Storage, &what))?;
    let header = crypt::parse_header(&head)
        .map_err(|why| Error::integrity(format!("{what}: its age header cannot be read: {why}")))?;
    let fresh = Keys::rekey_header(from, to, &head, &header, &what)?;
    if dry_run {
        return Ok(Rekeyed::Would);
    }
    let key = new_key(&m.data.key, chrono::Utc::now());
    let mut up = storage.create(&key).await?;
    let mut old_hash = sha2::Sha256::default();
    let mut new_hash = sha2::Sha256::default();
    let (mut old_size, mut new_size) = (head.len() as u64, 0u64);
    sha2::Digest::update(&mut old_hash, &head);
    let copied = async {
        let rest = &head[header.len..];
        for part in [&fresh[..], rest] {
            sha2::Digest::update(&mut new_hash, part);
            new_size += part.len() as u64;
            up.write_all(part).await?;
        }
        let mut buf = vec![0u8; crate::pipeline::CHUNK];
        loop {
            let n = old.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            sha2::Digest::update(&mut old_hash, &buf[..n]);
            sha2::Digest::update(&mut new_hash, &buf[..n]);
            old_size += n as u64;
            new_size += n as u64;
            up.write_all(&buf[..n]).await?;
        }
        up.flush().await
    }
    .await;
    let old_sha = hex::encode(sha2::Digest::finalize(old_hash));
    let fail = match copied {
        Err(e) => Some(crate::from_io(
            e,
            ErrorKind::Storage,
            format!("{what}: copying"),
        )),
        Ok(()) if old_size != m.data.stored_size || old_sha != m.data.stored_sha256 => {
            Some(Error::integrity(format!(
                "{what} is corrupt: its stored bytes do not match the manifest; not rekeyed"
            )))
        }
        Ok(()) => None,
    };
    if let Some(e) = fail {
        let _ = up.abort().await;
        return Err(e);
    }
    let meta = up.commit().await?;
    if meta.size != new_size {
        let _ = storage.delete(&key).await;
        return Err(Error::storage(format!(
            "{what}: the storage holds {} bytes of the new archive, {new_size} were written",
            meta.size
        )));
    }
    let mut m2: Manifest = m.clone();
    m2.data.key = key.clone();
    m2.data.stored_size = new_size;
    m2.data.stored_sha256 = hex::encode(sha2::Digest::finalize(new_hash));
    m2.data.recipients = to.fingerprints();
    let json = m2.to_json();
    if let Some(s) = signer {
        let sig = s.sign(Record::Manifest, &json);
        storage
            .put(&crate::layout::signature_key(&m2.key()), sig)
            .await?;
    }
    // The manifest last: until it lands, the old archive is the backup.
    storage.put(&m2.key(), json).await?;
    if let Err(e) = storage.delete(&m.data.key).await {
        return Ok(Rekeyed::Failed {
            error: format!(
                "rekeyed, but the old archive {} could not be removed ({e}); remove it by hand",
                m.data.key
            ),
        });
    }
    Ok(Rekeyed::Rekeyed { key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_keep_the_name_and_do_not_grow() {
        let now: chrono::DateTime<chrono::Utc> = "2026-12-03T02:00:00Z".parse().unwrap();
        let cases = [
            (
                "a/1/data.sqlite.zst.age",
                "a/1/data.sqlite.zst.rk1796263200000.age",
            ),
            (
                "a/1/data.sqlite.zst.rk5.age",
                "a/1/data.sqlite.zst.rk1796263200000.age",
            ),
            ("a/1/data.rk.age", "a/1/data.rk.rk1796263200000.age"),
        ];
        for (old, want) in cases {
            assert_eq!(new_key(old, now), want);
        }
    }
}
