//! The catalog: the storage itself. A backup exists if and only if its manifest exists, so
//! listing backups is listing `*/manifest.json` keys and reading them.
//!
//! The storage is untrusted input: a manifest counts only where its `job` and `id` equal the
//! folder it was found in, its data key lies in that folder, and (with a public key
//! configured) its signature matches. Anything else is a [`Broken`] entry: listed with its
//! reason, never chosen for a restore, never counted or removed by retention. One broken
//! entry never hides the others.

pub mod cache;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, SubsecRound, TimeZone, Utc};
use futures::StreamExt;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use self::cache::ManifestCache;
use crate::manifest::{backup_folder, format_time, manifest_key, MANIFEST_FILE};
use crate::signing::{Record, Trust, SIG_SUFFIX};
use crate::{Error, ErrorKind, Manifest, ObjectMeta, Result, Storage};

pub use crate::layout::{complete_ids, incomplete_keys, jobs_in, ACCEPTED_FILE};

/// Objects larger than this are not read as manifests or records (a hostile storage could
/// hand out gigabytes under `manifest.json`).
pub const MAX_RECORD_SIZE: u64 = 16 << 20;

/// How many records (manifests, signatures, accept records) the catalog reads at once. The
/// results keep the listing's order whatever order the answers come in.
pub const FETCH_CONCURRENCY: usize = 32;

/// A new backup id for a backup started at `now`: `YYYYMMDDTHHMMSSZ-<6 hex>`, sorting by time.
pub fn new_backup_id(now: DateTime<Utc>, rng: &mut impl Rng) -> String {
    format!(
        "{}-{:06x}",
        now.format("%Y%m%dT%H%M%SZ"),
        rng.gen_range(0..0x100_0000u32)
    )
}

/// Whether `id` has the shape of a backup id.
pub fn is_backup_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 23
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..].iter().all(|c| c.is_ascii_hexdigit())
}

/// Read one object fully (only for small objects: manifests, reports).
pub async fn read_small(storage: &dyn Storage, key: &str) -> Result<Vec<u8>> {
    read_record(storage, key).await
}

/// The state of a valid backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not suspect when written.
    Good,
    /// Suspect when written, not accepted: kept, but not counted as good.
    Suspect,
    /// Suspect when written, then accepted with `drkit accept`: counts as good.
    Accepted,
}

impl State {
    /// The word `list` shows: `OK`, `SUSPECT`, `ACCEPTED`.
    pub fn label(self) -> &'static str {
        match self {
            State::Good => "OK",
            State::Suspect => "SUSPECT",
            State::Accepted => "ACCEPTED",
        }
    }
}

/// The record `drkit accept` writes next to a suspect backup (`<job>/<id>/accepted.json`):
/// the manifest itself is never rewritten (object-locked buckets forbid it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acceptance {
    /// The job.
    pub job: String,
    /// The accepted backup.
    pub backup_id: String,
    /// When it was accepted.
    pub accepted_at: DateTime<Utc>,
    /// Who accepted it (user name on the host).
    pub by: String,
    /// The host `drkit accept` ran on.
    pub host: String,
    /// Why (the `--reason`).
    pub reason: String,
}

impl Acceptance {
    /// The storage key of the accept record of backup `id` of `job`.
    pub fn key_for(job: &str, id: &str) -> String {
        crate::layout::accepted_key(job, id)
    }

    /// Serialize as pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("an acceptance serializes");
        v.push(b'\n');
        v
    }
}

/// One valid backup: its manifest and, when there is one, its accept record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The manifest, checked against its folder.
    pub manifest: Manifest,
    /// The accept record, when a valid one exists.
    pub accepted: Option<Acceptance>,
    /// Why an accept record next to it was ignored (unreadable, for another backup, bad
    /// signature).
    pub accept_problem: Option<String>,
}

impl Entry {
    /// Good, suspect or accepted.
    pub fn state(&self) -> State {
        match (&self.manifest.suspect, &self.accepted) {
            (None, _) => State::Good,
            (Some(_), None) => State::Suspect,
            (Some(_), Some(_)) => State::Accepted,
        }
    }

    /// Good = not suspect, or accepted.
    pub fn is_good(&self) -> bool {
        self.state() != State::Suspect
    }
}

/// A folder of the job that looks like a backup but cannot be trusted as one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The folder's name (a backup id by its shape).
    pub id: String,
    /// The manifest's key.
    pub key: String,
    /// What is wrong, in words.
    pub reason: String,
    /// Whether the storage failed to read it (it may be fine): prune does not act on a
    /// listing with such an entry.
    pub unreadable: bool,
    /// Written by a newer drkit (a newer `format_version`): using it is a config error
    /// (exit 2, upgrade drkit), not an integrity one.
    #[serde(skip)]
    pub newer_format: bool,
}

/// The backups of one job on one storage.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Valid backups, newest first (by start time, then id).
    pub backups: Vec<Entry>,
    /// Broken entries, by folder name.
    pub broken: Vec<Broken>,
}

impl Listing {
    /// The newest good backup.
    pub fn newest_good(&self) -> Option<&Entry> {
        self.backups.iter().find(|e| e.is_good())
    }

