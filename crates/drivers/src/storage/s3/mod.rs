//! An S3 bucket (AWS, or any S3-compatible server: MinIO, Garage, Ceph, R2, ...) as storage.
//!
//! - Uploads stream: parts of `part_size` bytes are sent while the next ones fill, at most
//!   `upload_concurrency` parts in memory at once; an archive smaller than one part is one PUT.
//!   Any failure, an abort, or dropping the upload aborts the multipart upload: nothing partial
//!   is ever visible. No temp file is written on local disk.
//! - Downloads stream and resume with a ranged request (pinned to the object's ETag) after a
//!   dropped or stalled connection.
//! - Requests are retried by the SDK with exponential backoff and full jitter (throttling, 5xx,
//!   timeouts, resets); permanent errors (bad credentials, missing bucket, 403) fail at once
//!   with one line naming the bucket and the endpoint.
//! - [`Storage::lock_job`] takes a lease object on the job (`<job>/.drkit.lease`, created and
//!   renewed with conditional writes: `lease.rs`). On a server that ignores conditional writes
//!   the lease is advisory and the lock does not count as held: leftovers (backup folders
//!   without a manifest, unfinished multipart uploads: [`Storage::unfinished`]) are then only
//!   removed once older than `leftover_age` (the rule is `drkit_core::layout::clean_leftovers`).
//! - `object_lock` sets a retention date on every object written; [`Storage::locked_until`]
//!   says until when an object is locked, so that `delete` on `dyn Storage` (in drkit-core)
//!   refuses it instead of hiding it behind a delete marker.

mod download;
mod errors;
pub mod lease;
mod settings;
mod upload;

use std::sync::Arc;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    Delete, ObjectIdentifier, ObjectLockEnabled, ObjectLockLegalHoldStatus, ObjectLockMode,
    ObjectLockRetention, ObjectLockRetentionMode,
};
use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};
use drkit_core::{
    BoxRead, DriverSpec, Error, JobLock, ObjectMeta, Result, Storage, Unfinished, Upload,
};
use tokio::sync::OnceCell;

use errors::{is_not_implemented, sdk_error, Failure};
pub use settings::{parse_size, LockMode, ObjectLock, S3Settings, Sse};

/// Keys per DeleteObjects request (the S3 maximum).
const DELETE_BATCH: usize = 1000;

/// A storage in an S3 bucket.
#[derive(Clone)]
pub struct S3Storage {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) settings: S3Settings,
    /// "s3 bucket `b` at http://…": starts every error message.
    pub(crate) place: String,
    /// `prefix/` or "".
    root: String,
    client: OnceCell<Client>,
    lock_checked: OnceCell<()>,
    /// Which conditional writes the server honours (probed once, for leases).
    conditional: OnceCell<lease::Conditional>,
    /// Whether the bucket was found to exist (once, before the first lease: s3s-fs answers
    /// NoSuchKey for a missing bucket and creates it on a PUT).
    bucket_checked: OnceCell<()>,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Storage")
            .field("place", &self.inner.place)
            .finish()
    }
}

fn to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())
}

pub(crate) fn to_smithy(t: DateTime<Utc>) -> aws_sdk_s3::primitives::DateTime {
    aws_sdk_s3::primitives::DateTime::from_secs(t.timestamp())
}

