//! Job leases in an S3 bucket: the S3 side of `Storage::lock_job` (docs/s3.md, *Leases*).
//!
//! A run that writes a job holds `<prefix>/<job>/.drkit.lease`, a small JSON document (owner,
//! host, pid, start, expiry). It is created with a conditional write (`If-None-Match: *`: only
//! when absent), renewed by a background task with `If-Match: <the ETag we wrote>` every
//! `lease_renew`, and removed at the end of the run. A lease whose expiry has passed (its
//! holder was killed or lost its network) is taken over with `If-Match: <its ETag>`, with a
//! warning naming the old holder. Two runs racing for the same lease: one write wins, the
//! other gets 412 and reads the winner's lease.
//!
//! Servers that ignore conditional writes (found once per storage with a probe object,
//! [`Conditional`]) still get the lease written and read, but it is advisory: drkit warns
//! once per run and the lock does not count as held (leftovers are then only removed once
//! older than `leftover_age`).
//!
//! Everything read back is hostile input: at most [`MAX_LEASE_BYTES`] bytes, checked fields,
//! and an expiry that can never be more than [`MAX_LEASE_TTL`] after the object was written.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, SubsecRound, Utc};
use drkit_core::{one_line, Error, JobLease, JobLock, Result};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::errors::{self, Failure};
use super::{to_chrono, Inner, Sse};

/// The lease's file name in a job's folder.
pub const LEASE_FILE: &str = drkit_core::layout::LEASE_FILE;
/// The largest lease document read; a bigger object is not a lease drkit wrote.
pub const MAX_LEASE_BYTES: usize = 4096;
/// However far a lease says it lasts, it expires at most this long after it was written.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);
/// How long a run waits after writing its lease before it reads it back to check that the
/// lease is still its own (servers whose conditional writes are not atomic).
pub const LEASE_SETTLE: Duration = Duration::from_millis(250);
/// The `format_version` of the lease document.
pub const LEASE_VERSION: u32 = 1;

/// The JSON document of a lease (`<job>/.drkit.lease`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// [`LEASE_VERSION`].
    pub format_version: u32,
    /// A random id of the run holding it (32 hex digits).
    pub owner: String,
    /// The holder's host name.
    pub host: String,
    /// The holder's process id.
    pub pid: u32,
    /// The job.
    pub job: String,
    /// When the holder took the lease.
    pub started_at: DateTime<Utc>,
    /// When the lease ends unless renewed.
    pub expires_at: DateTime<Utc>,
}

impl Lease {
    /// A new lease of this process on `job`, taken at `now` for `ttl`.
    pub fn new(owner: &str, job: &str, now: DateTime<Utc>, ttl: Duration) -> Lease {
        let now = now.trunc_subsecs(3);
        Lease {
            format_version: LEASE_VERSION,
            owner: owner.to_string(),
            host: printable_host(&drkit_core::hostname()),
            pid: std::process::id(),
            job: job.to_string(),
            started_at: now,
            expires_at: now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX),
        }
    }

    /// The same lease, renewed at `now` for `ttl`.
    pub fn renewed(&self, now: DateTime<Utc>, ttl: Duration) -> Lease {
        Lease {
            expires_at: now.trunc_subsecs(3)
                + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX),
            ..self.clone()
        }
    }

    /// The document written to the storage.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a lease serializes")
    }

    /// Who holds it, for messages: `host H, pid P, since T, lease expires E`.
    pub fn holder(&self, expires: DateTime<Utc>) -> String {
        format!(
            "host {}, pid {}, since {}, lease expires {}",
            self.host,
            self.pid,
            self.started_at.to_rfc3339(),
            expires.to_rfc3339()
        )
    }
}

/// A host name fit for a lease and a message: control characters dropped, at most 255
/// characters, `unknown` when nothing is left.
fn printable_host(h: &str) -> String {
    let clean: String = h.chars().filter(|c| !c.is_control()).take(255).collect();
    if clean.trim().is_empty() {
        "unknown".into()
    } else {
        clean
    }
}

