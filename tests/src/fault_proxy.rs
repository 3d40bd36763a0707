//! An HTTP/1.1 proxy that injects faults per request, for the S3 tests.
//!
//! [`HttpFaultProxy::start`] listens on `127.0.0.1:<free port>` and forwards every connection
//! to one upstream S3 server (moto, s3s-fs, MinIO: plain `http://` only). It forwards bytes
//! unmodified (the `Host` header too, so SigV4 signatures made for the proxy's address stay
//! valid) and parses only enough of HTTP/1.1 to know where each request and each response
//! ends: request bodies framed by `Content-Length` (which is also how `aws-chunked` bodies
//! are framed) or by `Transfer-Encoding: chunked`; responses by `Content-Length`, chunked,
//! or the end of the connection; no body for `HEAD`, 1xx, 204 and 304. Interim `100
//! Continue` answers are always relayed. Keep-alive connections work: one client connection
//! has one upstream connection, opened when first needed and reopened if the server closed it.
//!
//! Each request is checked against the [`Rule`]s set at that moment. A rule matches a method
//! (or `*`) and a substring of the request target (path-style `/bucket/key`, with the query:
//! `"partNumber=2"` or `"uploads"` match too), counts its matches, and fires on the matches
//! it was told to (the Nth, the first N, from the Nth on, every one) with an [`Action`]:
//! lose the answer of a request that landed ([`Action::CutResponse`]), answer 500
//! `InternalError` without forwarding ([`Action::Status500`]), drop the connection at once
//! ([`Action::Reset`]), or forward late ([`Action::Delay`]). Rules can be added and removed
//! while traffic flows; [`HttpFaultProxy::stats`] says how often a rule matched and fired,
//! and [`HttpFaultProxy::requests`] lists every request with what was done to it.
//!
//! The proxy runs on its own thread with its own Tokio runtime, so it keeps serving while a
//! test blocks (a `std::process::Command` running `drkit`, a `#[test]` without runtime) and
//! whatever the test's runtime flavour; dropping the [`HttpFaultProxy`] stops it and closes
//! its connections.
//!
//! Example, in prose: to check that drkit survives losing the answer to its manifest upload,
//! start `HttpFaultProxy::start(&moto().endpoint)`, add
//! `Rule::new("PUT", "/manifest.json", Action::CutResponse).nth(1)`, write a `drkit.toml`
//! whose S3 storage has `endpoint = proxy.endpoint()` and `force_path_style = true` (see
//! [`crate::storage::S3Server::storage_toml`]), run the backup, then assert that
//! `proxy.stats(id)` is `{ seen: 2, fired: 1 }` (the first attempt landed but its answer was
//! lost, the SDK's retry went through) and that the backup is listed.
//!
//! ```ignore
//! let proxy = HttpFaultProxy::start(&moto().endpoint);
//! let id = proxy.add_rule(Rule::new("PUT", "/manifest.json", Action::CutResponse).nth(1));
//! let toml = server.storage_toml("offsite", proxy.endpoint(), &bucket, "");
//! // ... run `drkit backup` ...
//! assert_eq!(proxy.stats(id), RuleStats { seen: 2, fired: 1 });
//! ```

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use futures::future::Either;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// What a [`Rule`] does to a request it fires on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forward the request (so the write lands), read the server's whole answer, then close
    /// the client connection without sending the answer: "the answer to the PUT is lost".
    /// The client sees the connection closed before a response (a retryable I/O error).
    CutResponse,
    /// Do not forward: read the request and answer `500 Internal Server Error` with an
    /// S3-style XML `InternalError` body (a retryable error for the SDK).
    Status500,
    /// Do not forward: close the client connection at once (with `SO_LINGER` 0, so the
    /// client gets a TCP reset).
    Reset,
    /// Wait this long, then forward the request as usual.
    Delay(Duration),
}

/// A fault to inject: which requests, which of their matches, and what to do.
///
/// Built with [`Rule::new`] (fires on every match), then narrowed with [`Rule::nth`],
/// [`Rule::first`] or [`Rule::from_nth`]. Matches are counted per rule from 1, over all
/// connections, whether the rule fires or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// HTTP method, compared case-insensitively (`PUT`, `GET`, `HEAD`, `POST`, `DELETE`), or
    /// `*` for any.
    pub method: String,
    /// Substring of the request target as sent (path and query, percent-encoded), e.g.
    /// `"/manifest.json"`, `"partNumber=3"`, `"?uploads"`; empty matches every target.
    pub path_contains: String,
    /// What to do when the rule fires.
    pub action: Action,
    /// First match number (1-based) the rule fires on.
    pub from: usize,
    /// Last match number the rule fires on (`usize::MAX`: no end).
    pub to: usize,
}

