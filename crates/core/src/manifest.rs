//! The manifest: the versioned JSON record of one backup, written last (its presence is the
//! commit of the backup).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::{Compression, Error, Result};

/// The manifest format this version of drkit writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 2;

/// The version written for backups that version 1 readers can read (not encrypted): an
/// encrypted archive gets [`FORMAT_VERSION`], so that an older drkit says "upgrade" instead of
/// taking ciphertext for a corrupt archive.
pub const PLAIN_FORMAT_VERSION: u32 = 1;

pub use crate::layout::{backup_folder, manifest_key, MANIFEST_FILE};

/// The record of one complete backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`PLAIN_FORMAT_VERSION`] for a plain archive, [`FORMAT_VERSION`] for an encrypted one.
    pub format_version: u32,
    /// The backup id, `YYYYMMDDTHHMMSSZ-<6 hex>`.
    pub id: String,
    /// The job name from the config.
    pub job: String,
    /// The source driver (`sqlite`, `postgres`, `mongodb`, `docker-volume`).
    pub driver: String,
    /// When the dump started (UTC).
    #[serde(with = "rfc3339")]
    pub started_at: DateTime<Utc>,
    /// When the manifest was written (UTC).
    #[serde(with = "rfc3339")]
    pub finished_at: DateTime<Utc>,
    /// Where the data is and how to check it.
    pub data: DataInfo,
    /// Driver details with credentials removed: server version, database, path, volume...
    #[serde(default)]
    pub source: serde_json::Value,
    /// What a restore must reproduce: row counts, documents, files, pages.
    #[serde(default)]
    pub stats: serde_json::Value,
    /// Things a later check should flag (an empty database, a lower consistency level...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Set when the backup looked wrong when it was written (an empty source, a sudden
    /// shrink): see [`crate::suspect`]. A suspect backup is complete, but retention and the
    /// default choice of restore and drill do not count it as good until it is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect: Option<Suspect>,
    /// The drkit version that wrote the backup.
    pub drkit_version: String,
    /// The host name of the machine that took the backup.
    pub host: String,
}

/// The stored archive of a backup and its checksums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// Storage key of the archive.
    pub key: String,
    /// Compression of the stored bytes.
    pub compression: Compression,
    /// The compression level used (`None`: the codec's default, or a manifest written before
    /// drkit recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    /// Encryption of the stored bytes: `none`, or `age` (the archive is an age file).
    pub encryption: String,
    /// With `age`: the public fingerprints of the recipients it was encrypted to (the key
    /// set it needs; never a secret).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// Size of the dump before compression.
    pub raw_size: u64,
    /// sha256 (hex) of the dump before compression.
    pub raw_sha256: String,
    /// Size of the stored object.
    pub stored_size: u64,
    /// sha256 (hex) of the stored object.
    pub stored_sha256: String,
}

/// Why a backup was found suspect when it was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspect {
    /// Each reason as a sentence with its numbers.
    pub reasons: Vec<String>,
}

impl Manifest {
    /// Storage key of this backup's manifest.
    pub fn key(&self) -> String {
        manifest_key(&self.job, &self.id)
    }

    /// Serialize as pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        v.push(b'\n');
        v
    }

    /// Parse a manifest, refusing a newer `format_version` with a clear message.
    /// Unknown fields are ignored.
    pub fn from_json(bytes: &[u8], key: &str) -> Result<Manifest> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::integrity(format!("manifest {key} is not valid JSON ({e})")))?;
        let version = value.get("format_version").and_then(|v| v.as_u64());
        match version {
            None => {
                return Err(Error::integrity(format!(
                    "manifest {key} has no format_version; it was not written by drkit"
                )))
            }
            Some(v) if v > FORMAT_VERSION as u64 => {
                return Err(Error::config(format!(
                    "manifest {key} has format_version {v}, newer than this drkit reads ({FORMAT_VERSION}); upgrade drkit to read it"
                )))
            }
            _ => {}
        }
        serde_json::from_value(value)
            .map_err(|e| Error::integrity(format!("manifest {key} is malformed ({e})")))
    }

    /// Whether the driver reported the source as empty (no tables, no files...).
    pub fn is_empty_source(&self) -> bool {
        self.stats.get("empty").and_then(|v| v.as_bool()) == Some(true)
    }

    /// The reasons this backup was found suspect when written (empty when it was not).
    pub fn suspect_reasons(&self) -> &[String] {
        self.suspect
            .as_ref()
            .map(|s| s.reasons.as_slice())
            .unwrap_or(&[])
    }

    /// The folder of this backup in a storage, `<job>/<id>/`.
    pub fn folder(&self) -> String {
        backup_folder(&self.job, &self.id)
    }
}

/// Format a time as RFC 3339 UTC with seconds, as manifests store it.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        Manifest {
            format_version: FORMAT_VERSION,
            id: "20260102T030405Z-abcdef".into(),
            job: "db".into(),
            driver: "sqlite".into(),
            started_at: t,
            finished_at: t,
            data: DataInfo {
                key: "db/20260102T030405Z-abcdef/data.sqlite.zst".into(),
                compression: Compression::Zstd,
                compression_level: None,
                encryption: "none".into(),
                recipients: Vec::new(),
                raw_size: 10,
                raw_sha256: "00".into(),
                stored_size: 5,
                stored_sha256: "11".into(),
            },
            source: serde_json::json!({"path": "/x.db"}),
            stats: serde_json::json!({"empty": false}),
            warnings: vec![],
            suspect: None,
            drkit_version: "0.1.0".into(),
            host: "h".into(),
        }
    }

    #[test]
    fn roundtrip_and_unknown_fields() {
        let m = sample();
        let json = m.to_json();
        assert_eq!(Manifest::from_json(&json, "k").unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["future_field"] = serde_json::json!(42);
        let back = Manifest::from_json(&serde_json::to_vec(&v).unwrap(), "k").unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn newer_format_is_refused() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["format_version"] = serde_json::json!(FORMAT_VERSION + 1);
        let err = Manifest::from_json(&serde_json::to_vec(&v).unwrap(), "db/x/manifest.json")
            .unwrap_err();
        let want = format!("format_version {}", FORMAT_VERSION + 1);
        assert!(err.to_string().contains(&want), "{err}");
        assert_eq!(err.kind(), crate::ErrorKind::Config);
    }

    #[test]
    fn garbage_is_integrity_error() {
        let err = Manifest::from_json(b"{not json", "k").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Integrity);
    }
}
