//! Streaming upload: bytes fill a part buffer; a full part goes to a background task that
//! uploads up to `upload_concurrency` parts at once. Every part buffer holds a permit of a
//! semaphore with `upload_concurrency` permits, released when its upload ends, so at most
//! `part_size x upload_concurrency` bytes are held, whatever the archive's size.
//!
//! An archive that fits in one part is sent with a single PUT at commit. Otherwise the task
//! creates the multipart upload on the first full part, and completes it only when the
//! writer commits. When a part fails (after the SDK's retries), when the writer aborts, or
//! when the writer is dropped, the task aborts the multipart upload: no object appears.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use drkit_core::{Error, ErrorKind, ObjectMeta, Result, Upload};
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::{PollSemaphore, PollSender};

use super::errors::{sdk_error, to_error, Failure as SdkFailure};
use super::settings::MAX_PARTS;
use super::{Inner, Sse};

enum Msg {
    Part(Bytes, OwnedSemaphorePermit),
    Finish,
}

/// The first failure of an upload, kept so that the writer can report it. `Error` is not
/// `Clone`: its kind, text and retry flag are kept instead.
#[derive(Default)]
struct FirstFailure(Mutex<Option<(ErrorKind, String, bool)>>);

impl FirstFailure {
    fn set(&self, e: &Error) {
        let mut slot = self.0.lock().expect("failure slot");
        if slot.is_none() {
            *slot = Some((e.kind(), e.to_string(), e.is_retryable()));
        }
    }
    fn get(&self) -> Option<Error> {
        self.0
            .lock()
            .expect("failure slot")
            .as_ref()
            .map(|(kind, text, retry)| {
                let e = Error::new(*kind, text.clone());
                if *retry {
                    e.retryable()
                } else {
                    e
                }
            })
    }
}

/// An object being written to S3.
pub struct S3Upload {
    inner: Arc<Inner>,
    key: String,
    full: String,
    part_size: usize,
    permits: Arc<Semaphore>,
    poll_permits: PollSemaphore,
    /// The part being filled, with its memory permit.
    buf: Option<(BytesMut, OwnedSemaphorePermit)>,
    sender: Option<mpsc::Sender<Msg>>,
    poll_sender: Option<PollSender<Msg>>,
    task: Option<JoinHandle<Result<ObjectMeta>>>,
    failure: Arc<FirstFailure>,
    /// Full parts handed to the task.
    parts_sent: u64,
    written: u64,
    finished: bool,
    /// When the upload started: the retention date counts from here.
    created: DateTime<Utc>,
}

impl S3Upload {
    pub(crate) fn new(inner: Arc<Inner>, key: String, full: String) -> Self {
        let part_size = usize::try_from(inner.settings.part_size).unwrap_or(usize::MAX);
        let permits = Arc::new(Semaphore::new(inner.settings.upload_concurrency));
        S3Upload {
            poll_permits: PollSemaphore::new(permits.clone()),
            permits,
            inner,
            key,
            full,
            part_size,
            buf: None,
            sender: None,
            poll_sender: None,
            task: None,
            failure: Arc::new(FirstFailure::default()),
            parts_sent: 0,
            written: 0,
            finished: false,
            created: Utc::now(),
        }
    }

    fn failed(&self, fallback: &str) -> io::Error {
        let e = self.failure.get().unwrap_or_else(|| {
            Error::storage(format!(
                "{}: writing {}: {fallback}",
                self.inner.place, self.key
            ))
        });
        io::Error::other(e)
    }