    /// The valid backup `id`.
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.backups.iter().find(|e| e.manifest.id == id)
    }

    /// The broken entry of folder `id`.
    pub fn broken(&self, id: &str) -> Option<&Broken> {
        self.broken.iter().find(|b| b.id == id)
    }
}

/// Read every backup of `job` on `storage`: valid ones (checked against their folder, and
/// signed when `trust` has a public key) and broken ones. Fails only when the storage cannot
/// be listed. Records are read [`FETCH_CONCURRENCY`] at a time, through the manifest cache
/// installed in this process ([`cache::install`]), if any.
pub async fn scan(storage: &dyn Storage, job: &str, trust: &Trust) -> Result<Listing> {
    scan_with(storage, job, trust, cache::installed().as_deref()).await
}

/// [`scan`] through `cache` (or none). After the listing, the cache forgets the records of
/// `job` that the storage no longer holds.
pub async fn scan_with(
    storage: &dyn Storage,
    job: &str,
    trust: &Trust,
    cache: Option<&ManifestCache>,
) -> Result<Listing> {
    let objects = storage.list(&crate::layout::job_prefix(job)).await?;
    let reader = Reader::new(storage, cache, job, &objects);
    let ids = complete_ids(&objects, job);
    let results = reader.entries(&ids, trust).await;
    let mut listing = Listing::default();
    let mut wrote = false;
    for (r, w) in results {
        wrote |= w;
        match r {
            Ok(e) => listing.backups.push(e),
            Err(b) => listing.broken.push(b),
        }
    }
    listing
        .backups
        .sort_by(|a, b| newest_first(&a.manifest, &b.manifest));
    if let Some(c) = cache {
        let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
        c.retain(&reader.storage_id, job, &keys, wrote).await;
    }
    Ok(listing)
}

/// The listing prefixes that the newest backups of `job` are looked for under at `now`, most
/// recent first: today, this month, the month before, this year, then the whole job (backup
/// ids start with their UTC start time, `YYYYMMDD...`).
pub fn recent_prefixes(job: &str, now: DateTime<Utc>) -> Vec<String> {
    let prev = if now.month() == 1 {
        format!("{:04}12", now.year() - 1)
    } else {
        format!("{:04}{:02}", now.year(), now.month() - 1)
    };
    vec![
        format!("{job}/{}", now.format("%Y%m%d")),
        format!("{job}/{}", now.format("%Y%m")),
        format!("{job}/{prev}"),
        format!("{job}/{}", now.format("%Y")),
        crate::layout::job_prefix(job),
    ]
}

/// The newest good backup of `job` on `storage`, reading only the newest backups: the first
/// of [`recent_prefixes`] that holds a good one is listed, and its manifests are read newest
/// id first, a few at a time, until a good one is found. What a backup compares itself with
/// (the suspect checks), at a cost that does not grow with how many older backups the job
/// keeps. `None` when the job has no good backup.
pub async fn newest_good(
    storage: &dyn Storage,
    job: &str,
    trust: &Trust,
    now: DateTime<Utc>,
) -> Result<Option<Entry>> {
    newest_good_with(storage, job, trust, now, cache::installed().as_deref()).await
}

/// [`newest_good`] through `cache` (or none).
pub async fn newest_good_with(
    storage: &dyn Storage,
    job: &str,
    trust: &Trust,
    now: DateTime<Utc>,
    cache: Option<&ManifestCache>,
) -> Result<Option<Entry>> {
    let mut seen: HashSet<String> = HashSet::new();
    for prefix in recent_prefixes(job, now) {
        let objects = storage.list(&prefix).await?;
        let reader = Reader::new(storage, cache, job, &objects);
        let mut ids: Vec<String> = complete_ids(&objects, job)
            .into_iter()
            .filter(|id| !seen.contains(id))
            .collect();
        ids.reverse();
        let mut batch = 4;
        for chunk in ids.chunks(FETCH_CONCURRENCY) {
            for part in chunk.chunks(batch) {
                let mut good: Vec<Entry> = (reader.entries(part, trust).await)
                    .into_iter()
                    .filter_map(|(r, _)| r.ok().filter(Entry::is_good))
                    .collect();
                if !good.is_empty() {
                    good.sort_by(|a, b| newest_first(&a.manifest, &b.manifest));
                    return Ok(good.into_iter().next());
                }
                batch = FETCH_CONCURRENCY;
            }
        }
        seen.extend(ids);
    }
    Ok(None)
}

/// The backup `id` of `job`: a missing one is [`ErrorKind::NotFound`], a broken one an
/// integrity error naming it and what is wrong.
pub async fn load(storage: &dyn Storage, job: &str, id: &str, trust: &Trust) -> Result<Entry> {
    let objects = storage.list(&backup_folder(job, id)).await?;
    if !is_backup_id(id) || !objects.iter().any(|o| o.key == manifest_key(job, id)) {
        return Err(Error::not_found(format!(
            "job {job} has no backup {id} on {}; `drkit list {job}` shows the backups",
            storage.describe()
        )));
    }
    let cache = cache::installed();
    Reader::new(storage, cache.as_deref(), job, &objects)
        .entry(id, trust)
        .await
        .0
        .map_err(|b| broken_error(job, &b))
}

