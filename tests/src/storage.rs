//! Helpers for the storage tests: the S3 servers the test command started (moto, s3s-fs, or
//! MinIO from docker-compose.test.yml), fresh buckets, a synthetic source of pseudo-random
//! bytes, and a fault-injecting TCP proxy for loopback.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use drkit_core::{
    BoxRead, DriverSpec, Dump, DumpSummary, Error, Manifest, RestoreOptions, RestoreReport, Result,
    Source, Storage,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// An S3 server to test against, from the environment the test command exports.
#[derive(Debug, Clone)]
pub struct S3Server {
    /// `moto` or `s3s`: which variables it came from.
    pub name: &'static str,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Whether the server implements ListMultipartUploads (s3s-fs does not).
    pub lists_uploads: bool,
    /// Whether the server implements object lock (s3s-fs does not).
    pub object_lock: bool,
}

fn required(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: run the suite with `bash scripts/test.sh` (it starts moto and s3s-fs on loopback), \
             or start the servers yourself and export DRKIT_TEST_MOTO_* / DRKIT_TEST_S3S_* (docs/testing.md)"
        ),
    }
}

/// moto in server mode, with SigV4 checked (`DRKIT_TEST_MOTO_ENDPOINT`, `_ACCESS_KEY`, `_SECRET_KEY`).
pub fn moto() -> S3Server {
    S3Server {
        name: "moto",
        endpoint: required("DRKIT_TEST_MOTO_ENDPOINT"),
        access_key: required("DRKIT_TEST_MOTO_ACCESS_KEY"),
        secret_key: required("DRKIT_TEST_MOTO_SECRET_KEY"),
        lists_uploads: true,
        object_lock: true,
    }
}

/// s3s-fs 0.14.1 (`DRKIT_TEST_S3S_ENDPOINT`, `_ACCESS_KEY`, `_SECRET_KEY`).
pub fn s3s() -> S3Server {
    S3Server {
        name: "s3s",
        endpoint: required("DRKIT_TEST_S3S_ENDPOINT"),
        access_key: required("DRKIT_TEST_S3S_ACCESS_KEY"),
        secret_key: required("DRKIT_TEST_S3S_SECRET_KEY"),
        lists_uploads: false,
        object_lock: false,
    }
}

static BUCKETS: AtomicUsize = AtomicUsize::new(0);

impl S3Server {
    /// A client for test setup and inspection, independent of the driver under test.
    pub fn admin(&self) -> aws_sdk_s3::Client {
        self.admin_at(&self.endpoint)
    }

    /// The same, through another endpoint (a proxy).
    pub fn admin_at(&self, endpoint: &str) -> aws_sdk_s3::Client {
        use aws_smithy_http_client::tls;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Create a fresh bucket (with object lock enabled when asked) and return its name.
    pub async fn new_bucket(&self, object_lock: bool) -> String {
        let n = BUCKETS.fetch_add(1, Ordering::SeqCst);
        let name = format!(
            "drkit-{}-{}-{n}-{:04x}",
            self.name,
            std::process::id(),
            rand_u64() & 0xffff
        );
        let mut req = self.admin().create_bucket().bucket(&name);
        if object_lock {
            req = req.object_lock_enabled_for_bucket(true);
        }
        req.send().await.unwrap_or_else(|e| {
            panic!(
                "creating bucket {name} on {} ({}): {e:?}",
                self.name, self.endpoint
            )
        });
        name
    }

    /// The `type = "s3"` spec of `bucket` on this server, with `extra` TOML lines.
    pub fn spec(&self, bucket: &str, extra: &str) -> DriverSpec {
        self.spec_at(&self.endpoint, bucket, extra)
    }

    /// The same, through another endpoint (a proxy).
    pub fn spec_at(&self, endpoint: &str, bucket: &str, extra: &str) -> DriverSpec {
        let text = format!(
            "bucket = {bucket:?}\nendpoint = {endpoint:?}\nregion = \"us-east-1\"\nforce_path_style = true\n\
             access_key_id = {:?}\nsecret_access_key = {:?}\n{extra}\n",
            self.access_key, self.secret_key
        );
        let settings: toml::Table = toml::from_str(&text).expect("test spec is TOML");
        DriverSpec {
            kind: "s3".into(),
            settings,
        }
    }

    /// A `[storage.NAME]` section of `drkit.toml` for `bucket`, through `endpoint`, with
    /// `extra` TOML lines.
    pub fn storage_toml(&self, name: &str, endpoint: &str, bucket: &str, extra: &str) -> String {
        format!(
            "[storage.{name}]\ntype = \"s3\"\nbucket = {bucket:?}\nendpoint = {endpoint:?}\nregion = \"us-east-1\"\n\
             force_path_style = true\naccess_key_id = {:?}\nsecret_access_key = {:?}\n{extra}\n",
            self.access_key, self.secret_key
        )
    }

    /// The storage under test for `bucket`.
    pub fn storage(&self, bucket: &str, extra: &str) -> Arc<dyn Storage> {
        drkit_drivers::open_storage("s3test", &self.spec(bucket, extra)).expect("valid S3 spec")
    }

    /// Every key in `bucket` (no prefix), read directly.
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let admin = self.admin();
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = admin
                .list_objects_v2()
                .bucket(bucket)
                .set_continuation_token(token)
                .send()
                .await
                .expect("listing the test bucket");
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out
    }

