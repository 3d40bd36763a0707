//! Test doubles for fast tests of the pipeline rules, behind the `test-util` feature:
//!
//! - [`MemStore`]: an in-memory [`Storage`] that keeps the storage contract (nothing visible
//!   before commit, nothing left by an abort or a drop, job locks, optional object locks) and
//!   injects faults: fail a create, write, commit, put, get, head, list, delete or job lock of
//!   a key matching a pattern, fail after N bytes, or lose the answer of a write that landed.
//! - [`FakeSource`]: a [`Source`] that streams given bytes, can fail in the middle, at the
//!   start or at finish, returns given stats, and can pause at an offset so a test can look
//!   at the storages while the dump is under way.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use drkit_core::testing::{MemStore, Op};
//! use drkit_core::Storage;
//! let store = MemStore::new();
//! store.fail_once(Op::Put, "*/manifest.json");
//! assert!(store.put("db/1/manifest.json", b"{}".to_vec()).await.is_err());
//! store.put("db/1/manifest.json", b"{}".to_vec()).await.unwrap();
//! assert_eq!(store.keys(), vec!["db/1/manifest.json".to_string()]);
//! # });
//! ```

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use crate::{
    BoxRead, Dump, DumpSummary, Error, ErrorKind, JobLock, Manifest, ObjectMeta, RestoreOptions,
    RestoreReport, Result, Source, Storage, Unfinished, Upload,
};

/// An operation of a [`MemStore`] that a fault can hit. A fault's pattern is matched against
/// the operation's key (the prefix for [`Op::List`], the job for [`Op::LockJob`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// [`Storage::create`].
    Create,
    /// Bytes written into an upload.
    Write,
    /// [`Upload::commit`].
    Commit,
    /// [`Storage::put`].
    Put,
    /// [`Storage::get`] and [`Storage::get_range`], and reading their stream.
    Get,
    /// [`Storage::head`] and [`Storage::locked_until`].
    Head,
    /// [`Storage::list`] and [`Storage::unfinished`].
    List,
    /// [`Storage::delete_object`] and [`Storage::delete_objects`].
    Delete,
    /// [`Storage::lock_job`].
    LockJob,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Fail,
    FailAfter(u64),
    LoseAnswer,
}

#[derive(Debug, Clone)]
struct Fault {
    op: Op,
    pattern: String,
    effect: Effect,
    /// How many more times it fires (`None`: always).
    left: Option<usize>,
}

#[derive(Debug, Clone)]
struct Object {
    data: Vec<u8>,
    modified: DateTime<Utc>,
    retain_until: Option<DateTime<Utc>>,
    hold: bool,
}

#[derive(Debug, Clone)]
struct Pending {
    key: String,
    started: DateTime<Utc>,
}

#[derive(Debug)]
struct State {
    describe: String,
    objects: BTreeMap<String, Object>,
    uploads: BTreeMap<u64, Pending>,
    next_upload: u64,
    faults: Vec<Fault>,
    locked_jobs: HashSet<String>,
    job_locks: bool,
    retention_days: Option<u32>,
    object_locks: bool,
    leftover_age: std::time::Duration,
    committed: Vec<String>,
}

/// An in-memory [`Storage`] with fault injection. Clones share the same objects.
///
/// By default it holds real job locks (like the local folder) and no object locks; its
/// unfinished writes (uploads neither committed, aborted nor dropped, as after
/// `std::mem::forget`) are kept apart from the objects and listed by
/// [`Storage::unfinished`] (like S3's multipart uploads).
#[derive(Debug, Clone)]
pub struct MemStore {
    state: Arc<Mutex<State>>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `text` matches the glob `pattern`, whole: `*` is any run of characters (`/`
/// included), `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn io_fault(message: String) -> std::io::Error {
    std::io::Error::other(Error::storage(message))
}

impl MemStore {
    /// An empty store described as `memory`.
    pub fn new() -> Self {
        MemStore {
            state: Arc::new(Mutex::new(State {
                describe: "memory".into(),
                objects: BTreeMap::new(),
                uploads: BTreeMap::new(),
                next_upload: 1,
                faults: Vec::new(),
                locked_jobs: HashSet::new(),
                job_locks: true,
                retention_days: None,
                object_locks: false,
                leftover_age: std::time::Duration::from_secs(24 * 3600),
                committed: Vec::new(),
            })),
        }
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("MemStore state")
    }