/// The error for using a broken entry.
pub fn broken_error(job: &str, b: &Broken) -> Error {
    let msg = format!("backup {job}/{} is broken: {}", b.id, b.reason);
    if b.unreadable {
        Error::storage(msg)
    } else if b.newer_format {
        Error::config(msg)
    } else {
        Error::integrity(msg)
    }
}

/// Reads the records of one listing of a job: from the cache when it holds the version the
/// listing names, else from the storage.
struct Reader<'a> {
    storage: &'a dyn Storage,
    cache: Option<&'a ManifestCache>,
    /// The storage's description: what the cache files are kept under.
    storage_id: String,
    job: &'a str,
    objects: HashMap<&'a str, &'a ObjectMeta>,
}

/// Where the records of one entry came from.
#[derive(Default)]
struct Fetched {
    /// At least one record came from the cache.
    from_cache: bool,
    /// The records read from the storage: (key, bytes).
    from_storage: Vec<(String, Vec<u8>)>,
}

impl<'a> Reader<'a> {
    fn new(
        storage: &'a dyn Storage,
        cache: Option<&'a ManifestCache>,
        job: &'a str,
        objects: &'a [ObjectMeta],
    ) -> Self {
        Reader {
            storage,
            cache,
            storage_id: if cache.is_some() {
                storage.describe()
            } else {
                String::new()
            },
            job,
            objects: objects.iter().map(|o| (o.key.as_str(), o)).collect(),
        }
    }

    fn present(&self, key: &str) -> bool {
        self.objects.contains_key(key)
    }

    /// The record at `key`: from the cache when allowed and it holds the listed version,
    /// else from the storage (noted in `fetched`).
    async fn read(&self, key: &str, use_cache: bool, fetched: &mut Fetched) -> Result<Vec<u8>> {
        if let (true, Some(c), Some(meta)) = (use_cache, self.cache, self.objects.get(key)) {
            if let Ok(bytes) = c.get(&self.storage_id, self.job, meta).await {
                fetched.from_cache = true;
                return Ok(bytes);
            }
        }
        let bytes = read_record(self.storage, key).await?;
        fetched.from_storage.push((key.to_string(), bytes.clone()));
        Ok(bytes)
    }

    /// The entries of backups `ids`, in that order, read [`FETCH_CONCURRENCY`] at a time.
    async fn entries(
        &self,
        ids: &[String],
        trust: &Trust,
    ) -> Vec<(std::result::Result<Entry, Broken>, bool)> {
        let mut pending = futures::stream::FuturesOrdered::new();
        let mut out = Vec::with_capacity(ids.len());
        let mut next = ids.iter();
        loop {
            while pending.len() < FETCH_CONCURRENCY {
                match next.next() {
                    Some(id) => pending.push_back(self.entry(id, trust)),
                    None => break,
                }
            }
            match pending.next().await {
                Some(r) => out.push(r),
                None => return out,
            }
        }
    }

    /// The entry of backup `id`, and whether the cache was written. Bytes from the cache go
    /// through the same checks as bytes from the storage; when an entry read through the
    /// cache fails them (or its accept record does), its cache files are dropped and the
    /// storage is read instead: a cache file can never make a backup look broken.
    async fn entry(&self, id: &str, trust: &Trust) -> (std::result::Result<Entry, Broken>, bool) {
        let Some(cache) = self.cache else {
            return (read_entry(self, id, trust, false).await.0, false);
        };
        let (mut result, mut fetched) = read_entry(self, id, trust, true).await;
        let doubtful = match &result {
            Err(_) => true,
            Ok(e) => e.accept_problem.is_some(),
        };
        if fetched.from_cache && doubtful {
            for name in [MANIFEST_FILE, ACCEPTED_FILE] {
                let key = format!("{}{name}", backup_folder(self.job, id));
                let sig = crate::layout::signature_key(&key);
                cache.forget(&self.storage_id, self.job, &key).await;
                cache.forget(&self.storage_id, self.job, &sig).await;
            }
            (result, fetched) = read_entry(self, id, trust, false).await;
        }
        let Ok(entry) = &result else {
            return (result, false);
        };
        let mut wrote = false;
        let accept_key = Acceptance::key_for(self.job, id);
        for (key, bytes) in &fetched.from_storage {
            // an accept record that was ignored is read again next time
            if entry.accept_problem.is_some() && key.starts_with(&accept_key) {
                continue;
            }
            if let Some(meta) = self.objects.get(key.as_str()) {
                cache.put(&self.storage_id, self.job, meta, bytes).await;
                wrote = true;
            }
        }
        (result, wrote)
    }
}

async fn read_entry(
    reader: &Reader<'_>,
    id: &str,
    trust: &Trust,
    use_cache: bool,
) -> (std::result::Result<Entry, Broken>, Fetched) {
    let mut fetched = Fetched::default();
    let r = read_entry_from(reader, id, trust, use_cache, &mut fetched).await;
    (r, fetched)
}

