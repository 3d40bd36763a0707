//! The `type = "s3"` table of a storage: parsing and checking, contacting nothing.

use std::time::Duration;

use drkit_core::config::parse_duration;
use drkit_core::{DriverSpec, Error, Result};
use serde::Deserialize;

/// Smallest part S3 accepts (except for the last part of an upload).
pub(crate) const MIN_PART: u64 = 5 * 1024 * 1024;
/// Largest part S3 accepts.
pub(crate) const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;
/// S3 allows at most this many parts per upload.
pub(crate) const MAX_PARTS: u64 = 10_000;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    bucket: String,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    force_path_style: bool,
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(default)]
    secret_access_key: Option<String>,
    #[serde(default)]
    session_token: Option<String>,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    part_size: Option<SizeValue>,
    #[serde(default)]
    upload_concurrency: Option<usize>,
    #[serde(default)]
    list_page_size: Option<i32>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    leftover_age: Option<String>,
    #[serde(default)]
    object_lock: Option<RawObjectLock>,
    #[serde(default)]
    sse: Option<String>,
    #[serde(default)]
    sse_kms_key_id: Option<String>,
    #[serde(default)]
    storage_class: Option<String>,
    #[serde(default)]
    lease_ttl: Option<String>,
    #[serde(default)]
    lease_renew: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObjectLock {
    mode: String,
    days: u32,
}

/// Object lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` can still delete.
    Governance,
    /// Nobody can delete before the date, not even the account root.
    Compliance,
}

/// Retention set on every object of a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// The mode.
    pub mode: LockMode,
    /// Days from the object's creation.
    pub days: u32,
}

/// Server-side encryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    /// SSE-S3 (`AES256`).
    S3,
    /// SSE-KMS, with a key id or the bucket's default key.
    Kms(Option<String>),
}

/// Checked settings of an S3 storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL for S3-compatible servers; `None` for AWS.
    pub endpoint: Option<String>,
    /// Region; `None` to take it from the AWS chain.
    pub region: Option<String>,
    /// Key prefix without slashes at either end ("" for none).
    pub prefix: String,
    /// Path-style addressing (`http://host/bucket/key`).
    pub force_path_style: bool,
    /// Static credentials: (access key id, secret, session token).
    pub credentials: Option<(String, String, Option<String>)>,
    /// AWS shared-config profile.
    pub profile: Option<String>,
    /// Bytes per part of a multipart upload.
    pub part_size: u64,
    /// Parts uploaded at once (and held in memory at most).
    pub upload_concurrency: usize,
    /// Keys per listing request.
    pub list_page_size: i32,
    /// Attempts per request (1 = no retry).
    pub max_attempts: u32,
    /// Limit on one request's wait for an answer, and on a download's stall.
    pub timeout: Duration,
    /// Age after which a backup folder without manifest, or an unfinished upload, of a job
    /// is taken as abandoned.
    pub leftover_age: Duration,
    /// Retention on every object.
    pub object_lock: Option<ObjectLock>,
    /// Server-side encryption.
    pub sse: Option<Sse>,
    /// Storage class (`STANDARD_IA`, `GLACIER_IR`, ...).
    pub storage_class: Option<String>,
    /// How long a job's lease lives without renewal (a killed holder's lease is taken over
    /// after this).
    pub lease_ttl: Duration,
    /// How often a held lease is renewed (less than `lease_ttl`).
    pub lease_renew: Duration,
}

/// Parse a size: a number of bytes, or a number and a unit (`16MiB`, `64MB`, `8M`, `1GiB`).
/// Units are binary (`M` = `MiB` = 2^20; `MB` = 10^6).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let err = || {
        Error::config(format!(
            "cannot read size {s:?}: use a number and a unit, e.g. 16MiB, 64MiB, 1GiB"
        ))
    };
    let unit_at = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(unit_at);
    let n: u64 = n.parse().map_err(|_| err())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "kb" => 1_000,
        "m" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