/// Read a lease document of `job` (hostile input): bounded, every field checked. The error
/// says in one line what is wrong with it.
pub fn parse(bytes: &[u8], job: &str) -> std::result::Result<Lease, String> {
    if bytes.len() > MAX_LEASE_BYTES {
        return Err(format!("it is larger than {MAX_LEASE_BYTES} bytes"));
    }
    let lease: Lease = serde_json::from_slice(bytes).map_err(|e| {
        let mut msg = one_line(&e.to_string());
        msg.truncate(200);
        format!("it is not a drkit lease ({msg})")
    })?;
    if lease.format_version != LEASE_VERSION {
        return Err(format!(
            "its format_version {} is not {LEASE_VERSION}",
            lease.format_version
        ));
    }
    let hex = |s: &str| (8..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(&lease.owner) {
        return Err("its owner is not 8 to 64 hex digits".into());
    }
    if lease.host.is_empty()
        || lease.host.chars().count() > 255
        || lease.host.chars().any(char::is_control)
    {
        return Err("its host is empty, too long or has control characters".into());
    }
    if lease.job != job {
        return Err("it names another job".into());
    }
    if lease.expires_at < lease.started_at {
        return Err("it expires before it starts".into());
    }
    Ok(lease)
}

/// When a lease read from the storage ends, by our clock: its `expires_at`, but never more
/// than [`MAX_LEASE_TTL`] after the object was last written (`modified`, the server's time).
/// An unreadable lease (`Err`) lasts `ttl` from when it was written, so that garbage can
/// neither steal a job at once nor block it for ever; without a time, it has ended.
pub fn expiry(
    lease: &std::result::Result<Lease, String>,
    modified: Option<DateTime<Utc>>,
    ttl: Duration,
) -> DateTime<Utc> {
    let after = |t: DateTime<Utc>, d: Duration| {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| t.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    };
    match (lease, modified) {
        (Ok(l), Some(m)) => l.expires_at.min(after(m, MAX_LEASE_TTL)),
        (Ok(l), None) => l.expires_at,
        (Err(_), Some(m)) => after(m, ttl),
        (Err(_), None) => DateTime::<Utc>::MIN_UTC,
    }
}

/// What to do with the lease found on a job at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Another run holds it: refuse (or wait), naming the holder.
    Held {
        /// `host H, pid P, since T, lease expires E` (or what is wrong with the lease).
        holder: String,
    },
    /// It has expired: take it over (conditionally, on its ETag), warning with this holder.
    TakeOver {
        /// As for `Held`.
        holder: String,
    },
}

/// Decide on the lease found (`lease` parsed, `modified` its object's time) at `now`.
pub fn decide(
    lease: &std::result::Result<Lease, String>,
    modified: Option<DateTime<Utc>>,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Decision {
    let ends = expiry(lease, modified, ttl);
    let holder = match lease {
        Ok(l) => l.holder(ends),
        Err(why) => format!(
            "an unreadable lease ({why}), which expires {}",
            ends.to_rfc3339()
        ),
    };
    if ends > now {
        Decision::Held { holder }
    } else {
        Decision::TakeOver { holder }
    }
}

/// Which conditional writes a server honours (probed once per storage and run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conditional {
    /// A second `PutObject` with `If-None-Match: *` on an existing key fails (412).
    pub if_none_match: bool,
    /// A `PutObject` with `If-Match` on a wrong ETag fails (412).
    pub if_match: bool,
}

impl Conditional {
    /// Whether leases exclude other runs on this server (both are honoured).
    pub fn strict(&self) -> bool {
        self.if_none_match && self.if_match
    }

    /// What `drkit doctor` says.
    pub fn describe(&self) -> String {
        match (self.if_none_match, self.if_match) {
            (true, true) => "the server honours conditional writes (If-None-Match, If-Match): job leases exclude other runs".into(),
            (n, m) => format!(
                "the server ignores conditional writes ({}): job leases are advisory here, two runs of a job on different hosts can overlap",
                match (n, m) {
                    (false, false) => "If-None-Match and If-Match",
                    (false, true) => "If-None-Match",
                    _ => "If-Match",
                }
            ),
        }
    }
}

/// How a lease write is conditioned.
#[derive(Clone, Copy)]
enum Cond<'a> {
    /// `If-None-Match: *`.
    Absent,
    /// `If-Match: <etag>`.
    Etag(&'a str),
    /// No condition (the server does not honour the one we would send).
    Always,
}

impl<'a> Cond<'a> {
    /// This condition, or none when the server does not honour it.
    fn on(self, c: &Conditional) -> Cond<'a> {
        match self {
            Cond::Absent if !c.if_none_match => Cond::Always,
            Cond::Etag(_) if !c.if_match => Cond::Always,
            other => other,
        }
    }
}

/// The outcome of a conditional write.
enum Put {
    /// Written: the new ETag.
    Written(String),
    /// The condition failed (412, 409).
    ConditionFailed,
    /// The server rejected the conditional header itself (400, 501).
    Unsupported,
}

/// A lease object as read.
struct Found {
    parsed: std::result::Result<Lease, String>,
    etag: Option<String>,
    modified: Option<DateTime<Utc>>,
}