async fn read_entry_from(
    reader: &Reader<'_>,
    id: &str,
    trust: &Trust,
    use_cache: bool,
    fetched: &mut Fetched,
) -> std::result::Result<Entry, Broken> {
    let job = reader.job;
    let key = manifest_key(job, id);
    let broken = |reason: String, unreadable: bool| Broken {
        id: id.to_string(),
        key: key.clone(),
        reason,
        unreadable,
        newer_format: false,
    };
    let bytes = reader
        .read(&key, use_cache, fetched)
        .await
        .map_err(|e| broken(e.to_string(), e.kind() != ErrorKind::Integrity))?;
    if let Err(e) = Manifest::from_json(&bytes, &key) {
        return Err(Broken {
            newer_format: e.kind() == ErrorKind::Config,
            ..broken(e.to_string(), false)
        });
    }
    let manifest = check_manifest(&bytes, &key, job, id).map_err(|e| broken(e, false))?;
    if !trust.is_blind() {
        let sig_key = crate::layout::signature_key(&key);
        let sig = if reader.present(&sig_key) {
            Some(
                reader
                    .read(&sig_key, use_cache, fetched)
                    .await
                    .map_err(|e| {
                        broken(
                            format!("its signature cannot be read: {e}"),
                            e.kind() != ErrorKind::Integrity,
                        )
                    })?,
            )
        } else {
            None
        };
        trust
            .check(Record::Manifest, &bytes, sig.as_deref())
            .map_err(|e| broken(format!("manifest: {e}"), false))?;
    }
    let mut entry = Entry {
        manifest,
        accepted: None,
        accept_problem: None,
    };
    let accept_key = Acceptance::key_for(job, id);
    if reader.present(&accept_key) {
        match read_acceptance(reader, &accept_key, id, trust, use_cache, fetched).await {
            Ok(a) => entry.accepted = Some(a),
            Err(why) => entry.accept_problem = Some(why),
        }
    }
    Ok(entry)
}

async fn read_acceptance(
    reader: &Reader<'_>,
    key: &str,
    id: &str,
    trust: &Trust,
    use_cache: bool,
    fetched: &mut Fetched,
) -> std::result::Result<Acceptance, String> {
    let job = reader.job;
    let bytes = reader
        .read(key, use_cache, fetched)
        .await
        .map_err(|e| format!("{key} ignored: {e}"))?;
    if !trust.is_blind() {
        let sig_key = crate::layout::signature_key(key);
        let sig = if reader.present(&sig_key) {
            match reader.read(&sig_key, use_cache, fetched).await {
                Ok(s) => Some(s),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(format!("{key} ignored: its signature cannot be read: {e}")),
            }
        } else {
            None
        };
        trust
            .check(Record::Accept, &bytes, sig.as_deref())
            .map_err(|e| format!("{key} ignored: {e}"))?;
    }
    let a: Acceptance = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{key} ignored: not a valid accept record ({e})"))?;
    if a.job != job || a.backup_id != id {
        return Err(format!(
            "{key} ignored: it accepts {}/{}, not this backup",
            a.job, a.backup_id
        ));
    }
    Ok(a)
}

/// Read a small record (manifest, signature, accept record), refusing one over
/// [`MAX_RECORD_SIZE`] as an integrity error.
pub(crate) async fn read_record(storage: &dyn Storage, key: &str) -> Result<Vec<u8>> {
    let r = storage.get(key).await?;
    let mut out = Vec::new();
    r.take(MAX_RECORD_SIZE + 1)
        .read_to_end(&mut out)
        .await
        .map_err(|e| crate::from_io(e, ErrorKind::Storage, format!("reading {key}")))?;
    if out.len() as u64 > MAX_RECORD_SIZE {
        return Err(Error::integrity(format!(
            "{key} is larger than {} MiB: not a drkit record",
            MAX_RECORD_SIZE >> 20
        )));
    }
    Ok(out)
}

/// Parse the manifest found at `<job>/<id>/manifest.json` and check it belongs there. The
/// error is the reason, in words.
pub fn check_manifest(
    bytes: &[u8],
    key: &str,
    job: &str,
    id: &str,
) -> std::result::Result<Manifest, String> {
    let m = Manifest::from_json(bytes, key).map_err(|e| e.to_string())?;
    if m.job != job || m.id != id {
        return Err(format!(
            "the manifest in folder {job}/{id} describes backup {}/{}: it was copied or forged",
            m.job, m.id
        ));
    }
    let folder = backup_folder(job, id);
    let name_ok = m.data.key.strip_prefix(&folder).is_some_and(|name| {
        !name.is_empty()
            && !name.starts_with('.')
            && name != MANIFEST_FILE
            && name != ACCEPTED_FILE
            && !name.ends_with(SIG_SUFFIX)
            && !name.contains(['/', '\\', '\0'])
    });
    if !name_ok {
        return Err(format!(
            "its data key {:?} is not a file of folder {folder}",
            m.data.key
        ));
    }
    Ok(m)
}

/// Order manifests newest first: by start time (milliseconds), then by id.
pub fn newest_first(a: &Manifest, b: &Manifest) -> std::cmp::Ordering {
    b.started_at
        .cmp(&a.started_at)
        .then_with(|| b.id.cmp(&a.id))
}