impl Rule {
    /// A rule firing `action` on every request with `method` (or `*`) whose target contains
    /// `path_contains`.
    pub fn new(method: &str, path_contains: &str, action: Action) -> Rule {
        Rule {
            method: method.to_ascii_uppercase(),
            path_contains: path_contains.to_string(),
            action,
            from: 1,
            to: usize::MAX,
        }
    }

    /// Fire on the `n`th match only (1-based): with the SDK's retries, `nth(1)` hits the
    /// first attempt and lets the retry through.
    pub fn nth(mut self, n: usize) -> Rule {
        assert!(n >= 1, "match numbers start at 1");
        (self.from, self.to) = (n, n);
        self
    }

    /// Fire on the first `n` matches.
    pub fn first(mut self, n: usize) -> Rule {
        (self.from, self.to) = (1, n);
        self
    }

    /// Fire on every match from the `n`th on ("the server is gone from then on").
    pub fn from_nth(mut self, n: usize) -> Rule {
        assert!(n >= 1, "match numbers start at 1");
        (self.from, self.to) = (n, usize::MAX);
        self
    }

    /// Fire on every match (the default of [`Rule::new`]).
    pub fn every(mut self) -> Rule {
        (self.from, self.to) = (1, usize::MAX);
        self
    }

    /// Whether the rule applies to a request (before counting).
    pub fn matches(&self, method: &str, target: &str) -> bool {
        (self.method == "*" || self.method.eq_ignore_ascii_case(method))
            && target.contains(&self.path_contains)
    }

    fn fires_on(&self, match_number: usize) -> bool {
        (self.from..=self.to).contains(&match_number)
    }
}

/// The handle of a rule added to a proxy, for [`HttpFaultProxy::stats`] and
/// [`HttpFaultProxy::remove_rule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(usize);

/// How often a rule matched a request and how often it fired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Requests that matched the rule's method and path while it was active.
    pub seen: usize,
    /// Requests the rule acted on. When several rules fire on one request, only the first
    /// one (in the order they were added) acts and counts it as fired.
    pub fired: usize,
}

/// One request the proxy received, and what it did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Number of the client connection it came on (from 1): requests sharing one number
    /// went over one keep-alive connection.
    pub connection: usize,
    /// HTTP method.
    pub method: String,
    /// Request target as sent (path and query).
    pub target: String,
    /// The rule that acted on it, if any.
    pub rule: Option<RuleId>,
    /// What that rule did.
    pub action: Option<Action>,
    /// Status of the final answer: the server's (also when [`Action::CutResponse`] kept it
    /// from the client), 500 for [`Action::Status500`]; `None` when there was none (reset,
    /// server unreachable, connection broken).
    pub status: Option<u16>,
}

#[derive(Debug)]
struct Slot {
    id: RuleId,
    rule: Rule,
    stats: RuleStats,
    active: bool,
}

#[derive(Debug)]
struct State {
    /// `host:port` of the server.
    upstream: String,
    rules: Mutex<Vec<Slot>>,
    requests: Mutex<Vec<RequestRecord>>,
    connections: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not make every later call panic too.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Count the request against the active rules; return the record's index and the action.
    fn decide(&self, connection: usize, method: &str, target: &str) -> (usize, Option<Action>) {
        let mut chosen: Option<(RuleId, Action)> = None;
        for slot in lock(&self.rules).iter_mut().filter(|s| s.active) {
            if !slot.rule.matches(method, target) {
                continue;
            }
            slot.stats.seen += 1;
            if chosen.is_none() && slot.rule.fires_on(slot.stats.seen) {
                slot.stats.fired += 1;
                chosen = Some((slot.id, slot.rule.action));
            }
        }
        let mut requests = lock(&self.requests);
        requests.push(RequestRecord {
            connection,
            method: method.to_string(),
            target: target.to_string(),
            rule: chosen.map(|c| c.0),
            action: chosen.map(|c| c.1),
            status: None,
        });
        (requests.len() - 1, chosen.map(|c| c.1))
    }

    fn set_status(&self, record: usize, status: u16) {
        if let Some(r) = lock(&self.requests).get_mut(record) {
            r.status = Some(status);
        }
    }
}