    /// Hand the full part buffer to the upload task (starting it on the first part).
    fn poll_send_full(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parts_sent + 1 >= MAX_PARTS {
            return Poll::Ready(Err(io::Error::other(Error::storage(format!(
                "{}: writing {}: the archive is larger than {} parts of {} bytes: raise part_size",
                self.inner.place, self.key, MAX_PARTS, self.part_size
            )))));
        }
        if self.task.is_none() {
            let (buf, permit) = self.buf.take().expect("a full part");
            let (tx, rx) = mpsc::channel(1);
            let dest = Dest {
                inner: self.inner.clone(),
                key: self.key.clone(),
                full: self.full.clone(),
                created: self.created,
            };
            let task = tokio::spawn(run(
                dest,
                (buf.freeze(), permit),
                rx,
                self.failure.clone(),
                self.permits.clone(),
            ));
            self.task = Some(task);
            self.poll_sender = Some(PollSender::new(tx.clone()));
            self.sender = Some(tx);
            self.parts_sent += 1;
            return Poll::Ready(Ok(()));
        }
        let sender = self.poll_sender.as_mut().expect("started");
        match ready!(sender.poll_reserve(cx)) {
            Ok(()) => {
                let (buf, permit) = self.buf.take().expect("a full part");
                if sender.send_item(Msg::Part(buf.freeze(), permit)).is_err() {
                    return Poll::Ready(Err(self.failed("the upload stopped")));
                }
                self.parts_sent += 1;
                Poll::Ready(Ok(()))
            }
            Err(_) => Poll::Ready(Err(self.failed("the upload stopped"))),
        }
    }
}

impl AsyncWrite for S3Upload {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Err(io::Error::other("upload already finished")));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if let Some(e) = this.failure.get() {
                return Poll::Ready(Err(io::Error::other(e)));
            }
            if let Some((buf, _)) = this.buf.as_mut() {
                if buf.len() < this.part_size {
                    let n = data.len().min(this.part_size - buf.len());
                    buf.extend_from_slice(&data[..n]);
                    this.written += n as u64;
                    return Poll::Ready(Ok(n));
                }
                // The part is full and more bytes come: it is not the last one.
                ready!(this.poll_send_full(cx))?;
                continue;
            }
            // A new part buffer needs a memory permit: wait for a part upload to end.
            match ready!(this.poll_permits.poll_acquire(cx)) {
                Some(permit) => this.buf = Some((BytesMut::with_capacity(this.part_size), permit)),
                None => return Poll::Ready(Err(this.failed("the upload stopped"))),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Parts go out when full; the last one at commit.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn commit(mut self: Box<Self>) -> Result<ObjectMeta> {
        if self.finished {
            return Err(Error::storage(format!(
                "{}: {} was already committed or aborted",
                self.inner.place, self.key
            )));
        }
        self.finished = true;
        if let Some(e) = self.failure.get() {
            return Err(e);
        }
        let last = self.buf.take();
        let Some(task) = self.task.take() else {
            // Smaller than one part: one PUT.
            let (data, _permit) = match last {
                Some((b, p)) => (b.freeze(), Some(p)),
                None => (Bytes::new(), None),
            };
            let sent = self
                .inner
                .put_bytes(&self.key, &self.full, data, self.created)
                .await?;
            return self
                .inner
                .confirm(&self.key, &self.full, sent, self.created)
                .await;
        };
        self.poll_sender = None;
        let sender = self.sender.take().expect("started with the task");
        if let Some((b, permit)) = last.filter(|(b, _)| !b.is_empty()) {
            if sender.send(Msg::Part(b.freeze(), permit)).await.is_err() {
                self.task = Some(task);
                return Err(self.task_error().await);
            }
        }
        // A closed channel here means the task already ended: its result says why.
        let _ = sender.send(Msg::Finish).await;
        drop(sender);
        let meta = match task.await {
            Ok(r) => r?,
            Err(e) => {
                return Err(Error::storage(format!(
                    "{}: writing {}: the upload task failed: {e}",
                    self.inner.place, self.key
                )))
            }
        };
        if meta.size != self.written {
            return Err(Error::integrity(format!(
                "{}: {} holds {} bytes after the upload, {} were written",
                self.inner.place, self.key, meta.size, self.written
            )));
        }
        Ok(meta)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.finished = true;
        self.buf = None;
        // A failure before the abort already aborted the multipart upload.
        let failed_before = self.failure.get().is_some();
        self.poll_sender = None;
        self.sender = None;
        match self.task.take() {
            None => Ok(()),
            Some(task) => match task.await {
                // The channel closed without Finish: the task aborted the upload, and says
                // so with a Cancelled error, or with the error of the abort request.
                Ok(Err(e)) if e.kind() != ErrorKind::Cancelled && !failed_before => Err(e),
                _ => Ok(()),
            },
        }
    }
}