    /// The same store, described as `name` (in errors and [`Storage::describe`]).
    pub fn named(self, name: &str) -> Self {
        self.st().describe = name.to_string();
        self
    }

    /// The same store, unable to lock jobs (like S3): [`Storage::lock_job`] holds nothing.
    pub fn without_job_locks(self) -> Self {
        self.st().job_locks = false;
        self
    }

    /// The same store, giving every object it writes from now on a retention of `days`
    /// (like S3's `object_lock`).
    pub fn with_object_lock(self, days: u32) -> Self {
        {
            let mut st = self.st();
            st.retention_days = Some(days);
            st.object_locks = true;
        }
        self
    }

    /// The same store, with this [`Storage::leftover_age`] (a day by default).
    pub fn with_leftover_age(self, age: std::time::Duration) -> Self {
        self.st().leftover_age = age;
        self
    }

    fn add_fault(&self, op: Op, pattern: &str, effect: Effect, left: Option<usize>) {
        self.st().faults.push(Fault {
            op,
            pattern: pattern.to_string(),
            effect,
            left,
        });
    }

    /// Every `op` on a key matching `pattern` fails with a storage error.
    pub fn fail(&self, op: Op, pattern: &str) {
        self.add_fault(op, pattern, Effect::Fail, None);
    }

    /// The next `op` on a key matching `pattern` fails with a storage error.
    pub fn fail_once(&self, op: Op, pattern: &str) {
        self.add_fault(op, pattern, Effect::Fail, Some(1));
    }

    /// Uploads ([`Op::Write`]) or reads ([`Op::Get`]) of a key matching `pattern` fail once
    /// `bytes` bytes have gone through. Other operations fail at once.
    pub fn fail_after(&self, op: Op, pattern: &str, bytes: u64) {
        self.add_fault(op, pattern, Effect::FailAfter(bytes), None);
    }

    /// The next [`Op::Put`], [`Op::Commit`] or [`Op::Delete`] of a key matching `pattern`
    /// is carried out, then reports an error: the answer of a write that landed was lost.
    pub fn lose_answer(&self, op: Op, pattern: &str) {
        self.add_fault(op, pattern, Effect::LoseAnswer, Some(1));
    }

    /// Remove every fault.
    pub fn clear_faults(&self) {
        self.st().faults.clear();
    }

    /// Every object's key, in key order.
    pub fn keys(&self) -> Vec<String> {
        self.st().objects.keys().cloned().collect()
    }

    /// The bytes of one object.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        self.st().objects.get(key).map(|o| o.data.clone())
    }

    /// Store an object directly (no fault applies), modified now.
    pub fn insert(&self, key: &str, data: impl Into<Vec<u8>>) {
        self.insert_at(key, data, Utc::now());
    }

    /// Store an object directly (no fault applies), modified at `modified`.
    pub fn insert_at(&self, key: &str, data: impl Into<Vec<u8>>, modified: DateTime<Utc>) {
        let mut st = self.st();
        let retain_until = st.retention(modified);
        st.objects.insert(
            key.to_string(),
            Object {
                data: data.into(),
                modified,
                retain_until,
                hold: false,
            },
        );
    }

    /// The keys in the order they became visible (committed uploads and puts, lost answers
    /// included; direct inserts not).
    pub fn committed(&self) -> Vec<String> {
        self.st().committed.clone()
    }

    /// The keys of the uploads still open: neither committed, aborted, dropped nor discarded.
    pub fn pending(&self) -> Vec<String> {
        self.st().uploads.values().map(|p| p.key.clone()).collect()
    }