/// Whether a failure is the server refusing a write's condition (412, or 409 for a
/// concurrent conditional write).
fn is_condition_failed(f: &Failure) -> bool {
    matches!(f, Failure::Service { code, status, .. }
        if *status == 412 || code == "PreconditionFailed" || code == "ConditionalRequestConflict" || *status == 409)
}

/// Whether a failure is the server rejecting the conditional header itself (not
/// implemented, or a bad request about it).
fn is_unsupported(f: &Failure) -> bool {
    errors::is_not_implemented(f)
        || matches!(f, Failure::Service { status: 400, code, .. } if code == "InvalidArgument" || code == "NotImplemented" || code.is_empty())
}

impl Inner {
    /// Who holds a live lease on `job` at `now` (the fleet view): `None` when there is no
    /// lease or it has expired.
    pub(super) async fn lease_holder(
        &self,
        job: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>> {
        let full = self.lease_key(job)?;
        let Some(found) = self.read_lease(&full, job).await? else {
            return Ok(None);
        };
        Ok(
            match decide(&found.parsed, found.modified, self.settings.lease_ttl, now) {
                Decision::Held { holder } => Some(holder),
                Decision::TakeOver { .. } => None,
            },
        )
    }

    fn lease_key(&self, job: &str) -> Result<String> {
        self.full_key(&format!("{job}/{LEASE_FILE}"))
    }

    /// Write a lease document (no object-lock retention: it must stay replaceable and
    /// deletable). `Ok(None)`: the condition failed.
    async fn write_lease(
        &self,
        full: &str,
        body: Vec<u8>,
        cond: Cond<'_>,
    ) -> Result<Option<String>> {
        match self.put_cond(full, body, cond).await? {
            Put::Written(etag) => Ok(Some(etag)),
            Put::ConditionFailed => Ok(None),
            Put::Unsupported => Err(Error::storage(format!(
                "{}: writing the lease {full}: the server rejects conditional writes: run `drkit doctor`",
                self.place
            ))),
        }
    }

    async fn put_cond(&self, full: &str, body: Vec<u8>, cond: Cond<'_>) -> Result<Put> {
        self.put_cond_retrying(full, body, cond, 0).await
    }

    /// [`Inner::put_cond`], tried `retries` more times when no answer came (the connection
    /// failed or was closed under load). Only for taking a lease: a write that landed with
    /// its answer lost then fails its condition, and the taker finds its own lease.
    async fn put_cond_retrying(
        &self,
        full: &str,
        body: Vec<u8>,
        cond: Cond<'_>,
        retries: u32,
    ) -> Result<Put> {
        let mut attempt = 0;
        loop {
            match self.put_cond_once(full, body.clone(), cond).await {
                Err(Failure::Network { .. }) if attempt < retries => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                Err(f) => {
                    return Err(errors::to_error(
                        &self.place,
                        &format!("writing the lease {full}"),
                        f,
                    ))
                }
                Ok(put) => return put,
            }
        }
    }

    /// One conditional write: its outcome, or the failure of a request that got no usable
    /// answer or an error the caller maps.
    async fn put_cond_once(
        &self,
        full: &str,
        body: Vec<u8>,
        cond: Cond<'_>,
    ) -> std::result::Result<Result<Put>, Failure> {
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let mut req = client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(full)
            .content_type("application/json")
            .body(ByteStream::from(body));
        req = match cond {
            Cond::Absent => req.if_none_match("*"),
            Cond::Etag(e) => req.if_match(e),
            Cond::Always => req,
        };
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
        match req.send().await {
            Ok(out) => Ok(match out.e_tag() {
                Some(e) => Ok(Put::Written(e.to_string())),
                None => {
                    // No ETag in the answer: ask for it.
                    self.head_raw(full).await.and_then(|head| {
                        head.and_then(|(e, _)| e).map(Put::Written).ok_or_else(|| {
                            Error::storage(format!(
                                "{}: the server gives no ETag for {full}: it cannot hold job leases",
                                self.place
                            ))
                        })
                    })
                }
            }),
            Err(e) => {
                let f = Failure::of(&e);
                if is_condition_failed(&f) {
                    Ok(Ok(Put::ConditionFailed))
                } else if !matches!(cond, Cond::Always) && is_unsupported(&f) {
                    Ok(Ok(Put::Unsupported))
                } else {
                    Err(f)
                }
            }
        }
    }

    /// ETag and time of an object by its full key, `None` when absent.
    async fn head_raw(
        &self,
        full: &str,
    ) -> Result<Option<(Option<String>, Option<DateTime<Utc>>)>> {
        let client = self.client().await?;
        match client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(o) => Ok(Some((
                o.e_tag().map(str::to_string),
                o.last_modified().and_then(to_chrono),
            ))),
            Err(e) => {
                let f = Failure::of(&e);
                if matches!(f, Failure::Service { status: 404, ref code, .. } if code != "NoSuchBucket")
                {
                    Ok(None)
                } else {
                    Err(errors::to_error(&self.place, &format!("reading {full}"), f))
                }
            }
        }
    }

