//! Streaming download that resumes: when the connection drops, ends early or stalls, the rest
//! is asked for again with a ranged GET pinned to the object's ETag (`If-Match`), after a
//! backoff with jitter, instead of starting over.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use drkit_core::{BoxRead, Error, Result};
use rand::Rng;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::errors::{to_error, Failure};
use super::Inner;

type Body = Pin<Box<dyn AsyncRead + Send>>;

/// One answer to a GET: the body and where it stops.
struct Opened {
    body: Body,
    etag: Option<String>,
    /// Offset (exclusive) where this body ends, when the server said.
    stop: Option<u64>,
}

/// The `Range` header for bytes `pos..end`.
pub(crate) fn range_header(pos: u64, end: Option<u64>) -> Option<String> {
    match (pos, end) {
        (0, None) => None,
        (p, None) => Some(format!("bytes={p}-")),
        (p, Some(e)) => Some(format!("bytes={p}-{}", e.saturating_sub(1))),
    }
}

/// The first byte offset of a `Content-Range: bytes a-b/total` header.
pub(crate) fn content_range_start(header: &str) -> Option<u64> {
    let rest = header.trim().strip_prefix("bytes")?.trim_start();
    let (range, _) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    start.trim().parse().ok()
}

/// Backoff before the `attempt`-th (1-based) reopening: full jitter over an exponential
/// ceiling of 200 ms x 2^(attempt-1), capped at 20 s. `unit` is a random number in [0, 1).
pub(crate) fn backoff(attempt: u32, unit: f64) -> Duration {
    let ceiling = Duration::from_millis(200)
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(Duration::from_secs(20));
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

async fn request(
    inner: Arc<Inner>,
    key: String,
    full: String,
    pos: u64,
    end: Option<u64>,
    etag: Option<String>,
) -> Result<Opened> {
    let client = inner.client().await?;
    let range = range_header(pos, end);
    let ranged = range.is_some();
    let out = client
        .get_object()
        .bucket(&inner.settings.bucket)
        .key(&full)
        .set_range(range)
        .set_if_match(etag.clone())
        .send()
        .await;
    let out = match out {
        Ok(o) => o,
        Err(e) => return failed_get(&inner, &key, pos, etag, Failure::of(&e)),
    };
    if ranged {
        match out.content_range().and_then(content_range_start) {
            Some(start) if start == pos => {}
            _ => {
                return Err(Error::storage(format!(
                    "{}: reading {key}: the server ignored the byte range asked for (Content-Range {:?})",
                    inner.place,
                    out.content_range()
                )))
            }
        }
    }
    let stop = out
        .content_length()
        .filter(|n| *n >= 0)
        .map(|n| pos + n as u64)
        .or(end);
    let etag = out.e_tag().map(str::to_string).or(etag);
    Ok(Opened {
        body: Box::pin(out.body.into_async_read()),
        etag,
        stop,
    })
}

/// What a failed GET from `pos` means: nothing to read (416: the range starts at the end
/// of the object or beyond), or the error to report.
fn failed_get(
    inner: &Inner,
    key: &str,
    pos: u64,
    etag: Option<String>,
    f: Failure,
) -> Result<Opened> {
    Err(match &f {
        Failure::Service { code, .. } if code == "NoSuchBucket" => {
            to_error(&inner.place, &format!("reading {key}"), f)
        }
        Failure::Service { status: 404, .. } => {
            Error::not_found(format!("{}: {key} does not exist", inner.place))
        }
        Failure::Service { status: 416, .. } => {
            return Ok(Opened {
                body: Box::pin(tokio::io::empty()),
                etag,
                stop: Some(pos),
            });
        }
        Failure::Service { status: 412, .. } => Error::storage(format!(
            "{}: {key} was replaced while it was being read: read it again",
            inner.place
        )),
        _ => to_error(&inner.place, &format!("reading {key}"), f),
    })
}

/// Open `key` from byte `start` to `end` (exclusive, `None` = to the end) as a resuming reader.
pub(crate) async fn open(
    inner: Arc<Inner>,
    key: &str,
    start: u64,
    end: Option<u64>,
) -> Result<BoxRead> {
    let full = inner.full_key(key)?;
    let opened = request(
        inner.clone(),
        key.to_string(),
        full.clone(),
        start,
        end,
        None,
    )
    .await?;
    let timeout = inner.settings.timeout;
    let max_failures = inner.settings.max_attempts;
    Ok(Box::new(Resuming {
        inner,
        key: key.to_string(),
        full,
        etag: opened.etag,
        pos: start,
        stop: opened.stop,
        end,
        body: Some(opened.body),
        reopen: None,
        failures: 0,
        max_failures,
        timeout,
        idle: Box::pin(tokio::time::sleep(timeout)),
    }))
}

struct Resuming {
    inner: Arc<Inner>,
    key: String,
    full: String,
    etag: Option<String>,
    /// Offset of the next byte to hand out.
    pos: u64,
    /// Where the current body ends.
    stop: Option<u64>,
    /// Where the caller asked to stop.
    end: Option<u64>,
    body: Option<Body>,
    reopen: Option<Pin<Box<dyn Future<Output = Result<Opened>> + Send>>>,
    /// Reopenings in a row without a byte read.
    failures: u32,
    max_failures: u32,
    timeout: Duration,
    /// Fires when the body has sent nothing for `timeout`.
    idle: Pin<Box<Sleep>>,
}

impl Resuming {
    fn resume(&mut self, why: String) -> io::Result<()> {
        self.body = None;
        self.failures += 1;
        if self.failures > self.max_failures {
            return Err(io::Error::other(
                Error::storage(format!(
                    "{}: reading {}: the download broke off {} times in a row at byte {} ({why}): check the network and try again",
                    self.inner.place,
                    self.key,
                    self.failures - 1,
                    self.pos
                ))
                .retryable(),
            ));
        }
        let delay = backoff(self.failures, rand::thread_rng().gen::<f64>());
        let fut = request(
            self.inner.clone(),
            self.key.clone(),
            self.full.clone(),
            self.pos,
            self.end,
            self.etag.clone(),
        );
        self.reopen = Some(Box::pin(async move {
            tokio::time::sleep(delay).await;
            fut.await
        }));
        Ok(())
    }

    /// Drive a reopening in progress (if any) until its body is in place.
    fn poll_reopen(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(fut) = self.reopen.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let opened = ready!(fut.as_mut().poll(cx));
        self.reopen = None;
        let opened = opened.map_err(io::Error::other)?;
        self.body = Some(opened.body);
        self.stop = opened.stop;
        if self.etag.is_none() {
            self.etag = opened.etag;
        }
        self.reset_idle();
        Poll::Ready(Ok(()))
    }

    fn reset_idle(&mut self) {
        let at = Instant::now() + self.timeout;
        self.idle.as_mut().reset(at);
    }
}

impl AsyncRead for Resuming {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_reopen(cx))?;
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let before = buf.filled().len();
            match body.as_mut().poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len() - before;
                    if n > 0 {
                        this.pos += n as u64;
                        this.failures = 0;
                        this.reset_idle();
                        return Poll::Ready(Ok(()));
                    }
                    if this.stop.is_some_and(|s| this.pos < s) {
                        let why = format!(
                            "the connection ended at byte {} of {}",
                            this.pos,
                            this.stop.unwrap_or(0)
                        );
                        this.resume(why)?;
                        continue;
                    }
                    this.body = None;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => {
                    this.resume(e.to_string())?;
                    continue;
                }
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        let why = format!("no data for {}s", this.timeout.as_secs());
                        this.resume(why)?;
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let cases = [
            (0, None, None),
            (10, None, Some("bytes=10-")),
            (0, Some(10), Some("bytes=0-9")),
            (5, Some(6), Some("bytes=5-5")),
        ];
        for (pos, end, want) in cases {
            assert_eq!(range_header(pos, end).as_deref(), want, "{pos} {end:?}");
        }
    }

    #[test]
    fn content_ranges() {
        let cases = [
            ("bytes 0-9/100", Some(0)),
            ("bytes 42-99/100", Some(42)),
            ("bytes 42-99/*", Some(42)),
            ("bytes */100", None),
            ("items 1-2/3", None),
            ("", None),
        ];
        for (header, want) in cases {
            assert_eq!(content_range_start(header), want, "{header}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cases = [
            (1, 1.0, Duration::from_millis(200)),
            (2, 1.0, Duration::from_millis(400)),
            (4, 0.5, Duration::from_millis(800)),
            (8, 1.0, Duration::from_secs(20)),
            (40, 1.0, Duration::from_secs(20)),
            (3, 0.0, Duration::ZERO),
        ];
        for (attempt, unit, want) in cases {
            assert_eq!(backoff(attempt, unit), want, "{attempt} {unit}");
        }
    }
}
