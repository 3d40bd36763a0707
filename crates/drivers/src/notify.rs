//! The senders of notifications: a webhook (HTTP POST), a ping (the healthchecks.io
//! convention) and a command (the event JSON on stdin). One call of `send` is one attempt;
//! attempts, backoff and the time budget are `drkit_core::notify::deliver`'s. Errors never
//! carry a URL's path, query or credentials, nor a header value.

use std::process::Stdio;

use drkit_core::notify::{
    ping_target, render_body, show_url, signature, Notifier, NotifierConfig, Signal,
};
use drkit_core::{Error, ErrorKind, Result};
use tokio::io::AsyncWriteExt;

/// The one HTTP client of the notifiers: rustls, no proxy guessing beyond reqwest's
/// environment rules, at most 3 redirects.
fn client(cfg: &NotifierConfig) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(cfg.timeout())
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("drkit/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::config(format!("cannot build the HTTP client: {}", e.without_url())))
}

/// An HTTP error as one line without the URL.
fn http_error(name: &str, url: &str, e: reqwest::Error) -> Error {
    let what = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        let e = e.without_url();
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(inner) = src {
            s = format!("{s}: {inner}");
            src = inner.source();
        }
        s
    };
    Error::new(
        ErrorKind::Storage,
        format!("notifier {name}: {} {what}", show_url(url)),
    )
}

/// A JSON (or templated) POST.
pub(crate) struct Webhook {
    name: String,
    cfg: NotifierConfig,
    client: reqwest::Client,
}

/// A dead-man switch: `URL/start`, `URL`, `URL/fail`.
pub(crate) struct Ping {
    name: String,
    cfg: NotifierConfig,
    client: reqwest::Client,
}

/// A program with the event JSON on stdin.
pub(crate) struct Command {
    name: String,
    cfg: NotifierConfig,
}

impl Webhook {
    pub(crate) fn new(name: &str, cfg: &NotifierConfig) -> Result<Webhook> {
        Ok(Webhook {
            name: name.into(),
            client: client(cfg)?,
            cfg: cfg.clone(),
        })
    }
}

impl Ping {
    pub(crate) fn new(name: &str, cfg: &NotifierConfig) -> Result<Ping> {
        Ok(Ping {
            name: name.into(),
            client: client(cfg)?,
            cfg: cfg.clone(),
        })
    }
}

impl Command {
    pub(crate) fn new(name: &str, cfg: &NotifierConfig) -> Command {
        Command {
            name: name.into(),
            cfg: cfg.clone(),
        }
    }
}

/// 2xx is delivered; anything else is an error naming the status.
fn answered(name: &str, url: &str, status: reqwest::StatusCode) -> Result<()> {
    if status.is_success() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Storage,
        format!(
            "notifier {name}: {} answered HTTP {}",
            show_url(url),
            status.as_u16()
        ),
    ))
}

#[async_trait::async_trait]
impl Notifier for Webhook {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &NotifierConfig {
        &self.cfg
    }

    async fn send(&self, signal: &Signal) -> Result<()> {
        let Signal::Event(event) = signal else {
            return Ok(());
        };
        let url = self.cfg.url.as_deref().unwrap_or_default();
        let body = render_body(self.cfg.template.as_deref(), event, self.cfg.json_body());
        let content_type = self
            .cfg
            .content_type
            .clone()
            .unwrap_or_else(|| "application/json".into());
        let mut req = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type);
        for (k, v) in &self.cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(secret) = &self.cfg.secret {
            req = req.header("X-Drkit-Signature", signature(secret, body.as_bytes()));
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| http_error(&self.name, url, e))?;
        answered(&self.name, url, resp.status())
    }
}

#[async_trait::async_trait]
impl Notifier for Ping {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &NotifierConfig {
        &self.cfg
    }

    async fn send(&self, signal: &Signal) -> Result<()> {
        let base = self.cfg.url.as_deref().unwrap_or_default();
        let Some((url, body)) = ping_target(base, signal) else {
            return Ok(());
        };
        let req = match body {
            Some(b) => self.client.post(&url).body(b),
            None => self.client.get(&url),
        };
        let resp = req
            .send()
            .await
            .map_err(|e| http_error(&self.name, base, e))?;
        answered(&self.name, base, resp.status())
    }
}

#[async_trait::async_trait]
impl Notifier for Command {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &NotifierConfig {
        &self.cfg
    }

    async fn send(&self, signal: &Signal) -> Result<()> {
        let Signal::Event(event) = signal else {
            return Ok(());
        };
        let argv = self.cfg.command.as_deref().unwrap_or_default();
        let program = argv.first().map(String::as_str).unwrap_or_default();
        let fail = |what: String| {
            Error::new(
                ErrorKind::Source,
                format!("notifier {}: {program}: {what}", self.name),
            )
        };
        // Killed when the delivery's time budget drops this future.
        let mut child = tokio::process::Command::new(program)
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("cannot start it: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A program that does not read its stdin is not an error.
            let _ = stdin.write_all(event.to_json().as_bytes()).await;
            let _ = stdin.write_all(b"\n").await;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| fail(format!("wait failed: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let tail = String::from_utf8_lossy(&out.stderr);
        let tail: String = tail
            .trim()
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(fail(format!(
            "exited with {}{}",
            out.status,
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {}", drkit_core::one_line(&tail))
            }
        )))
    }
}