    /// Read the lease of `job`, bounded; `None` when there is none. A body that cannot be
    /// read (s3s-fs cuts the body of an object replaced meanwhile) is read again, twice; then
    /// the lease counts as unreadable (held until `lease_ttl` after its write).
    ///
    /// The SDK's response checksum is not checked here: a server whose conditional writes
    /// are not atomic (s3s-fs) can keep one racing run's bytes with another's checksum, and
    /// the bytes (a whole document of one run, or not a lease at all) are what decide.
    async fn read_lease(&self, full: &str, job: &str) -> Result<Option<Found>> {
        let client = self.client().await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let unchecked = aws_sdk_s3::config::Builder::default().response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
            let out = match client
                .get_object()
                .bucket(&self.settings.bucket)
                .key(full)
                .customize()
                .config_override(unchecked)
                .send()
                .await
            {
                Ok(o) => o,
                Err(e) => {
                    let f = Failure::of(&e);
                    if matches!(f, Failure::Service { status: 404, ref code, .. } if code != "NoSuchBucket")
                    {
                        return Ok(None);
                    }
                    return Err(errors::to_error(
                        &self.place,
                        &format!("reading the lease {full}"),
                        f,
                    ));
                }
            };
            let etag = out.e_tag().map(str::to_string);
            let modified = out.last_modified().and_then(to_chrono);
            let parsed = if out.content_length().unwrap_or(0) > MAX_LEASE_BYTES as i64 {
                Err(format!("it is larger than {MAX_LEASE_BYTES} bytes"))
            } else {
                let mut body = Vec::new();
                let read = out
                    .body
                    .into_async_read()
                    .take(MAX_LEASE_BYTES as u64 + 1)
                    .read_to_end(&mut body)
                    .await;
                match read {
                    Ok(_) => parse(&body, job),
                    Err(_) if attempt < 3 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(e) => Err(format!(
                        "its body could not be read: {}",
                        one_line(&e.to_string())
                    )),
                }
            };
            return Ok(Some(Found {
                parsed,
                etag,
                modified,
            }));
        }
    }

    /// Fail as any other request would when the bucket is missing or the credentials are
    /// wrong: a one-key listing of the job (its answer names the error, unlike HeadBucket's;
    /// and s3s-fs answers a GET in a missing bucket with NoSuchKey, then creates the bucket
    /// on a PUT).
    async fn bucket_exists(&self, job: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .list_objects_v2()
            .bucket(&self.settings.bucket)
            .prefix(format!("{}{job}/", self.root))
            .max_keys(1)
            .send()
            .await
            .map_err(|e| super::sdk_error(&self.place, &format!("listing {job}"), e))?;
        Ok(())
    }

    /// Whether the lease object is ours (`owner`), read back after we wrote it: `Some(its
    /// ETag)` when it is, `None` when it is not (another run's replaced it).
    async fn confirm_lease(
        &self,
        full: &str,
        job: &str,
        owner: &str,
    ) -> Result<Option<Option<String>>> {
        Ok(match self.read_lease(full, job).await? {
            Some(f) if f.parsed.as_ref().is_ok_and(|l| l.owner == owner) => Some(f.etag),
            _ => None,
        })
    }

    /// Delete the object at the full key `full` (a missing one is not an error); errors
    /// name `shown`.
    pub(super) async fn delete_raw(&self, full: &str, shown: &str) -> Result<()> {
        let client = self.client().await?;
        match client
            .delete_object()
            .bucket(&self.settings.bucket)
            .key(full)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let f = Failure::of(&e);
                if matches!(f, Failure::Service { status: 404, ref code, .. } if code != "NoSuchBucket")
                {
                    Ok(())
                } else {
                    Err(errors::to_error(
                        &self.place,
                        &format!("deleting {shown}"),
                        f,
                    ))
                }
            }
        }
    }

    /// Find out which conditional writes the server honours: write a probe object
    /// (`<prefix>/.drkit-probe-<rand>`) with `If-None-Match: *`, write it again the same way
    /// (must fail: 412), write it with `If-Match` on a wrong ETag (must fail), delete it.
    pub(crate) async fn probe_conditional(&self) -> Result<Conditional> {
        let full = format!("{}.drkit-probe-{:016x}", self.root, rand::random::<u64>());
        let body = || b"drkit conditional write probe\n".to_vec();
        let result = async {
            if self
                .write_lease(&full, body(), Cond::Always)
                .await?
                .is_none()
            {
                return Err(Error::storage(format!(
                    "{}: the probe {full} could not be written",
                    self.place
                )));
            }
            let refused = |p: Put| matches!(p, Put::ConditionFailed);
            let if_none_match = refused(self.put_cond(&full, body(), Cond::Absent).await?);
            let wrong = "\"00000000000000000000000000000000\"";
            let if_match = refused(self.put_cond(&full, body(), Cond::Etag(wrong)).await?);
            Ok(Conditional {
                if_none_match,
                if_match,
            })
        }
        .await;
        let cleaned = self.delete_raw(&full, &full).await;
        let found = result?;
        cleaned?;
        Ok(found)
    }

    /// Which conditional writes the server honours, found on the lease we just wrote and
    /// hold (`body`, ETag `etag`), so that no probe object is left (a delete marker on a
    /// versioned bucket): written again with `If-None-Match: *` and with `If-Match` on a
    /// wrong ETag, both must fail with 412. A server that ignores them rewrote our own
    /// bytes: `etag` is updated. `known`: conditions the server already rejected (400/501).
    async fn check_on_lease(
        &self,
        full: &str,
        body: &[u8],
        etag: &mut String,
        known: Conditional,
    ) -> Result<Conditional> {
        let mut found = known;
        let wrong = "\"00000000000000000000000000000000\"";
        for (cond, honoured) in [
            (Cond::Absent, &mut found.if_none_match),
            (Cond::Etag(wrong), &mut found.if_match),
        ] {
            if !*honoured {
                continue;
            }
            match self.put_cond(full, body.to_vec(), cond).await? {
                Put::ConditionFailed => {}
                Put::Written(e) => {
                    *etag = e;
                    *honoured = false;
                }
                Put::Unsupported => *honoured = false,
            }
        }
        Ok(found)
    }

    /// Write a lease under `cond`, dropping the condition (and noting it in `known`) when the
    /// server rejects its header (400/501): the lease is then advisory.
    async fn write_lease_as(
        &self,
        full: &str,
        body: Vec<u8>,
        cond: Cond<'_>,
        known: &mut Conditional,
    ) -> Result<Option<String>> {
        match self
            .put_cond_retrying(full, body.clone(), cond.on(known), 2)
            .await?
        {
            Put::Written(e) => Ok(Some(e)),
            Put::ConditionFailed => Ok(None),
            Put::Unsupported => {
                match cond {
                    Cond::Absent => known.if_none_match = false,
                    Cond::Etag(_) => known.if_match = false,
                    Cond::Always => {}
                }
                self.write_lease(full, body, Cond::Always).await
            }
        }
    }
}