impl S3Storage {
    /// A storage with checked settings. Nothing is contacted until the first operation.
    pub fn new(settings: S3Settings) -> Self {
        let endpoint = match &settings.endpoint {
            Some(e) => drkit_core::redact_url(e),
            None => format!(
                "AWS S3 ({})",
                settings
                    .region
                    .as_deref()
                    .unwrap_or("region from the AWS config")
            ),
        };
        let place = format!("s3 bucket `{}` at {endpoint}", settings.bucket);
        let root = if settings.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", settings.prefix)
        };
        S3Storage {
            inner: Arc::new(Inner {
                settings,
                place,
                root,
                client: OnceCell::new(),
                lock_checked: OnceCell::new(),
                conditional: OnceCell::new(),
                bucket_checked: OnceCell::new(),
            }),
        }
    }

    /// Build from a `type = "s3"` table; `what` names it in errors (`storage.offsite`).
    pub fn from_spec(spec: &DriverSpec, what: &str) -> Result<Self> {
        Ok(Self::new(S3Settings::from_spec(spec, what)?))
    }

    /// The checked settings.
    pub fn settings(&self) -> &S3Settings {
        &self.inner.settings
    }

    /// Check that the bucket can be reached with the credentials, and that object lock is
    /// enabled on it when `object_lock` is configured (for `drkit doctor`).
    pub async fn check(&self) -> Result<()> {
        self.inner.head_bucket().await?;
        self.inner.ready().await.map(|_| ())
    }
}

impl Inner {
    /// HeadBucket: the bucket exists and the credentials reach it.
    pub(crate) async fn head_bucket(&self) -> Result<()> {
        let client = self.client().await?;
        client
            .head_bucket()
            .bucket(&self.settings.bucket)
            .send()
            .await
            .map_err(|e| {
                let f = Failure::of(&e);
                // HeadBucket answers have no body: name the common cases from the status.
                let f = match f {
                    Failure::Service { status: 404, .. } => Failure::Service {
                        code: "NoSuchBucket".into(),
                        message: String::new(),
                        status: 404,
                    },
                    other => other,
                };
                errors::to_error(&self.place, "checking the bucket", f)
            })?;
        Ok(())
    }
}

impl S3Storage {
    /// Probe whether the server honours conditional writes (`If-None-Match: *`, `If-Match`),
    /// which job leases need to exclude other runs (for `drkit doctor`): a probe object is
    /// written three times under the prefix, then deleted.
    pub async fn conditional_writes(&self) -> Result<lease::Conditional> {
        self.inner.probe_conditional().await
    }
}

impl Inner {
    pub(crate) async fn client(&self) -> Result<&Client> {
        self.client
            .get_or_try_init(|| build_client(&self.settings, &self.place))
            .await
    }

    /// The client, after checking once that object lock is on when it is configured.
    pub(crate) async fn ready(&self) -> Result<&Client> {
        let client = self.client().await?;
        if self.settings.object_lock.is_some() {
            self.lock_checked
                .get_or_try_init(|| async {
                    let out = client
                        .get_object_lock_configuration()
                        .bucket(&self.settings.bucket)
                        .send()
                        .await;
                    let enabled = match out {
                        Ok(o) => o
                            .object_lock_configuration()
                            .and_then(|c| c.object_lock_enabled())
                            .is_some_and(|e| *e == ObjectLockEnabled::Enabled),
                        Err(e) => {
                            let f = Failure::of(&e);
                            let missing = matches!(&f, Failure::Service { code, .. } if code == "ObjectLockConfigurationNotFoundError")
                                || is_not_implemented(&f);
                            if !missing {
                                return Err(errors::to_error(&self.place, "reading the object lock configuration", f));
                            }
                            false
                        }
                    };
                    if enabled {
                        Ok(())
                    } else {
                        Err(Error::config(format!(
                            "{}: object_lock is configured but the bucket has no object lock enabled: create a bucket with object lock (it cannot be turned on for every bucket later), or remove object_lock",
                            self.place
                        )))
                    }
                })
                .await?;
        }
        Ok(client)
    }

    pub(crate) fn full_key(&self, key: &str) -> Result<String> {
        let clean = !key.is_empty()
            && !key.starts_with('/')
            && key
                .split('/')
                .all(|p| !p.is_empty() && p != "." && p != "..");
        if !clean {
            return Err(Error::storage(format!("invalid storage key {key:?}")));
        }
        Ok(format!("{}{key}", self.root))
    }