    /// Set (or, with `None`, remove) the retention date of an object; from then on the store
    /// holds object locks.
    pub fn set_retention(&self, key: &str, until: Option<DateTime<Utc>>) {
        let mut st = self.st();
        st.object_locks = true;
        if let Some(o) = st.objects.get_mut(key) {
            o.retain_until = until;
        }
    }

    /// Put (or lift) a legal hold on an object; from then on the store holds object locks.
    pub fn set_legal_hold(&self, key: &str, on: bool) {
        let mut st = self.st();
        st.object_locks = true;
        if let Some(o) = st.objects.get_mut(key) {
            o.hold = on;
        }
    }
}

impl State {
    /// The fault `op` on `key` triggers now, if any (counting it).
    fn fault(&mut self, op: Op, key: &str) -> Option<Effect> {
        let f = self
            .faults
            .iter_mut()
            .find(|f| f.op == op && f.left != Some(0) && glob_match(&f.pattern, key))?;
        if let Some(left) = &mut f.left {
            *left -= 1;
        }
        Some(f.effect)
    }

    fn check(&mut self, op: Op, key: &str) -> Result<()> {
        match self.fault(op, key) {
            Some(_) => Err(Error::storage(format!(
                "{}: injected fault: {op:?} {key}",
                self.describe
            ))),
            None => Ok(()),
        }
    }

    fn retention(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.retention_days
            .map(|d| now + chrono::Duration::days(i64::from(d)))
    }

    fn store(&mut self, key: &str, data: Vec<u8>) -> ObjectMeta {
        let now = Utc::now();
        let size = data.len() as u64;
        let retain_until = self.retention(now);
        self.objects.insert(
            key.to_string(),
            Object {
                data,
                modified: now,
                retain_until,
                hold: false,
            },
        );
        self.committed.push(key.to_string());
        ObjectMeta {
            key: key.to_string(),
            size,
            modified: Some(now),
            etag: None,
        }
    }

    fn lost(&self, op: Op, key: &str) -> Error {
        Error::storage(format!(
            "{}: injected fault: the answer to {op:?} {key} was lost (it was carried out)",
            self.describe
        ))
    }

    fn not_found(&self, key: &str) -> Error {
        Error::not_found(format!("{}: {key} does not exist", self.describe))
    }
}

/// An upload into a [`MemStore`]: bytes are buffered, visible on commit.
struct MemUpload {
    state: Arc<Mutex<State>>,
    id: u64,
    key: String,
    buf: Vec<u8>,
    fail_after: Option<u64>,
}