/// The valid backups of `job` (good and suspect), newest first, read without checking
/// signatures; broken entries are left out. See [`scan`] for the whole picture.
pub async fn list(storage: &dyn Storage, job: &str) -> Result<Vec<Manifest>> {
    Ok(scan(storage, job, &Trust::blind())
        .await?
        .backups
        .into_iter()
        .map(|e| e.manifest)
        .collect())
}

/// Sort manifests newest first: by start time (milliseconds), then by id.
pub fn sort_newest_first(backups: &mut [Manifest]) {
    backups.sort_by(newest_first);
}

/// Parse a `--at` time: RFC 3339, or `YYYY-MM-DD[ HH:MM[:SS]]` (also with `T`) read as UTC.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let normalized = s.replacen('T', " ", 1);
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(&normalized, fmt) {
            return Ok(Utc.from_utc_datetime(&t));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists")));
    }
    Err(Error::config(format!(
        "cannot read time {s:?}: use RFC 3339 (2026-03-01T02:00:00Z) or YYYY-MM-DD[ HH:MM[:SS]] in UTC"
    )))
}

/// Which backup a restore or drill wants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Selector {
    /// The newest good backup.
    #[default]
    Newest,
    /// This backup, good or suspect.
    Id(String),
    /// The newest good backup that started at or before this time (to the second, as `list`
    /// prints it).
    At(DateTime<Utc>),
}

/// The backup chosen from a listing, and why.
#[derive(Debug, Clone)]
pub struct Choice<'a> {
    /// The chosen backup.
    pub entry: &'a Entry,
    /// Why it was chosen, in words.
    pub why: String,
    /// Suspect backups passed over on the way (newest first).
    pub skipped_suspect: Vec<String>,
    /// A warning for the operator (a suspect backup chosen by id, broken entries newer than
    /// the chosen backup).
    pub warning: Option<String>,
}

/// The error when nothing valid was found but broken entries were: that is the news.
fn only_broken(job: &str, listing: &Listing) -> Option<Error> {
    let b = listing.broken.last()?;
    Some(Error::integrity(format!(
        "job {job} has no valid backup to choose: {} broken entr{} (newest: backup {} {}); `drkit list {job}` shows them",
        listing.broken.len(),
        if listing.broken.len() == 1 { "y" } else { "ies" },
        b.id,
        b.reason
    )))
}

/// A warning naming broken entries newer than the chosen backup `id`.
fn newer_broken(listing: &Listing, id: &str) -> Option<String> {
    let newer: Vec<&str> = listing
        .broken
        .iter()
        .filter(|b| b.id.as_str() > id)
        .map(|b| b.id.as_str())
        .collect();
    (!newer.is_empty()).then(|| {
        format!(
            "passed over newer broken entr{} {} (see `drkit list`)",
            if newer.len() == 1 { "y" } else { "ies" },
            newer.join(", ")
        )
    })
}

