use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

/// Final size and sha256 (hex) of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashes {
    /// Bytes seen.
    pub size: u64,
    /// sha256 of those bytes, lowercase hex.
    pub sha256: String,
}

#[derive(Default)]
struct State {
    hasher: Sha256,
    size: u64,
    head: Vec<u8>,
    head_limit: usize,
}

/// A reader that hashes and counts what passes through it, and can keep the first bytes.
/// The totals are read through a [`HashHandle`] after the reader was moved into a chain.
pub struct HashReader<R> {
    inner: R,
    state: Arc<Mutex<State>>,
}

/// Gives the totals of a [`HashReader`] that was moved into a reader chain.
#[derive(Clone)]
pub struct HashHandle(Arc<Mutex<State>>);

impl<R> HashReader<R> {
    /// Wrap `inner`; keep up to `head_limit` first bytes for structure checks.
    pub fn new(inner: R, head_limit: usize) -> (Self, HashHandle) {
        let state = Arc::new(Mutex::new(State {
            head_limit,
            ..State::default()
        }));
        (
            HashReader {
                inner,
                state: state.clone(),
            },
            HashHandle(state),
        )
    }
}

impl HashHandle {
    /// Size and sha256 of everything read so far.
    pub fn finish(&self) -> Hashes {
        let st = self.0.lock().expect("hash state");
        Hashes {
            size: st.size,
            sha256: hex::encode(st.hasher.clone().finalize()),
        }
    }
    /// Bytes read so far.
    pub fn size(&self) -> u64 {
        self.0.lock().expect("hash state").size
    }
    /// The first bytes read (up to the limit given to [`HashReader::new`]).
    pub fn head(&self) -> Vec<u8> {
        self.0.lock().expect("hash state").head.clone()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                let mut st = this.state.lock().expect("hash state");
                st.hasher.update(new);
                st.size += new.len() as u64;
                if st.head.len() < st.head_limit {
                    let take = (st.head_limit - st.head.len()).min(new.len());
                    st.head.extend_from_slice(&new[..take]);
                }
            }
        }
        poll
    }
}

/// Counts the time a reader spends waiting for its source (from the first `Pending` of a
/// read to its completion): how long a restore waited for the storage, as opposed to the
/// time the driver took.
pub struct WaitClock<R> {
    inner: R,
    since: Option<std::time::Instant>,
    total: Arc<std::sync::atomic::AtomicU64>,
}

/// Gives the time a [`WaitClock`] waited.
#[derive(Clone, Default)]
pub struct WaitHandle(Arc<std::sync::atomic::AtomicU64>);

impl<R> WaitClock<R> {
    /// Wrap `inner`.
    pub fn new(inner: R) -> (Self, WaitHandle) {
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        (
            WaitClock {
                inner,
                since: None,
                total: total.clone(),
            },
            WaitHandle(total),
        )
    }
}

impl WaitHandle {
    /// The time waited so far.
    pub fn waited(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for WaitClock<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        match (&poll, this.since) {
            (Poll::Pending, None) => this.since = Some(std::time::Instant::now()),
            (Poll::Ready(_), Some(t)) => {
                let n = t.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
                this.total
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                this.since = None;
            }
            _ => {}
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn hashes_what_passes() {
        let data = b"hello world".to_vec();
        let (mut r, h) = HashReader::new(&data[..], 5);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
        let got = h.finish();
        assert_eq!(got.size, 11);
        assert_eq!(
            got.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(h.head(), b"hello");
    }
}