impl AsyncWrite for MemUpload {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut n = buf.len();
        if let Some(limit) = self.fail_after {
            let written = self.buf.len() as u64;
            if written >= limit && !buf.is_empty() {
                let describe = self.state.lock().expect("MemStore state").describe.clone();
                return Poll::Ready(Err(io_fault(format!(
                    "{describe}: injected fault: writing {} failed after {limit} bytes",
                    self.key
                ))));
            }
            n = n.min((limit - written) as usize);
        }
        self.buf.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Upload for MemUpload {
    async fn commit(mut self: Box<Self>) -> Result<ObjectMeta> {
        let data = std::mem::take(&mut self.buf);
        let mut st = self.state.lock().expect("MemStore state");
        if st.uploads.remove(&self.id).is_none() {
            return Err(Error::storage(format!(
                "{}: the upload of {} was discarded",
                st.describe, self.key
            )));
        }
        match st.fault(Op::Commit, &self.key) {
            Some(Effect::LoseAnswer) => {
                st.store(&self.key, data);
                Err(st.lost(Op::Commit, &self.key))
            }
            Some(_) => Err(Error::storage(format!(
                "{}: injected fault: Commit {}",
                st.describe, self.key
            ))),
            None => Ok(st.store(&self.key, data)),
        }
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.state
            .lock()
            .expect("MemStore state")
            .uploads
            .remove(&self.id);
        Ok(())
    }
}

impl Drop for MemUpload {
    fn drop(&mut self) {
        if let Ok(mut st) = self.state.lock() {
            st.uploads.remove(&self.id);
        }
    }
}

/// A stream of bytes that fails after `fail_at` bytes.
struct MemReader {
    data: Vec<u8>,
    pos: usize,
    fail_at: Option<usize>,
    what: String,
}

impl AsyncRead for MemReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let mut end = this.data.len();
        if let Some(f) = this.fail_at {
            if this.pos >= f && buf.remaining() > 0 {
                return Poll::Ready(Err(io_fault(format!(
                    "{}: failed after {f} bytes",
                    this.what
                ))));
            }
            end = end.min(f);
        }
        let n = buf.remaining().min(end - this.pos);
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

struct MemJobLock {
    state: Arc<Mutex<State>>,
    job: String,
}

impl Drop for MemJobLock {
    fn drop(&mut self) {
        if let Ok(mut st) = self.state.lock() {
            st.locked_jobs.remove(&self.job);
        }
    }
}

impl MemStore {
    fn read(&self, key: &str, start: u64, end: Option<u64>) -> Result<BoxRead> {
        let mut st = self.st();
        let fault = st.fault(Op::Get, key);
        let describe = st.describe.clone();
        if matches!(fault, Some(Effect::Fail | Effect::LoseAnswer)) {
            return Err(Error::storage(format!(
                "{describe}: injected fault: Get {key}"
            )));
        }
        let Some(o) = st.objects.get(key) else {
            return Err(st.not_found(key));
        };
        let len = o.data.len() as u64;
        let (from, to) = (
            start.min(len),
            end.unwrap_or(len).min(len).max(start.min(len)),
        );
        let data = o.data[from as usize..to as usize].to_vec();
        let fail_at = match fault {
            Some(Effect::FailAfter(n)) => Some(n as usize),
            _ => None,
        };
        Ok(Box::new(MemReader {
            data,
            pos: 0,
            fail_at,
            what: format!("{describe}: injected fault: reading {key}"),
        }))
    }
}

#[async_trait]
impl Storage for MemStore {
    fn describe(&self) -> String {
        self.st().describe.clone()
    }

    async fn create(&self, key: &str) -> Result<Box<dyn Upload>> {
        let mut st = self.st();
        st.check(Op::Create, key)?;
        let fail_after = match st.fault(Op::Write, key) {
            Some(Effect::FailAfter(n)) => Some(n),
            Some(_) => Some(0),
            None => None,
        };
        let id = st.next_upload;
        st.next_upload += 1;
        st.uploads.insert(
            id,
            Pending {
                key: key.to_string(),
                started: Utc::now(),
            },
        );
        Ok(Box::new(MemUpload {
            state: self.state.clone(),
            id,
            key: key.to_string(),
            buf: Vec::new(),
            fail_after,
        }))
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        let mut st = self.st();
        match st.fault(Op::Put, key) {
            Some(Effect::LoseAnswer) => {
                st.store(key, data);
                Err(st.lost(Op::Put, key))
            }
            Some(_) => Err(Error::storage(format!(
                "{}: injected fault: Put {key}",
                st.describe
            ))),
            None => {
                st.store(key, data);
                Ok(())
            }
        }
    }

    async fn get(&self, key: &str) -> Result<BoxRead> {
        self.read(key, 0, None)
    }