impl S3Upload {
    fn stopped(&self) -> Error {
        Error::storage(format!(
            "{}: writing {}: the upload stopped",
            self.inner.place, self.key
        ))
    }

    /// The task's error (once it ended), for a writer that found the channel closed.
    async fn task_error(&mut self) -> Error {
        if let Some(task) = self.task.take() {
            if let Ok(Err(e)) = task.await {
                return e;
            }
        }
        self.failure.get().unwrap_or_else(|| self.stopped())
    }
}

/// The multipart upload task: its result is the committed object, or why it failed (then
/// the multipart upload has been aborted, and the failure is recorded for the writer).
async fn run(
    dest: Dest,
    first: (Bytes, OwnedSemaphorePermit),
    mut rx: mpsc::Receiver<Msg>,
    failure: Arc<FirstFailure>,
    permits: Arc<Semaphore>,
) -> Result<ObjectMeta> {
    let result = drive(&dest, first, &mut rx).await;
    if let Err(e) = &result {
        if e.kind() != ErrorKind::Cancelled {
            failure.set(e);
        }
        // Wake a writer waiting for memory: it will find the failure.
        permits.close();
    }
    // Only now does the writer see a closed channel: the failure is recorded by then.
    drop(rx);
    result
}

/// Where a multipart upload goes.
struct Dest {
    inner: Arc<Inner>,
    key: String,
    full: String,
    created: DateTime<Utc>,
}

async fn drive(
    dest: &Dest,
    first: (Bytes, OwnedSemaphorePermit),
    rx: &mut mpsc::Receiver<Msg>,
) -> Result<ObjectMeta> {
    let upload = Multipart::create(dest).await?;
    let (parts, total) = match upload.send_parts(first, rx).await {
        Ok(sent) => sent,
        Err(e) => {
            return Err(match upload.abort().await {
                Ok(()) => e,
                Err(abort_err) if e.kind() == ErrorKind::Cancelled => abort_err,
                Err(_) => e,
            })
        }
    };
    upload.complete(parts, total).await
}

/// A multipart upload once created: what each of its requests names.
#[derive(Clone)]
struct Multipart {
    inner: Arc<Inner>,
    client: aws_sdk_s3::Client,
    key: String,
    full: String,
    upload_id: String,
    created: DateTime<Utc>,
}

type PartUploads = JoinSet<Result<(CompletedPart, u64)>>;