impl S3Settings {
    /// Read and check a `type = "s3"` table. `what` names it in errors (`storage.offsite`).
    pub fn from_spec(spec: &DriverSpec, what: &str) -> Result<Self> {
        let raw: RawConfig = spec.parse(what)?;
        // Checked in this order (the struct's fields too): the first wrong key is reported.
        let bucket = bucket(&raw.bucket, what)?;
        let endpoint = endpoint(raw.endpoint, what)?;
        let prefix = prefix(raw.prefix, what)?;
        let keys = (raw.access_key_id, raw.secret_access_key, raw.session_token);
        let credentials = credentials(keys, raw.profile.is_some(), what)?;
        let (lease_ttl, lease_renew) = lease_times(raw.lease_ttl, raw.lease_renew, what)?;
        Ok(S3Settings {
            bucket,
            endpoint,
            region: raw
                .region
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty()),
            prefix,
            force_path_style: raw.force_path_style,
            credentials,
            profile: raw.profile,
            part_size: part_size(raw.part_size, what)?,
            upload_concurrency: in_range(
                raw.upload_concurrency.unwrap_or(4),
                1..=64,
                "upload_concurrency",
                what,
            )?,
            list_page_size: in_range(
                raw.list_page_size.unwrap_or(1000),
                1..=1000,
                "list_page_size",
                what,
            )?,
            max_attempts: in_range(raw.max_attempts.unwrap_or(8), 1..=30, "max_attempts", what)?,
            timeout: timeout(raw.timeout, what)?,
            leftover_age: duration(
                raw.leftover_age,
                Duration::from_secs(48 * 3600),
                "leftover_age",
                what,
            )?,
            object_lock: raw.object_lock.map(|l| object_lock(l, what)).transpose()?,
            sse: sse(raw.sse.as_deref(), raw.sse_kms_key_id, what)?,
            storage_class: raw
                .storage_class
                .map(|c| c.trim().to_ascii_uppercase())
                .filter(|c| !c.is_empty()),
            lease_ttl,
            lease_renew,
        })
    }

    /// The largest object a multipart upload with these settings can hold.
    pub fn max_object_size(&self) -> u64 {
        self.part_size.saturating_mul(MAX_PARTS)
    }
}

/// A configuration error about key `key` of table `what`.
fn bad(what: &str, key: &str, msg: impl std::fmt::Display) -> Error {
    Error::config(format!("{what}.{key}: {msg}"))
}

fn bucket(raw: &str, what: &str) -> Result<String> {
    let bucket = raw.trim().to_string();
    if bucket.is_empty() || bucket.contains('/') {
        return Err(bad(what, "bucket", format!("{raw:?} is not a bucket name")));
    }
    Ok(bucket)
}

/// An http(s) URL without a trailing `/`; `None` (AWS) when unset or empty.
fn endpoint(raw: Option<String>, what: &str) -> Result<Option<String>> {
    match raw.map(|e| e.trim().trim_end_matches('/').to_string()) {
        Some(e) if e.is_empty() => Ok(None),
        Some(e) if !(e.starts_with("http://") || e.starts_with("https://")) => Err(bad(
            what,
            "endpoint",
            format!(
                "{:?} is not a URL: write it as http://host:port or https://host",
                drkit_core::redact_url(&e)
            ),
        )),
        other => Ok(other),
    }
}

/// The key prefix without slashes at either end, refused with an empty, `.` or `..` part.
fn prefix(raw: Option<String>, what: &str) -> Result<String> {
    let prefix = raw.unwrap_or_default().trim_matches('/').to_string();
    if prefix.split('/').any(|p| p == ".." || p == ".") || prefix.contains("//") {
        return Err(bad(
            what,
            "prefix",
            format!("{prefix:?} has an empty, '.' or '..' part"),
        ));
    }
    Ok(prefix)
}