    async fn get_range(&self, key: &str, start: u64, end: Option<u64>) -> Result<BoxRead> {
        self.read(key, start, end)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let mut st = self.st();
        st.check(Op::Head, key)?;
        Ok(st.objects.get(key).map(|o| ObjectMeta {
            key: key.to_string(),
            size: o.data.len() as u64,
            modified: Some(o.modified),
            etag: None,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut st = self.st();
        st.check(Op::List, prefix)?;
        Ok(st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| ObjectMeta {
                key: k.clone(),
                size: o.data.len() as u64,
                modified: Some(o.modified),
                etag: None,
            })
            .collect())
    }

    async fn delete_object(&self, key: &str) -> Result<()> {
        let mut st = self.st();
        match st.fault(Op::Delete, key) {
            Some(Effect::LoseAnswer) => {
                st.objects.remove(key);
                Err(st.lost(Op::Delete, key))
            }
            Some(_) => Err(Error::storage(format!(
                "{}: injected fault: Delete {key}",
                st.describe
            ))),
            None => {
                st.objects.remove(key);
                Ok(())
            }
        }
    }

    async fn unfinished(&self, prefix: &str) -> Result<Vec<Unfinished>> {
        let mut st = self.st();
        st.check(Op::List, prefix)?;
        Ok(st
            .uploads
            .iter()
            .filter(|(_, p)| p.key.starts_with(prefix))
            .map(|(id, p)| Unfinished {
                key: p.key.clone(),
                started: Some(p.started),
                handle: id.to_string(),
            })
            .collect())
    }

    async fn discard(&self, write: &Unfinished) -> Result<()> {
        let id: u64 = write.handle.parse().map_err(|_| {
            Error::storage(format!("{:?} is not an upload of this store", write.handle))
        })?;
        self.st().uploads.remove(&id);
        Ok(())
    }

    async fn lock_job(&self, job: &str) -> Result<JobLock> {
        let mut st = self.st();
        st.check(Op::LockJob, job)?;
        if !st.job_locks {
            return Ok(JobLock::none());
        }
        if !st.locked_jobs.insert(job.to_string()) {
            return Err(Error::refused(format!(
                "another drkit run is writing job {job} in {}; wait for it to finish",
                st.describe
            )));
        }
        Ok(JobLock::new(Box::new(MemJobLock {
            state: self.state.clone(),
            job: job.to_string(),
        })))
    }

    fn holds_object_locks(&self) -> bool {
        self.st().object_locks
    }

    async fn locked_until(&self, key: &str) -> Result<Option<DateTime<Utc>>> {
        let mut st = self.st();
        st.check(Op::Head, key)?;
        Ok(st.objects.get(key).and_then(|o| {
            if o.hold {
                Some(DateTime::<Utc>::MAX_UTC)
            } else {
                o.retain_until.filter(|t| *t > Utc::now())
            }
        }))
    }

    fn leftover_age(&self) -> std::time::Duration {
        self.st().leftover_age
    }
}

/// Holds a [`FakeSource`]'s dump at an offset until [`Pause::resume`].
#[derive(Debug)]
pub struct Pause {
    reached: Mutex<Option<oneshot::Receiver<()>>>,
    resume: Mutex<Option<oneshot::Sender<()>>>,
}

impl Pause {
    /// Wait until the dump has streamed every byte before the offset and stopped there.
    /// Returns at once on a second call.
    pub async fn reached(&self) {
        let rx = self.reached.lock().expect("pause").take();
        if let Some(rx) = rx {
            let _ = rx.await;
        }
    }

    /// Let the dump go on.
    pub fn resume(&self) {
        if let Some(tx) = self.resume.lock().expect("pause").take() {
            let _ = tx.send(());
        }
    }
}

/// The source's end of a [`Pause`].
struct PausePoint {
    at: u64,
    reached: Option<oneshot::Sender<()>>,
    resume: oneshot::Receiver<()>,
}

/// `len` bytes that zstd cannot shrink much (a xorshift stream from `seed`), so archive sizes
/// stay near the raw size.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A [`Source`] that streams given bytes. Its restore keeps the bytes it read (see
/// [`FakeSource::restored`]).
pub struct FakeSource {
    data: Arc<Vec<u8>>,
    chunk: usize,
    fail_after: Option<u64>,
    fail_start: Option<String>,
    fail_finish: Option<String>,
    summary: DumpSummary,
    driver: &'static str,
    extension: &'static str,
    pause: Mutex<Option<PausePoint>>,
    dumps: AtomicUsize,
    restored: Mutex<Option<Vec<u8>>>,
    one_pass: bool,
    restore_delay: Option<std::time::Duration>,
    cleanups: AtomicUsize,
}

impl std::fmt::Debug for FakeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSource")
            .field("bytes", &self.data.len())
            .field("driver", &self.driver)
            .finish()
    }
}

impl FakeSource {
    /// A source whose dump is `data`, with driver `fake` and extension `bin`.
    pub fn new(data: impl Into<Vec<u8>>) -> Self {
        FakeSource {
            data: Arc::new(data.into()),
            chunk: 64 * 1024,
            fail_after: None,
            fail_start: None,
            fail_finish: None,
            summary: DumpSummary::default(),
            driver: "fake",
            extension: "bin",
            pause: Mutex::new(None),
            dumps: AtomicUsize::new(0),
            restored: Mutex::new(None),
            one_pass: false,
            restore_delay: None,
            cleanups: AtomicUsize::new(0),
        }
    }