impl Multipart {
    /// Create the multipart upload of `dest`, with its retention, encryption and class.
    async fn create(dest: &Dest) -> Result<Multipart> {
        let inner = &dest.inner;
        let client = inner.ready().await?.clone();
        let mut req = client
            .create_multipart_upload()
            .bucket(&inner.settings.bucket)
            .key(&dest.full);
        if let Some((mode, until)) = inner.retention(dest.created) {
            req = req
                .object_lock_mode(mode)
                .object_lock_retain_until_date(until);
        }
        match &inner.settings.sse {
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
        if let Some(class) = &inner.settings.storage_class {
            req = req.storage_class(aws_sdk_s3::types::StorageClass::from(class.as_str()));
        }
        let key = &dest.key;
        let started = req
            .send()
            .await
            .map_err(|e| sdk_error(&inner.place, &format!("starting the upload of {key}"), e))?;
        let upload_id = started
            .upload_id()
            .ok_or_else(|| {
                Error::storage(format!(
                    "{}: starting the upload of {key}: the server gave no upload id",
                    inner.place
                ))
            })?
            .to_string();
        Ok(Multipart {
            inner: inner.clone(),
            client,
            key: dest.key.clone(),
            full: dest.full.clone(),
            upload_id,
            created: dest.created,
        })
    }

    /// Upload `first`, then every part the writer sends, several at once (the writer's
    /// memory permits bound how many), until the writer says [`Msg::Finish`] and every part
    /// is in. Returns the parts and their total size; on failure, no part upload is left
    /// running.
    async fn send_parts(
        &self,
        first: (Bytes, OwnedSemaphorePermit),
        rx: &mut mpsc::Receiver<Msg>,
    ) -> Result<(Vec<CompletedPart>, u64)> {
        let (place, key) = (&self.inner.place, &self.key);
        let mut running = PartUploads::new();
        let mut next = 1;
        self.spawn_part(&mut running, next, first.0, first.1);
        next += 1;
        let mut done: Vec<CompletedPart> = Vec::new();
        let mut total = 0u64;
        let mut finishing = false;
        let outcome: Result<()> = loop {
            if finishing && running.is_empty() {
                break Ok(());
            }
            tokio::select! {
                msg = rx.recv(), if !finishing => match msg {
                    Some(Msg::Part(data, permit)) => {
                        self.spawn_part(&mut running, next, data, permit);
                        next += 1;
                    }
                    Some(Msg::Finish) => finishing = true,
                    None => break Err(Error::cancelled(format!("{place}: the upload of {key} was abandoned"))),
                },
                Some(joined) = running.join_next(), if !running.is_empty() => match joined {
                    Ok(Ok((part, len))) => {
                        done.push(part);
                        total += len;
                    }
                    Ok(Err(e)) => break Err(e),
                    Err(e) => break Err(Error::storage(format!("{place}: writing {key}: a part upload failed: {e}"))),
                },
            }
        };
        if let Err(e) = outcome {
            running.shutdown().await;
            return Err(e);
        }
        Ok((done, total))
    }

    fn spawn_part(
        &self,
        running: &mut PartUploads,
        number: i32,
        data: Bytes,
        permit: OwnedSemaphorePermit,
    ) {
        let upload = self.clone();
        running.spawn(async move { upload.upload_part(number, data, permit).await });
    }

    /// Upload part `number`; its memory permit is released once the part is sent.
    async fn upload_part(
        &self,
        number: i32,
        data: Bytes,
        permit: OwnedSemaphorePermit,
    ) -> Result<(CompletedPart, u64)> {
        let len = data.len() as u64;
        let out = self
            .client
            .upload_part()
            .bucket(&self.inner.settings.bucket)
            .key(&self.full)
            .upload_id(&self.upload_id)
            .part_number(number)
            .content_length(len as i64)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| {
                let op = format!("writing part {number} of {}", self.key);
                sdk_error(&self.inner.place, &op, e)
            })?;
        drop(permit);
        let part = CompletedPart::builder()
            .part_number(number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
            .set_checksum_crc32_c(out.checksum_crc32_c().map(str::to_string))
            .set_checksum_sha1(out.checksum_sha1().map(str::to_string))
            .set_checksum_sha256(out.checksum_sha256().map(str::to_string))
            .build();
        Ok((part, len))
    }

    /// Complete the upload of `parts` (`total` bytes), and check that the object is there,
    /// whole; when it is not, abort the upload.
    async fn complete(&self, mut parts: Vec<CompletedPart>, total: u64) -> Result<ObjectMeta> {
        let inner = &self.inner;
        parts.sort_by_key(|p| p.part_number());
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&inner.settings.bucket)
            .key(&self.full)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        if let Err(e) = completed {
            let f = SdkFailure::of(&e);
            // A 200 whose body could not be read (moto answers with another XML root than
            // S3's): the HEAD below says whether the object is there, whole.
            let unreadable_success =
                matches!(&f, SdkFailure::Service { status: 200, code, .. } if code.is_empty());
            if !unreadable_success {
                let op = format!("completing the upload of {}", self.key);
                let err = to_error(&inner.place, &op, f);
                let _ = self.abort().await;
                return Err(err);
            }
        }
        match inner
            .confirm(&self.key, &self.full, total, self.created)
            .await
        {
            Ok(meta) => Ok(meta),
            Err(e) => {
                // Not completed after all: make sure no upload is left running.
                let _ = self.abort().await;
                Err(e)
            }
        }
    }

    async fn abort(&self) -> Result<()> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.inner.settings.bucket)
            .key(&self.full)
            .upload_id(&self.upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                let op = format!("aborting the unfinished upload of {}", self.key);
                sdk_error(&self.inner.place, &op, e)
            })
    }
}