/// A fault-injecting HTTP/1.1 proxy on `127.0.0.1` in front of one S3 server (see the
/// [module documentation](self)). Stopped when dropped.
#[derive(Debug)]
pub struct HttpFaultProxy {
    endpoint: String,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpFaultProxy {
    /// Start a proxy to `upstream` (`http://host:port`, as in `DRKIT_TEST_MOTO_ENDPOINT`) on
    /// a free port of 127.0.0.1, with no rules (plain pass-through). Panics when `upstream`
    /// is not a plain `http://` URL or no port can be bound.
    pub fn start(upstream: &str) -> HttpFaultProxy {
        let rest = upstream
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the fault proxy speaks plain http only, not {upstream:?}"));
        let host = rest.split('/').next().unwrap_or_default().to_string();
        assert!(!host.is_empty(), "no host in {upstream:?}");
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("binding the fault proxy");
        let addr = std_listener.local_addr().expect("fault proxy address");
        std_listener
            .set_nonblocking(true)
            .expect("fault proxy: non-blocking listener");
        let state = Arc::new(State {
            upstream: host,
            rules: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fault proxy runtime");
                rt.block_on(async move {
                    let listener =
                        TcpListener::from_std(std_listener).expect("fault proxy listener");
                    let accept = async {
                        loop {
                            let Ok((client, _)) = listener.accept().await else {
                                continue;
                            };
                            let n = st.connections.fetch_add(1, Ordering::SeqCst) + 1;
                            tokio::spawn(serve(client, n, st.clone()));
                        }
                    };
                    tokio::select! {
                        _ = accept => {},
                        _ = stopped => {},
                    }
                });
                // Dropping the runtime here drops every connection task: sockets close.
            })
            .expect("fault proxy thread");
        HttpFaultProxy {
            endpoint: format!("http://{addr}"),
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`: the `endpoint` to give the S3 client or drkit's storage
    /// config (with `force_path_style = true`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Add a rule after the existing ones; it counts matches from now on.
    pub fn add_rule(&self, rule: Rule) -> RuleId {
        let mut rules = lock(&self.state.rules);
        let id = RuleId(rules.len());
        rules.push(Slot {
            id,
            rule,
            stats: RuleStats::default(),
            active: true,
        });
        id
    }

    /// Deactivate a rule: it no longer matches; its [`stats`](Self::stats) stay readable.
    pub fn remove_rule(&self, id: RuleId) {
        if let Some(slot) = lock(&self.state.rules).get_mut(id.0) {
            slot.active = false;
        }
    }

    /// Deactivate every rule: plain pass-through from now on.
    pub fn clear_rules(&self) {
        for slot in lock(&self.state.rules).iter_mut() {
            slot.active = false;
        }
    }

    /// Replace the active rules by `rules` (in this order); returns their ids.
    pub fn set_rules(&self, rules: impl IntoIterator<Item = Rule>) -> Vec<RuleId> {
        self.clear_rules();
        rules.into_iter().map(|r| self.add_rule(r)).collect()
    }

    /// How often the rule matched and fired so far. Panics on an id of another proxy.
    pub fn stats(&self, id: RuleId) -> RuleStats {
        lock(&self.state.rules)
            .get(id.0)
            .map(|s| s.stats)
            .expect("a RuleId of this proxy")
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.state.requests).clone()
    }

    /// Requests received so far whose method is `method` (or `*`) and whose target contains
    /// `path_contains` (whatever the rules did with them).
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        let probe = Rule::new(method, path_contains, Action::Reset);
        lock(&self.state.requests)
            .iter()
            .filter(|r| probe.matches(&r.method, &r.target))
            .count()
    }

    /// Client connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

impl Drop for HttpFaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------------- HTTP framing -----

/// The longest request or response head accepted.
const MAX_HEAD: usize = 256 * 1024;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed mid-message",
    )
}

/// A parsed message head: first line split in three, lowercase header names.
#[derive(Debug)]
struct Head {
    first: [String; 3],
    headers: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: &[u8]) -> io::Result<Head> {
        let text = std::str::from_utf8(raw).map_err(|_| bad("head is not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let first_line = lines.next().unwrap_or_default();
        let mut parts = first_line.splitn(3, ' ');
        let first = [(); 3].map(|_| parts.next().unwrap_or_default().to_string());
        if first[1].is_empty() {
            return Err(bad(format!("bad first line {first_line:?}")));
        }
        let headers = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(Head { first, headers })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn chunked(&self) -> bool {
        self.has_token("transfer-encoding", "chunked")
    }

    fn content_length(&self) -> io::Result<Option<u64>> {
        self.header("content-length")
            .map(|v| {
                v.parse()
                    .map_err(|_| bad(format!("bad Content-Length {v:?}")))
            })
            .transpose()
    }

    /// Whether the connection ends after this message (`version` is the HTTP version).
    fn closes(&self, version: &str) -> bool {
        self.has_token("connection", "close")
            || (version.eq_ignore_ascii_case("HTTP/1.0")
                && !self.has_token("connection", "keep-alive"))
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

fn request_body(h: &Head) -> io::Result<Body> {
    Ok(if h.chunked() {
        Body::Chunked
    } else {
        match h.content_length()? {
            Some(0) | None => Body::Empty,
            Some(n) => Body::Length(n),
        }
    })
}

fn response_body(h: &Head, status: u16, request_method: &str) -> io::Result<Body> {
    if request_method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        return Ok(Body::Empty);
    }
    Ok(if h.chunked() {
        Body::Chunked
    } else {
        match h.content_length()? {
            Some(0) => Body::Empty,
            Some(n) => Body::Length(n),
            None => Body::UntilClose,
        }
    })
}

/// The read half of a connection with a buffer, reading whole heads, lines and bodies.
struct Reader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(inner: R) -> Self {
        Reader {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 16 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        self.inner.read_buf(&mut self.buf).await
    }

    /// The next message head, up to and including the blank line; `None` at a clean end of
    /// the connection before any byte of it.
    async fn head(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut scanned: usize = 0;
        loop {
            // Empty lines before a message are allowed (RFC 9112 2.2).
            while self.buf.starts_with(b"\r\n") {
                let _ = self.buf.split_to(2);
            }
            let from = scanned.saturating_sub(3);
            if let Some(i) = find(&self.buf[from..], b"\r\n\r\n") {
                return Ok(Some(self.buf.split_to(from + i + 4).to_vec()));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad("message head too long"));
            }
            scanned = self.buf.len();
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(eof())
                };
            }
        }
    }

    /// One line, with its CRLF.
    async fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut scanned: usize = 0;
        loop {
            if let Some(i) = find(&self.buf[scanned.saturating_sub(1)..], b"\r\n") {
                return Ok(self
                    .buf
                    .split_to(scanned.saturating_sub(1) + i + 2)
                    .to_vec());
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad("line too long"));
            }
            scanned = self.buf.len();
            if self.fill().await? == 0 {
                return Err(eof());
            }
        }
    }

    /// Pass `n` bytes to `out` (or drop them when `out` is `None`).
    async fn copy<W: AsyncWrite + Unpin>(
        &mut self,
        mut n: u64,
        out: &mut Option<&mut W>,
    ) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && self.fill().await? == 0 {
                return Err(eof());
            }
            let take = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let chunk = self.buf.split_to(take);
            if let Some(w) = out {
                w.write_all(&chunk).await?;
            }
            n -= take as u64;
        }
        Ok(())
    }

    async fn body<W: AsyncWrite + Unpin>(
        &mut self,
        body: Body,
        out: &mut Option<&mut W>,
    ) -> io::Result<()> {
        match body {
            Body::Empty => Ok(()),
            Body::Length(n) => self.copy(n, out).await,
            Body::Chunked => loop {
                let line = self.line().await?;
                if let Some(w) = out {
                    w.write_all(&line).await?;
                }
                let text = std::str::from_utf8(&line).map_err(|_| bad("bad chunk size"))?;
                let hex = text.split(';').next().unwrap_or_default().trim();
                let size = u64::from_str_radix(hex, 16)
                    .map_err(|_| bad(format!("bad chunk size {hex:?}")))?;
                if size == 0 {
                    // Trailer fields, then the blank line.
                    loop {
                        let line = self.line().await?;
                        if let Some(w) = out {
                            w.write_all(&line).await?;
                        }
                        if line == b"\r\n" {
                            return Ok(());
                        }
                    }
                }
                self.copy(size + 2, out).await?;
            },
            Body::UntilClose => loop {
                if self.buf.is_empty() && self.fill().await? == 0 {
                    return Ok(());
                }
                let chunk = self.buf.split();
                if let Some(w) = out {
                    w.write_all(&chunk).await?;
                }
            },
        }
    }
}

// ---------------------------------------------------------------------------- serving -----

const ERROR_XML: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code>\
<Message>We encountered an internal error. Please try again.</Message>\
<RequestId>DRKITFAULTPROXY</RequestId><HostId>drkit-fault-proxy</HostId></Error>";

/// The injected 500 answer (no body for a HEAD request, as HTTP wants).
fn answer_500(method: &str, close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n\
         Content-Length: {}\r\nx-amz-request-id: DRKITFAULTPROXY\r\n{}\r\n",
        ERROR_XML.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    if !method.eq_ignore_ascii_case("HEAD") {
        out.extend_from_slice(ERROR_XML.as_bytes());
    }
    out
}

/// The server side of one client connection.
struct Upstream {
    reader: Reader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// What the server answered to one forwarded request.
struct Answer {
    /// The connection to the server ends after it.
    closes: bool,
}

/// Read the server's answer: interim 1xx answers are relayed to the client, the final one
/// too when `deliver`, else read and dropped.
async fn relay_answer(
    server: &mut Reader<OwnedReadHalf>,
    client: &mut OwnedWriteHalf,
    method: &str,
    deliver: bool,
    record: (&State, usize),
) -> io::Result<Answer> {
    loop {
        let raw = server.head().await?.ok_or_else(eof)?;
        let head = Head::parse(&raw)?;
        let status: u16 = head.first[1]
            .parse()
            .map_err(|_| bad(format!("bad status {:?}", head.first[1])))?;
        if (100..200).contains(&status) && status != 101 {
            client.write_all(&raw).await?;
            client.flush().await?;
            continue;
        }
        // Recorded before the client can have the answer: a test reading the records after
        // its request returned sees the status.
        record.0.set_status(record.1, status);
        let body = response_body(&head, status, method)?;
        let mut out = if deliver {
            client.write_all(&raw).await?;
            Some(&mut *client)
        } else {
            None
        };
        server.body(body, &mut out).await?;
        if let Some(c) = out {
            c.flush().await?;
        }
        return Ok(Answer {
            closes: body == Body::UntilClose || head.closes(&head.first[0]) || status == 101,
        });
    }
}

/// Read and drop what the client still sends, for at most `limit`: closing a socket with
/// unread data makes the kernel send a reset, which could beat the answer to the client.
async fn drain(reader: &mut Reader<OwnedReadHalf>, limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        reader.buf.clear();
        while matches!(reader.fill().await, Ok(n) if n > 0) {
            reader.buf.clear();
        }
    })
    .await;
}

async fn serve(client: TcpStream, connection: usize, state: Arc<State>) {
    let _ = client.set_nodelay(true);
    let (cr, mut cw) = client.into_split();
    let mut cr = Reader::new(cr);
    loop {
        let raw = match cr.head().await {
            Ok(Some(raw)) => raw,
            Ok(None) | Err(_) => return,
        };
        let Ok(head) = Head::parse(&raw) else { return };
        let [method, target, version] = &head.first;
        let Ok(body) = request_body(&head) else {
            return;
        };
        let client_closes = head.closes(version);
        let expects_continue = head.has_token("expect", "100-continue");
        let (record, action) = state.decide(connection, method, target);
        match action {
            Some(Action::Reset) => {
                let _ = cw.as_ref().set_zero_linger();
                return;
            }
            Some(Action::Status500) => {
                // Without `Expect: 100-continue` the body follows: read it, answer, and the
                // connection stays usable. With it, the client may wait for an answer before
                // sending: answer at once and close.
                let keep = !expects_continue && !client_closes;
                if keep
                    && cr
                        .body(body, &mut None::<&mut OwnedWriteHalf>)
                        .await
                        .is_err()
                {
                    return;
                }
                state.set_status(record, 500);
                if cw.write_all(&answer_500(method, !keep)).await.is_err()
                    || cw.flush().await.is_err()
                {
                    return;
                }
                if keep {
                    continue;
                }
                let _ = cw.shutdown().await;
                drain(&mut cr, Duration::from_secs(5)).await;
                return;
            }
            Some(Action::Delay(d)) => tokio::time::sleep(d).await,
            Some(Action::CutResponse) | None => {}
        }
        // A fresh upstream connection for every request: a server may close a kept-alive
        // connection at any moment (s3s-fs after an answer whose body it did not read), and a
        // request written into one that is closing fails the client's request with
        // "connection closed before message completed", a fault of this proxy, not a test's.
        // The client's side stays kept alive, as the proxy decides.
        let Ok(server) = TcpStream::connect(&state.upstream).await else {
            return; // the client sees its connection closed, as with a server down
        };
        let _ = server.set_nodelay(true);
        let (sr, sw) = server.into_split();
        let mut up = Upstream {
            reader: Reader::new(sr),
            writer: sw,
        };
        let cut = action == Some(Action::CutResponse);
        let (sr, sw) = (&mut up.reader, &mut up.writer);
        // The request body and the answer flow at the same time: a server may answer
        // `100 Continue` first, or answer early (an error) before the body is in.
        let send = async {
            sw.write_all(&raw).await?;
            cr.body(body, &mut Some(&mut *sw)).await?;
            sw.flush().await
        };
        let recv = relay_answer(sr, &mut cw, method, !cut, (&state, record));
        let (sent, answer) = match futures::future::select(Box::pin(send), Box::pin(recv)).await {
            Either::Left((sent, recv)) => (sent.is_ok(), recv.await),
            Either::Right((answer, send)) => {
                // Answered before the whole body was sent: give the rest a moment.
                let sent = matches!(
                    tokio::time::timeout(Duration::from_secs(5), send).await,
                    Ok(Ok(()))
                );
                (sent, answer)
            }
        };
        let Ok(answer) = answer else { return };
        if cut || !sent || client_closes {
            // Everything the client sent was read: closing sends a FIN, not a reset.
            return;
        }
        if answer.closes {
            // The server ends its connection after this answer (and said so, or its body
            // ran to the end of the connection): the client's ends too.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frame `input` as a request body of `body` kind; returns (forwarded, left over).
    async fn frame(input: &[u8], body: Body) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let mut r = Reader::new(input);
        let mut out: Vec<u8> = Vec::new();
        r.body(body, &mut Some(&mut out)).await?;
        let mut rest = r.buf.to_vec();
        r.inner.read_to_end(&mut rest).await?;
        Ok((out, rest))
    }

    #[tokio::test]
    async fn chunked_bodies_with_extensions_and_trailers_end_where_they_end() {
        let body = b"5;chunk-signature=abc\r\nhello\r\n0\r\nx-amz-checksum-crc32:AAAA\r\n\r\n";
        let mut input = body.to_vec();
        input.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        let (out, rest) = frame(&input, Body::Chunked).await.unwrap();
        assert_eq!(out, body);
        assert_eq!(rest, b"GET /next HTTP/1.1\r\n\r\n");
        assert!(frame(b"5\r\nhel", Body::Chunked).await.is_err());
        assert!(frame(b"zz\r\n", Body::Chunked).await.is_err());
    }

    #[tokio::test]
    async fn length_bodies_and_heads() {
        let (out, rest) = frame(b"abcdefNEXT", Body::Length(6)).await.unwrap();
        assert_eq!(
            (out.as_slice(), rest.as_slice()),
            (&b"abcdef"[..], &b"NEXT"[..])
        );
        let mut r = Reader::new(&b"\r\nPUT /b/k HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\nabc"[..]);
        let raw = r.head().await.unwrap().unwrap();
        let h = Head::parse(&raw).unwrap();
        assert_eq!(h.first, ["PUT", "/b/k", "HTTP/1.1"].map(String::from));
        assert_eq!(request_body(&h).unwrap(), Body::Chunked);
        assert!(r.head().await.is_err(), "a truncated head is an error");
        let resp = Head::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n").unwrap();
        assert_eq!(response_body(&resp, 200, "HEAD").unwrap(), Body::Empty);
        assert_eq!(response_body(&resp, 200, "GET").unwrap(), Body::Length(9));
        let close = Head::parse(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
        assert_eq!(response_body(&close, 200, "GET").unwrap(), Body::UntilClose);
        assert!(close.closes("HTTP/1.0"));
        let mut empty = Reader::new(&b""[..]);
        assert!(empty.head().await.unwrap().is_none());
    }

    #[test]
    fn rules_fire_on_the_matches_they_were_told() {
        let r = Rule::new("put", "/manifest.json", Action::Reset);
        assert!(r.matches("PUT", "/bucket/job/1/manifest.json"));
        assert!(!r.matches("GET", "/bucket/job/1/manifest.json"));
        assert!((1..100).all(|n| r.fires_on(n)));
        let nth = r.clone().nth(2);
        assert_eq!((1..5).filter(|n| nth.fires_on(*n)).collect::<Vec<_>>(), [2]);
        let first = r.clone().first(2);
        assert_eq!(
            (1..5).filter(|n| first.fires_on(*n)).collect::<Vec<_>>(),
            [1, 2]
        );
        let from = r.from_nth(3);
        assert_eq!(
            (1..6).filter(|n| from.fires_on(*n)).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(Rule::new("*", "", Action::Reset).matches("DELETE", "/x"));
    }
}