/// The places already warned that their leases are advisory (once per run).
static ADVISORY_WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn warn_advisory(place: &str, c: &Conditional) {
    let first = ADVISORY_WARNED
        .lock()
        .map(|mut w| w.insert(place.to_string()))
        .unwrap_or(false);
    if first {
        tracing::warn!(
            event = "lease.advisory",
            "{place}: {}; `drkit doctor` checks this (docs/s3.md, Leases)",
            c.describe()
        );
    }
}

/// Take the lease of `job` (see the module's text): a [`JobLock`] holding it, or a
/// `Refused` error naming the holder of a live lease.
pub(crate) async fn acquire(inner: Arc<Inner>, job: &str) -> Result<JobLock> {
    inner
        .bucket_checked
        .get_or_try_init(|| inner.bucket_exists(job))
        .await?;
    // What the server honours: known after the first lease of this storage in this run;
    // until then assumed, and checked on the lease once it is ours.
    let mut cond = inner.conditional.get().copied().unwrap_or(Conditional {
        if_none_match: true,
        if_match: true,
    });
    let full = inner.lease_key(job)?;
    let owner = format!("{:032x}", rand::random::<u128>());
    let ttl = inner.settings.lease_ttl;
    for _ in 0..5 {
        let mut took_from = None;
        let now = Utc::now();
        let lease = Lease::new(&owner, job, now, ttl);
        let written = match inner.read_lease(&full, job).await? {
            // Ours: a write whose answer was lost landed, and its retry failed the condition.
            Some(found) if found.parsed.as_ref().is_ok_and(|l| l.owner == owner) => {
                Some(found.etag.unwrap_or_default())
            }
            None => {
                inner
                    .write_lease_as(&full, lease.encode(), Cond::Absent, &mut cond)
                    .await?
            }
            Some(found) => match decide(&found.parsed, found.modified, ttl, now) {
                Decision::Held { holder } => {
                    return Err(Error::refused(format!(
                        "job {job} on {} is being written by another drkit run ({holder}); wait for it to finish",
                        inner.place
                    )))
                }
                Decision::TakeOver { holder } => {
                    let Some(etag) = found.etag else {
                        return Err(Error::storage(format!(
                            "{}: the server gives no ETag for {full}: it cannot hold job leases",
                            inner.place
                        )));
                    };
                    took_from = Some(holder);
                    inner
                        .write_lease_as(&full, lease.encode(), Cond::Etag(&etag), &mut cond)
                        .await?
                }
            },
        };
        let Some(written) = written else {
            // Another run wrote the lease between our read and our write: read it again.
            continue;
        };
        // Read it back after a pause: a server whose conditional write is not atomic (s3s-fs
        // checks, then writes) may have let a racing run's write land after ours.
        tokio::time::sleep(LEASE_SETTLE).await;
        let Some(etag) = inner.confirm_lease(&full, job, &owner).await? else {
            tracing::debug!(
                event = "lease.race_lost",
                job,
                "{job}: another run's lease replaced ours on {} right after it was written",
                inner.place
            );
            continue;
        };
        let mut etag = etag.unwrap_or(written);
        if inner.conditional.get().is_none() {
            let found = inner
                .check_on_lease(&full, &lease.encode(), &mut etag, cond)
                .await?;
            let _ = inner.conditional.set(found);
        }
        cond = inner.conditional.get().copied().unwrap_or(cond);
        if !cond.strict() {
            warn_advisory(&inner.place, &cond);
        }
        if let Some(holder) = took_from.take() {
            tracing::warn!(
                event = "lease.takeover",
                job,
                "{job}: took over the expired lease of another drkit run on {} ({holder}): that run died or lost the storage",
                inner.place
            );
        }
        tracing::debug!(
            event = "lease.acquired",
            job,
            at = Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .as_str(),
            "{job}: lease taken on {} (owner {owner}, expires {})",
            inner.place,
            lease.expires_at.to_rfc3339()
        );
        let held = S3Lease::start(inner.clone(), full, lease, etag, cond);
        return Ok(JobLock::lease(Box::new(held), cond.strict()));
    }
    Err(Error::refused(format!(
        "job {job} on {}: its lease changed hands 5 times while drkit tried to take it; try again",
        inner.place
    )))
}