    /// Unfinished multipart uploads in `bucket` (keys), read directly.
    pub async fn pending_uploads(&self, bucket: &str) -> Vec<String> {
        let out = self
            .admin()
            .list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .expect("listing multipart uploads");
        out.uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_string))
            .collect()
    }
}

/// A random u64 (no seed needed: only for unique names).
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64,
    );
    h.finish()
}

/// Pseudo-random bytes (xorshift64*), the same for the same seed: incompressible test data
/// that can be regenerated to check a restore without keeping a copy.
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
    /// Bytes of the current word not handed out yet.
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Pattern {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    /// Fill `out` with the next bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while i < out.len() {
            if self.used == 8 {
                let mut x = self.state;
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                self.state = x;
                self.word = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                self.used = 0;
            }
            let n = (8 - self.used).min(out.len() - i);
            out[i..i + n].copy_from_slice(&self.word[self.used..self.used + n]);
            self.used += n;
            i += n;
        }
    }

    /// The first `len` bytes for `seed`.
    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        Pattern::new(seed).fill(&mut v);
        v
    }
}

/// A reader of `size` pattern bytes that fails with an I/O error after `fail_after` bytes.
pub struct PatternReader {
    pattern: Pattern,
    left: u64,
    fail_after: Option<u64>,
    done: u64,
}

impl PatternReader {
    /// `size` bytes of the pattern for `seed`.
    pub fn new(seed: u64, size: u64, fail_after: Option<u64>) -> Self {
        PatternReader {
            pattern: Pattern::new(seed),
            left: size,
            fail_after,
            done: 0,
        }
    }
}

impl AsyncRead for PatternReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.fail_after.is_some_and(|f| self.done >= f) {
            return Poll::Ready(Err(std::io::Error::other(
                "the test source failed on purpose",
            )));
        }
        let mut n = (buf.remaining() as u64).min(self.left).min(256 * 1024) as usize;
        if let Some(f) = self.fail_after {
            n = n
                .min((f - self.done) as usize)
                .max(if f > self.done { 1 } else { 0 });
        }
        let dst = buf.initialize_unfilled_to(n);
        let this = &mut *self;
        this.pattern.fill(&mut dst[..n]);
        buf.advance(n);
        this.left -= n as u64;
        this.done += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// A source of `size` pseudo-random bytes: exercises the real pipeline and storages without
/// a database. Its restore regenerates the pattern and checks every byte.
#[derive(Debug, Clone)]
pub struct PatternSource {
    /// Bytes in the dump.
    pub size: u64,
    /// Pattern seed.
    pub seed: u64,
    /// Make the dump fail after this many bytes.
    pub fail_after: Option<u64>,
    /// Bytes a restore read and found equal (set by `restore`).
    pub restored: Arc<AtomicU64>,
}

impl PatternSource {
    /// A source of `size` bytes for `seed`.
    pub fn new(size: u64, seed: u64) -> Self {
        PatternSource {
            size,
            seed,
            fail_after: None,
            restored: Arc::new(AtomicU64::new(0)),
        }
    }
}

#[async_trait]
impl Source for PatternSource {
    fn driver(&self) -> &'static str {
        "pattern"
    }
    fn extension(&self) -> &'static str {
        "bin"
    }
    fn describe(&self) -> String {
        format!("{} pattern bytes (seed {})", self.size, self.seed)
    }
    async fn dump(&self) -> Result<Dump> {
        let reader: BoxRead = Box::new(PatternReader::new(self.seed, self.size, self.fail_after));
        let (size, seed) = (self.size, self.seed);
        Ok(Dump {
            reader,
            finish: Box::pin(async move {
                Ok(DumpSummary {
                    source: serde_json::json!({ "seed": seed }),
                    stats: serde_json::json!({ "bytes": size }),
                    warnings: Vec::new(),
                })
            }),
        })
    }
    async fn plan_restore(
        &self,
        _manifest: &Manifest,
        _opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        Ok(RestoreReport {
            destination: "memory (compared with the pattern)".into(),
            ..Default::default()
        })
    }
    async fn restore(
        &self,
        mut data: BoxRead,
        manifest: &Manifest,
        _opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        let mut expect = Pattern::new(self.seed);
        let mut buf = vec![0u8; 256 * 1024];
        let mut want = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = data.read(&mut buf).await.map_err(|e| {
                drkit_core::from_io(
                    e,
                    drkit_core::ErrorKind::Storage,
                    "reading the restore stream",
                )
            })?;
            if n == 0 {
                break;
            }
            expect.fill(&mut want[..n]);
            if buf[..n] != want[..n] {
                return Err(Error::integrity(format!(
                    "restored bytes differ from the pattern near byte {total}"
                )));
            }
            total += n as u64;
        }
        if total != manifest.data.raw_size {
            return Err(Error::integrity(format!(
                "restored {total} bytes, the manifest says {}",
                manifest.data.raw_size
            )));
        }
        self.restored.store(total, Ordering::SeqCst);
        Ok(RestoreReport {
            destination: "memory".into(),
            stats_checked: true,
            ..Default::default()
        })
    }
}