    /// Say the restore may be fed in one pass ([`Source::restores_in_one_pass`]): it keeps
    /// the bytes only when the stream ends without error, which is what one pass needs.
    pub fn one_pass(mut self) -> Self {
        self.one_pass = true;
        self
    }

    /// Make every restore wait `delay` after its first read (a slow restore, or one to
    /// interrupt).
    pub fn restore_delay(mut self, delay: std::time::Duration) -> Self {
        self.restore_delay = Some(delay);
        self
    }

    /// How many drill scratch places were removed.
    pub fn cleanups(&self) -> usize {
        self.cleanups.load(Ordering::SeqCst)
    }

    /// Hand out the dump in reads of at most `bytes` bytes (64 KiB by default).
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk = bytes.max(1);
        self
    }

    /// Make the dump's stream fail (an I/O error) after `bytes` bytes.
    pub fn fail_after(mut self, bytes: u64) -> Self {
        self.fail_after = Some(bytes);
        self
    }

    /// Make [`Source::dump`] itself fail with a source error.
    pub fn fail_to_start(mut self, message: &str) -> Self {
        self.fail_start = Some(message.to_string());
        self
    }

    /// Stream every byte, then fail in `finish` with a source error (as a dump program that
    /// exited non-zero).
    pub fn fail_at_finish(mut self, message: &str) -> Self {
        self.fail_finish = Some(message.to_string());
        self
    }

    /// The manifest's `stats` the dump reports.
    pub fn stats(mut self, stats: serde_json::Value) -> Self {
        self.summary.stats = stats;
        self
    }

    /// The manifest's `source` the dump reports.
    pub fn source_info(mut self, source: serde_json::Value) -> Self {
        self.summary.source = source;
        self
    }

    /// The warnings the dump reports.
    pub fn warnings(mut self, warnings: Vec<String>) -> Self {
        self.summary.warnings = warnings;
        self
    }

    /// The driver name and file extension (`fake`, `bin` by default).
    pub fn driver(mut self, driver: &'static str, extension: &'static str) -> Self {
        self.driver = driver;
        self.extension = extension;
        self
    }

    /// Stop the next dump after `offset` bytes until the returned [`Pause`] is resumed.
    pub fn pause_at(self, offset: u64) -> (Self, Pause) {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (resume_tx, resume_rx) = oneshot::channel();
        *self.pause.lock().expect("pause") = Some(PausePoint {
            at: offset,
            reached: Some(reached_tx),
            resume: resume_rx,
        });
        let pause = Pause {
            reached: Mutex::new(Some(reached_rx)),
            resume: Mutex::new(Some(resume_tx)),
        };
        (self, pause)
    }

    /// How many dumps were started.
    pub fn dumps(&self) -> usize {
        self.dumps.load(Ordering::SeqCst)
    }

    /// The bytes the last restore read.
    pub fn restored(&self) -> Option<Vec<u8>> {
        self.restored.lock().expect("restored").clone()
    }
}

struct FakeReader {
    data: Arc<Vec<u8>>,
    pos: usize,
    chunk: usize,
    fail_after: Option<u64>,
    pause: Option<PausePoint>,
}