/// Choose a backup from `listing` (of `job`). A selector that finds nothing is
/// [`ErrorKind::NotFound`]; an id whose folder is broken is an integrity error.
pub fn choose<'a>(listing: &'a Listing, job: &str, selector: &Selector) -> Result<Choice<'a>> {
    let skipped = |before: &dyn Fn(&Entry) -> bool| -> Vec<String> {
        listing
            .backups
            .iter()
            .filter(|e| !e.is_good() && before(e))
            .map(|e| e.manifest.id.clone())
            .collect()
    };
    match selector {
        Selector::Id(id) => {
            if let Some(entry) = listing.get(id) {
                let warning = (!entry.is_good()).then(|| {
                    format!(
                        "backup {id} is suspect ({}); restoring it because it was asked for by id",
                        entry.manifest.suspect_reasons().join("; ")
                    )
                });
                return Ok(Choice {
                    entry,
                    why: format!("backup {id} as asked"),
                    skipped_suspect: Vec::new(),
                    warning,
                });
            }
            if let Some(b) = listing.broken(id) {
                return Err(broken_error(job, b));
            }
            Err(Error::not_found(format!(
                "job {job} has no backup {id}; `drkit list {job}` shows the backups"
            )))
        }
        Selector::Newest => match listing.newest_good() {
            Some(entry) => {
                let t = entry.manifest.started_at;
                Ok(Choice {
                    entry,
                    why: format!("chose the newest good backup {}", entry.manifest.id),
                    skipped_suspect: skipped(&|e| e.manifest.started_at >= t),
                    warning: newer_broken(listing, &entry.manifest.id),
                })
            }
            None if listing.backups.is_empty() => Err(only_broken(job, listing)
                .unwrap_or_else(|| Error::not_found(format!("job {job} has no backup yet")))),
            None => Err(Error::not_found(format!(
                "job {job} has no good backup: every backup is suspect ({}); inspect them with `drkit list {job}`, then `drkit accept {job} ID` or restore one with --id",
                skipped(&|_| true).join(", ")
            ))),
        },
        Selector::At(at) => {
            // `list` prints times to the second: a backup started at 02:00:05.300 is chosen
            // by `--at 02:00:05`.
            let fits = |e: &Entry| e.manifest.started_at.trunc_subsecs(0) <= *at;
            match listing.backups.iter().find(|e| e.is_good() && fits(e)) {
                Some(entry) => {
                    let t = entry.manifest.started_at;
                    Ok(Choice {
                        entry,
                        why: format!(
                            "chose backup {} (started {}), the newest good backup started at or before {}",
                            entry.manifest.id,
                            format_time(&t),
                            format_time(at)
                        ),
                        skipped_suspect: skipped(&|e| fits(e) && e.manifest.started_at >= t),
                        warning: newer_broken(listing, &entry.manifest.id),
                    })
                }
                None => match listing.backups.iter().rfind(|e| e.is_good()) {
                    Some(oldest) => Err(Error::not_found(format!(
                        "no good backup of job {job} started at or before {}: the oldest good one is {} (started {})",
                        format_time(at),
                        oldest.manifest.id,
                        format_time(&oldest.manifest.started_at)
                    ))),
                    None if listing.backups.is_empty() => Err(only_broken(job, listing)
                        .unwrap_or_else(|| Error::not_found(format!("job {job} has no backup yet")))),
                    None => Err(Error::not_found(format!(
                        "job {job} has no good backup: every backup is suspect"
                    ))),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn meta(key: &str, age_min: i64, now: DateTime<Utc>) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 1,
            modified: Some(now - chrono::Duration::minutes(age_min)),
            etag: None,
        }
    }

    #[test]
    fn ids_sort_by_time_and_parse() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let t = parse_time("2026-01-02 03:04:05").unwrap();
        let id = new_backup_id(t, &mut rng);
        assert!(id.starts_with("20260102T030405Z-"), "{id}");
        assert!(is_backup_id(&id));
        assert!(!is_backup_id("20260102T030405Z"));
        assert!(!is_backup_id("drills"));
    }

    #[test]
    fn parse_time_table() {
        let cases = [
            ("2026-03-01T02:00:00Z", "2026-03-01T02:00:00Z"),
            ("2026-03-01T04:00:00+02:00", "2026-03-01T02:00:00Z"),
            ("2026-03-01 02:00", "2026-03-01T02:00:00Z"),
            ("2026-03-01 02:00:30", "2026-03-01T02:00:30Z"),
            ("2026-03-01T02:00", "2026-03-01T02:00:00Z"),
            ("2026-03-01", "2026-03-01T00:00:00Z"),
        ];
        for (input, want) in cases {
            assert_eq!(format_time(&parse_time(input).unwrap()), want, "{input}");
        }
        for bad in ["yesterday", "2026-13-01", ""] {
            assert_eq!(
                parse_time(bad).unwrap_err().kind(),
                ErrorKind::Config,
                "{bad}"
            );
        }
    }

    #[test]
    fn incomplete_and_complete() {
        let now = Utc::now();
        let a = "20260101T000000Z-aaaaaa";
        let b = "20260102T000000Z-bbbbbb";
        let objects = vec![
            meta(&format!("db/{a}/data.sqlite.zst"), 100, now),
            meta(&format!("db/{a}/manifest.json"), 100, now),
            meta(&format!("db/{b}/data.sqlite.zst.drkit-tmp-1-x"), 100, now),
            meta("db/20260103T000000Z-cccccc/data.sqlite.zst", 1, now),
            meta("db/drills/20260101T000000Z.json", 100, now),
            meta("other/20260101T000000Z-aaaaaa/manifest.json", 100, now),
        ];
        assert_eq!(complete_ids(&objects, "db"), vec![a.to_string()]);
        assert_eq!(
            incomplete_keys(&objects, "db", None),
            vec![
                format!("db/{b}/data.sqlite.zst.drkit-tmp-1-x"),
                "db/20260103T000000Z-cccccc/data.sqlite.zst".to_string()
            ]
        );
        assert_eq!(
            incomplete_keys(&objects, "db", Some(now - chrono::Duration::minutes(10))),
            vec![format!("db/{b}/data.sqlite.zst.drkit-tmp-1-x")]
        );
        assert_eq!(
            jobs_in(&objects),
            vec!["db".to_string(), "other".to_string()]
        );
    }

    fn manifest_at(id: &str, t: &str) -> Manifest {
        let mut m: Manifest = serde_json::from_value(serde_json::json!({
            "format_version": 1, "id": id, "job": "db", "driver": "sqlite",
            "started_at": t, "finished_at": t,
            "data": {"key": format!("db/{id}/data.sqlite.zst"), "compression": "zstd", "encryption": "none", "raw_size": 1,
                     "raw_sha256": "a", "stored_size": 1, "stored_sha256": "b"},
            "drkit_version": "0", "host": "h"
        }))
        .unwrap();
        m.id = id.into();
        m
    }

    fn entry(id: &str, t: &str, state: State) -> Entry {
        let mut m = manifest_at(id, t);
        if state != State::Good {
            m.suspect = Some(crate::manifest::Suspect {
                reasons: vec!["tiny".into()],
            });
        }
        let accepted = (state == State::Accepted).then(|| Acceptance {
            job: "db".into(),
            backup_id: id.into(),
            accepted_at: m.started_at,
            by: "me".into(),
            host: "h".into(),
            reason: "purge".into(),
        });
        Entry {
            manifest: m,
            accepted,
            accept_problem: None,
        }
    }

    #[test]
    fn choose_table() {
        use State::*;
        let listing = Listing {
            backups: vec![
                entry("b5", "2026-01-05T00:00:00.400Z", Suspect),
                entry("b4", "2026-01-04T00:00:00Z", Suspect),
                entry("b3", "2026-01-03T00:00:07.250Z", Good),
                entry("b2", "2026-01-02T00:00:00Z", Accepted),
                entry("b1", "2026-01-01T00:00:00Z", Good),
            ],
            broken: vec![Broken {
                id: "b0".into(),
                key: "db/b0/manifest.json".into(),
                reason: "not valid JSON".into(),
                unreadable: false,
                newer_format: false,
            }],
        };
        let at = |s: &str| Selector::At(parse_time(s).unwrap());
        // (selector, chosen, skipped suspect, warns)
        let cases: Vec<(Selector, &str, Vec<&str>, bool)> = vec![
            (Selector::Newest, "b3", vec!["b5", "b4"], false),
            (at("2026-02-01"), "b3", vec!["b5", "b4"], false),
            (at("2026-01-04T12:00:00Z"), "b3", vec!["b4"], false),
            // the time `list` prints (seconds) chooses the backup it printed
            (at("2026-01-03T00:00:07Z"), "b3", vec![], false),
            (at("2026-01-03T00:00:06Z"), "b2", vec![], false),
            (at("2026-01-02"), "b2", vec![], false),
            (at("2026-01-01"), "b1", vec![], false),
            (Selector::Id("b4".into()), "b4", vec![], true),
            (Selector::Id("b1".into()), "b1", vec![], false),
        ];
        for (sel, want, skipped, warns) in cases {
            let c = choose(&listing, "db", &sel).unwrap();
            assert_eq!(c.entry.manifest.id, want, "{sel:?}");
            assert_eq!(c.skipped_suspect, skipped, "{sel:?}");
            assert_eq!(c.warning.is_some(), warns, "{sel:?}");
        }
        let errs: Vec<(Selector, ErrorKind, &str)> = vec![
            (
                at("2025-12-31"),
                ErrorKind::NotFound,
                "the oldest good one is b1",
            ),
            (
                Selector::Id("b7".into()),
                ErrorKind::NotFound,
                "no backup b7",
            ),
            (
                Selector::Id("b0".into()),
                ErrorKind::Integrity,
                "not valid JSON",
            ),
        ];
        for (sel, kind, want) in errs {
            let e = choose(&listing, "db", &sel).unwrap_err();
            assert_eq!(e.kind(), kind, "{sel:?}");
            assert!(e.to_string().contains(want), "{e}");
        }
        let only_suspect = Listing {
            backups: vec![entry("b4", "2026-01-04T00:00:00Z", Suspect)],
            broken: vec![],
        };
        let e = choose(&only_suspect, "db", &Selector::Newest).unwrap_err();
        assert!(
            e.to_string().contains("every backup is suspect (b4)"),
            "{e}"
        );
        let e = choose(&Listing::default(), "db", &Selector::Newest).unwrap_err();
        assert!(e.to_string().contains("no backup yet"), "{e}");
        // broken entries: news when nothing else is there, a warning when newer than the choice
        let only_broken = Listing {
            backups: vec![],
            broken: listing.broken.clone(),
        };
        let e = choose(&only_broken, "db", &Selector::Newest).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity);
        assert!(e.to_string().contains("backup b0 not valid JSON"), "{e}");
        let mut newer = listing.clone();
        newer.broken[0].id = "b9".into();
        let c = choose(&newer, "db", &Selector::Newest).unwrap();
        assert!(c.warning.unwrap().contains("newer broken entry b9"));
    }

    /// The cache through a whole scan: what a cache file holds never changes the listing, and
    /// the file is replaced or removed. (hit, changed version, corrupt file, oversized file,
    /// a cached manifest that fails the checks, a key not in the listing.)
    #[tokio::test]
    async fn scans_through_the_cache_table() {
        use crate::testing::MemStore;
        let tmp = tempfile::tempdir().unwrap();
        let cache = ManifestCache::new(&cache::CacheSetting {
            dir: tmp.path().to_path_buf(),
            max_size: 1 << 20,
        });
        let store = MemStore::new();
        let t0 = parse_time("2026-01-01T00:00:00Z").unwrap();
        let ids: Vec<String> = (0..4)
            .map(|i| format!("2026010{}T000000Z-aaaaaa", i + 1))
            .collect();
        for id in &ids {
            store.insert_at(
                &manifest_key("db", id),
                manifest_at(id, &format_time(&t0)).to_json(),
                t0,
            );
        }
        let blind = Trust::blind();
        let scan = || scan_with(&store, "db", &blind, Some(&cache));
        let summary = |l: &Listing| -> Vec<String> {
            let mut v: Vec<String> = l
                .backups
                .iter()
                .map(|e| format!("{} {}", e.manifest.id, e.manifest.host))
                .collect();
            v.extend(l.broken.iter().map(|b| format!("{} broken", b.id)));
            v
        };
        let truth = summary(&scan().await.unwrap());
        assert_eq!(truth.len(), 4);
        let path_of = |id: &str| {
            let files: Vec<_> = walk(tmp.path());
            files
                .into_iter()
                .find(|p| {
                    std::fs::read(p)
                        .map(|b| {
                            String::from_utf8_lossy(&b[..b.len().min(400)])
                                .contains(&manifest_key("db", id))
                        })
                        .unwrap_or(false)
                })
                .unwrap()
        };
        let storage_id = store.describe();
        let listed = |id: &str, t| ObjectMeta {
            key: manifest_key("db", id),
            size: manifest_at(id, &format_time(&t0)).to_json().len() as u64,
            modified: Some(t),
            etag: None,
        };
        let forged = |id: &str, m: &Manifest, t| {
            cache::encode(&storage_id, &listed(id, t), &m.to_json()).unwrap()
        };
        // the edits, each on its own backup's file; the listing must not change
        let mut other = manifest_at(&ids[2], &format_time(&t0));
        other.id = ids[3].clone(); // describes another backup: fails check_manifest
        let mut host = manifest_at(&ids[1], &format_time(&t0));
        host.host = "X".into(); // same length, passes the checks: but of an older version
        let cases: Vec<(&str, usize, Vec<u8>)> = vec![
            ("corrupt file", 0, b"junk".to_vec()),
            (
                "changed version",
                1,
                forged(&ids[1], &host, t0 - chrono::Duration::seconds(1)),
            ),
            ("fails the checks", 2, forged(&ids[2], &other, t0)),
            (
                "oversized",
                3,
                vec![b'{'; cache::MAX_FILE_SIZE as usize + 1],
            ),
        ];
        let paths: Vec<_> = ids.iter().map(|id| path_of(id)).collect();
        for (what, i, bytes) in &cases {
            std::fs::write(&paths[*i], bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        let stray = paths[0].with_file_name("stray.rec");
        std::fs::write(
            &stray,
            forged(&ids[0], &manifest_at(&ids[0], "2026-01-01T00:00:00Z"), t0),
        )
        .unwrap();
        assert_eq!(
            summary(&scan().await.unwrap()),
            truth,
            "the cache changed the listing"
        );
        assert!(!stray.exists(), "a file of no listed key is removed");
        // every file is good again: a hit for each
        for id in &ids {
            let got = cache.get(&storage_id, "db", &listed(id, t0)).await;
            assert_eq!(
                got.unwrap(),
                manifest_at(id, &format_time(&t0)).to_json(),
                "{id}"
            );
        }
        // a backup gone from the storage loses its entry
        store
            .delete_object(&manifest_key("db", &ids[0]))
            .await
            .unwrap();
        assert_eq!(scan().await.unwrap().backups.len(), 3);
        assert_eq!(
            cache.get(&storage_id, "db", &listed(&ids[0], t0)).await,
            Err(cache::Miss::Absent)
        );
        // the backup's own look: the newest good one, same through the cache or not
        let newest = newest_good_with(&store, "db", &Trust::blind(), t0, Some(&cache))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(newest.manifest.id, ids[3]);
        assert!(
            newest_good_with(&MemStore::new(), "db", &Trust::blind(), t0, None)
                .await
                .unwrap()
                .is_none()
        );
    }

    fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    #[test]
    fn recent_prefixes_table() {
        let t = |s: &str| parse_time(s).unwrap();
        assert_eq!(
            recent_prefixes("db", t("2026-03-15T10:00:00Z")),
            ["db/20260315", "db/202603", "db/202602", "db/2026", "db/"]
        );
        assert_eq!(
            recent_prefixes("db", t("2026-01-02T00:00:00Z"))[2],
            "db/202512"
        );
    }

    #[test]
    fn manifests_must_match_their_folder() {
        let id = "20260101T000000Z-aaaaaa";
        let good = manifest_at(id, "2026-01-01T00:00:00Z");
        assert!(check_manifest(&good.to_json(), "k", "db", id).is_ok());
        let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
        let mut m = good.clone();
        m.id = "20260102T000000Z-bbbbbb".into();
        cases.push((m.to_json(), "describes backup db/20260102T000000Z-bbbbbb"));
        let mut m = good.clone();
        m.job = "other".into();
        cases.push((m.to_json(), "describes backup other/"));
        for key in [
            "db/20260101T000000Z-aaaaaa/../x".to_string(),
            "db/20260102T000000Z-bbbbbb/data.sqlite.zst".to_string(),
            "/etc/passwd".to_string(),
            format!("db/{id}/manifest.json"),
            format!("db/{id}/"),
            format!("db/{id}/sub/data"),
        ] {
            let mut m = good.clone();
            m.data.key = key;
            cases.push((m.to_json(), "is not a file of folder"));
        }
        cases.push((b"{not json".to_vec(), "not valid JSON"));
        cases.push((Vec::new(), "not valid JSON"));
        for (bytes, want) in cases {
            let e = check_manifest(&bytes, "k", "db", id).unwrap_err();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }
}