    fn strip_root<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(&self.root)
    }

    /// Retention and SSE settings for a new object, as (mode, until).
    pub(crate) fn retention(
        &self,
        now: DateTime<Utc>,
    ) -> Option<(
        aws_sdk_s3::types::ObjectLockMode,
        aws_sdk_s3::primitives::DateTime,
    )> {
        self.settings.object_lock.map(|l| {
            let mode = match l.mode {
                LockMode::Governance => aws_sdk_s3::types::ObjectLockMode::Governance,
                LockMode::Compliance => aws_sdk_s3::types::ObjectLockMode::Compliance,
            };
            (mode, to_smithy(retain_until(now, l.days)))
        })
    }

    pub(crate) async fn put_bytes(
        &self,
        key: &str,
        full: &str,
        data: bytes::Bytes,
        created: DateTime<Utc>,
    ) -> Result<u64> {
        let client = self.ready().await?;
        let len = data.len() as u64;
        let mut req = client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(full)
            .content_length(len as i64)
            .body(ByteStream::from(data));
        if let Some((mode, until)) = self.retention(created) {
            req = req
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        match &self.settings.sse {
            Some(Sse::S3) => {
                req = req.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256)
            }
            Some(Sse::Kms(id)) => {
                req = req
                    .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                    .set_ssekms_key_id(id.clone())
            }
            None => {}
        }
        if let Some(class) = &self.settings.storage_class {
            req = req.storage_class(aws_sdk_s3::types::StorageClass::from(class.as_str()));
        }
        req.send()
            .await
            .map_err(|e| sdk_error(&self.place, &format!("writing {key}"), e))?;
        Ok(len)
    }

    /// Check a just-written object on the server: it exists with `size` bytes and, with
    /// `object_lock`, carries its retention. A server that ignored the retention asked for at
    /// creation (moto does for multipart uploads) gets it set with PutObjectRetention; one
    /// that does not keep it either fails the write.
    pub(crate) async fn confirm(
        &self,
        key: &str,
        full: &str,
        size: u64,
        created: DateTime<Utc>,
    ) -> Result<ObjectMeta> {
        let missing = || {
            Error::storage(format!(
                "{}: {key} is missing right after it was written",
                self.place
            ))
        };
        let head = self.head_full(key).await?.ok_or_else(missing)?;
        let stored = head.content_length().unwrap_or(-1);
        if stored != size as i64 {
            return Err(Error::integrity(format!(
                "{}: {key} holds {stored} bytes after the upload, {size} were written",
                self.place
            )));
        }
        if let Some((mode, until)) = self.retention(created) {
            let kept = |h: &aws_sdk_s3::operation::head_object::HeadObjectOutput| {
                h.object_lock_mode() == Some(&mode)
                    && h.object_lock_retain_until_date()
                        .is_some_and(|t| t.secs() >= until.secs() - 1)
            };
            if !kept(&head) {
                let retention_mode = match mode {
                    ObjectLockMode::Compliance => ObjectLockRetentionMode::Compliance,
                    _ => ObjectLockRetentionMode::Governance,
                };
                let retention = ObjectLockRetention::builder()
                    .mode(retention_mode)
                    .retain_until_date(until)
                    .build();
                self.client()
                    .await?
                    .put_object_retention()
                    .bucket(&self.settings.bucket)
                    .key(full)
                    .set_version_id(head.version_id().map(str::to_string))
                    .retention(retention)
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_error(
                            &self.place,
                            &format!("setting the object lock retention of {key}"),
                            e,
                        )
                    })?;
                let again = self.head_full(key).await?.ok_or_else(missing)?;
                if !kept(&again) {
                    return Err(Error::storage(format!(
                        "{}: the server did not keep the object lock retention of {key}: it cannot hold immutable backups",
                        self.place
                    )));
                }
            }
        }
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
            modified: head.last_modified().and_then(to_chrono),
            etag: head.e_tag().map(str::to_string),
        })
    }

    pub(crate) async fn head_full(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>> {
        let full = self.full_key(key)?;
        let client = self.client().await?;
        match client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(o) => Ok(Some(o)),
            Err(e) => {
                let f = Failure::of(&e);
                if matches!(f, Failure::Service { status: 404, .. }) {
                    Ok(None)
                } else {
                    Err(errors::to_error(&self.place, &format!("reading {key}"), f))
                }
            }
        }
    }

    async fn delete_many(&self, keys: &[String]) -> Result<Vec<String>> {
        let client = self.client().await?;
        let mut done = Vec::with_capacity(keys.len());
        for batch in keys.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|k| {
                    let full = self.full_key(k)?;
                    ObjectIdentifier::builder()
                        .key(full)
                        .build()
                        .map_err(|e| Error::storage(format!("{}: deleting {k}: {e}", self.place)))
                })
                .collect::<Result<Vec<_>>>()?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| Error::storage(format!("{}: deleting: {e}", self.place)))?;
            let out = client
                .delete_objects()
                .bucket(&self.settings.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| {
                    sdk_error(&self.place, &format!("deleting {} objects", batch.len()), e)
                })?;
            if let Some(first) = out.errors().first() {
                let key = first.key().and_then(|k| self.strip_root(k)).unwrap_or("?");
                return Err(Error::storage(format!(
                    "{}: deleting {key}: {} ({}){}",
                    self.place,
                    first.message().unwrap_or("refused"),
                    first.code().unwrap_or("error"),
                    if out.errors().len() > 1 {
                        format!(", and {} more keys failed", out.errors().len() - 1)
                    } else {
                        String::new()
                    }
                )));
            }
            done.extend(batch.iter().cloned());
        }
        Ok(done)
    }

    /// The unfinished multipart uploads under `prefix`, as [`Unfinished`] writes whose handle
    /// is `<upload id>\n<full key>`. Servers that cannot list multipart uploads (s3s-fs) have
    /// none to show.
    async fn list_uploads(&self, prefix: &str) -> Result<Vec<Unfinished>> {
        let client = self.client().await?;
        let full_prefix = format!("{}{prefix}", self.root);
        let mut found = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        loop {
            let out = client
                .list_multipart_uploads()
                .bucket(&self.settings.bucket)
                .prefix(&full_prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await;
            let out = match out {
                Ok(o) => o,
                Err(e) => {
                    let f = Failure::of(&e);
                    if is_not_implemented(&f) {
                        return Ok(found);
                    }
                    let what = prefix.strip_suffix('/').unwrap_or(prefix);
                    return Err(errors::to_error(
                        &self.place,
                        &format!("listing unfinished uploads of {what}"),
                        f,
                    ));
                }
            };
            for up in out.uploads() {
                let (Some(key), Some(id)) = (up.key(), up.upload_id()) else {
                    continue;
                };
                found.push(Unfinished {
                    key: self.strip_root(key).unwrap_or(key).to_string(),
                    started: up.initiated().and_then(to_chrono),
                    handle: format!("{id}\n{key}"),
                });
            }
            if out.is_truncated() != Some(true) {
                break;
            }
            key_marker = out.next_key_marker().map(str::to_string);
            id_marker = out.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        Ok(found)
    }

    /// Abort one unfinished multipart upload; one already gone is not an error.
    async fn abort_upload(&self, write: &Unfinished) -> Result<()> {
        let Some((id, key)) = write.handle.split_once('\n') else {
            return Err(Error::storage(format!(
                "{}: {:?} is not an unfinished upload of this storage",
                self.place, write.handle
            )));
        };
        let res = self
            .client()
            .await?
            .abort_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(key)
            .upload_id(id)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => {
                let f = Failure::of(&e);
                if matches!(&f, Failure::Service { status: 404, .. }) {
                    Ok(())
                } else {
                    Err(errors::to_error(
                        &self.place,
                        &format!("aborting the unfinished upload of {key}"),
                        f,
                    ))
                }
            }
        }
    }
}

