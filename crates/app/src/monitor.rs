//! What a process knows for monitoring: its counters, the last look at the storages, and the
//! HTTP endpoint of the daemon (`/metrics`, `/healthz`). The rules (which series, which
//! verdict) are `drkit_core::metrics`'.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use drkit_core::metrics::{self, JobLimits, Tally};
use drkit_core::ops::health::JobHealth;
use drkit_core::{Error, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};

/// Counters and the last look at the storages, shared by the clones of a [`crate::Drkit`].
#[derive(Debug, Default)]
pub struct Monitor {
    tally: Mutex<Tally>,
    look: Mutex<Look>,
    /// What the metrics need of each job of the running config (replaced on a reload).
    limits: Mutex<Arc<Vec<JobLimits>>>,
}

#[derive(Debug, Default)]
struct Look {
    rows: Vec<JobHealth>,
    at: Option<DateTime<Utc>>,
    /// An operation changed the storages since the look.
    dirty: bool,
}

impl Monitor {
    /// Add to the counters.
    pub fn count(&self, t: &Tally) {
        self.tally.lock().expect("not poisoned").merge(t);
    }

    /// The counters so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().expect("not poisoned").clone()
    }

    /// Keep a look at the storages, taken at `at`.
    pub fn looked(&self, rows: Vec<JobHealth>, at: DateTime<Utc>) {
        let mut l = self.look.lock().expect("not poisoned");
        *l = Look {
            rows,
            at: Some(at),
            dirty: false,
        };
    }

    /// Note that an operation changed what a look would see.
    pub fn changed(&self) {
        self.look.lock().expect("not poisoned").dirty = true;
    }

    /// The last look, when there is one that no operation has changed since.
    pub fn fresh_look(&self) -> Option<Vec<JobHealth>> {
        let l = self.look.lock().expect("not poisoned");
        (l.at.is_some() && !l.dirty).then(|| l.rows.clone())
    }

    /// Use the limits of a new config (the daemon's reload).
    pub fn set_limits(&self, limits: Vec<JobLimits>) {
        *self.limits.lock().expect("not poisoned") = Arc::new(limits);
    }

    /// The limits of the running config.
    pub fn limits(&self) -> Arc<Vec<JobLimits>> {
        self.limits.lock().expect("not poisoned").clone()
    }

    /// The last look, whatever happened since (the daemon's endpoint serves it).
    pub fn last_look(&self) -> Vec<JobHealth> {
        self.look.lock().expect("not poisoned").rows.clone()
    }
}

/// Serve `GET /metrics` and `GET /healthz` on `listener` until the future is dropped. A scrape
/// reads only what `monitor` holds (its limits follow a reload); it never waits for a storage.
pub async fn serve(listener: tokio::net::TcpListener, monitor: Arc<Monitor>) -> Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let monitor = monitor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = answer(&req, &monitor, &monitor.limits());
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!("metrics endpoint: connection ended: {e}");
            }
        });
    }
}

/// Bind the daemon's endpoint; a bad or taken address is a config error.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::config(format!("--listen {addr}: cannot listen there: {e}")))
}

fn answer<B>(req: &Request<B>, monitor: &Monitor, limits: &[JobLimits]) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", kind)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::exposition(limits, &monitor.last_look(), &monitor.tally()),
        ),
        "/healthz" => {
            let (ok, body) = metrics::healthz(&monitor.last_look());
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", format!("{body}\n"))
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}