/// Static credentials (access key id, secret, session token): both keys or neither (then
/// no session token either), never empty, and not with a `profile`.
fn credentials(
    (access_key_id, secret_access_key, session_token): (
        Option<String>,
        Option<String>,
        Option<String>,
    ),
    profile: bool,
    what: &str,
) -> Result<Option<(String, String, Option<String>)>> {
    let empty = "is empty (is the variable it comes from set?)";
    let credentials = match (access_key_id, secret_access_key) {
        (Some(a), Some(s)) if !a.is_empty() && !s.is_empty() => (a, s, session_token),
        (None, None) if session_token.is_some() => {
            return Err(bad(
                what,
                "session_token",
                "needs access_key_id and secret_access_key",
            ))
        }
        (None, None) => return Ok(None),
        (Some(a), Some(_)) if a.is_empty() => return Err(bad(what, "access_key_id", empty)),
        (Some(_), Some(_)) => return Err(bad(what, "secret_access_key", empty)),
        (Some(_), None) => {
            return Err(bad(
                what,
                "secret_access_key",
                "is missing: access_key_id is set, so it is needed too",
            ))
        }
        (None, Some(_)) => {
            return Err(bad(
                what,
                "access_key_id",
                "is missing: secret_access_key is set, so it is needed too",
            ))
        }
    };
    if profile {
        return Err(bad(
            what,
            "profile",
            "cannot be used together with access_key_id / secret_access_key",
        ));
    }
    Ok(Some(credentials))
}

/// Bytes per part (16 MiB by default), within what S3 accepts.
fn part_size(raw: Option<SizeValue>, what: &str) -> Result<u64> {
    let part_size = match raw {
        None => 16 << 20,
        Some(SizeValue::Bytes(n)) => n,
        Some(SizeValue::Text(t)) => {
            parse_size(&t).map_err(|e| e.context(format!("{what}.part_size")))?
        }
    };
    if !(MIN_PART..=MAX_PART).contains(&part_size) {
        return Err(bad(
            what,
            "part_size",
            format!("{part_size} bytes is outside what S3 accepts: use 5MiB to 5GiB"),
        ));
    }
    Ok(part_size)
}