/// The retention date of an object created at `now` with `days` of object lock.
pub fn retain_until(now: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    now + chrono::Duration::days(i64::from(days))
}

/// Whether an object with retention `until` and legal hold `hold` is locked at `now`, and
/// until when.
pub fn lock_state(
    until: Option<DateTime<Utc>>,
    hold: bool,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if hold {
        return Some(DateTime::<Utc>::MAX_UTC);
    }
    until.filter(|t| *t > now)
}

async fn build_client(s: &S3Settings, place: &str) -> Result<Client> {
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let retry = RetryConfig::standard()
        .with_max_attempts(s.max_attempts)
        .with_initial_backoff(std::time::Duration::from_millis(200))
        .with_max_backoff(std::time::Duration::from_secs(20));
    let timeout = TimeoutConfig::builder()
        .connect_timeout(s.timeout.min(std::time::Duration::from_secs(10)))
        .read_timeout(s.timeout)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(retry)
        .timeout_config(timeout);
    if let Some(r) = &s.region {
        loader = loader.region(Region::new(r.clone()));
    } else if s.endpoint.is_some() {
        // S3-compatible servers rarely care; sign for us-east-1 unless the AWS config says more.
        loader = loader.region(
            aws_config::meta::region::RegionProviderChain::default_provider()
                .or_else(Region::new("us-east-1")),
        );
    }
    if let Some((id, secret, token)) = &s.credentials {
        loader = loader.credentials_provider(Credentials::new(
            id,
            secret,
            token.clone(),
            None,
            "drkit-config",
        ));
    }
    if let Some(p) = &s.profile {
        loader = loader.profile_name(p);
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err(Error::config(format!(
            "{place}: no region: set `region` in the storage, or AWS_REGION, or a region in the AWS profile"
        )));
    }
    let mut b = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(s.force_path_style);
    if let Some(ep) = &s.endpoint {
        b = b.endpoint_url(ep);
    }
    Ok(Client::from_conf(b.build()))
}

