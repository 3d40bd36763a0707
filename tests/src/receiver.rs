//! A local HTTP/1.1 receiver for the notification tests, and a tiny blocking HTTP client.
//!
//! [`Receiver::start`] listens on `127.0.0.1:<free port>` on its own thread (plain
//! `std::net`, one thread per connection), so it serves while a test blocks on a `drkit`
//! child process. Every request (method, path, lowercased headers, body, when it arrived) is
//! recorded; [`Receiver::wait_for`] waits until a number of them arrived. What it answers is
//! its [`Mode`], which can change while it runs:
//!
//! - [`Mode::Ok`]: `200 OK`, empty body;
//! - [`Mode::Status`]: that status, empty body;
//! - [`Mode::Hang`]: read (and record) the request, never answer, keep the connection open
//!   until the receiver is dropped or the client goes away.
//!
//! Every answer has `Connection: close`, so each request is its own connection.
//!
//! [`http_get`] / [`http_request`] are a blocking client for `http://` URLs (Content-Length,
//! chunked or read-to-end bodies), for `/metrics`, `/healthz` and the Prometheus API.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// What the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `200 OK`.
    Ok,
    /// This status code (`Status(500)`).
    Status(u16),
    /// Read the request, never answer, keep the connection open.
    Hang,
}

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`...
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// Headers in arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
    /// When the whole request had arrived.
    pub at: Instant,
    /// The same, wall clock.
    pub received: SystemTime,
}

impl Request {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the body when it is not JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {}: body is not JSON ({e}): {:?}",
                self.method,
                self.path,
                self.body_str()
            )
        })
    }
}

struct Shared {
    mode: Mutex<Mode>,
    requests: Mutex<Vec<Request>>,
    arrived: Condvar,
    /// Connections held open by [`Mode::Hang`], closed on drop.
    hung: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// A running receiver; dropping it stops it and closes every connection.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Start a receiver in `mode` on a free loopback port.
    pub fn start(mode: Mode) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            requests: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            hung: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("test-receiver".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if sh.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let sh = sh.clone();
                    std::thread::spawn(move || serve(conn, &sh));
                }
            })
            .expect("spawn the receiver");
        Receiver {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Change what it answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// Every request recorded so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Wait until at least `n` requests were recorded or `timeout` passed; then every request
    /// recorded so far (fewer than `n` on a timeout: assert on the length).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        let mut reqs = self.shared.requests.lock().unwrap();
        while reqs.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            reqs = self
                .shared
                .arrived
                .wait_timeout(reqs, deadline - now)
                .unwrap()
                .0;
        }
        reqs.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.shared.hung.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// Serve one connection: one request, one answer (or none, when hanging).
fn serve(conn: TcpStream, sh: &Shared) {
    if sh.stop.load(Ordering::SeqCst) {
        return;
    }
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let Ok(Some(head)) = read_head(&mut reader) else {
        return;
    };
    let (method, path, headers) = head;
    let body = match read_body(&mut reader, &headers, false) {
        Ok(b) => b,
        Err(_) => return,
    };
    let req = Request {
        method,
        path,
        headers,
        body,
        at: Instant::now(),
        received: SystemTime::now(),
    };
    // Decide before recording, so a test that changes the mode after seeing a request
    // changes the next one, not this one.
    let mode = *sh.mode.lock().unwrap();
    sh.requests.lock().unwrap().push(req);
    sh.arrived.notify_all();
    let mut conn = conn;
    match mode {
        Mode::Hang => {
            sh.hung.lock().unwrap().push(conn);
        }
        Mode::Ok => respond(&mut conn, 200),
        Mode::Status(code) => respond(&mut conn, code),
    }
}

fn respond(conn: &mut TcpStream, code: u16) {
    let reason = match code {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Write);
    // Drain what the client may still send so the close is not a reset.
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 1024];
    while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
}

type Head = (String, String, Vec<(String, String)>);

/// The start line (split in two words and the rest) and lowercased headers; `None` at EOF.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = String::new();
    // Skip blank lines before a request (allowed by RFC 9112).
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let a = parts.next().unwrap_or("").to_string();
    let b = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end inside the headers",
            ));
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok(Some((a, b, headers)))
}

/// A body framed by `Content-Length` or chunked; with neither, nothing for a request and
/// everything up to EOF for a response (`to_eof`).
fn read_body(
    r: &mut impl BufRead,
    headers: &[(String, String)],
    to_eof: bool,
) -> io::Result<Vec<u8>> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            if r.read_line(&mut size)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "end inside a chunk",
                ));
            }
            let size = size.trim().split(';').next().unwrap_or("").trim();
            let n = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if n == 0 {
                // Trailers up to the empty line.
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + n, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = String::new();
            r.read_line(&mut crlf)?;
        }
    }
    if let Some(len) = get("content-length") {
        let n: usize = len
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?;
        let mut body = vec![0; n];
        r.read_exact(&mut body)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    if to_eof {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

/// An HTTP answer read by [`http_request`].
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer {} is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET url` (plain `http://host:port/path`), 10 s timeout.
pub fn http_get(url: &str) -> io::Result<Response> {
    http_request("GET", url, &[], None)
}