impl AsyncRead for FakeReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let mut resumed = false;
        if let Some(p) = this.pause.as_mut() {
            if this.pos as u64 >= p.at {
                if let Some(tx) = p.reached.take() {
                    let _ = tx.send(());
                }
                match Pin::new(&mut p.resume).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(_) => resumed = true,
                }
            }
        }
        if resumed {
            this.pause = None;
        }
        let mut n = buf
            .remaining()
            .min(this.chunk)
            .min(this.data.len() - this.pos);
        if let Some(f) = this.fail_after {
            if this.pos as u64 >= f && buf.remaining() > 0 {
                return Poll::Ready(Err(std::io::Error::other(
                    "the fake source failed on purpose",
                )));
            }
            n = n.min((f - this.pos as u64) as usize);
        }
        if let Some(p) = &this.pause {
            n = n.min((p.at - this.pos as u64) as usize);
        }
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Source for FakeSource {
    fn driver(&self) -> &'static str {
        self.driver
    }

    fn extension(&self) -> &'static str {
        self.extension
    }

    fn describe(&self) -> String {
        format!("{} fake bytes", self.data.len())
    }

    async fn dump(&self) -> Result<Dump> {
        self.dumps.fetch_add(1, Ordering::SeqCst);
        if let Some(m) = &self.fail_start {
            return Err(Error::source_error(m.clone()));
        }
        let reader = FakeReader {
            data: self.data.clone(),
            pos: 0,
            chunk: self.chunk,
            fail_after: self.fail_after,
            pause: self.pause.lock().expect("pause").take(),
        };
        let finish = match &self.fail_finish {
            Some(m) => Err(Error::source_error(m.clone())),
            None => Ok(self.summary.clone()),
        };
        Ok(Dump {
            reader: Box::new(reader),
            finish: Box::pin(async move { finish }),
        })
    }

    async fn plan_restore(
        &self,
        _manifest: &Manifest,
        _opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        Ok(RestoreReport {
            destination: "memory".into(),
            ..Default::default()
        })
    }

    async fn restore(
        &self,
        mut data: BoxRead,
        _manifest: &Manifest,
        _opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let mut got = Vec::new();
        if let Some(delay) = self.restore_delay {
            let mut first = [0u8; 1];
            let n = data
                .read(&mut first)
                .await
                .map_err(|e| crate::from_io(e, ErrorKind::Storage, "reading the restore stream"))?;
            got.extend_from_slice(&first[..n]);
            tokio::time::sleep(delay).await;
        }
        data.read_to_end(&mut got)
            .await
            .map_err(|e| crate::from_io(e, ErrorKind::Storage, "reading the restore stream"))?;
        *self.restored.lock().expect("restored") = Some(got);
        Ok(RestoreReport {
            destination: "memory".into(),
            ..Default::default()
        })
    }

    fn restores_in_one_pass(&self) -> bool {
        self.one_pass
    }

    /// Drills restore into memory.
    async fn drill_scratch(
        &self,
        _manifest: &Manifest,
        _place: &crate::drill::Place,
        name: &crate::drill::ScratchName,
    ) -> Result<Option<crate::drill::Scratch>> {
        Ok(Some(crate::drill::Scratch {
            to: "memory".into(),
            shown: name.render('-', 100),
            ..Default::default()
        }))
    }

    async fn drill_cleanup(&self, _scratch: &crate::drill::Scratch) -> Result<()> {
        self.cleanups.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// One query: `sql = "restored bytes"`, the size of the last restore.
    async fn drill_check(
        &self,
        _scratch: &crate::drill::Scratch,
        query: &crate::drill::Query,
    ) -> Result<serde_json::Value> {
        match query {
            crate::drill::Query::Sql(q) if q == "restored bytes" => Ok(self
                .restored()
                .map(|r| serde_json::json!(r.len()))
                .unwrap_or(serde_json::Value::Null)),
            _ => Err(Error::config(format!("the fake driver cannot run {query}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("*", "a/b", true),
            ("*/manifest.json", "db/1/manifest.json", true),
            ("*/manifest.json", "db/1/manifest.json.sig", false),
            ("db/*", "db/", true),
            ("db/?", "db/ab", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("exact", "exact", true),
            ("", "", true),
            ("", "x", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} ~ {t}");
        }
    }
}