fn empty_reader() -> BoxRead {
    Box::new(tokio::io::empty())
}

#[async_trait]
impl Storage for S3Storage {
    fn describe(&self) -> String {
        let s = &self.inner.settings;
        let endpoint = match &s.endpoint {
            Some(e) => drkit_core::redact_url(e),
            None => format!(
                "AWS S3 ({})",
                s.region.as_deref().unwrap_or("default region")
            ),
        };
        if s.prefix.is_empty() {
            format!("s3://{} at {endpoint}", s.bucket)
        } else {
            format!("s3://{}/{} at {endpoint}", s.bucket, s.prefix)
        }
    }

    async fn create(&self, key: &str) -> Result<Box<dyn Upload>> {
        let full = self.inner.full_key(key)?;
        self.inner.ready().await?;
        Ok(Box::new(upload::S3Upload::new(
            self.inner.clone(),
            key.to_string(),
            full,
        )))
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let full = self.inner.full_key(key)?;
        let created = Utc::now();
        let sent = self
            .inner
            .put_bytes(key, &full, bytes::Bytes::from(data), created)
            .await?;
        if self.inner.settings.object_lock.is_some() {
            self.inner.confirm(key, &full, sent, created).await?;
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<BoxRead> {
        download::open(self.inner.clone(), key, 0, None).await
    }

    async fn get_range(&self, key: &str, start: u64, end: Option<u64>) -> Result<BoxRead> {
        if end.is_some_and(|e| e <= start) {
            // Still say when the object is missing.
            if self.head(key).await?.is_none() {
                return Err(Error::not_found(format!(
                    "{}: {key} does not exist",
                    self.inner.place
                )));
            }
            return Ok(empty_reader());
        }
        download::open(self.inner.clone(), key, start, end).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        Ok(self.inner.head_full(key).await?.map(|o| ObjectMeta {
            key: key.to_string(),
            size: o.content_length().unwrap_or(0).max(0) as u64,
            modified: o.last_modified().and_then(to_chrono),
            etag: o.e_tag().map(str::to_string),
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let client = self.inner.client().await?;
        let full_prefix = format!("{}{prefix}", self.inner.root);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = client
                .list_objects_v2()
                .bucket(&self.inner.settings.bucket)
                .prefix(&full_prefix)
                .max_keys(self.inner.settings.list_page_size)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| {
                    sdk_error(&self.inner.place, &format!("listing {full_prefix:?}"), e)
                })?;
            for o in page.contents() {
                let Some(key) = o.key().and_then(|k| self.inner.strip_root(k)) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: key.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: o.last_modified().and_then(to_chrono),
                    etag: o.e_tag().map(str::to_string),
                });
            }
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(next)) if Some(next) != token.as_deref() => token = Some(next.to_string()),
                (Some(true), _) => {
                    return Err(Error::storage(format!(
                        "{}: listing {full_prefix:?}: the server said the listing goes on but gave no new continuation token",
                        self.inner.place
                    )))
                }
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete_object(&self, key: &str) -> Result<()> {
        let full = self.inner.full_key(key)?;
        self.inner.delete_raw(&full, key).await
    }

    async fn delete_objects(&self, keys: &[String]) -> Result<Vec<String>> {
        self.inner.delete_many(keys).await
    }

    async fn unfinished(&self, prefix: &str) -> Result<Vec<Unfinished>> {
        self.inner.list_uploads(prefix).await
    }

    async fn discard(&self, write: &Unfinished) -> Result<()> {
        self.inner.abort_upload(write).await
    }

    /// Always: a bucket's default retention or a legal hold can lock objects that drkit
    /// wrote without `object_lock`.
    fn holds_object_locks(&self) -> bool {
        true
    }

    async fn locked_until(&self, key: &str) -> Result<Option<DateTime<Utc>>> {
        let Some(o) = self.inner.head_full(key).await? else {
            return Ok(None);
        };
        let hold = o.object_lock_legal_hold_status() == Some(&ObjectLockLegalHoldStatus::On);
        Ok(lock_state(
            o.object_lock_retain_until_date().and_then(to_chrono),
            hold,
            Utc::now(),
        ))
    }

    /// Whether the server honours the conditional writes leases are taken with (a probe
    /// object, written three times and deleted).
    async fn lock_check(&self) -> Result<Option<drkit_core::LockCheck>> {
        let c = self.inner.probe_conditional().await?;
        Ok(Some(drkit_core::LockCheck {
            exclusive: c.strict(),
            note: c.describe(),
        }))
    }

    /// A lease on the job (`<job>/.drkit.lease`, see `lease.rs` and docs/s3.md): refused
    /// while another run holds a live one; held (strictly) only where the server honours
    /// conditional writes.
    async fn lock_job(&self, job: &str) -> Result<JobLock> {
        lease::acquire(self.inner.clone(), job).await
    }

    async fn lease_holder(
        &self,
        job: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<String>> {
        self.inner.lease_holder(job, now).await
    }

    fn leftover_age(&self) -> std::time::Duration {
        self.inner.settings.leftover_age
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn lock_states() {
        let now = Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap();
        let later = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
        let earlier = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let cases = [
            (None, false, None),
            (Some(later), false, Some(later)),
            (Some(earlier), false, None),
            (Some(now), false, None),
            (None, true, Some(DateTime::<Utc>::MAX_UTC)),
            (Some(earlier), true, Some(DateTime::<Utc>::MAX_UTC)),
        ];
        for (until, hold, want) in cases {
            assert_eq!(lock_state(until, hold, now), want, "{until:?} {hold}");
        }
        assert_eq!(
            retain_until(now, 30),
            Utc.with_ymd_and_hms(2026, 2, 9, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn keys_are_checked_and_prefixed() {
        let mut settings: toml::Table = toml::Table::new();
        settings.insert("bucket".into(), "b".into());
        settings.insert("prefix".into(), "prod/".into());
        let s = S3Storage::from_spec(
            &DriverSpec {
                kind: "s3".into(),
                settings,
            },
            "storage.x",
        )
        .unwrap();
        assert_eq!(s.inner.full_key("j/k").unwrap(), "prod/j/k");
        for bad in ["", "/j", "j//k", "j/../k", "./j", "j/"] {
            assert!(s.inner.full_key(bad).is_err(), "{bad}");
        }
        assert_eq!(s.describe(), "s3://b/prod at AWS S3 (default region)");
    }
}