/// What the renewal task and the holder share.
struct Shared {
    /// The ETag of the lease as we last wrote it.
    etag: String,
    /// Why the lease is lost, once it is.
    lost: Option<String>,
}

/// A held lease: renewed by a background task until released.
struct S3Lease {
    inner: Arc<Inner>,
    full: String,
    job: String,
    shared: Arc<Mutex<Shared>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl S3Lease {
    fn start(
        inner: Arc<Inner>,
        full: String,
        lease: Lease,
        etag: String,
        cond: Conditional,
    ) -> S3Lease {
        let shared = Arc::new(Mutex::new(Shared { etag, lost: None }));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let job = lease.job.clone();
        let task = tokio::spawn(renew(
            inner.clone(),
            full.clone(),
            lease,
            shared.clone(),
            cond,
            stopped,
        ));
        S3Lease {
            inner,
            full,
            job,
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// Renew `lease` every `lease_renew` (`If-Match` on the ETag we hold) until stopped. A
/// refused condition means another run took it over: the lease is lost. Failed renewals are
/// retried at the next tick; once the lease has expired on our clock it is lost too.
async fn renew(
    inner: Arc<Inner>,
    full: String,
    mut lease: Lease,
    shared: Arc<Mutex<Shared>>,
    cond: Conditional,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let (ttl, every) = (inner.settings.lease_ttl, inner.settings.lease_renew);
    let job = lease.job.clone();
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = Utc::now();
        let next = lease.renewed(now, ttl);
        let etag = match shared.lock() {
            Ok(s) => s.etag.clone(),
            Err(_) => return,
        };
        let lose = |why: String| {
            tracing::error!(event = "lease.lost", job = job.as_str(), "{why}");
            if let Ok(mut s) = shared.lock() {
                s.lost = Some(why);
            }
        };
        match inner
            .write_lease(&full, next.encode(), Cond::Etag(&etag).on(&cond))
            .await
        {
            Ok(Some(new)) => {
                if let Ok(mut s) = shared.lock() {
                    s.etag = new;
                }
                lease = next;
            }
            Ok(None) => {
                return lose(format!(
                    "{job}: the lease on {} was taken over by another run (its renewals failed for longer than lease_ttl): this run no longer holds the job",
                    inner.place
                ))
            }
            Err(e) if Utc::now() >= lease.expires_at => {
                return lose(format!(
                    "{job}: the lease on {} expired: it could not be renewed for longer than lease_ttl ({e})",
                    inner.place
                ))
            }
            Err(e) => tracing::warn!(
                event = "lease.renew_failed",
                job = job.as_str(),
                "{job}: renewing the lease on {} failed, trying again in {every:?}: {e}",
                inner.place
            ),
        }
    }
}

/// Remove the lease `full` if it is still the one we wrote (`etag`).
async fn give_back(inner: &Inner, full: &str, etag: &str) -> Result<()> {
    match inner.head_raw(full).await? {
        Some((Some(now), _)) if now == etag => inner.delete_raw(full, full).await,
        _ => Ok(()), // gone, or another run's by now
    }
}

#[async_trait]
impl JobLease for S3Lease {
    async fn release(mut self: Box<Self>) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let (etag, lost) = match self.shared.lock() {
            Ok(s) => (s.etag.clone(), s.lost.is_some()),
            Err(_) => return Ok(()),
        };
        if lost {
            return Ok(());
        }
        // Logged as the release time: taken before the lease is removed, so that a run that
        // takes it next always logs a later time.
        let releasing = Utc::now();
        give_back(&self.inner, &self.full, &etag)
            .await
            .map_err(|e| {
                e.context(format!(
                    "{}: giving back the lease (it expires by itself)",
                    self.job
                ))
            })?;
        tracing::debug!(
            event = "lease.released",
            job = self.job.as_str(),
            at = releasing
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .as_str(),
            "{}: lease given back on {}",
            self.job,
            self.inner.place
        );
        Ok(())
    }

    fn lost(&self) -> Option<String> {
        self.shared.lock().ok().and_then(|s| s.lost.clone())
    }
}

impl Drop for S3Lease {
    fn drop(&mut self) {
        // Not released (an error unwound past the holder, or a caller that only drops): stop
        // renewing and give the lease back, waiting for it (at most 10 s) on a multi-thread
        // runtime, in the background on another; without a runtime it expires by itself.
        let Some(stop) = self.stop.take() else {
            return;
        };
        let _ = stop.send(());
        let task = self.task.take();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (inner, full, shared) = (self.inner.clone(), self.full.clone(), self.shared.clone());
        let work = async move {
            if let Some(task) = task {
                let _ = task.await;
            }
            let etag = match shared.lock() {
                Ok(s) if s.lost.is_none() => s.etag.clone(),
                _ => return,
            };
            let _ = give_back(&inner, &full, &etag).await;
        };
        if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            tokio::task::block_in_place(|| {
                rt.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
                })
            });
        } else {
            rt.spawn(work);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap() + chrono::Duration::seconds(s.into())
    }