/// One request to a plain `http://host:port/path` URL with `Connection: close`; `body` is
/// sent with a `Content-Length`. Connect, read and write each time out after 10 s.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> io::Result<Response> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "only http:// URLs"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = {
        use std::net::ToSocketAddrs;
        host.to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?
    };
    let t = Duration::from_secs(10);
    let mut conn = TcpStream::connect_timeout(&addr, t)?;
    conn.set_read_timeout(Some(t))?;
    conn.set_write_timeout(Some(t))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: drkit-tests\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    if let Some(b) = body {
        conn.write_all(b)?;
    }
    conn.flush()?;
    let mut reader = BufReader::new(conn);
    loop {
        let (_version, code, headers) = read_head(&mut reader)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "closed before an answer")
        })?;
        let status: u16 = code
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
        if (100..200).contains(&status) {
            continue; // interim answer
        }
        let body = if method == "HEAD" || status == 204 || status == 304 {
            Vec::new()
        } else {
            read_body(&mut reader, &headers, true)?
        };
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}

/// `s` percent-encoded for a URL query value (everything but unreserved characters).
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_with_a_body_is_recorded() {
        let r = Receiver::start(Mode::Ok);
        let before = Instant::now();
        let a = http_request(
            "POST",
            &r.url("/hook/x?y=1"),
            &[
                ("X-Drkit-Signature", "sha256=ab"),
                ("Content-Type", "application/json"),
            ],
            Some(br#"{"event":"failure"}"#),
        )
        .unwrap();
        assert_eq!(a.status, 200);
        let reqs = r.wait_for(1, Duration::from_secs(5));
        assert_eq!(reqs.len(), 1);
        let q = &reqs[0];
        assert_eq!(q.method, "POST");
        assert_eq!(q.path, "/hook/x?y=1");
        assert_eq!(q.header("x-drkit-signature"), Some("sha256=ab"));
        assert!(q.headers.iter().any(|(k, _)| k == "content-type"));
        assert_eq!(q.json()["event"], "failure");
        assert!(q.at >= before);
        // A GET without a body, and wait_for gives up at its deadline.
        assert_eq!(http_get(&r.url("/ping")).unwrap().status, 200);
        let reqs = r.wait_for(2, Duration::from_secs(5));
        assert_eq!(reqs[1].method, "GET");
        assert!(reqs[1].body.is_empty());
        let t = Instant::now();
        assert_eq!(r.wait_for(3, Duration::from_millis(200)).len(), 2);
        assert!(t.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn status_500_answers_500_and_the_mode_changes_at_runtime() {
        let r = Receiver::start(Mode::Status(500));
        let a = http_request("POST", &r.url("/h"), &[], Some(b"x")).unwrap();
        assert_eq!(a.status, 500);
        r.set_mode(Mode::Ok);
        assert_eq!(http_get(&r.url("/h")).unwrap().status, 200);
        assert_eq!(r.requests().len(), 2);
    }

    #[test]
    fn hang_does_not_answer_within_a_second() {
        let r = Receiver::start(Mode::Hang);
        let mut c = TcpStream::connect(r.addr).unwrap();
        c.write_all(b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 16];
        let e = c.read(&mut buf);
        assert!(
            matches!(&e, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)),
            "answered or closed: {e:?}"
        );
        assert!(t.elapsed() >= Duration::from_millis(900));
        let reqs = r.wait_for(1, Duration::from_secs(1));
        assert_eq!(reqs[0].body, b"abc");
        // Dropping the receiver closes the held connection.
        drop(r);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    }

    #[test]
    fn chunked_answers_are_read() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            read_head(&mut r).unwrap();
            c.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                .unwrap();
        });
        let a = http_get(&format!("http://{addr}/x")).unwrap();
        assert_eq!(a.text(), "hello world");
        assert_eq!(url_encode("a b{c=\"d\"}"), "a%20b%7Bc%3D%22d%22%7D");
    }
}