/// What a [`FaultProxy`] does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Cut the connection that carries the client's byte number N (counted over all
    /// connections), once.
    CutUploadOnceAt(u64),
    /// Cut the connection that carries the server's byte number N, once.
    CutDownloadOnceAt(u64),
    /// From the client's byte number N on, cut every connection and refuse new ones.
    DownFromUpload(u64),
}

#[derive(Debug)]
struct ProxyState {
    fault: Mutex<Fault>,
    up: AtomicU64,
    down: AtomicU64,
    cuts: AtomicUsize,
    connections: AtomicUsize,
    down_now: AtomicBool,
    /// `range: bytes=...` header values seen in requests.
    ranges: Mutex<Vec<String>>,
}

/// A TCP proxy on 127.0.0.1 between the driver and an S3 server that cuts connections on
/// purpose (see [`Fault`]) and notes the `Range` headers of the requests.
#[derive(Debug, Clone)]
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    state: Arc<ProxyState>,
}

impl FaultProxy {
    /// Start a proxy to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, fault: Fault) -> FaultProxy {
        let target = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr: SocketAddr = listener.local_addr().expect("proxy address");
        let state = Arc::new(ProxyState {
            fault: Mutex::new(fault),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            cuts: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            down_now: AtomicBool::new(false),
            ranges: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                if st.down_now.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let st = st.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    relay(client, server, st).await;
                });
            }
        });
        FaultProxy {
            endpoint: format!("http://{addr}"),
            state,
        }
    }

    /// Change what the proxy does from now on.
    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock().expect("proxy") = fault;
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.state.cuts.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Bytes from the client so far.
    pub fn bytes_up(&self) -> u64 {
        self.state.up.load(Ordering::SeqCst)
    }

    /// Bytes from the server so far.
    pub fn bytes_down(&self) -> u64 {
        self.state.down.load(Ordering::SeqCst)
    }

    /// `Range` header values seen in requests, in order.
    pub fn ranges(&self) -> Vec<String> {
        self.state.ranges.lock().expect("proxy").clone()
    }
}

/// Whether the fault says to cut now, given the counters after `n` more bytes.
fn should_cut(state: &ProxyState, upstream: bool, before: u64, n: u64) -> bool {
    let mut fault = state.fault.lock().expect("proxy");
    let after = before + n;
    let cut = match *fault {
        Fault::None => false,
        Fault::CutUploadOnceAt(at) if upstream && before < at && after >= at => {
            *fault = Fault::None;
            true
        }
        Fault::CutDownloadOnceAt(at) if !upstream && before < at && after >= at => {
            *fault = Fault::None;
            true
        }
        Fault::DownFromUpload(at) if upstream && after >= at => {
            state.down_now.store(true, Ordering::SeqCst);
            true
        }
        _ => false,
    };
    cut || state.down_now.load(Ordering::SeqCst)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Note the `Range` headers in the client's bytes. `window` keeps the tail of the previous
/// chunks, so a header split between two reads is still seen (and none is seen twice).
fn note_ranges(state: &ProxyState, window: &mut Vec<u8>, chunk: &[u8]) {
    const NEEDLE: &[u8] = b"\r\nrange: ";
    window.extend_from_slice(chunk);
    let lower = window.to_ascii_lowercase();
    let (mut from, mut consumed) = (0, 0);
    while let Some(i) = find(&lower[from..], NEEDLE) {
        let start = from + i + NEEDLE.len();
        let Some(end) = find(&lower[start..], b"\r\n") else {
            break;
        };
        let value = String::from_utf8_lossy(&lower[start..start + end])
            .trim()
            .to_string();
        state.ranges.lock().expect("proxy").push(value);
        from = start + end;
        consumed = from;
    }
    window.drain(..consumed);
    if window.len() > 256 {
        let cut = window.len() - 256;
        window.drain(..cut);
    }
}

async fn relay(client: TcpStream, server: TcpStream, state: Arc<ProxyState>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up_state = state.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut window = Vec::new();
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let before = up_state.up.fetch_add(n as u64, Ordering::SeqCst);
            if should_cut(&up_state, true, before, n as u64) {
                up_state.cuts.fetch_add(1, Ordering::SeqCst);
                return;
            }
            note_ranges(&up_state, &mut window, &buf[..n]);
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down_state = state.clone();
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let before = down_state.down.fetch_add(n as u64, Ordering::SeqCst);
            if should_cut(&down_state, false, before, n as u64) {
                down_state.cuts.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Whichever side ends first ends the connection: both halves are dropped (closed).
    tokio::select! {
        _ = up => {},
        _ = down => {},
    }
}