    fn lease(started: u32, expires: u32) -> Lease {
        Lease {
            format_version: 1,
            owner: "0123456789abcdef0123456789abcdef".into(),
            host: "alpha".into(),
            pid: 42,
            job: "db".into(),
            started_at: t(started),
            expires_at: t(expires),
        }
    }

    #[test]
    fn a_lease_round_trips() {
        let l = Lease::new("00ff00ff00ff00ff", "db", t(0), Duration::from_secs(60));
        assert_eq!(l.expires_at, t(60));
        assert_eq!(l.pid, std::process::id());
        assert_eq!(parse(&l.encode(), "db"), Ok(l.clone()));
        let r = l.renewed(t(20), Duration::from_secs(60));
        assert_eq!(
            (r.started_at, r.expires_at, &r.owner),
            (t(0), t(80), &l.owner)
        );
        assert!(l.encode().len() < 512);
    }

    #[test]
    fn hostile_leases_are_refused_with_a_reason() {
        let good = String::from_utf8(lease(0, 60).encode()).unwrap();
        let with = |from: &str, to: &str| good.replace(from, to).into_bytes();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "not a drkit lease"),
            (b"{".to_vec(), "not a drkit lease"),
            (b"[1,2]".to_vec(), "not a drkit lease"),
            (vec![0xff, 0xfe], "not a drkit lease"),
            (vec![b' '; MAX_LEASE_BYTES + 1], "larger than 4096"),
            (
                with("\"format_version\":1", "\"format_version\":2"),
                "format_version 2",
            ),
            (
                with("0123456789abcdef0123456789abcdef", "not-hex!"),
                "owner",
            ),
            (with("0123456789abcdef0123456789abcdef", "abc"), "owner"),
            (with("\"alpha\"", "\"\""), "host"),
            (with("\"alpha\"", "\"al\\u001b[31mpha\""), "host"),
            (with("\"alpha\"", &format!("{:?}", "h".repeat(256))), "host"),
            (with("\"db\"", "\"other\""), "another job"),
            (with("\"pid\":42", "\"pid\":-1"), "not a drkit lease"),
            (
                with("\"pid\":42", "\"pid\":99999999999"),
                "not a drkit lease",
            ),
            (
                with("2026-03-01T12:01:00Z", "2026-03-01T11:00:00Z"),
                "expires before",
            ),
            (
                with("2026-03-01T12:01:00Z", "tomorrow"),
                "not a drkit lease",
            ),
        ];
        for (bytes, want) in cases {
            let e = parse(&bytes, "db").unwrap_err();
            assert!(
                e.contains(want),
                "{:?}: {e}",
                String::from_utf8_lossy(&bytes)
            );
            assert!(!e.contains('\n') && e.len() < 300, "{e}");
        }
        // Unknown fields are ignored (a later drkit may add some).
        let extra = good.replacen('{', "{\"note\":\"x\",", 1);
        assert_eq!(parse(extra.as_bytes(), "db"), Ok(lease(0, 60)));
    }

    /// (lease, modified, now, held, expiry)
    type Case = (
        std::result::Result<Lease, String>,
        Option<DateTime<Utc>>,
        DateTime<Utc>,
        bool,
        DateTime<Utc>,
    );

    #[test]
    fn expiry_and_take_over() {
        let ttl = Duration::from_secs(60);
        let bad: std::result::Result<Lease, String> = Err("it is not a drkit lease".into());
        let cases: Vec<Case> = vec![
            // (lease, modified, now, held, expiry)
            (Ok(lease(0, 60)), Some(t(0)), t(30), true, t(60)),
            (Ok(lease(0, 60)), Some(t(0)), t(59), true, t(60)),
            (Ok(lease(0, 60)), Some(t(0)), t(60), false, t(60)),
            (Ok(lease(0, 60)), Some(t(0)), t(600), false, t(60)),
            (Ok(lease(0, 60)), None, t(30), true, t(60)),
            // Renewed: the object is newer than the start.
            (Ok(lease(0, 200)), Some(t(140)), t(190), true, t(200)),
            // A lease claiming a year is capped at an hour after its write.
            (
                Ok(lease(0, 365 * 86_400)),
                Some(t(0)),
                t(3_599),
                true,
                t(3_600),
            ),
            (
                Ok(lease(0, 365 * 86_400)),
                Some(t(0)),
                t(3_600),
                false,
                t(3_600),
            ),
            // Garbage lasts ttl from its write; without a time it has ended.
            (bad.clone(), Some(t(0)), t(59), true, t(60)),
            (bad.clone(), Some(t(0)), t(61), false, t(60)),
            (bad.clone(), None, t(0), false, DateTime::<Utc>::MIN_UTC),
        ];
        for (l, modified, now, held, ends) in cases {
            assert_eq!(expiry(&l, modified, ttl), ends, "{l:?} {modified:?}");
            let d = decide(&l, modified, ttl, now);
            match (&d, held) {
                (Decision::Held { holder }, true) | (Decision::TakeOver { holder }, false) => {
                    if l.is_ok() {
                        assert!(holder.contains("host alpha, pid 42, since 2026-03-01T12:00:00+00:00, lease expires"), "{holder}");
                    } else {
                        assert!(
                            holder.contains("unreadable lease (it is not a drkit lease)"),
                            "{holder}"
                        );
                    }
                }
                _ => panic!("{l:?} at {now}: {d:?}"),
            }
        }
    }

    #[test]
    fn conditional_descriptions() {
        let c = |n, m| Conditional {
            if_none_match: n,
            if_match: m,
        };
        assert!(c(true, true).strict());
        assert!(c(true, true).describe().contains("honours"));
        for (n, m, names) in [
            (false, false, "(If-None-Match and If-Match)"),
            (false, true, "(If-None-Match)"),
            (true, false, "(If-Match)"),
        ] {
            assert!(!c(n, m).strict());
            let d = c(n, m).describe();
            assert!(
                d.contains("ignores conditional writes") && d.contains(names),
                "{d}"
            );
            assert!(d.contains("advisory"), "{d}");
        }
    }

    #[test]
    fn host_names_are_printable() {
        assert_eq!(printable_host("web-1"), "web-1");
        assert_eq!(printable_host("a\nb\u{1b}"), "ab");
        assert_eq!(printable_host(" \n"), "unknown");
        assert_eq!(printable_host(&"x".repeat(300)).len(), 255);
    }
}