/// `value` of key `key`, refused outside `range`.
fn in_range<T: PartialOrd + std::fmt::Display>(
    value: T,
    range: std::ops::RangeInclusive<T>,
    key: &str,
    what: &str,
) -> Result<T> {
    if !range.contains(&value) {
        return Err(bad(
            what,
            key,
            format!(
                "{value} is out of range: use {} to {}",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(value)
}

/// The limit on one request (300 s by default), at least a second.
fn timeout(raw: Option<String>, what: &str) -> Result<Duration> {
    let timeout = duration(raw, Duration::from_secs(300), "timeout", what)?;
    if timeout < Duration::from_secs(1) {
        return Err(bad(what, "timeout", "must be at least 1s"));
    }
    Ok(timeout)
}

/// A duration (`30s`, `2h`, ...) of key `key`, `default` when unset.
fn duration(raw: Option<String>, default: Duration, key: &str, what: &str) -> Result<Duration> {
    match raw {
        None => Ok(default),
        Some(t) => parse_duration(&t).map_err(|e| e.context(format!("{what}.{key}"))),
    }
}

/// The lease's time to live (default 60 s, 2 s to 1 h) and renewal interval (default a
/// third of it, at least 1 s and less than the time to live).
fn lease_times(
    ttl: Option<String>,
    renew: Option<String>,
    what: &str,
) -> Result<(Duration, Duration)> {
    let ttl = duration(ttl, Duration::from_secs(60), "lease_ttl", what)?;
    if !(Duration::from_secs(2)..=Duration::from_secs(3600)).contains(&ttl) {
        return Err(bad(what, "lease_ttl", "must be between 2s and 1h"));
    }
    let default = (ttl / 3).max(Duration::from_secs(1));
    let renew = duration(renew, default, "lease_renew", what)?;
    if renew < Duration::from_secs(1) || renew >= ttl {
        return Err(bad(
            what,
            "lease_renew",
            format!(
                "must be at least 1s and less than lease_ttl ({}s)",
                ttl.as_secs()
            ),
        ));
    }
    Ok((ttl, renew))
}

fn object_lock(raw: RawObjectLock, what: &str) -> Result<ObjectLock> {
    let mode = match raw.mode.to_ascii_lowercase().as_str() {
        "governance" => LockMode::Governance,
        "compliance" => LockMode::Compliance,
        other => {
            return Err(bad(
                what,
                "object_lock.mode",
                format!("{other:?} is not a mode: use \"governance\" or \"compliance\""),
            ))
        }
    };
    let days = in_range(raw.days, 1..=36_500, "object_lock.days", what)?;
    Ok(ObjectLock { mode, days })
}

/// `sse = "AES256"` (SSE-S3) or `"aws:kms"` (SSE-KMS, with `sse_kms_key_id` or the
/// bucket's default key); a key id needs `aws:kms`.
fn sse(raw: Option<&str>, kms_key_id: Option<String>, what: &str) -> Result<Option<Sse>> {
    let needs_kms = || bad(what, "sse_kms_key_id", "needs sse = \"aws:kms\"");
    match raw.map(str::trim) {
        None | Some("") if kms_key_id.is_some() => Err(needs_kms()),
        None | Some("") => Ok(None),
        Some(s) if s.eq_ignore_ascii_case("AES256") && kms_key_id.is_some() => Err(needs_kms()),
        Some(s) if s.eq_ignore_ascii_case("AES256") => Ok(Some(Sse::S3)),
        Some(s) if s.eq_ignore_ascii_case("aws:kms") => Ok(Some(Sse::Kms(kms_key_id))),
        Some(other) => Err(bad(
            what,
            "sse",
            format!("{other:?} is not known: use \"AES256\" or \"aws:kms\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_text: &str) -> DriverSpec {
        let settings: toml::Table = toml::from_str(toml_text).unwrap();
        DriverSpec {
            kind: "s3".into(),
            settings,
        }
    }

    #[test]
    fn sizes() {
        let cases = [
            ("16MiB", Some(16 << 20)),
            ("16M", Some(16 << 20)),
            ("16 MiB", Some(16 << 20)),
            ("5mb", Some(5_000_000)),
            ("1GiB", Some(1 << 30)),
            ("1024", Some(1024)),
            ("12KB", Some(12_000)),
            ("MiB", None),
            ("-1MiB", None),
            ("3 parsecs", None),
            ("99999999999999999999GiB", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input).ok(), want, "{input}");
        }
    }

    #[test]
    fn defaults() {
        let s = S3Settings::from_spec(&spec("bucket = \"b\""), "storage.x").unwrap();
        assert_eq!(s.part_size, 16 << 20);
        assert_eq!(s.upload_concurrency, 4);
        assert_eq!(s.list_page_size, 1000);
        assert_eq!(s.prefix, "");
        assert_eq!(s.credentials, None);
        assert_eq!(s.object_lock, None);
        assert_eq!(s.leftover_age, Duration::from_secs(48 * 3600));
        assert_eq!(s.max_object_size(), (16 << 20) * 10_000);
        assert_eq!(s.lease_ttl, Duration::from_secs(60));
        assert_eq!(s.lease_renew, Duration::from_secs(20));
    }

    #[test]
    fn lease_times_table() {
        let secs = Duration::from_secs;
        let cases = [
            ("", Some((secs(60), secs(20)))),
            ("lease_ttl = \"3s\"", Some((secs(3), secs(1)))),
            ("lease_ttl = \"2s\"", Some((secs(2), secs(1)))),
            ("lease_ttl = \"5m\"", Some((secs(300), secs(100)))),
            (
                "lease_ttl = \"90s\"\nlease_renew = \"10s\"",
                Some((secs(90), secs(10))),
            ),
            ("lease_ttl = \"1s\"", None),
            ("lease_ttl = \"2h\"", None),
            ("lease_ttl = \"soon\"", None),
            ("lease_renew = \"60s\"", None),
            ("lease_renew = \"0s\"", None),
            ("lease_ttl = \"10s\"\nlease_renew = \"11s\"", None),
        ];
        for (extra, want) in cases {
            let got =
                S3Settings::from_spec(&spec(&format!("bucket = \"b\"\n{extra}")), "storage.x");
            match (got, want) {
                (Ok(s), Some(w)) => assert_eq!((s.lease_ttl, s.lease_renew), w, "{extra}"),
                (Err(e), None) => {
                    let msg = e.to_string();
                    assert!(msg.starts_with("storage.x.lease_"), "{extra}: {msg}");
                }
                (got, want) => panic!("{extra}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn full() {
        let s = S3Settings::from_spec(
            &spec(
                r#"
bucket = "backups"
endpoint = "http://127.0.0.1:9000/"
region = "eu-west-3"
prefix = "/prod/db/"
force_path_style = true
access_key_id = "AK"
secret_access_key = "SK"
part_size = "8MiB"
upload_concurrency = 2
list_page_size = 10
max_attempts = 3
timeout = "30s"
leftover_age = "0s"
object_lock = { mode = "compliance", days = 30 }
sse = "aws:kms"
sse_kms_key_id = "key-1"
storage_class = "standard_ia"
"#,
            ),
            "storage.x",
        )
        .unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.prefix, "prod/db");
        assert_eq!(s.part_size, 8 << 20);
        assert_eq!(s.credentials, Some(("AK".into(), "SK".into(), None)));
        assert_eq!(
            s.object_lock,
            Some(ObjectLock {
                mode: LockMode::Compliance,
                days: 30
            })
        );
        assert_eq!(s.sse, Some(Sse::Kms(Some("key-1".into()))));
        assert_eq!(s.storage_class.as_deref(), Some("STANDARD_IA"));
        assert_eq!(s.leftover_age, Duration::ZERO);
        assert_eq!(s.part_size, 8 << 20);
        let s = S3Settings::from_spec(&spec("bucket = \"b\"\npart_size = 6000000"), "storage.x")
            .unwrap();
        assert_eq!(s.part_size, 6_000_000);
    }

    #[test]
    fn errors() {
        let cases = [
            ("endpoint = \"http://x\"", "missing field `bucket`"),
            ("bucket = \"b\"\nfoo = 1", "unknown field `foo`"),
            ("bucket = \"b\"\npart_size = \"1MiB\"", "part_size"),
            ("bucket = \"b\"\npart_size = \"lots\"", "cannot read size"),
            ("bucket = \"b\"\nupload_concurrency = 0", "upload_concurrency"),
            ("bucket = \"b\"\nlist_page_size = 5000", "list_page_size"),
            ("bucket = \"b\"\nendpoint = \"127.0.0.1:9000\"", "not a URL"),
            ("bucket = \"b\"\naccess_key_id = \"a\"", "secret_access_key: is missing"),
            ("bucket = \"b\"\nsecret_access_key = \"s3cr3t\"", "access_key_id: is missing"),
            ("bucket = \"b\"\naccess_key_id = \"\"\nsecret_access_key = \"s3cr3t\"", "access_key_id: is empty"),
            ("bucket = \"b\"\nobject_lock = { mode = \"forever\", days = 3 }", "object_lock.mode"),
            ("bucket = \"b\"\nobject_lock = { mode = \"governance\", days = 0 }", "object_lock.days"),
            ("bucket = \"b\"\nobject_lock = { mode = \"governance\" }", "missing field `days`"),
            ("bucket = \"b\"\nobject_lock = { mode = \"governance\", days = 1, x = 1 }", "unknown field `x`"),
            ("bucket = \"b\"\nsse = \"rot13\"", "sse"),
            ("bucket = \"b\"\nsse_kms_key_id = \"k\"", "sse_kms_key_id"),
            ("bucket = \"b\"\ntimeout = \"soon\"", "timeout"),
            ("bucket = \"b\"\nprefix = \"a/../b\"", "prefix"),
            ("bucket = \"b\"\nprofile = \"p\"\naccess_key_id = \"a\"\nsecret_access_key = \"s3cr3t\"", "profile"),
        ];
        for (text, needle) in cases {
            let e = S3Settings::from_spec(&spec(text), "storage.x").unwrap_err();
            assert_eq!(e.kind(), drkit_core::ErrorKind::Config, "{text}");
            let msg = e.to_string();
            assert!(msg.contains(needle), "{text}: {msg}");
            assert!(msg.starts_with("storage.x"), "{text}: {msg}");
            assert!(!msg.contains("s3cr3t"), "{text}: {msg}");
        }
    }
}
